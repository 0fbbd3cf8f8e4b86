//! Crashes and health: what counts as a crash, the crash-loop backoff, and its log.

use super::phase::Phase;
use super::pool::Child;
use super::timer_table::Timer;
use super::Machine;
use crate::policy::Time;
use crate::supervisor::action::{Level, SignalReason};
use crate::supervisor::event::ExitStatus;
use std::time::Duration;

/// The bookkeeping of a crash streak, so the log says why once per streak.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Streak {
    /// When its first crash happened: children forked since then prove a fix.
    pub(super) since: Time,
    /// When it was last reported.
    reported_at: Time,
    /// Crashes since that report.
    unreported: u32,
}

/// How often a crash loop's later crashes are summarised in the log (the first one
/// is logged with its reason; the end of the streak is logged too).
pub const CRASH_REPORT_EVERY: Duration = Duration::from_secs(60);

impl Machine {
    /// Whether `c` proved the code works: ready, and it served a request or lived
    /// `min_healthy_uptime`. Its death is no crash.
    pub(super) fn is_healthy(&self, c: &Child) -> bool {
        c.is_ready() && (c.requests > 0 || self.now >= c.spawned_at + self.opts.min_healthy_uptime)
    }

    /// When `c` proves new code works, for a rollout or an upgrade's way back:
    /// once it served a request, or `min_healthy_uptime` *after its READY* (a
    /// child slower to boot than that is not proved by its boot); `None` while
    /// not ready.
    pub(super) fn proved_at(&self, c: &Child) -> Option<Time> {
        let ready = c.ready_at?;
        Some(if c.requests > 0 {
            ready
        } else {
            ready + self.opts.min_healthy_uptime
        })
    }

    /// Whether `c` proved new code works now (see [`Machine::proved_at`]).
    pub(super) fn is_proved(&self, c: &Child) -> bool {
        self.proved_at(c).is_some_and(|t| self.now >= t)
    }

    /// Children leaving by themselves (their slot says retiring) before they proved
    /// healthy: crashes whose exits are not reaped yet. Until then they hold their
    /// place in the pool: replaced before the exit is counted, a main_loop that
    /// fails at once would be forked again as fast as it fails, past the backoff.
    pub(super) fn failing_unreaped(&self) -> usize {
        self.pool
            .children()
            .filter(|c| {
                c.retire
                    .is_some_and(|r| r.reason == SignalReason::MaxRequests)
                    && !self.is_healthy(c)
            })
            .count()
    }

    /// Whether the crash-loop backoff holds spawns back now.
    pub(super) fn backing_off(&self) -> bool {
        self.timers
            .get(Timer::BackoffEnd)
            .is_some_and(|end| self.now < end)
    }

    /// Counts a crash (`what` says which and why) and holds spawns back for the
    /// backoff: `backoff_initial` doubling per crash in a row, up to `backoff_max`.
    /// While healthy children serve, the schedule starts one step later (the first
    /// crash is replaced at once), so a stray early death, a kill spree hitting a
    /// starting child, never leaves the pool short; a real crash loop still backs
    /// off from its second crash. The first crash is logged with its reason; later
    /// ones are counted and summarised every [`CRASH_REPORT_EVERY`].
    pub(super) fn count_crash(&mut self, what: String) {
        let healthy_siblings = self
            .pool
            .children()
            .any(|c| c.serving() && self.is_healthy(c));
        self.crash_streak = self.crash_streak.saturating_add(1);
        let steps = self.crash_streak - 1;
        let delay = if healthy_siblings && steps == 0 {
            Duration::ZERO
        } else {
            let exp = steps.saturating_sub(u32::from(healthy_siblings)).min(20);
            self.opts
                .backoff_initial
                .saturating_mul(1u32 << exp)
                .min(self.opts.backoff_max)
        };
        self.timers.set(Timer::BackoffEnd, Some(self.now + delay));
        if self.crash_streak == 1 {
            // Said while the new generation has proved nothing: its crash is
            // then what holds the rollout.
            let what = match self.phase {
                Phase::Reloading {
                    generation, base, ..
                } if !self
                    .pool
                    .children()
                    .any(|c| c.generation == generation && self.is_proved(c)) =>
                {
                    let old = self
                        .pool
                        .children()
                        .filter(|c| c.serving() && c.generation <= base)
                        .count();
                    format!(
                        "{what}; the reload waits: {old} children of generation {base} and older serve on until one of generation {generation} proves healthy"
                    )
                }
                _ => what,
            };
            self.streak = Streak {
                since: self.now,
                reported_at: self.now,
                unreported: 0,
            };
            self.log(
                Level::Error,
                format!(
                    "{what}; next start in {delay:?} (further crashes in a row are summarised)"
                ),
            );
        } else if self.now >= self.streak.reported_at + CRASH_REPORT_EVERY {
            let n = self.streak.unreported + 1;
            self.log(
                Level::Error,
                format!(
                    "crash loop: {} crashes in a row over {:?} ({n} since the last report), latest: {what}; next start in {delay:?}",
                    self.crash_streak,
                    self.now - self.streak.since
                ),
            );
            self.streak.reported_at = self.now;
            self.streak.unreported = 0;
        } else {
            self.streak.unreported += 1;
        }
    }

    /// Ends a crash streak: the backoff resets and spawns may resume at once.
    pub(super) fn end_streak(&mut self, why: &str) {
        if self.crash_streak > 1 {
            self.log(
                Level::Info,
                format!(
                    "crash loop over after {} crashes in a row over {:?}: {why}",
                    self.crash_streak,
                    self.now - self.streak.since
                ),
            );
        }
        self.crash_streak = 0;
        self.timers.stop(Timer::BackoffEnd);
    }
}

/// A clean exit, or a death by a signal someone sends to stop a process (KILL,
/// TERM, INT, HUP): not a failure of the child's own.
pub(super) fn ended_from_outside(status: ExitStatus) -> bool {
    matches!(
        status,
        ExitStatus::Exited(0) | ExitStatus::Signaled(1 | 2 | 9 | 15)
    )
}
