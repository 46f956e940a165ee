//! REQ: the subscription is registered at once (live events wait in it until EOSE), and a
//! query owned by the connection sends the stored events, EOSE, then what arrived live
//! meanwhile. A REQ that reuses an open subscription's id replaces it and cancels its query.

use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::filter::{Filter, Matchable};
use crate::proto::{self, SubId};
use crate::server::core::Core;
use crate::server::gather::hits_everywhere;
use crate::server::outbox::Out;
use crate::server::session::SubState;
use crate::store::query::union_filters;
use crate::store::Privacy;
use crate::subs::ConnId;

/// How long a REQ's answer waits for room in a connection's queue before the connection
/// is dropped (a reader that stops reading altogether is closed sooner, by the session's
/// write-stall limit).
const HISTORY_SEND_TIMEOUT: Duration = Duration::from_secs(30);

pub fn handle(core: &Rc<Core>, conn: ConnId, sub_id: SubId, filters: Vec<Filter>) {
    let received = Instant::now();
    if let Some(reason) = read_refusal(core, conn) {
        return core.sessions.send(conn, proto::frame_closed(&sub_id, reason));
    }
    match core.sessions.subscribe(conn, &sub_id, &filters) {
        Ok(token) => {
            let owner = core.clone();
            let sub = sub_id.clone();
            let request = Request { conn, sub_id: sub, token, received, privacy: core.privacy_for(conn) };
            core.start_query(conn, Some(sub_id), async move { serve(owner, request, filters).await });
        }
        Err(reason) => core.sessions.send(conn, proto::frame_closed(&sub_id, &reason)),
    }
}

/// Why a REQ or COUNT is refused: over the connection's query rate, or, with
/// `policy.read = "auth"`, not authenticated (its challenge goes out first).
pub fn read_refusal(core: &Core, conn: ConnId) -> Option<&'static str> {
    if core.over_rate(conn, crate::server::rates::Work::Query) {
        return Some("rate-limited: too many REQs and COUNTs from this client; slow down");
    }
    if core.config.policy.read != crate::config::ReadMode::Auth {
        return None;
    }
    let authed = core.sessions.with(conn, |session| !session.auth.pubkeys.is_empty()).unwrap_or(false);
    if authed {
        return None;
    }
    core.sessions.send_challenge(conn);
    Some("auth-required: this relay serves authenticated clients only")
}

/// A REQ being answered.
struct Request {
    conn: ConnId,
    sub_id: SubId,
    /// Which REQ of `sub_id` this is (a newer one replaces it).
    token: u64,
    received: Instant,
    /// What this connection may not see (private kinds), as of the REQ.
    privacy: Privacy,
}

async fn serve(core: Rc<Core>, request: Request, filters: Vec<Filter>) {
    let Request { conn, sub_id, token, received, privacy } = request;
    let hits = {
        let _slot = core.query_slot(conn).await;
        let limits = core.query_limits();
        let mut hits = union_filters(hits_everywhere(&core, filters.into(), limits, privacy).await);
        let mut bytes = 0;
        let kept = hits
            .iter()
            .take_while(|hit| {
                bytes += hit.json.len();
                bytes <= limits.bytes_max
            })
            .count();
        hits.truncate(kept);
        hits
    };
    if !core.sessions.is_current(conn, &sub_id, token) {
        return;
    }
    let mut sent = HashSet::with_capacity(hits.len());
    for hit in &hits {
        if !send_waiting(&core, conn, proto::frame_stored_event(&sub_id, &hit.json)).await
            || !core.sessions.is_current(conn, &sub_id, token)
        {
            return;
        }
        sent.insert(hit.id);
    }
    drop(hits);
    if !send_waiting(&core, conn, proto::frame_eose(&sub_id)).await || !core.sessions.is_current(conn, &sub_id, token) {
        return;
    }
    core.stats.req_seconds.observe_since(received);
    let taken = core.sessions.with(conn, |session| {
        let state = session.subs.get_mut(&sub_id)?;
        match std::mem::replace(state, SubState::Live { token }) {
            SubState::Pending { buffered, .. } => Some(buffered.take()),
            SubState::Live { .. } => None,
        }
    });
    let Some(Some((buffered, overflowed))) = taken else { return };
    if overflowed {
        core.sessions.unsubscribe(conn, &sub_id);
        core.sessions
            .send(conn, proto::frame_closed(&sub_id, "error: slow consumer: too many live events during the query"));
        return;
    }
    for event in buffered.iter().filter(|event| !sent.contains(event.id())) {
        if !send_waiting(&core, conn, proto::frame_event(&sub_id, &event.json)).await {
            return;
        }
        core.stats.live_deliveries.inc();
    }
}

/// Queue part of an answer the connection asked for: a reader that is merely behind is
/// waited for, up to [`HISTORY_SEND_TIMEOUT`], not dropped.
async fn send_waiting(core: &Core, conn: ConnId, text: String) -> bool {
    let deadline = Instant::now() + HISTORY_SEND_TIMEOUT;
    let mut out = Out::Text(text);
    loop {
        let room = core.sessions.with(conn, |session| match session.outbound.try_send(out) {
            Ok(()) => Ok(()),
            Err(back) => Err((session.outbound.room(back.size()), back)),
        });
        let (room, back) = match room {
            None => return false,
            Some(Ok(())) => return true,
            Some(Err(waiting)) => waiting,
        };
        out = back;
        let left = deadline.saturating_duration_since(Instant::now());
        let waited = glommio::timer::timeout(left, async {
            room.await;
            Ok(())
        });
        if waited.await.is_err() {
            tracing::info!(core = core.id().0, conn = conn.0, "closing a reader that stopped reading its answer");
            core.stats.slow_consumer_closes.inc();
            let reason = "slow consumer: the answer to a REQ was not read".to_owned();
            core.sessions.shut(conn, CloseCode::Policy, reason);
            return false;
        }
    }
}
