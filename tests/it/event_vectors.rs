//! Events signed by a real Nostr library must verify, be served as the same event, and
//! hand-broken ones must be refused with the right `invalid:` reason.

use ringrelay::event::{parse_event, EventError, KindClass, VerifiedEvent};
use ringrelay::limits::EventLimits;
use serde_json::Value;

use crate::support::{keys, signed, verified};

/// The served JSON must be the same event as the signed one (same fields and values).
fn check_round_trip(json: &str) {
    let event = verified(json);
    let original: Value = serde_json::from_str(json).unwrap();
    let served: Value = serde_json::from_str(event.json()).unwrap();
    assert_eq!(original, served, "served form differs for {json}");
    // Serving the served form again is a fixed point.
    assert_eq!(verified(event.json()).json(), event.json());
}

#[test]
fn signed_events_verify_and_round_trip() {
    let k = keys(0);
    let cases: Vec<String> = vec![
        signed(&k, 1, 1_700_000_000, &[], "hello"),
        signed(&k, 1, 1_700_000_000, &[], ""),
        signed(&k, 1, 0, &[], "created_at zero"),
        signed(&k, 1, 9_007_199_254_740_991, &[], "created_at at 2^53-1"),
        signed(&k, 1, 1, &[], "escapes: \n \" \\ \r \t \u{8} \u{c} \u{1} \u{1f} \u{7f} / end"),
        signed(&k, 1, 2, &[], "unicode: 日本語 🎉 é \u{2028} \u{fffd}"),
        signed(&k, 65535, 3, &[&["t", "max kind"]], "kind 65535"),
        signed(&k, 0, 4, &[], "{\"name\":\"alice\"}"),
        signed(
            &k,
            1,
            5,
            &[
                &["e", &"ab".repeat(32)],
                &["p", &"cd".repeat(32), "wss://r.example", "mention"],
                &["t", "tag\nwith\tescapes\""],
            ],
            "tags",
        ),
        signed(&k, 30023, 6, &[&["d", ""], &["title", "empty d"]], "addressable"),
        signed(&k, 1, 7, &[&["x"], &["alt", ""]], "single-element tag and empty value"),
    ];
    for json in &cases {
        check_round_trip(json);
    }
}

#[test]
fn the_served_json_is_built_without_growing_its_buffer() {
    let k = keys(0);
    let limits = EventLimits::default();
    for json in [
        signed(&k, 1, 1_700_000_000, &[], ""),
        signed(&k, 1, 9_007_199_254_740_991, &[&["t", "nostr"], &["p", &"cd".repeat(32), "wss://r.example"]], "hi"),
        signed(&k, 65535, 1, &[&["e", &"ab".repeat(32)], &["alt", ""], &["x"]], &"lorem ipsum ".repeat(40)),
    ] {
        let parsed = parse_event(json.as_bytes(), &limits).unwrap();
        // A grown buffer would at least double: the estimate is an upper bound within 64 bytes.
        assert!(parsed.json.len() <= parsed.json.capacity(), "{json}");
        assert!(
            parsed.json.capacity() - parsed.json.len() < 64,
            "{} of {}: {json}",
            parsed.json.len(),
            parsed.json.capacity()
        );
    }
}

#[test]
fn tag_facts_are_extracted() {
    let k = keys(1);
    let event = verified(&signed(
        &k,
        30023,
        10,
        &[
            &["d", "slug"],
            &["e", &"ab".repeat(32)],
            &["expiration", "4000000000"],
            &["-"],
            &["title", "x"],
            &["d", "second"],
        ],
        "",
    ));
    assert_eq!(event.class(), KindClass::Addressable);
    assert_eq!(event.d_tag(), b"slug");
    assert_eq!(event.expiration(), Some(4_000_000_000));
    assert!(event.is_protected());
    let letters: Vec<u8> = event.index_tags().iter().map(|t| t.letter).collect();
    assert_eq!(letters, b"ded");
}

/// Replace the first occurrence of `from` in a signed event's JSON.
fn broken(json: &str, from: &str, to: &str) -> String {
    assert!(json.contains(from), "{from} not in {json}");
    json.replacen(from, to, 1)
}

fn check_refused(json: &str, expected: EventError) {
    let limits = EventLimits::default();
    let got = parse_event(json.as_bytes(), &limits).and_then(VerifiedEvent::verify).map(|_| ());
    assert_eq!(got, Err(expected.clone()), "{json}");
    assert!(expected.reason().starts_with("invalid: "));
}

