//! A fake runtime around a machine, checking every invariant at every step.

use super::monitor::Monitor;
use super::{Op, Violation};
use crate::policy::{Disconnect, Proto};
use crate::ChildSignal;
use crate::{
    Action, ConnState, Connection, Event, ExitStatus, HookKind, Machine, Pid, Scoreboard, Signal,
    SlotReading, SlotState, State, Time,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

mod crashes;

#[derive(Debug, Clone)]
struct ChildModel {
    slot: usize,
    ready: bool,
    busy: bool,
    requests: u64,
    self_retiring: bool,
    termed: bool,
    killed: bool,
    spawned_at: Time,
}

/// A fake runtime around a [`Machine`] that checks its invariants at every step.
#[derive(Debug)]
pub struct Harness {
    machine: Machine,
    now: Time,
    next_pid: i32,
    /// Forks asked for: slot, and when (a child's age counts from then).
    pending: VecDeque<(usize, Time)>,
    live: BTreeMap<Pid, ChildModel>,
    last_exited: Option<Pid>,
    disconnected: BTreeSet<Pid>,
    trace: Vec<Action>,
    step: usize,
    exited: bool,
    /// The invariants of every step.
    monitor: Monitor,
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
    /// Wraps a freshly built machine (in `Init`), with any policies: built by
    /// [`Machine::new`] or by [`Machine::builder`] with policies of your own.
    pub fn new(machine: Machine) -> Self {
        let mut h = Harness {
            monitor: Monitor::new(&machine),
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
            crashes: 0,
            streak_since: None,
            machine_since: None,
        };
        // The machine's first action (after_init) is already queued.
        match h.monitor.drain(&mut h.machine) {
            Ok(actions) => h.carry_out(actions),
            Err(v) => panic!("fresh machine broke an invariant: {v}"),
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
        let was_exited = self.exited;
        let actions = self
            .monitor
            .handle(&mut self.machine, self.now, event)
            .or_else(|v| self.fail(v.message))?;
        self.carry_out(actions);
        if was_exited {
            return Ok(());
        }
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
                if let Some((slot, asked)) = self.pending.pop_front() {
                    let pid = Pid(self.next_pid);
                    self.next_pid += 1;
                    self.live.insert(
                        pid,
                        ChildModel {
                            slot,
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

    /// Carries out the checked actions on the model of the children, and keeps
    /// them in the trace.
    fn carry_out(&mut self, actions: Vec<Action>) {
        for action in actions {
            match &action {
                Action::Spawn { slot, .. } => self.pending.push_back((*slot, self.now)),
                Action::Signal { pid, signal, .. } => {
                    if let Some(c) = self.live.get_mut(pid) {
                        match signal {
                            ChildSignal::Term => c.termed = true,
                            ChildSignal::Kill => c.killed = true,
                            ChildSignal::Usr1 => {}
                        }
                    }
                }
                Action::Exit { .. } => self.exited = true,
                _ => {}
            }
            self.trace.push(action);
        }
    }

    /// Drives the machine with quiet events (forks succeed, children start and idle,
    /// signals are obeyed, timers fire) until nothing is due, then checks the pool is
    /// in the scaling policy's quiet range. Returns the number of rounds it took.
    pub fn quiesce(&mut self) -> Result<usize, Violation> {
        // Periodic work (reload checks) keeps a deadline forever, so "settled" also
        // means: no spawn or signal for longer than any timer of the machine.
        let o = self.machine.options();
        let horizon = o.backoff_max + o.graceful_timeout + o.kill_grace + o.start_timeout;
        let mut stable_since: Option<Time> = None;
        for round in 0..10_000 {
            match self.machine.state() {
                State::Stopped | State::ShuttingDown => return Ok(round),
                State::Init => self.feed(Event::HookFinished {
                    hook: HookKind::AfterInit,
                    ok: true,
                })?,
                _ => {}
            }
            let seen = self.trace.len();
            while !self.pending.is_empty() {
                self.apply_quiet(Op::SpawnOk)?;
            }
            let unready: Vec<Pid> = self
                .live
                .iter()
                .filter(|(_, c)| !c.ready)
                .map(|(p, _)| *p)
                .collect();
            for pid in unready {
                if let Some(c) = self.live.get_mut(&pid) {
                    c.ready = true;
                }
                self.feed(Event::ChildReady { pid })?;
            }
            for c in self.live.values_mut() {
                c.busy = false;
            }
            self.disconnected.clear();
            self.tick()?;
            self.deliver()?;
            let deadline = self.machine.poll_timeout();
            if let Some(t) = deadline {
                self.now = self.now.max(t);
                self.feed(Event::Timer)?;
            }
            let changed = self.trace[seen..]
                .iter()
                .any(|a| matches!(a, Action::Spawn { .. } | Action::Signal { .. }));
            let settled = self.pending.is_empty()
                && self
                    .live
                    .values()
                    .all(|c| !c.termed && !c.killed && !c.self_retiring);
            if changed || !settled {
                stable_since = None;
            } else if stable_since.is_none() {
                stable_since = Some(self.now);
            }
            let quiet_for = stable_since.map(|t| self.now - t);
            if settled && !changed && (deadline.is_none() || quiet_for > Some(horizon)) {
                return self.check_quiet().map(|()| round);
            }
        }
        self.fail("the pool did not settle within 10,000 quiet rounds".into())
    }

    fn apply_quiet(&mut self, op: Op) -> Result<(), Violation> {
        let step = self.step;
        let r = self.apply(op);
        self.step = step;
        r
    }

    fn check_quiet(&self) -> Result<(), Violation> {
        let state = self.machine.state();
        if state != State::Serving {
            return self.fail(format!("settled in {} instead of Serving", state.name()));
        }
        let max = self.machine.options().max_children;
        let range = self.machine.scaling_policy().quiet_range();
        let (lo, hi) = ((*range.start()).min(max), (*range.end()).min(max));
        let n = self.live.len();
        if n < lo || n > hi {
            return self.fail(format!(
                "settled with {n} children, outside the quiet range {lo}..={hi}"
            ));
        }
        Ok(())
    }

    /// Sends TERM with half the children busy and ignoring it, then lets time pass
    /// until the machine stops; checks it reaches `Stopped` and reaps every child.
    pub fn shut_down(&mut self) -> Result<(), Violation> {
        if !self.exited && self.machine.state() != State::ShuttingDown {
            let busy: Vec<Pid> = self.live.keys().copied().step_by(2).collect();
            for pid in busy {
                if let Some(c) = self.live.get_mut(&pid) {
                    if c.ready && !c.self_retiring {
                        c.busy = true;
                    }
                }
            }
            self.tick()?;
            self.feed(Event::Signal(Signal::Term))?;
        }
        for _ in 0..10_000 {
            if self.exited {
                break;
            }
            while !self.pending.is_empty() {
                self.apply_quiet(Op::SpawnOk)?;
            }
            self.deliver()?;
            if self.exited {
                break;
            }
            match self.machine.poll_timeout() {
                Some(t) => {
                    self.now = self.now.max(t);
                    self.feed(Event::Timer)?;
                }
                None => {
                    return self.fail(format!(
                        "stuck in {} with no deadline",
                        self.machine.state().name()
                    ))
                }
            }
        }
        if !self.exited {
            return self.fail("shutdown did not reach Stopped".into());
        }
        if let Some(pid) = self.live.keys().next() {
            // Children are left only if the machine gave up on them after KILL (a
            // random op jumped past the wait), and then it must say so.
            if self.machine.exit_code() != Some(1) {
                return self.fail(format!("stopped cleanly with child {pid:?} still alive"));
            }
        }
        Ok(())
    }

    /// [`quiesce`](Self::quiesce), then [`shut_down`](Self::shut_down).
    pub fn finish(&mut self) -> Result<(), Violation> {
        self.step += 1;
        if !self.exited {
            self.quiesce()?;
        }
        self.step += 1;
        self.shut_down()
    }
}
