//! The supervisor's options: the seed's names, plus the knobs a production pool needs.

use crate::policy::{Elastic, PolicyError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Options of the supervisor core. `Options::default()` is the seed's defaults.
///
/// The seed's options keep their names: `prefork` and `max_children` build the
/// default [`Elastic`] scaling policy when no other is given
/// ([`Options::default_scaling`]), and `auto_reload_check_every` builds the default
/// [`Rolling`](crate::policy::Rolling) reload policy. With a scaling policy of your
/// own, `prefork` is not read, and not checked.
///
/// ```
/// use preforkd::{policy::Fixed, Machine, Options};
/// let opts = Options { prefork: 5, max_children: 50, ..Options::default() };
/// opts.validate().unwrap();
/// let small = Options { prefork: 10, max_children: 5, ..Options::default() };
/// // The default policy would start 10 children of at most 5: refused, by name...
/// let e = Machine::new(small.clone()).unwrap_err();
/// assert!(e.to_string().contains("prefork (10) exceeds max_children (5)"));
/// // ...but a policy of your own never reads `prefork`.
/// assert!(Machine::builder(small).scaling_policy(Fixed(5)).build().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// Children to start, and to shrink back to when idle (seed: 3): the setting of
    /// the default scaling policy ([`Options::default_scaling`]), unread with a
    /// scaling policy of your own.
    pub prefork: usize,
    /// The hard cap on live children, retiring ones included (seed: 150).
    pub max_children: usize,
    /// Check for changed files this often (seed: never).
    #[serde(with = "preforkd_policies::duration_serde::option")]
    pub auto_reload_check_every: Option<Duration>,
    /// Graceful shutdown: how long children may take to finish before KILL (30 s).
    /// Also the limit for a retiring child to exit before it is KILLed.
    #[serde(with = "preforkd_policies::duration_serde")]
    pub graceful_timeout: Duration,
    /// After KILLing stragglers, how long to wait for them to be reaped before the
    /// parent gives up and exits with code 1 (5 s).
    #[serde(with = "preforkd_policies::duration_serde")]
    pub kill_wait: Duration,
    /// A request running longer than this gets its child TERMed, then KILLed after
    /// `kill_grace` (none).
    #[serde(with = "preforkd_policies::duration_serde::option")]
    pub busy_timeout: Option<Duration>,
    /// From a busy-timeout or disconnect TERM to KILL (5 s).
    #[serde(with = "preforkd_policies::duration_serde")]
    pub kill_grace: Duration,
    /// A child not ready this long after its fork is KILLed (30 s).
    #[serde(with = "preforkd_policies::duration_serde")]
    pub start_timeout: Duration,
    /// Recycle a child after this many requests (none).
    pub max_requests_per_child: Option<u64>,
    /// Retire a child gracefully (TERM: it finishes its request, then exits, and is
    /// replaced) once its memory exceeds this many bytes (none), like uWSGI's
    /// `reload-on-rss`. The figure is the child's resident set size, from
    /// `/proc/<pid>/statm`: cheap to read on every scoreboard tick, and it counts
    /// the pages the child shares with the parent (copy-on-write) as its own, so set
    /// the limit above a fresh child's RSS. It is checked when the parent looks at
    /// the scoreboard: at least every `busy_refresh` while children are busy.
    pub max_child_memory: Option<u64>,
    /// Add a random 0..=jitter to each child's request limit, so children do not all
    /// recycle at once (0).
    pub max_requests_jitter: u64,
    /// The first crash-loop delay; doubles per consecutive crash (100 ms). A crash
    /// is a child that exits before it is healthy (see `min_healthy_uptime`), or a
    /// failed fork. While healthy children serve, the first crash of a streak is
    /// replaced at once and the doubling starts from the second; a healthy child's
    /// death is always replaced at once. A reload resets the backoff.
    #[serde(with = "preforkd_policies::duration_serde")]
    pub backoff_initial: Duration,
    /// The longest crash-loop delay (30 s).
    #[serde(with = "preforkd_policies::duration_serde")]
    pub backoff_max: Duration,
    /// A ready child that served a request, or lives this long after its fork, is
    /// healthy: its exit is no crash, and, if it was forked during a crash streak,
    /// its health ends the streak and resets the backoff (1 s).
    #[serde(with = "preforkd_policies::duration_serde")]
    pub min_healthy_uptime: Duration,
    /// While children are busy, look at the scoreboard again this often: a request
    /// finishing does not wake the parent, so this is how it learns the pool has gone
    /// idle and can shrink (1 s). An idle pool never wakes for it.
    #[serde(with = "preforkd_policies::duration_serde")]
    pub busy_refresh: Duration,
    /// The least time between two STATUS notifications (1 s).
    #[serde(with = "preforkd_policies::duration_serde")]
    pub status_interval: Duration,
    /// Seed of the generator behind the request-limit jitter.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            prefork: 3,
            max_children: 150,
            auto_reload_check_every: None,
            graceful_timeout: Duration::from_secs(30),
            kill_wait: Duration::from_secs(5),
            busy_timeout: None,
            kill_grace: Duration::from_secs(5),
            start_timeout: Duration::from_secs(30),
            max_requests_per_child: None,
            max_child_memory: None,
            max_requests_jitter: 0,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            min_healthy_uptime: Duration::from_secs(1),
            busy_refresh: Duration::from_secs(1),
            status_interval: Duration::from_secs(1),
            seed: 0x5eed,
        }
    }
}

