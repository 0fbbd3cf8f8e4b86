//! The simulated parent: single-threaded, it handles its inbox in order and
//! drives the machine through the runtime's own dispatch and ordering rules
//! ([`driver`]), with the simulated world as the [`Effects`] (forks take its time).

use super::children::Life;
use super::{Ev, LogRecord, PoolEvent, PoolEventKind, Sim};
use crate::oracle::Monitor;
use crate::supervisor::driver::{self, Changed, Drive, Effects, Spawn};
use crate::{
    Action, ChildSignal, Connection, Event, ExitStatus, Handoff, Hook, Image, Level, Machine,
    Notify, Pid, Scoreboard, Signal, SlotReading, SlotState, Time,
};
use std::collections::VecDeque;
use std::time::Duration;

/// What waits for the parent's attention, handled in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Inbox {
    /// Carry out the machine's first actions.
    Start,
    Ready(Pid),
    /// A child exited (reaped with the scoreboard read first, as the runtime does).
    Exited {
        pid: Pid,
        status: ExitStatus,
    },
    /// A standalone tick (deduplicated while queued).
    Tick,
    /// A tick that follows another item.
    FollowTick,
    /// The deadline passed; `read` once its tick was done.
    Timer {
        read: bool,
    },
    Signal(Signal),
}

/// The machine, fed through the oracle's monitor when checking invariants.
#[derive(Debug)]
pub(super) struct Checked {
    pub(super) machine: Machine,
    pub(super) monitor: Option<Monitor>,
    /// Actions the monitor has taken from the machine, not carried out yet.
    actions: VecDeque<Action>,
}

impl Checked {
    pub(super) fn new(machine: Machine, check: bool) -> Checked {
        Checked {
            monitor: check.then(|| Monitor::new(&machine)),
            machine,
            actions: VecDeque::new(),
        }
    }

    /// Takes the actions a fresh machine holds before any event (`after_init`).
    fn take_queued(&mut self, pc: Time) {
        if let Some(monitor) = self.monitor.as_mut() {
            match monitor.drain(&mut self.machine) {
                Ok(actions) => self.actions.extend(actions),
                Err(v) => panic!("invariant broken at {pc} (simulated time): {v}"),
            }
        }
    }
}

impl Drive for Checked {
    fn machine(&self) -> &Machine {
        &self.machine
    }

    fn handle(&mut self, now: Time, event: Event<'_>) {
        match self.monitor.as_mut() {
            Some(monitor) => match monitor.handle(&mut self.machine, now, event) {
                Ok(actions) => self.actions.extend(actions),
                Err(v) => panic!("invariant broken at {now} (simulated time): {v}"),
            },
            None => self.machine.handle(now, event),
        }
    }

    fn next_action(&mut self) -> Option<Action> {
        // Without a monitor the actions stay in the machine's own queue.
        self.actions
            .pop_front()
            .or_else(|| self.machine.poll_action())
    }
}

/// What the simulated parent drives: the machine, its last reading, and whether
/// the stop flag is set.
#[derive(Debug)]
pub(super) struct Core {
    pub(super) driven: Checked,
    pub(super) reading: Scoreboard,
    marked: bool,
}

impl Core {
    pub(super) fn new(driven: Checked, slots: usize) -> Core {
        Core {
            driven,
            reading: Scoreboard {
                slots: vec![SlotReading::default(); slots],
                backlog: None,
            },
            marked: false,
        }
    }
}

impl Sim {
    pub(super) fn push_inbox(&mut self, item: Inbox) {
        if self.stopped {
            return;
        }
        self.inbox.push_back(item);
        if !self.wake_scheduled {
            self.wake_scheduled = true;
            let at = self.now.max(self.parent_free_at);
            self.schedule(at, Ev::ParentWake);
        }
    }

    pub(super) fn request_tick(&mut self) {
        if !self.tick_queued {
            self.tick_queued = true;
            self.push_inbox(Inbox::Tick);
        }
    }

