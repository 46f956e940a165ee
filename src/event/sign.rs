//! Events this relay signs itself: the NIP-42 `AUTH` it sends a peer relay, so that the peer
//! knows it by its pubkey. A key is 64 lowercase hex characters (or 32 raw bytes) in a file.

use std::path::Path;

use secp256k1::{Keypair, Message, SecretKey, SECP256K1};
use sha2::{Digest, Sha256};

/// A secret key and what it signs.
pub struct Signer {
    keys: Keypair,
    pubkey: String,
}

impl Signer {
    pub fn from_secret(secret: [u8; 32]) -> Option<Signer> {
        let keys = Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&secret).ok()?);
        let pubkey = crate::hex::encode(&keys.x_only_public_key().0.serialize());
        Some(Signer { keys, pubkey })
    }

    /// A key made now from the kernel's random source (a relay's identity toward its peers
    /// when it is given none).
    pub fn ephemeral() -> Signer {
        loop {
            let mut secret = [0u8; 32];
            // SAFETY: getrandom writes at most `secret.len()` bytes into the buffer.
            let filled = unsafe { libc::getrandom(secret.as_mut_ptr().cast(), secret.len(), 0) };
            assert_eq!(filled, secret.len() as isize, "the kernel's random source failed");
            if let Some(signer) = Signer::from_secret(secret) {
                return signer;
            }
        }
    }

    pub fn pubkey(&self) -> [u8; 32] {
        self.keys.x_only_public_key().0.serialize()
    }

    /// Read a key file: 32 raw bytes or 64 lowercase hex characters.
    pub fn from_file(path: &Path) -> anyhow::Result<Signer> {
        let bytes = std::fs::read(path).map_err(|error| anyhow::anyhow!("reading {}: {error}", path.display()))?;
        let secret = match bytes.len() {
            32 => bytes.try_into().ok(),
            _ => crate::hex::decode_lower::<32>(bytes.trim_ascii()),
        };
        secret
            .and_then(Signer::from_secret)
            .ok_or_else(|| anyhow::anyhow!("{}: not a secret key (64 lowercase hex characters)", path.display()))
    }

    pub fn pubkey_hex(&self) -> &str {
        &self.pubkey
    }

    /// A signed event's JSON, its id computed over NIP-01's canonical form.
    pub fn sign(&self, kind: u16, created_at: u64, tags: &serde_json::Value, content: &str) -> String {
        let canonical = serde_json::json!([0, self.pubkey, created_at, kind, tags, content]).to_string();
        let id: [u8; 32] = Sha256::digest(canonical.as_bytes()).into();
        let sig = SECP256K1.sign_schnorr_no_aux_rand(&Message::from_digest(id), &self.keys);
        serde_json::json!({
            "id": crate::hex::encode(&id),
            "pubkey": self.pubkey,
            "created_at": created_at,
            "kind": kind,
            "tags": tags,
            "content": content,
            "sig": crate::hex::encode(&sig.serialize()),
        })
        .to_string()
    }

    /// NIP-42: the kind 22242 event answering `challenge` from the relay at `relay_url`.
    pub fn auth_event(&self, relay_url: &str, challenge: &str, now: u64) -> String {
        self.sign(22242, now, &serde_json::json!([["relay", relay_url], ["challenge", challenge]]), "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::VerifiedEvent;
    use crate::limits::EventLimits;

    #[test]
    fn what_it_signs_verifies_and_names_its_key() {
        let signer = Signer::from_secret([7; 32]).expect("a valid key");
        let json = signer.auth_event("ws://127.0.0.1:7777/", "abc", 1_700_000_000);
        let event = VerifiedEvent::from_json(json.as_bytes(), &EventLimits::hard_caps()).expect("verifies");
        assert_eq!(event.kind(), 22242);
        assert_eq!(crate::hex::encode(&event.pubkey().0), signer.pubkey_hex());
    }

    #[test]
    fn a_key_file_is_hex_or_raw_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hex = dir.path().join("hex");
        std::fs::write(&hex, format!("{}\n", "07".repeat(32))).expect("write");
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [7u8; 32]).expect("write");
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "not a key").expect("write");
        let from_hex = Signer::from_file(&hex).expect("hex key");
        assert_eq!(from_hex.pubkey_hex(), Signer::from_file(&raw).expect("raw key").pubkey_hex());
        assert!(Signer::from_file(&bad).is_err());
        assert!(Signer::from_file(&dir.path().join("missing")).is_err());
    }
}
