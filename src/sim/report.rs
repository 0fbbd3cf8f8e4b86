//! What a simulation measured.

use crate::{Level, Pid, Time};
use std::time::Duration;

/// The pool and the queue at one instant, as the simulated children really are
/// (not as the supervisor last saw them through the scoreboard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// When.
    pub at: Time,
    /// Live children: `starting + idle + busy + retiring`.
    pub alive: usize,
    /// Forked, not ready yet.
    pub starting: usize,
    /// Ready and waiting for a request.
    pub idle: usize,
    /// Serving a request.
    pub busy: usize,
    /// Told to exit (TERM or KILL), or leaving after their request limit; a TERMed
    /// child still finishing its request counts here, not in `busy`.
    pub retiring: usize,
    /// Requests waiting in the listen queue.
    pub queue: usize,
}

/// What became of one request of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRecord {
    /// When it arrived in the queue.
    pub arrival: Time,
    /// How long it holds a child.
    pub service: Duration,
    /// When a child took it, if one did.
    pub started: Option<Time>,
    /// When it completed, if it did.
    pub finished: Option<Time>,
    /// The child that took it.
    pub pid: Option<Pid>,
    /// Its child was KILLed while serving it.
    pub dropped: bool,
}

impl RequestRecord {
    /// How long it waited in the queue, if a child took it.
    pub fn wait(&self) -> Option<Duration> {
        self.started.map(|s| s - self.arrival)
    }
}

/// What the supervisor did to one child: the marks on a plot of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolEventKind {
    /// A child was forked (counted in [`SimReport::spawns`]).
    Spawn,
    /// A child was sent TERM (counted in [`SimReport::retirements`]).
    Retire,
    /// A child was sent KILL (counted in [`SimReport::kills`]).
    Kill,
    /// A child exited and was reaped (counted in [`SimReport::exits`]).
    Exit,
}

/// One [`PoolEventKind`], when the simulated parent did it (or, for an exit,
/// reaped it), and to which child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolEvent {
    /// When.
    pub at: Time,
    /// What.
    pub kind: PoolEventKind,
    /// The child.
    pub pid: Pid,
}

/// One log record the supervisor wrote ([`Action::Log`](crate::Action::Log)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// When (the supervisor's clock).
    pub at: Time,
    /// How loud.
    pub level: Level,
    /// The message.
    pub message: String,
}

/// Everything a [`Sim`](super::Sim) measured so far: returned by its runs, and
/// readable with [`Sim::report`](super::Sim::report) at any time.
///
/// Two runs of the same machine, configuration, workload and scenario give equal
/// reports (`==`), logs included.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SimReport {
    /// The time series. With [`SimConfig::sample_every`](super::SimConfig::sample_every)
    /// unset (the default), one sample per instant at which anything in it changed,
    /// holding the state after the last change at that instant, so a value holds
    /// until the next sample; otherwise one sample per interval, starting at zero.
    pub samples: Vec<Sample>,
    /// One record per request of the workload, in arrival order.
    pub requests: Vec<RequestRecord>,
    /// Children forked (spawn actions carried out).
    pub spawns: u64,
    /// TERM signals the supervisor sent to children, for any reason (scale-down,
    /// reload, request limit, shutdown...).
    pub retirements: u64,
    /// KILL signals the supervisor sent to children.
    pub kills: u64,
    /// Children that exited (and were reaped).
    pub exits: u64,
    /// Every spawn, TERM, KILL and exit, in the order they happened.
    pub events: Vec<PoolEvent>,
    /// Requests that completed.
    pub completed: u64,
    /// Requests lost because their child was KILLed while serving them.
    pub dropped: u64,
    /// When the last request completed.
    pub last_finish: Option<Time>,
    /// The most live children at any instant (retiring ones included).
    pub peak_children: usize,
    /// The longest the listen queue got.
    pub peak_queue: usize,
    /// Scoreboard ticks the supervisor received.
    pub ticks: u64,
    /// Times the simulated parent woke up to handle something (a tick, a timer, a
    /// child's readiness or exit, a signal); an idle pool should not wake it.
    pub wakeups: u64,
    /// The supervisor's exit: when, and its exit code.
    pub exit: Option<(Time, i32)>,
    /// The supervisor's log, when [`SimConfig::keep_logs`](super::SimConfig::keep_logs)
    /// is set.
    pub logs: Vec<LogRecord>,
    /// The simulated time the run has reached.
    pub ended_at: Time,
}

