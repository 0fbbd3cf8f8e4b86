//! [`Fixed`]: a constant number of children.

use super::{nudge, Decision, PoolSnapshot, ScalingPolicy};
use crate::Time;
use serde::{Deserialize, Serialize};
use std::ops::RangeInclusive;

/// A fixed pool of `n` children: replaced when they exit, never more, never fewer.
///
/// ```
/// use preforkd_policies::{Decision, Fixed, PoolSnapshot, ScalingPolicy, Time};
/// let mut p = Fixed(4);
/// assert_eq!(p.decide(&PoolSnapshot::new(0, 1, 1, 150), Time::ZERO), Decision::spawn(2));
/// assert_eq!(p.decide(&PoolSnapshot::new(0, 6, 0, 150), Time::ZERO), Decision::retire(2));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fixed(pub usize);

impl ScalingPolicy for Fixed {
    fn decide(&mut self, pool: &PoolSnapshot, _now: Time) -> Decision {
        let total = pool.total();
        if total < self.0 {
            Decision::spawn(self.0 - total)
        } else if total > self.0 && pool.idle > 0 {
            Decision::retire((total - self.0).min(pool.idle))
        } else {
            Decision::hold()
        }
    }

    fn quiet_range(&self) -> RangeInclusive<usize> {
        self.0..=self.0
    }

    fn adjust(&mut self, delta: i32) {
        // Never below one child (TTOU on an empty pool would stop serving).
        self.0 = nudge(self.0, delta, 1, usize::MAX);
    }

    fn name(&self) -> &str {
        "fixed"
    }

    fn config(&self) -> Option<&dyn erased_serde::Serialize> {
        Some(self)
    }
}
