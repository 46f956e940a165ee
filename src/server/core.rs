//! `Core`: one executor's state. Its storage shards, its sessions (one per connection) and
//! their subscriptions, its end of the mesh, its counters and its query slots. Everything
//! here is touched only by the core's own executor. What happens to that state lives beside
//! it: [`super::verbs`] (client messages), [`super::ingest`] (an event's way to disk),
//! [`super::fanout`] (live events), [`super::scan`] (this core's side of a query).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use glommio::task::JoinHandle;
use glommio::{Task, TaskQueueHandle};

use super::ids::CoreId;
use super::ingest::AckPipeline;
use super::ip_slots::IpSlots;
use super::lists::{ListsFile, Versioned};
use super::mesh::{Answer, Ask, CoreMsg, Mesh, RequestId, ScanAsk};
use super::metrics::{CoreMetrics, ProcessMetrics, Scrape};
use super::outbox::{outbox, Budget, CoreOutboxes, Out, Outbox, OutboxWatch};
use super::parts::QueryLimits;
use super::plugin::Plugin;
use super::policy::Policy;
use super::rates::{RateKey, RateLimiter, Work};
use super::scan;
use super::session::{QueryId, Session};
use super::slots::{Asker, FairSlots, Slot};
use super::stats::{CloseCause, Stats, StatsSnapshot, Verb};
use super::throttle::{LogThrottle, REPEATED_ERROR_LOG_INTERVAL};
use crate::auth::RelayAddress;
use crate::config::Config;
use crate::event::{EventError, KeyCache, ParsedEvent, VerifiedEvent};
use crate::store::{Privacy, Router, Shard, ShardId, ShardState};
use crate::subs::{ConnId, SubscriptionIndex};
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The task queues a core's queries run in. A task spawned there never runs inside the
/// spawning session's turn, so a REQ replaced by the next message costs no scan, and glommio
/// shares the core between sessions' I/O and scans. A scan still running after a few steps
/// finishes in `long_scans`, which has a smaller share: short queries are not queued behind
/// long ones, and a flood of long ones takes little from everyone else.
#[derive(Clone, Copy)]
pub struct QueryQueues {
    pub queries: TaskQueueHandle,
    pub long_scans: TaskQueueHandle,
}

/// What a core is given at start besides its shards: what it shares with the others, and
/// its plugin.
pub struct Shared {
    /// Open connections per client address.
    pub ip_slots: IpSlots,
    /// The lists file's writer.
    pub lists_file: Arc<ListsFile>,
    /// The lists as read at start.
    pub lists: Versioned,
    /// This core's write-policy plugin (its own; not shared).
    pub plugin: Option<Plugin>,
}

pub struct Core {
    pub id: CoreId,
    pub core_count: usize,
    pub config: Arc<Config>,
    /// The write policy, compiled from `[policy]` and the data directory's lists file;
    /// replaced whole when the lists are reloaded (SIGHUP).
    policy: RefCell<Rc<Policy>>,
    /// Per pubkey that asked to vanish (NIP-62): the latest date it asked for. Gift wraps to it
    /// up to then are retired from this core's shards and refused.
    vanished: RefCell<HashMap<[u8; 32], u64>>,
    /// This core's write-policy plugin (`[write_plugin]`), when one is configured.
    pub plugin: Option<Plugin>,
    /// The lists file's one writer, shared by every core (SIGHUP, NIP-86).
    pub lists_file: Arc<ListsFile>,
    /// The lists in force, and their generation.
    lists: RefCell<Versioned>,
    /// Set by SIGHUP; core 0 watches it (once a second) and reloads the lists everywhere.
    reload_requested: RefCell<Option<Arc<std::sync::atomic::AtomicBool>>>,
    /// This core's token buckets (`[rate_limits]`).
    pub rates: RefCell<RateLimiter>,
    /// Kinds served only to their author or a `p`-tagged pubkey (`policy.private_kinds`).
    pub private_kinds: Arc<[u16]>,
    /// The addresses an AUTH event may name: `auth.relay_urls`, parsed (empty: the Host a
    /// connection dialled).
    pub relay_addresses: Vec<RelayAddress>,
    /// Proxies whose `X-Forwarded-For` names the client (`trusted_proxies`).
    pub trusted_proxies: Vec<IpAddr>,
    pub stats: Rc<Stats>,
    pub mesh: Rc<Mesh>,
    router: Router,
    pub(super) shards: RefCell<HashMap<ShardId, Shard>>,
    pub(super) subs: RefCell<SubscriptionIndex>,
    pub(super) sessions: RefCell<HashMap<ConnId, Session>>,
    ip_slots: IpSlots,
    next_id: Cell<u64>,
    keys: RefCell<KeyCache>,
    /// Queries this core's connections may run at once (`queries_per_core_max`), given in
    /// turn to addresses, then connections (see `slots`).
    query_slots: Rc<FairSlots>,
    /// Where queries and scans run, apart from the sessions (see [`QueryQueues`]).
    queues: QueryQueues,
    /// Scans run for other cores' gathers, cancellable by the asker (the handle is set once
    /// the task is spawned; glommio may run it to completion first).
    remote_scans: RefCell<HashMap<RequestId, Option<JoinHandle<()>>>>,
    /// What every connection's outbox shares: the core's byte budget and its clock.
    outboxes: Rc<CoreOutboxes>,
    /// Connections let go of whose loops have not ended yet, for the stall sweep.
    closing: RefCell<Vec<OutboxWatch>>,
    /// Per shard, the task that answers appends once durable.
    pipelines: HashMap<ShardId, Rc<AckPipeline>>,
    /// The core's long-lived tasks (mesh pumps, ack pipelines), cancelled when it stops.
    tasks: RefCell<Vec<JoinHandle<()>>>,
    /// Storage errors repeat once per event; they are logged once per interval.
    pub(super) storage_errors: LogThrottle,
}

