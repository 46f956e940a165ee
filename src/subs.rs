//! The live subscriptions of one core, indexed so an incoming event is matched without
//! scanning every subscription. Sans-IO.
//!
//! Each filter is posted under one key family, the most selective it has: its ids, else its
//! authors, else the values of one tag, else its kinds; a filter with none of these goes on
//! the scan list. An event looks up its own id, author, kind and tag values, gathers the
//! candidate subscriptions, and checks each candidate's filters in full.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::event::VerifiedEvent;
use crate::filter::{Filter, Matchable};
use crate::proto::SubId;

/// An event for live fan-out: its JSON once, and what matching needs. Shared by every core
/// (`Arc`), so the JSON is copied once per event, not per core.
#[derive(Debug)]
pub struct LiveEvent {
    pub json: Arc<str>,
    id: [u8; 32],
    pubkey: [u8; 32],
    created_at: u64,
    kind: u16,
    tags: Vec<(u8, Box<[u8]>)>,
    /// `<json>]` deflated on its own, once, for every recipient that takes compressed
    /// frames (permessage-deflate's shared mode); `None` when it would not be smaller.
    packed: OnceLock<Option<Box<[u8]>>>,
    /// Its search terms (NIP-50), for live search subscriptions.
    search_terms: OnceLock<Option<Vec<String>>>,
}

impl LiveEvent {
    /// The event's shared compressed copy, made by `pack` the first time it is asked for.
    pub fn packed(&self, pack: impl FnOnce(&str) -> Option<Box<[u8]>>) -> Option<&[u8]> {
        self.packed.get_or_init(|| pack(&self.json)).as_deref()
    }

    /// Whether `viewer` wrote this event or is `p`-tagged in it (who may see a private kind).
    pub fn is_for(&self, viewer: &[u8; 32]) -> bool {
        let hex = crate::hex::encode(viewer);
        &self.pubkey == viewer || self.tags.iter().any(|(letter, value)| *letter == b'p' && **value == *hex.as_bytes())
    }

    pub fn from_event(event: &VerifiedEvent) -> LiveEvent {
        LiveEvent {
            json: event.json().into(),
            id: event.id().0,
            pubkey: event.pubkey().0,
            created_at: event.created_at(),
            kind: event.kind(),
            tags: event.index_tags().iter().map(|t| (t.letter, t.value.clone())).collect(),
            packed: OnceLock::new(),
            search_terms: OnceLock::new(),
        }
    }
}

impl Matchable for LiveEvent {
    /// Analyzed once, by the first search subscription that looks, for all of them.
    fn search_terms(&self) -> Option<std::borrow::Cow<'_, [String]>> {
        let terms = self.search_terms.get_or_init(|| crate::search::text::search_terms_of_json(&self.json));
        terms.as_deref().map(std::borrow::Cow::Borrowed)
    }
    fn id(&self) -> &[u8; 32] {
        &self.id
    }
    fn pubkey(&self) -> &[u8; 32] {
        &self.pubkey
    }
    fn created_at(&self) -> u64 {
        self.created_at
    }
    fn kind(&self) -> u16 {
        self.kind
    }
    fn has_tag(&self, letter: u8, value: &[u8]) -> bool {
        self.tags.iter().any(|(l, v)| *l == letter && &v[..] == value)
    }
}

/// A connection on this core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

type Slot = u32;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Id([u8; 32]),
    Author([u8; 32]),
    Tag(u8, Box<[u8]>),
    Kind(u16),
}

struct Subscription {
    conn: ConnId,
    sub_id: SubId,
    filters: Vec<Filter>,
}

#[derive(Default)]
pub struct SubscriptionIndex {
    slots: Vec<Option<Subscription>>,
    free: Vec<Slot>,
    by_conn: HashMap<ConnId, HashMap<SubId, Slot>>,
    by_key: HashMap<Key, Vec<Slot>>,
    scan: Vec<Slot>,
    /// Per slot, the last match generation that visited it: dedupes candidates in O(1).
    seen: Vec<u64>,
    generation: u64,
}

