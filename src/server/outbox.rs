//! A connection's outbound queue: bounded in bytes, single-core, and sized by what it holds
//! (a preallocated channel would cost every idle connection its capacity). The core holds
//! the [`OutboxSender`], the session the [`Outbox`].
//!
//! Three kinds of message go through it.
//! - Live events nobody asked for at this moment are refused when the queue is over its
//!   byte budget (`outbound_bytes_max`), or when the core's connections together are over
//!   theirs (`outbound_bytes_per_core_max`) and this one is behind: the reader is a slow
//!   consumer and is shut.
//! - Parts of an answer (stored events, EOSE) wait for room.
//! - Replies to the client's own messages (OK, NOTICE, CLOSED, COUNT) are always queued;
//!   instead, the session stops reading the client while the queue and the replies still
//!   owed fill the budget, so a client that sends faster than it reads is slowed down by
//!   TCP, not dropped, and the queue stays within the budget plus the replies to one message.
//!
//! A message is counted at its frame's length plus [`MESSAGE_OVERHEAD_SIZE`]; a live
//! event's JSON is shared by every recipient, so this overstates memory, never understates.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::stats::Stats;
use crate::proto::{self, SubId};
use crate::subs::LiveEvent;

/// Capacity kept after the queue drains; beyond it, a burst's memory is returned.
const RETAINED_CAPACITY: usize = 32;
/// What a queued message costs beyond its frame: its slot in the queue and the frame's header.
pub const MESSAGE_OVERHEAD_SIZE: usize = 64;
/// What a reply still owed (an EVENT's OK) is counted as while it is owed.
pub const OWED_REPLY_SIZE: usize = 192;

/// What a connection's writer sends next.
pub enum Out {
    Text(String),
    /// A live event for subscription `sub`: the queue holds the shared event, and the frame
    /// is assembled as it is written, so a burst queued for many subscribers holds one copy
    /// of each event (and of its compressed form), not one per subscriber.
    Event {
        sub: SubId,
        event: Arc<LiveEvent>,
    },
    /// Close the connection with this code and reason, after a NOTICE saying why.
    Close(CloseCode, String),
}

impl Out {
    /// The text of a message to write; `None` for a close.
    pub fn into_text(self) -> Option<String> {
        match self {
            Out::Text(text) => Some(text),
            Out::Event { sub, event } => Some(proto::frame_event(&sub, &event.json)),
            Out::Close(..) => None,
        }
    }

    /// What the message is counted as against the byte budgets.
    pub fn size(&self) -> usize {
        MESSAGE_OVERHEAD_SIZE
            + match self {
                Out::Text(text) => text.len(),
                Out::Event { sub, event } => sub.as_str().len() + event.json.len() + 16,
                Out::Close(_, reason) => reason.len(),
            }
    }
}

/// What every outbox of a core shares: the core's counters and byte budget, and a clock.
pub struct CoreOutboxes {
    pub stats: Rc<Stats>,
    /// `outbound_bytes_per_core_max`.
    pub capacity_size: usize,
    /// Seconds since the core started, advanced by the core's sweeper: a write is timed
    /// against it, so no timer is armed per write.
    pub seconds: Cell<u64>,
}

/// One connection's budgets.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// `outbound_bytes_max`.
    pub capacity_size: usize,
    /// `queries_per_connection_max`.
    pub queries_max: usize,
}

struct Shared {
    queue: RefCell<VecDeque<Out>>,
    queued_size: Cell<usize>,
    budget: Cell<Budget>,
    core: Rc<CoreOutboxes>,
    /// Queries the connection has running.
    queries: Cell<usize>,
    /// When the write under way began to wait (`core.seconds`), if one is.
    writing_since: Cell<Option<u64>>,
    /// Set by the sweeper once a write has waited past the stall limit.
    stalled: Cell<bool>,
    waker: Cell<Option<Waker>>,
    /// Senders waiting for room (answers to REQs); woken when the writer takes a message.
    room_wakers: RefCell<Vec<Waker>>,
    closed: Cell<bool>,
    /// The relay's close frame has been written to the socket (the loop may still wait for
    /// the client's answering one).
    farewell_sent: Cell<bool>,
    /// Replies owed for messages already read (EVENTs waiting for their fsync).
    owed: Cell<usize>,
    /// Nothing more is read from the client before this: it went over a rate limit.
    held_until: Cell<Option<Instant>>,
}