impl Core {
    pub fn new(
        config: Arc<Config>,
        router: Router,
        shards: HashMap<ShardId, Shard>,
        mesh: Rc<Mesh>,
        stats: Rc<Stats>,
        shared: Shared,
        queues: QueryQueues,
    ) -> Rc<Core> {
        let Shared { ip_slots, lists_file, lists, plugin } = shared;
        let query_slots = FairSlots::new(config.limits.queries_per_core_max);
        let outboxes = Rc::new(CoreOutboxes {
            stats: stats.clone(),
            capacity_size: config.limits.outbound_bytes_per_core_max,
            seconds: Cell::new(0),
        });
        let pipelines = shards
            .iter()
            .map(|(&id, shard)| (id, Rc::new(AckPipeline::new(shard.state().index.durable_count()))))
            .collect();
        Rc::new(Core {
            id: mesh.id,
            core_count: mesh.core_count,
            policy: RefCell::new(Rc::new(Policy::with_lists(&config.policy, &lists.lists))),
            vanished: RefCell::new(HashMap::new()),
            plugin,
            lists_file,
            lists: RefCell::new(lists),
            reload_requested: RefCell::new(None),
            rates: RefCell::new(RateLimiter::new(&config.rate_limits)),
            private_kinds: config.policy.private_kinds.iter().copied().collect(),
            relay_addresses: config.auth.relay_urls.iter().filter_map(|url| RelayAddress::parse_url(url)).collect(),
            trusted_proxies: config
                .trusted_proxies
                .iter()
                .filter_map(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| ip.to_canonical())
                .collect(),
            stats,
            config,
            mesh,
            router,
            shards: RefCell::new(shards),
            subs: RefCell::new(SubscriptionIndex::default()),
            sessions: RefCell::new(HashMap::new()),
            ip_slots,
            next_id: Cell::new(1),
            keys: RefCell::new(KeyCache::new()),
            query_slots,
            queues,
            remote_scans: RefCell::new(HashMap::new()),
            outboxes,
            closing: RefCell::new(Vec::new()),
            pipelines,
            tasks: RefCell::new(Vec::new()),
            storage_errors: LogThrottle::new(REPEATED_ERROR_LOG_INTERVAL),
        })
    }

    /// Start the core's long-lived tasks: a backlog pump per peer, an ack pipeline per shard.
    pub fn start_tasks(self: &Rc<Self>) {
        let mut tasks = self.tasks.borrow_mut();
        for peer in self.mesh.peers() {
            tasks.push(glommio::spawn_local(self.mesh.clone().pump(peer)).detach());
        }
        for pipeline in self.pipelines.values() {
            tasks.push(glommio::spawn_local(pipeline.clone().run(self.clone())).detach());
        }
        tasks.push(glommio::spawn_local(self.clone().sweep_stalled_writes()).detach());
    }

