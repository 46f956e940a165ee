//! One shard's storage, synchronous part: open and replay segments, apply the rules,
//! encode records into the segment image, and read records back. The glommio committer
//! that makes appends durable lives in `writer`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use futures_channel::oneshot;
use glommio::io::DmaFile;

use super::crypto::{self, SegmentKey, TAG_SIZE};
use super::faults::{Faults, IoOp};
use super::format::{
    self, record_end, FormatError, SegmentHeader, RECORD_FLAG_ENCRYPTED, RECORD_HEADER_SIZE, SEAL_RECORD_SIZE,
    SEGMENT_HEADER_SIZE,
};
use super::index::{Admit, EventNo, Facts, Index, Loc, Rejection};

mod compact;
mod open;
mod parts;
use super::query::RecordSource;
use super::record::{self, ArchivedRecord, Record};
use super::segment::{self, AlignedBuf, KeyMismatch, SealHasher, SegmentBytes};
use super::ShardId;
use crate::event::VerifiedEvent;
use crate::limits::{BLOCK_SIZE, SEGMENT_SIZE_MAX, SEGMENT_SIZE_MIN};
use crate::measure::{Counter, Histogram, HistogramSnapshot};
pub use compact::{CompactionPolicy, CompactionStats};
pub use open::Prepared;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: corrupt record at offset {offset}: {error} (`ringrelay verify` lists the damage, `ringrelay repair` moves it aside)")]
    Corrupt { path: PathBuf, offset: usize, error: FormatError },
    #[error("{path}: {error}")]
    Key { path: PathBuf, error: KeyMismatch },
    #[error("storage failed: {0}")]
    Failed(String),
    /// Writes are refused for now (a full disk, the free-space reserve, an I/O error); the
    /// shard retries by itself and resumes when the cause is gone.
    #[error("storage refuses writes: {0}")]
    Refusing(Refusal),
    #[error("{0}")]
    DataDir(String),
}

pub fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// How a shard is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Cut a torn tail, start a fresh segment, accept appends.
    ReadWrite,
    /// Change nothing on disk (verify, export).
    ReadOnly,
}

#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub segment_size: usize,
    pub key: Option<SegmentKey>,
    /// Free bytes the filesystem must keep: below it new events are refused, so that what
    /// is already appended, a rotation and a seal still fit.
    pub reserve_bytes: u64,
    /// Injected I/O faults (tests); none otherwise.
    pub faults: Faults,
    /// When sealed segments are rewritten without their dead records, while serving.
    pub compaction: CompactionPolicy,
}

impl ShardConfig {
    pub fn new(segment_size: usize, key: Option<SegmentKey>) -> ShardConfig {
        assert!((SEGMENT_SIZE_MIN..=SEGMENT_SIZE_MAX).contains(&segment_size));
        assert!(segment_size.is_multiple_of(BLOCK_SIZE));
        ShardConfig {
            segment_size,
            key,
            reserve_bytes: 0,
            faults: Faults::default(),
            compaction: CompactionPolicy::default(),
        }
    }

    pub fn with_compaction(self, compaction: CompactionPolicy) -> ShardConfig {
        ShardConfig { compaction, ..self }
    }

    pub fn with_reserve(self, reserve_bytes: u64) -> ShardConfig {
        ShardConfig { reserve_bytes, ..self }
    }

    pub fn with_faults(self, faults: Faults) -> ShardConfig {
        ShardConfig { faults, ..self }
    }
}

/// Why a shard refuses writes for now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub cause: RefusalCause,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalCause {
    /// Free space fell below the reserve: what is already appended is still committed.
    Reserve,
    /// A write or fdatasync failed for lack of space (ENOSPC, EDQUOT), or
    Full,
    /// for another reason (EIO, ...). Either way every append it covered failed, and the
    /// unacknowledged range is written again from the image on retry.
    Io,
}

impl RefusalCause {
    /// The cause of a failed write or fdatasync.
    pub fn of(error: &std::io::Error) -> RefusalCause {
        match error.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => RefusalCause::Full,
            _ => RefusalCause::Io,
        }
    }
}

impl Refusal {
    /// Whether the cause is a lack of space (the reserve, ENOSPC or EDQUOT).
    pub fn is_full(&self) -> bool {
        self.cause != RefusalCause::Io
    }

