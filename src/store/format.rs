//! The on-disk layout of a segment, byte by byte (see docs/FORMAT.md). Sans-IO: encode into
//! and decode from byte slices; the segment and writer modules move the bytes.
//!
//! ```text
//! segment := header (BLOCK_SIZE bytes) record* seal? zero*
//! record  := payload_size u32 | record_type u16 | flags u16 | committed_through u64
//!            | blake3(first 16 header bytes ++ payload) [32] | payload | zero pad to 16
//! seal    := a record of type 2 whose payload is blake3(every segment byte before it)
//! ```

use crate::limits::{BLOCK_SIZE, EVENT_SIZE_MAX};

pub const SEGMENT_MAGIC: [u8; 8] = *b"RRSEGMNT";
/// Version 2 added the seal record; version 3 `committed_through` in every event record.
/// Segments of versions 1 and 2 are still read.
pub const FORMAT_VERSION: u32 = 3;
/// The first version whose event records say how far their segment was durable.
pub const COMMITTED_THROUGH_VERSION: u32 = 3;
pub const SEGMENT_HEADER_SIZE: usize = BLOCK_SIZE;
/// Bytes of the segment header that carry data; the rest of the block is zero.
const SEGMENT_HEADER_USED: usize = 88;
pub const SEGMENT_FLAG_ENCRYPTED: u32 = 1;

pub const RECORD_HEADER_SIZE: usize = 48;
/// Records start at multiples of this, so an rkyv archive is aligned where it lies.
pub const RECORD_ALIGN: usize = 16;
pub const RECORD_TYPE_EVENT: u16 = 1;
/// The last record of a segment written to its end or closed cleanly: a checksum of all the
/// segment's bytes before it, so that open can check the segment in one pass (hashing 64 KiB
/// at a time runs ~10× faster than record by record) instead of record by record.
pub const RECORD_TYPE_SEAL: u16 = 2;
/// Bytes a seal record takes: header and a 32-byte hash.
pub const SEAL_RECORD_SIZE: usize = RECORD_HEADER_SIZE + 32;
pub const RECORD_FLAG_ENCRYPTED: u16 = 1;
/// Largest payload a reader believes: an event's JSON, its index fields, and the GCM tag.
pub const RECORD_PAYLOAD_SIZE_MAX: usize = 2 * EVENT_SIZE_MAX + 64 * 1024;

const _: () = assert!(RECORD_HEADER_SIZE.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(SEGMENT_HEADER_SIZE.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(SEAL_RECORD_SIZE.is_multiple_of(RECORD_ALIGN));

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("file is shorter than a segment header")]
    HeaderTruncated,
    #[error("bad segment magic")]
    BadMagic,
    #[error("unsupported segment format version {0}")]
    UnsupportedVersion(u32),
    #[error("segment header checksum mismatch")]
    HeaderChecksum,
    #[error("record header runs past the end of the file")]
    RecordTruncated,
    #[error("the file is shorter than the {0} bytes a clean shutdown left")]
    Truncated(u64),
    #[error("record payload size {0} is out of range")]
    RecordSize(u32),
    #[error("unknown record type {0}")]
    RecordType(u16),
    #[error("the segment's seal does not match its contents")]
    SealChecksum,
    #[error("bytes follow the segment's seal")]
    AfterSeal,
    #[error("record checksum mismatch")]
    RecordChecksum,
    #[error("record archive is invalid: {0}")]
    Archive(String),
    #[error("record cannot be decrypted with this key")]
    Decrypt,
}

/// The fixed header at the start of every segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub shard_id: u16,
    pub segment_id: u32,
    pub created_unix_ms: u64,
    /// Fingerprint of the at-rest key when the segment's records are encrypted.
    pub key_check: Option<[u8; 16]>,
}

