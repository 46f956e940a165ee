//! The server's configuration: embedded defaults, an optional TOML file, then flags.
//! Every per-connection and per-request maximum lives in [`RelayLimits`].

use crate::store::retention::RetentionConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::limits::{EventLimits, SEGMENT_SIZE_DEFAULT};

mod fleet;

pub use fleet::{NegentropyConfig, PeerConfig, PeeringConfig};

/// The default free-space reserve: four default segments.
pub const STORAGE_RESERVE_BYTES_DEFAULT: u64 = 4 * SEGMENT_SIZE_DEFAULT as u64;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where `GET /metrics` (and `/stats`, `/healthz`) is served instead of `listen`, e.g.
    /// `127.0.0.1:9777`; unset, `/metrics` is served on `listen`.
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Executors, one pinned per core; 0 means every CPU this process may run on.
    pub cores: usize,
    pub key_file: Option<PathBuf>,
    pub segment_size: usize,
    /// Free bytes to keep on the data directory's filesystem: below it new events are
    /// refused (`OK false "error: ..."`) while reads go on, so that appends already taken, a
    /// segment rotation and a seal never run out of space half-way. 0 turns it off.
    pub storage_reserve_bytes: u64,
    /// Online compaction rewrites a run of sealed segments once this share (percent) of its
    /// records is dead; 0 turns it off (`ringrelay compact` still works offline).
    pub compaction_dead_percent: u8,
    /// Reverse proxies in front of the relay (`["127.0.0.1"]`): a connection from one of them
    /// is taken to come from the address its `X-Forwarded-For` (or `X-Real-IP`) names, for
    /// the rate limits, the per-address limits, blocked addresses and the write plugin.
    pub trusted_proxies: Vec<String>,
    pub log: LogConfig,
    pub info: RelayInfo,
    pub auth: AuthConfig,
    pub policy: PolicyConfig,
    pub rate_limits: RateLimitConfig,
    pub management: ManagementConfig,
    pub write_plugin: WritePluginConfig,
    pub limits: RelayLimits,
    pub negentropy: NegentropyConfig,
    /// permessage-deflate (`[compression]`, RFC 7692).
    pub compression: crate::deflate::CompressionConfig,
    /// NIP-50 full-text search (`[search]`).
    pub search: crate::search::SearchConfig,
    /// How long events are kept, by kind (`[retention]`).
    pub retention: RetentionConfig,
    pub peering: PeeringConfig,
    /// The relays this one keeps converged with (`[[peers]]`, docs/fleet.md).
    pub peers: Vec<PeerConfig>,
    /// The file this config was read from, if any: SIGHUP reads `[[peers]]` from it again.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// A write-policy plugin speaking strfry's protocol: one JSON line per event in, one
/// decision line out (see `server::plugin`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WritePluginConfig {
    /// The command, run with `/bin/sh -c` as strfry does (one process per core); empty: none.
    pub command: String,
    /// How long the plugin has to answer one event before it is restarted, in milliseconds.
    pub timeout_ms: u64,
    /// The decision for an event the plugin failed to judge (timed out, died, answered
    /// nonsense, or is restarting).
    pub on_failure: PluginFailure,
    /// Bytes of requests one core may have queued to its plugin or in its hands; past it,
    /// publishers wait.
    pub queue_bytes_max: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginFailure {
    Reject,
    Accept,
}

impl Default for WritePluginConfig {
    fn default() -> Self {
        WritePluginConfig {
            command: String::new(),
            timeout_ms: 2_000,
            on_failure: PluginFailure::Reject,
            queue_bytes_max: 4 * 1024 * 1024,
        }
    }
}

/// The management API (NIP-86): JSON-RPC over HTTP on the relay's address (and on
/// `metrics_listen`), for requests signed (NIP-98) by one of `admin_pubkeys`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementConfig {
    /// Who may manage the relay. Empty: the API is off (every call answered 401).
    pub admin_pubkeys: Vec<String>,
}

