//! Live fan-out on one core: match an event through the subscription index, then queue it
//! to each matching subscription once; a subscription still sending its stored events holds
//! it until its EOSE. A reader over its byte budget is a slow consumer: its queue is
//! dropped, it is told why and closed, and nobody else waits for it.

use std::sync::Arc;

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::core::Core;
use super::outbox::Out;
use super::session::SubState;
use crate::subs::LiveEvent;

pub fn fan_out(core: &Core, event: &Arc<LiveEvent>) {
    use crate::filter::Matchable;
    if event.kind() == crate::event::kind::KIND_VANISH {
        core.storage.note_vanish(event.pubkey(), event.created_at());
    }
    let pending_max = core.config.limits.pending_live_max;
    // A private kind (a DM, a gift wrap) reaches only its author and its recipients.
    let private = core.gate.private_kinds.contains(&event.kind());
    let mut slow = Vec::new();
    core.sessions.for_each_match(event, |conn, session, sub_id| {
        if private && !session.auth.pubkeys.iter().any(|viewer| event.is_for(&viewer.0)) {
            return;
        }
        match session.subs.get_mut(&sub_id) {
            None => return,
            Some(SubState::Pending { buffered, .. }) => return buffered.push(event, pending_max),
            Some(SubState::Live { .. }) => {}
        }
        let queued = session.outbound.try_send_live(Out::Event { sub: sub_id, event: event.clone() });
        if queued.is_ok() {
            core.stats.live_deliveries.inc();
        } else if !slow.contains(&conn) {
            let reason = "slow consumer: more queued for this connection than its budget allows";
            session.outbound.shut(CloseCode::Policy, reason.to_owned());
            slow.push(conn);
        }
    });
    for conn in slow {
        tracing::info!(core = core.id().0, conn = conn.0, "closing a slow consumer");
        core.stats.slow_consumer_closes.inc();
        core.sessions.close(conn);
    }
}
