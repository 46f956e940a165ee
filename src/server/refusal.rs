//! Why an EVENT is not taken, as one type: its NIP-01 prefix, the reason it is counted under
//! (`ringrelay_events_total{outcome, reason}`), and the words after the prefix. The `OK`
//! message and the metric both come from it, so they cannot disagree.

use std::borrow::Cow;

use super::stats::{Outcome, OutcomeClass};

/// NIP-01's machine-readable prefixes for an `OK false`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    Invalid,
    Blocked,
    AuthRequired,
    Restricted,
    RateLimited,
    Error,
}

impl Prefix {
    pub fn text(self) -> &'static str {
        match self {
            Prefix::Invalid => "invalid",
            Prefix::Blocked => "blocked",
            Prefix::AuthRequired => "auth-required",
            Prefix::Restricted => "restricted",
            Prefix::RateLimited => "rate-limited",
            Prefix::Error => "error",
        }
    }

    /// The outcome class the refusal is counted under.
    fn class(self) -> OutcomeClass {
        match self {
            Prefix::Invalid => OutcomeClass::Invalid,
            Prefix::Blocked | Prefix::AuthRequired | Prefix::Restricted => OutcomeClass::Refused,
            Prefix::RateLimited => OutcomeClass::RateLimited,
            Prefix::Error => OutcomeClass::Error,
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
}
