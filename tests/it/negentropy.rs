//! NIP-77 negentropy syncs through the real binary on two cores, driven by the negentropy
//! crate as the client (rust-nostr's, which nostr-sdk's `Client::sync` uses): what each side
//! lacks, the read rules, the budgets and a hostile message; and by nostr-sdk itself
//! (`Client.sync` from PyPI, tests/sync/), which moves the events both ways.

use std::time::Duration;

use negentropy::{Id, Negentropy, NegentropyStorageVector};
use serde_json::{json, Value};
use tungstenite::Message;

use crate::relay::{id_of, Client, Relay};
use crate::support::{keys, now, signed};

/// The next relay message as JSON (NOTICE and AUTH skipped).
fn next(client: &mut Client) -> Value {
    client.set_read_timeout(Duration::from_secs(10));
    match client.read_within() {
        Some(Ok(Message::Text(text))) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("expected a message, got {other:?}"),
    }
}

fn decode(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The ids of `events`, sorted: what a sync reports.
fn sorted_ids<'a>(events: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut ids: Vec<String> = events.into_iter().map(|json| id_of(json)).collect();
    ids.sort();
    ids
}

/// A client's first message over an empty set.
fn first_of_nothing() -> String {
    let mut storage = NegentropyStorageVector::new();
    storage.seal().unwrap();
    encode(&Negentropy::owned(storage, 0).unwrap().initiate().unwrap())
}

/// NEG-CLOSE was the last thing sent: the core's sync budgets come back to zero.
fn assert_budgets_released(relay: &Relay) {
    let closed = |stats: &Value| stats["neg_syncs"] == 0 && stats["neg_items"] == 0;
    let stats = relay.stats_until(Duration::from_secs(5), closed);
    assert!(closed(&stats), "{stats}");
}

fn item(json: &str) -> (u64, [u8; 32]) {
    let event: Value = serde_json::from_str(json).unwrap();
    let id = decode(event["id"].as_str().unwrap());
    (event["created_at"].as_u64().unwrap(), id.try_into().unwrap())
}

/// Sync `filter` holding `mine`: the ids the client has that the relay lacks, and the ids
/// the relay has that the client lacks, sorted, hex; or the NEG-ERR reason.
fn sync(
    client: &mut Client,
    sub: &str,
    filter: Value,
    mine: &[(u64, [u8; 32])],
) -> Result<(Vec<String>, Vec<String>), String> {
    let mut storage = NegentropyStorageVector::new();
    for &(created_at, id) in mine {
        storage.insert(created_at, Id::from_byte_array(id)).unwrap();
    }
    storage.seal().unwrap();
    let mut negentropy = Negentropy::owned(storage, 0).unwrap();
    let first = negentropy.initiate().unwrap();
    client.send(&json!(["NEG-OPEN", sub, filter, encode(&first)]).to_string());
    let (mut have, mut need) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        let message = next(client);
        assert_eq!(message[1], sub, "{message}");
        match message[0].as_str().unwrap() {
            "NEG-MSG" => {
                let answer = decode(message[2].as_str().unwrap());
                match negentropy.reconcile_with_ids(&answer, &mut have, &mut need).unwrap() {
                    Some(next) => client.send(&json!(["NEG-MSG", sub, encode(&next)]).to_string()),
                    None => {
                        client.send(&json!(["NEG-CLOSE", sub]).to_string());
                        let hex = |ids: Vec<Id>| {
                            let mut ids: Vec<String> = ids.into_iter().map(|id| encode(id.as_bytes())).collect();
                            ids.sort();
                            ids
                        };
                        return Ok((hex(have), hex(need)));
                    }
                }
            }
            "NEG-ERR" => return Err(message[2].as_str().unwrap().to_owned()),
            other => panic!("unexpected {other}: {message}"),
        }
    }
    panic!("the sync did not end in 100 rounds")
}

