//! `Sessions`: one core's registry of connections. Each connection's [`Session`] and the
//! core's subscription index are kept here together, so a subscription is opened, replaced
//! and closed in one place, and fan-out, OK delivery and the stall sweep find a connection
//! by its id. Also the connections let go of whose loops are still writing a close frame.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::ip_slots::IpSlots;
use super::outbox::{outbox, Budget, CoreOutboxes, Out, Outbox, OutboxWatch};
use super::session::{PendingLive, Session, SubState};
use super::stats::Stats;
use crate::auth::RelayAddress;
use crate::config::RelayLimits;
use crate::filter::Filter;
use crate::proto::SubId;
use crate::subs::{ConnId, LiveEvent, SubscriptionIndex};

/// What a connection may hold, from `[limits]`.
#[derive(Clone, Copy)]
pub struct SessionLimits {
    pub connections_per_ip_max: usize,
    pub budget: Budget,
}

impl SessionLimits {
    pub fn from_config(limits: &RelayLimits) -> SessionLimits {
        SessionLimits {
            connections_per_ip_max: limits.connections_per_ip_max,
            budget: Budget { capacity_size: limits.outbound_bytes_max, queries_max: limits.queries_per_connection_max },
        }
    }
}

pub struct Sessions {
    by_conn: RefCell<HashMap<ConnId, Session>>,
    /// Every open subscription's filters, for fan-out.
    index: RefCell<SubscriptionIndex>,
    /// Open connections per client address, shared by every core.
    ip_slots: IpSlots,
    /// What every connection's outbox shares: the core's byte budget and its clock.
    outboxes: Rc<CoreOutboxes>,
    /// Connections let go of whose loops have not ended yet, for the stall sweep.
    closing: RefCell<Vec<OutboxWatch>>,
    /// Connections', subscriptions' and queries' ids.
    next_id: Cell<u64>,
    limits: SessionLimits,
    stats: Rc<Stats>,
}

impl Sessions {
    pub fn new(
        limits: SessionLimits,
        outbound_bytes_per_core_max: usize,
        ip_slots: IpSlots,
        stats: Rc<Stats>,
    ) -> Sessions {
        let outboxes = Rc::new(CoreOutboxes {
            stats: stats.clone(),
            capacity_size: outbound_bytes_per_core_max,
            seconds: Cell::new(0),
        });
        Sessions {
            by_conn: RefCell::new(HashMap::new()),
            index: RefCell::new(SubscriptionIndex::default()),
            ip_slots,
            outboxes,
            closing: RefCell::new(Vec::new()),
            next_id: Cell::new(1),
            limits,
            stats,
        }
    }

    pub fn fresh_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// Register a connection; `None` when its IP holds `connections_per_ip_max` already.
    pub fn open(&self, ip: IpAddr, host: Option<RelayAddress>) -> Option<(ConnId, Outbox)> {
        let slot = self.ip_slots.take(ip, self.limits.connections_per_ip_max)?;
        let conn = ConnId(self.fresh_id());
        let (outbound, receiver) = outbox(self.limits.budget, self.outboxes.clone());
        self.stats.connections_accepted.inc();
        self.by_conn.borrow_mut().insert(conn, Session::new(outbound, slot, self.stats.clone(), host));
        Some((conn, receiver))
    }

    /// Forget a connection: its subscriptions, its queries (cancelled) and its queue. Its
    /// loop may still be writing (a close frame to a reader that stopped reading): the
    /// stall sweep keeps watching it until it ends.
    pub fn close(&self, conn: ConnId) {
        self.index.borrow_mut().remove_conn(conn);
        let session = self.by_conn.borrow_mut().remove(&conn);
        if let Some(session) = session {
            self.closing.borrow_mut().push(session.outbound.watch());
        }
    }

    /// Run `f` on a connection's session; `None` once it is gone.
    pub fn with<T>(&self, conn: ConnId, f: impl FnOnce(&mut Session) -> T) -> Option<T> {
        self.by_conn.borrow_mut().get_mut(&conn).map(f)
    }

    /// The connections whose sessions `pick` picks.
    pub fn picked(&self, pick: impl Fn(&Session) -> bool) -> Vec<ConnId> {
        self.by_conn.borrow().iter().filter(|(_, session)| pick(session)).map(|(&conn, _)| conn).collect()
    }

