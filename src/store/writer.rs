//! Group commit on glommio direct I/O: appends write into the segment image and wait; one
//! committer task per shard writes everything pending with `DmaFile::write_at`, issues one
//! `fdatasync` for the whole batch, and only then resolves the appends it covered.
//!
//! The partially filled last block is written again by the next commit. Its already
//! durable prefix is rewritten with identical bytes, so a torn sector write cannot change
//! acknowledged data.

use std::cell::{Ref, RefCell, RefMut};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures_channel::{mpsc, oneshot};
use futures_lite::StreamExt;
use glommio::io::OpenOptions;

use super::compact::{Failure, Rewrite, Rewritten};
use super::faults::{Fault, IoOp};
use super::index::{EventNo, Rejection};
use super::segment::{self, SegmentBytes};
use super::shard::{io_error, Appended, Refusal, RefusalCause, ShardState, StoreError};
use crate::event::VerifiedEvent;
use crate::limits::{BLOCK_SIZE, COMPACTION_CHUNK_COUNT, COMPACTION_REST_FACTOR};

/// Largest single direct-I/O write a commit issues.
const WRITE_CHUNK_SIZE: usize = 4 * 1024 * 1024;
/// How often a shard that refuses writes checks whether it can resume.
pub const REFUSAL_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A shard with its committer running on the current glommio executor.
pub struct Shard {
    state: Rc<RefCell<ShardState>>,
    doorbell: Option<mpsc::Sender<()>>,
    committer: Option<glommio::Task<()>>,
    /// Gives sealed segments their index parts, one at a time (see [`run_indexer`]).
    indexer: Option<glommio::Task<()>>,
}

/// The outcome of an append; `Stored` resolves once the record is durable.
pub enum Admission {
    Stored(Durable),
    /// Already stored; when the original is not yet durable, acknowledge after this resolves.
    Duplicate(Option<Durable>),
    Ephemeral,
    Rejected(Rejection),
}

/// Resolves when the append's record is covered by an fdatasync.
pub struct Durable(oneshot::Receiver<Result<(), String>>);

impl Future for Durable {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|outcome| match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(StoreError::Failed(reason)),
            Err(oneshot::Canceled) => {
                Err(StoreError::Failed("the shard was closed before the append was durable".into()))
            }
        })
    }
}

impl Shard {
    /// Start the committer for an opened, writable shard. Must run inside a glommio executor.
    pub fn start(state: ShardState) -> Shard {
        assert!(state.is_writable());
        let state = Rc::new(RefCell::new(state));
        let (doorbell, rings) = mpsc::channel(1);
        let committer = glommio::spawn_local(run_committer(state.clone(), rings));
        let (indexer_bell, indexer_rings) = mpsc::channel(1);
        state.borrow_mut().indexer_bell = Some(indexer_bell);
        let indexer = glommio::spawn_local(run_indexer(state.clone(), indexer_rings));
        Shard { state, doorbell: Some(doorbell), committer: Some(committer), indexer: Some(indexer) }
    }

    /// Apply the rules and append; a stored event is acknowledged by awaiting its `Durable`.
    pub fn append(&self, event: &VerifiedEvent, now: u64) -> Result<Admission, StoreError> {
        let mut state = self.state.borrow_mut();
        let was_refusing = state.refusing.is_some();
        let appended = state.append(event, now);
        if !was_refusing && state.refusing.is_some() {
            // The append found no room for a new segment: the committer starts its retries.
            self.ring();
        }
        let no = match appended? {
            Appended::Stored(no) => no,
            Appended::Duplicate { pending: None } => return Ok(Admission::Duplicate(None)),
            Appended::Duplicate { pending: Some(original) } => {
                return Ok(Admission::Duplicate(Some(self.wait_for(&mut state, original))))
            }
            Appended::Ephemeral => return Ok(Admission::Ephemeral),
            Appended::Rejected(rejection) => return Ok(Admission::Rejected(rejection)),
        };
        Ok(Admission::Stored(self.wait_for(&mut state, no)))
    }

