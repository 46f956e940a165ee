//! Storage faults injected through the writer's I/O seam (`store::faults`): short writes,
//! ENOSPC and EIO on write and on fdatasync, and a crash at every I/O of a run that rotates
//! segments. An append is acknowledged only when its `Durable` resolves `Ok`; every such
//! event must be there after a reopen, and writes must resume without one.

use std::path::Path;
use std::time::Duration;

use ringrelay::store::faults::{Fault, Faults, IoOp};
use ringrelay::store::{Admission, OpenMode, RefusalCause, Shard, ShardConfig, ShardState, StoreError};

use crate::support::{keys, now, run_glommio, signed, verified};

const SEGMENT_SIZE: usize = 1024 * 1024;

fn config(faults: &Faults) -> ShardConfig {
    ShardConfig::new(SEGMENT_SIZE, None).with_faults(faults.clone())
}

fn open(path: &Path, faults: &Faults) -> ShardState {
    ShardState::open(path, ringrelay::store::ShardId(0), config(faults), OpenMode::ReadWrite).expect("the shard opens")
}

/// Ids (hex) of the events a reopened shard serves.
fn stored_ids(path: &Path) -> Vec<String> {
    let state =
        ShardState::open(path, ringrelay::store::ShardId(0), ShardConfig::new(SEGMENT_SIZE, None), OpenMode::ReadOnly)
            .unwrap();
    assert!(state.repairs.is_empty() || state.repairs.iter().all(|r| r.cut_bytes > 0), "{:?}", state.repairs);
    (0..state.index.len()).map(|no| ringrelay::hex::encode(&state.index.entry(no).id)).collect()
}

fn event(i: u32, content_size: usize) -> String {
    signed(&keys(400 + i % 5), 1, now() - 100 + u64::from(i % 50), &[], &format!("{i:06}{}", "x".repeat(content_size)))
}

fn id_of(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json).unwrap()["id"].as_str().unwrap().to_owned()
}

/// Append and wait for durability: `Ok(true)` acknowledged, `Ok(false)` refused before the
/// append, `Err` failed while being made durable.
async fn store(shard: &Shard, json: &str) -> Result<bool, String> {
    match shard.append(&verified(json), now()) {
        Ok(Admission::Stored(durable)) => durable.await.map(|()| true).map_err(|e| e.to_string()),
        Ok(Admission::Duplicate(Some(durable))) => durable.await.map(|()| true).map_err(|e| e.to_string()),
        Ok(Admission::Duplicate(None)) => Ok(true),
        Ok(other) => panic!("not stored: {}", matches!(other, Admission::Ephemeral)),
        Err(StoreError::Refusing(_)) => Ok(false),
        Err(other) => Err(other.to_string()),
    }
}

/// Wait (bounded) until the shard has resumed writes by itself.
async fn resumed(shard: &Shard) -> bool {
    for _ in 0..100 {
        if shard.refusal().is_none() {
            return true;
        }
        glommio::timer::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A write that stores only part of its bytes is continued from the last whole block; the
/// append is acknowledged once all of it is written and synced.
#[test]
fn a_short_write_is_completed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let events: Vec<String> = (0..6).map(|i| event(i, 20_000)).collect();
    let acked = run_glommio({
        let (path, events) = (path.clone(), events.clone());
        move || {
            Box::pin(async move {
                let faults = Faults::plan();
                let shard = Shard::start(open(&path, &faults));
                let mut acked = Vec::new();
                for (i, json) in events.iter().enumerate() {
                    // Every other commit's first write stores one block.
                    if i % 2 == 1 {
                        faults.inject(IoOp::Write, 0, 1, Fault::Short(4096));
                    }
                    let writes_before = faults.count(IoOp::Write);
                    assert_eq!(store(&shard, json).await, Ok(true), "event {i}");
                    let writes = faults.count(IoOp::Write) - writes_before;
                    assert!(i % 2 == 0 || writes >= 2, "event {i}: the short write was continued ({writes} writes)");
                    acked.push(id_of(json));
                }
                assert!(shard.refusal().is_none());
                drop(shard.close().await.unwrap());
                acked
            })
        }
    });
    assert_eq!(stored_ids(&path), acked);
}

/// ENOSPC on write: the appends of that commit fail, new ones are refused cleanly as a full
/// disk, and once the fault is gone the shard rewrites what was left and resumes by itself.
#[test]
fn a_full_disk_refuses_writes_until_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let (acked, unacked) = run_glommio({
        let path = path.clone();
        move || {
            Box::pin(async move {
                let faults = Faults::plan();
                let shard = Shard::start(open(&path, &faults));
                let mut acked = Vec::new();
                let stored: Vec<String> = (0..3).map(|i| event(i, 500)).collect();
                for json in &stored {
                    assert_eq!(store(&shard, json).await, Ok(true));
                    acked.push(id_of(json));
                }
                faults.inject(IoOp::Write, 0, u64::MAX, Fault::Errno(libc::ENOSPC));
                let failed = event(3, 500);
                let outcome = store(&shard, &failed).await;
                assert!(outcome.as_ref().is_err_and(|e| e.contains("No space")), "{outcome:?}");
                let refusal = shard.refusal().expect("refusing after a failed commit");
                assert_eq!(refusal.cause, RefusalCause::Full);
                assert!(refusal.is_full());
                assert_eq!(store(&shard, &event(4, 500)).await, Ok(false), "refused while full");
                // What needs no disk is still answered: an ephemeral event, a duplicate.
                let ephemeral = signed(&keys(450), 20001, now(), &[], "typing");
                assert!(matches!(shard.append(&verified(&ephemeral), now()), Ok(Admission::Ephemeral)));
                assert_eq!(store(&shard, &stored[0]).await, Ok(true), "a duplicate of a stored event");
                // Still full a retry later: still refusing.
                glommio::timer::sleep(Duration::from_millis(1500)).await;
                assert!(shard.refusal().is_some());
                faults.clear();
                assert!(resumed(&shard).await, "writes resume without a restart");
                // The failed append's record was written again with the retry: it is stored
                // now (its client was told it failed, and may send it again: a duplicate).
                assert_eq!(store(&shard, &failed).await, Ok(true));
                for i in 5..8 {
                    let json = event(i, 500);
                    assert_eq!(store(&shard, &json).await, Ok(true));
                    acked.push(id_of(&json));
                }
                drop(shard.close().await.unwrap());
                (acked, id_of(&failed))
            })
        }
    });
    let stored = stored_ids(&path);
    for id in &acked {
        assert!(stored.contains(id), "acknowledged {id} lost");
    }
    assert!(stored.contains(&unacked));
    assert_eq!(stored.len(), acked.len() + 1);
}

