//! The cores' life as the main thread sees it: startup as a sequence of phases every core
//! reports on, with deadlines, and the wait for every core to stop.
//!
//! Each core reports, in order, [`Phase::Joined`] (the core mesh), [`Phase::Opened`] (its
//! shards and its own listeners: everything that can fail on one core alone), then waits at
//! a barrier until every core has opened before it asks its peers anything (the NIP-62
//! lookup), and reports [`Phase::Serving`]. A core that fails reports why and leaves; a core
//! that dies (a panic, an executor that could not be built) is seen when its thread ends.
//! Either way, or on SIGTERM or SIGINT, the main thread raises `abort`: the cores still at
//! the barrier leave it and close their shards, and the process exits within
//! [`ABORT_GRACE`] whatever a core is still doing (nothing has been acknowledged yet, so a
//! core cut short is no worse than `kill -9`). No thread waits for a peer that has died.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How long every core gets to join the core mesh once the executors are started.
pub const JOIN_DEADLINE: Duration = Duration::from_secs(10);
/// How long the cores get, once every shard is open, to do their cross-core startup work and
/// serve. Opening itself has no deadline: it takes what the store's size makes it take, and
/// the main thread logs its progress every [`PROGRESS_INTERVAL`].
pub const SERVING_DEADLINE: Duration = Duration::from_secs(30);
/// How long the other cores get to leave once startup is abandoned.
pub const ABORT_GRACE: Duration = Duration::from_secs(3);
/// How often a slow open is logged.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// How often the main thread looks at the stop flag, and a core at the barrier.
const POLL: Duration = Duration::from_millis(20);

/// A core's startup phases, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// It has joined the core mesh.
    Joined,
    /// Its shards are open and its listeners ready: nothing left that only it can fail.
    Opened,
    /// Its cross-core startup work is done and it accepts connections.
    Serving,
}

/// What the main thread hears about a core.
pub enum Report {
    Reached {
        core: usize,
        phase: Phase,
    },
    /// The core could not start, and why (a damaged segment names its file and offset).
    Failed {
        core: usize,
        reason: String,
    },
    /// The core's thread ended: `Err` when its executor failed or it panicked.
    Exited {
        core: usize,
        result: Result<(), String>,
    },
}

/// State shared by the main thread and every core during startup.
struct Shared {
    core_count: usize,
    opened: AtomicUsize,
    /// Startup is abandoned (a core failed, or a stop was asked for): leave it.
    abort: AtomicBool,
}

/// A core's side: it reports its phases and waits at the barrier.
#[derive(Clone)]
pub struct CoreLink {
    core: usize,
    shared: Arc<Shared>,
    reports: mpsc::Sender<Report>,
}

impl CoreLink {
    pub fn reached(&self, phase: Phase) {
        if phase == Phase::Opened {
            self.shared.opened.fetch_add(1, Ordering::SeqCst);
        }
        let _ = self.reports.send(Report::Reached { core: self.core, phase });
    }

    pub fn failed(&self, reason: String) {
        let _ = self.reports.send(Report::Failed { core: self.core, reason });
    }

    /// Wait until every core has opened (true), or until startup is abandoned (false).
    pub async fn every_core_opened(&self) -> bool {
        loop {
            if self.shared.abort.load(Ordering::SeqCst) {
                return false;
            }
            if self.shared.opened.load(Ordering::SeqCst) == self.shared.core_count {
                return true;
            }
            glommio::timer::sleep(POLL).await;
        }
    }

    pub fn abandoned(&self) -> bool {
        self.shared.abort.load(Ordering::SeqCst)
    }
}

/// How startup ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Started {
    /// Every core serves.
    Serving,
    /// A stop was asked for before every core served; the cores were told to leave.
    Stopped,
}

/// The main thread's side.
pub struct Supervisor {
    shared: Arc<Shared>,
    sender: mpsc::Sender<Report>,
    reports: mpsc::Receiver<Report>,
    phases: Vec<Option<Phase>>,
    running: Vec<bool>,
    /// [`JOIN_DEADLINE`], [`SERVING_DEADLINE`] and [`ABORT_GRACE`] (shorter in tests).
    deadlines: (Duration, Duration, Duration),
}

impl Supervisor {
    pub fn new(core_count: usize) -> Supervisor {
        let (sender, reports) = mpsc::channel();
        let shared = Arc::new(Shared { core_count, opened: AtomicUsize::new(0), abort: AtomicBool::new(false) });
        Supervisor {
            shared,
            sender,
            reports,
            phases: vec![None; core_count],
            running: vec![false; core_count],
            deadlines: (JOIN_DEADLINE, SERVING_DEADLINE, ABORT_GRACE),
        }
    }

    pub fn link(&self, core: usize) -> CoreLink {
        CoreLink { core, shared: self.shared.clone(), reports: self.sender.clone() }
    }

