//! One core of the relay: its storage shards, its connections and their subscriptions,
//! and its side of the mesh to the other cores. Everything here is touched only by the
//! core's own executor; cores exchange [`CoreMsg`]s over bounded glommio channels.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use futures_channel::mpsc;
use futures_lite::StreamExt;
use glommio::channels::channel_mesh::Senders;

use super::ip_slots::{IpSlot, IpSlots};
use super::outbox::{outbox, Outbox, OutboxSender};
use super::throttle::LogThrottle;
use super::REPEATED_ERROR_LOG_INTERVAL;
use crate::config::Config;
use crate::event::kind::parse_address;
use crate::event::{EventError, EventId, KeyCache, KindClass, ParsedEvent, VerifiedEvent};
use crate::filter::{Filter, Matchable};
use crate::limits::QUERY_STEP_CANDIDATE_COUNT;
use crate::proto::{self, SubId};
use crate::store::query::{merge_newest_first, union_filters, Ordered};
use crate::store::{effective_limit, Admission, FilterScan, Router, Shard};
use crate::subs::{ConnId, LiveEvent, SubscriptionIndex};

/// The `OK` reason for an event already stored.
pub const DUPLICATE: &str = "duplicate: already have this event";

/// The `OK` reason for a deletion request that names another author's event.
pub const FOREIGN_DELETION: &str = "blocked: a deletion request can only name its author's own events";

/// How long a REQ's answer waits for room in a connection's queue before the connection
/// is dropped.
const HISTORY_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Everything one core says to another: one closed enum.
pub enum CoreMsg {
    /// To the owner of the author's shard: store this verified event.
    Append { event: Box<VerifiedEvent>, shard: u16, reply: Reply },
    /// Back to the publishing connection's core: the `OK` to send.
    Ack { reply: Reply, accepted: bool, reason: String },
    /// A durable (or ephemeral) event, to match against every core's subscriptions.
    Live(Arc<LiveEvent>),
    /// History for a REQ or COUNT from core `from`, over this core's shards.
    Query { request: u64, from: usize, filters: Arc<[Filter]>, limits: QueryLimits },
    /// The answer: per filter, this core's newest events, merged over its shards.
    QueryResult { request: u64, per_filter: Vec<Vec<WireHit>> },
}

/// Where an `OK` goes.
#[derive(Clone, Debug)]
pub struct Reply {
    pub core: usize,
    pub conn: ConnId,
    pub event_id: EventId,
}

#[derive(Clone, Copy, Debug)]
pub struct QueryLimits {
    pub default: usize,
    pub max: usize,
    pub now: u64,
}

/// A stored event on its way to a client.
#[derive(Clone, Debug)]
pub struct WireHit {
    pub created_at: u64,
    pub id: [u8; 32],
    pub json: Arc<[u8]>,
}

impl Ordered for WireHit {
    fn created_at(&self) -> u64 {
        self.created_at
    }
    fn id(&self) -> &[u8; 32] {
        &self.id
    }
}

/// What a connection's writer sends next.
pub enum Out {
    Text(String),
    /// A live event for subscription `sub`: the queue holds the event's shared JSON, and the
    /// frame is assembled as it is written, so a burst queued for many subscribers holds one
    /// copy of each event, not one per subscriber.
    Event {
        sub: SubId,
        json: Arc<str>,
    },
    Close(String),
}

impl Out {
    /// The text of a message to write; `None` for a close.
    pub fn into_text(self) -> Option<String> {
        match self {
            Out::Text(text) => Some(text),
            Out::Event { sub, json } => Some(proto::frame_event(&sub, &json)),
            Out::Close(_) => None,
        }
    }
}

/// A subscription's state on its connection.
enum SubState {
    /// Stored events are still being sent; live ones wait here, in order.
    Pending {
        token: u64,
        buffered: Vec<Arc<LiveEvent>>,
        overflowed: bool,
    },
    Live {
        token: u64,
    },
}

impl SubState {
    fn token(&self) -> u64 {
        match self {
            SubState::Pending { token, .. } | SubState::Live { token } => *token,
        }
    }
}

struct ConnState {
    outbound: OutboxSender,
    _slot: IpSlot,
    subs: HashMap<SubId, SubState>,
}

