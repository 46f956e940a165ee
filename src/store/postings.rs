//! Posting lists: one index key's event numbers in (created_at, number) order, kept cheap
//! to extend whatever order events arrive in.

use super::index::EventNo;

/// Event numbers in (created_at, number) order, oldest first, held as up to three sorted
/// runs: `main`, which in-order arrivals extend at its end, and two side runs for arrivals
/// older than the newest event already posted. An old-dated arrival is placed in the small
/// run; the small run is merged into the large one when it outgrows ∛n, and the large run
/// into `main` when it outgrows n^⅔ (n = `main`'s length). Each step moves O(∛n) postings
/// per arrival, amortized, so old-dated events (imports, sync, a client replaying history)
/// cost ~100 moves at a million postings where one vector would cost a million. Most lists
/// never see one, so the side runs are allocated only when needed.
#[derive(Clone, Debug, Default)]
pub struct Postings {
    main: Vec<EventNo>,
    side: Option<Box<SideRuns>>,
}

/// A list's sorted runs, walked together by a scan.
pub type Runs<'a> = [&'a [EventNo]; 3];

/// The runs of an empty list.
pub const NO_RUNS: Runs<'static> = [&[], &[], &[]];

#[derive(Clone, Debug, Default)]
struct SideRuns {
    small: KeyedRun,
    large: KeyedRun,
}

/// A side run, with each event's `created_at` beside it so that placing an arrival or
/// merging two side runs reads no entries.
#[derive(Clone, Debug, Default)]
struct KeyedRun {
    nos: Vec<EventNo>,
    created_at: Vec<u64>,
}

impl KeyedRun {
    fn key(&self, at: usize) -> (u64, EventNo) {
        (self.created_at[at], self.nos[at])
    }

    fn insert(&mut self, key: (u64, EventNo)) {
        let (mut position, mut above) = (0, self.nos.len());
        while position < above {
            let middle = (position + above) / 2;
            if self.key(middle) < key {
                position = middle + 1;
            } else {
                above = middle;
            }
        }
        self.nos.insert(position, key.1);
        self.created_at.insert(position, key.0);
    }

    /// Merge `other` into this run, in place from the back, and empty it.
    fn absorb(&mut self, other: &mut KeyedRun) {
        let (mut read, mut other_read) = (self.nos.len(), other.nos.len());
        let total = read + other_read;
        self.nos.resize(total, 0);
        self.created_at.resize(total, 0);
        for write in (0..total).rev() {
            let take_other = other_read > 0 && (read == 0 || other.key(other_read - 1) > self.key(read - 1));
            let (no, created_at) = if take_other {
                other_read -= 1;
                (other.nos[other_read], other.created_at[other_read])
            } else {
                read -= 1;
                (self.nos[read], self.created_at[read])
            };
            self.nos[write] = no;
            self.created_at[write] = created_at;
            if other_read == 0 {
                break; // what is left of this run is already in place
            }
        }
        other.nos.clear();
        other.created_at.clear();
    }
}

/// The small side run is merged into the large one once it holds more than ∛(main) or this,
/// whichever is larger; the large one into `main` past ∛(main)² or the second. Side entries
/// cost 12 bytes against 4 in `main`, so short lists (an author's, a tag's) keep theirs short.
const SIDE_RUN_COUNT_MIN: (usize, usize) = (16, 256);

impl Postings {
    pub(super) fn single(no: EventNo) -> Postings {
        Postings { main: vec![no], side: None }
    }

    /// The sorted runs; a scan walks them together and merges them.
    pub fn runs(&self) -> Runs<'_> {
        match &self.side {
            None => [&self.main, &[], &[]],
            Some(side) => [&self.main, &side.large.nos, &side.small.nos],
        }
    }
    pub fn len(&self) -> usize {
        self.main.len() + self.side_len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn side_len(&self) -> usize {
        self.side.as_ref().map_or(0, |side| side.small.nos.len() + side.large.nos.len())
    }

    /// The bounds of the small and the large run for a list whose `main` holds `main_len`.
    fn side_run_max(main_len: usize) -> (usize, usize) {
        let cube_root = (main_len as f64).cbrt() as usize;
        (SIDE_RUN_COUNT_MIN.0.max(cube_root), SIDE_RUN_COUNT_MIN.1.max(cube_root * cube_root))
    }

    /// Insert keeping (created_at, number) order. An arrival newer than every posted event
    /// (the common case) is pushed; an older one goes into the side runs.
    pub(super) fn insert(&mut self, no: EventNo, bulk: bool, key: impl Fn(EventNo) -> (u64, EventNo)) {
        let new_key = key(no);
        if bulk || self.main.last().is_none_or(|&last| key(last) < new_key) {
            self.main.push(no);
            return;
        }
        let (small_max, large_max) = Postings::side_run_max(self.main.len());
        let side = self.side.get_or_insert_with(Box::default);
        side.small.insert(new_key);
        if side.small.nos.len() > small_max {
            let SideRuns { small, large } = &mut **side;
            large.absorb(small);
            if large.nos.len() > large_max {
                self.merge_side(key);
            }
        }
    }

    /// Merge the side runs into `main` in place, from the back. Each side event's place is
    /// found by galloping back from the end of what is left of `main`: the key of a posting
    /// is a lookup into the entries, and old-dated arrivals are mostly recent, so a place
    /// costs O(log distance) lookups near the hot end of `main`. `main` moves in whole runs.
    fn merge_side(&mut self, key: impl Fn(EventNo) -> (u64, EventNo)) {
        let Some(mut side) = self.side.take() else { return };
        let SideRuns { small, large } = &mut *side;
        large.absorb(small);
        let mut read_end = self.main.len();
        self.main.resize(read_end + large.nos.len(), 0);
        let mut write_end = self.main.len();
        for (&no, &created_at) in large.nos.iter().zip(&large.created_at).rev() {
            let place = gallop_back(&self.main[..read_end], (created_at, no), &key);
            let count = read_end - place;
            self.main.copy_within(place..read_end, write_end - count);
            write_end -= count + 1;
            self.main[write_end] = no;
            read_end = place;
        }
    }

    /// Sort after a bulk load (everything went to `main` unsorted).
    pub(super) fn sort(&mut self, key: impl Fn(&EventNo) -> (u64, EventNo)) {
        if let Some(side) = self.side.take() {
            self.main.extend(side.large.nos);
            self.main.extend(side.small.nos);
        }
        self.main.sort_unstable_by_key(key);
    }

    /// Heap bytes held.
    pub(super) fn heap_size(&self) -> usize {
        let keyed = |run: &KeyedRun| run.nos.capacity() * 4 + run.created_at.capacity() * 8;
        self.main.capacity() * 4
            + self
                .side
                .as_ref()
                .map_or(0, |side| std::mem::size_of::<SideRuns>() + keyed(&side.small) + keyed(&side.large))
    }
}

