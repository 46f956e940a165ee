//! Rate limits through the real binary: EVENTs, queries and new connections over their
//! buckets get `rate-limited:` (or 1013), an authenticated client gets its own bucket, and
//! exempt keys are never limited. Loopback is exempt by default, so these relays exempt
//! nothing.

use serde_json::json;

use crate::relay::Relay;
use crate::support::{keys, now, signed};

const TIGHT: &str = "[rate_limits]\nexempt_ips = []\nevents = { per_minute = 1, burst = 3 }\n\
                     queries = { per_minute = 1, burst = 2 }\nconnections = { per_minute = 1, burst = 4 }\n";

#[test]
fn events_over_the_burst_are_rate_limited_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_config(dir.path(), 1, TIGHT);
    let mut client = relay.connect();
    let answers: Vec<(bool, String)> =
        (0..5).map(|i| client.publish(&signed(&keys(7000), 1, now() - 10 + i, &[], "x"))).collect();
    assert!(answers[..3].iter().all(|(accepted, _)| *accepted), "{answers:?}");
    for (accepted, reason) in &answers[3..] {
        assert!(!accepted && reason.starts_with("rate-limited:"), "{reason}");
    }
    // Another client from the same address shares the bucket.
    let mut other = relay.connect();
    let (accepted, reason) = other.publish(&signed(&keys(7001), 1, now(), &[], "y"));
    assert!(!accepted && reason.starts_with("rate-limited:"), "{reason}");
    let metrics = crate::metrics::scrape(relay.port);
    assert_eq!(crate::metrics::total(&metrics, "ringrelay_rate_limited_total", &[("what", "event")]), 3.0);
    assert_eq!(crate::metrics::total(&metrics, "ringrelay_events_total", &[("outcome", "rate_limited")]), 3.0);
    assert_eq!(crate::metrics::total(&metrics, "ringrelay_events_total", &[("outcome", "stored")]), 3.0);
}

/// Behind a trusted proxy, each client is limited by the address the proxy forwards for;
/// the header from anyone else is ignored.
#[test]
fn a_trusted_proxys_clients_each_have_their_own_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("trusted_proxies = [\"127.0.0.1\"]\n{TIGHT}");
    let relay = Relay::start_with_config(dir.path(), 1, &config);
    let publish = |client: &mut crate::relay::Client, index: u64| {
        client.publish(&signed(&keys(7050), 1, now() - 100 + index, &[], "via a proxy")).0
    };
    let mut first = relay.connect_forwarded("198.51.100.1", None);
    let accepted: Vec<bool> = (0..4).map(|i| publish(&mut first, i)).collect();
    assert_eq!(accepted, [true, true, true, false], "the first client's own bucket");
    let mut second = relay.connect_forwarded("203.0.113.5, 198.51.100.2", None);
    assert!(publish(&mut second, 10), "another client behind the proxy has its own");
    // From a peer that is not a trusted proxy, the header means nothing: that peer's own
    // address is the key, and it has spent nothing yet ...
    let untrusted = Some(std::net::Ipv4Addr::new(127, 0, 0, 3));
    let mut spoofing = relay.connect_forwarded("198.51.100.1", untrusted);
    assert!(publish(&mut spoofing, 20));
    // ... and a client claiming the first client's address through it does not get its bucket.
    let accepted: Vec<bool> = (21..24).map(|i| publish(&mut spoofing, i)).collect();
    assert_eq!(accepted, [true, true, false]);
}

#[test]
fn queries_over_the_burst_are_closed_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_config(dir.path(), 1, TIGHT);
    let mut client = relay.connect();
    assert!(client.req("a", &[json!({"kinds": [1]})]).is_empty());
    client.send(&json!(["COUNT", "c", {"kinds": [1]}]).to_string());
    client.expect("COUNT");
    client.send(&json!(["REQ", "b", {"kinds": [1]}]).to_string());
    let closed = client.expect("CLOSED");
    assert!(closed[2].as_str().unwrap().starts_with("rate-limited:"), "{closed}");
}

