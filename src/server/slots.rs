//! A core's query slots (`queries_per_core_max`), shared fairly. When a slot frees, it goes
//! to the waiting client address with the fewest queries running, the freed one still
//! counted as its holder's (the first such in turn order, which rotates), within it to the next connection in turn, and within that to its
//! oldest query. A client with a query now and then (nothing running) is served at the next
//! free slot, behind at most one query of each other address, however many queries the
//! others keep queued and running: first come, first served put it behind all of them (59
//! addresses flooding COUNT took a healthy REQ from p99 11 ms to 1 s), and plain round robin
//! over addresses gave the healthy address one slot in sixty whatever its need.
//!
//! A quarter of the slots (`QUERY_SLOTS_KEPT_SHARE`) is kept for connections that hold none:
//! a connection's second query waits while that few are free. Flooders from many addresses
//! then hold one slot each, and a client's one REQ finds a slot free at once rather than
//! waiting for a flooder's scan to end.
//!
//! [`FairQueue`] is the plain bookkeeping, tested without an executor; [`FairSlots`] wraps it
//! in futures. Choosing is a pass over the addresses that wait (at most one per connection).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::net::IpAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};

use crate::limits::QUERY_SLOTS_KEPT_SHARE;
use crate::subs::ConnId;

/// Who waits: the client's address (its forwarded one behind a trusted proxy) and its
/// connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Asker {
    pub ip: IpAddr,
    pub conn: ConnId,
}

/// A place in the queue.
pub type Ticket = u64;

/// Slots, who holds them and who waits.
#[derive(Default)]
pub struct FairQueue {
    free: usize,
    /// Free slots only a connection that holds none may take.
    kept: usize,
    next_ticket: Ticket,
    /// Slots held, per address (absent: none).
    running: HashMap<IpAddr, usize>,
    /// Slots held, per connection (absent: none).
    held: HashMap<ConnId, usize>,
    /// Addresses with waiters, in turn order.
    turn: VecDeque<IpAddr>,
    by_address: HashMap<IpAddr, AddressWaiters>,
    /// Where each waiting ticket is.
    waiting: HashMap<Ticket, Asker>,
}

#[derive(Default)]
struct AddressWaiters {
    /// Connections with waiters, in turn order.
    turn: VecDeque<ConnId>,
    by_conn: HashMap<ConnId, VecDeque<Ticket>>,
}

impl FairQueue {
    pub fn new(slots: usize) -> FairQueue {
        FairQueue { free: slots, kept: slots / QUERY_SLOTS_KEPT_SHARE, ..FairQueue::default() }
    }

    /// Whether `conn` may take one of `free` slots: one it holds none of, or one of those
    /// past the kept ones.
    fn may_take(&self, conn: ConnId, free: usize) -> bool {
        free > self.kept || !self.held.contains_key(&conn)
    }

    fn hold(&mut self, asker: Asker) {
        *self.running.entry(asker.ip).or_default() += 1;
        *self.held.entry(asker.conn).or_default() += 1;
    }