    /// Watch a started core's thread: its end becomes a [`Report::Exited`]. (A plain join has
    /// no timeout; a helper thread per core turns it into a message.)
    pub fn watch(&mut self, core: usize, handle: glommio::ExecutorJoinHandle<()>) {
        self.running[core] = true;
        let sender = self.sender.clone();
        std::thread::spawn(move || {
            let result = handle.join().map_err(|error| error.to_string());
            let _ = sender.send(Report::Exited { core, result });
        });
    }

    /// Wait until every core serves, a core fails, a deadline passes, or `stop` is set.
    /// On failure or stop, the cores are told to leave and given [`ABORT_GRACE`].
    pub fn until_serving(&mut self, stop: &AtomicBool) -> Result<Started, String> {
        let outcome = self.follow_startup(stop);
        if outcome != Ok(Started::Serving) {
            self.abandon(stop);
        }
        outcome
    }

    fn follow_startup(&mut self, stop: &AtomicBool) -> Result<Started, String> {
        let started = Instant::now();
        let (join_deadline, serving_deadline, _) = self.deadlines;
        let mut opened_at = None;
        let mut progress_at = started + PROGRESS_INTERVAL;
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(Started::Stopped);
            }
            if self.phases.iter().all(|phase| *phase == Some(Phase::Serving)) {
                return Ok(Started::Serving);
            }
            let now = Instant::now();
            if now > started + join_deadline && self.phases.iter().any(Option::is_none) {
                return Err(format!(
                    "core{} {} did not join the core mesh within {join_deadline:?}",
                    plural(self.cores_before(Phase::Joined).len()),
                    list(&self.cores_before(Phase::Joined))
                ));
            }
            if opened_at.is_none() && self.phases.iter().all(|phase| *phase >= Some(Phase::Opened)) {
                opened_at = Some(now);
            }
            if opened_at.is_some_and(|at| now > at + serving_deadline) {
                return Err(format!(
                    "core{} {} did not finish starting within {serving_deadline:?} of every shard being open",
                    plural(self.cores_before(Phase::Serving).len()),
                    list(&self.cores_before(Phase::Serving))
                ));
            }
            if opened_at.is_none() && now > progress_at {
                progress_at = now + PROGRESS_INTERVAL;
                let opening = self.cores_before(Phase::Opened);
                tracing::info!(cores = %list(&opening), elapsed_s = started.elapsed().as_secs(), "still opening shards");
            }
            match self.reports.recv_timeout(POLL) {
                Ok(Report::Reached { core, phase }) => self.phases[core] = Some(phase),
                Ok(Report::Failed { core, reason }) => return Err(format!("core {core} could not start: {reason}")),
                Ok(Report::Exited { core, result }) => {
                    self.running[core] = false;
                    return Err(exit_reason(core, result, self.running.len()));
                }
                Err(_) => {}
            }
        }
    }

    /// Tell every core to leave startup, and wait up to [`ABORT_GRACE`] for them to.
    fn abandon(&mut self, stop: &AtomicBool) {
        self.shared.abort.store(true, Ordering::SeqCst);
        stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + self.deadlines.2;
        while self.running.contains(&true) && Instant::now() < deadline {
            if let Ok(Report::Exited { core, .. }) = self.reports.recv_timeout(POLL) {
                self.running[core] = false;
            }
        }
        let stuck = self.still_running();
        if !stuck.is_empty() {
            tracing::warn!(cores = %list(&stuck), "cores still starting; exiting without them");
        }
    }

    /// Wait for every core: without limit while the relay serves, then for at most
    /// `deadline` once `stop` is set. A core that has not finished by then is left behind
    /// (the process exits with it) and named. A core that fails stops the others.
    pub fn until_stopped(&mut self, stop: &AtomicBool, deadline: Duration) -> Result<(), String> {
        let mut until = None;
        let mut failure = None;
        while self.running.contains(&true) {
            if until.is_none() && stop.load(Ordering::SeqCst) {
                until = Some(Instant::now() + deadline);
            }
            if until.is_some_and(|until| Instant::now() >= until) {
                let stuck = self.still_running();
                tracing::error!(cores = %list(&stuck), "cores did not stop within {deadline:?}; exiting without them");
                return Err(format!("cores {} did not stop within {deadline:?}", list(&stuck)));
            }
            match self.reports.recv_timeout(POLL) {
                Ok(Report::Exited { core, result }) => {
                    self.running[core] = false;
                    if result.is_err() {
                        stop.store(true, Ordering::SeqCst);
                        failure.get_or_insert(exit_reason(core, result, self.running.len()));
                    }
                }
                Ok(Report::Failed { core, reason }) => {
                    stop.store(true, Ordering::SeqCst);
                    failure.get_or_insert(format!("core {core} failed: {reason}"));
                }
                Ok(Report::Reached { .. }) | Err(_) => {}
            }
        }
        failure.map_or(Ok(()), Err)
    }

    fn cores_before(&self, phase: Phase) -> Vec<usize> {
        (0..self.phases.len()).filter(|&core| self.phases[core] < Some(phase)).collect()
    }

    fn still_running(&self) -> Vec<usize> {
        (0..self.running.len()).filter(|&core| self.running[core]).collect()
    }
}

