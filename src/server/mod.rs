//! `ringrelay serve`: one glommio executor pinned per core, each with its own
//! SO_REUSEPORT listener, connections, subscriptions and storage shards.
//!
//! Reading order, along the data path: [`startup`] (the cores' startup and stop, as the
//! main thread follows them), [`listen`] (listeners and the accept loop), [`http`] (request
//! head, NIP-11), [`conn`] (the socket loop of a connection; [`compression`] its
//! permessage-deflate), [`sessions`] and [`session`] (a core's connections, and what one owns),
//! [`outbox`] (its bounded queue), [`verbs`] (one module per client verb: a sans-IO decision
//! over a [`peer::Peer`], and its effects), [`gate`] (policy, lists, rates, keys),
//! [`ingest`] (an event's stages to its OK, each refusing with one [`refusal::Refusal`]),
//! [`storage`] and [`acks`] (a core's shards and their ack pipelines), [`queries`] and
//! [`slots`] (where queries run, given in turn), [`gather`] (a query's fan-in over every
//! core), [`mesh`] (core-to-core messages and the one typed scatter/gather), [`parts`] (what
//! a query asks and a core answers), [`scan`] (a core's side of a query; [`search`] its NIP-50 side), [`fanout`] (live
//! events), [`dispatch`] (messages from other cores, long-lived tasks), [`core`] (one core's
//! subsystems), [`stats`], [`telemetry`] and [`metrics`] (its figures).

pub mod acks;
pub mod compression;
pub mod conn;
pub mod core;
pub mod dispatch;
pub mod fanout;
pub mod gate;
pub mod gather;
pub mod http;
pub mod ids;
pub mod ingest;
pub mod ip_slots;
pub mod listen;
pub mod lists;
pub mod manage;
pub mod mesh;
pub mod metrics;
pub mod negsync;
pub mod outbox;
pub mod parts;
pub mod peer;
pub mod peering;
pub mod peers;
pub mod plugin;
pub mod policy;
pub mod queries;
pub mod rates;
pub mod refusal;
pub mod scan;
pub mod search;
pub mod session;
pub mod sessions;
pub mod slots;
pub mod stages;
pub mod startup;
pub mod stats;
pub mod storage;
pub mod telemetry;
pub mod throttle;
pub mod turns;
pub mod verbs;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use futures_lite::StreamExt;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};

use self::core::Core;
use self::gate::{Gate, GateStart};
use self::ids::CoreId;
use self::ip_slots::IpSlots;
use self::listen::{accept_until_stopped, bind_listeners, bind_when_free, listen, raise_open_files_limit};
use self::mesh::{CoreMsg, Mesh};
use self::queries::{Queries, QueryQueues};
use self::sessions::{SessionLimits, Sessions};
use self::startup::{CoreLink, Phase, Started, Supervisor};
use self::stats::Stats;
use self::storage::Storage;
use crate::config::Config;
use crate::event::sign::Signer;
use crate::fleet::client::Connector;
use crate::store::{CompactionPolicy, DataDir, OpenMode, Prepared, Router, Shard, ShardConfig, ShardId, ShardState};