    /// Register a waiter for event `no` and wake the committer.
    pub(crate) fn wait_for(&self, state: &mut ShardState, no: EventNo) -> Durable {
        let (sender, receiver) = oneshot::channel();
        state.waiters.push_back((no, sender));
        self.ring();
        Durable(receiver)
    }

    /// Wake the committer.
    fn ring(&self) {
        if let Some(doorbell) = &self.doorbell {
            // Full means a ring is already pending; the committer will see this too.
            let _ = doorbell.clone().try_send(());
        }
    }

    pub fn state(&self) -> Ref<'_, ShardState> {
        self.state.borrow()
    }

    pub fn state_mut(&self) -> RefMut<'_, ShardState> {
        self.state.borrow_mut()
    }

    /// Why writes are refused, while they are.
    pub fn refusal(&self) -> Option<Refusal> {
        self.state.borrow().refusing.clone()
    }

    /// Seal the active segment, make everything appended durable, stop the committer and
    /// hand the state back. Fails when appended records could not be made durable.
    pub async fn close(mut self) -> Result<ShardState, StoreError> {
        self.state.borrow_mut().seal_active();
        self.doorbell = None;
        // The indexer finishes the part it is building (if any) and starts no other: a
        // segment without its part is read at the next open, and given one then.
        self.state.borrow_mut().indexer_bell = None;
        if let Some(indexer) = self.indexer.take() {
            indexer.await;
        }
        if let Some(committer) = self.committer.take() {
            committer.await;
        }
        let state =
            Rc::try_unwrap(self.state).map_err(|_| StoreError::Failed("shard still borrowed at close".into()))?;
        let state = state.into_inner();
        if let (Some(refusal), true) = (&state.refusing, state.has_unflushed()) {
            return Err(StoreError::Refusing(refusal.clone()));
        }
        // Only a stricter check for the next open: a shard without its mark is opened as
        // after a crash.
        if let Err(error) = super::shard::write_clean_mark(&state.dir) {
            tracing::warn!(shard = %state.shard_id, %error, "cannot record the clean shutdown");
        }
        Ok(state)
    }
}

/// The committer: group commits while writes flow; while they are refused, a retry every
/// `REFUSAL_RETRY_INTERVAL` until the cause is gone. It ends when the shard closes.
async fn run_committer(state: Rc<RefCell<ShardState>>, mut rings: mpsc::Receiver<()>) {
    let mut closing = false;
    while !closing {
        let refusing = state.borrow().refusing.is_some();
        closing = if refusing {
            let ring = async { rings.next().await.is_none() };
            let retry = async {
                glommio::timer::sleep(REFUSAL_RETRY_INTERVAL).await;
                false
            };
            futures_lite::future::or(ring, retry).await
        } else {
            rings.next().await.is_none()
        };
        if refusing {
            retry(&state, closing).await;
        }
        while state.borrow().has_unflushed() && state.borrow().refusing.as_ref().is_none_or(Refusal::commits_continue) {
            if let Err(error) = commit(&state).await {
                refuse(&state, &error);
            }
        }
        check_space(&state);
    }
}

/// How long after a shard starts its scrub begins: the relay starts first.
const SCRUB_START_DELAY: std::time::Duration = std::time::Duration::from_secs(5);

/// The indexer: at start and whenever a segment is sealed, give every sealed segment whose
/// index is still in memory its part, built and written on glommio's blocking threads one
/// at a time, then served from the map; from `SCRUB_START_DELAY` on, scrub the segments
/// opened through their parts (not read at open), then compact the sealed segments worth
/// it. It ends when the shard closes.
async fn run_indexer(state: Rc<RefCell<ShardState>>, mut rings: mpsc::Receiver<()>) {
    let scrub_from = std::time::Instant::now() + SCRUB_START_DELAY;
    loop {
        let mut deferred = give_parts(&state).await;
        let mut wait = scrub_from.saturating_duration_since(std::time::Instant::now());
        if wait.is_zero() {
            scrub(&state, &mut rings).await;
            deferred |= compact(&state, &mut rings).await;
            // A segment sealed while it compacted rang a bell that compaction took.
            deferred |= give_parts(&state).await;
        }
        if deferred {
            // Another shard's merge was running: this one's is tried again.
            wait = if wait.is_zero() { MERGE_RETRY_INTERVAL } else { wait.min(MERGE_RETRY_INTERVAL) };
        }
        let rung = async { rings.next().await.is_some() };
        let scrub_time = async {
            if wait.is_zero() {
                futures_lite::future::pending::<()>().await;
            }
            glommio::timer::sleep(wait).await;
            true
        };
        if !futures_lite::future::or(rung, scrub_time).await {
            return;
        }
    }
}

