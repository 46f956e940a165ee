//! The protocol's rules, one case each, as clients see them through the real binary on two
//! cores: NIP-01 ordering, limits, filters, subscriptions and kind classes; NIP-09 deletion;
//! NIP-40 expiration; NIP-45 COUNT; NIP-62 requests to vanish; NIP-70 protected events.
//!
//! "Nothing else arrived" is checked with a marker: an event from the same author as the
//! events before it (so the same owner core fans it out after them, in order) that another
//! subscription of the reader matches. Whatever the reader receives before the marker is
//! everything the relay sent it.

use serde_json::{json, Value};

use crate::relay::{id_of, ids, Client, Relay};
use crate::support::{keys, now, signed};

/// A relay on two cores with a fresh data directory; the relay stops before the directory goes.
struct Fixture {
    relay: Relay,
    _dir: tempfile::TempDir,
}

fn two_cores() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    Fixture { relay: Relay::start(dir.path(), 2), _dir: dir }
}

fn pubkey(index: u32) -> String {
    keys(index).public_key().to_hex()
}

/// Publish every event, each accepted.
fn publish_all(client: &mut Client, events: &[&String]) {
    for json in events {
        assert_eq!(client.publish(json), (true, String::new()), "{json}");
    }
}

/// The next message must be an EVENT of `sub` carrying `event`.
fn expect_event(client: &mut Client, sub: &str, event: &str) {
    let message = client.expect("EVENT");
    assert_eq!((&message[1], &message[2]["id"]), (&json!(sub), &json!(id_of(event))), "{message}");
}

fn refused_with(client: &mut Client, event: &str, prefix: &str) {
    let (accepted, reason) = client.publish(event);
    assert!(!accepted && reason.starts_with(prefix), "wanted `{prefix}`, got {accepted} `{reason}`");
}

#[test]
fn stored_events_come_newest_first_with_ties_by_lowest_id() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    let base = now() - 1000;
    let mut tied: Vec<String> =
        (0..6).map(|i| signed(&keys(2000 + i), 1, base + 10, &[], &format!("tie {i}"))).collect();
    let newer = signed(&keys(2010), 1, base + 20, &[], "newer");
    let older = signed(&keys(2011), 1, base, &[], "older");
    publish_all(&mut client, &[&tied[3], &older, &tied[0], &newer, &tied[5], &tied[1], &tied[4], &tied[2]]);
    tied.sort_by_key(|json| id_of(json));
    let mut expected = vec![id_of(&newer)];
    expected.extend(tied.iter().map(|json| id_of(json)));
    expected.push(id_of(&older));
    assert_eq!(ids(&client.req("all", &[json!({"kinds": [1], "since": base})])), expected);
}

#[test]
fn limit_returns_the_newest_events() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    let base = now() - 1000;
    let events: Vec<String> =
        (0..10).map(|i| signed(&keys(2020 + i % 3), 1, base + i as u64, &[], &format!("{i}"))).collect();
    publish_all(&mut client, &events.iter().collect::<Vec<_>>());
    let newest_three: Vec<String> = events.iter().rev().take(3).map(|json| id_of(json)).collect();
    assert_eq!(ids(&client.req("three", &[json!({"kinds": [1], "limit": 3})])), newest_three);
    // A tie at the cut: the lowest id of the tied ones is kept.
    let (a, b) = (signed(&keys(2023), 1, base + 50, &[], "tie a"), signed(&keys(2024), 1, base + 50, &[], "tie b"));
    publish_all(&mut client, &[&a, &b]);
    let lowest = id_of(&a).min(id_of(&b));
    assert_eq!(ids(&client.req("one", &[json!({"kinds": [1], "limit": 1})])), vec![lowest]);
}

#[test]
fn limit_zero_sends_no_stored_events_then_live_ones() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    let stored = signed(&keys(2030), 1, now() - 10, &[&["t", "zero"]], "stored");
    publish_all(&mut client, &[&stored]);
    assert!(client.req("live", &[json!({"#t": ["zero"], "limit": 0})]).is_empty());
    let mut publisher = fixture.relay.connect();
    let live = signed(&keys(2030), 1, now(), &[&["t", "zero"]], "live");
    publish_all(&mut publisher, &[&live]);
    expect_event(&mut client, "live", &live);
}

