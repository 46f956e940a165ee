//! A NIP-77 sync between two stores that share most of their events, measured end to end
//! with the release binaries (docs/benchmarks.md, "Fleet sync"):
//!
//! cargo build --release && cargo bench --bench fleet_sync -- [events] [difference per side]
//! cargo build --release && cargo bench --bench fleet_sync -- live [events/s] [seconds]
//!
//! Builds `events` signed events (notes, replies, reactions and profiles from 20,000 authors,
//! `created_at` over 90 days) and `difference` more for each side, imports the shared ones
//! once and copies the directory, adds each side's own, then:
//! - `ringrelay sync --dir both` from stopped directory B against relay A serving A: wall
//!   time, rounds, bytes each way, the sync process's peak RSS, relay A's RSS growth;
//! - the same against relay A again (nothing to move): what a converged pair costs.
//!
//! `RELAY_DEFAULTS=1` keeps relay A's default `negentropy.items_max`, so the sync is split
//! by date.
//!
//! `live`: two relays on one core each, B a `[[peers]]` peer of A (both ways, live); events
//! published to A at a fixed rate, a subscriber on B: the delay from each publish to its
//! delivery on B (p50, p99, max), and relay A's CPU per event with and without its peer.
//!
//! Everything lives in a scratch directory that is removed at the end.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringrelay::event::sign::Signer;

const AUTHORS: usize = 20_000;
const SPAN_SECS: u64 = 90 * 86_400;

fn binary() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/ringrelay");
    assert!(path.exists(), "build the relay first: cargo build --release");
    path
}

/// Event `n` of the mix, signed by one of `signers` (skewed: a few authors write most).
fn event(n: u64, signers: &[Signer], now: u64) -> String {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    let author = ((x % 1000) * (x % 1000) / 1000 * signers.len() as u64 / 1000) as usize;
    let created_at = now - x % SPAN_SECS;
    let signer = &signers[author.min(signers.len() - 1)];
    let reference = format!("{:064x}", x as u128 * 7);
    match x % 10 {
        0..=4 => signer.sign(
            1,
            created_at,
            &serde_json::json!([["t", "bench"]]),
            &format!("note {n} {}", "word ".repeat((x % 60) as usize)),
        ),
        5..=6 => signer.sign(
            1,
            created_at,
            &serde_json::json!([["e", reference, "", "reply"], ["p", signer.pubkey_hex()]]),
            &format!("reply {n}"),
        ),
        7..=8 => signer.sign(7, created_at, &serde_json::json!([["e", reference], ["p", signer.pubkey_hex()]]), "+"),
        _ => signer.sign(0, created_at, &serde_json::json!([]), &format!("{{\"name\":\"author {author} v{n}\"}}")),
    }
}

/// Events `range` as JSON lines in `path`, signed on every core.
fn write_events(path: &Path, range: std::ops::Range<u64>, signers: &[Signer], now: u64) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let chunks: Vec<Vec<String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let range = range.clone();
                scope.spawn(move || range.filter(|n| n % threads == t).map(|n| event(n, signers, now)).collect())
            })
            .collect();
        workers.into_iter().map(|worker| worker.join().unwrap()).collect()
    });
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for line in chunks.iter().flatten() {
        writeln!(out, "{line}").unwrap();
    }
}

fn run(args: &[&str]) -> (Duration, String) {
    let started = Instant::now();
    let output =
        Command::new("/usr/bin/time").arg("-f").arg("peak_rss_kib=%M").arg(binary()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "ringrelay {args:?}: {stderr}");
    (started.elapsed(), stderr)
}

/// `ringrelay serve` on `cores` cores (0: every CPU) with `config` and the data directory
/// `dir/name`, until dropped.
fn serve(dir: &Path, name: &str, port: u16, config: &str, cores: usize) -> Stopped {
    let config_path = dir.join(format!("{name}.toml"));
    std::fs::write(&config_path, config).unwrap();
    let mut relay = Stopped(
        Command::new(binary())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--cores", &cores.to_string(), "--data-dir"])
            .arg(dir.join(name))
            .arg("--config")
            .arg(&config_path)
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
    std::thread::spawn(move || lines.for_each(drop));
    relay
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// User + system CPU seconds of `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(14) + ticks(15)) / 100.0
}

type Socket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

fn connect(port: u16) -> Socket {
    let (ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}")).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(stream) = ws.get_ref() {
        stream.set_nodelay(true).unwrap();
    }
    ws
}

