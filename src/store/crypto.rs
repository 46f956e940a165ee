//! At-rest encryption: AES-256-GCM per record, with a nonce made of (shard, segment, offset).
//!
//! A segment id is never reused within a shard (the high-water mark is persisted before a
//! segment is created) and a record offset never repeats within a segment (append-only, and a
//! segment is never appended to again after a restart), so no nonce is ever used twice.

use std::path::Path;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};

use super::format::FormatError;

pub const TAG_SIZE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("key file {0} must hold 32 raw bytes or 64 hex characters")]
    Malformed(String),
}

/// The operator's key, ready to seal and open records.
#[derive(Clone)]
pub struct SegmentKey {
    cipher: Aes256Gcm,
    check: [u8; 16],
}

impl std::fmt::Debug for SegmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SegmentKey(check={})", crate::hex::encode(&self.check))
    }
}

impl SegmentKey {
    pub fn from_bytes(key: [u8; 32]) -> SegmentKey {
        let check = blake3::derive_key("ringrelay 2026-11 segment key check v1", &key);
        SegmentKey { cipher: Aes256Gcm::new(&key.into()), check: check[..16].try_into().expect("16 bytes") }
    }

    /// Read a key file: 32 raw bytes, or 64 hex characters with optional surrounding whitespace.
    pub fn from_file(path: &Path) -> Result<SegmentKey, KeyError> {
        let bytes =
            std::fs::read(path).map_err(|source| KeyError::Read { path: path.display().to_string(), source })?;
        let malformed = || KeyError::Malformed(path.display().to_string());
        let key = match bytes.len() {
            32 => bytes.try_into().expect("32 bytes"),
            _ => crate::hex::decode_lower::<32>(bytes.trim_ascii()).ok_or_else(malformed)?,
        };
        Ok(SegmentKey::from_bytes(key))
    }

    /// A fingerprint stored in segment headers, so a wrong key is caught at open.
    pub fn check_value(&self) -> [u8; 16] {
        self.check
    }

    /// Encrypt `payload` in place and return the tag to store after it.
    pub fn seal(&self, nonce: [u8; 12], header_prefix: &[u8], payload: &mut [u8]) -> [u8; TAG_SIZE] {
        self.cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), header_prefix, payload)
            .expect("aes-gcm seals any payload under 64 GiB")
            .into()
    }

    /// Decrypt `buffer` in place, checking it against `tag`.
    pub fn open(
        &self,
        nonce: [u8; 12],
        header_prefix: &[u8],
        buffer: &mut [u8],
        tag: &[u8],
    ) -> Result<(), FormatError> {
        if tag.len() != TAG_SIZE {
            return Err(FormatError::Decrypt);
        }
        self.cipher
            .decrypt_in_place_detached(Nonce::from_slice(&nonce), header_prefix, buffer, Tag::from_slice(tag))
            .map_err(|_| FormatError::Decrypt)
    }
}

/// The nonce of the record at `offset` of segment `segment_id` of shard `shard_id`.
pub fn nonce(shard_id: u16, segment_id: u32, offset: u32) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[0..2].copy_from_slice(&shard_id.to_le_bytes());
    nonce[2..6].copy_from_slice(&segment_id.to_le_bytes());
    nonce[6..10].copy_from_slice(&offset.to_le_bytes());
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_wrong_key() {
        let key = SegmentKey::from_bytes([7; 32]);
        let mut payload = b"secret payload".to_vec();
        let tag = key.seal(nonce(1, 2, 4096), b"hdr", &mut payload);
        let sealed = payload.clone();
        assert_ne!(payload, b"secret payload");
        key.open(nonce(1, 2, 4096), b"hdr", &mut payload, &tag).unwrap();
        assert_eq!(payload, b"secret payload");
        let mut copy = sealed.clone();
        assert_eq!(key.open(nonce(1, 2, 4112), b"hdr", &mut copy, &tag), Err(FormatError::Decrypt));
        let other = SegmentKey::from_bytes([8; 32]);
        assert_ne!(other.check_value(), key.check_value());
        let mut copy = sealed.clone();
        assert_eq!(other.open(nonce(1, 2, 4096), b"hdr", &mut copy, &tag), Err(FormatError::Decrypt));
    }
}