/// How long a core retires what outlived its time at start before it serves (the rest is
/// retired by the sweep, `RETENTION_STEP_COUNT` events a shard a second).
const RETENTION_AT_START: Duration = Duration::from_secs(5);
/// Capacity of each core-to-core channel.
const MESH_CHANNEL_SIZE: usize = 4_096;
/// How long a relay taking over waits for the running one to let go of the data directory:
/// its shutdown deadline, and a margin.
const TAKEOVER_WAIT: Duration = Duration::from_secs(30);
/// How long the cores get, once a stop is asked for, to finish their appends and close their
/// clients. Past it the process exits anyway: every acknowledged event is already on disk.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);
/// How long sessions run before the core polls for finished I/O again (glommio's default is
/// 100 ms). A group commit's fdatasync completion is only seen when the core polls, so
/// under load this bounds how long events wait for their OK once they are on disk.
/// Sessions call `yield_if_needed` between messages, which gives way once this has passed.
/// It is the latency of the sessions' task queue, created once the core has joined the
/// mesh: set as the executor's preempt timer instead, it made ~1 start in 10 hang in
/// glommio's mesh join when many relays started at once.
const SESSION_LATENCY: Duration = Duration::from_millis(2);
/// The queries task queue's CPU share against the sessions' 1,000 (glommio's default).
const QUERY_SHARES: usize = 500;
/// The queries task queue's latency, which is the executor's time slice while scans run. A
/// queue woken by I/O (a client's message, an fsync) is scheduled after the running queue's
/// next slice, and I/O completions are seen once a slice: with scans running all the time
/// (a COUNT flood), every hop of a publish waited a slice. 2 ms put publish p50 at 17 ms;
/// 250 µs at 2.4 ms; 100 µs at 0.9–1.0 ms (0.45 unloaded), with p99 4.4–4.6 ms against
/// 5.3–6.2 (docs/benchmarks.md). 50 µs was no better.
const QUERY_SLICE: Duration = Duration::from_micros(100);
/// The long scans' task queue's CPU share: a scan still running after
/// `LONG_SCAN_AFTER_STEPS` moves there, so a flood of expensive queries takes a fifth of the
/// queries' share while short queries, publishing and live events keep theirs. Alone on a
/// core, long scans still take all of it.
const LONG_SCAN_SHARES: usize = 100;
/// How long a stopping core waits for its clients' close frames to be written (a client
/// that reads nothing holds it this long at most). It was a fixed 200 ms sleep, which a
/// loaded host sometimes outran: a subscriber then saw the socket end without its 1012.
const CLOSE_FRAME_WAIT: Duration = Duration::from_secs(1);
/// How long a stopping core waits at least after closing its clients: a connection
/// accepted just before the accept loop ended finishes its handshake meanwhile, rather than
/// being reset (without it, 1 handover test in ~15 saw a reset handshake).
const CLOSE_GRACE: Duration = Duration::from_millis(200);

/// The CPUs this process may run on (its affinity mask, as set by taskset or a cpuset
/// cgroup), lowest first; executor i is pinned to the i-th, and there are never more
/// executors than these. glommio's `CpuSet::online()`
/// is not used: it lists every online CPU whatever the mask, in hash order, so `--cores 1`
/// landed on a random CPU and could share it with the very client it was measured against.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain data, and sched_getaffinity writes at most its size.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        set
    };
    // SAFETY: CPU_ISSET reads the set within CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
}