/// The largest `max_children` accepted: the machine and the scoreboard keep a
/// slot for each (64 bytes shared, plus the machine's own record), allocated up
/// front; beyond this a typo would exhaust memory instead of being refused.
pub const MAX_CHILDREN_LIMIT: usize = 65_536;

/// A configuration refused, naming the option at fault: its `Display` reads
/// `option <name>: <reason>`.
///
/// ```
/// use preforkd::Options;
/// let e = Options { max_children: 0, ..Options::default() }.validate().unwrap_err();
/// assert_eq!(e.option(), "max_children");
/// assert_eq!(e.reason(), "must be at least 1");
/// assert_eq!(e.to_string(), "option max_children: must be at least 1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("option {option}: {reason}")]
pub struct ConfigError {
    option: &'static str,
    reason: String,
}

impl ConfigError {
    /// An error for `option` (its name, as in [`Options`] or the builder method
    /// that sets it) with what is wrong.
    pub(crate) fn new(option: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            option,
            reason: reason.into(),
        }
    }

    /// A default policy, built from `option`, refused its settings.
    pub(crate) fn policy(option: &'static str, e: PolicyError) -> ConfigError {
        let reason = match e {
            PolicyError::InvalidConfig { reason, .. } => reason,
            other => other.to_string(),
        };
        ConfigError::new(option, reason)
    }

    /// The option at fault, named as in [`Options`] (`"max_children"`).
    pub fn option(&self) -> &'static str {
        self.option
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

fn invalid(option: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(option, reason)
}

impl Options {
    /// Checks the options every machine reads, whatever its policies, naming the
    /// first that is wrong.
    ///
    /// `prefork` is not among them: only the default scaling policy reads it, so
    /// it is checked when that policy is built ([`default_scaling`](Self::default_scaling),
    /// which [`MachineBuilder::build`](crate::MachineBuilder::build) calls when no
    /// scaling policy was given).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_children == 0 {
            return Err(invalid("max_children", "must be at least 1"));
        }
        if self.max_children > MAX_CHILDREN_LIMIT {
            return Err(invalid(
                "max_children",
                format!(
                    "{} is more than this supervisor allows ({MAX_CHILDREN_LIMIT}): \
                     each child has a slot in memory",
                    self.max_children
                ),
            ));
        }
        if self.auto_reload_check_every == Some(Duration::ZERO) {
            return Err(invalid(
                "auto_reload_check_every",
                "must be greater than zero",
            ));
        }
        if self.busy_timeout == Some(Duration::ZERO) {
            return Err(invalid("busy_timeout", "must be greater than zero"));
        }
        if self.max_child_memory.is_some_and(|m| m < 1 << 20) {
            return Err(invalid(
                "max_child_memory",
                "must be at least 1 MiB (1048576 bytes): below that no child can run",
            ));
        }
        if self.max_requests_per_child == Some(0) {
            return Err(invalid("max_requests_per_child", "must be at least 1"));
        }
        if self.max_requests_jitter > 0 && self.max_requests_per_child.is_none() {
            return Err(invalid(
                "max_requests_jitter",
                "needs max_requests_per_child to be set",
            ));
        }
        for (name, d) in [
            ("kill_wait", self.kill_wait),
            ("kill_grace", self.kill_grace),
            ("start_timeout", self.start_timeout),
            ("backoff_initial", self.backoff_initial),
            ("status_interval", self.status_interval),
            ("busy_refresh", self.busy_refresh),
        ] {
            if d.is_zero() {
                return Err(invalid(name, "must be greater than zero"));
            }
        }
        if self.backoff_max < self.backoff_initial {
            return Err(invalid(
                "backoff_max",
                format!(
                    "{:?} is shorter than backoff_initial ({:?})",
                    self.backoff_max, self.backoff_initial
                ),
            ));
        }
        Ok(())
    }

    /// The default scaling policy, the seed's semantics: [`Elastic`] from `prefork`
    /// and `max_children`. Refused, naming `prefork`, if it exceeds `max_children`.
    ///
    /// ```
    /// use preforkd::{policy::ScalingPolicy, Options};
    /// let p = Options { prefork: 4, ..Options::default() }.default_scaling().unwrap();
    /// assert_eq!(p.initial_children(), 4);
    /// ```
    pub fn default_scaling(&self) -> Result<Elastic, ConfigError> {
        if self.prefork > self.max_children {
            return Err(invalid(
                "prefork",
                format!(
                    "prefork ({}) exceeds max_children ({})",
                    self.prefork, self.max_children
                ),
            ));
        }
        Elastic::from_seed(self.prefork, self.max_children)
            .map_err(|e| ConfigError::policy("prefork", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Fixed;
    use crate::Machine;

    /// `prefork` is the default policy's option: a custom policy never reads it, so
    /// the seed's default (3) above a small `max_children` must not be refused.
    #[test]
    fn prefork_is_checked_only_when_it_builds_the_default_policy() {
        let opts = Options {
            max_children: 2,
            ..Options::default()
        };
        opts.validate().unwrap();
        let m = Machine::builder(opts.clone())
            .scaling_policy(Fixed(2))
            .build();
        assert!(m.is_ok(), "{:?}", m.err());
        match Machine::new(opts) {
            Err(e) => {
                assert_eq!(e.option(), "prefork");
                assert_eq!(e.reason(), "prefork (3) exceeds max_children (2)");
            }
            other => panic!("the default policy took prefork 3 of 2: {other:?}"),
        }
    }
}
