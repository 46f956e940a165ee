//! Retention by age (`[retention]`): how long each kind is kept, and retiring what has
//! outlived it, a budgeted step at a time. Sans-IO: over an [`Index`].

use serde::{Deserialize, Serialize};

use super::index::{EventNo, Index, Run};

/// How long events are kept, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Seconds to keep events of the kinds no rule names; 0 keeps them for good.
    pub max_age_secs: u64,
    /// Kinds kept for a time of their own; the first rule that names a kind is its rule.
    pub kinds: Vec<KindRetention>,
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

/// How far one shard's walks have come: for each rule (and the default), the `created_at`
/// below which every event was judged against a cutoff at least as old as the next one.
#[derive(Clone, Debug, Default)]
pub struct RetentionWalk {
    by_rule: Vec<u64>,
    default: u64,
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
    walk.by_rule.resize(config.kinds.len(), 0);
    for (place, rule) in config.kinds.iter().enumerate().filter(|(_, rule)| rule.max_age_secs > 0) {
        let cutoff = now.saturating_sub(rule.max_age_secs);
        let mut reached = cutoff;
        // A kind an earlier rule names is that rule's.
        for &kind in
            rule.kinds.iter().filter(|&&kind| config.rule_of(kind).is_some_and(|first| std::ptr::eq(first, rule)))
        {
            let runs = index.kind_runs_within(kind, &(walk.by_rule[place]..=cutoff));
            reached =
                reached.min(walk_runs(index, &runs, walk.by_rule[place], cutoff, |_| true, &mut victims, &mut left));
        }
        walk.by_rule[place] = reached;
        done &= reached == cutoff;
    }
    if config.max_age_secs > 0 {
        let cutoff = now.saturating_sub(config.max_age_secs);
        let runs = index.global_runs_within(&(walk.default..=cutoff));
        let by_default = |kind: u16| config.rule_of(kind).is_none();
        walk.default = walk_runs(index, &runs, walk.default, cutoff, by_default, &mut victims, &mut left);
        done &= walk.default == cutoff;
    }
    victims.sort_unstable();
    victims.dedup();
    victims.iter().for_each(|&no| index.kill(no));
    (victims.len(), done)
}

/// Collect the live events of `runs` dated from `from` to before `cutoff` whose kind
/// `applies`, examining at most `left` (counted down); returns the date the walk reached:
/// `cutoff` when it got there.
fn walk_runs(
    index: &Index,
    runs: &[Run<'_>],
    from: u64,
    cutoff: u64,
    applies: impl Fn(u16) -> bool,
    victims: &mut Vec<EventNo>,
    left: &mut usize,
) -> u64 {
    let mut reached = cutoff;
    for run in runs {
        let created_at = |at: usize| index.created_at(run.no(at));
        let start = partition(run.len(), |at| created_at(at) < from);
        for at in start..run.len() {
            let date = created_at(at);
            if date >= cutoff {
                break;
            }
            if *left == 0 {
                reached = reached.min(date);
                break;
            }
            *left -= 1;
            let no = run.no(at);
            let entry = index.entry(no);
            if !entry.is_dead() && applies(entry.kind) {
                victims.push(no);
            }
        }
    }
    reached
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

    fn index_of(events: &[(u8, u16, u64)]) -> Index {
        let mut index = Index::new_bulk();
        for &(id, kind, created_at) in events {
            let (id, pubkey) = ([id; 32], [id; 32]);
            let facts = Facts { id: &id, pubkey: &pubkey, created_at, kind, expiration: None, tags: &[] };
            let Admit::Store { kills } = index.admit(&facts, 0) else { panic!("stored") };
            index.insert(&facts, Loc { segment: 0, offset: 0 }, kills);
        }
        index.finish_bulk();
        index.set_durable(index.len());
        index
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
}
