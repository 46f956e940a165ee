//! The query engine: plan a filter onto the most selective index, scan newest first in
//! bounded steps that can resume, and merge per-shard results (created_at desc, id asc).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::RangeInclusive;
use std::sync::Arc;

use super::index::{EventNo, Index, Run};
use super::record::ArchivedRecord;
use crate::filter::{Filter, Matchable};
use crate::limits::QUERY_TIE_COUNT_MAX;

/// A run's `at`-th entry's place in newest-first order: (created_at, number).
fn key_at(index: &Index, run: &Run<'_>, at: usize) -> (u64, EventNo) {
    let no = run.no(at);
    let created_at = match run.layer {
        Some(layer) => layer.posted_created_at(run.nos[at]),
        None => index.created_at(no),
    };
    (created_at, no)
}

/// The first of `len` positions where `below` is false (`below` true, then false).
fn partition_point(len: usize, below: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (0, len);
    while low < high {
        let middle = (low + high) / 2;
        match below(middle) {
            true => low = middle + 1,
            false => high = middle,
        }
    }
    low
}

/// Whether no value repeats.
fn distinct<T: Ord + Clone>(values: &[T]) -> bool {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).all(|pair| pair[0] != pair[1])
}

/// Anything with the NIP-01 order: newest first, ties by lowest id.
pub trait Ordered {
    fn created_at(&self) -> u64;
    fn id(&self) -> &[u8; 32];
    fn order_key(&self) -> (Reverse<u64>, &[u8; 32]) {
        (Reverse(self.created_at()), self.id())
    }
}

/// One matching event in one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub created_at: u64,
    pub id: [u8; 32],
    pub no: EventNo,
}

impl Ordered for Hit {
    fn created_at(&self) -> u64 {
        self.created_at
    }
    fn id(&self) -> &[u8; 32] {
        &self.id
    }
}

/// Reads stored records for the checks the indexes cannot answer (tag values).
pub trait RecordSource {
    /// `f` over record `no`; `None` when it cannot be read back (damaged on disk).
    fn with_record<R>(&self, no: EventNo, f: impl FnOnce(&ArchivedRecord) -> R) -> Option<R>;
}

/// Which postings a filter scan walks.
#[derive(Clone, Debug)]
enum List {
    Owned(Vec<EventNo>),
    Author(u32),
    Kind(u16),
    Tag(u8, Box<[u8]>),
    Global,
}

impl List {
    /// The list's sorted runs (a few per layer) from the layers that may hold events dated
    /// in `window`, walked together.
    fn runs<'a>(&'a self, index: &'a Index, window: &RangeInclusive<u64>) -> Vec<Run<'a>> {
        match self {
            List::Owned(nos) => vec![Run { nos, layer: None }],
            List::Author(author) => index.author_runs_within(*author, window),
            List::Kind(kind) => index.kind_runs_within(*kind, window),
            List::Tag(letter, value) => index.tag_runs_within(*letter, value, window),
            List::Global => index.global_runs_within(window),
        }
    }
}

/// Events of private kinds (DMs, gift wraps) are served only to their author or to a
/// pubkey they `p`-tag: `viewers` are the pubkeys the asking connection authenticated as.
/// With no private kinds nothing is hidden.
#[derive(Clone, Debug, Default)]
pub struct Privacy {
    pub kinds: Arc<[u16]>,
    pub viewers: Arc<[[u8; 32]]>,
}

impl Privacy {
    /// Whether an event of `kind` by `author` that `p`-tags what `tags_viewer` finds may be
    /// served to these viewers.
    pub fn allows(&self, kind: u16, author: &[u8; 32], tags_viewer: impl Fn(&[u8]) -> bool) -> bool {
        !self.kinds.contains(&kind)
            || self.viewers.iter().any(|viewer| viewer == author || tags_viewer(crate::hex::encode(viewer).as_bytes()))
    }

    /// Whether a filter could match an event this privacy hides.
    pub fn may_hide(&self, filter: &Filter) -> bool {
        !self.kinds.is_empty() && filter.kinds.as_ref().is_none_or(|kinds| kinds.iter().any(|k| self.kinds.contains(k)))
    }
}