    /// Handles the inbox in order while the parent is free at the current time.
    pub(super) fn parent_run(&mut self) {
        if self.stopped || self.inbox.is_empty() {
            return;
        }
        if self.parent_free_at > self.now {
            self.wake_scheduled = true;
            self.schedule(self.parent_free_at, Ev::ParentWake);
            return;
        }
        self.rep().wakeups += 1;
        while let Some(item) = self.inbox.pop_front() {
            self.pc = self.now;
            self.parent_handle(item);
            self.parent_free_at = self.pc;
            if self.stopped {
                self.inbox.clear();
                break;
            }
            if self.pc > self.now {
                if !self.inbox.is_empty() {
                    self.wake_scheduled = true;
                    self.schedule(self.pc, Ev::ParentWake);
                }
                break;
            }
        }
        // About to sleep: a busy child the machine has not seen is read now (see
        // `driver::busy_unseen`), once.
        if !self.stopped && self.inbox.is_empty() && self.pc <= self.now {
            let unseen = self.with_core(|c, sim| driver::busy_unseen(c.driven.machine(), sim));
            if unseen {
                self.tick();
                self.parent_free_at = self.pc;
            }
        }
        self.update_timer();
    }

    /// Lends the machine to `f` beside the rest of the simulation, which is the
    /// driver's [`Effects`].
    fn with_core<R>(&mut self, f: impl FnOnce(&mut Core, &mut Sim) -> R) -> R {
        let mut core = self
            .core
            .take()
            .expect("the simulated parent is not re-entered");
        let r = f(&mut core, self);
        self.core = Some(core);
        r
    }

    /// Hands `event` to the machine and carries out what follows.
    fn feed(&mut self, event: Event<'_>) {
        self.with_core(|c, sim| {
            let pc = sim.pc;
            c.driven.handle(pc, event);
            sim.carry_out(c);
        });
    }

    /// Carries out the machine's actions, through the runtime's own dispatch.
    fn carry_out(&mut self, c: &mut Core) {
        if let Some(code) = driver::carry_out(&mut c.driven, self, &mut c.marked) {
            let pc = self.pc;
            self.rep().exit = Some((pc, code));
            self.stopped = true;
        }
    }

    fn parent_handle(&mut self, item: Inbox) {
        let ticks = self.config.ticks;
        match item {
            Inbox::Start => self.with_core(|c, sim| {
                c.driven.take_queued(sim.pc);
                sim.carry_out(c);
            }),
            Inbox::Ready(pid) => {
                self.feed(Event::ChildReady { pid });
                if ticks.on_ready {
                    self.inbox.push_front(Inbox::FollowTick);
                }
            }
            Inbox::Exited { pid, status } => {
                self.reaped.push_back((pid, status));
                self.with_core(|c, sim| {
                    driver::reap(&mut c.driven, sim, &mut c.reading);
                    sim.carry_out(c);
                });
            }
            Inbox::Tick | Inbox::FollowTick => self.tick(),
            Inbox::Timer { read } => {
                if ticks.on_timeout && !read {
                    self.tick();
                    self.inbox.push_front(Inbox::Timer { read: true });
                } else {
                    self.feed(Event::Timer);
                }
            }
            Inbox::Signal(signal) => self.feed(Event::Signal(signal)),
        }
    }

    /// Reads the scoreboard into the machine and carries out what follows.
    fn tick(&mut self) {
        self.with_core(|c, sim| {
            driver::tick(&mut c.driven, sim, &mut c.reading);
            sim.carry_out(c);
        });
    }

    /// Schedules the machine's deadline, if it moved.
    fn update_timer(&mut self) {
        let want = match (&self.core, self.stopped) {
            (Some(c), false) => c.driven.machine.poll_timeout(),
            _ => None,
        };
        if want == self.timer {
            return;
        }
        self.timer_token += 1;
        self.timer = want;
        if let Some(t) = want {
            // A deadline not after the machine's clock would spin: nudge it.
            let floor = self.parent_free_at.max(self.now);
            let at = if t <= floor {
                floor + Duration::from_micros(1)
            } else {
                t
            };
            self.schedule(at, Ev::TimerFire(self.timer_token));
        }
    }

    /// Records what the parent did to a child, at the parent's clock.
    fn event(&mut self, kind: PoolEventKind, pid: Pid) {
        let at = self.pc;
        self.rep().events.push(PoolEvent { at, kind, pid });
    }
}

