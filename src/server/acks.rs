//! A shard's ack pipeline: its appends in the order they were made, each waiting for the
//! fsync that makes it durable. One task per shard (`ingest::answer_appends`) takes them in
//! that order and sends their OKs; this module only holds the queue and its figures.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use super::mesh::Reply;
use crate::event::VerifiedEvent;
use crate::store::Durable;

/// An append waiting for its fsync.
pub struct Pending {
    /// Resolves once the append (or, for a copy, its original) is on disk; none when
    /// nothing is left to wait for.
    pub durable: Option<Durable>,
    pub reply: Reply,
    /// The event to broadcast once durable (none for a duplicate).
    pub live: Option<VerifiedEvent>,
    pub duplicate: bool,
    /// The stored event's number in its shard.
    pub no: Option<u32>,
}

/// One shard's appends in the order they were made (the committer resolves them in that
/// order). It holds no more than the appends in flight, which the publishers' owed replies
/// bound.
#[derive(Default)]
pub struct AckPipeline {
    queue: RefCell<VecDeque<Pending>>,
    waker: RefCell<Option<Waker>>,
    /// Appends pushed and not yet answered.
    in_flight: Cell<usize>,
    /// One past the newest stored event whose OK has gone out: copies of events below it
    /// may be answered at once.
    answered: Cell<u32>,
}

impl AckPipeline {
    /// A pipeline for a shard opened with `durable_count` events, all of them answered.
    pub fn new(durable_count: u32) -> AckPipeline {
        AckPipeline { answered: Cell::new(durable_count), ..AckPipeline::default() }
    }

    /// Whether every append pushed has been answered.
    pub fn is_idle(&self) -> bool {
        self.in_flight.get() == 0
    }

    /// One past the newest stored event this pipeline has acknowledged.
    pub fn answered_count(&self) -> u32 {
        self.answered.get()
    }

    pub fn push(&self, pending: Pending) {
        self.in_flight.set(self.in_flight.get() + 1);
        self.queue.borrow_mut().push_back(pending);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// The oldest append not yet answered, once there is one.
    pub async fn next(&self) -> Pending {
        poll_fn(|cx| match self.queue.borrow_mut().pop_front() {
            Some(pending) => Poll::Ready(pending),
            None => {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Stored event `no`'s OK is going out: copies of it may be answered at once.
    pub fn acknowledged(&self, no: u32) {
        self.answered.set(self.answered.get().max(no + 1));
    }

    /// The append taken by `next` is done with.
    pub fn finished(&self) {
        self.in_flight.set(self.in_flight.get() - 1);
    }
}
