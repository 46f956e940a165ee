//! One shard's in-memory indexes and the storage rules that use them (duplicates,
//! replaceable and addressable versions, NIP-09 deletions, NIP-40 expiration).
//! Sans-IO: the shard tells it where records lie; it never touches a file.

use std::collections::{BTreeSet, VecDeque};
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

use crate::event::kind::{parse_address, KIND_DELETION, KIND_GIFT_WRAP, KIND_VANISH};
use crate::event::KindClass;
use crate::limits::SHARD_EVENT_COUNT_MAX;

pub use super::postings::{Postings, Runs, NO_RUNS};

/// A record's ordinal within its shard, in append order.
pub type EventNo = u32;

/// Where a record lies: the shard's segment slot and the byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub segment: u32,
    pub offset: u32,
}

/// What the indexes keep of every event: 56 bytes.
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

const TAG_LIST_BIT: u32 = 1 << 31;
const _: () = assert!(SHARD_EVENT_COUNT_MAX < TAG_LIST_BIT as usize);
const ENTRY_CHUNK_SIZE: usize = 1 << 16;

/// Per-segment record counts, for compaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentStat {
    pub records: u32,
    pub dead: u32,
}

#[derive(Default)]
pub struct Index {
    /// Entries in chunks of `ENTRY_CHUNK_SIZE`, so growth never copies or over-allocates much.
    chunks: Vec<Vec<Entry>>,
    len: u32,
    hasher: DefaultHashBuilder,
    by_id: HashTable<EventNo>,
    authors: HashMap<[u8; 32], u32>,
    author_keys: Vec<[u8; 32]>,
    by_author: Vec<Postings>,
    by_kind: HashMap<u16, Postings>,
    /// Keyed hash of (letter, value) to one event number, or `TAG_LIST_BIT | list index`.
    by_tag: HashMap<u64, u32>,
    tag_lists: Vec<Postings>,
    global: Postings,
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
    /// Heap bytes of every postings list, and of the versions' `d` values, kept as they grow
    /// so that the memory figure never walks the index (a scrape at millions of keys).
    postings_bytes: usize,
    version_d_bytes: usize,
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

    pub fn entry(&self, no: EventNo) -> &Entry {
        let no = no as usize;
        &self.chunks[no / ENTRY_CHUNK_SIZE][no % ENTRY_CHUNK_SIZE]
    }

    fn entry_mut(&mut self, no: EventNo) -> &mut Entry {
        let no = no as usize;
        &mut self.chunks[no / ENTRY_CHUNK_SIZE][no % ENTRY_CHUNK_SIZE]
    }

    pub fn lookup_id(&self, id: &[u8; 32]) -> Option<EventNo> {
        let hash = self.hasher.hash_one(id);
        self.by_id.find(hash, |&no| &self.entry(no).id == id).copied()
    }

    pub fn author_of(&self, pubkey: &[u8; 32]) -> Option<u32> {
        self.authors.get(pubkey).copied()
    }
    pub fn author_key(&self, author: u32) -> &[u8; 32] {
        &self.author_keys[author as usize]
    }
    pub fn author_postings(&self, author: u32) -> &Postings {
        &self.by_author[author as usize]
    }
    pub fn kind_postings(&self, kind: u16) -> Option<&Postings> {
        self.by_kind.get(&kind)
    }
    pub fn global_postings(&self) -> &Postings {
        &self.global
    }

