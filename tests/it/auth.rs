//! NIP-42 and the write policy through the real binary, with AUTH events built and signed by
//! rust-nostr (`EventBuilder::auth`, `ClientMessage::auth`), as a Rust client does it.

use nostr::{ClientMessage, EventBuilder, JsonUtil, Keys, RelayUrl, Timestamp};
use serde_json::{json, Value};

use crate::relay::{Client, Relay};
use crate::support::{keys, now, signed};

/// The AUTH message a client sends: rust-nostr's own builder.
fn auth_message(keys: &Keys, challenge: &str, relay: &str, created_at: u64) -> (String, String) {
    let event = EventBuilder::auth(challenge, RelayUrl::parse(relay).unwrap())
        .custom_created_at(Timestamp::from(created_at))
        .sign_with_keys(keys)
        .unwrap();
    (event.id.to_hex(), ClientMessage::auth(event).as_json())
}

/// Authenticate `client` as `keys` with the challenge it was sent; returns the OK.
pub fn authenticate(client: &mut Client, relay: &Relay, keys: &Keys) -> Value {
    authenticate_to(client, &format!("ws://127.0.0.1:{}", relay.port), keys)
}

/// Authenticate `client`, connected to the relay as `url` (a proxy's, say), as `keys`.
pub fn authenticate_to(client: &mut Client, url: &str, keys: &Keys) -> Value {
    let challenge = challenge_of(client);
    let (id, message) = auth_message(keys, &challenge, url, now());
    client.send(&message);
    let ok = client.expect("OK");
    assert_eq!(ok[1], id.as_str());
    ok
}

/// The challenge the relay sent on connect (`Client::recv` keeps it aside).
fn challenge_of(client: &mut Client) -> String {
    client.wait_challenge()
}

fn protected(keys: &Keys, content: &str) -> String {
    signed(keys, 1, now(), &[&["-"]], content)
}

#[test]
fn a_protected_event_is_accepted_from_its_authenticated_author_only() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 2);
    let (author, other) = (keys(6000), keys(6001));
    let mut client = relay.connect();
    let (accepted, reason) = client.publish(&protected(&author, "before auth"));
    assert!(!accepted && reason.starts_with("auth-required:"), "{reason}");

    // Authenticated as someone else: restricted.
    let ok = authenticate(&mut client, &relay, &other);
    assert_eq!(ok[2], true, "{ok}");
    let (accepted, reason) = client.publish(&protected(&author, "as another"));
    assert!(!accepted && reason.starts_with("restricted:"), "{reason}");

    // Several pubkeys on one connection: the author too, and now it is accepted.
    assert_eq!(authenticate(&mut client, &relay, &author)[2], true);
    let event = protected(&author, "by its author");
    assert!(client.publish(&event).0);
    let found = client.req("r", &[json!({"authors": [author.public_key().to_hex()]})]);
    assert_eq!(found.len(), 1);
}

#[test]
fn auth_events_are_checked_for_challenge_relay_time_and_kind() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 1);
    let url = format!("ws://127.0.0.1:{}", relay.port);
    let user = keys(6010);
    let mut client = relay.connect();
    let challenge = challenge_of(&mut client);
    let refused = |client: &mut Client, message: String| {
        client.send(&message);
        let ok = client.expect("OK");
        assert_eq!(ok[2], false, "{ok}");
        ok[3].as_str().unwrap().to_owned()
    };
    let wrong_challenge = auth_message(&user, "not-the-challenge", &url, now()).1;
    assert!(refused(&mut client, wrong_challenge).contains("challenge"));
    let wrong_relay = auth_message(&user, &challenge, "wss://another.example.com", now()).1;
    assert!(refused(&mut client, wrong_relay).contains("relay tag"));
    let stale = auth_message(&user, &challenge, &url, now() - 3600).1;
    assert!(refused(&mut client, stale).contains("created_at"));
    // A kind-1 event in an AUTH message.
    let note: Value =
        serde_json::from_str(&signed(&user, 1, now(), &[["challenge", challenge.as_str()].as_slice()], "x")).unwrap();
    assert!(refused(&mut client, json!(["AUTH", note]).to_string()).starts_with("invalid:"));
    // The right one, with a trailing slash on the URL.
    let (_, good) = auth_message(&user, &challenge, &format!("{url}/"), now());
    client.send(&good);
    assert_eq!(client.expect("OK")[2], true);
    // Another connection's challenge does not work here.
    let mut second = relay.connect();
    let (_, reused) = auth_message(&user, &challenge, &url, now());
    assert!(refused(&mut second, reused).contains("challenge"));
}

