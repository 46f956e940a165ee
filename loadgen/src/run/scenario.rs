//! The scenarios a plan runs, each with its own part of the plan, in one place: how many
//! connections it holds, what it opens on a generator thread before t0 and starts there at
//! t0, its piece of the progress line, when it has drained, and its section of the report.
//! The engine (`run`, `worker`) walks [`Scenario::of`] and knows no scenario by name.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::bail;
use async_tungstenite::tungstenite::Message;
use serde_json::json;

use crate::plan::{AbusePlan, ConnectPlan, FanoutPlan, Plan, PublishPlan, QueryPlan};
use crate::stats::{Latency, Metric, Sample, ScenarioReport};

use super::abuse::{abuse, Abuser};
use super::connect::ramp_connections;
use super::fanout::read_deliveries;
use super::net::{await_eose, closed_reason, connect, connect_with, SocketBuffer, Ws};
use super::publish::{start_publisher, Feed};
use super::query::run_queries;
use super::shared::Shared;

/// Connections opened at once while setting up.
pub(super) const SETUP_CONCURRENCY: usize = 64;
/// A stalled reader's receive buffer: small, so the relay feels it stop reading at once.
const STALLED_RECEIVE_BUFFER_SIZE: usize = 4096;
/// A flooder's socket send buffer (the kernel doubles it and keeps a floor of ~4.6 KiB): it
/// floods as fast as the relay reads, a few dozen messages ahead.
const FLOODER_SEND_BUFFER_SIZE: usize = 4096;

