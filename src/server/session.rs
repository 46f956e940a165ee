//! A `Session`: everything one connection owns on its core. Its subscriptions, the queries
//! it has running (each a task this session holds and cancels), its outbound queue with the
//! replies it still owes, and its slot in the per-address count. Dropping a session cancels
//! all of it at once.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use glommio::task::JoinHandle;

use super::ip_slots::IpSlot;
use super::negsync::NegSync;
use super::outbox::OutboxSender;
use super::stats::Stats;
use crate::auth::RelayAddress;
use crate::event::Pubkey;
use crate::proto::SubId;
use crate::subs::LiveEvent;

/// A query's id among its session's.
pub type QueryId = u64;

pub struct Session {
    pub outbound: OutboxSender,
    /// The client's address (its rate limits' key until it authenticates).
    pub ip: std::net::IpAddr,
    /// What NIP-42 knows of this connection.
    pub auth: SessionAuth,
    _slot: IpSlot,
    pub subs: HashMap<SubId, SubState>,
    /// NIP-77 syncs open, by their id (a namespace apart from `subs`).
    pub negs: HashMap<SubId, NegSync>,
    /// NIP-77 syncs whose set is being gathered, by id, with the open's serial: an open
    /// replaced or closed meanwhile is not answered when its set arrives.
    pub negs_opening: HashMap<SubId, u64>,
    queries: HashMap<QueryId, Query>,
    stats: Rc<Stats>,
}

/// A connection's NIP-42 state.
#[derive(Default)]
pub struct SessionAuth {
    /// The challenge sent, once one is.
    pub challenge: Option<String>,
    /// The address the client connected to (its Host header and path), which an AUTH event
    /// names when the relay has no configured URLs.
    pub host: Option<RelayAddress>,
    /// The pubkeys it has authenticated as (at most `auth.pubkeys_per_connection_max`).
    pub pubkeys: Vec<Pubkey>,
}

/// A running query: the task doing it (once spawned), and the subscription it answers.
struct Query {
    sub: Option<SubId>,
    task: Option<JoinHandle<()>>,
}

/// A subscription's state on its connection.
pub enum SubState {
    /// Stored events are still being sent; live ones wait here, in order.
    Pending {
        token: u64,
        buffered: PendingLive,
    },
    Live {
        token: u64,
    },
}

impl SubState {
    pub fn token(&self) -> u64 {
        match self {
            SubState::Pending { token, .. } | SubState::Live { token } => *token,
        }
    }
}

/// Live events held for a subscription until its EOSE, counted in `Stats::pending_live`.
pub struct PendingLive {
    events: Vec<Arc<LiveEvent>>,
    overflowed: bool,
    stats: Rc<Stats>,
}

impl PendingLive {
    pub fn new(stats: Rc<Stats>) -> PendingLive {
        PendingLive { events: Vec::new(), overflowed: false, stats }
    }

    /// Hold `event`, or note the overflow once `max` are held.
    pub fn push(&mut self, event: &Arc<LiveEvent>, max: usize) {
        if self.events.len() < max {
            self.events.push(event.clone());
            self.stats.pending_live.add(1);
        } else {
            self.overflowed = true;
        }
    }

    /// The events held, and whether some had to be left out.
    pub fn take(mut self) -> (Vec<Arc<LiveEvent>>, bool) {
        self.stats.pending_live.sub(self.events.len() as u64);
        (std::mem::take(&mut self.events), self.overflowed)
    }
}

impl Drop for PendingLive {
    fn drop(&mut self) {
        self.stats.pending_live.sub(self.events.len() as u64);
    }
}

impl Session {
    pub fn new(outbound: OutboxSender, slot: IpSlot, stats: Rc<Stats>, host: Option<RelayAddress>) -> Session {
        stats.connections.add(1);
        let auth = SessionAuth { host, ..SessionAuth::default() };
        Session {
            outbound,
            ip: slot.ip(),
            auth,
            _slot: slot,
            subs: HashMap::new(),
            negs: HashMap::new(),
            negs_opening: HashMap::new(),
            queries: HashMap::new(),
            stats,
        }
    }

    /// Register a query answering `sub` (if any), before its task is spawned: glommio runs
    /// a task it spawns at once, so the task may finish before [`Session::attach`].
    pub fn start_query(&mut self, id: QueryId, sub: Option<SubId>) {
        self.stats.queries.add(1);
        self.queries.insert(id, Query { sub, task: None });
        self.outbound.set_queries(self.queries.len());
    }

    /// Own the task of query `id`; a query that already finished needs no handle.
    pub fn attach(&mut self, id: QueryId, task: JoinHandle<()>) {
        if let Some(query) = self.queries.get_mut(&id) {
            query.task = Some(task);
        }
    }

    /// A query's task has finished its work (called by the task itself, last).
    pub fn finish_query(&mut self, id: QueryId) {
        if self.queries.remove(&id).is_some() {
            self.stats.queries.sub(1);
            self.outbound.set_queries(self.queries.len());
        }
    }

    /// Stop the query answering `sub`: its REQ was replaced or closed.
    pub fn cancel_queries_of(&mut self, sub: &SubId) {
        let ids: Vec<QueryId> =
            self.queries.iter().filter(|(_, query)| query.sub.as_ref() == Some(sub)).map(|(&id, _)| id).collect();
        for id in ids {
            self.cancel(id);
        }
    }

    fn cancel(&mut self, id: QueryId) {
        if let Some(query) = self.queries.remove(&id) {
            if let Some(task) = query.task {
                task.cancel();
            }
            self.stats.queries.sub(1);
            self.stats.queries_cancelled.inc();
            self.outbound.set_queries(self.queries.len());
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let ids: Vec<QueryId> = self.queries.keys().copied().collect();
        for id in ids {
            self.cancel(id);
        }
        self.stats.connections.sub(1);
    }
}