/// EIO from fdatasync: the covered appends fail, and recovery writes their bytes again
/// before a new fdatasync; a retried fdatasync alone never acknowledges anything.
#[test]
fn a_failed_fdatasync_is_redone_with_the_bytes_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let acked = run_glommio({
        let path = path.clone();
        move || {
            Box::pin(async move {
                let faults = Faults::plan();
                let shard = Shard::start(open(&path, &faults));
                let mut acked = Vec::new();
                let first = event(0, 500);
                assert_eq!(store(&shard, &first).await, Ok(true));
                acked.push(id_of(&first));
                // The commit's fdatasync fails, and so does the first retry's.
                faults.inject(IoOp::Sync, 0, 2, Fault::Errno(libc::EIO));
                let failed = event(1, 500);
                let outcome = store(&shard, &failed).await;
                assert!(outcome.as_ref().is_err_and(|e| e.contains("Input/output error")), "{outcome:?}");
                assert_eq!(shard.refusal().map(|r| r.cause), Some(RefusalCause::Io));
                // A copy sent meanwhile waits on the failed record, and fails with the retry.
                let copy = store(&shard, &failed).await;
                assert!(copy.as_ref().is_err_and(|e| e.contains("Input/output error")), "{copy:?}");
                let (writes, syncs) = (faults.count(IoOp::Write), faults.count(IoOp::Sync));
                assert!(resumed(&shard).await);
                assert!(faults.count(IoOp::Write) > writes, "the unacknowledged bytes were written again");
                assert!(faults.count(IoOp::Sync) > syncs);
                for i in 2..5 {
                    let json = event(i, 500);
                    assert_eq!(store(&shard, &json).await, Ok(true));
                    acked.push(id_of(&json));
                }
                drop(shard.close().await.unwrap());
                acked
            })
        }
    });
    let stored = stored_ids(&path);
    assert!(acked.iter().all(|id| stored.contains(id)), "{acked:?} in {stored:?}");
}

/// A crash at every I/O of a run that fills and rotates segments (high-water mark, writes,
/// fdatasyncs, new segment file, directory sync, the old segment's trim): the shard reopens
/// every time, with every acknowledged event, and reopens the same way again.
#[test]
fn a_crash_at_every_write_of_a_rotation_loses_nothing_acknowledged() {
    let events: Vec<String> = (0..40).map(|i| event(i, 60_000)).collect();
    // A run without faults counts the operations.
    let total = {
        let dir = tempfile::tempdir().unwrap();
        let (path, events) = (dir.path().to_owned(), events.clone());
        run_glommio(move || {
            Box::pin(async move {
                let faults = Faults::plan();
                let shard = Shard::start(open(&path, &faults));
                for json in &events {
                    assert_eq!(store(&shard, json).await, Ok(true));
                }
                assert!(faults.count(IoOp::HighWater) >= 3, "the run rotates segments");
                let total = faults.total();
                drop(shard);
                total
            })
        })
    };
    assert!(total > 80, "{total} operations");
    let scratch = if Path::new("/dev/shm").is_dir() { Path::new("/dev/shm") } else { Path::new("/tmp") };
    for crash in 0..total {
        let dir = tempfile::tempdir_in(scratch).unwrap();
        let (path, run_events) = (dir.path().to_owned(), events.clone());
        let acked = run_glommio(move || {
            Box::pin(async move {
                let faults = Faults::plan();
                faults.crash_after(crash);
                let state = ShardState::open(&path, ringrelay::store::ShardId(0), config(&faults), OpenMode::ReadWrite);
                let Ok(state) = state else { return Vec::new() };
                let shard = Shard::start(state);
                let mut acked = Vec::new();
                for json in &run_events {
                    match store(&shard, json).await {
                        Ok(true) => acked.push(id_of(json)),
                        _ => break,
                    }
                }
                // The process dies here: nothing more reaches the disk.
                drop(shard);
                acked
            })
        });
        let reopened = ShardState::open(
            dir.path(),
            ringrelay::store::ShardId(0),
            ShardConfig::new(SEGMENT_SIZE, None),
            OpenMode::ReadWrite,
        )
        .unwrap_or_else(|e| panic!("crash at operation {crash}: reopen failed: {e}"));
        let stored: Vec<String> =
            (0..reopened.index.len()).map(|no| ringrelay::hex::encode(&reopened.index.entry(no).id)).collect();
        drop(reopened);
        for id in &acked {
            assert!(stored.contains(id), "crash at operation {crash}: acknowledged {id} lost");
        }
        assert_eq!(stored_ids(dir.path()), stored, "crash at operation {crash}: a second open differs");
    }
}