    /// Whether already appended records are still being committed (only the reserve).
    pub fn commits_continue(&self) -> bool {
        self.cause == RefusalCause::Reserve
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// What became of an append, before durability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Written to the image; durable once the committer's fsync covers it.
    Stored(EventNo),
    /// Already stored; `pending` is its number while it is not yet durable (a duplicate is
    /// acknowledged only once the original is on disk).
    Duplicate {
        pending: Option<EventNo>,
    },
    Ephemeral,
    Rejected(Rejection),
}

/// One segment of the shard.
pub(super) struct Segment {
    pub id: u32,
    pub path: PathBuf,
    pub bytes: SegmentBytes,
    /// Bytes in use: header plus records.
    pub len: usize,
    /// Bytes known to be on disk.
    pub durable_len: usize,
    /// Open for direct-I/O writes while the segment is being written.
    pub file: Option<Rc<DmaFile>>,
    /// Every record was checked at open (or written by this process). A segment opened
    /// through its index part was not read: its records are checked as they are read.
    pub checked: bool,
}

impl Segment {
    /// Bytes not yet on disk; a segment with no record yet gets its file with its first record.
    pub fn needs_flush(&self) -> bool {
        self.durable_len < self.len && self.len > SEGMENT_HEADER_SIZE
    }
}

/// A problem found when opening a shard, and what was done about it.
#[derive(Clone, Debug)]
pub struct Repair {
    pub path: PathBuf,
    pub offset: usize,
    pub cut_bytes: usize,
    pub reason: String,
}

pub struct ShardState {
    pub shard_id: ShardId,
    pub dir: PathBuf,
    config: ShardConfig,
    pub index: Index,
    pub(super) segments: Vec<Segment>,
    writable: bool,
    next_segment_id: u32,
    pub(super) waiters: VecDeque<(EventNo, oneshot::Sender<Result<(), String>>)>,
    /// Set while writes are refused; the committer clears it once the cause is gone.
    pub(super) refusing: Option<Refusal>,
    /// What open found and cut, for the operator.
    pub repairs: Vec<Repair>,
    /// Reused for every record's rkyv encoding.
    scratch: rkyv::util::AlignedVec<16>,
    /// The image of the last sealed segment, kept for the next one (see [`AlignedBuf::recycle`]).
    pub(super) spare_image: Option<AlignedBuf>,
    /// The active segment's bytes so far, hashed for its seal record.
    seal_hash: SealHasher,
    /// The active segment ends in its seal record: the next record begins a new segment.
    active_sealed: bool,
    /// What the committer measures, read at scrape time.
    pub(super) commits: CommitStats,
    /// Rung when a sealed segment may be given its index part (see `writer`'s indexer).
    pub(super) indexer_bell: Option<futures_channel::mpsc::Sender<()>>,
    /// Segment slots whose part could not be built (served from memory until a restart).
    part_failures: Vec<u32>,
    /// Ids of the segments the scrub found damaged.
    damaged: Vec<u32>,
    /// What online compaction has done.
    pub(super) compactions: CompactionStats,
    /// Set when a compaction failed before it replaced anything: none until then.
    compaction_pause: Option<std::time::Instant>,
    /// Segments with this id or higher are not compacted: a search index has not committed
    /// past them, and finds its place in them by offset (`hold_compaction_from`).
    compaction_held_from: Option<u32>,
}

/// The committer's figures for one shard.
#[derive(Debug)]
pub struct CommitStats {
    /// Time of each segment file's `fdatasync`.
    pub fsync_seconds: Histogram,
    /// Events made durable per group commit.
    pub batch_events: Histogram,
    /// Bytes handed to `write_at` (a partly filled last block is written again by the next
    /// commit, so this is at least the bytes appended).
    pub written_bytes: Counter,
    pub failures: Counter,
}

impl Default for CommitStats {
    fn default() -> CommitStats {
        CommitStats {
            fsync_seconds: Histogram::latency(),
            batch_events: Histogram::new(crate::measure::BATCH_BOUNDS),
            written_bytes: Counter::default(),
            failures: Counter::default(),
        }
    }
}

/// One shard's figures at one moment, for `/metrics`.
#[derive(Clone, Debug)]
pub struct ShardFigures {
    pub shard: ShardId,
    pub segments: u64,
    /// Bytes in the shard's segment files.
    pub bytes: u64,
    /// Of those, bytes held by dead records (replaced, deleted, expired), which compaction
    /// drops: estimated per segment from its share of dead records.
    pub dead_bytes: u64,
    /// Records indexed, and of those the ones still served.
    pub records: u64,
    pub live_records: u64,
    /// The in-memory indexes' heap bytes.
    pub index_bytes: u64,
    /// Sealed segments served through their mapped index parts, and those parts' bytes.
    pub parts: u64,
    pub part_bytes: u64,
    /// Segments the scrub found damaged, and those opened through their parts that it has
    /// not checked yet.
    pub damaged_segments: u64,
    pub unscrubbed_segments: u64,
    pub refusal: Option<RefusalCause>,
    pub fsync_seconds: HistogramSnapshot,
    pub batch_events: HistogramSnapshot,
    pub written_bytes: u64,
    pub commit_failures: u64,
    /// Online compactions done and failed, the bytes they reclaimed and wrote.
    pub compactions: u64,
    pub compaction_failures: u64,
    pub compaction_reclaimed_bytes: u64,
    pub compaction_written_bytes: u64,
}

impl RefusalCause {
    pub const ALL: [RefusalCause; 3] = [RefusalCause::Reserve, RefusalCause::Full, RefusalCause::Io];