impl SubscriptionIndex {
    /// Add or replace (`REQ` with an id already open on this connection) a subscription.
    pub fn insert(&mut self, conn: ConnId, sub_id: SubId, filters: Vec<Filter>) {
        self.remove(conn, &sub_id);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.seen.push(0);
                (self.slots.len() - 1) as Slot
            }
        };
        for filter in &filters {
            match keys_of(filter) {
                Some(keys) => keys.into_iter().for_each(|key| self.by_key.entry(key).or_default().push(slot)),
                None => self.scan.push(slot),
            }
        }
        self.by_conn.entry(conn).or_default().insert(sub_id.clone(), slot);
        self.slots[slot as usize] = Some(Subscription { conn, sub_id, filters });
    }

    /// Remove one subscription (`CLOSE`); returns whether it existed.
    pub fn remove(&mut self, conn: ConnId, sub_id: &SubId) -> bool {
        let Some(subs) = self.by_conn.get_mut(&conn) else { return false };
        let Some(slot) = subs.remove(sub_id) else { return false };
        if subs.is_empty() {
            self.by_conn.remove(&conn);
        }
        self.release(slot);
        true
    }

    /// Remove every subscription of a connection that went away.
    pub fn remove_conn(&mut self, conn: ConnId) {
        for (_, slot) in self.by_conn.remove(&conn).unwrap_or_default() {
            self.release(slot);
        }
    }

    fn release(&mut self, slot: Slot) {
        let subscription = self.slots[slot as usize].take().expect("a live slot");
        for filter in &subscription.filters {
            match keys_of(filter) {
                Some(keys) => {
                    for key in keys {
                        if let Some(list) = self.by_key.get_mut(&key) {
                            list.retain(|&s| s != slot);
                            if list.is_empty() {
                                self.by_key.remove(&key);
                            }
                        }
                    }
                }
                None => self.scan.retain(|&s| s != slot),
            }
        }
        self.free.push(slot);
    }

    /// How many subscriptions `conn` holds.
    pub fn count_for(&self, conn: ConnId) -> usize {
        self.by_conn.get(&conn).map_or(0, HashMap::len)
    }

    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every (connection, subscription) whose filters `event` matches, each once.
    pub fn matches(&mut self, event: &LiveEvent, out: &mut Vec<(ConnId, SubId)>) {
        self.generation += 1;
        let generation = self.generation;
        let mut visit = |slot: Slot, slots: &[Option<Subscription>], seen: &mut [u64]| {
            if seen[slot as usize] == generation {
                return;
            }
            seen[slot as usize] = generation;
            let subscription = slots[slot as usize].as_ref().expect("indexed slots are live");
            if subscription.filters.iter().any(|filter| filter.matches(event)) {
                out.push((subscription.conn, subscription.sub_id.clone()));
            }
        };
        let mut lookup = |key: &Key| {
            for &slot in self.by_key.get(key).map(Vec::as_slice).unwrap_or_default() {
                visit(slot, &self.slots, &mut self.seen);
            }
        };
        lookup(&Key::Id(*event.id()));
        lookup(&Key::Author(*event.pubkey()));
        lookup(&Key::Kind(event.kind()));
        for (letter, value) in &event.tags {
            lookup(&Key::Tag(*letter, value.clone()));
        }
        for &slot in &self.scan {
            visit(slot, &self.slots, &mut self.seen);
        }
    }
}