/// Whether the shard is still open (its indexer's bell is dropped at close).
fn open(state: &Rc<RefCell<ShardState>>) -> bool {
    state.borrow().indexer_bell.is_some()
}

/// Build and install the part of every sealed segment whose index is still in memory, and
/// merge parts (see `ShardState::next_part_job`).
/// Whether a merge was put off (another shard's was running).
async fn give_parts(state: &Rc<RefCell<ShardState>>) -> bool {
    while open(state) {
        let next = state.borrow().next_part_job();
        let Some(job) = next else { return false };
        // A merge holds its segments' entries and postings while it builds: one at a time
        // in the process (a part of one segment is built whenever it is due).
        let turn = match job.paths.len() > 1 {
            true => match MergeTurn::take() {
                Some(turn) => Some(turn),
                None => return true,
            },
            false => None,
        };
        let shard = state.borrow().shard_id.0;
        let (paths, id) = (job.paths.clone(), job.id);
        let built = off_core(move || super::part::build_file(&paths, shard, id)).await;
        drop(turn);
        state.borrow_mut().install_part(&job, built);
    }
    false
}

/// Run storage's background `work` on the executor's blocking thread, at the lowest CPU
/// and I/O priority (see `store::background`).
async fn off_core<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    glommio::executor().spawn_blocking(move || super::background::at_lowest_priority(work)).await
}

/// Merges of index parts and compactions running now, in the whole process (at most one).
static MERGES_RUNNING: AtomicUsize = AtomicUsize::new(0);

/// The process's one turn to build a merge or run a compaction, given back when dropped
/// (also when the indexer is cancelled while it waits for the work).
struct MergeTurn;

impl MergeTurn {
    fn take() -> Option<MergeTurn> {
        MERGES_RUNNING.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).ok().map(|_| MergeTurn)
    }
}

impl Drop for MergeTurn {
    fn drop(&mut self) {
        MERGES_RUNNING.store(0, Ordering::Release);
    }
}
/// How soon a shard whose merge was put off tries again.
const MERGE_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Check the seal of each segment opened through its part, one at a time, 4 MiB at a time
/// off the core, resting three times as long as each piece took: a quarter of one thread,
/// in slices of a few milliseconds.
async fn scrub(state: &Rc<RefCell<ShardState>>, rings: &mut mpsc::Receiver<()>) {
    const PIECE_SIZE: usize = 4 << 20;
    while open(state) {
        let next = state.borrow().next_to_scrub();
        let Some((slot, path)) = next else { return };
        let mut scrub = match off_core(move || super::segment::Scrub::open(&path)).await {
            Ok(scrub) => scrub,
            Err(damage) => {
                state.borrow_mut().scrubbed(slot, Err(damage));
                continue;
            }
        };
        while open(state) {
            let started = std::time::Instant::now();
            let (back, outcome) = off_core(move || {
                let outcome = scrub.step(PIECE_SIZE);
                (scrub, outcome)
            })
            .await;
            scrub = back;
            rest(started.elapsed() * 3, rings).await;
            if let Some(outcome) = outcome {
                state.borrow_mut().scrubbed(slot, outcome);
                break;
            }
        }
    }
}

