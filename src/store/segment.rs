//! Segment files of one shard: naming, the in-memory image of the segment being written,
//! read-only maps of sealed ones, and the scan that checks every record at open.

use std::fs;
use std::path::{Path, PathBuf};

use super::crypto::{self, SegmentKey, TAG_SIZE};
use super::format::{
    self, read_slot, FormatError, RecordSpan, SegmentHeader, Slot, SEAL_RECORD_SIZE, SEGMENT_HEADER_SIZE,
};
use super::record::{self, ArchivedRecord};
use crate::limits::BLOCK_SIZE;

/// A page-aligned buffer: the image of the segment being written, from which direct I/O
/// copies, and in which rkyv archives are aligned.
///
/// Bytes before `dirty_from` are zero or written since; bytes from it on may hold a previous
/// segment's records when the buffer is [recycled](AlignedBuf::recycle), and
/// [`AlignedBuf::clean_through`] zeroes them just ahead of the writer.
pub struct AlignedBuf {
    map: memmap2::MmapMut,
    dirty_from: usize,
}

/// How far ahead of the writer a recycled image is zeroed at a time: one memset per 64 KiB
/// instead of one per record.
const CLEAN_AHEAD: usize = 64 * 1024;

impl AlignedBuf {
    /// A fresh image, zeroed by the kernel page by page as the writer first touches it.
    ///
    /// On small pages: a transparent huge page is zeroed whole on its first touch, which on
    /// this VM (~0.6 GB/s) held the event loop ~3 ms every 2 MiB of events. Publish→OK p99 at
    /// 12,500 events/s on one core was 8.0–10.4 ms with huge pages and 4.1–7.0 ms without
    /// (docs/benchmarks.md); the CPU per event did not change.
    pub fn zeroed(size: usize) -> std::io::Result<AlignedBuf> {
        assert!(size > 0 && size.is_multiple_of(BLOCK_SIZE));
        let map = memmap2::MmapMut::map_anon(size)?;
        // Only a hint: a kernel without transparent huge pages refuses it, and has none to avoid.
        let _ = map.advise(memmap2::Advice::NoHugePage);
        Ok(AlignedBuf { map, dirty_from: size })
    }

    pub fn size(&self) -> usize {
        self.map.len()
    }

    /// The same memory for a new segment: its old bytes count as dirty. Reusing the image
    /// spares the kernel faulting in and zeroing fresh pages while events are written.
    pub fn recycle(mut self) -> AlignedBuf {
        self.dirty_from = 0;
        self
    }

    /// Make every byte before `end` zero or written: zero the dirty bytes up to `end`, and a
    /// little further so that the next records find them clean.
    pub fn clean_through(&mut self, end: usize) {
        if end <= self.dirty_from {
            return;
        }
        let to = end.max(self.dirty_from + CLEAN_AHEAD).min(self.size());
        let from = self.dirty_from;
        self.map[from..to].fill(0);
        self.dirty_from = to;
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map
    }
}

/// blake3 of a segment's bytes as they are written, for the seal record that ends it. Fed in
/// 64 KiB steps: blake3 hashes a step's 64 chunks side by side in SIMD lanes, ~10× faster
/// than record-sized updates, and no step holds the event loop more than ~10 µs.
pub struct SealHasher {
    hasher: blake3::Hasher,
    fed: usize,
}

const SEAL_HASH_STEP: usize = 64 * 1024;

impl SealHasher {
    pub fn new() -> SealHasher {
        SealHasher { hasher: blake3::Hasher::new(), fed: 0 }
    }

    /// Feed the whole steps of `written` (the segment's bytes so far) not fed yet.
    pub fn feed(&mut self, written: &[u8]) {
        while written.len() - self.fed >= SEAL_HASH_STEP {
            self.hasher.update(&written[self.fed..self.fed + SEAL_HASH_STEP]);
            self.fed += SEAL_HASH_STEP;
        }
    }

    /// The hash of all of `written`.
    pub fn finish(mut self, written: &[u8]) -> [u8; 32] {
        self.hasher.update(&written[self.fed..]);
        *self.hasher.finalize().as_bytes()
    }
}