/// The number of leading postings of the sorted `run` whose key is below `new_key`,
/// searched from the end: exponential steps back, then a binary search in the last step.
fn gallop_back(run: &[EventNo], new_key: (u64, EventNo), key: impl Fn(EventNo) -> (u64, EventNo)) -> usize {
    let mut above = run.len(); // run[above..] are all above new_key
    let mut step = 1;
    while above > 0 {
        let probe = above.saturating_sub(step);
        if key(run[probe]) < new_key {
            return probe + 1 + run[probe + 1..above].partition_point(|&other| key(other) < new_key);
        }
        above = probe;
        step *= 2;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Out-of-order arrivals land in the side runs, which are merged into each other and into
    /// the main one; at every point the runs hold each posted event once, each in
    /// (created_at, number) order, and the side runs stay within their bounds.
    #[test]
    fn postings_stay_ordered_through_side_runs_and_merges() {
        let mut created_at = Vec::new();
        let mut postings = Postings::default();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let (mut small_merges, mut main_merges) = (0, 0);
        for no in 0..60_000u32 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Mostly in order, a third of the time up to a day old.
            let t = 1_000_000 + u64::from(no) - if state.is_multiple_of(3) { state % 86_400 } else { 0 };
            created_at.push(t);
            let (small_before, side_before) = (postings.runs()[2].len(), postings.side_len());
            postings.insert(no, false, |n| (created_at[n as usize], n));
            small_merges += usize::from(small_before > 0 && postings.runs()[2].is_empty());
            main_merges += usize::from(side_before > 0 && postings.side_len() == 0);
            let (small_max, large_max) = Postings::side_run_max(postings.main.len());
            assert!(postings.runs()[2].len() <= small_max);
            assert!(postings.runs()[1].len() <= large_max);
            if no % 997 == 0 || no == 59_999 {
                let key = |n: &EventNo| (created_at[*n as usize], *n);
                for run in postings.runs() {
                    assert!(run.windows(2).all(|w| key(&w[0]) < key(&w[1])));
                }
                let mut all: Vec<EventNo> = postings.runs().concat();
                all.sort_unstable();
                assert_eq!(all, (0..=no).collect::<Vec<_>>());
            }
        }
        assert!(small_merges > 100, "the small run was merged {small_merges} times");
        assert!(main_merges > 2, "the side runs were merged into main {main_merges} times");
        let mut merged = postings.clone();
        merged.merge_side(|n| (created_at[n as usize], n));
        let key = |n: &EventNo| (created_at[*n as usize], *n);
        assert_eq!(merged.main.len(), 60_000);
        assert!(merged.main.windows(2).all(|w| key(&w[0]) < key(&w[1])));
    }

    #[test]
    fn absorbing_a_side_run_keeps_order() {
        type Keys = &'static [(u64, EventNo)];
        let run = |keys: Keys| KeyedRun {
            nos: keys.iter().map(|k| k.1).collect(),
            created_at: keys.iter().map(|k| k.0).collect(),
        };
        let cases: [(Keys, Keys); 5] = [
            (&[], &[]),
            (&[(5, 1)], &[]),
            (&[], &[(5, 1)]),
            (&[(1, 1), (3, 3), (5, 5)], &[(2, 2), (4, 4), (6, 6)]),
            (&[(4, 4), (5, 5)], &[(1, 1), (2, 2), (3, 3)]),
        ];
        for (into, from) in cases {
            let (mut into_run, mut from_run) = (run(into), run(from));
            into_run.absorb(&mut from_run);
            let mut expected: Vec<(u64, EventNo)> = into.iter().chain(from).copied().collect();
            expected.sort_unstable();
            assert_eq!(into_run.nos, expected.iter().map(|k| k.1).collect::<Vec<_>>(), "{into:?} + {from:?}");
            assert_eq!(into_run.created_at, expected.iter().map(|k| k.0).collect::<Vec<_>>());
            assert!(from_run.nos.is_empty() && from_run.created_at.is_empty());
        }
    }

    #[test]
    fn gallop_back_finds_the_partition_point() {
        let run: Vec<EventNo> = (0..1000).map(|n| n * 2).collect();
        let key = |n: EventNo| (u64::from(n), n);
        for probe in [0u32, 1, 2, 3, 998, 999, 1000, 1997, 1998, 1999, 5000] {
            let expected = run.partition_point(|&n| key(n) < key(probe));
            assert_eq!(gallop_back(&run, key(probe), key), expected, "probe {probe}");
        }
        assert_eq!(gallop_back(&[], (5, 5), key), 0);
    }
}
