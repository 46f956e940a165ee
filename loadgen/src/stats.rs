//! What a run measured: latency histograms (HdrHistogram, µs, 3 significant digits),
//! operation counts and errors by kind, per generator thread, merged by the main thread.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// EVENT sent → OK received.
    Publish,
    /// Fan-out EVENT sent → EVENT delivered, one sample per delivery.
    Fanout,
    /// REQ sent → EOSE received.
    Query,
    /// TCP connect started → WebSocket upgrade done.
    Connect,
    /// The generator's own lateness: actual send time − scheduled send time.
    SendLag,
}

pub const METRICS: [Metric; 5] = [Metric::Publish, Metric::Fanout, Metric::Query, Metric::Connect, Metric::SendLag];

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Publish => "publish",
            Metric::Fanout => "fanout",
            Metric::Query => "query",
            Metric::Connect => "connect",
            Metric::SendLag => "send_lag",
        }
    }
}

/// Largest latency recorded, in µs (10 minutes); larger values are clamped to it.
const LATENCY_MAX_US: u64 = 600_000_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

/// One thread's measurements over some interval.
#[derive(Clone)]
pub struct Sample {
    pub latency: [Histogram<u64>; 5],
    /// Operations due in the measured phase, per scenario metric (index as `latency`).
    pub offered: [u64; 4],
    /// Of those, completed (OK true, delivered, EOSE, connected) before the measured phase ended.
    pub completed: [u64; 4],
    /// Errors by kind (`publish.rejected.rate-limited`, `fanout.missing`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Other counts (`query.events`, `fanout.delivered`, `publish.replies`, ...), whole run.
    pub counts: BTreeMap<&'static str, u64>,
}

impl Default for Sample {
    fn default() -> Self {
        Sample {
            latency: std::array::from_fn(|_| histogram()),
            offered: [0; 4],
            completed: [0; 4],
            errors: BTreeMap::new(),
            counts: BTreeMap::new(),
        }
    }
}

impl Sample {
    /// A count so far (0 when never counted).
    pub fn count_of(&self, key: &str) -> u64 {
        self.counts.get(key).copied().unwrap_or(0)
    }

    pub fn record(&mut self, metric: Metric, micros: u64) {
        self.latency[metric as usize].saturating_record(micros.clamp(1, LATENCY_MAX_US));
    }

    /// An operation due (at `due_ns` after t0) in the measured phase completed at `now_ns`.
    /// Its latency is recorded whenever it arrives; it counts towards the achieved rate only
    /// if it arrived before the measured phase ended at `end_ns`, so that a backlog drained
    /// afterwards does not pass for throughput.
    pub fn complete(&mut self, metric: Metric, due_ns: u64, now_ns: u64, end_ns: u64) {
        self.record(metric, now_ns.saturating_sub(due_ns) / 1_000);
        if now_ns < end_ns {
            self.completed[metric as usize] += 1;
        }
    }

    pub fn error(&mut self, kind: &str) {
        match self.errors.get_mut(kind) {
            Some(count) => *count += 1,
            None => {
                self.errors.insert(kind.to_owned(), 1);
            }
        }
    }

    pub fn count(&mut self, kind: &'static str, by: u64) {
        *self.counts.entry(kind).or_default() += by;
    }

    pub fn merge(&mut self, other: &Sample) {
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            mine.add(theirs).expect("histograms share bounds");
        }
        for i in 0..4 {
            self.offered[i] += other.offered[i];
            self.completed[i] += other.completed[i];
        }
        for (kind, count) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += count;
        }
        for (kind, count) in &other.counts {
            *self.counts.entry(kind).or_default() += count;
        }
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Latency summary in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    pub samples: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1e3;
        Latency {
            samples: histogram.len(),
            mean_ms: histogram.mean() / 1e3,
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }

    /// A statistic by its SLO name (`p50`, `p90`, `p99`, `p99.9`, `max`, `mean`), in ms.
    pub fn stat(&self, name: &str) -> Option<f64> {
        Some(match name {
            "p50" => self.p50_ms,
            "p90" => self.p90_ms,
            "p99" => self.p99_ms,
            "p99.9" | "p999" => self.p999_ms,
            "max" => self.max_ms,
            "mean" => self.mean_ms,
            _ => return None,
        })
    }
}

