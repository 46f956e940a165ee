//! The relay on a small real filesystem (a tmpfs it mounts: the suite runs as root in CI):
//! publishers until it is full, kill -9, restart on the still-full disk, every acknowledged
//! event served; then space is freed and writes resume without a restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use ringrelay::store::writer::REFUSAL_RETRY_INTERVAL;

use crate::relay::{id_of, ids, Relay};
use crate::support::{keys, now, signed};

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    _parent: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(root, "this test mounts a small tmpfs and must run as root (CI does)");
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let status =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(&path).status();
        assert!(status.is_ok_and(|s| s.success()), "mount -t tmpfs failed");
        Tmpfs { _parent: parent, path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn fill(path: &Path, bytes: usize) {
    std::fs::write(path, vec![0x5a; bytes]).unwrap();
}

/// Write to `path` until the file system is full (what a restart freed, such as a part file
/// left half-written by the kill, is taken again).
fn fill_up(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    while file.write_all(&[0x5a; 4096]).is_ok() {}
}

/// An event of ~8 KiB, a different one for every `i`.
fn event(i: u32) -> String {
    signed(&keys(500 + i % 7), 1, now() - 1000 + u64::from(i % 900), &[], &format!("{i:08} {}", "y".repeat(8000)))
}

/// Every acknowledged id the relay serves, asked for by id in chunks.
fn missing(relay: &Relay, acked: &[String]) -> Vec<String> {
    let mut client = relay.connect();
    let mut missing = Vec::new();
    for (n, chunk) in acked.chunks(500).enumerate() {
        let served = ids(&client.req(&format!("check{n}"), &[json!({"ids": chunk})]));
        missing.extend(chunk.iter().filter(|id| !served.contains(id)).cloned());
    }
    missing
}

/// Fill the disk under a publisher, kill -9, restart on the full disk, free it. With
/// `still_full` the restarted relay must refuse every write until then; without it (search
/// on: its index may tidy away uncommitted files at the restart and free a little space) a
/// write may be taken, and must then be kept like any.
fn run(config: &str, expected_reason: &str, only_that_reason: bool, still_full: bool) {
    let fs = Tmpfs::mount("24m");
    let filler = fs.path.join("filler");
    fill(&filler, 6 << 20);
    let data = fs.path.join("data");
    let relay = Relay::start_with_config(&data, 1, config);
    let mut client = relay.connect();
    let mut acked = Vec::new();
    let mut refusals = Vec::new();
    let mut i = 0;
    // 24 MiB cannot hold 4,000 events of 8 KiB: the loop ends with refusals well before that.
    while i < 4_000 && refusals.len() < 20 {
        let json = event(i);
        let (accepted, reason) = client.publish(&json);
        match accepted {
            true => acked.push(id_of(&json)),
            false => refusals.push(reason),
        }
        i += 1;
    }
    assert!(acked.len() > 500, "only {} stored before the disk was full", acked.len());
    assert!(refusals.len() == 20, "the disk never filled: {} stored", acked.len());
    assert!(refusals.iter().all(|r| r.starts_with("error: ")), "{refusals:?}");
    assert!(refusals.iter().any(|r| r.starts_with(expected_reason)), "{refusals:?}");
    assert!(!only_that_reason || refusals.iter().all(|r| r.starts_with(expected_reason)), "{refusals:?}");
    assert_eq!(relay.stats()["shards_refusing_writes"], 1);
    // Reads go on while writes are refused.
    assert!(missing(&relay, &acked).is_empty());
    relay.kill9();

    // Restart on the still-full disk: it starts, serves everything acknowledged, and
    // refuses writes cleanly, however many retry periods the disk stays full.
    let mut relay = Relay::start_with_config(&data, 1, config);
    let topped_up = fs.path.join("filler-2");
    if still_full {
        // Opening removes what the kill left half-written (an index part being built):
        // that space is filled again, so the disk really is still full.
        fill_up(&topped_up);
    }
    let mut client = relay.connect();
    for period in 0..4 {
        let lost = missing(&relay, &acked);
        assert!(lost.is_empty(), "{} acknowledged events lost, e.g. {}", lost.len(), lost[0]);
        let json = event(i);
        let (accepted, reason) = client.publish(&json);
        i += 1;
        if accepted && !still_full {
            acked.push(id_of(&json));
        } else {
            assert!(!accepted && reason.starts_with("error: "), "after {period} retry periods: {reason}");
            assert_eq!(relay.stats()["shards_refusing_writes"], 1);
        }
        std::thread::sleep(REFUSAL_RETRY_INTERVAL + Duration::from_millis(100));
        assert!(relay.running(), "the relay died while the disk stayed full");
    }

    // Space comes back: writes resume by themselves.
    std::fs::remove_file(&filler).unwrap();
    let _ = std::fs::remove_file(&topped_up);
    let deadline = Instant::now() + Duration::from_secs(15);
    let resumed = loop {
        i += 1;
        let json = event(i);
        if client.publish(&json).0 {
            break id_of(&json);
        }
        assert!(Instant::now() < deadline, "writes did not resume after space was freed");
        std::thread::sleep(Duration::from_millis(200));
    };
    acked.push(resumed);
    assert_eq!(relay.stats()["shards_refusing_writes"], 0);
    assert!(relay.terminate().success());
    let relay = Relay::start_with_config(&data, 1, config);
    assert!(missing(&relay, &acked).is_empty());
}

/// No reserve: the writes themselves run into ENOSPC (tmpfs also makes them short).
#[test]
fn a_full_disk_loses_no_acknowledged_event_and_writes_resume() {
    let config = "segment_size = 1048576\nstorage_reserve_bytes = 0\n\n[search]\nenabled = false\n";
    run(config, "error: could not store", false, true);
}

/// The same with the search index writing beside the store onto the same full disk.
#[test]
fn a_full_disk_with_search_on_loses_no_acknowledged_event() {
    run("segment_size = 1048576\nstorage_reserve_bytes = 0\n", "error: could not store", false, false);
}

/// A reserve: new events are refused as "full" before the filesystem is, so what was
/// already taken, a rotation and a seal still fit.
#[test]
fn the_free_space_reserve_refuses_events_before_the_disk_is_full() {
    // Search off: the restart below expects the free space to stay under the reserve, and a
    // search index tidies its uncommitted files at a restart.
    let config = "segment_size = 1048576\nstorage_reserve_bytes = 4194304\n\n[search]\nenabled = false\n";
    run(config, "error: the relay's storage is full", true, true);
}