/// Run the relay until SIGTERM or SIGINT (or SIGUSR1: hand over to a relay started with
/// `takeover`); returns once every core has shut down cleanly.
///
/// With `takeover`, start beside a relay already serving the same address and data
/// directory: bind beside it (SO_REUSEPORT), send it SIGUSR1, and open the store once it has
/// let go of it. It stops accepting at once (with `net.ipv4.tcp_migrate_req = 1` the
/// connections still in its accept queue move to this relay's listeners), finishes its
/// appends and fsyncs, closes its clients with 1012 (service restart), and exits.
pub fn serve(config: Config, takeover: bool) -> anyhow::Result<()> {
    config.validate()?;
    let core_count = config.core_count();
    let cpus = allowed_cpus();
    check_cpus(core_count, &cpus)?;
    // Signals first: a relay taking over from this one may send SIGUSR1 as soon as this one
    // holds the data directory, and SIGUSR1's default action is to exit at once.
    let signals = Signals::install()?;
    let shard_count = core_count.min(crate::limits::SHARD_COUNT_MAX) as u16;
    // Waiting for the port or for a relay handing over can take seconds: a signal ends it.
    let (mut data_dir, listeners, prepared) = match claim(&config, shard_count, takeover, &signals.stop) {
        Ok(claimed) => claimed,
        Err(_) if signals.stop.load(Ordering::SeqCst) => {
            eprintln!("ringrelay: stopped during startup");
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    let open_files = raise_open_files_limit();
    let config = Arc::new(config);
    let mut supervisor = Supervisor::new(core_count);
    // The lock is let go of by the last core to close its shards (or here, at the end).
    let lock = spawn_cores(&config, &mut data_dir, listeners, prepared, &cpus, &signals, &mut supervisor)?;
    match supervisor.until_serving(&signals.stop) {
        Ok(Started::Serving) => {}
        Ok(Started::Stopped) => {
            eprintln!("ringrelay: stopped during startup");
            return Ok(());
        }
        Err(reason) => return Err(anyhow::anyhow!(reason)),
    }
    let on: Vec<String> = cpus.iter().take(core_count).map(usize::to_string).collect();
    eprintln!(
        "ringrelay: listening on {} with {core_count} core{} on CPU{} {}, data in {}, up to {open_files} open files",
        config.listen,
        if core_count == 1 { "" } else { "s" },
        if on.len() == 1 { "" } else { "s" },
        on.join(","),
        config.data_dir.display()
    );
    let stopped = supervisor.until_stopped(&signals.stop, SHUTDOWN_DEADLINE).map_err(|reason| anyhow::anyhow!(reason));
    lock.release();
    stopped?;
    eprintln!("ringrelay: stopped");
    Ok(())
}

/// Two executors on one CPU can hang at startup, in glommio's channel-mesh join (seen in ~1
/// start of 8, `taskset -c 1 ringrelay serve --cores 2`), and would share the CPU anyway.
fn check_cpus(core_count: usize, cpus: &[usize]) -> anyhow::Result<()> {
    if !cpus.is_empty() && core_count > cpus.len() {
        anyhow::bail!(
            "{core_count} cores asked for, but this process may run on {} CPU{} ({}): lower `cores` \
             (or --cores), or widen the CPUs it is given (taskset, systemd CPUAffinity=, the cpuset)",
            cpus.len(),
            if cpus.len() == 1 { "" } else { "s" },
            cpus.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
        );
    }
    Ok(())
}

/// The flags the signal handlers set.
struct Signals {
    /// SIGTERM, SIGINT, SIGUSR1: stop.
    stop: Arc<AtomicBool>,
    /// SIGUSR1: the stop is a handover, and clients are told to reconnect (1012).
    handover: Arc<AtomicBool>,
    /// SIGHUP: reload the policy lists.
    reload: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        let signals = Signals {
            stop: Arc::new(AtomicBool::new(false)),
            handover: Arc::new(AtomicBool::new(false)),
            reload: Arc::new(AtomicBool::new(false)),
        };
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
        let flags = [
            (SIGTERM, &signals.stop),
            (SIGINT, &signals.stop),
            (SIGUSR1, &signals.stop),
            (SIGUSR1, &signals.handover),
            (SIGHUP, &signals.reload),
        ];
        for (signal, flag) in flags {
            signal_hook::flag::register(signal, flag.clone()).context("installing signal handlers")?;
        }
        Ok(signals)
    }
}

/// Start one executor per listener, each watched by `supervisor`. The lists file must parse
/// here; later, on SIGHUP, a bad one only logs an error.
/// This relay's key toward other relays: `peering.key_file`, or one made now (with
/// `[[peers]]`, its pubkey logged for the peers' `peering.pubkeys`).
fn peering_identity(config: &Config) -> anyhow::Result<Arc<Signer>> {
    let signer = match &config.peering.key_file {
        Some(path) => Signer::from_file(path)?,
        None => Signer::ephemeral(),
    };
    if !config.peers.is_empty() {
        match config.peering.key_file {
            Some(_) => tracing::info!(pubkey = signer.pubkey_hex(), peers = config.peers.len(), "peering"),
            None => tracing::warn!(
                pubkey = signer.pubkey_hex(),
                "no peering.key_file: this relay meets its peers under a key made at start"
            ),
        }
    }
    Ok(Arc::new(signer))
}

fn spawn_cores(
    config: &Arc<Config>,
    data_dir: &mut DataDir,
    listeners: Vec<std::net::TcpListener>,
    mut prepared: HashMap<ShardId, Prepared>,
    cpus: &[usize],
    signals: &Signals,
    supervisor: &mut Supervisor,
) -> anyhow::Result<crate::store::datadir::HeldLock> {
    let core_count = listeners.len();
    let lock = data_dir.take_lock();
    let closing = Arc::new(ClosingStores { lock: lock.clone(), open: AtomicUsize::new(core_count) });
    let (lists_file, lists) = lists::ListsFile::open(config.data_dir.clone())?;
    let shard_config = shard_config(config, data_dir.shard_count)?;
    let ip_slots = IpSlots::default();
    let mesh = MeshBuilder::<CoreMsg, _>::full(core_count, MESH_CHANNEL_SIZE);
    let connector = Connector::new(Some(peering_identity(config)?), config.peering.ca_file.as_deref())?;
    for (index, listener) in listeners.into_iter().enumerate() {
        let placement = cpus.get(index).map_or(Placement::Unbound, |&cpu| Placement::Fixed(cpu));
        let start = CoreStart {
            listener: Some(listener),
            handover: signals.handover.clone(),
            closing: closing.clone(),
            reload: signals.reload.clone(),
            lists: (lists_file.clone(), lists.clone()),
            config: config.clone(),
            router: data_dir.router(),
            shard_dirs: ShardId::all(data_dir.shard_count).map(|s| (s, data_dir.shard_dir(s))).collect(),
            prepared: ShardId::all(data_dir.shard_count)
                .filter(|&shard| usize::from(shard) % core_count == index)
                .filter_map(|shard| prepared.remove(&shard).map(|p| (shard, p)))
                .collect(),
            shard_config: shard_config.clone(),
            stop: signals.stop.clone(),
            startup: supervisor.link(index),
            ip_slots: ip_slots.clone(),
            connector: connector.clone(),
        };
        let joining = mesh.clone();
        let spawned = LocalExecutorBuilder::new(placement)
            .name(&format!("core-{index}"))
            .io_memory(crate::limits::IO_MEMORY_SIZE)
            .spawn(move || {
                // Every line logged on this core's thread carries `core=N`, at no cost on the
                // hot path (lines about a connection or a shard also name it).
                let span = tracing::info_span!("core", core = index);
                async move {
                    let _entered = span.entered();
                    run_core(start, joining).await
                }
            });
        match spawned {
            Ok(handle) => supervisor.watch(index, handle),
            // The cores started so far wait in the mesh join for this one, having opened
            // nothing: the process can leave them.
            Err(error) => {
                signals.stop.store(true, Ordering::SeqCst);
                anyhow::bail!(
                    "cannot start the executor for core {index}: {error}\n\
                     glommio locks memory for io_uring: raise `ulimit -l` (or LimitMEMLOCK) to at least {} KiB; see tuning/",
                    core_count * 4096
                );
            }
        }
    }
    Ok(lock)
}

/// Take the data directory and the listening address: beside a running relay that hands
/// over to this one (`takeover`), or alone. Gives up early once `stop` is set.
fn claim(
    config: &Config,
    shard_count: u16,
    takeover: bool,
    stop: &AtomicBool,
) -> anyhow::Result<(DataDir, Vec<std::net::TcpListener>, HashMap<ShardId, Prepared>)> {
    let core_count = config.core_count();
    if takeover {
        // Open the store beside the running relay first (nothing changed on disk), so that
        // once it lets go only what it wrote since is left to load.
        let prepared = prepare_shards(config);
        // Then join its listeners (SO_REUSEPORT), so that connections keep being accepted
        // into a queue while it hands over; then ask it to, and wait for its lock.
        let listeners = bind_listeners(config.listen, core_count)?;
        if let Some(pid) = crate::store::datadir::lock_holder(&config.data_dir) {
            tracing::info!(pid, "taking over from the running relay");
            eprintln!("ringrelay: taking over from pid {pid}; waiting for it to hand over the data directory");
            // SAFETY: sending a signal; the pid was read from the lock file of a live process.
            unsafe { libc::kill(pid, libc::SIGUSR1) };
        }
        let data_dir = DataDir::open_or_create_waiting(&config.data_dir, shard_count, TAKEOVER_WAIT, stop)
            .with_context(|| format!("opening data directory {}", config.data_dir.display()))?;
        Ok((data_dir, listeners, prepared))
    } else {
        let data_dir = DataDir::open_or_create(&config.data_dir, shard_count)
            .with_context(|| format!("opening data directory {}", config.data_dir.display()))?;
        // The cores bind with SO_REUSEPORT, which would let a second relay share the port and
        // split the traffic; a plain bind first makes "port in use" an error.
        drop(bind_when_free(config.listen, stop).with_context(|| format!("cannot listen on {}", config.listen))?);
        if let Some(address) = config.metrics_listen {
            drop(
                bind_when_free(address, stop)
                    .with_context(|| format!("cannot listen on {address} (metrics_listen)"))?,
            );
        }
        Ok((data_dir, bind_listeners(config.listen, core_count)?, HashMap::new()))
    }
}

/// The shards' settings from the config, for a store of `shard_count` shards.
fn shard_config(config: &Config, shard_count: u16) -> anyhow::Result<ShardConfig> {
    let key = config.key_file.as_deref().map(crate::store::crypto::SegmentKey::from_file).transpose()?;
    let compaction = CompactionPolicy {
        dead_percent_min: config.compaction_dead_percent,
        shard_bytes_max: config.retention.max_store_bytes / u64::from(shard_count),
    };
    Ok(ShardConfig::new(config.segment_size, key)
        .with_reserve(config.storage_reserve_bytes)
        .with_compaction(compaction))
}

/// Every shard of an existing store opened beside the relay that holds it
/// (`ShardState::prepare`), one thread a shard; a shard that cannot be is left out (it is
/// opened as usual once the lock is ours, which says what is wrong).
fn prepare_shards(config: &Config) -> HashMap<ShardId, Prepared> {
    let Some(shard_dirs) = DataDir::peek_shard_dirs(&config.data_dir) else { return HashMap::new() };
    let Ok(shard_config) = shard_config(config, shard_dirs.len() as u16) else { return HashMap::new() };
    let started = std::time::Instant::now();
    let prepared: HashMap<ShardId, Prepared> = std::thread::scope(|scope| {
        let threads: Vec<_> = shard_dirs
            .iter()
            .map(|(shard, dir)| {
                let config = shard_config.clone();
                scope.spawn(move || (*shard, ShardState::prepare(dir, *shard, config)))
            })
            .collect();
        threads.into_iter().filter_map(|thread| thread.join().ok()).filter_map(|(shard, prepared)| {
            prepared.map_err(|error| tracing::warn!(shard = shard.0, %error, "cannot prepare the shard: it is opened once the store is ours")).ok().map(|p| (shard, p))
        }).collect()
    });
    tracing::info!(
        shards = prepared.len(),
        ms = started.elapsed().as_millis() as u64,
        "shards prepared beside the running relay"
    );
    prepared
}

/// The data directory's lock, and the cores whose shards are still open: the last core to
/// close its shards lets go of the lock, so that a relay taking over opens the store while
/// this one is still closing its connections.
struct ClosingStores {
    lock: crate::store::datadir::HeldLock,
    open: AtomicUsize,
}

impl ClosingStores {
    fn closed_one(&self) {
        if self.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.lock.release();
        }
    }
}