/// Token buckets per client address (or authenticated pubkey), per core: see
/// `server::rates` for what "per core" allows.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// EVENTs (answered `OK false "rate-limited: ..."`).
    pub events: Rate,
    /// REQs and COUNTs (answered `CLOSED "rate-limited: ..."`).
    pub queries: Rate,
    /// New WebSocket connections (closed with 1013).
    pub connections: Rate,
    /// Addresses never limited. Loopback by default, for load tests and tools on the host:
    /// behind a reverse proxy on the same host, name it in `trusted_proxies`, so that each
    /// client is limited by its own address rather than exempt as loopback.
    pub exempt_ips: Vec<String>,
    /// Authenticated pubkeys never limited.
    pub exempt_pubkeys: Vec<String>,
    /// Keys each core tracks at most; past it, new keys share one bucket.
    pub tracked_max: usize,
}

/// A token bucket: `burst` at once, refilled at `per_minute`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            events: Rate { per_minute: 600, burst: 100 },
            queries: Rate { per_minute: 1_200, burst: 200 },
            connections: Rate { per_minute: 300, burst: 50 },
            exempt_ips: vec!["127.0.0.1".to_owned(), "::1".to_owned()],
            exempt_pubkeys: Vec::new(),
            tracked_max: 65_536,
        }
    }
}

/// NIP-42 authentication.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// When a connection gets its challenge: as it opens, or the first time the relay needs
    /// the client to authenticate (an `auth-required:` answer).
    pub challenge: ChallengeWhen,
    /// The relay's public URLs (`wss://relay.example.com`), one of which an AUTH event's
    /// `relay` tag must name. Empty: the address the client connected to (its Host header).
    pub relay_urls: Vec<String>,
    /// How far an AUTH event's `created_at` may be from now, in seconds.
    pub created_at_window_secs: u64,
    /// Pubkeys one connection may authenticate as.
    pub pubkeys_per_connection_max: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChallengeWhen {
    OnConnect,
    WhenNeeded,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            challenge: ChallengeWhen::OnConnect,
            relay_urls: Vec::new(),
            created_at_window_secs: 600,
            pubkeys_per_connection_max: 16,
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            write: WriteMode::Open,
            pubkeys_allowed: Vec::new(),
            pubkeys_denied: Vec::new(),
            kinds_allowed: Vec::new(),
            kinds_denied: Vec::new(),
            read: ReadMode::Open,
            private_kinds: PRIVATE_KINDS_DEFAULT.to_vec(),
            kind_windows: Vec::new(),
        }
    }
}

/// Who may write, and what.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    pub write: WriteMode,
    /// With `write = "auth"`: when not empty, the pubkeys a connection must have
    /// authenticated as. With `write = "allow_list"`: the authors whose events are stored.
    pub pubkeys_allowed: Vec<String>,
    /// Authors whose events are refused (`blocked:`), whatever the mode.
    pub pubkeys_denied: Vec<String>,
    /// When not empty, the only kinds stored or broadcast.
    pub kinds_allowed: Vec<u16>,
    /// Kinds refused (`blocked:`).
    pub kinds_denied: Vec<u16>,
    /// Who may read: everyone, or authenticated clients only.
    pub read: ReadMode,
    /// Kinds served (stored, live and counted) only to a connection authenticated as their
    /// author or as a pubkey they `p`-tag: DMs and gift wraps.
    pub private_kinds: Vec<u16>,
    /// `created_at` windows of their own for some kinds (others use `limits`').
    pub kind_windows: Vec<KindWindow>,
}

/// How old and how far ahead the events of some kinds may be dated.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KindWindow {
    pub kinds: Vec<u16>,
    /// Refuse events older than this many seconds; 0 accepts any age.
    #[serde(default)]
    pub past_secs: u64,
    /// Refuse events dated more than this many seconds ahead.
    #[serde(default = "default_future_secs")]
    pub future_secs: u64,
}

fn default_future_secs() -> u64 {
    15 * 60
}