impl Shared {
    fn push(&self, out: Out) {
        let size = out.size();
        self.queued_size.set(self.queued_size.get() + size);
        self.core.stats.outbound_bytes.add(size as u64);
        self.queue.borrow_mut().push_back(out);
        self.wake();
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn check_stall(&self, stall_secs: u64) -> bool {
        let now = self.core.seconds.get();
        let stalled = self.writing_since.get().is_some_and(|since| now.saturating_sub(since) > stall_secs);
        if stalled && !self.stalled.replace(true) {
            self.wake();
        }
        stalled
    }

    fn clear(&self) {
        self.queue.borrow_mut().clear();
        self.core.stats.outbound_bytes.sub(self.queued_size.replace(0) as u64);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.clear();
    }
}

pub struct OutboxSender(Rc<Shared>);
pub struct Outbox(Rc<Shared>);

/// See [`OutboxSender::watch`].
pub struct OutboxWatch(std::rc::Weak<Shared>);

impl OutboxWatch {
    /// [`OutboxSender::check_stall`]; `None` once the connection's loop has ended.
    pub fn check_stall(&self, stall_secs: u64) -> Option<bool> {
        self.0.upgrade().map(|shared| shared.check_stall(stall_secs))
    }

    /// Whether the connection is done with the relay's side of its close: its close frame
    /// written, or its loop ended.
    pub fn farewell_done(&self) -> bool {
        self.0.upgrade().is_none_or(|shared| shared.farewell_sent.get())
    }
}

/// A queue of at most `budget.capacity_size` bytes, counted in the core's
/// `stats.outbound_bytes` against its budget.
pub fn outbox(budget: Budget, core: Rc<CoreOutboxes>) -> (OutboxSender, Outbox) {
    assert!(budget.capacity_size > 0 && budget.queries_max > 0);
    let shared = Rc::new(Shared {
        queue: RefCell::new(VecDeque::new()),
        queued_size: Cell::new(0),
        budget: Cell::new(budget),
        core,
        queries: Cell::new(0),
        writing_since: Cell::new(None),
        stalled: Cell::new(false),
        waker: Cell::new(None),
        room_wakers: RefCell::new(Vec::new()),
        closed: Cell::new(false),
        farewell_sent: Cell::new(false),
        owed: Cell::new(0),
        held_until: Cell::new(None),
    });
    (OutboxSender(shared.clone()), Outbox(shared))
}

impl OutboxSender {
    /// Queue a live event; refused when this connection is behind (its queue is not empty)
    /// and either over its own budget, or the core is over its budget and this connection
    /// holds more than its share of it (more than the core's connections hold on average):
    /// the readers that cause the pressure are shed, not whoever is a little behind.
    /// A budget of its own for this connection (a peer relay's: `peering.outbound_bytes_max`).
    pub fn set_capacity_size(&self, size: usize) {
        let shared = &self.0;
        shared.budget.set(Budget { capacity_size: size, ..shared.budget.get() });
    }

    pub fn try_send_live(&self, out: Out) -> Result<(), Out> {
        let shared = &self.0;
        let size = out.size();
        let queued = shared.queued_size.get();
        let behind = !shared.queue.borrow().is_empty();
        let core_queued = shared.core.stats.outbound_bytes.get() as usize;
        let over_own = queued + size > shared.budget.get().capacity_size;
        let over_core = core_queued + size > shared.core.capacity_size;
        let connections = shared.core.stats.connections.get().max(1) as usize;
        if behind && (over_own || (over_core && queued > core_queued / connections)) {
            return Err(out);
        }
        shared.push(out);
        Ok(())
    }

