//! An EVENT's stages on its way to the shard, each a type, so that a step cannot be skipped
//! or taken twice: `ParsedEvent` (shape and id, `event::parse_event`) → [`Admitted`] (the
//! rules before the signature, its author's shard, not a known copy) → [`Verified`] (its
//! signature) → [`Judged`] (the write plugin, NIP-09 ownership) → [`Routed`] (on the core
//! that owns its shard) → appended (`acks::Pending`, in the shard's ack pipeline). Each step
//! (in `ingest`) takes one stage and returns the next, or the [`Stop`] that ends the event's
//! way with its `OK`.

use std::borrow::Cow;

use super::refusal::Refusal;
use super::stats::Outcome;
use crate::event::{EventError, ParsedEvent, VerifiedEvent};
use crate::store::ShardId;

/// Passed the rules that need no signature; not a copy of an event already acknowledged.
pub struct Admitted {
    pub event: ParsedEvent,
    pub shard: ShardId,
}

/// Its signature holds.
pub struct Verified {
    pub event: VerifiedEvent,
    pub shard: ShardId,
}

/// The write plugin and, for a deletion request, NIP-09's ownership rule let it through.
pub struct Judged {
    pub event: VerifiedEvent,
    pub shard: ShardId,
}

/// On the core that owns its shard (what `CoreMsg::Append` carries between cores).
pub struct Routed {
    pub event: VerifiedEvent,
    pub shard: ShardId,
}

/// Why an event goes no further, and its `OK`.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// `OK false` with a NIP-01 prefix.
    Refused(Refusal),
    /// `OK true` already: a copy of an event stored and acknowledged, or one the write
    /// plugin shadow-rejects.
    Answered { outcome: Outcome, reason: Cow<'static, str> },
}

impl Stop {
    pub fn outcome(&self) -> Outcome {
        match self {
            Stop::Refused(refusal) => refusal.outcome(),
            Stop::Answered { outcome, .. } => *outcome,
        }
    }

    /// The `OK` message.
    pub fn reason(&self) -> Cow<'_, str> {
        match self {
            Stop::Refused(refusal) => Cow::Owned(refusal.reason()),
            Stop::Answered { reason, .. } => Cow::Borrowed(reason),
        }
    }

    /// Whether the client should get the connection's AUTH challenge before the `OK`.
    pub fn wants_challenge(&self) -> bool {
        matches!(self, Stop::Refused(refusal) if refusal.wants_challenge())
    }
}

impl From<Refusal> for Stop {
    fn from(refusal: Refusal) -> Stop {
        Stop::Refused(refusal)
    }
}

impl From<EventError> for Stop {
    fn from(error: EventError) -> Stop {
        Stop::Refused(Refusal::invalid_event(&error))
    }
}
