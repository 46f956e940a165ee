//! The engine. The main thread builds and signs the workload, preloads the store for
//! `query`, then starts one glommio executor per generator thread. Each thread owns its
//! connections and records into its own histograms; once a second it hands what it measured
//! to the main thread, which prints progress, decides when the drain is over and builds the
//! report. Schedules are open loop: send `i` of a connection is due at t0 + phase + i/rate
//! whatever the replies, and latency is taken from that due time (coordinated omission
//! corrected, as wrk2 does), so a stalled relay shows up as latency, not as a lower rate.

mod abuse;
mod connect;
mod fanout;
mod known;
mod net;
mod publish;
mod query;
mod scenario;
mod shared;
mod worker;

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use glommio::{LocalExecutorBuilder, Placement};
use secp256k1::Keypair;

use crate::plan::Plan;
use crate::stats::{GeneratorReport, Latency, Metric, RelayCpu, Report, Sample, ScenarioReport};
use crate::workload::{self, status, EventTable, Follow};

use self::known::Known;
pub use self::net::Target;
pub use self::query::check_answer;
use self::query::preload_store;
use self::scenario::Scenario;
use self::shared::{Shared, Tick, IO_MEMORY_SIZE, PREEMPT_TIMER};
use self::worker::worker;

/// A generator thread busier than this during the measured phase is saturated.
const SATURATED_BUSY: f64 = 0.9;
/// Sends this late (p99) mean the generator did not keep its schedule.
const SEND_LAG_WARN_MS: f64 = 1.0;

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Many connections need many descriptors: take the hard limit.
fn raise_open_files_limit() {
    // SAFETY: plain get/setrlimit on a local struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Run a plan against a relay and report; `progress` prints a line per second on stderr.
pub fn run(target: &Target, plan: &Plan, progress: bool) -> anyhow::Result<Report> {
    plan.validate()?;
    raise_open_files_limit();
    // Every connection, preloading ones included, answers the relay's challenge (NIP-42).
    let mut target = target.clone();
    if plan.run.auth && target.auth.is_none() {
        target.auth = workload::authors(plan.run.seed, "auth", 1).pop();
    }
    let target = &target;
    let log = |text: String| {
        if progress {
            eprintln!("{text}");
        }
    };
    let now = unix_now();
    let started = Instant::now();
    let workload = Workload::sign(plan, now);
    log(format!("loadgen: signed {} events in {:.1}s", workload.table.events.len(), started.elapsed().as_secs_f64()));
    if let Some(q) = &plan.query {
        let preload = workload.preload.clone();
        let accepted = preload_store(target, &workload.table, preload.clone(), q.connections)?;
        log(format!("loadgen: preloaded {accepted} of {} events", preload.len()));
        anyhow::ensure!(accepted > 0, "the relay accepted none of the preloaded events; a query run needs a store");
    }
    let shared = Arc::new(workload.into_shared(target, plan, now));
    let setup_started = Instant::now();
    let (handles, tick_rx) = start_workers(&shared)?;
    log(format!(
        "loadgen: {} connections open in {:.1}s on {} threads; warm-up {:?}, then {:?} measured",
        count_connections(plan),
        setup_started.elapsed().as_secs_f64(),
        shared.threads,
        plan.run.warmup.0,
        plan.run.duration.0
    ));
    let (total, busy, relay_cpu) = follow_run(&shared, &tick_rx, &log)?;
    for handle in handles {
        handle.join().map_err(|e| anyhow::anyhow!("generator thread failed: {e}"))?;
    }
    let mut report = build_report(&shared, total, busy);
    report.relay_cpu = relay_cpu.finish()?;
    Ok(report)
}

/// The run's events, signed up front: publish, then fanout, then preload, in one table.
struct Workload {
    table: EventTable,
    publish: Range<usize>,
    fanout: Range<usize>,
    preload: Range<usize>,
    fanout_authors: Vec<Keypair>,
    history_authors: Vec<Keypair>,
}

impl Workload {
    fn sign(plan: &Plan, now: u64) -> Workload {
        let seed = plan.run.seed;
        let total_secs = (plan.run.warmup.0 + plan.run.duration.0).as_secs_f64();
        let publish_authors = workload::authors(seed, "publish", plan.run.authors);
        let mut drafts = Vec::new();
        if let Some(p) = &plan.publish {
            let count = (p.rate * total_secs).ceil() as usize + p.connections;
            let per_second = p.rate;
            drafts.extend(workload::publish_drafts(seed, count, &publish_authors, |i| {
                now + (i as f64 / per_second) as u64
            }));
        }
        let publish = 0..drafts.len();
        let fanout_author_count = plan.fanout.as_ref().map_or(1, |f| f.topics);
        let fanout_authors = workload::authors(seed, "fanout", fanout_author_count);
        if let Some(f) = &plan.fanout {
            let count = (f.rate * total_secs).ceil() as usize + f.publishers;
            let per_second = f.rate;
            drafts.extend(workload::fanout_drafts(seed, count, fanout_author_count, f.topics, |i| {
                now + (i as f64 / per_second) as u64
            }));
        }
        let fanout = publish.end..drafts.len();
        let history_count = plan.query.as_ref().map_or(1, |q| (q.preload / 100).clamp(1, plan.run.authors));
        let history_authors = workload::authors(seed, "history", history_count);
        if let Some(q) = &plan.query {
            drafts.extend(workload::preload_drafts(seed, q.preload, history_count, now));
        }
        let preload = fanout.end..drafts.len();
        let mut events = Vec::with_capacity(drafts.len());
        let pools = [&publish_authors, &fanout_authors, &history_authors];
        // Each pool signs with its own keys; split the drafts by range.
        let mut rest = drafts;
        for (range, keys) in [publish.clone(), fanout.clone(), preload.clone()].into_iter().zip(pools) {
            let tail = rest.split_off(range.len());
            events.extend(workload::sign_all(std::mem::replace(&mut rest, tail), keys));
        }
        Workload { table: EventTable::new(events), publish, fanout, preload, fanout_authors, history_authors }
    }

    /// What the generator threads share, once the preload's answers are in the table.
    fn into_shared(self, target: &Target, plan: &Plan, now: u64) -> Shared {
        let known = Known::build(&self.table, self.preload.clone());
        let fanout_author_count = self.fanout_authors.len();
        let follows = plan.fanout.as_ref().map_or_else(Vec::new, |f| {
            workload::follows(plan.run.seed, f.subscribers, f.topics, fanout_author_count, f.author_ratio, f.idle_ratio)
        });
        let topics = plan.fanout.as_ref().map_or(0, |f| f.topics);
        let mut topic_events = vec![Vec::new(); topics];
        let mut author_events = vec![Vec::new(); fanout_author_count];
        for (offset, index) in self.fanout.clone().enumerate() {
            let event = &self.table.events[index];
            if let Some(topic) = event.topic {
                topic_events[topic as usize].push(offset as u32);
            }
            author_events[event.author as usize].push(offset as u32);
        }
        let mut wanted_by = vec![0u32; self.fanout.len()];
        for follow in &follows {
            let list = match *follow {
                Follow::Topic(topic) => &topic_events[topic as usize],
                Follow::Author(author) => &author_events[author as usize],
                Follow::Nothing => continue,
            };
            for &offset in list {
                wanted_by[offset as usize] += 1;
            }
        }
        let (warmup, duration) = (plan.run.warmup.0, plan.run.duration.0);
        Shared {
            target: target.clone(),
            plan: plan.clone(),
            table: self.table,
            publish: self.publish,
            fanout: self.fanout,
            follows,
            fanout_authors: self.fanout_authors,
            history_authors: self.history_authors,
            wanted_by,
            topic_events,
            author_events,
            known,
            since: now.saturating_sub(1),
            threads: match plan.run.threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
            warmup_ns: warmup.as_nanos() as u64,
            end_ns: (warmup + duration).as_nanos() as u64,
            t0: OnceLock::new(),
            finish: AtomicBool::new(false),
        }
    }
}

/// One glommio executor per generator thread, each with its connections open; the ticks
/// they will send. A thread that fails its setup stops them all.
fn start_workers(shared: &Arc<Shared>) -> anyhow::Result<(Vec<glommio::ExecutorJoinHandle<()>>, mpsc::Receiver<Tick>)> {
    let threads = shared.threads;
    let (tick_tx, tick_rx) = mpsc::channel::<Tick>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut handles = Vec::new();
    for worker_index in 0..threads {
        let shared = shared.clone();
        let ticks = tick_tx.clone();
        let ready = ready_tx.clone();
        let handle = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("loadgen-{worker_index}"))
            .io_memory(IO_MEMORY_SIZE)
            .preempt_timer(PREEMPT_TIMER)
            .spawn(move || worker(shared, worker_index, ticks, ready))
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start generator thread {worker_index}: {e}\n\
                     glommio locks memory for io_uring: raise `ulimit -l` to at least {} KiB",
                    threads * 512
                )
            })?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut setup_error = None;
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                setup_error.get_or_insert(message);
            }
            Err(_) => {
                setup_error.get_or_insert_with(|| "a generator thread stopped during setup".to_owned());
                break;
            }
        }
    }
    if let Some(message) = setup_error {
        shared.finish.store(true, Ordering::Release);
        let _ = shared.t0.set(Instant::now());
        for handle in handles {
            let _ = handle.join();
        }
        bail!("setting up connections to {} failed: {message}", shared.target.url);
    }
    Ok((handles, tick_rx))
}

