//! `Storage`: one core's shards, their ack pipelines, and what NIP-62 keeps on them (the
//! pubkeys that vanished). The only part of a core that touches its shards.

use crate::limits::RETENTION_STEP_COUNT;
use crate::store::retention::{self, EvictionWalk, RetentionConfig, RetentionWalk};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::acks::AckPipeline;
use super::ids::CoreId;
use super::throttle::{LogThrottle, REPEATED_ERROR_LOG_INTERVAL};
use crate::event::{ParsedEvent, VerifiedEvent};
use crate::search::{self, LogPosition, SearchConfig, ShardSearch};

/// In a shard's search index directory: the kinds it was built for.
const SEARCH_KINDS_FILE: &str = "ringrelay-kinds";
use crate::store::{Admission, Retirements, Router, Shard, ShardFigures, ShardId, ShardState, StoreError};

pub struct Storage {
    core: CoreId,
    core_count: usize,
    router: Router,
    shards: RefCell<HashMap<ShardId, Shard>>,
    /// Per shard, the appends waiting for their OK.
    pipelines: HashMap<ShardId, Rc<AckPipeline>>,
    /// Per pubkey that asked to vanish (NIP-62): the latest date it asked for. Gift wraps to it
    /// up to then are retired from this core's shards and refused.
    vanished: RefCell<HashMap<[u8; 32], u64>>,
    /// Storage errors repeat once per event; they are logged once per interval.
    pub errors: LogThrottle,
    /// Per shard, how far retention by age has walked.
    retention_walks: RefCell<HashMap<ShardId, RetentionWalk>>,
    /// Per shard, how far eviction for size has walked.
    eviction_walks: RefCell<HashMap<ShardId, EvictionWalk>>,
    /// Per shard, its full-text index (NIP-50), when search is on.
    search: RefCell<HashMap<ShardId, Rc<ShardSearch>>>,
}

impl Storage {
    pub fn new(core: CoreId, core_count: usize, router: Router, shards: HashMap<ShardId, Shard>) -> Storage {
        let pipelines = shards
            .iter()
            .map(|(&id, shard)| (id, Rc::new(AckPipeline::new(shard.state().index.durable_count()))))
            .collect();
        Storage {
            core,
            core_count,
            router,
            shards: RefCell::new(shards),
            pipelines,
            vanished: RefCell::new(HashMap::new()),
            errors: LogThrottle::new(REPEATED_ERROR_LOG_INTERVAL),
            retention_walks: RefCell::new(HashMap::new()),
            eviction_walks: RefCell::new(HashMap::new()),
            search: RefCell::new(HashMap::new()),
        }
    }

    /// Open each shard's search index (`[search]`), after the shards begin logging what
    /// they retire for it; per shard, its checkpoint, or an error (a relay handing over may
    /// still hold the index: `search::feed` tries again).
    pub fn open_search(
        &self,
        config: &SearchConfig,
        private: &[u16],
    ) -> Vec<(ShardId, anyhow::Result<Option<LogPosition>>)> {
        for shard in self.shards.borrow().values() {
            shard.state_mut().index.track_retired();
        }
        self.shard_ids().into_iter().map(|id| (id, self.open_search_of(id, config, private))).collect()
    }

    /// Open one shard's search index for `config`'s kinds less the `private` ones; its
    /// checkpoint.
    pub fn open_search_of(
        &self,
        id: ShardId,
        config: &SearchConfig,
        private: &[u16],
    ) -> anyhow::Result<Option<LogPosition>> {
        let shard_dir = self.with_shard(id, |state| state.dir.clone());
        let shard_dir = shard_dir.ok_or_else(|| anyhow::anyhow!("the shard is closed"))?;
        let dir = search::index::dir_of(&shard_dir);
        // An index built for other kinds is built again: its checkpoint says it has read
        // events it did not keep.
        let marker = dir.join(SEARCH_KINDS_FILE);
        let kinds = format!("kinds {:?} private {private:?}\n", config.kinds);
        if dir.exists() && std::fs::read_to_string(&marker).ok().as_deref() != Some(kinds.as_str()) {
            tracing::info!(shard = id.0, "the search index was built for other kinds; rebuilding it");
            search::index::forget(&shard_dir)?;
        }
        let (search, checkpoint) = ShardSearch::open(&dir, config.writer_memory_bytes, config.queue_bytes_max)?;
        std::fs::write(&marker, kinds)?;
        self.search.borrow_mut().insert(id, Rc::new(search));
        Ok(checkpoint)
    }