impl SegmentHeader {
    /// Write the header into the first `SEGMENT_HEADER_SIZE` bytes of `out` (already zero).
    pub fn encode(&self, out: &mut [u8]) {
        assert!(out.len() >= SEGMENT_HEADER_SIZE);
        let flags = if self.key_check.is_some() { SEGMENT_FLAG_ENCRYPTED } else { 0 };
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&flags.to_le_bytes());
        out[16..20].copy_from_slice(&u32::from(self.shard_id).to_le_bytes());
        out[20..24].copy_from_slice(&self.segment_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        out[32..40].fill(0);
        out[40..56].copy_from_slice(&self.key_check.unwrap_or_default());
        let checksum = blake3::hash(&out[0..56]);
        out[56..SEGMENT_HEADER_USED].copy_from_slice(checksum.as_bytes());
        out[SEGMENT_HEADER_USED..SEGMENT_HEADER_SIZE].fill(0);
    }

    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, FormatError> {
        if bytes.len() < SEGMENT_HEADER_SIZE {
            return Err(FormatError::HeaderTruncated);
        }
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err(FormatError::BadMagic);
        }
        if blake3::hash(&bytes[0..56]).as_bytes() != &bytes[56..SEGMENT_HEADER_USED] {
            return Err(FormatError::HeaderChecksum);
        }
        let version = read_u32(bytes, 8);
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let flags = read_u32(bytes, 12);
        let key_check = (flags & SEGMENT_FLAG_ENCRYPTED != 0).then(|| bytes[40..56].try_into().expect("16 bytes"));
        Ok(SegmentHeader {
            shard_id: read_u32(bytes, 16) as u16,
            segment_id: read_u32(bytes, 20),
            created_unix_ms: u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes")),
            key_check,
        })
    }
}

/// The format version of a segment whose header [decodes](SegmentHeader::decode).
pub fn segment_version(segment: &[u8]) -> u32 {
    read_u32(segment, 8)
}

/// A seal record on its own, carrying `hash` (a seal's bytes do not depend on where it lies).
pub fn seal_bytes(hash: &[u8; 32]) -> [u8; SEAL_RECORD_SIZE] {
    let mut seal = [0u8; SEAL_RECORD_SIZE];
    write_seal(&mut seal, 0, hash);
    seal
}

/// Where a record lies in its segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordSpan {
    pub offset: usize,
    pub flags: u16,
    pub payload_size: usize,
    /// How many bytes of its segment were durable (a completed fdatasync covered them) when
    /// the record was appended: bytes that were acknowledged before this record was written.
    /// 0 in segments before `COMMITTED_THROUGH_VERSION`.
    pub committed_through: u64,
}

impl RecordSpan {
    pub fn payload_range(&self) -> std::ops::Range<usize> {
        let start = self.offset + RECORD_HEADER_SIZE;
        start..start + self.payload_size
    }

    /// Offset just past this record and its padding: where the next record starts.
    pub fn end(&self) -> usize {
        record_end(self.offset, self.payload_size)
    }

    pub fn is_encrypted(&self) -> bool {
        self.flags & RECORD_FLAG_ENCRYPTED != 0
    }

    /// The header bytes that authenticated encryption binds to the payload.
    pub fn header_prefix<'a>(&self, segment: &'a [u8]) -> &'a [u8] {
        &segment[self.offset..self.offset + 16]
    }
}

/// The offset just past a record of `payload_size` bytes starting at `offset`.
pub fn record_end(offset: usize, payload_size: usize) -> usize {
    (offset + RECORD_HEADER_SIZE + payload_size).next_multiple_of(RECORD_ALIGN)
}

/// What lies at an offset of a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    /// A record whose checksum holds.
    Record(RecordSpan),
    /// A seal record whose own checksum holds, with the hash it carries of the bytes before it.
    Seal { offset: usize, hash: [u8; 32] },
    /// Zeros, or the end of the file: no more records.
    End,
    /// Bytes that are not a valid record.
    Corrupt(FormatError),
}

/// Read the record at `offset`, checking its size and checksum.
pub fn read_slot(segment: &[u8], offset: usize) -> Slot {
    debug_assert!(offset.is_multiple_of(RECORD_ALIGN));
    let Some(header) = segment.get(offset..offset + RECORD_HEADER_SIZE) else {
        return if segment.len() <= offset || segment[offset..].iter().all(|&b| b == 0) {
            Slot::End
        } else {
            Slot::Corrupt(FormatError::RecordTruncated)
        };
    };
    let payload_size = read_u32(header, 0);
    if payload_size == 0 {
        return if header.iter().all(|&b| b == 0) { Slot::End } else { Slot::Corrupt(FormatError::RecordSize(0)) };
    }
    if payload_size as usize > RECORD_PAYLOAD_SIZE_MAX {
        return Slot::Corrupt(FormatError::RecordSize(payload_size));
    }
    let record_type = u16::from_le_bytes([header[4], header[5]]);
    let span = span_of(header, offset, payload_size as usize);
    let Some(payload) = segment.get(span.payload_range()) else {
        return Slot::Corrupt(FormatError::RecordTruncated);
    };
    if checksum(&header[0..16], payload).as_bytes() != &header[16..48] {
        return Slot::Corrupt(FormatError::RecordChecksum);
    }
    match record_type {
        RECORD_TYPE_EVENT => Slot::Record(span),
        RECORD_TYPE_SEAL => match payload.try_into() {
            Ok(hash) => Slot::Seal { offset, hash },
            Err(_) => Slot::Corrupt(FormatError::RecordSize(payload_size)),
        },
        other => Slot::Corrupt(FormatError::RecordType(other)),
    }
}

