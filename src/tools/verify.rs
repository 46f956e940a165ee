//! `ringrelay verify`: check every segment of a data directory and report every problem,
//! changing nothing.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::event::VerifiedEvent;
use crate::limits::EventLimits;
use crate::store::crypto::{self, SegmentKey};
use crate::store::format::{self, check_seal, read_slot, SegmentHeader, Slot, RECORD_ALIGN, SEGMENT_HEADER_SIZE};
use crate::store::shard::read_clean_mark;
use crate::store::{part, record, segment, Access, DataDir, ShardId};

use super::StoreOptions;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub offset: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.offset {
            Some(offset) => write!(f, "{} @ {offset}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub segments: u64,
    pub records: u64,
    pub problems: Vec<Problem>,
}

/// Check every segment; with `signatures`, also re-verify every stored event's id and signature.
pub fn run(options: &StoreOptions, signatures: bool) -> anyhow::Result<VerifyReport> {
    let dir = DataDir::open(&options.data_dir, Access::Shared)?;
    let key = options.key()?;
    let mut report = VerifyReport::default();
    for shard in ShardId::all(dir.shard_count) {
        let shard_dir = dir.shard_dir(shard);
        if !shard_dir.exists() {
            continue;
        }
        let files = segment::list_segments(&shard_dir)?;
        let clean = read_clean_mark(&shard_dir);
        for (position, (id, path)) in files.iter().enumerate() {
            report.segments += 1;
            // The newest segment may have a torn tail, unless a clean shutdown closed it.
            let may_be_torn = position + 1 == files.len() && clean.is_none_or(|(clean_id, _)| clean_id != *id);
            if let Some((_, expected)) = clean.filter(|&(clean_id, _)| clean_id == *id && position + 1 == files.len()) {
                let len = std::fs::metadata(path).map_or(0, |m| m.len());
                if len < expected {
                    report.problems.push(Problem {
                        path: path.clone(),
                        offset: Some(len as usize),
                        message: format!("the file was cut short: a clean shutdown left it {expected} bytes long"),
                    });
                }
            }
            if !verify_segment(path, shard.0, key.as_ref(), signatures, may_be_torn, &mut report) {
                verify_part(path, shard.0, *id, &mut report);
            }
        }
    }
    Ok(report)
}

/// Check one segment; whether it is damaged.
fn verify_segment(
    path: &Path,
    shard: u16,
    key: Option<&SegmentKey>,
    signatures: bool,
    may_be_torn: bool,
    report: &mut VerifyReport,
) -> bool {
    let mut problem = |offset: Option<usize>, message: String| {
        report.problems.push(Problem { path: path.to_owned(), offset, message });
        true
    };
    let bytes = match segment::map_file(path) {
        Ok(bytes) => bytes,
        Err(error) => return problem(None, format!("cannot read: {error}")),
    };
    let bytes = bytes.as_slice();
    let header = match SegmentHeader::decode(bytes) {
        Ok(header) => header,
        Err(error) => return problem(Some(0), format!("bad segment header: {error}")),
    };
    if header.shard_id != shard {
        problem(Some(0), format!("header says shard {}, directory says shard {shard}", header.shard_id));
    }
    if let Err(error) = segment::check_key(&header, key) {
        problem(Some(0), format!("{error}: record contents not checked"));
    }
    let contents_readable = segment::check_key(&header, key).is_ok();
    let limits = EventLimits::hard_caps();
    let mut offset = SEGMENT_HEADER_SIZE;
    let mut records = 0;
    let mut damaged = false;
    while offset < bytes.len() {
        let span = match read_slot(bytes, offset) {
            Slot::End => break,
            Slot::Seal { hash, .. } => {
                // Damage reported above fails the seal too: it is named once.
                if let (false, Err((at, error))) = (damaged, check_seal(bytes, offset, &hash)) {
                    problem(Some(at), error.to_string());
                }
                break;
            }
            Slot::Record(span) => span,
            Slot::Corrupt(error) => {
                damaged = true;
                let tail = match may_be_torn && format::acknowledged_after(bytes, offset).is_none() {
                    true => " (torn tail of the newest segment: cut on next open)",
                    false => " (acknowledged data: `ringrelay repair` moves it aside)",
                };
                problem(Some(offset), format!("{error}{tail}"));
                match resync(bytes, offset + RECORD_ALIGN) {
                    Some(next) => {
                        offset = next;
                        continue;
                    }
                    None => break,
                }
            }
        };
        records += 1;
        if contents_readable {
            let nonce = || crypto::nonce(header.shard_id, header.segment_id, offset as u32);
            let checked =
                segment::record_bytes(bytes, &span, key, nonce).map_err(|e| e.to_string()).and_then(|plain| {
                    let archived = record::access(plain.bytes()).map_err(|e| e.to_string())?;
                    if signatures {
                        check_event(archived, &limits)?;
                    }
                    Ok(())
                });
            if let Err(message) = checked {
                damaged = true;
                problem(Some(offset), message);
            }
        }
        offset = span.end();
    }
    report.records += records;
    damaged
}

/// A sealed segment's index part, if it has one, must be what the segment gives.
/// (A merged part is named after the first segment it indexes and checked against all.)
fn verify_part(path: &Path, shard: u16, id: u32, report: &mut VerifyReport) {
    let part_path = part::part_path(path);
    if !part_path.exists() {
        return;
    }
    let covered = part::Part::load(&part_path, shard, id).map(|part| part.covered()).unwrap_or_else(|_| vec![id]);
    let dir = path.parent().unwrap_or(Path::new("."));
    let maps: Vec<segment::SegmentBytes> =
        covered.iter().filter_map(|id| segment::map_file(&dir.join(segment::segment_file_name(*id))).ok()).collect();
    let segments: Vec<&[u8]> = maps.iter().map(segment::SegmentBytes::as_slice).collect();
    if let Err(error) = part::agrees(&part_path, shard, id, &segments) {
        let message =
            format!("its index part does not agree with it ({error}): the relay rebuilds it at its next start");
        report.problems.push(Problem { path: part_path, offset: None, message });
    }
}

/// The stored JSON must still verify and agree with the indexed fields.
fn check_event(archived: &record::ArchivedRecord, limits: &EventLimits) -> Result<(), String> {
    let event = VerifiedEvent::from_json(&archived.json, limits).map_err(|e| format!("stored event fails: {e}"))?;
    let agrees = event.id().0 == archived.id
        && event.pubkey().0 == archived.pubkey
        && event.created_at() == archived.created_at()
        && event.kind() == archived.kind();
    agrees.then_some(()).ok_or_else(|| "record fields disagree with its event json".to_owned())
}

/// The next offset at which a valid record starts, after damage.
fn resync(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len()).step_by(RECORD_ALIGN).find(|&offset| matches!(read_slot(bytes, offset), Slot::Record(_)))
}