#[test]
fn auth_events_are_never_stored_or_broadcast() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 2);
    let user = keys(6020);
    let mut watcher = relay.connect();
    watcher.send(&json!(["REQ", "all", {"limit": 0}]).to_string());
    watcher.until_eose("all");
    let mut client = relay.connect();
    let challenge = challenge_of(&mut client);
    let (_, message) = auth_message(&user, &challenge, &format!("ws://127.0.0.1:{}", relay.port), now());
    client.send(&message);
    assert_eq!(client.expect("OK")[2], true);
    // Published as an EVENT, kind 22242 is refused.
    let event: Value = serde_json::from_str(&message).map(|mut m: Value| m[1].take()).unwrap();
    let (accepted, reason) = client.publish(&event.to_string());
    assert!(!accepted && reason.starts_with("invalid:"), "{reason}");
    // The watcher sees the next event, not the AUTH.
    assert!(client.publish(&signed(&user, 1, now(), &[], "after")).0);
    let seen = watcher.expect("EVENT");
    assert_eq!(seen[2]["kind"], 1, "{seen}");
    assert!(client.req("q", &[json!({"kinds": [22242]})]).is_empty());
}

#[test]
fn write_auth_mode_needs_an_authenticated_allowed_client() {
    let dir = tempfile::tempdir().unwrap();
    let member = keys(6030);
    let config = format!(
        "[auth]\nchallenge = \"when_needed\"\n[policy]\nwrite = \"auth\"\npubkeys_allowed = [\"{}\"]\n",
        member.public_key().to_hex()
    );
    let relay = Relay::start_with_config(dir.path(), 2, &config);
    let nip11 = crate::relay::nip11(relay.port);
    assert_eq!(nip11["limitation"]["restricted_writes"], true, "{nip11}");
    assert!(nip11["supported_nips"].as_array().unwrap().contains(&json!(42)));

    let mut client = relay.connect();
    let note = signed(&keys(6031), 1, now(), &[], "from a stranger");
    let (accepted, reason) = client.publish(&note);
    assert!(!accepted && reason.starts_with("auth-required:"), "{reason}");
    // "when_needed": the challenge came with that answer.
    let challenge = client.challenge.clone().expect("a challenge before the auth-required OK");
    let url = format!("ws://127.0.0.1:{}", relay.port);
    client.send(&auth_message(&keys(6031), &challenge, &url, now()).1);
    assert_eq!(client.expect("OK")[2], true);
    let (accepted, reason) = client.publish(&note);
    assert!(!accepted && reason.starts_with("restricted:"), "{reason}");
    client.send(&auth_message(&member, &challenge, &url, now()).1);
    assert_eq!(client.expect("OK")[2], true);
    assert!(client.publish(&note).0, "a member relays a stranger's signed event");
    assert_eq!(client.req("q", &[json!({"kinds": [1]})]).len(), 1);
}

#[test]
fn allow_list_and_deny_lists_decide_by_author_and_kind() {
    let dir = tempfile::tempdir().unwrap();
    let (member, banned) = (keys(6040), keys(6041));
    let config = format!(
        "[policy]\nwrite = \"allow_list\"\npubkeys_allowed = [\"{}\", \"{}\"]\npubkeys_denied = [\"{}\"]\nkinds_denied = [7]\n",
        member.public_key().to_hex(),
        banned.public_key().to_hex(),
        banned.public_key().to_hex()
    );
    let config = format!("[info]\npayment_required = true\npayments_url = \"https://relay.example.com/pay\"\n{config}");
    let relay = Relay::start_with_config(dir.path(), 1, &config);
    let nip11 = crate::relay::nip11(relay.port);
    assert_eq!(nip11["limitation"]["payment_required"], true, "{nip11}");
    assert_eq!(nip11["payments_url"], "https://relay.example.com/pay", "{nip11}");
    let mut client = relay.connect();
    assert!(client.publish(&signed(&member, 1, now(), &[], "member")).0);
    let (accepted, reason) = client.publish(&signed(&keys(6042), 1, now(), &[], "stranger"));
    assert!(!accepted && reason.starts_with("blocked:"), "{reason}");
    let (accepted, reason) = client.publish(&signed(&banned, 1, now(), &[], "banned"));
    assert!(!accepted && reason.starts_with("blocked:"), "denied wins over allowed: {reason}");
    let (accepted, reason) = client.publish(&signed(&member, 7, now(), &[], "+"));
    assert!(!accepted && reason.starts_with("blocked:"), "{reason}");
    assert_eq!(crate::relay::nip11(relay.port)["limitation"]["restricted_writes"], true);
}

