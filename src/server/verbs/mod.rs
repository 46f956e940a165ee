//! One module per client verb. Each takes the core, the connection and the parsed message,
//! and changes the connection's session or starts work it owns.

pub mod auth;
pub mod close;
pub mod count;
pub mod event;
pub mod req;

use std::rc::Rc;

use super::core::Core;
use super::stats::Verb;
use crate::proto::{self, ClientMessage, MessageLimits, Refusal};
use crate::subs::ConnId;

/// Handle one text message; `false` when nothing will be sent back for it (CLOSE).
pub async fn handle_text(core: &Rc<Core>, conn: ConnId, text: &str) -> bool {
    let limits = MessageLimits { filter_count_max: core.config.limits.filters_per_req_max };
    let message = match proto::parse_client_message(text, &limits) {
        Ok(message) => message,
        Err(Refusal::Notice(reason)) => {
            core.stats.message(Verb::Invalid);
            core.sessions.send(conn, proto::frame_notice(&reason));
            return true;
        }
        Err(Refusal::Closed { sub_id, reason }) => {
            core.stats.message(Verb::Invalid);
            core.sessions.send(conn, proto::frame_closed(&sub_id, &reason));
            return true;
        }
    };
    core.stats.message(match &message {
        ClientMessage::Event(_) => Verb::Event,
        ClientMessage::Req { .. } => Verb::Req,
        ClientMessage::Count { .. } => Verb::Count,
        ClientMessage::Close { .. } => Verb::Close,
        ClientMessage::Auth(_) => Verb::Auth,
    });
    match message {
        // Boxed: an EVENT may wait for room on the mesh, and that state would otherwise be
        // part of every connection's future for its whole life.
        ClientMessage::Event(raw) => Box::pin(event::handle(core, conn, raw)).await,
        ClientMessage::Req { sub_id, filters } => req::handle(core, conn, sub_id, filters),
        ClientMessage::Count { sub_id, filters } => count::handle(core, conn, sub_id, filters),
        ClientMessage::Close { sub_id } => {
            close::handle(core, conn, &sub_id);
            return false;
        }
        ClientMessage::Auth(raw) => auth::handle(core, conn, raw),
    }
    true
}