impl Default for SealHasher {
    fn default() -> Self {
        SealHasher::new()
    }
}

/// The bytes of a segment: a read-only map once sealed, the write image while open.
pub enum SegmentBytes {
    Mapped(memmap2::Mmap),
    Image(AlignedBuf),
    /// A file of zero length.
    Empty,
}

impl SegmentBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            SegmentBytes::Mapped(map) => map,
            SegmentBytes::Image(image) => image.as_slice(),
            SegmentBytes::Empty => &[],
        }
    }
}

/// Map a segment file read-only.
pub fn map_file(path: &Path) -> std::io::Result<SegmentBytes> {
    let file = fs::File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(SegmentBytes::Empty);
    }
    // SAFETY: segment files are append-only and sealed segments are never written again;
    // the data directory is locked against other ringrelay processes.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    Ok(SegmentBytes::Mapped(map))
}

pub fn segment_file_name(segment_id: u32) -> String {
    format!("seg-{segment_id:010}.rr")
}

/// The segment files of a shard directory, by ascending id.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<(u32, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_prefix("seg-")).and_then(|n| n.strip_suffix(".rr")) else {
            continue;
        };
        if let Ok(id) = id.parse::<u32>() {
            segments.push((id, entry.path()));
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// A record decoded from a segment: borrowed in place, or decrypted into a scratch buffer.
pub struct RecordBytes<'a> {
    plain: PlainBytes<'a>,
}

enum PlainBytes<'a> {
    InPlace(&'a [u8]),
    Decrypted(rkyv::util::AlignedVec<16>),
}

impl RecordBytes<'_> {
    pub fn bytes(&self) -> &[u8] {
        match &self.plain {
            PlainBytes::InPlace(bytes) => bytes,
            PlainBytes::Decrypted(buffer) => buffer,
        }
    }
}

/// The plaintext archive of the record at `span`, decrypting when it is encrypted.
pub fn record_bytes<'a>(
    segment: &'a [u8],
    span: &RecordSpan,
    key: Option<&SegmentKey>,
    nonce: impl FnOnce() -> [u8; 12],
) -> Result<RecordBytes<'a>, FormatError> {
    let payload = &segment[span.payload_range()];
    if !span.is_encrypted() {
        return Ok(RecordBytes { plain: PlainBytes::InPlace(payload) });
    }
    let key = key.ok_or(FormatError::Decrypt)?;
    let split = payload.len().checked_sub(TAG_SIZE).ok_or(FormatError::Decrypt)?;
    let mut buffer = rkyv::util::AlignedVec::<16>::with_capacity(split);
    buffer.extend_from_slice(&payload[..split]);
    key.open(nonce(), span.header_prefix(segment), &mut buffer, &payload[split..])?;
    Ok(RecordBytes { plain: PlainBytes::Decrypted(buffer) })
}