    /// Up to `max` of a shard's events retired since the last call (see
    /// `Index::take_retired`): their ids and kinds.
    pub fn take_retired(&self, shard: ShardId, max: usize) -> Vec<([u8; 32], u16)> {
        let shards = self.shards.borrow();
        let Some(shard) = shards.get(&shard) else { return Vec::new() };
        let mut state = shard.state_mut();
        let retired = state.index.take_retired(max);
        retired.into_iter().map(|no| state.index.entry(no)).map(|entry| (entry.id, entry.kind)).collect()
    }

    /// Keep online compaction of `shard` off its segments from `segment` on (`None`: free).
    pub fn hold_compaction(&self, shard: ShardId, segment: Option<u32>) {
        if let Some(shard) = self.shards.borrow().get(&shard) {
            shard.state_mut().hold_compaction_from(segment);
        }
    }

    /// A shard's search index, when it has one.
    pub fn search_of(&self, shard: ShardId) -> Option<Rc<ShardSearch>> {
        self.search.borrow().get(&shard).cloned()
    }

    /// The search indexes' figures, summed: (indexed, queued bytes, failures, documents).
    pub fn search_figures(&self) -> (u64, u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.search.borrow().values().fold((0, 0, 0, 0), |(indexed, queued, failed, documents), search| {
            let figures = &search.figures;
            (
                indexed + figures.indexed.load(Relaxed),
                queued + figures.queued_bytes.load(Relaxed) as u64,
                failed + figures.failures.load(Relaxed),
                documents + figures.documents.load(Relaxed),
            )
        })
    }

    /// Let go of the search indexes: each commits what it holds and stops.
    pub fn close_search(&self) {
        self.search.borrow_mut().clear();
    }

    /// Retire from this core's shards what outlived its kind's time (`[retention]`), at most
    /// `RETENTION_STEP_COUNT` events examined per shard; how many were retired, and whether
    /// nothing is left that outlived its time.
    pub fn retire_by_age(&self, config: &RetentionConfig, now: u64) -> (usize, bool) {
        if !config.is_on() {
            return (0, true);
        }
        let mut walks = self.retention_walks.borrow_mut();
        let (mut retired, mut done) = (0, true);
        for (&id, shard) in self.shards.borrow().iter() {
            let walk = walks.entry(id).or_default();
            let (step, finished) =
                retention::retire(&mut shard.state_mut().index, config, walk, now, RETENTION_STEP_COUNT);
            retired += step;
            done &= finished;
        }
        (retired, done)
    }

    /// Retire the oldest events of `evictable_kinds` from each of this core's shards whose
    /// live records are over its share of `max_store_bytes` (`[retention]`), at most
    /// `RETENTION_STEP_COUNT` examined per shard; how many. Compaction reclaims their space.
    pub fn evict_for_size(&self, config: &RetentionConfig) -> usize {
        if config.max_store_bytes == 0 || config.evictable_kinds.is_empty() {
            return 0;
        }
        let mut walks = self.eviction_walks.borrow_mut();
        let mut evicted = 0;
        for (&id, shard) in self.shards.borrow().iter() {
            let mut state = shard.state_mut();
            let Some(count) = state.records_over_size() else { continue };
            let walk = walks.entry(id).or_default();
            let count = count.min(RETENTION_STEP_COUNT);
            evicted += retention::evict(&mut state.index, &config.evictable_kinds, walk, count, RETENTION_STEP_COUNT);
        }
        evicted
    }

    /// The shard that stores `pubkey`'s events: a keyed hash, computed once per event and
    /// passed along with it.
    pub fn owner_shard(&self, pubkey: &[u8; 32]) -> ShardId {
        self.router.owner_shard(pubkey)
    }

    /// The core that owns `shard`.
    pub fn owner_core(&self, shard: ShardId) -> CoreId {
        CoreId(usize::from(shard) % self.core_count)
    }