pub struct Core {
    pub id: usize,
    pub core_count: usize,
    pub config: Arc<Config>,
    router: Router,
    shards: RefCell<HashMap<u16, Shard>>,
    subs: RefCell<SubscriptionIndex>,
    conns: RefCell<HashMap<ConnId, ConnState>>,
    ip_slots: IpSlots,
    mesh: Senders<CoreMsg>,
    next_id: Cell<u64>,
    pending_queries: RefCell<HashMap<u64, mpsc::UnboundedSender<Vec<Vec<WireHit>>>>>,
    keys: RefCell<KeyCache>,
    /// Storage errors repeat once per event; they are logged once per interval.
    storage_errors: LogThrottle,
}

impl Core {
    pub fn new(
        config: Arc<Config>,
        router: Router,
        shards: HashMap<u16, Shard>,
        mesh: Senders<CoreMsg>,
        ip_slots: IpSlots,
    ) -> Rc<Core> {
        Rc::new(Core {
            id: mesh.peer_id(),
            core_count: mesh.nr_consumers(),
            config,
            router,
            shards: RefCell::new(shards),
            subs: RefCell::new(SubscriptionIndex::default()),
            conns: RefCell::new(HashMap::new()),
            ip_slots,
            mesh,
            next_id: Cell::new(1),
            pending_queries: RefCell::new(HashMap::new()),
            keys: RefCell::new(KeyCache::new()),
            storage_errors: LogThrottle::new(REPEATED_ERROR_LOG_INTERVAL),
        })
    }

    fn fresh_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// The shard that stores `pubkey`'s events: a keyed hash, computed once per event and
    /// passed along with it.
    pub fn owner_shard(&self, pubkey: &[u8; 32]) -> u16 {
        self.router.owner_shard(pubkey)
    }

    /// The core that owns `shard`.
    fn owner_core(&self, shard: u16) -> usize {
        usize::from(shard) % self.core_count
    }

