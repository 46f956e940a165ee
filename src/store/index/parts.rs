//! The index's side of the mapped parts: loading a part at open (each entry judged by the
//! rules in append order, as a replay of its record would be), swapping a memory layer or
//! the parts a merge joins for a new part, and finding the next merge.

use std::hash::BuildHasher;

use super::{layer_of, Admit, Entry, EventNo, Facts, Index};
use crate::event::kind::{KIND_DELETION, KIND_VANISH};
use crate::event::KindClass;
use crate::store::layer::{Layer, MappedLayer};
use crate::store::part::Part;

/// A tag the rules read (a `d`, `e` or `a`), owned.
type RuleTag = (u8, Vec<u8>);

fn mapped_id(layer: &MappedLayer, local: u32) -> &[u8; 32] {
    &layer.part.entry(local).id
}

impl Index {
    /// Add the part of sealed segments, the first of them in segment slot `segment` and the
    /// others after it: the events are numbered on from the last, and each is judged by the
    /// rules in append order, as a replay of its record would be (its postings are the
    /// part's).
    pub fn load_part(&mut self, part: Part, segment: u32) {
        let (base, count) = (self.len, part.len());
        // Owned: the part's borrow cannot be held while the rules change the index.
        let rule_tags: Vec<(u32, Vec<RuleTag>)> = part
            .rule_tags()
            .map(|(no, tags)| (no, tags.into_iter().map(|(letter, value)| (letter, value.to_vec())).collect()))
            .collect();
        let layer = MappedLayer::new(part, base, segment, |pubkey| self.intern_author(pubkey));
        self.layers.push(Layer::Mapped(layer));
        self.grow(count, segment);
        // Counted per record below (a part may index several segments).
        self.segment_stats[segment as usize].records -= count;
        let mut rule_tags = rule_tags.into_iter().peekable();
        for local in 0..count {
            let tags = rule_tags.next_if(|(at, _)| *at == local).map(|(_, tags)| tags).unwrap_or_default();
            self.judge_loaded(base + local, &tags);
        }
        self.durable_count = self.len;
    }

    /// Room for `additional` more events in the id table, so that loading them does not
    /// grow it (a growth reads the id of every event already in it).
    pub fn reserve(&mut self, additional: usize) {
        let Index { by_id, layers, hasher, .. } = self;
        by_id.reserve(additional, |&other| {
            let layer = layer_of(layers, other);
            hasher.hash_one(layer.id(other - layer.base()))
        });
    }

    /// Let the kernel drop the pages of every part from this process (they stay cached).
    pub fn release_pages(&self) {
        for layer in &self.layers {
            if let Layer::Mapped(layer) = layer {
                layer.part.release_pages();
            }
        }
    }

    /// Judge event `no` of the part being loaded as a replay of its record would: stored
    /// (the records it retires retire at once: it is durable), or dead on arrival.
    fn judge_loaded(&mut self, no: EventNo, tags: &[RuleTag]) {
        let (entry, expiration, pubkey) = self.part_entry(no);
        let segment = entry.loc.segment;
        self.count_records(segment, 1);
        let plain =
            KindClass::of(entry.kind) == KindClass::Regular && entry.kind != KIND_DELETION && entry.kind != KIND_VANISH;
        if plain {
            return self.judge_plain(no, &entry, expiration, segment);
        }
        let tags: Vec<(u8, &[u8])> = tags.iter().map(|(letter, value)| (*letter, value.as_slice())).collect();
        let facts = Facts {
            id: &entry.id,
            pubkey: &pubkey,
            created_at: entry.created_at,
            kind: entry.kind,
            expiration,
            tags: &tags,
        };
        // Expiry is applied after the load, so that an expired version still retires older ones.
        match self.admit(&facts, 0) {
            Admit::Store { kills } => {
                self.register(no, &facts);
                kills.into_iter().for_each(|victim| self.kill(victim));
            }
            _ => self.mark_dead(no, segment),
        }
    }

