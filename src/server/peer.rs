//! What the verbs and the ingest stages may ask about the connection they serve: a trait, so
//! that they are decided over plain data in unit tests and over the core's sessions in the
//! relay (`verbs::Conn`).

use crate::auth::RelayAddress;
use crate::event::Pubkey;
use crate::proto::SubId;

use super::rates::Work;

/// What a verb may ask about its connection; asked only when the verb needs it.
pub trait Peer {
    /// Whether the connection is over its rate for `work` (one token is taken when not).
    fn over_rate(&self, work: Work) -> bool;
    /// The pubkeys it authenticated as.
    fn authed(&self) -> Vec<Pubkey>;
    /// Whether it is a relay of this one's fleet (authenticated as one of
    /// `peering.pubkeys`, or as this relay: its peer links' own sessions).
    fn is_fleet(&self) -> bool;
    /// The NIP-42 challenge it was sent, if any.
    fn challenge(&self) -> Option<String>;
    /// The addresses it may name this relay by (NIP-42, NIP-62).
    fn addresses(&self) -> Vec<RelayAddress>;
    /// How many subscriptions it has open, and whether `sub` is one of them.
    fn subscriptions(&self, sub: &SubId) -> (usize, bool);
}

/// A [`Peer`] of plain data, for unit tests.
#[cfg(test)]
pub mod tests {
    use std::cell::Cell;

    use super::*;

    #[derive(Default)]
    pub struct FakePeer {
        /// Rate tokens left (`None`: no limit).
        pub tokens: Cell<Option<u32>>,
        pub authed: Vec<Pubkey>,
        pub challenge: Option<String>,
        pub addresses: Vec<RelayAddress>,
        pub subs: Vec<SubId>,
        pub fleet: bool,
    }

    impl Peer for FakePeer {
        fn over_rate(&self, _work: Work) -> bool {
            match self.tokens.get() {
                None => false,
                Some(0) => true,
                Some(left) => {
                    self.tokens.set(Some(left - 1));
                    false
                }
            }
        }
        fn authed(&self) -> Vec<Pubkey> {
            self.authed.clone()
        }
        fn is_fleet(&self) -> bool {
            self.fleet
        }
        fn challenge(&self) -> Option<String> {
            self.challenge.clone()
        }
        fn addresses(&self) -> Vec<RelayAddress> {
            self.addresses.clone()
        }
        fn subscriptions(&self, sub: &SubId) -> (usize, bool) {
            (self.subs.len(), self.subs.contains(sub))
        }
    }
}
