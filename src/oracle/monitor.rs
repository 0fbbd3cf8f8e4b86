//! The per-step invariants, checked from events and actions alone.

use super::Violation;
use crate::ChildSignal;
use crate::{Action, Event, Hook, Machine, Pid, SignalReason, SlotState, State, Time};
use std::collections::{BTreeMap, BTreeSet};

/// What the [`Monitor`] knows of one child, from the events and actions it saw.
#[derive(Debug, Clone)]
struct Watched {
    slot: usize,
    generation: u64,
    /// When it was first seen ready (the monitor's clock).
    ready_at: Option<Time>,
    ready: bool,
    /// A reading showed it had served a request.
    served: bool,
    self_retiring: bool,
    termed: bool,
    killed: bool,
}

impl Watched {
    fn serving(&self) -> bool {
        self.ready && !self.self_retiring && !self.termed && !self.killed
    }

    /// Whether it proved its code healthy: ready, and it served or stayed up
    /// `uptime` since.
    fn proven(&self, now: Time, uptime: std::time::Duration) -> bool {
        self.ready_at
            .is_some_and(|at| self.served || now >= at + uptime)
    }
}

/// The invariants of every step, checked for any driver of a [`Machine`]: feed
/// each event through [`handle`](Monitor::handle) instead of
/// [`Machine::handle`], carry out the actions it returns, and it checks, from
/// the events and actions alone:
///
/// - live children and forks never exceed `max_children`, and a spawn takes a
///   free slot;
/// - every signal targets a live child; no child is TERMed twice or after a KILL,
///   nor KILLed twice; children get only TERM, KILL and USR1;
/// - no spawn once shutdown has begun; `after_init` comes first, once; `Exit`
///   comes last, once, in `Stopped`;
/// - the machine's live pids are exactly the children spawned and not yet
///   reaped, and its counts stay within `max_children`;
/// - during a reload, no retirement of a child that can be relied on takes the
///   number of those below the minimum; relied on are the children of the
///   generation that served when the reload (or a chain of them) began, and
///   those proved healthy (they served, or stayed up `min_healthy_uptime` after
///   their READY); no child is retired for scale-down; when the reload completes
///   every old-generation child has been retired.
///
/// The [`Harness`](super::Harness) checks these through a monitor, and adds what needs its model
/// of the world (crash loops, kill sprees, convergence, shutdown); the simulator
/// checks them with [`SimConfig::check_invariants`](crate::sim::SimConfig::check_invariants).
///
/// ```
/// use preforkd::oracle::Monitor;
/// use preforkd::{Action, Event, HookKind, Machine, Options, Pid, Time};
/// let mut m = Machine::new(Options { prefork: 2, ..Options::default() })?;
/// let mut monitor = Monitor::new(&m);
/// assert_eq!(monitor.drain(&mut m).unwrap().len(), 1); // after_init
/// let ok = Event::HookFinished { hook: HookKind::AfterInit, ok: true };
/// for action in monitor.handle(&mut m, Time::ZERO, ok).unwrap() {
///     if let Action::Spawn { slot, .. } = action {
///         let pid = Pid(100 + slot as i32);
///         monitor.handle(&mut m, Time::ZERO, Event::ChildSpawned { slot, pid }).unwrap();
///     }
/// }
/// // An exit the monitor did not see: the machine's pids and its own disagree.
/// m.handle(Time::ZERO, Event::ChildExited { pid: Pid(100), status: preforkd::ExitStatus::Exited(0) });
/// assert!(monitor.handle(&mut m, Time::ZERO, Event::Timer).is_err());
/// # Ok::<(), preforkd::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Monitor {
    max: usize,
    /// Forks asked for and not yet reported: slot, generation.
    pending: BTreeMap<usize, u64>,
    /// The generation that served when the reload under way (or its chain)
    /// began: its children are relied on.
    base: u64,
    /// The latest time an event was fed at (the machine's clock never goes back).
    now: Time,
    live: BTreeMap<Pid, Watched>,
    events: usize,
    actions: usize,
    exited: bool,
    last_min_serving: usize,
}

impl Monitor {
    /// A monitor for `machine`, fresh from its builder (in `Init`).
    pub fn new(machine: &Machine) -> Monitor {
        Monitor {
            max: machine.options().max_children,
            pending: BTreeMap::new(),
            base: 0,
            now: Time::ZERO,
            live: BTreeMap::new(),
            events: 0,
            actions: 0,
            exited: false,
            last_min_serving: 0,
        }
    }

    /// Feeds `event` to `machine` at `now`, takes every action out of it and checks
    /// them and the machine; returns the actions, in order, to carry out.
    /// [`Violation::step`] counts the events handled.
    pub fn handle(
        &mut self,
        machine: &mut Machine,
        now: Time,
        event: Event<'_>,
    ) -> Result<Vec<Action>, Violation> {
        self.events += 1;
        if self.exited {
            // A stopped machine must stay silent whatever it is told.
            machine.handle(now, event);
            return match machine.poll_action() {
                Some(a) => self.fail(format!("action after Exit: {a:?}")),
                None => Ok(Vec::new()),
            };
        }
        self.now = self.now.max(now);
        self.observe(&event);
        let before = machine.state();
        machine.handle(now, event);
        self.check_actions(machine, before)
    }

