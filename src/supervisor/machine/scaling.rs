//! Growing and shrinking the pool: asking the scaling policy, spawning into free
//! slots (through the crash-loop backoff), retiring children.

use super::phase::Phase;
use super::pool::{Child, Retire};
use super::timer_table::Timer;
use super::totals::inc;
use super::Machine;
use crate::policy::{PoolSnapshot, Scale};
use crate::supervisor::action::{Action, ChildSignal, SignalReason};

impl Machine {
    /// What the scaling policy sees. A child failing by itself, its exit not yet
    /// reaped, shows as starting: the policy must not replace it before its exit
    /// is counted as a crash (see [`Machine::failing_unreaped`]).
    fn snapshot(&self) -> PoolSnapshot {
        let n = self.pool.counts();
        let failing = self.failing_unreaped();
        PoolSnapshot::new(n.starting + failing, n.idle, n.busy, self.opts.max_children)
            .with_retiring(n.retiring.saturating_sub(failing))
            .with_backlog(self.backlog)
    }

    /// Until the initial children serve, crashed ones are replaced (after the
    /// backoff) and the policy may add children but not retire any: the pool only
    /// grows toward its initial size. A TTOU may lower that size. Returns that
    /// size while Spawning.
    pub(super) fn fill_initial_pool(&mut self) -> Option<usize> {
        let goal = match self.phase {
            Phase::Spawning { target } => target.min(self.scaling.initial_children()),
            _ => return None,
        };
        let n = self.pool.counts();
        let failing = self.failing_unreaped();
        self.spawn(goal.saturating_sub(n.starting + n.serving() + failing));
        Some(goal)
    }

    /// Asks the scaling policy and does what it decides, within the phase's limits.
    pub(super) fn scale(&mut self) {
        let snapshot = self.snapshot();
        let decision = self.scaling.decide(&snapshot, self.now);
        let recheck = decision.recheck_at.filter(|&t| t > self.now);
        self.timers.set(Timer::PolicyRecheck, recheck);
        match decision.scale {
            Scale::Hold => {}
            Scale::Spawn(n) => {
                let done = self.spawn(n) as u64;
                if done > 0 {
                    inc(&mut self.totals.scale_ups, 1);
                    inc(&mut self.totals.scaled_up_children, done);
                }
            }
            // While Spawning the pool only grows toward its initial size; while
            // Reloading the rollout keeps its size until the new generation has
            // proved itself (its surplus of unproven children is what keeps the old
            // ones serving if the new code fails).
            Scale::Retire(_)
                if matches!(self.phase, Phase::Spawning { .. } | Phase::Reloading { .. }) => {}
            Scale::Retire(n) => {
                let mut done = 0;
                for _ in 0..n {
                    let Some(slot) = self.pool.pick_idle() else {
                        break;
                    };
                    self.retire(slot, SignalReason::ScaleDown);
                    done += 1;
                }
                if done > 0 {
                    inc(&mut self.totals.scale_downs, 1);
                    inc(&mut self.totals.scaled_down_children, done);
                }
            }
        }
    }

    /// Spawns up to `n` children into free slots; returns how many.
    pub(super) fn spawn(&mut self, n: usize) -> usize {
        // The crash-loop backoff delays spawns, except the replacements of healthy
        // children that died in this event.
        let gated = self.backing_off();
        let n = if gated { n.min(self.spawn_credit) } else { n };
        if n == 0 {
            return 0;
        }
        let mut done = 0;
        for slot in 0..self.pool.slot_count() {
            if done == n {
                break;
            }
            if !self.pool.is_free(slot) {
                continue;
            }
            let max_requests = self.opts.max_requests_per_child.map(|m| {
                m.saturating_add(
                    self.rng
                        .below(self.opts.max_requests_jitter.saturating_add(1)),
                )
            });
            self.pool
                .insert(slot, Child::new(self.generation, self.now, max_requests));
            self.push(Action::Spawn {
                slot,
                generation: self.generation,
                max_requests,
            });
            done += 1;
        }
        if gated {
            self.spawn_credit -= done;
        }
        done
    }

    /// Asks a child to leave: TERM, with a reason; KILL follows if it lingers.
    pub(super) fn retire(&mut self, slot: usize, reason: SignalReason) {
        let Some(c) = self.pool.get(slot) else {
            return;
        };
        let Some(pid) = c.pid else { return };
        if c.retire.is_some() || c.killed {
            return;
        }
        self.pool.retire(
            slot,
            Retire {
                at: self.now,
                reason,
            },
        );
        self.push(Action::Signal {
            pid,
            signal: ChildSignal::Term,
            reason,
        });
        // The per-child pass may have run already this step: the KILL's deadline
        // must be a wake-up.
        let kill_at = self.now + self.grace(reason);
        let next = match self.timers.get(Timer::Children) {
            Some(t) if t <= kill_at => t,
            _ => kill_at,
        };
        self.timers.set(Timer::Children, Some(next));
    }
}
