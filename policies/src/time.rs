//! Time as a value: the policies and the supervisor core never read a clock.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

/// A point in time, measured from an arbitrary origin chosen by whoever drives the
/// supervisor (the runtime uses its start, the simulator uses zero).
///
/// Deciders receive it as a parameter, which is what makes them deterministic and
/// testable: the same events at the same `Time`s always give the same decisions.
///
/// ```
/// use preforkd_policies::Time;
/// use std::time::Duration;
/// let t = Time::ZERO + Duration::from_millis(1500);
/// assert_eq!(t.as_millis(), 1500);
/// assert_eq!(t.saturating_since(Time::from_millis(500)), Duration::from_secs(1));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Time(Duration);

impl Time {
    /// The origin.
    pub const ZERO: Time = Time(Duration::ZERO);
    /// The latest representable time; used as "never".
    pub const MAX: Time = Time(Duration::MAX);

    /// The time `d` after the origin.
    pub const fn from_duration(d: Duration) -> Time {
        Time(d)
    }

    /// The time `secs` seconds after the origin.
    ///
    /// ```
    /// use preforkd_policies::Time;
    /// assert_eq!(Time::from_secs(2), Time::from_millis(2_000));
    /// ```
    pub const fn from_secs(secs: u64) -> Time {
        Time(Duration::from_secs(secs))
    }

    /// The time `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Time {
        Time(Duration::from_millis(ms))
    }

    /// The time `us` microseconds after the origin.
    pub const fn from_micros(us: u64) -> Time {
        Time(Duration::from_micros(us))
    }

    /// How long after the origin this time is.
    pub const fn since_origin(self) -> Duration {
        self.0
    }

    /// Whole milliseconds since the origin (saturating).
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    /// How long after `earlier` this time is, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// `self + d`, saturating at [`Time::MAX`] instead of overflowing.
    pub fn saturating_add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    /// Saturates at [`Time::MAX`]: adding a huge timeout never panics.
    fn add(self, d: Duration) -> Time {
        self.saturating_add(d)
    }
}

impl AddAssign<Duration> for Time {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    /// Saturates at zero.
    fn sub(self, earlier: Time) -> Duration {
        self.saturating_since(earlier)
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t+{:?}", self.0)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.0.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Time::MAX + Duration::from_secs(1), Time::MAX);
        assert_eq!(Time::ZERO - Time::from_millis(5), Duration::ZERO);
        assert_eq!(
            Time::from_millis(7) - Time::from_millis(5),
            Duration::from_millis(2)
        );
        let mut t = Time::ZERO;
        t += Duration::from_micros(3);
        assert_eq!(t, Time::from_micros(3));
    }
}
