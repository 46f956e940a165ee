//! The management API (NIP-86) through the real binary, called with curl and authorised with
//! NIP-98 headers made by rust-nostr (`HttpData`, `EventBuilder::http_auth`) and, for the flow
//! docs/operations.md shows, by the nostr-tools script `tests/clients/nip98.mjs`.

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use nostr::hashes::{sha256, Hash};
use nostr::nips::nip98::{HttpData, HttpMethod};
use nostr::{EventBuilder, JsonUtil, Keys, Timestamp, Url};
use serde_json::{json, Value};

use crate::metrics::{scrape, total};
use crate::relay::{id_of, ids, nip11, Client, Relay};
use crate::support::{keys, now, signed};

/// `Nostr <base64>` for a call of `body` to `url`, signed by `keys` at `created_at`.
fn header_at(keys: &Keys, url: &str, method: HttpMethod, body: &str, created_at: u64) -> String {
    let data = HttpData::new(Url::parse(url).unwrap(), method).payload(sha256::Hash::hash(body.as_bytes()));
    let event =
        EventBuilder::http_auth(data).custom_created_at(Timestamp::from(created_at)).sign_with_keys(keys).unwrap();
    format!("Nostr {}", base64::engine::general_purpose::STANDARD.encode(event.as_json()))
}

fn header(keys: &Keys, url: &str, body: &str) -> String {
    header_at(keys, url, HttpMethod::POST, body, now())
}

/// POST `body` with curl (from `source` when given); the status and the JSON answer.
fn curl(url: &str, authorization: Option<&str>, body: &str, source: Option<&str>) -> (u16, Value) {
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "10", "-X", "POST", "-H", "Content-Type: application/nostr+json+rpc"]);
    command.args(["-w", "\n%{http_code}", "--data-binary", body]);
    if let Some(authorization) = authorization {
        command.args(["-H", &format!("Authorization: {authorization}")]);
    }
    if let Some(source) = source {
        command.args(["--interface", source]);
    }
    let output = command.arg(url).output().expect("curl runs (apt-get install curl)");
    let text = String::from_utf8_lossy(&output.stdout);
    let (answer, status) = text.rsplit_once('\n').unwrap_or_else(|| panic!("no status from curl: {text}"));
    let status =
        status.trim().parse().unwrap_or_else(|_| panic!("curl: {text} {}", String::from_utf8_lossy(&output.stderr)));
    (status, serde_json::from_str(answer).unwrap_or(Value::Null))
}

/// An admin's call: status 200 and its `result`.
fn call(url: &str, admin: &Keys, method: &str, params: Value) -> Value {
    let body = json!({"method": method, "params": params}).to_string();
    let (status, answer) = curl(url, Some(&header(admin, url, &body)), &body, None);
    assert_eq!(status, 200, "{method}: {answer}");
    answer["result"].clone()
}

fn config(admin: &Keys, policy: &str) -> String {
    format!("[management]\nadmin_pubkeys = [\"{}\"]\n{policy}", admin.public_key().to_hex())
}

/// Each client publishes a fresh event by `author`; which were accepted.
fn publish_from_each(clients: &mut [Client], author: &Keys, sequence: &mut u64) -> Vec<bool> {
    clients
        .iter_mut()
        .map(|client| {
            *sequence += 1;
            client.publish(&signed(author, 1, now() - 1000 + *sequence, &[], "hello")).0
        })
        .collect()
}

