//! `GET /metrics` as Prometheus sees it: the real binary under real traffic, its exposition
//! parsed by the official Prometheus client's strict OpenMetrics parser (Python's
//! `prometheus_client`, installed from PyPI into the target directory on first use), and
//! each counter checked against the traffic the test sent.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::relay::Relay;
use crate::support::{keys, now, signed};

const PARSER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/metrics");

/// Where the pinned parser is installed (`pip install --target`), once per requirements file
/// (and once per test run: the tests of this module share it).
fn parser_site() -> PathBuf {
    static SITE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    SITE.get_or_init(|| crate::support::python_packages(Path::new(PARSER), "metrics-parser")).clone()
}

/// One parsed sample.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    labels: Value,
    value: f64,
}

/// Parse an exposition with the strict parser; panics (with the text) on any format error.
fn parse(text: &str) -> Vec<Sample> {
    let mut child = Command::new("python3")
        .arg(Path::new(PARSER).join("parse.py"))
        .env("PYTHONPATH", parser_site())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the OpenMetrics parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let samples: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    samples
        .into_iter()
        .map(|sample| Sample {
            name: sample["name"].as_str().unwrap().to_owned(),
            labels: sample["labels"].clone(),
            value: sample["value"].as_f64().unwrap(),
        })
        .collect()
}

/// `GET path` on `port`: the status code, the content type and the body.
fn get(port: u16, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head: {response}"));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let content_type = head.lines().find_map(|line| line.strip_prefix("Content-Type: ")).unwrap_or_default().to_owned();
    (status, content_type, body.to_owned())
}

pub fn scrape(port: u16) -> Vec<Sample> {
    let (status, content_type, body) = get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    parse(&body)
}

/// The sum of the samples named `name` whose labels include `labels`.
pub fn total(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|sample| sample.name == name && labels.iter().all(|(key, value)| sample.labels[key] == *value))
        .collect();
    assert!(!matching.is_empty(), "no sample {name} with {labels:?}");
    matching.iter().map(|sample| sample.value).sum()
}

