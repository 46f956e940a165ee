//! AUTH (NIP-42): a signed kind-22242 event naming this relay and this connection's
//! challenge adds its pubkey to the connection's authenticated ones. Answered with an OK;
//! never stored, never broadcast.

use serde_json::value::RawValue;

use super::{Effect, Peer};
use crate::auth::{self, AuthCheck};
use crate::config::Config;
use crate::event::{parse_event, EventError, ParsedEvent, VerifiedEvent};
use crate::proto;
use crate::server::rates::Work;
use crate::server::stats::AuthResult;

/// An AUTH message: its OK (or a NOTICE when no id can be read), whether it is counted as
/// accepted or refused, and the pubkey it proves. `verify` is the signature check.
pub fn decide(
    peer: &impl Peer,
    config: &Config,
    raw: &RawValue,
    verify: impl FnOnce(ParsedEvent) -> Result<VerifiedEvent, EventError>,
) -> Vec<Effect> {
    let refused = |reason: &str| {
        let reply = match proto::event_id_hint(raw) {
            Some(id) => proto::frame_ok(&id, false, reason),
            None => proto::frame_notice(reason),
        };
        vec![Effect::AuthAnswered(AuthResult::Refused), Effect::Reply(reply)]
    };
    // An AUTH costs a signature check. It draws on the queries' bucket, not the events': a
    // client that spent its events may still authenticate, and get a bucket of its own.
    if peer.over_rate(Work::Query) {
        return refused("rate-limited: too many REQ, COUNT and AUTH messages; slow down");
    }
    let parsed = match parse_event(raw.get().as_bytes(), &config.limits.event_limits()) {
        Ok(parsed) => parsed,
        Err(error) => return refused(&error.reason()),
    };
    let id = parsed.id.to_hex();
    let mut effects = Vec::with_capacity(3);
    let verdict = verify(parsed).map_err(|error| error.reason()).and_then(|event| {
        let Some(challenge) = peer.challenge() else {
            // A client that authenticates before the relay asked gets its challenge now.
            effects.push(Effect::Challenge);
            return Err("auth-required: authenticate with the challenge just sent".to_owned());
        };
        let relay = peer.addresses();
        let window_secs = config.auth.created_at_window_secs;
        auth::check(&event, &AuthCheck { challenge: &challenge, relay: &relay, now: crate::now_unix(), window_secs })?;
        let pubkeys = peer.authed();
        let max = config.auth.pubkeys_per_connection_max;
        if pubkeys.contains(event.pubkey()) {
            Ok(None)
        } else if pubkeys.len() >= max {
            Err(format!("restricted: at most {max} pubkeys may authenticate on one connection"))
        } else {
            Ok(Some(*event.pubkey()))
        }
    });
    match verdict {
        Ok(proved) => {
            effects.extend(proved.map(Effect::Authenticated));
            effects.push(Effect::AuthAnswered(AuthResult::Accepted));
            effects.push(Effect::Reply(proto::frame_ok(&id, true, "")));
        }
        Err(reason) => {
            effects.push(Effect::AuthAnswered(AuthResult::Refused));
            effects.push(Effect::Reply(proto::frame_ok(&id, false, &reason)));
        }
    }
    effects
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::RelayAddress;
    use crate::event::testing::signed;
    use crate::event::Pubkey;
    use crate::server::peer::tests::FakePeer;
    use crate::server::verbs::tests::reply;

    const RELAY: &str = "wss://relay.example.com";

    fn auth_event(secret: u8, challenge: &str, relay: &str, created_at: u64) -> Box<RawValue> {
        let tags = serde_json::json!([["relay", relay], ["challenge", challenge]]);
        RawValue::from_string(signed(secret, crate::auth::KIND_AUTH, created_at, &tags, "")).unwrap()
    }

    fn peer() -> FakePeer {
        FakePeer {
            challenge: Some("chal".to_owned()),
            addresses: vec![RelayAddress::parse_url(RELAY).unwrap()],
            ..FakePeer::default()
        }
    }

    fn run(peer: &FakePeer, config: &Config, raw: &RawValue) -> Vec<Effect> {
        decide(peer, config, raw, VerifiedEvent::verify)
    }

    #[test]
    fn a_valid_auth_proves_its_pubkey_and_is_answered_ok_true() {
        let raw = auth_event(1, "chal", RELAY, crate::now_unix());
        let effects = run(&peer(), &Config::default(), &raw);
        let proved = effects.iter().find_map(|effect| match effect {
            Effect::Authenticated(pubkey) => Some(*pubkey),
            _ => None,
        });
        assert!(proved.is_some(), "{effects:?}");
        assert!(effects.contains(&Effect::AuthAnswered(AuthResult::Accepted)));
        let ok = reply(&effects);
        assert_eq!((ok[0].as_str(), ok[2].as_bool(), ok[3].as_str()), (Some("OK"), Some(true), Some("")));

        // The same pubkey again: accepted, nothing new proved.
        let again = FakePeer { authed: vec![proved.unwrap()], ..peer() };
        let effects = run(&again, &Config::default(), &raw);
        assert!(!effects.iter().any(|effect| matches!(effect, Effect::Authenticated(_))), "{effects:?}");
        assert_eq!(reply(&effects)[2], true);
    }

    #[test]
    fn an_auth_with_the_wrong_challenge_relay_or_date_is_refused_with_invalid() {
        let now = crate::now_unix();
        for raw in [
            auth_event(1, "other", RELAY, now),
            auth_event(1, "chal", "wss://elsewhere.example.com", now),
            auth_event(1, "chal", RELAY, now - 3_600),
        ] {
            let effects = run(&peer(), &Config::default(), &raw);
            assert!(effects.contains(&Effect::AuthAnswered(AuthResult::Refused)));
            let ok = reply(&effects);
            assert_eq!(ok[2], false);
            assert!(ok[3].as_str().unwrap().starts_with("invalid: "), "{ok}");
        }
    }

    #[test]
    fn an_auth_before_any_challenge_gets_one_and_auth_required() {
        let raw = auth_event(1, "chal", RELAY, crate::now_unix());
        let effects = run(&FakePeer { challenge: None, ..peer() }, &Config::default(), &raw);
        assert_eq!(effects[0], Effect::Challenge);
        assert!(reply(&effects)[3].as_str().unwrap().starts_with("auth-required: "));
    }

    #[test]
    fn one_pubkey_past_the_maximum_is_restricted() {
        let mut config = Config::default();
        config.auth.pubkeys_per_connection_max = 1;
        let full = FakePeer { authed: vec![Pubkey([9; 32])], ..peer() };
        let effects = run(&full, &config, &auth_event(1, "chal", RELAY, crate::now_unix()));
        assert!(reply(&effects)[3].as_str().unwrap().starts_with("restricted: "));
    }

    #[test]
    fn a_bad_signature_or_a_spent_rate_is_refused_before_anything_is_proved() {
        let raw = auth_event(1, "chal", RELAY, crate::now_unix());
        let mut event: serde_json::Value = serde_json::from_str(raw.get()).unwrap();
        let sig = event["sig"].as_str().unwrap().to_owned();
        let flipped = if sig.starts_with('0') { "1" } else { "0" };
        event["sig"] = serde_json::Value::from(format!("{flipped}{}", &sig[1..]));
        let forged = RawValue::from_string(event.to_string()).unwrap();
        let ok = reply(&run(&peer(), &Config::default(), &forged));
        assert_eq!(ok[2], false);
        assert!(ok[3].as_str().unwrap().starts_with("invalid: "), "{ok}");

        let spent = FakePeer { tokens: Some(0).into(), ..peer() };
        let ok = reply(&run(&spent, &Config::default(), &raw));
        assert!(ok[3].as_str().unwrap().starts_with("rate-limited: "), "{ok}");
    }
}