    /// Queue part of an answer if it fits the connection's budget (an empty queue takes any
    /// one message, so the largest event always gets through).
    pub fn try_send(&self, out: Out) -> Result<(), Out> {
        let shared = &self.0;
        if !shared.queue.borrow().is_empty()
            && shared.queued_size.get() + out.size() > shared.budget.get().capacity_size
        {
            return Err(out);
        }
        shared.push(out);
        Ok(())
    }

    /// Queue a reply to something the client sent, whatever the queue holds (see the module
    /// notes); `owed` says it settles a reply promised by [`OutboxSender::owe_reply`].
    pub fn send_reply(&self, out: Out, owed: bool) {
        if owed {
            self.0.owed.set(self.0.owed.get().saturating_sub(1));
        }
        self.0.push(out);
    }

    /// A reply will follow later (an EVENT's OK, once durable).
    pub fn owe_reply(&self) {
        self.0.owed.set(self.0.owed.get() + 1);
    }

    /// Drop everything queued and close: for a reader that will not catch up, whose queue
    /// would otherwise be written (slowly, or never) before the close frame.
    pub fn shut(&self, code: CloseCode, reason: String) {
        self.0.clear();
        self.0.push(Out::Close(code, reason));
    }

    /// Read nothing more from the client for `pause` (it went over a rate limit): TCP holds
    /// it back, where answering every message it keeps sending would cost the core as much
    /// as serving it.
    pub fn hold_input(&self, pause: Duration) {
        self.0.held_until.set(Some(Instant::now() + pause));
    }

    /// The connection now has `count` queries running; the session reads again once it is
    /// under its budget.
    pub fn set_queries(&self, count: usize) {
        let was = self.0.queries.replace(count);
        if count < was {
            self.0.wake();
        }
    }

    /// A handle the core's sweep keeps on a connection it has let go of (shut, or closed)
    /// while the connection's loop may still be stuck in a write.
    pub fn watch(&self) -> OutboxWatch {
        OutboxWatch(Rc::downgrade(&self.0))
    }

    /// Whether a write has waited more than `stall_secs` by the core's clock (so between
    /// `stall_secs` and one second more); if so, the session is told, and abandons the
    /// write and cuts the connection.
    pub fn check_stall(&self, stall_secs: u64) -> bool {
        self.0.check_stall(stall_secs)
    }

    pub fn queued_size(&self) -> usize {
        self.0.queued_size.get()
    }

    /// Resolves once the queue has room (or the connection is gone). Holds no borrow of the
    /// sender, so the caller need not keep the connection's state borrowed while it waits.
    pub fn room(&self, size: usize) -> impl std::future::Future<Output = ()> + 'static {
        let shared = self.0.clone();
        poll_fn(move |cx| {
            if shared.closed.get()
                || shared.queue.borrow().is_empty()
                || shared.queued_size.get() + size <= shared.budget.get().capacity_size
            {
                return Poll::Ready(());
            }
            shared.room_wakers.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
    }
}

impl Drop for OutboxSender {
    fn drop(&mut self) {
        self.0.closed.set(true);
        self.0.room_wakers.borrow_mut().drain(..).for_each(Waker::wake);
        self.0.wake();
    }
}

impl Outbox {
    /// The relay's close frame has been written (see [`OutboxWatch::farewell_done`]).
    pub fn farewell_sent(&self) {
        self.0.farewell_sent.set(true);
    }

