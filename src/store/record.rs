//! The rkyv-archived record: what the indexes need, plus the event JSON as it is served.

use rkyv::{Archive, Serialize};

use crate::event::VerifiedEvent;
use crate::filter::Matchable;

#[derive(Archive, Serialize, Debug)]
pub struct Record {
    pub id: [u8; 32],
    pub pubkey: [u8; 32],
    pub created_at: u64,
    /// NIP-40 expiration; 0 when absent (an expiration of 0 is refused on arrival).
    pub expiration: u64,
    pub kind: u16,
    /// Single-letter tags with their first value, in event order.
    pub tags: Vec<RecordTag>,
    /// The compact event JSON, served as is.
    pub json: Vec<u8>,
}

#[derive(Archive, Serialize, Debug)]
pub struct RecordTag {
    pub letter: u8,
    pub value: Vec<u8>,
}

impl Record {
    pub fn from_event(event: &VerifiedEvent) -> Record {
        Record {
            id: event.id().0,
            pubkey: event.pubkey().0,
            created_at: event.created_at(),
            expiration: event.expiration().unwrap_or(0),
            kind: event.kind(),
            tags: event
                .index_tags()
                .iter()
                .map(|tag| RecordTag { letter: tag.letter, value: tag.value.to_vec() })
                .collect(),
            json: event.json().as_bytes().to_vec(),
        }
    }
}

impl ArchivedRecord {
    pub fn created_at(&self) -> u64 {
        self.created_at.to_native()
    }
    pub fn kind(&self) -> u16 {
        self.kind.to_native()
    }
    pub fn expiration(&self) -> Option<u64> {
        Some(self.expiration.to_native()).filter(|&at| at != 0)
    }
    pub fn tag_pairs(&self) -> impl Iterator<Item = (u8, &[u8])> {
        self.tags.iter().map(|tag| (tag.letter, tag.value.as_slice()))
    }
}

impl Matchable for ArchivedRecord {
    fn id(&self) -> &[u8; 32] {
        &self.id
    }
    fn pubkey(&self) -> &[u8; 32] {
        &self.pubkey
    }
    fn created_at(&self) -> u64 {
        self.created_at.to_native()
    }
    fn kind(&self) -> u16 {
        self.kind.to_native()
    }
    fn has_tag(&self, letter: u8, value: &[u8]) -> bool {
        self.tags.iter().any(|tag| tag.letter == letter && tag.value.as_slice() == value)
    }
    fn search_terms(&self) -> Option<std::borrow::Cow<'_, [String]>> {
        let json = std::str::from_utf8(self.json.as_slice()).ok()?;
        crate::search::text::search_terms_of_json(json).map(std::borrow::Cow::Owned)
    }
}

/// Check an archive read from disk (bytecheck) and borrow it.
pub fn access(bytes: &[u8]) -> Result<&ArchivedRecord, crate::store::format::FormatError> {
    rkyv::access::<ArchivedRecord, rkyv::rancor::Error>(bytes)
        .map_err(|error| crate::store::format::FormatError::Archive(error.to_string()))
}

/// Borrow an archive that was checked when its segment was opened, or that this process wrote.
///
/// # Safety
/// `bytes` must have passed [`access`] before, and not changed since.
pub unsafe fn access_trusted(bytes: &[u8]) -> &ArchivedRecord {
    // SAFETY: the caller guarantees the bytes were validated by `access`.
    unsafe { rkyv::access_unchecked::<ArchivedRecord>(bytes) }
}
