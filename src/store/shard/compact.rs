//! The shard's side of online compaction: choosing the layer whose segments are worth
//! rewriting, and serving the rewritten files once the rewrite put them in place.

use std::path::PathBuf;

use super::{Segment, ShardState};
use crate::limits::{COMPACTION_RETRY_INTERVAL, PRESSED_DEAD_PERCENT_MIN};
use crate::measure::Counter;
use crate::store::compact::{Failure, Rewrite, Rewritten};
use crate::store::index::Keep;
use crate::store::layer::Layer;
use crate::store::segment::SegmentBytes;

/// A compaction the indexer runs: one mapped layer's segments, rewritten with `keep`.
pub(in crate::store) struct CompactionJob {
    pub keep: Keep,
    pub ids: Vec<u32>,
    pub paths: Vec<PathBuf>,
    /// The bytes of the old segments.
    pub bytes: u64,
}

impl CompactionJob {
    /// Each kept record: the place of its segment in `paths`, and its offset (once placed).
    pub fn records(&self) -> Vec<(usize, u32)> {
        let first = self.keep.slots.start;
        self.keep.locs.iter().map(|loc| ((loc.segment - first) as usize, loc.offset)).collect()
    }
}

/// What compaction has done in this shard, for `/metrics`.
#[derive(Debug, Default)]
pub struct CompactionStats {
    pub runs: Counter,
    pub failures: Counter,
    /// Bytes of segments removed or rewritten smaller.
    pub reclaimed_bytes: Counter,
    /// Bytes written by rewrites (segments and parts).
    pub written_bytes: Counter,
}

/// What a compaction replaced (the old layer and the old segments' maps), held only to be
/// dropped off the core.
pub(in crate::store) struct Replaced {
    _layer: Layer,
    maps: Vec<SegmentBytes>,
}

/// When a layer is worth rewriting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Rewrite a layer once at least this share of its records (in percent) is dead; 0
    /// turns online compaction off.
    pub dead_percent_min: u8,
    /// Over this many bytes of segments, a layer is rewritten from
    /// `PRESSED_DEAD_PERCENT_MIN` on (0: no limit).
    pub shard_bytes_max: u64,
}

impl Default for CompactionPolicy {
    fn default() -> CompactionPolicy {
        CompactionPolicy { dead_percent_min: 50, shard_bytes_max: 0 }
    }
}

impl ShardState {
    /// How many live records to retire for the live ones to fit 5% under the shard's size
    /// limit, from the average live record's size; `None` when they fit (or no limit).
    pub fn records_over_size(&self) -> Option<usize> {
        let max = self.config.compaction.shard_bytes_max;
        let (bytes, dead_bytes) = self.byte_figures();
        let live_bytes = bytes.saturating_sub(dead_bytes);
        if max == 0 || live_bytes <= max {
            return None;
        }
        let average = (live_bytes / self.index.live_count().max(1)).max(1);
        usize::try_from((live_bytes - max / 20 * 19).div_ceil(average)).ok()
    }

    /// The layer most worth rewriting now (the most dead bytes, among those whose share of
    /// dead records reaches the policy's), if any. An encrypted store has no mapped layer.
    pub(in crate::store) fn next_compaction(&self, policy: CompactionPolicy) -> Option<CompactionJob> {
        let paused = self.compaction_pause.is_some_and(|until| std::time::Instant::now() < until);
        if !self.writable || policy.dead_percent_min == 0 || paused {
            return None;
        }
        // What a rewrite writes (its kept records, and their part: about a tenth more) must
        // fit beside the free-space reserve: compaction never takes the room commits need.
        let free = super::free_bytes(&self.dir).map(|free| free.saturating_sub(self.config.reserve_bytes));
        let bytes_of = |slots: &std::ops::Range<u32>| -> u64 {
            self.segments[slots.start as usize..slots.end as usize].iter().map(|s| s.len as u64).sum()
        };
        let total: u64 = self.segments.iter().map(|s| s.len as u64).sum();
        let pressed = policy.shard_bytes_max > 0 && total > policy.shard_bytes_max;
        let share_min = if pressed { PRESSED_DEAD_PERCENT_MIN } else { u64::from(policy.dead_percent_min) };
        let best = self
            .index
            .compaction_candidates()
            .into_iter()
            .filter(|c| c.dead > 0 && c.dead * 100 >= c.records * share_min)
            .filter(|c| !c.slots.clone().any(|slot| self.part_failures.contains(&slot)))
            .filter(|c| {
                let segments = &self.segments[c.slots.start as usize..c.slots.end as usize];
                let held = |id: u32| self.compaction_held_from.is_some_and(|from| id >= from);
                segments
                    .iter()
                    .all(|s| !self.damaged.contains(&s.id) && matches!(s.bytes, SegmentBytes::Mapped(_)) && !held(s.id))
            })
            .filter(|c| {
                let kept_bytes = bytes_of(&c.slots) * (c.records - c.dead) / c.records.max(1);
                free.is_none_or(|free| kept_bytes + kept_bytes / 10 <= free)
            })
            .max_by_key(|c| bytes_of(&c.slots) * c.dead / c.records.max(1))?;
        let keep = self.index.compaction_plan(best.slots.clone())?;
        let segments = &self.segments[best.slots.start as usize..best.slots.end as usize];
        Some(CompactionJob {
            ids: segments.iter().map(|s| s.id).collect(),
            paths: segments.iter().map(|s| s.path.clone()).collect(),
            bytes: bytes_of(&best.slots),
            keep,
        })
    }