/// An admission service admits a paying user to an allow-list relay: its call is refused
/// without a valid admin NIP-98 header, then the user's events are accepted on every core at
/// once, and after a restart (the change is on disk).
#[test]
fn an_admission_service_admits_a_paying_user_on_every_core_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, user, stranger) = (keys(7000), keys(7001), keys(7002));
    let policy = format!("[policy]\nwrite = \"allow_list\"\npubkeys_allowed = [\"{}\"]\n", admin.public_key().to_hex());
    let relay = Relay::start_with_config(dir.path(), 2, &config(&admin, &policy));
    let url = format!("http://127.0.0.1:{}/", relay.port);
    let mut clients: Vec<Client> = (0..6).map(|_| relay.connect()).collect();
    let mut sequence = 0;
    assert!(publish_from_each(&mut clients, &user, &mut sequence).iter().all(|accepted| !accepted));

    let body = json!({"method": "allowpubkey", "params": [user.public_key().to_hex(), "paid until 2027"]}).to_string();
    let other_body = json!({"method": "allowpubkey", "params": [stranger.public_key().to_hex()]}).to_string();
    let refused = [
        ("no header", None),
        ("a non-admin's", Some(header(&stranger, &url, &body))),
        ("another body's payload", Some(header(&admin, &url, &other_body))),
        ("another relay's URL", Some(header(&admin, "https://other.example.com/", &body))),
        ("GET instead of POST", Some(header_at(&admin, &url, HttpMethod::GET, &body, now()))),
        ("five minutes old", Some(header_at(&admin, &url, HttpMethod::POST, &body, now() - 300))),
        ("not base64", Some("Nostr !!!".to_owned())),
    ];
    for (what, authorization) in &refused {
        let (status, answer) = curl(&url, authorization.as_deref(), &body, None);
        assert_eq!(status, 401, "{what}: {answer}");
        assert!(answer["error"].is_string(), "{what}: {answer}");
    }
    assert!(publish_from_each(&mut clients, &user, &mut sequence).iter().all(|accepted| !accepted));

    let (status, answer) = curl(&url, Some(&header(&admin, &url, &body)), &body, None);
    assert_eq!((status, &answer), (200, &json!({"result": true})));
    // In force on every core by the time the answer came.
    assert!(publish_from_each(&mut clients, &user, &mut sequence).iter().all(|accepted| *accepted));
    let allowed = call(&url, &admin, "listallowedpubkeys", json!([]));
    assert!(allowed
        .as_array()
        .unwrap()
        .contains(&json!({"pubkey": user.public_key().to_hex(), "reason": "paid until 2027"})));
    let methods = call(&url, &admin, "supportedmethods", json!([]));
    assert!(methods.as_array().unwrap().contains(&json!("banevent")));
    assert!(nip11(relay.port)["supported_nips"].as_array().unwrap().contains(&json!(86)));

    // The flow docs/operations.md shows: the header from the nostr-tools script.
    let checks = crate::clients::installed_checks();
    let rename = json!({"method": "changerelayname", "params": ["Members only"]}).to_string();
    let admin_secret = admin.secret_key().to_secret_hex();
    let script =
        Command::new("node").arg(checks.join("nip98.mjs")).args([&url, &admin_secret, &rename]).output().unwrap();
    assert!(script.status.success(), "{}", String::from_utf8_lossy(&script.stderr));
    let scripted = String::from_utf8(script.stdout).unwrap();
    assert_eq!(curl(&url, Some(scripted.trim()), &rename, None), (200, json!({"result": true})));
    assert_eq!(nip11(relay.port)["name"], "Members only");

    let samples = scrape(relay.port);
    assert_eq!(total(&samples, "ringrelay_manage_calls_total", &[("result", "unauthorized")]), refused.len() as f64);
    assert_eq!(total(&samples, "ringrelay_manage_calls_total", &[("result", "changed")]), 2.0);

    drop(clients);
    relay.terminate();
    let relay = Relay::start_with_config(dir.path(), 2, &config(&admin, &policy));
    let mut clients: Vec<Client> = (0..4).map(|_| relay.connect()).collect();
    assert!(publish_from_each(&mut clients, &user, &mut sequence).iter().all(|accepted| *accepted), "kept on disk");
    assert_eq!(nip11(relay.port)["name"], "Members only");
}

/// The management API is served on the admin listener too (`metrics_listen`), for an
/// operator who keeps it off the public port; a change made there is in force on the relay's.
#[test]
fn the_admin_listener_serves_the_management_api() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, spammer) = (keys(7030), keys(7031));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let extra = format!("metrics_listen = \"127.0.0.1:{port}\"\n");
    let relay = Relay::start_with_config(dir.path(), 2, &format!("{extra}{}", config(&admin, "")));
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(call(&url, &admin, "banpubkey", json!([spammer.public_key().to_hex(), "spam"])), json!(true));
    let (accepted, reason) = relay.connect().publish(&signed(&spammer, 1, now(), &[], "spam"));
    assert!(!accepted && reason.starts_with("blocked:"), "{reason}");
    // A lists file broken by hand: the call changes nothing and says so.
    std::fs::write(dir.path().join("policy.toml"), "pubkeys_denied = [\"not a key\"]\n").unwrap();
    let body = json!({"method": "unbanpubkey", "params": [spammer.public_key().to_hex()]}).to_string();
    let (status, answer) = curl(&url, Some(&header(&admin, &url, &body)), &body, None);
    assert_eq!(status, 500, "{answer}");
    assert!(answer["error"].as_str().unwrap().starts_with("error:"), "{answer}");
    let (accepted, _) = relay.connect().publish(&signed(&spammer, 1, now(), &[], "spam again"));
    assert!(!accepted, "the ban in force stays");
    assert_eq!(total(&scrape(port), "ringrelay_manage_calls_total", &[("result", "failed")]), 1.0);
}

