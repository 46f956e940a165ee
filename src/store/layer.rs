//! One segment's share of a shard's indexes: its entries and its postings per key (author,
//! kind, tag, all). The segment being written has a [`MemLayer`], kept as events arrive; a
//! sealed segment has a mapped [`Part`] (see `part.rs`). Postings hold layer-local numbers;
//! a layer's events are numbered `base..base + len` in the shard.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashMap};

use super::index::{Entry, EventNo, Loc, FLAG_DEAD, FLAG_EXPIRES};
use super::part::Part;
use super::postings::Postings;

const TAG_LIST_BIT: u32 = 1 << 31;
const ENTRY_CHUNK_SIZE: usize = 1 << 16;

/// A layer: in memory while its segment is written, mapped once the segment is sealed.
pub enum Layer {
    Memory(MemLayer),
    Mapped(MappedLayer),
}

/// A sealed segment's part, with what this process numbered it as.
pub struct MappedLayer {
    pub(super) part: Part,
    base: EventNo,
    segment: u32,
    /// Each of the part's authors (in its sorted order) as the shard's author number.
    authors: Vec<u32>,
    /// The oldest and newest `created_at` of its events (the ends of its global list).
    dates: Option<(u64, u64)>,
    /// The events this process numbered in the layer (`base..base + len`).
    len: u32,
    /// Set once its segments were compacted while serving: the layer-local number of each
    /// of the part's entries (ascending). The events compaction dropped keep their numbers
    /// (the rules' tables and running scans hold them) but have no entry: they read as
    /// [`GONE`]. A restart numbers the part afresh.
    kept: Option<Box<[u32]>>,
}

/// What a number whose event compaction dropped reads as: dead, dated 0, nowhere.
pub const GONE: Entry = Entry {
    id: [0; 32],
    created_at: 0,
    loc: Loc { segment: u32::MAX, offset: 0 },
    author: 0,
    kind: 0,
    flags: FLAG_DEAD,
};

/// One sorted run of a list (oldest first by (created_at, number)), from one layer; a run
/// without a layer holds shard-wide event numbers (an `ids` filter's lookups).
#[derive(Clone, Copy)]
pub struct Run<'a> {
    pub nos: &'a [u32],
    pub layer: Option<&'a Layer>,
}

impl<'a> Run<'a> {
    pub fn len(&self) -> usize {
        self.nos.len()
    }
    pub fn is_empty(&self) -> bool {
        self.nos.is_empty()
    }
    /// The shard-wide number of the run's `at`-th event.
    pub fn no(&self, at: usize) -> EventNo {
        match self.layer {
            Some(layer) => layer.base() + layer.posted(self.nos[at]),
            None => self.nos[at],
        }
    }
    /// The shard-wide numbers of the run, in order.
    pub fn iter(&self) -> impl Iterator<Item = EventNo> + 'a {
        let (layer, nos) = (self.layer, self.nos);
        nos.iter().map(move |&posted| layer.map_or(posted, |layer| layer.base() + layer.posted(posted)))
    }
}