    /// Run every compaction `policy` calls for, here and now (tools and tests; the relay's
    /// indexer runs them in the background, a step at a time); how many succeeded.
    pub fn compact_now(&mut self, policy: CompactionPolicy) -> usize {
        let mut done = 0;
        while let Some(mut job) = self.next_compaction(policy) {
            while !self.index.plan_step(&mut job.keep, u32::MAX) {}
            let (shard, size, faults) = (self.shard_id.0, self.config.segment_size, self.config.faults.clone());
            let outcome = Rewrite::open(shard, size, job.ids.clone(), job.paths.clone(), job.records(), faults)
                .map_err(Failure::from)
                .and_then(|mut rewrite| {
                    while !rewrite.step()? {}
                    rewrite.finish()
                });
            if outcome.is_ok() {
                let (mut from, end) = (job.keep.base, job.keep.base + job.keep.len);
                while from < end {
                    from = self.index.let_go(&job.keep, from, u32::MAX);
                }
            }
            done += usize::from(self.install_compaction(&job, outcome).is_some());
        }
        done
    }

    /// Serve a rewrite's files in place of the layer's old ones. The files are in place on
    /// disk whatever happens here: a failure leaves the old maps served (their files stay
    /// readable while mapped) and the slots out of every later part job and compaction
    /// until a restart, which opens the new files. Returns what it replaced (the old maps
    /// and layer), to be dropped off the core: unmapping them takes tens of milliseconds.
    pub(in crate::store) fn install_compaction(
        &mut self,
        job: &CompactionJob,
        outcome: Result<Rewritten, Failure>,
    ) -> Option<Replaced> {
        let slots = job.keep.slots.clone();
        let refused = match outcome {
            Ok(Rewritten { maps, part, counts, written_bytes }) => {
                self.compactions.written_bytes.add(written_bytes);
                match self.index.install_compacted(&job.keep, part, &counts) {
                    Ok(layer) => {
                        let count = maps.len();
                        // The slots after the new segments keep no file (a restart numbers
                        // the slots afresh).
                        let mut maps = maps.into_iter();
                        let mut after = 0;
                        let mut replaced = Replaced { _layer: layer, maps: Vec::new() };
                        for slot in slots.clone() {
                            let segment = &mut self.segments[slot as usize];
                            let bytes = maps.next().unwrap_or(SegmentBytes::Empty);
                            let len = bytes.as_slice().len();
                            after += len as u64;
                            let old = std::mem::replace(&mut segment.bytes, SegmentBytes::Empty);
                            replaced.maps.push(old);
                            *segment = Segment {
                                id: segment.id,
                                path: segment.path.clone(),
                                bytes,
                                len,
                                durable_len: len,
                                file: None,
                                checked: true,
                            };
                        }
                        self.compactions.runs.add(1);
                        self.compactions.reclaimed_bytes.add(job.bytes.saturating_sub(after));
                        tracing::info!(
                            shard = self.shard_id.0,
                            segments = slots.len(),
                            kept_segments = count,
                            reclaimed_bytes = job.bytes.saturating_sub(after),
                            "compacted sealed segments"
                        );
                        return Some(replaced);
                    }
                    Err(_) => "the index no longer has the layer as planned".to_owned(),
                }
            }
            Err(failure) if failure.retry => {
                // The old files are as they were: try again later (a full disk, an I/O error).
                tracing::warn!(shard = self.shard_id.0, first = %job.paths[0].display(), segments = job.paths.len(), error = %failure, "compaction failed before it replaced anything: tried again later");
                self.compactions.failures.add(1);
                self.compaction_pause = Some(std::time::Instant::now() + COMPACTION_RETRY_INTERVAL);
                return None;
            }
            Err(failure) => failure.message,
        };
        tracing::warn!(shard = self.shard_id.0, first = %job.paths[0].display(), segments = job.paths.len(), error = %refused, "compaction failed: the segments are served as they were (after a restart, from the files then in place), and not compacted again until a restart");
        self.compactions.failures.add(1);
        self.part_failures.extend(slots);
        None
    }
}