    /// Whether `shard` is one of this core's.
    pub fn owns(&self, shard: ShardId) -> bool {
        self.owner_core(shard) == self.core
    }

    pub fn shard_ids(&self) -> Vec<ShardId> {
        self.shards.borrow().keys().copied().collect()
    }

    /// Run `f` on a shard's state; `None` once the shard is closed.
    pub fn with_shard<T>(&self, shard: ShardId, f: impl FnOnce(&ShardState) -> T) -> Option<T> {
        let shards = self.shards.borrow();
        let shard = shards.get(&shard)?;
        let state = shard.state();
        Some(f(&state))
    }

    /// Append `event` to `shard` under the storage rules, with its pipeline; `None` once the
    /// shard is closed.
    pub fn append(
        &self,
        shard: ShardId,
        event: &VerifiedEvent,
        now: u64,
    ) -> Option<(Result<Admission, StoreError>, Rc<AckPipeline>)> {
        let shards = self.shards.borrow();
        let owned = shards.get(&shard)?;
        Some((owned.append(event, now), self.pipelines[&shard].clone()))
    }

    /// The ack pipeline of one of this core's shards.
    pub fn ack_pipeline(&self, shard: ShardId) -> Rc<AckPipeline> {
        self.pipelines[&shard].clone()
    }

    pub fn pipelines(&self) -> impl Iterator<Item = &Rc<AckPipeline>> {
        self.pipelines.values()
    }

    /// Wait (up to `deadline`) until every append has been answered.
    pub async fn acks_settled(&self, deadline: Duration) {
        let until = Instant::now() + deadline;
        while !self.pipelines.values().all(|pipeline| pipeline.is_idle()) && Instant::now() < until {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Retire banned events and banned pubkeys' events from every shard.
    pub fn retire(&self, retirements: &Retirements) {
        for shard in self.shards.borrow().values() {
            let retired = retirements.apply(&mut shard.state_mut().index);
            if retired > 0 {
                tracing::info!(retired, "banned events and banned pubkeys' events retired");
            }
        }
    }

    /// A request to vanish from `pubkey` up to `until` is stored (on any core): retire the
    /// gift wraps to it from this core's shards, and refuse them from now on (NIP-62).
    pub fn note_vanish(&self, pubkey: &[u8; 32], until: u64) {
        let mut vanished = self.vanished.borrow_mut();
        let latest = vanished.entry(*pubkey).or_insert(0);
        *latest = (*latest).max(until);
        let hex = crate::hex::encode(pubkey);
        let mut retired = 0;
        for shard in self.shards.borrow().values() {
            retired += shard.state_mut().index.kill_wraps_to(hex.as_bytes(), until);
        }
        if retired > 0 {
            tracing::info!(pubkey = %hex, retired, "gift wraps to a pubkey that vanished retired");
        }
    }

    /// Whether a gift wrap dated `created_at` `p`-tags a pubkey that vanished since.
    pub fn is_wrap_to_vanished(&self, event: &ParsedEvent) -> bool {
        let vanished = self.vanished.borrow();
        !vanished.is_empty()
            && event.index_tags.iter().any(|tag| {
                tag.letter == b'p'
                    && crate::hex::decode_lower::<32>(&tag.value)
                        .and_then(|key| vanished.get(&key).copied())
                        .is_some_and(|until| event.created_at <= until)
            })
    }

    /// How many of this core's shards refuse writes now.
    pub fn refusing_count(&self) -> usize {
        self.shards.borrow().values().filter(|shard| shard.refusal().is_some()).count()
    }

    /// Each shard's figures, in shard order.
    pub fn figures(&self) -> Vec<ShardFigures> {
        let mut shards: Vec<_> = self.shards.borrow().values().map(|shard| shard.state().figures()).collect();
        shards.sort_by_key(|figures| figures.shard);
        shards
    }

    /// Stop storing: finish every pending append and fsync, and close the shards.
    pub async fn close(&self) {
        let shards: Vec<(ShardId, Shard)> = self.shards.borrow_mut().drain().collect();
        for (shard_id, shard) in shards {
            if let Err(error) = shard.close().await {
                tracing::error!(core = self.core.0, shard = %shard_id, %error, "closing shard");
            }
        }
    }
}
