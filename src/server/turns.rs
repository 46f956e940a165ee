//! `Turns`: which of a core's scans takes the next step. Query slots decide which queries
//! run at all; among those that run, a step goes to the scan with the earliest *turn*: the
//! time it started plus `SCAN_STEP_TURN_DELAY` for every step it has taken. A query that
//! needs a step or two (a `limit` answered from an index) is served before scans that have
//! been stepping for a while, so a client with one REQ waits behind at most one step of
//! each other client's scan, however many scans the others keep running; a long scan still
//! moves on whenever nothing newer waits, and never starves, since its turn is a fixed
//! time. Before, steps went first come, first served through the task queue: 59 flooding
//! connections' scans put ~60 steps ahead of every healthy query.
//!
//! [`TurnOrder`] is the plain bookkeeping, tested without an executor; [`Turns`] wraps it
//! in futures. Steps themselves are synchronous: a scan waits for its turn, steps, and
//! lets go of the turn before it next awaits.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::limits::SCAN_STEP_TURN_DELAY;

/// A scan's place: its turn time (ns since the core's `Turns` began), then the order scans
/// started in, which makes every place unique.
pub type Place = (u64, u64);

/// The scans waiting for a step, by place.
#[derive(Default)]
pub struct TurnOrder {
    waiting: BTreeMap<Place, Option<Waker>>,
}

impl TurnOrder {
    /// `place` waits; whether it is first now.
    pub fn enter(&mut self, place: Place) -> bool {
        self.waiting.entry(place).or_insert(None);
        self.is_first(place)
    }

    pub fn is_first(&self, place: Place) -> bool {
        self.waiting.keys().next() == Some(&place)
    }

    /// `place` leaves (stepped, or gave up): the waker of the scan now first, if any.
    pub fn leave(&mut self, place: Place) -> Option<Waker> {
        let was_first = self.is_first(place);
        self.waiting.remove(&place);
        if !was_first {
            return None;
        }
        self.waiting.values_mut().next().and_then(Option::take)
    }

    pub fn park(&mut self, place: Place, waker: &Waker) {
        if let Some(slot) = self.waiting.get_mut(&place) {
            *slot = Some(waker.clone());
        }
    }

    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }
}

/// One core's turns, shared by its scans.
pub struct Turns {
    order: RefCell<TurnOrder>,
    began: Instant,
    next_scan: Cell<u64>,
}

impl Turns {
    pub fn new() -> Rc<Turns> {
        Rc::new(Turns { order: RefCell::new(TurnOrder::default()), began: Instant::now(), next_scan: 0.into() })
    }

    /// A scan starting now; its steps are taken through [`ScanTurn::step`].
    pub fn start(self: &Rc<Self>) -> ScanTurn {
        let scan = self.next_scan.get();
        self.next_scan.set(scan + 1);
        ScanTurn { turns: self.clone(), started: self.began.elapsed(), steps: Cell::new(0), scan }
    }

    /// Wait until `place` is first, then run `step`, then let the next scan go.
    async fn take<T>(&self, place: Place, step: impl FnOnce() -> T) -> T {
        let first = self.order.borrow_mut().enter(place);
        let waiting = Waiting { turns: self, place };
        if !first {
            poll_fn(|cx| {
                let mut order = self.order.borrow_mut();
                if order.is_first(place) {
                    return Poll::Ready(());
                }
                order.park(place, cx.waker());
                Poll::Pending
            })
            .await;
        }
        let result = step();
        drop(waiting);
        result
    }

    fn leave(&self, place: Place) {
        let next = self.order.borrow_mut().leave(place);
        if let Some(waker) = next {
            waker.wake();
        }
    }
}

/// A scan's place in line, given up once it has stepped, or if it is dropped while it waits.
struct Waiting<'a> {
    turns: &'a Turns,
    place: Place,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.turns.leave(self.place);
    }
}

/// One scan's turns: when it started and how many steps it has taken.
pub struct ScanTurn {
    turns: Rc<Turns>,
    started: Duration,
    steps: Cell<u32>,
    scan: u64,
}

