//! A NIP-77 sync between two stores that share most of their events, measured end to end
//! with the release binaries (docs/benchmarks.md, "Fleet sync"):
//!
//! cargo build --release && cargo bench --bench fleet_sync -- [events] [difference per side]
//!
//! Builds `events` signed events (notes, replies, reactions and profiles from 20,000 authors,
//! `created_at` over 90 days) and `difference` more for each side, imports the shared ones
//! once and copies the directory, adds each side's own, then:
//! - `ringrelay sync --dir both` from stopped directory B against relay A serving A: wall
//!   time, rounds, bytes each way, the sync process's peak RSS, relay A's RSS growth;
//! - the same against relay A again (nothing to move): what a converged pair costs.
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

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("a.toml");
    let items = (events + 2 * difference) * 2;
    std::fs::write(&config, format!("[negentropy]\nitems_max = {items}\nitems_per_core_max = {items}\n")).unwrap();
    let mut relay = Stopped(
        Command::new(binary())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir", a.to_str().unwrap(), "--config"])
            .arg(&config)
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
    let url = format!("ws://127.0.0.1:{port}");
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
