//! `Gate`: what decides, on one core, who may do what. The write policy and the lists it
//! is compiled from, the rate buckets, the write plugin, the signature check's key cache,
//! and the addresses this relay answers to. Sessions and storage ask it; it asks neither.

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::lists::{ListsFile, Versioned};
use super::plugin::Plugin;
use super::policy::Policy;
use super::rates::{RateKey, RateLimiter, Work};
use super::stats::Stats;
use crate::auth::RelayAddress;
use crate::config::Config;
use crate::event::{EventError, KeyCache, ParsedEvent, Pubkey, VerifiedEvent};
use crate::store::Privacy;

/// What a core is given at start for its gate besides the config: what it shares with the
/// other cores, and its plugin.
pub struct GateStart {
    /// The lists file's writer.
    pub lists_file: Arc<ListsFile>,
    /// The lists as read at start.
    pub lists: Versioned,
    /// This core's write-policy plugin (its own; not shared).
    pub plugin: Option<Plugin>,
    /// This relay's own pubkey toward its peers (`peering.key_file`), if it has one.
    pub identity: Option<[u8; 32]>,
}

pub struct Gate {
    config: Arc<Config>,
    /// The write policy, compiled from `[policy]` and the lists; replaced whole when the
    /// lists are put in force.
    policy: RefCell<Rc<Policy>>,
    /// The lists in force, and their generation.
    lists: RefCell<Versioned>,
    /// The lists file's one writer, shared by every core (SIGHUP, NIP-86).
    pub lists_file: Arc<ListsFile>,
    /// Set by SIGHUP; the core that watches it reloads the lists everywhere.
    reload_requested: RefCell<Option<Arc<AtomicBool>>>,
    /// This core's write-policy plugin (`[write_plugin]`), when one is configured.
    pub plugin: Option<Plugin>,
    /// This core's token buckets (`[rate_limits]`).
    rates: RefCell<RateLimiter>,
    keys: RefCell<KeyCache>,
    /// Kinds served only to their author or a `p`-tagged pubkey (`policy.private_kinds`).
    pub private_kinds: Arc<[u16]>,
    /// The addresses an AUTH event may name: `auth.relay_urls`, parsed (empty: the Host a
    /// connection dialled).
    relay_addresses: Vec<RelayAddress>,
    /// Proxies whose `X-Forwarded-For` names the client (`trusted_proxies`).
    pub trusted_proxies: Vec<IpAddr>,
    /// The fleet's pubkeys (`peering.pubkeys` and this relay's own): a connection
    /// authenticated as one is a peer.
    peers: Vec<[u8; 32]>,
    stats: Rc<Stats>,
}

impl Gate {
    pub fn new(config: Arc<Config>, start: GateStart, stats: Rc<Stats>) -> Gate {
        let GateStart { lists_file, lists, plugin, identity } = start;
        let peers = config.peer_pubkeys().into_iter().chain(identity).collect();
        Gate {
            policy: RefCell::new(Rc::new(Policy::with_lists(&config.policy, &lists.lists))),
            lists: RefCell::new(lists),
            lists_file,
            reload_requested: RefCell::new(None),
            plugin,
            rates: RefCell::new(RateLimiter::new(&config.rate_limits)),
            keys: RefCell::new(KeyCache::new()),
            private_kinds: config.policy.private_kinds.iter().copied().collect(),
            relay_addresses: config.auth.relay_urls.iter().filter_map(|url| RelayAddress::parse_url(url)).collect(),
            trusted_proxies: config
                .trusted_proxies
                .iter()
                .filter_map(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| ip.to_canonical())
                .collect(),
            peers,
            stats,
            config,
        }
    }

    /// The write policy in force.
    pub fn policy(&self) -> Rc<Policy> {
        self.policy.borrow().clone()
    }

    /// The lists in force (`policy.toml`, as last put in force).
    pub fn lists(&self) -> Versioned {
        self.lists.borrow().clone()
    }

    /// `lists` compiled into a write policy, unless newer lists are in force already.
    pub fn compile(&self, lists: &Versioned) -> Option<Rc<Policy>> {
        (lists.generation >= self.lists.borrow().generation)
            .then(|| Rc::new(Policy::with_lists(&self.config.policy, &lists.lists)))
    }

    /// Put a policy compiled by [`Gate::compile`] in force with its lists.
    pub fn put_in_force(&self, policy: Rc<Policy>, lists: Versioned) {
        *self.policy.borrow_mut() = policy;
        *self.lists.borrow_mut() = lists;
    }

    /// Make this core the one that reloads the lists when `flag` is set (SIGHUP).
    pub fn watch_reloads(&self, flag: Arc<AtomicBool>) {
        *self.reload_requested.borrow_mut() = Some(flag);
    }

    /// Whether a reload was asked for since the last call (only on the watching core).
    pub fn take_reload_request(&self) -> bool {
        self.reload_requested.borrow().as_ref().is_some_and(|flag| flag.swap(false, Ordering::SeqCst))
    }

    /// The rate key of a client at `ip` authenticated as `pubkeys`; `None` when exempt.
    pub fn rate_key(&self, ip: IpAddr, pubkeys: &[Pubkey]) -> Option<RateKey> {
        if self.is_peer(pubkeys.iter().map(|key| &key.0)) {
            return None;
        }
        self.rates.borrow().key(ip, pubkeys)
    }

    /// Whether any of `pubkeys` is one of the fleet's (a peer relay, or this one).
    pub fn is_peer<'a>(&self, mut pubkeys: impl Iterator<Item = &'a [u8; 32]>) -> bool {
        !self.peers.is_empty() && pubkeys.any(|key| self.peers.contains(key))
    }

    /// Whether `key` is over its rate for `work` (one token is taken when it is not);
    /// counted in the metrics when it is.
    pub fn over_rate_of(&self, key: RateKey, work: Work) -> bool {
        let admitted = self.rates.borrow_mut().admit(key, work, Instant::now());
        if !admitted {
            self.stats.rate_limited.inc(work);
        }
        !admitted
    }

    /// Forget the buckets of clients idle long enough to be full again.
    pub fn forget_idle(&self) {
        self.rates.borrow_mut().forget_idle(Instant::now());
    }

    /// How many rate buckets are held.
    pub fn rate_keys(&self) -> usize {
        self.rates.borrow().tracked()
    }

    /// The signature check, with this core's cache of authors' keys.
    pub fn verify(&self, event: ParsedEvent) -> Result<VerifiedEvent, EventError> {
        VerifiedEvent::verify_cached(event, &mut self.keys.borrow_mut())
    }

    /// What a reader authenticated as `viewers` may not see: the private kinds, unless it
    /// is their author or a recipient.
    /// A peer relay reads them all: it serves them under the same rules.
    pub fn privacy(&self, viewers: Arc<[[u8; 32]]>) -> Privacy {
        let kinds = match self.is_peer(viewers.iter()) {
            true => Arc::from([]),
            false => self.private_kinds.clone(),
        };
        Privacy { kinds, viewers }
    }

    /// The addresses a client may name this relay by (NIP-42, NIP-62): the configured
    /// `auth.relay_urls`, else `host`, the Host it dialled.
    pub fn addresses(&self, host: Option<RelayAddress>) -> Vec<RelayAddress> {
        match &self.relay_addresses[..] {
            [] => host.into_iter().collect(),
            configured => configured.to_vec(),
        }
    }
}
