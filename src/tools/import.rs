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
    let importer = Importer::open(options, shard_count)?;
    let mut summary = ImportSummary::default();
    let started = Instant::now();
    let mut last_progress = started;
    loop {
        let lines = read_batch(&mut input, &mut summary)?;
        if lines.is_empty() {
            break;
        }
        for outcome in importer.store(&lines).await? {
            match outcome {
                Outcome::Stored => summary.accepted += 1,
                Outcome::Duplicate => summary.duplicate += 1,
                Outcome::Rejected(reason) => summary.reject(&reason),
            }
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
    importer.close().await?;
    Ok(summary)
}

/// What became of one event handed to [`Importer::store`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    Duplicate,
    Rejected(String),
}

/// A data directory opened for writing by an offline command (import, sync): every shard
/// started, events verified on every core and appended under the live rules.
pub struct Importer {
    dir: DataDir,
    shards: Vec<Shard>,
    limits: EventLimits,
}

impl Importer {
    /// Open (or create, with `shard_count` shards) the data directory.
    pub fn open(options: &StoreOptions, shard_count: u16) -> anyhow::Result<Importer> {
        let dir = DataDir::open_or_create(&options.data_dir, shard_count)?;
        let config = options.shard_config()?;
        let mut shards = Vec::new();
        for shard in ShardId::all(dir.shard_count) {
            let state = ShardState::open(&dir.shard_dir(shard), shard, config.clone(), OpenMode::ReadWrite)?;
            shards.push(Shard::start(state));
        }
        Ok(Importer { dir, shards, limits: EventLimits::hard_caps() })
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Verify `events` (JSON each) in parallel, append them, and wait until the appended
    /// ones are durable: one outcome per event, in order.
    pub async fn store<T: AsRef<[u8]> + Sync>(&self, events: &[T]) -> anyhow::Result<Vec<Outcome>> {
        let now = crate::now_unix();
        let mut outcomes = Vec::with_capacity(events.len());
        let mut pending = Vec::new();
        for verified in verify_parallel(events, &self.limits) {
            let event = match verified {
                Ok(event) => event,
                Err(reason) => {
                    outcomes.push(Outcome::Rejected(reason));
                    continue;
                }
            };
            let shard = &self.shards[usize::from(self.dir.owner_shard(&event.pubkey().0))];
            outcomes.push(match shard.append(&event, now)? {
                Admission::Stored(durable) => {
                    pending.push(durable);
                    Outcome::Stored
                }
                Admission::Duplicate(_) => Outcome::Duplicate,
                Admission::Ephemeral => Outcome::Rejected("ephemeral: not stored".into()),
                Admission::Rejected(rejection) => Outcome::Rejected(rejection.reason().into()),
            });
        }
        for durable in pending {
            durable.await?;
        }
        Ok(outcomes)
    }

    /// Close every shard, and give its sealed segments their index parts, so that the
    /// relay's next start maps them instead of reading them.
    pub async fn close(self) -> anyhow::Result<()> {
        for shard in self.shards {
            shard.close().await?.build_parts();
        }
        Ok(())
    }
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
fn verify_parallel<T: AsRef<[u8]> + Sync>(lines: &[T], limits: &EventLimits) -> Vec<Result<VerifiedEvent, String>> {
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
                            VerifiedEvent::from_json(line.as_ref().trim_ascii(), limits)
                                .map_err(|e| e.category().to_owned())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|worker| worker.join().expect("verifier thread")).collect()
    })
}