struct CoreStart {
    /// Counts this core's shards closed, for the lock's release.
    closing: Arc<ClosingStores>,
    /// This core's listener, bound before the cores start (see `bind_listeners`); taken
    /// by the core once its shards are open.
    listener: Option<std::net::TcpListener>,
    /// Set by SIGUSR1: the stop is a handover, and clients are told to reconnect (1012).
    handover: Arc<AtomicBool>,
    /// Set by SIGHUP: reload the policy lists (core 0 watches it).
    reload: Arc<AtomicBool>,
    /// The lists file's writer, and the lists read at start.
    lists: (Arc<lists::ListsFile>, lists::Versioned),
    config: Arc<Config>,
    router: Router,
    shard_dirs: Vec<(ShardId, std::path::PathBuf)>,
    /// This core's shards as prepared before the relay it takes over from let go.
    prepared: HashMap<ShardId, Prepared>,
    shard_config: ShardConfig,
    stop: Arc<AtomicBool>,
    /// Where the core reports its startup phases.
    startup: CoreLink,
    ip_slots: IpSlots,
    /// How this relay reaches others: its key toward them (`peering.key_file`, or one made at
    /// start) and the TLS roots it trusts (`peering.ca_file` besides the Mozilla roots).
    connector: Connector,
}

async fn run_core(start: CoreStart, mesh: MeshBuilder<CoreMsg, glommio::channels::channel_mesh::Full>) {
    let (senders, receivers) = match mesh.join().await {
        Ok(joined) => joined,
        Err(error) => {
            start.startup.failed(format!("joining the core mesh failed: {error}"));
            return;
        }
    };
    start.startup.reached(Phase::Joined);
    // The core's own tasks (group commits, ack pipelines, mesh receivers and pumps, accept)
    // run in a task queue of their own, beside the sessions' and the queries', so each hop
    // of an event on its way to its OK gets its turn however busy clients keep the other
    // two. It has no latency requirement: a latency queue's I/O completion preempts the
    // running queue, and doing that for every commit cost 9% of fan-out per core; its
    // completions are seen at the next slice instead (250 µs while scans run). (Created
    // after the mesh join; see `SESSION_LATENCY`.)
    let core_queue = glommio::executor().create_task_queue(Shares::default(), Latency::NotImportant, "core");
    match glommio::spawn_local_into(run_joined(start, senders, receivers), core_queue) {
        Ok(task) => task.await,
        Err(error) => tracing::error!(%error, "cannot start the core's task queue"),
    }
}

