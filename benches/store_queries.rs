//! A relay's start and its queries over a store built by `build_store`, measured from
//! outside with the release binaries (docs/benchmarks.md, "A persisted index"):
//!
//! cargo bench --bench store_queries -- DATA_DIR [RELAY_BINARY ...]
//!
//! For each binary (default: target/release/ringrelay), in turn on the same store: the time
//! from `serve` to its `listening on` line and to the answer of a first REQ; the RSS
//! (anonymous and file-backed) once the queries ran; then REQ→EOSE latency, p50 and p99 of
//! 300 queries of each shape (an author's timeline, a thread by `#e`, mentions by `#p`,
//! kind 1 since a day, ids found by the timelines): right after the start, again once the
//! relay's background work after a start is done (at least 20 s, and its scrub finished:
//! warm), and again after the page cache is dropped (`COLD=1`, root). `QUERIES=N` runs N of
//! each shape instead of 300.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringrelay::tools::bench_store;

const QUERIES_PER_SHAPE: usize = 300;
const SETTLE_SECS: u64 = 20;

type Socket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Start `binary` on `dir` (with the query rate limit off); returns it once it listens,
/// with the time that took.
fn serve(binary: &Path, dir: &Path, port: u16) -> (Relay, Duration) {
    let config = std::env::temp_dir().join("store-queries.toml");
    std::fs::write(&config, "[rate_limits]\nqueries = { per_minute = 1200, burst = 0 }\n").unwrap();
    let started = Instant::now();
    let mut relay = Relay(
        Command::new(binary)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--cores", "2", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(relay.0.stderr.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        if line.contains("listening on") {
            break;
        }
    }
    let listening = started.elapsed();
    std::thread::spawn(move || lines.for_each(drop));
    (relay, listening)
}

/// The events a REQ of `filter` returns, and how long to its EOSE.
fn req(ws: &mut Socket, filter: &serde_json::Value) -> (Vec<serde_json::Value>, Duration) {
    let started = Instant::now();
    ws.send(tungstenite::Message::text(serde_json::json!(["REQ", "q", filter]).to_string())).unwrap();
    let mut events = Vec::new();
    loop {
        let Ok(tungstenite::Message::Text(text)) = ws.read() else { continue };
        let message: serde_json::Value = serde_json::from_str(&text).unwrap();
        match message[0].as_str() {
            Some("EVENT") => events.push(message[2].clone()),
            Some("EOSE") => break,
            Some("AUTH" | "NOTICE") => {}
            _ => panic!("unexpected answer {text}"),
        }
    }
    let took = started.elapsed();
    ws.send(tungstenite::Message::text(r#"["CLOSE","q"]"#)).unwrap();
    (events, took)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// A pseudo-random number from `n`.
fn mix(n: u64) -> u64 {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    x
}

/// One query of each shape, `round` choosing its parameters; `ids` found so far.
fn shapes(round: u64, ids: &[String], now: u64) -> Vec<(&'static str, serde_json::Value)> {
    let author = ringrelay::hex::encode(&bench_store::author_key(bench_store::skewed_author(mix(round))));
    let thread = ringrelay::hex::encode(&bench_store::reference(mix(round ^ 7) % 1_000_000));
    let id = ids.get(mix(round ^ 11) as usize % ids.len().max(1)).cloned().unwrap_or_default();
    vec![
        ("author timeline", serde_json::json!({"authors": [author], "limit": 20})),
        ("#e thread", serde_json::json!({"#e": [thread], "limit": 50})),
        ("#p mentions", serde_json::json!({"#p": [author], "limit": 20})),
        ("kind 1 since a day", serde_json::json!({"kinds": [1], "since": now - 86_400, "limit": 50})),
        ("id", serde_json::json!({"ids": [id]})),
    ]
}

fn run_queries(ws: &mut Socket, ids: &[String], salt: u64) {
    let now = ringrelay::now_unix();
    let mut latencies: Vec<(&str, Vec<Duration>)> = Vec::new();
    let count = std::env::var("QUERIES").ok().and_then(|n| n.parse().ok()).unwrap_or(QUERIES_PER_SHAPE);
    for round in 0..count as u64 {
        for (place, (name, filter)) in shapes(round + salt, ids, now).into_iter().enumerate() {
            let (_, took) = req(ws, &filter);
            if latencies.len() <= place {
                latencies.push((name, Vec::new()));
            }
            latencies[place].1.push(took);
        }
    }
    for (name, mut taken) in latencies {
        taken.sort();
        println!("  {name:>20}: p50 {:.3} ms, p99 {:.3} ms", percentile(&taken, 0.5), percentile(&taken, 0.99));
    }
}

/// The sum of a metric's samples (0 when the relay does not have it).
fn metric(port: u16, name: &str) -> f64 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let value = |line: &str| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    response.lines().filter(|line| line.starts_with(&format!("{name}{{"))).map(value).sum()
}

fn rss(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    let mib = |kib: Option<u64>| kib.unwrap_or(0) / 1024;
    format!(
        "RSS {} MiB (anonymous {} MiB, file {} MiB)",
        mib(field("VmRSS:")),
        mib(field("RssAnon:")),
        mib(field("RssFile:"))
    )
}

fn measure(binary: &Path, dir: &Path) {
    println!("{}", binary.display());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let (relay, listening) = serve(binary, dir, port);
    let (mut ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}")).unwrap();
    let (_, first) = req(&mut ws, &serde_json::json!({"kinds": [1], "limit": 1}));
    println!(
        "  listening after {:.2} s; first answer after {:.2} s (the REQ itself {:.1} ms)",
        listening.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        first.as_secs_f64() * 1e3
    );
    let mut ids = Vec::new();
    for round in 0..200 {
        let (events, _) = req(&mut ws, &shapes(round, &[], ringrelay::now_unix())[0].1);
        ids.extend(events.iter().filter_map(|event| event["id"].as_str().map(str::to_owned)));
    }
    println!(" right after the start:");
    run_queries(&mut ws, &ids, 1_000);
    // The relay's background work after a start (index parts, the scrub) done.
    let settled = Instant::now();
    std::thread::sleep(Duration::from_secs(SETTLE_SECS));
    while metric(port, "ringrelay_shard_unscrubbed_segments") > 0.0 {
        std::thread::sleep(Duration::from_secs(1));
    }
    println!(" warm, {:.0} s later (the scrub done):", settled.elapsed().as_secs_f64());
    run_queries(&mut ws, &ids, 3_000);
    println!("  {}", rss(relay.0.id()));
    if std::env::var_os("COLD").is_some() {
        std::process::Command::new("sync").status().unwrap();
        std::fs::write("/proc/sys/vm/drop_caches", "3").expect("COLD=1 needs root");
        println!(" after dropping the page cache:");
        run_queries(&mut ws, &ids, 5_000);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with("--")).collect();
    let dir = PathBuf::from(args.first().expect("DATA_DIR (built by `cargo bench --bench build_store`)"));
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/ringrelay");
    let binaries: Vec<PathBuf> = match args.len() {
        1 => vec![default],
        _ => args[1..].iter().map(PathBuf::from).collect(),
    };
    for binary in &binaries {
        measure(binary, &dir);
    }
}
