//! `ringrelay repair` (offline): for every damaged segment, keep every valid record before
//! and after the damage in a new segment, and move the damaged bytes, and the original
//! file, aside into the shard's `quarantine/` directory. Reports what it moved.
//!
//! Crash safety: the new segment is written and synced (with the high-water mark moved past
//! its id first) before the damaged file is moved away. A crash in between leaves both; the
//! damaged one still stops `serve`, a second `repair` writes its records again, and replay
//! takes the second copy of an event for a duplicate.
//!
//! The kept records move to the newest segment, so replay meets them after records written
//! later; the storage rules decide by `created_at` and id, not by arrival, so what is served
//! is the same.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::store::crypto::{self, SegmentKey};
use crate::store::format::{
    self, check_seal, read_slot, FormatError, SegmentHeader, Slot, RECORD_ALIGN, SEGMENT_HEADER_SIZE,
};
use crate::store::shard::{read_clean_mark, remove_clean_mark, take_segment_id, QUARANTINE_DIR};
use crate::store::{record, segment, Access, DataDir, ShardId};

use super::StoreOptions;

/// Bytes of a segment that were moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub offset: usize,
    pub len: usize,
    pub reason: String,
}

/// One segment rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    pub path: PathBuf,
    pub damage: Vec<Damage>,
    pub records_kept: usize,
    /// The segment now holding the kept records (none when no record was valid).
    pub new_segment: Option<PathBuf>,
    /// Where the original file and the damaged ranges were moved.
    pub quarantined: PathBuf,
}

#[derive(Debug, Default)]
pub struct RepairReport {
    pub segments_checked: usize,
    pub repaired: Vec<Repaired>,
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for repaired in &self.repaired {
            for damage in &repaired.damage {
                writeln!(
                    f,
                    "{} @ {}: {} bytes moved aside: {}",
                    repaired.path.display(),
                    damage.offset,
                    damage.len,
                    damage.reason
                )?;
            }
            let into = repaired
                .new_segment
                .as_ref()
                .map_or("nowhere (none was valid)".to_owned(), |p| p.display().to_string());
            writeln!(
                f,
                "{}: {} valid records kept in {into}; the original is in {}",
                repaired.path.display(),
                repaired.records_kept,
                repaired.quarantined.display()
            )?;
        }
        write!(f, "{} segments checked, {} repaired", self.segments_checked, self.repaired.len())
    }
}

pub fn run(options: &StoreOptions) -> anyhow::Result<RepairReport> {
    let dir = DataDir::open(&options.data_dir, Access::Exclusive)?;
    let key = options.key()?;
    let mut report = RepairReport::default();
    for shard in ShardId::all(dir.shard_count) {
        let shard_dir = dir.shard_dir(shard);
        if !shard_dir.exists() {
            continue;
        }
        let files = segment::list_segments(&shard_dir)?;
        let clean = read_clean_mark(&shard_dir);
        for (position, (id, path)) in files.iter().enumerate() {
            report.segments_checked += 1;
            let clean_len = clean.filter(|&(clean_id, _)| clean_id == *id && position + 1 == files.len()).map(|m| m.1);
            if let Some(repaired) = repair_segment(&shard_dir, shard.0, *id, path, clean_len, key.as_ref())? {
                report.repaired.push(repaired);
            }
        }
        if report.repaired.iter().any(|r| r.path.parent() == Some(&shard_dir)) {
            crate::search::index::forget(&shard_dir)?;
            remove_clean_mark(&shard_dir)?;
            segment::sync_dir(&shard_dir)?;
        }
    }
    Ok(report)
}

/// What a walk of a segment found: the valid records' plaintext archives and the damage.
struct Walk {
    archives: Vec<Vec<u8>>,
    damage: Vec<Damage>,
}

