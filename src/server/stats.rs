//! One core's counters and gauges: plain cells, touched only by their core, gathered across
//! cores at read time through the mesh (`/stats`, `/metrics`). Every figure is declared once,
//! in the `figures!` table below. Every budget in `config::RelayLimits` has its current use
//! and its high-water mark here.

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
    /// NIP-77: NEG-OPEN, NEG-MSG and NEG-CLOSE.
    Neg,
    /// A text message that is not a valid client message (answered with a NOTICE or CLOSED).
    Invalid,
    /// A binary message (refused).
    Binary,
}

impl Verb {
    pub const ALL: [Verb; 8] =
        [Verb::Event, Verb::Req, Verb::Count, Verb::Close, Verb::Auth, Verb::Neg, Verb::Invalid, Verb::Binary];

    pub fn label(self) -> &'static str {
        match self {
            Verb::Event => "EVENT",
            Verb::Req => "REQ",
            Verb::Count => "COUNT",
            Verb::Close => "CLOSE",
            Verb::Auth => "AUTH",
            Verb::Neg => "NEG",
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
    /// The lists file could not be written (nothing changed), or a `syncrelay` failed.
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
    /// A copy of an event already stored: answered `OK true "duplicate: ..."`.
    pub const DUPLICATE: Outcome = Outcome { class: OutcomeClass::Duplicate, reason: "duplicate" };
    /// A replaceable or addressable event older than the stored version: answered
    /// `OK false "duplicate: ..."`.
    pub const SUPERSEDED: Outcome = Outcome { class: OutcomeClass::Duplicate, reason: "superseded" };

    pub const fn new(class: OutcomeClass, reason: &'static str) -> Outcome {
        Outcome { class, reason }
    }

    /// The `OK`'s `true` or `false`: of the duplicates, only a copy of a stored event is
    /// `true` (a superseded version, or a plugin's `duplicate:` refusal, is `false`).
    pub fn accepted(self) -> bool {
        matches!(self.class, OutcomeClass::Stored | OutcomeClass::Ephemeral | OutcomeClass::ShadowRejected)
            || self == Outcome::DUPLICATE
    }
}

/// A fixed set of labels one counter is kept by (a cause, a verb, a result).
pub trait LabelSet: Copy + PartialEq + 'static {
    fn all() -> &'static [Self];
    fn label(self) -> &'static str;
}

macro_rules! label_set {
    ($($set:ty),*) => {$(
        impl LabelSet for $set {
            fn all() -> &'static [Self] {
                &<$set>::ALL
            }
            fn label(self) -> &'static str {
                <$set>::label(self)
            }
        }
    )*};
}

label_set!(CloseCause, Verb, ManageResult, AuthResult, super::rates::Work);

/// How an AUTH message (NIP-42) was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthResult {
    Accepted,
    Refused,
}

impl AuthResult {
    pub const ALL: [AuthResult; 2] = [AuthResult::Accepted, AuthResult::Refused];

    pub fn label(self) -> &'static str {
        match self {
            AuthResult::Accepted => "accepted",
            AuthResult::Refused => "refused",
        }
    }
}

/// A counter per label of `L`.
#[derive(Debug)]
pub struct ByLabel<L> {
    counts: Vec<Counter>,
    set: std::marker::PhantomData<L>,
}

impl<L: LabelSet> Default for ByLabel<L> {
    fn default() -> ByLabel<L> {
        ByLabel { counts: L::all().iter().map(|_| Counter::default()).collect(), set: std::marker::PhantomData }
    }
}

impl<L: LabelSet> ByLabel<L> {
    pub fn inc(&self, label: L) {
        let index = L::all().iter().position(|&known| known == label).expect("every label is in its set");
        self.counts[index].inc();
    }

    /// Each label with its count, in the set's order.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        L::all().iter().zip(&self.counts).map(|(label, count)| (label.label(), count.get())).collect()
    }
}

/// Whether a figure only goes up (a counter) or goes up and down (a gauge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FigureKind {
    Counter,
    Gauge,
}

