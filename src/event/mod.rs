//! The Nostr event, sans-IO: wire JSON in, a [`VerifiedEvent`] out.
//!
//! Reading order: [`ids`] (newtypes), [`kind`] (kind classes), [`json`] (escaping and depth),
//! [`parse`] (bounded parse, served bytes, id check), [`verify`] (BIP-340 signature), [`sign`] (what the relay signs itself: its NIP-42 AUTH to a peer).
//! Nothing here imports the runtime.

pub mod ids;
pub mod json;
pub mod kind;
pub mod parse;
pub mod sign;
#[cfg(test)]
pub mod testing;
pub mod verify;

pub use ids::{EventId, Pubkey};
pub use kind::KindClass;
pub use parse::{parse_event, EventError, IndexTag, ParsedEvent};
pub use verify::{KeyCache, VerifiedEvent};