/// The event record at `offset` of a segment whose seal holds: only its size is read and
/// bounded, as the seal already vouches for every byte. `None` at the seal, at the end of the
/// records, or at anything a sealed segment cannot hold.
pub fn span_in_sealed_segment(segment: &[u8], offset: usize) -> Option<RecordSpan> {
    let header = segment.get(offset..offset + RECORD_HEADER_SIZE)?;
    let payload_size = read_u32(header, 0) as usize;
    let record_type = u16::from_le_bytes([header[4], header[5]]);
    if payload_size == 0 || payload_size > RECORD_PAYLOAD_SIZE_MAX || record_type != RECORD_TYPE_EVENT {
        return None;
    }
    let span = span_of(header, offset, payload_size);
    (span.end() <= segment.len()).then_some(span)
}

/// Where a segment's seal lies, if it has one that holds: walks the record sizes to the seal,
/// checks the seal record, that only zeros follow it, and its hash of everything before it.
pub fn seal_offset(segment: &[u8]) -> Option<usize> {
    let mut offset = SEGMENT_HEADER_SIZE;
    while let Some(span) = span_in_sealed_segment(segment, offset) {
        offset = span.end();
    }
    let Slot::Seal { hash, .. } = read_slot(segment, offset) else { return None };
    check_seal(segment, offset, &hash).is_ok().then_some(offset)
}

/// Whether the seal record at `offset`, carrying `hash`, holds: `hash` is blake3 of every
/// byte before it, and only zeros follow it. Otherwise where and what is wrong.
pub fn check_seal(segment: &[u8], offset: usize, hash: &[u8; 32]) -> Result<(), (usize, FormatError)> {
    if blake3::hash(&segment[..offset]).as_bytes() != hash {
        return Err((offset, FormatError::SealChecksum));
    }
    let after = offset + SEAL_RECORD_SIZE;
    match segment.get(after..).is_some_and(|rest| rest.iter().any(|&b| b != 0)) {
        true => Err((after, FormatError::AfterSeal)),
        false => Ok(()),
    }
}

/// The first 16 header bytes of an event record: what the checksum and the encryption cover.
pub fn record_prefix(payload_size: usize, flags: u16, committed_through: u64) -> [u8; 16] {
    typed_prefix(RECORD_TYPE_EVENT, payload_size, flags, committed_through)
}

fn typed_prefix(record_type: u16, payload_size: usize, flags: u16, committed_through: u64) -> [u8; 16] {
    assert!(payload_size > 0 && payload_size <= RECORD_PAYLOAD_SIZE_MAX);
    let mut prefix = [0u8; 16];
    prefix[0..4].copy_from_slice(&(payload_size as u32).to_le_bytes());
    prefix[4..6].copy_from_slice(&record_type.to_le_bytes());
    prefix[6..8].copy_from_slice(&flags.to_le_bytes());
    prefix[8..16].copy_from_slice(&committed_through.to_le_bytes());
    prefix
}

/// The span of a record already checked at open (or written by this process), without
/// checking its checksum again.
pub fn trusted_span(segment: &[u8], offset: usize) -> RecordSpan {
    let header = &segment[offset..offset + RECORD_HEADER_SIZE];
    let payload_size = read_u32(header, 0) as usize;
    assert!(payload_size > 0 && payload_size <= RECORD_PAYLOAD_SIZE_MAX, "indexed record at {offset} has a bad size");
    span_of(header, offset, payload_size)
}

