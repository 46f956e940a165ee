//! `GET /metrics`: every core's figures in the OpenMetrics text format (which Prometheus
//! scrapes natively), encoded by `prometheus-client`.
//!
//! Nothing here is touched on the hot path. Each core counts into its own cells
//! ([`super::stats::Stats`], each shard's `CommitStats`); a scrape gathers one
//! [`CoreMetrics`] from every core through the mesh's bounded scatter/gather (a core answers
//! from its message handler: a copy of its cells, one pass over its shards' segment lists),
//! reads the process's figures from `/proc` off the core (glommio's blocking pool), and
//! encodes the lot on the scraping core. Every family carries a `core` label (and `shard`
//! where it is per shard); dashboards sum them.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::ids::CoreId;
use super::stats::{CloseCause, HistogramSnapshot, Outcome, StatsSnapshot, Verb};
use crate::store::{RefusalCause, ShardFigures};

/// The content type of what [`render`] returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One core's figures at scrape time.
#[derive(Clone, Debug)]
pub struct CoreMetrics {
    pub core: CoreId,
    /// This core's `/stats` figures (gauges, budgets and their high-water marks).
    pub stats: StatsSnapshot,
    pub closes: Vec<(CloseCause, u64)>,
    pub messages: Vec<(Verb, u64)>,
    pub events: Vec<(Outcome, u64)>,
    pub live_deliveries: u64,
    pub rate_limited: Vec<(&'static str, u64)>,
    /// Keys (addresses, pubkeys) the core's rate limiter tracks.
    pub rate_keys: u64,
    pub policy_reloads: u64,
    pub policy_reload_failures: u64,
    pub auth_accepted: u64,
    pub auth_refused: u64,
    pub manage_calls: Vec<(&'static str, u64)>,
    /// The write plugin's processes started and events it failed to judge.
    pub plugin_starts: u64,
    pub plugin_failures: u64,
    pub received_bytes: u64,
    pub sent_bytes: u64,
    pub ingest_seconds: HistogramSnapshot,
    pub req_seconds: HistogramSnapshot,
    pub count_seconds: HistogramSnapshot,
    /// Time the core's executor spent running tasks (glommio's count; parked time excluded).
    pub busy_seconds: f64,
    /// The budgets whose limit is per core: (name, limit).
    pub budget_limits: Vec<(&'static str, u64)>,
    pub shards: Vec<ShardFigures>,
}

/// The process's figures, from `/proc/self` and the data directory's filesystem.
#[derive(Clone, Debug, Default)]
pub struct ProcessMetrics {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub threads: u64,
    pub start_time_seconds: f64,
    /// Free bytes on the data directory's filesystem (for an unprivileged user).
    pub storage_free_bytes: u64,
}

impl ProcessMetrics {
    /// Read them; a figure that cannot be read stays 0. Runs off the cores: `/proc/self/fd`
    /// of a process with 100k connections is a 100k-entry directory.
    pub fn read(data_dir: &std::path::Path) -> ProcessMetrics {
        let mut metrics = ProcessMetrics {
            open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |entries| entries.count() as u64),
            storage_free_bytes: crate::store::free_bytes(data_dir).unwrap_or(0),
            ..ProcessMetrics::default()
        };
        // SAFETY: sysconf has no preconditions.
        let (ticks, page_size) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let ticks = ticks.max(1) as f64;
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let fields: Vec<&str> =
                stat.rsplit_once(')').map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
            let field = |n: usize| fields.get(n - 3).and_then(|value| value.parse::<u64>().ok()).unwrap_or(0);
            metrics.cpu_seconds = (field(14) + field(15)) as f64 / ticks;
            metrics.threads = field(20);
            metrics.virtual_bytes = field(23);
            metrics.resident_bytes = field(24) * u64::try_from(page_size).unwrap_or(4096);
            metrics.start_time_seconds = boot_time().map_or(0.0, |boot| boot + field(22) as f64 / ticks);
        }
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            metrics.max_fds = limits
                .lines()
                .find(|line| line.starts_with("Max open files"))
                .and_then(|line| line.split_whitespace().nth(3))
                .and_then(|soft| soft.parse().ok())
                .unwrap_or(0);
        }
        metrics
    }
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|line| line.strip_prefix("btime ")).and_then(|value| value.trim().parse().ok())
}

