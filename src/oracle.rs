//! The invariants the supervisor keeps, checked from outside on any run.
//!
//! A [`Harness`] plays a fake runtime around a [`Machine`]: it turns abstract
//! [`Op`]s (a signal arrives, a child starts, gets busy, crashes, a client hangs up,
//! time passes...) into events, carries out the machine's actions on a model of the
//! children, and checks after every step:
//!
//! - the invariants of every step, which a [`Monitor`] checks from the events and
//!   actions alone (so any driver can check them, the simulator included):
//!   - live children (forking, starting, serving, retiring) never exceed
//!     `max_children`;
//!   - every signal targets a live child, and no child is TERMed twice (each child
//!     is retired at most once; only KILL may follow a TERM);
//!   - no spawn once shutdown has begun; `Exit` comes last, once, in `Stopped`;
//!   - the machine's live pids are exactly the children spawned and not yet reaped;
//!   - during a reload, no retirement takes the serving count below the minimum,
//!     and when the reload completes every old-generation child has been retired;
//! - a child that was ready and had served (a kill spree's victim) is no crash: if
//!   its death leaves fewer children than the policy's minimum, it is replaced in
//!   the same step, whatever the backoff;
//! - a crash loop is bounded: from the second crash in a row, the crash is never
//!   replaced in the same step. The harness counts crashes itself (a fork that
//!   failed; a child it did not stop that died unready, or before
//!   `min_healthy_uptime` without having served, or before it by itself), forgiving
//!   rather than strict: a streak ends at a reload or once a child forked since it
//!   began is ready and lives `min_healthy_uptime`. So the machine must count at
//!   least as many ([`crash_streak`](Machine::crash_streak)), and a machine that
//!   forgets crashes is caught;
//!
//! and at the end ([`Harness::finish`]): with events quiet, the pool converges into
//! the scaling policy's quiet range; then a TERM always reaches `Stopped`, reaping
//! every child (KILLing those that ignore TERM after the deadline).
//!
//! The property tests, the fuzz target and users' own model tests share it. It
//! wraps any machine, whatever its policies: a scaling policy of your own is
//! checked the same way (the end checks use its
//! [`quiet_range`](crate::ScalingPolicy::quiet_range)).
//!
//! ```
//! use preforkd::oracle::{Harness, Op};
//! use preforkd::policy::{Decision, PoolSnapshot};
//! use preforkd::{Machine, Options, ScalingPolicy, Signal, Time};
//!
//! /// Two children, always.
//! #[derive(Debug)]
//! struct Two;
//! impl ScalingPolicy for Two {
//!     fn decide(&mut self, pool: &PoolSnapshot, _: Time) -> Decision {
//!         match pool.total() {
//!             n if n < 2 => Decision::spawn(2 - n),
//!             n => Decision::retire(n - 2),
//!         }
//!     }
//!     fn quiet_range(&self) -> std::ops::RangeInclusive<usize> {
//!         2..=2
//!     }
//! }
//!
//! let m = Machine::builder(Options { max_children: 4, ..Options::default() })
//!     .scaling(Two)
//!     .build()
//!     .unwrap();
//! let mut h = Harness::new(m);
//! for op in [Op::HookOk, Op::SpawnOk, Op::SpawnOk, Op::Ready(0), Op::Busy(1), Op::Signal(Signal::Hup)] {
//!     h.apply(op).unwrap();
//! }
//! h.finish().unwrap();
//! ```

use crate::policy::{Disconnect, Proto};
use crate::{
    Action, ConnState, Connection, Event, ExitStatus, Hook, HookKind, Machine, Pid, Scoreboard,
    Signal, SignalReason, SlotReading, SlotState, State, Time,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// One abstract step of the outside world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A signal reaches the parent.
    Signal(Signal),
    /// Time passes (milliseconds), then the timer fires.
    Advance(u16),
    /// Time jumps to the machine's deadline, and the timer fires.
    Timeout,
    /// `after_init` succeeded.
    HookOk,
    /// `after_init` failed.
    HookFail,
    /// The oldest pending fork succeeds.
    SpawnOk,
    /// The oldest pending fork fails.
    SpawnFail,
    /// Child `i` (modulo the live count) reports itself ready.
    Ready(u8),
    /// Child `i` takes a request (scoreboard tick).
    Busy(u8),
    /// Child `i` finishes its request (scoreboard tick).
    Idle(u8),
    /// Child `i` has served this many more requests (scoreboard tick).
    Served(u8, u8),
    /// Child `i` decides to leave by itself (scoreboard shows it retiring).
    SelfRetire(u8),
    /// Child `i` exits on its own.
    Exit(u8, ExitStatus),
    /// Children carry out the signals they got: KILLed ones die, TERMed ones that
    /// are not busy exit cleanly.
    Deliver,
    /// A pid that was never a child is reaped.
    BogusExit(u16),
    /// The last reaped child is reported again.
    DuplicateExit,
    /// A spawn report for a slot with no pending fork.
    BogusSpawn(u16),
    /// A scoreboard tick whose slots hold pids of nobody.
    StaleTick,
    /// Child `i`'s client hangs up (listed at every netstat tick from now on).
    Disconnect(u8),
    /// The reload check found changes.
    FilesChanged,
}

