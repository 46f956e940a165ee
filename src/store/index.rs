//! One shard's indexes and the storage rules that use them (duplicates, replaceable and
//! addressable versions, NIP-09 deletions, NIP-40 expiration, NIP-62 vanish).
//!
//! Two halves. The postings and entries live in one layer per segment (`layer.rs`): in
//! memory for the segment being written, a mapped part for a sealed one. What the rules
//! keep (ids, versions, deletions, vanish requests, expirations, which records are dead)
//! is shard-wide and resident, rebuilt at open by one pass over the parts' entries in
//! append order, with the same decisions a replay of the records would make.
//! Sans-IO: the shard tells it where records lie; it never touches a file.

use std::collections::{BTreeSet, VecDeque};
use std::hash::BuildHasher;
use std::ops::RangeInclusive;

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

use super::layer::{Layer, MemLayer};
use crate::event::kind::{parse_address, KIND_DELETION, KIND_GIFT_WRAP, KIND_VANISH};
use crate::event::KindClass;
use crate::limits::SHARD_EVENT_COUNT_MAX;

pub use super::layer::Run;

mod compact;
mod parts;

pub use compact::{Candidate, Keep};

/// A record's ordinal within its shard, in append order.
pub type EventNo = u32;

/// Where a record lies: the shard's segment slot and the byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub segment: u32,
    pub offset: u32,
}

/// What the indexes know of an event: 56 bytes in a memory layer, read from the entry in a
/// part, its dead flag from the shard-wide set.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub id: [u8; 32],
    pub created_at: u64,
    pub loc: Loc,
    pub author: u32,
    pub kind: u16,
    pub flags: u8,
}

pub const FLAG_DEAD: u8 = 1;
pub const FLAG_EXPIRES: u8 = 2;

impl Entry {
    pub fn is_dead(&self) -> bool {
        self.flags & FLAG_DEAD != 0
    }
    /// Newest first, ties by lowest id (NIP-01); `Less` sorts first.
    pub fn order_key(&self) -> (std::cmp::Reverse<u64>, [u8; 32]) {
        (std::cmp::Reverse(self.created_at), self.id)
    }
}

/// Every date: the window of a walk over all layers.
const ALL_DATES: RangeInclusive<u64> = 0..=u64::MAX;

/// What the rules need to know of an event, from the wire or from a stored record.
pub struct Facts<'a> {
    pub id: &'a [u8; 32],
    pub pubkey: &'a [u8; 32],
    pub created_at: u64,
    pub kind: u16,
    pub expiration: Option<u64>,
    /// Single-letter tags with their first value, in event order.
    pub tags: &'a [(u8, &'a [u8])],
}

impl Facts<'_> {
    fn d_tag(&self) -> &[u8] {
        self.tags.iter().find(|(letter, _)| *letter == b'd').map(|(_, value)| *value).unwrap_or_default()
    }
}

/// Why the rules refuse an event; `reason()` is the NIP-01 `OK` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Its author deleted it (NIP-09), by id or by address.
    Deleted,
    /// A newer version of this replaceable or addressable event is stored.
    Superseded,
    /// Its NIP-40 expiration has passed.
    Expired,
    /// The shard holds its maximum number of records.
    ShardFull,
    /// Its author asked this relay to forget everything up to a date (NIP-62).
    Vanished,
}

impl Rejection {
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Deleted => "blocked: this event was deleted by its author",
            Rejection::Superseded => "duplicate: a newer version of this event is stored",
            Rejection::Expired => "invalid: this event has expired",
            Rejection::ShardFull => "error: this relay's storage is full",
            Rejection::Vanished => "blocked: this pubkey asked this relay to delete its events up to a later date",
        }
    }
}

/// The rules' decision on one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Store it, and retire these records once it is durable.
    Store {
        kills: Vec<EventNo>,
    },
    /// Already stored as this event number (`OK true` with `duplicate:`, once it is durable).
    Duplicate(EventNo),
    /// Ephemeral: broadcast, never stored.
    Ephemeral,
    Rejected(Rejection),
}