/// Why a core's thread ended, for the operator.
fn exit_reason(core: usize, result: Result<(), String>, core_count: usize) -> String {
    match result {
        Ok(()) => format!("core {core} stopped during startup"),
        Err(error) => format!(
            "core {core} failed: {error}\n\
             glommio locks memory for io_uring: if this is a memory error, raise `ulimit -l` (or \
             LimitMEMLOCK) to at least {} KiB; see tuning/",
            core_count * 4096
        ),
    }
}

fn plural(count: usize) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

fn list(cores: &[usize]) -> String {
    cores.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A supervisor of `cores` whose threads count as running, and a link per core.
    fn watching(cores: usize) -> (Supervisor, Vec<CoreLink>) {
        let mut supervisor = Supervisor::new(cores);
        supervisor.running = vec![true; cores];
        supervisor.deadlines = (Duration::from_millis(200), Duration::from_millis(200), Duration::from_millis(300));
        let links = (0..cores).map(|core| supervisor.link(core)).collect();
        (supervisor, links)
    }

    fn reach(link: &CoreLink, phases: &[Phase]) {
        phases.iter().for_each(|&phase| link.reached(phase));
    }

    const ALL: [Phase; 3] = [Phase::Joined, Phase::Opened, Phase::Serving];

    #[test]
    fn every_core_serving_is_a_start() {
        let (mut supervisor, links) = watching(2);
        links.iter().for_each(|link| reach(link, &ALL));
        assert_eq!(supervisor.until_serving(&AtomicBool::new(false)), Ok(Started::Serving));
        assert!(!links[0].abandoned());
    }

    #[test]
    fn a_failed_core_abandons_startup_for_all_with_its_reason() {
        let (mut supervisor, links) = watching(2);
        reach(&links[0], &[Phase::Joined, Phase::Opened]);
        reach(&links[1], &[Phase::Joined]);
        links[1].failed("opening shard 1: seg-1.rr: corrupt record at offset 4096".into());
        // Both threads end once told to (here: at once).
        for core in 0..2 {
            supervisor.sender.send(Report::Exited { core, result: Ok(()) }).unwrap();
        }
        let stop = AtomicBool::new(false);
        let outcome = supervisor.until_serving(&stop);
        assert_eq!(
            outcome,
            Err("core 1 could not start: opening shard 1: seg-1.rr: corrupt record at offset 4096".into())
        );
        assert!(links[0].abandoned() && stop.load(Ordering::SeqCst));
    }

    #[test]
    fn a_core_whose_thread_ends_before_serving_is_a_failure() {
        let (mut supervisor, links) = watching(2);
        reach(&links[0], &ALL);
        supervisor.sender.send(Report::Exited { core: 1, result: Err("Thread panicked".into()) }).unwrap();
        let outcome = supervisor.until_serving(&AtomicBool::new(false)).unwrap_err();
        assert!(outcome.starts_with("core 1 failed: Thread panicked"), "{outcome}");
        assert!(links[0].abandoned());
    }

    #[test]
    fn a_signal_during_startup_stops_it() {
        let (mut supervisor, links) = watching(2);
        reach(&links[0], &[Phase::Joined, Phase::Opened]);
        let stop = AtomicBool::new(true);
        let started = Instant::now();
        assert_eq!(supervisor.until_serving(&stop), Ok(Started::Stopped));
        assert!(links[1].abandoned());
        // The threads never ended: the grace is all it waited.
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }

    #[test]
    fn deadlines_name_the_cores_that_missed_them() {
        let (mut supervisor, links) = watching(3);
        reach(&links[0], &ALL);
        reach(&links[2], &[Phase::Joined]);
        let outcome = supervisor.until_serving(&AtomicBool::new(false)).unwrap_err();
        assert_eq!(outcome, "core 1 did not join the core mesh within 200ms");

        let (mut supervisor, links) = watching(2);
        reach(&links[0], &ALL);
        reach(&links[1], &[Phase::Joined, Phase::Opened]);
        let outcome = supervisor.until_serving(&AtomicBool::new(false)).unwrap_err();
        assert_eq!(outcome, "core 1 did not finish starting within 200ms of every shard being open");
    }

    #[test]
    fn a_slow_open_has_no_deadline() {
        let (mut supervisor, links) = watching(2);
        reach(&links[0], &[Phase::Joined, Phase::Opened]);
        reach(&links[1], &[Phase::Joined]);
        let late = links[1].clone();
        let opener = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            reach(&late, &[Phase::Opened, Phase::Serving]);
        });
        let first = links[0].clone();
        let other = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(550));
            first.reached(Phase::Serving);
        });
        assert_eq!(supervisor.until_serving(&AtomicBool::new(false)), Ok(Started::Serving));
        opener.join().unwrap();
        other.join().unwrap();
    }
}