/// Rewrite the sealed segments most worth it (see `ShardState::next_compaction`), one new
/// segment per step on a blocking thread, resting `COMPACTION_REST_FACTOR` times as long as
/// each step took; one compaction or merge at a time in the process. A compaction the
/// shard's close interrupts leaves the store as it was. Whether one was put off (another
/// shard's merge or compaction was running).
async fn compact(state: &Rc<RefCell<ShardState>>, rings: &mut mpsc::Receiver<()>) -> bool {
    while open(state) {
        let policy = state.borrow().config().compaction;
        let next = state.borrow().next_compaction(policy);
        let Some(mut job) = next else { return false };
        let Some(turn) = MergeTurn::take() else { return true };
        while !state.borrow().index.plan_step(&mut job.keep, COMPACTION_CHUNK_COUNT) {
            glommio::timer::sleep(COMPACTION_CHUNK_REST).await;
        }
        let (shard, segment_size, faults) = {
            let state = state.borrow();
            (state.shard_id.0, state.config().segment_size, state.config().faults.clone())
        };
        let (ids, paths, records) = (job.ids.clone(), job.paths.clone(), job.records());
        let opened = off_core(move || Rewrite::open(shard, segment_size, ids, paths, records, faults)).await;
        let outcome = match opened {
            Ok(rewrite) => rewrite_in_steps(state, rewrite, rings).await,
            Err(error) => Some(Err(Failure::from(error))),
        };
        drop(turn);
        let Some(outcome) = outcome else { return false };
        if outcome.is_ok() {
            // What the rules hold for the dropped events goes, a chunk at a time, while the
            // old layer still reads their ids.
            let (mut from, end) = (job.keep.base, job.keep.base + job.keep.len);
            while from < end {
                from = state.borrow_mut().index.let_go(&job.keep, from, COMPACTION_CHUNK_COUNT);
                glommio::timer::sleep(COMPACTION_CHUNK_REST).await;
            }
        }
        let replaced = state.borrow_mut().install_compaction(&job, outcome);
        // Unmapping the old files and part takes tens of milliseconds: not on the core.
        if let Some(replaced) = replaced {
            off_core(move || drop(replaced)).await;
        }
    }
    false
}

/// Background work's rest between two steps: `duration`, cut short when the shard closes
/// (the end of the indexer's rings), so that a close (a handover) does not wait for it. A
/// ring (a segment sealed) is answered once the work is done.
async fn rest(duration: std::time::Duration, rings: &mut mpsc::Receiver<()>) {
    let sleep = glommio::timer::sleep(duration);
    futures_lite::future::or(sleep, async { while rings.next().await.is_some() {} }).await;
}

/// How long compaction's work on the core rests between two chunks: a sleep, not a yield,
/// so that the reactor runs (sessions' I/O and timers) before the next chunk.
const COMPACTION_CHUNK_REST: std::time::Duration = std::time::Duration::from_micros(100);

/// Run a rewrite's steps and finish it; `None` when the shard closed first (the rewrite's
/// temporary files are removed, the old ones never touched).
async fn rewrite_in_steps(
    state: &Rc<RefCell<ShardState>>,
    mut rewrite: Rewrite,
    rings: &mut mpsc::Receiver<()>,
) -> Option<Result<Rewritten, Failure>> {
    loop {
        if !open(state) {
            return None;
        }
        let started = std::time::Instant::now();
        let (back, step) = off_core(move || {
            let step = rewrite.step();
            (rewrite, step)
        })
        .await;
        rewrite = back;
        match step {
            Ok(true) => return Some(off_core(move || rewrite.finish()).await),
            Ok(false) => {}
            Err(failure) => return Some(Err(failure)),
        }
        rest(started.elapsed() * COMPACTION_REST_FACTOR, rings).await;
    }
}

/// After a failed commit: fail every append waiting (their records stay in the image and
/// are written again by the next commit that succeeds), and refuse new ones.
fn refuse(state: &Rc<RefCell<ShardState>>, error: &StoreError) {
    let mut state = state.borrow_mut();
    let cause = match error {
        StoreError::Io { source, .. } => RefusalCause::of(source),
        _ => RefusalCause::Io,
    };
    let detail = error.to_string();
    state.commits.failures.inc();
    let failed = state.waiters.len();
    for (_, waiter) in state.waiters.drain(..) {
        let _ = waiter.send(Err(detail.clone()));
    }
    if state.refusing.as_ref().is_none_or(|refusal| refusal.cause == RefusalCause::Reserve) {
        tracing::error!(shard = %state.shard_id, error = %detail, failed, "a commit failed: writes stop until it can be redone");
    }
    state.refusing = Some(Refusal { cause, detail });
}

