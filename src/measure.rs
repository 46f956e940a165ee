//! Counts kept by one thread: plain cells, no atomics. Each core (and each shard, on its
//! core) owns its own; they are read at scrape time by the core that owns them and summed
//! across cores by the reader (`/stats` and `/metrics`).

use std::cell::Cell;

/// A count that only goes up.
#[derive(Default, Debug)]
pub struct Counter(Cell<u64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, amount: u64) {
        self.0.set(self.0.get() + amount);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A current value and the highest it has been.
#[derive(Default, Debug)]
pub struct Gauge {
    now: Cell<u64>,
    high: Cell<u64>,
}

impl Gauge {
    pub fn add(&self, amount: u64) {
        let now = self.now.get() + amount;
        self.now.set(now);
        self.high.set(self.high.get().max(now));
    }

    pub fn sub(&self, amount: u64) {
        debug_assert!(self.now.get() >= amount, "gauge below zero");
        self.now.set(self.now.get().saturating_sub(amount));
    }

    pub fn get(&self) -> u64 {
        self.now.get()
    }

    pub fn high(&self) -> u64 {
        self.high.get()
    }
}

/// Upper bounds, in seconds, of the latency histograms: 50 µs to 10 s, about three per
/// decade (a group commit's fsync is ~0.1–10 ms on SSDs; a REQ over a large store can take
/// seconds).
pub const LATENCY_BOUNDS_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the commit batch histogram, in events per group commit.
pub const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];

/// Observations counted into fixed buckets (`bounds`, each an inclusive upper bound, plus
/// one for everything above), with their sum: what a Prometheus histogram exposes.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Box<[Cell<u64>]>,
    sum: Cell<f64>,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]), "bounds must increase");
        Histogram { bounds, counts: (0..=bounds.len()).map(|_| Cell::new(0)).collect(), sum: Cell::new(0.0) }
    }

    pub fn latency() -> Histogram {
        Histogram::new(LATENCY_BOUNDS_SECONDS)
    }

    pub fn observe(&self, value: f64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        let cell = &self.counts[bucket];
        cell.set(cell.get() + 1);
        self.sum.set(self.sum.get() + value);
    }

    /// Observe the time since `start`, in seconds.
    pub fn observe_since(&self, start: std::time::Instant) {
        self.observe(start.elapsed().as_secs_f64());
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self.counts.iter().map(Cell::get).collect(),
            sum: self.sum.get(),
        }
    }
}

/// A histogram's figures at one moment: per-bucket counts (not cumulative), the last one
/// above every bound.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Add another histogram of the same bounds.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        debug_assert_eq!(self.bounds, other.bounds, "merging histograms of different bounds");
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum += other.sum;
    }

    /// `(upper bound, count)` per bucket, the last bound infinite: prometheus-client's form.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds.iter().copied().chain([f64::INFINITY]).zip(self.counts.iter().copied()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_lands_in_the_first_bucket_whose_bound_holds_it() {
        let histogram = Histogram::new(&[1.0, 2.0, 4.0]);
        for value in [0.5, 1.0, 1.5, 4.0, 4.5, 100.0] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.counts, vec![2, 1, 1, 2]);
        assert_eq!(snapshot.count(), 6);
        assert!((snapshot.sum - 111.5).abs() < 1e-9);
        assert_eq!(snapshot.buckets().last(), Some(&(f64::INFINITY, 2)));
    }

    #[test]
    fn merged_histograms_add_bucket_by_bucket() {
        let (one, two) = (Histogram::new(&[1.0]), Histogram::new(&[1.0]));
        one.observe(0.5);
        two.observe(3.0);
        two.observe(0.1);
        let mut total = one.snapshot();
        total.merge(&two.snapshot());
        assert_eq!(total.counts, vec![2, 1]);
        assert!((total.sum - 3.6).abs() < 1e-9);
    }

    #[test]
    fn a_gauge_keeps_its_high_water_mark() {
        let gauge = Gauge::default();
        gauge.add(5);
        gauge.sub(3);
        gauge.add(1);
        assert_eq!((gauge.get(), gauge.high()), (3, 5));
    }
}
