//! The core-to-core mesh: one closed message enum, [`CoreMsg`], and the one scatter/gather
//! facility every cross-core request goes through ([`Mesh::gather`]).
//!
//! Rules that keep it bounded and free of deadlock:
//! - A message that starts work elsewhere (an append, a query, a live event) is sent by a
//!   task that waits while the peer's channel is full ([`Mesh::send`]): backpressure.
//! - The handlers that receive messages never wait. What they send back (an OK, a query's
//!   answer, a cancel) goes through [`Mesh::post`]: into the channel if it has room, else
//!   into the peer's backlog, which one long-lived pump task per peer drains in order. A
//!   backlog entry answers a message the peer sent, so a backlog never holds more than the
//!   peer has in flight (its queries, bounded by `queries_per_core_max`, and its appends,
//!   bounded by its connections' owed replies).
//! - Since receivers never wait, a sender always makes progress: no cycle of full channels
//!   can hold two cores.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use glommio::channels::channel_mesh::Senders;

use super::ids::CoreId;
use super::metrics::CoreMetrics;
use super::parts::{CountPart, QueryLimits, WireHit};
use super::stages::Routed;
use super::stats::{Outcome, Stats};
use crate::event::EventId;
use crate::filter::Filter;
use crate::store::Privacy;
use crate::subs::{ConnId, LiveEvent};

/// Everything one core says to another.
pub enum CoreMsg {
    /// To the owner of the author's shard: store this verified event.
    Append { routed: Box<Routed>, reply: Reply },
    /// Back to the publishing connection's core: the `OK` to send.
    Ack { reply: Reply, outcome: Outcome, reason: std::borrow::Cow<'static, str> },
    /// A durable (or ephemeral) event, to match against every core's subscriptions.
    Live(Arc<LiveEvent>),
    /// A request for this core's part of a gather.
    Ask { request: RequestId, ask: Ask },
    /// The asker no longer wants the answer: stop the work.
    Cancel { request: RequestId },
    /// This core's part of a gather.
    Answer { request: RequestId, answer: Answer },
}

/// Where an `OK` goes.
#[derive(Clone, Debug)]
pub struct Reply {
    pub core: CoreId,
    pub conn: ConnId,
    pub event_id: EventId,
    /// When the EVENT arrived, for the ingest latency.
    pub received: std::time::Instant,
}

/// A gather, named by the core that started it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId {
    pub core: CoreId,
    pub seq: u64,
}

/// What a gather asks each core for.
#[derive(Clone)]
pub enum Ask {
    /// A scan of the core's shards, run as a task the asker may cancel.
    Scan(ScanAsk),
    /// The core's counters, answered at once.
    Metrics,
    /// Put these lists in force (SIGHUP, NIP-86), then answer, at once.
    Lists(super::lists::Versioned),
    /// Run the links of these `[[peers]]` that fall to the core, and no others (SIGHUP);
    /// answered at once.
    Peers(Arc<[crate::config::PeerConfig]>),
}

/// The asks that scan a core's shards.
#[derive(Clone)]
pub enum ScanAsk {
    /// Per filter, the core's newest events (a REQ, a deletion's lookup): `Answer::Hits`.
    Hits { filters: Arc<[Filter]>, limits: QueryLimits, privacy: Privacy },
    /// How many of the core's events match (COUNT): `Answer::Count`.
    Count { filters: Arc<[Filter]>, limits: QueryLimits, privacy: Privacy },
    /// The (created_at, id) of the core's newest `limit` events matching one filter (a
    /// NIP-77 sync's set): `Answer::Ids`.
    Ids { filter: Arc<Filter>, limit: usize, now: u64, privacy: Privacy },
}

/// One core's part of a gather.
pub enum Answer {
    Hits(Vec<Vec<WireHit>>),
    Count(CountPart),
    Ids(Vec<(u64, [u8; 32])>),
    Metrics(Box<CoreMetrics>),
    /// The lists (or peers) asked for are in force.
    Applied,
}

impl Answer {
    fn name(&self) -> &'static str {
        match self {
            Answer::Hits(_) => "hits",
            Answer::Count(_) => "a count",
            Answer::Ids(_) => "ids",
            Answer::Metrics(_) => "metrics",
            Answer::Applied => "lists applied",
        }
    }
}

/// What a gather's parts are, taken out of the one [`Answer`] enum. Every core answers an
/// [`Ask`] with its own variant (`ScanAsk::Hits` with `Answer::Hits`, ...), so a part of
/// another variant is a programmer error, and crashes here, in one place.
pub trait Part: Sized {
    fn take(answer: Answer) -> Self;
}

fn mismatch(expected: &str, got: &Answer) -> ! {
    panic!("a gather of {expected} got {} from a peer", got.name())
}

impl Part for Vec<Vec<WireHit>> {
    fn take(answer: Answer) -> Self {
        match answer {
            Answer::Hits(hits) => hits,
            other => mismatch("hits", &other),
        }
    }
}

impl Part for CountPart {
    fn take(answer: Answer) -> Self {
        match answer {
            Answer::Count(part) => part,
            other => mismatch("a count", &other),
        }
    }
}

impl Part for Vec<(u64, [u8; 32])> {
    fn take(answer: Answer) -> Self {
        match answer {
            Answer::Ids(ids) => ids,
            other => mismatch("ids", &other),
        }
    }
}