/// While refusing: resume once there is room again and what was left unacknowledged is
/// written again and synced (never on a retried fdatasync alone: the bytes are rewritten),
/// and, for a shard that could not begin its next segment, once it has begun it (not while
/// `closing`: a closing shard begins nothing).
async fn retry(state: &Rc<RefCell<ShardState>>, closing: bool) {
    // Read into a local first: a `Ref` in the `if let` itself would live through the block
    // and its `borrow_mut` (a panic, "already borrowed", on every retry while full).
    let below_reserve = state.borrow().space_below_reserve();
    if let Some(detail) = below_reserve {
        let mut state = state.borrow_mut();
        if let Some(refusal) = &mut state.refusing {
            refusal.detail = detail;
        }
        return;
    }
    if !closing {
        let mut state = state.borrow_mut();
        if let Err(detail) = state.begin_segment_if_needed() {
            if let Some(refusal) = &mut state.refusing {
                refusal.detail = detail;
            }
            return;
        }
    }
    if state.borrow().has_unflushed() {
        if let Err(error) = commit(state).await {
            // Copies waiting on a record of the failed range fail with it, as its appends did.
            refuse(state, &error);
            return;
        }
    }
    let mut state = state.borrow_mut();
    if let Some(refusal) = state.refusing.take() {
        tracing::info!(shard = %state.shard_id, after = %refusal, "writes resume");
    }
}

/// Refuse new events when free space is below the reserve (checked after every commit).
fn check_space(state: &Rc<RefCell<ShardState>>) {
    if state.borrow().refusing.is_some() {
        return;
    }
    let Some(detail) = state.borrow().space_below_reserve() else { return };
    let mut state = state.borrow_mut();
    tracing::warn!(shard = %state.shard_id, %detail, "writes stop until there is room");
    state.refusing = Some(Refusal { cause: RefusalCause::Reserve, detail });
}

/// One group commit: write every pending byte, one fdatasync per touched file, then
/// publish durability and resolve the covered appends.
async fn commit(state: &Rc<RefCell<ShardState>>) -> Result<(), StoreError> {
    let target_count = state.borrow().index.len();
    let slots: Vec<usize> = {
        let state = state.borrow();
        (0..state.segments.len()).filter(|&slot| state.segments[slot].needs_flush()).collect()
    };
    for slot in slots {
        flush_segment(state, slot).await?;
    }
    let mut state = state.borrow_mut();
    seal_rotated(&mut state)?;
    let batch = target_count.saturating_sub(state.index.durable_count());
    if batch > 0 {
        state.commits.batch_events.observe(f64::from(batch));
    }
    state.index.set_durable(target_count);
    while state.waiters.front().is_some_and(|(no, _)| *no < target_count) {
        let (_, waiter) = state.waiters.pop_front().expect("front exists");
        let _ = waiter.send(Ok(()));
    }
    Ok(())
}

