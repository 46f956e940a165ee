//! `ringrelay import`: JSON lines in, every signature verified, each event routed to its
//! owner shard and stored under the same rules as live traffic.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::{Duration, Instant};

use crate::event::VerifiedEvent;
use crate::limits::EventLimits;
use crate::store::{Admission, DataDir, OpenMode, Shard, ShardId, ShardState};

use super::StoreOptions;

/// Lines verified together, in parallel, before their appends share a group commit.
const BATCH_LINE_COUNT: usize = 8_192;
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Counts by outcome; `rejected` by reason.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub read: u64,
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: BTreeMap<String, u64>,
}

impl ImportSummary {
    pub fn rejected_count(&self) -> u64 {
        self.rejected.values().sum()
    }

    fn reject(&mut self, reason: &str) {
        *self.rejected.entry(reason.to_owned()).or_default() += 1;
    }
}

impl std::fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "read {} lines: {} accepted, {} duplicate, {} rejected",
            self.read,
            self.accepted,
            self.duplicate,
            self.rejected_count()
        )?;
        for (reason, count) in &self.rejected {
            writeln!(f, "  {count:>10}  {reason}")?;
        }
        Ok(())
    }
}

/// Import every line of `input` into the data directory, creating it with `shard_count`
/// shards if needed.
pub fn run(options: &StoreOptions, shard_count: u16, input: Box<dyn BufRead + Send>) -> anyhow::Result<ImportSummary> {
    let options = options.clone();
    super::run_local("import", move || Box::pin(async move { import(&options, shard_count, input).await }))?
}

async fn import(
    options: &StoreOptions,
    shard_count: u16,
    mut input: Box<dyn BufRead + Send>,
) -> anyhow::Result<ImportSummary> {
    let dir = DataDir::open_or_create(&options.data_dir, shard_count)?;
    let config = options.shard_config()?;
    let mut shards = Vec::new();
    for shard in ShardId::all(dir.shard_count) {
        let state = ShardState::open(&dir.shard_dir(shard), shard, config.clone(), OpenMode::ReadWrite)?;
        shards.push(Shard::start(state));
    }
    let limits = EventLimits::hard_caps();
    let mut summary = ImportSummary::default();
    let started = Instant::now();
    let mut last_progress = started;
    loop {
        let lines = read_batch(&mut input, &mut summary)?;
        if lines.is_empty() {
            break;
        }
        let verified = verify_parallel(&lines, &limits);
        let mut pending = Vec::new();
        let now = crate::now_unix();
        for outcome in verified {
            let event = match outcome {
                Ok(event) => event,
                Err(reason) => {
                    summary.reject(&reason);
                    continue;
                }
            };
            let shard = &shards[usize::from(dir.owner_shard(&event.pubkey().0))];
            match shard.append(&event, now)? {
                Admission::Stored(durable) => pending.push(durable),
                Admission::Duplicate(_) => summary.duplicate += 1,
                Admission::Ephemeral => summary.reject("ephemeral: not stored"),
                Admission::Rejected(rejection) => summary.reject(rejection.reason()),
            }
        }
        for durable in pending {
            durable.await?;
            summary.accepted += 1;
        }
        if last_progress.elapsed() >= PROGRESS_INTERVAL {
            last_progress = Instant::now();
            let rate = summary.read as f64 / started.elapsed().as_secs_f64();
            eprintln!(
                "import: {} read, {} accepted, {} duplicate, {} rejected ({rate:.0} lines/s)",
                summary.read,
                summary.accepted,
                summary.duplicate,
                summary.rejected_count()
            );
        }
    }
    for shard in shards {
        shard.close().await?;
    }
    Ok(summary)
}

fn read_batch(input: &mut dyn BufRead, summary: &mut ImportSummary) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut lines = Vec::with_capacity(BATCH_LINE_COUNT);
    while lines.len() < BATCH_LINE_COUNT {
        let mut line = Vec::new();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        summary.read += 1;
        lines.push(line);
    }
    Ok(lines)
}

/// Verify lines on every core; signatures are the cost of an import.
fn verify_parallel(lines: &[Vec<u8>], limits: &EventLimits) -> Vec<Result<VerifiedEvent, String>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk_size = lines.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = lines
            .chunks(chunk_size)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|line| {
                            VerifiedEvent::from_json(line.trim_ascii(), limits).map_err(|e| e.category().to_owned())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|worker| worker.join().expect("verifier thread")).collect()
    })
}
