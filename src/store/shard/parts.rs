//! The shard's side of its index parts: finding and checking them at open, the indexer's
//! jobs (a sealed segment's part, or a merge) and installing what they built, and the scrub
//! of the segments opened through parts.

use std::path::{Path, PathBuf};

use super::{io_error, OpenMode, Segment, ShardState, StoreError};
use crate::limits::{PART_MERGE_FAN_IN, PART_SEGMENTS_MAX, PART_SIZE_SHARE_OF_SEGMENTS};
use crate::store::format::SegmentHeader;
use crate::store::part::{self, Part};
use crate::store::segment::{self, SegmentBytes};

/// An index part found at open, with the maps of the segments it indexes.
pub(super) type MappedPart = (Vec<SegmentBytes>, Part);

/// A part the indexer builds: of the segments at `paths` (consecutive sealed ones: one
/// whose index is in memory, or the ones a merge joins), the first in slot `slot` with id
/// `id`.
pub(in crate::store) struct PartJob {
    pub slot: u32,
    pub id: u32,
    pub paths: Vec<PathBuf>,
}

impl ShardState {
    /// The index part of the first of `files` (sealed segments, in order), checked, with the
    /// maps of the segments it indexes (that one and, for a merged part, those after it);
    /// `None` when there is none that holds (missing, damaged, stale, or the store is
    /// encrypted: parts are written in plaintext, so an encrypted store has none). One that
    /// does not hold is removed.
    pub(super) fn map_part(
        &self,
        files: &[(u32, PathBuf)],
        mode: OpenMode,
    ) -> Result<Option<(Vec<SegmentBytes>, Part)>, StoreError> {
        let (id, path) = &files[0];
        let part_path = part::part_path(path);
        if self.config.key.is_some() || !part_path.exists() {
            return Ok(None);
        }
        let part = match Part::load(&part_path, self.shard_id.0, *id) {
            Ok(part) => part,
            Err(error) => return self.part_not_used(&part_path, error, mode),
        };
        let covered = part.covered();
        let ids_match = files.get(..covered.len()).is_some_and(|files| files.iter().map(|(id, _)| *id).eq(covered));
        if !ids_match {
            return self.part_not_used(&part_path, part::PartError::Stale, mode);
        }
        let mut maps = Vec::new();
        for (id, path) in &files[..part.covered_count()] {
            let bytes = segment::map_file(path).map_err(io_error(path))?;
            let Ok(header) = SegmentHeader::decode(bytes.as_slice()) else {
                return self.part_not_used(&part_path, part::PartError::Stale, mode);
            };
            self.check_header(&header, *id, path)?;
            maps.push(bytes);
        }
        match part.indexes(&maps.iter().map(SegmentBytes::as_slice).collect::<Vec<_>>()) {
            true => Ok(Some((maps, part))),
            false => self.part_not_used(&part_path, part::PartError::Stale, mode),
        }
    }

    fn part_not_used<T>(&self, path: &Path, error: part::PartError, mode: OpenMode) -> Result<Option<T>, StoreError> {
        tracing::warn!(shard = self.shard_id.0, path = %path.display(), %error, "index part not used: its segments are read instead, and the part rebuilt");
        if mode == OpenMode::ReadWrite {
            std::fs::remove_file(path).map_err(io_error(path))?;
        }
        Ok(None)
    }

    /// Open sealed segments through their index part, without reading their records.
    pub(super) fn open_through_part(&mut self, files: &[(u32, PathBuf)], maps: Vec<SegmentBytes>, part: Part) {
        let slot = self.segments.len() as u32;
        self.index.load_part(part, slot);
        for ((id, path), bytes) in files.iter().zip(maps) {
            let len = bytes.as_slice().len();
            let segment =
                Segment { id: *id, path: path.clone(), bytes, len, durable_len: len, file: None, checked: false };
            self.segments.push(segment);
        }
    }