/// Write a segment's bytes from its first block not yet durable to its end, and fdatasync.
/// Every write's count is checked: a short one is continued from the last whole block it
/// wrote; one that writes nothing fails the commit.
async fn flush_segment(state: &Rc<RefCell<ShardState>>, slot: usize) -> Result<(), StoreError> {
    let (path, existing, end, faults) = {
        let state = state.borrow();
        let segment = &state.segments[slot];
        (segment.path.clone(), segment.file.clone(), segment.len, state.config().faults.clone())
    };
    let io = |error: std::io::Error| StoreError::Io { path: path.clone(), source: error };
    let file = match existing {
        Some(file) => file,
        None => {
            faults.fail(IoOp::CreateSegment).map_err(io)?;
            let file =
                OpenOptions::new().write(true).create_new(true).dma_open(&path).await.map_err(glommio_error(&path))?;
            assert!(file.alignment() as usize <= BLOCK_SIZE, "device alignment above {BLOCK_SIZE}");
            let file = Rc::new(file);
            state.borrow_mut().segments[slot].file = Some(file.clone());
            file
        }
    };
    let start = state.borrow().segments[slot].durable_len / BLOCK_SIZE * BLOCK_SIZE;
    let write_end = end.next_multiple_of(BLOCK_SIZE);
    let mut at = start;
    while at < write_end {
        let size = (write_end - at).min(WRITE_CHUNK_SIZE);
        // An injected short write stores its first blocks only and reports that count.
        let mut stored = size;
        if let Some(fault) = faults.check(IoOp::Write) {
            match fault {
                Fault::Short(bytes) => stored = size.min(bytes / BLOCK_SIZE * BLOCK_SIZE),
                Fault::Errno(_) => return Err(io(fault.error())),
            }
            if stored == 0 {
                return Err(io(fault.error()));
            }
        }
        let mut buffer = file.alloc_dma_buffer(stored);
        {
            let state = state.borrow();
            let SegmentBytes::Image(image) = &state.segments[slot].bytes else {
                unreachable!("an unflushed segment is an image")
            };
            buffer.as_bytes_mut().copy_from_slice(&image.as_slice()[at..at + stored]);
        }
        let written = file.write_at(buffer, at as u64).await.map_err(glommio_error(&path))?;
        state.borrow().commits.written_bytes.add(written as u64);
        // Direct I/O writes whole blocks; a count inside a block is redone from its start.
        let whole = written.min(size) / BLOCK_SIZE * BLOCK_SIZE;
        if whole == 0 {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {written} of {size} bytes at offset {at}"),
            )));
        }
        at += whole;
    }
    faults.fail(IoOp::Sync).map_err(io)?;
    let sync_start = std::time::Instant::now();
    file.fdatasync().await.map_err(glommio_error(&path))?;
    state.borrow().commits.fsync_seconds.observe_since(sync_start);
    let first_flush = start == 0;
    if first_flush {
        let dir = path.parent().expect("segments live in a shard directory").to_owned();
        faults.fail(IoOp::SyncDir).and_then(|()| segment::sync_dir(&dir)).map_err(io_error(&dir))?;
    }
    state.borrow_mut().segments[slot].durable_len = end;
    Ok(())
}

/// Seal every segment that rotation left behind once it is all on disk. Rotation happens
/// whether or not the old segment still had bytes to write, so this runs after each commit
/// rather than after a flush: a segment flushed in full before it rotated would otherwise
/// keep its image in memory for good.
fn seal_rotated(state: &mut ShardState) -> Result<(), StoreError> {
    let active = state.segments.len() - 1;
    for slot in 0..active {
        let segment = &state.segments[slot];
        if matches!(segment.bytes, SegmentBytes::Image(_)) && segment.durable_len == segment.len {
            seal(state, slot)?;
        }
    }
    Ok(())
}

/// A full, durable segment: trim its padding, drop the image and serve it from a map.
fn seal(state: &mut ShardState, slot: usize) -> Result<(), StoreError> {
    let faults = state.config().faults.clone();
    let segment = &mut state.segments[slot];
    faults
        .fail(IoOp::Truncate)
        .and_then(|()| segment::truncate_file(&segment.path, segment.len))
        .map_err(io_error(&segment.path))?;
    segment.file = None;
    let mapped = segment::map_file(&segment.path).map_err(io_error(&segment.path))?;
    if let SegmentBytes::Image(image) = std::mem::replace(&mut segment.bytes, mapped) {
        state.spare_image = Some(image.recycle());
    }
    state.ring_indexer();
    Ok(())
}

fn glommio_error(path: &std::path::Path) -> impl FnOnce(glommio::GlommioError<()>) -> StoreError + '_ {
    move |error| StoreError::Io { path: path.to_owned(), source: error.into() }
}
