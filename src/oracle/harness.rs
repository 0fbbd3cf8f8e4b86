//! The fake runtime: a model of the children, and the ops turned into events.
//! The checks on the machine's actions, the crash-streak accounting and the end
//! of a run are in the submodules.

mod actions;
mod crashes;
mod ending;

use super::{Op, Violation};
use crate::policy::{Disconnect, Proto};
use crate::{
    Action, ConnState, Connection, Event, ExitStatus, HookKind, Machine, Pid, Scoreboard, Signal,
    SlotReading, SlotState, State, Time,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

#[derive(Debug, Clone)]
struct ChildModel {
    slot: usize,
    generation: u64,
    ready: bool,
    busy: bool,
    requests: u64,
    self_retiring: bool,
    termed: bool,
    killed: bool,
    spawned_at: Time,
}

impl ChildModel {
    fn serving(&self) -> bool {
        self.ready && !self.self_retiring && !self.termed && !self.killed
    }
}

/// A fake runtime around a [`Machine`] that checks its invariants at every step.
#[derive(Debug)]
pub struct Harness {
    machine: Machine,
    now: Time,
    next_pid: i32,
    /// Forks asked for: slot, generation, and when (a child's age counts from then).
    pending: VecDeque<(usize, u64, Time)>,
    live: BTreeMap<Pid, ChildModel>,
    last_exited: Option<Pid>,
    disconnected: BTreeSet<Pid>,
    trace: Vec<Action>,
    step: usize,
    exited: bool,
    last_min_serving: usize,
    /// The harness's own count of crashes in a row.
    crashes: u32,
    /// When the machine's streak may have begun: the first death it might count
    /// as a crash since the last streak ended (`None`: no streak).
    streak_since: Option<Time>,
    /// When the machine's own streak began, as seen from its count: a streak may
    /// have begun with a death only the machine counted.
    machine_since: Option<Time>,
}

impl Harness {
    /// Wraps a freshly built machine (in `Init`).
    pub fn new(machine: Machine) -> Self {
        let mut h = Harness {
            machine,
            now: Time::ZERO,
            next_pid: 1000,
            pending: VecDeque::new(),
            live: BTreeMap::new(),
            last_exited: None,
            disconnected: BTreeSet::new(),
            trace: Vec::new(),
            step: 0,
            exited: false,
            last_min_serving: 0,
            crashes: 0,
            streak_since: None,
            machine_since: None,
        };
        // The machine's first action (after_init) is already queued.
        let before = h.machine.state();
        if let Err(v) = h.drain(before) {
            panic!("fresh machine broke an invariant: {v}");
        }
        h
    }

    /// The machine under test.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// Every action the machine produced, in order.
    pub fn trace(&self) -> &[Action] {
        &self.trace
    }

    /// The simulated time.
    pub fn now(&self) -> Time {
        self.now
    }

    fn fail<T>(&self, message: String) -> Result<T, Violation> {
        Err(Violation {
            step: self.step,
            message,
        })
    }

    fn nth_live(&self, i: u8) -> Option<Pid> {
        if self.live.is_empty() {
            return None;
        }
        let idx = usize::from(i) % self.live.len();
        self.live.keys().nth(idx).copied()
    }

    fn scoreboard(&self) -> Scoreboard {
        let max = self.machine.options().max_children;
        let mut slots = vec![SlotReading::default(); max];
        for (&pid, c) in &self.live {
            if let Some(s) = slots.get_mut(c.slot) {
                *s = SlotReading {
                    pid,
                    state: if c.self_retiring {
                        SlotState::Retiring
                    } else if !c.ready {
                        SlotState::Starting
                    } else if c.busy {
                        SlotState::Busy
                    } else {
                        SlotState::Idle
                    },
                    requests: c.requests,
                    request_start: c.busy.then_some(self.now),
                    heartbeat: self.now,
                    memory: None,
                };
            }
        }
        Scoreboard {
            slots,
            backlog: None,
        }
    }

    fn netstat(&self) -> Vec<Connection> {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        self.disconnected
            .iter()
            .filter(|p| self.live.contains_key(p))
            .map(|&pid| Connection {
                conn: Disconnect {
                    pid,
                    proto: Proto::Tcp,
                    local_host: lo,
                    local_port: 8080,
                    foreign_host: lo,
                    foreign_port: 40000 + (pid.0 % 20000) as u16,
                },
                state: ConnState::CloseWait,
            })
            .collect()
    }

    fn feed(&mut self, event: Event<'_>) -> Result<(), Violation> {
        if self.exited {
            // A stopped machine must stay silent whatever it is told.
            self.machine.handle(self.now, event);
            if let Some(a) = self.machine.poll_action() {
                return self.fail(format!("action after Exit: {a:?}"));
            }
            return Ok(());
        }
        let before = self.machine.state();
        self.machine.handle(self.now, event);
        self.drain(before)?;
        self.forgive_streak();
        if self.machine.crash_streak() == 0 {
            self.machine_since = None;
        } else {
            self.machine_since.get_or_insert(self.now);
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<(), Violation> {
        let sb = self.scoreboard();
        self.feed(Event::Scoreboard(&sb))
    }

    /// Applies one op and checks every invariant.
    pub fn apply(&mut self, op: Op) -> Result<(), Violation> {
        self.step += 1;
        match op {
            Op::Signal(sig) => {
                // A reload is the operator's "fixed it": the streak is over.
                if matches!(sig, Signal::Hup | Signal::Usr2) {
                    self.end_streak();
                }
                self.feed(Event::Signal(sig))?
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(u64::from(ms));
                self.tick()?;
            }
            Op::Timeout => {
                if let Some(t) = self.machine.poll_timeout() {
                    if t == Time::MAX {
                        return self.fail("poll_timeout returned Time::MAX".into());
                    }
                    self.now = self.now.max(t);
                }
                self.feed(Event::Timer)?;
            }
            Op::HookOk | Op::HookFail => self.feed(Event::HookFinished {
                hook: HookKind::AfterInit,
                ok: op == Op::HookOk,
            })?,
            // A runtime that has exited forks nothing more.
            Op::SpawnOk | Op::SpawnFail if self.exited => {}
            Op::SpawnOk => {
                if let Some((slot, generation, asked)) = self.pending.pop_front() {
                    let pid = Pid(self.next_pid);
                    self.next_pid += 1;
                    self.live.insert(
                        pid,
                        ChildModel {
                            slot,
                            generation,
                            ready: false,
                            busy: false,
                            requests: 0,
                            self_retiring: false,
                            termed: false,
                            killed: false,
                            spawned_at: asked,
                        },
                    );
                    self.feed(Event::ChildSpawned { slot, pid })?;
                }
            }
            Op::SpawnFail => {
                if let Some((slot, ..)) = self.pending.pop_front() {
                    self.forgive_streak();
                    let counted =
                        !matches!(self.machine.state(), State::ShuttingDown | State::Stopped);
                    self.count_crash(counted, true);
                    let seen = self.trace.len();
                    self.feed(Event::SpawnFailed { slot })?;
                    self.check_crash_bounded(counted, seen)?;
                }
            }
            Op::Ready(i) => {
                if let Some(pid) = self.nth_live(i) {
                    if let Some(c) = self.live.get_mut(&pid) {
                        c.ready = true;
                    }
                    self.feed(Event::ChildReady { pid })?;
                }
            }
            Op::Busy(i) | Op::Idle(i) => {
                if let Some(pid) = self.nth_live(i) {
                    if let Some(c) = self.live.get_mut(&pid) {
                        if !c.self_retiring {
                            c.ready = true;
                            c.busy = matches!(op, Op::Busy(_));
                        }
                    }
                    self.tick()?;
                }
            }
            Op::Served(i, n) => {
                if let Some(pid) = self.nth_live(i) {
                    if let Some(c) = self.live.get_mut(&pid) {
                        c.requests += u64::from(n);
                    }
                    self.tick()?;
                }
            }
            Op::SelfRetire(i) => {
                if let Some(pid) = self.nth_live(i) {
                    if let Some(c) = self.live.get_mut(&pid) {
                        c.self_retiring = true;
                        c.busy = false;
                    }
                    self.tick()?;
                }
            }
            Op::Exit(i, status) => {
                if let Some(pid) = self.nth_live(i) {
                    self.reap(pid, status)?;
                }
            }
            Op::Deliver => self.deliver()?,
            Op::BogusExit(n) => {
                let pid = Pid(900_000 + i32::from(n));
                self.feed(Event::ChildExited {
                    pid,
                    status: ExitStatus::Exited(0),
                })?;
            }
            Op::DuplicateExit => {
                if let Some(pid) = self.last_exited {
                    if !self.live.contains_key(&pid) {
                        self.feed(Event::ChildExited {
                            pid,
                            status: ExitStatus::Signaled(9),
                        })?;
                    }
                }
            }
            Op::BogusSpawn(n) => {
                // A slot with no pending fork: beyond the pool, or held by a live child.
                let max = self.machine.options().max_children;
                let slot = match self.nth_live(n as u8) {
                    Some(pid) if n % 2 == 0 => self.live[&pid].slot,
                    _ => max + usize::from(n),
                };
                let pid = Pid(800_000 + i32::from(n));
                self.feed(Event::ChildSpawned { slot, pid })?;
            }
            Op::StaleTick => {
                let mut sb = self.scoreboard();
                for s in &mut sb.slots {
                    s.pid = Pid(700_000);
                    s.state = SlotState::Busy;
                }
                self.feed(Event::Scoreboard(&sb))?;
            }
            Op::Disconnect(i) => {
                if let Some(pid) = self.nth_live(i) {
                    self.disconnected.insert(pid);
                }
                let conns = self.netstat();
                self.feed(Event::Netstat(&conns))?;
            }
            Op::FilesChanged => {
                self.end_streak();
                self.feed(Event::FilesChanged)?
            }
        }
        self.forgive_streak();
        Ok(())
    }

    fn deliver(&mut self) -> Result<(), Violation> {
        let leaving: Vec<(Pid, ExitStatus)> = self
            .live
            .iter()
            .filter_map(|(&pid, c)| {
                if c.killed {
                    Some((pid, ExitStatus::Signaled(9)))
                } else if (c.termed && !c.busy) || c.self_retiring {
                    Some((pid, ExitStatus::Exited(0)))
                } else {
                    None
                }
            })
            .collect();
        for (pid, status) in leaving {
            self.reap(pid, status)?;
        }
        Ok(())
    }
}
