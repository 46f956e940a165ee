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

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::stats::Stats;
use crate::proto::{self, SubId};

/// Capacity kept after the queue drains; beyond it, a burst's memory is returned.
const RETAINED_CAPACITY: usize = 32;
/// What a queued message costs beyond its frame: its slot in the queue and the frame's header.
pub const MESSAGE_OVERHEAD_SIZE: usize = 64;
/// What a reply still owed (an EVENT's OK) is counted as while it is owed.
pub const OWED_REPLY_SIZE: usize = 192;

/// What a connection's writer sends next.
pub enum Out {
    Text(String),
    /// A live event for subscription `sub`: the queue holds the event's shared JSON, and the
    /// frame is assembled as it is written, so a burst queued for many subscribers holds one
    /// copy of each event, not one per subscriber.
    Event {
        sub: SubId,
        json: Arc<str>,
    },
    /// Close the connection with this code and reason, after a NOTICE saying why.
    Close(CloseCode, String),
}

impl Out {
    /// The text of a message to write; `None` for a close.
    pub fn into_text(self) -> Option<String> {
        match self {
            Out::Text(text) => Some(text),
            Out::Event { sub, json } => Some(proto::frame_event(&sub, &json)),
            Out::Close(..) => None,
        }
    }

    /// What the message is counted as against the byte budgets.
    pub fn size(&self) -> usize {
        MESSAGE_OVERHEAD_SIZE
            + match self {
                Out::Text(text) => text.len(),
                Out::Event { sub, json } => sub.as_str().len() + json.len() + 16,
                Out::Close(_, reason) => reason.len(),
            }
    }
}

struct Shared {
    queue: RefCell<VecDeque<Out>>,
    queued_size: Cell<usize>,
    capacity_size: usize,
    core_capacity_size: usize,
    stats: Rc<Stats>,
    waker: Cell<Option<Waker>>,
    /// Senders waiting for room (answers to REQs); woken when the writer takes a message.
    room_wakers: RefCell<Vec<Waker>>,
    closed: Cell<bool>,
    /// Replies owed for messages already read (EVENTs waiting for their fsync).
    owed: Cell<usize>,
}

impl Shared {
    fn push(&self, out: Out) {
        let size = out.size();
        self.queued_size.set(self.queued_size.get() + size);
        self.stats.outbound_bytes.add(size as u64);
        self.queue.borrow_mut().push_back(out);
        self.wake();
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn clear(&self) {
        self.queue.borrow_mut().clear();
        self.stats.outbound_bytes.sub(self.queued_size.replace(0) as u64);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.clear();
    }
}

pub struct OutboxSender(Rc<Shared>);
pub struct Outbox(Rc<Shared>);

/// A queue of at most `capacity_size` bytes, counted in `stats.outbound_bytes` against the
/// core's `core_capacity_size`.
pub fn outbox(capacity_size: usize, core_capacity_size: usize, stats: Rc<Stats>) -> (OutboxSender, Outbox) {
    assert!(capacity_size > 0);
    let shared = Rc::new(Shared {
        queue: RefCell::new(VecDeque::new()),
        queued_size: Cell::new(0),
        capacity_size,
        core_capacity_size,
        stats,
        waker: Cell::new(None),
        room_wakers: RefCell::new(Vec::new()),
        closed: Cell::new(false),
        owed: Cell::new(0),
    });
    (OutboxSender(shared.clone()), Outbox(shared))
}

impl OutboxSender {
    /// Queue a live event; refused when the connection or the core is over its budget and
    /// this connection is behind (a slow consumer).
    pub fn try_send_live(&self, out: Out) -> Result<(), Out> {
        let shared = &self.0;
        let size = out.size();
        let behind = !shared.queue.borrow().is_empty();
        let over_own = shared.queued_size.get() + size > shared.capacity_size;
        let over_core = shared.stats.outbound_bytes.get() as usize + size > shared.core_capacity_size;
        if behind && (over_own || over_core) {
            return Err(out);
        }
        shared.push(out);
        Ok(())
    }

    /// Queue part of an answer if it fits the connection's budget (an empty queue takes any
    /// one message, so the largest event always gets through).
    pub fn try_send(&self, out: Out) -> Result<(), Out> {
        let shared = &self.0;
        if !shared.queue.borrow().is_empty() && shared.queued_size.get() + out.size() > shared.capacity_size {
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

    /// Wake the session so that it looks again at what it may do (a query of its finished).
    pub fn nudge(&self) {
        self.0.wake();
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
                || shared.queued_size.get() + size <= shared.capacity_size
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
    /// still owed leave room in the budget.
    pub fn accepts_input(&self) -> bool {
        self.0.queued_size.get() + self.0.owed.get() * OWED_REPLY_SIZE < self.0.capacity_size
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
        shared.stats.outbound_bytes.sub(size as u64);
        shared.room_wakers.borrow_mut().drain(..).for_each(Waker::wake);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(size: usize) -> Out {
        Out::Text("x".repeat(size - MESSAGE_OVERHEAD_SIZE))
    }

    #[test]
    fn bounded_in_bytes_ordered_and_closes() {
        let stats = Rc::new(Stats::default());
        let (sender, outbox) = outbox(300, 1 << 20, stats.clone());
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
        let (sender, _outbox) = outbox(100, 1 << 20, Rc::new(Stats::default()));
        assert!(sender.try_send(text(1000)).is_ok());
        assert!(sender.try_send(text(65)).is_err());
    }

    #[test]
    fn the_core_budget_refuses_live_events_to_readers_that_are_behind() {
        let stats = Rc::new(Stats::default());
        let (behind, _a) = outbox(10_000, 1_000, stats.clone());
        let (idle, _b) = outbox(10_000, 1_000, stats.clone());
        assert!(behind.try_send_live(text(900)).is_ok());
        assert!(behind.try_send_live(text(200)).is_err(), "core over its budget, and this reader is behind");
        assert!(idle.try_send_live(text(200)).is_ok(), "a reader that is keeping up still gets its events");
        drop((behind, idle));
    }

    #[test]
    fn shut_drops_the_queue_and_closes() {
        let stats = Rc::new(Stats::default());
        let (sender, outbox) = outbox(1000, 1 << 20, stats.clone());
        assert!(sender.try_send_live(text(500)).is_ok());
        sender.shut(CloseCode::Policy, "slow".into());
        assert!(matches!(outbox.try_recv(), Some(Out::Close(CloseCode::Policy, _))));
        assert!(outbox.try_recv().is_none());
        assert_eq!(stats.outbound_bytes.get(), 0);
    }

    #[test]
    fn replies_are_always_queued_and_hold_back_input() {
        let (sender, outbox) = outbox(2 * OWED_REPLY_SIZE, 1 << 20, Rc::new(Stats::default()));
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
        let (sender, outbox) = outbox(100, 1 << 20, Rc::new(Stats::default()));
        assert!(sender.try_send(text(100)).is_ok());
        let mut room = Box::pin(sender.room(100));
        assert!(futures_lite::future::block_on(futures_lite::future::poll_once(&mut room)).is_none(), "full");
        assert!(outbox.try_recv().is_some());
        assert!(futures_lite::future::block_on(futures_lite::future::poll_once(&mut room)).is_some(), "room again");
    }
}