#[test]
fn filters_of_one_req_are_a_union_with_each_event_once() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    let base = now() - 100;
    let a = signed(&keys(2040), 1, base + 3, &[&["t", "union"]], "a");
    let b = signed(&keys(2041), 1, base + 2, &[&["t", "union"]], "b");
    let c = signed(&keys(2041), 7, base + 1, &[], "+");
    publish_all(&mut client, &[&a, &b, &c]);
    let events = client
        .req("both", &[json!({"#t": ["union"]}), json!({"authors": [pubkey(2041)]}), json!({"ids": [id_of(&a)]})]);
    assert_eq!(ids(&events), vec![id_of(&a), id_of(&b), id_of(&c)], "newest first, each once");
}

#[test]
fn since_and_until_are_inclusive() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    let t = now() - 500;
    let events: Vec<String> = (0..3).map(|i| signed(&keys(2050), 1, t - 1 + i, &[], &format!("{i}"))).collect();
    publish_all(&mut client, &events.iter().collect::<Vec<_>>());
    let author = pubkey(2050);
    assert_eq!(
        ids(&client.req("exact", &[json!({"authors": [author], "since": t, "until": t})])),
        vec![id_of(&events[1])]
    );
    assert_eq!(
        ids(&client.req("from", &[json!({"authors": [author], "since": t})])),
        vec![id_of(&events[2]), id_of(&events[1])]
    );
    assert_eq!(
        ids(&client.req("to", &[json!({"authors": [author], "until": t})])),
        vec![id_of(&events[1]), id_of(&events[0])]
    );
}

#[test]
fn values_within_a_field_are_alternatives_and_fields_all_apply() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    let t = now() - 100;
    let p = pubkey(2069);
    let cats = signed(&keys(2060), 1, t + 4, &[&["t", "cats"], &["p", &p]], "cats");
    let dogs = signed(&keys(2060), 1, t + 3, &[&["t", "dogs"]], "dogs");
    let fish = signed(&keys(2061), 1, t + 2, &[&["t", "fish"], &["p", &p]], "fish");
    let cats_reply = signed(&keys(2061), 7, t + 1, &[&["t", "cats"]], "+");
    publish_all(&mut client, &[&cats, &dogs, &fish, &cats_reply]);
    let either = client.req("either", &[json!({"#t": ["cats", "dogs"], "kinds": [1]})]);
    assert_eq!(ids(&either), vec![id_of(&cats), id_of(&dogs)]);
    let both_tags = client.req("both", &[json!({"#t": ["cats", "fish"], "#p": [p]})]);
    assert_eq!(ids(&both_tags), vec![id_of(&cats), id_of(&fish)]);
    let author_and_kind = client.req("ak", &[json!({"authors": [pubkey(2061)], "kinds": [7]})]);
    assert_eq!(ids(&author_and_kind), vec![id_of(&cats_reply)]);
    assert!(client.req("nothing", &[json!({"authors": [pubkey(2060)], "kinds": [7]})]).is_empty());
}

#[test]
fn a_req_with_an_open_subscription_id_replaces_it() {
    let fixture = two_cores();
    let mut subscriber = fixture.relay.connect();
    let mut publisher = fixture.relay.connect();
    assert!(subscriber.req("s", &[json!({"kinds": [1]})]).is_empty());
    assert!(subscriber.req("s", &[json!({"kinds": [7]})]).is_empty());
    let note = signed(&keys(2070), 1, now(), &[], "kind 1");
    let reaction = signed(&keys(2070), 7, now(), &[], "+");
    publish_all(&mut publisher, &[&note, &reaction]);
    expect_event(&mut subscriber, "s", &reaction);
}

#[test]
fn close_ends_a_subscription() {
    let fixture = two_cores();
    let mut subscriber = fixture.relay.connect();
    let mut publisher = fixture.relay.connect();
    assert!(subscriber.req("s", &[json!({"kinds": [1]})]).is_empty());
    assert!(subscriber.req("marker", &[json!({"kinds": [7]})]).is_empty());
    subscriber.send(r#"["CLOSE","s"]"#);
    // A probe REQ after the CLOSE: once it is answered, the CLOSE has been handled.
    assert!(subscriber.req("probe", &[json!({"ids": ["00".repeat(32)]})]).is_empty());
    let after = signed(&keys(2071), 1, now(), &[], "after close");
    let marker = signed(&keys(2071), 7, now(), &[], "+");
    publish_all(&mut publisher, &[&after, &marker]);
    expect_event(&mut subscriber, "marker", &marker);
}

#[test]
fn subscription_ids_have_1_to_64_characters() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    let longest = "x".repeat(64);
    assert!(client.req(&longest, &[json!({"kinds": [1]})]).is_empty());
    for bad in [String::new(), "x".repeat(65)] {
        client.send(&json!(["REQ", bad, {"kinds": [1]}]).to_string());
        let notice = client.expect("NOTICE");
        assert!(notice[1].as_str().unwrap().starts_with("invalid:"), "{notice}");
    }
}

