//! Opening a shard: every segment replayed or mapped through its index part, a torn tail
//! cut, a segment a crash left open sealed, then (for writing) a fresh segment begun; and
//! the same in two halves for `serve --takeover`: prepared beside the relay that still
//! writes the shard, finished once it has let go.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use super::parts::MappedPart;
use super::{
    io_error, read_clean_mark, read_high_water, remove_clean_mark, CommitStats, CompactionStats, OpenMode, Refusal,
    RefusalCause, Repair, Segment, ShardConfig, ShardState, StoreError, QUARANTINE_DIR,
};
use crate::store::format::{self, FormatError, SegmentHeader, SEGMENT_HEADER_SIZE};
use crate::store::index::{Admit, Facts, Index, Loc};
use crate::store::part;
use crate::store::record::ArchivedRecord;
use crate::store::segment::{self, SealHasher};
use crate::store::ShardId;

impl ShardState {
    /// Open a shard directory: replay every segment into the indexes, cut a torn tail of the
    /// last segment (read-write), and begin a fresh segment for appends.
    pub fn open(dir: &Path, shard_id: ShardId, config: ShardConfig, mode: OpenMode) -> Result<ShardState, StoreError> {
        if mode == OpenMode::ReadWrite {
            std::fs::create_dir_all(dir).map_err(io_error(dir))?;
            let removed = crate::store::compact::remove_leftovers(dir).map_err(io_error(dir))?;
            if removed > 0 {
                tracing::info!(
                    shard = shard_id.0,
                    files = removed,
                    "removed what an interrupted compaction or part build left"
                );
            }
        }
        let files = match segment::list_segments(dir) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && mode == OpenMode::ReadOnly => Vec::new(),
            other => other.map_err(io_error(dir))?,
        };
        let mut state = ShardState::blank(dir, shard_id, config);
        state.load_segments(&files, mode)?;
        state.finish_open(&files, mode)?;
        Ok(state)
    }

    /// A shard with nothing loaded yet.
    fn blank(dir: &Path, shard_id: ShardId, config: ShardConfig) -> ShardState {
        ShardState {
            shard_id,
            dir: dir.to_owned(),
            config,
            index: Index::new_bulk(),
            segments: Vec::new(),
            writable: false,
            next_segment_id: 1,
            waiters: VecDeque::new(),
            refusing: None,
            repairs: Vec::new(),
            scratch: rkyv::util::AlignedVec::new(),
            spare_image: None,
            indexer_bell: None,
            part_failures: Vec::new(),
            damaged: Vec::new(),
            compactions: CompactionStats::default(),
            compaction_pause: None,
            compaction_held_from: None,
            seal_hash: SealHasher::new(),
            active_sealed: false,
            commits: CommitStats::default(),
        }
    }

    /// Once every segment in `files` is loaded: the indexes finished, and for writing, the
    /// clean mark removed and a fresh segment begun.
    fn finish_open(&mut self, files: &[(u32, PathBuf)], mode: OpenMode) -> Result<(), StoreError> {
        let (dir, shard_id) = (self.dir.clone(), self.shard_id);
        self.next_segment_id = files.iter().map(|(id, _)| id + 1).fold(self.next_segment_id, u32::max);
        self.index.release_pages();
        if mode == OpenMode::ReadWrite {
            // Writes begin a new segment: the mark no longer describes the newest one.
            remove_clean_mark(&dir).map_err(io_error(&dir))?;
        }
        self.index.finish_bulk();
        self.index.set_durable(self.index.len());
        self.index.sweep_expired(crate::now_unix());
        if mode == OpenMode::ReadWrite {
            self.next_segment_id = self.next_segment_id.max(read_high_water(&dir));
            // A full disk must not keep the relay from starting and serving what it has: the
            // shard opens refusing writes, and the first append after it resumes begins the
            // segment.
            match self.begin_segment() {
                Ok(()) => {}
                Err(StoreError::Io { path, source }) => {
                    let detail = format!("{}: {source}", path.display());
                    tracing::warn!(shard = shard_id.0, %detail, "cannot begin a segment: writes are refused until it can");
                    self.refusing = Some(Refusal { cause: RefusalCause::of(&source), detail });
                    self.active_sealed = true;
                }
                Err(other) => return Err(other),
            }
            if let Some(detail) = self.space_below_reserve().filter(|_| self.refusing.is_none()) {
                tracing::warn!(shard = shard_id.0, %detail, "writes are refused until there is room");
                self.refusing = Some(Refusal { cause: RefusalCause::Reserve, detail });
            }
            self.writable = true;
        }
        Ok(())
    }

    /// Open a shard that another relay still writes (`serve --takeover`), without changing
    /// anything: every segment but the newest, through its part or read, so that
    /// [`Prepared::finish`] has only what that relay wrote since left to do once it has
    /// let go.
    pub fn prepare(dir: &Path, shard_id: ShardId, config: ShardConfig) -> Result<Prepared, StoreError> {
        let mut files = segment::list_segments(dir).map_err(io_error(dir))?;
        files.pop();
        let stamps = files.iter().map(|(_, path)| stamp(path)).collect::<Result<Vec<_>, _>>()?;
        let mut state = ShardState::blank(dir, shard_id, config);
        state.load_segments(&files, OpenMode::ReadOnly)?;
        assert!(state.segments.iter().all(|segment| segment.file.is_none()), "a read-only load opens no file to write");
        Ok(Prepared { state, files, stamps })
    }

    /// Index every segment of the shard, oldest first: through its part where one holds,
    /// else by reading it.
    fn load_segments(&mut self, files: &[(u32, PathBuf)], mode: OpenMode) -> Result<(), StoreError> {
        // Every part that holds, mapped and checked first, so that the rules' tables are
        // sized once (growing them would read every entry again).
        let mut plan: Vec<(usize, Option<MappedPart>)> = Vec::new();
        let mut position = 0;
        while position < files.len() {
            let found = self.map_part(&files[position..], mode)?;
            let covered = found.as_ref().map_or(1, |(maps, _)| maps.len());
            // The parts of segments a merged part indexes are what a merge left behind.
            for (_, path) in files[position + 1..position + covered].iter().filter(|_| mode == OpenMode::ReadWrite) {
                part::remove(path).map_err(io_error(path))?;
            }
            plan.push((position, found));
            position += covered;
        }
        let events = plan.iter().filter_map(|(_, found)| found.as_ref()).map(|(_, part)| part.len() as usize).sum();
        self.index.reserve(events);
        let last = files.len().checked_sub(1);
        let clean = read_clean_mark(&self.dir);
        for (position, found) in plan {
            let (id, path) = &files[position];
            let is_last = Some(position) == last;
            let clean_len = clean.filter(|&(clean_id, _)| is_last && clean_id == *id).map(|(_, len)| len);
            match found {
                Some((maps, part)) => self.open_through_part(&files[position..position + maps.len()], maps, part),
                None => self.replay_segment(*id, path, is_last, clean_len, mode)?,
            }
        }
        Ok(())
    }

    /// Replay one segment into the indexes. `clean_len` is the file's length when the last
    /// clean shutdown left it (the newest segment, named by the shard's clean mark).
    fn replay_segment(
        &mut self,
        id: u32,
        path: &Path,
        is_last: bool,
        clean_len: Option<u64>,
        mode: OpenMode,
    ) -> Result<(), StoreError> {
        let bytes = segment::map_file(path).map_err(io_error(path))?;
        let corrupt = |offset, error| StoreError::Corrupt { path: path.to_owned(), offset, error };
        if let Some(expected) = clean_len.filter(|&expected| (bytes.as_slice().len() as u64) < expected) {
            return Err(corrupt(bytes.as_slice().len(), FormatError::Truncated(expected)));
        }
        let header = match SegmentHeader::decode(bytes.as_slice()) {
            Ok(header) => header,
            // A crash while the newest segment's header was being written: nothing in it was
            // acknowledged, so nothing follows the header block.
            Err(error) if is_last && clean_len.is_none() && !has_data_after_header(bytes.as_slice()) => {
                self.repairs.push(Repair {
                    path: path.to_owned(),
                    offset: 0,
                    cut_bytes: bytes.as_slice().len(),
                    reason: format!("{error}; empty segment removed"),
                });
                if mode == OpenMode::ReadWrite {
                    std::fs::remove_file(path).map_err(io_error(path))?;
                }
                return Ok(());
            }
            Err(error) => return Err(corrupt(0, error)),
        };
        self.check_header(&header, id, path)?;
        let slot = self.segments.len() as u32;
        let index = &mut self.index;
        let report = segment::scan(bytes.as_slice(), self.config.key.as_ref(), |span, record| {
            replay_record(index, record, Loc { segment: slot, offset: span.offset as u32 });
        })
        .map_err(|error| StoreError::Corrupt { path: path.to_owned(), offset: 0, error })?;
        let mut valid_end = report.valid_end;
        if let Some((offset, error)) = report.corrupt {
            // Only the unacknowledged end of the newest segment may be cut: damage in an older
            // segment, in a segment a clean shutdown closed, or with a record after it that
            // was written once the damaged bytes were durable, is corruption.
            if !is_last || clean_len.is_some() || format::acknowledged_after(bytes.as_slice(), offset).is_some() {
                return Err(corrupt(offset, error));
            }
            let cut_bytes = bytes.as_slice().len() - offset;
            tracing::warn!(shard = self.shard_id.0, path = %path.display(), offset, cut_bytes, %error, "cutting torn tail of the newest segment");
            if mode == OpenMode::ReadWrite {
                quarantine(path, offset, &bytes.as_slice()[offset..]);
            }
            self.repairs.push(Repair { path: path.to_owned(), offset, cut_bytes, reason: error.to_string() });
            valid_end = offset;
        }
        let bytes = if mode == OpenMode::ReadWrite && valid_end < bytes.as_slice().len() {
            drop(bytes);
            segment::truncate_file(path, valid_end).map_err(io_error(path))?;
            segment::map_file(path).map_err(io_error(path))?
        } else {
            bytes
        };
        if mode == OpenMode::ReadWrite && !report.sealed && valid_end > SEGMENT_HEADER_SIZE {
            self.seal_left_open(path, bytes.as_slice(), valid_end)?;
        }
        self.segments.push(Segment {
            id,
            path: path.to_owned(),
            bytes,
            len: valid_end,
            durable_len: valid_end,
            file: None,
            checked: true,
        });
        Ok(())
    }

    /// Whether a segment's header names this shard and segment, and this relay's key.
    pub(super) fn check_header(&self, header: &SegmentHeader, id: u32, path: &Path) -> Result<(), StoreError> {
        if header.segment_id != id || header.shard_id != self.shard_id.0 {
            return Err(StoreError::DataDir(format!(
                "{}: header says shard {} segment {}, but the file belongs to shard {} segment {id}",
                path.display(),
                header.shard_id,
                header.segment_id,
                self.shard_id
            )));
        }
        segment::check_key(header, self.config.key.as_ref())
            .map_err(|error| StoreError::Key { path: path.to_owned(), error })
    }

    /// A segment a crash left without its seal gets one now (no record is ever appended to
    /// it again), so later opens check it in one pass. Version 1 segments stay as written.
    fn seal_left_open(&self, path: &Path, bytes: &[u8], valid_end: usize) -> Result<(), StoreError> {
        if format::segment_version(bytes) < 2 {
            return Ok(());
        }
        // The last record's padding may lie past the end of a file cut short: it is zeros.
        let present = &bytes[..valid_end.min(bytes.len())];
        let Some(padding) = [0u8; format::RECORD_ALIGN].get(..valid_end - present.len()) else { return Ok(()) };
        let hash = blake3::Hasher::new().update(present).update(padding).finalize();
        // Only a speed-up for the next open (a full disk may refuse it): a segment without
        // its seal is checked record by record.
        if let Err(error) = segment::append_durably(path, valid_end, &format::seal_bytes(hash.as_bytes())) {
            tracing::warn!(shard = self.shard_id.0, path = %path.display(), %error, "cannot seal the segment a crash left open");
            // Nothing of a seal half written may stay after the records.
            segment::truncate_file(path, valid_end).map_err(io_error(path))?;
        }
        Ok(())
    }
}