fn repair_segment(
    shard_dir: &Path,
    shard: u16,
    id: u32,
    path: &Path,
    clean_len: Option<u64>,
    key: Option<&SegmentKey>,
) -> anyhow::Result<Option<Repaired>> {
    let bytes = std::fs::read(path)?;
    if let Ok(header) = SegmentHeader::decode(&bytes) {
        // A wrong or missing key would make every record look damaged.
        segment::check_key(&header, key).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
    }
    let mut walk = walk(&bytes, shard, id, key);
    if let Some(expected) = clean_len.filter(|&expected| (bytes.len() as u64) < expected) {
        walk.damage.push(Damage {
            offset: bytes.len(),
            len: 0,
            reason: format!("the file was cut short: a clean shutdown left it {expected} bytes long"),
        });
    }
    if walk.damage.is_empty() {
        return Ok(None);
    }
    // Keep the key check of the original when its header still says which key it used.
    let key_check = SegmentHeader::decode(&bytes).ok().and_then(|h| h.key_check).or(key.map(SegmentKey::check_value));
    let new_segment = match walk.archives.is_empty() {
        true => None,
        false => {
            let new_id = take_segment_id(shard_dir)?;
            let header =
                SegmentHeader { shard_id: shard, segment_id: new_id, created_unix_ms: crate::now_unix_ms(), key_check };
            let new_path = shard_dir.join(segment::segment_file_name(new_id));
            segment::write_durably(&new_path, &segment::build_sealed_segment(&header, key, &walk.archives))?;
            Some(new_path)
        }
    };
    let quarantine = shard_dir.join(QUARANTINE_DIR);
    std::fs::create_dir_all(&quarantine)?;
    let name = segment::segment_file_name(id);
    for damage in &walk.damage {
        let range = &bytes[damage.offset.min(bytes.len())..(damage.offset + damage.len).min(bytes.len())];
        segment::write_durably(&quarantine.join(format!("{name}.at-{}.damaged", damage.offset)), range)?;
    }
    let original = quarantine.join(format!("{name}.original"));
    std::fs::rename(path, &original)?;
    // Its index part indexes what is now in quarantine: the new segment gets its own.
    crate::store::part::remove(path)?;
    segment::sync_dir(&quarantine)?;
    segment::sync_dir(shard_dir)?;
    Ok(Some(Repaired {
        path: path.to_owned(),
        damage: walk.damage,
        records_kept: walk.archives.len(),
        new_segment,
        quarantined: original,
    }))
}

/// Walk every slot of a segment: a valid record (checksum, decryption, archive) is kept; a
/// bad one starts a damaged range that runs to the next valid record (or the end).
fn walk(bytes: &[u8], shard: u16, id: u32, key: Option<&SegmentKey>) -> Walk {
    let mut walk = Walk { archives: Vec::new(), damage: Vec::new() };
    let damage = |walk: &mut Walk, offset: usize, next: Option<usize>, reason: String| {
        let end = next.unwrap_or(bytes.len());
        walk.damage.push(Damage { offset, len: end - offset, reason });
        next
    };
    if let Err(error) = SegmentHeader::decode(bytes) {
        // Records are still found and checked: the nonce comes from the file's name.
        damage(&mut walk, 0, Some(SEGMENT_HEADER_SIZE.min(bytes.len())), format!("segment header: {error}"));
    }
    let mut offset = SEGMENT_HEADER_SIZE;
    while offset < bytes.len() {
        match read_slot(bytes, offset) {
            Slot::End => break,
            Slot::Seal { hash, .. } => {
                match check_seal(bytes, offset, &hash) {
                    // Damage before the seal fails it too: that damage is already named.
                    Err((_, FormatError::SealChecksum)) if !walk.damage.is_empty() => {}
                    // The records before it all held: the seal itself, or bytes after it.
                    Err((at, error)) => _ = damage(&mut walk, at, None, error.to_string()),
                    Ok(()) => {}
                }
                break;
            }
            Slot::Record(span) => match plaintext(bytes, &span, shard, id, key) {
                Ok(archive) => {
                    walk.archives.push(archive);
                    offset = span.end();
                }
                Err(reason) => {
                    match damage(&mut walk, offset, next_valid(bytes, offset + RECORD_ALIGN, shard, id, key), reason) {
                        Some(next) => offset = next,
                        None => break,
                    }
                }
            },
            Slot::Corrupt(error) => {
                match damage(
                    &mut walk,
                    offset,
                    next_valid(bytes, offset + RECORD_ALIGN, shard, id, key),
                    error.to_string(),
                ) {
                    Some(next) => offset = next,
                    None => break,
                }
            }
        }
    }
    walk
}

/// The plaintext archive of a record whose checksum holds, if it decrypts and validates.
fn plaintext(
    bytes: &[u8],
    span: &format::RecordSpan,
    shard: u16,
    id: u32,
    key: Option<&SegmentKey>,
) -> Result<Vec<u8>, String> {
    let nonce = || crypto::nonce(shard, id, span.offset as u32);
    let plain = segment::record_bytes(bytes, span, key, nonce).map_err(|e| e.to_string())?;
    record::access(plain.bytes()).map_err(|e| e.to_string())?;
    Ok(plain.bytes().to_vec())
}

/// The next offset from `from` at which a whole valid record starts.
fn next_valid(bytes: &[u8], from: usize, shard: u16, id: u32, key: Option<&SegmentKey>) -> Option<usize> {
    (from.next_multiple_of(RECORD_ALIGN)..bytes.len()).step_by(RECORD_ALIGN).find(|&offset| {
        match read_slot(bytes, offset) {
            Slot::Record(span) => plaintext(bytes, &span, shard, id, key).is_ok(),
            _ => false,
        }
    })
}
