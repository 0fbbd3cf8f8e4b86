//! The per-child pass, run at every step of the serving phases: KILL after a TERM
//! that was not obeyed in time, the memory limit, the start and busy timeouts, the
//! request limit, and a child's health ending a crash streak. What comes due later
//! sets the machine's [`Timer::Children`].

use super::phase::Phase;
use super::pool::Retire;
use super::timer_table::Timer;
use super::Machine;
use crate::policy::{Pid, Time};
use crate::supervisor::action::{Level, SignalReason};

/// The earlier of two optional times.
fn earliest(a: Option<Time>, b: Option<Time>) -> Option<Time> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl Machine {
    /// Runs every child's checks; sets [`Timer::Children`] to the earliest time one
    /// of them comes due.
    pub(super) fn run_child_timers(&mut self) {
        let mut next = None;
        let mut fresh_too_big = None;
        for slot in 0..self.pool.slot_count() {
            next = earliest(next, self.child_checks(slot, &mut fresh_too_big));
        }
        self.timers.set(Timer::Children, next);
        if let (Some((pid, rss, limit)), false) = (fresh_too_big, self.memory_warned) {
            // A replacement would be as big (the parent's shared pages count in a
            // child's RSS): retiring it would only fork in a loop. Said once.
            self.memory_warned = true;
            self.log(
                Level::Warning,
                format!(
                    "child {pid} uses {rss} bytes of memory (RSS) before serving, above \
                     max_child_memory {limit}: the limit is below a fresh child's size; \
                     children are retired for memory only once they have served"
                ),
            );
        }
    }

    /// The checks of the child in `slot`; returns when it next needs a look. A
    /// fresh child already above the memory limit goes into `fresh_too_big`.
    fn child_checks(
        &mut self,
        slot: usize,
        fresh_too_big: &mut Option<(Pid, u64, u64)>,
    ) -> Option<Time> {
        let c = self.pool.get(slot)?;
        let pid = c.pid?;
        if c.killed {
            return None;
        }
        if let Some(r) = c.retire {
            return self.kill_if_lingering(slot, r);
        }
        if let (Some(limit), Some(rss), true) = (self.opts.max_child_memory, c.memory, c.is_ready())
        {
            if rss > limit && c.requests == 0 && c.busy_since.is_none() {
                // Too big before serving anything (the parent's shared pages count
                // in a child's RSS): a replacement would be as big, so retiring it
                // would only fork in a loop. Said once.
                fresh_too_big.get_or_insert((pid, rss, limit));
            } else if rss > limit {
                self.log(
                    Level::Warning,
                    format!(
                        "child {pid} uses {rss} bytes of memory (RSS), above max_child_memory {limit}: retiring it"
                    ),
                );
                self.retire(slot, SignalReason::MemoryLimit);
                return None;
            }
        }
        let next = self.start_busy_and_request_limits(slot, pid);
        let next = earliest(next, self.health_check(slot));
        earliest(next, self.proof_check(slot))
    }

    /// During a reload, a new child ready but not proved healthy yet proves it by
    /// staying up `min_healthy_uptime`: the rollout needs a look then (it retires
    /// an old child only for a proved new one).
    fn proof_check(&self, slot: usize) -> Option<Time> {
        let Phase::Reloading { .. } = self.phase else {
            return None;
        };
        let c = self.pool.get(slot)?;
        if !c.serving() || self.is_proved(c) {
            return None;
        }
        self.proved_at(c)
    }

    /// A TERMed child is KILLed once its grace is over: `kill_grace` after a
    /// timeout or a disconnect, `graceful_timeout` otherwise.
    pub(super) fn grace(&self, reason: SignalReason) -> std::time::Duration {
        match reason {
            SignalReason::BusyTimeout | SignalReason::Disconnect | SignalReason::StartTimeout => {
                self.opts.kill_grace
            }
            _ => self.opts.graceful_timeout,
        }
    }

    fn kill_if_lingering(&mut self, slot: usize, r: Retire) -> Option<Time> {
        let grace = self.grace(r.reason);
        let kill_at = r.at + grace;
        if self.now >= kill_at {
            self.escalate(slot);
            None
        } else {
            Some(kill_at)
        }
    }

    /// The start timeout of a child not ready yet, the busy timeout of a busy one,
    /// the request limit of an idle one.
    fn start_busy_and_request_limits(&mut self, slot: usize, pid: Pid) -> Option<Time> {
        let now = self.now;
        let c = self.pool.get(slot)?;
        match (c.ready_at, c.busy_since) {
            (None, _) => {
                let timeout_at = c.spawned_at + self.opts.start_timeout;
                if now < timeout_at {
                    return Some(timeout_at);
                }
                self.log(
                    Level::Warning,
                    format!("child {pid} not ready after {:?}", self.opts.start_timeout),
                );
                self.retire(slot, SignalReason::StartTimeout);
            }
            (Some(_), Some(since)) => {
                let limit = self.opts.busy_timeout?;
                let timeout_at = since + limit;
                if now < timeout_at {
                    return Some(timeout_at);
                }
                self.log(
                    Level::Warning,
                    format!(
                        "child {pid} busy for {:?}, past the busy timeout",
                        now - since
                    ),
                );
                self.retire(slot, SignalReason::BusyTimeout);
            }
            (Some(_), None) => {
                if c.max_requests.is_some_and(|m| c.requests >= m) {
                    self.retire(slot, SignalReason::MaxRequests);
                }
            }
        }
        None
    }

    /// A child forked since the crash streak began that stays up for
    /// `min_healthy_uptime` ends it: the cause is gone. (Serving a request is not
    /// enough: a child may die right after each one.) Older children prove nothing
    /// about new ones.
    fn health_check(&mut self, slot: usize) -> Option<Time> {
        if self.crash_streak == 0 {
            return None;
        }
        let c = self.pool.get(slot)?;
        if !(c.serving() && c.spawned_at >= self.streak.since) {
            return None;
        }
        let healthy_at = c.spawned_at + self.opts.min_healthy_uptime;
        if self.now < healthy_at {
            return Some(healthy_at);
        }
        let who = format!("child {} is healthy", c.pid.unwrap_or(Pid(0)));
        self.end_streak(&who);
        None
    }
}
