//! The index's side of online compaction: which sealed segments are worth rewriting, which
//! of their events a rewrite keeps, and serving the rewritten segments' part in place of
//! the layer they replace, numbers unchanged.
//!
//! Compaction keeps every event that was live when it began (dead is forever, so what it
//! keeps is a superset of what is live when it ends). The events it drops were already
//! dead: they keep their numbers and their dead bits, and what the rules held by number
//! for them (the id table, a pending expiration) is let go, as a restart that no longer
//! finds them on disk would. Each step that reads many entries (planning what is kept,
//! letting go of what is dropped) works a chunk at a time, so the core serves in between.

use std::hash::BuildHasher;
use std::ops::Range;

use super::{EventNo, Index, Loc, SegmentStat};
use crate::store::layer::{Layer, MappedLayer};
use crate::store::part::Part;

/// A mapped layer's events that a compaction keeps: those live when it was planned.
#[derive(Clone, Debug)]
pub struct Keep {
    /// The segment slots the layer indexes.
    pub slots: Range<u32>,
    /// The layer's first number and its count.
    pub base: EventNo,
    pub len: u32,
    /// The kept events, in number order, and where their records lie now.
    pub nos: Vec<EventNo>,
    pub locs: Vec<Loc>,
    /// The next of the layer's numbers the plan looks at.
    planned: EventNo,
}

/// A mapped layer's worth as a compaction: its slots, records and dead records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub slots: Range<u32>,
    pub records: u64,
    pub dead: u64,
}

impl Index {
    /// Every mapped layer with its record counts (the shard weighs them by bytes).
    pub fn compaction_candidates(&self) -> Vec<Candidate> {
        self.layers
            .iter()
            .filter(|layer| matches!(layer, Layer::Mapped(_)))
            .map(|layer| {
                let slots = layer.segments();
                let stats = self.segment_stats.get(slots.start as usize..slots.end as usize).unwrap_or_default();
                Candidate {
                    slots,
                    records: stats.iter().map(|s| u64::from(s.records)).sum(),
                    dead: stats.iter().map(|s| u64::from(s.dead)).sum(),
                }
            })
            .collect()
    }

    /// What compacting the mapped layer of exactly `slots` keeps: its live events now,
    /// gathered with their places by [`Index::plan_step`], a chunk at a time.
    pub fn compaction_plan(&self, slots: Range<u32>) -> Option<Keep> {
        let layer = self.layers.iter().find(|layer| matches!(layer, Layer::Mapped(_)) && layer.segments() == slots)?;
        let (base, len) = (layer.base(), layer.len());
        Some(Keep { slots, base, len, nos: Vec::new(), locs: Vec::new(), planned: base })
    }

    /// Gather the next `count` of the layer's numbers that are live, with where their
    /// records lie; whether the whole layer is planned.
    pub fn plan_step(&self, keep: &mut Keep, count: u32) -> bool {
        let end = keep.base + keep.len;
        let to = end.min(keep.planned.saturating_add(count));
        for no in keep.planned..to {
            if !self.is_dead(no) {
                keep.nos.push(no);
                keep.locs.push(self.entry(no).loc);
            }
        }
        keep.planned = to;
        to == end
    }

    /// Let go of what the rules hold by number for the events of the layer's numbers from
    /// `from` (up to `count` of them) that `keep` drops (all dead): their ids and pending
    /// expirations. A versions entry may still name one: it reads as dated 0 (dead), so any
    /// new version replaces it, as after a restart that no longer finds it. Returns where
    /// the next chunk starts (`keep.base + keep.len` when done). Done before the part is
    /// installed, while the old layer still reads their ids.
    pub fn let_go(&mut self, keep: &Keep, from: EventNo, count: u32) -> EventNo {
        let to = (keep.base + keep.len).min(from.saturating_add(count));
        let mut kept = keep.nos[keep.nos.partition_point(|&no| no < from)..].iter().peekable();
        for no in from..to {
            if kept.next_if_eq(&&no).is_some() {
                continue;
            }
            let hash = self.hasher.hash_one(self.entry(no).id);
            if let Ok(found) = self.by_id.find_entry(hash, |&other| other == no) {
                found.remove();
            }
            if let Some(at) = self.expiration_of.remove(&no) {
                self.expiring.remove(&(at, no));
            }
        }
        to
    }

    /// Serve the kept events from `part` (built from the rewritten segments, the first in
    /// slot `keep.slots.start`, holding `counts[i]` records in its `i`-th segment). Hands the
    /// part back when the layer is no longer there as planned or the part does not hold the
    /// kept events (checked on a sample: it was built from their records). Returns the
    /// layer it replaced, for the caller to drop off the core (unmapping a large part
    /// takes a while).
    pub fn install_compacted(&mut self, keep: &Keep, part: Part, counts: &[u32]) -> Result<Layer, Part> {
        let Some(at) = self.layers.iter().position(|layer| {
            matches!(layer, Layer::Mapped(_))
                && layer.segments() == keep.slots
                && layer.base() == keep.base
                && layer.len() == keep.len
        }) else {
            return Err(part);
        };
        let old = &self.layers[at];
        let sample = (0..keep.nos.len()).step_by(SAMPLE_STRIDE).chain(keep.nos.len().checked_sub(1));
        let fits = part.len() as usize == keep.nos.len()
            && counts.len() == part.covered_count()
            && counts.len() <= keep.slots.len()
            && counts.iter().map(|&c| c as usize).sum::<usize>() == keep.nos.len()
            && sample.into_iter().all(|local| part.entry(local as u32).id == *old.id(keep.nos[local] - keep.base));
        if !fits {
            return Err(part);
        }
        let kept: Box<[u32]> = keep.nos.iter().map(|&no| no - keep.base).collect();
        let layer = MappedLayer::compacted(part, keep.base, keep.slots.start, keep.len, kept, |pubkey| {
            self.intern_author(pubkey)
        });
        layer.part.release_pages();
        let old = std::mem::replace(&mut self.layers[at], Layer::Mapped(layer));
        self.recount_slots(keep, counts);
        Ok(old)
    }

    /// The records and dead records of the slots a compaction rewrote, counted again (the
    /// slots after the rewritten segments hold none).
    fn recount_slots(&mut self, keep: &Keep, counts: &[u32]) {
        let first = keep.slots.start as usize;
        self.segment_stats[first..keep.slots.end as usize].fill(SegmentStat::default());
        let mut nos = keep.nos.iter();
        for (place, &count) in counts.iter().enumerate() {
            let dead = nos.by_ref().take(count as usize).filter(|&&no| self.is_dead(no)).count();
            self.segment_stats[first + place] = SegmentStat { records: count, dead: dead as u32 };
        }
    }
}

/// One kept event in this many is checked against the new part before it is served.
const SAMPLE_STRIDE: usize = 1024;
