//! EVENT: bounded parse and id check, the stages before the signature, the duplicate fast
//! path, the signature, then the ingest pipeline.

use std::rc::Rc;

use serde_json::value::RawValue;

use crate::event::parse_event;
use crate::proto;
use crate::server::core::Core;
use crate::server::ingest;
use crate::subs::ConnId;

pub async fn handle(core: &Rc<Core>, conn: ConnId, raw: &RawValue) {
    let limits = core.config.limits.event_limits();
    let parsed = match parse_event(raw.get().as_bytes(), &limits) {
        Ok(parsed) => parsed,
        Err(error) => {
            let reply = match proto::event_id_hint(raw) {
                Some(id) => proto::frame_ok(&id, false, &error.reason()),
                None => proto::frame_notice(&error.reason()),
            };
            core.send(conn, reply);
            return;
        }
    };
    let id = parsed.id.to_hex();
    if let Some(reason) = ingest::before_signature(core, &parsed) {
        core.send(conn, proto::frame_ok(&id, false, &reason));
        return;
    }
    let shard = core.owner_shard(&parsed.pubkey.0);
    if ingest::is_known_duplicate(core, &parsed.id, shard) {
        core.send(conn, proto::frame_ok(&id, true, ingest::DUPLICATE));
        return;
    }
    match core.verify(parsed) {
        Ok(event) => ingest::after_signature(core, conn, event, shard).await,
        Err(error) => core.send(conn, proto::frame_ok(&id, false, &error.reason())),
    }
}
