//! NIP-50 search through the real binary: words and phrases, relevance then `limit`, the
//! filter's other fields, what the store retires (deletions, replacements), private kinds,
//! live subscriptions, COUNT, bad queries, and restarts with the index kept and removed.
//! The JavaScript side (nostr-tools) is in tests/clients/search.mjs.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::relay::{id_of, ids, Client, Relay};
use crate::support::{keys, now, signed};

/// Search until `expected` ids come back, in that order (an event is searchable within
/// about a second of its OK), for at most 10 s; returns the last answer's ids.
fn search_until(client: &mut Client, filter: Value, expected: &[String]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = ids(&client.req("search", std::slice::from_ref(&filter)));
        if found == expected || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn search_finds_every_word_best_first_within_the_filters_other_fields() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 2);
    let mut client = relay.connect();
    let (alice, bob) = (keys(1600), keys(1601));
    let t = now();
    let notes = [
        signed(&alice, 1, t - 30, &[], "relay operators unite, relay operators"),
        signed(&bob, 1, t - 20, &[], "this is the long story of a relay and of the many tired people who were its operators over all of those years"),
        signed(&alice, 1, t - 10, &[], "the relay is down again"),
        signed(&bob, 1, t - 5, &[&["t", "cafés"]], "a day of naïve Café visits"),
        signed(&alice, 1, t - 4, &[], "私は東京タワーに行きました"),
        signed(&alice, 0, t - 3, &[], r#"{"name":"Alice","about":"I run relays for operators"}"#),
        signed(&bob, 1, t - 2, &[], "operators of some other relay talking about nothing at all"),
    ];
    for note in &notes {
        assert!(client.publish(note).0);
    }
    let id = |n: usize| id_of(&notes[n]);
    // Both words, in any order; the short note that says them most first, the long one last.
    let both = search_until(&mut client, json!({"search": "relay operators", "kinds": [1]}), &[id(0), id(6), id(1)]);
    assert_eq!(both, [id(0), id(6), id(1)]);
    // `limit` after the ranking.
    assert_eq!(ids(&client.req("s", &[json!({"search": "relay operators", "kinds": [1], "limit": 1})])), [id(0)]);
    // The other fields: authors, since, kinds (a profile is searched by its fields).
    let by_alice = json!({"search": "RELAY operators", "authors": [alice.public_key().to_hex()]});
    assert_eq!(ids(&client.req("s", &[by_alice])), [id(0)]);
    assert_eq!(ids(&client.req("s", &[json!({"search": "relay operators", "since": t - 25})])), [id(6), id(1)]);
    assert_eq!(ids(&client.req("s", &[json!({"search": "relays", "kinds": [0]})])), [id(5)]);
    // A phrase as written; case, accents, hashtags; a word inside an unspaced script.
    assert_eq!(ids(&client.req("s", &[json!({"search": "\"operators unite\""})])), [id(0)]);
    assert!(client.req("s", &[json!({"search": "\"unite operators\""})]).is_empty());
    assert_eq!(ids(&client.req("s", &[json!({"search": "CAFE naive"})])), [id(3)]);
    assert_eq!(ids(&client.req("s", &[json!({"search": "cafes", "kinds": [1]})])), [id(3)]);
    assert_eq!(ids(&client.req("s", &[json!({"search": "タワー"})])), [id(4)]);
    // Extensions are set aside, not read as words.
    assert_eq!(ids(&client.req("s", &[json!({"search": "down language:en include:spam"})])), [id(2)]);
    // Two filters: a search's hits keep their order, then the other filter's.
    let two = client.req("s", &[json!({"search": "down"}), json!({"ids": [id(4)]})]);
    assert_eq!(ids(&two), [id(2), id(4)]);
    // COUNT counts what the search finds.
    client.send(&json!(["COUNT", "c", {"search": "relay"}]).to_string());
    assert_eq!(client.expect("COUNT")[2]["count"], 4);
    // Bad queries are refused with CLOSED invalid:, and the connection goes on.
    for bad in [json!({"search": "x ".repeat(200)}), json!({"search": "!!!"}), json!({"search": 5})] {
        client.send(&json!(["REQ", "bad", bad]).to_string());
        let closed = client.expect("CLOSED");
        assert!(closed[2].as_str().unwrap().starts_with("invalid:"), "{closed}");
    }
    let nip11 = crate::relay::nip11(relay.port);
    assert!(nip11["supported_nips"].as_array().unwrap().contains(&50.into()));
}