/// What a scan of one segment found.
pub struct ScanReport {
    pub header: SegmentHeader,
    /// Offset just past the last valid record.
    pub valid_end: usize,
    /// The first bad record, if the scan stopped at one.
    pub corrupt: Option<(usize, FormatError)>,
    /// Whether the segment ends in a seal that holds (and was checked in one pass).
    pub sealed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyMismatch {
    #[error("segment is encrypted and no key was given")]
    Missing,
    #[error("segment was encrypted with a different key")]
    Wrong,
}

/// Check a segment header against the key the operator gave.
pub fn check_key(header: &SegmentHeader, key: Option<&SegmentKey>) -> Result<(), KeyMismatch> {
    match (header.key_check, key) {
        (None, _) => Ok(()),
        (Some(_), None) => Err(KeyMismatch::Missing),
        (Some(check), Some(key)) if check == key.check_value() => Ok(()),
        (Some(_), Some(_)) => Err(KeyMismatch::Wrong),
    }
}

/// Walk every record of `segment`, checking checksum, decryption and archive, and hand each
/// valid one to `visit`. Stops at the end of data or at the first bad record.
///
/// A segment whose seal holds is checked with that one hash, and its records' own checksums
/// are not read again; any other segment (no seal: the newest, or one a crash left open; or
/// a seal that fails) record by record, which also finds where the damage is.
pub fn scan(
    segment: &[u8],
    key: Option<&SegmentKey>,
    mut visit: impl FnMut(&RecordSpan, &ArchivedRecord),
) -> Result<ScanReport, FormatError> {
    let header = SegmentHeader::decode(segment)?;
    let seal = format::seal_offset(segment);
    let mut offset = SEGMENT_HEADER_SIZE;
    let corrupt = loop {
        let slot = match seal {
            Some(seal) if offset < seal => match format::span_in_sealed_segment(segment, offset) {
                Some(span) => Slot::Record(span),
                None => Slot::Corrupt(FormatError::SealChecksum),
            },
            _ => read_slot(segment, offset),
        };
        let span = match slot {
            Slot::End => break None,
            Slot::Corrupt(error) => break Some((offset, error)),
            // A seal ends the records. One that `seal_offset` did not vouch for is checked here:
            // every record before it checked out, so the seal itself is wrong, or what follows.
            Slot::Seal { hash, .. } => {
                if seal != Some(offset) {
                    if let Err(damage) = format::check_seal(segment, offset, &hash) {
                        break Some(damage);
                    }
                }
                offset += SEAL_RECORD_SIZE;
                continue;
            }
            Slot::Record(span) => span,
        };
        let nonce = || crypto::nonce(header.shard_id, header.segment_id, offset as u32);
        let checked = record_bytes(segment, &span, key, nonce)
            .and_then(|bytes| record::access(bytes.bytes()).map(|record| visit(&span, record)));
        if let Err(error) = checked {
            break Some((offset, error));
        }
        offset = span.end();
    };
    Ok(ScanReport { header, valid_end: offset, corrupt, sealed: seal.is_some() })
}

/// The scrub of a sealed, unencrypted segment file opened through its index part: its seal
/// (the file's last record) checked over every byte before it, a piece at a time, so that
/// the scrub can rest between pieces. `Send`: each piece runs on a blocking thread.
pub struct Scrub {
    path: std::path::PathBuf,
    file: fs::File,
    buffer: Vec<u8>,
    hasher: blake3::Hasher,
    at: usize,
    seal_at: usize,
    seal: [u8; 32],
}

/// Where a scrubbed segment is damaged, and how.
pub type Damage = (usize, String);

impl Scrub {
    /// Open `path` and read its seal; the damage at once when it has none.
    pub fn open(path: &Path) -> Result<Scrub, Damage> {
        use std::os::unix::fs::FileExt;
        let io = |error: std::io::Error| (0, error.to_string());
        let file = fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len() as usize;
        let seal_at = len.checked_sub(format::SEAL_RECORD_SIZE).filter(|&at| at % format::RECORD_ALIGN == 0);
        let seal = seal_at.and_then(|at| {
            let mut record = [0u8; format::SEAL_RECORD_SIZE];
            file.read_exact_at(&mut record, at as u64).ok()?;
            match read_slot(&record, 0) {
                Slot::Seal { hash, .. } => Some(hash),
                _ => None,
            }
        });
        match (seal_at, seal) {
            (Some(seal_at), Some(seal)) => Ok(Scrub {
                path: path.to_owned(),
                file,
                buffer: Vec::new(),
                hasher: blake3::Hasher::new(),
                at: 0,
                seal_at,
                seal,
            }),
            _ => Err(first_damage_of(path)),
        }
    }