/// (author, kind, `d`): the key of a replaceable or addressable event.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct VersionKey {
    author: u32,
    kind: u16,
    d: Box<[u8]>,
}

/// Per-segment record counts, for compaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentStat {
    pub records: u32,
    pub dead: u32,
}

#[derive(Default)]
pub struct Index {
    /// One per segment, in event-number order; each numbers its events from its `base`.
    layers: Vec<Layer>,
    len: u32,
    /// One bit per event: retired (replaced, deleted, expired, vanished, banned), or dead on
    /// arrival at replay.
    dead: Vec<u64>,
    hasher: DefaultHashBuilder,
    by_id: HashTable<EventNo>,
    authors: HashMap<[u8; 32], u32>,
    author_keys: Vec<[u8; 32]>,
    versions: HashMap<VersionKey, EventNo>,
    deleted_ids: HashMap<[u8; 32], u32>,
    deleted_addresses: HashMap<VersionKey, u64>,
    /// Per author: the newest `created_at` of its requests to vanish (NIP-62). Its events up
    /// to then are retired and refused.
    vanished: HashMap<u32, u64>,
    expiring: BTreeSet<(u64, EventNo)>,
    expiration_of: HashMap<EventNo, u64>,
    /// (killer, victim): the victim retires when the killer becomes durable.
    pending_kills: VecDeque<(EventNo, EventNo)>,
    durable_count: u32,
    segment_stats: Vec<SegmentStat>,
    live_count: u64,
    /// Live events per kind and per author, so a COUNT of one key needs no scan.
    live_by_kind: HashMap<u16, u64>,
    live_by_author: Vec<u64>,
    /// While loading, postings are appended unsorted and sorted once by `finish_bulk`.
    bulk: bool,
    /// Heap bytes of the versions' `d` values, kept as they grow.
    version_d_bytes: usize,
    /// The events retired since the last [`Index::take_retired`], oldest first, when
    /// someone follows them (the search index): at most `RETIRED_LOG_COUNT_MAX`, the oldest
    /// let go past it.
    retired_log: Option<std::collections::VecDeque<EventNo>>,
}

/// The layer holding event `no`.
fn layer_of(layers: &[Layer], no: EventNo) -> &Layer {
    match layers.last() {
        Some(last) if last.base() <= no => last,
        _ => &layers[layers.partition_point(|layer| layer.base() <= no) - 1],
    }
}

impl Index {
    /// An empty index that appends postings unsorted until [`Index::finish_bulk`].
    pub fn new_bulk() -> Index {
        Index { bulk: true, ..Index::default() }
    }

    pub fn len(&self) -> u32 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn live_count(&self) -> u64 {
        self.live_count
    }
    /// Events numbered below this are on disk and may be served.
    pub fn durable_count(&self) -> u32 {
        self.durable_count
    }
    pub fn segment_stats(&self) -> &[SegmentStat] {
        &self.segment_stats
    }
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    pub fn entry(&self, no: EventNo) -> Entry {
        let layer = layer_of(&self.layers, no);
        let mut entry = layer.entry(no - layer.base());
        if self.is_dead(no) {
            entry.flags |= FLAG_DEAD;
        }
        entry
    }

    pub fn created_at(&self, no: EventNo) -> u64 {
        let layer = layer_of(&self.layers, no);
        layer.created_at(no - layer.base())
    }

    fn is_dead(&self, no: EventNo) -> bool {
        self.dead[no as usize / 64] & (1 << (no % 64)) != 0
    }

    pub fn lookup_id(&self, id: &[u8; 32]) -> Option<EventNo> {
        let hash = self.hasher.hash_one(id);
        self.by_id
            .find(hash, |&no| {
                let layer = layer_of(&self.layers, no);
                layer.id(no - layer.base()) == id
            })
            .copied()
    }

    pub fn author_of(&self, pubkey: &[u8; 32]) -> Option<u32> {
        self.authors.get(pubkey).copied()
    }
    pub fn author_key(&self, author: u32) -> &[u8; 32] {
        &self.author_keys[author as usize]
    }