/// The keys a filter is posted under, or `None` for the scan list.
fn keys_of(filter: &Filter) -> Option<Vec<Key>> {
    if let Some(ids) = &filter.ids {
        return Some(ids.iter().map(|id| Key::Id(id.0)).collect());
    }
    if let Some(authors) = &filter.authors {
        return Some(authors.iter().map(|a| Key::Author(a.0)).collect());
    }
    if let Some(tag) = filter.tags.first() {
        return Some(tag.values.iter().map(|v| Key::Tag(tag.letter, v.clone())).collect());
    }
    filter.kinds.as_ref().map(|kinds| kinds.iter().map(|&k| Key::Kind(k)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventId, Pubkey};
    use crate::filter::TagFilter;

    /// A tiny deterministic generator, so the test needs no dependency.
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    fn key(n: u64) -> [u8; 32] {
        [n as u8; 32]
    }

    fn random_filter(rng: &mut Lcg) -> Filter {
        let mut filter = Filter::default();
        if rng.below(6) == 0 {
            filter.ids = Some((0..1 + rng.below(2)).map(|_| EventId(key(rng.below(20)))).collect());
        }
        if rng.below(3) == 0 {
            filter.authors = Some((0..1 + rng.below(2)).map(|_| Pubkey(key(100 + rng.below(5)))).collect());
        }
        if rng.below(3) == 0 {
            filter.kinds = Some((0..1 + rng.below(2)).map(|_| rng.below(4) as u16).collect());
        }
        if rng.below(3) == 0 {
            let values = (0..1 + rng.below(2)).map(|_| vec![b'a' + rng.below(3) as u8].into()).collect();
            filter.tags.push(TagFilter { letter: b"tp"[rng.below(2) as usize], values });
        }
        if rng.below(4) == 0 {
            filter.since = Some(rng.below(10));
        }
        filter
    }

    #[test]
    fn matches_equal_a_scan_of_every_subscription() {
        let mut rng = Lcg(42);
        let mut index = SubscriptionIndex::default();
        let mut naive: Vec<(ConnId, SubId, Vec<Filter>)> = Vec::new();
        let mut matched_rounds = 0;
        for round in 0..3_000u64 {
            let conn = ConnId(rng.below(30));
            let sub_id = SubId::new(&format!("s{}", rng.below(4))).unwrap();
            match rng.below(10) {
                0 => {
                    let existed = naive.iter().any(|(c, s, _)| *c == conn && *s == sub_id);
                    assert_eq!(index.remove(conn, &sub_id), existed);
                    naive.retain(|(c, s, _)| !(*c == conn && *s == sub_id));
                }
                1 => {
                    index.remove_conn(conn);
                    naive.retain(|(c, _, _)| *c != conn);
                }
                2..=5 => {
                    let filters: Vec<Filter> = (0..1 + rng.below(3)).map(|_| random_filter(&mut rng)).collect();
                    index.insert(conn, sub_id.clone(), filters.clone());
                    naive.retain(|(c, s, _)| !(*c == conn && *s == sub_id));
                    naive.push((conn, sub_id, filters));
                }
                _ => {
                    let event = LiveEvent {
                        json: Arc::from("{}"),
                        id: key(rng.below(20)),
                        pubkey: key(100 + rng.below(5)),
                        kind: rng.below(4) as u16,
                        created_at: rng.below(10),
                        tags: (0..rng.below(3))
                            .map(|_| (b"tp"[rng.below(2) as usize], vec![b'a' + rng.below(3) as u8].into()))
                            .collect(),
                        packed: OnceLock::new(),
                        search_terms: OnceLock::new(),
                    };
                    let mut got = Vec::new();
                    index.matches(&event, &mut got);
                    got.sort();
                    let mut expected: Vec<(ConnId, SubId)> = naive
                        .iter()
                        .filter(|(_, _, filters)| filters.iter().any(|f| f.matches(&event)))
                        .map(|(c, s, _)| (*c, s.clone()))
                        .collect();
                    expected.sort();
                    matched_rounds += usize::from(!expected.is_empty());
                    assert_eq!(got, expected, "round {round}");
                }
            }
            assert_eq!(index.len(), naive.len(), "round {round}");
        }
        assert!(!naive.is_empty());
        assert!(matched_rounds > 500, "events must match subscriptions often, matched in {matched_rounds} rounds");
    }
}
