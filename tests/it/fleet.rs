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
    assert!(stderr.contains("1201 local, 901 only here, 1201 only there"), "{stderr}");
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
/// recipient (`--auth-key`, answered to the relay's NIP-42 challenge); a filter narrows
/// what moves.
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

/// A relay that refuses the sync, or is not there, makes the command fail with the reason.
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
        ringrelay(&["sync", "wss://relay.example", "--data-dir", dir.path().join("data").to_str().unwrap()], None);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("wss:// is not spoken"));
}