    /// Once a second: advance the outboxes' clock and tell each session whose write has
    /// waited `write_stall_secs` (one pass over the sessions, no timer per write).
    async fn sweep_stalled_writes(self: Rc<Self>) {
        let stall_secs = self.config.limits.write_stall_secs;
        loop {
            glommio::timer::sleep(std::time::Duration::from_secs(1)).await;
            self.outboxes.seconds.set(self.outboxes.seconds.get() + 1);
            self.rates.borrow_mut().forget_idle(std::time::Instant::now());
            let reload = self
                .reload_requested
                .borrow()
                .as_ref()
                .is_some_and(|flag| flag.swap(false, std::sync::atomic::Ordering::SeqCst));
            if reload {
                self.reload_lists().await;
            }
            for session in self.sessions.borrow().values() {
                session.outbound.check_stall(stall_secs);
            }
            self.closing.borrow_mut().retain(|watch| watch.check_stall(stall_secs).is_some());
        }
    }

    /// Stop the long-lived tasks (after the shards are closed and their appends answered).
    pub fn stop_tasks(&self) {
        for task in self.tasks.borrow_mut().drain(..) {
            task.cancel();
        }
    }

    /// The ack pipeline of one of this core's shards.
    pub fn ack_pipeline(&self, shard: ShardId) -> Rc<AckPipeline> {
        self.pipelines[&shard].clone()
    }

