//! The simulated parent: single-threaded, it handles its inbox in order, feeds
//! the machine, and carries out its actions (forks take its time).

use super::children::Life;
use super::{Ev, LogRecord, Sim};
use crate::ChildSignal;
use crate::{Action, Event, ExitStatus, Pid, Signal, SlotReading, SlotState, Time};
use std::time::Duration;

/// What waits for the parent's attention, handled in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Inbox {
    /// Carry out the machine's first actions.
    Start,
    Ready(Pid),
    /// A child exited; `read` once the exit tick was done.
    Exited {
        pid: Pid,
        status: ExitStatus,
        read: bool,
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
            let mut pc = self.now;
            self.parent_handle(item, &mut pc);
            self.parent_free_at = pc;
            if self.stopped {
                self.inbox.clear();
                break;
            }
            if pc > self.now {
                if !self.inbox.is_empty() {
                    self.wake_scheduled = true;
                    self.schedule(pc, Ev::ParentWake);
                }
                break;
            }
        }
        self.update_timer();
    }

    fn parent_handle(&mut self, item: Inbox, pc: &mut Time) {
        let ticks = self.config.ticks;
        match item {
            Inbox::Start => {
                self.take_queued(*pc);
                self.drain(pc);
            }
            Inbox::Ready(pid) => {
                self.feed(*pc, Event::ChildReady { pid });
                self.drain(pc);
                if ticks.on_ready {
                    self.inbox.push_front(Inbox::FollowTick);
                }
            }
            Inbox::Exited { pid, status, read } => {
                if ticks.on_exit && !read {
                    self.tick(pc);
                    self.inbox.push_front(Inbox::Exited {
                        pid,
                        status,
                        read: true,
                    });
                } else {
                    if let Some(c) = self.children.remove(&pid) {
                        if let Some(owner) = self.slot_owner.get_mut(c.slot) {
                            if *owner == Some(pid) {
                                *owner = None;
                            }
                        }
                    }
                    self.rep().exits += 1;
                    self.feed(*pc, Event::ChildExited { pid, status });
                    self.drain(pc);
                }
            }
            Inbox::Tick | Inbox::FollowTick => self.tick(pc),
            Inbox::Timer { read } => {
                if ticks.on_timeout && !read {
                    self.tick(pc);
                    self.inbox.push_front(Inbox::Timer { read: true });
                } else {
                    self.feed(*pc, Event::Timer);
                    self.drain(pc);
                }
            }
            Inbox::Signal(signal) => {
                self.feed(*pc, Event::Signal(signal));
                self.drain(pc);
            }
        }
    }

    /// Reads the scoreboard into the machine. Any standalone tick still queued is
    /// dropped: this reading is at least as fresh.
    fn tick(&mut self, pc: &mut Time) {
        if self.tick_queued {
            self.tick_queued = false;
            self.inbox.retain(|i| *i != Inbox::Tick);
        }
        for (reading, owner) in self.scoreboard.slots.iter_mut().zip(&self.slot_owner) {
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
        self.scoreboard.backlog = self.config.report_backlog.then_some(self.queue.len());
        self.rep().ticks += 1;
        let board = std::mem::take(&mut self.scoreboard);
        self.feed(*pc, Event::Scoreboard(&board));
        self.scoreboard = board;
        self.drain(pc);
    }

    /// Hands `event` to the machine at `pc` (through the monitor when checking);
    /// its actions queue up for [`drain`](Sim::drain), behind those still waiting.
    fn feed(&mut self, pc: Time, event: Event<'_>) {
        match self.monitor.as_mut() {
            Some(monitor) => match monitor.handle(&mut self.machine, pc, event) {
                Ok(actions) => self.actions.extend(actions),
                Err(v) => panic!("invariant broken at {pc} (simulated time): {v}"),
            },
            None => {
                self.machine.handle(pc, event);
                self.actions
                    .extend(std::iter::from_fn(|| self.machine.poll_action()));
            }
        }
    }

    /// Queues the actions a fresh machine holds before any event (`after_init`).
    fn take_queued(&mut self, pc: Time) {
        match self.monitor.as_mut() {
            Some(monitor) => match monitor.drain(&mut self.machine) {
                Ok(actions) => self.actions.extend(actions),
                Err(v) => panic!("invariant broken at {pc} (simulated time): {v}"),
            },
            None => self
                .actions
                .extend(std::iter::from_fn(|| self.machine.poll_action())),
        }
    }

    /// Carries out the machine's actions; forks advance the parent's clock `pc`.
    fn drain(&mut self, pc: &mut Time) {
        while let Some(action) = self.actions.pop_front() {
            match action {
                Action::Spawn {
                    slot, max_requests, ..
                } => {
                    *pc += self.config.fork_cost;
                    let pid = Pid(self.next_pid);
                    self.next_pid += 1;
                    self.rep().spawns += 1;
                    self.schedule(
                        *pc,
                        Ev::Forked {
                            slot,
                            pid,
                            max_requests,
                        },
                    );
                    self.feed(*pc, Event::ChildSpawned { slot, pid });
                }
                Action::Signal { pid, signal, .. } => {
                    match signal {
                        ChildSignal::Term => self.rep().retirements += 1,
                        ChildSignal::Kill => self.rep().kills += 1,
                        ChildSignal::Usr1 => {}
                    }
                    self.schedule(*pc, Ev::ToChild(pid, signal));
                }
                Action::RunHook(hook) => {
                    let hook = hook.kind();
                    self.feed(*pc, Event::HookFinished { hook, ok: true });
                }
                Action::Log { level, message } => {
                    if self.config.keep_logs {
                        self.rep().logs.push(LogRecord {
                            at: *pc,
                            level,
                            message,
                        });
                    }
                }
                Action::Exit { code } => {
                    self.rep().exit = Some((*pc, code));
                    self.stopped = true;
                }
                // No simulated client hangs up: nothing to report for a disconnect check.
                Action::ReopenLogs
                | Action::CheckForChanges
                | Action::CheckDisconnects
                | Action::Notify(_) => {}
            }
        }
    }

    /// Schedules the machine's deadline, if it moved.
    fn update_timer(&mut self) {
        let want = if self.stopped {
            None
        } else {
            self.machine.poll_timeout()
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
}
