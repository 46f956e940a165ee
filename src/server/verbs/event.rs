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
    let policy = core.gate.policy();
    let wrap_to_vanished = parsed.kind == KIND_GIFT_WRAP && core.storage.is_wrap_to_vanished(&parsed);
    let rules = EventRules { policy: &policy, config: &core.config, now: crate::now_unix(), wrap_to_vanished };
    let event_id = parsed.id;
    let verified = ingest::admit(&Conn { core, conn }, &rules, &core.storage, parsed)
        .and_then(|admitted| ingest::verify(&core.gate, admitted));
    match verified {
        Ok(verified) => {
            let reply = Reply { core: core.id(), conn, event_id, received };
            ingest::after_signature(core, reply, verified).await;
        }
        Err(stop) => {
            // Answered here, before any reply was owed.
            if stop.wants_challenge() {
                core.sessions.send_challenge(conn);
            }
            core.stats.answered(stop.outcome(), received);
            let ok = proto::frame_ok(&event_id.to_hex(), stop.outcome().accepted(), &stop.reason());
            core.sessions.send(conn, ok);
        }
    }
}

fn invalid(error: &EventError) -> Outcome {
    Outcome::new(OutcomeClass::Invalid, error.label())
}