    /// Ask for a slot: `Ok` when one is free now (taken), else `Err` with the ticket to wait on.
    /// Nobody who waits could take a free slot (`give_back` grants those), so taking one
    /// passes nobody.
    pub fn take_or_wait(&mut self, asker: Asker) -> Result<(), Ticket> {
        if self.free > 0 && self.may_take(asker.conn, self.free) {
            self.free -= 1;
            self.hold(asker);
            return Ok(());
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let address = self.by_address.entry(asker.ip).or_default();
        if address.turn.is_empty() {
            self.turn.push_back(asker.ip);
        }
        let conn = address.by_conn.entry(asker.conn).or_default();
        if conn.is_empty() {
            address.turn.push_back(asker.conn);
        }
        conn.push_back(ticket);
        self.waiting.insert(ticket, asker);
        Err(ticket)
    }

    /// `from` gives a slot back: the ticket it goes to, and its address, if anyone waits who
    /// may take it (else the slot is free).
    ///
    /// The slot still counts as its address's while the next is chosen: an address that keeps
    /// queries queued does not take back the slot it frees ahead of one with none running.
    pub fn give_back(&mut self, from: Asker) -> Option<(Ticket, Asker)> {
        if let Some(held) = self.held.get_mut(&from.conn) {
            *held -= 1;
            if *held == 0 {
                self.held.remove(&from.conn);
            }
        }
        let granted = self.next_in_turn(self.free + 1);
        match granted {
            Some((_, to)) => *self.running.entry(to.ip).or_default() += 1,
            None => self.free += 1,
        }
        if let Some(running) = self.running.get_mut(&from.ip) {
            *running -= 1;
            if *running == 0 {
                self.running.remove(&from.ip);
            }
        }
        if let Some((_, to)) = granted {
            *self.held.entry(to.conn).or_default() += 1;
        }
        granted
    }

    /// A waiter gave up before its turn: it leaves the queue.
    pub fn cancel(&mut self, ticket: Ticket) {
        let Some(asker) = self.waiting.remove(&ticket) else { return };
        let Some(address) = self.by_address.get_mut(&asker.ip) else { return };
        if let Some(conn) = address.by_conn.get_mut(&asker.conn) {
            conn.retain(|&waiting| waiting != ticket);
            if conn.is_empty() {
                address.by_conn.remove(&asker.conn);
                address.turn.retain(|&c| c != asker.conn);
            }
        }
        if address.turn.is_empty() {
            self.by_address.remove(&asker.ip);
            self.turn.retain(|&ip| ip != asker.ip);
        }
    }

    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }

    /// Of the waiters who may take one of `free` slots: the address with the fewest slots
    /// held (the first in turn of those), its next such connection's oldest ticket; both go
    /// to the back of their turn if they still wait.
    fn next_in_turn(&mut self, free: usize) -> Option<(Ticket, Asker)> {
        let running = |ip: &IpAddr| self.running.get(ip).copied().unwrap_or(0);
        let mut chosen = None;
        for (position, ip) in self.turn.iter().enumerate() {
            let held = running(ip);
            if chosen.is_some_and(|(_, fewest, _)| held >= fewest) {
                continue;
            }
            let waiters = &self.by_address[ip];
            let Some(conn_position) = waiters.turn.iter().position(|&conn| self.may_take(conn, free)) else {
                continue;
            };
            chosen = Some((position, held, conn_position));
            if held == 0 {
                break;
            }
        }
        let (position, _, conn_position) = chosen?;
        let ip = self.turn.remove(position).expect("a position in the turn");
        let address = self.by_address.get_mut(&ip).expect("an address in turn has waiters");
        let conn_id = address.turn.remove(conn_position).expect("a connection in turn has a position");
        let conn = address.by_conn.get_mut(&conn_id).expect("a connection in turn has tickets");
        let ticket = conn.pop_front().expect("a connection in turn has a ticket");
        if conn.is_empty() {
            address.by_conn.remove(&conn_id);
        } else {
            address.turn.push_back(conn_id);
        }
        if address.turn.is_empty() {
            self.by_address.remove(&ip);
        } else {
            self.turn.push_back(ip);
        }
        self.waiting.remove(&ticket);
        Some((ticket, Asker { ip, conn: conn_id }))
    }
}

/// The core's query slots as futures.
pub struct FairSlots {
    queue: RefCell<FairQueue>,
    /// Waiting tickets' wakers, and tickets granted but not yet seen by their future.
    wakers: RefCell<HashMap<Ticket, Option<Waker>>>,
    granted: RefCell<HashSet<Ticket>>,
}

/// A query slot, given back when dropped.
pub struct Slot {
    slots: Rc<FairSlots>,
    holder: Asker,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.give_back(self.holder);
    }
}

impl FairSlots {
    pub fn new(slots: usize) -> Rc<FairSlots> {
        Rc::new(FairSlots {
            queue: RefCell::new(FairQueue::new(slots)),
            wakers: RefCell::new(HashMap::new()),
            granted: RefCell::new(HashSet::new()),
        })
    }