/// Scrape until `done` holds (for what the relay counts after it answers, such as a
/// connection's end), for at most 10 s; returns the last scrape.
fn scrape_until(port: u16, done: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = scrape(port);
        if done(&samples) || Instant::now() >= deadline {
            return samples;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A signed event with its signature's first hex digit changed: well-formed, id intact,
/// signature wrong.
fn with_bad_signature(json: &str) -> String {
    let mut event: Value = serde_json::from_str(json).unwrap();
    let sig = event["sig"].as_str().unwrap().to_owned();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    event["sig"] = json!(format!("{flipped}{}", &sig[1..]));
    event.to_string()
}

#[test]
fn metrics_parse_as_openmetrics_and_count_what_the_traffic_did() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_config(dir.path(), 2, "[limits]\nqueries_per_core_max = 48\n");
    let before = scrape(relay.port);
    assert_eq!(total(&before, "ringrelay_cores", &[]), 2.0);
    assert_eq!(total(&before, "ringrelay_events_total", &[("outcome", "stored")]), 0.0);
    assert_eq!(total(&before, "ringrelay_budget_limit", &[("budget", "queries"), ("core", "1")]), 48.0);
    let started = total(&before, "process_start_time_seconds", &[]);
    assert!((started - now() as f64).abs() < 3600.0, "start time {started}");
    assert!(total(&before, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(total(&before, "process_open_fds", &[]) > 0.0);

    // A live subscriber, then 20 events from 4 authors (so both cores' shards store some).
    let mut subscriber = relay.connect();
    subscriber.send(&json!(["REQ", "live", {"kinds": [1], "limit": 0}]).to_string());
    subscriber.until_eose("live");
    let base = now() - 100;
    let events: Vec<String> = (0..20).map(|i| signed(&keys(4000 + i % 4), 1, base + u64::from(i), &[], "m")).collect();
    let mut publisher = relay.connect();
    assert_eq!(publisher.publish_all(&events), 20);
    for _ in 0..20 {
        subscriber.expect("EVENT");
    }
    // A duplicate, a bad signature, a REQ, a COUNT and a CLOSE.
    assert!(publisher.publish(&events[0]).0);
    let forged = with_bad_signature(&signed(&keys(4010), 1, base, &[], "forged"));
    let (accepted, reason) = publisher.publish(&forged);
    assert!(!accepted && reason.starts_with("invalid:"), "{reason}");
    assert_eq!(publisher.req("q", &[json!({"kinds": [1]})]).len(), 20);
    publisher.send(&json!(["COUNT", "c", {"kinds": [1]}]).to_string());
    publisher.expect("COUNT");
    publisher.send(&json!(["CLOSE", "q"]).to_string());
    // A text frame that is not UTF-8 (masked with a zero key): closed with 1007.
    let mut broken = relay.connect().raw();
    broken.write_all(&[0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe]).unwrap();

    let after = scrape_until(relay.port, |samples| {
        total(samples, "ringrelay_connections_closed_total", &[("cause", "protocol_error")]) >= 1.0
    });
    let count = |name: &str, labels: &[(&str, &str)]| total(&after, name, labels);
    assert_eq!(count("ringrelay_events_total", &[("outcome", "stored")]), 20.0);
    assert_eq!(count("ringrelay_events_total", &[("outcome", "duplicate"), ("reason", "duplicate")]), 1.0);
    assert_eq!(count("ringrelay_events_total", &[("outcome", "invalid"), ("reason", "bad_signature")]), 1.0);
    assert_eq!(count("ringrelay_client_messages_total", &[("verb", "EVENT")]), 22.0);
    assert_eq!(count("ringrelay_client_messages_total", &[("verb", "REQ")]), 2.0);
    assert_eq!(count("ringrelay_client_messages_total", &[("verb", "COUNT")]), 1.0);
    assert_eq!(count("ringrelay_client_messages_total", &[("verb", "CLOSE")]), 1.0);
    assert_eq!(count("ringrelay_live_deliveries_total", &[]), 20.0);
    assert_eq!(count("ringrelay_subscriptions", &[]), 1.0, "the live subscription; the closed one is gone");
    assert_eq!(count("ringrelay_connections_closed_total", &[("cause", "protocol_error")]), 1.0);
    assert!(count("ringrelay_connections_accepted_total", &[]) >= 3.0);
    assert!(count("ringrelay_received_bytes_total", &[]) > 20.0 * 200.0);
    assert!(count("ringrelay_sent_bytes_total", &[]) > 40.0 * 200.0);
    // Every answered EVENT is timed; every REQ that reached EOSE and the COUNT too.
    assert_eq!(count("ringrelay_ingest_duration_seconds_count", &[]), 22.0);
    assert_eq!(count("ringrelay_ingest_duration_seconds_bucket", &[("le", "+Inf")]), 22.0);
    assert_eq!(count("ringrelay_req_duration_seconds_count", &[]), 2.0);
    assert_eq!(count("ringrelay_count_duration_seconds_count", &[]), 1.0);
    // Storage: every stored event went through a group commit and an fdatasync.
    assert_eq!(count("ringrelay_commit_batch_events_sum", &[]), 20.0);
    assert!(count("ringrelay_fsync_duration_seconds_count", &[]) >= 1.0);
    assert!(count("ringrelay_commit_written_bytes_total", &[]) >= 20.0 * 200.0);
    assert_eq!(count("ringrelay_shard_records", &[]), 20.0);
    assert_eq!(count("ringrelay_shard_live_records", &[]), 20.0);
    assert!(count("ringrelay_shard_size_bytes", &[]) > 20.0 * 200.0);
    assert!(count("ringrelay_index_memory_bytes", &[]) > 0.0);
    assert_eq!(count("ringrelay_shard_writes_refused", &[]), 0.0);
    assert!(count("ringrelay_core_busy_seconds_total", &[]) > 0.0);
    // Histograms are cumulative: each bucket holds at least the one below it.
    for core in ["0", "1"] {
        let buckets: Vec<f64> = after
            .iter()
            .filter(|s| s.name == "ringrelay_ingest_duration_seconds_bucket" && s.labels["core"] == core)
            .map(|s| s.value)
            .collect();
        assert!(buckets.len() > 10 && buckets.windows(2).all(|pair| pair[0] <= pair[1]), "{buckets:?}");
    }
    // The JSON counters agree with the exposition.
    assert_eq!(relay.stats()["subscriptions"], 1);
}

#[test]
fn a_shard_below_its_reserve_says_so_in_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    // A reserve no filesystem here has free: every shard refuses writes from the start.
    let relay = Relay::start_with_config(dir.path(), 1, "storage_reserve_bytes = 1152921504606846976\n");
    let mut client = relay.connect();
    let (accepted, reason) = client.publish(&signed(&keys(4100), 1, now(), &[], "refused"));
    assert!(!accepted && reason.starts_with("error:"), "{reason}");
    let samples = scrape(relay.port);
    assert_eq!(total(&samples, "ringrelay_shard_writes_refused", &[("cause", "reserve")]), 1.0);
    assert_eq!(total(&samples, "ringrelay_shard_writes_refused", &[("cause", "io_error")]), 0.0);
    assert_eq!(total(&samples, "ringrelay_events_total", &[("outcome", "error"), ("reason", "storage_full")]), 1.0);
    assert_eq!(total(&samples, "ringrelay_storage_reserve_bytes", &[]), 1_152_921_504_606_846_976.0);
    assert!(total(&samples, "ringrelay_storage_free_bytes", &[]) > 0.0);
}

#[test]
fn metrics_listen_serves_metrics_apart_from_the_relay_port() {
    let dir = tempfile::tempdir().unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let relay = Relay::start_with_config(dir.path(), 2, &format!("metrics_listen = \"127.0.0.1:{admin}\"\n"));
    let (status, _, _) = get(relay.port, "/metrics");
    assert_eq!(status, 404, "the relay's port no longer serves /metrics");
    let samples = scrape(admin);
    assert_eq!(total(&samples, "ringrelay_cores", &[]), 2.0);
    assert_eq!(get(admin, "/healthz").0, 200);
    assert_eq!(get(admin, "/").0, 404, "the admin listener serves no relay");
    let (status, _, body) = get(admin, "/stats");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["cores"], 2);
    // The relay's own port still serves clients.
    let mut client = relay.connect();
    assert!(client.publish(&signed(&keys(4200), 1, now(), &[], "still serving")).0);
}

/// Every metric the Grafana dashboard and the alert rules name is one the relay exposes.
#[test]
fn the_dashboard_and_the_alerts_name_only_metrics_the_relay_exposes() {
    let dir = tempfile::tempdir().unwrap();
    // A peer that is not there, so that the peer links' families are exposed too.
    let unreachable = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let relay =
        Relay::start_with_config(dir.path(), 1, &format!("[[peers]]\nurl = \"ws://127.0.0.1:{unreachable}\"\n"));
    let mut client = relay.connect();
    assert!(client.publish(&signed(&keys(4300), 1, now(), &[], "one")).0);
    let exposed: std::collections::HashSet<String> = scrape(relay.port).into_iter().map(|s| s.name).collect();
    let monitoring = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring");
    let dashboard = std::fs::read_to_string(monitoring.join("grafana-dashboard.json")).unwrap();
    let alerts = std::fs::read_to_string(monitoring.join("ringrelay-alerts.yml")).unwrap();
    let mut named = 0;
    for text in [&dashboard, &alerts] {
        for (start, _) in text.match_indices("ringrelay_").chain(text.match_indices("process_")) {
            let name: String = text[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            // Rule and dashboard names such as `ringrelay-alerts` are not metrics.
            if name.ends_with('_') || name == "ringrelay_" {
                continue;
            }
            assert!(exposed.contains(&name), "{name} is named in docs/monitoring but not exposed");
            named += 1;
        }
    }
    assert!(named > 40, "only {named} metric names found in the dashboard and the rules");
}

/// The example alert rules load in Prometheus and raise what their unit tests expect.
#[test]
fn the_alert_rules_pass_promtool() {
    let monitoring = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring");
    for args in [["check", "rules", "ringrelay-alerts.yml"], ["test", "rules", "ringrelay-alerts.test.yml"]] {
        let output = Command::new("promtool").args(args).current_dir(&monitoring).output().expect(
            "this test needs promtool, from Debian's prometheus package: `apt-get install prometheus`, as .ci/run does",
        );
        assert!(
            output.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
