//! [`Elastic`]: the seed's own semantics, the default policy.

use super::{nudge, Decision, PoolSnapshot, RampState, ScalingPolicy};
use crate::{PolicyError, Time};
use serde::{Deserialize, Serialize};
use std::ops::RangeInclusive;
use std::time::Duration;

/// The seed's own semantics, from `prefork` and `max_children`: start `prefork`
/// children; while no child is idle, grow (a doubling ramp up to `max_spawn_rate`,
/// or the whole listen backlog at once when the runtime reports it), never above
/// `max_children`; when children are idle, retire them one per `retire_interval`
/// until `prefork` remain, always keeping one idle child while above `prefork`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ElasticConfig {
    /// Children to keep when idle, and to start with (the seed's `prefork`, 3).
    pub prefork: usize,
    /// The most children this policy asks for (the seed's `max_children`, 150).
    pub max_children: usize,
    /// The cap of the doubling spawn rate (32).
    pub max_spawn_rate: usize,
    /// Spawn as many children as connections wait in the backlog, when known (true).
    pub follow_backlog: bool,
    /// The least time between two retirements (1 s).
    #[serde(with = "crate::duration_serde")]
    pub retire_interval: Duration,
}

impl Default for ElasticConfig {
    fn default() -> Self {
        ElasticConfig {
            prefork: 3,
            max_children: 150,
            max_spawn_rate: 32,
            follow_backlog: true,
            retire_interval: Duration::from_secs(1),
        }
    }
}

impl ElasticConfig {
    /// Checks the configuration, naming the first field that is wrong.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |reason: String| PolicyError::InvalidConfig {
            policy: "elastic".into(),
            reason,
        };
        if self.max_children == 0 {
            return Err(bad("max_children must be at least 1".into()));
        }
        if self.prefork > self.max_children {
            return Err(bad(format!(
                "prefork ({}) exceeds max_children ({})",
                self.prefork, self.max_children
            )));
        }
        if self.max_spawn_rate == 0 {
            return Err(bad("max_spawn_rate must be at least 1".into()));
        }
        if self.retire_interval.is_zero() {
            return Err(bad("retire_interval must be greater than zero".into()));
        }
        Ok(())
    }
}

/// The default policy: the seed's `prefork`/`max_children` semantics; see
/// [`ElasticConfig`].
///
/// ```
/// use preforkd_policies::{Decision, Elastic, PoolSnapshot, ScalingPolicy, Time};
/// let mut p = Elastic::from_seed(3, 150).unwrap();
/// // All three busy and 137 connections waiting: start 137 at once.
/// let pool = PoolSnapshot::new(0, 0, 3, 150).with_backlog(Some(137));
/// assert_eq!(p.decide(&pool, Time::ZERO), Decision::spawn(137));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Elastic {
    config: ElasticConfig,
    state: RampState,
}

impl Elastic {
    /// A policy with this configuration, checked.
    pub fn new(config: ElasticConfig) -> Result<Self, PolicyError> {
        config.validate()?;
        Ok(Elastic {
            config,
            state: RampState::default(),
        })
    }

    /// The policy the seed's two options describe, other settings at their defaults.
    pub fn from_seed(prefork: usize, max_children: usize) -> Result<Self, PolicyError> {
        Elastic::new(ElasticConfig {
            prefork,
            max_children,
            ..ElasticConfig::default()
        })
    }

    /// The configuration in force (TTIN/TTOU shift `prefork` by one, within
    /// `1..=max_children`).
    pub fn settings(&self) -> &ElasticConfig {
        &self.config
    }

    fn floor(&self) -> usize {
        // With prefork 0 a pool still keeps one child: "grow while none is idle"
        // would start one the moment it reached zero.
        self.config.prefork.max(1).min(self.config.max_children)
    }
}

impl ScalingPolicy for Elastic {
    fn decide(&mut self, pool: &PoolSnapshot, now: Time) -> Decision {
        let c = &self.config;
        let total = pool.total();
        let cap = c.max_children.min(pool.max_children);
        let room = cap.saturating_sub(total).min(pool.free_slots());
        if total < c.prefork.min(cap) && room > 0 {
            return Decision::spawn((c.prefork.min(cap) - total).min(room));
        }
        if pool.idle + pool.starting == 0 {
            let backlog = if c.follow_backlog {
                pool.backlog.unwrap_or(0)
            } else {
                0
            };
            let want = self.state.spawn_rate.max(backlog);
            return self.state.ramp(want, room, c.max_spawn_rate);
        }
        let floor = self.floor();
        if pool.idle >= 2 && total > floor {
            let more = pool.idle > 2 && total - 1 > floor;
            return self.state.retire_one(now, c.retire_interval, more);
        }
        // Only real spare capacity ends a ramp: children still starting, or the one
        // just ready and about to take a queued request, do not, or the rate would
        // reset between every batch of a burst.
        if pool.idle > 1 {
            self.state.spawn_rate = 1;
        }
        Decision::hold()
    }