async fn run_joined(
    mut start: CoreStart,
    senders: glommio::channels::channel_mesh::Senders<CoreMsg>,
    mut receivers: glommio::channels::channel_mesh::Receivers<CoreMsg>,
) {
    let id = senders.peer_id();
    let Some((shards, listener, admin)) = open_core(&mut start, id, senders.nr_consumers()).await else { return };
    let stats = Rc::new(Stats::default());
    let mesh = Mesh::new(senders, stats.clone());
    // Scans get half the sessions' share of a busy core, in short slices: a flood of
    // expensive queries slows queries, not every client's publishing and live events.
    let queries =
        glommio::executor().create_task_queue(Shares::Static(QUERY_SHARES), Latency::Matters(QUERY_SLICE), "queries");
    let long_scans = glommio::executor().create_task_queue(
        Shares::Static(LONG_SCAN_SHARES),
        Latency::Matters(QUERY_SLICE),
        "long scans",
    );
    let queues = QueryQueues { queries, long_scans };
    let at_start = start.lists.1.clone();
    let (lists_file, lists) = start.lists;
    let plugin =
        (!start.config.write_plugin.command.is_empty()).then(|| plugin::Plugin::start(&start.config.write_plugin));
    let config = start.config.clone();
    let limits = &config.limits;
    let sessions = Sessions::new(
        SessionLimits::from_config(limits),
        limits.outbound_bytes_per_core_max,
        start.ip_slots,
        stats.clone(),
    );
    let storage = Storage::new(mesh.id, mesh.core_count, start.router, shards);
    let peers = peers::Peers::new(start.connector.clone());
    let identity = Some(peers.identity.pubkey());
    let gate = Gate::new(config.clone(), GateStart { lists_file, lists, plugin, identity }, stats.clone());
    let negentropy = &config.negentropy;
    let neg_opens = negentropy.items_per_core_max / negentropy.items_max;
    let queries = Queries::new(limits.queries_per_core_max, neg_opens, queues, stats.clone());
    let core = Core::new(config.clone(), mesh, stats, sessions, storage, gate, queries, peers);
    // Before anything is retired at start, so that the search indexes hear of it.
    let searches = search::open_all(&core.storage, &core.config);
    // Again, now that the shards are open: banned events are retired, and what outlived its
    // kind's time (`[retention]`), before anything is served (for at most `RETENTION_AT_START`:
    // a larger backlog is left to the sweep, within the startup deadline).
    core.apply_lists(at_start);
    let retiring = std::time::Instant::now();
    loop {
        let (retired, done) = core.storage.retire_by_age(&config.retention, crate::now_unix());
        core.stats.retention_retired.add(retired as u64);
        if done || retiring.elapsed() >= RETENTION_AT_START {
            break;
        }
        glommio::executor().yield_if_needed().await;
    }
    if id == 0 {
        core.gate.watch_reloads(start.reload.clone());
    }
    dispatch::start_tasks(&core);
    let feeding = search::feed_all(&core.storage, &core.config, searches);
    feeding.into_iter().for_each(|feed| core.own_task(core.queries.spawn_background(feed)));
    let receiving = receive_from_peers(&core, &mut receivers);
    let sessions =
        glommio::executor().create_task_queue(Shares::default(), Latency::Matters(SESSION_LATENCY), "sessions");
    // Gift wraps to pubkeys that vanished (NIP-62) are retired before anything is served.
    dispatch::apply_stored_vanish_requests(&core).await;
    start.startup.reached(Phase::Serving);
    peering::start(&core);
    let clients = accept_until_stopped(&core, &listener, &start.stop, sessions, conn::serve_connection);
    match &admin {
        Some(admin) => {
            let admins = accept_until_stopped(&core, admin, &start.stop, sessions, conn::serve_admin);
            futures_lite::future::zip(clients, admins).await;
        }
        None => clients.await,
    }
    drop(listener);
    drop(admin);
    stop_core(&core, start.handover.load(Ordering::SeqCst), &start.closing).await;
    receiving.iter().for_each(|task| task.cancel());
}

