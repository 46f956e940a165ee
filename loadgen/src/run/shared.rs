//! What the generator threads share (the workload, the schedule's clock, the finish flag)
//! and what each reports to the main thread: plain data that the scenarios, the worker and
//! the engine all read, so none of them imports another for it.

use std::cell::RefCell;
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use secp256k1::Keypair;

use super::known::Known;
use super::net::Target;
use crate::plan::Plan;
use crate::stats::Sample;
use crate::workload::{status, EventTable, Follow};

/// io_uring memory locked per generator executor; the generator does no file I/O.
pub(super) const IO_MEMORY_SIZE: usize = 256 * 1024;

/// The longest a generator thread runs one task queue while another has work: the
/// abusers' queue (or a burst of measured clients) gives the measured clients their turn
/// at least this often. glommio's default, 100 ms, let a flooder whose sends the kernel
/// took at once hold the thread that long, and its lateness showed in every measured p99.
pub(super) const PREEMPT_TIMER: std::time::Duration = std::time::Duration::from_micros(500);

/// CPU time (user + system) of the calling thread.
pub(super) fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass; RUSAGE_THREAD is the calling thread.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// Everything the generator threads share, read-only but for atomics.
pub(super) struct Shared {
    pub(super) target: Target,
    pub(super) plan: Plan,
    pub(super) table: EventTable,
    pub(super) publish: Range<usize>,
    pub(super) fanout: Range<usize>,
    pub(super) follows: Vec<Follow>,
    pub(super) fanout_authors: Vec<Keypair>,
    pub(super) history_authors: Vec<Keypair>,
    /// For each fanout event (by offset in `fanout`), how many subscribers want it.
    pub(super) wanted_by: Vec<u32>,
    /// Fanout events (offsets) per topic and per author, for the missing-delivery count.
    pub(super) topic_events: Vec<Vec<u32>>,
    pub(super) author_events: Vec<Vec<u32>>,
    pub(super) known: Known,
    pub(super) since: u64,
    pub(super) threads: usize,
    pub(super) warmup_ns: u64,
    pub(super) end_ns: u64,
    pub(super) t0: OnceLock<Instant>,
    pub(super) finish: AtomicBool,
}

impl Shared {
    pub(super) fn t0(&self) -> Instant {
        *self.t0.get().expect("started")
    }

    pub(super) fn elapsed_ns(&self) -> u64 {
        self.t0().elapsed().as_nanos() as u64
    }

    pub(super) fn measured(&self, due_ns: u64) -> bool {
        (self.warmup_ns..self.end_ns).contains(&due_ns)
    }

    pub(super) fn finishing(&self) -> bool {
        self.finish.load(Ordering::Acquire)
    }

    /// Sleep until `due_ns` after t0.
    pub(super) async fn sleep_until(&self, due_ns: u64) {
        let now = self.elapsed_ns();
        if due_ns > now {
            glommio::timer::sleep(Duration::from_nanos(due_ns - now)).await;
        }
    }

    /// Deliveries the relay owes for fanout events it accepted; with `measured_only`, only
    /// for events due in the measured phase.
    pub(super) fn expected_deliveries(&self, measured_only: bool) -> u64 {
        self.fanout
            .clone()
            .zip(&self.wanted_by)
            .filter(|(index, _)| self.table.status(*index) == status::ACCEPTED)
            .filter(|(index, _)| !measured_only || self.table.scheduled_ns(*index).is_some_and(|d| self.measured(d)))
            .map(|(_, wanted)| u64::from(*wanted))
            .sum()
    }
}

/// A generator thread's report to the main thread.
pub(super) struct Tick {
    pub(super) worker: usize,
    /// Which second after t0 this closes (0 for the final tick).
    pub(super) second: u64,
    pub(super) sample: Sample,
    pub(super) cpu: Duration,
    /// The thread's CPU share over the measured phase, on its final tick.
    pub(super) final_busy: Option<f64>,
}

/// A connection lost before the run finished is an error.
pub(super) fn lost(shared: &Shared, stats: &Rc<RefCell<Sample>>) {
    if !shared.finishing() {
        stats.borrow_mut().error("connection.lost");
    }
}
