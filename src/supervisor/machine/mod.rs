//! The supervisor state machine: pure, deterministic, sans-IO.
//!
//! Split by concern, the way quinn-proto splits its `connection/`:
//!
//! - this file: [`Machine`], its accessors, and the calling protocol (`handle`,
//!   `poll_action`, `poll_timeout`), with the step run after every event;
//! - `builder`: [`MachineBuilder`], the policies and the runtime's timers;
//! - `pool`: the children, one per scoreboard slot, their pid index and their
//!   [`Counts`], kept in one place;
//! - `phase`: the states with their data, and the checked transitions;
//! - `events`: what each event does;
//! - `scaling`: spawning, retiring, and asking the scaling policy;
//! - `reload`: rolling the children over to a new generation;
//! - `shutdown`: stopping the children, KILLing stragglers, exiting;
//! - `health`: crashes, the crash-loop backoff and its log;
//! - `child_timers`: the per-child pass (KILL after TERM, start and busy
//!   timeouts, request and memory limits, health);
//! - `periodic`: the machine-wide timers (busy refresh, change checks, STATUS,
//!   disconnect checks, watchdog pings);
//! - `timer_table`: every timer in one table, whose earliest entry is the next
//!   wake-up;
//! - `totals`: the cumulative counters ([`Totals`]) the metrics show.

mod builder;
mod child_timers;
mod events;
mod health;
mod periodic;
mod phase;
mod pool;
mod reload;
mod scaling;
mod shutdown;
#[cfg(test)]
mod tests;
mod timer_table;
mod totals;
mod upgrade;

pub use builder::MachineBuilder;
pub use health::CRASH_REPORT_EVERY;
pub use pool::Counts;
pub use totals::{ExitCause, Exits, Totals};
pub use upgrade::{Handoff, ROLLBACK_CRASHES};

use crate::policy::{Disconnect, DisconnectPolicy, Pid, ReloadPolicy, ScalingPolicy, Time};
use crate::supervisor::action::{Action, Level};
use crate::supervisor::config::{ConfigError, Options};
use crate::supervisor::event::Event;
use crate::supervisor::rng::SplitMix64;
use crate::supervisor::transitions::State;
use health::Streak;
use phase::Phase;
use pool::Pool;
use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;
use timer_table::TimerTable;
use upgrade::HandedRollout;

/// The supervisor: a deterministic state machine with no I/O.
///
/// Calling order, as in quinn-proto or str0m:
/// 1. Feed each event with [`handle`](Machine::handle)`(now, event)`.
/// 2. Drain [`poll_action`](Machine::poll_action) until `None` and carry each action
///    out in order (reporting spawns with [`Event::ChildSpawned`]).
/// 3. Sleep until [`poll_timeout`](Machine::poll_timeout) or the next event, and feed
///    [`Event::Timer`] (or a fresh [`Event::Scoreboard`]) once that time has come.
///
/// The machine reads no clock (time is the `now` you pass; it never goes backwards:
/// an earlier `now` counts as the latest seen), makes no system call, starts no thread
/// and draws randomness only from a generator seeded by [`Options::seed`]: the same
/// events at the same times always give the same actions. No event, in any state,
/// makes it panic.
///
/// ```
/// use preforkd::{Action, Event, Machine, Options, Time, State};
/// let mut m = Machine::new(Options { prefork: 2, ..Options::default() }).unwrap();
/// assert!(matches!(m.poll_action(), Some(Action::RunHook(_)))); // after_init
/// m.handle(Time::ZERO, Event::HookFinished { hook: preforkd::HookKind::AfterInit, ok: true });
/// let spawns: Vec<_> = std::iter::from_fn(|| m.poll_action())
///     .filter(|a| matches!(a, Action::Spawn { .. }))
///     .collect();
/// assert_eq!(spawns.len(), 2);
/// assert_eq!(m.state(), State::Spawning);
/// ```
#[derive(Debug)]
pub struct Machine {
    opts: Options,
    scaling: Box<dyn ScalingPolicy>,
    reload: Box<dyn ReloadPolicy>,
    disconnect: Box<dyn DisconnectPolicy>,
    phase: Phase,
    pool: Pool,
    /// The generation new children get.
    generation: u64,
    rng: SplitMix64,
    actions: VecDeque<Action>,
    now: Time,
    /// Every timer; the earliest is `poll_timeout`'s answer.
    timers: TimerTable,
    /// Consecutive crashes (early exits, failed forks); drives the crash-loop backoff.
    crash_streak: u32,
    /// Said once that a fresh child is already above `max_child_memory`.
    memory_warned: bool,
    /// When the streak began and what of it was logged.
    streak: Streak,
    /// Spawns this step may make despite the backoff: one per healthy child that
    /// died (a kill spree is no crash loop). Cleared after every step.
    spawn_credit: usize,
    /// The listen backlog at the last scoreboard reading, if known.
    backlog: Option<usize>,
    /// Disconnects already reported, so a lingering one is reported once.
    disconnects_seen: BTreeSet<Disconnect>,
    /// The last STATUS sent: when, and the counts it told.
    last_status: Option<(Time, Counts)>,
    last_min_serving: Option<usize>,
    /// The rollout under way in the image that handed its children over, if
    /// one was (its target and base): the adopting image's rollout goes on from it.
    adopted_rollout: Option<HandedRollout>,
    /// How often to ask for a look at the children's connections while one is
    /// busy; `None`: disconnects are not watched.
    disconnect_check_every: Option<Duration>,
    /// How often to ping the service manager's watchdog; `None`: no watchdog.
    watchdog_interval: Option<Duration>,
    /// Where an in-place upgrade is.
    upgrade: upgrade::Upgrade,
    /// The scaling policy's quiet minimum as configured (before TTIN/TTOU): the
    /// operator's adjustment is the difference, handed over in an upgrade.
    base_quiet: usize,
    /// The children were adopted from a previous image: `Some(true)` while the
    /// way back is open (the previous image is there and the new code is not
    /// proven yet).
    adopting: Option<bool>,
    /// The adopted children came back from a new image that failed.
    returned: bool,
    /// The cumulative counters (see [`Totals`]).
    totals: Totals,
}