/// Start the clock, gather the threads' ticks (a progress line per complete second) until
/// the run and its drain are over, then their final counts: everything measured, each
/// thread's CPU share, and the relay's CPU probe.
fn follow_run(
    shared: &Shared,
    tick_rx: &mpsc::Receiver<Tick>,
    log: &impl Fn(String),
) -> anyhow::Result<(Sample, Vec<f64>, RelayCpuProbe)> {
    let threads = shared.threads;
    let (warmup, duration) = (shared.plan.run.warmup.0, shared.plan.run.duration.0);
    let t0 = Instant::now() + Duration::from_millis(20);
    let _ = shared.t0.set(t0);
    let end = t0 + warmup + duration;
    let drain_deadline = end + shared.plan.run.drain.0;
    let mut total = Sample::default();
    let mut interval = Sample::default();
    let mut interval_cpu = vec![Duration::ZERO; threads];
    let mut seen_second: Vec<u64> = vec![0; threads];
    let mut printed_second = 0;
    let measure_start = t0 + warmup;
    let mut relay_cpu = RelayCpuProbe::new(shared.target.pid);
    loop {
        match tick_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(tick) => {
                total.merge(&tick.sample);
                interval.merge(&tick.sample);
                interval_cpu[tick.worker] += tick.cpu;
                seen_second[tick.worker] = seen_second[tick.worker].max(tick.second);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let complete_second = seen_second.iter().copied().min().unwrap_or(0);
        if complete_second > printed_second && Instant::now() < end + Duration::from_millis(500) {
            let seconds = (complete_second - printed_second) as f64;
            printed_second = complete_second;
            log(progress_line(shared, complete_second, seconds, &interval, &total, &interval_cpu));
            interval = Sample::default();
            interval_cpu.iter_mut().for_each(|cpu| *cpu = Duration::ZERO);
        }
        let now = Instant::now();
        relay_cpu.observe(now, measure_start, end);
        if now >= end && (now >= drain_deadline || drained(shared, &total)) {
            break;
        }
    }
    shared.finish.store(true, Ordering::Release);
    let mut busy = vec![0.0; threads];
    let mut finals = 0;
    let final_deadline = Instant::now() + Duration::from_secs(30);
    while finals < threads {
        let left = final_deadline.saturating_duration_since(Instant::now());
        match tick_rx.recv_timeout(left) {
            Ok(tick) => {
                total.merge(&tick.sample);
                if let Some(share) = tick.final_busy {
                    busy[tick.worker] = share;
                    finals += 1;
                }
            }
            Err(_) => bail!("generator threads did not report their final counts"),
        }
    }
    Ok((total, busy, relay_cpu))
}

/// The relay's CPU time over the measured phase, read from /proc when its pid is known.
struct RelayCpuProbe {
    pid: Option<u32>,
    start: Option<(Instant, f64)>,
    end: Option<(Instant, f64)>,
}

impl RelayCpuProbe {
    fn new(pid: Option<u32>) -> RelayCpuProbe {
        RelayCpuProbe { pid, start: None, end: None }
    }

    /// Called every loop turn: takes a reading once the measured phase starts and once it ends.
    fn observe(&mut self, now: Instant, start: Instant, end: Instant) {
        let Some(pid) = self.pid else { return };
        if self.start.is_none() && now >= start {
            self.start = process_cpu_seconds(pid).map(|cpu| (now, cpu));
        } else if self.end.is_none() && now >= end {
            self.end = process_cpu_seconds(pid).map(|cpu| (now, cpu));
        }
    }

    fn finish(self) -> anyhow::Result<Option<RelayCpu>> {
        let Some(pid) = self.pid else { return Ok(None) };
        match (self.start, self.end) {
            (Some((t1, c1)), Some((t2, c2))) => {
                let cpu_seconds = c2 - c1;
                Ok(Some(RelayCpu { pid, cpu_seconds, cores_busy: cpu_seconds / (t2 - t1).as_secs_f64().max(1e-9) }))
            }
            _ => bail!("cannot read the CPU time of relay process {pid} from /proc"),
        }
    }
}

/// User + system CPU seconds of a process, from /proc/PID/stat.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields we want follow its closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / per_second)
}