/// A shard opened by [`ShardState::prepare`]: the files it indexed, as they were then.
pub struct Prepared {
    state: ShardState,
    files: Vec<(u32, PathBuf)>,
    stamps: Vec<(u64, u64)>,
}

// SAFETY: a `ShardState` is not `Send` only for the `Rc<DmaFile>` of a segment being
// written. A prepared shard was loaded read-only: its segments are maps (or empty), none
// has a file open for writing (checked in `prepare`), and it has no committer, waiter or
// indexer yet. It is prepared on one thread and finished on a core's.
unsafe impl Send for Prepared {}

/// A file's inode and length: what a rewrite or a cut would change.
fn stamp(path: &Path) -> Result<(u64, u64), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).map_err(io_error(path))?;
    Ok((metadata.ino(), metadata.len()))
}

impl Prepared {
    /// Finish opening for writing, now that the other relay has let go: the segments it
    /// wrote since are loaded after the prepared ones. When a prepared file changed since
    /// (compacted, cut, removed) or its open found something to repair, the shard is
    /// opened afresh instead.
    pub fn finish(self) -> Result<ShardState, StoreError> {
        let Prepared { mut state, files: prepared, stamps } = self;
        let (dir, shard_id) = (state.dir.clone(), state.shard_id);
        let files = segment::list_segments(&dir).map_err(io_error(&dir))?;
        let unchanged = state.repairs.is_empty()
            && files.len() >= prepared.len()
            && files
                .iter()
                .zip(&prepared)
                .zip(&stamps)
                .all(|((now, then), &was)| now.0 == then.0 && stamp(&now.1).is_ok_and(|is| is == was));
        if !unchanged {
            tracing::info!(shard = shard_id.0, "the store changed while this relay prepared: opened afresh");
            let config = state.config.clone();
            drop(state);
            return ShardState::open(&dir, shard_id, config, OpenMode::ReadWrite);
        }
        let removed = crate::store::compact::remove_leftovers(&dir).map_err(io_error(&dir))?;
        if removed > 0 {
            tracing::info!(
                shard = shard_id.0,
                files = removed,
                "removed what an interrupted compaction or part build left"
            );
        }
        state.load_segments(&files[prepared.len()..], OpenMode::ReadWrite)?;
        state.finish_open(&files, OpenMode::ReadWrite)?;
        Ok(state)
    }
}