    /// Close `conn` with `code` and `reason` (what is queued goes out first), and forget it.
    pub fn shut(&self, conn: ConnId, code: CloseCode, reason: String) {
        self.with(conn, |session| session.outbound.shut(code, reason));
        self.close(conn);
    }

    /// Tell every connection the relay is going away (1001) or restarting (1012); what is
    /// queued goes out first.
    pub fn close_all(&self, code: CloseCode, reason: &str) {
        let conns: Vec<ConnId> = self.by_conn.borrow().keys().copied().collect();
        for conn in conns {
            self.with(conn, |session| session.outbound.send_reply(Out::Close(code, reason.to_owned()), false));
            self.close(conn);
        }
    }

    /// Queue a reply to something the connection sent (NOTICE, CLOSED, COUNT, an immediate
    /// OK): always queued; the session holds back input instead (see `outbox`).
    pub fn send(&self, conn: ConnId, text: String) {
        self.with(conn, |session| session.outbound.send_reply(Out::Text(text), false));
    }

    /// Send this connection its NIP-42 challenge, unless it has one already.
    pub fn send_challenge(&self, conn: ConnId) {
        self.with(conn, |session| {
            if session.auth.challenge.is_none() {
                let challenge = crate::auth::new_challenge();
                let frame = crate::proto::frame_auth(&challenge);
                session.auth.challenge = Some(challenge);
                session.outbound.send_reply(Out::Text(frame), false);
            }
        });
    }

    /// Open (or replace) `sub_id`: its query, if one still runs, is cancelled, and live
    /// events wait in it until its EOSE. Returns this REQ's token; `None` once the
    /// connection is gone.
    pub fn subscribe(&self, conn: ConnId, sub_id: &SubId, filters: &[Filter]) -> Option<u64> {
        let token = self.fresh_id();
        self.with(conn, |session| {
            session.cancel_queries_of(sub_id);
            let buffered = PendingLive::new(self.stats.clone());
            session.subs.insert(sub_id.clone(), SubState::Pending { token, buffered });
        })?;
        self.index.borrow_mut().insert(conn, sub_id.clone(), filters.to_vec());
        Some(token)
    }

    /// Close `sub_id` (CLOSE, or a subscription that overflowed): it gets no more live
    /// events, and its query, if one still runs, is cancelled.
    pub fn unsubscribe(&self, conn: ConnId, sub_id: &SubId) {
        self.index.borrow_mut().remove(conn, sub_id);
        self.with(conn, |session| {
            session.subs.remove(sub_id);
            session.cancel_queries_of(sub_id);
        });
    }

    /// Whether `sub_id` is still the subscription of the REQ that got `token`.
    pub fn is_current(&self, conn: ConnId, sub_id: &SubId, token: u64) -> bool {
        self.with(conn, |session| session.subs.get(sub_id).is_some_and(|sub| sub.token() == token)).unwrap_or(false)
    }

    /// The subscriptions `event` matches, each with its session.
    pub fn for_each_match(&self, event: &LiveEvent, mut each: impl FnMut(ConnId, &mut Session, SubId)) {
        let mut matches = Vec::new();
        self.index.borrow_mut().matches(event, &mut matches);
        let mut sessions = self.by_conn.borrow_mut();
        for (conn, sub_id) in matches {
            if let Some(session) = sessions.get_mut(&conn) {
                each(conn, session, sub_id);
            }
        }
    }

    /// How many subscriptions are open on this core.
    pub fn subscription_count(&self) -> usize {
        self.index.borrow().len()
    }

    /// Once a second: advance the outboxes' clock and tell each connection whose write has
    /// waited `stall_secs` (one pass, no timer per write).
    pub fn sweep_stalled(&self, stall_secs: u64) {
        self.outboxes.seconds.set(self.outboxes.seconds.get() + 1);
        for session in self.by_conn.borrow().values() {
            session.outbound.check_stall(stall_secs);
        }
        self.closing.borrow_mut().retain(|watch| watch.check_stall(stall_secs).is_some());
    }

