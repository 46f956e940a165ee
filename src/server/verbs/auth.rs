//! AUTH (NIP-42): a signed kind-22242 event naming this relay and this connection's
//! challenge adds its pubkey to the connection's authenticated ones. Answered with an OK;
//! never stored, never broadcast.

use std::rc::Rc;

use serde_json::value::RawValue;

use crate::auth::{self, AuthCheck};
use crate::event::parse_event;
use crate::proto;
use crate::server::core::Core;
use crate::server::stats::AuthResult;
use crate::subs::ConnId;

pub fn handle(core: &Rc<Core>, conn: ConnId, raw: &RawValue) {
    // An AUTH costs a signature check. It draws on the queries' bucket, not the events': a
    // client that spent its events may still authenticate, and get a bucket of its own.
    if core.over_rate(conn, crate::server::rates::Work::Query) {
        core.stats.auth.inc(AuthResult::Refused);
        let reason = "rate-limited: too many REQ, COUNT and AUTH messages; slow down";
        let reply = match proto::event_id_hint(raw) {
            Some(id) => proto::frame_ok(&id, false, reason),
            None => proto::frame_notice(reason),
        };
        return core.sessions.send(conn, reply);
    }
    let limits = core.config.limits.event_limits();
    let parsed = match parse_event(raw.get().as_bytes(), &limits) {
        Ok(parsed) => parsed,
        Err(error) => {
            core.stats.auth.inc(AuthResult::Refused);
            let reply = match proto::event_id_hint(raw) {
                Some(id) => proto::frame_ok(&id, false, &error.reason()),
                None => proto::frame_notice(&error.reason()),
            };
            return core.sessions.send(conn, reply);
        }
    };
    let id = parsed.id.to_hex();
    let verdict = core.gate.verify(parsed).map_err(|error| error.reason()).and_then(|event| {
        let config = &core.config.auth;
        let challenge = core.sessions.with(conn, |session| session.auth.challenge.clone()).flatten();
        let Some(challenge) = challenge else {
            // A client that authenticates before the relay asked gets its challenge now.
            core.sessions.send_challenge(conn);
            return Err("auth-required: authenticate with the challenge just sent".to_owned());
        };
        let relay = core.addresses_for(conn);
        let check = AuthCheck {
            challenge: &challenge,
            relay: &relay,
            now: crate::now_unix(),
            window_secs: config.created_at_window_secs,
        };
        auth::check(&event, &check)?;
        let max = config.pubkeys_per_connection_max;
        core.sessions
            .with(conn, |session| {
                let pubkeys = &mut session.auth.pubkeys;
                if pubkeys.contains(event.pubkey()) {
                    Ok(())
                } else if pubkeys.len() >= max {
                    Err(format!("restricted: at most {max} pubkeys may authenticate on one connection"))
                } else {
                    pubkeys.push(*event.pubkey());
                    Ok(())
                }
            })
            .unwrap_or(Ok(()))
    });
    match verdict {
        Ok(()) => {
            core.stats.auth.inc(AuthResult::Accepted);
            core.sessions.send(conn, proto::frame_ok(&id, true, ""));
        }
        Err(reason) => {
            core.stats.auth.inc(AuthResult::Refused);
            core.sessions.send(conn, proto::frame_ok(&id, false, &reason));
        }
    }
}