/// A resumable scan of one filter over one shard.
#[derive(Debug)]
pub struct FilterScan {
    filter: Filter,
    /// What the asking connection may not see (private kinds).
    privacy: Privacy,
    limit: usize,
    lists: Vec<List>,
    /// Resolved `authors`; `None` when the filter has none.
    authors: Option<Vec<u32>>,
    /// Events numbered at or above this arrived after the scan began and are left to live fan-out.
    snapshot: EventNo,
    /// The next candidates are strictly below this (created_at, number).
    resume_below: (u64, EventNo),
    hits: Vec<Hit>,
    /// A counting scan keeps no hits: it counts them, up to `limit`.
    counted: Option<usize>,
    /// [`FilterScan::counts_by_lists`], worked out at the first step (`hiding` may change
    /// it until then).
    by_lists: Option<bool>,
    done: bool,
}

impl FilterScan {
    /// Plan `filter` with its resolved `limit` on `index`.
    pub fn new(filter: &Filter, limit: usize, index: &Index) -> FilterScan {
        let mut scan = FilterScan {
            filter: filter.clone(),
            privacy: Privacy::default(),
            limit,
            lists: Vec::new(),
            authors: None,
            snapshot: index.durable_count(),
            resume_below: (filter.until.unwrap_or(u64::MAX), EventNo::MAX),
            hits: Vec::new(),
            counted: None,
            by_lists: None,
            done: limit == 0 || filter.since.zip(filter.until).is_some_and(|(since, until)| since > until),
        };
        if let Some(authors) = &filter.authors {
            let resolved: Vec<u32> = authors.iter().filter_map(|a| index.author_of(&a.0)).collect();
            scan.done |= resolved.is_empty();
            scan.authors = Some(resolved);
        }
        if !scan.done {
            scan.lists = scan.plan(index);
        }
        scan
    }

    /// The cheapest way in: the index whose candidate lists are shortest.
    fn plan(&self, index: &Index) -> Vec<List> {
        let length = |runs: Vec<Run<'_>>| runs.iter().map(Run::len).sum::<usize>();
        let mut best = (length(index.global_runs()), vec![List::Global]);
        let mut consider = |cost: usize, lists: Vec<List>| {
            if cost < best.0 {
                best = (cost, lists);
            }
        };
        if let Some(ids) = &self.filter.ids {
            let mut nos: Vec<EventNo> = ids.iter().filter_map(|id| index.lookup_id(&id.0)).collect();
            nos.sort_unstable_by_key(|&no| (index.created_at(no), no));
            nos.dedup();
            consider(nos.len(), vec![List::Owned(nos)]);
        }
        if let Some(authors) = &self.authors {
            let cost = authors.iter().map(|&a| length(index.author_runs(a))).sum();
            consider(cost, authors.iter().map(|&a| List::Author(a)).collect());
        }
        if let Some(kinds) = &self.filter.kinds {
            let cost = kinds.iter().map(|&k| length(index.kind_runs(k))).sum();
            consider(cost, kinds.iter().map(|&k| List::Kind(k)).collect());
        }
        for tag in &self.filter.tags {
            let cost = tag.values.iter().map(|v| length(index.tag_runs(tag.letter, v))).sum();
            consider(cost, tag.values.iter().map(|v| List::Tag(tag.letter, v.clone())).collect());
        }
        best.1
    }

    /// The same scan, skipping what `privacy` hides from the asking connection.
    pub fn hiding(mut self, privacy: &Privacy) -> FilterScan {
        if privacy.may_hide(&self.filter) {
            self.privacy = privacy.clone();
        }
        self
    }

    /// A scan that counts the events `filter` matches, up to `limit`, keeping none of them
    /// (no hits, no ordering of ties): what a COUNT of one filter needs.
    pub fn new_count(filter: &Filter, limit: usize, index: &Index) -> FilterScan {
        FilterScan { counted: Some(0), ..FilterScan::new(filter, limit, index) }
    }