    /// The next message, or `None` once the sender is gone and the queue is empty.
    pub async fn recv(&self) -> Option<Out> {
        poll_fn(|cx| match self.try_recv() {
            Some(out) => Poll::Ready(Some(out)),
            None if self.0.closed.get() => Poll::Ready(None),
            None => {
                self.0.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Resolves when something is queued, the sender is gone, or the session was nudged.
    pub async fn changed(&self) {
        let mut first = true;
        poll_fn(|cx| {
            if !first || !self.0.queue.borrow().is_empty() || self.0.closed.get() {
                return Poll::Ready(());
            }
            first = false;
            self.0.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    /// Whether the session may read another client message: the queue and the replies
    /// still owed leave room in the budget, and the connection may start another query.
    pub fn accepts_input(&self) -> bool {
        let shared = &self.0;
        shared.queued_size.get() + shared.owed.get() * OWED_REPLY_SIZE < shared.budget.get().capacity_size
            && shared.queries.get() < shared.budget.get().queries_max
    }

    /// How much longer input is held ([`OutboxSender::hold_input`]); `None` once it is not.
    pub fn input_held(&self) -> Option<Duration> {
        let until = self.0.held_until.get()?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.0.held_until.set(None);
        }
        (!left.is_zero()).then_some(left)
    }

    /// A write has to wait for the socket: time it from now.
    pub fn begin_write(&self) {
        self.0.writing_since.set(Some(self.0.core.seconds.get()));
    }

    pub fn end_write(&self) {
        self.0.writing_since.set(None);
    }

    /// Resolves once the sweeper finds the write under way stalled.
    pub async fn stalled(&self) {
        poll_fn(|cx| {
            if self.0.stalled.get() {
                return Poll::Ready(());
            }
            self.0.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    pub fn try_recv(&self) -> Option<Out> {
        let shared = &self.0;
        let mut queue = shared.queue.borrow_mut();
        let out = queue.pop_front()?;
        if queue.is_empty() && queue.capacity() > RETAINED_CAPACITY {
            queue.shrink_to(RETAINED_CAPACITY);
        }
        drop(queue);
        let size = out.size();
        shared.queued_size.set(shared.queued_size.get() - size);
        shared.core.stats.outbound_bytes.sub(size as u64);
        shared.room_wakers.borrow_mut().drain(..).for_each(Waker::wake);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(stats: &Rc<Stats>, capacity_size: usize) -> Rc<CoreOutboxes> {
        Rc::new(CoreOutboxes { stats: stats.clone(), capacity_size, seconds: Cell::new(0) })
    }

    fn budget(capacity_size: usize) -> Budget {
        Budget { capacity_size, queries_max: 4 }
    }

    fn text(size: usize) -> Out {
        Out::Text("x".repeat(size - MESSAGE_OVERHEAD_SIZE))
    }

    #[test]
    fn bounded_in_bytes_ordered_and_closes() {
        let stats = Rc::new(Stats::default());
        let (sender, outbox) = outbox(budget(300), core(&stats, 1 << 20));
        assert!(sender.try_send_live(text(100)).is_ok());
        assert!(sender.try_send_live(text(200)).is_ok());
        assert!(sender.try_send_live(text(100)).is_err(), "over 300 bytes");
        assert_eq!(stats.outbound_bytes.get(), 300);
        assert!(outbox.try_recv().is_some());
        assert_eq!(stats.outbound_bytes.get(), 200);
        drop(sender);
        let next = futures_lite::future::block_on(outbox.recv());
        assert!(matches!(next, Some(Out::Text(t)) if t.len() == 200 - MESSAGE_OVERHEAD_SIZE), "queue survives");
        assert!(futures_lite::future::block_on(outbox.recv()).is_none());
        assert_eq!(stats.outbound_bytes.get(), 0);
    }

    #[test]
    fn an_empty_queue_takes_one_message_of_any_size() {
        let (sender, _outbox) = outbox(budget(100), core(&Rc::new(Stats::default()), 1 << 20));
        assert!(sender.try_send(text(1000)).is_ok());
        assert!(sender.try_send(text(65)).is_err());
    }

    #[test]
    fn the_core_budget_sheds_the_readers_holding_more_than_their_share() {
        let stats = Rc::new(Stats::default());
        stats.connections.add(3);
        let (stalled, _a) = outbox(budget(10_000), core(&stats, 1_000));
        let (healthy, _b) = outbox(budget(10_000), core(&stats, 1_000));
        let (idle, _c) = outbox(budget(10_000), core(&stats, 1_000));
        assert!(stalled.try_send_live(text(800)).is_ok());
        assert!(healthy.try_send_live(text(100)).is_ok());
        assert!(stalled.try_send_live(text(200)).is_err(), "over the core's budget, and over its share");
        assert!(healthy.try_send_live(text(200)).is_ok(), "behind, but under its share: kept");
        assert!(idle.try_send_live(text(200)).is_ok(), "a reader that is keeping up still gets its events");
        drop((stalled, healthy, idle));
    }

    #[test]
    fn shut_drops_the_queue_and_closes() {
        let stats = Rc::new(Stats::default());
        let (sender, outbox) = outbox(budget(1000), core(&stats, 1 << 20));
        assert!(sender.try_send_live(text(500)).is_ok());
        sender.shut(CloseCode::Policy, "slow".into());
        assert!(matches!(outbox.try_recv(), Some(Out::Close(CloseCode::Policy, _))));
        assert!(outbox.try_recv().is_none());
        assert_eq!(stats.outbound_bytes.get(), 0);
    }

    #[test]
    fn replies_are_always_queued_and_hold_back_input() {
        let (sender, outbox) = outbox(budget(2 * OWED_REPLY_SIZE), core(&Rc::new(Stats::default()), 1 << 20));
        assert!(outbox.accepts_input());
        sender.owe_reply();
        sender.send_reply(text(OWED_REPLY_SIZE), false);
        assert!(!outbox.accepts_input(), "one queued and one owed fill the budget");
        sender.send_reply(text(OWED_REPLY_SIZE), true);
        sender.send_reply(text(OWED_REPLY_SIZE), false);
        assert!(sender.try_send_live(text(100)).is_err(), "live events still find it full");
        for _ in 0..3 {
            assert!(outbox.try_recv().is_some());
        }
        assert!(outbox.accepts_input());
    }

    #[test]
    fn a_sender_waits_for_room() {
        let (sender, outbox) = outbox(budget(100), core(&Rc::new(Stats::default()), 1 << 20));
        assert!(sender.try_send(text(100)).is_ok());
        let mut room = Box::pin(sender.room(100));
        assert!(futures_lite::future::block_on(futures_lite::future::poll_once(&mut room)).is_none(), "full");
        assert!(outbox.try_recv().is_some());
        assert!(futures_lite::future::block_on(futures_lite::future::poll_once(&mut room)).is_some(), "room again");
    }

    #[test]
    fn queries_at_the_budget_hold_back_input() {
        let (sender, outbox) = outbox(budget(1000), core(&Rc::new(Stats::default()), 1 << 20));
        sender.set_queries(4);
        assert!(!outbox.accepts_input());
        sender.set_queries(3);
        assert!(outbox.accepts_input());
    }

    #[test]
    fn a_write_that_waits_past_the_limit_is_stalled_by_the_clock() {
        let stats = Rc::new(Stats::default());
        let clock = core(&stats, 1 << 20);
        let (sender, outbox) = outbox(budget(1000), clock.clone());
        assert!(!sender.check_stall(2), "no write under way");
        outbox.begin_write();
        clock.seconds.set(2);
        assert!(!sender.check_stall(2), "a write that began in second 0 may be only a moment old in second 2");
        let mut stalled = Box::pin(outbox.stalled());
        assert!(futures_lite::future::block_on(futures_lite::future::poll_once(&mut stalled)).is_none());
        clock.seconds.set(3);
        assert!(sender.check_stall(2));
        assert!(futures_lite::future::block_on(futures_lite::future::poll_once(&mut stalled)).is_some());
        outbox.end_write();
    }
}
