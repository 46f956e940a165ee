//! A connection's outbound queue: bounded, single-core, and sized by what it holds (a
//! preallocated channel of `outbound_queue_max` slots would cost every idle connection
//! more than 100 KiB). The core holds the [`OutboxSender`], the session the [`Outbox`].
//!
//! Two kinds of message go through it. Live events nobody asked for at this moment are
//! refused when the queue is full, and the reader is dropped as a slow consumer. Replies to
//! the client's own messages (OK, NOTICE, CLOSED, COUNT) are always queued; instead, the
//! session stops reading the client while the queue and the replies still owed fill the
//! capacity, so a client that sends faster than it reads is slowed down by TCP, not dropped,
//! and the queue stays within the capacity plus the replies to one message.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use super::core::Out;

/// Capacity kept after the queue drains; beyond it, a burst's memory is returned.
const RETAINED_CAPACITY: usize = 32;

struct Shared {
    queue: RefCell<VecDeque<Out>>,
    capacity: usize,
    waker: Cell<Option<Waker>>,
    /// Senders waiting for room (answers to REQs); woken when the writer takes a message.
    room_wakers: RefCell<Vec<Waker>>,
    closed: Cell<bool>,
    /// Replies owed for messages already read (EVENTs waiting for their fsync).
    owed: Cell<usize>,
}

pub struct OutboxSender(Rc<Shared>);
pub struct Outbox(Rc<Shared>);

/// A queue of at most `capacity` messages.
pub fn outbox(capacity: usize) -> (OutboxSender, Outbox) {
    assert!(capacity > 0);
    let shared = Rc::new(Shared {
        queue: RefCell::new(VecDeque::new()),
        capacity,
        waker: Cell::new(None),
        room_wakers: RefCell::new(Vec::new()),
        closed: Cell::new(false),
        owed: Cell::new(0),
    });
    (OutboxSender(shared.clone()), Outbox(shared))
}

impl OutboxSender {
    /// Queue `out`; refused when the queue is full (the connection is a slow consumer).
    pub fn try_send(&self, out: Out) -> Result<(), Out> {
        let mut queue = self.0.queue.borrow_mut();
        if queue.len() >= self.0.capacity {
            return Err(out);
        }
        queue.push_back(out);
        if let Some(waker) = self.0.waker.take() {
            waker.wake();
        }
        Ok(())
    }
}

impl OutboxSender {
    /// Queue a reply to something the client sent, whatever the queue holds (see the module
    /// notes); `owed` says it settles a reply promised by [`OutboxSender::owe_reply`].
    pub fn send_reply(&self, out: Out, owed: bool) {
        if owed {
            self.0.owed.set(self.0.owed.get().saturating_sub(1));
        }
        self.0.queue.borrow_mut().push_back(out);
        if let Some(waker) = self.0.waker.take() {
            waker.wake();
        }
    }

    /// A reply will follow later (an EVENT's OK, once durable).
    pub fn owe_reply(&self) {
        self.0.owed.set(self.0.owed.get() + 1);
    }

    /// Resolves once the queue has room (or the connection is gone). Holds no borrow of the
    /// sender, so the caller need not keep the connection's state borrowed while it waits.
    pub fn room(&self) -> impl std::future::Future<Output = ()> + 'static {
        let shared = self.0.clone();
        poll_fn(move |cx| {
            if shared.closed.get() || shared.queue.borrow().len() < shared.capacity {
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
        if let Some(waker) = self.0.waker.take() {
            waker.wake();
        }
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

    /// Whether the session may read another client message: the queue and the replies
    /// still owed leave room.
    pub fn accepts_input(&self) -> bool {
        self.0.queue.borrow().len() + self.0.owed.get() < self.0.capacity
    }

    pub fn try_recv(&self) -> Option<Out> {
        let mut queue = self.0.queue.borrow_mut();
        let out = queue.pop_front();
        if queue.is_empty() && queue.capacity() > RETAINED_CAPACITY {
            queue.shrink_to(RETAINED_CAPACITY);
        }
        if out.is_some() {
            self.0.room_wakers.borrow_mut().drain(..).for_each(Waker::wake);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_ordered_and_closes() {
        let (sender, outbox) = outbox(2);
        assert!(sender.try_send(Out::Text("a".into())).is_ok());
        assert!(sender.try_send(Out::Text("b".into())).is_ok());
        assert!(sender.try_send(Out::Text("c".into())).is_err(), "full");
        assert!(matches!(outbox.try_recv(), Some(Out::Text(t)) if t == "a"));
        drop(sender);
        let next = futures_lite::future::block_on(outbox.recv());
        assert!(matches!(next, Some(Out::Text(t)) if t == "b"), "queued messages survive the sender");
        assert!(futures_lite::future::block_on(outbox.recv()).is_none());
    }

    #[test]
    fn replies_are_always_queued_and_hold_back_input() {
        let (sender, outbox) = outbox(2);
        assert!(outbox.accepts_input());
        sender.owe_reply();
        sender.send_reply(Out::Text("notice".into()), false);
        assert!(!outbox.accepts_input(), "one queued and one owed fill a capacity of 2");
        sender.send_reply(Out::Text("ok 1".into()), true);
        sender.send_reply(Out::Text("ok 2".into()), false);
        assert!(sender.try_send(Out::Text("live".into())).is_err(), "live events still find it full");
        for expected in ["notice", "ok 1", "ok 2"] {
            assert!(matches!(outbox.try_recv(), Some(Out::Text(t)) if t == expected));
        }
        assert!(outbox.accepts_input());
    }

    #[test]
    fn a_sender_waits_for_room() {
        let (sender, outbox) = outbox(1);
        assert!(sender.try_send(Out::Text("a".into())).is_ok());
        let mut room = Box::pin(sender.room());
        assert!(futures_lite::future::block_on(futures_lite::future::poll_once(&mut room)).is_none(), "full");
        assert!(outbox.try_recv().is_some());
        assert!(futures_lite::future::block_on(futures_lite::future::poll_once(&mut room)).is_some(), "room again");
    }
}
