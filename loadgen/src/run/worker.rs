//! A generator thread: its connections, its tasks, its ticks to the main thread.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::stats::Sample;

use super::fanout::count_missing;
use super::scenario::{Opened, Scenario};
use super::shared::{thread_cpu, Shared, Tick};

/// One generator thread: open its share of every scenario's connections, report ready, start
/// them at t0, tick once a second, and on `finish` count missing deliveries and report for
/// the last time.
pub(super) async fn worker(
    shared: Arc<Shared>,
    index: usize,
    ticks: mpsc::Sender<Tick>,
    ready: mpsc::Sender<Result<(), String>>,
) {
    let stats = Rc::new(RefCell::new(Sample::default()));
    let scenarios = Scenario::of(&shared.plan);
    let opened = match open_connections(&shared, &scenarios, index).await {
        Ok(opened) => {
            let _ = ready.send(Ok(()));
            opened
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
    let mut received = Vec::new();
    for (scenario, opened) in scenarios.iter().zip(opened) {
        scenario.start(&shared, &stats, index, opened, &mut received);
    }
    let busy = Rc::new(Cell::new(0.0));
    let busy_measured = glommio::spawn_local(measure_busy(shared.clone(), busy.clone()));
    let last_cpu = tick_until_finished(&shared, &stats, index, &ticks).await;
    busy_measured.await;
    let missing = count_missing(&shared, &received);
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

/// Ticks: once a second (aligned to t0) while sending, every 100 ms while draining, until
/// the run finishes; the thread's CPU time at the last one.
async fn tick_until_finished(
    shared: &Shared,
    stats: &RefCell<Sample>,
    index: usize,
    ticks: &mpsc::Sender<Tick>,
) -> Duration {
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
    last_cpu
}

/// This thread's connections of every scenario, in the scenarios' order.
async fn open_connections(
    shared: &Arc<Shared>,
    scenarios: &[Scenario<'_>],
    index: usize,
) -> anyhow::Result<Vec<Opened>> {
    let mut opened = Vec::with_capacity(scenarios.len());
    for scenario in scenarios {
        opened.push(scenario.open(shared, index).await?);
    }
    Ok(opened)
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