/// Publish `events` to `port` at `rate` a second (open loop), the OKs read on another
/// thread (a second WebSocket over the same socket, which only reads); returns once every OK
/// came, with the instant each event was due, by id.
fn publish_at_rate(port: u16, events: &[String], rate: u64) -> std::collections::HashMap<String, Instant> {
    let mut ws = connect(port);
    let tungstenite::stream::MaybeTlsStream::Plain(stream) = ws.get_ref() else { unreachable!("plain ws://") };
    let reading = tungstenite::stream::MaybeTlsStream::Plain(stream.try_clone().unwrap());
    let expected = events.len();
    let oks = std::thread::spawn(move || {
        let mut reader = tungstenite::WebSocket::from_raw_socket(reading, tungstenite::protocol::Role::Client, None);
        let mut oks = 0;
        while oks < expected {
            match reader.read() {
                Ok(tungstenite::Message::Text(text)) => oks += usize::from(text.starts_with("[\"OK\"")),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        oks
    });
    let started = Instant::now();
    let mut sent = std::collections::HashMap::new();
    for (n, event) in events.iter().enumerate() {
        let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let id = serde_json::from_str::<serde_json::Value>(event).unwrap()["id"].as_str().unwrap().to_owned();
        ws.send(tungstenite::Message::text(format!("[\"EVENT\",{event}]"))).unwrap();
        sent.insert(id, due);
    }
    assert_eq!(oks.join().unwrap(), expected, "every event acknowledged");
    sent
}

fn live(rate: u64, seconds: u64) {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let now = ringrelay::now_unix();
    let signers: Vec<Signer> = (1..=64u64)
        .map(|n| {
            let mut secret = [0x24u8; 32];
            secret[24..].copy_from_slice(&n.to_be_bytes());
            Signer::from_secret(secret).unwrap()
        })
        .collect();
    let count = rate * seconds;
    let batch = |from: u64| -> Vec<String> {
        (from..from + count)
            .map(|n| {
                signers[(n % 64) as usize].sign(
                    1,
                    now - 10 + n % 10,
                    &serde_json::json!([["t", "live"]]),
                    &format!("live {n}"),
                )
            })
            .collect()
    };
    let alone = batch(0);
    let peered = batch(count);

    // Relay A alone: its CPU per event.
    let port_a = free_port();
    let relay = serve(dir, "alone", port_a, "", 1);
    let cpu = cpu_seconds(relay.0.id());
    publish_at_rate(port_a, &alone, rate);
    let alone_cpu = cpu_seconds(relay.0.id()) - cpu;
    drop(relay);

    // A with B as its peer, a subscriber on B.
    let (port_a, port_b) = (free_port(), free_port());
    let peer = |port: u16| format!("[[peers]]\nurl = \"ws://127.0.0.1:{port}\"\n");
    let relay_a = serve(dir, "a", port_a, &peer(port_b), 1);
    let _relay_b = serve(dir, "b", port_b, &peer(port_a), 1);
    std::thread::sleep(Duration::from_secs(2));
    let mut subscriber = connect(port_b);
    subscriber.send(tungstenite::Message::text(r##"["REQ","live",{"#t":["live"],"limit":0}]"##)).unwrap();
    let reader = std::thread::spawn(move || {
        let mut arrived = std::collections::HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(seconds + 30);
        if let tungstenite::stream::MaybeTlsStream::Plain(stream) = subscriber.get_ref() {
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        while (arrived.len() as u64) < count && Instant::now() < deadline {
            let Ok(tungstenite::Message::Text(text)) = subscriber.read() else { continue };
            let value: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
            if value[0] == "EVENT" {
                arrived.insert(value[2]["id"].as_str().unwrap().to_owned(), Instant::now());
            }
        }
        arrived
    });
    std::thread::sleep(Duration::from_millis(500));
    let cpu = cpu_seconds(relay_a.0.id());
    let sent = publish_at_rate(port_a, &peered, rate);
    let arrived = reader.join().unwrap();
    let peered_cpu = cpu_seconds(relay_a.0.id()) - cpu;
    let mut delays = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for (id, at) in &arrived {
        if let Some(sent) = sent.get(id) {
            delays.record(at.saturating_duration_since(*sent).as_micros() as u64).unwrap();
        }
    }
    let ms = |quantile: f64| delays.value_at_quantile(quantile) as f64 / 1000.0;
    println!(
        "live, {rate}/s for {seconds} s: {} of {count} delivered on B; delay publish on A -> delivery on B: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; relay A CPU per event: alone {:.1} us, with its peer {:.1} us",
        arrived.len(),
        ms(0.5),
        ms(0.99),
        delays.max() as f64 / 1000.0,
        alone_cpu / count as f64 * 1e6,
        peered_cpu / count as f64 * 1e6,
    );
}

/// NEG-OPEN over relay A's whole set from an empty client: the time to the relay's first
/// NEG-MSG, and the relay's RSS while the sync is open.
fn first_answer(port: u16, relay: u32) {
    let mut storage = negentropy::NegentropyStorageVector::new();
    storage.seal().unwrap();
    let first = negentropy::Negentropy::owned(storage, 60_000).unwrap().initiate().unwrap();
    let mut ws = connect(port);
    let before = rss_kib(relay);
    let started = Instant::now();
    let open = format!(r#"["NEG-OPEN","first",{{}},"{}"]"#, ringrelay::hex::encode(&first));
    ws.send(tungstenite::Message::text(open)).unwrap();
    loop {
        let Ok(tungstenite::Message::Text(text)) = ws.read() else { continue };
        if text.starts_with("[\"NEG-") {
            assert!(text.starts_with("[\"NEG-MSG\""), "{}", &text[..text.len().min(200)]);
            break;
        }
    }
    println!(
        "NEG-OPEN over the whole store: first answer in {:.0} ms; relay A RSS {} -> {} MiB while it is open",
        started.elapsed().as_secs_f64() * 1000.0,
        before / 1024,
        rss_kib(relay) / 1024
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with("--")).collect();
    if args.first().map(String::as_str) == Some("live") {
        let rate: u64 = args.get(1).map_or(1000, |n| n.parse().expect("events/s"));
        let seconds: u64 = args.get(2).map_or(20, |n| n.parse().expect("seconds"));
        return live(rate, seconds);
    }
    let events: u64 = args.first().map_or(1_000_000, |n| n.parse().expect("events"));
    let difference: u64 = args.get(1).map_or(events / 100, |n| n.parse().expect("difference"));
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let now = ringrelay::now_unix();
    let signers: Vec<Signer> = (0..AUTHORS as u64)
        .map(|n| {
            let mut secret = [0x42u8; 32];
            secret[24..].copy_from_slice(&(n + 1).to_be_bytes());
            Signer::from_secret(secret).unwrap()
        })
        .collect();
    let started = Instant::now();
    write_events(&dir.join("shared.jsonl"), 0..events, &signers, now);
    write_events(&dir.join("only-a.jsonl"), events..events + difference, &signers, now);
    write_events(&dir.join("only-b.jsonl"), events + difference..events + 2 * difference, &signers, now);
    eprintln!("signed {} events in {:.1} s", events + 2 * difference, started.elapsed().as_secs_f64());
    let (a, b) = (dir.join("a"), dir.join("b"));
    let (took, _) = run(&[
        "import",
        "--data-dir",
        a.to_str().unwrap(),
        "--shards",
        "2",
        dir.join("shared.jsonl").to_str().unwrap(),
    ]);
    eprintln!("imported the shared events in {:.1} s", took.as_secs_f64());
    let copied = Command::new("cp").arg("-a").arg(&a).arg(&b).status().unwrap();
    assert!(copied.success());
    run(&["import", "--data-dir", a.to_str().unwrap(), dir.join("only-a.jsonl").to_str().unwrap()]);
    run(&["import", "--data-dir", b.to_str().unwrap(), dir.join("only-b.jsonl").to_str().unwrap()]);

    let port = free_port();
    // `RELAY_DEFAULTS=1`: the relay's default `negentropy.items_max` (500,000), so that a
    // whole-store sync is split by date; else raised to take the store in one sync.
    let items = (events + 2 * difference) * 2;
    let negentropy = format!("[negentropy]\nitems_max = {items}\nitems_per_core_max = {items}\n");
    let defaults = std::env::var_os("RELAY_DEFAULTS").is_some();
    let relay = serve(dir, "a", port, if defaults { "" } else { &negentropy }, 0);
    let url = format!("ws://127.0.0.1:{port}");
    if !defaults {
        first_answer(port, relay.0.id());
    }
    for pass in ["first (1% each side)", "second (converged)"] {
        let before = rss_kib(relay.0.id());
        let (took, stderr) = run(&["sync", &url, "--data-dir", b.to_str().unwrap(), "--dir", "both"]);
        let summary = stderr.lines().filter(|line| !line.starts_with("sync: ")).collect::<Vec<_>>().join(" | ");
        println!(
            "{pass}: {:.2} s; relay A RSS {} -> {} MiB; {summary}",
            took.as_secs_f64(),
            before / 1024,
            rss_kib(relay.0.id()) / 1024
        );
    }
}

/// The relay, killed however the benchmark ends.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
