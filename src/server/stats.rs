//! One core's counters and gauges: plain cells, touched only by their core, gathered across
//! cores at read time through the mesh (`/stats` now; the Prometheus metrics later). Every
//! budget in `config::RelayLimits` has its current use and its high-water mark here.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};

pub use crate::measure::{Counter, Gauge, Histogram, HistogramSnapshot};

/// Why a WebSocket connection ended (or was refused at its start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCause {
    /// The client closed it, or went away.
    Client,
    /// It broke the WebSocket protocol or sent invalid UTF-8 or a message over the limit.
    ProtocolError,
    /// It fell behind its byte budget, or did not read an answer (`slow consumer:`).
    SlowConsumer,
    /// Its writes made no progress for `write_stall_secs`.
    WriteStall,
    /// The relay is shutting down.
    Shutdown,
    /// Refused at the upgrade: its address holds `connections_per_ip_max` already.
    AddressLimit,
    /// Refused at the upgrade: its address opens connections faster than its rate.
    RateLimited,
    /// Its address is blocked (NIP-86 `blockip`): refused, or closed when the block came.
    Blocked,
}

impl CloseCause {
    pub const ALL: [CloseCause; 8] = [
        CloseCause::Client,
        CloseCause::ProtocolError,
        CloseCause::SlowConsumer,
        CloseCause::WriteStall,
        CloseCause::Shutdown,
        CloseCause::AddressLimit,
        CloseCause::RateLimited,
        CloseCause::Blocked,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseCause::Client => "client",
            CloseCause::ProtocolError => "protocol_error",
            CloseCause::SlowConsumer => "slow_consumer",
            CloseCause::WriteStall => "write_stall",
            CloseCause::Shutdown => "shutdown",
            CloseCause::AddressLimit => "address_limit",
            CloseCause::RateLimited => "rate_limited",
            CloseCause::Blocked => "blocked",
        }
    }
}

/// What a client sent, by verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Event,
    Req,
    Count,
    Close,
    Auth,
    /// A text message that is not a valid client message (answered with a NOTICE or CLOSED).
    Invalid,
    /// A binary message (refused).
    Binary,
}

impl Verb {
    pub const ALL: [Verb; 7] =
        [Verb::Event, Verb::Req, Verb::Count, Verb::Close, Verb::Auth, Verb::Invalid, Verb::Binary];

    pub fn label(self) -> &'static str {
        match self {
            Verb::Event => "EVENT",
            Verb::Req => "REQ",
            Verb::Count => "COUNT",
            Verb::Close => "CLOSE",
            Verb::Auth => "AUTH",
            Verb::Invalid => "invalid",
            Verb::Binary => "binary",
        }
    }
}

/// How a management call (NIP-86) was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManageResult {
    /// A read, answered.
    Read,
    /// A change, on disk and in force on every core.
    Changed,
    /// A malformed call, or a change refused (nothing changed).
    Invalid,
    /// No valid NIP-98 authorization from an admin pubkey (401).
    Unauthorized,
    RateLimited,
    /// The lists file could not be written (nothing changed).
    Failed,
}

impl ManageResult {
    pub const ALL: [ManageResult; 6] = [
        ManageResult::Read,
        ManageResult::Changed,
        ManageResult::Invalid,
        ManageResult::Unauthorized,
        ManageResult::RateLimited,
        ManageResult::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ManageResult::Read => "read",
            ManageResult::Changed => "changed",
            ManageResult::Invalid => "invalid",
            ManageResult::Unauthorized => "unauthorized",
            ManageResult::RateLimited => "rate_limited",
            ManageResult::Failed => "failed",
        }
    }
}

/// What became of an EVENT: the class of its `OK` (NIP-01's prefixes), with a reason from a
/// fixed set (never the text of one event, so the metric's labels stay bounded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Outcome {
    pub class: OutcomeClass,
    pub reason: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutcomeClass {
    Stored,
    Ephemeral,
    Duplicate,
    Invalid,
    /// Refused by policy (`blocked:`, `auth-required:`, `restricted:`).
    Refused,
    RateLimited,
    /// Answered `OK true` at a write plugin's word (`shadowReject`), neither stored nor
    /// broadcast.
    ShadowRejected,
    /// Not stored for the relay's own reasons (`error:`): storage refusing writes, shutdown.
    Error,
}

impl OutcomeClass {
    pub fn label(self) -> &'static str {
        match self {
            OutcomeClass::Stored => "stored",
            OutcomeClass::Ephemeral => "ephemeral",
            OutcomeClass::Duplicate => "duplicate",
            OutcomeClass::Invalid => "invalid",
            OutcomeClass::Refused => "refused",
            OutcomeClass::RateLimited => "rate_limited",
            OutcomeClass::ShadowRejected => "shadow_rejected",
            OutcomeClass::Error => "error",
        }
    }
}

