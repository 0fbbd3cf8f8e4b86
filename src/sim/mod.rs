//! A deterministic simulator to model-test a [`ScalingPolicy`](crate::policy::ScalingPolicy)
//! (or any configuration of the [`Machine`]) against a workload, with a fake clock
//! and fake children.
//!
//! The simulator drives a real [`Machine`] with the process runtime's own code: the
//! same action dispatch and ordering rules (the crate's internal driver: exits
//! reaped with the scoreboard read first, the stop flag before the first shutdown
//! TERM, the busy watch), with the simulated world as the effects. It plays
//! everything else:
//!
//! - **The parent** is single-threaded: it forks serially, each fork taking
//!   [`SimConfig::fork_cost`], and handles nothing else while forking (events
//!   wait in order). It reports each fork with [`Event::ChildSpawned`](crate::Event::ChildSpawned), runs hooks
//!   at once (they succeed), and feeds [`Event::Timer`](crate::Event::Timer) at
//!   [`Machine::poll_timeout`]. Files never change and no client hangs up.
//! - **Children** become ready [`SimConfig::boot_latency`] after their fork. A ready,
//!   idle child takes the next request from the queue at once (the one idle the
//!   longest first, as the kernel wakes blocked `accept` callers in order) and
//!   holds it for its service time. TERM: the child finishes its request, if
//!   any, then exits with code 0; KILL: it exits at once, and its request is
//!   dropped. A child that reaches its request limit
//!   ([`Action::Spawn`](crate::Action::Spawn)'s `max_requests`) marks its slot retiring and exits.
//! - **The scoreboard**: the parent reads it only on the [`Ticks`] triggers: by
//!   default when a child takes the last idle slot, when a child becomes ready,
//!   when the machine's timeout fires and (always) when a child exits, never on every
//!   request (an idle parent sleeps). With [`SimConfig::report_backlog`] the
//!   reading includes the queue length.
//! - **The workload** ([`Workload`]) is replayed into a FIFO listen queue.
//!
//! Everything is deterministic: no clock, no thread, randomness only from seeded
//! [`SplitMix64`](crate::SplitMix64) generators; events at the same instant run in
//! the order they were scheduled. The same machine, configuration, workload and
//! scenario always give the same [`SimReport`].
//!
//! With [`SimConfig::check_invariants`], the oracle's invariants of every step are
//! checked as the run goes ([`Monitor`](crate::oracle::Monitor)).
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
//! // The report is a snapshot: the simulator is free to look at and run on.
//! assert_eq!(sim.machine().counts().alive(), report.last_sample().unwrap().alive);
//! // The pool over time, as the children really were.
//! for s in &report.samples {
//!     println!("{} alive {} busy {} queue {}", s.at, s.alive, s.busy, s.queue);
//! }
//! # Ok::<(), preforkd::ConfigError>(())
//! ```

mod children;
mod parent;
pub mod plot;
mod report;
mod spec;
#[cfg(test)]
mod tests;
mod workload;

pub use report::{LogRecord, PoolEvent, PoolEventKind, RequestRecord, Sample, SimReport};
pub use spec::{SpecError, WorkloadSpec, MAX_SPEC_REQUESTS};
pub use workload::{Request, Service, Workload};

use children::{Child, Life};
use parent::Inbox;

use crate::{ChildSignal, Machine, Pid, Signal, Time};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// When the simulated parent reads the scoreboard and hands it to the machine
/// ([`Event::Scoreboard`](crate::Event::Scoreboard)). The defaults model the runtime: it wakes on the
/// events below, not on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticks {
    /// A child took the last idle slot: every ready child is busy (true).
    pub on_saturation: bool,
    /// A child became ready (true).
    pub on_ready: bool,
    /// The machine's [`poll_timeout`](Machine::poll_timeout) fired (true).
    pub on_timeout: bool,
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
    /// Check the oracle's invariants of every step while running (the
    /// [`Monitor`](crate::oracle::Monitor)'s: bounds, signals, pids, reloads, exit); the first one broken
    /// panics, naming it, like a failed assertion (false).
    pub check_invariants: bool,
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
            check_invariants: false,
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
    ToChild(Pid, ChildSignal),
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

