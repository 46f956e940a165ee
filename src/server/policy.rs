//! Who may write what: the policy stage of ingest, run before the signature. Compiled once
//! per core from `[policy]`, so a check is a few hash lookups. An open relay with empty
//! lists looks at nothing but the event's `protected` flag.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use super::refusal::Prefix::{AuthRequired, Blocked, Restricted};
use super::refusal::Refusal;
use crate::config::{PolicyConfig, PolicyLists, WriteMode};
use crate::event::{ParsedEvent, Pubkey};

pub struct Policy {
    write: WriteMode,
    allowed: HashSet<[u8; 32]>,
    denied: HashSet<[u8; 32]>,
    kinds_allowed: HashSet<u16>,
    kinds_denied: HashSet<u16>,
    /// Event ids banned by the operator (NIP-86 `banevent`).
    events_banned: HashSet<[u8; 32]>,
    /// Per pubkey banned through NIP-86: its events dated up to then were retired, and are
    /// refused if sent again, after an unban too.
    pubkeys_retired: std::collections::HashMap<[u8; 32], u64>,
    /// Client addresses refused a connection (NIP-86 `blockip`).
    ips_blocked: HashSet<IpAddr>,
    /// Per kind: how old and how far ahead `created_at` may be, in seconds.
    windows: HashMap<u16, (u64, u64)>,
}

impl Policy {
    pub fn new(config: &PolicyConfig) -> Policy {
        Policy::with_lists(config, &PolicyLists::default())
    }

    /// `[policy]` with the lists file's entries added to its lists.
    pub fn with_lists(config: &PolicyConfig, lists: &PolicyLists) -> Policy {
        // Banned ids and retired pubkeys, parsed once.
        let retirements = lists.retirements();
        let keys = |first: &[String], second: &[String]| {
            first.iter().chain(second).filter_map(|key| Pubkey::from_hex(key)).map(|key| key.0).collect()
        };
        Policy {
            write: config.write,
            allowed: keys(&config.pubkeys_allowed, &lists.pubkeys_allowed),
            denied: keys(&config.pubkeys_denied, &lists.pubkeys_denied),
            kinds_allowed: config.kinds_allowed.iter().chain(&lists.kinds_allowed).copied().collect(),
            kinds_denied: config.kinds_denied.iter().chain(&lists.kinds_denied).copied().collect(),
            events_banned: retirements.events.into_iter().collect(),
            ips_blocked: lists.ips_blocked.iter().filter_map(|ip| ip.parse().ok()).map(canonical).collect(),
            pubkeys_retired: retirements.pubkeys.into_iter().collect(),
            windows: config
                .kind_windows
                .iter()
                .flat_map(|window| window.kinds.iter().map(|&kind| (kind, (window.past_secs, window.future_secs))))
                .collect(),
        }
    }

    /// Whether judging `event` needs the pubkeys its connection authenticated as.
    pub fn needs_auth(&self, event: &ParsedEvent) -> bool {
        self.write == WriteMode::Auth || event.protected
    }

    /// Whether this relay restricts writes beyond the deny lists (NIP-11 `restricted_writes`).
    pub fn restricts_writes(&self) -> bool {
        self.write != WriteMode::Open || !self.kinds_allowed.is_empty()
    }

    /// The `created_at` window of `kind` (past, future), when it has its own.
    pub fn window(&self, kind: u16) -> Option<(u64, u64)> {
        self.windows.get(&kind).copied()
    }

    pub fn write_mode(&self) -> WriteMode {
        self.write
    }

    /// Whether connections from `ip` are refused.
    pub fn blocks(&self, ip: IpAddr) -> bool {
        !self.ips_blocked.is_empty() && self.ips_blocked.contains(&canonical(ip))
    }

    /// The banned event ids.
    pub fn events_banned(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.events_banned.iter()
    }

    /// The write rules, in order: deny lists, kind lists, the write mode, NIP-70.
    pub fn judge(&self, event: &ParsedEvent, authed: &[Pubkey]) -> Result<(), Refusal> {
        self.judge_from(event, authed, false)
    }

    /// The same rules for an event `fleet` says came from a relay of this one's fleet (a peer,
    /// docs/fleet.md): the member that took it first applied the write mode and NIP-70 to its
    /// publisher, so only the lists (deny, bans, kinds, members) are applied again.
    pub fn judge_from(&self, event: &ParsedEvent, authed: &[Pubkey], fleet: bool) -> Result<(), Refusal> {
        let author = &event.pubkey.0;
        if self.denied.contains(author) {
            return Err(Refusal::new(Blocked, "pubkey_denied", "this pubkey may not publish here"));
        }
        if self.events_banned.contains(&event.id.0) {
            return Err(Refusal::new(Blocked, "event_banned", "this event is banned here"));
        }
        if self.pubkeys_retired.get(author).is_some_and(|&until| event.created_at <= until) {
            return Err(Refusal::new(Blocked, "pubkey_denied", "this pubkey's events up to its ban were removed here"));
        }
        if self.kinds_denied.contains(&event.kind)
            || !self.kinds_allowed.is_empty() && !self.kinds_allowed.contains(&event.kind)
        {
            let message = format!("events of kind {} are not accepted here", event.kind);
            return Err(Refusal::new(Blocked, "kind_denied", message));
        }
        match self.write {
            WriteMode::Open => {}
            WriteMode::Auth if fleet => {}
            WriteMode::Auth if authed.is_empty() => {
                let message = "this relay accepts events from authenticated clients only";
                return Err(Refusal::new(AuthRequired, "auth_required", message));
            }
            WriteMode::Auth => {
                if !self.allowed.is_empty() && !authed.iter().any(|key| self.allowed.contains(&key.0)) {
                    return Err(Refusal::new(Restricted, "restricted", "your pubkey may not publish here"));
                }
            }
            WriteMode::AllowList => {
                if !self.allowed.contains(author) {
                    return Err(Refusal::new(
                        Blocked,
                        "not_allowed",
                        "this relay accepts events from its members only",
                    ));
                }
            }
        }
        if event.protected && !fleet && !authed.iter().any(|key| &key.0 == author) {
            let prefix = if authed.is_empty() { AuthRequired } else { Restricted };
            return Err(Refusal::new(prefix, "protected", "this event may only be published by its author"));
        }
        Ok(())
    }
}

