//! `Queries`: where one core's queries and scans run. Its query slots (given in turn to
//! addresses, then connections), the task queues queries and long scans run in, and the
//! scans it runs for other cores' gathers, which the asker may cancel.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;

use glommio::sync::{Semaphore, StaticPermit};
use glommio::task::JoinHandle;
use glommio::{Task, TaskQueueHandle};

use super::mesh::RequestId;
use super::slots::{Asker, FairSlots, Slot};
use super::stats::Stats;
use super::turns::{ScanTurn, Turns};

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

pub struct Queries {
    /// Queries this core's connections may run at once (`queries_per_core_max`).
    slots: Rc<FairSlots>,
    queues: QueryQueues,
    /// Scans run for other cores' gathers (the handle is set once the task is spawned;
    /// glommio may run it to completion first).
    remote: RefCell<HashMap<RequestId, Option<JoinHandle<()>>>>,
    /// Which running scan takes the next step.
    turns: Rc<Turns>,
    /// NIP-77 sets being gathered at once: each may hold `negentropy.items_max` events until
    /// it is counted, so at most `items_per_core_max / items_max` gather; the rest wait.
    neg_opens: Rc<Semaphore>,
    stats: Rc<Stats>,
}

impl Queries {
    pub fn new(slots: usize, neg_opens: usize, queues: QueryQueues, stats: Rc<Stats>) -> Queries {
        Queries {
            slots: FairSlots::new(slots),
            queues,
            remote: RefCell::new(HashMap::new()),
            turns: Turns::new(),
            neg_opens: Rc::new(Semaphore::new(neg_opens.max(1) as u64)),
            stats,
        }
    }

    /// A turn to gather a NIP-77 sync's set, waited for while as many are gathering as the
    /// core's budget allows; `None` once the core is stopping.
    pub async fn neg_open_turn(&self) -> Option<StaticPermit> {
        self.neg_opens.acquire_static_permit(1).await.ok()
    }

    /// A scan starting now: its steps wait for their turn (see `turns`).
    pub fn start_scan(&self) -> Rc<ScanTurn> {
        Rc::new(self.turns.start())
    }

    /// Run `work` in the queries' queue; the handle cancels it.
    pub fn spawn(&self, work: impl Future<Output = ()> + 'static) -> JoinHandle<()> {
        spawn_into(work, self.queues.queries)
    }

    /// Run background work that reads the shards (feeding the search indexes) in the long
    /// scans' queue, with its small share of a busy core; the handle cancels it.
    pub fn spawn_background(&self, work: impl Future<Output = ()> + 'static) -> JoinHandle<()> {
        spawn_into(work, self.queues.long_scans)
    }

    /// Run the rest of a long scan in the long scans' queue; dropping the task cancels it.
    pub fn spawn_long<T: 'static>(&self, work: impl Future<Output = T> + 'static) -> Task<T> {
        self.stats.long_scans.inc();
        glommio::spawn_local_into(work, self.queues.long_scans).expect("the long scans task queue exists")
    }

    /// One of the core's query slots for `asker`, waited for in its address's and its own
    /// turn; counted in `queries_waiting` meanwhile.
    pub async fn slot(&self, asker: Asker) -> Slot {
        // Counted while waiting, and no longer once the wait ends or is cancelled.
        struct Waiting<'a>(&'a Stats);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.queries_waiting.sub(1);
            }
        }
        self.stats.queries_waiting.add(1);
        let _waiting = Waiting(&self.stats);
        self.slots.acquire(asker).await
    }

    /// Run `work`, another core's scan, as a task `request`'s asker may cancel.
    pub fn start_remote(&self, request: RequestId, work: impl Future<Output = ()> + 'static) {
        self.stats.remote_scans.add(1);
        self.remote.borrow_mut().insert(request, None);
        let task = self.spawn(work);
        if let Some(slot) = self.remote.borrow_mut().get_mut(&request) {
            *slot = Some(task);
        }
    }

    /// Another core's scan is done: whether its answer is still wanted.
    pub fn finish_remote(&self, request: RequestId) -> bool {
        let wanted = self.remote.borrow_mut().remove(&request).is_some();
        if wanted {
            self.stats.remote_scans.sub(1);
        }
        wanted
    }

    /// The asker of `request` no longer wants it: cancel its scan.
    pub fn cancel_remote(&self, request: RequestId) {
        // Out of the map before the task is touched: no borrow lives through the block.
        let removed = self.remote.borrow_mut().remove(&request);
        if let Some(task) = removed {
            if let Some(task) = task {
                task.cancel();
            }
            self.stats.remote_scans.sub(1);
            self.stats.queries_cancelled.inc();
        }
    }
}

/// Run `work` in `queue`; the caller owns it through the handle (which cancels it).
fn spawn_into(work: impl Future<Output = ()> + 'static, queue: TaskQueueHandle) -> JoinHandle<()> {
    glommio::spawn_local_into(work, queue).expect("the core's task queues exist").detach()
}
