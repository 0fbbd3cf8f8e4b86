//! [`MachineBuilder`]: the policies, and the timers the runtime asks for.

use super::health::Streak;
use super::phase::Phase;
use super::pool::Pool;
use super::timer_table::{Timer, TimerTable};
use super::upgrade::{Handoff, Upgrade};
use super::Machine;
use crate::policy::{CallHook, DisconnectPolicy, ReloadPolicy, Rolling, ScalingPolicy, Time};
use crate::supervisor::action::{Action, Hook};
use crate::supervisor::config::{ConfigError, Options};
use crate::supervisor::rng::SplitMix64;
use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

/// Builds a [`Machine`] with the policies of your choice.
///
/// ```
/// use preforkd::{Machine, Options, policy::ApacheLike};
/// let m = Machine::builder(Options::default())
///     .scaling_policy(ApacheLike::default())
///     .build()
///     .unwrap();
/// assert_eq!(m.state(), preforkd::State::Init);
/// ```
#[derive(Debug)]
pub struct MachineBuilder {
    opts: Options,
    scaling: Option<Box<dyn ScalingPolicy>>,
    reload: Option<Box<dyn ReloadPolicy>>,
    disconnect: Option<Box<dyn DisconnectPolicy>>,
    disconnect_check_every: Option<Duration>,
    watchdog_interval: Option<Duration>,
    handoff: Option<Handoff>,
}

impl MachineBuilder {
    pub(super) fn new(opts: Options) -> MachineBuilder {
        MachineBuilder {
            opts,
            scaling: None,
            reload: None,
            disconnect: None,
            disconnect_check_every: None,
            watchdog_interval: None,
            handoff: None,
        }
    }

    /// Use this scaling policy instead of the default built from `prefork` and
    /// `max_children` ([`Options::default_scaling`]); `prefork` is then not read,
    /// nor checked. A `Box<dyn ScalingPolicy>` (for example one built by a
    /// [`Registry`](crate::policy::Registry)) is a policy too.
    pub fn scaling_policy(mut self, p: impl ScalingPolicy + 'static) -> Self {
        self.scaling = Some(Box::new(p));
        self
    }

    /// Use this reload policy instead of [`Rolling`] with `auto_reload_check_every`;
    /// a `Box<dyn ReloadPolicy>` is one too.
    pub fn reload_policy(mut self, p: impl ReloadPolicy + 'static) -> Self {
        self.reload = Some(Box::new(p));
        self
    }

    /// Use this disconnect policy instead of [`CallHook`]; a
    /// `Box<dyn DisconnectPolicy>` is one too.
    pub fn disconnect_policy(mut self, p: impl DisconnectPolicy + 'static) -> Self {
        self.disconnect = Some(Box::new(p));
        self
    }

    /// Watch for clients that hang up: while a child is busy, ask for a look at the
    /// children's connections ([`Action::CheckDisconnects`], answered with
    /// [`Event::Netstat`](crate::Event::Netstat)) every `every`, the first `every`
    /// after the machine learns a child is busy. Off by default: without it, the
    /// disconnect policy only hears of what a runtime reports unasked.
    pub fn disconnect_check_every(mut self, every: Duration) -> Self {
        self.disconnect_check_every = Some(every);
        self
    }

    /// Ping the service manager's watchdog ([`Action::Notify`] with
    /// [`Notify::Watchdog`](crate::Notify::Watchdog)) every `every` from
    /// [`Time::ZERO`] on, in every state until [`State::Stopped`](crate::State::Stopped).
    /// Off by default.
    pub fn watchdog_interval(mut self, every: Duration) -> Self {
        self.watchdog_interval = Some(every);
        self
    }

    /// Checks the options ([`Options::validate`]) and builds the machine, in
    /// [`State::Init`](crate::State::Init) with `after_init` as its first action.
    /// Without a scaling policy, builds the default one, which checks `prefork`
    /// ([`Options::default_scaling`]).
    pub fn build(self) -> Result<Machine, ConfigError> {
        let opts = self.opts;
        opts.validate()?;
        for (option, every) in [
            ("disconnect_check_every", self.disconnect_check_every),
            ("watchdog_interval", self.watchdog_interval),
        ] {
            if every == Some(Duration::ZERO) {
                return Err(ConfigError::new(option, "must be greater than zero"));
            }
        }
        let scaling = match self.scaling {
            Some(p) => p,
            // `prefork` is this policy's setting: checked here, not for a custom one.
            None => Box::new(opts.default_scaling()?),
        };
        let reload = match self.reload {
            Some(p) => p,
            None => {
                let r = Rolling {
                    check_every: opts.auto_reload_check_every,
                    ..Rolling::default()
                };
                r.validate()
                    .map_err(|e| ConfigError::policy("auto_reload_check_every", e))?;
                Box::new(r)
            }
        };
        let disconnect = self.disconnect.unwrap_or_else(|| Box::new(CallHook));
        if let Some(h) = &self.handoff {
            h.check(opts.max_children)?;
        }
        let start = self.handoff.as_ref().map_or(Time::ZERO, Handoff::now);
        let mut actions = VecDeque::new();
        actions.push_back(Action::RunHook(Hook::AfterInit));
        let mut timers = TimerTable::default();
        timers.set(
            Timer::Watchdog,
            self.watchdog_interval.map(|every| start + every),
        );
        let mut m = Machine {
            rng: SplitMix64::new(opts.seed),
            pool: Pool::new(opts.max_children),
            opts,
            scaling,
            reload,
            disconnect,
            phase: Phase::Init,
            generation: 1,
            actions,
            now: Time::ZERO,
            timers,
            crash_streak: 0,
            memory_warned: false,
            streak: Streak::default(),
            spawn_credit: 0,
            backlog: None,
            disconnects_seen: BTreeSet::new(),
            last_status: None,
            last_min_serving: None,
            adopted_rollout: None,
            disconnect_check_every: self.disconnect_check_every,
            watchdog_interval: self.watchdog_interval,
            upgrade: Upgrade::Idle,
            base_quiet: 0,
            adopting: None,
            returned: false,
            totals: Default::default(),
        };
        m.base_quiet = *m.scaling.quiet_range().start();
        if let Some(h) = &self.handoff {
            m.take_in(h);
            m.adopting = Some(h.has_previous());
            m.returned = h.is_returning();
        }
        Ok(m)
    }

    pub(super) fn with_handoff(mut self, handoff: Handoff) -> Self {
        self.handoff = Some(handoff);
        self
    }
}