#[test]
fn what_the_store_retires_or_hides_is_never_found_and_live_events_match() {
    let dir = tempfile::tempdir().unwrap();
    // Kind 4 asked for, but it is private: never indexed.
    let relay = Relay::start_with_config(dir.path(), 1, "[search]\nkinds = [0, 1, 4]\n");
    let mut client = relay.connect();
    let author = keys(1610);
    let t = now();
    let deleted = signed(&author, 1, t - 10, &[], "ephemeral thoughts about zebras");
    let old_profile = signed(&author, 0, t - 9, &[], r#"{"name":"Bob the builder"}"#);
    let new_profile = signed(&author, 0, t - 8, &[], r#"{"name":"Bob the painter"}"#);
    let dm = signed(&author, 4, t - 7, &[&["p", &keys(1611).public_key().to_hex()]], "zebras secret plans");
    let kept = signed(&author, 1, t - 6, &[], "zebras are striped");
    for event in [&deleted, &old_profile, &new_profile, &dm, &kept] {
        assert!(client.publish(event).0);
    }
    // Retired events leave the index without a search meeting them: the five above, then
    // the deletion (a profile replaced: one; the DM: never indexed).
    let documents = |count: u64| relay.stats_until(Duration::from_secs(10), |stats| stats["search_documents"] == count);
    assert_eq!(documents(3)["search_documents"], 3, "the first profile replaced, the DM private");
    assert!(client.publish(&signed(&author, 5, t - 1, &[&["e", &id_of(&deleted)]], "")).0);
    assert_eq!(documents(2)["search_documents"], 2, "the deleted note forgotten");
    let found = search_until(&mut client, json!({"search": "zebras"}), &[id_of(&kept)]);
    assert_eq!(found, [id_of(&kept)], "deleted and private events are not found");
    assert_eq!(search_until(&mut client, json!({"search": "painter"}), &[id_of(&new_profile)]), [id_of(&new_profile)]);
    assert!(client.req("s", &[json!({"search": "builder"})]).is_empty(), "a replaced version is not found");
    // Versions retired after they were indexed, ranked above the live one: a search with
    // `limit: 1` still finds the live one (the index is asked again for more).
    let writer = keys(1612);
    for version in 0..5u64 {
        let words = if version < 4 { "zanzibar zanzibar zanzibar" } else { "zanzibar" };
        let content = json!({"name": format!("{words} version{version}")}).to_string();
        let profile = signed(&writer, 0, t - 100 + version, &[], &content);
        assert!(client.publish(&profile).0);
        let unique = json!({"search": format!("version{version}")});
        assert_eq!(search_until(&mut client, unique, &[id_of(&profile)]), [id_of(&profile)]);
        if version == 4 {
            assert_eq!(ids(&client.req("s", &[json!({"search": "zanzibar", "limit": 1})])), [id_of(&profile)]);
        }
    }
    // A live subscription with a search gets new events that match, and only those.
    assert!(client.req("live", &[json!({"search": "breaking news"})]).is_empty());
    let mut publisher = relay.connect();
    let news = signed(&author, 1, now(), &[], "Breaking: the news today");
    assert!(publisher.publish(&signed(&author, 1, now(), &[], "no story here, just news")).0);
    assert!(publisher.publish(&news).0);
    let live = client.expect("EVENT");
    assert_eq!((live[1].as_str(), live[2]["id"].as_str()), (Some("live"), Some(id_of(&news).as_str())));
    // NEG-OPEN with a search is refused.
    client.send(&json!(["NEG-OPEN", "n", {"search": "zebras"}, "6100000200"]).to_string());
    let refused = client.expect("NEG-ERR");
    assert!(refused[2].as_str().unwrap().starts_with("blocked:"), "{refused}");
}

#[test]
fn the_index_survives_restarts_and_is_rebuilt_when_removed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 2);
    let mut client = relay.connect();
    let notes: Vec<String> = (0..40)
        .map(|i| signed(&keys(1620 + i % 4), 1, now() - 100 + i as u64, &[], &format!("aardvark number {i}")))
        .collect();
    assert_eq!(client.publish_all(&notes), notes.len());
    let filter = json!({"search": "aardvark", "limit": 100});
    let mut all: Vec<String> = notes.iter().map(|note| id_of(note)).collect();
    let found = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = ids(&client.req("s", std::slice::from_ref(&filter)));
            if found.len() == notes.len() || Instant::now() >= deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut sorted = found.clone();
    sorted.sort();
    all.sort();
    assert_eq!(sorted, all, "every note found");
    let port = relay.port;
    // A clean stop commits; a restart serves the same answer at once.
    drop(client);
    assert!(relay.terminate().success());
    let relay = Relay::start_on(dir.path(), 2, "", port);
    let mut client = relay.connect();
    assert_eq!(ids(&client.req("s", std::slice::from_ref(&filter))), found);
    // Events published after the restart are found too, and after a kill -9 they are fed
    // again from the checkpoint.
    let later = signed(&keys(1630), 1, now(), &[], "aardvark after the restart");
    assert!(client.publish(&later).0);
    drop(client);
    relay.kill9();
    let relay = Relay::start_on(dir.path(), 2, "", port);
    let mut client = relay.connect();
    let with_later = search_until(&mut client, json!({"search": "aardvark restart"}), &[id_of(&later)]);
    assert_eq!(with_later, [id_of(&later)]);
    // Kinds the index was not built for: it is built again, and finds them.
    let reaction = signed(&keys(1631), 7, now(), &[], "aardvark reaction");
    assert!(client.publish(&reaction).0);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(client.req("s", &[json!({"search": "reaction"})]).is_empty(), "kind 7 is not indexed by default");
    drop(client);
    assert!(relay.terminate().success());
    let relay = Relay::start_on(dir.path(), 2, "[search]\nkinds = [1, 7]\n", port);
    let mut client = relay.connect();
    let found = search_until(&mut client, json!({"search": "aardvark reaction"}), &[id_of(&reaction)]);
    assert_eq!(found, [id_of(&reaction)]);
    let notes_found = search_until(&mut client, json!({"search": "restart"}), &[id_of(&later)]);
    assert_eq!(notes_found, [id_of(&later)], "the notes are indexed again too");
    drop(client);
    assert!(relay.terminate().success());
    // Removed: rebuilt from the segments while the relay serves.
    let mut removed = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let search = entry.unwrap().path().join("search");
        if search.is_dir() {
            std::fs::remove_dir_all(&search).unwrap();
            removed += 1;
        }
    }
    assert_eq!(removed, 2, "one index per shard");
    let relay = Relay::start_on(dir.path(), 2, "", port);
    let mut client = relay.connect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let rebuilt = loop {
        let rebuilt = ids(&client.req("s", std::slice::from_ref(&filter)));
        if rebuilt.len() == notes.len() + 1 || Instant::now() >= deadline {
            break rebuilt;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rebuilt.len(), notes.len() + 1);
    assert!(relay.stats()["search_indexed"].as_u64() >= Some(notes.len() as u64 + 1));
}
