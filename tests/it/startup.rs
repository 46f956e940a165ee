//! `serve`'s startup as an operator meets it, with the real binary on real files: a damaged
//! shard of a 2-core relay stops the whole process with the file and offset named, within
//! seconds; a signal during a slow startup ends it cleanly.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::cli::ringrelay;
use crate::support::{copy_dir, keys, signed};

/// How long a damaged store may keep `serve` before it exits.
const REFUSAL_WITHIN: Duration = Duration::from_secs(10);

fn serve(data: &Path, listen: &str, cores: usize) -> Child {
    let config = data.parent().unwrap().join("startup.toml");
    std::fs::write(&config, "segment_size = 1048576\n").unwrap();
    Command::new(env!("CARGO_BIN_EXE_ringrelay"))
        .args(["serve", "--listen", listen, "--cores", &cores.to_string()])
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the relay starts")
}

/// Wait for `child` to exit by itself within `within`: its status and stderr, or None (and
/// the child killed) when it did not.
fn exit_within(mut child: Child, within: Duration) -> Option<(ExitStatus, String)> {
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    Some((status, stderr))
}

/// A 2-shard store whose fuller shard has at least three segments of 1 MiB: ~8 KiB events
/// from a few authors, imported (every signature checked) and sealed by a clean stop.
fn two_shard_store(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let data = dir.join("data");
    let events: Vec<String> = (0..900u32)
        .map(|i| signed(&keys(700 + i % 5), 1, 1_700_000_000 + u64::from(i), &[], &format!("{i} {}", "z".repeat(8000))))
        .collect();
    let args = ["import", "--data-dir", data.to_str().unwrap(), "--shards", "2", "--segment-size", "1048576", "-"];
    let output = ringrelay(&args, Some(events.join("\n").as_bytes()));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let shard = ["shard-000", "shard-001"]
        .iter()
        .map(|name| data.join(name))
        .max_by_key(|shard| ringrelay::store::segment::list_segments(shard).unwrap().len())
        .unwrap();
    let segments: Vec<PathBuf> =
        ringrelay::store::segment::list_segments(&shard).unwrap().into_iter().map(|(_, path)| path).collect();
    assert!(segments.len() >= 3, "{} segments in {}", segments.len(), shard.display());
    (data, segments)
}

/// The offsets of a segment's records.
fn record_offsets(path: &Path) -> Vec<usize> {
    let bytes = std::fs::read(path).unwrap();
    let mut offsets = Vec::new();
    ringrelay::store::segment::scan(&bytes, None, |span, _| offsets.push(span.offset)).unwrap();
    offsets
}

enum Damage {
    /// One bit flipped inside the middle record's payload.
    Flip,
    /// The file cut inside the middle record.
    Cut,
}

/// Damage `segment` (of a copy of the store) and return the offset `serve` must name.
fn damage(segment: &Path, how: &Damage) -> usize {
    let offsets = record_offsets(segment);
    let victim = offsets[offsets.len() / 2];
    let mut bytes = std::fs::read(segment).unwrap();
    match how {
        Damage::Flip => bytes[victim + 100] ^= 0x10,
        Damage::Cut => bytes.truncate(victim + 100),
    }
    std::fs::write(segment, &bytes).unwrap();
    // Without its index part, a segment is read at open (with it, it is scrubbed once the
    // relay serves: `relay::damage_behind_an_index_part_is_scrubbed_and_not_served`).
    ringrelay::store::part::remove(segment).unwrap();
    victim
}

#[test]
fn damage_in_any_segment_of_one_shard_stops_a_two_core_relay_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (data, segments) = two_shard_store(dir.path());
    let cases = [
        ("older", &segments[0], Damage::Flip),
        ("older", &segments[0], Damage::Cut),
        ("newest", segments.last().unwrap(), Damage::Flip),
        ("newest", segments.last().unwrap(), Damage::Cut),
    ];
    for (n, (which, segment, how)) in cases.iter().enumerate() {
        let copy = dir.path().join(format!("case-{n}"));
        copy_dir(&data, &copy);
        let damaged = copy.join(segment.strip_prefix(&data).unwrap());
        let victim = damage(&damaged, how);
        let started = Instant::now();
        let outcome = exit_within(serve(&copy, "127.0.0.1:0", 2), REFUSAL_WITHIN);
        let (status, stderr) = outcome.unwrap_or_else(|| panic!("case {n} ({which}): serve still running"));
        assert!(!status.success(), "case {n}: {stderr}");
        let named = format!("{}: corrupt record at offset ", damaged.display());
        let at = stderr.find(&named).unwrap_or_else(|| panic!("case {n} ({which}): {stderr}"));
        let offset: usize =
            stderr[at + named.len()..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
        // A flip is named at its record; a cut where the file now ends, inside that record
        // (a clean stop recorded the newest segment's length) or at its start.
        match how {
            Damage::Flip => assert_eq!(offset, victim, "case {n}: {stderr}"),
            Damage::Cut => assert!((victim..=victim + 100).contains(&offset), "case {n}: {offset} {stderr}"),
        }
        assert!(!stderr.contains("listening on"), "case {n}: {stderr}");
        assert!(!stderr.contains("panicked"), "case {n}: {stderr}");
        eprintln!("case {n} ({which}): exited {status} after {:?}", started.elapsed());
    }
}

/// Waiting for its address (held by another program) is a slow startup: SIGTERM ends it at
/// once and cleanly, where the wait alone would have ended in an error after 5 s.
#[test]
fn sigterm_during_a_slow_startup_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = holder.local_addr().unwrap().to_string();
    let data = dir.path().join("data");
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut child = serve(&data, &listen, 2);
        std::thread::sleep(Duration::from_millis(800));
        assert!(child.try_wait().unwrap().is_none(), "the relay waits for its address");
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let sent = Instant::now();
        let (status, stderr) = exit_within(child, Duration::from_secs(3)).expect("the signal ended the startup");
        assert!(sent.elapsed() < Duration::from_secs(2), "{:?}", sent.elapsed());
        assert!(status.success(), "{status}: {stderr}");
        assert!(stderr.contains("stopped during startup"), "{stderr}");
    }
    drop(holder);
}