fn span_of(header: &[u8], offset: usize, payload_size: usize) -> RecordSpan {
    RecordSpan {
        offset,
        flags: u16::from_le_bytes([header[6], header[7]]),
        payload_size,
        committed_through: u64::from_le_bytes(header[8..16].try_into().expect("8 bytes")),
    }
}

/// Evidence that the damage at `damaged` was acknowledged: the offset of a valid event record
/// after it that was appended once `damaged` was durable (its `committed_through` lies past
/// `damaged`). A torn write can only hit bytes no fdatasync had covered yet, so damage with
/// such a record after it is corruption, not a torn tail. Only the record headers that claim
/// it have their checksums computed.
pub fn acknowledged_after(segment: &[u8], damaged: usize) -> Option<usize> {
    let first = (damaged + 1).next_multiple_of(RECORD_ALIGN);
    (first..segment.len().saturating_sub(RECORD_HEADER_SIZE)).step_by(RECORD_ALIGN).find(|&offset| {
        let header = &segment[offset..offset + RECORD_HEADER_SIZE];
        let claims = u16::from_le_bytes([header[4], header[5]]) == RECORD_TYPE_EVENT
            && (1..=RECORD_PAYLOAD_SIZE_MAX as u32).contains(&read_u32(header, 0))
            && (damaged as u64 + 1..=offset as u64)
                .contains(&u64::from_le_bytes(header[8..16].try_into().expect("8 bytes")));
        claims && matches!(read_slot(segment, offset), Slot::Record(_))
    })
}

/// Write an event record's header for `payload` (already in place after the header) at `offset`.
pub fn finish_record(segment: &mut [u8], offset: usize, payload_size: usize, flags: u16, committed_through: u64) {
    write_header(segment, offset, RECORD_TYPE_EVENT, payload_size, flags, committed_through);
}

/// Write the seal record at `offset`: `hash` is blake3 of `segment[..offset]`.
pub fn write_seal(segment: &mut [u8], offset: usize, hash: &[u8; 32]) {
    segment[offset + RECORD_HEADER_SIZE..offset + SEAL_RECORD_SIZE].copy_from_slice(hash);
    write_header(segment, offset, RECORD_TYPE_SEAL, 32, 0, 0);
}

fn write_header(
    segment: &mut [u8],
    offset: usize,
    record_type: u16,
    payload_size: usize,
    flags: u16,
    committed_through: u64,
) {
    assert!(offset.is_multiple_of(RECORD_ALIGN));
    segment[offset..offset + 16].copy_from_slice(&typed_prefix(record_type, payload_size, flags, committed_through));
    let payload_start = offset + RECORD_HEADER_SIZE;
    let sum = checksum(&segment[offset..offset + 16], &segment[payload_start..payload_start + payload_size]);
    segment[offset + 16..offset + 48].copy_from_slice(sum.as_bytes());
}

fn checksum(header_prefix: &[u8], payload: &[u8]) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(header_prefix);
    hasher.update(payload);
    hasher.finalize()
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_damage() {
        let header = SegmentHeader { shard_id: 3, segment_id: 7, created_unix_ms: 42, key_check: Some([9; 16]) };
        let mut bytes = vec![0u8; SEGMENT_HEADER_SIZE];
        header.encode(&mut bytes);
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        bytes[20] ^= 1;
        assert_eq!(SegmentHeader::decode(&bytes), Err(FormatError::HeaderChecksum));
        assert_eq!(SegmentHeader::decode(&bytes[..100]), Err(FormatError::HeaderTruncated));
    }

    #[test]
    fn record_round_trip_and_damage() {
        let mut segment = vec![0u8; 4096];
        segment[48..53].copy_from_slice(b"hello");
        finish_record(&mut segment, 0, 5, 0, 0);
        let span = match read_slot(&segment, 0) {
            Slot::Record(span) => span,
            other => panic!("{other:?}"),
        };
        assert_eq!(span.end(), 64);
        assert_eq!(&segment[span.payload_range()], b"hello");
        assert_eq!(read_slot(&segment, 64), Slot::End);
        segment[50] ^= 1;
        assert_eq!(read_slot(&segment, 0), Slot::Corrupt(FormatError::RecordChecksum));
        assert_eq!(read_slot(&segment[..40], 0), Slot::Corrupt(FormatError::RecordTruncated));
    }
}
