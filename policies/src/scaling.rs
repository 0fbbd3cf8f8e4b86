//! Scaling: how many children to start or retire, decided over a snapshot of the pool.

use crate::{PolicyError, Time};
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::ops::RangeInclusive;
use std::time::Duration;

/// What a scaling policy sees: the pool's counts at one instant.
///
/// Children being retired are counted apart and are in none of `starting`, `idle`
/// or `busy`: they are on their way out and serve no new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PoolSnapshot {
    /// Forked (or being forked) but not yet ready to serve.
    pub starting: usize,
    /// Ready and waiting for work.
    pub idle: usize,
    /// Ready and handling a request.
    pub busy: usize,
    /// Told to exit (scaled down, recycled, reloaded) and not yet gone.
    pub retiring: usize,
    /// The hard cap on live children (`max_children`); the supervisor never exceeds it,
    /// whatever a policy asks for.
    pub max_children: usize,
    /// Connections waiting in the listen backlog, when the runtime can tell.
    pub backlog: Option<usize>,
}

impl PoolSnapshot {
    /// A snapshot with the given counts and nothing retiring or queued.
    ///
    /// ```
    /// use preforkd_policies::PoolSnapshot;
    /// let s = PoolSnapshot::new(1, 2, 3, 150);
    /// assert_eq!(s.total(), 6);
    /// assert_eq!(s.free_slots(), 144);
    /// ```
    pub fn new(starting: usize, idle: usize, busy: usize, max_children: usize) -> Self {
        PoolSnapshot {
            starting,
            idle,
            busy,
            retiring: 0,
            max_children,
            backlog: None,
        }
    }

    /// The same snapshot with `retiring` children on their way out.
    pub fn with_retiring(mut self, retiring: usize) -> Self {
        self.retiring = retiring;
        self
    }

    /// The same snapshot with a known listen backlog.
    pub fn with_backlog(mut self, backlog: Option<usize>) -> Self {
        self.backlog = backlog;
        self
    }

    /// Children that count toward the pool: starting, idle and busy (not retiring).
    pub fn total(&self) -> usize {
        self.starting + self.idle + self.busy
    }

    /// Slots a new child could take now: `max_children` minus every live child,
    /// retiring ones included (they still hold a slot until they exit).
    pub fn free_slots(&self) -> usize {
        self.max_children
            .saturating_sub(self.total() + self.retiring)
    }
}

/// The change a policy asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scale {
    /// Keep the pool as it is.
    Hold,
    /// Start this many children now (the supervisor caps it at the free slots and
    /// defers it during crash-loop backoff; see [`Decision::spawn`]).
    Spawn(usize),
    /// Retire this many idle children gracefully (busy children are never retired
    /// for scaling).
    Retire(usize),
}

/// A policy's answer: the change, and when it wants to be asked again even if
/// nothing happens (for example to retire the next idle child one second later).
///
/// Each answer replaces the previous one's `recheck_at`: a decision without one
/// cancels a recheck asked for earlier, so a policy waiting for a time keeps
/// asking for it until it comes (as [`RampState::retire_one`] does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The change to make now.
    pub scale: Scale,
    /// Ask again at this time even without a new event.
    pub recheck_at: Option<Time>,
}

impl Decision {
    /// No change, no recheck.
    pub const fn hold() -> Self {
        Decision {
            scale: Scale::Hold,
            recheck_at: None,
        }
    }

    /// Start `n` children.
    ///
    /// `n` is a wish, capped by the supervisor: it starts at most as many children
    /// as there are free slots ([`PoolSnapshot::free_slots`]: `max_children` minus
    /// every live child, retiring ones included), and during a crash-loop backoff
    /// only the replacements of healthy children that just died. What it does not
    /// start is not remembered: the policy is asked again at the next event, and
    /// the supervisor wakes itself when the backoff ends. Children started count as
    /// [`PoolSnapshot::starting`] until they are ready, so a policy that counts
    /// them as spare does not ask twice for the same shortfall.
    pub const fn spawn(n: usize) -> Self {
        Decision {
            scale: Scale::Spawn(n),
            recheck_at: None,
        }
    }

    /// Retire `n` idle children (gracefully: TERM, the child exits between
    /// requests).
    ///
    /// Busy children are never retired for scaling, so at most
    /// [`PoolSnapshot::idle`] go; none while the pool is still starting its
    /// initial children, and none below a reload's minimum serving. Retiring
    /// several at once after a burst and starting them again at the next one is
    /// churn: pace retirements with [`RampState::retire_one`].
    pub const fn retire(n: usize) -> Self {
        Decision {
            scale: Scale::Retire(n),
            recheck_at: None,
        }
    }

    /// The same decision, asking to be called again at `at`.
    pub const fn recheck_at(mut self, at: Time) -> Self {
        self.recheck_at = Some(at);
        self
    }
}

