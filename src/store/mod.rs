//! Storage: per-shard append-only segments, in-memory indexes, the storage rules and the
//! query engine.
//!
//! Reading order: [`format`] (bytes on disk), [`record`] (the archived record), [`crypto`]
//! (at-rest encryption), [`segment`] (files, maps, scan), [`part`] (a sealed segment's
//! persisted index), [`layer`] (one segment's postings), [`index`] (indexes and rules),
//! [`query`] (planner, scan, merge), [`retention`] (kinds kept for a time), [`shard`]
//! (open, replay, append), [`writer`] (group commit on glommio), [`datadir`] (manifest,
//! lock, `owner_shard`).

pub mod background;
pub mod compact;
pub mod crypto;
pub mod datadir;
pub mod faults;
pub mod format;
pub mod index;
pub mod layer;
pub mod part;
pub mod postings;
pub mod query;
pub mod record;
pub mod retention;
pub mod segment;
pub mod shard;
pub mod writer;

pub use datadir::{Access, DataDir, Router};
pub use index::{EventNo, Rejection};
pub use query::{FilterScan, Hit, Ordered, Privacy};
pub use shard::{
    free_bytes, Appended, CompactionPolicy, OpenMode, Prepared, Refusal, RefusalCause, ShardConfig, ShardFigures,
    ShardState, StoreError,
};
pub use writer::{Admission, Durable, Shard};

use crate::filter::Filter;
use crate::limits::QUERY_STEP_CANDIDATE_COUNT;

/// A shard's number in its data directory: its `shard-NNN` directory, and (modulo the
/// cores) the core that owns it. Raw `u16` only where it is written to disk (segment
/// headers, nonces) or read from the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

impl ShardId {
    /// Every shard of a directory of `count`, in order.
    pub fn all(count: u16) -> impl Iterator<Item = ShardId> {
        (0..count).map(ShardId)
    }
}

impl From<ShardId> for usize {
    fn from(shard: ShardId) -> usize {
        usize::from(shard.0)
    }
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What an operator retired from storage through the policy lists (`policy.toml`): banned
/// event ids, and banned pubkeys' events up to the date of their ban. Put in force by the
/// relay on every core and by the offline tools, so compaction drops those records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retirements {
    pub events: Vec<[u8; 32]>,
    pub pubkeys: Vec<([u8; 32], u64)>,
}

impl Retirements {
    /// Retire them from `index`; returns how many records were.
    pub fn apply(&self, index: &mut index::Index) -> usize {
        let events = self.events.iter().filter(|id| index.kill_id(id)).count();
        events + self.pubkeys.iter().map(|(pubkey, until)| index.kill_author_until(pubkey, *until)).sum::<usize>()
    }
}

/// A hit tagged with its shard, for merging across shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardHit {
    pub shard: ShardId,
    pub hit: Hit,
}

impl Ordered for ShardHit {
    fn created_at(&self) -> u64 {
        self.hit.created_at
    }
    fn id(&self) -> &[u8; 32] {
        &self.hit.id
    }
}

/// The `limit` a filter is served with: its own, capped at `max`, or when absent `default`,
/// or as many as it names ids (capped at `max`): a client fetching the ids a sync found
/// missing (NDK's sync does) asks for them all without a `limit`.
pub fn effective_limit(filter: &Filter, default: usize, max: usize) -> usize {
    let default = filter.ids.as_ref().map_or(default, |ids| default.max(ids.len().min(max)));
    filter.limit.map_or(default, |limit| usize::try_from(limit).unwrap_or(usize::MAX).min(max))
}

/// Answer a whole `REQ` over every shard to completion: per filter, each shard's newest
/// `limit`, merged across shards; then the union, each event once, newest first.
/// (The server runs the same steps interleaved with other work.)
pub fn query_shards(
    shards: &[&ShardState],
    filters: &[Filter],
    default_limit: usize,
    max_limit: usize,
    now: u64,
) -> Vec<ShardHit> {
    let per_filter = filters
        .iter()
        .map(|filter| {
            let limit = effective_limit(filter, default_limit, max_limit);
            let per_shard = shards
                .iter()
                .map(|shard| {
                    let mut scan = FilterScan::new(filter, limit, &shard.index);
                    while !scan.step(&shard.index, *shard, now, QUERY_STEP_CANDIDATE_COUNT) {}
                    scan.into_hits().into_iter().map(|hit| ShardHit { shard: shard.shard_id, hit }).collect()
                })
                .collect();
            query::merge_newest_first(per_shard, limit)
        })
        .collect();
    query::union_filters(per_filter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventId;

    #[test]
    fn a_filter_of_ids_without_a_limit_is_served_every_id() {
        let ids = |count: u8| Some((0..count).map(|n| EventId([n; 32])).collect());
        let of = |filter: Filter| effective_limit(&filter, 3, 5);
        assert_eq!(of(Filter::default()), 3);
        assert_eq!(of(Filter { ids: ids(2), ..Filter::default() }), 3);
        assert_eq!(of(Filter { ids: ids(4), ..Filter::default() }), 4);
        assert_eq!(of(Filter { ids: ids(9), ..Filter::default() }), 5);
        assert_eq!(of(Filter { ids: ids(4), limit: Some(1), ..Filter::default() }), 1);
    }
}
