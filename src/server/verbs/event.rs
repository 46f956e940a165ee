//! EVENT: bounded parse and id check, the stages before the signature, the duplicate fast
//! path, the signature, then the ingest pipeline.

use std::rc::Rc;
use std::time::Instant;

use serde_json::value::RawValue;

use super::Conn;
use crate::event::kind::KIND_GIFT_WRAP;
use crate::event::{parse_event, EventError};
use crate::proto;
use crate::server::core::Core;
use crate::server::ingest::{self, EventRules};
use crate::server::mesh::Reply;
use crate::server::stats::{Outcome, OutcomeClass};
use crate::subs::ConnId;

pub async fn handle(core: &Rc<Core>, conn: ConnId, raw: &RawValue) {
    let received = Instant::now();
    let limits = core.config.limits.event_limits();
    let parsed = match parse_event(raw.get().as_bytes(), &limits) {
        Ok(parsed) => parsed,
        Err(error) => {
            core.stats.answered(invalid(&error), received);
            let reply = match proto::event_id_hint(raw) {
                Some(id) => proto::frame_ok(&id, false, &error.reason()),
                None => proto::frame_notice(&error.reason()),
            };
            core.sessions.send(conn, reply);
            return;
        }
    };
    let id = parsed.id.to_hex();
    let policy = core.gate.policy();
    let wrap_to_vanished = parsed.kind == KIND_GIFT_WRAP && core.storage.is_wrap_to_vanished(&parsed);
    let rules = EventRules { policy: &policy, config: &core.config, now: crate::now_unix(), wrap_to_vanished };
    if let Err(refusal) = ingest::before_signature(&Conn { core, conn }, &rules, &parsed) {
        if refusal.wants_challenge() {
            core.sessions.send_challenge(conn);
        }
        core.stats.answered(refusal.outcome(), received);
        core.sessions.send(conn, proto::frame_ok(&id, false, &refusal.reason()));
        return;
    }
    let shard = core.storage.owner_shard(&parsed.pubkey.0);
    if ingest::is_known_duplicate(core, &parsed.id, shard) {
        core.stats.answered(ingest::OUTCOME_DUPLICATE, received);
        core.sessions.send(conn, proto::frame_ok(&id, true, ingest::DUPLICATE));
        return;
    }
    let event_id = parsed.id;
    match core.gate.verify(parsed) {
        Ok(event) => {
            let reply = Reply { core: core.id(), conn, event_id, received };
            ingest::after_signature(core, reply, event, shard).await;
        }
        Err(error) => {
            core.stats.answered(invalid(&error), received);
            core.sessions.send(conn, proto::frame_ok(&id, false, &error.reason()));
        }
    }
}

fn invalid(error: &EventError) -> Outcome {
    Outcome::new(OutcomeClass::Invalid, error.label())
}
