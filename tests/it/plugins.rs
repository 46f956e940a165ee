//! The write-policy plugin through the real binary, with a real plugin process in strfry's
//! protocol (`tests/plugins/sifter.py`): its decisions, the request it is sent, a plugin that
//! hangs, one that crashes, and one whose file changes while the relay runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::relay::{id_of, Client, Relay};
use crate::support::{keys, now, signed};

const SIFTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/plugins/sifter.py");

/// The sifter, copied where the test may change it; the path the relay runs.
fn installed_plugin(dir: &Path) -> PathBuf {
    let path = dir.join("sifter.py");
    std::fs::copy(SIFTER, &path).unwrap();
    path
}

fn config(plugin: &Path, on_failure: &str) -> String {
    format!("[write_plugin]\ncommand = \"{}\"\ntimeout_ms = 500\non_failure = \"{on_failure}\"\n", plugin.display())
}

fn publish_content(client: &mut Client, content: &str, sequence: u32) -> (String, bool, String) {
    let event = signed(&keys(8000 + sequence % 4), 1, now() - 100 + u64::from(sequence), &[], content);
    let (accepted, reason) = client.publish(&event);
    (id_of(&event), accepted, reason)
}

/// Publish fresh events until one is accepted, for at most 10 s (a plugin restarts at most
/// once a second); returns how many were tried.
fn until_accepted(client: &mut Client, sequence: &mut u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut tries = 0;
    loop {
        *sequence += 1;
        tries += 1;
        let (_, accepted, reason) = publish_content(client, "hello again", *sequence);
        if accepted {
            return tries;
        }
        assert!(reason.starts_with("error:"), "only the plugin's failure refuses this: {reason}");
        assert!(Instant::now() < deadline, "the plugin was not restarted");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stored(client: &mut Client, id: &str) -> bool {
    !client.req("find", &[json!({"ids": [id]})]).is_empty()
}

#[test]
fn a_strfry_plugin_decides_and_survives_hanging_and_crashing() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = installed_plugin(dir.path());
    let relay = Relay::start_with_config(&dir.path().join("data"), 2, &config(&plugin, "reject"));
    let mut client = relay.connect();
    let mut sequence = 0;
    let publish = |client: &mut Client, content: &str, sequence: &mut u32| {
        *sequence += 1;
        publish_content(client, content, *sequence)
    };

    let (hello, accepted, _) = publish(&mut client, "hello", &mut sequence);
    assert!(accepted && stored(&mut client, &hello));
    let (spam, accepted, reason) = publish(&mut client, "spam", &mut sequence);
    assert_eq!((accepted, reason.as_str()), (false, "blocked: no spam here"));
    assert!(!stored(&mut client, &spam));
    let (shadow, accepted, _) = publish(&mut client, "shadow", &mut sequence);
    assert!(accepted, "a shadow rejection looks accepted");
    assert!(!stored(&mut client, &shadow), "but is not stored");
    // The sifter writes a junk line before every answer: skipped, and logged once per 10 s
    // per core (each core has its plugin), not once per line.
    for _ in 0..30 {
        assert!(publish(&mut client, "chatter", &mut sequence).1);
    }
    let junk_lines = relay.log_lines_with("not JSON");
    assert!((1..=2).contains(&junk_lines), "{junk_lines} log lines for 33 junk lines");

    // The request strfry's plugins read.
    let log = std::fs::read_to_string(plugin.with_extension("py.log")).unwrap();
    let first: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "new");
    assert_eq!(first["event"]["id"], hello.as_str());
    assert_eq!((first["sourceType"].as_str(), first["sourceInfo"].as_str()), (Some("IP4"), Some("127.0.0.1")));
    assert!(first["receivedAt"].as_u64().unwrap().abs_diff(now()) < 60);
    assert!(first.get("authed").is_none());
    let author = keys(8100);
    crate::auth::authenticate(&mut client, &relay, &author);
    let (authed_event, accepted, _) = publish(&mut client, "as an authenticated client", &mut sequence);
    assert!(accepted);
    let log = std::fs::read_to_string(plugin.with_extension("py.log")).unwrap();
    let request: Value = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .find(|r: &Value| r["event"]["id"] == authed_event.as_str())
        .unwrap();
    assert_eq!(request["authed"], author.public_key().to_hex());

    // A plugin that hangs is killed after timeout_ms; one that crashes is noticed. The event
    // gets on_failure's decision, and the plugin is started again.
    for content in ["hang", "crash"] {
        let (id, accepted, reason) = publish(&mut client, content, &mut sequence);
        assert!(!accepted && reason.starts_with("error:"), "{content}: {reason}");
        assert!(!stored(&mut client, &id));
        until_accepted(&mut client, &mut sequence);
    }
    let samples = crate::metrics::scrape(relay.port);
    assert!(crate::metrics::total(&samples, "ringrelay_plugin_failures_total", &[]) >= 2.0);
    assert!(crate::metrics::total(&samples, "ringrelay_plugin_starts_total", &[]) >= 3.0);
    let refused =
        crate::metrics::total(&samples, "ringrelay_events_total", &[("outcome", "refused"), ("reason", "plugin")]);
    assert_eq!(refused, 1.0);
}

