//! `Core`: one executor's subsystems, each owning its state ([`Sessions`], [`Storage`],
//! [`Gate`], [`Queries`], the [`Mesh`]) and the counters they share, plus the few
//! operations that need more than one of them (a query owned by a connection, the lists put
//! in force, the stall sweep). Everything here is touched only by the core's own executor.
//! What happens to that state lives beside it: [`super::verbs`] (client messages),
//! [`super::ingest`] (an event's way to disk), [`super::fanout`] (live events),
//! [`super::dispatch`] (messages from other cores), [`super::telemetry`] (its figures).

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use glommio::task::JoinHandle;

use super::compression::Compression;
use super::gate::Gate;
use super::gather::Scatter;
use super::ids::CoreId;
use super::lists::Versioned;
use super::mesh::{Ask, Mesh};
use super::parts::QueryLimits;
use super::peers::Peers;
use super::queries::Queries;
use super::rates::Work;
use super::sessions::Sessions;
use super::slots::{Asker, Slot};
use super::stats::Stats;
use super::storage::Storage;
use crate::auth::RelayAddress;
use crate::config::Config;
use crate::limits::RATE_LIMITED_READ_PAUSE;
use crate::proto::SubId;
use crate::store::Privacy;
use crate::subs::ConnId;

pub struct Core {
    pub config: Arc<Config>,
    /// This core's end of the core-to-core mesh.
    pub mesh: Rc<Mesh>,
    /// The counters every subsystem of this core adds to.
    pub stats: Rc<Stats>,
    /// Connections and their subscriptions.
    pub sessions: Sessions,
    /// Shards, their ack pipelines, what vanished.
    pub storage: Rc<Storage>,
    /// Policy, lists, rates, plugin, signature keys.
    pub gate: Gate,
    /// Query slots, the queries' task queues, other cores' scans.
    pub queries: Rc<Queries>,
    /// The peer links this core runs (`[[peers]]`).
    pub peers: Peers,
    /// permessage-deflate: the codec the core's connections share, and its budget.
    pub compression: Compression,
    /// The core's long-lived tasks (mesh pumps, ack pipelines, the sweep), cancelled when
    /// it stops.
    tasks: RefCell<Vec<JoinHandle<()>>>,
}

impl Core {
    #[allow(clippy::too_many_arguments)] // one per subsystem, each built by the core's start
    pub fn new(
        config: Arc<Config>,
        mesh: Rc<Mesh>,
        stats: Rc<Stats>,
        sessions: Sessions,
        storage: Storage,
        gate: Gate,
        queries: Queries,
        peers: Peers,
    ) -> Rc<Core> {
        Rc::new(Core {
            compression: Compression::new(config.compression.clone(), stats.clone()),
            config,
            mesh,
            stats,
            sessions,
            storage: Rc::new(storage),
            gate,
            queries: Rc::new(queries),
            peers,
            tasks: RefCell::new(Vec::new()),
        })
    }

    pub fn id(&self) -> CoreId {
        self.mesh.id
    }

    /// The parts of this core a query's fan-in uses.
    pub fn scatter(&self) -> Scatter<'_> {
        Scatter { mesh: &self.mesh, storage: &self.storage, queries: &self.queries, stats: &self.stats }
    }

    /// Own a long-lived task: cancelled by [`Core::stop_tasks`].
    pub fn own_task(&self, task: JoinHandle<()>) {
        self.tasks.borrow_mut().push(task);
    }

    /// Stop the long-lived tasks (after the shards are closed and their appends answered).
    pub fn stop_tasks(&self) {
        for task in self.tasks.borrow_mut().drain(..) {
            task.cancel();
        }
    }

    /// The once-a-second sweep's own part (`dispatch::sweep` runs it, and the reloads): the
    /// outboxes' clock and stalled writes, idle NIP-77 syncs, idle rate buckets.
    pub fn sweep_once(&self) {
        self.gate.forget_idle();
        self.sessions.sweep_stalled(self.config.limits.write_stall_secs);
        let idle_syncs = Duration::from_secs(self.config.negentropy.idle_secs);
        self.stats.neg_idle_closed.add(self.sessions.sweep_idle_syncs(idle_syncs) as u64);
        let (retired, _) = self.storage.retire_by_age(&self.config.retention, crate::now_unix());
        self.stats.retention_retired.add(retired as u64);
        let evicted = self.storage.evict_for_size(&self.config.retention);
        self.stats.retention_evicted.add(evicted as u64);
    }

    /// Run `work` as a query owned by `conn`'s session, answering `sub` if given: cancelled
    /// when the subscription is replaced or closed, or the connection goes.
    pub fn start_query<F>(self: &Rc<Self>, conn: ConnId, sub: Option<SubId>, work: F)
    where
        F: std::future::Future<Output = ()> + 'static,
    {
        let id = self.sessions.fresh_id();
        if self.sessions.with(conn, |session| session.start_query(id, sub)).is_none() {
            return;
        }
        let core = self.clone();
        let task = self.queries.spawn(async move {
            work.await;
            core.sessions.with(conn, |session| session.finish_query(id));
        });
        self.sessions.with(conn, |session| session.attach(id, task));
    }

    /// One of the core's query slots for `conn`, waited for in its address's and its own turn.
    pub async fn query_slot(&self, conn: ConnId) -> Slot {
        // A connection already gone (its query is being cancelled) waits as no address.
        let ip = self.sessions.with(conn, |session| session.ip).unwrap_or(IpAddr::from([0u8; 4]));
        self.queries.slot(Asker { ip, conn }).await
    }

    /// What `conn` may not see: the private kinds, unless it authenticated as their author
    /// or a recipient.
    pub fn privacy_for(&self, conn: ConnId) -> Privacy {
        let viewers = self.sessions.with(conn, |session| session.auth.pubkeys.iter().map(|key| key.0).collect());
        self.gate.privacy(viewers.unwrap_or_default())
    }

    /// The addresses a client of `conn` may name this relay by (NIP-42, NIP-62).
    pub fn addresses_for(&self, conn: ConnId) -> Vec<RelayAddress> {
        let host = self.sessions.with(conn, |session| session.auth.host.clone()).flatten();
        self.gate.addresses(host)
    }

    /// Whether `conn` is over its rate for `work` (one token is taken when it is not). When
    /// it is, nothing more is read from it for [`RATE_LIMITED_READ_PAUSE`].
    pub fn over_rate(&self, conn: ConnId, work: Work) -> bool {
        let key = self.sessions.with(conn, |session| self.gate.rate_key(session.ip, &session.auth.pubkeys));
        let over = key.flatten().is_some_and(|key| self.gate.over_rate_of(key, work));
        if over {
            self.sessions.with(conn, |session| session.outbound.hold_input(RATE_LIMITED_READ_PAUSE));
        }
        over
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

    /// Put `lists` in force on this core, unless newer ones already are: the write policy
    /// from the next event; banned events retired from this core's shards; connections from
    /// blocked addresses closed (1008).
    pub fn apply_lists(&self, lists: Versioned) {
        let Some(policy) = self.gate.compile(&lists) else { return };
        self.storage.retire(&lists.lists.retirements());
        for conn in self.sessions.picked(|session| policy.blocks(session.ip)) {
            // Counted as `CloseCause::Blocked` when the connection's loop sends it.
            let reason = "blocked: connections from your address are refused here".to_owned();
            self.sessions.shut(conn, CloseCode::Policy, reason);
        }
        self.gate.put_in_force(policy, lists);
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
        let file = self.gate.lists_file.clone();
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
}
