//! Signed events for unit tests: a deterministic key per number, the id and the BIP-340
//! signature computed as a client would.

use secp256k1::{Keypair, SecretKey, SECP256K1};

use super::sign::Signer;

fn secret(n: u8) -> [u8; 32] {
    let mut secret = [0u8; 32];
    secret[31] = n.max(1);
    secret
}

/// Test key number `n` (any byte but 0 makes a valid secret).
pub fn keypair(n: u8) -> Keypair {
    Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&secret(n)).expect("a valid secret"))
}

/// An event's JSON, signed by key `n`.
pub fn signed(n: u8, kind: u16, created_at: u64, tags: &serde_json::Value, content: &str) -> String {
    Signer::from_secret(secret(n)).expect("a valid secret").sign(kind, created_at, tags, content)
}
