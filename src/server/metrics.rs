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
use super::peers::PeerFigures;
use super::stats::{FigureKind, HistogramSnapshot, Outcome, StatsSnapshot, HISTOGRAMS, LABELLED};
use crate::store::{RefusalCause, ShardFigures};

/// The content type of what [`render`] returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One core's figures at scrape time (what each is, and its family, is declared once in
/// `stats`'s `figures!` table).
#[derive(Clone, Debug)]
pub struct CoreMetrics {
    pub core: CoreId,
    /// The plain figures, one value each (`StatsSnapshot::FIGURES`, `BUDGETS`).
    pub stats: StatsSnapshot,
    /// The labelled counters, as `stats::LABELLED` lists them.
    pub labelled: Vec<Vec<(&'static str, u64)>>,
    pub events: Vec<(Outcome, u64)>,
    /// The latency histograms, as `stats::HISTOGRAMS` lists them.
    pub histograms: Vec<HistogramSnapshot>,
    /// Time the core's executor spent running tasks (glommio's count; parked time excluded).
    pub busy_seconds: f64,
    /// The budgets whose limit is per core: (name, limit).
    pub budget_limits: Vec<(&'static str, u64)>,
    pub shards: Vec<ShardFigures>,
    /// The peer links the core runs.
    pub peers: Vec<PeerFigures>,
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
        let version = env!("CARGO_PKG_VERSION").to_owned();
        gauges(e, "build_info", "The running build (value 1).", None, [(vec![("version", version)], 1_i64)])?;
        gauges(e, "cores", "Cores (executors) serving.", None, [(Vec::new(), self.cores.len() as u64)])?;
        encode_core_figures(e, &self.cores)?;
        encode_budgets(e, &self.cores)?;
        encode_shards(e, &self.cores)?;
        encode_peers(e, &self.cores)?;
        let bytes = Some(Unit::Bytes);
        let (free, reserve) = (self.storage_free_bytes, self.storage_reserve_bytes);
        gauges(
            e,
            "storage_free",
            "Free bytes on the data directory's filesystem.",
            bytes.clone(),
            [(Vec::new(), free)],
        )?;
        let help = "The free-space reserve (storage_reserve_bytes) below which events are refused.";
        gauges(e, "storage_reserve", help, bytes, [(Vec::new(), reserve)])
    }
}

/// Every per-core family: the plain figures, the labelled counters, the EVENT outcomes, the
/// histograms, and the executor's busy time.
fn encode_core_figures(e: &mut DescriptorEncoder<'_>, cores: &[CoreMetrics]) -> Result<(), std::fmt::Error> {
    for figure in StatsSnapshot::FIGURES.iter().filter(|figure| !figure.metric.is_empty()) {
        let unit = figure.bytes.then_some(Unit::Bytes);
        let samples = cores.iter().map(|core| (core_label(core), (figure.read)(&core.stats)));
        match figure.kind {
            FigureKind::Counter => counters(e, figure.metric, figure.help.trim_start(), unit, samples)?,
            FigureKind::Gauge => gauges(e, figure.metric, figure.help.trim_start(), unit, samples)?,
        }
    }
    for (index, figure) in LABELLED.iter().enumerate() {
        let samples = cores.iter().flat_map(|core| {
            core.labelled[index].iter().map(move |(label, count)| (core_with(core, figure.key, label), *count))
        });
        counters(e, figure.metric, figure.help.trim_start(), None, samples)?;
    }
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
    for (index, figure) in HISTOGRAMS.iter().enumerate() {
        let samples = cores.iter().map(|core| (core_label(core), &core.histograms[index]));
        histograms(e, figure.metric, figure.help.trim_start(), Some(Unit::Seconds), samples)?;
    }
    family(
        e,
        "core_busy",
        "Time each core's executor spent running tasks (not parked).",
        Some(Unit::Seconds),
        cores.iter().map(|c| (core_label(c), ConstCounter::new(c.busy_seconds))),
    )
}

/// Each per-core budget: what it uses now, its high-water mark, and its limit where it has
/// one per core.
fn encode_budgets(e: &mut DescriptorEncoder<'_>, cores: &[CoreMetrics]) -> Result<(), std::fmt::Error> {
    let samples = |pick: fn(&super::stats::BudgetFigure) -> fn(&StatsSnapshot) -> u64| {
        cores
            .iter()
            .flat_map(move |core| {
                StatsSnapshot::BUDGETS
                    .iter()
                    .map(move |budget| (core_with(core, "budget", budget.budget), pick(budget)(&core.stats)))
            })
            .collect::<Vec<_>>()
    };
    let help = "Each per-core budget's current use (bytes for outbound_bytes, else a count).";
    gauges(e, "budget_used", help, None, samples(|budget| budget.used))?;
    let help = "Each per-core budget's highest use since start.";
    gauges(e, "budget_high_water", help, None, samples(|budget| budget.high))?;
    let limits = cores
        .iter()
        .flat_map(|core| core.budget_limits.iter().map(move |(name, limit)| (core_with(core, "budget", name), *limit)));
    gauges(e, "budget_limit", "Each per-core budget's limit, where it has one.", None, limits)
}

/// A per-shard gauge or counter: its family, its help, whether it counts bytes, and where
/// its value comes from.
struct ShardFigure {
    metric: &'static str,
    help: &'static str,
    bytes: bool,
    read: fn(&ShardFigures) -> u64,
}

const SHARD_GAUGES: &[ShardFigure] = &[
    ShardFigure { metric: "shard_segments", help: "Segment files per shard.", bytes: false, read: |s| s.segments },
    ShardFigure { metric: "shard_size", help: "Bytes in each shard's segment files.", bytes: true, read: |s| s.bytes },
    ShardFigure {
        metric: "shard_dead",
        help: "Bytes of dead records (replaced, deleted, expired) compaction would drop, estimated per segment.",
        bytes: true,
        read: |s| s.dead_bytes,
    },
    ShardFigure {
        metric: "shard_records",
        help: "Records indexed per shard, dead ones included.",
        bytes: false,
        read: |s| s.records,
    },
    ShardFigure {
        metric: "shard_live_records",
        help: "Records per shard still served.",
        bytes: false,
        read: |s| s.live_records,
    },
    ShardFigure {
        metric: "index_memory",
        help: "Heap bytes of each shard's in-memory indexes.",
        bytes: true,
        read: |s| s.index_bytes,
    },
    ShardFigure {
        metric: "index_parts",
        help: "Sealed segments served through their mapped index parts.",
        bytes: false,
        read: |s| s.parts,
    },
    ShardFigure {
        metric: "index_parts_size",
        help: "Bytes of the mapped index parts (pages the kernel may drop and read again).",
        bytes: true,
        read: |s| s.part_bytes,
    },
    ShardFigure {
        metric: "shard_unscrubbed_segments",
        help: "Sealed segments opened through their index parts whose seal the scrub has not checked yet (their records are checksummed as they are read).",
        bytes: false,
        read: |s| s.unscrubbed_segments,
    },
    ShardFigure {
        metric: "shard_damaged_segments",
        help: "Sealed segments the scrub found damaged (their damaged records are not served).",
        bytes: false,
        read: |s| s.damaged_segments,
    },
];

const SHARD_COUNTERS: &[ShardFigure] = &[
    ShardFigure {
        metric: "commit_written",
        help: "Bytes written by group commits.",
        bytes: true,
        read: |s| s.written_bytes,
    },
    ShardFigure {
        metric: "commit_failures",
        help: "Group commits that failed (the shard then refuses writes until a retry succeeds).",
        bytes: false,
        read: |s| s.commit_failures,
    },
    ShardFigure {
        metric: "compactions",
        help: "Online compactions done: runs of sealed segments rewritten without their dead records.",
        bytes: false,
        read: |s| s.compactions,
    },
    ShardFigure {
        metric: "compaction_failures",
        help: "Online compactions that failed (the segments are served as they were; see the log).",
        bytes: false,
        read: |s| s.compaction_failures,
    },
    ShardFigure {
        metric: "compaction_reclaimed",
        help: "Bytes of segment files online compaction gave back.",
        bytes: true,
        read: |s| s.compaction_reclaimed_bytes,
    },
    ShardFigure {
        metric: "compaction_written",
        help: "Bytes online compaction wrote (the kept records and their index parts).",
        bytes: true,
        read: |s| s.compaction_written_bytes,
    },
];

/// Storage, per shard.
fn encode_shards(e: &mut DescriptorEncoder<'_>, cores: &[CoreMetrics]) -> Result<(), std::fmt::Error> {
    let shards = || cores.iter().flat_map(|core| core.shards.iter().map(move |shard| (core, shard)));
    for figure in SHARD_GAUGES {
        let samples = shards().map(|(c, s)| (shard_labels(c, s), (figure.read)(s)));
        gauges(e, figure.metric, figure.help, figure.bytes.then_some(Unit::Bytes), samples)?;
    }
    for figure in SHARD_COUNTERS {
        let samples = shards().map(|(c, s)| (shard_labels(c, s), (figure.read)(s)));
        counters(e, figure.metric, figure.help, figure.bytes.then_some(Unit::Bytes), samples)?;
    }
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
    let help = "Each segment file's fdatasync in a group commit.";
    histograms(
        e,
        "fsync_duration",
        help,
        Some(Unit::Seconds),
        shards().map(|(c, s)| (shard_labels(c, s), &s.fsync_seconds)),
    )?;
    let help = "Events made durable per group commit.";
    histograms(e, "commit_batch_events", help, None, shards().map(|(c, s)| (shard_labels(c, s), &s.batch_events)))
}

struct PeerFigure {
    metric: &'static str,
    help: &'static str,
    read: fn(&PeerFigures) -> u64,
}

const PEER_GAUGES: &[PeerFigure] = &[
    PeerFigure {
        metric: "peer_connected",
        help: "1 while a peer's live connection is up.",
        read: |p| u64::from(p.connected),
    },
    PeerFigure {
        metric: "peer_last_sync_timestamp_seconds",
        help: "When a peer's last catch-up sync ended well (Unix time; 0: none yet).",
        read: |p| p.last_sync_unix,
    },
    PeerFigure {
        metric: "peer_last_sync_missing",
        help: "Events the peer held and this relay lacked at its last catch-up sync.",
        read: |p| p.last_sync_need,
    },
    PeerFigure {
        metric: "peer_last_sync_extra",
        help: "Events this relay held and the peer lacked at its last catch-up sync.",
        read: |p| p.last_sync_have,
    },
];

const PEER_COUNTERS: &[PeerFigure] = &[
    PeerFigure {
        metric: "peer_events_received",
        help: "Events from a peer stored here (live and by catch-up syncs).",
        read: |p| p.received,
    },
    PeerFigure {
        metric: "peer_events_sent",
        help: "Events of this relay a peer took (live and by catch-up syncs).",
        read: |p| p.sent,
    },
    PeerFigure {
        metric: "peer_events_refused",
        help: "Events refused either way on a peer link.",
        read: |p| p.refused,
    },
    PeerFigure { metric: "peer_syncs", help: "Catch-up syncs with a peer that ended well.", read: |p| p.syncs },
    PeerFigure {
        metric: "peer_syncs_failed",
        help: "Catch-up syncs with a peer that failed.",
        read: |p| p.syncs_failed,
    },
    PeerFigure { metric: "peer_reconnects", help: "Times a peer's live connection was lost.", read: |p| p.reconnects },
];

/// Each peer link's families, labelled by core and peer URL.
fn encode_peers(e: &mut DescriptorEncoder<'_>, cores: &[CoreMetrics]) -> Result<(), std::fmt::Error> {
    let peers = || cores.iter().flat_map(|core| core.peers.iter().map(move |peer| (core, peer)));
    let labels = |core: &CoreMetrics, peer: &PeerFigures| -> Labels {
        vec![("core", core.core.to_string()), ("peer", peer.url.clone())]
    };
    for figure in PEER_GAUGES {
        gauges(e, figure.metric, figure.help, None, peers().map(|(c, p)| (labels(c, p), (figure.read)(p))))?;
    }
    for figure in PEER_COUNTERS {
        counters(e, figure.metric, figure.help, None, peers().map(|(c, p)| (labels(c, p), (figure.read)(p))))?;
    }
    Ok(())
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