    /// Wait (up to `deadline`) until every append has been answered.
    pub async fn acks_settled(&self, deadline: std::time::Duration) {
        let until = std::time::Instant::now() + deadline;
        while !self.pipelines.values().all(|pipeline| pipeline.is_idle()) && std::time::Instant::now() < until {
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub fn fresh_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// The shard that stores `pubkey`'s events: a keyed hash, computed once per event and
    /// passed along with it.
    pub fn owner_shard(&self, pubkey: &[u8; 32]) -> ShardId {
        self.router.owner_shard(pubkey)
    }

    /// The core that owns `shard`.
    pub fn owner_core(&self, shard: ShardId) -> CoreId {
        CoreId(usize::from(shard) % self.core_count)
    }

    pub fn shard_ids(&self) -> Vec<ShardId> {
        self.shards.borrow().keys().copied().collect()
    }

    /// Run `f` on a shard's state; `None` once the shard is closed.
    pub fn with_shard<T>(&self, shard: ShardId, f: impl FnOnce(&ShardState) -> T) -> Option<T> {
        let shards = self.shards.borrow();
        let shard = shards.get(&shard)?;
        let state = shard.state();
        Some(f(&state))
    }

    /// Register a connection; `None` when its IP holds `connections_per_ip_max` already.
    pub fn open_session(&self, ip: IpAddr, host: Option<RelayAddress>) -> Option<(ConnId, Outbox)> {
        let limits = &self.config.limits;
        let slot = self.ip_slots.take(ip, limits.connections_per_ip_max)?;
        let conn = ConnId(self.fresh_id());
        let budget =
            Budget { capacity_size: limits.outbound_bytes_max, queries_max: limits.queries_per_connection_max };
        let (outbound, receiver) = outbox(budget, self.outboxes.clone());
        self.stats.connections_accepted.inc();
        self.sessions.borrow_mut().insert(conn, Session::new(outbound, slot, self.stats.clone(), host));
        Some((conn, receiver))
    }

    /// Forget a connection: its subscriptions, its queries (cancelled) and its queue. Its
    /// loop may still be writing (a close frame to a reader that stopped reading): the
    /// stall sweep keeps watching it until it ends.
    pub fn close_session(&self, conn: ConnId) {
        self.subs.borrow_mut().remove_conn(conn);
        let session = self.sessions.borrow_mut().remove(&conn);
        if let Some(session) = session {
            self.closing.borrow_mut().push(session.outbound.watch());
        }
    }

    /// Wait at least `at_least`, then until every connection let go of has written its close
    /// frame (or ended), for at most `within` in all: at shutdown, so that no client misses
    /// its close frame because the process left first, and a handshake in flight when the
    /// accept loop ended gets its turn.
    pub async fn connections_ended(&self, at_least: std::time::Duration, within: std::time::Duration) {
        let started = std::time::Instant::now();
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
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Run `f` on a connection's session; `None` once it is gone.
    pub fn with_session<T>(&self, conn: ConnId, f: impl FnOnce(&mut Session) -> T) -> Option<T> {
        self.sessions.borrow_mut().get_mut(&conn).map(f)
    }

    /// Run `work` as a query owned by `conn`'s session, answering `sub` if given: cancelled
    /// when the subscription is replaced or closed, or the connection goes.
    pub fn start_query<F>(self: &Rc<Self>, conn: ConnId, sub: Option<crate::proto::SubId>, work: F)
    where
        F: std::future::Future<Output = ()> + 'static,
    {
        let id: QueryId = self.fresh_id();
        if self.with_session(conn, |session| session.start_query(id, sub)).is_none() {
            return;
        }
        let core = self.clone();
        let task = self.spawn_query(async move {
            work.await;
            core.with_session(conn, |session| session.finish_query(id));
        });
        self.with_session(conn, |session| session.attach(id, task));
    }

    fn spawn_query(&self, work: impl std::future::Future<Output = ()> + 'static) -> JoinHandle<()> {
        glommio::spawn_local_into(work, self.queues.queries).expect("the queries task queue exists").detach()
    }

    /// Run the rest of a long scan in the long scans' queue; dropping the task cancels it.
    pub(super) fn spawn_long_scan<T: 'static>(&self, work: impl std::future::Future<Output = T> + 'static) -> Task<T> {
        glommio::spawn_local_into(work, self.queues.long_scans).expect("the long scans task queue exists")
    }

    /// One of the core's query slots for `conn`, waited for in its address's and its own turn.
    pub async fn query_slot(&self, conn: ConnId) -> Slot {
        // Counted while waiting, and no longer once the wait ends or is cancelled.
        struct Waiting<'a>(&'a Stats);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.queries_waiting.sub(1);
            }
        }
        self.stats.queries_waiting.add(1);
        let _waiting = Waiting(&self.stats);
        // A connection already gone (its query is being cancelled) waits as no address.
        let ip = self.with_session(conn, |session| session.ip).unwrap_or(IpAddr::from([0u8; 4]));
        self.query_slots.acquire(Asker { ip, conn }).await
    }

    /// What `conn` may not see: the private kinds, unless it authenticated as their author
    /// or a recipient.
    pub fn privacy_for(&self, conn: ConnId) -> Privacy {
        let viewers = self.with_session(conn, |session| session.auth.pubkeys.iter().map(|key| key.0).collect());
        Privacy { kinds: self.private_kinds.clone(), viewers: viewers.unwrap_or_default() }
    }

    /// The addresses a client of `conn` may name this relay by (NIP-42, NIP-62): the
    /// configured `auth.relay_urls`, else the Host it dialled.
    pub fn addresses_for(&self, conn: ConnId) -> Vec<RelayAddress> {
        match &self.relay_addresses[..] {
            [] => self.with_session(conn, |session| session.auth.host.clone()).flatten().into_iter().collect(),
            configured => configured.to_vec(),
        }
    }

    /// The write policy in force.
    pub fn policy(&self) -> Rc<Policy> {
        self.policy.borrow().clone()
    }

    /// Make this core the one that reloads the lists when `flag` is set (SIGHUP).
    pub fn watch_reloads(&self, flag: Arc<std::sync::atomic::AtomicBool>) {
        *self.reload_requested.borrow_mut() = Some(flag);
    }

    /// The lists in force (`policy.toml`, as last put in force).
    pub fn lists(&self) -> Versioned {
        self.lists.borrow().clone()
    }

    /// Put `lists` in force on this core, unless newer ones already are: the write policy
    /// from the next event; banned events retired from this core's shards; connections from
    /// blocked addresses closed (1008).
    pub fn apply_lists(&self, lists: Versioned) {
        if lists.generation < self.lists.borrow().generation {
            return;
        }
        let policy = Rc::new(Policy::with_lists(&self.config.policy, &lists.lists));
        let retirements = lists.lists.retirements();
        for shard in self.shards.borrow().values() {
            let retired = retirements.apply(&mut shard.state_mut().index);
            if retired > 0 {
                tracing::info!(retired, "banned events and banned pubkeys' events retired");
            }
        }
        let blocked: Vec<ConnId> = self
            .sessions
            .borrow()
            .iter()
            .filter(|(_, session)| policy.blocks(session.ip))
            .map(|(&conn, _)| conn)
            .collect();
        for conn in blocked {
            self.with_session(conn, |session| {
                // Counted as `CloseCause::Blocked` when the connection's loop sends it.
                let reason = "blocked: connections from your address are refused here".to_owned();
                session.outbound.shut(CloseCode::Policy, reason);
            });
            self.close_session(conn);
        }
        *self.policy.borrow_mut() = policy;
        *self.lists.borrow_mut() = lists;
    }

    /// A request to vanish from `pubkey` up to `until` is stored (on any core): retire the
    /// gift wraps to it from this core's shards, and refuse them from now on (NIP-62).
    pub fn note_vanish(&self, pubkey: &[u8; 32], until: u64) {
        let mut vanished = self.vanished.borrow_mut();
        let latest = vanished.entry(*pubkey).or_insert(0);
        *latest = (*latest).max(until);
        let hex = crate::hex::encode(pubkey);
        let mut retired = 0;
        for shard in self.shards.borrow().values() {
            retired += shard.state_mut().index.kill_wraps_to(hex.as_bytes(), until);
        }
        if retired > 0 {
            tracing::info!(pubkey = %hex, retired, "gift wraps to a pubkey that vanished retired");
        }
    }

    /// Whether a gift wrap dated `created_at` `p`-tags a pubkey that vanished since.
    pub fn is_wrap_to_vanished(&self, event: &ParsedEvent) -> bool {
        let vanished = self.vanished.borrow();
        !vanished.is_empty()
            && event.index_tags.iter().any(|tag| {
                tag.letter == b'p'
                    && crate::hex::decode_lower::<32>(&tag.value)
                        .and_then(|key| vanished.get(&key).copied())
                        .is_some_and(|until| event.created_at <= until)
            })
    }

    /// At start, before serving: every stored request to vanish, from every core, retires
    /// the gift wraps to its author from this core's shards (replay retires the author's own
    /// events on its shard; the wraps to it live on any shard).
    pub async fn apply_stored_vanish_requests(self: &Rc<Self>) {
        let filter = crate::filter::Filter { kinds: Some(vec![crate::event::kind::KIND_VANISH]), ..Default::default() };
        let every = crate::limits::SHARD_EVENT_COUNT_MAX;
        let limits = QueryLimits { default: every, max: every, now: crate::now_unix(), bytes_max: usize::MAX };
        let found = super::gather::hits_everywhere(self, Arc::from([filter]), limits, Privacy::default()).await;
        for hit in found.into_iter().flatten() {
            let Ok(event) = serde_json::from_slice::<serde_json::Value>(&hit.json) else { continue };
            let pubkey = event["pubkey"].as_str().and_then(|key| crate::hex::decode_lower::<32>(key.as_bytes()));
            if let Some(pubkey) = pubkey {
                self.note_vanish(&pubkey, hit.created_at);
            }
        }
    }

    /// Put `lists` in force on every core, this one included; returns once all have.
    pub async fn put_lists_in_force(self: &Rc<Self>, lists: Versioned) {
        self.mesh
            .gather(Ask::Lists(lists.clone()), async {
                self.apply_lists(lists);
            })
            .await;
    }

    /// Read the lists file again and put it in force on every core (SIGHUP). A file that
    /// does not parse changes nothing, and says why in the log.
    pub async fn reload_lists(self: &Rc<Self>) {
        let file = self.lists_file.clone();
        match glommio::executor().spawn_blocking(move || file.reload()).await {
            Ok(lists) => {
                let (denied, allowed) = (lists.lists.pubkeys_denied.len(), lists.lists.pubkeys_allowed.len());
                self.put_lists_in_force(lists).await;
                self.stats.policy_reloads.inc();
                tracing::info!(denied, allowed, "policy lists reloaded");
            }
            Err(error) => {
                self.stats.policy_reload_failures.inc();
                tracing::error!(%error, "policy lists not reloaded; the previous ones stay in force");
            }
        }
    }

    /// Whether `conn` is over its rate for `work` (one token is taken when it is not).
    pub fn over_rate(&self, conn: ConnId, work: Work) -> bool {
        let key = self.with_session(conn, |session| self.rates.borrow().key(session.ip, &session.auth.pubkeys));
        match key.flatten() {
            Some(key) => self.over_rate_of(key, work),
            None => false,
        }
    }

    /// Whether `key` is over its rate for `work`; counted in the metrics when it is.
    pub fn over_rate_of(&self, key: RateKey, work: Work) -> bool {
        let admitted = self.rates.borrow_mut().admit(key, work, std::time::Instant::now());
        if !admitted {
            self.stats.rate_limited[work.index()].inc();
        }
        !admitted
    }

    /// Send this connection its NIP-42 challenge, unless it has one already.
    pub fn send_challenge(&self, conn: ConnId) {
        self.with_session(conn, |session| {
            if session.auth.challenge.is_none() {
                let challenge = crate::auth::new_challenge();
                let frame = crate::proto::frame_auth(&challenge);
                session.auth.challenge = Some(challenge);
                session.outbound.send_reply(Out::Text(frame), false);
            }
        });
    }

    /// Queue a reply to something the connection sent (NOTICE, CLOSED, COUNT, an immediate
    /// OK): always queued; the session holds back input instead (see `outbox`).
    pub fn send(&self, conn: ConnId, text: String) {
        self.with_session(conn, |session| session.outbound.send_reply(Out::Text(text), false));
    }

    /// Tell every connection the relay is going away (1001) or restarting (1012); what is
    /// queued goes out first.
    pub fn close_all(&self, code: async_tungstenite::tungstenite::protocol::frame::coding::CloseCode, reason: &str) {
        let conns: Vec<ConnId> = self.sessions.borrow().keys().copied().collect();
        for conn in conns {
            self.with_session(conn, |session| session.outbound.send_reply(Out::Close(code, reason.to_owned()), false));
            self.close_session(conn);
        }
    }

    /// The signature check, with this core's cache of authors' keys.
    pub fn verify(&self, event: ParsedEvent) -> Result<VerifiedEvent, EventError> {
        VerifiedEvent::verify_cached(event, &mut self.keys.borrow_mut())
    }

    pub fn query_limits(&self) -> QueryLimits {
        let limits = &self.config.limits;
        QueryLimits {
            default: limits.limit_default,
            max: limits.limit_max,
            now: crate::now_unix(),
            bytes_max: limits.query_answer_bytes_max,
        }
    }

    /// A message from another core. Never waits (see `mesh`).
    pub fn handle_message(self: &Rc<Self>, message: CoreMsg) {
        match message {
            CoreMsg::Append { event, shard, reply } => super::ingest::append_owned(self, *event, shard, reply),
            CoreMsg::Ack { reply, outcome, reason } => super::ingest::deliver_ok(self, &reply, outcome, &reason),
            CoreMsg::Live(event) => super::fanout::fan_out(self, &event),
            CoreMsg::Ask { request, ask: Ask::Metrics } => {
                let answer = Answer::Metrics(Box::new(self.local_metrics()));
                self.mesh.post(request.core, CoreMsg::Answer { request, answer });
            }
            CoreMsg::Ask { request, ask: Ask::Lists(lists) } => {
                self.apply_lists(lists);
                self.mesh.post(request.core, CoreMsg::Answer { request, answer: Answer::Applied });
            }
            CoreMsg::Ask { request, ask: Ask::Scan(scan) } => self.start_remote_scan(request, scan),
            CoreMsg::Cancel { request } => {
                // Out of the map before the task is touched: no borrow lives through the block.
                let removed = self.remote_scans.borrow_mut().remove(&request);
                if let Some(task) = removed {
                    if let Some(task) = task {
                        task.cancel();
                    }
                    self.stats.remote_scans.sub(1);
                    self.stats.queries_cancelled.inc();
                }
            }
            CoreMsg::Answer { request, answer } => self.mesh.on_answer(request, answer),
        }
    }

    /// Scan this core's shards for another core's gather; the asker bounds how many it
    /// has in flight, and may cancel.
    fn start_remote_scan(self: &Rc<Self>, request: RequestId, ask: ScanAsk) {
        self.stats.remote_scans.add(1);
        self.remote_scans.borrow_mut().insert(request, None);
        let core = self.clone();
        let task = self.spawn_query(async move {
            let answer = match ask {
                ScanAsk::Hits { filters, limits, privacy } => {
                    Answer::Hits(scan::hits(&core, &filters, limits, &privacy).await)
                }
                ScanAsk::Count { filters, limits, privacy } => {
                    Answer::Count(scan::count(&core, &filters, limits, &privacy).await)
                }
            };
            if core.remote_scans.borrow_mut().remove(&request).is_some() {
                core.stats.remote_scans.sub(1);
                core.mesh.post(request.core, CoreMsg::Answer { request, answer });
            }
        });
        if let Some(slot) = self.remote_scans.borrow_mut().get_mut(&request) {
            *slot = Some(task);
        }
    }

    fn local_stats(&self) -> StatsSnapshot {
        let mut snapshot = self.stats.snapshot(self.subs.borrow().len() as u64);
        snapshot.shards_refusing_writes =
            self.shards.borrow().values().filter(|shard| shard.refusal().is_some()).count() as u64;
        snapshot
    }

    /// This core's figures for a scrape: a copy of its cells and one pass over its shards.
    fn local_metrics(&self) -> CoreMetrics {
        let stats = &self.stats;
        let limits = &self.config.limits;
        let mut shards: Vec<_> = self.shards.borrow().values().map(|shard| shard.state().figures()).collect();
        shards.sort_by_key(|figures| figures.shard);
        CoreMetrics {
            core: self.id,
            stats: self.local_stats(),
            closes: CloseCause::ALL.iter().zip(&stats.closes).map(|(cause, count)| (*cause, count.get())).collect(),
            messages: Verb::ALL.iter().zip(&stats.messages).map(|(verb, count)| (*verb, count.get())).collect(),
            events: stats.events.borrow().clone(),
            live_deliveries: stats.live_deliveries.get(),
            rate_limited: Work::ALL.iter().map(|work| (work.label(), stats.rate_limited[work.index()].get())).collect(),
            rate_keys: self.rates.borrow().tracked() as u64,
            policy_reloads: stats.policy_reloads.get(),
            policy_reload_failures: stats.policy_reload_failures.get(),
            auth_accepted: stats.auth_accepted.get(),
            auth_refused: stats.auth_refused.get(),
            plugin_starts: self.plugin.as_ref().map_or(0, |plugin| plugin.figures.starts.get()),
            plugin_failures: self.plugin.as_ref().map_or(0, |plugin| plugin.figures.failures.get()),
            manage_calls: super::stats::ManageResult::ALL
                .iter()
                .map(|result| (result.label(), stats.manage_calls[*result as usize].get()))
                .collect(),
            received_bytes: stats.received_bytes.get(),
            sent_bytes: stats.sent_bytes.get(),
            ingest_seconds: stats.ingest_seconds.snapshot(),
            req_seconds: stats.req_seconds.snapshot(),
            count_seconds: stats.count_seconds.snapshot(),
            busy_seconds: glommio::executor().executor_stats().executor_runtime().as_secs_f64(),
            budget_limits: vec![
                ("outbound_bytes", limits.outbound_bytes_per_core_max as u64),
                ("queries", limits.queries_per_core_max as u64),
            ],
            shards,
        }
    }

    /// Every core's figures, through the mesh's bounded gather.
    pub async fn metrics_everywhere(self: &Rc<Self>) -> Vec<CoreMetrics> {
        let answers = self.mesh.gather(Ask::Metrics, async { Box::new(self.local_metrics()) }).await;
        let mut cores: Vec<CoreMetrics> = answers.into_iter().map(|part| *part).collect();
        cores.sort_by_key(|core| core.core);
        cores
    }

    /// `/metrics`: every core's figures, with the process's read off the cores.
    pub async fn scrape(self: &Rc<Self>) -> String {
        let cores = self.metrics_everywhere().await;
        let data_dir = self.config.data_dir.clone();
        let process = glommio::executor().spawn_blocking(move || ProcessMetrics::read(&data_dir)).await;
        super::metrics::render(Scrape { cores, process, storage_reserve_bytes: self.config.storage_reserve_bytes })
    }

    /// Every core's counters, summed, with the process's.
    pub async fn stats_everywhere(self: &Rc<Self>) -> StatsSnapshot {
        let mut total = StatsSnapshot { cores: 0, ..StatsSnapshot::default() };
        for core in self.metrics_everywhere().await {
            total.merge(&core.stats);
        }
        total.rss_bytes = super::stats::resident_bytes();
        total
    }

    /// Stop storing: finish every pending append and fsync, and close the shards.
    pub async fn close_shards(&self) {
        let shards: Vec<(ShardId, Shard)> = self.shards.borrow_mut().drain().collect();
        for (shard_id, shard) in shards {
            if let Err(error) = shard.close().await {
                tracing::error!(core = self.id.0, shard = %shard_id, %error, "closing shard");
            }
        }
    }
}