#[test]
fn too_many_filters_get_a_closed_with_a_reason() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    let mut message = vec![json!("REQ"), json!("many")];
    message.extend((0..200).map(|kind| json!({"kinds": [kind]})));
    client.send(&Value::Array(message).to_string());
    let closed = client.expect("CLOSED");
    assert_eq!(closed[1], "many");
    assert!(closed[2].as_str().unwrap().starts_with("invalid:"), "{closed}");
}

/// The default limits take a follow list (kind 3) of 3,500 accounts (~250 KiB); an event
/// with one tag more than the most allowed gets an `OK` false that says why.
#[test]
fn a_follow_list_of_3500_accounts_is_accepted_by_default() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    let followed: Vec<String> = (0..3_500).map(|index| pubkey(9_000 + index)).collect();
    let tags: Vec<[&str; 2]> = followed.iter().map(|pubkey| ["p", pubkey.as_str()]).collect();
    let tag_refs: Vec<&[&str]> = tags.iter().map(|tag| &tag[..]).collect();
    let follows = signed(&keys(2170), 3, now() - 10, &tag_refs, "");
    assert!(follows.len() > 240 * 1024, "{} bytes", follows.len());
    publish_all(&mut client, &[&follows]);
    let stored = client.req("follows", &[json!({"kinds": [3], "authors": [pubkey(2170)]})]);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["tags"].as_array().unwrap().len(), 3_500);
    let too_many: Vec<&[&str]> = vec![&["t", "x"]; 4_001];
    refused_with(&mut client, &signed(&keys(2171), 1, now() - 10, &too_many, ""), "invalid: more than 4000 tags");
}

#[test]
fn a_replaceable_event_keeps_the_newest_version_and_the_lowest_id_on_a_tie() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    let alice = keys(2080);
    let t = now() - 100;
    for kind in [0, 3, 10002] {
        let (mut low, mut high) = (signed(&alice, kind, t, &[], "one"), signed(&alice, kind, t, &[], "two"));
        if id_of(&low) > id_of(&high) {
            std::mem::swap(&mut low, &mut high);
        }
        publish_all(&mut client, &[&signed(&alice, kind, t - 10, &[], "first")]);
        publish_all(&mut client, &[&high]);
        publish_all(&mut client, &[&low]);
        refused_with(&mut client, &high, "duplicate:");
        refused_with(&mut client, &signed(&alice, kind, t - 1, &[], "older"), "duplicate:");
        let filter = json!({"kinds": [kind], "authors": [alice.public_key().to_hex()]});
        assert_eq!(ids(&client.req("current", &[filter])), vec![id_of(&low)], "kind {kind}");
    }
}

#[test]
fn addressable_events_are_replaced_per_d_tag() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    let alice = keys(2090);
    let t = now() - 100;
    let first = signed(&alice, 30023, t, &[&["d", "one"]], "first draft");
    let other = signed(&alice, 30023, t, &[&["d", "two"]], "another article");
    let second = signed(&alice, 30023, t + 1, &[&["d", "one"]], "second draft");
    publish_all(&mut client, &[&first, &other, &second]);
    refused_with(&mut client, &signed(&alice, 30023, t - 1, &[&["d", "one"]], "stale"), "duplicate:");
    let stored = client.req("articles", &[json!({"kinds": [30023], "authors": [alice.public_key().to_hex()]})]);
    assert_eq!(ids(&stored), vec![id_of(&second), id_of(&other)]);
    assert_eq!(ids(&client.req("by-d", &[json!({"kinds": [30023], "#d": ["two"]})])), vec![id_of(&other)]);
}

#[test]
fn ephemeral_events_reach_subscribers_and_are_not_stored() {
    let fixture = two_cores();
    let mut subscriber = fixture.relay.connect();
    assert!(subscriber.req("eph", &[json!({"kinds": [20001]})]).is_empty());
    let mut publisher = fixture.relay.connect();
    let ephemeral = signed(&keys(2100), 20001, now(), &[], "ephemeral");
    assert_eq!(publisher.publish(&ephemeral), (true, String::new()));
    expect_event(&mut subscriber, "eph", &ephemeral);
    assert!(publisher.req("stored", &[json!({"kinds": [20001]})]).is_empty());
}

