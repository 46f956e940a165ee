//! Retention by age (`[retention]`): how long each kind is kept, and retiring what has
//! outlived it, a budgeted step at a time. Sans-IO: over an [`Index`].

use serde::{Deserialize, Serialize};

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::index::{EventNo, Index, Run};

/// How long events are kept, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Seconds to keep events of the kinds no rule names; 0 keeps them for good.
    pub max_age_secs: u64,
    /// Kinds kept for a time of their own; the first rule that names a kind is its rule.
    pub kinds: Vec<KindRetention>,
    /// Bytes of segment files the store may hold (every shard together); 0: no limit.
    /// Over it, the oldest events of `evictable_kinds` are retired until the live ones fit,
    /// and compaction reclaims their space.
    pub max_store_bytes: u64,
    /// The kinds evicted, oldest first, when the store is over `max_store_bytes`.
    pub evictable_kinds: Vec<u16>,
}

/// Kinds kept for `max_age_secs` (0: for good).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KindRetention {
    pub kinds: Vec<u16>,
    pub max_age_secs: u64,
}

impl RetentionConfig {
    /// Seconds events of `kind` are kept; `None`: for good.
    pub fn max_age(&self, kind: u16) -> Option<u64> {
        let secs = self.rule_of(kind).map_or(self.max_age_secs, |rule| rule.max_age_secs);
        (secs > 0).then_some(secs)
    }

    fn rule_of(&self, kind: u16) -> Option<&KindRetention> {
        self.kinds.iter().find(|rule| rule.kinds.contains(&kind))
    }

    /// Whether anything is ever retired by age.
    pub fn is_on(&self) -> bool {
        self.max_age_secs > 0 || self.kinds.iter().any(|rule| rule.max_age_secs > 0)
    }
}

/// Where a walk resumes: the (created_at, number) of the next event it examines.
type Mark = (u64, EventNo);

/// How far one shard's walks have come: for each rule (and the default), the event from
/// which on nothing was judged against a cutoff at least as late as the next one.
#[derive(Clone, Debug, Default)]
pub struct RetentionWalk {
    by_rule: Vec<Mark>,
    default: Mark,
}

/// How far one shard's eviction has walked: every live event of an evictable kind before
/// this mark was retired. Back to the start once a walk finds nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct EvictionWalk {
    from: Mark,
}

/// The events of several sorted runs, oldest first by (created_at, number), from a mark on:
/// a walk spends its budget in date order over every layer at once, so that layers whose
/// dates overlap (backdated events, a compacted or imported store) never stall it.
struct OldestFirst<'a> {
    index: &'a Index,
    runs: Vec<Run<'a>>,
    heads: BinaryHeap<Reverse<(Mark, usize, usize)>>,
}

impl<'a> OldestFirst<'a> {
    fn new(index: &'a Index, runs: Vec<Run<'a>>, from: Mark) -> OldestFirst<'a> {
        let mut heads = BinaryHeap::with_capacity(runs.len());
        for (place, run) in runs.iter().enumerate() {
            let start = partition(run.len(), |at| mark_of(index, run, at) < from);
            if start < run.len() {
                heads.push(Reverse((mark_of(index, run, start), place, start)));
            }
        }
        OldestFirst { index, runs, heads }
    }

    /// The next event's mark, without moving past it.
    fn peek(&self) -> Option<Mark> {
        self.heads.peek().map(|Reverse((mark, _, _))| *mark)
    }
}

impl Iterator for OldestFirst<'_> {
    type Item = Mark;
    fn next(&mut self) -> Option<Mark> {
        let Reverse((mark, place, at)) = self.heads.pop()?;
        let run = &self.runs[place];
        if at + 1 < run.len() {
            self.heads.push(Reverse((mark_of(self.index, run, at + 1), place, at + 1)));
        }
        Some(mark)
    }
}

fn mark_of(index: &Index, run: &Run<'_>, at: usize) -> Mark {
    let no = run.no(at);
    (index.created_at(no), no)
}

/// Retire the `count` oldest live events of `kinds` (by `created_at`, then number),
/// examining at most `budget` (the walk goes on from there next time); how many it retired.
pub fn evict(index: &mut Index, kinds: &[u16], walk: &mut EvictionWalk, count: usize, budget: usize) -> usize {
    let window = walk.from.0..=u64::MAX;
    let runs: Vec<Run<'_>> = kinds.iter().flat_map(|&kind| index.kind_runs_within(kind, &window)).collect();
    let mut events = OldestFirst::new(index, runs, walk.from);
    let mut victims = Vec::new();
    for _ in 0..budget {
        if victims.len() == count {
            break;
        }
        let Some(mark) = events.next() else {
            // Nothing left to evict: the next walk starts over (events may arrive backdated).
            walk.from = (0, 0);
            break;
        };
        walk.from = (mark.0, mark.1 + 1);
        if mark.1 < index.durable_count() && !index.entry(mark.1).is_dead() {
            victims.push(mark.1);
        }
    }
    drop(events);
    victims.iter().for_each(|&no| index.kill(no));
    victims.len()
}

