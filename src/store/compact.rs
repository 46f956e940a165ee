//! Online compaction's disk side: rewrite the sealed segments of one mapped layer with only
//! the records it keeps (see `index/compact.rs`), a segment at a time off the cores, then
//! put the new files in place of the old ones. `Send`: each step runs on a blocking thread.
//!
//! The rewritten segments take the ids of the first old ones, in order, so a record never
//! moves to a later id than it had, and records keep their order. Each step leaves a store
//! that opens with every kept record served once:
//! 1. the new segments and their part are written under temporary names
//!    (`seg-N.rr.compacted`, `seg-N.ix.compacted`) and synced, a segment `COMPACTION_PIECE_SIZE`
//!    at a time: the old files are untouched;
//! 2. each new segment is renamed over the old one of its id, in id order: a record copied
//!    forward is still in its old file until that file is replaced, and a copy read twice
//!    is a duplicate, dead on arrival, as after an interrupted offline compaction; the old
//!    part no longer matches its segments and is rebuilt at open;
//! 3. the new part is renamed into place, the directory synced, then the old segments no
//!    new one replaced are removed and the directory synced again.
//!
//! Leftover temporary files are removed at the next open. An encrypted store has no parts,
//! so no mapped layer, and is compacted offline (a record's nonce is bound to its place).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::faults::{Faults, IoOp};
use super::format::{self, SegmentHeader, SEAL_RECORD_SIZE, SEGMENT_HEADER_SIZE};
use super::part::{self, Part};
use super::segment::{self, SegmentBytes};
use crate::limits::COMPACTION_PIECE_SIZE;

/// Why a rewrite failed, and whether it may be tried again later: it had not begun to
/// replace the old files, and what stopped it may pass (a full disk, an I/O error), where a
/// record that does not read back will not.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub retry: bool,
}