/// One scenario's results.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    pub name: &'static str,
    /// What the plan asked for, per second (events, deliveries, REQs or connections).
    pub offered_rate: f64,
    /// What completed, per second of the measured phase.
    pub achieved_rate: f64,
    pub offered: u64,
    pub completed: u64,
    pub latency: Latency,
    /// Scenario-specific counts (deliveries, events per query, ...).
    pub counts: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
}

/// The generator's view of itself.
#[derive(Clone, Debug, Serialize)]
pub struct GeneratorReport {
    pub threads: usize,
    /// CPU time / wall time of each generator thread during the measured phase.
    pub thread_busy: Vec<f64>,
    /// How late sends left compared with their schedule.
    pub send_lag: Latency,
    pub saturated: bool,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub relay: String,
    pub seed: u64,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub scenarios: Vec<ScenarioReport>,
    pub errors: BTreeMap<String, u64>,
    /// Errors over every operation of the measured phase.
    pub error_ratio: f64,
    pub generator: GeneratorReport,
    /// With `--relay-pid`: the relay's CPU use over the measured phase.
    pub relay_cpu: Option<RelayCpu>,
    /// What the hostile clients of an `[abuse]` section did (`abuse.*` counts), whole run.
    pub abuse: BTreeMap<String, u64>,
    /// NOTICEs received: human-readable remarks, not failed operations (a refusal shows up
    /// as a missing OK, CLOSED or EOSE), but worth seeing.
    pub notices: u64,
}

/// A relay process's CPU use, when it runs on the generator's host.
#[derive(Clone, Debug, Serialize)]
pub struct RelayCpu {
    pub pid: u32,
    /// User + system CPU seconds over the measured phase.
    pub cpu_seconds: f64,
    /// CPU seconds per wall second: how many cores it kept busy.
    pub cores_busy: f64,
}

impl Report {
    pub fn scenario(&self, name: &str) -> Option<&ScenarioReport> {
        self.scenarios.iter().find(|s| s.name == name)
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "loadgen: {} — {:.0}s measured after {:.0}s warm-up, seed {}",
            self.relay, self.duration_s, self.warmup_s, self.seed
        );
        let _ = writeln!(
            out,
            "{:<9} {:>11} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "scenario", "offered/s", "achieved/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors"
        );
        for s in &self.scenarios {
            let l = &s.latency;
            let _ = writeln!(
                out,
                "{:<9} {:>11.1} {:>11.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9}",
                s.name,
                s.offered_rate,
                s.achieved_rate,
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.p999_ms,
                l.max_ms,
                s.errors.values().sum::<u64>()
            );
            let counts: Vec<String> = s.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
            if !counts.is_empty() {
                let _ = writeln!(out, "          {}", counts.join(", "));
            }
        }
        if !self.abuse.is_empty() {
            let abuse: Vec<String> = self.abuse.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(out, "abuse (not measured): {}", abuse.join(", "));
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "errors: none");
        } else {
            let errors: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(out, "errors: {:.4}% — {}", self.error_ratio * 100.0, errors.join(", "));
        }
        if self.notices > 0 {
            let _ = writeln!(out, "notices from the relay: {}", self.notices);
        }
        let g = &self.generator;
        let busy: Vec<String> = g.thread_busy.iter().map(|b| format!("{:.0}%", b * 100.0)).collect();
        let _ = writeln!(
            out,
            "generator: {} threads, busy {}, send lag p99 {:.3} ms, max {:.3} ms",
            g.threads,
            busy.join(" "),
            g.send_lag.p99_ms,
            g.send_lag.max_ms
        );
        if let Some(relay) = &self.relay_cpu {
            let per_cpu: Vec<String> = self
                .scenarios
                .iter()
                .map(|s| format!("{} {:.0}", s.name, s.completed as f64 / relay.cpu_seconds.max(1e-9)))
                .collect();
            let _ = writeln!(
                out,
                "relay (pid {}): {:.2} CPU-seconds, {:.2} cores busy; completed per relay CPU-second: {}",
                relay.pid,
                relay.cpu_seconds,
                relay.cores_busy,
                per_cpu.join(", ")
            );
        }
        for warning in &g.warnings {
            let _ = writeln!(out, "WARNING: {warning}");
        }
        out
    }
}
