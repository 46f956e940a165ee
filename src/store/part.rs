//! A sealed segment's index part (`seg-NNNNNNNNNN.ix` beside `seg-NNNNNNNNNN.rr`): the
//! segment's entries, its postings per author, kind and tag, and the tags the storage rules
//! read (a versioned event's `d`, a deletion's `e` and `a`), written once when the segment
//! is sealed and mapped at open instead of replaying the segment. Derived data: a part that
//! is missing, damaged, of another version, or that names a different seal than its
//! segment's, is rebuilt from the segment, never trusted over it. Layout: docs/FORMAT.md.
//!
//! ```text
//! part := magic "RRINDEXP" | version u32 | shard u16 | 0 u16 | segment id u32 | 0 u32
//!         | body size u64 | blake3(body) [32] | body (rkyv `PartBody`)
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rkyv::{Archive, Serialize};

use super::format::{self, FormatError, SEAL_RECORD_SIZE};
use super::record::ArchivedRecord;
use super::segment::{self, SegmentBytes};
use crate::event::kind::KIND_DELETION;
use crate::event::KindClass;

pub const PART_MAGIC: [u8; 8] = *b"RRINDEXP";
/// Version 2: a part may index several consecutive segments (a merge of their parts).
pub const PART_VERSION: u32 = 2;
pub const PART_HEADER_SIZE: usize = 64;

/// The archived body of a part.
#[derive(Archive, Serialize, Debug, Default)]
pub struct PartBody {
    /// The consecutive segments the part indexes, in order.
    pub segments: Vec<Covered>,
    /// The key of the tag hashes (random per part, so that no one can aim collisions).
    pub tag_key: [u8; 32],
    /// One per record, in segment order (a record's local number is its place here).
    pub entries: Vec<PartEntry>,
    /// Sorted, each with its list in `postings`.
    pub authors: Vec<[u8; 32]>,
    pub author_lists: Vec<Span>,
    pub kinds: Vec<u16>,
    pub kind_lists: Vec<Span>,
    pub tags: Vec<u64>,
    pub tag_lists: Vec<Span>,
    pub global: Span,
    /// Local numbers; each list in (created_at, number) order, oldest first.
    pub postings: Vec<u32>,
    /// The tags the rules read, for the records that have any, by ascending local number.
    pub rule_tags: Vec<RuleTags>,
}

/// A segment a part indexes: its id, its length and the hash its seal record carries.
#[derive(Archive, Serialize, Debug, Clone, Copy)]
pub struct Covered {
    pub id: u32,
    pub size: u64,
    pub seal: [u8; 32],
}

#[derive(Archive, Serialize, Debug, Clone, Copy)]
pub struct PartEntry {
    pub id: [u8; 32],
    pub created_at: u64,
    /// NIP-40 expiration; 0 when absent.
    pub expiration: u64,
    pub offset: u32,
    /// The author's place in `authors`.
    pub author: u32,
    pub kind: u16,
    /// The record's segment: a place in `segments`.
    pub segment: u16,
}

#[derive(Archive, Serialize, Debug, Default, Clone, Copy)]
pub struct Span {
    pub start: u32,
    pub len: u32,
}

#[derive(Archive, Serialize, Debug)]
pub struct RuleTags {
    pub no: u32,
    pub tags: Vec<RuleTag>,
}

#[derive(Archive, Serialize, Debug)]
pub struct RuleTag {
    pub letter: u8,
    pub value: Vec<u8>,
}

/// Why a part file is not used (it is rebuilt from its segment).
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not an index part, or of another version")]
    Header,
    #[error("body checksum mismatch")]
    Checksum,
    #[error("invalid body: {0}")]
    Body(String),
    #[error("indexes another version of its segment")]
    Stale,
}

/// The part file of a segment file.
pub fn part_path(segment_path: &Path) -> PathBuf {
    segment_path.with_extension("ix")
}

/// The tags of a record the storage rules read: a versioned event's `d`, a deletion's `e`
/// and `a` tags.
fn rule_tags(record: &ArchivedRecord) -> Vec<RuleTag> {
    let class = KindClass::of(record.kind());
    let wanted = |letter: u8| match letter {
        b'd' => class.is_versioned(),
        b'e' | b'a' => record.kind() == KIND_DELETION,
        _ => false,
    };
    record
        .tag_pairs()
        .filter(|&(letter, _)| wanted(letter))
        .map(|(letter, value)| RuleTag { letter, value: value.to_vec() })
        .collect()
}