impl SimReport {
    /// The `q`-quantile (`0.0..=1.0`, nearest rank) of the queue waits of the
    /// requests a child took; `None` if none was taken.
    pub fn wait_quantile(&self, q: f64) -> Option<Duration> {
        let mut waits: Vec<Duration> = self.requests.iter().filter_map(|r| r.wait()).collect();
        if waits.is_empty() {
            return None;
        }
        waits.sort_unstable();
        let n = waits.len();
        let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
        Some(waits[rank.clamp(1, n) - 1])
    }

    /// The median queue wait.
    pub fn wait_p50(&self) -> Option<Duration> {
        self.wait_quantile(0.5)
    }

    /// The 99th percentile queue wait.
    pub fn wait_p99(&self) -> Option<Duration> {
        self.wait_quantile(0.99)
    }

    /// The longest queue wait.
    pub fn wait_max(&self) -> Option<Duration> {
        self.requests.iter().filter_map(|r| r.wait()).max()
    }

    /// The state at the end of the run (the last sample), if any.
    pub fn last_sample(&self) -> Option<&Sample> {
        self.samples.last()
    }

    /// The share of the run's time (`0.0..=1.0`) during which the pool met `pred`:
    /// each sample counts for as long as it held, until the next sample or the end
    /// of the run ([`ended_at`](Self::ended_at)), over the time from the first
    /// sample to the end. `None` if no time has passed.
    ///
    /// ```
    /// use preforkd::sim::{Sim, Workload};
    /// use preforkd::{Machine, Options, Time};
    /// let mut sim = Sim::new(Machine::new(Options::default())?, Workload::empty());
    /// let report = sim.run_until(Time::from_secs(10));
    /// // The three children took 2.5 ms to fork and start: idle all the rest.
    /// assert!(report.time_share(|s| s.idle == 3).unwrap() > 0.999);
    /// # Ok::<(), preforkd::ConfigError>(())
    /// ```
    pub fn time_share(&self, pred: impl Fn(&Sample) -> bool) -> Option<f64> {
        let first = self.samples.first()?.at;
        let total = self.ended_at.saturating_since(first);
        if total.is_zero() {
            return None;
        }
        let met: Duration = self
            .held()
            .filter(|(s, _)| pred(s))
            .map(|(_, held)| held)
            .sum();
        Some(met.as_secs_f64() / total.as_secs_f64())
    }

    /// Each sample with how long it held: until the next one, or the end of the
    /// run.
    fn held(&self) -> impl Iterator<Item = (&Sample, Duration)> + '_ {
        let ends = self
            .samples
            .iter()
            .skip(1)
            .map(|s| s.at)
            .chain([self.ended_at]);
        self.samples
            .iter()
            .zip(ends)
            .map(|(s, end)| (s, end.saturating_since(s.at)))
    }

    /// The pool's cost: live children (retiring ones included) integrated over
    /// the run, from the first sample to [`ended_at`](Self::ended_at), in
    /// child-seconds. A pool of 3 idle for 10 s costs 30.
    ///
    /// ```
    /// use preforkd::sim::{Sim, Workload};
    /// use preforkd::{Machine, Options, Time};
    /// let mut sim = Sim::new(Machine::new(Options::default())?, Workload::empty());
    /// let report = sim.run_until(Time::from_secs(10));
    /// assert!((report.child_seconds() - 30.0).abs() < 0.01);
    /// # Ok::<(), preforkd::ConfigError>(())
    /// ```
    pub fn child_seconds(&self) -> f64 {
        self.held()
            .map(|(s, held)| s.alive as f64 * held.as_secs_f64())
            .sum()
    }

    /// The state at time `t`: the last sample at or before it.
    pub fn sample_at(&self, t: Time) -> Option<&Sample> {
        let i = self.samples.partition_point(|s| s.at <= t);
        i.checked_sub(1).map(|i| &self.samples[i])
    }

    /// Requests neither completed nor dropped (still queued, in service, or never
    /// arrived before the run stopped).
    pub fn unfinished(&self) -> usize {
        self.requests.len() - (self.completed + self.dropped) as usize
    }
}
