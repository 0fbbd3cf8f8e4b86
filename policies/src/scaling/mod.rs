//! Scaling: how many children to start or retire, decided over a snapshot of the pool.
//!
//! This file: the snapshot, the decision, the trait and the pacing helper
//! ([`RampState`]); the built-in policies have a file each (`elastic.rs`,
//! `apache_like.rs`, `fixed.rs`).

mod apache_like;
mod elastic;
mod fixed;

pub use apache_like::{ApacheLike, ApacheLikeConfig};
pub use elastic::{Elastic, ElasticConfig};
pub use fixed::Fixed;

use crate::Time;
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
pub(super) fn nudge(value: usize, delta: i32, lo: usize, hi: usize) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjust_moves_targets_within_bounds() {
        // TTOU never takes a pool below one child: a fully busy pool with no spare
        // minimum would never grow, an empty Fixed pool never serve.
        let mut f = Fixed(1);
        f.adjust(-5);
        assert_eq!(f.0, 1);
        f.adjust(2);
        assert_eq!(f.0, 3, "no TTOU banked below the floor");
        let mut e = Elastic::from_seed(3, 4).unwrap();
        e.adjust(10);
        assert_eq!(e.settings().prefork, 4);
        let mut a = ApacheLike::default();
        a.adjust(-10);
        assert_eq!(a.settings().min_spare_servers, 1);
        assert!(a.settings().max_spare_servers > a.settings().min_spare_servers);
    }
}