fn tag_hash(key: &[u8; 32], letter: u8, value: &[u8]) -> u64 {
    let hash = blake3::Hasher::new_keyed(key).update(&[letter]).update(value).finalize();
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Build the part of consecutive sealed, unencrypted segments (one, or the ones a merge
/// joins): every record is read and checked.
pub fn build(segments: &[&[u8]], tag_key: [u8; 32]) -> Result<Built, FormatError> {
    let mut body = PartBody { tag_key, ..PartBody::default() };
    let mut authors: HashMap<[u8; 32], u32> = HashMap::new();
    // (tag hash, local number), each distinct pair of a record once: 16 bytes a tag.
    let mut tags: Vec<(u64, u32)> = Vec::new();
    for (place, &segment) in segments.iter().enumerate() {
        let report = segment::scan(segment, None, |span, record| {
            let next = authors.len() as u32;
            let author = *authors.entry(record.pubkey).or_insert(next);
            let no = body.entries.len() as u32;
            body.entries.push(PartEntry {
                id: record.id,
                created_at: record.created_at(),
                expiration: record.expiration().unwrap_or(0),
                offset: span.offset as u32,
                author,
                kind: record.kind(),
                segment: place as u16,
            });
            let first = tags.len();
            tags.extend(record.tag_pairs().map(|(letter, value)| (tag_hash(&tag_key, letter, value), no)));
            tags[first..].sort_unstable();
            let distinct = dedup_tail(&mut tags, first);
            tags.truncate(distinct);
            let wanted = rule_tags(record);
            if !wanted.is_empty() {
                body.rule_tags.push(RuleTags { no, tags: wanted });
            }
        })?;
        if let Some((offset, error)) = report.corrupt {
            return Err(FormatError::Archive(format!("at {offset}: {error}")));
        }
        let seal = match report.valid_end.checked_sub(SEAL_RECORD_SIZE).map(|at| format::read_slot(segment, at)) {
            Some(format::Slot::Seal { hash, .. }) => hash,
            _ => return Err(FormatError::SealChecksum),
        };
        body.segments.push(Covered { id: report.header.segment_id, size: report.valid_end as u64, seal });
    }
    // Authors numbered in first-seen order, renumbered in pubkey order.
    let mut by_key: Vec<([u8; 32], u32)> = authors.into_iter().collect();
    by_key.sort_unstable();
    let mut renumber = vec![0u32; by_key.len()];
    for (place, &(_, first_seen)) in by_key.iter().enumerate() {
        renumber[first_seen as usize] = place as u32;
    }
    body.entries.iter_mut().for_each(|entry| entry.author = renumber[entry.author as usize]);
    body.authors = by_key.iter().map(|&(key, _)| key).collect();
    post(&mut body, &mut tags);
    // Sized at once: a growing buffer would hold up to twice the part while it builds.
    let buffer = rkyv::util::AlignedVec::<16>::with_capacity(archive_size_estimate(&body));
    let bytes = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&body, buffer)
        .map_err(|error| FormatError::Archive(error.to_string()))?;
    let shard = format::SegmentHeader::decode(segments[0])?.shard_id;
    let first_id = body.segments[0].id;
    drop(body);
    Ok(with_header(bytes, shard, first_id))
}

/// Drop the repeats in the sorted `pairs[from..]`; the new length.
fn dedup_tail(pairs: &mut [(u64, u32)], from: usize) -> usize {
    let mut kept = from;
    for at in from..pairs.len() {
        if kept == from || pairs[kept - 1] != pairs[at] {
            pairs[kept] = pairs[at];
            kept += 1;
        }
    }
    kept
}

/// Fill the postings: every list in (created_at, number) order. Each family is one vector
/// of (key, date rank) sorted once, so a build holds a few bytes per posting (a merge of
/// 16 segments builds at once).
fn post(body: &mut PartBody, tags: &mut [(u64, u32)]) {
    let entries = &body.entries;
    let mut order: Vec<u32> = (0..entries.len() as u32).collect();
    order.sort_unstable_by_key(|&no| (entries[no as usize].created_at, no));
    let mut rank = vec![0u32; entries.len()];
    for (place, &no) in order.iter().enumerate() {
        rank[no as usize] = place as u32;
    }
    let mut postings = std::mem::take(&mut body.postings);
    let mut append = |ranks: &mut dyn Iterator<Item = u32>| {
        let start = postings.len() as u32;
        postings.extend(ranks.map(|place| order[place as usize]));
        Span { start, len: postings.len() as u32 - start }
    };
    body.global = append(&mut (0..entries.len() as u32));
    let mut by_author: Vec<(u32, u32)> =
        entries.iter().zip(&rank).map(|(entry, &place)| (entry.author, place)).collect();
    by_author.sort_unstable();
    body.author_lists = groups(&by_author).map(|(_, list)| append(&mut list.iter().map(|&(_, place)| place))).collect();
    drop(by_author);
    let mut by_kind: Vec<(u16, u32)> = entries.iter().zip(&rank).map(|(entry, &place)| (entry.kind, place)).collect();
    by_kind.sort_unstable();
    let (kinds, kind_lists) =
        groups(&by_kind).map(|(kind, list)| (kind, append(&mut list.iter().map(|&(_, place)| place)))).unzip();
    (body.kinds, body.kind_lists) = (kinds, kind_lists);
    drop(by_kind);
    tags.iter_mut().for_each(|(_, no)| *no = rank[*no as usize]);
    tags.sort_unstable();
    let (hashes, tag_lists) =
        groups(tags).map(|(hash, list)| (hash, append(&mut list.iter().map(|&(_, place)| place)))).unzip();
    (body.tags, body.tag_lists) = (hashes, tag_lists);
    body.postings = postings;
}

/// The runs of equal keys of a sorted slice of (key, value) pairs.
fn groups<K: Copy + PartialEq, V>(pairs: &[(K, V)]) -> impl Iterator<Item = (K, &[(K, V)])> {
    pairs.chunk_by(|a, b| a.0 == b.0).map(|run| (run[0].0, run))
}

/// A built part: its header and its archived body, written one after the other.
pub struct Built {
    pub header: Vec<u8>,
    pub body: rkyv::util::AlignedVec<16>,
}

/// About the bytes `body` archives to (a little over: each list's own length and padding).
fn archive_size_estimate(body: &PartBody) -> usize {
    let rules: usize = body.rule_tags.iter().flat_map(|rule| &rule.tags).map(|tag| tag.value.len() + 16).sum();
    body.entries.len() * std::mem::size_of::<ArchivedPartEntry>()
        + body.authors.len() * 40
        + body.kinds.len() * 10
        + body.tags.len() * 16
        + body.postings.len() * 4
        + body.rule_tags.len() * 16
        + rules
        + body.segments.len() * 48
        + 4096
}

fn with_header(body: rkyv::util::AlignedVec<16>, shard: u16, first_id: u32) -> Built {
    let mut header = Vec::with_capacity(PART_HEADER_SIZE);
    header.extend_from_slice(&PART_MAGIC);
    header.extend_from_slice(&PART_VERSION.to_le_bytes());
    header.extend_from_slice(&shard.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&first_id.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&(body.len() as u64).to_le_bytes());
    header.extend_from_slice(blake3::hash(&body).as_bytes());
    Built { header, body }
}

/// A part, mapped and checked: its checksum, its archive, and every number in it within
/// bounds, so that reading it can neither panic nor read out of place.
pub struct Part {
    map: memmap2::Mmap,
    /// Local numbers and entry count, checked at load.
    len: u32,
}

impl Part {
    /// Map and check the part at `path` (shard `shard`, its first segment `id`); whether it
    /// indexes its segments as they are is [`Part::indexes`].
    pub fn load(path: &Path, shard: u16, id: u32) -> Result<Part, PartError> {
        let SegmentBytes::Mapped(map) = segment::map_file(path)? else { return Err(PartError::Header) };
        let all: &[u8] = &map;
        let header = all.get(..PART_HEADER_SIZE).ok_or(PartError::Header)?;
        let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        let body_size = u64::from_le_bytes(header[24..32].try_into().expect("8 bytes"));
        if header[..8] != PART_MAGIC
            || word(8) != PART_VERSION
            || u16::from_le_bytes([header[12], header[13]]) != shard
            || word(16) != id
            || body_size != (all.len() - PART_HEADER_SIZE) as u64
        {
            return Err(PartError::Header);
        }
        let body = &all[PART_HEADER_SIZE..];
        if blake3::hash(body).as_bytes() != &header[32..64] {
            return Err(PartError::Checksum);
        }
        let archived = rkyv::access::<ArchivedPartBody, rkyv::rancor::Error>(body)
            .map_err(|error| PartError::Body(error.to_string()))?;
        let len = check(archived).map_err(PartError::Body)?;
        if archived.segments.first().is_none_or(|first| first.id.to_native() != id) {
            return Err(PartError::Header);
        }
        let part = Part { map, len };
        part.release_pages();
        Ok(part)
    }

    fn body(&self) -> &ArchivedPartBody {
        // SAFETY: `load` checked these bytes with `rkyv::access` (and their checksum); the
        // map is of a file this process never writes again.
        unsafe { rkyv::access_unchecked::<ArchivedPartBody>(&self.map[PART_HEADER_SIZE..]) }
    }

    pub fn len(&self) -> u32 {
        self.len
    }
    /// How many segments it indexes.
    pub fn covered_count(&self) -> usize {
        self.body().segments.len()
    }
    /// The ids of the segments it indexes, in order.
    pub fn covered(&self) -> Vec<u32> {
        self.body().segments.iter().map(|covered| covered.id.to_native()).collect()
    }
    /// Whether it indexes these segments (its covered ones, in order) as they are now.
    pub fn indexes(&self, segments: &[&[u8]]) -> bool {
        let covered = &self.body().segments;
        covered.len() == segments.len()
            && covered.iter().zip(segments).all(|(covered, segment)| describes(covered, segment))
    }
    /// Bytes of the part file.
    pub fn size(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn entry(&self, local: u32) -> &ArchivedPartEntry {
        &self.body().entries[local as usize]
    }
    pub fn authors(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.body().authors.iter()
    }
    /// The tags the rules read of each record that has any, by ascending local number.
    pub fn rule_tags(&self) -> impl Iterator<Item = (u32, Vec<(u8, &[u8])>)> {
        self.body()
            .rule_tags
            .iter()
            .map(|rule| (rule.no.to_native(), rule.tags.iter().map(|tag| (tag.letter, tag.value.as_slice())).collect()))
    }

    fn list(&self, span: &ArchivedSpan) -> &[u32] {
        let postings = postings_slice(&self.body().postings);
        &postings[span.start.to_native() as usize..][..span.len.to_native() as usize]
    }
    pub fn author_list(&self, pubkey: &[u8; 32]) -> &[u32] {
        let body = self.body();
        body.authors.binary_search(pubkey).map_or(&[], |place| self.list(&body.author_lists[place]))
    }
    pub fn kind_list(&self, kind: u16) -> &[u32] {
        let body = self.body();
        body.kinds
            .binary_search_by_key(&kind, |k| k.to_native())
            .map_or(&[], |place| self.list(&body.kind_lists[place]))
    }
    pub fn tag_list(&self, letter: u8, value: &[u8]) -> &[u32] {
        let body = self.body();
        let hash = tag_hash(&body.tag_key, letter, value);
        body.tags.binary_search_by_key(&hash, |h| h.to_native()).map_or(&[], |place| self.list(&body.tag_lists[place]))
    }
    pub fn global_list(&self) -> &[u32] {
        self.list(&self.body().global)
    }

    /// Let the kernel drop the part's pages from this process (they stay cached): what a
    /// load read is not kept resident.
    pub fn release_pages(&self) {
        // SAFETY: a read-only shared map of a file: its pages are read back from the file.
        let _ = unsafe { self.map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
    }
}

/// Archived postings as plain `u32`s: the archive is little-endian, like every host the
/// relay builds for.
fn postings_slice(postings: &rkyv::vec::ArchivedVec<rkyv::rend::u32_le>) -> &[u32] {
    const _: () = assert!(cfg!(target_endian = "little"), "index parts are little-endian");
    const _: () = assert!(std::mem::size_of::<rkyv::rend::u32_le>() == 4);
    let slice = postings.as_slice();
    assert!(slice.as_ptr().align_offset(std::mem::align_of::<u32>()) == 0, "postings are aligned");
    // SAFETY: same size, alignment checked, and on a little-endian host the same value.
    unsafe { std::slice::from_raw_parts(slice.as_ptr().cast::<u32>(), slice.len()) }
}

/// Every number in the part within bounds; returns the entry count.
fn check(body: &ArchivedPartBody) -> Result<u32, String> {
    let len = u32::try_from(body.entries.len()).map_err(|_| "too many entries".to_owned())?;
    let postings = body.postings.len();
    let span_ok = |span: &ArchivedSpan| {
        (span.start.to_native() as usize).checked_add(span.len.to_native() as usize).is_some_and(|end| end <= postings)
    };
    let lists_ok = body.author_lists.len() == body.authors.len()
        && body.kind_lists.len() == body.kinds.len()
        && body.tag_lists.len() == body.tags.len()
        && span_ok(&body.global)
        && body.author_lists.iter().chain(body.kind_lists.iter()).chain(body.tag_lists.iter()).all(span_ok);
    if !lists_ok {
        return Err("a list lies outside the postings".into());
    }
    if body.postings.as_slice().as_ptr().align_offset(4) != 0 {
        return Err("misaligned postings".into());
    }
    if body.postings.iter().any(|no| no.to_native() >= len) {
        return Err("a posting names no entry".into());
    }
    let (authors, segments) = (body.authors.len(), body.segments.len());
    // A record's offset is read back with `format::read_slot`, which wants it aligned.
    let out_of_bounds = |entry: &ArchivedPartEntry| {
        entry.author.to_native() as usize >= authors
            || usize::from(entry.segment.to_native()) >= segments
            || !(entry.offset.to_native() as usize).is_multiple_of(format::RECORD_ALIGN)
    };
    if body.entries.iter().any(out_of_bounds) {
        return Err("an entry names no author, no segment, or no record's place".into());
    }
    if body.rule_tags.iter().any(|rule| rule.no.to_native() >= len) {
        return Err("rule tags name no entry".into());
    }
    Ok(len)
}

/// Whether `covered` describes this very segment: its length and the hash its seal carries.
fn describes(covered: &ArchivedCovered, segment: &[u8]) -> bool {
    let size = covered.size.to_native() as usize;
    size == segment.len()
        && size >= SEAL_RECORD_SIZE
        && matches!(format::read_slot(segment, size - SEAL_RECORD_SIZE), format::Slot::Seal { hash, .. } if hash == covered.seal)
}

/// Whether the part at `path` is exactly what building it from `segments` (its covered
/// ones) gives, with the part's own tag key: what `verify` checks.
pub fn agrees(path: &Path, shard: u16, id: u32, segments: &[&[u8]]) -> Result<(), PartError> {
    let part = Part::load(path, shard, id)?;
    if !part.indexes(segments) {
        return Err(PartError::Stale);
    }
    let rebuilt = build(segments, part.body().tag_key).map_err(|error| PartError::Body(error.to_string()))?;
    match part.map.get(..PART_HEADER_SIZE) == Some(&rebuilt.header[..])
        && part.map[PART_HEADER_SIZE..] == rebuilt.body[..]
    {
        true => Ok(()),
        false => Err(PartError::Body("it differs from the part its segment gives".into())),
    }
}

/// Remove the part of a segment file, if it has one.
pub fn remove(segment_path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(part_path(segment_path)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Build, write (durably: temp file, fsync, rename, fsync of the directory) and load the
/// part of the consecutive sealed segments at `paths` (shard `shard`, the first's id
/// `id`), as the first one's part. Runs off the cores, on glommio's blocking threads.
pub fn build_file(paths: &[PathBuf], shard: u16, id: u32) -> Result<Part, PartError> {
    let maps = paths.iter().map(|path| segment::map_file(path)).collect::<Result<Vec<_>, _>>()?;
    let segments: Vec<&[u8]> = maps.iter().map(SegmentBytes::as_slice).collect();
    let built = build(&segments, new_tag_key()).map_err(|error| PartError::Body(error.to_string()))?;
    let path = part_path(&paths[0]);
    segment::write_all_durably(&path, &[&built.header, &built.body])?;
    let part = Part::load(&path, shard, id)?;
    match part.indexes(&segments) {
        true => Ok(part),
        false => Err(PartError::Stale),
    }
}

/// A fresh random tag key.
pub fn new_tag_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    // SAFETY: getrandom writes at most `key.len()` bytes into the buffer.
    let filled = unsafe { libc::getrandom(key.as_mut_ptr().cast(), key.len(), 0) };
    assert_eq!(filled, key.len() as isize, "the kernel's random source failed");
    key
}