    pub fn label(self) -> &'static str {
        match self {
            RefusalCause::Reserve => "reserve",
            RefusalCause::Full => "full",
            RefusalCause::Io => "io_error",
        }
    }
}

const HIGH_WATER_FILE: &str = "NEXT_SEGMENT";
/// Written at a clean shutdown: the newest segment file's id and length. Damage to that
/// segment, or a shorter file, is then corruption, not a torn tail.
const CLEAN_MARK_FILE: &str = "CLEAN";
/// Where the bytes cut from a torn tail are kept, for the operator.
pub const QUARANTINE_DIR: &str = "quarantine";

impl ShardState {
    /// Start a new segment image; its file is created by the committer on first flush.
    fn begin_segment(&mut self) -> Result<(), StoreError> {
        let id = self.next_segment_id;
        assert!(id < u32::MAX, "segment ids exhausted");
        // Persist the high-water mark first, so a segment id (and so a nonce) is never reused.
        let high_water = self.dir.join(HIGH_WATER_FILE);
        self.config
            .faults
            .fail(IoOp::HighWater)
            .and_then(|()| segment::write_durably(&high_water, (id + 1).to_string().as_bytes()))
            .map_err(io_error(&high_water))?;
        self.next_segment_id = id + 1;
        let size = self.config.segment_size;
        let path = self.dir.join(segment::segment_file_name(id));
        let mut image = match self.spare_image.take().filter(|spare| spare.size() == size) {
            Some(spare) => spare,
            None => AlignedBuf::zeroed(size).map_err(io_error(&path))?,
        };
        image.clean_through(SEGMENT_HEADER_SIZE.next_multiple_of(BLOCK_SIZE));
        let header = SegmentHeader {
            shard_id: self.shard_id.0,
            segment_id: id,
            created_unix_ms: crate::now_unix_ms(),
            key_check: self.config.key.as_ref().map(SegmentKey::check_value),
        };
        header.encode(image.as_mut_slice());
        self.seal_hash = SealHasher::new();
        self.active_sealed = false;
        self.segments.push(Segment {
            id,
            path,
            bytes: SegmentBytes::Image(image),
            len: SEGMENT_HEADER_SIZE,
            durable_len: 0,
            file: None,
            checked: true,
        });
        Ok(())
    }

