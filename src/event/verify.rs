//! BIP-340 signature check with libsecp256k1; the only way to make a [`VerifiedEvent`].

use secp256k1::{schnorr::Signature, Message, XOnlyPublicKey, SECP256K1};

use super::parse::{EventError, ParsedEvent};
use super::{EventId, IndexTag, KindClass, Pubkey};

/// An event whose id and signature are checked. Only [`VerifiedEvent::verify`] builds one,
/// so storage can never be handed an unchecked event.
#[derive(Clone, Debug)]
pub struct VerifiedEvent(ParsedEvent);

impl VerifiedEvent {
    /// Check the signature of an id-checked event.
    pub fn verify(event: ParsedEvent) -> Result<VerifiedEvent, EventError> {
        let pubkey = XOnlyPublicKey::from_slice(&event.pubkey.0).map_err(|_| EventError::BadPubkey)?;
        VerifiedEvent::verify_against(event, &pubkey)
    }

    /// [`VerifiedEvent::verify`], taking the author's key from `keys` when it is there.
    pub fn verify_cached(event: ParsedEvent, keys: &mut KeyCache) -> Result<VerifiedEvent, EventError> {
        let pubkey = keys.lift(&event.pubkey.0).ok_or(EventError::BadPubkey)?;
        VerifiedEvent::verify_against(event, &pubkey)
    }

    fn verify_against(event: ParsedEvent, pubkey: &XOnlyPublicKey) -> Result<VerifiedEvent, EventError> {
        let sig = Signature::from_slice(&event.sig).map_err(|_| EventError::BadSignature)?;
        let message = Message::from_digest(event.id.0);
        SECP256K1.verify_schnorr(&sig, &message, pubkey).map_err(|_| EventError::BadSignature)?;
        Ok(VerifiedEvent(event))
    }

    /// Parse, check the id, check the signature.
    pub fn from_json(bytes: &[u8], limits: &crate::limits::EventLimits) -> Result<VerifiedEvent, EventError> {
        VerifiedEvent::verify(super::parse_event(bytes, limits)?)
    }

    pub fn id(&self) -> &EventId {
        &self.0.id
    }
    pub fn pubkey(&self) -> &Pubkey {
        &self.0.pubkey
    }
    pub fn created_at(&self) -> u64 {
        self.0.created_at
    }
    pub fn kind(&self) -> u16 {
        self.0.kind
    }
    pub fn class(&self) -> KindClass {
        KindClass::of(self.0.kind)
    }
    pub fn index_tags(&self) -> &[IndexTag] {
        &self.0.index_tags
    }
    pub fn expiration(&self) -> Option<u64> {
        self.0.expiration
    }
    pub fn is_protected(&self) -> bool {
        self.0.protected
    }
    /// The compact JSON the relay stores and serves.
    pub fn json(&self) -> &str {
        &self.0.json
    }
    /// The `d` tag value that keys an addressable event; empty when absent.
    pub fn d_tag(&self) -> &[u8] {
        first_tag_value(&self.0.index_tags, b'd')
    }
}

/// Authors' keys already lifted onto the curve, one cache per core.
///
/// Lifting an x-only key costs a field square root, ~3 µs of a ~26 µs check
/// (`cargo bench --bench core -- event/raw_`), and a relay sees the same authors again and
/// again. Direct-mapped on the key's first bytes: keys are uniform, a miss costs one lift, and
/// a flood of new keys only evicts (it cannot grow the cache). Only points that parsed are
/// kept, so a cached key is exactly what `from_slice` would return.
pub struct KeyCache {
    slots: Box<[Option<CachedKey>]>,
}

/// An x coordinate and the point it lifts to.
type CachedKey = ([u8; 32], XOnlyPublicKey);

impl KeyCache {
    /// 4,096 slots of ~100 bytes: 400 KiB at most, touched one slot per event.
    pub const SLOTS: usize = 4096;

    pub fn new() -> KeyCache {
        KeyCache { slots: vec![None; KeyCache::SLOTS].into_boxed_slice() }
    }

    /// The key for `x`, lifted once; `None` when `x` is not on the curve.
    pub fn lift(&mut self, x: &[u8; 32]) -> Option<XOnlyPublicKey> {
        let slot = &mut self.slots[KeyCache::slot_of(x)];
        if let Some((cached_x, key)) = slot {
            if cached_x == x {
                return Some(*key);
            }
        }
        let key = XOnlyPublicKey::from_slice(x).ok()?;
        *slot = Some((*x, key));
        Some(key)
    }

    fn slot_of(x: &[u8; 32]) -> usize {
        usize::from(u16::from_le_bytes([x[0], x[1]])) % KeyCache::SLOTS
    }
}

impl Default for KeyCache {
    fn default() -> KeyCache {
        KeyCache::new()
    }
}

/// The first value of the first tag named `letter`, or empty.
pub fn first_tag_value(tags: &[IndexTag], letter: u8) -> &[u8] {
    tags.iter().find(|tag| tag.letter == letter).map(|tag| &tag.value[..]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use secp256k1::{Keypair, SecretKey};

    use super::*;

    fn x_only(n: u64) -> [u8; 32] {
        let mut secret = [0u8; 32];
        secret[24..].copy_from_slice(&(n + 1).to_be_bytes());
        let keypair = Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&secret).unwrap());
        keypair.x_only_public_key().0.serialize()
    }

    #[test]
    fn a_cached_key_is_the_key_from_slice_gives() {
        let mut keys = KeyCache::new();
        let x = x_only(7);
        let first = keys.lift(&x).unwrap();
        let second = keys.lift(&x).unwrap();
        assert_eq!(first, XOnlyPublicKey::from_slice(&x).unwrap());
        assert_eq!(second, first);
    }

    #[test]
    fn keys_sharing_a_slot_each_get_their_own_point() {
        let a = x_only(0);
        let b =
            (1..100_000).map(x_only).find(|x| KeyCache::slot_of(x) == KeyCache::slot_of(&a)).expect("a colliding key");
        let mut keys = KeyCache::new();
        for x in [a, b, a, b, b, a] {
            assert_eq!(keys.lift(&x).unwrap(), XOnlyPublicKey::from_slice(&x).unwrap());
        }
    }

    #[test]
    fn an_x_off_the_curve_is_refused_and_not_kept() {
        // x = 5 has no point on secp256k1 (5³ + 7 = 132 is not a square mod p).
        let mut off_curve = [0u8; 32];
        off_curve[31] = 5;
        assert!(XOnlyPublicKey::from_slice(&off_curve).is_err(), "test premise");
        let mut keys = KeyCache::new();
        assert!(keys.lift(&off_curve).is_none());
        assert!(keys.slots[KeyCache::slot_of(&off_curve)].is_none());
    }
}