#[test]
fn a_sync_tells_each_side_what_the_other_lacks_across_cores() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 2);
    let mut client = relay.connect();
    let base = now() - 10_000;
    // 40 notes from 20 authors (both cores' shards), one profile that the filter leaves out.
    let stored: Vec<String> =
        (0..40).map(|i| signed(&keys(7000 + i % 20), 1, base + u64::from(i) * 7, &[], &format!("n{i}"))).collect();
    let profile = signed(&keys(7000), 0, base, &[], "{}");
    assert_eq!(client.publish_all(&stored), 40);
    assert!(client.publish(&profile).0);
    // The client holds the first 15 and 5 of its own.
    let extra: Vec<String> =
        (0..5).map(|i| signed(&keys(7100 + i), 1, base + u64::from(i), &[], &format!("mine {i}"))).collect();
    let mine: Vec<(u64, [u8; 32])> = stored[..15].iter().chain(&extra).map(|json| item(json)).collect();
    let (have, need) = sync(&mut client, "s1", json!({"kinds": [1]}), &mine).unwrap();
    assert_eq!(have, sorted_ids(&extra));
    assert_eq!(need, sorted_ids(&stored[15..]));

    // A filter's limit narrows the set to its newest events.
    let (_, need) = sync(&mut client, "s2", json!({"kinds": [1], "limit": 5}), &[]).unwrap();
    assert_eq!(need, sorted_ids(&stored[35..]));
    assert_budgets_released(&relay);
}

/// With every message answered off the core (`answer_off_core_from = 0`, as sets of 50,000
/// events and more are), a sync of several rounds comes out the same.
#[test]
fn messages_answered_off_the_core_come_out_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[negentropy]\nanswer_off_core_from = 0\nframe_size_max = 4096\n";
    let relay = Relay::start_with_config(dir.path(), 2, config);
    let mut client = relay.connect();
    let base = now() - 20_000;
    let stored: Vec<String> =
        (0..300).map(|i| signed(&keys(7500 + i % 30), 1, base + u64::from(i) * 3, &[], &format!("o{i}"))).collect();
    assert_eq!(client.publish_all(&stored), 300);
    let mine: Vec<(u64, [u8; 32])> = stored.iter().step_by(2).map(|json| item(json)).collect();
    let (have, need) = sync(&mut client, "off", json!({"kinds": [1]}), &mine).unwrap();
    assert!(have.is_empty(), "{have:?}");
    assert_eq!(need, sorted_ids(stored.iter().skip(1).step_by(2)));
    assert_budgets_released(&relay);
}

/// Room for three sets being gathered at a time per core (`items_per_core_max = 3 x
/// items_max`): six syncs opened at once wait their turn to gather rather than being
/// refused, and every one is answered (the 20 events each holds fit the core's budget even
/// if all six land on one core).
#[test]
fn syncs_opened_at_once_wait_their_turn_to_gather() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_config(dir.path(), 2, "[negentropy]\nitems_max = 40\nitems_per_core_max = 120\n");
    let mut publisher = relay.connect();
    let events: Vec<String> =
        (0..20).map(|i| signed(&keys(7600 + i), 1, now() - 100 + u64::from(i), &[], "t")).collect();
    assert_eq!(publisher.publish_all(&events), 20);
    let first = first_of_nothing();
    let mut clients: Vec<Client> = (0..6).map(|_| relay.connect()).collect();
    for client in &mut clients {
        client.send(&json!(["NEG-OPEN", "t", {"kinds": [1]}, first]).to_string());
    }
    for client in &mut clients {
        let answer = next(client);
        assert_eq!((&answer[0], &answer[1]), (&json!("NEG-MSG"), &json!("t")), "{answer}");
    }
}