/// An IPv4 client on an IPv6 socket arrives as `::ffff:a.b.c.d`; lists name it `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(author: u8, kind: u16, protected: bool) -> ParsedEvent {
        ParsedEvent {
            id: crate::event::EventId([0; 32]),
            pubkey: Pubkey([author; 32]),
            sig: [0; 64],
            created_at: 1,
            kind,
            index_tags: Vec::new(),
            expiration: None,
            protected,
            json: String::new(),
        }
    }

    fn hex(byte: u8) -> String {
        crate::hex::encode(&[byte; 32])
    }

    fn prefix(result: Result<(), Refusal>) -> String {
        match result {
            Ok(()) => "ok".to_owned(),
            Err(refusal) => refusal.prefix.text().to_owned(),
        }
    }

    #[test]
    fn an_open_relay_refuses_only_its_deny_lists_and_foreign_protected_events() {
        let policy = Policy::new(&PolicyConfig {
            pubkeys_denied: vec![hex(9)],
            kinds_denied: vec![4],
            ..PolicyConfig::default()
        });
        assert_eq!(prefix(policy.judge(&event(1, 1, false), &[])), "ok");
        assert_eq!(prefix(policy.judge(&event(9, 1, false), &[])), "blocked");
        assert_eq!(prefix(policy.judge(&event(1, 4, false), &[])), "blocked");
        assert_eq!(prefix(policy.judge(&event(1, 1, true), &[])), "auth-required");
        assert!(policy.judge(&event(1, 1, true), &[]).unwrap_err().wants_challenge());
        // From a relay of the fleet: NIP-70 was its to apply; the deny list still holds.
        assert_eq!(prefix(policy.judge_from(&event(1, 1, true), &[Pubkey([7; 32])], true)), "ok");
        assert_eq!(prefix(policy.judge_from(&event(9, 1, false), &[Pubkey([7; 32])], true)), "blocked");
        assert_eq!(prefix(policy.judge(&event(1, 1, true), &[Pubkey([2; 32])])), "restricted");
        assert_eq!(prefix(policy.judge(&event(1, 1, true), &[Pubkey([2; 32]), Pubkey([1; 32])])), "ok");
        assert!(!policy.restricts_writes());
    }

    #[test]
    fn the_lists_file_bans_events_and_blocks_addresses() {
        let lists = PolicyLists {
            events_banned: vec![hex(0)],
            ips_blocked: vec!["192.0.2.7".to_owned(), "2001:db8::1".to_owned()],
            ..PolicyLists::default()
        };
        let policy = Policy::with_lists(&PolicyConfig::default(), &lists);
        assert_eq!(prefix(policy.judge(&event(1, 1, false), &[])), "blocked", "the test event's id is all zeros");
        assert!(policy.blocks("192.0.2.7".parse().unwrap()));
        assert!(policy.blocks("::ffff:192.0.2.7".parse().unwrap()), "as an IPv6 socket sees it");
        assert!(policy.blocks("2001:db8::1".parse().unwrap()));
        assert!(!policy.blocks("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn auth_mode_needs_an_authenticated_and_allowed_pubkey() {
        let config = PolicyConfig { write: WriteMode::Auth, pubkeys_allowed: vec![hex(5)], ..PolicyConfig::default() };
        let policy = Policy::new(&config);
        assert_eq!(prefix(policy.judge(&event(1, 1, false), &[])), "auth-required");
        assert_eq!(prefix(policy.judge(&event(1, 1, false), &[Pubkey([6; 32])])), "restricted");
        // An allowed member may publish anyone's (signed) events, as a client relaying them.
        assert_eq!(prefix(policy.judge(&event(1, 1, false), &[Pubkey([5; 32])])), "ok");
        assert!(policy.restricts_writes());
    }

    #[test]
    fn allow_list_mode_takes_only_its_members_events() {
        let config = PolicyConfig {
            write: WriteMode::AllowList,
            pubkeys_allowed: vec![hex(5)],
            kinds_allowed: vec![1, 7],
            ..PolicyConfig::default()
        };
        let policy = Policy::new(&config);
        assert_eq!(prefix(policy.judge(&event(5, 1, false), &[])), "ok");
        assert_eq!(prefix(policy.judge(&event(6, 1, false), &[])), "blocked");
        assert_eq!(prefix(policy.judge(&event(5, 3, false), &[])), "blocked");
    }
}