/// Decides the pool size. Pure: it sees a snapshot and the time, and returns a
/// [`Decision`]; it never reads a clock, sleeps or does I/O.
///
/// Only [`decide`](ScalingPolicy::decide) is required.
///
/// # When `decide` is called
///
/// Once per event the supervisor handles while it runs the pool (from the end of
/// `after_init` until shutdown begins; never before, during or after a shutdown),
/// after it has applied the event and its own timers (timeouts, request limits,
/// a reload's rollout), so the snapshot is the pool as the supervisor now
/// believes it to be. The events are:
///
/// - **scoreboard readings**, the only source of `idle` and `busy`. The runtime
///   reads the scoreboard when a child takes the last idle slot while the pool has
///   room to grow (**saturation**), when a child becomes **ready**, before it
///   reports **exits**, when the supervisor's **timer** fires, and (when client
///   disconnects are watched) when the first child of an idle pool gets busy;
/// - a child forked, ready or exited; a fork that failed; signals (HUP, TTIN,
///   TTOU...); a finished hook; changed files; a disconnect scan;
/// - the supervisor's **timer**: the earliest of your [`Decision::recheck_at`],
///   the end of a crash-loop backoff, the children's timeouts, the reload check
///   and, **while any child is counted busy, every `busy_refresh`** (1 s).
///
/// A request finishing wakes nobody: the supervisor learns that busy children went
/// idle at its next reading, at most `busy_refresh` later. A pool it counts idle
/// causes no call at all (an idle parent sleeps) until something happens or your
/// `recheck_at` comes: a policy that wants to act later (retire the next idle
/// child in a second) says so with [`Decision::recheck_at`], in every answer until
/// then, and keeps the time of its last action in its own state
/// ([`RampState::retire_one`] does both).
///
/// ```
/// use preforkd_policies::{Decision, PoolSnapshot, ScalingPolicy, Time};
///
/// /// Keep two spare children, whatever the load, up to the cap.
/// #[derive(Debug)]
/// struct TwoSpare;
///
/// impl ScalingPolicy for TwoSpare {
///     fn decide(&mut self, pool: &PoolSnapshot, _now: Time) -> Decision {
///         let spare = pool.idle + pool.starting;
///         if spare < 2 {
///             Decision::spawn(2 - spare)
///         } else if pool.idle > 2 {
///             Decision::retire(pool.idle - 2)
///         } else {
///             Decision::hold()
///         }
///     }
///     fn quiet_range(&self) -> std::ops::RangeInclusive<usize> {
///         2..=2
///     }
/// }
///
/// let mut p = TwoSpare;
/// assert_eq!(p.decide(&PoolSnapshot::new(0, 0, 5, 150), Time::ZERO), Decision::spawn(2));
/// ```
pub trait ScalingPolicy: Send + Debug {
    /// The change to make now, given the pool and the time.
    fn decide(&mut self, pool: &PoolSnapshot, now: Time) -> Decision;

    /// How many children to start before the pool counts as up (Apache's
    /// StartServers). Defaults to the low end of [`quiet_range`](Self::quiet_range).
    fn initial_children(&self) -> usize {
        *self.quiet_range().start()
    }

    /// The pool sizes this policy settles into when every child is idle and no work
    /// arrives, before the supervisor's `max_children` cap. The property tests and
    /// the simulator check convergence into it. Defaults to "anything".
    fn quiet_range(&self) -> RangeInclusive<usize> {
        0..=usize::MAX
    }

    /// A manual nudge (TTIN is `+1`, TTOU is `-1`): shift the policy's target.
    /// Defaults to ignoring it.
    fn adjust(&mut self, delta: i32) {
        let _ = delta;
    }

    /// The name this policy is registered under, for logs and re-exec handoff.
    fn name(&self) -> &str {
        "custom"
    }

    /// The policy's configuration, when it can be serialized.
    ///
    /// The in-place upgrade (a re-executed parent taking over the running
    /// children: the next step of this crate) hands it across the exec, with
    /// [`name`](Self::name), so the new parent rebuilds the same policy through a
    /// [`Registry`](crate::Registry). `None` (the default): the new parent uses the
    /// policy it is configured with.
    fn config(&self) -> Option<&dyn erased_serde::Serialize> {
        None
    }

    /// The policy's running state (ramp rates, last action times), when it can be
    /// serialized: the in-place upgrade hands it across the exec and the new
    /// parent's policy resumes from it with [`restore_state`](Self::restore_state),
    /// instead of starting its ramps and pacing afresh. `None` (the default): no
    /// state worth keeping.
    fn state(&self) -> Option<&dyn erased_serde::Serialize> {
        None
    }

    /// Restore running state saved by [`state`](Self::state) (in the in-place
    /// upgrade, by the parent before the exec). The default ignores it.
    fn restore_state(
        &mut self,
        state: &mut dyn erased_serde::Deserializer<'_>,
    ) -> Result<(), erased_serde::Error> {
        let _ = state;
        Ok(())
    }
}

