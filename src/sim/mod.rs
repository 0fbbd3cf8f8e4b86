//! A deterministic simulator to model-test a [`ScalingPolicy`](crate::ScalingPolicy)
//! (or any configuration of the [`Machine`]) against a workload, with a fake clock
//! and fake children.
//!
//! The simulator drives a real [`Machine`] the way the process runtime does, and
//! plays everything else:
//!
//! - **The parent** is single-threaded: it forks serially, each fork taking
//!   [`SimConfig::fork_cost`], and handles nothing else while forking (events
//!   wait in order). It reports each fork with [`Event::ChildSpawned`], runs hooks
//!   at once (they succeed), and feeds [`Event::Timer`] at
//!   [`Machine::poll_timeout`].
//! - **Children** become ready [`SimConfig::boot_latency`] after their fork. A ready,
//!   idle child takes the next request from the queue at once (the one idle the
//!   longest first, as the kernel wakes blocked `accept` callers in order) and
//!   holds it for its service time. TERM: the child finishes its request, if
//!   any, then exits with code 0; KILL: it exits at once, and its request is
//!   dropped. A child that reaches its request limit
//!   ([`Action::Spawn`]'s `max_requests`) marks its slot retiring and exits.
//! - **The scoreboard**: the parent reads it only on the [`Ticks`] triggers: by
//!   default when a child takes the last idle slot, when a child becomes ready,
//!   when the machine's timeout fires and when a child exits, never on every
//!   request (an idle parent sleeps). With [`SimConfig::report_backlog`] the
//!   reading includes the queue length.
//! - **The workload** ([`Workload`]) is replayed into a FIFO listen queue.
//!
//! Everything is deterministic: no clock, no thread, randomness only from seeded
//! [`SplitMix64`](crate::SplitMix64) generators; events at the same instant run in
//! the order they were scheduled. The same machine, configuration, workload and
//! scenario always give the same [`SimReport`].
//!
//! ```
//! use preforkd::sim::{Sim, Workload};
//! use preforkd::{Machine, Options, Time};
//! use std::time::Duration;
//!
//! let machine = Machine::new(Options { prefork: 3, max_children: 50, ..Options::default() })?;
//! let work = Workload::burst(40, Time::from_millis(100), Duration::from_millis(500));
//! let mut sim = Sim::new(machine, work);
//! let report = sim.run_to_completion(Duration::from_secs(60));
//!
//! assert_eq!(report.completed, 40);
//! assert_eq!(report.dropped, 0);
//! assert!(report.peak_children <= 50);
//! assert!(report.last_finish.unwrap() < Time::from_millis(700));
//! assert!(report.wait_p99().unwrap() < Duration::from_millis(100));
//! // The pool over time, as the children really were.
//! for s in &report.samples {
//!     println!("{} alive {} busy {} queue {}", s.at, s.alive, s.busy, s.queue);
//! }
//! # Ok::<(), preforkd::ConfigError>(())
//! ```

mod report;
mod workload;

pub use report::{LogRecord, RequestRecord, Sample, SimReport};
pub use workload::{Request, Service, Workload};

use crate::{
    Action, Event, ExitStatus, Machine, Pid, Scoreboard, Signal, SlotReading, SlotState, Time,
};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// When the simulated parent reads the scoreboard and hands it to the machine
/// ([`Event::Scoreboard`]). The defaults model the runtime: it wakes on the
/// events below, not on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticks {
    /// A child took the last idle slot: every ready child is busy (true).
    pub on_saturation: bool,
    /// A child became ready (true).
    pub on_ready: bool,
    /// The machine's [`poll_timeout`](Machine::poll_timeout) fired (true).
    pub on_timeout: bool,
    /// A child exited, read before it is reaped (true).
    pub on_exit: bool,
    /// Every request start and finish, like a parent polling continuously (false).
    pub on_every_request: bool,
    /// Also every this often, like Apache's one-second maintenance loop (none).
    pub every: Option<Duration>,
}

impl Default for Ticks {
    fn default() -> Self {
        Ticks {
            on_saturation: true,
            on_ready: true,
            on_timeout: true,
            on_exit: true,
            on_every_request: false,
            every: None,
        }
    }
}