impl Op {
    /// Decodes a byte string into ops (for fuzzing): every input is valid.
    ///
    /// ```
    /// use preforkd::oracle::Op;
    /// assert!(!Op::decode(&[1, 2, 3, 4, 5]).is_empty());
    /// assert!(Op::decode(&[]).is_empty());
    /// ```
    pub fn decode(bytes: &[u8]) -> Vec<Op> {
        const SIGNALS: [Signal; 9] = [
            Signal::Term,
            Signal::Int,
            Signal::Quit,
            Signal::Hup,
            Signal::Usr1,
            Signal::Usr2,
            Signal::Ttin,
            Signal::Ttou,
            Signal::Chld,
        ];
        let mut ops = Vec::new();
        let mut it = bytes.iter().copied();
        while let Some(tag) = it.next() {
            let mut arg = || it.next().unwrap_or(0);
            let op = match tag % 20 {
                0 => Op::Signal(SIGNALS[usize::from(arg()) % SIGNALS.len()]),
                1 => Op::Advance(u16::from(arg()) * 8),
                2 => Op::Timeout,
                3 => Op::HookOk,
                4 => Op::HookFail,
                5 | 6 => Op::SpawnOk,
                7 => Op::SpawnFail,
                8 => Op::Ready(arg()),
                9 => Op::Busy(arg()),
                10 => Op::Idle(arg()),
                11 => Op::Served(arg(), arg()),
                12 => Op::SelfRetire(arg()),
                13 => {
                    let i = arg();
                    let s = arg();
                    let status = if s & 1 == 0 {
                        ExitStatus::Exited(i32::from(s >> 1))
                    } else {
                        ExitStatus::Signaled(i32::from(s >> 1))
                    };
                    Op::Exit(i, status)
                }
                14 => Op::Deliver,
                15 => Op::BogusExit(u16::from(arg())),
                16 => Op::DuplicateExit,
                17 => Op::BogusSpawn(u16::from(arg())),
                18 => {
                    if tag >= 128 {
                        Op::StaleTick
                    } else {
                        Op::Disconnect(arg())
                    }
                }
                _ => Op::FilesChanged,
            };
            ops.push(op);
        }
        ops
    }
}

/// A broken invariant: what, and at which step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The index of the op (or of the finishing phase) where it was seen.
    pub step: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {}: {}", self.step, self.message)
    }
}

impl std::error::Error for Violation {}

/// What the [`Monitor`] knows of one child, from the events and actions it saw.
#[derive(Debug, Clone)]
struct Watched {
    slot: usize,
    generation: u64,
    ready: bool,
    self_retiring: bool,
    termed: bool,
    killed: bool,
}

impl Watched {
    fn serving(&self) -> bool {
        self.ready && !self.self_retiring && !self.termed && !self.killed
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
/// - during a reload, no retirement takes the serving count below the minimum,
///   and when the reload completes every old-generation child has been retired.
///
/// The [`Harness`] checks these through a monitor, and adds what needs its model
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
                        ready: false,
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
                    match reading.state {
                        SlotState::Idle | SlotState::Busy => w.ready = true,
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
                    let serving = self.live.values().filter(|c| c.serving()).count();
                    let last_min_serving = self.last_min_serving;
                    let Some(c) = self.live.get_mut(pid) else {
                        return self.fail(format!("{signal:?} to {pid:?}, not a live child"));
                    };
                    match signal {
                        Signal::Term => {
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
                                && serving <= last_min_serving
                            {
                                return self.fail(format!(
                                    "reload retirement of {pid:?} leaves {} serving, below {last_min_serving}",
                                    serving - 1,
                                ));
                            }
                        }
                        Signal::Kill => {
                            if c.killed {
                                return self.fail(format!("second KILL to {pid:?}"));
                            }
                            c.killed = true;
                        }
                        Signal::Usr1 => {}
                        other => {
                            return self.fail(format!("unexpected signal {other:?} to a child"))
                        }
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

    fn reap(&mut self, pid: Pid, status: ExitStatus) -> Result<(), Violation> {
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
    fn forgive_streak(&mut self) {
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
    fn forked_in_streak(&self, c: &ChildModel) -> bool {
        let since = match (self.streak_since, self.machine_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        since.map_or(true, |t| c.spawned_at >= t)
    }

    fn end_streak(&mut self) {
        self.crashes = 0;
        self.streak_since = None;
    }

    /// Counts one more crash in a row if `crash`; `maybe`: a death the machine
    /// may count (the streak may begin there, but it is not counted).
    fn count_crash(&mut self, crash: bool, maybe: bool) {
        if crash || maybe {
            self.streak_since.get_or_insert(self.now);
        }
        if crash {
            self.crashes += 1;
        }
    }

    /// The machine counted every crash of the streak, and from the second crash in
    /// a row the crash is not replaced in the same step.
    fn check_crash_bounded(&self, crashed: bool, seen: usize) -> Result<(), Violation> {
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
                            Signal::Term => c.termed = true,
                            Signal::Kill => c.killed = true,
                            _ => {}
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