/// One receiver task per other core, for the life of the core; handlers never wait (see
/// `mesh`).
fn receive_from_peers(
    core: &Rc<Core>,
    receivers: &mut glommio::channels::channel_mesh::Receivers<CoreMsg>,
) -> Vec<glommio::task::JoinHandle<()>> {
    receivers
        .streams()
        .into_iter()
        .map(|(_, mut receiver)| {
            let core = core.clone();
            glommio::spawn_local(async move {
                while let Some(message) = receiver.next().await {
                    dispatch::handle_message(&core, message);
                }
            })
            .detach()
        })
        .collect()
}

/// A core's own startup: its shards opened and its listeners taken, then the wait until
/// every core has; `None` when it failed (reported) or startup was abandoned.
async fn open_core(
    start: &mut CoreStart,
    id: usize,
    core_count: usize,
) -> Option<(HashMap<ShardId, Shard>, TcpListener, Option<TcpListener>)> {
    let mut shards = HashMap::new();
    for (shard_id, dir) in &start.shard_dirs {
        if usize::from(*shard_id) % core_count != id {
            continue;
        }
        let started = std::time::Instant::now();
        let opened = match start.prepared.remove(shard_id) {
            Some(prepared) => prepared.finish(),
            None => ShardState::open(dir, *shard_id, start.shard_config.clone(), OpenMode::ReadWrite),
        };
        match opened {
            Ok(state) => {
                let figures = state.figures();
                let (segments, through_parts) = (figures.segments, figures.parts);
                let ms = started.elapsed().as_millis() as u64;
                tracing::info!(
                    shard = shard_id.0,
                    events = figures.records,
                    segments,
                    through_parts,
                    ms,
                    "shard opened: sealed segments mapped through their index parts, the others read"
                );
                shards.insert(*shard_id, Shard::start(state));
            }
            Err(error) => {
                start.startup.failed(format!("opening shard {shard_id}: {error}"));
                close_opened(shards).await;
                return None;
            }
        }
    }
    let listener = {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let listener = start.listener.take().expect("a core's listener is taken once");
        // SAFETY: a bound, listening TCP socket that this core now owns.
        unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) }
    };
    // The admin listener (`metrics_listen`) is core 0's alone.
    let admin = match start.config.metrics_listen.filter(|_| id == 0).map(listen).transpose() {
        Ok(admin) => admin,
        Err(error) => {
            start
                .startup
                .failed(format!("cannot listen on {:?} (metrics_listen): {error}", start.config.metrics_listen));
            close_opened(shards).await;
            return None;
        }
    };
    start.startup.reached(Phase::Opened);
    // Nothing after this asks a peer anything until every core is open: a peer that failed
    // (a damaged segment) would never answer.
    if !start.startup.every_core_opened().await {
        close_opened(shards).await;
        return None;
    }
    Some((shards, listener, admin))
}