impl From<String> for Failure {
    /// An I/O failure before anything was replaced.
    fn from(message: String) -> Failure {
        Failure { message, retry: true }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The suffix of a rewrite's temporary files.
pub const TEMP_SUFFIX: &str = "compacted";

/// One layer's rewrite in progress.
pub struct Rewrite {
    shard: u16,
    segment_size: usize,
    /// The layer's segments: their ids, paths and maps, in order.
    ids: Vec<u32>,
    paths: Vec<PathBuf>,
    inputs: Vec<SegmentBytes>,
    /// Each kept record: the place of its segment among the inputs, and its offset.
    records: Vec<(usize, u32)>,
    next: usize,
    /// The new segments written so far, under their temporary names, and their records.
    written: Vec<PathBuf>,
    counts: Vec<u32>,
    /// The new segment being written, a piece at a time.
    pending: Option<Pending>,
    /// Bytes written (segments and part).
    pub written_bytes: u64,
    faults: Faults,
}

/// A new segment being written: its temporary file, its bytes, how many are written, and
/// its record count.
struct Pending {
    path: PathBuf,
    file: std::fs::File,
    bytes: Vec<u8>,
    written: usize,
    records: u32,
}

/// The rewritten segments, in place: their maps, their part, and their record counts.
pub struct Rewritten {
    pub maps: Vec<SegmentBytes>,
    pub part: Part,
    pub counts: Vec<u32>,
    pub written_bytes: u64,
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(TEMP_SUFFIX);
    PathBuf::from(name)
}

fn failed(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> String {
    let path = path.display().to_string();
    move |error| format!("{path}: {what}: {error}")
}

impl Rewrite {
    /// Map the segments at `paths` (ids `ids`) to rewrite them with `records`.
    pub fn open(
        shard: u16,
        segment_size: usize,
        ids: Vec<u32>,
        paths: Vec<PathBuf>,
        records: Vec<(usize, u32)>,
        faults: Faults,
    ) -> Result<Rewrite, String> {
        let inputs = paths
            .iter()
            .map(|path| segment::map_file(path).map_err(failed(path, "cannot map")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Rewrite {
            shard,
            segment_size,
            ids,
            paths,
            inputs,
            records,
            next: 0,
            written: Vec::new(),
            counts: Vec::new(),
            pending: None,
            written_bytes: 0,
            faults,
        })
    }

    /// Write the next piece (`COMPACTION_PIECE_SIZE`, synced) of the next new segment, as
    /// full as the segment size allows; whether every kept record is now written. Small
    /// synced pieces keep a rewrite from filling the disk's queue ahead of the commits.
    pub fn step(&mut self) -> Result<bool, Failure> {
        let mut pending = match self.pending.take() {
            Some(pending) => pending,
            None => self.next_segment()?,
        };
        let piece = pending.bytes.len().min(pending.written + COMPACTION_PIECE_SIZE);
        let path = &pending.path;
        self.faults
            .fail(IoOp::Compact)
            .and_then(|()| pending.file.write_all(&pending.bytes[pending.written..piece]))
            .and_then(|()| pending.file.sync_data())
            .map_err(failed(path, "cannot write"))?;
        pending.written = piece;
        if pending.written < pending.bytes.len() {
            self.pending = Some(pending);
            return Ok(false);
        }
        self.written_bytes += pending.bytes.len() as u64;
        self.written.push(pending.path);
        self.counts.push(pending.records);
        Ok(self.next == self.records.len())
    }

    /// The next new segment's bytes, and its temporary file created.
    fn next_segment(&mut self) -> Result<Pending, Failure> {
        let mut archives: Vec<&[u8]> = Vec::new();
        let mut end = SEGMENT_HEADER_SIZE;
        // As full as the largest old segment (the segment size may have been lowered since):
        // what fit in the old segments then fits in as many new ones, in order.
        let capacity = self.inputs.iter().map(|input| input.as_slice().len()).fold(self.segment_size, usize::max);
        while let Some(&(place, offset)) = self.records.get(self.next) {
            let input = self.inputs[place].as_slice();
            let span = match format::read_slot(input, offset as usize) {
                format::Slot::Record(span) => span,
                other => {
                    let message = format!(
                        "{}: the record at {offset} does not read back: {other:?}",
                        self.paths[place].display()
                    );
                    return Err(Failure { message, retry: false });
                }
            };
            let payload = &input[span.payload_range()];
            let record_end = format::record_end(end, payload.len());
            if record_end + SEAL_RECORD_SIZE > capacity && !archives.is_empty() {
                break;
            }
            archives.push(payload);
            end = record_end;
            self.next += 1;
        }
        let place = self.written.len();
        let Some(&segment_id) = self.ids.get(place) else {
            return Err(Failure { message: "the kept records need more segments than they had".into(), retry: false });
        };
        let header =
            SegmentHeader { shard_id: self.shard, segment_id, created_unix_ms: crate::now_unix_ms(), key_check: None };
        let bytes = segment::build_sealed_segment(&header, None, &archives);
        let path = temp_path(&self.paths[place]);
        let file = self
            .faults
            .fail(IoOp::Compact)
            .and_then(|()| std::fs::File::create(&path))
            .map_err(failed(&path, "cannot create"))?;
        Ok(Pending { path, file, bytes, written: 0, records: archives.len() as u32 })
    }

    /// Index the new segments, put them and their part in place of the old ones (the order
    /// in the module's notes), and map them.
    pub fn finish(mut self) -> Result<Rewritten, Failure> {
        let temps = std::mem::take(&mut self.written);
        let part_path = part::part_path(&self.paths[0]);
        let part_temp = temp_path(&part_path);
        // Until the first rename the old files are untouched: a failure removes the new ones.
        if let Err(message) = self.write_part(&temps, &part_temp) {
            for path in temps.iter().chain([&part_temp]) {
                let _ = std::fs::remove_file(path);
            }
            return Err(Failure { message, retry: true });
        }
        self.put_in_place(&temps, &part_temp, &part_path).map_err(|message| Failure { message, retry: false })
    }

    /// Build the new segments' part and write it (synced) at `part_temp`.
    fn write_part(&mut self, temps: &[PathBuf], part_temp: &Path) -> Result<(), String> {
        let maps = temps
            .iter()
            .map(|path| segment::map_file(path).map_err(failed(path, "cannot map")))
            .collect::<Result<Vec<_>, _>>()?;
        let slices: Vec<&[u8]> = maps.iter().map(SegmentBytes::as_slice).collect();
        let built = part::build(&slices, part::new_tag_key()).map_err(|error| format!("cannot index: {error}"))?;
        self.faults
            .fail(IoOp::Compact)
            .and_then(|()| segment::write_all_durably(part_temp, &[&built.header, &built.body]))
            .map_err(failed(part_temp, "cannot write"))?;
        self.written_bytes += (built.header.len() + built.body.len()) as u64;
        Ok(())
    }

    /// The renames, removals and syncs that replace the old files, then the new ones mapped.
    fn put_in_place(&mut self, temps: &[PathBuf], part_temp: &Path, part_path: &Path) -> Result<Rewritten, String> {
        let count = temps.len();
        let fail = |op| self.faults.fail(op);
        for (temp, path) in temps.iter().zip(&self.paths) {
            fail(IoOp::Compact).and_then(|()| std::fs::rename(temp, path)).map_err(failed(path, "cannot replace"))?;
        }
        fail(IoOp::Compact)
            .and_then(|()| std::fs::rename(part_temp, part_path))
            .map_err(failed(part_path, "cannot replace"))?;
        let dir = self.paths[0].parent().expect("segments live in a shard directory").to_owned();
        fail(IoOp::Compact).and_then(|()| segment::sync_dir(&dir)).map_err(failed(&dir, "cannot sync"))?;
        for path in &self.paths[count..] {
            fail(IoOp::Compact).and_then(|()| std::fs::remove_file(path)).map_err(failed(path, "cannot remove"))?;
        }
        fail(IoOp::Compact).and_then(|()| segment::sync_dir(&dir)).map_err(failed(&dir, "cannot sync"))?;
        let maps = self.paths[..count]
            .iter()
            .map(|path| segment::map_file(path).map_err(failed(path, "cannot map")))
            .collect::<Result<Vec<_>, _>>()?;
        let part = Part::load(part_path, self.shard, self.ids[0])
            .map_err(|error| format!("{}: {error}", part_path.display()))?;
        if !part.indexes(&maps.iter().map(SegmentBytes::as_slice).collect::<Vec<_>>()) {
            return Err(format!("{}: the new part does not index the new segments", part_path.display()));
        }
        let counts = std::mem::take(&mut self.counts);
        Ok(Rewritten { maps, part, counts, written_bytes: self.written_bytes })
    }
}

impl Drop for Rewrite {
    /// An unfinished rewrite leaves nothing behind (its temporary files; the old ones are
    /// untouched until `finish`).
    fn drop(&mut self) {
        for path in self.written.iter().chain(self.pending.as_ref().map(|pending| &pending.path)) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Remove what an interrupted rewrite or part build left in a shard directory: the
/// temporary files of segments and parts (`seg-*.compacted`, `seg-*.tmp`).
pub fn remove_leftovers(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let ours = path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with("seg-"));
        if ours && path.extension().is_some_and(|ext| ext == TEMP_SUFFIX || ext == "tmp") {
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                // Gone since the listing (renamed into place by a part build still finishing).
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(removed)
}
