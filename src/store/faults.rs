//! The storage I/O seam: the writer asks [`Faults`] before every write, fdatasync, file
//! creation and metadata change it makes, and a test can make any of them fail (an errno)
//! or, for writes, come up short. A shard opened without a plan (every real one) pays one
//! `None` check per operation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// An I/O operation of the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoOp {
    /// Creating a new segment file.
    CreateSegment,
    /// A direct-I/O write of segment bytes.
    Write,
    /// The fdatasync that makes a commit durable.
    Sync,
    /// The fsync of a shard directory after a segment file is created.
    SyncDir,
    /// Trimming a rotated segment's padding when it is sealed.
    Truncate,
    /// Writing the shard's segment high-water mark before a new segment begins.
    HighWater,
    /// Each write, rename, removal and directory sync of an online compaction.
    Compact,
}

/// What an injected fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The operation fails with this errno (e.g. `libc::ENOSPC`, `libc::EIO`) and writes nothing.
    Errno(i32),
    /// A write stores only its first bytes (this many, rounded down to whole blocks) and
    /// reports that count, as a write that ran into a full disk does.
    Short(usize),
}

impl Fault {
    pub fn error(self) -> std::io::Error {
        match self {
            Fault::Errno(errno) => std::io::Error::from_raw_os_error(errno),
            Fault::Short(_) => std::io::Error::from_raw_os_error(libc::ENOSPC),
        }
    }
}

/// A shard's fault plan: none in production, shared with the test that injects faults.
#[derive(Clone, Default)]
pub struct Faults(Option<Arc<Mutex<Plan>>>);

#[derive(Default)]
struct Plan {
    /// Operations seen so far, by kind, and of every kind.
    seen: HashMap<IoOp, u64>,
    total: u64,
    rules: Vec<Rule>,
    /// Every operation from this one (counted over all kinds) on fails: a crash there.
    crash_at: Option<u64>,
}

struct Rule {
    op: IoOp,
    /// The first operation of this kind (counted from the plan's start) that fails.
    first: u64,
    /// How many in a row fail.
    times: u64,
    fault: Fault,
}

impl Faults {
    /// A plan with no faults yet, for a test to fill.
    pub fn plan() -> Faults {
        Faults(Some(Arc::default()))
    }

    /// Fail `times` operations of kind `op` in a row, starting `after` operations of that
    /// kind from now (0: the next one). `u64::MAX` times fails them until [`Faults::clear`].
    pub fn inject(&self, op: IoOp, after: u64, times: u64, fault: Fault) {
        let Some(plan) = &self.0 else { return };
        let mut plan = plan.lock().expect("fault plan lock");
        let first = plan.seen.get(&op).copied().unwrap_or(0) + after;
        plan.rules.push(Rule { op, first, times, fault });
    }

    /// From `after` operations from now (of any kind) on, every operation fails with EIO
    /// and changes nothing: what is on disk is what a crash at that point leaves.
    pub fn crash_after(&self, after: u64) {
        let Some(plan) = &self.0 else { return };
        let mut plan = plan.lock().expect("fault plan lock");
        plan.crash_at = Some(plan.total + after);
    }

    /// Remove every fault: operations succeed again.
    pub fn clear(&self) {
        if let Some(plan) = &self.0 {
            let mut plan = plan.lock().expect("fault plan lock");
            plan.rules.clear();
            plan.crash_at = None;
        }
    }

    /// How many operations of every kind the writer has made (or attempted) so far.
    pub fn total(&self) -> u64 {
        self.0.as_ref().map_or(0, |plan| plan.lock().expect("fault plan lock").total)
    }

    /// How many operations of kind `op` the writer has made (or attempted) so far.
    pub fn count(&self, op: IoOp) -> u64 {
        self.0.as_ref().map_or(0, |plan| plan.lock().expect("fault plan lock").seen.get(&op).copied().unwrap_or(0))
    }

    /// Called by the writer before each operation: the fault to apply, if any.
    pub(crate) fn check(&self, op: IoOp) -> Option<Fault> {
        let plan = self.0.as_ref()?;
        let mut plan = plan.lock().expect("fault plan lock");
        let seen = plan.seen.entry(op).or_insert(0);
        let this = *seen;
        *seen += 1;
        plan.total += 1;
        if plan.crash_at.is_some_and(|at| plan.total > at) {
            return Some(Fault::Errno(libc::EIO));
        }
        plan.rules
            .iter()
            .find(|rule| rule.op == op && this >= rule.first && this - rule.first < rule.times)
            .map(|rule| rule.fault)
    }

    /// `Err` with the injected error for an operation that cannot be short.
    pub(crate) fn fail(&self, op: IoOp) -> std::io::Result<()> {
        match self.check(op) {
            Some(fault) => Err(fault.error()),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Faults(plan)" } else { "Faults(none)" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_fire_where_and_as_often_as_planned() {
        let faults = Faults::plan();
        faults.inject(IoOp::Write, 1, 2, Fault::Errno(libc::EIO));
        let seen: Vec<_> = (0..5).map(|_| faults.check(IoOp::Write)).collect();
        let eio = Some(Fault::Errno(libc::EIO));
        assert_eq!(seen, [None, eio, eio, None, None]);
        assert_eq!(faults.check(IoOp::Sync), None);
        assert_eq!(faults.count(IoOp::Write), 5);
        faults.inject(IoOp::Sync, 0, u64::MAX, Fault::Errno(libc::ENOSPC));
        assert!(faults.fail(IoOp::Sync).is_err());
        faults.clear();
        assert!(faults.fail(IoOp::Sync).is_ok());
        assert_eq!(Faults::default().check(IoOp::Write), None);
        faults.crash_after(1);
        assert_eq!(faults.check(IoOp::Write), None);
        assert_eq!(faults.check(IoOp::Sync), Some(Fault::Errno(libc::EIO)));
        assert_eq!(faults.check(IoOp::CreateSegment), Some(Fault::Errno(libc::EIO)));
    }
}
