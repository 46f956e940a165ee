//! Every maximum in one place. Defaults are what an operator gets without a config file;
//! the `_MAX` hard caps are what no configuration may exceed. Relations are `const` asserts.

/// Largest event JSON accepted, in bytes (the whole `{"id":...}` object).
pub const EVENT_SIZE_MAX: usize = 256 * 1024;
/// Largest `content` string, in bytes after unescaping.
pub const CONTENT_SIZE_MAX: usize = 192 * 1024;
/// Most tags on one event: more than a follow list of `EVENT_SIZE_MAX` can hold (~3,600
/// accounts of 72 bytes each), so size is the bound that matters for those.
pub const TAG_COUNT_MAX: usize = 4_000;
/// Most strings in one tag.
pub const TAG_ELEMENT_COUNT_MAX: usize = 64;
/// Largest single tag string, in bytes after unescaping.
pub const TAG_ELEMENT_SIZE_MAX: usize = 4 * 1024;
/// Deepest JSON nesting in an event (an event needs 3: object, tags, tag).
pub const JSON_DEPTH_MAX: usize = 8;

/// Block size for direct I/O and the segment header; a multiple of every device's alignment.
pub const BLOCK_SIZE: usize = 4096;
/// Default size at which a segment is sealed and a new one begun.
pub const SEGMENT_SIZE_DEFAULT: usize = 64 * 1024 * 1024;
/// Smallest segment an operator may configure.
pub const SEGMENT_SIZE_MIN: usize = 1024 * 1024;
/// Offsets inside a segment are `u32`.
pub const SEGMENT_SIZE_MAX: usize = 1 << 31;
/// Most records one shard may hold (event numbers are `u32`).
pub const SHARD_EVENT_COUNT_MAX: usize = (1 << 31) - 1;
/// Events retention by age examines per shard in one step of a core's once-a-second sweep
/// (what has outlived its time is retired over as many steps as it takes).
pub const RETENTION_STEP_COUNT: usize = 20_000;
/// Online compaction rests this many times as long as each rewritten segment took: a
/// quarter of one thread, in steps of one segment (see `store::compact`).
pub const COMPACTION_REST_FACTOR: u32 = 3;
/// Index entries a compaction reads on the core (placing the kept records, letting go of
/// the dropped ones) between two chances for other work to run.
pub const COMPACTION_CHUNK_COUNT: u32 = 4 * 1024;
/// Bytes online compaction writes and syncs in one step: a commit's `fdatasync` never
/// waits behind more than this of a rewrite.
pub const COMPACTION_PIECE_SIZE: usize = 1024 * 1024;
/// The share of dead records (percent) from which a run of sealed segments is compacted
/// while its shard is over its share of `[retention] max_store_bytes`.
pub const PRESSED_DEAD_PERCENT_MIN: u64 = 5;
/// How long a shard's compaction rests after one failed before it replaced anything (a
/// full disk, an I/O error).
pub const COMPACTION_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// Index parts are merged this many at a time (each indexing as many segments), so a
/// shard of S segments has O(log S) parts up to ...
pub const PART_MERGE_FAN_IN: usize = 4;
/// ... parts of this many segments (a merge reads them all and holds their entries,
/// postings and archive while it builds: ~280 B per event, measured 226 MiB for 800k
/// events; ~400 MB at 64 MiB segments of ~90k events; one merge at a time in the process).
pub const PART_SEGMENTS_MAX: usize = 16;
const _: () = assert!(PART_SEGMENTS_MAX <= u16::MAX as usize && PART_MERGE_FAN_IN >= 2);
/// A part's size is about this fraction (1/N) of its segments' bytes (12% measured on
/// `build_store`'s mix): what must be free beside `storage_reserve_bytes` before one is
/// built.
pub const PART_SIZE_SHARE_OF_SEGMENTS: u64 = 8;
/// Most shards one data directory may have (the nonce carries the shard as `u16`).
pub const SHARD_COUNT_MAX: usize = 256;

/// Candidates a query examines before it yields, so a huge scan never stalls a core: ~0.4 ms
/// of scanning at ~400 ns a candidate, so that scans take turns finely.
pub const QUERY_STEP_CANDIDATE_COUNT: usize = 1_024;
/// Steps a scan takes in the queries' task queue before it moves to the long scans' queue,
/// which has a smaller CPU share: an index lookup answering a `limit` is done by then.
pub const LONG_SCAN_AFTER_STEPS: usize = 4;
/// One in this many of a core's query slots is kept for connections that hold none
/// (`server::slots`): a connection's second query waits while only that many are free.
pub const QUERY_SLOTS_KEPT_SHARE: usize = 4;
/// How long the relay reads nothing more from a client after refusing it for a rate limit
/// (`rate-limited:`): a client that keeps sending anyway is held back by TCP, so a flood of
/// refused messages from many addresses costs the core ~10 refusals a second per
/// connection rather than one per message. (59 connections that read their answers sent
/// ~200k COUNTs a second; refusing each held the core and put publish p99 at 110 ms.)
pub const RATE_LIMITED_READ_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
/// How much later a scan's next step is due for every step it has taken (`server::turns`):
/// a scan that has taken `n` steps goes after scans started up to `n` times this after it.
/// Far more than a step takes (~0.1–0.4 ms), so that the steps of ~60 scans running at
/// once (a flood from many addresses) still leave a newer query first.
pub const SCAN_STEP_TURN_DELAY: std::time::Duration = std::time::Duration::from_millis(25);
/// Most events with the same `created_at` a query gathers past its `limit` to order ties by id.
pub const QUERY_TIE_COUNT_MAX: usize = 100_000;