/// Everything one scrape serves.
#[derive(Clone, Debug)]
pub struct Scrape {
    pub cores: Vec<CoreMetrics>,
    pub process: ProcessMetrics,
    pub storage_reserve_bytes: u64,
}

/// The scrape in the OpenMetrics text format: the relay's families under `ringrelay_`, the
/// process's under the `process_` names every Prometheus client library uses.
pub fn render(scrape: Scrape) -> String {
    let Scrape { cores, process, storage_reserve_bytes } = scrape;
    let mut registry = Registry::default();
    registry.sub_registry_with_prefix("ringrelay").register_collector(Box::new(RelayCollector {
        cores,
        storage_free_bytes: process.storage_free_bytes,
        storage_reserve_bytes,
    }));
    registry.sub_registry_with_prefix("process").register_collector(Box::new(ProcessCollector(process)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

type Labels = Vec<(&'static str, String)>;

fn core_label(core: &CoreMetrics) -> Labels {
    vec![("core", core.core.to_string())]
}

/// A core's label and one more.
fn core_with(core: &CoreMetrics, key: &'static str, value: &str) -> Labels {
    vec![("core", core.core.to_string()), (key, value.to_owned())]
}

fn shard_labels(core: &CoreMetrics, shard: &ShardFigures) -> Labels {
    vec![("core", core.core.to_string()), ("shard", shard.shard.to_string())]
}

/// One family: its descriptor, then a sample per label set.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let samples: Vec<(Labels, M)> = samples.into_iter().collect();
    let Some((_, first)) = samples.first() else { return Ok(()) };
    let mut metric = encoder.encode_descriptor(name, help, unit.as_ref(), first.metric_type())?;
    for (labels, value) in &samples {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    family(encoder, name, help, unit, samples.into_iter().map(|(labels, value)| (labels, ConstCounter::new(value))))
}

fn gauges<N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    samples: impl IntoIterator<Item = (Labels, N)>,
) -> Result<(), std::fmt::Error> {
    family(encoder, name, help, unit, samples.into_iter().map(|(labels, value)| (labels, ConstGauge::new(value))))
}

/// A histogram encoded straight from its snapshot (prometheus-client's own histogram type
/// keeps atomics; ours are per-core cells).
struct SnapshotHistogram<'a>(&'a HistogramSnapshot);

impl EncodeMetric for SnapshotHistogram<'_> {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.0;
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            snapshot.sum,
            snapshot.count(),
            &snapshot.buckets(),
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn histograms<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    samples: impl IntoIterator<Item = (Labels, &'a HistogramSnapshot)>,
) -> Result<(), std::fmt::Error> {
    family(encoder, name, help, unit, samples.into_iter().map(|(labels, value)| (labels, SnapshotHistogram(value))))
}

/// The relay's families.
#[derive(Debug)]
struct RelayCollector {
    cores: Vec<CoreMetrics>,
    storage_free_bytes: u64,
    storage_reserve_bytes: u64,
}

impl Collector for RelayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        let cores = &self.cores;
        let per_core = |value: fn(&CoreMetrics) -> u64| cores.iter().map(move |core| (core_label(core), value(core)));

        gauges(
            e,
            "build_info",
            "The running build (value 1).",
            None,
            [(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1_i64)],
        )?;
        gauges(e, "cores", "Cores (executors) serving.", None, [(Vec::new(), cores.len() as u64)])?;

        // Connections.
        gauges(e, "connections", "Open WebSocket connections.", None, per_core(|c| c.stats.connections))?;
        counters(
            e,
            "connections_accepted",
            "WebSocket connections accepted.",
            None,
            per_core(|c| c.stats.connections_accepted),
        )?;
        counters(
            e,
            "connections_closed",
            "Connections ended, by cause (address_limit, rate_limited: refused at the upgrade; blocked: a blocked address, refused or closed).",
            None,
            cores.iter().flat_map(|core| {
                core.closes.iter().map(move |(cause, count)| (core_with(core, "cause", cause.label()), *count))
            }),
        )?;
        counters(
            e,
            "slow_consumer_closes",
            "Connections closed for not reading what they asked for or subscribed to.",
            None,
            per_core(|c| c.stats.slow_consumer_closes),
        )?;

        // Traffic.
        counters(
            e,
            "client_messages",
            "Client messages received, by verb (invalid: not a valid client message).",
            None,
            cores.iter().flat_map(|core| {
                core.messages.iter().map(move |(verb, count)| (core_with(core, "verb", verb.label()), *count))
            }),
        )?;
        counters(
            e,
            "events",
            "EVENTs answered, by outcome (the OK's class) and a reason from a fixed set.",
            None,
            cores.iter().flat_map(|core| {
                core.events.iter().map(move |(outcome, count)| {
                    let mut labels = core_label(core);
                    labels.push(("outcome", outcome.class.label().to_owned()));
                    labels.push(("reason", outcome.reason.to_owned()));
                    (labels, *count)
                })
            }),
        )?;
        gauges(e, "subscriptions", "Open subscriptions.", None, per_core(|c| c.stats.subscriptions))?;
        counters(e, "live_deliveries", "Live events queued to subscriptions.", None, per_core(|c| c.live_deliveries))?;
        counters(
            e,
            "rate_limited",
            "Requests refused by the rate limits, by what (event, query, connection).",
            None,
            cores.iter().flat_map(|core| {
                core.rate_limited.iter().map(move |(what, count)| (core_with(core, "what", what), *count))
            }),
        )?;
        counters(
            e,
            "policy_reloads",
            "Policy list reloads (SIGHUP) put in force (counted on core 0).",
            None,
            per_core(|c| c.policy_reloads),
        )?;
        counters(
            e,
            "policy_reload_failures",
            "Policy list reloads refused: the file did not parse.",
            None,
            per_core(|c| c.policy_reload_failures),
        )?;
        gauges(
            e,
            "rate_limit_keys",
            "Addresses and pubkeys the rate limiter tracks (at most rate_limits.tracked_max per core).",
            None,
            per_core(|c| c.rate_keys),
        )?;
        counters(
            e,
            "auth",
            "AUTH messages (NIP-42) answered, by result.",
            None,
            cores.iter().flat_map(|core| {
                [("accepted", core.auth_accepted), ("refused", core.auth_refused)]
                    .map(|(result, count)| (core_with(core, "result", result), count))
            }),
        )?;
        counters(
            e,
            "manage_calls",
            "Management API calls (NIP-86), by result.",
            None,
            cores.iter().flat_map(|core| {
                core.manage_calls.iter().map(move |(result, count)| (core_with(core, "result", result), *count))
            }),
        )?;
        counters(
            e,
            "plugin_starts",
            "Write plugin processes started (the first, and each restart after a timeout, a crash or a change).",
            None,
            per_core(|c| c.plugin_starts),
        )?;
        counters(
            e,
            "plugin_failures",
            "Events the write plugin failed to judge (timed out, died, answered nonsense), given write_plugin.on_failure's decision.",
            None,
            per_core(|c| c.plugin_failures),
        )?;
        counters(
            e,
            "received",
            "WebSocket message payload bytes received from clients.",
            Some(Unit::Bytes),
            per_core(|c| c.received_bytes),
        )?;
        counters(
            e,
            "sent",
            "WebSocket message payload bytes sent to clients.",
            Some(Unit::Bytes),
            per_core(|c| c.sent_bytes),
        )?;
        counters(
            e,
            "queries_cancelled",
            "Queries stopped before they finished (replaced, closed, or their connection gone).",
            None,
            per_core(|c| c.stats.queries_cancelled),
        )?;
        counters(
            e,
            "counts_from_index",
            "COUNTs answered from the indexes' counts, without a scan.",
            None,
            per_core(|c| c.stats.counts_from_index),
        )?;
        counters(e, "counts_scanned", "COUNTs answered by a scan.", None, per_core(|c| c.stats.counts_scanned))?;
        counters(
            e,
            "long_scans",
            "Scans that ran long enough to move to the long scans' task queue.",
            None,
            per_core(|c| c.stats.long_scans),
        )?;

        // Latency.
        histograms(
            e,
            "ingest_duration",
            "From an EVENT's arrival to its OK being queued.",
            Some(Unit::Seconds),
            cores.iter().map(|c| (core_label(c), &c.ingest_seconds)),
        )?;
        histograms(
            e,
            "req_duration",
            "From a REQ's arrival to its EOSE being queued.",
            Some(Unit::Seconds),
            cores.iter().map(|c| (core_label(c), &c.req_seconds)),
        )?;
        histograms(
            e,
            "count_duration",
            "From a COUNT's arrival to its answer being queued.",
            Some(Unit::Seconds),
            cores.iter().map(|c| (core_label(c), &c.count_seconds)),
        )?;
        family(
            e,
            "core_busy",
            "Time each core's executor spent running tasks (not parked).",
            Some(Unit::Seconds),
            cores.iter().map(|c| (core_label(c), ConstCounter::new(c.busy_seconds))),
        )?;

        // Budgets: what each uses now, its high-water mark, and its limit where it has one per core.
        let budgets = |core: &CoreMetrics| -> [(&'static str, u64, u64); 7] {
            let s = &core.stats;
            [
                ("connections", s.connections, s.connections_max_seen),
                ("outbound_bytes", s.outbound_bytes, s.outbound_bytes_max_seen),
                ("queries", s.queries, s.queries_max_seen),
                ("queries_waiting", s.queries_waiting, s.queries_waiting),
                ("remote_scans", s.remote_scans, s.remote_scans_max_seen),
                ("mesh_backlog", s.mesh_backlog, s.mesh_backlog_max_seen),
                ("pending_live", s.pending_live, s.pending_live_max_seen),
            ]
        };
        let budget_samples = |pick: fn(&(&'static str, u64, u64)) -> u64| {
            cores
                .iter()
                .flat_map(move |core| {
                    budgets(core).into_iter().map(move |budget| (core_with(core, "budget", budget.0), pick(&budget)))
                })
                .collect::<Vec<_>>()
        };
        gauges(
            e,
            "budget_used",
            "Each per-core budget's current use (bytes for outbound_bytes, else a count).",
            None,
            budget_samples(|b| b.1),
        )?;
        gauges(
            e,
            "budget_high_water",
            "Each per-core budget's highest use since start.",
            None,
            budget_samples(|b| b.2),
        )?;
        gauges(
            e,
            "budget_limit",
            "Each per-core budget's limit, where it has one.",
            None,
            cores.iter().flat_map(|core| {
                core.budget_limits.iter().map(move |(name, limit)| (core_with(core, "budget", name), *limit))
            }),
        )?;

        // Storage, per shard.
        let shards = || cores.iter().flat_map(|core| core.shards.iter().map(move |shard| (core, shard)));
        gauges(
            e,
            "shard_segments",
            "Segment files per shard.",
            None,
            shards().map(|(c, s)| (shard_labels(c, s), s.segments)),
        )?;
        gauges(
            e,
            "shard_size",
            "Bytes in each shard's segment files.",
            Some(Unit::Bytes),
            shards().map(|(c, s)| (shard_labels(c, s), s.bytes)),
        )?;
        gauges(
            e,
            "shard_dead",
            "Bytes of dead records (replaced, deleted, expired) compaction would drop, estimated per segment.",
            Some(Unit::Bytes),
            shards().map(|(c, s)| (shard_labels(c, s), s.dead_bytes)),
        )?;
        gauges(
            e,
            "shard_records",
            "Records indexed per shard, dead ones included.",
            None,
            shards().map(|(c, s)| (shard_labels(c, s), s.records)),
        )?;
        gauges(
            e,
            "shard_live_records",
            "Records per shard still served.",
            None,
            shards().map(|(c, s)| (shard_labels(c, s), s.live_records)),
        )?;
        gauges(
            e,
            "index_memory",
            "Heap bytes of each shard's in-memory indexes.",
            Some(Unit::Bytes),
            shards().map(|(c, s)| (shard_labels(c, s), s.index_bytes)),
        )?;
        gauges(
            e,
            "shard_writes_refused",
            "1 while a shard refuses new events, labelled with why (reserve: free space below storage_reserve_bytes; full: ENOSPC; io_error: a failed write); 0 otherwise.",
            None,
            shards().flat_map(|(c, s)| {
                RefusalCause::ALL.iter().map(move |cause| {
                    let mut labels = shard_labels(c, s);
                    labels.push(("cause", cause.label().to_owned()));
                    (labels, u64::from(s.refusal == Some(*cause)))
                })
            }),
        )?;
        histograms(
            e,
            "fsync_duration",
            "Each segment file's fdatasync in a group commit.",
            Some(Unit::Seconds),
            shards().map(|(c, s)| (shard_labels(c, s), &s.fsync_seconds)),
        )?;
        histograms(
            e,
            "commit_batch_events",
            "Events made durable per group commit.",
            None,
            shards().map(|(c, s)| (shard_labels(c, s), &s.batch_events)),
        )?;
        counters(
            e,
            "commit_written",
            "Bytes written by group commits.",
            Some(Unit::Bytes),
            shards().map(|(c, s)| (shard_labels(c, s), s.written_bytes)),
        )?;
        counters(
            e,
            "commit_failures",
            "Group commits that failed (the shard then refuses writes until a retry succeeds).",
            None,
            shards().map(|(c, s)| (shard_labels(c, s), s.commit_failures)),
        )?;
        gauges(
            e,
            "storage_free",
            "Free bytes on the data directory's filesystem.",
            Some(Unit::Bytes),
            [(Vec::new(), self.storage_free_bytes)],
        )?;
        gauges(
            e,
            "storage_reserve",
            "The free-space reserve (storage_reserve_bytes) below which events are refused.",
            Some(Unit::Bytes),
            [(Vec::new(), self.storage_reserve_bytes)],
        )?;

        Ok(())
    }
}

/// The process's families.
#[derive(Debug)]
struct ProcessCollector(ProcessMetrics);

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = &self.0;
        let e = &mut encoder;
        family(
            e,
            "cpu",
            "Total user and system CPU time spent in seconds.",
            Some(Unit::Seconds),
            [(Vec::new(), ConstCounter::new(p.cpu_seconds))],
        )?;
        gauges(
            e,
            "resident_memory",
            "Resident memory size in bytes.",
            Some(Unit::Bytes),
            [(Vec::new(), p.resident_bytes)],
        )?;
        gauges(
            e,
            "virtual_memory",
            "Virtual memory size in bytes.",
            Some(Unit::Bytes),
            [(Vec::new(), p.virtual_bytes)],
        )?;
        gauges(e, "open_fds", "Number of open file descriptors.", None, [(Vec::new(), p.open_fds)])?;
        gauges(e, "max_fds", "Maximum number of open file descriptors.", None, [(Vec::new(), p.max_fds)])?;
        gauges(e, "threads", "Number of OS threads in the process.", None, [(Vec::new(), p.threads)])?;
        gauges(
            e,
            "start_time",
            "Start time of the process since unix epoch in seconds.",
            Some(Unit::Seconds),
            [(Vec::new(), p.start_time_seconds)],
        )?;
        Ok(())
    }
}