/// nostr-sdk's `Client.sync` (tests/sync/sync.py) against `relay` over kind 1, with a fresh
/// client database `name` holding `events`: its summary.
fn sdk_sync(relay: &Relay, dir: &std::path::Path, name: &str, events: &[String], direction: &str) -> Value {
    let mine = dir.join(format!("{name}-events.jsonl"));
    std::fs::write(&mine, events.join("\n")).unwrap();
    let sync_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sync");
    let site = crate::support::python_packages(std::path::Path::new(sync_dir), "nostr-sdk");
    let output = std::process::Command::new("python3")
        .arg(std::path::Path::new(sync_dir).join("sync.py"))
        .arg(format!("ws://127.0.0.1:{}", relay.port))
        .arg(dir.join(format!("{name}-db")))
        .arg(&mine)
        .args(["1", direction])
        .env("PYTHONPATH", site)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "sync.py failed ({}): {} {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// nostr-sdk's own `Client.sync` (Python, from PyPI) against the relay, both directions:
/// what the client lacks is fetched, what the relay lacks is published, and afterwards both
/// hold the same set.
#[test]
fn nostr_sdk_syncs_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 2);
    let mut client = relay.connect();
    let base = now() - 5_000;
    let events: Vec<String> =
        (0..20).map(|i| signed(&keys(7400 + i % 7), 1, base + u64::from(i), &[], &format!("sdk {i}"))).collect();
    assert_eq!(client.publish_all(&events[..12]), 12);
    let summary = sdk_sync(&relay, dir.path(), "client", &events[8..], "both");
    let sorted = |events: &[String]| json!(sorted_ids(events));
    assert_eq!(summary["failed"], json!({}), "{summary}");
    assert_eq!((&summary["local"], &summary["sent"]), (&sorted(&events[12..]), &sorted(&events[12..])), "{summary}");
    assert_eq!((&summary["remote"], &summary["received"]), (&sorted(&events[..8]), &sorted(&events[..8])), "{summary}");
    // The relay now holds all 20, and a second sync finds nothing to move.
    assert_eq!(client.req("all", &[json!({"kinds": [1], "since": base})]).len(), 20);
    let (have, need) =
        sync(&mut client, "again", json!({"kinds": [1]}), &events.iter().map(|json| item(json)).collect::<Vec<_>>())
            .unwrap();
    assert!(have.is_empty() && need.is_empty(), "{have:?} {need:?}");
}

/// nostr-sdk with an empty side and a 10,000-event difference: an empty relay takes all of a
/// client's 10,000 events (up), then a client with an empty database gets them all (down).
#[test]
fn nostr_sdk_syncs_an_empty_side_and_a_10k_difference() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), 2);
    let base = now() - 50_000;
    let events: Vec<String> = (0..10_000u32)
        .map(|i| signed(&keys(7900 + i % 40), 1, base + u64::from(i), &[], &format!("sdk {i}")))
        .collect();
    let all = json!(sorted_ids(&events));
    let up = sdk_sync(&relay, dir.path(), "full", &events, "up");
    assert_eq!(up["failed"], json!({}), "{up}");
    assert_eq!((&up["local"], &up["sent"], &up["remote"]), (&all, &all, &json!([])));
    let down = sdk_sync(&relay, dir.path(), "empty", &[], "down");
    assert_eq!(down["failed"], json!({}), "{down}");
    assert_eq!((&down["remote"], &down["received"], &down["local"]), (&all, &all, &json!([])));
}

#[test]
fn private_kinds_stay_out_of_a_sync_for_who_may_not_read_them() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 2);
    let mut client = relay.connect();
    let recipient = keys(7201).public_key().to_hex();
    let wrap = signed(&keys(7200), 1059, now() - 60, &[&["p", &recipient]], "sealed");
    let note = signed(&keys(7200), 1, now() - 60, &[], "public");
    assert!(client.publish(&wrap).0);
    assert!(client.publish(&note).0);
    let (_, need) = sync(&mut client, "p", json!({"authors": [keys(7200).public_key().to_hex()]}), &[]).unwrap();
    assert_eq!(need, vec![id_of(&note)], "the gift wrap is not in an unauthenticated reader's set");
}