/// The lists an operator changes while the relay runs: `policy.toml` in the data directory,
/// read at start, again on SIGHUP, and written by the management API (NIP-86), on top of
/// `[policy]`'s own lists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyLists {
    pub pubkeys_allowed: Vec<String>,
    pub pubkeys_denied: Vec<String>,
    pub kinds_allowed: Vec<u16>,
    pub kinds_denied: Vec<u16>,
    /// Event ids deleted where stored and refused when published (NIP-86 `banevent`).
    pub events_banned: Vec<String>,
    /// Client addresses refused a connection (NIP-86 `blockip`).
    pub ips_blocked: Vec<String>,
    /// Per pubkey banned through NIP-86 (`banpubkey`): its events dated up to this time
    /// (unix seconds, the ban's) are retired where stored, for good: `unbanpubkey` lets the
    /// pubkey publish again but keeps this entry.
    pub pubkeys_retired: std::collections::BTreeMap<String, u64>,
    /// NIP-11 `name`, `description` and `icon` in place of `[info]`'s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    /// Why entries were added (NIP-86's optional reasons), per list, by entry.
    pub reasons: ListReasons,
}

/// The reasons given for the entries of [`PolicyLists`]' lists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListReasons {
    pub pubkeys_allowed: std::collections::BTreeMap<String, String>,
    pub pubkeys_denied: std::collections::BTreeMap<String, String>,
    pub events_banned: std::collections::BTreeMap<String, String>,
    pub ips_blocked: std::collections::BTreeMap<String, String>,
}

/// The lists file's name in the data directory.
pub const POLICY_LISTS_FILE: &str = "policy.toml";

impl PolicyLists {
    /// The data directory's lists file; none when there is no file.
    pub fn load(data_dir: &Path) -> anyhow::Result<PolicyLists> {
        let path = data_dir.join(POLICY_LISTS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(PolicyLists::default()),
            Err(error) => anyhow::bail!("reading {}: {error}", path.display()),
        };
        let lists: PolicyLists = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        lists.check().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(lists)
    }

    /// Every entry well formed: pubkeys and event ids in lowercase hex, addresses parsed.
    pub fn check(&self) -> Result<(), String> {
        for key in self.pubkeys_allowed.iter().chain(&self.pubkeys_denied).chain(self.pubkeys_retired.keys()) {
            if crate::event::Pubkey::from_hex(key).is_none() {
                return Err(format!("{key:?} is not a pubkey (64 lowercase hex characters)"));
            }
        }
        for id in &self.events_banned {
            if crate::event::EventId::from_hex(id).is_none() {
                return Err(format!("{id:?} is not an event id (64 lowercase hex characters)"));
            }
        }
        for ip in &self.ips_blocked {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(format!("{ip:?} is not an IP address"));
            }
        }
        Ok(())
    }

    /// What these lists retire from storage (entries that do not parse are skipped: `check`
    /// refuses them before a file is written).
    pub fn retirements(&self) -> crate::store::Retirements {
        crate::store::Retirements {
            events: self
                .events_banned
                .iter()
                .filter_map(|id| crate::event::EventId::from_hex(id))
                .map(|id| id.0)
                .collect(),
            pubkeys: self
                .pubkeys_retired
                .iter()
                .filter_map(|(key, &until)| Some((crate::event::Pubkey::from_hex(key)?.0, until)))
                .collect(),
        }
    }

    /// Write the file durably (a temporary file, fsync, rename, fsync of the directory), so
    /// that a change acknowledged to its caller survives a crash.
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let header = "# Written by ringrelay's management API (NIP-86); edits by hand are kept, comments are not.\n";
        let text = format!("{header}{}", toml::to_string(self)?);
        let path = data_dir.join(POLICY_LISTS_FILE);
        crate::store::segment::write_durably(&path, text.as_bytes())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadMode {
    #[default]
    Open,
    /// REQ and COUNT need an authenticated connection (`auth-required:`).
    Auth,
}

/// The private kinds by default: 4 (NIP-04 DMs); 13, 14 and 15 (NIP-17's seals, chat and
/// file messages, which clients wrap but a careless one may publish bare); 1059 (NIP-59
/// gift wraps) and 1060 (kept private beside it).
pub const PRIVATE_KINDS_DEFAULT: [u16; 6] = [4, 13, 14, 15, 1059, 1060];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Anyone may publish (the deny lists still apply).
    #[default]
    Open,
    /// The connection must have authenticated (NIP-42) first.
    Auth,
    /// Only events whose author is in `pubkeys_allowed`.
    AllowList,
}