    /// Wait for a slot in `asker`'s turn. Dropped while waiting, the place is given up; a
    /// slot granted to a future dropped before it saw it is given back.
    pub async fn acquire(self: &Rc<Self>, asker: Asker) -> Slot {
        let taken = self.queue.borrow_mut().take_or_wait(asker);
        let Err(ticket) = taken else { return Slot { slots: self.clone(), holder: asker } };
        self.wakers.borrow_mut().insert(ticket, None);
        let mut wait = Waiting { slots: self, ticket, asker, done: false };
        poll_fn(|cx| {
            if self.granted.borrow_mut().remove(&ticket) {
                wait.done = true;
                return Poll::Ready(());
            }
            self.wakers.borrow_mut().insert(ticket, Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        Slot { slots: self.clone(), holder: asker }
    }

    pub fn waiting_count(&self) -> usize {
        self.queue.borrow().waiting_count()
    }

    fn give_back(&self, from: Asker) {
        let granted = self.queue.borrow_mut().give_back(from);
        if let Some((ticket, _)) = granted {
            let waker = self.wakers.borrow_mut().remove(&ticket).flatten();
            self.granted.borrow_mut().insert(ticket);
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

/// A waiting future's place; its drop before the grant was seen leaves the queue (or gives
/// back a grant that came meanwhile).
struct Waiting<'a> {
    slots: &'a Rc<FairSlots>,
    ticket: Ticket,
    asker: Asker,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.slots.wakers.borrow_mut().remove(&self.ticket);
        let was_granted = self.slots.granted.borrow_mut().remove(&self.ticket);
        if was_granted {
            self.slots.give_back(self.asker);
        } else {
            self.slots.queue.borrow_mut().cancel(self.ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    fn asker(n: u8, conn: u64) -> Asker {
        Asker { ip: ip(n), conn: ConnId(conn) }
    }

    #[test]
    fn free_slots_are_taken_at_once() {
        let mut queue = FairQueue::new(2);
        assert_eq!(queue.take_or_wait(asker(1, 1)), Ok(()));
        assert_eq!(queue.take_or_wait(asker(1, 1)), Ok(()));
        assert!(queue.take_or_wait(asker(1, 1)).is_err());
        assert_eq!(queue.waiting_count(), 1);
    }

    /// One slot, each query finished before the next is granted (nothing else running):
    /// addresses take turns, then their connections, then each connection's queries. A
    /// third address's one query is served in the first round, not after the others'.
    #[test]
    fn addresses_take_turns_then_connections_then_queries() {
        let mut queue = FairQueue::new(1);
        queue.take_or_wait(asker(9, 90)).unwrap();
        let mut who = HashMap::new();
        let mut ask = |queue: &mut FairQueue, a: Asker| {
            who.insert(queue.take_or_wait(a).unwrap_err(), a);
        };
        for _ in 0..4 {
            ask(&mut queue, asker(1, 10));
        }
        for conn in 20..23 {
            for _ in 0..2 {
                ask(&mut queue, asker(2, conn));
            }
        }
        ask(&mut queue, asker(3, 30));
        let mut holder = asker(9, 90);
        let mut order = Vec::new();
        while let Some((ticket, granted)) = queue.give_back(holder) {
            assert_eq!(who[&ticket], granted);
            order.push(granted);
            holder = granted;
        }
        let expected = [
            asker(1, 10),
            asker(2, 20),
            asker(3, 30),
            asker(1, 10),
            asker(2, 21),
            asker(1, 10),
            asker(2, 22),
            asker(1, 10),
            asker(2, 20),
            asker(2, 21),
            asker(2, 22),
        ];
        assert_eq!(order, expected);
        assert_eq!((queue.waiting_count(), queue.free), (0, 1));
        assert!(queue.running.is_empty(), "every slot given back");
    }

    /// Flooders hold every slot and keep more queued; a client with nothing running gets
    /// the next free slot, ahead of them all.
    #[test]
    fn an_address_with_nothing_running_goes_first() {
        let mut queue = FairQueue::new(4);
        for n in 1..=4 {
            queue.take_or_wait(asker(n, u64::from(n))).unwrap();
        }
        for n in 1..=4 {
            for _ in 0..3 {
                queue.take_or_wait(asker(n, u64::from(n))).unwrap_err();
            }
        }
        let healthy = queue.take_or_wait(asker(50, 500)).unwrap_err();
        assert_eq!(queue.give_back(asker(3, 3)).map(|(ticket, _)| ticket), Some(healthy));
        // Then address 3, which now runs nothing, before 1, 2 and 4, which run one each.
        assert_eq!(queue.give_back(asker(1, 1)).map(|(_, granted)| granted), Some(asker(3, 3)));
    }

    /// A quarter of the slots is kept for connections that hold none: one connection takes
    /// the rest, then waits, while others still take the kept ones at once; a freed slot
    /// goes to a waiter that holds none, else stays free for the next such.
    #[test]
    fn the_kept_slots_go_to_connections_that_hold_none() {
        let mut queue = FairQueue::new(8);
        let greedy = asker(1, 1);
        for _ in 0..6 {
            assert_eq!(queue.take_or_wait(greedy), Ok(()));
        }
        let greedy_waits = queue.take_or_wait(greedy).unwrap_err();
        assert_eq!(queue.take_or_wait(asker(2, 2)), Ok(()));
        assert_eq!(queue.take_or_wait(asker(3, 3)), Ok(()));
        let late = queue.take_or_wait(asker(4, 4)).unwrap_err();
        // The greedy connection's own slot goes to the one that holds none.
        assert_eq!(queue.give_back(greedy), Some((late, asker(4, 4))));
        // Then it stays free: the greedy connection still holds 4 and only 1 would be free.
        assert_eq!(queue.give_back(greedy), None);
        assert_eq!(queue.waiting_count(), 1);
        assert_eq!(queue.take_or_wait(asker(5, 5)), Ok(()));
        // Once more than the kept slots are free, the greedy connection's query runs.
        assert_eq!(queue.give_back(asker(2, 2)), None);
        assert_eq!(queue.give_back(asker(3, 3)), None);
        assert_eq!(queue.give_back(asker(4, 4)), Some((greedy_waits, greedy)));
        assert_eq!(queue.waiting_count(), 0);
    }

    #[test]
    fn a_cancelled_waiter_leaves_no_trace() {
        let mut queue = FairQueue::new(1);
        queue.take_or_wait(asker(9, 9)).unwrap();
        let first = queue.take_or_wait(asker(1, 1)).unwrap_err();
        let second = queue.take_or_wait(asker(2, 2)).unwrap_err();
        queue.cancel(first);
        queue.cancel(first);
        assert_eq!(queue.give_back(asker(9, 9)), Some((second, asker(2, 2))));
        assert_eq!(queue.give_back(asker(2, 2)), None);
        assert!(queue.turn.is_empty() && queue.by_address.is_empty() && queue.waiting.is_empty());
        assert!(queue.running.is_empty() && queue.held.is_empty());
        assert_eq!(queue.take_or_wait(asker(1, 1)), Ok(()));
    }

    /// The futures: a waiter dropped before its turn leaves the queue, and the grants follow
    /// the turns.
    #[test]
    fn waiters_are_woken_in_turn_and_dropped_ones_give_way() {
        let order = crate::tools::run_local("slots-test", || {
            Box::pin(async {
                let slots = FairSlots::new(1);
                let held = slots.acquire(asker(1, 1)).await;
                let order = Rc::new(RefCell::new(Vec::new()));
                let spawn = |a: Asker| {
                    let (slots, order) = (slots.clone(), order.clone());
                    glommio::spawn_local(async move {
                        let _slot = slots.acquire(a).await;
                        order.borrow_mut().push(a.ip);
                        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                    })
                };
                let tasks = vec![spawn(asker(1, 1)), spawn(asker(1, 1)), spawn(asker(2, 2)), spawn(asker(3, 3))];
                glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                assert_eq!(slots.waiting_count(), 4);
                // Address 3 gives up; the rest are served: address 2 first (address 1 still
                // holds the slot it gives back while the next is chosen), then address 1's two.
                let mut tasks = tasks.into_iter();
                let kept: Vec<_> = tasks.by_ref().take(3).collect();
                drop(tasks);
                glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                assert_eq!(slots.waiting_count(), 3);
                drop(held);
                for task in kept {
                    task.await;
                }
                assert_eq!(slots.queue.borrow().free, 1, "every slot given back");
                let order = order.borrow().clone();
                order
            })
        })
        .unwrap();
        assert_eq!(order, vec![ip(2), ip(1), ip(1)]);
    }
}
