//! REQ: the subscription is registered at once (live events wait in it until EOSE), and a
//! query owned by the connection sends the stored events, EOSE, then what arrived live
//! meanwhile. A REQ that reuses an open subscription's id replaces it and cancels its query.

use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{read_refusal, Effect, Peer};
use crate::config::Config;
use crate::filter::{Filter, Matchable};
use crate::proto::{self, SubId};
use crate::server::core::Core;
use crate::server::gather::hits_everywhere;
use crate::server::outbox::Out;
use crate::server::session::SubState;
use crate::store::query::{union_filters, union_in_order};
use crate::store::Privacy;
use crate::subs::ConnId;

/// How long a REQ's answer waits for room in a connection's queue before the connection
/// is dropped (a reader that stops reading altogether is closed sooner, by the session's
/// write-stall limit).
const HISTORY_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// A REQ: refused (over the query rate, not authenticated where reads need it, one
/// subscription too many), or subscribed. Replacing an open subscription is never "too many".
pub fn decide(peer: &impl Peer, config: &Config, sub_id: SubId, filters: Vec<Filter>) -> Vec<Effect> {
    if let Some(refusal) = read_refusal(peer, config, &sub_id) {
        return refusal;
    }
    if let Some(refusal) = search_refusal(config, &sub_id, &filters) {
        return refusal;
    }
    let max = config.limits.subscriptions_per_connection_max;
    let (open, replaces) = peer.subscriptions(&sub_id);
    if !replaces && open >= max {
        let reason = format!("error: too many subscriptions on this connection (max {max})");
        return vec![Effect::Reply(proto::frame_closed(&sub_id, &reason))];
    }
    vec![Effect::Subscribe { sub: sub_id, filters }]
}

/// A `search` filter on a relay that does not serve NIP-50: `CLOSED "unsupported: ..."`.
pub fn search_refusal(config: &Config, sub_id: &SubId, filters: &[Filter]) -> Option<Vec<Effect>> {
    let asks = filters.iter().any(|filter| filter.search.is_some());
    (asks && !config.search_on())
        .then(|| vec![Effect::Reply(proto::frame_closed(sub_id, "unsupported: search (NIP-50) is off on this relay"))])
}

/// Open (or replace) the subscription, and answer it with a query the connection owns.
pub fn start(core: &Rc<Core>, conn: ConnId, sub_id: SubId, filters: Vec<Filter>) {
    let received = Instant::now();
    let Some(token) = core.sessions.subscribe(conn, &sub_id, &filters) else { return };
    let owner = core.clone();
    let request = Request { conn, sub_id: sub_id.clone(), token, received, privacy: core.privacy_for(conn) };
    core.start_query(conn, Some(sub_id), async move { serve(owner, request, filters).await });
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
        let searching = filters.iter().any(|filter| filter.search.is_some());
        let per_filter = hits_everywhere(core.scatter(), filters.into(), limits, privacy).await;
        // A search's hits go best first; other filters' newest first.
        let mut hits = if searching { union_in_order(per_filter) } else { union_filters(per_filter) };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReadMode;
    use crate::event::Pubkey;
    use crate::server::peer::tests::FakePeer;
    use crate::server::verbs::tests::{reply, sub};

    fn kinds(kind: u16) -> Vec<Filter> {
        vec![Filter { kinds: Some(vec![kind]), ..Filter::default() }]
    }

    #[test]
    fn a_req_subscribes_and_one_over_the_maximum_is_closed_with_error() {
        let mut config = Config::default();
        config.limits.subscriptions_per_connection_max = 2;
        let peer = FakePeer { subs: vec![sub("a"), sub("b")], ..FakePeer::default() };
        let closed = reply(&decide(&peer, &config, sub("c"), kinds(1)));
        assert_eq!(closed[0], "CLOSED");
        assert_eq!(closed[1], "c");
        assert_eq!(closed[2], "error: too many subscriptions on this connection (max 2)");

        let fewer = FakePeer { subs: vec![sub("a")], ..FakePeer::default() };
        assert_eq!(
            decide(&fewer, &config, sub("c"), kinds(1)),
            vec![Effect::Subscribe { sub: sub("c"), filters: kinds(1) }]
        );
    }

    #[test]
    fn a_req_that_reuses_an_open_id_replaces_it_even_at_the_maximum() {
        let mut config = Config::default();
        config.limits.subscriptions_per_connection_max = 2;
        let peer = FakePeer { subs: vec![sub("a"), sub("b")], ..FakePeer::default() };
        assert_eq!(
            decide(&peer, &config, sub("b"), kinds(7)),
            vec![Effect::Subscribe { sub: sub("b"), filters: kinds(7) }]
        );
    }

    #[test]
    fn a_req_over_the_query_rate_is_closed_rate_limited_and_takes_a_token_otherwise() {
        let config = Config::default();
        let peer = FakePeer { tokens: Some(1).into(), ..FakePeer::default() };
        assert!(matches!(decide(&peer, &config, sub("a"), kinds(1))[..], [Effect::Subscribe { .. }]));
        let closed = reply(&decide(&peer, &config, sub("a"), kinds(1)));
        assert_eq!(closed[2], "rate-limited: too many REQs and COUNTs from this client; slow down");
    }

    #[test]
    fn where_reads_need_auth_an_unauthenticated_req_gets_the_challenge_then_auth_required() {
        let mut config = Config::default();
        config.policy.read = ReadMode::Auth;
        let effects = decide(&FakePeer::default(), &config, sub("a"), kinds(1));
        assert_eq!(effects[0], Effect::Challenge);
        assert_eq!(reply(&effects)[2], "auth-required: this relay serves authenticated clients only");

        let authed = FakePeer { authed: vec![Pubkey([3; 32])], ..FakePeer::default() };
        assert!(matches!(decide(&authed, &config, sub("a"), kinds(1))[..], [Effect::Subscribe { .. }]));
    }
}