/// How the relay logs (to stderr). `RUST_LOG`, when set, overrides `level`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: a level (`error`, `warn`, `info`, `debug`, `trace`) or
    /// per-module directives such as `info,ringrelay::store=debug`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event; colours only when stderr is a terminal.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".to_owned(), format: LogFormat::Text }
    }
}

/// What NIP-11 tells clients about the relay.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayInfo {
    pub name: String,
    pub description: String,
    pub pubkey: Option<String>,
    pub contact: Option<String>,
    /// NIP-11 `limitation.payment_required`: writing needs a payment (admission is done by
    /// the operator's service, e.g. through the allow list).
    pub payment_required: bool,
    /// NIP-11 `payments_url`: where to pay.
    pub payments_url: Option<String>,
    /// NIP-11 `icon`: the URL of a round image.
    pub icon: Option<String>,
    /// NIP-11 `software`: the URL of the relay software's project, when the operator has one
    /// to name (absent by default: ringrelay has no public project page to point to).
    pub software: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayLimits {
    /// Largest WebSocket message (and frame) a client may send, in bytes.
    pub message_size_max: usize,
    pub event_size_max: usize,
    pub content_size_max: usize,
    pub tag_count_max: usize,
    /// Open subscriptions on one connection (strfry allows 200; clients open dozens).
    pub subscriptions_per_connection_max: usize,
    /// Queries (REQ and COUNT scans, deletion lookups) one connection may have running; past
    /// it the relay reads nothing more from the connection until one finishes.
    pub queries_per_connection_max: usize,
    /// Queries one core runs at once for its connections; the rest wait their turn, round
    /// robin over client addresses, then connections (`server::slots`).
    pub queries_per_core_max: usize,
    pub filters_per_req_max: usize,
    /// Largest `limit` served; larger ones are capped.
    pub limit_max: usize,
    /// The `limit` of a filter that has none.
    pub limit_default: usize,
    /// The most event JSON, in bytes, a REQ's answer holds; a larger answer is cut (each
    /// core's part newest first, then the whole) before EOSE.
    pub query_answer_bytes_max: usize,
    /// Most events a COUNT counts exactly.
    pub count_max: usize,
    /// Refuse events older than this many seconds; 0 accepts any age.
    pub created_at_past_max_secs: u64,
    /// Refuse events dated more than this many seconds ahead.
    pub created_at_future_max_secs: u64,
    /// Open connections from one IP address, summed over cores.
    pub connections_per_ip_max: usize,
    /// Bytes queued to one connection before it is a slow consumer and is closed.
    pub outbound_bytes_max: usize,
    /// Bytes queued to all of one core's connections; past it, a reader that is behind is
    /// closed as a slow consumer when a live event comes for it.
    pub outbound_bytes_per_core_max: usize,
    /// Live events buffered for a subscription while its stored events are being sent.
    pub pending_live_max: usize,
    /// A connection whose writes make no progress for this long is closed.
    pub write_stall_secs: u64,
    /// The kernel send buffer of each client socket (SO_SNDBUF), in bytes; the kernel doubles
    /// it for its bookkeeping. 0 leaves the kernel's autotuning.
    pub socket_send_buffer_size: usize,
    /// The kernel receive buffer of each client socket (SO_RCVBUF), in bytes; the kernel
    /// doubles it for its bookkeeping. 0 leaves the kernel's autotuning.
    pub socket_receive_buffer_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:7777".parse().expect("valid address"),
            metrics_listen: None,
            data_dir: PathBuf::from("ringrelay-data"),
            cores: 0,
            key_file: None,
            segment_size: SEGMENT_SIZE_DEFAULT,
            storage_reserve_bytes: STORAGE_RESERVE_BYTES_DEFAULT,
            compaction_dead_percent: 50,
            trusted_proxies: Vec::new(),
            log: LogConfig::default(),
            info: RelayInfo::default(),
            auth: AuthConfig::default(),
            policy: PolicyConfig::default(),
            rate_limits: RateLimitConfig::default(),
            management: ManagementConfig::default(),
            write_plugin: WritePluginConfig::default(),
            limits: RelayLimits::default(),
            negentropy: NegentropyConfig::default(),
            compression: crate::deflate::CompressionConfig::default(),
            search: crate::search::SearchConfig::default(),
            retention: RetentionConfig::default(),
            peering: PeeringConfig::default(),
            peers: Vec::new(),
            source: None,
        }
    }
}