/// A simulation: one [`Machine`], fake children, a [`Workload`] and optionally
/// signals sent at given times. See the [module docs](self) for the model.
///
/// Run it with [`run_until`](Sim::run_until) or
/// [`run_to_completion`](Sim::run_to_completion) (in steps if you like): each
/// returns the measurements so far as a snapshot you own, so you can keep it while
/// you inspect the supervisor with [`machine`](Sim::machine) and run on.
#[derive(Debug)]
pub struct Sim {
    /// The machine and its driving state; lent out while the parent drives it.
    core: Option<parent::Core>,
    /// The parent's clock while it handles an item (forks advance it).
    pc: Time,
    /// Exits waiting to be reaped.
    reaped: VecDeque<(Pid, crate::ExitStatus)>,
    /// The machine awaits its first busy child: the next one wakes the parent.
    watch_busy: bool,
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
    /// Shared with the snapshots handed out, copied on write only while one is
    /// still held: a snapshot costs nothing to take.
    report: Arc<SimReport>,
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
        let driven = parent::Checked::new(machine, config.check_invariants);
        let mut sim = Sim {
            core: Some(parent::Core::new(driven, slots)),
            pc: Time::ZERO,
            reaped: VecDeque::new(),
            watch_busy: false,
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
            report: Arc::new(SimReport {
                requests,
                ..SimReport::default()
            }),
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
    /// supervisor exits), then sets the clock to `t`. Returns the measurements so
    /// far: a snapshot, which running on does not change.
    ///
    /// # Panics
    /// With [`SimConfig::check_invariants`], at the first broken invariant.
    pub fn run_until(&mut self, t: Time) -> Arc<SimReport> {
        self.advance_until(t);
        Arc::clone(&self.report)
    }

    fn advance_until(&mut self, t: Time) {
        while !self.stopped {
            match self.next_time() {
                Some(next) if next <= t => self.step(),
                _ => break,
            }
        }
        if !self.stopped {
            self.now = self.now.max(t);
        }
        let now = self.now;
        self.rep().ended_at = now;
    }

    /// Runs until every request of the workload has completed or been dropped, then
    /// for `linger` more (to watch the pool shrink). Stops early if the supervisor
    /// exits or nothing is left to happen (a pool that cannot serve), and at
    /// [`SimConfig::time_limit`] at the latest; check
    /// [`SimReport::unfinished`]. Returns the measurements, as
    /// [`run_until`](Sim::run_until) does.
    ///
    /// # Panics
    /// With [`SimConfig::check_invariants`], at the first broken invariant.
    pub fn run_to_completion(&mut self, linger: Duration) -> Arc<SimReport> {
        let limit = self.config.time_limit;
        loop {
            if self.stopped {
                break;
            }
            if let Some(done) = self.done_at {
                self.advance_until((done + linger).min(limit));
                break;
            }
            match self.next_time() {
                Some(t) if t <= limit => self.step(),
                Some(_) => {
                    self.advance_until(limit);
                    break;
                }
                None => break,
            }
        }
        let now = self.now;
        self.rep().ended_at = now;
        Arc::clone(&self.report)
    }

    /// The measurements so far.
    pub fn report(&self) -> &SimReport {
        &self.report
    }

    /// The measurements, consuming the simulation (without a copy unless a
    /// snapshot of them is still held).
    pub fn into_report(self) -> SimReport {
        Arc::try_unwrap(self.report).unwrap_or_else(|shared| (*shared).clone())
    }

    /// The report, to update: copied first if a snapshot still shares it.
    fn rep(&mut self) -> &mut SimReport {
        Arc::make_mut(&mut self.report)
    }

    /// The supervisor, to inspect its state, counts and generations.
    pub fn machine(&self) -> &Machine {
        // Lent out only inside the simulated parent's turn, never across a call.
        &self
            .core
            .as_ref()
            .expect("the machine is back after each turn")
            .driven
            .machine
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
            } => self.child_forked(slot, pid, max_requests),
            Ev::Ready(pid) => self.child_ready(pid),
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
                self.rep().samples.push(s);
                if let Some(every) = self.config.sample_every {
                    self.schedule(now + every.max(Duration::from_micros(1)), Ev::SampleTick);
                }
            }
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
        let r = Arc::make_mut(&mut self.report);
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