impl ScanTurn {
    /// Take one step in turn: waits while scans with earlier turns wait.
    pub async fn step<T>(&self, step: impl FnOnce() -> T) -> T {
        let steps = self.steps.get();
        self.steps.set(steps.saturating_add(1));
        let turn = self.started + SCAN_STEP_TURN_DELAY * steps;
        let place = (u64::try_from(turn.as_nanos()).unwrap_or(u64::MAX), self.scan);
        self.turns.take(place, step).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_turn_is_first_and_leaving_wakes_the_next() {
        let mut order = TurnOrder::default();
        assert!(order.enter((10, 1)));
        assert!(!order.enter((20, 2)));
        // A newer scan with an earlier turn goes ahead of one that has stepped a while.
        assert!(order.enter((5, 3)));
        let waker = futures_lite::future::block_on(poll_fn(|cx| Poll::Ready(cx.waker().clone())));
        order.park((10, 1), &waker);
        assert!(order.leave((20, 2)).is_none(), "a waiter that is not first wakes nobody");
        assert!(order.leave((5, 3)).is_some(), "the first leaving wakes the next");
        assert!(order.is_first((10, 1)));
        assert!(order.leave((10, 1)).is_none());
        assert_eq!(order.waiting_count(), 0);
    }

    /// Three scans waiting at once behind a place held by hand: one that has taken three
    /// steps already (spawned first) and two fresh ones. Once the place is let go, the
    /// fresh ones step first, the older one after, whatever order they were spawned in.
    #[test]
    fn fresh_scans_step_ahead_of_one_that_has_stepped_a_while() {
        let log = crate::tools::run_local("turns-test", || {
            Box::pin(async {
                let turns = Turns::new();
                let ahead = (0, u64::MAX);
                turns.order.borrow_mut().enter(ahead);
                let log = Rc::new(RefCell::new(Vec::new()));
                let scan = |name: &'static str, taken: u32, steps: usize| {
                    let (turn, log) = (turns.start(), log.clone());
                    turn.steps.set(taken);
                    glommio::spawn_local(async move {
                        for _ in 0..steps {
                            turn.step(|| log.borrow_mut().push(name)).await;
                            futures_lite::future::yield_now().await;
                        }
                    })
                };
                let tasks = [scan("old", 3, 3), scan("fresh-1", 0, 2), scan("fresh-2", 0, 1)];
                glommio::timer::sleep(Duration::from_millis(2)).await;
                assert_eq!(turns.order.borrow().waiting_count(), 4);
                turns.leave(ahead);
                for task in tasks {
                    task.await;
                }
                assert_eq!(turns.order.borrow().waiting_count(), 0);
                let log = log.borrow().clone();
                log
            })
        })
        .unwrap();
        assert_eq!(log, vec!["fresh-1", "fresh-2", "fresh-1", "old", "old", "old"]);
    }

    /// A scan dropped while it waits gives its place up: the one behind it still steps.
    #[test]
    fn a_scan_dropped_while_waiting_lets_the_others_go() {
        let done = crate::tools::run_local("turns-drop-test", || {
            Box::pin(async {
                let turns = Turns::new();
                // A place ahead of every scan, held by hand: the scans below wait behind it.
                let ahead = (0, u64::MAX);
                turns.order.borrow_mut().enter(ahead);
                let (dropped, last) = (turns.start(), turns.start());
                let waiting = glommio::spawn_local(async move { dropped.step(|| "dropped").await });
                let after = glommio::spawn_local(async move { last.step(|| "last").await });
                glommio::timer::sleep(Duration::from_millis(2)).await;
                assert_eq!(turns.order.borrow().waiting_count(), 3);
                drop(waiting);
                glommio::timer::sleep(Duration::from_millis(2)).await;
                assert_eq!(turns.order.borrow().waiting_count(), 2, "the dropped scan left");
                turns.leave(ahead);
                let result = after.await;
                let left = turns.order.borrow().waiting_count();
                (result, left)
            })
        })
        .unwrap();
        assert_eq!(done, ("last", 0));
    }
}