/// The simulated world, as the driver sees it: time is the parent's clock, forks
/// cost it [`fork_cost`](super::SimConfig::fork_cost), signals reach the children
/// on the timeline, hooks succeed, files never change and no client hangs up.
impl Effects for Sim {
    // The machine's time is the parent's clock (behind by its forks), not the
    // world's `now`.
    #[allow(clippy::misnamed_getters)]
    fn now(&self) -> Time {
        self.pc
    }

    fn try_reap(&mut self) -> Option<(Pid, ExitStatus)> {
        self.reaped.pop_front()
    }

    /// Any standalone tick still queued is dropped: this reading is at least as
    /// fresh.
    fn read_scoreboard(&mut self, into: &mut Scoreboard) {
        if self.tick_queued {
            self.tick_queued = false;
            self.inbox.retain(|i| *i != Inbox::Tick);
        }
        for (reading, owner) in into.slots.iter_mut().zip(&self.slot_owner) {
            *reading = match owner.and_then(|pid| self.children.get(&pid).map(|c| (pid, c))) {
                None => SlotReading::default(),
                Some((pid, c)) => SlotReading {
                    pid,
                    state: match c.life {
                        Life::Starting => SlotState::Starting,
                        Life::Gone => SlotState::Retiring,
                        Life::Ready if c.leaving => SlotState::Retiring,
                        Life::Ready if c.current.is_some() => SlotState::Busy,
                        Life::Ready => SlotState::Idle,
                    },
                    requests: c.requests,
                    request_start: c.request_start,
                    heartbeat: c.heartbeat,
                    memory: None,
                },
            };
        }
        into.backlog = self.config.report_backlog.then_some(self.queue.len());
        self.rep().ticks += 1;
    }

    fn release(&mut self, pid: Pid) {
        self.event(PoolEventKind::Exit, pid);
        if let Some(c) = self.children.remove(&pid) {
            if let Some(owner) = self.slot_owner.get_mut(c.slot) {
                if *owner == Some(pid) {
                    *owner = None;
                }
            }
        }
        self.rep().exits += 1;
    }

    fn signal(&mut self, pid: Pid, signal: ChildSignal, _alone: bool) {
        match signal {
            ChildSignal::Term => {
                self.rep().retirements += 1;
                self.event(PoolEventKind::Retire, pid);
            }
            ChildSignal::Kill => {
                self.rep().kills += 1;
                self.event(PoolEventKind::Kill, pid);
            }
            ChildSignal::Usr1 => {}
        }
        let pc = self.pc;
        self.schedule(pc, Ev::ToChild(pid, signal));
    }

    // Simulated children take requests from the queue whatever the flag says.
    fn mark_stopping(&mut self) {}

    fn busy_watch(&mut self) -> bool {
        self.watch_busy = true;
        self.children
            .values()
            .any(|c| c.life == Life::Ready && c.current.is_some())
    }

    fn fork(&mut self, spawn: Spawn) -> Option<Pid> {
        self.pc += self.config.fork_cost;
        let pid = Pid(self.next_pid);
        self.next_pid += 1;
        self.rep().spawns += 1;
        self.event(PoolEventKind::Spawn, pid);
        let pc = self.pc;
        self.schedule(
            pc,
            Ev::Forked {
                slot: spawn.slot,
                pid,
                max_requests: spawn.max_requests,
            },
        );
        Some(pid)
    }

    fn run_hook(&mut self, _hook: Hook) -> bool {
        true
    }

    fn reopen_logs(&mut self) {}

    fn files_changed(&mut self) -> Changed {
        Changed::default()
    }

    // The simulator does not model the re-exec: a trial always fails, so an
    // upgrade is abandoned and the simulated parent keeps serving.
    fn probe_upgrade(&mut self, _handoff: &Handoff) -> Option<bool> {
        Some(false)
    }

    fn probe_outcome(&mut self) -> Option<bool> {
        None
    }

    fn reexec(&mut self, _image: Image, _handoff: Handoff) {}

    fn connections(&mut self, _children: &[Pid]) -> Option<Vec<Connection>> {
        Some(Vec::new())
    }

    fn notify(&mut self, _notify: Notify) {}

    fn log(&mut self, level: Level, message: String) {
        if self.config.keep_logs {
            let at = self.pc;
            self.rep().logs.push(LogRecord { at, level, message });
        }
    }
}
