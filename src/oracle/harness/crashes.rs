//! Reaping in the harness, and its own count of crashes in a row (forgiving,
//! never stricter than the machine's rule).

use super::super::Violation;
use super::{ChildModel, Harness};
use crate::{Action, Event, ExitStatus, Pid, State};

impl Harness {
    pub(super) fn reap(&mut self, pid: Pid, status: ExitStatus) -> Result<(), Violation> {
        let gone = self.live.remove(&pid);
        self.disconnected.remove(&pid);
        self.last_exited = Some(pid);
        // (A served child that failed by itself soon may count as a crash: only a
        // death from outside or a clean exit keeps the credit of having served.)
        let from_outside = matches!(
            status,
            ExitStatus::Exited(0) | ExitStatus::Signaled(1 | 2 | 9 | 15)
        );
        let served = gone.as_ref().is_some_and(|c| {
            c.ready && c.requests > 0 && !(c.termed || c.killed || c.self_retiring) && from_outside
        });
        let before = self.machine.state();
        self.forgive_streak();
        let crash = gone.as_ref().is_some_and(|c| {
            let young = self.now < c.spawned_at + self.machine.options().min_healthy_uptime;
            let ours = c.termed || c.killed || c.self_retiring;
            let counted = matches!(before, State::Spawning | State::Serving | State::Reloading);
            counted && !ours && (!c.ready || (young && (c.requests == 0 || !from_outside)))
        });
        // A child forked since the streak began that died healthy ends it.
        let healthy = gone.as_ref().is_some_and(|c| {
            let ours = c.termed || c.killed || c.self_retiring;
            let old = self.now >= c.spawned_at + self.machine.options().min_healthy_uptime;
            !crash && !ours && c.ready && (c.requests > 0 || old) && self.forked_in_streak(c)
        });
        if healthy {
            self.end_streak();
        }
        // A child that left by itself may be a crash to the machine (one that
        // quit before it was healthy): its streak may begin here.
        let maybe = gone
            .as_ref()
            .is_some_and(|c| c.self_retiring && !c.termed && !c.killed);
        self.count_crash(crash, maybe);
        let seen = self.trace.len();
        self.feed(Event::ChildExited { pid, status })?;
        let spawned = self.trace[seen..]
            .iter()
            .any(|a| matches!(a, Action::Spawn { .. }));
        let after = self.machine.state();
        let serving = |s: State| matches!(s, State::Spawning | State::Serving | State::Reloading);
        if served && serving(before) && serving(after) && !spawned {
            let max = self.machine.options().max_children;
            let min = (*self.machine.scaling_policy().quiet_range().start()).min(max);
            let total = self.live.len() + self.pending.len();
            if total < min {
                return self.fail(format!(
                    "{pid:?} had served, yet its death left {total} children, below the policy's {min}, unreplaced"
                ));
            }
        }
        self.check_crash_bounded(crash, seen)
    }

    /// Ends the harness's crash streak if a child forked since it began is ready
    /// and `min_healthy_uptime` old (the machine may notice later, never sooner).
    pub(super) fn forgive_streak(&mut self) {
        let healthy_after = self.machine.options().min_healthy_uptime;
        let proven = self.live.values().any(|c| {
            // (Ready is enough here, retiring or not: it may have been retired in
            // the very step the machine saw it healthy.)
            c.ready && self.forked_in_streak(c) && self.now >= c.spawned_at + healthy_after
        });
        if proven {
            self.end_streak();
        }
    }

    /// Whether `c` was forked since the streak began (the earliest it may have).
    pub(super) fn forked_in_streak(&self, c: &ChildModel) -> bool {
        let since = match (self.streak_since, self.machine_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        since.map_or(true, |t| c.spawned_at >= t)
    }

    pub(super) fn end_streak(&mut self) {
        self.crashes = 0;
        self.streak_since = None;
    }

    /// Counts one more crash in a row if `crash`; `maybe`: a death the machine
    /// may count (the streak may begin there, but it is not counted).
    pub(super) fn count_crash(&mut self, crash: bool, maybe: bool) {
        if crash || maybe {
            self.streak_since.get_or_insert(self.now);
        }
        if crash {
            self.crashes += 1;
        }
    }

    /// The machine counted every crash of the streak, and from the second crash in
    /// a row the crash is not replaced in the same step.
    pub(super) fn check_crash_bounded(&self, crashed: bool, seen: usize) -> Result<(), Violation> {
        let streak = self.crashes;
        let counted = self.machine.crash_streak();
        if counted < streak {
            return self.fail(format!(
                "{streak} crashes in a row, but the machine counts {counted}: its backoff cannot hold"
            ));
        }
        let spawned = self.trace[seen..]
            .iter()
            .any(|a| matches!(a, Action::Spawn { .. }));
        if streak >= 2 && crashed && spawned {
            return self.fail(format!(
                "crash {streak} in a row was replaced at once: the crash loop is unbounded"
            ));
        }
        Ok(())
    }
}
