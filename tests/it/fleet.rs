//! A fleet's tools run as an operator runs them: `ringrelay sync` between a stopped data
//! directory and a running relay (the real binary both sides, NIP-77 over a real socket).

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::json;

use crate::cli::ringrelay;
use crate::relay::{id_of, Relay};
use crate::support::{keys, now, signed};

/// Every event id a stopped data directory serves, by `ringrelay export`.
fn exported_ids(data: &Path) -> BTreeSet<String> {
    let output = ringrelay(&["export", "--data-dir", data.to_str().unwrap()], None);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(id_of).collect()
}

fn import(data: &Path, events: &[String]) {
    let file = data.with_extension("jsonl");
    std::fs::write(&file, events.join("\n")).unwrap();
    let output =
        ringrelay(&["import", "--data-dir", data.to_str().unwrap(), "--shards", "2", file.to_str().unwrap()], None);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// `ringrelay sync` with `args` after the URL and data directory: (success, stderr).
fn sync(relay: &Relay, data: &Path, args: &[&str]) -> (bool, String) {
    let url = format!("ws://127.0.0.1:{}", relay.port);
    let mut all = vec!["sync", url.as_str(), "--data-dir", data.to_str().unwrap(), "--shards", "2"];
    all.extend_from_slice(args);
    let output = ringrelay(&all, None);
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn ids_of(events: &[String]) -> BTreeSet<String> {
    events.iter().map(|json| id_of(json)).collect()
}

/// Each side holds what the other lacks (hundreds of events each way, more than one fetch
/// batch and publish window) and a version of the same profile: after one sync both serve
/// the same set, the newer profile only, and a second sync finds nothing to move.
#[test]
fn sync_moves_the_difference_both_ways_between_a_stopped_directory_and_a_relay() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), 2);
    let mut client = relay.connect();
    let base = now() - 100_000;
    let note = |i: u32, text: &str| signed(&keys(9000 + i % 40), 1, base + u64::from(i), &[], &format!("{text} {i}"));
    let shared: Vec<String> = (0..300).map(|i| note(i, "shared")).collect();
    let only_relay: Vec<String> = (300..1500).map(|i| note(i, "relay")).collect();
    let only_dir: Vec<String> = (1500..2400).map(|i| note(i, "dir")).collect();
    let old_profile = signed(&keys(9000), 0, base, &[], r#"{"name":"old"}"#);
    let new_profile = signed(&keys(9000), 0, base + 10, &[], r#"{"name":"new"}"#);
    assert_eq!(client.publish_all(&shared), 300);
    assert_eq!(client.publish_all(&only_relay), 1200);
    assert!(client.publish(&old_profile).0);
    let data = dir.path().join("stopped");
    import(&data, &[shared.clone(), only_dir.clone(), vec![new_profile.clone()]].concat());

    let (ok, stderr) = sync(&relay, &data, &["--dir", "both"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("1201 local, 901 only here, 1201 only there (2 rounds in 1 part,"), "{stderr}");
    assert!(stderr.contains("fetched 1201: 1200 stored, 0 duplicate, 1 rejected"), "{stderr}");
    assert!(stderr.contains("published 901, 0 refused"), "{stderr}");

    let expected: BTreeSet<String> =
        shared.iter().chain(&only_relay).chain(&only_dir).chain([&new_profile]).map(|json| id_of(json)).collect();
    assert_eq!(exported_ids(&data), expected);
    let served = client.req("all", &[json!({"since": base, "limit": 5000})]);
    assert_eq!(served.iter().map(|event| event["id"].as_str().unwrap().to_owned()).collect::<BTreeSet<_>>(), expected);

    let (ok, stderr) = sync(&relay, &data, &["--dir", "both"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("2401 local, 0 only here, 0 only there"), "{stderr}");
}

/// A gift wrap reaches a stopped directory only when the sync authenticates as its
/// recipient (`--auth-key`, answered to the relay's NIP-42 challenge), not unauthenticated
/// nor as a stranger; a filter narrows what moves.
#[test]
fn private_kinds_move_only_to_their_recipient_and_a_filter_narrows_the_sync() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), 2);
    let mut client = relay.connect();
    let recipient = keys(9101);
    let wrap = signed(&keys(9100), 1059, now() - 60, &[&["p", &recipient.public_key().to_hex()]], "sealed");
    let note = signed(&keys(9100), 1, now() - 60, &[], "public");
    let reaction = signed(&keys(9100), 7, now() - 50, &[], "+");
    for event in [&wrap, &note, &reaction] {
        assert!(client.publish(event).0);
    }

    let stranger = dir.path().join("stranger");
    let (ok, stderr) = sync(&relay, &stranger, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(exported_ids(&stranger), ids_of(&[note.clone(), reaction.clone()]));

    let stranger_key = dir.path().join("stranger.key");
    std::fs::write(&stranger_key, keys(9102).secret_key().to_secret_hex()).unwrap();
    let authenticated_stranger = dir.path().join("authenticated-stranger");
    let (ok, stderr) = sync(&relay, &authenticated_stranger, &["--auth-key", stranger_key.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert_eq!(exported_ids(&authenticated_stranger), ids_of(&[note.clone(), reaction.clone()]));

    let key = dir.path().join("recipient.key");
    std::fs::write(&key, recipient.secret_key().to_secret_hex()).unwrap();
    let own = dir.path().join("own");
    let (ok, stderr) = sync(&relay, &own, &["--auth-key", key.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert_eq!(exported_ids(&own), ids_of(&[wrap, note.clone(), reaction]));

    let narrow = dir.path().join("narrow");
    let (ok, stderr) = sync(&relay, &narrow, &["--filter", r#"{"kinds":[1]}"#]);
    assert!(ok, "{stderr}");
    assert_eq!(exported_ids(&narrow), ids_of(&[note]));
}

/// A relay that refuses the sync, or is not there, or a URL that is not a relay's, makes the
/// command fail with the reason.
#[test]
fn a_refused_or_unreachable_sync_fails_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_config(&dir.path().join("relay"), 1, "[negentropy]\nenabled = false\n");
    let (ok, stderr) = sync(&relay, &dir.path().join("data"), &[]);
    assert!(!ok);
    assert!(stderr.contains("the relay refused: blocked: NIP-77 sync is turned off"), "{stderr}");

    let port = relay.port;
    drop(relay);
    let output = ringrelay(
        &["sync", &format!("ws://127.0.0.1:{port}"), "--data-dir", dir.path().join("data").to_str().unwrap()],
        None,
    );
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("connecting"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output =
        ringrelay(&["sync", "http://relay.example", "--data-dir", dir.path().join("data").to_str().unwrap()], None);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a ws:// or wss:// URL"));
}

/// Over `wss://` (a TLS terminator in front of the relay, its certificate from a CA given
/// with `--tls-ca`): the sync runs; without that CA, it fails on the certificate.
#[test]
fn a_sync_over_tls_trusts_the_ca_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), 1);
    let events: Vec<String> =
        (0..20u32).map(|i| signed(&keys(9970 + i), 1, now() - 100 + u64::from(i), &[], "tls")).collect();
    assert_eq!(relay.connect().publish_all(&events), 20);
    let ca = dir.path().join("ca.pem");
    let port = crate::loadgen_runs::tls_front(relay.port, &ca);
    let url = format!("wss://127.0.0.1:{port}");
    let data = dir.path().join("data");
    let untrusted = ringrelay(&["sync", &url, "--data-dir", data.to_str().unwrap()], None);
    assert!(!untrusted.status.success());
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("TLS"),
        "{}",
        String::from_utf8_lossy(&untrusted.stderr)
    );
    let output =
        ringrelay(&["sync", &url, "--tls-ca", ca.to_str().unwrap(), "--data-dir", data.to_str().unwrap()], None);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(exported_ids(&data), ids_of(&events));
}

/// One relay of a peered fleet: its key and port, known before any of them starts.
struct Member {
    key: nostr::Keys,
    port: u16,
    dir: std::path::PathBuf,
}

impl Member {
    fn new(root: &Path, n: u32) -> Member {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Member { key: keys(9200 + n), port, dir: root.join(format!("relay-{n}")) }
    }

    /// Its config: its key, the fleet's pubkeys, and every other member as a peer.
    fn config(&self, fleet: &[Member]) -> String {
        let others: Vec<u16> = fleet.iter().filter(|other| other.port != self.port).map(|other| other.port).collect();
        self.config_with_peers(fleet, &others)
    }

    /// Its config with the peers reached on `peer_ports`.
    fn config_with_peers(&self, fleet: &[Member], peer_ports: &[u16]) -> String {
        std::fs::create_dir_all(&self.dir).unwrap();
        let key_file = self.dir.join("peer.key");
        std::fs::write(&key_file, self.key.secret_key().to_secret_hex()).unwrap();
        let pubkeys: Vec<String> = fleet.iter().map(|m| format!("\"{}\"", m.key.public_key().to_hex())).collect();
        let mut config = format!(
            "[peering]\nkey_file = \"{}\"\npubkeys = [{}]\nreconnect_max_secs = 2\n",
            key_file.display(),
            pubkeys.join(", ")
        );
        for port in peer_ports {
            config.push_str(&format!("\n[[peers]]\nurl = \"ws://127.0.0.1:{port}\"\n"));
        }
        config
    }

    fn start(&self, fleet: &[Member]) -> Relay {
        Relay::start_on(&self.dir, 1, &self.config(fleet), self.port)
    }

    /// Behind a proxy on this host: its `X-Forwarded-For` is trusted, and the event rate is
    /// low enough for a test to reach.
    fn start_behind_proxy(&self, fleet: &[Member]) -> Relay {
        let config = format!(
            "trusted_proxies = [\"127.0.0.1\"]\n[rate_limits]\nevents = {{ per_minute = 60, burst = 5 }}\n{}",
            self.config(fleet)
        );
        Relay::start_on(&self.dir, 1, &config, self.port)
    }
}

/// Ids served for `since`, waiting up to 20 s for them to include every one of `expected`;
/// each id is served once.
fn served_within(relay: &Relay, since: u64, expected: &BTreeSet<String>) -> BTreeSet<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let served: Vec<String> = relay
            .connect()
            .req("all", &[json!({"since": since, "limit": 5000})])
            .iter()
            .map(|event| event["id"].as_str().unwrap().to_owned())
            .collect();
        let unique: BTreeSet<String> = served.iter().cloned().collect();
        assert_eq!(unique.len(), served.len(), "an event served twice");
        if unique.is_superset(expected) || std::time::Instant::now() > deadline {
            return unique;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Three relays on loopback, each peered with the other two: what is published to one is
/// served by all (live); a relay stopped while the others take events catches up when it
/// starts again (NIP-77); a gift wrap reaches every member, which keep it from strangers;
/// the links show in /metrics.
#[test]
fn three_peered_relays_converge_live_and_after_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let fleet: Vec<Member> = (0..3).map(|n| Member::new(dir.path(), n)).collect();
    let mut relays: Vec<Relay> = fleet.iter().map(|member| member.start(&fleet)).collect();
    let since = now() - 1000;
    let mut published = Vec::new();
    for (n, relay) in relays.iter().enumerate() {
        let mut client = relay.connect();
        for i in 0..5u32 {
            let event = signed(&keys(9300 + i), 1, since + u64::from(i), &[], &format!("to relay {n}, {i}"));
            assert!(client.publish(&event).0);
            published.push(event);
        }
    }
    let recipient = keys(9310).public_key().to_hex();
    let wrap = signed(&keys(9311), 1059, now() - 5, &[&["p", &recipient]], "sealed");
    assert!(relays[0].connect().publish(&wrap).0);
    let expected = ids_of(&published);
    for relay in &relays {
        assert_eq!(served_within(relay, since, &expected), expected, "live: relay on {}", relay.port);
    }

    // Once the links' first syncs are done (no sync for 1.5 s), only the live connections
    // move events: a backdated one (dated before the links came up) reaches the others all
    // the same, and no sync runs meanwhile.
    let syncs =
        |relay: &Relay| crate::metrics::total(&crate::metrics::scrape(relay.port), "ringrelay_peer_syncs_total", &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut quiet: Vec<f64> = relays.iter().map(syncs).collect();
    let mut steady = 0;
    while steady < 5 {
        assert!(std::time::Instant::now() < deadline, "the links kept syncing");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now: Vec<f64> = relays.iter().map(syncs).collect();
        steady = if now == quiet && now.iter().all(|&count| count >= 2.0) { steady + 1 } else { 0 };
        quiet = now;
    }
    let backdated = signed(&keys(9305), 1, since + 50, &[], "backdated, live");
    assert!(relays[0].connect().publish(&backdated).0);
    published.push(backdated);
    let expected = ids_of(&published);
    for relay in &relays {
        assert_eq!(served_within(relay, since, &expected), expected, "live, backdated: relay on {}", relay.port);
    }
    assert_eq!(relays.iter().map(syncs).collect::<Vec<_>>(), quiet, "no sync ran: it came live");

    // Stop the third; the others take more; it starts again and catches up.
    relays.pop().unwrap().terminate();
    for (n, relay) in relays.iter().enumerate() {
        let mut client = relay.connect();
        let more: Vec<String> = (0..20u32)
            .map(|i| signed(&keys(9320 + i), 1, since + 100 + u64::from(i), &[], &format!("while down, {n} {i}")))
            .collect();
        assert_eq!(client.publish_all(&more), 20);
        published.extend(more);
    }
    relays.push(fleet[2].start(&fleet));
    let expected = ids_of(&published);
    for relay in &relays {
        assert_eq!(served_within(relay, since, &expected), expected, "after the restart: relay on {}", relay.port);
    }
    let samples = crate::metrics::scrape(relays[0].port);
    let url = format!("ws://127.0.0.1:{}", fleet[1].port);
    assert_eq!(crate::metrics::total(&samples, "ringrelay_peer_connected", &[("peer", &url)]), 1.0);
    assert!(crate::metrics::total(&samples, "ringrelay_peer_syncs_total", &[]) >= 2.0);

    // The wrap reached every member; a stranger is not served it.
    assert!(relays[2].connect().req("wraps", &[json!({"kinds": [1059]})]).is_empty());
    for (member, relay) in fleet.iter().zip(relays) {
        relay.terminate();
        assert!(exported_ids(&member.dir).contains(&id_of(&wrap)), "the gift wrap on {}", member.port);
    }
}

/// Two peers' links can hand the relay the same event at the same moment: it is stored and
/// served once.
#[test]
fn the_same_event_from_two_connections_at_once_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 1);
    let mut a = relay.connect();
    let mut b = relay.connect();
    let since = now() - 1000;
    let events: Vec<String> =
        (0..50u32).map(|i| signed(&keys(9400 + i), 1, since + u64::from(i), &[], "same")).collect();
    for event in &events {
        a.feed(&json!(["EVENT", serde_json::from_str::<serde_json::Value>(event).unwrap()]).to_string());
        b.feed(&json!(["EVENT", serde_json::from_str::<serde_json::Value>(event).unwrap()]).to_string());
    }
    a.flush();
    b.flush();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let served = relay.connect().req("x", &[json!({"since": since})]);
    let unique: BTreeSet<String> = served.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(served.len(), unique.len());
}

/// An operator asks a running relay to sync with another one now, through its management
/// API (`ringrelay sync URL --relay`, signed by an admin key): the events move without a
/// restart, and a key that is not an admin's is refused.
#[test]
fn a_running_relay_syncs_when_its_operator_asks() {
    let dir = tempfile::tempdir().unwrap();
    let source = Relay::start(&dir.path().join("source"), 1);
    let admin = keys(9500);
    let config = format!("[management]\nadmin_pubkeys = [\"{}\"]\n", admin.public_key().to_hex());
    let target = Relay::start_with_config(&dir.path().join("target"), 2, &config);
    let since = now() - 1000;
    let events: Vec<String> =
        (0..30u32).map(|i| signed(&keys(9510 + i % 6), 1, since + u64::from(i), &[], &format!("asked {i}"))).collect();
    assert_eq!(source.connect().publish_all(&events), 30);

    let key_file = |name: &str, key: &nostr::Keys| {
        let path = dir.path().join(name);
        std::fs::write(&path, key.secret_key().to_secret_hex()).unwrap();
        path
    };
    let ask = |key: &Path| {
        let source_url = format!("ws://127.0.0.1:{}", source.port);
        let relay = format!("http://127.0.0.1:{}", target.port);
        ringrelay(&["sync", &source_url, "--relay", &relay, "--auth-key", key.to_str().unwrap(), "--dir", "down"], None)
    };
    let stranger = ask(&key_file("stranger.key", &keys(9501)));
    assert!(!stranger.status.success());
    assert!(String::from_utf8_lossy(&stranger.stdout).contains("error"));

    let output = ask(&key_file("admin.key", &admin));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((&answer["result"]["only_there"], &answer["result"]["stored"]), (&json!(30), &json!(30)), "{answer}");
    let expected = ids_of(&events);
    assert_eq!(served_within(&target, since, &expected), expected);
}

/// A TCP forwarder to a relay that the test can cut: while cut, the connections through it
/// are reset and new ones closed at once, as a partition between two running relays looks.
struct Cuttable {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Cuttable {
    fn to(target: u16) -> Cuttable {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let cuttable = Cuttable {
            port: listener.local_addr().unwrap().port(),
            cut: Default::default(),
            stop: Default::default(),
            open: Default::default(),
        };
        let (cut, stop, open) = (cuttable.cut.clone(), cuttable.stop.clone(), cuttable.open.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                client.set_nonblocking(false).unwrap();
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else { continue };
                open.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        cuttable
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Cuttable {
    fn drop(&mut self) {
        self.cut();
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Two running relays peered through links the test cuts: each takes events while they
/// cannot reach each other, and once the partition heals they converge (the links reconnect
/// and catch up), each event served once.
#[test]
fn a_partition_between_running_relays_heals_into_one_set() {
    let dir = tempfile::tempdir().unwrap();
    let fleet: Vec<Member> = (0..2).map(|n| Member::new(dir.path(), 10 + n)).collect();
    let links: Vec<Cuttable> = fleet.iter().map(|member| Cuttable::to(member.port)).collect();
    let relays: Vec<Relay> = fleet
        .iter()
        .enumerate()
        .map(|(n, member)| {
            Relay::start_on(&member.dir, 1, &member.config_with_peers(&fleet, &[links[1 - n].port]), member.port)
        })
        .collect();
    let since = now() - 1000;
    let publish = |relay: &Relay, text: &str| -> Vec<String> {
        let events: Vec<String> =
            (0..10u32).map(|i| signed(&keys(9600 + i), 1, since + u64::from(i), &[], &format!("{text} {i}"))).collect();
        assert_eq!(relay.connect().publish_all(&events), 10);
        events
    };
    let mut published = [publish(&relays[0], "before, on 0"), publish(&relays[1], "before, on 1")].concat();
    let expected = ids_of(&published);
    for relay in &relays {
        assert_eq!(served_within(relay, since, &expected), expected);
    }

    links.iter().for_each(Cuttable::cut);
    let on_0 = publish(&relays[0], "cut off, on 0");
    let on_1 = publish(&relays[1], "cut off, on 1");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let served = served_within(&relays[1], since, &BTreeSet::new());
    assert!(served.is_disjoint(&ids_of(&on_0)), "the partition let events through");

    links.iter().for_each(Cuttable::heal);
    published.extend(on_0);
    published.extend(on_1);
    let expected = ids_of(&published);
    for relay in &relays {
        assert_eq!(served_within(relay, since, &expected), expected, "healed: relay on {}", relay.port);
    }
}

/// HAProxy from Debian, running `tuning/haproxy.cfg` with its `bind` and `server` lines
/// pointed at loopback ports; stopped when dropped.
struct Haproxy {
    port: u16,
    child: std::process::Child,
}

impl Haproxy {
    fn start(dir: &Path, relays: &[u16]) -> Haproxy {
        let found = std::process::Command::new("haproxy").arg("-v").output();
        assert!(
            found.is_ok_and(|out| out.status.success()),
            "this test needs HAProxy: `apt-get install haproxy`, as .ci/run does"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let shipped = include_str!("../../tuning/haproxy.cfg");
        let mut config = String::new();
        let mut servers = relays.iter();
        for line in shipped.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("maxconn ") {
                config.push_str("    maxconn 2000\n");
            } else if trimmed.starts_with("bind ") {
                config.push_str(&format!("    bind 127.0.0.1:{port}\n"));
            } else if let Some(name) = trimmed.strip_prefix("server ").and_then(|rest| rest.split_whitespace().next()) {
                let relay = servers.next().expect("as many relays as server lines");
                config.push_str(&format!("    server {name} 127.0.0.1:{relay}\n"));
            } else {
                config.push_str(line);
                config.push('\n');
            }
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = std::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("haproxy starts");
        Haproxy { port, child }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// A client through the proxy from `source`, once the proxy takes connections.
    fn connect(&self, source: std::net::Ipv4Addr) -> crate::relay::Client {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "haproxy did not listen");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        crate::relay::connect_to(self.port, Some(source))
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three peered relays behind HAProxy with `tuning/haproxy.cfg` (docs/fleet.md): what a
/// client publishes through the one address, another reads through it whichever relay
/// serves it; the rate limits see each client's own address (from X-Forwarded-For); NIP-42
/// works with the proxy's URL; and with one relay stopped, clients are still served.
#[test]
fn a_fleet_behind_haproxy_serves_one_address_with_rate_limits_and_auth() {
    let dir = tempfile::tempdir().unwrap();
    let fleet: Vec<Member> = (0..3).map(|n| Member::new(dir.path(), 20 + n)).collect();
    let mut relays: Vec<Relay> = fleet.iter().map(|member| member.start_behind_proxy(&fleet)).collect();
    let proxy = Haproxy::start(dir.path(), &fleet.iter().map(|member| member.port).collect::<Vec<_>>());
    let address = |n: u8| std::net::Ipv4Addr::new(127, 0, 0, n);
    let since = now() - 1000;

    let notes: Vec<String> =
        (0..3u32).map(|i| signed(&keys(9700 + i), 1, since + u64::from(i), &[], &format!("proxied {i}"))).collect();
    let mut publisher = proxy.connect(address(5));
    assert_eq!(publisher.publish_all(&notes), 3);
    let expected = ids_of(&notes);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for reader in 0..4 {
        loop {
            let served = proxy.connect(address(6)).req("r", &[json!({"since": since})]);
            let served: BTreeSet<String> = served.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
            if served == expected {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "reader {reader} through the proxy got {served:?}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    // The event rate is per client address, as forwarded: a burst of 5, then rate-limited.
    let mut flooder = proxy.connect(address(7));
    let burst: Vec<String> =
        (0..8u32).map(|i| signed(&keys(9710), 1, since + 100 + u64::from(i), &[], &format!("burst {i}"))).collect();
    let answers: Vec<(bool, String)> = burst.iter().map(|event| flooder.publish(event)).collect();
    assert!(answers.iter().filter(|(ok, _)| *ok).count() <= 6, "{answers:?}");
    assert!(answers.iter().any(|(ok, reason)| !ok && reason.starts_with("rate-limited:")), "{answers:?}");
    assert!(proxy.connect(address(8)).publish(&signed(&keys(9711), 1, since + 200, &[], "another address")).0);

    // NIP-42 with the URL the client dialled: the proxy's.
    let mut authed = proxy.connect(address(9));
    let ok = crate::auth::authenticate_to(&mut authed, &proxy.url(), &keys(9712));
    assert_eq!(ok[2], true, "{ok}");

    // One relay stops: new clients are served by the others.
    relays.remove(0).terminate();
    for _ in 0..6 {
        let served = proxy.connect(address(10)).req("after", &[json!({"ids": [id_of(&notes[0])]})]);
        assert_eq!(served.len(), 1);
    }
}

/// `[[peers]]` reloads on SIGHUP: a relay started with no peer starts syncing with one
/// added to its config file, and stops its link when the peer is removed again.
#[test]
fn peers_are_added_and_removed_by_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let fleet: Vec<Member> = (0..2).map(|n| Member::new(dir.path(), 30 + n)).collect();
    let lonely = fleet[0].config_with_peers(&fleet, &[]);
    let relay = Relay::start_on(&fleet[0].dir, 1, &lonely, fleet[0].port);
    let other = fleet[1].start(&fleet[1..]);
    let since = now() - 1000;
    let events: Vec<String> =
        (0..5u32).map(|i| signed(&keys(9800 + i), 1, since + u64::from(i), &[], "elsewhere")).collect();
    assert_eq!(other.connect().publish_all(&events), 5);
    let config_path = fleet[0].dir.join("test-config.toml");
    let hangup = || unsafe { libc::kill(relay.pid() as i32, libc::SIGHUP) };

    std::fs::write(&config_path, fleet[0].config_with_peers(&fleet, &[fleet[1].port])).unwrap();
    hangup();
    let expected = ids_of(&events);
    assert_eq!(served_within(&relay, since, &expected), expected, "the added peer's events");
    let connected = |relay: &Relay| {
        crate::metrics::scrape(relay.port).iter().filter(|sample| sample.name == "ringrelay_peer_connected").count()
    };
    assert_eq!(connected(&relay), 1);

    std::fs::write(&config_path, &lonely).unwrap();
    hangup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while connected(&relay) > 0 {
        assert!(std::time::Instant::now() < deadline, "the removed peer's link still runs");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A relay that refuses a set as too large (`negentropy.items_max`, strfry's 1M) is synced
/// with date by date: the tool splits the range until each part is taken.
#[test]
fn a_sync_too_large_for_the_relay_is_split_by_date() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_config(&dir.path().join("relay"), 2, "[negentropy]\nitems_max = 40\n");
    let since = now() - 100_000;
    let events: Vec<String> = (0..150u32)
        .map(|i| signed(&keys(9900 + i % 15), 1, since + u64::from(i) * 300, &[], &format!("dated {i}")))
        .collect();
    assert_eq!(relay.connect().publish_all(&events), 150);
    let data = dir.path().join("empty");
    let (ok, stderr) = sync(&relay, &data, &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("0 local, 0 only here, 150 only there"), "{stderr}");
    let syncs: u32 =
        stderr.split(" rounds in ").nth(1).and_then(|rest| rest.split(' ').next()).unwrap().parse().unwrap();
    assert!(syncs >= 4, "150 events in parts of at most 40: {stderr}");
    assert_eq!(exported_ids(&data), ids_of(&events));
    let (ok, stderr) = sync(&relay, &data, &[]);
    assert!(ok && stderr.contains("150 local, 0 only here, 0 only there"), "{stderr}");
}

/// A fleet whose relays take events from authenticated members only (`policy.write =
/// "auth"` with an allow list) and protected events (NIP-70) from their authors only: what
/// a member publishes on one, authenticated, reaches the other through the peers, which the
/// other judges by its lists, not by the link's own key.
#[test]
fn a_fleet_with_a_write_policy_replicates_what_its_members_publish() {
    let dir = tempfile::tempdir().unwrap();
    let fleet: Vec<Member> = (0..2).map(|n| Member::new(dir.path(), 40 + n)).collect();
    let member = keys(9950);
    let policy = format!("[policy]\nwrite = \"auth\"\npubkeys_allowed = [\"{}\"]\n", member.public_key().to_hex());
    let relays: Vec<Relay> =
        fleet.iter().map(|m| Relay::start_on(&m.dir, 1, &format!("{policy}{}", m.config(&fleet)), m.port)).collect();
    let since = now() - 1000;
    let plain = signed(&member, 1, since, &[], "a member's note");
    let protected = signed(&member, 1, since + 1, &[&["-"]], "a member's protected note");
    let mut client = relays[0].connect();
    assert_eq!(crate::auth::authenticate(&mut client, &relays[0], &member)[2], true);
    assert!(client.publish(&plain).0);
    assert!(client.publish(&protected).0);
    let expected = ids_of(&[plain, protected]);
    assert_eq!(served_within(&relays[1], since, &expected), expected);
    // The other relay still refuses a stranger's event, from a client or not.
    let stranger = signed(&keys(9951), 1, since + 2, &[], "a stranger's note");
    let (accepted, reason) = relays[1].connect().publish(&stranger);
    assert!(!accepted && reason.starts_with("auth-required:"), "{reason}");
}

/// A request to vanish (NIP-62) naming the fleet's public URL (`auth.relay_urls`), published
/// on one member, is honoured by the other when its peer passes it on: the author's events
/// are gone from both.
#[test]
fn a_request_to_vanish_reaches_every_member_of_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let fleet: Vec<Member> = (0..2).map(|n| Member::new(dir.path(), 50 + n)).collect();
    let public = "[auth]\nrelay_urls = [\"wss://fleet.example\"]\n";
    let relays: Vec<Relay> =
        fleet.iter().map(|m| Relay::start_on(&m.dir, 1, &format!("{public}{}", m.config(&fleet)), m.port)).collect();
    let author = keys(9960);
    let since = now() - 1000;
    let note = signed(&author, 1, since, &[], "soon gone");
    assert!(relays[0].connect().publish(&note).0);
    let expected = ids_of(&[note]);
    assert_eq!(served_within(&relays[1], since, &expected), expected);
    let vanish = signed(&author, 62, now(), &[&["relay", "wss://fleet.example"]], "");
    let (accepted, reason) = relays[0].connect().publish(&vanish);
    assert!(accepted, "{reason}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for relay in &relays {
        loop {
            let left = relay.connect().req("gone", &[json!({"authors": [author.public_key().to_hex()], "kinds": [1]})]);
            if left.is_empty() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "relay on {} still serves the vanished author", relay.port);
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

/// A relay that rate-limits the sync's REQs (`CLOSED "rate-limited: ..."`) is asked again
/// after a pause, and the sync completes.
#[test]
fn a_sync_rate_limited_by_the_relay_waits_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[rate_limits]\nexempt_ips = []\nqueries = { per_minute = 240, burst = 2 }\n\
                  events = { per_minute = 1000000, burst = 100000 }\n";
    let relay = Relay::start_with_config(&dir.path().join("relay"), 1, config);
    let since = now() - 10_000;
    let events: Vec<String> = (0..2500u32)
        .map(|i| signed(&keys(9980 + i % 10), 1, since + u64::from(i), &[], &format!("limited {i}")))
        .collect();
    assert_eq!(relay.connect().publish_all(&events), 2500);
    let data = dir.path().join("data");
    let (ok, stderr) = sync(&relay, &data, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(exported_ids(&data), ids_of(&events));
    let limited = crate::metrics::total(
        &crate::metrics::scrape(relay.port),
        "ringrelay_rate_limited_total",
        &[("what", "query")],
    );
    assert!(limited >= 1.0, "the relay did rate-limit the sync's REQs");
}