/// Accepted sockets one core holds before they become sessions (reading the request head,
/// answering an HTTP request, upgrading), each for at most the 10 s handshake timeout. Past
/// it a new socket is closed at once (`ringrelay_handshakes_shed_total`): a flood of sockets
/// that never finish their handshake costs the host a bounded number of tasks, and the
/// sessions already open lose nothing.
pub const HANDSHAKES_PER_CORE_MAX: usize = 4_096;
/// Largest management call (NIP-86) body accepted, in bytes.
pub const MANAGE_BODY_SIZE_MAX: usize = 64 * 1024;
/// Longest reason, relay name, description or icon URL a management call may set, in bytes.
pub const MANAGE_TEXT_SIZE_MAX: usize = 4 * 1024;
/// Requests written to a write plugin at once, before their answers are read.
pub const PLUGIN_PIPELINE_COUNT_MAX: usize = 64;
/// Longest answer line a write plugin may write, in bytes.
pub const PLUGIN_ANSWER_SIZE_MAX: usize = 64 * 1024;

const _: () = assert!(CONTENT_SIZE_MAX < EVENT_SIZE_MAX);
const _: () = assert!(MANAGE_TEXT_SIZE_MAX < MANAGE_BODY_SIZE_MAX);
const _: () = assert!(TAG_ELEMENT_SIZE_MAX < EVENT_SIZE_MAX);
// A record (event JSON plus index fields, encryption tag) must always fit in a fresh segment.
const _: () = assert!(EVENT_SIZE_MAX * 3 < SEGMENT_SIZE_MIN);
const _: () = assert!(SEGMENT_SIZE_MIN.is_multiple_of(BLOCK_SIZE));
const _: () = assert!(SEGMENT_SIZE_DEFAULT.is_multiple_of(BLOCK_SIZE));
const _: () = assert!(SEGMENT_SIZE_MAX <= u32::MAX as usize);
const _: () = assert!(SHARD_COUNT_MAX <= u16::MAX as usize);

/// The per-event limits the parser enforces; configurable, each capped by the constant above.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLimits {
    pub event_size_max: usize,
    pub content_size_max: usize,
    pub tag_count_max: usize,
    pub tag_element_count_max: usize,
    pub tag_element_size_max: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            // A follow list (kind 3) of 3,500 accounts is ~250 KiB: people who follow that many
            // are the ones other relays' 128 KiB default turns away.
            event_size_max: EVENT_SIZE_MAX,
            content_size_max: 96 * 1024,
            tag_count_max: TAG_COUNT_MAX,
            tag_element_count_max: 32,
            tag_element_size_max: 2 * 1024,
        }
    }
}

impl EventLimits {
    /// The hard caps, used by offline tools that must accept whatever a relay could have stored.
    pub fn hard_caps() -> Self {
        EventLimits {
            event_size_max: EVENT_SIZE_MAX,
            content_size_max: CONTENT_SIZE_MAX,
            tag_count_max: TAG_COUNT_MAX,
            tag_element_count_max: TAG_ELEMENT_COUNT_MAX,
            tag_element_size_max: TAG_ELEMENT_SIZE_MAX,
        }
    }

    /// Clamp every field to its hard cap.
    pub fn clamped(mut self) -> Self {
        self.event_size_max = self.event_size_max.min(EVENT_SIZE_MAX);
        self.content_size_max = self.content_size_max.min(CONTENT_SIZE_MAX);
        self.tag_count_max = self.tag_count_max.min(TAG_COUNT_MAX);
        self.tag_element_count_max = self.tag_element_count_max.min(TAG_ELEMENT_COUNT_MAX);
        self.tag_element_size_max = self.tag_element_size_max.min(TAG_ELEMENT_SIZE_MAX);
        self
    }
}

/// Memory each glommio executor registers with io_uring for direct I/O (it is locked memory:
/// `ulimit -l` must allow this plus the rings, per core; see tuning/).
pub const IO_MEMORY_SIZE: usize = 2 * 1024 * 1024;

/// Longest NIP-50 `search` value, in bytes.
pub const SEARCH_QUERY_SIZE_MAX: usize = 256;
/// Most terms one `search` may ask for (words, and the words of its phrases).
pub const SEARCH_TERMS_MAX: usize = 16;
/// A search asks each shard's index for this many times its `limit` of best hits, so that
/// hits the filter's other fields or the read rules turn away leave enough.
pub const SEARCH_OVERFETCH_FACTOR: usize = 4;
/// The most hits one search asks of a shard's index, however many the store turns away.
pub const SEARCH_HITS_MAX: usize = 20_000;
/// Retired events a shard remembers for its search index to forget (4 bytes each); past it
/// the oldest are let go, and the index forgets them when a search meets them instead.
pub const RETIRED_LOG_COUNT_MAX: usize = 1 << 20;
/// Documents a second a shard's search index takes while it catches up (a rebuild, or a
/// restart after a long stop): its writes would otherwise crowd the store's commits.
pub const SEARCH_CATCH_UP_RATE: u32 = 20_000;
/// Most documents a shard's search indexer holds before it commits them.
pub const SEARCH_COMMIT_COUNT: usize = 10_000;
/// Longest an indexed event waits to be committed (searchable).
pub const SEARCH_COMMIT_INTERVAL_MS: u64 = 1_000;
/// tantivy's smallest indexing arena per indexing thread (`MEMORY_BUDGET_NUM_BYTES_MIN`).
pub const SEARCH_WRITER_MEMORY_MIN: usize = 15_000_000;