/// Gift wraps and DMs reach their author and recipients only: never a wildcard or kind-only
/// filter, a COUNT or a live subscription of anyone else (the leak strfry #256 and nostream
/// #699 shipped).
#[test]
fn private_kinds_reach_only_their_author_and_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 2);
    let (sender, recipient, stranger) = (keys(6050), keys(6051), keys(6052));
    let to = recipient.public_key().to_hex();
    // Live subscribers: everything, from an unauthenticated and a stranger's connection,
    // and the recipient's.
    let mut anonymous_live = relay.connect();
    let mut stranger_live = relay.connect();
    authenticate(&mut stranger_live, &relay, &stranger);
    let mut recipient_live = relay.connect();
    authenticate(&mut recipient_live, &relay, &recipient);
    for client in [&mut anonymous_live, &mut stranger_live, &mut recipient_live] {
        client.send(&json!(["REQ", "live", {"limit": 0}]).to_string());
        client.until_eose("live");
    }

    let mut publisher = relay.connect();
    let wrap = signed(&sender, 1059, now() - 10, &[&["p", to.as_str()]], "sealed");
    let dm = signed(&sender, 4, now() - 9, &[&["p", to.as_str()]], "?iv=x");
    let public = signed(&sender, 1, now() - 8, &[], "public");
    for event in [&wrap, &dm, &public] {
        assert!(publisher.publish(event).0);
    }
    // Live: the recipient gets all three; the others only the public note.
    let kinds = |client: &mut Client, count: usize| -> Vec<u64> {
        (0..count).map(|_| client.expect("EVENT")[2]["kind"].as_u64().unwrap()).collect()
    };
    assert_eq!(kinds(&mut recipient_live, 3), vec![1059, 4, 1]);
    assert_eq!(kinds(&mut anonymous_live, 1), vec![1], "no private event live for the unauthenticated");
    assert_eq!(kinds(&mut stranger_live, 1), vec![1], "nor for a stranger");

    // Stored and counted: nothing private for the unauthenticated or the stranger.
    let mut stranger = relay.connect();
    authenticate(&mut stranger, &relay, &keys(6053));
    let filters = [json!({}), json!({"kinds": [1059]}), json!({"kinds": [4, 1059]}), json!({"#p": [to]})];
    for client in [&mut relay.connect(), &mut stranger] {
        for filter in &filters {
            let found = client.req("q", std::slice::from_ref(filter));
            assert!(found.iter().all(|event| event["kind"] == 1), "{filter} leaked: {found:?}");
            client.send(&json!(["COUNT", "c", filter]).to_string());
            let count = client.expect("COUNT")[2]["count"].as_u64().unwrap();
            let public = u64::from(filter.get("kinds").is_none() && filter.get("#p").is_none());
            assert_eq!(count, public, "COUNT {filter} counted private events");
        }
    }
    // For the unauthenticated, who may see no private event, `{}` and kinds are counted
    // from the indexes' totals less the private kinds': no scan (a COUNT flood is cheap).
    let scanned = relay.stats()["counts_scanned"].as_u64().unwrap();
    let mut anonymous = relay.connect();
    for filter in [json!({}), json!({"kinds": [1, 1059]})] {
        anonymous.send(&json!(["COUNT", "c", filter]).to_string());
        assert_eq!(anonymous.expect("COUNT")[2]["count"], 1, "{filter}");
    }
    assert_eq!(relay.stats()["counts_scanned"].as_u64().unwrap(), scanned, "counted without a scan");
    // The recipient and the author see them.
    for (who, keys) in [("recipient", &recipient), ("author", &sender)] {
        let mut client = relay.connect();
        authenticate(&mut client, &relay, keys);
        assert_eq!(client.req("q", &[json!({"kinds": [1059, 4]})]).len(), 2, "{who}");
        client.send(&json!(["COUNT", "c", {"kinds": [1059]}]).to_string());
        assert_eq!(client.expect("COUNT")[2]["count"], 1, "{who}");
    }
}