/// Connections open once set up (the connect ramp's are opened during the run).
fn count_connections(plan: &Plan) -> usize {
    Scenario::of(plan).iter().filter(|s| !matches!(s, Scenario::Connect(_))).map(Scenario::connections).sum()
}

/// Every scenario has drained (see `Scenario::drained`).
fn drained(shared: &Shared, total: &Sample) -> bool {
    Scenario::of(&shared.plan).iter().all(|scenario| scenario.drained(shared, total))
}

fn progress_line(
    shared: &Shared,
    second: u64,
    seconds: f64,
    interval: &Sample,
    total: &Sample,
    cpu: &[Duration],
) -> String {
    let count = |key: &str| interval.count_of(key) as f64 / seconds;
    let p99 = |metric: Metric| Latency::of(&total.latency[metric as usize]).p99_ms;
    let phase = if second * 1_000_000_000 <= shared.warmup_ns { "warm-up " } else { "measured" };
    let mut parts = vec![format!("[{second:>4}s {phase}]")];
    parts.extend(Scenario::of(&shared.plan).iter().map(|scenario| scenario.progress(&count, &p99, total)));
    parts.push(format!("errors {}", total.error_total()));
    let busy: Vec<String> = cpu.iter().map(|cpu| format!("{:.0}%", 100.0 * cpu.as_secs_f64() / seconds)).collect();
    parts.push(format!("generator busy {}", busy.join(" ")));
    parts.join(" | ")
}