/// The simulated world's parameters. `SimConfig::default()` models the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// The parent's time per fork; a batch of `k` forks keeps it busy `k` times
    /// this (0.5 ms).
    pub fork_cost: Duration,
    /// From a child's fork to its readiness (1 ms).
    pub boot_latency: Duration,
    /// When the parent reads the scoreboard.
    pub ticks: Ticks,
    /// Include the queue length as the scoreboard's `backlog` (true).
    pub report_backlog: bool,
    /// Sample the pool every this often instead of at every change (none: at every
    /// change; see [`SimReport::samples`]).
    pub sample_every: Option<Duration>,
    /// Keep the machine's log records in [`SimReport::logs`] (true).
    pub keep_logs: bool,
    /// [`Sim::run_to_completion`] stops at this simulated time even if the workload
    /// is not done (one hour).
    pub time_limit: Time,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            fork_cost: Duration::from_micros(500),
            boot_latency: Duration::from_millis(1),
            ticks: Ticks::default(),
            report_backlog: true,
            sample_every: None,
            keep_logs: true,
            time_limit: Time::from_millis(3_600_000),
        }
    }
}

/// Something scheduled on the simulated timeline.
#[derive(Debug, Clone, Copy)]
enum Ev {
    /// A fork completed: the child exists.
    Forked {
        slot: usize,
        pid: Pid,
        max_requests: Option<u64>,
    },
    /// A child finished booting.
    Ready(Pid),
    /// A child finished a request (the request's index).
    Finish(Pid, usize),
    /// A signal from the parent reaches a child.
    ToChild(Pid, Signal),
    /// The parent may handle its inbox.
    ParentWake,
    /// The machine's deadline (valid if the token is current).
    TimerFire(u64),
    /// A signal from the scenario reaches the parent.
    ToParent(Signal),
    /// A periodic scoreboard tick.
    PeriodicTick,
    /// A periodic sample.
    SampleTick,
}

/// What waits for the parent's attention, handled in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inbox {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Starting,
    Ready,
    /// Exited, not reaped yet: its slot still shows it.
    Gone,
}

#[derive(Debug, Clone)]
struct Child {
    slot: usize,
    life: Life,
    /// TERMed, or leaving after its request limit: takes no new request.
    leaving: bool,
    max_requests: Option<u64>,
    requests: u64,
    /// The request in hand.
    current: Option<usize>,
    request_start: Option<Time>,
    idle_since: Time,
    heartbeat: Time,
}

impl Child {
    fn is_idle(&self) -> bool {
        self.life == Life::Ready && !self.leaving && self.current.is_none()
    }
}

/// A simulation: one [`Machine`], fake children, a [`Workload`] and optionally
/// signals sent at given times. See the [module docs](self) for the model.
///
/// Run it with [`run_until`](Sim::run_until) or
/// [`run_to_completion`](Sim::run_to_completion) (in steps if you like), read the
/// measurements with [`report`](Sim::report) and the supervisor with
/// [`machine`](Sim::machine).
#[derive(Debug)]
pub struct Sim {
    machine: Machine,
    config: SimConfig,
    workload: Vec<Request>,
    next_arrival: usize,
    now: Time,
    seq: u64,
    events: BTreeMap<(Time, u64), Ev>,
    queue: VecDeque<usize>,
    children: BTreeMap<Pid, Child>,
    slot_owner: Vec<Option<Pid>>,
    next_pid: i32,
    inbox: VecDeque<Inbox>,
    parent_free_at: Time,
    wake_scheduled: bool,
    tick_queued: bool,
    timer: Option<Time>,
    timer_token: u64,
    stopped: bool,
    done_at: Option<Time>,
    scoreboard: Scoreboard,
    report: SimReport,
}

impl Sim {
    /// A simulation of `machine`, fresh from its builder (in
    /// [`State::Init`](crate::State::Init)), replaying `workload`, with the default
    /// [`SimConfig`].
    pub fn new(machine: Machine, workload: Workload) -> Sim {
        Sim::with_config(machine, workload, SimConfig::default())
    }