    /// An author's events, as sorted runs (one or more per layer).
    pub fn author_runs(&self, author: u32) -> Vec<Run<'_>> {
        self.author_runs_within(author, &ALL_DATES)
    }
    pub fn kind_runs(&self, kind: u16) -> Vec<Run<'_>> {
        self.kind_runs_within(kind, &ALL_DATES)
    }
    /// The events carrying tag `letter` = `value`, as sorted runs; hash collisions are
    /// possible, so callers check the record's tags.
    pub fn tag_runs(&self, letter: u8, value: &[u8]) -> Vec<Run<'_>> {
        self.tag_runs_within(letter, value, &ALL_DATES)
    }
    pub fn global_runs(&self) -> Vec<Run<'_>> {
        self.global_runs_within(&ALL_DATES)
    }

    /// The layers that may hold events dated in `window` (a segment written in date order
    /// holds a narrow range, so a scan with `since`, or resuming after its newest events,
    /// looks into few of them).
    fn layers_within(&self, window: &RangeInclusive<u64>) -> impl Iterator<Item = &Layer> + '_ {
        let window = window.clone();
        self.layers.iter().filter(move |layer| layer.overlaps(&window))
    }
    /// The runs of an author's events from the layers that may hold events dated in `window`.
    pub fn author_runs_within(&self, author: u32, window: &RangeInclusive<u64>) -> Vec<Run<'_>> {
        let mut runs = Vec::new();
        let pubkey = self.author_key(author);
        self.layers_within(window).for_each(|layer| layer.author_runs(author, pubkey, &mut runs));
        runs
    }
    pub fn kind_runs_within(&self, kind: u16, window: &RangeInclusive<u64>) -> Vec<Run<'_>> {
        let mut runs = Vec::new();
        self.layers_within(window).for_each(|layer| layer.kind_runs(kind, &mut runs));
        runs
    }
    pub fn tag_runs_within(&self, letter: u8, value: &[u8], window: &RangeInclusive<u64>) -> Vec<Run<'_>> {
        let mut runs = Vec::new();
        self.layers_within(window).for_each(|layer| layer.tag_runs(letter, value, &mut runs));
        runs
    }
    pub fn global_runs_within(&self, window: &RangeInclusive<u64>) -> Vec<Run<'_>> {
        let mut runs = Vec::new();
        self.layers_within(window).for_each(|layer| layer.global_runs(&mut runs));
        runs
    }

    /// Every indexed event, oldest first.
    pub fn all_oldest_first(&self) -> Vec<EventNo> {
        let mut all: Vec<EventNo> = (0..self.len).collect();
        all.sort_unstable_by_key(|&no| (self.created_at(no), no));
        all
    }

    /// Whether `no` may be served at `now`: durable, live and not expired.
    pub fn is_visible(&self, no: EventNo, now: u64) -> bool {
        if no >= self.durable_count || self.is_dead(no) {
            return false;
        }
        self.expiration_of.is_empty() || self.expiration_of.get(&no).is_none_or(|&at| at > now)
    }

    /// Decide what to do with an event, without changing anything.
    pub fn admit(&self, facts: &Facts<'_>, now: u64) -> Admit {
        let class = KindClass::of(facts.kind);
        if class == KindClass::Ephemeral {
            return Admit::Ephemeral;
        }
        let author = self.author_of(facts.pubkey);
        let deleted_by_id =
            author.is_some() && facts.kind != KIND_DELETION && self.deleted_ids.get(facts.id).copied() == author;
        if deleted_by_id {
            return Admit::Rejected(Rejection::Deleted);
        }
        let vanished = author.and_then(|author| self.vanished.get(&author)).copied();
        if facts.kind != KIND_VANISH && vanished.is_some_and(|until| facts.created_at <= until) {
            return Admit::Rejected(Rejection::Vanished);
        }
        // A live copy is a duplicate; a dead one (replaced, deleted by address, expired) falls
        // through so the reply says why it is not served.
        let known = self.lookup_id(facts.id);
        if let Some(no) = known.filter(|&no| !self.is_dead(no)) {
            return Admit::Duplicate(no);
        }
        if facts.expiration.is_some_and(|at| at <= now) {
            return Admit::Rejected(Rejection::Expired);
        }
        if self.len as usize >= SHARD_EVENT_COUNT_MAX {
            return Admit::Rejected(Rejection::ShardFull);
        }
        let mut kills = Vec::new();
        if let (true, Some(author)) = (class.is_versioned(), author) {
            let key = version_key(author, facts.kind, class, facts.d_tag());
            if self.deleted_addresses.get(&key).is_some_and(|&until| facts.created_at <= until) {
                return Admit::Rejected(Rejection::Deleted);
            }
            if let Some(&current) = self.versions.get(&key) {
                let current_entry = self.entry(current);
                if (facts.created_at, std::cmp::Reverse(*facts.id))
                    <= (current_entry.created_at, std::cmp::Reverse(current_entry.id))
                {
                    return Admit::Rejected(Rejection::Superseded);
                }
                kills.push(current);
            }
        }
        if let Some(no) = known {
            return Admit::Duplicate(no);
        }
        match (facts.kind, author) {
            (KIND_DELETION, Some(author)) => self.deletion_targets(facts, author, &mut kills),
            (KIND_VANISH, Some(author)) => self.vanish_targets(facts.created_at, author, &mut kills),
            _ => {}
        }
        Admit::Store { kills }
    }

    /// The live records a request to vanish retires: every one of its author's up to its
    /// `created_at`, deletion requests included, except other requests to vanish (NIP-62).
    fn vanish_targets(&self, until: u64, author: u32, kills: &mut Vec<EventNo>) {
        for run in self.author_runs_within(author, &(0..=until)) {
            for no in run.iter() {
                // Each record is posted once per author, and a kind 62 carries no other kills.
                if !self.is_dead(no) {
                    let entry = self.entry(no);
                    if entry.created_at <= until && entry.kind != KIND_VANISH {
                        kills.push(no);
                    }
                }
            }
        }
    }

    /// The live records a deletion request retires: by `e` id, and by `a` address up to its
    /// `created_at`; only the requester's own, and never another deletion request.
    fn deletion_targets(&self, facts: &Facts<'_>, author: u32, kills: &mut Vec<EventNo>) {
        for &(letter, value) in facts.tags {
            let target = match letter {
                b'e' => crate::hex::decode_lower::<32>(value).and_then(|id| self.lookup_id(&id)),
                b'a' => parse_address(value)
                    .filter(|address| &address.pubkey == facts.pubkey)
                    .and_then(|address| {
                        let class = KindClass::of(address.kind);
                        class.is_versioned().then(|| version_key(author, address.kind, class, address.d))
                    })
                    .and_then(|key| self.versions.get(&key).copied())
                    .filter(|&no| self.created_at(no) <= facts.created_at),
                _ => None,
            };
            let Some(no) = target else { continue };
            let entry = self.entry(no);
            let undeletable = entry.kind == KIND_DELETION || entry.kind == KIND_VANISH;
            if entry.author == author && !undeletable && !entry.is_dead() && !kills.contains(&no) {
                kills.push(no);
            }
        }
    }

    /// The memory layer new events of segment slot `segment` go to.
    fn layer_for(&mut self, segment: u32) -> &mut MemLayer {
        let fresh = !matches!(self.layers.last(), Some(layer @ Layer::Memory(_)) if layer.segment() == segment);
        if fresh {
            self.layers.push(Layer::Memory(MemLayer::new(self.len, segment)));
        }
        match self.layers.last_mut() {
            Some(Layer::Memory(layer)) => layer,
            _ => unreachable!("a memory layer was just pushed"),
        }
    }

    /// Number the next event: its entry in the memory layer of its segment, posted.
    fn push(&mut self, facts: &Facts<'_>, loc: Loc) -> EventNo {
        assert!((self.len as usize) < SHARD_EVENT_COUNT_MAX);
        let no = self.len;
        let author = self.intern_author(facts.pubkey);
        let flags = if facts.expiration.is_some() { FLAG_EXPIRES } else { 0 };
        let entry = Entry { id: *facts.id, created_at: facts.created_at, loc, author, kind: facts.kind, flags };
        let bulk = self.bulk;
        self.layer_for(loc.segment).push(entry, facts.tags, bulk);
        self.grow(1, loc.segment);
        no
    }

    /// Room for `count` more events, of segment slot `segment`.
    fn grow(&mut self, count: u32, segment: u32) {
        self.len += count;
        self.dead.resize((self.len as usize).div_ceil(64), 0);
        self.count_records(segment, count);
    }

    fn count_records(&mut self, segment: u32, count: u32) {
        let segment = segment as usize;
        if self.segment_stats.len() <= segment {
            self.segment_stats.resize(segment + 1, SegmentStat::default());
        }
        self.segment_stats[segment].records += count;
    }

    /// Add an admitted event stored at `loc`; its kills wait until it is durable.
    pub fn insert(&mut self, facts: &Facts<'_>, loc: Loc, kills: Vec<EventNo>) -> EventNo {
        let no = self.push(facts, loc);
        self.register(no, facts);
        self.pending_kills.extend(kills.into_iter().map(|victim| (no, victim)));
        no
    }

    /// Add a record that replay found dead on arrival (refused by the rules as they stand,
    /// or a second copy): numbered and posted like any, never served, never looked up.
    pub fn insert_dead(&mut self, facts: &Facts<'_>, loc: Loc) -> EventNo {
        let no = self.push(facts, loc);
        self.mark_dead(no, loc.segment);
        no
    }

    fn mark_dead(&mut self, no: EventNo, segment: u32) {
        self.dead[no as usize / 64] |= 1 << (no % 64);
        self.segment_stats[segment as usize].dead += 1;
    }

    /// What the rules keep of a stored event: its id, its live counts, its expiration,
    /// the version, deletion or vanish it is.
    fn register(&mut self, no: EventNo, facts: &Facts<'_>) {
        let author = self.intern_author(facts.pubkey);
        self.count_live(no, author, facts.kind, facts.expiration);
        self.insert_id(no, self.hasher.hash_one(facts.id));
        self.remember(no, author, facts);
    }

    /// A stored event's live counts and expiration.
    fn count_live(&mut self, no: EventNo, author: u32, kind: u16, expiration: Option<u64>) {
        if let Some(at) = expiration {
            self.expiring.insert((at, no));
            self.expiration_of.insert(no, at);
        }
        self.live_count += 1;
        *self.live_by_kind.entry(kind).or_default() += 1;
        if self.live_by_author.len() <= author as usize {
            self.live_by_author.resize(author as usize + 1, 0);
        }
        self.live_by_author[author as usize] += 1;
    }

    /// Make event `no` (its id hashed to `hash`) found by its id.
    fn insert_id(&mut self, no: EventNo, hash: u64) {
        let Index { by_id, layers, hasher, .. } = self;
        by_id.insert_unique(hash, no, |&other| {
            let layer = layer_of(layers, other);
            hasher.hash_one(layer.id(other - layer.base()))
        });
    }

    fn intern_author(&mut self, pubkey: &[u8; 32]) -> u32 {
        if let Some(&author) = self.authors.get(pubkey) {
            return author;
        }
        let author = self.author_keys.len() as u32;
        self.authors.insert(*pubkey, author);
        self.author_keys.push(*pubkey);
        author
    }

    /// Versions and deletions: what later arrivals are checked against.
    fn remember(&mut self, no: EventNo, author: u32, facts: &Facts<'_>) {
        let class = KindClass::of(facts.kind);
        if class.is_versioned() {
            let key = version_key(author, facts.kind, class, facts.d_tag());
            let d_size = key.d.len();
            if self.versions.insert(key, no).is_none() {
                self.version_d_bytes += d_size;
            }
        }
        if facts.kind == KIND_VANISH {
            let until = self.vanished.entry(author).or_insert(0);
            *until = (*until).max(facts.created_at);
        }
        if facts.kind != KIND_DELETION {
            return;
        }
        for &(letter, value) in facts.tags {
            match letter {
                b'e' => {
                    if let Some(id) = crate::hex::decode_lower::<32>(value) {
                        self.deleted_ids.insert(id, author);
                    }
                }
                b'a' => {
                    let Some(address) = parse_address(value).filter(|a| &a.pubkey == facts.pubkey) else { continue };
                    let class = KindClass::of(address.kind);
                    if class.is_versioned() {
                        let until = self
                            .deleted_addresses
                            .entry(version_key(author, address.kind, class, address.d))
                            .or_insert(0);
                        *until = (*until).max(facts.created_at);
                    }
                }
                _ => {}
            }
        }
    }

    /// Events below `count` are durable: serve them and apply the kills they carry.
    pub fn set_durable(&mut self, count: u32) {
        assert!(count <= self.len && count >= self.durable_count);
        self.durable_count = count;
        while let Some(&(killer, victim)) = self.pending_kills.front() {
            if killer >= count {
                break;
            }
            self.pending_kills.pop_front();
            self.kill(victim);
        }
    }

    /// The requests to vanish this index holds (NIP-62): each one's author and date.
    pub fn vanish_requests(&self) -> Vec<([u8; 32], u64)> {
        self.kind_runs(KIND_VANISH)
            .iter()
            .flat_map(Run::iter)
            .filter(|&no| no < self.durable_count && !self.is_dead(no))
            .map(|no| {
                let entry = self.entry(no);
                (*self.author_key(entry.author), entry.created_at)
            })
            .collect()
    }

    /// Retire the live gift wraps `p`-tagging `pubkey_hex` dated up to `until` (NIP-62: the
    /// DMs to a pubkey that vanished); returns how many.
    pub fn kill_wraps_to(&mut self, pubkey_hex: &[u8], until: u64) -> usize {
        let victims: Vec<EventNo> = self
            .tag_runs(b'p', pubkey_hex)
            .iter()
            .flat_map(Run::iter)
            .filter(|&no| {
                let entry = self.entry(no);
                entry.kind == KIND_GIFT_WRAP && entry.created_at <= until && !entry.is_dead()
            })
            .collect();
        for &no in &victims {
            self.kill(no);
        }
        victims.len()
    }

    /// Retire the live records of `pubkey` dated up to `until` (an operator's ban); returns
    /// how many.
    pub fn kill_author_until(&mut self, pubkey: &[u8; 32], until: u64) -> usize {
        let Some(author) = self.author_of(pubkey) else { return 0 };
        // Once retired, a banned author has nothing live: the ban put in force again (every
        // management call, every start) costs a lookup, not a walk of its postings.
        if self.live_by_author.get(author as usize).is_none_or(|&live| live == 0) {
            return 0;
        }
        let victims: Vec<EventNo> = self
            .author_runs_within(author, &(0..=until))
            .iter()
            .flat_map(Run::iter)
            .filter(|&no| !self.is_dead(no) && self.created_at(no) <= until)
            .collect();
        for &no in &victims {
            self.kill(no);
        }
        victims.len()
    }

    /// Retire the record with this id, if stored and live; whether one was.
    pub fn kill_id(&mut self, id: &[u8; 32]) -> bool {
        match self.lookup_id(id) {
            Some(no) if !self.is_dead(no) => {
                self.kill(no);
                true
            }
            _ => false,
        }
    }

    /// Keep a log of the events retired from now on, for [`Index::take_retired`].
    pub fn track_retired(&mut self) {
        self.retired_log.get_or_insert_with(Default::default);
    }

    /// Up to `max` of the events retired since the last call, oldest first.
    pub fn take_retired(&mut self, max: usize) -> Vec<EventNo> {
        let Some(log) = &mut self.retired_log else { return Vec::new() };
        log.drain(..max.min(log.len())).collect()
    }

    /// Retire a record: never served again, dropped by compaction.
    pub fn kill(&mut self, no: EventNo) {
        if self.is_dead(no) {
            return;
        }
        if let Some(log) = &mut self.retired_log {
            if log.len() == crate::limits::RETIRED_LOG_COUNT_MAX {
                log.pop_front();
            }
            log.push_back(no);
        }
        let entry = self.entry(no);
        let (kind, author) = (entry.kind, entry.author as usize);
        self.mark_dead(no, entry.loc.segment);
        self.live_count -= 1;
        if let Some(live) = self.live_by_kind.get_mut(&kind) {
            *live -= 1;
        }
        self.live_by_author[author] -= 1;
    }

    /// How many events of `kind` are visible at `now`, without a scan; `None` when that
    /// cannot be told so (an expired event not yet swept).
    pub fn visible_count_of_kind(&self, kind: u16, now: u64) -> Option<u64> {
        let live = self.live_by_kind.get(&kind).copied().unwrap_or(0);
        self.visible_count(live, now, |entry| entry.kind == kind)
    }

    /// How many events are visible at `now`, as [`Index::visible_count_of_kind`].
    pub fn visible_count_of_all(&self, now: u64) -> Option<u64> {
        self.visible_count(self.live_count, now, |_| true)
    }

    /// How many events of `pubkey` are visible at `now`, as [`Index::visible_count_of_kind`].
    pub fn visible_count_of_author(&self, pubkey: &[u8; 32], now: u64) -> Option<u64> {
        let Some(author) = self.author_of(pubkey) else { return Some(0) };
        let live = self.live_by_author.get(author as usize).copied().unwrap_or(0);
        self.visible_count(live, now, |entry| entry.author == author)
    }

    /// `live` less the matching events still on their way to disk (live, not yet visible).
    fn visible_count(&self, live: u64, now: u64, matches: impl Fn(&Entry) -> bool) -> Option<u64> {
        if self.expiring.first().is_some_and(|&(at, _)| at <= now) {
            return None;
        }
        // A record retired before it was durable (a ban) is neither live nor pending.
        let pending =
            (self.durable_count..self.len).filter(|&no| !self.is_dead(no) && matches(&self.entry(no))).count() as u64;
        Some(live - pending)
    }

    /// Retire every event whose expiration is at or before `now`; returns how many.
    pub fn sweep_expired(&mut self, now: u64) -> usize {
        let mut count = 0;
        while let Some(&(at, no)) = self.expiring.first() {
            if at > now || no >= self.durable_count {
                break;
            }
            self.expiring.pop_first();
            self.expiration_of.remove(&no);
            self.kill(no);
            count += 1;
        }
        count
    }

    /// Sort every memory layer's postings once after a bulk load.
    pub fn finish_bulk(&mut self) {
        for layer in &mut self.layers {
            if let Layer::Memory(layer) = layer {
                layer.finish_bulk();
            }
        }
        self.bulk = false;
    }

    /// Heap bytes held by the indexes (capacities, not lengths), for the memory figure; O(1)
    /// in the number of keys. A part's mapped bytes are not counted: the kernel pages them.
    pub fn memory_size(&self) -> usize {
        use std::mem::size_of;
        let table = |capacity: usize, item: usize| capacity * (item + 1);
        self.layers.iter().map(Layer::memory_size).sum::<usize>()
            + self.dead.capacity() * 8
            + table(self.by_id.capacity(), 4)
            + table(self.authors.capacity(), 36)
            + self.author_keys.capacity() * 32
            + table(self.versions.capacity(), size_of::<(VersionKey, EventNo)>())
            + self.version_d_bytes
            + table(self.deleted_ids.capacity(), 36)
            + table(self.vanished.capacity(), 12)
            + table(self.expiration_of.capacity(), 12)
            + self.expiring.len() * 16
            + self.live_by_author.capacity() * 8
            + table(self.live_by_kind.capacity(), 10)
    }
}

fn version_key(author: u32, kind: u16, class: KindClass, d: &[u8]) -> VersionKey {
    let d = if class == KindClass::Addressable { d } else { &[] };
    VersionKey { author, kind, d: d.into() }
}

#[cfg(test)]
mod tests;