/// One figure with one value per core: its `/metrics` family (empty: `/stats` only), its
/// help, which is also its field's doc (so it starts with the doc comment's space), its
/// kind and how it is read from a snapshot.
pub struct Figure {
    pub metric: &'static str,
    pub help: &'static str,
    pub kind: FigureKind,
    pub bytes: bool,
    pub read: fn(&StatsSnapshot) -> u64,
}

/// A per-core budget's gauge: its name in the `budget` label, its use and its high-water
/// mark.
pub struct BudgetFigure {
    pub budget: &'static str,
    pub used: fn(&StatsSnapshot) -> u64,
    pub high: fn(&StatsSnapshot) -> u64,
}

/// A counter kept by a label: its family, its help and its label's name.
pub struct LabelledFigure {
    pub metric: &'static str,
    pub help: &'static str,
    pub key: &'static str,
}

/// A latency histogram's family and help.
pub struct HistogramFigure {
    pub metric: &'static str,
    pub help: &'static str,
}

/// The figures, declared once: from this one table follow a core's cells ([`Stats`]), the
/// copy it answers a scrape with ([`StatsSnapshot`], [`LabelledCounts`] and histogram
/// snapshots), the sum over cores (`merge`, for `/stats`) and the `/metrics` families
/// ([`StatsSnapshot::FIGURES`], [`StatsSnapshot::BUDGETS`], [`LABELLED`], [`HISTOGRAMS`]).
/// - `counters`: a `Counter` per core, summed;
/// - `gauges`: a `Gauge` per core (a budget's use), with its high-water mark;
/// - `read`: a value the core reads from its subsystems when asked, not a cell;
/// - `labelled`: a counter per label of a `LabelSet`;
/// - `histograms`: latency histograms;
/// - `cells`: the rest (encoded by hand in `metrics`).
macro_rules! figures {
    (
        counters { $( #[doc = $chelp:literal] $c:ident => $cmetric:literal $(, $cbytes:ident)?; )* }
        gauges { $( #[doc = $ghelp:literal] $g:ident, $gmax:ident => $gmetric:literal; )* }
        read { $( #[doc = $rhelp:literal] $r:ident => $rmetric:literal, $rkind:ident; )* }
        labelled { $( #[doc = $lhelp:literal] $l:ident: $lset:ty => $lmetric:literal, $lkey:literal; )* }
        histograms { $( #[doc = $hhelp:literal] $h:ident => $hmetric:literal; )* }
        cells { $( #[doc = $ohelp:literal] $o:ident: $oty:ty = $oinit:expr; )* }
    ) => {
        /// One core's counts: plain cells, touched only by their core.
        #[derive(Debug)]
        pub struct Stats {
            $( #[doc = $chelp] pub $c: Counter, )*
            $( #[doc = $ghelp] pub $g: Gauge, )*
            $( #[doc = $lhelp] pub $l: ByLabel<$lset>, )*
            $( #[doc = $hhelp] pub $h: Histogram, )*
            $( #[doc = $ohelp] pub $o: $oty, )*
        }

        impl Default for Stats {
            fn default() -> Stats {
                Stats {
                    $( $c: Counter::default(), )*
                    $( $g: Gauge::default(), )*
                    $( $l: ByLabel::default(), )*
                    $( $h: Histogram::latency(), )*
                    $( $o: $oinit, )*
                }
            }
        }

        /// What `/stats` serves: every core's plain figures summed (high-water marks are per
        /// core, the highest of them), with the process's resident memory.
        #[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
        pub struct StatsSnapshot {
            pub cores: u64,
            $( pub $c: u64, )*
            $( pub $g: u64, pub $gmax: u64, )*
            $( pub $r: u64, )*
            pub rss_bytes: u64,
        }

        impl Stats {
            /// This core's plain figures; those it reads from its subsystems are left 0.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    cores: 1,
                    $( $c: self.$c.get(), )*
                    $( $g: self.$g.get(), $gmax: self.$g.high(), )*
                    ..StatsSnapshot::default()
                }
            }

            /// The labelled counters, as [`LABELLED`] lists them.
            pub fn labelled(&self) -> Vec<Vec<(&'static str, u64)>> {
                vec![$( self.$l.counts(), )*]
            }

            /// The histograms, as [`HISTOGRAMS`] lists them.
            pub fn histograms(&self) -> Vec<HistogramSnapshot> {
                vec![$( self.$h.snapshot(), )*]
            }
        }

        impl StatsSnapshot {
            /// Add another core's figures: counts and gauges sum, high-water marks take the
            /// highest.
            pub fn merge(&mut self, other: &StatsSnapshot) {
                self.cores += other.cores;
                $( self.$c += other.$c; )*
                $( self.$g += other.$g; self.$gmax = self.$gmax.max(other.$gmax); )*
                $( self.$r += other.$r; )*
            }

            /// Every plain figure with one value per core.
            pub const FIGURES: &'static [Figure] = &[
                $( Figure {
                    metric: $cmetric,
                    help: $chelp,
                    kind: FigureKind::Counter,
                    bytes: figures!(@bytes $($cbytes)?),
                    read: |s: &StatsSnapshot| s.$c,
                }, )*
                $( Figure { metric: $gmetric, help: $ghelp, kind: FigureKind::Gauge, bytes: false, read: |s: &StatsSnapshot| s.$g }, )*
                $( Figure { metric: $rmetric, help: $rhelp, kind: FigureKind::$rkind, bytes: false, read: |s: &StatsSnapshot| s.$r }, )*
            ];

            /// Every gauge is a per-core budget's use (`budget_used`, `budget_high_water`).
            pub const BUDGETS: &'static [BudgetFigure] = &[
                $( BudgetFigure {
                    budget: stringify!($g),
                    used: |s: &StatsSnapshot| s.$g,
                    high: |s: &StatsSnapshot| s.$gmax,
                }, )*
            ];
        }

        /// The labelled counters' families, in the order `Stats::labelled` gives them.
        pub const LABELLED: &[LabelledFigure] = &[ $( LabelledFigure { metric: $lmetric, help: $lhelp, key: $lkey }, )* ];

        /// The histograms' families, in the order `Stats::histograms` gives them.
        pub const HISTOGRAMS: &[HistogramFigure] = &[ $( HistogramFigure { metric: $hmetric, help: $hhelp }, )* ];
    };
    (@bytes bytes) => { true };
    (@bytes) => { false };
}

figures! {
    counters {
        /// WebSocket connections accepted.
        connections_accepted => "connections_accepted";
        /// Connections closed for not reading what they asked for or subscribed to.
        slow_consumer_closes => "slow_consumer_closes";
        /// Connections cut because their writes made no progress for write_stall_secs.
        write_stall_closes => "";
        /// Connections closed for breaking the WebSocket protocol or sending invalid UTF-8.
        protocol_error_closes => "";
        /// Live events queued to subscriptions.
        live_deliveries => "live_deliveries";
        /// Policy list reloads (SIGHUP) put in force (counted on core 0).
        policy_reloads => "policy_reloads";
        /// Policy list reloads refused: the file did not parse.
        policy_reload_failures => "policy_reload_failures";
        /// WebSocket message payload bytes received from clients.
        received_bytes => "received", bytes;
        /// WebSocket message payload bytes sent to clients, before compression.
        sent_bytes => "sent", bytes;
        /// WebSocket message payload bytes received from clients as they came, compressed or not.
        received_wire_bytes => "received_wire", bytes;
        /// WebSocket message payload bytes sent to clients as written, after permessage-deflate.
        sent_wire_bytes => "sent_wire", bytes;
        /// Connections that agreed to permessage-deflate.
        compressed_connections => "compressed_connections";
        /// permessage-deflate offers declined: the core held compression.connections_per_core_max compressed connections.
        deflate_declined => "deflate_declined";
        /// Connections given the shared mode because the core held compression.contexts_per_core_max deflate contexts (or the client's terms ruled a context out).
        deflate_contexts_declined => "deflate_contexts_declined";
        /// Queries stopped before they finished (replaced, closed, or their connection gone).
        queries_cancelled => "queries_cancelled";
        /// COUNTs answered from the indexes' counts, without a scan.
        counts_from_index => "counts_from_index";
        /// COUNTs answered by a scan.
        counts_scanned => "counts_scanned";
        /// Scans that ran long enough to move to the long scans' task queue.
        long_scans => "long_scans";
        /// Accepted sockets closed at once because the core held HANDSHAKES_PER_CORE_MAX sockets not yet sessions.
        handshakes_shed => "handshakes_shed";
        /// NIP-77 syncs refused with NEG-ERR blocked: over negentropy.items_max, the core's negentropy.items_per_core_max, or the connection's syncs.
        neg_refused => "negentropy_refused";
        /// NIP-77 syncs closed with NEG-ERR closed after negentropy.idle_secs without a message.
        neg_idle_closed => "negentropy_idle_closed";
        /// Events retired because they outlived their kind's time ([retention]).
        retention_retired => "retention_retired";
        /// Events retired, oldest first, because the store's live records were over [retention] max_store_bytes (of [retention] evictable_kinds).
        retention_evicted => "retention_evicted";
    }
    gauges {
        /// Open WebSocket connections.
        connections, connections_max_seen => "connections";
        /// Bytes queued to clients, summed over the core's connections (outbound_bytes_per_core_max).
        outbound_bytes, outbound_bytes_max_seen => "";
        /// REQ, COUNT and deletion lookups the core's connections have running (queries_per_core_max).
        queries, queries_max_seen => "";
        /// Queries waiting for one of the core's query slots.
        queries_waiting, queries_waiting_max_seen => "";
        /// Scans the core runs for other cores' queries.
        remote_scans, remote_scans_max_seen => "";
        /// Messages waiting for room in a full core-to-core channel.
        mesh_backlog, mesh_backlog_max_seen => "";
        /// Live events held for subscriptions whose stored events are still being sent.
        pending_live, pending_live_max_seen => "";
        /// Accepted sockets not yet sessions: reading the request head, answered over HTTP, upgrading (HANDSHAKES_PER_CORE_MAX).
        handshakes, handshakes_max_seen => "";
        /// NIP-77 syncs open on the core's connections.
        neg_syncs, neg_syncs_max_seen => "negentropy_syncs";
        /// Events the core's NIP-77 syncs hold, 40 bytes each (negentropy.items_per_core_max).
        neg_items, neg_items_max_seen => "";
        /// Connections holding a deflate context (compression.contexts_per_core_max).
        deflate_contexts, deflate_contexts_max_seen => "deflate_contexts";
        /// Connections that agreed to permessage-deflate, open (compression.connections_per_core_max).
        deflate_connections, deflate_connections_max_seen => "deflate_connections";
    }
    read {
        /// Open subscriptions.
        subscriptions => "subscriptions", Gauge;
        /// Shards refusing writes now (a full disk, the free-space reserve, a failed write).
        shards_refusing_writes => "", Gauge;
        /// Addresses and pubkeys the rate limiter tracks (at most rate_limits.tracked_max per core).
        rate_keys => "rate_limit_keys", Gauge;
        /// Write plugin processes started (the first, and each restart after a timeout, a crash or a change).
        plugin_starts => "plugin_starts", Counter;
        /// Events the write plugin failed to judge (timed out, died, answered nonsense), given write_plugin.on_failure's decision.
        plugin_failures => "plugin_failures", Counter;
        /// Events committed to the search indexes (NIP-50), searchable.
        search_indexed => "search_indexed", Counter;
        /// Bytes of events queued to the search indexers (search.queue_bytes_max per shard).
        search_queue_bytes => "search_queue_bytes", Gauge;
        /// Search index writes or commits that failed (the index lags; a restart feeds it again).
        search_failures => "search_failures", Counter;
        /// Documents in the search indexes as of their last commits.
        search_documents => "search_documents", Gauge;
    }
    labelled {
        /// Connections ended, by cause (address_limit, rate_limited: refused at the upgrade; blocked: a blocked address, refused or closed).
        closes: CloseCause => "connections_closed", "cause";
        /// Client messages received, by verb (invalid: not a valid client message).
        messages: Verb => "client_messages", "verb";
        /// Requests refused by the rate limits, by what (event, query, connection).
        rate_limited: super::rates::Work => "rate_limited", "what";
        /// AUTH messages (NIP-42) answered, by result.
        auth: AuthResult => "auth", "result";
        /// Management API calls (NIP-86), by result.
        manage_calls: ManageResult => "manage_calls", "result";
    }
    histograms {
        /// From an EVENT's arrival to its OK being queued.
        ingest_seconds => "ingest_duration";
        /// From a REQ's arrival to its EOSE being queued.
        req_seconds => "req_duration";
        /// From a COUNT's arrival to its answer being queued.
        count_seconds => "count_duration";
    }
    cells {
        /// EVENTs answered, by outcome: a handful of entries, the most frequent first.
        events: RefCell<Vec<(Outcome, u64)>> = RefCell::new(vec![(Outcome::STORED, 0)]);
    }
}

/// An accepted socket counted in `Stats::handshakes` until it becomes a session or ends.
pub struct Handshake(std::rc::Rc<Stats>);

impl Handshake {
    pub fn begin(stats: std::rc::Rc<Stats>) -> Handshake {
        stats.handshakes.add(1);
        Handshake(stats)
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.0.handshakes.sub(1);
    }
}

impl Stats {
    pub fn managed(&self, result: ManageResult) {
        self.manage_calls.inc(result);
    }

    pub fn closed(&self, cause: CloseCause) {
        self.closes.inc(cause);
    }

    pub fn message(&self, verb: Verb) {
        self.messages.inc(verb);
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
}

/// The process's resident memory, from `/proc/self/statm`; 0 where it cannot be read.
pub fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else { return 0 };
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|field| field.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page_size).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_every_cell_and_merging_sums_counts_and_keeps_the_highest_mark() {
        let (one, two) = (Stats::default(), Stats::default());
        one.connections_accepted.add(3);
        two.connections_accepted.add(4);
        one.connections.add(5);
        one.connections.sub(4);
        two.connections.add(2);
        let mut total = one.snapshot();
        total.merge(&two.snapshot());
        assert_eq!(total.cores, 2);
        assert_eq!(total.connections_accepted, 7);
        assert_eq!(total.connections, 3, "gauges sum");
        assert_eq!(total.connections_max_seen, 5, "high-water marks take the highest");
        let connections = StatsSnapshot::FIGURES.iter().find(|figure| figure.metric == "connections").unwrap();
        assert_eq!((connections.read)(&total), 3);
        assert_eq!(connections.kind, FigureKind::Gauge);
    }

    #[test]
    fn every_family_is_named_once_and_every_gauge_is_a_budget() {
        let mut names: Vec<&str> = StatsSnapshot::FIGURES.iter().map(|figure| figure.metric).collect();
        names.retain(|name| !name.is_empty());
        names.extend(LABELLED.iter().map(|figure| figure.metric));
        names.extend(HISTOGRAMS.iter().map(|figure| figure.metric));
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a family declared twice");
        let budgets: Vec<&str> = StatsSnapshot::BUDGETS.iter().map(|budget| budget.budget).collect();
        assert!(budgets.contains(&"outbound_bytes") && budgets.contains(&"queries_waiting"), "{budgets:?}");
        assert!(StatsSnapshot::FIGURES.iter().all(|figure| !figure.help.trim().is_empty()));
    }

    #[test]
    fn labelled_counters_count_by_label_in_the_order_their_family_lists_them() {
        let stats = Stats::default();
        stats.closed(CloseCause::Blocked);
        stats.closed(CloseCause::Blocked);
        stats.message(Verb::Req);
        stats.auth.inc(AuthResult::Refused);
        let labelled = stats.labelled();
        assert_eq!(labelled.len(), LABELLED.len());
        let closes = &labelled[LABELLED.iter().position(|figure| figure.metric == "connections_closed").unwrap()];
        assert!(closes.contains(&("blocked", 2)) && closes.contains(&("client", 0)), "{closes:?}");
        let auth = &labelled[LABELLED.iter().position(|figure| figure.metric == "auth").unwrap()];
        assert_eq!(auth, &vec![("accepted", 0), ("refused", 1)]);
    }
}