#[test]
fn a_deletion_by_e_tag_removes_its_authors_event_for_good() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    let t = now() - 100;
    let alices = signed(&keys(2110), 1, t, &[], "alice's note");
    let bobs = signed(&keys(2111), 1, t, &[], "bob's note");
    publish_all(&mut client, &[&alices, &bobs]);
    let deletion = signed(&keys(2110), 5, t + 1, &[&["e", &id_of(&alices)]], "");
    publish_all(&mut client, &[&deletion]);
    let left = client.req("notes", &[json!({"ids": [id_of(&alices), id_of(&bobs)]})]);
    assert_eq!(ids(&left), vec![id_of(&bobs)], "only the deleted event is gone");
    refused_with(&mut client, &alices, "blocked:");
    assert_eq!(ids(&client.req("deletions", &[json!({"kinds": [5]})])), vec![id_of(&deletion)], "the request is kept");
}

/// NIP-09 lets a relay check that a deletion request names only its author's events. Many
/// authors over two cores, so that the other author's event is on the other core's shard for
/// some of them and on the same shard for others.
#[test]
fn a_deletion_naming_another_authors_event_is_refused_and_deletes_nothing() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    let t = now() - 100;
    for index in 0..8 {
        let alice = keys(2160 + 2 * index);
        let bob = keys(2161 + 2 * index);
        let alices = signed(&alice, 1, t, &[], "alice's note");
        let bobs = signed(&bob, 1, t, &[], "bob's note");
        publish_all(&mut client, &[&alices, &bobs]);
        let both = signed(&alice, 5, t + 1, &[&["e", &id_of(&alices)], &["e", &id_of(&bobs)]], "");
        refused_with(&mut client, &both, "blocked:");
        let kept = client.req("notes", &[json!({"ids": [id_of(&alices), id_of(&bobs)]})]);
        assert_eq!(ids(&kept).len(), 2, "nothing is deleted by a refused request");
        assert!(client.req("deletions", &[json!({"ids": [id_of(&both)]})]).is_empty(), "nor stored");
        // An id the relay does not have cannot be checked, and is no reason to refuse.
        let unknown = "ab".repeat(32);
        let own = signed(&alice, 5, t + 2, &[&["e", &id_of(&alices)], &["e", &unknown]], "");
        publish_all(&mut client, &[&own]);
        assert_eq!(ids(&client.req("after", &[json!({"ids": [id_of(&alices), id_of(&bobs)]})])), vec![id_of(&bobs)]);
    }
}

#[test]
fn a_deletion_by_a_tag_removes_versions_up_to_its_created_at() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    let alice = keys(2120);
    let t = now() - 100;
    let address = format!("30023:{}:post", alice.public_key().to_hex());
    let article = signed(&alice, 30023, t, &[&["d", "post"]], "article");
    let kept = signed(&alice, 30023, t, &[&["d", "kept"]], "another address");
    publish_all(&mut client, &[&article, &kept]);
    publish_all(&mut client, &[&signed(&alice, 5, t + 5, &[&["a", &address]], "")]);
    assert_eq!(ids(&client.req("after", &[json!({"kinds": [30023]})])), vec![id_of(&kept)]);
    refused_with(&mut client, &article, "blocked:");
    refused_with(&mut client, &signed(&alice, 30023, t + 5, &[&["d", "post"]], "as old as the deletion"), "blocked:");
    let newer = signed(&alice, 30023, t + 6, &[&["d", "post"]], "written after the deletion");
    publish_all(&mut client, &[&newer]);
    assert_eq!(ids(&client.req("post", &[json!({"kinds": [30023], "#d": ["post"]})])), vec![id_of(&newer)]);
}

