//! Newtypes for the 32-byte identifiers of the protocol.

use std::fmt;

/// The sha256 of an event's canonical serialization.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub [u8; 32]);

/// An author's x-only secp256k1 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pubkey(pub [u8; 32]);

macro_rules! hex_newtype {
    ($name:ident) => {
        impl $name {
            /// Parse from exactly 64 lowercase hex digits.
            pub fn from_hex(text: &str) -> Option<Self> {
                crate::hex::decode_lower::<32>(text.as_bytes()).map($name)
            }

            pub fn to_hex(&self) -> String {
                crate::hex::encode(&self.0)
            }

            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
    };
}

hex_newtype!(EventId);
hex_newtype!(Pubkey);