/// One scenario of a plan, with its part of the plan.
#[derive(Clone, Copy)]
pub(super) enum Scenario<'a> {
    Publish(&'a PublishPlan),
    Fanout(&'a FanoutPlan),
    Query(&'a QueryPlan),
    Connect(&'a ConnectPlan),
    Abuse(&'a AbusePlan),
}

/// What a scenario opened on one generator thread before t0.
pub(super) enum Opened {
    Nothing,
    /// Connection number and socket.
    Conns(Vec<(usize, Ws)>),
    /// Fan-out: its publishers, and its subscribers with their REQ answered.
    Fanout {
        publishers: Vec<(usize, Ws)>,
        subscribers: Vec<(usize, Ws)>,
    },
    Abusers(Vec<(Abuser, Ws)>),
}

/// Per fan-out subscriber of a thread, the events it received (a bit per fan-out event),
/// counted against what it should have received once the run is over.
pub(super) type Received = Vec<(usize, Rc<RefCell<Vec<u64>>>)>;

impl<'a> Scenario<'a> {
    /// The plan's scenarios, in the order they are opened, shown and reported.
    pub fn of(plan: &'a Plan) -> Vec<Scenario<'a>> {
        let mut scenarios = Vec::new();
        scenarios.extend(plan.publish.as_ref().map(Scenario::Publish));
        scenarios.extend(plan.fanout.as_ref().map(Scenario::Fanout));
        scenarios.extend(plan.query.as_ref().map(Scenario::Query));
        scenarios.extend(plan.connect.as_ref().map(Scenario::Connect));
        scenarios.extend(plan.abuse.as_ref().map(Scenario::Abuse));
        scenarios
    }

    /// Connections it holds once set up (the ramp's, once ramped; abusers are not counted).
    pub fn connections(&self) -> usize {
        match self {
            Scenario::Publish(p) => p.connections,
            Scenario::Fanout(f) => f.publishers + f.subscribers,
            Scenario::Query(q) => q.connections,
            Scenario::Connect(c) => c.connections,
            Scenario::Abuse(_) => 0,
        }
    }

    /// Open this thread's share of its connections (connection `c` belongs to thread
    /// `c % threads`); subscribers have their REQ answered with EOSE.
    pub async fn open(&self, shared: &Arc<Shared>, thread: usize) -> anyhow::Result<Opened> {
        let mine = |count: usize| (thread..count).step_by(shared.threads).collect::<Vec<_>>();
        Ok(match self {
            Scenario::Publish(p) => Opened::Conns(open_all(shared, mine(p.connections)).await?),
            Scenario::Fanout(f) => {
                let publishers = open_all(shared, mine(f.publishers)).await?;
                let subscribers = open_subscribers(shared, mine(shared.follows.len())).await?;
                Opened::Fanout { publishers, subscribers }
            }
            Scenario::Query(q) => Opened::Conns(open_all(shared, mine(q.connections)).await?),
            Scenario::Connect(_) => Opened::Nothing,
            Scenario::Abuse(a) => {
                let mut abusers = Vec::new();
                for index in mine(super::abuse::total(a)) {
                    let kind = super::abuse::kind_of(a, index);
                    let buffer = match kind {
                        Abuser::StalledReader => SocketBuffer::Receive(STALLED_RECEIVE_BUFFER_SIZE),
                        Abuser::CountFlooder | Abuser::ReqChurner => SocketBuffer::Send(FLOODER_SEND_BUFFER_SIZE),
                    };
                    abusers.push((kind, connect_with(&shared.target, Some(buffer), a.source_of(index)).await?));
                }
                Opened::Abusers(abusers)
            }
        })
    }

    /// Start its tasks on this thread at t0; fan-out subscribers' receipts go to `received`.
    pub fn start(
        &self,
        shared: &Arc<Shared>,
        stats: &Rc<RefCell<Sample>>,
        thread: usize,
        opened: Opened,
        received: &mut Received,
    ) {
        match (self, opened) {
            (Scenario::Publish(p), Opened::Conns(conns)) => {
                for (conn, ws) in conns {
                    start_publisher(shared, stats, ws, conn, (p.connections, p.rate), Feed::Publish);
                }
            }
            (Scenario::Fanout(f), Opened::Fanout { publishers, subscribers }) => {
                for (conn, ws) in publishers {
                    start_publisher(shared, stats, ws, conn, (f.publishers, f.rate), Feed::Fanout);
                }
                for (subscriber, ws) in subscribers {
                    let bits = Rc::new(RefCell::new(vec![0u64; shared.fanout.len().div_ceil(64)]));
                    received.push((subscriber, bits.clone()));
                    let task = read_deliveries(shared.clone(), stats.clone(), ws, subscriber, bits);
                    glommio::spawn_local(task).detach();
                }
            }
            (Scenario::Query(_), Opened::Conns(conns)) => {
                for (conn, ws) in conns {
                    glommio::spawn_local(run_queries(shared.clone(), stats.clone(), ws, conn)).detach();
                }
            }
            (Scenario::Connect(c), _) => {
                let threads = shared.threads;
                let mine = (thread..c.connections).step_by(threads).count();
                let interval = 1e9 * threads as f64 / c.rate;
                let phase = shared.warmup_ns as f64 + interval * thread as f64 / threads as f64;
                glommio::spawn_local(ramp_connections(shared.clone(), stats.clone(), mine, interval, phase)).detach();
            }
            (Scenario::Abuse(_), Opened::Abusers(abusers)) => start_abusers(shared, stats, abusers),
            _ => unreachable!("each scenario starts what it opened"),
        }
    }

    /// Its piece of a progress line: `count` gives a counter's rate over the interval,
    /// `p99` a latency's p99 so far.
    pub fn progress(&self, count: &dyn Fn(&str) -> f64, p99: &dyn Fn(Metric) -> f64, total: &Sample) -> String {
        match self {
            Scenario::Publish(p) => {
                format!("publish {:.0}/{:.0}/s p99 {:.2}ms", count("publish.accepted"), p.rate, p99(Metric::Publish))
            }
            Scenario::Fanout(_) => format!(
                "fanout {:.0} ev/s {:.0} deliveries/s p99 {:.2}ms",
                count("fanout.sent"),
                count("fanout.delivered"),
                p99(Metric::Fanout)
            ),
            Scenario::Query(q) => {
                format!("query {:.0}/{:.0}/s p99 {:.2}ms", count("query.done"), q.rate, p99(Metric::Query))
            }
            Scenario::Connect(_) => format!(
                "connect {:.0}/s p99 {:.2}ms open {}",
                count("connect.open"),
                p99(Metric::Connect),
                total.count_of("connect.open") - total.count_of("connect.dropped")
            ),
            Scenario::Abuse(_) => {
                format!("abuse {:.0} COUNT/s {:.0} REQ/s", count("abuse.count_sent"), count("abuse.req_sent"))
            }
        }
    }

    /// Whether what it sent has all been answered: every send its reply, every accepted
    /// fan-out event all its deliveries.
    pub fn drained(&self, shared: &Shared, total: &Sample) -> bool {
        let count = |key: &str| total.count_of(key);
        match self {
            Scenario::Publish(_) => count("publish.replies") >= count("publish.sent"),
            Scenario::Fanout(_) => {
                count("fanout.replies") >= count("fanout.sent")
                    && count("fanout.delivered") >= shared.expected_deliveries(false)
            }
            Scenario::Query(_) => count("query.done") >= count("query.sent"),
            Scenario::Connect(_) | Scenario::Abuse(_) => true,
        }
    }

    /// Its section of the report (abusers have none: they are counted under `abuse`).
    pub fn section(&self, shared: &Shared, total: &Sample, seconds: f64) -> Option<ScenarioReport> {
        let count = |key: &str| total.count_of(key);
        let offered = |metric: Metric| total.offered[metric as usize];
        Some(match self {
            Scenario::Publish(p) => {
                let counts = vec![
                    ("sent", count("publish.sent")),
                    ("accepted", count("publish.accepted")),
                    ("connections", p.connections as u64),
                ];
                section(total, seconds, "publish", Metric::Publish, offered(Metric::Publish), p.rate, counts)
            }
            Scenario::Fanout(f) => {
                let expected = shared.expected_deliveries(true);
                let counts = vec![
                    ("events_sent", count("fanout.sent")),
                    ("events_accepted", count("fanout.accepted")),
                    ("deliveries", count("fanout.delivered")),
                    ("deliveries_expected", shared.expected_deliveries(false)),
                    ("subscribers", f.subscribers as u64),
                    // What the subscribers read, as text and as it came (--deflate).
                    ("bytes", count("fanout.bytes")),
                    ("wire_bytes", count("fanout.wire_bytes")),
                ];
                section(total, seconds, "fanout", Metric::Fanout, expected, expected as f64 / seconds, counts)
            }
            Scenario::Query(q) => {
                let answered = total.latency[Metric::Query as usize].len().max(1);
                let counts = vec![
                    ("events_returned", count("query.events")),
                    ("events_per_query", count("query.measured_events") / answered),
                    ("preloaded", shared.known.accepted.len() as u64),
                ];
                section(total, seconds, "query", Metric::Query, offered(Metric::Query), q.rate, counts)
            }
            Scenario::Connect(c) => {
                let counts = vec![("opened", count("connect.open")), ("target", c.connections as u64)];
                let mut connect =
                    section(total, seconds, "connect", Metric::Connect, offered(Metric::Connect), c.rate, counts);
                // The ramp may end before the measured phase does; its rate is over the ramp.
                let ramp_seconds = (c.connections as f64 / c.rate).min(seconds);
                connect.achieved_rate = connect.completed as f64 / ramp_seconds;
                connect
            }
            Scenario::Abuse(_) => return None,
        })
    }
}

/// A scenario's report section from what was measured under `metric` and its own counts.
fn section(
    total: &Sample,
    seconds: f64,
    name: &'static str,
    metric: Metric,
    offered: u64,
    offered_rate: f64,
    counts: Vec<(&str, u64)>,
) -> ScenarioReport {
    let completed = total.completed[metric as usize];
    let prefix = format!("{name}.");
    ScenarioReport {
        name,
        offered_rate,
        achieved_rate: completed as f64 / seconds,
        offered,
        completed,
        latency: Latency::of(&total.latency[metric as usize]),
        counts: counts.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        errors: total.errors.iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(k, v)| (k.clone(), *v)).collect(),
    }
}

/// Open connections `conns`, `SETUP_CONCURRENCY` at a time.
async fn open_all(shared: &Arc<Shared>, conns: Vec<usize>) -> anyhow::Result<Vec<(usize, Ws)>> {
    let mut opened = Vec::new();
    for chunk in conns.chunks(SETUP_CONCURRENCY) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|&conn| {
                let target = shared.target.clone();
                glommio::spawn_local(async move { (conn, connect(&target).await) })
            })
            .collect();
        for task in tasks {
            let (conn, ws) = task.await;
            opened.push((conn, ws?));
        }
    }
    Ok(opened)
}

/// Open fan-out subscribers and have each one's REQ answered with EOSE.
async fn open_subscribers(shared: &Arc<Shared>, subscribers: Vec<usize>) -> anyhow::Result<Vec<(usize, Ws)>> {
    let mut opened = open_all(shared, subscribers).await?;
    for chunk in opened.chunks_mut(SETUP_CONCURRENCY) {
        for (subscriber, ws) in chunk.iter_mut() {
            let filter = shared.follows[*subscriber].filter(shared.plan.run.seed, shared.since, &shared.fanout_authors);
            if let Err(error) =
                ws.send(Message::text(json!(["REQ", format!("f{subscriber}"), filter]).to_string())).await
            {
                bail!("subscriber {subscriber}: {}", closed_reason(ws, error.into()).await);
            }
        }
        for (subscriber, ws) in chunk.iter_mut() {
            await_eose(ws, &format!("f{subscriber}")).await?;
        }
    }
    Ok(opened)
}

/// The abusers run in a task queue of their own with a tenth of the measured clients'
/// share: they keep the relay busy without making this thread late for the others (59
/// flooders in the default queue once put 2 s of send lag into every measured p99).
fn start_abusers(shared: &Arc<Shared>, stats: &Rc<RefCell<Sample>>, abusers: Vec<(Abuser, Ws)>) {
    if abusers.is_empty() {
        return;
    }
    let queue =
        glommio::executor().create_task_queue(glommio::Shares::Static(100), glommio::Latency::NotImportant, "abusers");
    for (kind, ws) in abusers {
        glommio::spawn_local_into(abuse(shared.clone(), stats.clone(), ws, kind), queue)
            .expect("the abusers' task queue exists")
            .detach();
    }
}
