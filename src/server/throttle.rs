//! Log lines for errors that repeat once per event or per accept: one line per interval,
//! saying how many were held back, so a full disk or a file-descriptor limit cannot fill
//! the log (which is often on that same disk).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Errors that repeat per event or per accept (a full disk, a descriptor limit, a plugin
/// that fails) are logged at most once per this interval, with the count held back.
pub const REPEATED_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

pub struct LogThrottle {
    every: Duration,
    last: Cell<Option<Instant>>,
    held_back: Cell<u64>,
}

impl LogThrottle {
    pub const fn new(every: Duration) -> LogThrottle {
        LogThrottle { every, last: Cell::new(None), held_back: Cell::new(0) }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were held back since the
    /// last one; `None` when this one is to be held back.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        match self.last.get() {
            Some(last) if now.duration_since(last) < self.every => {
                self.held_back.set(self.held_back.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.held_back.replace(0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.admit_at(start), Some(0));
        for ms in 1..=500 {
            assert_eq!(throttle.admit_at(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(throttle.admit_at(start + Duration::from_secs(10)), Some(500));
        assert_eq!(throttle.admit_at(start + Duration::from_secs(11)), None);
        assert_eq!(throttle.admit_at(start + Duration::from_secs(25)), Some(1));
    }
}