    /// What [`Index::admit`] decides for a loaded event of a regular kind that is neither a
    /// deletion nor a request to vanish (most events): dead on arrival when it is a copy,
    /// deleted by id, or its author vanished after it; else stored, retiring nothing. Its
    /// id is hashed once and its author known by number.
    fn judge_plain(&mut self, no: EventNo, entry: &Entry, expiration: Option<u64>, segment: u32) {
        let deleted = self.deleted_ids.get(&entry.id) == Some(&entry.author);
        let vanished = self.vanished.get(&entry.author).is_some_and(|&until| entry.created_at <= until);
        if deleted || vanished {
            return self.mark_dead(no, segment);
        }
        // One probe finds a copy or takes the id.
        let Index { by_id, layers, hasher, .. } = self;
        let id_of = |other: EventNo| {
            let layer = layer_of(layers, other);
            layer.id(other - layer.base())
        };
        let taken = match by_id.entry(
            hasher.hash_one(entry.id),
            |&other| id_of(other) == &entry.id,
            |&other| hasher.hash_one(id_of(other)),
        ) {
            hashbrown::hash_table::Entry::Occupied(_) => false,
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(no);
                true
            }
        };
        match taken {
            true => self.count_live(no, entry.author, entry.kind, expiration),
            false => self.mark_dead(no, segment),
        }
    }

    /// Serve the events of the segment slots from `segment` on that `part` indexes from it
    /// instead of from their layers (a memory layer, or the parts a merge joins); the part
    /// must number them the same (it was built from the same records). Hands the part back
    /// when those slots are not exactly some layers' or the part does not fit them.
    pub fn install_part(&mut self, segment: u32, part: Part) -> Result<(), Part> {
        let slots = segment..segment + part.covered_count() as u32;
        let Some(first) = self.layers.iter().position(|layer| layer.segments().start == slots.start) else {
            return Err(part);
        };
        let mut last = first;
        while self.layers[last].segments().end < slots.end && last + 1 < self.layers.len() {
            last += 1;
        }
        let replaced = &self.layers[first..=last];
        let (base, len) = (replaced[0].base(), replaced.iter().map(Layer::len).sum::<u32>());
        if replaced[last - first].segments().end != slots.end || part.len() != len {
            return Err(part);
        }
        let mapped = MappedLayer::new(part, base, segment, |pubkey| self.intern_author(pubkey));
        let fits = (0..len).all(|local| {
            let layer = layer_of(&self.layers[first..=last], base + local);
            mapped_id(&mapped, local) == layer.id(base + local - layer.base())
        });
        if !fits {
            return Err(mapped.into_part());
        }
        mapped.part.release_pages();
        self.layers.splice(first..=last, [Layer::Mapped(mapped)]);
        Ok(())
    }

    /// Which segment slots have their events in memory.
    pub fn memory_segments(&self) -> impl Iterator<Item = u32> + '_ {
        self.layers.iter().filter(|layer| matches!(layer, Layer::Memory(_))).map(Layer::segment)
    }

    /// The first `fan_in` consecutive parts that each index the same number of segments,
    /// no more than `segments_max` together: the segment slots a merge would join.
    pub fn parts_to_merge(&self, fan_in: usize, segments_max: usize) -> Option<std::ops::Range<u32>> {
        let mapped: Vec<std::ops::Range<u32>> = self
            .layers
            .iter()
            .map(|layer| match layer {
                // A compacted layer keeps numbers its part has no entry for: never merged.
                Layer::Mapped(_) if !layer.is_compacted() => layer.segments(),
                _ => 0..0,
            })
            .collect();
        mapped.windows(fan_in).find_map(|window| {
            let size = window[0].len();
            let joinable = size > 0
                && size * fan_in <= segments_max
                && window.iter().all(|slots| slots.len() == size)
                && window.windows(2).all(|pair| pair[0].end == pair[1].start);
            joinable.then(|| window[0].start..window[fan_in - 1].end)
        })
    }

    /// A part's event `no`, its expiration and its author's key.
    fn part_entry(&self, no: EventNo) -> (Entry, Option<u64>, [u8; 32]) {
        let layer = self.layers.last().expect("a part is loading");
        let local = no - layer.base();
        let Layer::Mapped(mapped) = layer else { unreachable!("a part is loading") };
        let expiration = Some(mapped.part.entry(local).expiration.to_native()).filter(|&at| at != 0);
        let entry = layer.entry(local);
        (entry, expiration, *self.author_key(entry.author))
    }
}