#[test]
fn budgets_and_bad_messages_get_a_neg_err_and_the_relay_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[negentropy]\nitems_max = 10\nidle_secs = 1\nsyncs_per_connection_max = 1\n";
    let relay = Relay::start_with_config(dir.path(), 2, config);
    let mut client = relay.connect();
    let base = now() - 1000;
    let events: Vec<String> = (0..12).map(|i| signed(&keys(7300 + i), 1, base + u64::from(i), &[], "x")).collect();
    assert_eq!(client.publish_all(&events), 12);

    let over = sync(&mut client, "big", json!({"kinds": [1]}), &[]).unwrap_err();
    assert!(over.starts_with("blocked: "), "{over}");
    assert_eq!(sync(&mut client, "small", json!({"kinds": [1], "limit": 10}), &[]).unwrap().1.len(), 10);
    // An array of filters is their union (NDK sends one), each event once, under the same
    // maximum: the newest 6 and the newest 4 are 6; the newest 6 and the oldest 6 are 12.
    let union = json!([{"kinds": [1], "limit": 6}, {"kinds": [1], "limit": 4}]);
    assert_eq!(sync(&mut client, "union", union, &[]).unwrap().1.len(), 6);
    let over = json!([{"kinds": [1], "limit": 6}, {"kinds": [1], "until": base + 5}]);
    assert!(sync(&mut client, "union-over", over, &[]).unwrap_err().starts_with("blocked: "));

    client.send(&json!(["NEG-MSG", "nobody", "61"]).to_string());
    assert!(next(&mut client)[2].as_str().unwrap().starts_with("closed: "));
    client.send(&json!(["NEG-OPEN", "hex", {"kinds": [1]}, "not hex"]).to_string());
    assert!(next(&mut client)[2].as_str().unwrap().starts_with("invalid: "));
    // A hostile message: an id list claiming 2^35 ids.
    client.send(&json!(["NEG-OPEN", "huge", {"kinds": [1], "limit": 1}, "61000002818080808000"]).to_string());
    let answer = next(&mut client);
    assert_eq!((&answer[0], &answer[1]), (&json!("NEG-ERR"), &json!("huge")), "{answer}");
    // The second open sync of this connection is over its budget.
    let first = first_of_nothing();
    client.send(&json!(["NEG-OPEN", "kept", {"kinds": [1], "limit": 1}, first]).to_string());
    assert_eq!(next(&mut client)[0], "NEG-MSG");
    client.send(&json!(["NEG-OPEN", "second", {"kinds": [1], "limit": 1}, first]).to_string());
    assert!(next(&mut client)[2].as_str().unwrap().starts_with("blocked: "));
    // The kept one goes idle and is closed.
    let idle = next(&mut client);
    assert_eq!((&idle[0], &idle[1]), (&json!("NEG-ERR"), &json!("kept")), "{idle}");
    assert!(idle[2].as_str().unwrap().starts_with("closed: "));
    // Everyone else is still served.
    assert_eq!(relay.connect().req("after", &[json!({"kinds": [1], "limit": 1})]).len(), 1);
    let counted = |stats: &Value| stats["neg_refused"].as_u64() >= Some(2) && stats["neg_idle_closed"] == 1;
    let stats = relay.stats_until(Duration::from_secs(5), counted);
    assert!(counted(&stats), "{stats}");
}

/// NDK's NIP-77 sync (`@nostr-dev-kit/sync`, under node, `tests/clients/ndk-sync.mjs`) both
/// ways: against an empty relay it finds all of its 10,000 events missing there and
/// publishes them; then, holding 9,600 of them while the relay also took 300 others, it
/// fetches the 700 it lacks (in one REQ of 700 ids without a `limit`: more than
/// `limit_default`, all served).
#[test]
fn ndk_syncs_both_ways_from_an_empty_side_and_over_a_10k_difference() {
    let checks = crate::clients::installed_checks();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), 2);
    let base = now() - 50_000;
    let own: Vec<String> = (0..10_000u32)
        .map(|i| signed(&keys(7700 + i % 50), 1, base + u64::from(i), &[], &format!("ndk {i}")))
        .collect();
    let ndk = |name: &str, events: &[String]| -> Value {
        let file = dir.path().join(name);
        std::fs::write(&file, events.join("\n")).unwrap();
        let output = std::process::Command::new("node")
            .arg(checks.join("ndk-sync.mjs"))
            .arg(format!("ws://127.0.0.1:{}", relay.port))
            .arg(&file)
            .arg(json!({"kinds": [1], "since": base}).to_string())
            .output()
            .expect("node runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "ndk-sync.mjs: {stdout} {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
    };

    let first = ndk("all-mine.jsonl", &own);
    assert_eq!(first["have"].as_array().unwrap().len(), 10_000);
    assert_eq!((&first["need"], &first["published"]), (&json!([]), &json!(10_000)));
    let counted = relay.connect().req("n", &[json!({"kinds": [1], "since": base, "limit": 5000})]).len();
    assert_eq!(counted, 5000, "the relay serves what NDK published");

    let others: Vec<String> =
        (0..300u32).map(|i| signed(&keys(7800 + i % 10), 1, base + 20_000 + u64::from(i), &[], "other")).collect();
    assert_eq!(relay.connect().publish_all(&others), 300);
    let second = ndk("most.jsonl", &own[400..]);
    let lacking: Vec<String> = sorted_ids(own[..400].iter().chain(&others));
    assert_eq!((&second["have"], &second["need"]), (&json!([]), &json!(lacking)));
    assert_eq!(second["fetched"], json!(lacking));
}
