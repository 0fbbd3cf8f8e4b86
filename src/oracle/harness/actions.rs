//! The machine's actions, carried out on the model and checked one by one.

use super::Harness;
use crate::oracle::Violation;
use crate::{Action, ChildSignal, Hook, Pid, SignalReason, State};
use std::collections::BTreeSet;

impl Harness {
    /// Takes every action out of the machine, checking each.
    pub(super) fn drain(&mut self, before: State) -> Result<(), Violation> {
        let after = self.machine.state();
        let max = self.machine.options().max_children;
        // One event starts at most one reload; this is its minimum even if the
        // reload also finished within the event.
        if let Some(m) = self.machine.min_serving() {
            self.last_min_serving = m;
        }
        let reloading = before == State::Reloading || after == State::Reloading;
        let stopping = matches!(after, State::ShuttingDown | State::Stopped);
        while let Some(action) = self.machine.poll_action() {
            if self.exited {
                return self.fail(format!("action after Exit: {action:?}"));
            }
            match &action {
                Action::Spawn {
                    slot, generation, ..
                } => {
                    if stopping {
                        return self.fail(format!("spawn while {}: {action:?}", after.name()));
                    }
                    if *slot >= max {
                        return self.fail(format!("spawn into slot {slot} of {max}"));
                    }
                    let taken = self.pending.iter().any(|(s, ..)| s == slot)
                        || self.live.values().any(|c| c.slot == *slot);
                    if taken {
                        return self.fail(format!("spawn into occupied slot {slot}"));
                    }
                    self.pending.push_back((*slot, *generation, self.now));
                    if self.pending.len() + self.live.len() > max {
                        return self.fail(format!(
                            "{} live children and forks exceed max_children {max}",
                            self.pending.len() + self.live.len()
                        ));
                    }
                }
                Action::Signal {
                    pid,
                    signal,
                    reason,
                } => {
                    let serving = self.live.values().filter(|c| c.serving()).count();
                    let Some(c) = self.live.get_mut(pid) else {
                        return self.fail(format!("{signal:?} to {pid:?}, not a live child"));
                    };
                    match signal {
                        ChildSignal::Term => {
                            if c.termed || c.killed {
                                return self.fail(format!(
                                    "second TERM/after KILL to {pid:?} ({reason:?})"
                                ));
                            }
                            let counted = c.serving();
                            c.termed = true;
                            if reloading
                                && counted
                                && matches!(reason, SignalReason::Reload | SignalReason::ScaleDown)
                                && serving <= self.last_min_serving
                            {
                                return self.fail(format!(
                                    "reload retirement of {pid:?} leaves {} serving, below {}",
                                    serving - 1,
                                    self.last_min_serving
                                ));
                            }
                        }
                        ChildSignal::Kill => {
                            if c.killed {
                                return self.fail(format!("second KILL to {pid:?}"));
                            }
                            c.killed = true;
                        }
                        ChildSignal::Usr1 => {}
                    }
                }
                Action::RunHook(Hook::AfterInit) if !self.trace.is_empty() => {
                    return self.fail("after_init run twice or late".into());
                }
                Action::Exit { .. } => {
                    if after != State::Stopped {
                        return self.fail(format!("Exit while {}", after.name()));
                    }
                    self.exited = true;
                }
                _ => {}
            }
            self.trace.push(action);
        }
        if after == State::Stopped && !self.exited {
            return self.fail("Stopped without an Exit action".into());
        }
        let counts = self.machine.counts();
        if counts.alive() > max {
            return self.fail(format!(
                "machine counts {counts:?} exceed max_children {max}"
            ));
        }
        if after != State::Stopped {
            let ours: BTreeSet<Pid> = self.live.keys().copied().collect();
            let theirs: BTreeSet<Pid> = self.machine.pids().collect();
            if ours != theirs {
                return self.fail(format!(
                    "machine tracks pids {theirs:?}, live children are {ours:?}"
                ));
            }
        }
        if reloading && after == State::Serving {
            let generation = self.machine.generation();
            if let Some((pid, _)) = self.live.iter().find(|(_, c)| {
                c.generation < generation && !(c.termed || c.killed || c.self_retiring)
            }) {
                return self.fail(format!(
                    "reload finished but old-generation child {pid:?} was never retired"
                ));
            }
        }
        Ok(())
    }
}