/// A core's stop: in-flight appends finished (their OKs go out), every client told why
/// (1012 on a handover, else 1001) and its close frame written, the core's tasks stopped.
async fn stop_core(core: &Rc<Core>, handover: bool, closing: &ClosingStores) {
    if handover && core.id() == CoreId(0) {
        tracing::info!("handing over: stopped accepting; finishing appends, then closing every connection with 1012");
    }
    core.peers.stop();
    core.storage.close().await;
    closing.closed_one();
    // The search indexes next: a relay taking over opens them once this one lets go.
    core.storage.close_search();
    core.storage.acks_settled(Duration::from_secs(1)).await;
    if handover {
        core.sessions.close_all(CloseCode::Restart, "relay restarting; reconnect");
    } else {
        core.sessions.close_all(CloseCode::Away, "relay shutting down");
    }
    // A client that reads nothing gets its close frame dropped after CLOSE_FRAME_WAIT.
    core.sessions.ended(CLOSE_GRACE, CLOSE_FRAME_WAIT).await;
    core.stop_tasks();
}

/// Close the shards a core opened before its startup was abandoned.
async fn close_opened(shards: HashMap<ShardId, Shard>) {
    for (shard_id, shard) in shards {
        if let Err(error) = shard.close().await {
            tracing::warn!(shard = shard_id.0, %error, "closing a shard after an abandoned startup");
        }
    }
}
