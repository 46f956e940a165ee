//! A connection's outbound queue: bounded, single-core, and sized by what it holds (a
//! preallocated channel of `outbound_queue_max` slots would cost every idle connection
//! more than 100 KiB). The core holds the [`OutboxSender`], the session the [`Outbox`].

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
    fn a_sender_waits_for_room() {
        let (sender, outbox) = outbox(1);
        assert!(sender.try_send(Out::Text("a".into())).is_ok());
        let mut room = Box::pin(sender.room());
        assert!(futures_lite::future::block_on(futures_lite::future::poll_once(&mut room)).is_none(), "full");
        assert!(outbox.try_recv().is_some());
        assert!(futures_lite::future::block_on(futures_lite::future::poll_once(&mut room)).is_some(), "room again");
    }
}
