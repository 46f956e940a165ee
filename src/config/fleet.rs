//! The configuration of a fleet (docs/fleet.md): NIP-77 syncs served (`[negentropy]`), how
//! this relay meets its peers (`[peering]`) and each peer (`[[peers]]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A fleet (docs/fleet.md): how this relay meets its peers, and what a peer's connection
/// to it may do.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeeringConfig {
    /// This relay's identity toward its peers: a file holding a secret key (64 hex
    /// characters), used to answer their NIP-42 challenges. Without it, peers are met
    /// unauthenticated (and serve it no private kinds).
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) trusted for `wss://` peers besides the Mozilla roots (a fleet's
    /// own CA).
    pub ca_file: Option<PathBuf>,
    /// The fleet's pubkeys (64 hex each): a connection authenticated as one is a peer. It
    /// reads private kinds, is not rate-limited, and may have `outbound_bytes_max` queued.
    pub pubkeys: Vec<String>,
    /// Bytes queued to a peer's connection before it is cut off as a slow reader (it then
    /// catches up by a negentropy sync, not by replaying everything).
    pub outbound_bytes_max: usize,
    /// Most events one catch-up sync with a peer may span (40 bytes each while it runs).
    pub items_max: usize,
    /// The first pause before reconnecting to a peer; it doubles up to `reconnect_max_secs`.
    pub reconnect_min_secs: u64,
    pub reconnect_max_secs: u64,
}

impl Default for PeeringConfig {
    fn default() -> Self {
        PeeringConfig {
            key_file: None,
            ca_file: None,
            pubkeys: Vec::new(),
            outbound_bytes_max: 64 << 20,
            items_max: 5_000_000,
            reconnect_min_secs: 1,
            reconnect_max_secs: 60,
        }
    }
}

/// One peer (`[[peers]]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// `ws://host:port/path`.
    pub url: String,
    /// `down` (fetch what it has), `up` (send what we have) or `both`.
    #[serde(default = "PeerConfig::both")]
    pub direction: crate::fleet::sync::Direction,
    /// The NIP-01 filter (JSON) of what is kept converged.
    #[serde(default = "PeerConfig::everything")]
    pub filter: String,
    /// Stream new events as they come (a subscription each way the direction allows).
    #[serde(default = "PeerConfig::yes")]
    pub live: bool,
    /// Seconds between catch-up syncs (one also runs at start and after every reconnect);
    /// 0: only those.
    #[serde(default = "PeerConfig::hourly")]
    pub interval_secs: u64,
}

impl PeerConfig {
    fn both() -> crate::fleet::sync::Direction {
        crate::fleet::sync::Direction::Both
    }

    fn everything() -> String {
        "{}".to_owned()
    }

    fn yes() -> bool {
        true
    }

    fn hourly() -> u64 {
        3600
    }
}

/// NIP-77 negentropy syncs (`NEG-OPEN`, `NEG-MSG`, `NEG-CLOSE`): each holds its filter's
/// (created_at, id) set, 40 bytes an event, until it is closed or idle.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NegentropyConfig {
    /// Serve NIP-77 (and list 77 in NIP-11).
    pub enabled: bool,
    /// Most events one sync may span; past it `NEG-ERR "blocked: ..."` (strfry's default is 1M).
    pub items_max: usize,
    /// Most events the syncs of one core hold together; past it a new sync is refused.
    pub items_per_core_max: usize,
    /// Syncs one connection may have open.
    pub syncs_per_connection_max: usize,
    /// Most bytes of one negentropy message the relay sends (0: no limit; else at least
    /// 4,096): the client asks again for the rest. Hex doubles it on the wire.
    pub frame_size_max: u64,
    /// A sync with no message for this long is closed with `NEG-ERR "closed: ..."`.
    pub idle_secs: u64,
    /// Syncs over sets of at least this many events answer each message on glommio's
    /// blocking thread rather than on the core (~4 ms a message at 500,000 events).
    pub answer_off_core_from: usize,
}

impl NegentropyConfig {
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.items_max >= 1, "negentropy.items_max must be at least 1");
        anyhow::ensure!(
            self.items_per_core_max >= self.items_max,
            "negentropy.items_per_core_max must be at least negentropy.items_max"
        );
        anyhow::ensure!(
            self.frame_size_max == 0 || self.frame_size_max >= 4096,
            "negentropy.frame_size_max must be 0 (no limit) or at least 4096"
        );
        anyhow::ensure!(self.idle_secs >= 1, "negentropy.idle_secs must be at least 1");
        Ok(())
    }
}

impl Default for NegentropyConfig {
    fn default() -> Self {
        NegentropyConfig {
            enabled: true,
            items_max: 500_000,
            items_per_core_max: 2_000_000,
            syncs_per_connection_max: 4,
            frame_size_max: 60_000,
            idle_secs: 60,
            answer_off_core_from: 50_000,
        }
    }
}
