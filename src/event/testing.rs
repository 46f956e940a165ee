//! Signed events for unit tests: a deterministic key per number, the id and the BIP-340
//! signature computed as a client would.

use secp256k1::{Keypair, Message, SecretKey, SECP256K1};
use sha2::{Digest, Sha256};

/// Test key number `n` (any byte but 0 makes a valid secret).
pub fn keypair(n: u8) -> Keypair {
    let mut secret = [0u8; 32];
    secret[31] = n.max(1);
    Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&secret).expect("a valid secret"))
}

/// An event's JSON, signed by key `n`.
pub fn signed(n: u8, kind: u16, created_at: u64, tags: &serde_json::Value, content: &str) -> String {
    let keys = keypair(n);
    let pubkey = crate::hex::encode(&keys.x_only_public_key().0.serialize());
    let canonical = serde_json::json!([0, pubkey, created_at, kind, tags, content]).to_string();
    let id: [u8; 32] = Sha256::digest(canonical.as_bytes()).into();
    let sig = SECP256K1.sign_schnorr_no_aux_rand(&Message::from_digest(id), &keys);
    serde_json::json!({
        "id": crate::hex::encode(&id),
        "pubkey": pubkey,
        "created_at": created_at,
        "kind": kind,
        "tags": tags,
        "content": content,
        "sig": crate::hex::encode(&sig.serialize()),
    })
    .to_string()
}