impl Layer {
    pub fn base(&self) -> EventNo {
        match self {
            Layer::Memory(layer) => layer.base,
            Layer::Mapped(layer) => layer.base,
        }
    }
    pub fn len(&self) -> u32 {
        match self {
            Layer::Memory(layer) => layer.len,
            Layer::Mapped(layer) => layer.len,
        }
    }
    /// The layer-local number of a number its postings hold.
    pub fn posted(&self, posted: u32) -> u32 {
        match self {
            Layer::Mapped(MappedLayer { kept: Some(kept), .. }) => kept[posted as usize],
            _ => posted,
        }
    }
    /// The `created_at` of a number its postings hold.
    pub fn posted_created_at(&self, posted: u32) -> u64 {
        match self {
            Layer::Memory(layer) => layer.entry(posted).created_at,
            Layer::Mapped(layer) => layer.part.entry(posted).created_at.to_native(),
        }
    }
    /// Whether compaction rewrote its segments in this process (see [`MappedLayer`]).
    pub fn is_compacted(&self) -> bool {
        matches!(self, Layer::Mapped(MappedLayer { kept: Some(_), .. }))
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether it may hold events dated in `window` (an empty layer holds none).
    pub fn overlaps(&self, window: &std::ops::RangeInclusive<u64>) -> bool {
        let dates = match self {
            Layer::Memory(layer) => layer.dates,
            Layer::Mapped(layer) => layer.dates,
        };
        dates.is_some_and(|(oldest, newest)| oldest <= *window.end() && *window.start() <= newest)
    }

    /// The (first) segment slot its records lie in.
    pub fn segment(&self) -> u32 {
        match self {
            Layer::Memory(layer) => layer.segment,
            Layer::Mapped(layer) => layer.segment,
        }
    }
    /// The segment slots its records lie in.
    pub fn segments(&self) -> std::ops::Range<u32> {
        match self {
            Layer::Memory(layer) => layer.segment..layer.segment + 1,
            Layer::Mapped(layer) => layer.segment..layer.segment + layer.part.covered_count() as u32,
        }
    }
    pub fn entry(&self, local: u32) -> Entry {
        match self {
            Layer::Memory(layer) => *layer.entry(local),
            Layer::Mapped(layer) => {
                let Some(local) = layer.part_local(local) else { return GONE };
                let entry = layer.part.entry(local);
                Entry {
                    id: entry.id,
                    created_at: entry.created_at.to_native(),
                    loc: Loc {
                        segment: layer.segment + u32::from(entry.segment.to_native()),
                        offset: entry.offset.to_native(),
                    },
                    author: layer.authors[entry.author.to_native() as usize],
                    kind: entry.kind.to_native(),
                    flags: if entry.expiration.to_native() != 0 { FLAG_EXPIRES } else { 0 },
                }
            }
        }
    }
    pub fn id(&self, local: u32) -> &[u8; 32] {
        match self {
            Layer::Memory(layer) => &layer.entry(local).id,
            Layer::Mapped(layer) => layer.part_local(local).map_or(&GONE.id, |local| &layer.part.entry(local).id),
        }
    }
    pub fn created_at(&self, local: u32) -> u64 {
        match self {
            Layer::Memory(layer) => layer.entry(local).created_at,
            Layer::Mapped(layer) => {
                layer.part_local(local).map_or(0, |local| layer.part.entry(local).created_at.to_native())
            }
        }
    }

    /// The runs of `author` (the shard's number for `pubkey`).
    pub fn author_runs<'a>(&'a self, author: u32, pubkey: &[u8; 32], out: &mut Vec<Run<'a>>) {
        match self {
            Layer::Memory(layer) => layer.by_author.get(&author).into_iter().for_each(|p| self.push(p, out)),
            Layer::Mapped(layer) => self.push_nos(layer.part.author_list(pubkey), out),
        }
    }
    pub fn kind_runs<'a>(&'a self, kind: u16, out: &mut Vec<Run<'a>>) {
        match self {
            Layer::Memory(layer) => layer.by_kind.get(&kind).into_iter().for_each(|p| self.push(p, out)),
            Layer::Mapped(layer) => self.push_nos(layer.part.kind_list(kind), out),
        }
    }
    /// The events carrying tag `letter` = `value`; hash collisions are possible, so callers
    /// check the record's tags.
    pub fn tag_runs<'a>(&'a self, letter: u8, value: &[u8], out: &mut Vec<Run<'a>>) {
        match self {
            Layer::Memory(layer) => match layer.by_tag.get(&layer.tag_hash(letter, value)) {
                None => {}
                Some(slot) if slot & TAG_LIST_BIT != 0 => {
                    self.push(&layer.tag_lists[(slot & !TAG_LIST_BIT) as usize], out)
                }
                Some(slot) => self.push_nos(std::slice::from_ref(slot), out),
            },
            Layer::Mapped(layer) => self.push_nos(layer.part.tag_list(letter, value), out),
        }
    }
    pub fn global_runs<'a>(&'a self, out: &mut Vec<Run<'a>>) {
        match self {
            Layer::Memory(layer) => self.push(&layer.global, out),
            Layer::Mapped(layer) => self.push_nos(layer.part.global_list(), out),
        }
    }

    fn push<'a>(&'a self, postings: &'a Postings, out: &mut Vec<Run<'a>>) {
        for nos in postings.runs() {
            self.push_nos(nos, out);
        }
    }
    fn push_nos<'a>(&'a self, nos: &'a [u32], out: &mut Vec<Run<'a>>) {
        if !nos.is_empty() {
            out.push(Run { nos, layer: Some(self) });
        }
    }

    /// Bytes of the layer's part file (0 in memory).
    pub fn part_size(&self) -> usize {
        match self {
            Layer::Memory(_) => 0,
            Layer::Mapped(layer) => layer.part.size(),
        }
    }

    /// Heap bytes this process holds for the layer (a part's mapped bytes are the kernel's).
    pub fn memory_size(&self) -> usize {
        match self {
            Layer::Memory(layer) => layer.memory_size(),
            Layer::Mapped(layer) => layer.authors.capacity() * 4 + layer.kept.as_ref().map_or(0, |kept| kept.len() * 4),
        }
    }
}

