//! One core's counters and gauges: plain cells, touched only by their core, gathered across
//! cores at read time through the mesh (`/stats` now; the Prometheus metrics later). Every
//! budget in `config::RelayLimits` has its current use and its high-water mark here.

use std::cell::Cell;

use serde::{Deserialize, Serialize};

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

/// A count that only goes up.
#[derive(Default, Debug)]
pub struct Counter(Cell<u64>);

impl Counter {
    pub fn inc(&self) {
        self.0.set(self.0.get() + 1);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// One core's counts.
#[derive(Default, Debug)]
pub struct Stats {
    pub connections: Gauge,
    pub connections_accepted: Counter,
    /// Bytes queued to clients, summed over this core's connections (`outbound_bytes_per_core_max`).
    pub outbound_bytes: Gauge,
    /// REQ, COUNT and deletion lookups this core's connections have running
    /// (`queries_per_core_max`).
    pub queries: Gauge,
    /// Queries waiting for one of the core's query slots.
    pub queries_waiting: Gauge,
    /// Scans this core runs for other cores' queries.
    pub remote_scans: Gauge,
    /// Queries stopped before they finished: replaced, closed, or their connection gone.
    pub queries_cancelled: Counter,
    pub counts_from_index: Counter,
    pub counts_scanned: Counter,
    /// Scans that ran past `LONG_SCAN_AFTER_STEPS` and finished in the long scans' queue.
    pub long_scans: Counter,
    /// Messages waiting for room in a full core-to-core channel.
    pub mesh_backlog: Gauge,
    /// Live events held for subscriptions whose stored events are still being sent.
    pub pending_live: Gauge,
    pub slow_consumer_closes: Counter,
    pub write_stall_closes: Counter,
    pub protocol_error_closes: Counter,
}

/// What `/stats` serves: every core's [`Stats`] summed (high-water marks are per core, the
/// highest of them), with process figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub cores: u64,
    pub connections: u64,
    pub connections_max_seen: u64,
    pub connections_accepted: u64,
    pub subscriptions: u64,
    pub outbound_bytes: u64,
    pub outbound_bytes_max_seen: u64,
    pub queries: u64,
    pub queries_max_seen: u64,
    pub queries_waiting: u64,
    pub remote_scans: u64,
    pub remote_scans_max_seen: u64,
    pub queries_cancelled: u64,
    pub counts_from_index: u64,
    pub counts_scanned: u64,
    pub long_scans: u64,
    pub mesh_backlog: u64,
    pub mesh_backlog_max_seen: u64,
    pub pending_live: u64,
    pub pending_live_max_seen: u64,
    pub slow_consumer_closes: u64,
    pub write_stall_closes: u64,
    pub protocol_error_closes: u64,
    /// Shards refusing writes now (a full disk, the free-space reserve, a failed write).
    pub shards_refusing_writes: u64,
    pub rss_bytes: u64,
}

impl Stats {
    /// This core's figures; `subscriptions` comes from the subscription index.
    pub fn snapshot(&self, subscriptions: u64) -> StatsSnapshot {
        StatsSnapshot {
            cores: 1,
            connections: self.connections.get(),
            connections_max_seen: self.connections.high(),
            connections_accepted: self.connections_accepted.get(),
            subscriptions,
            outbound_bytes: self.outbound_bytes.get(),
            outbound_bytes_max_seen: self.outbound_bytes.high(),
            queries: self.queries.get(),
            queries_max_seen: self.queries.high(),
            queries_waiting: self.queries_waiting.get(),
            remote_scans: self.remote_scans.get(),
            remote_scans_max_seen: self.remote_scans.high(),
            queries_cancelled: self.queries_cancelled.get(),
            counts_from_index: self.counts_from_index.get(),
            counts_scanned: self.counts_scanned.get(),
            long_scans: self.long_scans.get(),
            mesh_backlog: self.mesh_backlog.get(),
            mesh_backlog_max_seen: self.mesh_backlog.high(),
            pending_live: self.pending_live.get(),
            pending_live_max_seen: self.pending_live.high(),
            slow_consumer_closes: self.slow_consumer_closes.get(),
            write_stall_closes: self.write_stall_closes.get(),
            protocol_error_closes: self.protocol_error_closes.get(),
            shards_refusing_writes: 0,
            rss_bytes: 0,
        }
    }
}

impl StatsSnapshot {
    /// Add another core's figures: counts and gauges sum, high-water marks take the highest.
    pub fn merge(&mut self, other: &StatsSnapshot) {
        self.cores += other.cores;
        self.connections += other.connections;
        self.connections_max_seen = self.connections_max_seen.max(other.connections_max_seen);
        self.connections_accepted += other.connections_accepted;
        self.subscriptions += other.subscriptions;
        self.outbound_bytes += other.outbound_bytes;
        self.outbound_bytes_max_seen = self.outbound_bytes_max_seen.max(other.outbound_bytes_max_seen);
        self.queries += other.queries;
        self.queries_max_seen = self.queries_max_seen.max(other.queries_max_seen);
        self.queries_waiting += other.queries_waiting;
        self.remote_scans += other.remote_scans;
        self.remote_scans_max_seen = self.remote_scans_max_seen.max(other.remote_scans_max_seen);
        self.queries_cancelled += other.queries_cancelled;
        self.counts_from_index += other.counts_from_index;
        self.counts_scanned += other.counts_scanned;
        self.long_scans += other.long_scans;
        self.mesh_backlog += other.mesh_backlog;
        self.mesh_backlog_max_seen = self.mesh_backlog_max_seen.max(other.mesh_backlog_max_seen);
        self.pending_live += other.pending_live;
        self.pending_live_max_seen = self.pending_live_max_seen.max(other.pending_live_max_seen);
        self.slow_consumer_closes += other.slow_consumer_closes;
        self.shards_refusing_writes += other.shards_refusing_writes;
        self.write_stall_closes += other.write_stall_closes;
        self.protocol_error_closes += other.protocol_error_closes;
    }
}

/// The process's resident memory, from `/proc/self/statm`; 0 where it cannot be read.
pub fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else { return 0 };
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|field| field.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page_size).unwrap_or(4096)
}