    /// Once a second: close the NIP-77 syncs idle for `idle` (`NEG-ERR "closed: ..."`); how
    /// many were.
    pub fn sweep_idle_syncs(&self, idle: Duration) -> usize {
        let mut closed = 0;
        for session in self.by_conn.borrow_mut().values_mut() {
            let idle_subs: Vec<SubId> = session
                .negs
                .iter()
                .filter(|(_, sync)| sync.last_used.elapsed() >= idle)
                .map(|(sub, _)| sub.clone())
                .collect();
            for sub in idle_subs {
                session.negs.remove(&sub);
                let frame = crate::proto::frame_neg_err(&sub, "closed: this sync had no message for too long");
                session.outbound.send_reply(Out::Text(frame), false);
                closed += 1;
            }
        }
        closed
    }

    /// Wait at least `at_least`, then until every connection let go of has written its close
    /// frame (or ended), for at most `within` in all: at shutdown, so that no client misses
    /// its close frame because the process left first, and a handshake in flight when the
    /// accept loop ended gets its turn.
    pub async fn ended(&self, at_least: Duration, within: Duration) {
        let started = Instant::now();
        loop {
            let open = {
                let mut closing = self.closing.borrow_mut();
                closing.retain(|watch| !watch.farewell_done());
                closing.len()
            };
            let waited = started.elapsed();
            if (open == 0 && waited >= at_least) || waited >= within {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::testing::signed;
    use crate::event::{parse_event, VerifiedEvent};

    fn sessions() -> Sessions {
        let limits = SessionLimits::from_config(&RelayLimits::default());
        Sessions::new(limits, 1 << 20, IpSlots::default(), Rc::new(Stats::default()))
    }

    fn live(kind: u16) -> Arc<LiveEvent> {
        let json = signed(2, kind, 1_700_000_000, &serde_json::json!([]), "hi");
        let parsed = parse_event(json.as_bytes(), &RelayLimits::default().event_limits()).unwrap();
        Arc::new(LiveEvent::from_event(&VerifiedEvent::verify(parsed).unwrap()))
    }

    fn kinds(kind: u16) -> Vec<Filter> {
        vec![Filter { kinds: Some(vec![kind]), ..Filter::default() }]
    }

    #[test]
    fn a_req_that_reuses_an_id_replaces_the_subscription_in_the_session_and_the_index_together() {
        let sessions = sessions();
        let (conn, _outbox) = sessions.open(IpAddr::from([127, 0, 0, 1]), None).unwrap();
        let sub = SubId::new("s").unwrap();
        let first = sessions.subscribe(conn, &sub, &kinds(1)).unwrap();
        let second = sessions.subscribe(conn, &sub, &kinds(7)).unwrap();
        assert!(!sessions.is_current(conn, &sub, first), "the first REQ was replaced");
        assert!(sessions.is_current(conn, &sub, second));
        assert_eq!(sessions.subscription_count(), 1);

        // Only the replacement's filters match; until its EOSE the event waits in it.
        let mut matched = Vec::new();
        sessions.for_each_match(&live(1), |_, _, sub| matched.push(sub));
        assert!(matched.is_empty());
        sessions.for_each_match(&live(7), |_, session, sub| {
            if let Some(SubState::Pending { buffered, .. }) = session.subs.get_mut(&sub) {
                buffered.push(&live(7), 10);
                matched.push(sub);
            }
        });
        assert_eq!(matched, vec![SubId::new("s").unwrap()]);

        sessions.unsubscribe(conn, &sub);
        assert_eq!(sessions.subscription_count(), 0);
        assert!(!sessions.is_current(conn, &sub, second));
    }

    #[test]
    fn a_closed_connection_leaves_no_subscription_and_is_watched_until_its_loop_ends() {
        let sessions = sessions();
        let (conn, outbox) = sessions.open(IpAddr::from([127, 0, 0, 1]), None).unwrap();
        sessions.subscribe(conn, &SubId::new("s").unwrap(), &kinds(1)).unwrap();
        sessions.close_all(CloseCode::Away, "bye");
        assert_eq!(sessions.subscription_count(), 0);
        assert!(sessions.with(conn, |_| ()).is_none());
        assert!(sessions.subscribe(conn, &SubId::new("t").unwrap(), &kinds(1)).is_none());
        assert!(matches!(outbox.try_recv(), Some(Out::Close(CloseCode::Away, _))));
        assert_eq!(sessions.closing.borrow().len(), 1, "its close frame is still to be written");
    }
}