    /// The events carrying tag `letter` = `value`, as sorted runs (see [`Postings`]); hash
    /// collisions are possible, so callers check the record's tags.
    pub fn tag_postings(&self, letter: u8, value: &[u8]) -> Runs<'_> {
        match self.by_tag.get(&self.tag_hash(letter, value)) {
            None => NO_RUNS,
            Some(slot) if slot & TAG_LIST_BIT != 0 => self.tag_lists[(slot & !TAG_LIST_BIT) as usize].runs(),
            Some(slot) => [std::slice::from_ref(slot), &[], &[]],
        }
    }

    /// Every posted event, oldest first (one merged copy of the global postings).
    pub fn all_oldest_first(&self) -> Vec<EventNo> {
        self.global.merged(|n| (self.entry(n).created_at, n))
    }

    fn tag_hash(&self, letter: u8, value: &[u8]) -> u64 {
        self.hasher.hash_one((letter, value))
    }

    /// Whether `no` may be served at `now`: durable, live and not expired.
    pub fn is_visible(&self, no: EventNo, now: u64) -> bool {
        if no >= self.durable_count {
            return false;
        }
        let entry = self.entry(no);
        if entry.is_dead() {
            return false;
        }
        entry.flags & FLAG_EXPIRES == 0 || self.expiration_of.get(&no).is_none_or(|&at| at > now)
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
        if let Some(no) = known.filter(|&no| !self.entry(no).is_dead()) {
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
        for run in self.author_postings(author).runs() {
            for &no in run {
                let entry = self.entry(no);
                // Each record is posted once per author, and a kind 62 carries no other kills.
                if entry.created_at <= until && entry.kind != KIND_VANISH && !entry.is_dead() {
                    kills.push(no);
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
                    .filter(|&no| self.entry(no).created_at <= facts.created_at),
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

    /// Add an admitted event stored at `loc`; its kills wait until it is durable.
    pub fn insert(&mut self, facts: &Facts<'_>, loc: Loc, kills: Vec<EventNo>) -> EventNo {
        assert!((self.len as usize) < SHARD_EVENT_COUNT_MAX);
        let no = self.len;
        let author = self.intern_author(facts.pubkey);
        let mut flags = 0;
        if let Some(at) = facts.expiration {
            flags |= FLAG_EXPIRES;
            self.expiring.insert((at, no));
            self.expiration_of.insert(no, at);
        }
        let entry = Entry { id: *facts.id, created_at: facts.created_at, loc, author, kind: facts.kind, flags };
        if self.chunks.last().is_none_or(|chunk| chunk.len() == ENTRY_CHUNK_SIZE) {
            self.chunks.push(Vec::with_capacity(ENTRY_CHUNK_SIZE));
        }
        self.chunks.last_mut().expect("a chunk with room").push(entry);
        self.len += 1;
        self.live_count += 1;
        *self.live_by_kind.entry(facts.kind).or_default() += 1;
        if self.live_by_author.len() <= author as usize {
            self.live_by_author.resize(author as usize + 1, 0);
        }
        self.live_by_author[author as usize] += 1;

        let hash = self.hasher.hash_one(facts.id);
        let Index { by_id, chunks, hasher, .. } = self;
        by_id.insert_unique(hash, no, |&other| {
            let other = other as usize;
            hasher.hash_one(chunks[other / ENTRY_CHUNK_SIZE][other % ENTRY_CHUNK_SIZE].id)
        });
        self.post(no, author, facts);
        self.remember(no, author, facts);

        let segment = loc.segment as usize;
        if self.segment_stats.len() <= segment {
            self.segment_stats.resize(segment + 1, SegmentStat::default());
        }
        self.segment_stats[segment].records += 1;
        self.pending_kills.extend(kills.into_iter().map(|victim| (no, victim)));
        no
    }

    fn intern_author(&mut self, pubkey: &[u8; 32]) -> u32 {
        if let Some(&author) = self.authors.get(pubkey) {
            return author;
        }
        let author = self.author_keys.len() as u32;
        self.authors.insert(*pubkey, author);
        self.author_keys.push(*pubkey);
        self.by_author.push(Postings::default());
        author
    }

    fn post(&mut self, no: EventNo, author: u32, facts: &Facts<'_>) {
        let bulk = self.bulk;
        let Index { chunks, by_author, by_kind, global, by_tag, tag_lists, hasher, postings_bytes, .. } = self;
        let key = |n: EventNo| {
            let n = n as usize;
            (chunks[n / ENTRY_CHUNK_SIZE][n % ENTRY_CHUNK_SIZE].created_at, n as EventNo)
        };
        // What a list takes before and after the insert (merging its side runs can free some).
        let post_into = |list: &mut Postings| {
            let before = list.heap_size();
            list.insert(no, bulk, key);
            (before, list.heap_size())
        };
        let mut resized = |(before, after): (usize, usize)| *postings_bytes = *postings_bytes + after - before;
        resized(post_into(global));
        resized(post_into(&mut by_author[author as usize]));
        resized(post_into(by_kind.entry(facts.kind).or_default()));
        for (index, &(letter, value)) in facts.tags.iter().enumerate() {
            // The same (letter, value) twice on one event is posted once.
            if facts.tags[..index].iter().any(|&(l, v)| l == letter && v == value) {
                continue;
            }
            let hash = hasher.hash_one((letter, value));
            match by_tag.get_mut(&hash) {
                None => {
                    by_tag.insert(hash, no);
                }
                Some(slot) if *slot & TAG_LIST_BIT != 0 => {
                    resized(post_into(&mut tag_lists[(*slot & !TAG_LIST_BIT) as usize]));
                }
                Some(slot) if *slot == no => {}
                Some(slot) => {
                    let mut list = Postings::single(*slot);
                    let (_, after) = post_into(&mut list);
                    resized((0, after));
                    *slot = TAG_LIST_BIT | tag_lists.len() as u32;
                    tag_lists.push(list);
                }
            }
        }
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
        let Some(list) = self.kind_postings(KIND_VANISH) else { return Vec::new() };
        list.runs()
            .iter()
            .flat_map(|run| run.iter().copied())
            .filter(|&no| no < self.durable_count && !self.entry(no).is_dead())
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
            .tag_postings(b'p', pubkey_hex)
            .iter()
            .flat_map(|run| run.iter().copied())
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
            .author_postings(author)
            .runs()
            .iter()
            .flat_map(|run| run.iter().copied())
            .filter(|&no| self.entry(no).created_at <= until && !self.entry(no).is_dead())
            .collect();
        for &no in &victims {
            self.kill(no);
        }
        victims.len()
    }

    /// Retire the record with this id, if stored and live; whether one was.
    pub fn kill_id(&mut self, id: &[u8; 32]) -> bool {
        match self.lookup_id(id) {
            Some(no) if !self.entry(no).is_dead() => {
                self.kill(no);
                true
            }
            _ => false,
        }
    }

    /// Retire a record: never served again, dropped by compaction.
    pub fn kill(&mut self, no: EventNo) {
        let entry = self.entry_mut(no);
        if entry.is_dead() {
            return;
        }
        entry.flags |= FLAG_DEAD;
        let (segment, kind, author) = (entry.loc.segment as usize, entry.kind, entry.author as usize);
        self.segment_stats[segment].dead += 1;
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
        let pending = (self.durable_count..self.len)
            .filter(|&no| !self.entry(no).is_dead() && matches(self.entry(no)))
            .count() as u64;
        Some(live - pending)
    }

    /// Count a record that replay found dead on arrival (never indexed).
    pub fn note_dead_record(&mut self, segment: u32) {
        let segment = segment as usize;
        if self.segment_stats.len() <= segment {
            self.segment_stats.resize(segment + 1, SegmentStat::default());
        }
        self.segment_stats[segment].records += 1;
        self.segment_stats[segment].dead += 1;
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

    /// Sort every postings list once after a bulk load.
    pub fn finish_bulk(&mut self) {
        let Index { chunks, by_author, by_kind, global, tag_lists, .. } = self;
        let key = |n: &EventNo| {
            let i = *n as usize;
            (chunks[i / ENTRY_CHUNK_SIZE][i % ENTRY_CHUNK_SIZE].created_at, *n)
        };
        global.sort(key);
        by_author.iter_mut().for_each(|p| p.sort(key));
        by_kind.values_mut().for_each(|p| p.sort(key));
        tag_lists.iter_mut().for_each(|p| p.sort(key));
        self.bulk = false;
        // Sorting merges runs, which changes capacities: counted again, once.
        self.postings_bytes = self.postings_walked();
    }

    /// Heap bytes of every postings list, walked.
    fn postings_walked(&self) -> usize {
        self.by_author
            .iter()
            .chain(self.by_kind.values())
            .chain(&self.tag_lists)
            .map(Postings::heap_size)
            .sum::<usize>()
            + self.global.heap_size()
    }

    /// Heap bytes held by the indexes (capacities, not lengths), for the memory figure; O(1)
    /// in the number of keys.
    pub fn memory_size(&self) -> usize {
        use std::mem::size_of;
        let table = |capacity: usize, item: usize| capacity * (item + 1);
        self.chunks.iter().map(|c| c.capacity() * size_of::<Entry>()).sum::<usize>()
            + table(self.by_id.capacity(), 4)
            + table(self.authors.capacity(), 36)
            + self.author_keys.capacity() * 32
            + (self.by_author.capacity() + self.tag_lists.capacity()) * size_of::<Postings>()
            + table(self.by_kind.capacity(), 2 + size_of::<Postings>())
            + table(self.by_tag.capacity(), 16)
            + self.postings_bytes
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
mod tests {
    use super::*;

    /// The kept byte counts match a walk of the index, after loading in bulk and after
    /// live inserts (in and out of order, tags shared and not, versions replaced).
    #[test]
    fn the_memory_figure_is_kept_without_a_walk() {
        let mut index = Index::new_bulk();
        let insert = |index: &mut Index, i: u32, created_at: u64| {
            let id = {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&i.to_be_bytes());
                id
            };
            let pubkey = [(i % 7) as u8; 32];
            let tag = format!("t{}", i % 13);
            let d = format!("d{}", i % 5);
            let tags: Vec<(u8, &[u8])> = vec![(b't', tag.as_bytes()), (b'd', d.as_bytes())];
            let kind = if i % 3 == 0 { 30_023 } else { 1 };
            let facts = Facts { id: &id, pubkey: &pubkey, created_at, kind, expiration: None, tags: &tags };
            if let Admit::Store { kills } = index.admit(&facts, 0) {
                let loc = Loc { segment: 0, offset: 0 };
                index.insert(&facts, loc, kills);
                index.set_durable(index.len());
            }
        };
        for i in 0..3_000 {
            insert(&mut index, i, 1_000 + u64::from(i % 500));
        }
        index.finish_bulk();
        assert_eq!(index.postings_bytes, index.postings_walked());
        for i in 3_000..9_000 {
            // Mostly newest-first arrivals, with old-dated ones going to the side runs.
            let created_at = if i % 10 == 0 { 900 + u64::from(i % 100) } else { 2_000 + u64::from(i) };
            insert(&mut index, i, created_at);
        }
        assert_eq!(index.postings_bytes, index.postings_walked());
        assert_eq!(index.version_d_bytes, index.versions.keys().map(|k| k.d.len()).sum::<usize>());
        assert!(index.memory_size() > index.postings_bytes);
    }

    /// An operator's retirements: a banned id, and a banned author's events up to the ban
    /// (not after it, not another author's); put in force again, they find nothing more.
    #[test]
    fn retirements_retire_banned_ids_and_authors_up_to_the_ban() {
        let mut index = Index::new_bulk();
        index.finish_bulk();
        let event = |i: u8, author: u8, created_at: u64| ([i; 32], [author; 32], created_at);
        let events = [event(1, 7, 100), event(2, 7, 200), event(3, 7, 300), event(4, 8, 100), event(5, 8, 150)];
        for (id, pubkey, created_at) in &events {
            let facts = Facts { id, pubkey, created_at: *created_at, kind: 1, expiration: None, tags: &[] };
            let Admit::Store { kills } = index.admit(&facts, 0) else { panic!("stored") };
            index.insert(&facts, Loc { segment: 0, offset: 0 }, kills);
        }
        index.set_durable(index.len());
        let retirements = super::super::Retirements { events: vec![[5; 32], [9; 32]], pubkeys: vec![([7; 32], 200)] };
        assert_eq!(retirements.apply(&mut index), 3);
        let live: Vec<u8> =
            (0..index.len()).filter(|&no| index.is_visible(no, 0)).map(|no| index.entry(no).id[0]).collect();
        assert_eq!(live, vec![3, 4]);
        assert_eq!(retirements.apply(&mut index), 0);
        assert_eq!(index.live_count, 2);
    }
}
