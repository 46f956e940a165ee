//! The configuration's tests: defaults, the example file and the docs agree, and bad values are refused.

use super::*;

/// The sample in the README is a valid config file.
#[test]
fn readme_sample_parses() {
    let readme = include_str!("../../README.md");
    let sample = readme.split("```toml\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a toml block");
    let config: Config = toml::from_str(sample).expect("the README sample parses");
    config.validate().unwrap();
    assert_eq!(config.limits.subscriptions_per_connection_max, RelayLimits::default().subscriptions_per_connection_max);
}

/// The example file shows exactly the defaults, and docs/configuration.md documents
/// every key the relay has.
#[test]
fn example_file_is_the_defaults_and_every_key_is_documented() {
    let example: Config = toml::from_str(include_str!("../../ringrelay.example.toml")).expect("the example parses");
    assert_eq!(example, Config::default());
    let docs = include_str!("../../docs/configuration.md");
    let info = RelayInfo {
        pubkey: Some("0".repeat(64)),
        contact: Some("mailto:x".into()),
        payments_url: Some("https://x".into()),
        icon: Some("https://x/icon.png".into()),
        software: Some("https://x/ringrelay".into()),
        ..RelayInfo::default()
    };
    let metrics_listen = Some("127.0.0.1:9777".parse().unwrap());
    let window = KindWindow { kinds: vec![1], past_secs: 60, future_secs: 60 };
    let policy = PolicyConfig { kind_windows: vec![window], ..PolicyConfig::default() };
    let peer = PeerConfig {
        url: "ws://127.0.0.1:7778".into(),
        direction: crate::fleet::sync::Direction::Both,
        filter: "{}".into(),
        live: true,
        interval_secs: 60,
    };
    let peering = PeeringConfig {
        key_file: Some("peer.key".into()),
        ca_file: Some("fleet-ca.pem".into()),
        ..PeeringConfig::default()
    };
    let full = Config {
        key_file: Some("key".into()),
        metrics_listen,
        info,
        policy,
        peering,
        peers: vec![peer],
        ..Config::default()
    };
    assert_eq!(toml::from_str::<Config>(&full.to_toml()).expect("its own output parses"), full);
    for line in full.to_toml().lines() {
        if let Some((key, _)) = line.split_once(" = ") {
            assert!(docs.contains(&format!("`{key}`")), "docs/configuration.md does not document `{key}`");
        }
    }
}

#[test]
fn peers_and_the_fleet_keys_are_checked() {
    let peer = |url: &str, filter: &str| PeerConfig {
        url: url.into(),
        direction: crate::fleet::sync::Direction::Down,
        filter: filter.into(),
        live: true,
        interval_secs: 0,
    };
    let with = |peers: Vec<PeerConfig>, pubkeys: Vec<String>| {
        let peering = PeeringConfig { pubkeys, ..PeeringConfig::default() };
        Config { peers, peering, ..Config::default() }.validate()
    };
    assert!(with(vec![peer("ws://10.0.0.6:7777", r#"{"kinds":[1]}"#)], vec!["ab".repeat(32)]).is_ok());
    assert!(with(vec![peer("wss://relay.example", "{}")], vec![]).is_ok());
    assert!(with(vec![peer("http://10.0.0.6", "{}")], vec![]).is_err());
    assert!(with(vec![peer("ws://10.0.0.6", r#"{"kinds":"x"}"#)], vec![]).is_err());
    assert!(with(vec![], vec!["AB".repeat(32)]).is_err());
    let parsed: Config = toml::from_str("[[peers]]\nurl = \"ws://h:1\"\n").expect("a peer with defaults");
    let expected =
        PeerConfig { interval_secs: 3600, direction: crate::fleet::sync::Direction::Both, ..peer("ws://h:1", "{}") };
    assert_eq!(parsed.peers[0], expected);
}

#[test]
fn negentropy_budgets_are_checked() {
    assert!(Config::default().validate().is_ok());
    let with = |negentropy: NegentropyConfig| Config { negentropy, ..Config::default() }.validate();
    let defaults = NegentropyConfig::default();
    assert!(with(NegentropyConfig { frame_size_max: 1000, ..defaults.clone() }).is_err());
    assert!(with(NegentropyConfig { frame_size_max: 0, ..defaults.clone() }).is_ok());
    assert!(with(NegentropyConfig { items_per_core_max: 10, items_max: 11, ..defaults.clone() }).is_err());
    assert!(with(NegentropyConfig { idle_secs: 0, ..defaults }).is_err());
}

#[test]
fn the_lists_file_is_optional_and_checked() {
    let dir = std::env::temp_dir().join(format!("ringrelay-lists-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(PolicyLists::load(&dir).unwrap(), PolicyLists::default(), "no file: no lists");
    std::fs::write(dir.join(POLICY_LISTS_FILE), "kinds_denied = [7]\n").unwrap();
    assert_eq!(PolicyLists::load(&dir).unwrap().kinds_denied, vec![7]);
    std::fs::write(dir.join(POLICY_LISTS_FILE), "pubkeys_denied = [\"nope\"]\n").unwrap();
    assert!(PolicyLists::load(&dir).unwrap_err().to_string().contains("not a pubkey"));
    std::fs::write(dir.join(POLICY_LISTS_FILE), "pubkeys_banned = []\n").unwrap();
    assert!(PolicyLists::load(&dir).unwrap_err().to_string().contains("unknown field"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An unknown key is an error naming the key and its line.
#[test]
fn unknown_keys_are_named_with_their_line() {
    let error = toml::from_str::<Config>("cores = 1\n[limits]\nlimit_max = 10\nlimit_maxx = 3\n").unwrap_err();
    let text = error.to_string();
    assert!(text.contains("unknown field `limit_maxx`") && text.contains("line 4"), "{text}");
}

#[test]
fn defaults_and_file() {
    Config::default().validate().unwrap();
    let dir = std::env::temp_dir().join(format!("ringrelay-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("relay.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:9000\"\n[info]\nname = \"test\"\n[limits]\nlimit_max = 10\nlimit_default = 5\n",
    )
    .unwrap();
    let config = Config::from_file(&path).unwrap();
    assert_eq!(config.listen.port(), 9000);
    assert_eq!(config.info.name, "test");
    assert_eq!(config.limits.limit_max, 10);
    assert_eq!(config.limits.subscriptions_per_connection_max, 200);
    std::fs::write(&path, "[limits]\nlimit_max = 10\n").unwrap();
    assert!(Config::from_file(&path).unwrap_err().to_string().contains("limit_default"));
    std::fs::write(&path, "bogus = 1\n").unwrap();
    assert!(Config::from_file(&path).unwrap_err().to_string().contains("unknown field"));
    std::fs::remove_dir_all(&dir).unwrap();
}