impl Machine {
    /// A machine with the default policies built from `opts`.
    pub fn new(opts: Options) -> Result<Machine, ConfigError> {
        Machine::builder(opts).build()
    }

    /// A builder, to choose the policies.
    pub fn builder(opts: Options) -> MachineBuilder {
        MachineBuilder::new(opts)
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.phase.state()
    }

    /// The options in force.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// The scaling policy in use.
    pub fn scaling_policy(&self) -> &dyn ScalingPolicy {
        &*self.scaling
    }

    /// The generation new children get.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The fewest ready children the current reload keeps serving, or once it is
    /// over, the last one did; `None` before the first reload.
    pub fn min_serving(&self) -> Option<usize> {
        self.last_min_serving
    }

    /// Consecutive crashes so far (0: none): early exits and failed forks since the
    /// last child that proved healthy. Drives the crash-loop backoff.
    pub fn crash_streak(&self) -> u32 {
        self.crash_streak
    }

    /// The exit code, once [`State::Stopped`].
    pub fn exit_code(&self) -> Option<i32> {
        match self.phase {
            Phase::Stopped { code } => Some(code),
            _ => None,
        }
    }

    /// The pool's counts after the last event.
    pub fn counts(&self) -> Counts {
        self.pool.counts()
    }

    /// Whether the machine waits to hear of the first child to get busy: disconnects
    /// are watched ([`MachineBuilder::disconnect_check_every`]) and no child is
    /// known to be busy, so no [`Action::CheckDisconnects`] is scheduled. The
    /// machine learns of busy children from [`Event::Scoreboard`]; a runtime that
    /// can be woken by the first child that gets busy asks for it now, and if a
    /// child turns out to be busy already, feeds a fresh scoreboard.
    pub fn awaits_first_busy(&self) -> bool {
        self.disconnect_check_every.is_some()
            && self.pool.in_request() == 0
            && !matches!(self.phase, Phase::Init | Phase::Stopped { .. })
    }

    /// The live children's pids, in slot order (children still being forked have none).
    pub fn pids(&self) -> impl Iterator<Item = Pid> + '_ {
        self.pool.children().filter_map(|c| c.pid)
    }

    /// The generation of child `pid`, if it is live.
    pub fn generation_of(&self, pid: Pid) -> Option<u64> {
        self.pool.by_pid(pid).map(|c| c.generation)
    }

    /// The next action to carry out, if any.
    #[must_use = "actions must be carried out"]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When the machine next has something to do, if nothing else happens first:
    /// feed [`Event::Timer`] then. `None`: nothing is scheduled.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.next_wake_up()
    }

    /// Feeds one event.
    pub fn handle(&mut self, now: Time, event: Event<'_>) {
        self.now = self.now.max(now);
        if matches!(self.phase, Phase::Stopped { .. }) {
            return;
        }
        self.on_event(event);
        self.step();
    }

    // ----- the step after every event -----

    fn step(&mut self) {
        match self.phase {
            Phase::Init | Phase::Stopped { .. } => {}
            Phase::ShuttingDown { .. } => self.step_shutdown(),
            Phase::Spawning { .. } | Phase::Serving | Phase::Reloading { .. } => {
                self.step_serving()
            }
        }
        if !matches!(self.phase, Phase::Stopped { .. }) {
            self.check_disconnects_while_busy();
            self.ping_watchdog();
        }
        debug_assert_eq!(self.pool.kept(), self.pool.recount(), "counts drifted");
    }

    /// The step of the serving phases (Spawning, Serving, Reloading), in order.
    fn step_serving(&mut self) {
        self.run_child_timers();
        if let Phase::Reloading { .. } = self.phase {
            self.step_reload();
        }
        self.watch_adoption();
        let spawn_goal = self.fill_initial_pool();
        self.scale();
        self.complete_phase(spawn_goal);
        self.check_for_changes();
        self.notify_status();
        self.arm_serving_timers();
        // Credit is for the replacements of this event only.
        self.spawn_credit = 0;
    }

    // ----- helpers -----

    fn push(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    fn log(&mut self, level: Level, message: String) {
        self.push(Action::Log { level, message });
    }
}