#[test]
fn read_auth_mode_closes_unauthenticated_reads() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_config(dir.path(), 1, "[policy]\nread = \"auth\"\n");
    let mut client = relay.connect();
    client.send(&json!(["REQ", "r", {"kinds": [1]}]).to_string());
    let closed = client.expect("CLOSED");
    assert!(closed[2].as_str().unwrap().starts_with("auth-required:"), "{closed}");
    client.send(&json!(["COUNT", "c", {"kinds": [1]}]).to_string());
    assert!(client.expect("CLOSED")[2].as_str().unwrap().starts_with("auth-required:"));
    authenticate(&mut client, &relay, &keys(6060));
    assert!(client.req("r", &[json!({"kinds": [1]})]).is_empty());
}

/// The data directory's `policy.toml` adds to `[policy]`'s lists, and SIGHUP reloads it on
/// every core without a restart; a file that does not parse leaves the lists in force.
#[test]
fn policy_lists_reload_on_sighup_on_every_core() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (keys(6070), keys(6071));
    let lists = |denied: &Keys| format!("pubkeys_denied = [\"{}\"]\n", denied.public_key().to_hex());
    std::fs::create_dir_all(dir.path()).unwrap();
    std::fs::write(dir.path().join("policy.toml"), lists(&first)).unwrap();
    let relay = Relay::start(dir.path(), 2);
    // Several connections, so that both cores' copies of the policy are asked.
    let mut clients: Vec<Client> = (0..6).map(|_| relay.connect()).collect();
    let mut sequence = 0;
    let mut publish = |clients: &mut Vec<Client>, keys: &Keys| -> Vec<bool> {
        clients
            .iter_mut()
            .map(|client| {
                sequence += 1;
                client.publish(&signed(keys, 1, now() - 100 + sequence, &[], "reload")).0
            })
            .collect()
    };
    assert!(publish(&mut clients, &first).iter().all(|accepted| !accepted), "denied by the file");
    assert!(publish(&mut clients, &second).iter().all(|accepted| *accepted));

    std::fs::write(dir.path().join("policy.toml"), lists(&second)).unwrap();
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(relay.pid() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !publish(&mut clients, &first).iter().all(|accepted| *accepted) {
        assert!(std::time::Instant::now() < deadline, "the reload did not take effect on every core");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(publish(&mut clients, &second).iter().all(|accepted| !accepted), "denied after the reload");

    // A broken file: the lists in force stay, and the failure is counted.
    std::fs::write(dir.path().join("policy.toml"), "pubkeys_denied = [\"not a key\"]\n").unwrap();
    unsafe { libc::kill(relay.pid() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let metrics = crate::metrics::scrape(relay.port);
        if crate::metrics::total(&metrics, "ringrelay_policy_reload_failures_total", &[]) >= 1.0 {
            assert_eq!(crate::metrics::total(&metrics, "ringrelay_policy_reloads_total", &[]), 1.0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the failed reload is not counted");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(publish(&mut clients, &second).iter().all(|accepted| !accepted), "the previous lists stay");
}

#[test]
fn a_kind_can_have_its_own_created_at_window() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[[policy.kind_windows]]\nkinds = [1]\npast_secs = 3600\nfuture_secs = 30\n";
    let relay = Relay::start_with_config(dir.path(), 1, config);
    let mut client = relay.connect();
    let author = keys(6080);
    let (accepted, reason) = client.publish(&signed(&author, 1, now() - 7200, &[], "old note"));
    assert!(!accepted && reason.contains("3600 seconds in the past"), "{reason}");
    let (accepted, reason) = client.publish(&signed(&author, 1, now() + 120, &[], "early note"));
    assert!(!accepted && reason.contains("30 seconds in the future"), "{reason}");
    assert!(client.publish(&signed(&author, 1, now() - 60, &[], "recent note")).0);
    // Other kinds keep the relay-wide window (any age, 900 s ahead).
    assert!(client.publish(&signed(&author, 7, now() - 7200, &[], "+")).0);
    assert!(client.publish(&signed(&author, 7, now() + 120, &[], "+")).0);
}
