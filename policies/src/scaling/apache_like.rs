//! [`ApacheLike`]: Apache prefork's spare-server rules.

use super::{nudge, Decision, PoolSnapshot, RampState, ScalingPolicy};
use crate::{PolicyError, Time};
use serde::{Deserialize, Serialize};
use std::ops::RangeInclusive;
use std::time::Duration;

/// Apache prefork's idle-server maintenance, reacting to events instead of a 1 s poll.
///
/// Idle means ready or still starting (so a burst of forks in flight does not cause
/// more forks). Too few idle: start `rate` children and double the rate, up to
/// `max_spawn_rate` (32). Too many idle: retire one idle child, at most one per
/// `retire_interval`. In between: reset the rate to 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApacheLikeConfig {
    /// Children started before the pool counts as up (StartServers, 5).
    pub start_servers: usize,
    /// Fewer idle children than this: spawn (MinSpareServers, 5).
    pub min_spare_servers: usize,
    /// More idle children than this: retire (MaxSpareServers, 10).
    pub max_spare_servers: usize,
    /// The most children this policy asks for (MaxRequestWorkers, 256); the
    /// supervisor's `max_children` caps it further.
    pub max_request_workers: usize,
    /// The cap of the doubling spawn rate (32 in Apache).
    pub max_spawn_rate: usize,
    /// The least time between two retirements (1 s in Apache).
    #[serde(with = "crate::duration_serde")]
    pub retire_interval: Duration,
}

impl Default for ApacheLikeConfig {
    fn default() -> Self {
        ApacheLikeConfig {
            start_servers: 5,
            min_spare_servers: 5,
            max_spare_servers: 10,
            max_request_workers: 256,
            max_spawn_rate: 32,
            retire_interval: Duration::from_secs(1),
        }
    }
}

