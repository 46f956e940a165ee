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
        let sig = Signature::from_slice(&event.sig).map_err(|_| EventError::BadSignature)?;
        let message = Message::from_digest(event.id.0);
        SECP256K1.verify_schnorr(&sig, &message, &pubkey).map_err(|_| EventError::BadSignature)?;
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
    pub fn json(&self) -> &[u8] {
        &self.0.json
    }
    /// The `d` tag value that keys an addressable event; empty when absent.
    pub fn d_tag(&self) -> &[u8] {
        first_tag_value(&self.0.index_tags, b'd')
    }
}

/// The first value of the first tag named `letter`, or empty.
pub fn first_tag_value(tags: &[IndexTag], letter: u8) -> &[u8] {
    tags.iter().find(|tag| tag.letter == letter).map(|tag| &tag.value[..]).unwrap_or_default()
}