impl<P: ScalingPolicy + ?Sized> ScalingPolicy for Box<P> {
    fn decide(&mut self, pool: &PoolSnapshot, now: Time) -> Decision {
        (**self).decide(pool, now)
    }
    fn initial_children(&self) -> usize {
        (**self).initial_children()
    }
    fn quiet_range(&self) -> RangeInclusive<usize> {
        (**self).quiet_range()
    }
    fn adjust(&mut self, delta: i32) {
        (**self).adjust(delta)
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn config(&self) -> Option<&dyn erased_serde::Serialize> {
        (**self).config()
    }
    fn state(&self) -> Option<&dyn erased_serde::Serialize> {
        (**self).state()
    }
    fn restore_state(
        &mut self,
        state: &mut dyn erased_serde::Deserializer<'_>,
    ) -> Result<(), erased_serde::Error> {
        (**self).restore_state(state)
    }
}

/// Applies a signed nudge to a count, clamped to `[lo, hi]`.
fn nudge(value: usize, delta: i32, lo: usize, hi: usize) -> usize {
    let moved = if delta >= 0 {
        value.saturating_add(delta.unsigned_abs() as usize)
    } else {
        value.saturating_sub(delta.unsigned_abs() as usize)
    };
    moved.clamp(lo, hi.max(lo))
}

/// The ramp and pacing state shared by the adaptive policies, and available to
/// yours: keep one in the policy and call [`retire_one`](RampState::retire_one)
/// to shrink the pool at a steady pace. Serializable, so a policy can return it
/// from [`ScalingPolicy::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RampState {
    /// Children to start on the next shortfall; doubles on each consecutive one.
    pub spawn_rate: usize,
    /// When the last child was retired, for pacing.
    pub last_retire: Option<Time>,
}

impl Default for RampState {
    fn default() -> Self {
        RampState {
            spawn_rate: 1,
            last_retire: None,
        }
    }
}

impl RampState {
    /// Spawn `rate` children (capped at `room`), then double the rate up to `max_rate`.
    fn ramp(&mut self, want: usize, room: usize, max_rate: usize) -> Decision {
        let n = want.min(room);
        if n == 0 {
            return Decision::hold();
        }
        self.spawn_rate = (self.spawn_rate.saturating_mul(2)).min(max_rate.max(1));
        Decision::spawn(n)
    }

    /// The pacing of scale-down: retire one idle child if `interval` has passed since
    /// the last one this state retired; otherwise hold, and ask to be called when it
    /// has. `more_after`: whether children will still be surplus after this one;
    /// then it also asks to be called again `interval` later, since no event may
    /// come to call it back (an idle pool wakes nobody).
    ///
    /// Call it while the pool has too many idle children, and only then: the pool
    /// shrinks by one child per `interval`, so the tail of a burst is not retired
    /// all at once only to be started again by the next wave. It records the
    /// retirement in `last_retire` and resets `spawn_rate` (a shrinking pool is no
    /// shortfall).
    ///
    /// ```
    /// use preforkd_policies::{Decision, RampState, Time};
    /// use std::time::Duration;
    /// let (mut pace, second) = (RampState::default(), Duration::from_secs(1));
    /// let t = Time::from_secs;
    /// assert_eq!(pace.retire_one(t(10), second, true), Decision::retire(1).recheck_at(t(11)));
    /// // Asked again before the interval is over (another event): wait for it.
    /// let half = Time::from_millis(10_500);
    /// assert_eq!(pace.retire_one(half, second, true), Decision::hold().recheck_at(t(11)));
    /// // The last surplus child: no recheck after it.
    /// assert_eq!(pace.retire_one(t(11), second, false), Decision::retire(1));
    /// ```
    pub fn retire_one(&mut self, now: Time, interval: Duration, more_after: bool) -> Decision {
        self.spawn_rate = 1;
        if let Some(last) = self.last_retire {
            let next = last + interval;
            if now < next {
                return Decision::hold().recheck_at(next);
            }
        }
        self.last_retire = Some(now);
        let d = Decision::retire(1);
        if more_after {
            d.recheck_at(now + interval)
        } else {
            d
        }
    }
}

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
        c.min_spare_servers = nudge(c.min_spare_servers, delta, 0, c.max_request_workers);
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
        self.0 = nudge(self.0, delta, 0, usize::MAX);
    }

    fn name(&self) -> &str {
        "fixed"
    }

    fn config(&self) -> Option<&dyn erased_serde::Serialize> {
        Some(self)
    }
}

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

    /// The configuration in force (TTIN/TTOU shift `prefork`).
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
        self.config.prefork = nudge(self.config.prefork, delta, 0, self.config.max_children);
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
    fn adjust_moves_targets_within_bounds() {
        let mut f = Fixed(1);
        f.adjust(-5);
        assert_eq!(f.0, 0);
        let mut e = Elastic::from_seed(3, 4).unwrap();
        e.adjust(10);
        assert_eq!(e.settings().prefork, 4);
        let mut a = ApacheLike::default();
        a.adjust(-10);
        assert_eq!(a.settings().min_spare_servers, 0);
        assert!(a.settings().max_spare_servers > a.settings().min_spare_servers);
    }
}