impl ApacheLikeConfig {
    /// Checks the configuration, naming the first field that is wrong.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |reason: String| PolicyError::InvalidConfig {
            policy: "apache_like".into(),
            reason,
        };
        if self.max_request_workers == 0 {
            return Err(bad("max_request_workers must be at least 1".into()));
        }
        if self.max_spare_servers <= self.min_spare_servers {
            return Err(bad(format!(
                "max_spare_servers ({}) must be greater than min_spare_servers ({})",
                self.max_spare_servers, self.min_spare_servers
            )));
        }
        if self.start_servers > self.max_request_workers {
            return Err(bad(format!(
                "start_servers ({}) exceeds max_request_workers ({})",
                self.start_servers, self.max_request_workers
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

/// The Apache-like default policy; see [`ApacheLikeConfig`].
///
/// ```
/// use preforkd_policies::{ApacheLike, ApacheLikeConfig, Decision, PoolSnapshot, ScalingPolicy, Time};
/// let mut p = ApacheLike::new(ApacheLikeConfig::default()).unwrap();
/// // Five busy, none idle: the ramp starts at one child, then two, then four.
/// assert_eq!(p.decide(&PoolSnapshot::new(0, 0, 5, 256), Time::ZERO), Decision::spawn(1));
/// assert_eq!(p.decide(&PoolSnapshot::new(0, 0, 6, 256), Time::ZERO), Decision::spawn(2));
/// assert_eq!(p.decide(&PoolSnapshot::new(0, 0, 8, 256), Time::ZERO), Decision::spawn(4));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ApacheLike {
    config: ApacheLikeConfig,
    state: RampState,
}

impl ApacheLike {
    /// A policy with this configuration, checked.
    pub fn new(config: ApacheLikeConfig) -> Result<Self, PolicyError> {
        config.validate()?;
        Ok(ApacheLike {
            config,
            state: RampState::default(),
        })
    }

    /// The configuration in force (TTIN/TTOU shift the spare bounds).
    pub fn settings(&self) -> &ApacheLikeConfig {
        &self.config
    }
}

impl ScalingPolicy for ApacheLike {
    fn decide(&mut self, pool: &PoolSnapshot, now: Time) -> Decision {
        let c = &self.config;
        let idle_like = pool.idle + pool.starting;
        let cap = c.max_request_workers.min(pool.max_children);
        // Above the cap (after a TTOU or a reload's surge) counts as too many idle.
        let over_cap = pool.total() > cap;
        if (idle_like > c.max_spare_servers || over_cap) && pool.idle > 0 {
            let more = idle_like - 1 > c.max_spare_servers || pool.total() - 1 > cap;
            self.state.retire_one(now, c.retire_interval, more)
        } else if idle_like < c.min_spare_servers {
            let room = cap.saturating_sub(pool.total()).min(pool.free_slots());
            self.state
                .ramp(self.state.spawn_rate, room, c.max_spawn_rate)
        } else {
            self.state.spawn_rate = 1;
            Decision::hold()
        }
    }

    fn initial_children(&self) -> usize {
        self.config.start_servers
    }

    fn quiet_range(&self) -> RangeInclusive<usize> {
        let c = &self.config;
        let cap = c.max_request_workers;
        c.min_spare_servers.min(cap)..=c.max_spare_servers.min(cap)
    }

    fn adjust(&mut self, delta: i32) {
        let c = &mut self.config;
        // At least one spare, as Apache forces: with none, a fully busy pool never grows.
        c.min_spare_servers = nudge(c.min_spare_servers, delta, 1, c.max_request_workers);
        c.max_spare_servers = nudge(
            c.max_spare_servers,
            delta,
            c.min_spare_servers + 1,
            usize::MAX,
        );
    }

    fn name(&self) -> &str {
        "apache_like"
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
    use crate::Scale;

    fn t(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    #[test]
    fn apache_counts_starting_as_idle() {
        let mut p = ApacheLike::default();
        // 5 starting, 0 idle: enough spare, no spawn.
        assert_eq!(
            p.decide(&PoolSnapshot::new(5, 0, 10, 256), t(0)),
            Decision::hold()
        );
    }

    #[test]
    fn apache_ramp_caps_at_32_and_resets() {
        let mut p = ApacheLike::default();
        let mut spawned = vec![];
        for _ in 0..8 {
            match p.decide(&PoolSnapshot::new(0, 0, 10, 256), t(0)).scale {
                Scale::Spawn(n) => spawned.push(n),
                other => panic!("expected spawn, got {other:?}"),
            }
        }
        assert_eq!(spawned, vec![1, 2, 4, 8, 16, 32, 32, 32]);
        // In range: rate resets.
        assert_eq!(
            p.decide(&PoolSnapshot::new(0, 7, 10, 256), t(0)),
            Decision::hold()
        );
        assert_eq!(
            p.decide(&PoolSnapshot::new(0, 0, 10, 256), t(0)),
            Decision::spawn(1)
        );
    }

    #[test]
    fn apache_never_asks_past_the_cap() {
        let mut p = ApacheLike::default();
        for _ in 0..6 {
            let _ = p.decide(&PoolSnapshot::new(0, 0, 10, 256), t(0));
        }
        assert_eq!(
            p.decide(&PoolSnapshot::new(0, 0, 148, 150), t(0)),
            Decision::spawn(2)
        );
        assert_eq!(
            p.decide(&PoolSnapshot::new(0, 0, 149, 150).with_retiring(1), t(0)),
            Decision::hold()
        );
    }

    #[test]
    fn apache_retires_one_per_interval() {
        let mut p = ApacheLike::default();
        let d = p.decide(&PoolSnapshot::new(0, 20, 0, 256), t(0));
        assert_eq!(d, Decision::retire(1).recheck_at(t(1000)));
        let d = p.decide(&PoolSnapshot::new(0, 19, 0, 256).with_retiring(1), t(10));
        assert_eq!(d, Decision::hold().recheck_at(t(1000)));
        let d = p.decide(&PoolSnapshot::new(0, 19, 0, 256), t(1000));
        assert_eq!(d, Decision::retire(1).recheck_at(t(2000)));
        // The last one above max_spare asks for no recheck.
        let d = p.decide(&PoolSnapshot::new(0, 11, 0, 256), t(2000));
        assert_eq!(d, Decision::retire(1));
    }

    #[test]
    fn apache_validates() {
        let c = ApacheLikeConfig {
            min_spare_servers: 10,
            max_spare_servers: 10,
            ..Default::default()
        };
        let e = ApacheLike::new(c).unwrap_err().to_string();
        assert!(e.contains("max_spare_servers (10)"), "{e}");
    }
}