impl MappedLayer {
    /// A part numbered from `base`, its records in segment slot `segment`; `author_number`
    /// gives the shard's number for each of its authors.
    pub fn new(part: Part, base: EventNo, segment: u32, author_number: impl FnMut(&[u8; 32]) -> u32) -> MappedLayer {
        let authors = part.authors().map(author_number).collect();
        let global = part.global_list();
        let date = |local: Option<&u32>| local.map(|&local| part.entry(local).created_at.to_native());
        let dates = date(global.first()).zip(date(global.last()));
        let len = part.len();
        MappedLayer { part, base, segment, authors, dates, len, kept: None }
    }

    /// The part of segments compaction rewrote, for a layer of `len` events numbered from
    /// `base` of which it kept `kept` (layer-local, ascending, one per part entry).
    pub fn compacted(
        part: Part,
        base: EventNo,
        segment: u32,
        len: u32,
        kept: Box<[u32]>,
        author_number: impl FnMut(&[u8; 32]) -> u32,
    ) -> MappedLayer {
        assert_eq!(kept.len(), part.len() as usize, "one kept number per entry");
        MappedLayer { len, kept: Some(kept), ..MappedLayer::new(part, base, segment, author_number) }
    }

    /// The part's entry for a layer-local number (`None`: compaction dropped its event).
    fn part_local(&self, local: u32) -> Option<u32> {
        match &self.kept {
            None => Some(local),
            Some(kept) => kept.binary_search(&local).ok().map(|at| at as u32),
        }
    }

    pub fn into_part(self) -> Part {
        self.part
    }
}

/// The segment being written: entries in chunks (growth never copies much) and postings.
pub struct MemLayer {
    base: EventNo,
    segment: u32,
    len: u32,
    chunks: Vec<Vec<Entry>>,
    hasher: DefaultHashBuilder,
    by_author: HashMap<u32, Postings>,
    by_kind: HashMap<u16, Postings>,
    /// Keyed hash of (letter, value) to one local number, or `TAG_LIST_BIT | list index`.
    by_tag: HashMap<u64, u32>,
    tag_lists: Vec<Postings>,
    global: Postings,
    /// Heap bytes of every postings list, kept as they grow (a scrape never walks them).
    postings_bytes: usize,
    /// The oldest and newest `created_at` of its events (none while it is empty).
    dates: Option<(u64, u64)>,
}

impl MemLayer {
    pub fn new(base: EventNo, segment: u32) -> MemLayer {
        MemLayer {
            base,
            segment,
            len: 0,
            chunks: Vec::new(),
            hasher: DefaultHashBuilder::default(),
            by_author: HashMap::new(),
            by_kind: HashMap::new(),
            by_tag: HashMap::new(),
            tag_lists: Vec::new(),
            global: Postings::default(),
            postings_bytes: 0,
            dates: None,
        }
    }

    pub fn entry(&self, local: u32) -> &Entry {
        let local = local as usize;
        &self.chunks[local / ENTRY_CHUNK_SIZE][local % ENTRY_CHUNK_SIZE]
    }