    /// Takes out and checks the actions already queued (a fresh machine's
    /// `after_init`) without an event.
    pub fn drain(&mut self, machine: &mut Machine) -> Result<Vec<Action>, Violation> {
        let before = machine.state();
        self.check_actions(machine, before)
    }

    fn fail<T>(&self, message: String) -> Result<T, Violation> {
        Err(Violation {
            step: self.events,
            message,
        })
    }

    /// What the event says of the children, before the machine hears it.
    fn observe(&mut self, event: &Event<'_>) {
        match *event {
            // A report for a pending fork, of a pid not in use: the machine takes it.
            Event::ChildSpawned { slot, pid } if !self.live.contains_key(&pid) => {
                if let Some(generation) = self.pending.remove(&slot) {
                    let w = Watched {
                        slot,
                        generation,
                        ready_at: None,
                        ready: false,
                        served: false,
                        self_retiring: false,
                        termed: false,
                        killed: false,
                    };
                    self.live.insert(pid, w);
                }
            }
            Event::SpawnFailed { slot } => {
                self.pending.remove(&slot);
            }
            Event::ChildReady { pid } => {
                if let Some(w) = self.live.get_mut(&pid) {
                    w.ready = true;
                    w.ready_at.get_or_insert(self.now);
                }
            }
            Event::ChildExited { pid, .. } => {
                self.live.remove(&pid);
            }
            Event::Scoreboard(sb) => {
                for (pid, w) in self.live.iter_mut() {
                    let Some(reading) = sb.slots.get(w.slot) else {
                        continue;
                    };
                    if reading.pid != *pid {
                        continue; // stale: the slot's previous owner
                    }
                    w.served |= reading.requests > 0;
                    match reading.state {
                        SlotState::Idle | SlotState::Busy => {
                            w.ready = true;
                            w.ready_at.get_or_insert(self.now);
                        }
                        SlotState::Retiring => w.self_retiring = true,
                        SlotState::Starting | SlotState::Empty => {}
                    }
                }
            }
            _ => {}
        }
    }

    fn check_actions(
        &mut self,
        machine: &mut Machine,
        before: State,
    ) -> Result<Vec<Action>, Violation> {
        let after = machine.state();
        let max = self.max;
        // One event starts at most one reload; this is its minimum even if the
        // reload also finished within the event.
        if let Some(m) = machine.min_serving() {
            self.last_min_serving = m;
        }
        let reloading = before == State::Reloading || after == State::Reloading;
        if before != State::Reloading && after == State::Reloading {
            self.base = machine.generation().saturating_sub(1);
        }
        let stopping = matches!(after, State::ShuttingDown | State::Stopped);
        let mut out = Vec::new();
        while let Some(action) = machine.poll_action() {
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
                    let taken = self.pending.contains_key(slot)
                        || self.live.values().any(|c| c.slot == *slot);
                    if taken {
                        return self.fail(format!("spawn into occupied slot {slot}"));
                    }
                    self.pending.insert(*slot, *generation);
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
                    let (now, uptime) = (self.now, machine.options().min_healthy_uptime);
                    let base = self.base;
                    let relied = |c: &Watched| {
                        c.serving() && (c.generation <= base || c.proven(now, uptime))
                    };
                    let relied_on = self.live.values().filter(|c| relied(c)).count();
                    let last_min_serving = self.last_min_serving;
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
                            let counted = relied(c);
                            c.termed = true;
                            if reloading && *reason == SignalReason::ScaleDown {
                                return self.fail(format!(
                                    "scale-down retirement of {pid:?} during a reload"
                                ));
                            }
                            if reloading
                                && counted
                                && *reason == SignalReason::Reload
                                && relied_on <= last_min_serving
                            {
                                return self.fail(format!(
                                    "reload retirement of {pid:?} leaves {} relied-on children serving (of the generation known to work, or proved healthy), below {last_min_serving}",
                                    relied_on.saturating_sub(1),
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
                Action::RunHook(Hook::AfterInit) if self.actions > 0 => {
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
            self.actions += 1;
            out.push(action);
        }
        if after == State::Stopped && !self.exited {
            return self.fail("Stopped without an Exit action".into());
        }
        let counts = machine.counts();
        if counts.alive() > max {
            return self.fail(format!(
                "machine counts {counts:?} exceed max_children {max}"
            ));
        }
        if after != State::Stopped {
            let ours: BTreeSet<Pid> = self.live.keys().copied().collect();
            let theirs: BTreeSet<Pid> = machine.pids().collect();
            if ours != theirs {
                return self.fail(format!(
                    "machine tracks pids {theirs:?}, live children are {ours:?}"
                ));
            }
        }
        if reloading && after == State::Serving {
            let generation = machine.generation();
            if let Some((pid, _)) = self.live.iter().find(|(_, c)| {
                c.generation < generation && !(c.termed || c.killed || c.self_retiring)
            }) {
                return self.fail(format!(
                    "reload finished but old-generation child {pid:?} was never retired"
                ));
            }
        }
        Ok(out)
    }
}