    /// Apply the rules to `event` and, when it is to be stored, write its record into the
    /// segment image. Durability comes from the committer.
    pub fn append(&mut self, event: &VerifiedEvent, now: u64) -> Result<Appended, StoreError> {
        assert!(self.writable, "append on a read-only shard");
        let tags: Vec<(u8, &[u8])> = event.index_tags().iter().map(|t| (t.letter, &t.value[..])).collect();
        let facts = Facts {
            id: &event.id().0,
            pubkey: &event.pubkey().0,
            created_at: event.created_at(),
            kind: event.kind(),
            expiration: event.expiration(),
            tags: &tags,
        };
        // The rules first (they change nothing): while writes are refused, duplicates,
        // ephemeral events and rejections are still answered as usual.
        let kills = match self.index.admit(&facts, now) {
            Admit::Store { .. } if self.refusing.is_some() => {
                return Err(StoreError::Refusing(self.refusing.clone().expect("refusing")));
            }
            Admit::Store { kills } => kills,
            Admit::Duplicate(no) => {
                let pending = (no >= self.index.durable_count()).then_some(no);
                return Ok(Appended::Duplicate { pending });
            }
            Admit::Ephemeral => return Ok(Appended::Ephemeral),
            Admit::Rejected(rejection) => return Ok(Appended::Rejected(rejection)),
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let scratch = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&Record::from_event(event), scratch)
            .expect("records always serialize");
        let written = self.write_record(&scratch);
        self.scratch = scratch;
        let written = match written {
            Ok(written) => written,
            // Only beginning a segment writes here: no segment, no writes until one begins.
            Err(StoreError::Io { path, source }) => {
                let detail = format!("{}: {source}", path.display());
                tracing::warn!(shard = self.shard_id.0, %detail, "cannot begin a segment: writes are refused until it can");
                self.refusing = Some(Refusal { cause: RefusalCause::of(&source), detail: detail.clone() });
                return Err(StoreError::Io { path, source });
            }
            Err(other) => return Err(other),
        };
        Ok(Appended::Stored(self.index.insert(&facts, written, kills)))
    }

    /// Begin the next segment if the active one is sealed (a full disk kept the shard from
    /// beginning it): the probe a refusing shard makes before it resumes. `Err` says why not.
    pub(super) fn begin_segment_if_needed(&mut self) -> Result<(), String> {
        if !self.active_sealed {
            return Ok(());
        }
        self.begin_segment().map_err(|error| error.to_string())
    }

    /// Copy an archived record into the image (sealing it when encrypted) and return where.
    pub fn write_record(&mut self, archive: &[u8]) -> Result<Loc, StoreError> {
        let encrypted = self.config.key.is_some();
        let payload_size = archive.len() + if encrypted { TAG_SIZE } else { 0 };
        let active = self.segments.last().expect("a writable shard has an active segment");
        if self.active_sealed || record_end(active.len, payload_size) + SEAL_RECORD_SIZE > self.config.segment_size {
            self.seal_active();
            self.begin_segment()?;
        }
        let slot = self.segments.len() - 1;
        let shard_id = self.shard_id;
        let segment = &mut self.segments[slot];
        let offset = segment.len;
        let committed_through = segment.durable_len as u64;
        let SegmentBytes::Image(image) = &mut segment.bytes else { unreachable!("the active segment is an image") };
        // Direct I/O writes whole blocks: the rest of the record's last block must be zero.
        image.clean_through(record_end(offset, payload_size).next_multiple_of(BLOCK_SIZE));
        let image = image.as_mut_slice();
        let flags = if encrypted { RECORD_FLAG_ENCRYPTED } else { 0 };
        let payload_start = offset + RECORD_HEADER_SIZE;
        image[payload_start..payload_start + archive.len()].copy_from_slice(archive);
        if let Some(key) = &self.config.key {
            let prefix = format::record_prefix(payload_size, flags, committed_through);
            let nonce = crypto::nonce(shard_id.0, segment.id, offset as u32);
            let (plain, rest) = image[payload_start..].split_at_mut(archive.len());
            let tag = key.seal(nonce, &prefix, plain);
            rest[..TAG_SIZE].copy_from_slice(&tag);
        }
        format::finish_record(image, offset, payload_size, flags, committed_through);
        segment.len = record_end(offset, payload_size);
        self.seal_hash.feed(&image[..segment.len]);
        Ok(Loc { segment: slot as u32, offset: offset as u32 })
    }

    /// End the active segment with its seal record: a blake3 of every byte before it, which
    /// the next open checks in one pass instead of record by record. Done when the segment is
    /// full and when the shard closes; a segment with no record (never written) gets none.
    pub fn seal_active(&mut self) {
        let Some(segment) = self.segments.last_mut() else { return };
        if !self.writable || self.active_sealed || segment.len == SEGMENT_HEADER_SIZE {
            return;
        }
        let SegmentBytes::Image(image) = &mut segment.bytes else { unreachable!("the active segment is an image") };
        let offset = segment.len;
        image.clean_through((offset + SEAL_RECORD_SIZE).next_multiple_of(BLOCK_SIZE));
        let hash = std::mem::take(&mut self.seal_hash).finish(&image.as_slice()[..offset]);
        format::write_seal(image.as_mut_slice(), offset, &hash);
        segment.len = offset + SEAL_RECORD_SIZE;
        self.active_sealed = true;
    }

