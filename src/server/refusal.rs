//! Why an EVENT is not taken, as one type: its NIP-01 prefix, the reason it is counted under
//! (`ringrelay_events_total{outcome, reason}`), and the words after the prefix. The `OK`
//! message and the metric both come from it, so they cannot disagree.

use std::borrow::Cow;

use super::stats::{Outcome, OutcomeClass};
use crate::event::EventError;
use crate::store::{Rejection, StoreError};

/// NIP-01's machine-readable prefixes for an `OK false`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    Invalid,
    Blocked,
    AuthRequired,
    Restricted,
    RateLimited,
    Error,
    /// A replaceable event older than the stored version.
    Duplicate,
    Pow,
    Mute,
}

impl Prefix {
    const ALL: [Prefix; 9] = [
        Prefix::Invalid,
        Prefix::Blocked,
        Prefix::AuthRequired,
        Prefix::Restricted,
        Prefix::RateLimited,
        Prefix::Error,
        Prefix::Duplicate,
        Prefix::Pow,
        Prefix::Mute,
    ];

    pub fn text(self) -> &'static str {
        match self {
            Prefix::Invalid => "invalid",
            Prefix::Blocked => "blocked",
            Prefix::AuthRequired => "auth-required",
            Prefix::Restricted => "restricted",
            Prefix::RateLimited => "rate-limited",
            Prefix::Error => "error",
            Prefix::Duplicate => "duplicate",
            Prefix::Pow => "pow",
            Prefix::Mute => "mute",
        }
    }

    /// The prefix a message starts with (`word: ...`), and the rest.
    pub fn split(message: &str) -> Option<(Prefix, &str)> {
        let (word, rest) = message.split_once(": ")?;
        Prefix::ALL.into_iter().find(|prefix| prefix.text() == word).map(|prefix| (prefix, rest))
    }

    /// The outcome class the refusal is counted under.
    fn class(self) -> OutcomeClass {
        match self {
            Prefix::Invalid => OutcomeClass::Invalid,
            Prefix::Blocked | Prefix::AuthRequired | Prefix::Restricted | Prefix::Pow | Prefix::Mute => {
                OutcomeClass::Refused
            }
            Prefix::RateLimited => OutcomeClass::RateLimited,
            Prefix::Error => OutcomeClass::Error,
            Prefix::Duplicate => OutcomeClass::Duplicate,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub prefix: Prefix,
    /// The metric's `reason` label: from a fixed set, never from what a client sent.
    pub label: &'static str,
    /// What follows the prefix.
    pub message: Cow<'static, str>,
}

impl Refusal {
    pub fn new(prefix: Prefix, label: &'static str, message: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal { prefix, label, message: message.into() }
    }

    /// The `OK` message: `prefix: message`.
    pub fn reason(&self) -> String {
        format!("{}: {}", self.prefix.text(), self.message)
    }

    pub fn outcome(&self) -> Outcome {
        Outcome::new(self.prefix.class(), self.label)
    }

    /// Whether the client should get the connection's AUTH challenge before the `OK`.
    pub fn wants_challenge(&self) -> bool {
        self.prefix == Prefix::AuthRequired
    }

    /// A storage rule's refusal on the owner core.
    pub fn rejected(rejection: Rejection) -> Refusal {
        let label = match rejection {
            Rejection::Deleted => "deleted",
            Rejection::Superseded => "superseded",
            Rejection::Expired => "expired",
            Rejection::ShardFull => "shard_full",
            Rejection::Vanished => "vanished",
        };
        let (prefix, message) = Prefix::split(rejection.reason()).expect("every rejection's reason has its prefix");
        Refusal { prefix, label, message: Cow::Borrowed(message) }
    }

    /// Storage refusing writes (a full disk, the reserve) or a write that failed: the relay
    /// retries by itself, the client may send again later.
    pub fn storage(error: &StoreError) -> Refusal {
        match error {
            StoreError::Refusing(refusal) if refusal.is_full() => {
                Refusal::new(Prefix::Error, "storage_full", "the relay's storage is full; try again later")
            }
            _ => Refusal::storage_failing(),
        }
    }

    /// A write to disk failed: the event is not stored.
    pub fn storage_failing() -> Refusal {
        Refusal::new(
            Prefix::Error,
            "storage_failing",
            "could not store the event (a disk write failed); try again later",
        )
    }

    /// An event that is not well formed, or whose id or signature does not hold.
    pub fn invalid_event(error: &EventError) -> Refusal {
        Refusal::new(Prefix::Invalid, error.label(), error.to_string())
    }

    /// A write plugin's `reject`: its message keeps a NIP-01 prefix it starts with, else it
    /// is `blocked:`.
    pub fn from_plugin(message: String) -> Refusal {
        if let Some((prefix, rest)) = Prefix::split(&message) {
            let rest = rest.to_owned();
            return Refusal::new(prefix, "plugin", rest);
        }
        match message.is_empty() {
            true => Refusal::new(Prefix::Blocked, "plugin", "rejected by the relay's write policy"),
            false => Refusal::new(Prefix::Blocked, "plugin", message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(refusal: Refusal, reason: &str, class: OutcomeClass, challenge: bool) {
        assert_eq!(refusal.reason(), reason);
        assert_eq!(refusal.outcome(), Outcome::new(class, refusal.label));
        assert_eq!(refusal.wants_challenge(), challenge);
    }

    #[test]
    fn the_prefix_decides_the_message_the_class_and_the_challenge() {
        check(Refusal::new(Prefix::Invalid, "auth_event", "no"), "invalid: no", OutcomeClass::Invalid, false);
        check(Refusal::new(Prefix::Blocked, "pubkey_denied", "no"), "blocked: no", OutcomeClass::Refused, false);
        check(
            Refusal::new(Prefix::AuthRequired, "protected", String::from("no")),
            "auth-required: no",
            OutcomeClass::Refused,
            true,
        );
        check(Refusal::new(Prefix::Restricted, "restricted", "no"), "restricted: no", OutcomeClass::Refused, false);
        check(Refusal::new(Prefix::RateLimited, "events", "no"), "rate-limited: no", OutcomeClass::RateLimited, false);
        check(Refusal::new(Prefix::Error, "storage_full", "no"), "error: no", OutcomeClass::Error, false);
    }

    #[test]
    fn a_storage_rules_refusal_keeps_its_reason_and_is_counted_as_before() {
        check(Refusal::rejected(Rejection::Superseded), Rejection::Superseded.reason(), OutcomeClass::Duplicate, false);
        assert_eq!(Refusal::rejected(Rejection::Superseded).outcome(), Outcome::SUPERSEDED);
        assert!(!Refusal::rejected(Rejection::Superseded).outcome().accepted());
        for (rejection, class) in [
            (Rejection::Deleted, OutcomeClass::Refused),
            (Rejection::Expired, OutcomeClass::Invalid),
            (Rejection::ShardFull, OutcomeClass::Error),
            (Rejection::Vanished, OutcomeClass::Refused),
        ] {
            check(Refusal::rejected(rejection), rejection.reason(), class, false);
        }
        assert_eq!(
            Refusal::storage_failing().reason(),
            "error: could not store the event (a disk write failed); try again later"
        );
    }

    #[test]
    fn a_plugins_message_keeps_a_nip01_prefix_and_is_blocked_otherwise() {
        check(
            Refusal::from_plugin("pow: difficulty 20 needed".to_owned()),
            "pow: difficulty 20 needed",
            OutcomeClass::Refused,
            false,
        );
        check(
            Refusal::from_plugin("auth-required: sign in".to_owned()),
            "auth-required: sign in",
            OutcomeClass::Refused,
            true,
        );
        check(Refusal::from_plugin("no spam: here".to_owned()), "blocked: no spam: here", OutcomeClass::Refused, false);
        check(
            Refusal::from_plugin(String::new()),
            "blocked: rejected by the relay's write policy",
            OutcomeClass::Refused,
            false,
        );
    }
}