impl Outcome {
    pub const STORED: Outcome = Outcome { class: OutcomeClass::Stored, reason: "" };
    pub const EPHEMERAL: Outcome = Outcome { class: OutcomeClass::Ephemeral, reason: "" };
    /// A replaceable or addressable event older than the stored version: answered
    /// `OK false "duplicate: ..."`.
    pub const SUPERSEDED: Outcome = Outcome { class: OutcomeClass::Duplicate, reason: "superseded" };

    pub const fn new(class: OutcomeClass, reason: &'static str) -> Outcome {
        Outcome { class, reason }
    }

    /// The `OK`'s `true` or `false`.
    pub fn accepted(self) -> bool {
        matches!(
            self.class,
            OutcomeClass::Stored | OutcomeClass::Ephemeral | OutcomeClass::Duplicate | OutcomeClass::ShadowRejected
        ) && self != Outcome::SUPERSEDED
    }
}

/// One core's counts.
#[derive(Debug)]
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
    /// Connections ended, by [`CloseCause`] (indexed as `CloseCause::ALL`).
    pub closes: [Counter; CloseCause::ALL.len()],
    /// Client messages, by [`Verb`] (indexed as `Verb::ALL`).
    pub messages: [Counter; Verb::ALL.len()],
    /// EVENTs answered, by outcome: a handful of entries, the most frequent first.
    pub events: RefCell<Vec<(Outcome, u64)>>,
    /// Events queued to live subscriptions.
    pub live_deliveries: Counter,
    /// Requests refused by the rate limits, by `rates::Work` (event, query, connection).
    pub rate_limited: [Counter; 3],
    /// Policy list reloads (SIGHUP) that took effect, and that failed (the file did not parse).
    pub policy_reloads: Counter,
    pub policy_reload_failures: Counter,
    /// AUTH messages answered `OK true`, and refused.
    pub auth_accepted: Counter,
    pub auth_refused: Counter,
    /// Management calls (NIP-86), by `ManageResult`.
    pub manage_calls: [Counter; 6],
    /// WebSocket message payload bytes read from and queued to clients.
    pub received_bytes: Counter,
    pub sent_bytes: Counter,
    /// From an EVENT's arrival to its `OK` being queued, on the connection's core.
    pub ingest_seconds: Histogram,
    /// From a REQ's arrival to its EOSE being queued.
    pub req_seconds: Histogram,
    /// From a COUNT's arrival to its answer being queued.
    pub count_seconds: Histogram,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            connections: Gauge::default(),
            connections_accepted: Counter::default(),
            outbound_bytes: Gauge::default(),
            queries: Gauge::default(),
            queries_waiting: Gauge::default(),
            remote_scans: Gauge::default(),
            queries_cancelled: Counter::default(),
            counts_from_index: Counter::default(),
            counts_scanned: Counter::default(),
            long_scans: Counter::default(),
            mesh_backlog: Gauge::default(),
            pending_live: Gauge::default(),
            slow_consumer_closes: Counter::default(),
            write_stall_closes: Counter::default(),
            protocol_error_closes: Counter::default(),
            closes: Default::default(),
            messages: Default::default(),
            events: RefCell::new(vec![(Outcome::STORED, 0)]),
            live_deliveries: Counter::default(),
            rate_limited: Default::default(),
            policy_reloads: Counter::default(),
            policy_reload_failures: Counter::default(),
            auth_accepted: Counter::default(),
            auth_refused: Counter::default(),
            manage_calls: Default::default(),
            received_bytes: Counter::default(),
            sent_bytes: Counter::default(),
            ingest_seconds: Histogram::latency(),
            req_seconds: Histogram::latency(),
            count_seconds: Histogram::latency(),
        }
    }
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
    pub fn managed(&self, result: ManageResult) {
        self.manage_calls[result as usize].inc();
    }

    pub fn closed(&self, cause: CloseCause) {
        self.closes[CloseCause::ALL.iter().position(|&c| c == cause).expect("every cause is listed")].inc();
    }

    pub fn message(&self, verb: Verb) {
        self.messages[Verb::ALL.iter().position(|&v| v == verb).expect("every verb is listed")].inc();
    }

    /// Count an EVENT's answer, and the time since it arrived.
    pub fn answered(&self, outcome: Outcome, received: std::time::Instant) {
        self.ingest_seconds.observe_since(received);
        let mut events = self.events.borrow_mut();
        match events.iter_mut().find(|(known, _)| *known == outcome) {
            Some((_, count)) => *count += 1,
            None => events.push((outcome, 1)),
        }
    }

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