    /// Why the shard's filesystem is too full for new events, if it is.
    pub fn space_below_reserve(&self) -> Option<String> {
        let reserve = self.config.reserve_bytes;
        if reserve == 0 {
            return None;
        }
        let free = free_bytes(&self.dir)?;
        (free < reserve)
            .then(|| format!("{free} bytes free on the data directory's filesystem, below the {reserve}-byte reserve"))
    }

    /// This shard's figures (one pass over its segments and index tables).
    pub fn figures(&self) -> ShardFigures {
        let (bytes, dead_bytes) = self.byte_figures();
        ShardFigures {
            shard: self.shard_id,
            segments: self.segments.iter().filter(|s| s.len > 0).count() as u64,
            bytes,
            dead_bytes,
            records: u64::from(self.index.len()),
            live_records: self.index.live_count(),
            index_bytes: self.index.memory_size() as u64,
            parts: self.index.layers().iter().filter(|layer| layer.part_size() > 0).count() as u64,
            part_bytes: self.index.layers().iter().map(|layer| layer.part_size() as u64).sum(),
            damaged_segments: self.damaged.len() as u64,
            unscrubbed_segments: self.unscrubbed_segments() as u64,
            refusal: self.refusing.as_ref().map(|refusal| refusal.cause),
            fsync_seconds: self.commits.fsync_seconds.snapshot(),
            batch_events: self.commits.batch_events.snapshot(),
            written_bytes: self.commits.written_bytes.get(),
            commit_failures: self.commits.failures.get(),
            compactions: self.compactions.runs.get(),
            compaction_failures: self.compactions.failures.get(),
            compaction_reclaimed_bytes: self.compactions.reclaimed_bytes.get(),
            compaction_written_bytes: self.compactions.written_bytes.get(),
        }
    }

    /// Bytes of the shard's segments, and of those the bytes of dead records, estimated
    /// per segment from its share of dead records.
    pub(super) fn byte_figures(&self) -> (u64, u64) {
        let stats = self.index.segment_stats();
        let (mut bytes, mut dead_bytes) = (0, 0);
        for (slot, segment) in self.segments.iter().enumerate() {
            let len = segment.len as u64;
            bytes += len;
            if let Some(stat) = stats.get(slot).filter(|stat| stat.records > 0) {
                dead_bytes += len * u64::from(stat.dead) / u64::from(stat.records);
            }
        }
        (bytes, dead_bytes)
    }

    /// Whether bytes written to images are not yet on disk.
    pub fn has_unflushed(&self) -> bool {
        self.segments.iter().any(Segment::needs_flush)
    }

    /// Segments held in memory as write images: the active one, and one rotated out whose
    /// last bytes are not yet on disk. Every other segment is served from a map.
    pub fn images_in_memory(&self) -> usize {
        self.segments.iter().filter(|s| matches!(s.bytes, SegmentBytes::Image(_))).count()
    }

    /// Paths of the segments that were on disk when the shard was opened.
    pub fn sealed_segment_paths(&self) -> Vec<PathBuf> {
        let sealed = self.segments.len() - usize::from(self.writable);
        self.segments[..sealed].iter().map(|s| s.path.clone()).collect()
    }

    /// The plaintext rkyv archive of event `no`, as it would be written again (`None`:
    /// its segment was damaged after its index part was written).
    pub fn record_archive(&self, no: EventNo) -> Option<Vec<u8>> {
        self.with_record(no, |_| ())?;
        Some(self.plain_record(no)?.bytes().to_vec())
    }