/// NIP-62: a request to vanish naming this relay (here by the address the client dialled)
/// retires every event of its author up to its `created_at`, deletion requests included, and
/// the gift wraps to it on every shard, for good (a restart applies it again); older events
/// and wraps are refused afterwards, newer ones accepted; the request itself is kept and a
/// kind 5 cannot delete it.
#[test]
fn a_request_to_vanish_deletes_its_authors_events_and_wraps_to_it_for_good() {
    let dir = tempfile::tempdir().unwrap();
    // Gift wraps are served to anyone here, so that the test sees which are left.
    let config = "[policy]\nprivate_kinds = []\n";
    let relay = Relay::start_with_config(dir.path(), 2, config);
    let mut client = relay.connect();
    let (alice, bob) = (keys(2300), keys(2301));
    let alice_hex = alice.public_key().to_hex();
    let t = now() - 100;
    let note = signed(&alice, 1, t, &[], "a note");
    let profile = signed(&alice, 0, t, &[], "{}");
    let article = signed(&alice, 30023, t + 1, &[&["d", "post"]], "article");
    let deletion = signed(&alice, 5, t + 2, &[&["e", &"ab".repeat(32)]], "");
    let bobs = signed(&bob, 1, t, &[&["p", &alice_hex]], "bob's reply");
    publish_all(&mut client, &[&note, &profile, &article, &deletion, &bobs]);
    // Wraps to alice from one-off keys, so that they land on both cores' shards.
    let wraps: Vec<String> =
        (0..8).map(|i| signed(&keys(2310 + i), 1059, t + 5, &[&["p", &alice_hex]], "sealed")).collect();
    publish_all(&mut client, &wraps.iter().collect::<Vec<_>>());
    let elsewhere = signed(&alice, 62, t + 10, &[&["relay", "wss://another.example.com"]], "");
    refused_with(&mut client, &elsewhere, "invalid:");
    let here = format!("ws://127.0.0.1:{}", relay.port);
    let vanish = signed(&alice, 62, t + 10, &[&["relay", "wss://another.example.com"], &["relay", &here]], "bye");
    publish_all(&mut client, &[&vanish]);
    let later = signed(&alice, 1, t + 11, &[], "written after");
    let later_wrap = signed(&keys(2320), 1059, t + 11, &[&["p", &alice_hex]], "sealed later");
    publish_all(&mut client, &[&later, &later_wrap]);
    refused_with(&mut client, &note, "blocked:");
    refused_with(&mut client, &signed(&alice, 1, t + 10, &[], "as old as the request"), "blocked:");
    refused_with(&mut client, &signed(&keys(2321), 1059, t + 9, &[&["p", &alice_hex]], "old wrap"), "blocked:");
    let undo = signed(&alice, 5, t + 12, &[&["e", &id_of(&vanish)]], "");
    publish_all(&mut client, &[&undo]);
    let by_alice = json!({"authors": [alice_hex]});
    let to_alice = json!({"kinds": [1059], "#p": [alice_hex]});
    let expected = vec![id_of(&undo), id_of(&later), id_of(&vanish)];
    assert_eq!(ids(&client.req("alice", std::slice::from_ref(&by_alice))), expected);
    assert_eq!(ids(&client.req("wraps", std::slice::from_ref(&to_alice))), vec![id_of(&later_wrap)]);
    assert_eq!(ids(&client.req("bob", &[json!({"authors": [bob.public_key().to_hex()]})])), vec![id_of(&bobs)]);
    drop(client);
    relay.terminate();
    // The offline tools see what the relay serves, and compaction drops the bytes.
    let data = dir.path().to_str().unwrap();
    let exported = |what: &str| {
        let output = crate::cli::ringrelay(&["export", "--data-dir", data], None);
        assert!(output.status.success(), "{what}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let before = exported("export");
    assert!(wraps.iter().chain([&note]).all(|event| !before.contains(&id_of(event))), "{before}");
    assert!(before.contains(&id_of(&later_wrap)));
    let compacted = crate::cli::ringrelay(&["compact", "--data-dir", data], None);
    assert!(compacted.status.success(), "{}", String::from_utf8_lossy(&compacted.stderr));
    assert_eq!(exported("export after compaction"), before);
    let mut stored = Vec::new();
    let mut pending = vec![dir.path().to_owned()];
    while let Some(path) = pending.pop() {
        for entry in std::fs::read_dir(&path).unwrap().map(Result::unwrap) {
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else {
                stored.extend(std::fs::read(entry.path()).unwrap());
            }
        }
    }
    let stored = String::from_utf8_lossy(&stored);
    assert!(!stored.contains(r#""content":"sealed""#), "the vanished wraps' bytes are gone");
    assert!(!stored.contains(r#""content":"a note""#), "and the author's own");
    assert!(stored.contains(r#""content":"sealed later""#));
    let relay = Relay::start_with_config(dir.path(), 2, config);
    let mut client = relay.connect();
    assert_eq!(ids(&client.req("replayed", &[by_alice])), expected, "the request is replayed");
    assert_eq!(ids(&client.req("wraps", &[to_alice])), vec![id_of(&later_wrap)], "and applied on every shard");
    refused_with(&mut client, &article, "blocked:");
    refused_with(&mut client, &wraps[0], "blocked:");
    // ALL_RELAYS names every relay.
    let carol = keys(2302);
    publish_all(&mut client, &[&signed(&carol, 1, t, &[], "carol's")]);
    publish_all(&mut client, &[&signed(&carol, 62, t + 1, &[&["relay", "ALL_RELAYS"]], "")]);
    assert_eq!(client.req("carol", &[json!({"authors": [carol.public_key().to_hex()], "kinds": [1]})]).len(), 0);
}

#[test]
fn a_deletion_naming_another_authors_address_is_refused() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    let t = now() - 100;
    let bobs = signed(&keys(2131), 30023, t, &[&["d", "post"]], "bob's article");
    publish_all(&mut client, &[&bobs]);
    let address = format!("30023:{}:post", pubkey(2131));
    refused_with(&mut client, &signed(&keys(2130), 5, t + 1, &[&["a", &address]], ""), "blocked:");
    // Refused even when the relay has no event at that address: the address names its author.
    let elsewhere = format!("30023:{}:never-published", pubkey(2131));
    refused_with(&mut client, &signed(&keys(2130), 5, t + 1, &[&["a", &elsewhere]], ""), "blocked:");
    assert_eq!(ids(&client.req("bob", &[json!({"kinds": [30023]})])), vec![id_of(&bobs)]);
    assert!(client.req("deletions", &[json!({"kinds": [5]})]).is_empty());
}

#[test]
fn deleting_a_deletion_request_has_no_effect() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    let alice = keys(2140);
    let t = now() - 100;
    let note = signed(&alice, 1, t, &[], "note");
    let deletion = signed(&alice, 5, t + 1, &[&["e", &id_of(&note)]], "");
    publish_all(&mut client, &[&note, &deletion]);
    publish_all(&mut client, &[&signed(&alice, 5, t + 2, &[&["e", &id_of(&deletion)]], "undo?")]);
    let deletion_id = id_of(&deletion);
    let stored = client.req("d", &[json!({"ids": [deletion_id, id_of(&note)]})]);
    assert_eq!(ids(&stored), vec![deletion_id], "the first deletion stands, and the note stays deleted");
}

#[test]
fn an_expired_event_is_refused_and_one_that_expires_stops_being_served() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    let alice = keys(2150);
    refused_with(
        &mut client,
        &signed(&alice, 1, now() - 10, &[&["expiration", &(now() - 1).to_string()]], "late"),
        "invalid:",
    );
    let expires_at = now() + 2;
    let brief = signed(&alice, 1, now() - 10, &[&["expiration", &expires_at.to_string()]], "brief");
    publish_all(&mut client, &[&brief]);
    let filter = json!({"authors": [alice.public_key().to_hex()]});
    assert_eq!(ids(&client.req("before", std::slice::from_ref(&filter))), vec![id_of(&brief)]);
    // Bounded wait: the event expires within ~3 s of the clock.
    while now() <= expires_at {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(client.req("after", &[filter]).is_empty());
}

#[test]
fn protected_events_need_authentication() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    refused_with(&mut client, &signed(&keys(2160), 1, now(), &[&["-"]], "protected"), "auth-required:");
}

#[test]
fn created_at_too_far_ahead_is_invalid() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    refused_with(&mut client, &signed(&keys(2170), 1, now() + 3600, &[], "from the future"), "invalid:");
    // Within the default window (15 minutes) is fine.
    publish_all(&mut client, &[&signed(&keys(2170), 1, now() + 60, &[], "a fast clock")]);
}

#[test]
fn count_answers_the_union_of_its_filters() {
    let fixture = two_cores();
    let mut client = fixture.relay.connect();
    let t = now() - 10;
    for i in 0..7 {
        publish_all(&mut client, &[&signed(&keys(2180 + i % 3), 1, t, &[&["t", "count"]], &format!("{i}"))]);
    }
    publish_all(&mut client, &[&signed(&keys(2180), 7, t, &[], "+")]);
    client.send(&json!(["COUNT", "c", {"#t": ["count"]}, {"authors": [pubkey(2180)]}]).to_string());
    // 7 tagged notes, plus the one reaction by the author of three of them.
    assert_eq!(client.expect("COUNT"), json!(["COUNT", "c", {"count": 8}]));
}
