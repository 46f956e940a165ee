//! A generator thread: its connections, its tasks, its ticks to the main thread.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::bail;
use async_tungstenite::tungstenite::Message;
use serde_json::json;

use crate::stats::Sample;

use super::abuse::{abuse, Abuser};
use super::connect::ramp_connections;
use super::fanout::{count_missing, read_deliveries};
use super::net::{await_eose, closed_reason, connect, connect_with, SocketBuffer, Ws};
use super::publish::{start_publisher, Scenario};
use super::query::run_queries;
use super::shared::{thread_cpu, Shared, Tick};

/// Connections opened at once while setting up.
pub(super) const SETUP_CONCURRENCY: usize = 64;
/// A stalled reader's receive buffer: small, so the relay feels it stop reading at once.
const STALLED_RECEIVE_BUFFER_SIZE: usize = 4096;
/// A flooder's socket send buffer (the kernel doubles it and keeps a floor of ~4.6 KiB): it
/// floods as fast as the relay reads, a few dozen messages ahead.
const FLOODER_SEND_BUFFER_SIZE: usize = 4096;

/// One generator thread: open its share of connections, report ready, run its schedules from
/// t0, tick once a second, and on `finish` count missing deliveries and report for the last time.
pub(super) async fn worker(
    shared: Arc<Shared>,
    index: usize,
    ticks: mpsc::Sender<Tick>,
    ready: mpsc::Sender<Result<(), String>>,
) {
    let stats = Rc::new(RefCell::new(Sample::default()));
    let setup = match open_connections(&shared, index).await {
        Ok(setup) => {
            let _ = ready.send(Ok(()));
            setup
        }
        Err(error) => {
            let _ = ready.send(Err(format!("{error:#}")));
            return;
        }
    };
    while shared.t0.get().is_none() {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    if shared.finishing() {
        return;
    }
    let threads = shared.threads;
    let mut subscribers = Vec::new();
    if let Some(p) = &shared.plan.publish {
        for (conn, ws) in setup.publishers {
            start_publisher(&shared, &stats, ws, conn, (p.connections, p.rate), Scenario::Publish);
        }
    }
    if let Some(f) = &shared.plan.fanout {
        for (conn, ws) in setup.fanout_publishers {
            start_publisher(&shared, &stats, ws, conn, (f.publishers, f.rate), Scenario::Fanout);
        }
    }
    for (subscriber, ws) in setup.subscribers {
        let received = Rc::new(RefCell::new(vec![0u64; shared.fanout.len().div_ceil(64)]));
        subscribers.push((subscriber, received.clone()));
        glommio::spawn_local(read_deliveries(shared.clone(), stats.clone(), ws, subscriber, received)).detach();
    }
    for (conn, ws) in setup.queriers {
        glommio::spawn_local(run_queries(shared.clone(), stats.clone(), ws, conn)).detach();
    }
    // The abusers run in a task queue of their own with a tenth of the measured clients'
    // share: they keep the relay busy without making this thread late for the others (59
    // flooders in the default queue once put 2 s of send lag into every measured p99).
    if !setup.abusers.is_empty() {
        let queue = glommio::executor().create_task_queue(
            glommio::Shares::Static(100),
            glommio::Latency::NotImportant,
            "abusers",
        );
        for (kind, ws) in setup.abusers {
            glommio::spawn_local_into(abuse(shared.clone(), stats.clone(), ws, kind), queue)
                .expect("the abusers' task queue exists")
                .detach();
        }
    }
    if let Some(c) = &shared.plan.connect {
        let mine = (index..c.connections).step_by(threads).count();
        let interval = 1e9 * threads as f64 / c.rate;
        let phase = shared.warmup_ns as f64 + interval * index as f64 / threads as f64;
        glommio::spawn_local(ramp_connections(shared.clone(), stats.clone(), mine, interval, phase)).detach();
    }
    let busy = Rc::new(Cell::new(0.0));
    let busy_measured = glommio::spawn_local(measure_busy(shared.clone(), busy.clone()));

    // Ticks: once a second (aligned to t0) while sending, every 100 ms while draining.
    let mut last_cpu = thread_cpu();
    let mut second = 0u64;
    let mut next_ns = 1_000_000_000u64;
    while !shared.finishing() {
        shared.sleep_until(next_ns.min(shared.elapsed_ns() + 10_000_000)).await;
        if shared.elapsed_ns() < next_ns && !shared.finishing() {
            continue;
        }
        if next_ns <= shared.end_ns {
            second += 1;
        }
        next_ns += if next_ns < shared.end_ns { 1_000_000_000 } else { 100_000_000 };
        let cpu = thread_cpu();
        let sample = stats.replace(Sample::default());
        let _ = ticks.send(Tick { worker: index, second, sample, cpu: cpu - last_cpu, final_busy: None });
        last_cpu = cpu;
    }
    busy_measured.await;
    let missing = count_missing(&shared, &subscribers);
    if missing > 0 {
        *stats.borrow_mut().errors.entry("fanout.missing".to_owned()).or_default() += missing;
    }
    let sample = stats.replace(Sample::default());
    let _ = ticks.send(Tick {
        worker: index,
        second: 0,
        sample,
        cpu: thread_cpu() - last_cpu,
        final_busy: Some(busy.get()),
    });
}

pub(super) struct Setup {
    publishers: Vec<(usize, Ws)>,
    fanout_publishers: Vec<(usize, Ws)>,
    subscribers: Vec<(usize, Ws)>,
    queriers: Vec<(usize, Ws)>,
    abusers: Vec<(Abuser, Ws)>,
}

/// This thread's connections (connection `c` of a kind belongs to thread `c % threads`);
/// subscribers have their REQ answered with EOSE before the run starts.
pub(super) async fn open_connections(shared: &Arc<Shared>, index: usize) -> anyhow::Result<Setup> {
    let threads = shared.threads;
    let mine = |count: usize| (index..count).step_by(threads).collect::<Vec<_>>();
    let open = |conns: Vec<usize>| {
        let target = shared.target.clone();
        async move {
            let mut opened = Vec::new();
            for chunk in conns.chunks(SETUP_CONCURRENCY) {
                let tasks: Vec<_> = chunk
                    .iter()
                    .map(|&conn| {
                        let target = target.clone();
                        glommio::spawn_local(async move { (conn, connect(&target).await) })
                    })
                    .collect();
                for task in tasks {
                    let (conn, ws) = task.await;
                    opened.push((conn, ws?));
                }
            }
            Ok::<_, anyhow::Error>(opened)
        }
    };
    let plan = &shared.plan;
    let publishers = open(mine(plan.publish.as_ref().map_or(0, |p| p.connections))).await?;
    let fanout_publishers = open(mine(plan.fanout.as_ref().map_or(0, |f| f.publishers))).await?;
    let queriers = open(mine(plan.query.as_ref().map_or(0, |q| q.connections))).await?;
    let mut subscribers = open(mine(shared.follows.len())).await?;
    for chunk in subscribers.chunks_mut(SETUP_CONCURRENCY) {
        for (subscriber, ws) in chunk.iter_mut() {
            let filter = shared.follows[*subscriber].filter(plan.run.seed, shared.since, &shared.fanout_authors);
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
    let mut abusers = Vec::new();
    if let Some(a) = &plan.abuse {
        for index in mine(super::abuse::total(a)) {
            let kind = super::abuse::kind_of(a, index);
            let buffer = match kind {
                Abuser::StalledReader => SocketBuffer::Receive(STALLED_RECEIVE_BUFFER_SIZE),
                Abuser::CountFlooder | Abuser::ReqChurner => SocketBuffer::Send(FLOODER_SEND_BUFFER_SIZE),
            };
            abusers.push((kind, connect_with(&shared.target, Some(buffer), a.source_of(index)).await?));
        }
    }
    Ok(Setup { publishers, fanout_publishers, subscribers, queriers, abusers })
}

/// This thread's CPU share between the start and the end of the measured phase.
pub(super) async fn measure_busy(shared: Arc<Shared>, busy: Rc<Cell<f64>>) {
    shared.sleep_until(shared.warmup_ns).await;
    let (cpu, wall) = (thread_cpu(), Instant::now());
    shared.sleep_until(shared.end_ns).await;
    let seconds = wall.elapsed().as_secs_f64();
    if seconds > 0.0 {
        busy.set((thread_cpu() - cpu).as_secs_f64() / seconds);
    }
}