fn build_report(shared: &Shared, mut total: Sample, busy: Vec<f64>) -> Report {
    let plan = &shared.plan;
    let seconds = plan.run.duration.0.as_secs_f64();
    count_unanswered(shared, &mut total);
    let scenarios = scenario_sections(shared, &total, seconds);
    let operations: u64 = scenarios.iter().map(|s| s.offered).sum();
    let error_total = total.error_total();
    let generator = generator_section(&total, busy, shared.threads);
    Report {
        relay: shared.target.url.clone(),
        seed: plan.run.seed,
        warmup_s: plan.run.warmup.0.as_secs_f64(),
        duration_s: seconds,
        scenarios,
        errors: total.errors.clone(),
        error_ratio: if operations == 0 { 0.0 } else { error_total as f64 / operations as f64 },
        generator,
        relay_cpu: None,
        abuse: total.counts.iter().filter(|(k, _)| k.starts_with("abuse.")).map(|(k, v)| (k.to_string(), *v)).collect(),
        notices: total.counts.get("notices").copied().unwrap_or(0),
    }
}

/// Sends of the measured phase that never got an OK, as errors.
fn count_unanswered(shared: &Shared, total: &mut Sample) {
    for (range, name) in [(&shared.publish, "publish.no_reply"), (&shared.fanout, "fanout.no_reply")] {
        let unanswered = range
            .clone()
            .filter(|&i| shared.table.status(i) == status::SENT)
            .filter(|&i| shared.table.scheduled_ns(i).is_some_and(|d| shared.measured(d)))
            .count() as u64;
        if unanswered > 0 {
            *total.errors.entry(name.to_owned()).or_default() += unanswered;
        }
    }
}

/// One report section per scenario the plan ran, in the plan's order.
fn scenario_sections(shared: &Shared, total: &Sample, seconds: f64) -> Vec<ScenarioReport> {
    Scenario::of(&shared.plan).iter().filter_map(|scenario| scenario.section(shared, total, seconds)).collect()
}

/// The generator's view of itself: its threads' CPU shares, its send lag, and what they
/// say about the run's figures.
fn generator_section(total: &Sample, busy: Vec<f64>, threads: usize) -> GeneratorReport {
    let send_lag = Latency::of(&total.latency[Metric::SendLag as usize]);
    let mut warnings = Vec::new();
    for (thread, share) in busy.iter().enumerate() {
        if *share > SATURATED_BUSY {
            warnings.push(format!(
                "generator thread {thread} was {:.0}% busy: the generator may be the bottleneck; \
                 use more --threads or run it on another machine",
                share * 100.0
            ));
        }
    }
    if send_lag.p99_ms > SEND_LAG_WARN_MS {
        warnings.push(format!(
            "sends left {:.2} ms late at p99: the generator did not keep its schedule, latencies include that",
            send_lag.p99_ms
        ));
    }
    let saturated = !warnings.is_empty();
    if let Some(dropped) = total.errors.get("connect.dropped") {
        warnings.push(format!(
            "the relay closed {dropped} held connections: is there a per-address connection limit? \
             (ringrelay: [limits] connections_per_ip_max)"
        ));
    }
    GeneratorReport { threads, thread_busy: busy, send_lag, saturated, warnings }
}