impl Part for Box<CoreMetrics> {
    fn take(answer: Answer) -> Self {
        match answer {
            Answer::Metrics(metrics) => metrics,
            other => mismatch("metrics", &other),
        }
    }
}

/// Lists put in force.
impl Part for () {
    fn take(answer: Answer) -> Self {
        match answer {
            Answer::Applied => (),
            other => mismatch("lists applied", &other),
        }
    }
}

struct Gather {
    answers: Vec<Answer>,
    expected: usize,
    waker: Option<Waker>,
}

pub struct Mesh {
    pub id: CoreId,
    pub core_count: usize,
    senders: Senders<CoreMsg>,
    /// Per peer: what [`Mesh::post`] could not put into the full channel, in order.
    backlog: Vec<RefCell<VecDeque<CoreMsg>>>,
    pump_wakers: Vec<Cell<Option<Waker>>>,
    gathers: RefCell<HashMap<u64, Gather>>,
    next_seq: Cell<u64>,
    stats: Rc<Stats>,
}

impl Mesh {
    pub fn new(senders: Senders<CoreMsg>, stats: Rc<Stats>) -> Rc<Mesh> {
        let core_count = senders.nr_consumers();
        Rc::new(Mesh {
            id: CoreId(senders.peer_id()),
            core_count,
            senders,
            backlog: (0..core_count).map(|_| RefCell::new(VecDeque::new())).collect(),
            pump_wakers: (0..core_count).map(|_| Cell::new(None)).collect(),
            gathers: RefCell::new(HashMap::new()),
            next_seq: Cell::new(1),
            stats,
        })
    }

    /// Every core but this one.
    pub fn peers(&self) -> impl Iterator<Item = CoreId> + '_ {
        (0..self.core_count).map(CoreId).filter(move |&core| core != self.id)
    }

    /// Send a message that starts work on `peer`, waiting while its channel is full. Only
    /// tasks call this, never a message handler (see the module notes).
    pub async fn send(&self, peer: CoreId, message: CoreMsg) {
        debug_assert_ne!(peer, self.id);
        // The peer is gone only while shutting down; nothing waits for the message then.
        let _ = self.senders.send_to(peer.0, message).await;
    }

    /// Send without waiting: into the channel, or behind what already waits for `peer`.
    pub fn post(&self, peer: CoreId, message: CoreMsg) {
        debug_assert_ne!(peer, self.id);
        let mut backlog = self.backlog[peer.0].borrow_mut();
        let message = if backlog.is_empty() {
            match self.senders.try_send_to(peer.0, message) {
                Ok(()) => return,
                Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(message))) => message,
                Err(_) => return,
            }
        } else {
            message
        };
        backlog.push_back(message);
        self.stats.mesh_backlog.add(1);
        if let Some(waker) = self.pump_wakers[peer.0].take() {
            waker.wake();
        }
    }

    /// The task that drains `peer`'s backlog, for the life of the core.
    pub async fn pump(self: Rc<Self>, peer: CoreId) {
        loop {
            let message = poll_fn(|cx| match self.backlog[peer.0].borrow_mut().pop_front() {
                Some(message) => Poll::Ready(message),
                None => {
                    self.pump_wakers[peer.0].set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            })
            .await;
            self.stats.mesh_backlog.sub(1);
            if self.senders.send_to(peer.0, message).await.is_err() {
                return;
            }
        }
    }

    /// Ask every other core, run `local` for this core's part meanwhile, and return every
    /// part, this core's first. Dropping the future cancels the work on every core.
    pub async fn gather<T: Part>(self: &Rc<Self>, ask: Ask, local: impl Future<Output = T>) -> Vec<T> {
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        let request = RequestId { core: self.id, seq };
        let expected = self.core_count - 1;
        self.gathers.borrow_mut().insert(seq, Gather { answers: Vec::with_capacity(expected), expected, waker: None });
        let mut guard = GatherGuard { mesh: self.clone(), request, armed: true };
        for peer in self.peers() {
            self.send(peer, CoreMsg::Ask { request, ask: ask.clone() }).await;
        }
        let mine = local.await;
        poll_fn(|cx| {
            let mut gathers = self.gathers.borrow_mut();
            let gather = gathers.get_mut(&seq).expect("a gather is removed only by its guard");
            if gather.answers.len() >= gather.expected {
                return Poll::Ready(());
            }
            gather.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        guard.armed = false;
        let gather = self.gathers.borrow_mut().remove(&seq).expect("present until now");
        let mut answers = Vec::with_capacity(self.core_count);
        answers.push(mine);
        answers.extend(gather.answers.into_iter().map(T::take));
        answers
    }

    /// A part of one of this core's gathers arrived; one no longer wanted is dropped.
    pub fn on_answer(&self, request: RequestId, answer: Answer) {
        let waker = match self.gathers.borrow_mut().get_mut(&request.seq) {
            Some(gather) => {
                gather.answers.push(answer);
                gather.waker.take()
            }
            None => return,
        };
        // Woken once the borrow is gone, should a waker ever poll in place.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Cancels a gather on every core when its future is dropped before it finished.
struct GatherGuard {
    mesh: Rc<Mesh>,
    request: RequestId,
    armed: bool,
}

impl Drop for GatherGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.mesh.gathers.borrow_mut().remove(&self.request.seq);
        for peer in self.mesh.peers() {
            self.mesh.post(peer, CoreMsg::Cancel { request: self.request });
        }
    }
}
