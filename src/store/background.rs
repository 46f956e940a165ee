//! Storage's background work (index part builds and merges, the scrub, compaction) runs on
//! the executor's blocking thread, which shares the executor's CPU: in the `SCHED_IDLE`
//! policy at nice 19, and in the idle I/O class, so that the core and its commits go first
//! whenever they want the CPU or the disk. `SCHED_IDLE` is what makes that hold: a core that
//! wakes takes the CPU from it at once, where a nice-19 thread that has just begun to run
//! keeps it for its time slice (up to ~3 ms under EEVDF; that was the search indexer's
//! merges putting publish p99 from 4 to 9 ms beside a scan flood). The thread's priorities
//! are put back afterwards where the process may raise them again (root, or `LimitNICE`);
//! otherwise the thread stays at the lowest, and only other off-core work queued behind it
//! is slower.

/// `ioprio_set` arguments (linux/ioprio.h): the calling thread, the idle class.
const IOPRIO_WHO_PROCESS: libc::c_int = 1;
const IOPRIO_CLASS_SHIFT: libc::c_int = 13;
const IOPRIO_CLASS_IDLE: libc::c_int = 3;
const NICE_LOWEST: libc::c_int = 19;

/// Run `work` on this thread at the lowest CPU and I/O priority.
pub fn at_lowest_priority<T>(work: impl FnOnce() -> T) -> T {
    // SAFETY: plain syscalls on the calling thread (`who` 0: this thread, for both; a
    // failure changes nothing and is ignored).
    let (policy, nice, ioprio) = unsafe {
        let ioprio = libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0);
        let policy = libc::sched_getscheduler(0);
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        let nice = (*libc::__errno_location() == 0).then_some(nice);
        libc::setpriority(libc::PRIO_PROCESS, 0, NICE_LOWEST);
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &libc::sched_param { sched_priority: 0 });
        libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT);
        (policy, nice, ioprio)
    };
    let out = work();
    // SAFETY: as above.
    unsafe {
        if policy >= 0 {
            libc::sched_setscheduler(0, policy, &libc::sched_param { sched_priority: 0 });
        }
        if let Some(nice) = nice {
            libc::setpriority(libc::PRIO_PROCESS, 0, nice);
        }
        if ioprio >= 0 {
            libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, ioprio);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    /// The work runs at nice 19 and the thread's priority is put back after it (the tests
    /// run as root here; elsewhere it may stay at 19, which the check allows).
    #[test]
    fn background_work_runs_at_the_lowest_priority() {
        let before = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let (during, policy) = super::at_lowest_priority(|| unsafe {
            (libc::getpriority(libc::PRIO_PROCESS, 0), libc::sched_getscheduler(0))
        });
        assert_eq!((during, policy), (19, libc::SCHED_IDLE));
        let after = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert!(after == before || after == 19, "{before} -> {after}");
        let policy_after = unsafe { libc::sched_getscheduler(0) };
        assert!(policy_after == libc::SCHED_OTHER || after == 19, "policy {policy_after} after");
    }
}