    /// The plaintext archive of an indexed record: in place, or decrypted. A record of a
    /// segment opened through its part (not yet scrubbed) has its checksum checked here.
    fn plain_record(&self, no: EventNo) -> Option<segment::RecordBytes<'_>> {
        let loc = self.index.entry(no).loc;
        // A number compaction dropped lies nowhere.
        let segment = self.segments.get(loc.segment as usize)?;
        let bytes = segment.bytes.as_slice();
        let span = match segment.checked {
            true => format::trusted_span(bytes, loc.offset as usize),
            false => match format::read_slot(bytes, loc.offset as usize) {
                format::Slot::Record(span) => span,
                other => {
                    tracing::error!(shard = self.shard_id.0, path = %segment.path.display(), offset = loc.offset, damage = ?other, "a stored record no longer reads back: `ringrelay verify` names the damage, `ringrelay repair` moves it aside");
                    return None;
                }
            },
        };
        let nonce = || crypto::nonce(self.shard_id.0, segment.id, loc.offset);
        let plain = segment::record_bytes(bytes, &span, self.config.key.as_ref(), nonce);
        assert!(plain.is_ok() || !segment.checked, "a record that decrypted at open decrypts again");
        plain.ok()
    }

    pub fn is_writable(&self) -> bool {
        self.writable
    }

    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    /// The stored JSON of event `no` (`None`: its segment was damaged after its index part
    /// was written).
    pub fn event_json(&self, no: EventNo) -> Option<Vec<u8>> {
        self.with_record(no, |record| record.json.to_vec())
    }

    /// Keep online compaction off the segments from `segment` on (`None`: no hold).
    pub fn hold_compaction_from(&mut self, segment: Option<u32>) {
        self.compaction_held_from = segment;
    }

    /// Where event `no` lies in the shard's log: (segment id, offset); `None` for a number
    /// compaction dropped.
    pub fn log_position(&self, no: EventNo) -> Option<(u32, u32)> {
        let loc = self.index.entry(no).loc;
        self.segments.get(loc.segment as usize).map(|segment| (segment.id, loc.offset))
    }

    /// Ids of the segments, oldest first, with their record counts (for compaction and tests).
    pub fn segment_ids(&self) -> Vec<u32> {
        // A slot compaction emptied has no file (a segment always has its header).
        self.segments.iter().filter(|s| s.len > 0).map(|s| s.id).collect()
    }
}

impl RecordSource for ShardState {
    fn with_record<R>(&self, no: EventNo, f: impl FnOnce(&ArchivedRecord) -> R) -> Option<R> {
        let plain = self.plain_record(no)?;
        if !self.segments[self.index.entry(no).loc.segment as usize].checked {
            // The checksum held: only a record that was never what its part says is refused here.
            return record::access(plain.bytes()).ok().filter(|record| record.id == self.index.entry(no).id).map(f);
        }
        // SAFETY: every record of a checked segment passed `record::access` when its segment
        // was opened, or was written by this process; segments are never modified in place.
        Some(f(unsafe { record::access_trusted(plain.bytes()) }))
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding `dir`.
/// Free bytes on `dir`'s filesystem for an unprivileged user (statvfs).
pub fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a valid C string and a buffer statvfs fills on success.
    if unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the buffer.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The clean mark's segment id and file length, if the last shutdown was clean.
pub fn read_clean_mark(dir: &Path) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(dir.join(CLEAN_MARK_FILE)).ok()?;
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("segment"), Some(id), Some("length"), Some(len)) => Some((id.parse().ok()?, len.parse().ok()?)),
        _ => None,
    }
}

/// Forget the clean mark (repair rewrote the segment it names).
pub fn remove_clean_mark(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(CLEAN_MARK_FILE)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Take a fresh segment id for a shard directory: the high-water mark is moved past it
/// (durably) before the segment is written, so its nonces are never used again.
pub fn take_segment_id(dir: &Path) -> std::io::Result<u32> {
    let listed = segment::list_segments(dir)?.last().map_or(1, |(id, _)| id + 1);
    let id = read_high_water(dir).max(listed);
    segment::write_durably(&dir.join(HIGH_WATER_FILE), (id + 1).to_string().as_bytes())?;
    Ok(id)
}

/// Record a clean shutdown of the shard in `dir`: its newest segment file and its length.
pub(super) fn write_clean_mark(dir: &Path) -> std::io::Result<()> {
    let Some((id, path)) = segment::list_segments(dir)?.pop() else { return Ok(()) };
    let len = std::fs::metadata(&path)?.len();
    segment::write_durably(&dir.join(CLEAN_MARK_FILE), format!("segment {id} length {len}\n").as_bytes())
}

fn read_high_water(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join(HIGH_WATER_FILE)).ok().and_then(|text| text.trim().parse().ok()).unwrap_or(1)
}