/// `banevent` retires a stored event on whichever core holds it and refuses it afterwards;
/// `blockip` closes a blocked address's open connections (NOTICE, 1008) and refuses new ones.
#[test]
fn banned_events_and_blocked_addresses_take_effect_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let admin = keys(7010);
    let relay = Relay::start_with_config(dir.path(), 2, &config(&admin, ""));
    let url = format!("http://127.0.0.1:{}/", relay.port);
    let mut clients: Vec<Client> = (0..4).map(|_| relay.connect()).collect();
    let t = now() - 100;
    let events: Vec<String> = (0..6).map(|i| signed(&keys(7020 + i), 1, t, &[], "spam or not")).collect();
    for event in &events {
        assert!(clients[0].publish(event).0);
    }
    let banned: Vec<String> = events.iter().step_by(2).map(|event| id_of(event)).collect();
    for id in &banned {
        assert_eq!(call(&url, &admin, "banevent", json!([id, "spam"])), json!(true));
    }
    let mut kept: Vec<String> = events.iter().skip(1).step_by(2).map(|event| id_of(event)).collect();
    kept.sort();
    for client in clients.iter_mut() {
        let mut served = ids(&client.req("all", &[json!({"kinds": [1]})]));
        served.sort();
        assert_eq!(served, kept);
    }
    let (accepted, reason) = clients[1].publish(&events[0]);
    assert!(!accepted && reason.starts_with("blocked:"), "{reason}");
    let listed = call(&url, &admin, "listbannedevents", json!([]));
    assert!(listed.as_array().unwrap().contains(&json!({"id": banned[0], "reason": "spam"})));

    let source = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let mut blocked_client = relay.connect_from(source);
    assert!(blocked_client.req("before", &[json!({"limit": 1})]).len() <= 1);
    assert_eq!(call(&url, &admin, "blockip", json!(["127.0.0.2", "abuse"])), json!(true));
    let (texts, close) = blocked_client.read_until_close();
    assert!(texts.iter().any(|text| text.contains("blocked:")), "{texts:?}");
    assert_eq!(close.map(|(code, _)| code), Some(1008));
    let (status, _) = curl(&url, None, "{}", Some("127.0.0.2"));
    assert_eq!(status, 403, "a blocked address gets nothing, the management API included");
    assert!(clients[2].req("others", &[json!({"limit": 1})]).len() == 1, "other addresses are served");
    assert_eq!(call(&url, &admin, "listblockedips", json!([])), json!([{"ip": "127.0.0.2", "reason": "abuse"}]));
    assert_eq!(call(&url, &admin, "unblockip", json!(["127.0.0.2"])), json!(true));
    let mut unblocked = relay.connect_from(source);
    assert_eq!(unblocked.req("after", &[json!({"limit": 1})]).len(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while total(&scrape(relay.port), "ringrelay_connections_closed_total", &[("cause", "blocked")]) < 2.0 {
        assert!(Instant::now() < deadline, "the blocked connection and the refused request are counted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `banpubkey` retires what the spammer already stored, on every connection at once; it stays
/// gone after a restart and after `unbanpubkey` (which lets them publish again), and
/// `compact` drops it.
#[test]
fn a_banned_pubkeys_stored_events_are_retired_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let admin = keys(7060);
    let (spammer, bystander) = (keys(7061), keys(7062));
    let relay = Relay::start_with_config(dir.path(), 2, &config(&admin, ""));
    let url = format!("http://127.0.0.1:{}/", relay.port);
    let mut clients: Vec<Client> = (0..4).map(|_| relay.connect()).collect();
    let t = now() - 100;
    let spam: Vec<String> = (0..5).map(|i| signed(&spammer, 1, t + i, &[], &format!("buy {i}"))).collect();
    let kept = signed(&bystander, 1, t, &[], "hello");
    for event in spam.iter().chain([&kept]) {
        assert!(clients[0].publish(event).0);
    }
    let filter = json!({"kinds": [1]});
    assert_eq!(clients[1].req("before", std::slice::from_ref(&filter)).len(), 6);
    let spammer_hex = spammer.public_key().to_hex();
    assert_eq!(call(&url, &admin, "banpubkey", json!([spammer_hex, "spam"])), json!(true));
    for client in clients.iter_mut() {
        assert_eq!(ids(&client.req("after", std::slice::from_ref(&filter))), vec![id_of(&kept)], "on every connection");
    }
    let (accepted, reason) = clients[2].publish(&signed(&spammer, 1, t + 50, &[], "more"));
    assert!(!accepted && reason.starts_with("blocked:"), "{reason}");
    drop(clients);
    assert!(relay.terminate().success());

    let relay = Relay::start_with_config(dir.path(), 2, &config(&admin, ""));
    let url = format!("http://127.0.0.1:{}/", relay.port);
    let mut client = relay.connect();
    assert_eq!(ids(&client.req("restarted", std::slice::from_ref(&filter))), vec![id_of(&kept)]);
    assert_eq!(call(&url, &admin, "unbanpubkey", json!([spammer_hex])), json!(true));
    // Its ban was at most a few seconds ago: an event dated later is its own again.
    let fresh = signed(&spammer, 1, now() + 5, &[], "reformed");
    assert!(client.publish(&fresh).0, "an unbanned pubkey publishes again");
    // What the ban retired, or anything dated before it, is refused if sent again.
    for event in [&spam[0], &signed(&spammer, 1, t + 10, &[], "backdated")] {
        let (accepted, reason) = client.publish(event);
        assert!(!accepted && reason.starts_with("blocked:"), "{reason}");
    }
    assert!(client.req("again", &[json!({"ids": [id_of(&spam[0])]})]).is_empty());
    drop(client);
    assert!(relay.terminate().success());

    let relay = Relay::start_with_config(dir.path(), 2, &config(&admin, ""));
    let mut client = relay.connect();
    let mut expected = vec![id_of(&kept), id_of(&fresh)];
    expected.sort();
    let mut served = ids(&client.req("unbanned", std::slice::from_ref(&filter)));
    served.sort();
    assert_eq!(served, expected, "what the ban retired stays retired after the unban and a restart");
    drop(client);
    assert!(relay.terminate().success());
    let data = dir.path().to_str().unwrap();
    let output = crate::cli::ringrelay(&["compact", "--data-dir", data], None);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let exported = String::from_utf8(crate::cli::ringrelay(&["export", "--data-dir", data], None).stdout).unwrap();
    assert_eq!(exported.lines().count(), 2, "{exported}");
    assert!(!exported.contains("buy "), "compaction dropped the retired events: {exported}");
}

/// Calls arriving at once, on both cores, each read, change and write the lists file under
/// one lock: none is lost.
#[test]
fn concurrent_changes_are_all_kept() {
    let dir = tempfile::tempdir().unwrap();
    let admin = keys(7040);
    let relay = Relay::start_with_config(dir.path(), 2, &config(&admin, ""));
    let url = format!("http://127.0.0.1:{}/", relay.port);
    let banned: Vec<String> = (0..16).map(|i| keys(7050 + i).public_key().to_hex()).collect();
    let callers: Vec<_> = banned
        .iter()
        .map(|pubkey| {
            let (url, admin, pubkey) = (url.clone(), admin.clone(), pubkey.clone());
            std::thread::spawn(move || call(&url, &admin, "banpubkey", json!([pubkey])))
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.join().unwrap(), json!(true));
    }
    let listed = call(&url, &admin, "listbannedpubkeys", json!([]));
    let mut listed: Vec<String> =
        listed.as_array().unwrap().iter().map(|entry| entry["pubkey"].as_str().unwrap().to_owned()).collect();
    listed.sort();
    let mut expected = banned.clone();
    expected.sort();
    assert_eq!(listed, expected);
    let on_disk = std::fs::read_to_string(dir.path().join("policy.toml")).unwrap();
    assert!(banned.iter().all(|pubkey| on_disk.contains(pubkey.as_str())));
}