impl Default for RelayInfo {
    fn default() -> Self {
        RelayInfo {
            name: "ringrelay".to_owned(),
            description: "A thread-per-core Nostr relay on io_uring".to_owned(),
            pubkey: None,
            contact: None,
            payment_required: false,
            payments_url: None,
            icon: None,
            software: None,
        }
    }
}

impl Default for RelayLimits {
    fn default() -> Self {
        let event = EventLimits::default();
        RelayLimits {
            message_size_max: event.event_size_max + 4 * 1024,
            event_size_max: event.event_size_max,
            content_size_max: event.content_size_max,
            tag_count_max: event.tag_count_max,
            subscriptions_per_connection_max: 200,
            queries_per_connection_max: 4,
            queries_per_core_max: 64,
            filters_per_req_max: 10,
            limit_max: 5_000,
            limit_default: 500,
            query_answer_bytes_max: 16 * 1024 * 1024,
            count_max: 100_000,
            created_at_past_max_secs: 0,
            created_at_future_max_secs: 15 * 60,
            connections_per_ip_max: 256,
            outbound_bytes_max: 1024 * 1024,
            outbound_bytes_per_core_max: 256 * 1024 * 1024,
            pending_live_max: 1_024,
            write_stall_secs: 5,
            socket_send_buffer_size: 128 * 1024,
            socket_receive_buffer_size: 64 * 1024,
        }
    }
}

impl RelayLimits {
    pub fn event_limits(&self) -> EventLimits {
        EventLimits {
            event_size_max: self.event_size_max,
            content_size_max: self.content_size_max,
            tag_count_max: self.tag_count_max,
            ..EventLimits::default()
        }
        .clamped()
    }
}