/// Index one record read back from disk, retiring it when the rules say it is dead.
fn replay_record(index: &mut Index, record: &ArchivedRecord, loc: Loc) {
    let tags: Vec<(u8, &[u8])> = record.tag_pairs().collect();
    let facts = Facts {
        id: &record.id,
        pubkey: &record.pubkey,
        created_at: record.created_at(),
        kind: record.kind(),
        expiration: record.expiration(),
        tags: &tags,
    };
    // Expiry is applied after replay, so that an expired version still retires older ones.
    match index.admit(&facts, 0) {
        Admit::Store { kills } => {
            index.insert(&facts, loc, kills);
            index.set_durable(index.len());
        }
        // A duplicate (a compaction interrupted before it removed the old segments) or a
        // record the rules now refuse: it stays on disk until compaction, never served (it
        // is numbered, so that its segment's part numbers it the same).
        _ => {
            index.insert_dead(&facts, loc);
        }
    }
}

/// Whether anything but zeros follows a segment's header block.
fn has_data_after_header(bytes: &[u8]) -> bool {
    bytes.get(SEGMENT_HEADER_SIZE..).is_some_and(|rest| rest.iter().any(|&b| b != 0))
}

/// Keep the bytes of a torn tail in the shard's quarantine directory before they are cut.
/// They were never acknowledged, so a full disk that refuses them only costs the evidence.
fn quarantine(path: &Path, offset: usize, bytes: &[u8]) {
    let dir = path.parent().expect("segments live in a shard directory").join(QUARANTINE_DIR);
    let name = format!("{}.at-{offset}.torn", path.file_name().and_then(|n| n.to_str()).unwrap_or("segment"));
    let target = dir.join(name);
    let kept = std::fs::create_dir_all(&dir).and_then(|()| segment::write_durably(&target, bytes));
    if let Err(error) = kept {
        tracing::warn!(path = %target.display(), %error, "cannot keep the torn tail's bytes");
        let _ = std::fs::remove_file(target.with_extension("tmp"));
    }
}