/// A client refused for its rate is not read for a while (`RATE_LIMITED_READ_PAUSE`,
/// 100 ms) after each refusal: what it keeps sending waits in TCP, then every message is
/// still answered. Meanwhile the relay serves everyone else.
#[test]
fn a_client_over_its_rate_is_read_again_only_after_a_pause() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_config(dir.path(), 1, TIGHT);
    let mut client = relay.connect();
    let sent = std::time::Instant::now();
    for i in 0..8 {
        client.send(&json!(["COUNT", format!("c{i}"), {"kinds": [1]}]).to_string());
    }
    let mut answers = Vec::new();
    for _ in 0..8 {
        answers.push((client.recv(), sent.elapsed()));
    }
    // Each answer by its subscription: the first two counted, the rest refused.
    let answer = |sub: &str| answers.iter().find(|(message, _)| message[1] == sub).expect(sub);
    for i in 0..8 {
        let verb = if i < 2 { "COUNT" } else { "CLOSED" };
        assert_eq!(answer(&format!("c{i}")).0[0], verb, "c{i}: {answers:?}");
    }
    // Six refusals, each followed by a pause before the next message is read: the sixth
    // came at least five pauses after the first.
    let between = answer("c7").1 - answer("c2").1;
    assert!(between >= std::time::Duration::from_millis(500), "refusals {between:?} apart");
    // Another client (another address) is served at once meanwhile.
    client.send(&json!(["COUNT", "again", {"kinds": [1]}]).to_string());
    let mut other = relay.connect_from(std::net::Ipv4Addr::new(127, 0, 0, 3));
    other.send(&json!(["COUNT", "other", {"kinds": [1]}]).to_string());
    assert_eq!(other.expect("COUNT")[1], "other");
    assert_eq!(client.expect("CLOSED")[1], "again");
}

#[test]
fn new_connections_over_the_burst_are_closed_with_1013() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_config(dir.path(), 1, TIGHT);
    let held: Vec<_> = (0..4).map(|_| relay.connect()).collect();
    let (texts, close) = relay.connect().read_until_close();
    assert_eq!(close.map(|(code, _)| code), Some(1013), "{texts:?}");
    assert!(texts.iter().any(|text| text.contains("rate-limited:")), "{texts:?}");
    drop(held);
}

#[test]
fn an_authenticated_client_has_its_own_bucket_and_exempt_pubkeys_none() {
    let dir = tempfile::tempdir().unwrap();
    let exempt = keys(7020);
    let config = format!("{TIGHT}exempt_pubkeys = [\"{}\"]\n", exempt.public_key().to_hex());
    // `exempt_pubkeys` belongs to [rate_limits]: the TIGHT block ends inside it.
    let relay = Relay::start_with_config(dir.path(), 1, &config);
    let mut anonymous = relay.connect();
    for i in 0..3 {
        assert!(anonymous.publish(&signed(&keys(7021), 1, now() - 10 + i, &[], "anon")).0);
    }
    assert!(!anonymous.publish(&signed(&keys(7021), 1, now(), &[], "anon")).0);
    // Authenticated, the same address gets a fresh bucket keyed by the pubkey.
    let mut user = relay.connect();
    crate::auth::authenticate(&mut user, &relay, &keys(7022));
    for i in 0..3 {
        assert!(user.publish(&signed(&keys(7022), 1, now() - 20 + i, &[], "user")).0);
    }
    assert!(!user.publish(&signed(&keys(7022), 1, now(), &[], "user")).0);
    let mut service = relay.connect();
    crate::auth::authenticate(&mut service, &relay, &exempt);
    for i in 0..10 {
        assert!(service.publish(&signed(&exempt, 1, now() - 30 + i, &[], "service")).0, "exempt");
    }
}