/// Retire from `index` the events that outlived their kind's time at `now`, examining at
/// most `budget` events (the walk goes on from there next time); how many it retired, and
/// whether it got to the end (nothing left that has outlived its time).
pub fn retire(
    index: &mut Index,
    config: &RetentionConfig,
    walk: &mut RetentionWalk,
    now: u64,
    budget: usize,
) -> (usize, bool) {
    let mut victims = Vec::new();
    let mut left = budget;
    let mut done = true;
    walk.by_rule.resize(config.kinds.len(), (0, 0));
    for (place, rule) in config.kinds.iter().enumerate().filter(|(_, rule)| rule.max_age_secs > 0) {
        let cutoff = now.saturating_sub(rule.max_age_secs);
        // A kind an earlier rule names is that rule's.
        let runs: Vec<Run<'_>> = rule
            .kinds
            .iter()
            .filter(|&&kind| config.rule_of(kind).is_some_and(|first| std::ptr::eq(first, rule)))
            .flat_map(|&kind| index.kind_runs_within(kind, &(walk.by_rule[place].0..=cutoff)))
            .collect();
        let events = OldestFirst::new(index, runs, walk.by_rule[place]);
        walk.by_rule[place] = walk_until(index, events, cutoff, |_| true, &mut victims, &mut left);
        done &= walk.by_rule[place] == (cutoff, 0);
    }
    if config.max_age_secs > 0 {
        let cutoff = now.saturating_sub(config.max_age_secs);
        let runs = index.global_runs_within(&(walk.default.0..=cutoff));
        let by_default = |kind: u16| config.rule_of(kind).is_none();
        let events = OldestFirst::new(index, runs, walk.default);
        walk.default = walk_until(index, events, cutoff, by_default, &mut victims, &mut left);
        done &= walk.default == (cutoff, 0);
    }
    victims.sort_unstable();
    victims.dedup();
    victims.iter().for_each(|&no| index.kill(no));
    (victims.len(), done)
}

/// Collect the live events dated before `cutoff` whose kind `applies`, oldest first,
/// examining at most `left` (counted down); returns where the walk stopped: `(cutoff, 0)`
/// when it got there.
fn walk_until(
    index: &Index,
    mut events: OldestFirst<'_>,
    cutoff: u64,
    applies: impl Fn(u16) -> bool,
    victims: &mut Vec<EventNo>,
    left: &mut usize,
) -> Mark {
    loop {
        let Some(mark) = events.peek().filter(|mark| mark.0 < cutoff) else { return (cutoff, 0) };
        if *left == 0 {
            return mark;
        }
        *left -= 1;
        events.next();
        let entry = index.entry(mark.1);
        if !entry.is_dead() && applies(entry.kind) {
            victims.push(mark.1);
        }
    }
}

