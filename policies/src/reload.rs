//! Reloading: when to reload, and how to roll the children over to a new generation.

use crate::PolicyError;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::time::Duration;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ReloadTrigger {
    /// SIGHUP from an operator or a service manager.
    Signal,
    /// The periodic check (`auto_reload_check_every`) found changed files.
    FilesChanged,
    /// SIGUSR2: an operator asks for an in-place upgrade to the executable on disk.
    Upgrade,
    /// The periodic check found the running executable replaced on disk.
    ExecutableChanged,
}

/// What to do about a reload trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadPlan {
    /// Run the user's `auto_reload_handler` in the parent.
    pub run_handler: bool,
    /// Replace every child by one of a new generation, rolling, without dropping
    /// below the minimum serving.
    pub restart_children: bool,
    /// Upgrade in place: re-execute the parent from its executable (same pid),
    /// which adopts the running children and rolls them over to its own code. A
    /// new executable that cannot start leaves the old code serving.
    pub upgrade: bool,
}

impl ReloadPlan {
    /// Do nothing.
    pub const IGNORE: ReloadPlan = ReloadPlan {
        run_handler: false,
        restart_children: false,
        upgrade: false,
    };
    /// A rolling restart of the children (HUP's default), without the handler.
    pub const ROLL: ReloadPlan = ReloadPlan {
        run_handler: false,
        restart_children: true,
        upgrade: false,
    };
    /// An in-place upgrade of the parent, which rolls the children over itself.
    pub const UPGRADE: ReloadPlan = ReloadPlan {
        run_handler: false,
        restart_children: false,
        upgrade: true,
    };
}

/// Decides when and how to reload. Only [`plan`](ReloadPolicy::plan) is required.
///
/// ```
/// use preforkd_policies::{ReloadPlan, ReloadPolicy, ReloadTrigger};
/// /// Reload only on SIGHUP, never on file changes.
/// #[derive(Debug)]
/// struct HupOnly;
/// impl ReloadPolicy for HupOnly {
///     fn plan(&mut self, trigger: ReloadTrigger) -> ReloadPlan {
///         match trigger {
///             ReloadTrigger::Signal => ReloadPlan { run_handler: true, ..ReloadPlan::ROLL },
///             _ => ReloadPlan::IGNORE,
///         }
///     }
/// }
/// assert!(HupOnly.plan(ReloadTrigger::Signal).restart_children);
/// ```
pub trait ReloadPolicy: Send + Debug {
    /// What to do about `trigger`.
    fn plan(&mut self, trigger: ReloadTrigger) -> ReloadPlan;

    /// How often the runtime checks for changed files (the seed's
    /// `auto_reload_check_every`); `None`: never.
    fn check_every(&self) -> Option<Duration> {
        None
    }

    /// The fewest children that must keep serving while a rollout retires old
    /// ones, counting the children of the generation known to work and new ones
    /// proved healthy (they served a request, or stayed up `min_healthy_uptime`
    /// after their READY), never new ones only ready: an old
    /// child is retired for a proved new one, so new code whose children start and
    /// then fail leaves the old ones serving. `None`: the scaling policy's quiet
    /// minimum.
    fn min_serving(&self) -> Option<usize> {
        None
    }

    /// The most new-generation children starting at once during a rollout.
    /// `None`: as many as there are old children (bounded by free slots).
    fn max_surge(&self) -> Option<usize> {
        None
    }

    /// The name this policy is registered under.
    fn name(&self) -> &str {
        "custom"
    }

    /// The policy's configuration, when it can be serialized: the in-place upgrade
    /// (the next step of this crate) hands it across the exec, with
    /// [`name`](Self::name), so the new parent rebuilds the same policy through a
    /// [`Registry`](crate::Registry). `None` (the default): the new parent uses
    /// the policy it is configured with.
    fn config(&self) -> Option<&dyn erased_serde::Serialize> {
        None
    }
}

impl<P: ReloadPolicy + ?Sized> ReloadPolicy for Box<P> {
    fn plan(&mut self, trigger: ReloadTrigger) -> ReloadPlan {
        (**self).plan(trigger)
    }
    fn check_every(&self) -> Option<Duration> {
        (**self).check_every()
    }
    fn min_serving(&self) -> Option<usize> {
        (**self).min_serving()
    }
    fn max_surge(&self) -> Option<usize> {
        (**self).max_surge()
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn config(&self) -> Option<&dyn erased_serde::Serialize> {
        (**self).config()
    }
}

/// The default reload policy: a rolling restart by generation.
///
/// On SIGHUP: roll the children over (and run the handler if `handler_on_signal`).
/// When the periodic check finds changed files: run `auto_reload_handler`, then roll
/// the children over. On SIGUSR2, or when the check finds the executable replaced:
/// upgrade in place.
///
/// ```
/// use preforkd_policies::{Rolling, ReloadPolicy, ReloadTrigger};
/// use std::time::Duration;
/// let mut r = Rolling { check_every: Some(Duration::from_secs(5)), ..Rolling::default() };
/// assert_eq!(r.check_every(), Some(Duration::from_secs(5)));
/// let plan = r.plan(ReloadTrigger::FilesChanged);
/// assert!(plan.run_handler && plan.restart_children);
/// assert!(r.plan(ReloadTrigger::ExecutableChanged).upgrade);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rolling {
    /// The seed's `auto_reload_check_every`.
    #[serde(with = "crate::duration_serde::option")]
    pub check_every: Option<Duration>,
    /// Run the reload handler on SIGHUP too (false: only on file changes).
    pub handler_on_signal: bool,
    /// See [`ReloadPolicy::min_serving`].
    pub min_serving: Option<usize>,
    /// See [`ReloadPolicy::max_surge`].
    pub max_surge: Option<usize>,
}

impl Rolling {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.check_every == Some(Duration::ZERO) {
            return Err(PolicyError::InvalidConfig {
                policy: "rolling".into(),
                reason: "check_every must be greater than zero".into(),
            });
        }
        if self.max_surge == Some(0) {
            return Err(PolicyError::InvalidConfig {
                policy: "rolling".into(),
                reason: "max_surge must be at least 1".into(),
            });
        }
        Ok(())
    }
}

impl ReloadPolicy for Rolling {
    fn plan(&mut self, trigger: ReloadTrigger) -> ReloadPlan {
        match trigger {
            ReloadTrigger::Signal => ReloadPlan {
                run_handler: self.handler_on_signal,
                ..ReloadPlan::ROLL
            },
            ReloadTrigger::FilesChanged => ReloadPlan {
                run_handler: true,
                ..ReloadPlan::ROLL
            },
            ReloadTrigger::Upgrade | ReloadTrigger::ExecutableChanged => ReloadPlan::UPGRADE,
        }
    }
    fn check_every(&self) -> Option<Duration> {
        self.check_every
    }
    fn min_serving(&self) -> Option<usize> {
        self.min_serving
    }
    fn max_surge(&self) -> Option<usize> {
        self.max_surge
    }
    fn name(&self) -> &str {
        "rolling"
    }
    fn config(&self) -> Option<&dyn erased_serde::Serialize> {
        Some(self)
    }
}
