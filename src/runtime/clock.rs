//! The parent's clock: the machine's [`Time`], counted from the parent's start on
//! `CLOCK_MONOTONIC` (the clock the scoreboard's timestamps use too, so a child's
//! request start and the parent's now compare directly).

use super::scoreboard;
use crate::Time;
use std::time::Duration;

/// Monotonic time since the parent started.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    /// `CLOCK_MONOTONIC` at the start, in nanoseconds: the machine's time zero.
    origin_ns: u64,
}

impl Clock {
    /// A clock whose time zero is now.
    pub(super) fn start() -> Clock {
        Clock {
            origin_ns: scoreboard::now_ns(),
        }
    }

    /// A clock going on from a previous image's (an in-place upgrade): the same
    /// time zero, so the handed-over times stay true.
    pub(super) fn from_origin(origin_ns: u64) -> Clock {
        Clock { origin_ns }
    }

    /// The machine's time now.
    pub(super) fn now(&self) -> Time {
        Time::from_duration(Duration::from_nanos(
            scoreboard::now_ns().saturating_sub(self.origin_ns),
        ))
    }

    /// Time zero on `CLOCK_MONOTONIC` (ns), for reading the scoreboard's stamps.
    pub(super) fn origin_ns(&self) -> u64 {
        self.origin_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_starts_near_zero_and_never_goes_back() {
        let c = Clock::start();
        let a = c.now();
        assert!(
            a < Time::from_millis(10_000),
            "time zero is the start: {a:?}"
        );
        let b = c.now();
        assert!(b >= a);
    }
}