/// The first of `len` places for which `below` is false (`below` holds for a prefix).
fn partition(len: usize, below: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (0, len);
    while low < high {
        let middle = (low + high) / 2;
        if below(middle) {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    low
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::index::{Admit, Facts, Loc};

    /// The events in layers of `per_layer` (one per segment), in order.
    fn index_in_layers(events: &[(u8, u16, u64)], per_layer: usize) -> Index {
        let mut index = Index::new_bulk();
        for (place, &(id, kind, created_at)) in events.iter().enumerate() {
            let (id, pubkey) = ([id; 32], [id; 32]);
            let facts = Facts { id: &id, pubkey: &pubkey, created_at, kind, expiration: None, tags: &[] };
            let Admit::Store { kills } = index.admit(&facts, 0) else { panic!("stored") };
            index.insert(&facts, Loc { segment: (place / per_layer) as u32, offset: 0 }, kills);
        }
        index.finish_bulk();
        index.set_durable(index.len());
        index
    }

    fn index_of(events: &[(u8, u16, u64)]) -> Index {
        index_in_layers(events, usize::MAX)
    }

    fn live(index: &Index) -> Vec<u8> {
        (0..index.len()).filter(|&no| index.is_visible(no, 0)).map(|no| index.entry(no).id[0]).collect()
    }

    /// Each kind by its rule, the others by the default, a kind kept for good by a rule of
    /// 0 even with a default; a small budget gets there over several steps, and a step with
    /// nothing older finds nothing.
    #[test]
    fn events_are_retired_by_their_kinds_age_a_budget_at_a_time() {
        let events: Vec<(u8, u16, u64)> =
            (0..40u8).map(|i| (i, [1, 7, 0, 3][usize::from(i % 4)], 1_000 + u64::from(i) * 10)).collect();
        let config = RetentionConfig {
            max_age_secs: 300,
            kinds: vec![
                KindRetention { kinds: vec![1], max_age_secs: 100 },
                KindRetention { kinds: vec![3, 1], max_age_secs: 0 },
            ],
            ..RetentionConfig::default()
        };
        assert_eq!(config.max_age(1), Some(100));
        assert_eq!(config.max_age(3), None);
        assert_eq!(config.max_age(7), Some(300));
        let now = 1_500;
        let expected: Vec<u8> = events
            .iter()
            .filter(|&&(_, kind, at)| config.max_age(kind).is_none_or(|secs| at >= now - secs))
            .map(|&(id, _, _)| id)
            .collect();
        let mut index = index_of(&events);
        let mut walk = RetentionWalk::default();
        let mut retired = 0;
        let mut steps = 0;
        loop {
            let (step, done) = retire(&mut index, &config, &mut walk, now, 3);
            retired += step;
            steps += 1;
            if done {
                break;
            }
            assert!(steps < 100, "the walk gets there");
        }
        assert_eq!(live(&index), expected);
        assert!(steps > 3, "a budget of 3 takes several steps ({steps})");
        assert_eq!(retired, events.len() - expected.len());
        assert_eq!(retire(&mut index, &config, &mut walk, now, 1_000), (0, true));
        assert_eq!(index.live_count() as usize, expected.len());
    }

    /// Layers whose dates overlap (each spans them all, as a compacted or imported store's
    /// do) are walked together in date order: a small budget still gets there.
    #[test]
    fn retention_over_layers_with_overlapping_dates_gets_there() {
        let events: Vec<(u8, u16, u64)> = (0..60u8).map(|i| (i, 1, 1_000 + u64::from(i % 20) * 10)).collect();
        let mut index = index_in_layers(&events, 20);
        assert_eq!(index.layers().len(), 3);
        let config = RetentionConfig { max_age_secs: 100, ..RetentionConfig::default() };
        let (now, mut walk, mut retired) = (1_250, RetentionWalk::default(), 0);
        for step in 0.. {
            let (count, done) = retire(&mut index, &config, &mut walk, now, 4);
            retired += count;
            if done {
                break;
            }
            assert!(step < 100, "the walk gets there ({retired} retired)");
        }
        let expected: Vec<u8> = events.iter().filter(|e| e.2 >= now - 100).map(|e| e.0).collect();
        assert_eq!(live(&index), expected);
        assert_eq!(retired, events.len() - expected.len());
    }

    /// Eviction retires the oldest events of the evictable kinds only, as many as asked,
    /// over several budgeted steps, and skips what is already dead.
    #[test]
    fn eviction_retires_the_oldest_events_of_evictable_kinds() {
        // Ids by age: kind 1 and 7 evictable, kind 0 not; dated out of arrival order.
        let events: Vec<(u8, u16, u64)> =
            (0..30u8).map(|i| (i, [1, 7, 0][usize::from(i % 3)], 10_000 - u64::from(i) * 10)).collect();
        let mut index = index_of(&events);
        // The oldest kind 1 event is already dead.
        let oldest_kind_1 = events.iter().filter(|e| e.1 == 1).min_by_key(|e| e.2).expect("one").0;
        let dead = (0..index.len()).find(|&no| index.entry(no).id[0] == oldest_kind_1).expect("stored");
        index.kill(dead);
        let mut walk = EvictionWalk::default();
        let mut evicted = 0;
        let mut steps = 0;
        while evicted < 5 {
            evicted += evict(&mut index, &[1, 7], &mut walk, 5 - evicted, 2);
            steps += 1;
            assert!(steps < 20, "the walk gets there");
        }
        let mut evictable: Vec<&(u8, u16, u64)> = events.iter().filter(|e| e.1 != 0 && e.0 != oldest_kind_1).collect();
        evictable.sort_by_key(|e| e.2);
        let gone: Vec<u8> = evictable[..5].iter().map(|e| e.0).collect();
        let expected: Vec<u8> =
            events.iter().map(|e| e.0).filter(|id| *id != oldest_kind_1 && !gone.contains(id)).collect();
        assert_eq!(live(&index), expected);
        assert!(steps >= 3, "a budget of 2 takes several steps ({steps})");
    }
}