    /// A simulation with this configuration.
    pub fn with_config(machine: Machine, workload: Workload, config: SimConfig) -> Sim {
        let slots = machine.options().max_children;
        let requests: Vec<RequestRecord> = workload
            .requests()
            .iter()
            .map(|r| RequestRecord {
                arrival: r.arrival,
                service: r.service,
                started: None,
                finished: None,
                pid: None,
                dropped: false,
            })
            .collect();
        let mut sim = Sim {
            machine,
            workload: workload.requests().to_vec(),
            next_arrival: 0,
            now: Time::ZERO,
            seq: 0,
            events: BTreeMap::new(),
            queue: VecDeque::new(),
            children: BTreeMap::new(),
            slot_owner: vec![None; slots],
            next_pid: 100,
            inbox: VecDeque::new(),
            parent_free_at: Time::ZERO,
            wake_scheduled: false,
            tick_queued: false,
            timer: None,
            timer_token: 0,
            stopped: false,
            done_at: None,
            scoreboard: Scoreboard {
                slots: vec![SlotReading::default(); slots],
                backlog: None,
            },
            report: SimReport {
                requests,
                ..SimReport::default()
            },
            config,
        };
        sim.push_inbox(Inbox::Start);
        if let Some(every) = sim.config.ticks.every {
            sim.schedule(Time::ZERO + every, Ev::PeriodicTick);
        }
        if sim.config.sample_every.is_some() {
            sim.schedule(Time::ZERO, Ev::SampleTick);
        }
        sim.check_done();
        sim
    }

    /// Sends `signal` to the parent at time `at` (for example [`Signal::Hup`] for a
    /// rolling reload, [`Signal::Term`] to stop, [`Signal::Ttin`] to nudge the
    /// policy). A time already past counts as now.
    pub fn signal_at(&mut self, at: Time, signal: Signal) -> &mut Sim {
        let at = at.max(self.now);
        self.schedule(at, Ev::ToParent(signal));
        self
    }

    /// Runs everything that happens up to and including time `t` (or until the
    /// supervisor exits), then sets the clock to `t`.
    pub fn run_until(&mut self, t: Time) -> &SimReport {
        while !self.stopped {
            match self.next_time() {
                Some(next) if next <= t => self.step(),
                _ => break,
            }
        }
        if !self.stopped {
            self.now = self.now.max(t);
        }
        self.report.ended_at = self.now;
        &self.report
    }

    /// Runs until every request of the workload has completed or been dropped, then
    /// for `linger` more (to watch the pool shrink). Stops early if the supervisor
    /// exits or nothing is left to happen (a pool that cannot serve), and at
    /// [`SimConfig::time_limit`] at the latest; check
    /// [`SimReport::unfinished`].
    pub fn run_to_completion(&mut self, linger: Duration) -> &SimReport {
        let limit = self.config.time_limit;
        loop {
            if self.stopped {
                break;
            }
            if let Some(done) = self.done_at {
                self.run_until((done + linger).min(limit));
                break;
            }
            match self.next_time() {
                Some(t) if t <= limit => self.step(),
                Some(_) => {
                    self.run_until(limit);
                    break;
                }
                None => break,
            }
        }
        self.report.ended_at = self.now;
        &self.report
    }

    /// The measurements so far.
    pub fn report(&self) -> &SimReport {
        &self.report
    }

    /// The measurements, consuming the simulation.
    pub fn into_report(self) -> SimReport {
        self.report
    }

    /// The supervisor, to inspect its state, counts and generations.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The simulated time reached.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Requests waiting in the listen queue now.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    // ----- the timeline -----

    fn schedule(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.events.insert((at, self.seq), ev);
    }

    fn next_time(&self) -> Option<Time> {
        let arrival = self.workload.get(self.next_arrival).map(|r| r.arrival);
        let event = self.events.first_key_value().map(|(&(t, _), _)| t);
        match (arrival, event) {
            (Some(a), Some(e)) => Some(a.min(e)),
            (a, e) => a.or(e),
        }
    }

    /// Runs the next happening (arrivals first at equal times).
    fn step(&mut self) {
        let arrival = self.workload.get(self.next_arrival).map(|r| r.arrival);
        let event = self.events.first_key_value().map(|(&(t, _), _)| t);
        let arrival = match (arrival, event) {
            (Some(a), Some(e)) => (a <= e).then_some(a),
            (Some(a), None) => Some(a),
            (None, Some(_)) => None,
            (None, None) => return,
        };
        if let Some(a) = arrival {
            self.now = self.now.max(a);
            let i = self.next_arrival;
            self.next_arrival += 1;
            self.queue.push_back(i);
            self.dispatch();
        } else {
            let Some(((t, _), ev)) = self.events.pop_first() else {
                return;
            };
            self.now = self.now.max(t);
            self.on_event(ev);
        }
        self.observe();
    }