impl Config {
    /// Read a TOML file over the defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let mut config: Config = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        config.validate()?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let limits = &self.limits;
        anyhow::ensure!(limits.limit_default <= limits.limit_max, "limits.limit_default exceeds limits.limit_max");
        anyhow::ensure!(
            limits.message_size_max >= limits.event_size_max,
            "limits.message_size_max must be at least limits.event_size_max"
        );
        anyhow::ensure!(limits.filters_per_req_max >= 1, "limits.filters_per_req_max must be at least 1");
        anyhow::ensure!(limits.outbound_bytes_max >= 16 * 1024, "limits.outbound_bytes_max must be at least 16384");
        anyhow::ensure!(
            limits.outbound_bytes_per_core_max >= limits.outbound_bytes_max,
            "limits.outbound_bytes_per_core_max must be at least limits.outbound_bytes_max"
        );
        anyhow::ensure!(limits.queries_per_connection_max >= 1, "limits.queries_per_connection_max must be at least 1");
        anyhow::ensure!(limits.queries_per_core_max >= 1, "limits.queries_per_core_max must be at least 1");
        self.negentropy.validate()?;
        self.compression.validate()?;
        self.search.validate()?;
        self.validate_peering()?;
        anyhow::ensure!(
            limits.query_answer_bytes_max >= limits.event_size_max,
            "limits.query_answer_bytes_max must be at least limits.event_size_max"
        );
        anyhow::ensure!(limits.write_stall_secs >= 1, "limits.write_stall_secs must be at least 1");
        for url in &self.auth.relay_urls {
            anyhow::ensure!(
                crate::auth::RelayAddress::parse_url(url).is_some(),
                "auth.relay_urls: {url:?} is not a ws://, wss://, http:// or https:// URL"
            );
        }
        for ip in &self.trusted_proxies {
            anyhow::ensure!(ip.parse::<std::net::IpAddr>().is_ok(), "trusted_proxies: {ip:?} is not an IP address");
        }
        for ip in &self.rate_limits.exempt_ips {
            anyhow::ensure!(
                ip.parse::<std::net::IpAddr>().is_ok(),
                "rate_limits.exempt_ips: {ip:?} is not an IP address"
            );
        }
        for key in &self.rate_limits.exempt_pubkeys {
            anyhow::ensure!(
                crate::event::Pubkey::from_hex(key).is_some(),
                "rate_limits.exempt_pubkeys: {key:?} is not a pubkey"
            );
        }
        anyhow::ensure!(
            self.auth.pubkeys_per_connection_max >= 1,
            "auth.pubkeys_per_connection_max must be at least 1"
        );
        let policy = &self.policy;
        for key in policy.pubkeys_allowed.iter().chain(&policy.pubkeys_denied) {
            anyhow::ensure!(
                crate::event::Pubkey::from_hex(key).is_some(),
                "policy: {key:?} is not a pubkey (64 lowercase hex characters)"
            );
        }
        anyhow::ensure!(self.write_plugin.timeout_ms >= 1, "write_plugin.timeout_ms must be at least 1");
        anyhow::ensure!(
            self.write_plugin.queue_bytes_max >= 64 * 1024,
            "write_plugin.queue_bytes_max must be at least 65536"
        );
        for key in &self.management.admin_pubkeys {
            anyhow::ensure!(
                crate::event::Pubkey::from_hex(key).is_some(),
                "management.admin_pubkeys: {key:?} is not a pubkey (64 lowercase hex characters)"
            );
        }
        self.validate_storage()
    }

    /// The segment size, compaction and the store's size limit.
    /// Whether NIP-50 search is served: `[search] enabled`, on a store that is not encrypted
    /// (a search index holds the text in the clear).
    pub fn search_on(&self) -> bool {
        self.search.enabled && self.key_file.is_none()
    }

    fn validate_storage(&self) -> anyhow::Result<()> {
        let size = self.segment_size;
        anyhow::ensure!(
            (crate::limits::SEGMENT_SIZE_MIN..=crate::limits::SEGMENT_SIZE_MAX).contains(&size)
                && size.is_multiple_of(crate::limits::BLOCK_SIZE),
            "segment_size must be a multiple of {} between {} and {}",
            crate::limits::BLOCK_SIZE,
            crate::limits::SEGMENT_SIZE_MIN,
            crate::limits::SEGMENT_SIZE_MAX
        );
        anyhow::ensure!(self.compaction_dead_percent <= 100, "compaction_dead_percent is a share of records: 0 to 100");
        let max_store_bytes = self.retention.max_store_bytes;
        anyhow::ensure!(
            max_store_bytes == 0 || max_store_bytes >= 16 * size as u64,
            "retention.max_store_bytes must be 0 (no limit) or at least 16 segment_size"
        );
        Ok(())
    }

    /// The whole config as TOML, every key with its value (what `check-config` prints).
    fn validate_peering(&self) -> anyhow::Result<()> {
        let peering = &self.peering;
        for pubkey in &peering.pubkeys {
            anyhow::ensure!(
                crate::hex::decode_lower::<32>(pubkey.as_bytes()).is_some(),
                "peering.pubkeys: {pubkey:?} is not 64 lowercase hex characters"
            );
        }
        anyhow::ensure!(
            peering.outbound_bytes_max >= self.limits.outbound_bytes_max,
            "peering.outbound_bytes_max must be at least limits.outbound_bytes_max"
        );
        anyhow::ensure!(peering.items_max >= 1, "peering.items_max must be at least 1");
        anyhow::ensure!(
            1 <= peering.reconnect_min_secs && peering.reconnect_min_secs <= peering.reconnect_max_secs,
            "peering.reconnect_min_secs must be at least 1 and at most peering.reconnect_max_secs"
        );
        for peer in &self.peers {
            crate::fleet::client::RelayUrl::parse(&peer.url).map_err(|error| anyhow::anyhow!("peers: {error}"))?;
            crate::filter::Filter::from_text(&peer.filter)
                .map_err(|error| anyhow::anyhow!("peers: {}: filter: {}", peer.url, error.reason()))?;
        }
        Ok(())
    }

    /// The fleet's pubkeys, parsed (checked by `validate`).
    pub fn peer_pubkeys(&self) -> Vec<[u8; 32]> {
        self.peering.pubkeys.iter().filter_map(|key| crate::hex::decode_lower::<32>(key.as_bytes())).collect()
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the config serializes")
    }

    /// The executors to run: `cores`, or every CPU this process may run on (its affinity mask).
    pub fn core_count(&self) -> usize {
        match self.cores {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

#[cfg(test)]
mod tests;