    fn tag_hash(&self, letter: u8, value: &[u8]) -> u64 {
        self.hasher.hash_one((letter, value))
    }

    /// Append `entry` and post it under its author, kind and `tags` (each distinct pair
    /// once). In `bulk`, postings are appended unsorted until [`MemLayer::finish_bulk`].
    pub fn push(&mut self, entry: Entry, tags: &[(u8, &[u8])], bulk: bool) {
        let local = self.len;
        if self.chunks.last().is_none_or(|chunk| chunk.len() == ENTRY_CHUNK_SIZE) {
            self.chunks.push(Vec::with_capacity(ENTRY_CHUNK_SIZE));
        }
        self.chunks.last_mut().expect("a chunk with room").push(entry);
        self.len += 1;
        let date = entry.created_at;
        self.dates = Some(self.dates.map_or((date, date), |(oldest, newest)| (oldest.min(date), newest.max(date))));
        let MemLayer { chunks, by_author, by_kind, global, by_tag, tag_lists, hasher, postings_bytes, .. } = self;
        let key = |n: EventNo| {
            let i = n as usize;
            (chunks[i / ENTRY_CHUNK_SIZE][i % ENTRY_CHUNK_SIZE].created_at, n)
        };
        // What a list takes before and after the insert (merging its side runs can free some).
        let post_into = |list: &mut Postings| {
            let before = list.heap_size();
            list.insert(local, bulk, key);
            (before, list.heap_size())
        };
        let mut resized = |(before, after): (usize, usize)| *postings_bytes = *postings_bytes + after - before;
        resized(post_into(global));
        resized(post_into(by_author.entry(entry.author).or_default()));
        resized(post_into(by_kind.entry(entry.kind).or_default()));
        for (index, &(letter, value)) in tags.iter().enumerate() {
            if tags[..index].iter().any(|&(l, v)| l == letter && v == value) {
                continue;
            }
            let hash = hasher.hash_one((letter, value));
            match by_tag.get_mut(&hash) {
                None => {
                    by_tag.insert(hash, local);
                }
                Some(slot) if *slot & TAG_LIST_BIT != 0 => {
                    resized(post_into(&mut tag_lists[(*slot & !TAG_LIST_BIT) as usize]));
                }
                Some(slot) if *slot == local => {}
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

    /// Sort every postings list once after a bulk load.
    pub fn finish_bulk(&mut self) {
        let MemLayer { chunks, by_author, by_kind, global, tag_lists, .. } = self;
        let key = |n: &EventNo| {
            let i = *n as usize;
            (chunks[i / ENTRY_CHUNK_SIZE][i % ENTRY_CHUNK_SIZE].created_at, *n)
        };
        global.sort(key);
        by_author.values_mut().for_each(|p| p.sort(key));
        by_kind.values_mut().for_each(|p| p.sort(key));
        tag_lists.iter_mut().for_each(|p| p.sort(key));
        // Sorting merges runs, which changes capacities: counted again, once.
        self.postings_bytes = self.postings_walked();
    }

    /// Heap bytes of every postings list, walked.
    pub(super) fn postings_walked(&self) -> usize {
        self.by_author
            .values()
            .chain(self.by_kind.values())
            .chain(&self.tag_lists)
            .map(Postings::heap_size)
            .sum::<usize>()
            + self.global.heap_size()
    }

    #[cfg(test)]
    pub(super) fn postings_bytes(&self) -> usize {
        self.postings_bytes
    }

    fn memory_size(&self) -> usize {
        use std::mem::size_of;
        let table = |capacity: usize, item: usize| capacity * (item + 1);
        self.chunks.iter().map(|c| c.capacity() * size_of::<Entry>()).sum::<usize>()
            + table(self.by_author.capacity(), 4 + size_of::<Postings>())
            + table(self.by_kind.capacity(), 2 + size_of::<Postings>())
            + table(self.by_tag.capacity(), 12)
            + self.tag_lists.capacity() * size_of::<Postings>()
            + self.postings_bytes
    }
}