    fn on_event(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Forked {
                slot,
                pid,
                max_requests,
            } => {
                if let Some(owner) = self.slot_owner.get_mut(slot) {
                    *owner = Some(pid);
                }
                self.children.insert(
                    pid,
                    Child {
                        slot,
                        life: Life::Starting,
                        leaving: false,
                        max_requests,
                        requests: 0,
                        current: None,
                        request_start: None,
                        idle_since: now,
                        heartbeat: now,
                    },
                );
                self.schedule(now + self.config.boot_latency, Ev::Ready(pid));
            }
            Ev::Ready(pid) => {
                let Some(c) = self.children.get_mut(&pid) else {
                    return;
                };
                if c.life != Life::Starting {
                    return;
                }
                c.life = Life::Ready;
                c.idle_since = now;
                c.heartbeat = now;
                self.push_inbox(Inbox::Ready(pid));
                self.dispatch();
            }
            Ev::Finish(pid, req) => self.on_finish(pid, req),
            Ev::ToChild(pid, signal) => self.on_child_signal(pid, signal),
            Ev::ParentWake => {
                self.wake_scheduled = false;
                self.parent_run();
            }
            Ev::TimerFire(token) => {
                if token == self.timer_token {
                    self.timer = None;
                    self.push_inbox(Inbox::Timer { read: false });
                }
            }
            Ev::ToParent(signal) => self.push_inbox(Inbox::Signal(signal)),
            Ev::PeriodicTick => {
                self.request_tick();
                if let Some(every) = self.config.ticks.every {
                    self.schedule(now + every.max(Duration::from_micros(1)), Ev::PeriodicTick);
                }
            }
            Ev::SampleTick => {
                let s = self.sample();
                self.report.samples.push(s);
                if let Some(every) = self.config.sample_every {
                    self.schedule(now + every.max(Duration::from_micros(1)), Ev::SampleTick);
                }
            }
        }
    }

    // ----- children -----

    /// Idle children take queued requests, the one idle the longest first.
    fn dispatch(&mut self) {
        let now = self.now;
        while !self.queue.is_empty() {
            let Some((&pid, _)) = self
                .children
                .iter()
                .filter(|(_, c)| c.is_idle())
                .min_by_key(|(_, c)| (c.idle_since, c.slot))
            else {
                break;
            };
            let Some(req) = self.queue.pop_front() else {
                break;
            };
            if let Some(c) = self.children.get_mut(&pid) {
                c.current = Some(req);
                c.request_start = Some(now);
                c.heartbeat = now;
            }
            let r = &mut self.report.requests[req];
            r.started = Some(now);
            r.pid = Some(pid);
            let service = r.service;
            self.schedule(now + service, Ev::Finish(pid, req));
            let ticks = self.config.ticks;
            if ticks.on_every_request
                || (ticks.on_saturation && !self.children.values().any(Child::is_idle))
            {
                self.request_tick();
            }
        }
    }

    fn on_finish(&mut self, pid: Pid, req: usize) {
        let now = self.now;
        let Some(c) = self.children.get_mut(&pid) else {
            return;
        };
        if c.current != Some(req) {
            return; // KILLed meanwhile
        }
        c.current = None;
        c.request_start = None;
        c.requests += 1;
        c.heartbeat = now;
        c.idle_since = now;
        let limit_reached = c.max_requests.is_some_and(|m| c.requests >= m);
        let leave = c.leaving || limit_reached;
        c.leaving |= limit_reached;
        self.report.requests[req].finished = Some(now);
        self.report.completed += 1;
        self.report.last_finish = Some(now);
        if self.config.ticks.on_every_request {
            self.request_tick();
        }
        if leave {
            self.child_exits(pid, ExitStatus::Exited(0));
        } else {
            self.dispatch();
        }
        self.check_done();
    }

    fn on_child_signal(&mut self, pid: Pid, signal: Signal) {
        let Some(c) = self.children.get_mut(&pid) else {
            return;
        };
        if c.life == Life::Gone {
            return;
        }
        match signal {
            Signal::Term => {
                c.leaving = true;
                if c.current.is_none() {
                    self.child_exits(pid, ExitStatus::Exited(0));
                }
            }
            Signal::Kill => {
                if let Some(req) = c.current.take() {
                    self.report.requests[req].dropped = true;
                    self.report.dropped += 1;
                }
                c.leaving = true;
                self.child_exits(pid, ExitStatus::Signaled(9));
                self.check_done();
            }
            _ => {} // USR1 (reopen logs) and the rest change nothing here
        }
    }

    fn child_exits(&mut self, pid: Pid, status: ExitStatus) {
        if let Some(c) = self.children.get_mut(&pid) {
            c.life = Life::Gone;
            c.current = None;
            c.request_start = None;
            c.heartbeat = self.now;
        }
        self.push_inbox(Inbox::Exited {
            pid,
            status,
            read: false,
        });
    }

    fn check_done(&mut self) {
        if self.done_at.is_none()
            && self.next_arrival == self.workload.len()
            && self.report.unfinished() == 0
        {
            self.done_at = Some(self.now);
        }
    }

    // ----- the parent -----

    fn push_inbox(&mut self, item: Inbox) {
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

    fn request_tick(&mut self) {
        if !self.tick_queued {
            self.tick_queued = true;
            self.push_inbox(Inbox::Tick);
        }
    }

    /// Handles the inbox in order while the parent is free at the current time.
    fn parent_run(&mut self) {
        if self.stopped || self.inbox.is_empty() {
            return;
        }
        if self.parent_free_at > self.now {
            self.wake_scheduled = true;
            self.schedule(self.parent_free_at, Ev::ParentWake);
            return;
        }
        self.report.wakeups += 1;
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
            Inbox::Start => self.drain(pc),
            Inbox::Ready(pid) => {
                self.machine.handle(*pc, Event::ChildReady { pid });
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
                    self.report.exits += 1;
                    self.machine.handle(*pc, Event::ChildExited { pid, status });
                    self.drain(pc);
                }
            }
            Inbox::Tick | Inbox::FollowTick => self.tick(pc),
            Inbox::Timer { read } => {
                if ticks.on_timeout && !read {
                    self.tick(pc);
                    self.inbox.push_front(Inbox::Timer { read: true });
                } else {
                    self.machine.handle(*pc, Event::Timer);
                    self.drain(pc);
                }
            }
            Inbox::Signal(signal) => {
                self.machine.handle(*pc, Event::Signal(signal));
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
        self.report.ticks += 1;
        self.machine
            .handle(*pc, Event::Scoreboard(&self.scoreboard));
        self.drain(pc);
    }

    /// Carries out the machine's actions; forks advance the parent's clock `pc`.
    fn drain(&mut self, pc: &mut Time) {
        while let Some(action) = self.machine.poll_action() {
            match action {
                Action::Spawn {
                    slot, max_requests, ..
                } => {
                    *pc += self.config.fork_cost;
                    let pid = Pid(self.next_pid);
                    self.next_pid += 1;
                    self.report.spawns += 1;
                    self.schedule(
                        *pc,
                        Ev::Forked {
                            slot,
                            pid,
                            max_requests,
                        },
                    );
                    self.machine.handle(*pc, Event::ChildSpawned { slot, pid });
                }
                Action::Signal { pid, signal, .. } => {
                    match signal {
                        Signal::Term => self.report.retirements += 1,
                        Signal::Kill => self.report.kills += 1,
                        _ => {}
                    }
                    self.schedule(*pc, Ev::ToChild(pid, signal));
                }
                Action::RunHook(hook) => {
                    self.machine.handle(
                        *pc,
                        Event::HookFinished {
                            hook: hook.kind(),
                            ok: true,
                        },
                    );
                }
                Action::Log { level, message } => {
                    if self.config.keep_logs {
                        self.report.logs.push(LogRecord {
                            at: *pc,
                            level,
                            message,
                        });
                    }
                }
                Action::Exit { code } => {
                    self.report.exit = Some((*pc, code));
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

    // ----- measurements -----

    fn sample(&self) -> Sample {
        let mut s = Sample {
            at: self.now,
            queue: self.queue.len(),
            ..Sample::default()
        };
        for c in self.children.values() {
            match c.life {
                Life::Gone => continue,
                _ if c.leaving => s.retiring += 1,
                Life::Starting => s.starting += 1,
                Life::Ready if c.current.is_some() => s.busy += 1,
                Life::Ready => s.idle += 1,
            }
        }
        s.alive = s.starting + s.idle + s.busy + s.retiring;
        s
    }

    fn observe(&mut self) {
        let s = self.sample();
        let r = &mut self.report;
        r.peak_children = r.peak_children.max(s.alive);
        r.peak_queue = r.peak_queue.max(s.queue);
        r.ended_at = self.now;
        if self.config.sample_every.is_some() {
            return;
        }
        let same = |a: &Sample, b: &Sample| Sample { at: b.at, ..*a } == *b;
        match r.samples.last() {
            Some(last) if same(last, &s) => {}
            Some(last) if last.at == s.at => {
                r.samples.pop();
                if !r.samples.last().is_some_and(|prev| same(prev, &s)) {
                    r.samples.push(s);
                }
            }
            _ => r.samples.push(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Options;

    fn machine(prefork: usize) -> Machine {
        Machine::new(Options {
            prefork,
            max_children: 20,
            ..Options::default()
        })
        .unwrap()
    }

    #[test]
    fn forks_are_serial_and_children_boot_after_their_fork() {
        let mut sim = Sim::new(machine(3), Workload::empty());
        let r = sim.run_until(Time::from_millis(10));
        let at = |us: u64| *r.sample_at(Time::from_micros(us)).unwrap();
        assert_eq!((at(500).starting, at(500).alive), (1, 1));
        assert_eq!((at(1_000).starting, at(1_000).alive), (2, 2));
        assert_eq!((at(1_500).starting, at(1_500).idle), (2, 1));
        assert_eq!(at(2_500).idle, 3);
        assert_eq!(r.spawns, 3);
        assert_eq!(sim.machine().state(), crate::State::Serving);
    }

    #[test]
    fn an_idle_quiet_pool_never_wakes_the_parent() {
        let mut sim = Sim::new(machine(3), Workload::empty());
        // Start-up, and the deferred STATUS notification (status_interval, 1 s).
        sim.run_until(Time::from_millis(5_000));
        let (ticks, wakeups) = (sim.report().ticks, sim.report().wakeups);
        sim.run_until(Time::from_millis(1_000_000));
        assert_eq!((sim.report().ticks, sim.report().wakeups), (ticks, wakeups));
        assert_eq!(sim.machine().poll_timeout(), None);
    }

    #[test]
    fn requests_tick_only_when_configured() {
        // One request at a time on a pool of three: nothing saturates.
        let work = Workload::from_requests(
            (0..10).map(|i| (Time::from_millis(100 + 10 * i), Duration::from_millis(1))),
        );
        let quiet = Sim::new(machine(3), work.clone())
            .run_to_completion(Duration::ZERO)
            .clone();
        let startup_ticks = 3; // one per child becoming ready
        assert_eq!(quiet.ticks, startup_ticks);
        assert_eq!(quiet.completed, 10);
        let config = SimConfig {
            ticks: Ticks {
                on_every_request: true,
                ..Ticks::default()
            },
            ..SimConfig::default()
        };
        let chatty = Sim::with_config(machine(3), work, config)
            .run_to_completion(Duration::ZERO)
            .clone();
        assert_eq!(chatty.ticks, startup_ticks + 20);
    }

    #[test]
    fn saturation_ticks_carry_the_backlog() {
        let work = Workload::burst(5, Time::from_millis(100), Duration::from_millis(50));
        let mut sim = Sim::new(machine(1), work);
        let r = sim.run_to_completion(Duration::ZERO);
        assert_eq!(r.completed, 5);
        assert!(r.peak_children >= 5, "grew on the reported backlog");
        assert!(r.wait_max().unwrap() < Duration::from_millis(10));
    }

    #[test]
    fn fixed_interval_sampling() {
        let config = SimConfig {
            sample_every: Some(Duration::from_millis(10)),
            ..SimConfig::default()
        };
        let mut sim = Sim::with_config(machine(2), Workload::empty(), config);
        let r = sim.run_until(Time::from_millis(95));
        assert_eq!(r.samples.len(), 10);
        assert!(r
            .samples
            .iter()
            .enumerate()
            .all(|(i, s)| s.at == Time::from_millis(10 * i as u64)));
        assert_eq!(r.samples[9].idle, 2);
    }
}