    /// Hash up to `size` more bytes, read past the page cache's keeping (the scrub reads
    /// every segment once: it must not push out what queries read); the outcome once every
    /// byte before the seal is hashed (`Ok`: the seal holds).
    pub fn step(&mut self, size: usize) -> Option<Result<(), Damage>> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        let end = (self.at + size).min(self.seal_at);
        self.buffer.resize(end - self.at, 0);
        if let Err(error) = self.file.read_exact_at(&mut self.buffer, self.at as u64) {
            return Some(Err((self.at, error.to_string())));
        }
        self.hasher.update(&self.buffer);
        // SAFETY: advice on an open descriptor's range; pages still mapped by the relay stay.
        unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                self.at as i64,
                (end - self.at) as i64,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        self.at = end;
        if end < self.seal_at {
            return None;
        }
        Some(match self.hasher.finalize().as_bytes() == &self.seal {
            true => Ok(()),
            false => Err(first_damage_of(&self.path)),
        })
    }
}

/// Where the segment at `path`, whose seal does not hold, is damaged.
fn first_damage_of(path: &Path) -> Damage {
    match map_file(path) {
        Ok(bytes) => first_damage(bytes.as_slice()),
        Err(error) => (0, error.to_string()),
    }
}

/// Where a segment whose seal does not hold is damaged: its first bad record, else the seal.
fn first_damage(bytes: &[u8]) -> Damage {
    match scan(bytes, None, |_, _| {}) {
        Err(error) => (0, error.to_string()),
        Ok(ScanReport { corrupt: Some((offset, error)), .. }) => (offset, error.to_string()),
        Ok(report) => (report.valid_end, "the segment's seal does not hold".to_owned()),
    }
}

/// Write `bytes` at `offset` of an existing file and make them durable.
pub fn append_durably(path: &Path, offset: usize, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = fs::OpenOptions::new().write(true).open(path)?;
    file.write_all_at(bytes, offset as u64)?;
    file.sync_data()
}

/// Cut a segment file at `length` and make the cut durable.
pub fn truncate_file(path: &Path, length: usize) -> std::io::Result<()> {
    let file = fs::OpenOptions::new().write(true).open(path)?;
    file.set_len(length as u64)?;
    file.sync_all()
}

/// Write `contents` to `path` atomically and durably (temp file, fsync, rename, fsync dir).
pub fn write_durably(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_all_durably(path, &[contents])
}

/// Write `pieces`, one after the other, to `path` as [`write_durably`] does.
pub fn write_all_durably(path: &Path, pieces: &[&[u8]]) -> std::io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    let mut file = fs::File::create(&temp)?;
    for piece in pieces {
        file.write_all(piece)?;
    }
    file.sync_all()?;
    fs::rename(&temp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// A whole sealed segment holding `archives` (plaintext rkyv archives, in order), encrypted
/// when `key` is given, as `repair` writes it in one go: every record says all of the
/// segment before it is durable, which holds once the file is written and synced.
pub fn build_sealed_segment<A: AsRef<[u8]>>(
    header: &SegmentHeader,
    key: Option<&SegmentKey>,
    archives: &[A],
) -> Vec<u8> {
    let mut bytes = vec![0u8; SEGMENT_HEADER_SIZE];
    header.encode(&mut bytes);
    for archive in archives {
        let archive = archive.as_ref();
        let offset = bytes.len();
        let payload_size = archive.len() + if key.is_some() { TAG_SIZE } else { 0 };
        let flags = if key.is_some() { format::RECORD_FLAG_ENCRYPTED } else { 0 };
        bytes.resize(format::record_end(offset, payload_size), 0);
        let payload_start = offset + format::RECORD_HEADER_SIZE;
        bytes[payload_start..payload_start + archive.len()].copy_from_slice(archive);
        if let Some(key) = key {
            let prefix = format::record_prefix(payload_size, flags, offset as u64);
            let nonce = crypto::nonce(header.shard_id, header.segment_id, offset as u32);
            let (plain, rest) = bytes[payload_start..].split_at_mut(archive.len());
            let tag = key.seal(nonce, &prefix, plain);
            rest[..TAG_SIZE].copy_from_slice(&tag);
        }
        format::finish_record(&mut bytes, offset, payload_size, flags, offset as u64);
    }
    let seal_at = bytes.len();
    let hash = blake3::hash(&bytes);
    bytes.resize(seal_at + SEAL_RECORD_SIZE, 0);
    format::write_seal(&mut bytes, seal_at, hash.as_bytes());
    bytes
}