/// A changed plugin file is picked up without a restart, by every core's plugin.
#[test]
fn a_changed_plugin_is_reloaded_on_every_core() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = installed_plugin(dir.path());
    let relay = Relay::start_with_config(&dir.path().join("data"), 2, &config(&plugin, "reject"));
    let mut clients: Vec<Client> = (0..6).map(|_| relay.connect()).collect();
    let mut sequence = 0;
    for client in clients.iter_mut() {
        sequence += 1;
        assert!(publish_content(client, "hello", sequence).1);
    }
    let strict = std::fs::read_to_string(SIFTER).unwrap().replace(
        r#"answer = {"id": event["id"], "action": "accept"}"#,
        r#"answer = {"id": event["id"], "action": "reject", "msg": "version 2 takes nothing"}"#,
    );
    // Written beside it and renamed over it, as an editor or a deploy does.
    let next = dir.path().join("sifter.next");
    std::fs::write(&next, strict).unwrap();
    std::fs::set_permissions(&next, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&next, &plugin).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for client in clients.iter_mut() {
        loop {
            sequence += 1;
            let (_, accepted, reason) = publish_content(client, "hello", sequence);
            if !accepted {
                assert_eq!(reason, "blocked: version 2 takes nothing");
                break;
            }
            assert!(Instant::now() < deadline, "the changed plugin was not picked up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// With `on_failure = "accept"`, a plugin that cannot run lets events through.
#[test]
fn a_plugin_that_cannot_run_gets_the_configured_decision() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-plugin");
    let open = Relay::start_with_config(&dir.path().join("open"), 1, &config(&missing, "accept"));
    let mut client = open.connect();
    assert!(publish_content(&mut client, "hello", 1).1);
    let closed = Relay::start_with_config(&dir.path().join("closed"), 1, &config(&missing, "reject"));
    let mut client = closed.connect();
    let (_, accepted, reason) = publish_content(&mut client, "hello", 2);
    assert!(!accepted && reason.starts_with("error:"), "{reason}");
}

/// The plugin's queue is a byte budget: an event larger than all of it still gets its turn
/// (it waits for the whole budget), and several publishers share it.
#[test]
fn events_larger_than_the_plugins_byte_budget_still_get_judged() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = installed_plugin(dir.path());
    let config = format!("{}queue_bytes_max = 65536\n", config(&plugin, "reject"));
    let relay = Relay::start_with_config(&dir.path().join("data"), 1, &config);
    let big = "x".repeat(90 * 1024);
    let mut clients: Vec<Client> = (0..2).map(|_| relay.connect()).collect();
    let events: Vec<Vec<String>> =
        (0..2).map(|c| (0..3u64).map(|i| signed(&keys(8200 + c), 1, now() - 100 + i, &[], &big)).collect()).collect();
    for (client, events) in clients.iter_mut().zip(&events) {
        for event in events {
            client.feed(&json!(["EVENT", serde_json::from_str::<Value>(event).unwrap()]).to_string());
        }
        client.flush();
    }
    for (client, events) in clients.iter_mut().zip(&events) {
        for _ in events {
            let ok = client.expect("OK");
            assert_eq!(ok[2], true, "{ok}");
        }
    }
}