    /// The next part to build (see [`PartJob`]): a sealed segment whose index is still in
    /// memory (on disk in full, its part not failed before), else the parts of consecutive
    /// segments a merge joins (`PART_MERGE_FAN_IN` parts that each index as many segments,
    /// at most `PART_SEGMENTS_MAX` together). An encrypted store has none.
    pub(in crate::store) fn next_part_job(&self) -> Option<PartJob> {
        if self.config.key.is_some() || !self.writable {
            return None;
        }
        let active = self.segments.len().saturating_sub(1) as u32;
        let sealed = self
            .index
            .memory_segments()
            .filter(|&slot| slot < active && !self.part_failures.contains(&slot))
            .find(|&slot| matches!(self.segments[slot as usize].bytes, SegmentBytes::Mapped(_)));
        let slots = match sealed {
            Some(slot) => slot..slot + 1,
            None => self
                .index
                .parts_to_merge(PART_MERGE_FAN_IN, PART_SEGMENTS_MAX)
                .filter(|slots| !self.part_failures.contains(&slots.start))?,
        };
        // A part is derived data: it is built only where it fits beside the free-space
        // reserve, so it never takes the room commits need, nor takes a full disk's last
        // bytes only to give them back when it fails. It is tried again at the next seal.
        let bytes: u64 = slots.clone().map(|slot| self.segments[slot as usize].len as u64).sum();
        let free = super::free_bytes(&self.dir).map(|free| free.saturating_sub(self.config.reserve_bytes));
        if free.is_some_and(|free| free < bytes / PART_SIZE_SHARE_OF_SEGMENTS) {
            return None;
        }
        let first = &self.segments[slots.start as usize];
        let paths = slots.clone().map(|slot| self.segments[slot as usize].path.clone()).collect();
        Some(PartJob { slot: slots.start, id: first.id, paths })
    }

    /// Serve the events of a job's segments from its new part; after a merge, remove the
    /// parts it replaces (it took the first one's place).
    pub(in crate::store) fn install_part(&mut self, job: &PartJob, built: Result<Part, part::PartError>) {
        let refused = match built {
            Ok(part) => match self.index.install_part(job.slot, part) {
                Ok(()) => {
                    for path in &job.paths[1..] {
                        if let Err(error) = part::remove(path) {
                            tracing::warn!(shard = self.shard_id.0, path = %path.display(), %error, "cannot remove a part a merge replaced");
                        }
                    }
                    return;
                }
                Err(_) => "it does not number the segments' records as the index does".to_owned(),
            },
            Err(error) => error.to_string(),
        };
        let path = &job.paths[0];
        tracing::warn!(shard = self.shard_id.0, path = %path.display(), segments = job.paths.len(), error = %refused, "cannot index sealed segments in a part: they are served as they were");
        self.part_failures.push(job.slot);
        // A merge's part took the place of the first segment's own: the next open checks it.
        if job.paths.len() == 1 {
            if let Err(error) = part::remove(path) {
                tracing::warn!(shard = self.shard_id.0, path = %path.display(), %error, "cannot remove the unused part");
            }
        }
    }

    /// The next segment opened through its part and not yet scrubbed (its slot and path).
    pub(in crate::store) fn next_to_scrub(&self) -> Option<(u32, PathBuf)> {
        let slot = self.segments.iter().position(|s| !s.checked && !self.damaged.contains(&s.id))?;
        Some((slot as u32, self.segments[slot].path.clone()))
    }

    /// What the scrub of a segment found: its records are trusted from now on, or it is
    /// damaged (named loudly; its records are still checked one by one as they are read).
    pub(in crate::store) fn scrubbed(&mut self, slot: u32, outcome: Result<(), segment::Damage>) {
        let segment = &mut self.segments[slot as usize];
        match outcome {
            Ok(()) => segment.checked = true,
            Err((offset, error)) => {
                tracing::error!(shard = self.shard_id.0, path = %segment.path.display(), offset, %error, "a sealed segment is damaged: its damaged records are not served; `ringrelay verify` lists the damage, `ringrelay repair` moves it aside");
                self.damaged.push(segment.id);
            }
        }
    }

    /// Segments the scrub found damaged.
    pub fn damaged_segments(&self) -> usize {
        self.damaged.len()
    }

    /// Segments opened through their parts that the scrub has not checked yet.
    pub fn unscrubbed_segments(&self) -> usize {
        self.segments.iter().filter(|s| !s.checked && !self.damaged.contains(&s.id)).count()
    }

    /// Give every sealed segment whose index is in memory its part, here and now (the tools
    /// do before they exit; the relay's indexer does it in the background); how many.
    pub fn build_parts(&mut self) -> usize {
        let mut built = 0;
        while let Some(job) = self.next_part_job() {
            let part = part::build_file(&job.paths, self.shard_id.0, job.id);
            built += usize::from(part.is_ok());
            self.install_part(&job, part);
        }
        built
    }

    /// Ask the indexer to give the sealed segments their parts.
    pub(in crate::store) fn ring_indexer(&mut self) {
        if let Some(bell) = &mut self.indexer_bell {
            // Full means a ring is already pending.
            let _ = bell.try_send(());
        }
    }
}
