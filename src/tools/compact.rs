//! `ringrelay compact` (offline): rewrite each shard's live records into new segments and
//! remove the old ones. Replaced, deleted, expired and vanished (NIP-62, gift wraps to a
//! vanished pubkey on any shard included) records are dropped, and so are the ones
//! `policy.toml` retires (NIP-86 `banevent` and `banpubkey`).
//!
//! Crash safety: the new segments are durable before any old one is removed, and replay
//! treats the second copy of an event as a duplicate, so a crash at any point leaves every
//! live event readable; a later compaction finishes the job.

use crate::store::{DataDir, OpenMode, Shard, ShardId, ShardState};

use super::StoreOptions;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CompactSummary {
    pub segments_before: usize,
    pub segments_after: usize,
    pub records_before: u64,
    pub records_after: u64,
}

pub fn run(options: &StoreOptions) -> anyhow::Result<CompactSummary> {
    let options = options.clone();
    super::run_local("compact", move || Box::pin(async move { compact(&options).await }))?
}

async fn compact(options: &StoreOptions) -> anyhow::Result<CompactSummary> {
    let dir = DataDir::open(&options.data_dir, crate::store::Access::Exclusive)?;
    let config = options.shard_config()?;
    let mut summary = CompactSummary::default();
    let now = crate::now_unix();
    // Gift wraps to a pubkey that vanished can be on any shard (NIP-62): every request to
    // vanish first, at the cost of reading each shard twice.
    let retirements = super::retirements(&options.data_dir)?;
    let mut requests = Vec::new();
    for shard in ShardId::all(dir.shard_count) {
        let state = ShardState::open(&dir.shard_dir(shard), shard, config.clone(), OpenMode::ReadOnly)?;
        requests.extend(state.index.vanish_requests());
    }
    for shard in ShardId::all(dir.shard_count) {
        let mut state = ShardState::open(&dir.shard_dir(shard), shard, config.clone(), OpenMode::ReadWrite)?;
        super::retire_wraps_to_vanished(&mut state, &requests);
        retirements.apply(&mut state.index);
        let old = state.sealed_segment_paths();
        summary.segments_before += old.len();
        summary.records_before += state.index.segment_stats().iter().map(|s| u64::from(s.records)).sum::<u64>();
        // Arrival order, so replay meets versions and deletions in the order they were accepted.
        let live_by_arrival: Vec<u32> = (0..state.index.len()).filter(|&no| state.index.is_visible(no, now)).collect();
        for no in &live_by_arrival {
            let plain = state.record_archive(*no).ok_or_else(|| {
                anyhow::anyhow!(
                    "shard {shard}: a stored record does not read back; run `ringrelay verify`, then `repair`"
                )
            })?;
            state.write_record(&plain)?;
        }
        summary.records_after += live_by_arrival.len() as u64;
        let state = Shard::start(state).close().await?;
        crate::search::index::forget(&dir.shard_dir(shard))?;
        for path in &old {
            std::fs::remove_file(path)?;
            crate::store::part::remove(path)?;
        }
        crate::store::segment::sync_dir(&state.dir)?;
        summary.segments_after += crate::store::segment::list_segments(&state.dir)?.len();
    }
    Ok(summary)
}