    /// Events counted by a counting scan (0 for any other).
    pub fn count(&self) -> usize {
        self.counted.unwrap_or(0)
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Examine at most `budget` candidates; returns whether the scan is finished.
    pub fn step(&mut self, index: &Index, records: &impl RecordSource, now: u64, budget: usize) -> bool {
        if self.done {
            return true;
        }
        if self.by_lists.is_none() {
            self.by_lists = Some(self.counts_by_lists());
        }
        if self.by_lists == Some(true) {
            return self.count_step(index, now, budget);
        }
        let since = self.filter.since.unwrap_or(0);
        // Every run of every list, looked up once per step (a tag list is a hash lookup).
        // Only what is dated from `since` up to where the scan resumes can still be a hit.
        let window = since..=self.resume_below.0;
        let runs: Vec<Run<'_>> = self.lists.iter().flat_map(|list| list.runs(index, &window)).collect();
        let key_at = |run: &Run<'_>, at: usize| key_at(index, run, at);
        let mut heads = BinaryHeap::with_capacity(runs.len());
        for (place, run) in runs.iter().enumerate().filter(|(_, run)| !run.is_empty()) {
            let below = self.resume_below;
            // Most runs lie wholly below where the scan resumes (always on its first step).
            let low = match key_at(run, run.len() - 1) < below {
                true => run.len(),
                false => partition_point(run.len(), |at| key_at(run, at) < below),
            };
            if low > 0 {
                heads.push((key_at(run, low - 1), place, low - 1));
            }
        }
        let mut examined = 0;
        let mut previous = None;
        while let Some((key, run, position)) = heads.pop() {
            if key.0 < since {
                break;
            }
            if position > 0 {
                heads.push((key_at(&runs[run], position - 1), run, position - 1));
            }
            // The same event from another list (two kinds named twice, an event with two
            // of the tag values asked for) costs no budget: a step that ended among the
            // copies would resume at the same key and never get past them.
            if previous == Some(key) {
                continue;
            }
            if examined == budget {
                self.resume_below = (key.0, key.1 + 1);
                return false;
            }
            examined += 1;
            previous = Some(key);
            self.resume_below = key;
            if self.past_limit(key.0) {
                break;
            }
            if self.accepts(key.1, index, records, now) {
                match &mut self.counted {
                    Some(counted) => *counted += 1,
                    None => {
                        let entry = index.entry(key.1);
                        self.hits.push(Hit { created_at: entry.created_at, id: entry.id, no: key.1 });
                    }
                }
            }
        }
        self.finish();
        true
    }

    /// Whether this is a counting scan whose lists decide everything but dates and
    /// visibility: distinct kinds, distinct authors, or the whole store, with no ids, tags
    /// or privacy to check against the record. No event is then in two of its runs, and
    /// the runs need no merging: each is counted on its own ([`FilterScan::count_step`]).
    fn counts_by_lists(&self) -> bool {
        let filter = &self.filter;
        if self.counted.is_none() || filter.ids.is_some() || !filter.tags.is_empty() || !self.privacy.kinds.is_empty() {
            return false;
        }
        let lists = &self.lists;
        match (&filter.kinds, &self.authors) {
            (Some(kinds), None) => {
                distinct(kinds) && lists.len() == kinds.len() && lists.iter().all(|l| matches!(l, List::Kind(_)))
            }
            (None, Some(authors)) => {
                distinct(authors) && lists.len() == authors.len() && lists.iter().all(|l| matches!(l, List::Author(_)))
            }
            (None, None) => matches!(lists.as_slice(), [List::Global]),
            (Some(_), Some(_)) => false,
        }
    }

    /// One step of a scan that [`FilterScan::counts_by_lists`]: each run's entries dated
    /// in the window are found by binary search and counted by visibility alone, with no
    /// merge (a COUNT of a kind since a date walked the runs newest first through a heap:
    /// ~10× the work per entry). Resumable as the merging step is: at most `budget`
    /// entries, each run's share from the top down to the highest key where a share ends,
    /// and the next step goes on below that key.
    fn count_step(&mut self, index: &Index, now: u64, budget: usize) -> bool {
        let since = self.filter.since.unwrap_or(0);
        let window = since..=self.resume_below.0;
        let runs: Vec<Run<'_>> = self.lists.iter().flat_map(|list| list.runs(index, &window)).collect();
        let first_from =
            |run: &Run<'_>, key: (u64, EventNo)| partition_point(run.len(), |at| key_at(index, run, at) < key);
        let ranges: Vec<(usize, usize)> =
            runs.iter().map(|run| (first_from(run, (since, 0)), first_from(run, self.resume_below))).collect();
        let total: usize = ranges.iter().map(|&(low, high)| high - low).sum();
        let share = (budget / runs.len().max(1)).max(1);
        let cut = match total > budget {
            true => runs
                .iter()
                .zip(&ranges)
                .filter(|(_, &(low, high))| high - low > share)
                .map(|(run, &(_, high))| key_at(index, run, high - share))
                .max(),
            false => None,
        };
        let mut counted = 0;
        for (run, &(low, high)) in runs.iter().zip(&ranges) {
            let from = cut.map_or(low, |cut| first_from(run, cut).max(low));
            counted +=
                (from..high).filter(|&at| run.no(at) < self.snapshot && index.is_visible(run.no(at), now)).count();
        }
        let counted = self.counted.insert((self.counted.unwrap_or(0) + counted).min(self.limit));
        match cut {
            Some(cut) if *counted < self.limit => {
                self.resume_below = cut;
                false
            }
            _ => {
                self.finish();
                true
            }
        }
    }

    /// Whether a candidate at `created_at` can no longer make the first `limit`: it is
    /// older than the limit-th hit, or past the most ties we gather.
    fn past_limit(&self, created_at: u64) -> bool {
        if let Some(counted) = self.counted {
            return counted >= self.limit;
        }
        let Some(boundary) = self.hits.get(self.limit.saturating_sub(1)) else { return false };
        created_at < boundary.created_at || self.hits.len() >= self.limit + QUERY_TIE_COUNT_MAX
    }

    fn accepts(&self, no: EventNo, index: &Index, records: &impl RecordSource, now: u64) -> bool {
        if no >= self.snapshot || !index.is_visible(no, now) {
            return false;
        }
        let entry = index.entry(no);
        let filter = &self.filter;
        filter.kinds.as_ref().is_none_or(|kinds| kinds.contains(&entry.kind))
            && self.authors.as_ref().is_none_or(|authors| authors.contains(&entry.author))
            && filter.ids.as_ref().is_none_or(|ids| ids.iter().any(|id| id.0 == entry.id))
            && (filter.tags.is_empty()
                || records.with_record(no, |record| filter.matches_tags(record)).unwrap_or(false))
            && (!self.privacy.kinds.contains(&entry.kind)
                || records
                    .with_record(no, |record| {
                        self.privacy.allows(entry.kind, record.pubkey(), |viewer| record.has_tag(b'p', viewer))
                    })
                    .unwrap_or(false))
    }

    fn finish(&mut self) {
        self.done = true;
        if self.counted.is_some() {
            return;
        }
        self.hits.sort_unstable_by(|a, b| a.order_key().cmp(&b.order_key()));
        self.hits.truncate(self.limit);
        self.done = true;
    }

    /// The hits, newest first; complete once `step` has returned true.
    pub fn hits(&self) -> &[Hit] {
        &self.hits
    }

    pub fn into_hits(self) -> Vec<Hit> {
        self.hits
    }
}

/// Merge newest-first lists (one per shard) of one filter, keeping the first `limit`.
pub fn merge_newest_first<T: Ordered>(lists: Vec<Vec<T>>, limit: usize) -> Vec<T> {
    let mut iters: Vec<_> = lists.into_iter().map(|list| list.into_iter().peekable()).collect();
    let mut out = Vec::new();
    while out.len() < limit {
        let next = iters
            .iter_mut()
            .enumerate()
            .filter_map(|(i, iter)| iter.peek().map(|item| (item.order_key(), i)))
            .min()
            .map(|(_, i)| i);
        let Some(i) = next else { break };
        out.extend(iters[i].next());
    }
    out
}

/// The union of per-filter lists in their own order (a search's hits best first), each
/// event once.
pub fn union_in_order<T: Ordered>(per_filter: Vec<Vec<T>>) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    per_filter.into_iter().flatten().filter(|item| seen.insert(*item.id())).collect()
}

/// The answer to a whole `REQ`: the union of its filters' results, each event once, newest first.
pub fn union_filters<T: Ordered>(per_filter: Vec<Vec<T>>) -> Vec<T> {
    let mut all: Vec<T> = per_filter.into_iter().flatten().collect();
    all.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    all.dedup_by(|a, b| a.id() == b.id());
    all
}