    fn initial_children(&self) -> usize {
        self.config.prefork.min(self.config.max_children)
    }

    fn quiet_range(&self) -> RangeInclusive<usize> {
        let f = self.floor();
        f..=f
    }

    fn adjust(&mut self, delta: i32) {
        // From the floor and never below 1: the pool keeps one child anyway, so a
        // nudge under it would be banked, and the next TTIN would change nothing.
        self.config.prefork = nudge(self.floor(), delta, 1, self.config.max_children);
    }

    fn name(&self) -> &str {
        "elastic"
    }

    fn config(&self) -> Option<&dyn erased_serde::Serialize> {
        Some(&self.config)
    }

    fn state(&self) -> Option<&dyn erased_serde::Serialize> {
        Some(&self.state)
    }

    fn restore_state(
        &mut self,
        state: &mut dyn erased_serde::Deserializer<'_>,
    ) -> Result<(), erased_serde::Error> {
        self.state = erased_serde::deserialize(state)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    #[test]
    fn elastic_tops_up_to_prefork_then_grows_when_none_idle() {
        let mut p = Elastic::from_seed(3, 150).unwrap();
        assert_eq!(
            p.decide(&PoolSnapshot::new(0, 1, 0, 150), t(0)),
            Decision::spawn(2)
        );
        assert_eq!(
            p.decide(&PoolSnapshot::new(0, 0, 3, 150), t(0)),
            Decision::spawn(1)
        );
        assert_eq!(
            p.decide(&PoolSnapshot::new(0, 0, 4, 150), t(0)),
            Decision::spawn(2)
        );
        // Something idle or starting: hold.
        assert_eq!(
            p.decide(&PoolSnapshot::new(1, 0, 6, 150), t(0)),
            Decision::hold()
        );
    }

    #[test]
    fn elastic_never_exceeds_max_children() {
        let mut p = Elastic::from_seed(3, 4).unwrap();
        let pool = PoolSnapshot::new(0, 0, 3, 150).with_backlog(Some(100));
        assert_eq!(p.decide(&pool, t(0)), Decision::spawn(1));
        let pool = PoolSnapshot::new(0, 0, 4, 150).with_backlog(Some(100));
        assert_eq!(p.decide(&pool, t(0)), Decision::hold());
    }

    #[test]
    fn elastic_shrinks_back_to_prefork_gently() {
        let mut p = Elastic::from_seed(3, 150).unwrap();
        let d = p.decide(&PoolSnapshot::new(0, 6, 0, 150), t(0));
        assert_eq!(d, Decision::retire(1).recheck_at(t(1000)));
        let d = p.decide(&PoolSnapshot::new(0, 5, 0, 150), t(500));
        assert_eq!(d, Decision::hold().recheck_at(t(1000)));
        let d = p.decide(&PoolSnapshot::new(0, 4, 0, 150), t(1000));
        assert_eq!(d, Decision::retire(1));
        assert_eq!(
            p.decide(&PoolSnapshot::new(0, 3, 0, 150), t(3000)),
            Decision::hold()
        );
        // One idle child beside busy ones is kept as the spare.
        assert_eq!(
            p.decide(&PoolSnapshot::new(0, 1, 9, 150), t(5000)),
            Decision::hold()
        );
    }

    #[test]
    fn ttin_and_ttou_keep_the_minimum_within_one_and_max_children() {
        let mut p = Elastic::from_seed(3, 5).unwrap();
        for _ in 0..5 {
            p.adjust(-1);
        }
        assert_eq!(p.settings().prefork, 1);
        assert_eq!(p.quiet_range(), 1..=1);
        // The TTOUs below the floor are not kept: one TTIN is one more child.
        p.adjust(1);
        assert_eq!(p.settings().prefork, 2);
        assert_eq!(p.quiet_range(), 2..=2);
        for _ in 0..10 {
            p.adjust(1);
        }
        assert_eq!(p.settings().prefork, 5);
        p.adjust(-1);
        assert_eq!(p.quiet_range(), 4..=4);
        // A large nudge either way stays in bounds too.
        p.adjust(i32::MIN);
        assert_eq!(p.quiet_range(), 1..=1);
        p.adjust(i32::MAX);
        assert_eq!(p.quiet_range(), 5..=5);
    }

    #[test]
    fn ttin_from_prefork_zero_is_one_more_than_the_floor() {
        // prefork 0 still keeps one child (the floor): TTIN means two.
        let mut p = Elastic::from_seed(0, 5).unwrap();
        assert_eq!(p.quiet_range(), 1..=1);
        p.adjust(1);
        assert_eq!(p.quiet_range(), 2..=2);
        let mut p = Elastic::from_seed(0, 5).unwrap();
        p.adjust(-1);
        assert_eq!(p.quiet_range(), 1..=1);
    }
}