    /// Send to another core without blocking the caller; the mesh is bounded.
    fn send_to(self: &Rc<Self>, core: usize, message: CoreMsg) {
        debug_assert_ne!(core, self.id);
        if let Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(message))) =
            self.mesh.try_send_to(core, message)
        {
            let this = self.clone();
            glommio::spawn_local(async move {
                // The peer is gone only while shutting down; nothing is waiting then.
                let _ = this.mesh.send_to(core, message).await;
            })
            .detach();
        }
    }

    /// Register a connection; `None` when its IP holds `connections_per_ip_max` already.
    pub fn open_conn(&self, ip: IpAddr) -> Option<(ConnId, Outbox)> {
        let slot = self.ip_slots.take(ip, self.config.limits.connections_per_ip_max)?;
        let conn = ConnId(self.fresh_id());
        let (outbound, receiver) = outbox(self.config.limits.outbound_queue_max);
        self.conns.borrow_mut().insert(conn, ConnState { outbound, _slot: slot, subs: HashMap::new() });
        Some((conn, receiver))
    }

    pub fn close_conn(&self, conn: ConnId) {
        self.subs.borrow_mut().remove_conn(conn);
        self.conns.borrow_mut().remove(&conn);
    }

    /// Queue a reply to something the connection sent (NOTICE, CLOSED, COUNT, an immediate
    /// OK): always queued; the session holds back input instead (see `outbox`).
    pub fn send(&self, conn: ConnId, text: String) {
        if let Some(state) = self.conns.borrow().get(&conn) {
            state.outbound.send_reply(Out::Text(text), false);
        }
    }

    /// Queue part of an answer the connection asked for (stored events, EOSE): a reader
    /// that is merely behind is waited for, up to `HISTORY_SEND_TIMEOUT`, not dropped.
    pub async fn send_waiting(&self, conn: ConnId, text: String) -> bool {
        let deadline = std::time::Instant::now() + HISTORY_SEND_TIMEOUT;
        let mut out = Out::Text(text);
        loop {
            let room = match self.conns.borrow().get(&conn) {
                None => return false,
                Some(state) => match state.outbound.try_send(out) {
                    Ok(()) => return true,
                    Err(back) => {
                        out = back;
                        state.outbound.room()
                    }
                },
            };
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let waited = glommio::timer::timeout(left, async {
                room.await;
                Ok(())
            });
            if waited.await.is_err() {
                tracing::info!(core = self.id, conn = conn.0, "dropping a reader that stopped reading its answer");
                self.close_conn(conn);
                return false;
            }
        }
    }

    /// Tell every connection the relay is going away.
    pub fn close_all(&self, reason: &str) {
        let conns: Vec<ConnId> = self.conns.borrow().keys().copied().collect();
        for conn in conns {
            if let Some(state) = self.conns.borrow().get(&conn) {
                let _ = state.outbound.try_send(Out::Close(reason.to_owned()));
            }
            self.close_conn(conn);
        }
    }

    pub fn handle_message(self: &Rc<Self>, message: CoreMsg) {
        match message {
            CoreMsg::Append { event, shard, reply } => self.append_owned(*event, shard, reply),
            CoreMsg::Ack { reply, accepted, reason } => self.deliver_ok(&reply, accepted, &reason),
            CoreMsg::Live(event) => self.fan_out(&event),
            CoreMsg::Query { request, from, filters, limits } => {
                let this = self.clone();
                glommio::spawn_local(async move {
                    let per_filter = this.query_own_shards(&filters, limits).await;
                    this.send_to(from, CoreMsg::QueryResult { request, per_filter });
                })
                .detach();
            }
            CoreMsg::QueryResult { request, per_filter } => {
                if let Some(collector) = self.pending_queries.borrow().get(&request) {
                    let _ = collector.unbounded_send(per_filter);
                }
            }
        }
    }

    /// A verified event from a connection of this core: broadcast it if ephemeral, else
    /// hand it to the owner of its author's shard.
    pub fn publish(self: &Rc<Self>, conn: ConnId, event: VerifiedEvent, shard: u16) {
        if let Some(state) = self.conns.borrow().get(&conn) {
            state.outbound.owe_reply();
        }
        self.route(conn, event, shard);
    }

    /// Where [`Core::publish`] sends an event whose OK is already owed.
    fn route(self: &Rc<Self>, conn: ConnId, event: VerifiedEvent, shard: u16) {
        let reply = Reply { core: self.id, conn, event_id: *event.id() };
        if event.class() == KindClass::Ephemeral {
            self.broadcast(Arc::new(LiveEvent::from_event(&event)));
            self.deliver_ok(&reply, true, "");
            return;
        }
        match self.owner_core(shard) {
            owner if owner == self.id => self.append_owned(event, shard, reply),
            owner => self.send_to(owner, CoreMsg::Append { event: Box::new(event), shard, reply }),
        }
    }

    /// A verified deletion request (NIP-09): refused when it names someone else's address, or
    /// an event stored here under another author, which NIP-09 lets a relay check. Otherwise
    /// published. Another author's event can be on any core's shard, so its `e` targets are
    /// looked up everywhere, as a REQ would be. The OK is owed from now, so a client sending
    /// many is held back like any other publisher.
    pub fn publish_deletion(self: &Rc<Self>, conn: ConnId, event: VerifiedEvent, shard: u16) {
        if let Some(state) = self.conns.borrow().get(&conn) {
            state.outbound.owe_reply();
        }
        let this = self.clone();
        glommio::spawn_local(async move {
            if this.names_another_authors_event(&event).await {
                let reply = Reply { core: this.id, conn, event_id: *event.id() };
                this.deliver_ok(&reply, false, FOREIGN_DELETION);
            } else {
                this.route(conn, event, shard);
            }
        })
        .detach();
    }

    async fn names_another_authors_event(self: &Rc<Self>, event: &VerifiedEvent) -> bool {
        let author = event.pubkey();
        let mut ids = Vec::new();
        for tag in event.index_tags() {
            match tag.letter {
                b'a' if parse_address(&tag.value).is_some_and(|address| address.pubkey != author.0) => return true,
                b'e' => ids.extend(crate::hex::decode_lower::<32>(&tag.value).map(EventId)),
                _ => {}
            }
        }
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return false;
        }
        let count = ids.len();
        let any_author = Filter { ids: Some(ids), limit: Some(count as u64), ..Filter::default() };
        let own = Filter { authors: Some(vec![*author]), ..any_author.clone() };
        let limits = QueryLimits { default: count, max: count, now: crate::now_unix() };
        let found = self.query_everywhere(Arc::from([any_author, own]), limits).await;
        found[0].len() > found[1].len()
    }

    /// The signature check, with this core's cache of authors' keys.
    pub fn verify(&self, event: ParsedEvent) -> Result<VerifiedEvent, EventError> {
        VerifiedEvent::verify_cached(event, &mut self.keys.borrow_mut())
    }

    /// Whether this core owns `event`'s shard and already has it on disk (checked before the
    /// signature, which costs 20 times the rest of ingest). A copy not yet durable is not
    /// answered here: its duplicate waits for it in the append path.
    pub fn is_known_duplicate(&self, id: &EventId, shard: u16) -> bool {
        if self.owner_core(shard) != self.id {
            return false;
        }
        let shards = self.shards.borrow();
        shards.get(&shard).is_some_and(|shard| {
            let index = &shard.state().index;
            index.lookup_id(&id.0).is_some_and(|no| !index.entry(no).is_dead() && no < index.durable_count())
        })
    }

    /// On the owner core: apply the rules, append, and acknowledge once durable.
    fn append_owned(self: &Rc<Self>, event: VerifiedEvent, shard: u16, reply: Reply) {
        let admission = {
            let shards = self.shards.borrow();
            match shards.get(&shard) {
                Some(shard) => shard.append(&event, crate::now_unix()),
                None => return self.deliver_ok(&reply, false, "error: the relay is shutting down"),
            }
        };
        match admission {
            Ok(Admission::Stored(durable)) => {
                let this = self.clone();
                glommio::spawn_local(async move {
                    match durable.await {
                        Ok(()) => {
                            this.deliver_ok(&reply, true, "");
                            this.broadcast(Arc::new(LiveEvent::from_event(&event)));
                        }
                        Err(error) => {
                            if let Some(held_back) = this.storage_errors.admit() {
                                tracing::error!(core = this.id, %error, held_back, "append failed");
                            }
                            this.deliver_ok(&reply, false, "error: could not store the event");
                        }
                    }
                })
                .detach();
            }
            Ok(Admission::Duplicate(None)) => self.deliver_ok(&reply, true, DUPLICATE),
            // The original is still on its way to disk: acknowledging the copy now would
            // promise an event a crash could still lose.
            Ok(Admission::Duplicate(Some(original))) => {
                let this = self.clone();
                glommio::spawn_local(async move {
                    match original.await {
                        Ok(()) => this.deliver_ok(&reply, true, DUPLICATE),
                        Err(_) => this.deliver_ok(&reply, false, "error: could not store the event"),
                    }
                })
                .detach();
            }
            Ok(Admission::Ephemeral) => {
                self.broadcast(Arc::new(LiveEvent::from_event(&event)));
                self.deliver_ok(&reply, true, "");
            }
            Ok(Admission::Rejected(rejection)) => self.deliver_ok(&reply, false, rejection.reason()),
            Err(error) => {
                if let Some(held_back) = self.storage_errors.admit() {
                    tracing::error!(core = self.id, %error, held_back, "storage refuses writes");
                }
                self.deliver_ok(&reply, false, "error: storage is failing");
            }
        }
    }

    fn deliver_ok(self: &Rc<Self>, reply: &Reply, accepted: bool, reason: &str) {
        if reply.core == self.id {
            if let Some(state) = self.conns.borrow().get(&reply.conn) {
                let ok = proto::frame_ok(&reply.event_id.to_hex(), accepted, reason);
                state.outbound.send_reply(Out::Text(ok), true);
            }
        } else {
            let reason = reason.to_owned();
            self.send_to(reply.core, CoreMsg::Ack { reply: reply.clone(), accepted, reason });
        }
    }

    fn broadcast(self: &Rc<Self>, event: Arc<LiveEvent>) {
        for core in (0..self.core_count).filter(|&core| core != self.id) {
            self.send_to(core, CoreMsg::Live(event.clone()));
        }
        self.fan_out(&event);
    }

    /// Match a live event against this core's subscriptions and queue it to each once. A
    /// connection whose queue is full is a slow consumer: it is dropped, and its writer closes
    /// it once the queue drains.
    fn fan_out(&self, event: &Arc<LiveEvent>) {
        let mut matches = Vec::new();
        self.subs.borrow_mut().matches(event, &mut matches);
        let pending_max = self.config.limits.pending_live_max;
        let mut slow = Vec::new();
        {
            let mut conns = self.conns.borrow_mut();
            for (conn, sub_id) in matches {
                let Some(state) = conns.get_mut(&conn) else { continue };
                match state.subs.get_mut(&sub_id) {
                    None => continue,
                    Some(SubState::Pending { buffered, overflowed, .. }) => {
                        if buffered.len() < pending_max {
                            buffered.push(event.clone());
                        } else {
                            *overflowed = true;
                        }
                        continue;
                    }
                    Some(SubState::Live { .. }) => {}
                }
                let queued = state.outbound.try_send(Out::Event { sub: sub_id, json: event.json.clone() });
                if queued.is_err() && !slow.contains(&conn) {
                    slow.push(conn);
                }
            }
        }
        for conn in slow {
            tracing::info!(core = self.id, conn = conn.0, "dropping a slow consumer");
            self.close_conn(conn);
        }
    }

    /// Open (or replace) a subscription: live events wait until its stored ones are sent.
    /// Returns the token of this REQ, or the refusal to send.
    pub fn subscribe(&self, conn: ConnId, sub_id: &SubId, filters: &[Filter]) -> Result<u64, String> {
        let max = self.config.limits.subscriptions_per_connection_max;
        let token = self.fresh_id();
        {
            let mut conns = self.conns.borrow_mut();
            let Some(state) = conns.get_mut(&conn) else { return Err("error: connection closed".to_owned()) };
            if !state.subs.contains_key(sub_id) && state.subs.len() >= max {
                return Err(format!("error: too many subscriptions on this connection (max {max})"));
            }
            state.subs.insert(sub_id.clone(), SubState::Pending { token, buffered: Vec::new(), overflowed: false });
        }
        self.subs.borrow_mut().insert(conn, sub_id.clone(), filters.to_vec());
        Ok(token)
    }

    pub fn unsubscribe(&self, conn: ConnId, sub_id: &SubId) {
        self.subs.borrow_mut().remove(conn, sub_id);
        if let Some(state) = self.conns.borrow_mut().get_mut(&conn) {
            state.subs.remove(sub_id);
        }
    }

    /// Send a REQ's stored events, then EOSE, then what arrived live meanwhile.
    pub async fn serve_req(self: Rc<Self>, conn: ConnId, sub_id: SubId, filters: Vec<Filter>, token: u64) {
        let hits = self.query_everywhere(filters.into(), self.query_limits()).await;
        let hits = union_filters(hits);
        let current = |core: &Core| {
            core.conns.borrow().get(&conn).and_then(|c| c.subs.get(&sub_id)).is_some_and(|s| s.token() == token)
        };
        if !current(&self) {
            return;
        }
        let mut sent = HashSet::with_capacity(hits.len());
        for hit in &hits {
            if !self.send_waiting(conn, proto::frame_stored_event(&sub_id, &hit.json)).await {
                return;
            }
            if !current(&self) {
                return;
            }
            sent.insert(hit.id);
        }
        if !self.send_waiting(conn, proto::frame_eose(&sub_id)).await || !current(&self) {
            return;
        }
        let (buffered, overflowed) = {
            let mut conns = self.conns.borrow_mut();
            let Some(state) = conns.get_mut(&conn).and_then(|c| c.subs.get_mut(&sub_id)) else { return };
            match std::mem::replace(state, SubState::Live { token }) {
                SubState::Pending { buffered, overflowed, .. } => (buffered, overflowed),
                SubState::Live { .. } => (Vec::new(), false),
            }
        };
        if overflowed {
            self.unsubscribe(conn, &sub_id);
            self.send(
                conn,
                proto::frame_closed(&sub_id, "error: slow consumer: too many live events during the query"),
            );
            return;
        }
        for event in buffered.iter().filter(|event| !sent.contains(event.id())) {
            if !self.send_waiting(conn, proto::frame_event(&sub_id, &event.json)).await {
                return;
            }
        }
    }

    /// NIP-45: how many stored events match any of the filters (exact up to `count_max`).
    pub async fn count(self: Rc<Self>, filters: Vec<Filter>) -> u64 {
        let max = self.config.limits.count_max;
        let limits = QueryLimits { default: max, max, now: crate::now_unix() };
        let hits = union_filters(self.query_everywhere(filters.into(), limits).await);
        hits.len() as u64
    }

    fn query_limits(&self) -> QueryLimits {
        let limits = &self.config.limits;
        QueryLimits { default: limits.limit_default, max: limits.limit_max, now: crate::now_unix() }
    }

    /// Per filter, the newest `limit` events over every shard of every core.
    async fn query_everywhere(self: &Rc<Self>, filters: Arc<[Filter]>, limits: QueryLimits) -> Vec<Vec<WireHit>> {
        let request = self.fresh_id();
        let (collector, mut results) = mpsc::unbounded();
        self.pending_queries.borrow_mut().insert(request, collector);
        let others: Vec<usize> = (0..self.core_count).filter(|&core| core != self.id).collect();
        for &core in &others {
            self.send_to(core, CoreMsg::Query { request, from: self.id, filters: filters.clone(), limits });
        }
        let mut per_core = vec![self.query_own_shards(&filters, limits).await];
        while per_core.len() < others.len() + 1 {
            match results.next().await {
                Some(part) => per_core.push(part),
                None => break,
            }
        }
        self.pending_queries.borrow_mut().remove(&request);
        (0..filters.len())
            .map(|index| {
                let limit = effective_limit(&filters[index], limits.default, limits.max);
                let lists = per_core.iter_mut().map(|part| std::mem::take(&mut part[index])).collect();
                merge_newest_first(lists, limit)
            })
            .collect()
    }

    /// Per filter, the newest `limit` events of this core's shards; scans yield between steps.
    async fn query_own_shards(&self, filters: &[Filter], limits: QueryLimits) -> Vec<Vec<WireHit>> {
        let shard_ids: Vec<u16> = self.shards.borrow().keys().copied().collect();
        let mut per_filter = Vec::with_capacity(filters.len());
        for filter in filters {
            let limit = effective_limit(filter, limits.default, limits.max);
            let mut lists = Vec::with_capacity(shard_ids.len());
            for &shard_id in &shard_ids {
                lists.push(self.scan_shard(shard_id, filter, limit, limits.now).await);
            }
            per_filter.push(merge_newest_first(lists, limit));
        }
        per_filter
    }

    async fn scan_shard(&self, shard_id: u16, filter: &Filter, limit: usize, now: u64) -> Vec<WireHit> {
        let mut scan = {
            let shards = self.shards.borrow();
            let Some(shard) = shards.get(&shard_id) else { return Vec::new() };
            let state = shard.state();
            FilterScan::new(filter, limit, &state.index)
        };
        loop {
            let done = {
                let shards = self.shards.borrow();
                let Some(shard) = shards.get(&shard_id) else { return Vec::new() };
                let state = shard.state();
                scan.step(&state.index, &*state, now, QUERY_STEP_CANDIDATE_COUNT)
            };
            if done {
                break;
            }
            glommio::yield_if_needed().await;
        }
        let shards = self.shards.borrow();
        let Some(shard) = shards.get(&shard_id) else { return Vec::new() };
        let state = shard.state();
        scan.into_hits()
            .into_iter()
            .map(|hit| WireHit { created_at: hit.created_at, id: hit.id, json: state.event_json(hit.no).into() })
            .collect()
    }

    /// Stop storing: finish every pending append and fsync, and close the shards.
    pub async fn close_shards(&self) {
        let shards: Vec<(u16, Shard)> = self.shards.borrow_mut().drain().collect();
        for (shard_id, shard) in shards {
            if let Err(error) = shard.close().await {
                tracing::error!(core = self.id, shard = shard_id, %error, "closing shard");
            }
        }
    }
}