#[test]
fn hand_broken_events_are_refused() {
    let k = keys(2);
    let good = signed(&k, 1, 1_700_000_000, &[&["t", "x"]], "content");
    let value: Value = serde_json::from_str(&good).unwrap();
    let id = value["id"].as_str().unwrap().to_owned();
    let sig = value["sig"].as_str().unwrap().to_owned();
    let pubkey = value["pubkey"].as_str().unwrap().to_owned();

    let other_id = format!("{}{}", if id.starts_with('0') { "1" } else { "0" }, &id[1..]);
    check_refused(&broken(&good, &id, &other_id), EventError::IdMismatch);
    check_refused(&broken(&good, "\"content\":\"content\"", "\"content\":\"Content\""), EventError::IdMismatch);
    let other_sig = format!("{}{}", if sig.starts_with('0') { "1" } else { "0" }, &sig[1..]);
    check_refused(&broken(&good, &sig, &other_sig), EventError::BadSignature);
    check_refused(&broken(&good, &id, &id.to_uppercase()), EventError::BadHex("id"));
    check_refused(&broken(&good, &pubkey, &pubkey[..62]), EventError::BadHex("pubkey"));
    check_refused(&broken(&good, &sig, &format!("{sig}00")), EventError::BadHex("sig"));
    check_refused(&broken(&good, "\"kind\":1", "\"kind\":70000"), EventError::KindOutOfRange(70000));
    check_refused(
        &broken(&good, "\"created_at\":1700000000", "\"created_at\":9007199254740992"),
        EventError::CreatedAtOutOfRange(9_007_199_254_740_992),
    );
    check_refused(&broken(&good, "\"kind\":1,", ""), EventError::MissingField("kind"));
    check_refused(&broken(&good, "\"kind\":1,", "\"kind\":1,\"kind\":1,"), EventError::DuplicateField("kind"));
    check_refused(&format!("{{\"a\":[[[[[[[[[[1]]]]]]]]]],{}", &good[1..]), EventError::TooDeep(8));

    let limits = EventLimits::default();
    let json_error = |json: &str| matches!(parse_event(json.as_bytes(), &limits), Err(EventError::Json(_)));
    assert!(json_error(&broken(&good, "\"kind\":1", "\"kind\":\"1\"")));
    assert!(json_error(&broken(&good, "\"kind\":1", "\"kind\":1.5")));
    assert!(json_error(&broken(&good, "\"created_at\":1700000000", "\"created_at\":-1")));
    assert!(json_error(&broken(&good, "\"created_at\":1700000000", "\"created_at\":1.7e9")));
    assert!(json_error(&broken(&good, "[[\"t\",\"x\"]]", "[[\"t\",null]]")));
    assert!(json_error(&broken(&good, "[[\"t\",\"x\"]]", "[[\"t\",1]]")));
    assert!(json_error(&broken(&good, "[[\"t\",\"x\"]]", "{}")));
    assert!(json_error(&format!("{good} trailing")));
    assert!(json_error("[]"));
    assert!(json_error(""));
    assert!(json_error("{\"id\":\"\\ud800\"}"));
}

#[test]
fn limits_are_checked() {
    let k = keys(3);
    let limits = EventLimits {
        event_size_max: 2_000,
        content_size_max: 100,
        tag_count_max: 3,
        tag_element_count_max: 4,
        tag_element_size_max: 50,
    };
    let check = |json: String, expected: EventError| {
        assert_eq!(parse_event(json.as_bytes(), &limits).map(|_| ()), Err(expected))
    };
    let large = signed(&k, 1, 1, &[], &"x".repeat(2_000));
    let size = large.len();
    check(large, EventError::TooLarge { size, max: 2_000 });
    check(signed(&k, 1, 1, &[], &"x".repeat(101)), EventError::ContentTooLarge(100));
    check(signed(&k, 1, 1, &[&["t", "1"], &["t", "2"], &["t", "3"], &["t", "4"]], ""), EventError::TooManyTags(3));
    check(signed(&k, 1, 1, &[&["t", "1", "2", "3", "4"]], ""), EventError::TagTooLong(4));
    check(signed(&k, 1, 1, &[&["t", &"y".repeat(51)]], ""), EventError::TagElementTooLarge(50));
    assert!(parse_event(signed(&k, 1, 1, &[&["t", "1", "2", "3"]], &"x".repeat(100)).as_bytes(), &limits).is_ok());
}
