//! Shutdown: TERM (or KILL) every child, KILL the stragglers when
//! `graceful_timeout` runs out, exit once all are reaped or after `kill_wait`.

use super::phase::Phase;
use super::pool::Retire;
use super::timer_table::Timer;
use super::Machine;
use crate::supervisor::action::{Action, ChildSignal, Hook, Level, Notify, SignalReason};
use crate::supervisor::event::Signal;
use crate::supervisor::transitions::cause;

impl Machine {
    pub(super) fn begin_shutdown(&mut self, immediate: bool, sig: Signal) {
        let now = self.now;
        match self.phase {
            Phase::ShuttingDown {
                immediate: true, ..
            } => {
                self.log(
                    Level::Info,
                    format!("{} during immediate shutdown: already stopping", sig.name()),
                );
                return;
            }
            Phase::ShuttingDown { .. } => {
                self.log(
                    Level::Warning,
                    format!("{} during graceful shutdown: stopping now", sig.name()),
                );
                self.transition(
                    Phase::ShuttingDown {
                        immediate: true,
                        killed: true,
                    },
                    cause::STOP_AGAIN,
                );
                self.timers.stop(Timer::ShutdownKill);
                self.timers
                    .set(Timer::ShutdownGiveUp, Some(now + self.opts.kill_wait));
                self.stop_all(true);
                return;
            }
            _ => {}
        }
        let kind = if immediate { "immediate" } else { "graceful" };
        self.log(Level::Info, format!("{}: {kind} shutdown", sig.name()));
        self.push(Action::Notify(Notify::Stopping));
        self.push(Action::RunHook(Hook::BeforeShutdown));
        if immediate {
            self.timers
                .set(Timer::ShutdownGiveUp, Some(now + self.opts.kill_wait));
        } else {
            self.timers
                .set(Timer::ShutdownKill, Some(now + self.opts.graceful_timeout));
        }
        self.transition(
            Phase::ShuttingDown {
                immediate,
                killed: immediate,
            },
            cause::STOP,
        );
        self.stop_all(immediate);
    }

    /// TERMs (or KILLs) every child not already told.
    fn stop_all(&mut self, kill: bool) {
        for slot in 0..self.pool.slot_count() {
            self.stop_child(slot, kill);
        }
    }

    pub(super) fn stop_child(&mut self, slot: usize, kill: bool) {
        let Some(c) = self.pool.get(slot) else {
            return;
        };
        let Some(pid) = c.pid else { return };
        if c.killed {
            return;
        }
        let leave = Retire {
            at: self.now,
            reason: SignalReason::Shutdown,
        };
        let signal = if kill {
            self.pool.mark_killed(slot, leave);
            ChildSignal::Kill
        } else if c.retire.is_none() {
            self.pool.retire(slot, leave);
            ChildSignal::Term
        } else {
            return; // already TERMed; it is KILLed at the graceful timeout if it lingers
        };
        self.push(Action::Signal {
            pid,
            signal,
            reason: SignalReason::Shutdown,
        });
    }

    /// Ends the machine: `Exit { code }` is the last action.
    pub(super) fn stop(&mut self, code: i32, why: &'static str) {
        self.transition(Phase::Stopped { code }, why);
        self.timers.stop_all();
        self.push(Action::Exit { code });
    }

    /// The step while ShuttingDown: exit once every child is reaped; KILL the
    /// stragglers when `graceful_timeout` runs out; give up after `kill_wait`.
    pub(super) fn step_shutdown(&mut self) {
        let Phase::ShuttingDown { immediate, killed } = self.phase else {
            return;
        };
        // No spawning, scaling or STATUS any more (a crash counted now would set
        // the backoff's end).
        for t in Timer::SERVING {
            self.timers.stop(t);
        }
        let now = self.now;
        if self.pool.is_empty() {
            self.log(Level::Info, "all children reaped; exiting".into());
            self.stop(0, cause::ALL_REAPED);
            return;
        }
        if !killed && self.timers.is_expired(Timer::ShutdownKill, now) {
            self.log(
                Level::Warning,
                format!(
                    "graceful shutdown timed out; KILLing {} children",
                    self.pool.forked()
                ),
            );
            self.transition(
                Phase::ShuttingDown {
                    immediate,
                    killed: true,
                },
                cause::GRACEFUL_TIMEOUT,
            );
            self.timers.stop(Timer::ShutdownKill);
            self.timers
                .set(Timer::ShutdownGiveUp, Some(now + self.opts.kill_wait));
            for slot in 0..self.pool.slot_count() {
                self.escalate(slot);
            }
            return;
        }
        if self.timers.is_expired(Timer::ShutdownGiveUp, now) {
            self.log(
                Level::Error,
                format!(
                    "{} children not reaped after KILL; exiting anyway",
                    self.pool.len()
                ),
            );
            self.stop(1, cause::GIVE_UP);
        }
    }

    /// KILLs a child that did not leave in time after its TERM.
    pub(super) fn escalate(&mut self, slot: usize) {
        let Some(c) = self.pool.get(slot) else {
            return;
        };
        let Some(pid) = c.pid else { return };
        if c.killed {
            return;
        }
        self.pool.mark_killed(
            slot,
            Retire {
                at: self.now,
                reason: SignalReason::Shutdown,
            },
        );
        self.push(Action::Signal {
            pid,
            signal: ChildSignal::Kill,
            reason: SignalReason::Escalation,
        });
    }
}
