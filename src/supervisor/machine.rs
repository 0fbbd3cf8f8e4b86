//! The supervisor state machine: pure, deterministic, sans-IO.

use crate::policy::{
    CallHook, ChildView, Disconnect, DisconnectAction, DisconnectPolicy, Pid, PoolSnapshot,
    ReloadPlan, ReloadPolicy, ReloadTrigger, Rolling, Scale, ScalingPolicy, Time,
};
use crate::supervisor::action::{Action, ChildSignal, Hook, Level, Notify, SignalReason};
use crate::supervisor::config::{ConfigError, Options};
use crate::supervisor::event::{
    ConnState, Connection, Event, ExitStatus, HookKind, Scoreboard, Signal, SlotState,
};
use crate::supervisor::rng::SplitMix64;
use crate::supervisor::transitions::{is_legal, State};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// The state with its data: each variant holds exactly what is valid in it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Init,
    Spawning {
        /// Ready children needed before the pool counts as up.
        target: usize,
    },
    Serving,
    Reloading {
        /// The generation being rolled out; every child of an older one is retired.
        generation: u64,
        /// Ready children that must keep serving throughout.
        min_serving: usize,
        /// Children of the new generation to have when done.
        target: usize,
        /// Old children retired so far by this rollout.
        retired: usize,
    },
    ShuttingDown {
        /// QUIT or a second TERM: children are KILLed, not asked.
        immediate: bool,
        /// When stragglers get KILLed.
        deadline: Time,
        /// Set once stragglers were KILLed: when the parent stops waiting for them.
        give_up_at: Option<Time>,
    },
    Stopped {
        code: i32,
    },
}

impl Phase {
    fn state(&self) -> State {
        match self {
            Phase::Init => State::Init,
            Phase::Spawning { .. } => State::Spawning,
            Phase::Serving => State::Serving,
            Phase::Reloading { .. } => State::Reloading,
            Phase::ShuttingDown { .. } => State::ShuttingDown,
            Phase::Stopped { .. } => State::Stopped,
        }
    }
}

/// Why and since when a child is on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retire {
    at: Time,
    reason: SignalReason,
}

/// The bookkeeping of a crash streak, so the log says why once per streak.
#[derive(Debug, Clone, Copy, Default)]
struct Streak {
    /// When its first crash happened: children forked since then prove a fix.
    since: Time,
    /// When it was last reported.
    reported_at: Time,
    /// Crashes since that report.
    unreported: u32,
}

/// How often a crash loop's later crashes are summarised in the log (the first one
/// is logged with its reason; the end of the streak is logged too).
pub const CRASH_REPORT_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Child {
    /// None until the runtime reports the fork.
    pid: Option<Pid>,
    generation: u64,
    spawned_at: Time,
    ready_at: Option<Time>,
    /// Start of the request in hand, when busy.
    busy_since: Option<Time>,
    requests: u64,
    /// Resident set size at the last scoreboard reading, if measured.
    memory: Option<u64>,
    max_requests: Option<u64>,
    retire: Option<Retire>,
    killed: bool,
}

impl Child {
    fn is_ready(&self) -> bool {
        self.ready_at.is_some()
    }
    fn serving(&self) -> bool {
        self.is_ready() && self.retire.is_none()
    }
}

/// The pool's counts; children being retired are only in `retiring`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Forked (or being forked), not ready.
    pub starting: usize,
    /// Ready, idle.
    pub idle: usize,
    /// Ready, busy.
    pub busy: usize,
    /// On their way out.
    pub retiring: usize,
}

impl Counts {
    /// Every live child, retiring ones included.
    pub fn alive(&self) -> usize {
        self.starting + self.idle + self.busy + self.retiring
    }
    /// Ready children not retiring: the ones that serve.
    pub fn serving(&self) -> usize {
        self.idle + self.busy
    }
}

/// Builds a [`Machine`] with the policies of your choice.
///
/// ```
/// use preforkd::{Machine, Options, policy::ApacheLike};
/// let m = Machine::builder(Options::default())
///     .scaling(ApacheLike::default())
///     .build()
///     .unwrap();
/// assert_eq!(m.state(), preforkd::State::Init);
/// ```
#[derive(Debug)]
pub struct MachineBuilder {
    opts: Options,
    scaling: Option<Box<dyn ScalingPolicy>>,
    reload: Option<Box<dyn ReloadPolicy>>,
    disconnect: Option<Box<dyn DisconnectPolicy>>,
}

impl MachineBuilder {
    /// Use this scaling policy instead of the default built from `prefork` and
    /// `max_children` ([`Options::default_scaling`]); `prefork` is then not read,
    /// nor checked.
    pub fn scaling(mut self, p: impl ScalingPolicy + 'static) -> Self {
        self.scaling = Some(Box::new(p));
        self
    }

    /// Use this boxed scaling policy (for example one built by a
    /// [`Registry`](crate::policy::Registry)).
    pub fn scaling_boxed(mut self, p: Box<dyn ScalingPolicy>) -> Self {
        self.scaling = Some(p);
        self
    }

    /// Use this reload policy instead of [`Rolling`] with `auto_reload_check_every`.
    pub fn reload(mut self, p: impl ReloadPolicy + 'static) -> Self {
        self.reload = Some(Box::new(p));
        self
    }

    /// Use this boxed reload policy.
    pub fn reload_boxed(mut self, p: Box<dyn ReloadPolicy>) -> Self {
        self.reload = Some(p);
        self
    }

    /// Use this disconnect policy instead of [`CallHook`].
    pub fn disconnect(mut self, p: impl DisconnectPolicy + 'static) -> Self {
        self.disconnect = Some(Box::new(p));
        self
    }

    /// Use this boxed disconnect policy.
    pub fn disconnect_boxed(mut self, p: Box<dyn DisconnectPolicy>) -> Self {
        self.disconnect = Some(p);
        self
    }

    /// Checks the options ([`Options::validate`]) and builds the machine, in
    /// [`State::Init`] with `after_init` as its first action. Without a scaling
    /// policy, builds the default one, which checks `prefork`
    /// ([`Options::default_scaling`]).
    pub fn build(self) -> Result<Machine, ConfigError> {
        let opts = self.opts;
        opts.validate()?;
        let scaling = match self.scaling {
            Some(p) => p,
            // `prefork` is this policy's setting: checked here, not for a custom one.
            None => Box::new(opts.default_scaling()?),
        };
        let reload = match self.reload {
            Some(p) => p,
            None => {
                let r = Rolling {
                    check_every: opts.auto_reload_check_every,
                    ..Rolling::default()
                };
                r.validate()
                    .map_err(|e| ConfigError::policy("auto_reload_check_every", e))?;
                Box::new(r)
            }
        };
        let disconnect = self.disconnect.unwrap_or_else(|| Box::new(CallHook));
        let mut actions = VecDeque::new();
        actions.push_back(Action::RunHook(Hook::AfterInit));
        Ok(Machine {
            rng: SplitMix64::new(opts.seed),
            slots: vec![None; opts.max_children],
            opts,
            scaling,
            reload,
            disconnect,
            phase: Phase::Init,
            by_pid: BTreeMap::new(),
            generation: 1,
            actions,
            now: Time::ZERO,
            crash_streak: 0,
            memory_warned: false,
            streak: Streak::default(),
            spawn_credit: 0,
            spawn_not_before: Time::ZERO,
            policy_recheck: None,
            next_reload_check: None,
            backlog: None,
            disconnects_seen: BTreeSet::new(),
            last_status: None,
            status_due: None,
            deadline: None,
            counts: Counts::default(),
            last_min_serving: None,
        })
    }
}

/// The supervisor: a deterministic state machine with no I/O.
///
/// Calling order, as in quinn-proto or str0m:
/// 1. Feed each event with [`handle`](Machine::handle)`(now, event)`.
/// 2. Drain [`poll_action`](Machine::poll_action) until `None` and carry each action
///    out in order (reporting spawns with [`Event::ChildSpawned`]).
/// 3. Sleep until [`poll_timeout`](Machine::poll_timeout) or the next event, and feed
///    [`Event::Timer`] if the deadline passed.
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
    /// One entry per scoreboard slot.
    slots: Vec<Option<Child>>,
    by_pid: BTreeMap<Pid, usize>,
    /// The generation new children get.
    generation: u64,
    rng: SplitMix64,
    actions: VecDeque<Action>,
    now: Time,
    /// Consecutive crashes (early exits, failed forks); drives the crash-loop backoff.
    crash_streak: u32,
    /// Said once that a fresh child is already above `max_child_memory`.
    memory_warned: bool,
    /// When the streak began and what of it was logged.
    streak: Streak,
    /// Spawns this step may make despite the backoff: one per healthy child that
    /// died (a kill spree is no crash loop). Cleared after every step.
    spawn_credit: usize,
    spawn_not_before: Time,
    policy_recheck: Option<Time>,
    next_reload_check: Option<Time>,
    backlog: Option<usize>,
    /// Disconnects already reported, so a lingering one is reported once.
    disconnects_seen: BTreeSet<Disconnect>,
    last_status: Option<(Time, Counts)>,
    status_due: Option<Time>,
    /// The next time something is due; `poll_timeout`'s answer.
    deadline: Option<Time>,
    counts: Counts,
    last_min_serving: Option<usize>,
}

impl Machine {
    /// A machine with the default policies built from `opts`.
    pub fn new(opts: Options) -> Result<Machine, ConfigError> {
        Machine::builder(opts).build()
    }

    /// A builder, to choose the policies.
    pub fn builder(opts: Options) -> MachineBuilder {
        MachineBuilder {
            opts,
            scaling: None,
            reload: None,
            disconnect: None,
        }
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
        self.counts
    }

    /// The live children's pids, in slot order (children still being forked have none).
    pub fn pids(&self) -> impl Iterator<Item = Pid> + '_ {
        self.slots.iter().flatten().filter_map(|c| c.pid)
    }

    /// The generation of child `pid`, if it is live.
    pub fn generation_of(&self, pid: Pid) -> Option<u64> {
        let slot = *self.by_pid.get(&pid)?;
        self.slots[slot].as_ref().map(|c| c.generation)
    }

    /// The next action to carry out, if any.
    #[must_use = "actions must be carried out"]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to feed [`Event::Timer`] if nothing else happens first; `None`: no deadline.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.deadline
    }

    /// Feeds one event.
    pub fn handle(&mut self, now: Time, event: Event<'_>) {
        self.now = self.now.max(now);
        if matches!(self.phase, Phase::Stopped { .. }) {
            return;
        }
        match event {
            Event::Signal(sig) => self.on_signal(sig),
            Event::HookFinished { hook, ok } => self.on_hook_finished(hook, ok),
            Event::ChildSpawned { slot, pid } => self.on_spawned(slot, pid),
            Event::SpawnFailed { slot } => self.on_spawn_failed(slot),
            Event::ChildReady { pid } => {
                let now = self.now;
                if let Some(c) = self.child_mut(pid) {
                    c.ready_at.get_or_insert(now);
                }
            }
            Event::ChildExited { pid, status } => self.on_exit(pid, status),
            Event::Scoreboard(sb) => self.on_scoreboard(sb),
            Event::Netstat(conns) => self.on_netstat(conns),
            Event::FilesChanged => self.on_reload_trigger(ReloadTrigger::FilesChanged),
            Event::Timer => {}
        }
        self.step();
    }

    // ----- events -----

    fn on_signal(&mut self, sig: Signal) {
        match sig {
            Signal::Term | Signal::Int => self.begin_shutdown(false, sig),
            Signal::Quit => self.begin_shutdown(true, sig),
            Signal::Hup => self.on_reload_trigger(ReloadTrigger::Signal),
            Signal::Usr1 => {
                self.push(Action::ReopenLogs);
                let pids: Vec<Pid> = self
                    .slots
                    .iter()
                    .flatten()
                    .filter(|c| !c.killed)
                    .filter_map(|c| c.pid)
                    .collect();
                for pid in pids {
                    self.push(Action::Signal {
                        pid,
                        signal: ChildSignal::Usr1,
                        reason: SignalReason::ReopenLogs,
                    });
                }
            }
            Signal::Usr2 => self.log(
                Level::Warning,
                "USR2 (re-exec handoff) is not supported yet; ignored".into(),
            ),
            Signal::Ttin | Signal::Ttou => {
                if self.accepts_work() {
                    let delta = if sig == Signal::Ttin { 1 } else { -1 };
                    self.scaling.adjust(delta);
                    self.log(
                        Level::Info,
                        format!("{}: scaling target adjusted by {delta}", sig.name()),
                    );
                } else {
                    self.log(
                        Level::Info,
                        format!("{} ignored while {}", sig.name(), self.state().name()),
                    );
                }
            }
            // The runtime reaps on CHLD and reports each exit; nothing to do here.
            Signal::Chld => {}
        }
    }

    fn on_hook_finished(&mut self, hook: HookKind, ok: bool) {
        if hook != HookKind::AfterInit || self.phase != Phase::Init {
            return;
        }
        if ok {
            let target = self.scaling.initial_children().min(self.opts.max_children);
            self.transition(Phase::Spawning { target });
            if let Some(every) = self.reload.check_every() {
                self.next_reload_check = Some(self.now + every);
            }
            self.log(Level::Info, format!("starting {target} children"));
        } else {
            self.log(Level::Error, "after_init failed; not starting".into());
            self.stop(1);
        }
    }

    fn on_spawned(&mut self, slot: usize, pid: Pid) {
        let fresh = matches!(self.slots.get(slot), Some(Some(c)) if c.pid.is_none());
        if !fresh || self.by_pid.contains_key(&pid) {
            self.log(
                Level::Error,
                format!(
                    "spawn report for slot {slot} (pid {pid}) matches no pending spawn; ignored"
                ),
            );
            return;
        }
        if let Some(c) = self.slots[slot].as_mut() {
            c.pid = Some(pid);
        }
        self.by_pid.insert(pid, slot);
        // A child forked while stopping is stopped at once.
        if let Phase::ShuttingDown {
            immediate,
            give_up_at,
            ..
        } = self.phase
        {
            self.stop_child(slot, immediate || give_up_at.is_some());
        }
    }

    fn on_spawn_failed(&mut self, slot: usize) {
        let pending = matches!(self.slots.get(slot), Some(Some(c)) if c.pid.is_none());
        if !pending {
            self.log(
                Level::Error,
                format!("spawn failure for slot {slot} matches no pending spawn; ignored"),
            );
            return;
        }
        self.slots[slot] = None;
        self.count_crash(format!("fork for slot {slot} failed"));
    }

    fn on_exit(&mut self, pid: Pid, status: ExitStatus) {
        let Some(slot) = self.by_pid.remove(&pid) else {
            self.log(
                Level::Debug,
                format!("reaped pid {pid} ({status}), not one of our children"),
            );
            return;
        };
        let Some(c) = self.slots[slot].take() else {
            return;
        };
        self.disconnects_seen.retain(|d| d.pid != pid);
        let uptime = self.now - c.spawned_at;
        let who = format!("child {pid} (slot {slot}, generation {})", c.generation);
        if let Some(r) = c.retire {
            let (level, why) = match r.reason {
                SignalReason::BusyTimeout => (Level::Warning, "stopped by the busy timeout"),
                SignalReason::StartTimeout => (Level::Warning, "stopped by the start timeout"),
                SignalReason::Disconnect => (Level::Info, "stopped after its client disconnected"),
                SignalReason::MaxRequests => (Level::Info, "recycled after its request limit"),
                SignalReason::Reload => (Level::Info, "retired by a reload"),
                SignalReason::ScaleDown => (Level::Info, "retired: too many idle"),
                SignalReason::MemoryLimit => (Level::Info, "retired over the memory limit"),
                _ => (Level::Info, "stopped"),
            };
            let killed = if c.killed { ", KILLed" } else { "" };
            // A child that left by itself (its slot said so) before it was healthy is
            // a main_loop that returns or fails at once: a crash, not a recycling.
            let self_quit = r.reason == SignalReason::MaxRequests && !self.is_healthy(&c);
            let why = if self_quit {
                "left by itself before serving"
            } else {
                why
            };
            let line = format!(
                "{who} {why}{killed}: {status} after {uptime:?} and {} requests",
                c.requests
            );
            if r.reason == SignalReason::StartTimeout || self_quit {
                // A child that cannot start is a crash: back off before the next.
                self.count_crash(line);
            } else {
                self.log(level, line);
            }
            return;
        }
        if matches!(self.phase, Phase::ShuttingDown { .. }) {
            self.log(Level::Info, format!("{who} exited: {status}"));
            return;
        }
        // A child that served but then failed by itself (a non-zero exit, a fault
        // signal) soon after its start is a crash loop one request at a time (a
        // poison request, a handler that dies after each answer): only a death
        // from outside (KILL, TERM, INT, HUP: a kill spree) or a clean exit keeps
        // the credit of having served.
        let failed_soon = uptime < self.opts.min_healthy_uptime && !ended_from_outside(status);
        if !self.is_healthy(&c) || failed_soon {
            self.count_crash(format!(
                "{who} exited early ({status}) after {uptime:?} and {} requests",
                c.requests
            ));
        } else {
            // A child that served is no crash loop, however short its life (a kill
            // spree): it is replaced at once, whatever the backoff.
            self.spawn_credit += 1;
            if self.crash_streak > 0 && c.spawned_at >= self.streak.since {
                self.end_streak(&format!("{who} was healthy"));
            }
            let level = if status.success() {
                Level::Info
            } else {
                Level::Warning
            };
            self.log(
                level,
                format!(
                    "{who} exited ({status}) after {uptime:?} and {} requests",
                    c.requests
                ),
            );
        }
    }

    fn on_scoreboard(&mut self, sb: &Scoreboard) {
        self.backlog = sb.backlog;
        let now = self.now;
        for (slot, reading) in self.slots.iter_mut().zip(&sb.slots) {
            let Some(c) = slot.as_mut() else { continue };
            if c.pid != Some(reading.pid) {
                continue; // stale: the slot's previous owner, or not yet written
            }
            c.requests = reading.requests;
            c.memory = reading.memory;
            match reading.state {
                SlotState::Idle => {
                    c.ready_at.get_or_insert(now);
                    c.busy_since = None;
                }
                SlotState::Busy => {
                    c.ready_at.get_or_insert(now);
                    // A start in the future (clock skew) counts from now.
                    c.busy_since = Some(reading.request_start.unwrap_or(now).min(now));
                }
                SlotState::Retiring => {
                    c.busy_since = None;
                    c.retire.get_or_insert(Retire {
                        at: now,
                        reason: SignalReason::MaxRequests,
                    });
                }
                SlotState::Starting | SlotState::Empty => {}
            }
        }
    }

    fn on_netstat(&mut self, conns: &[Connection]) {
        let mut seen = BTreeSet::new();
        for conn in conns.iter().filter(|c| c.state == ConnState::CloseWait) {
            let d = conn.conn;
            let Some(&slot) = self.by_pid.get(&d.pid) else {
                continue;
            };
            seen.insert(d);
            if self.disconnects_seen.contains(&d) {
                continue;
            }
            let Some(c) = self.slots[slot].as_ref() else {
                continue;
            };
            let view = ChildView::new(c.busy_since.is_some(), c.generation, c.requests);
            match self.disconnect.on_disconnect(&d, &view) {
                DisconnectAction::RunHook => self.push(Action::RunHook(Hook::ClientDisconnect(d))),
                DisconnectAction::Terminate => {
                    if self.slots[slot]
                        .as_ref()
                        .is_some_and(|c| c.retire.is_none())
                    {
                        self.retire(slot, SignalReason::Disconnect);
                    }
                }
                DisconnectAction::Ignore => {}
            }
        }
        self.disconnects_seen = seen;
    }

    fn on_reload_trigger(&mut self, trigger: ReloadTrigger) {
        if !self.accepts_work() {
            self.log(
                Level::Info,
                format!("reload ({trigger:?}) ignored while {}", self.state().name()),
            );
            return;
        }
        let ReloadPlan {
            run_handler,
            restart_children,
        } = self.reload.plan(trigger);
        if run_handler {
            self.push(Action::RunHook(Hook::ReloadHandler));
        }
        if restart_children {
            self.begin_reload();
        }
    }

    // ----- transitions -----

    fn transition(&mut self, to: Phase) {
        debug_assert!(
            is_legal(self.phase.state(), to.state()),
            "illegal transition {:?} -> {:?}",
            self.phase.state(),
            to.state()
        );
        self.phase = to;
    }

    fn accepts_work(&self) -> bool {
        matches!(
            self.phase,
            Phase::Spawning { .. } | Phase::Serving | Phase::Reloading { .. }
        )
    }

    fn begin_reload(&mut self) {
        self.generation += 1;
        // A reload is the operator's "fixed it": new code starts without the old
        // code's crash-loop backoff.
        if self.crash_streak > 0 {
            self.end_streak("reload");
        }
        let total = self.counts.starting + self.counts.serving();
        let quiet_min = *self.scaling.quiet_range().start();
        let min_serving = self
            .reload
            .min_serving()
            .unwrap_or(quiet_min)
            .min(self.opts.max_children - 1);
        let target = total.max(min_serving).min(self.opts.max_children);
        self.log(
            Level::Info,
            format!(
                "reloading: rolling {total} children over to generation {}, keeping at least {min_serving} serving",
                self.generation
            ),
        );
        self.push(Action::Notify(Notify::Reloading));
        self.last_min_serving = Some(min_serving);
        self.transition(Phase::Reloading {
            generation: self.generation,
            min_serving,
            target,
            retired: 0,
        });
    }

    fn begin_shutdown(&mut self, immediate: bool, sig: Signal) {
        let now = self.now;
        match self.phase {
            Phase::ShuttingDown {
                immediate: true, ..
            } => {
                self.log(
                    Level::Info,
                    format!("{} during immediate shutdown: already stopping", sig.name()),
                );
                return;
            }
            Phase::ShuttingDown { .. } => {
                self.log(
                    Level::Warning,
                    format!("{} during graceful shutdown: stopping now", sig.name()),
                );
                self.transition(Phase::ShuttingDown {
                    immediate: true,
                    deadline: now,
                    give_up_at: Some(now + self.opts.kill_wait),
                });
                self.stop_all(true);
                return;
            }
            _ => {}
        }
        let kind = if immediate { "immediate" } else { "graceful" };
        self.log(Level::Info, format!("{}: {kind} shutdown", sig.name()));
        self.push(Action::Notify(Notify::Stopping));
        self.push(Action::RunHook(Hook::BeforeShutdown));
        let (deadline, give_up_at) = if immediate {
            (now, Some(now + self.opts.kill_wait))
        } else {
            (now + self.opts.graceful_timeout, None)
        };
        self.transition(Phase::ShuttingDown {
            immediate,
            deadline,
            give_up_at,
        });
        self.stop_all(immediate);
    }

    /// TERMs (or KILLs) every child not already told.
    fn stop_all(&mut self, kill: bool) {
        for slot in 0..self.slots.len() {
            self.stop_child(slot, kill);
        }
    }

    fn stop_child(&mut self, slot: usize, kill: bool) {
        let now = self.now;
        let Some(c) = self.slots[slot].as_mut() else {
            return;
        };
        let Some(pid) = c.pid else { return };
        if c.killed {
            return;
        }
        let signal = if kill {
            c.killed = true;
            ChildSignal::Kill
        } else if c.retire.is_none() {
            ChildSignal::Term
        } else {
            return; // already TERMed; it is KILLed at the deadline if it lingers
        };
        c.retire.get_or_insert(Retire {
            at: now,
            reason: SignalReason::Shutdown,
        });
        self.push(Action::Signal {
            pid,
            signal,
            reason: SignalReason::Shutdown,
        });
    }

    fn stop(&mut self, code: i32) {
        self.transition(Phase::Stopped { code });
        self.deadline = None;
        self.push(Action::Exit { code });
    }

    // ----- the step after every event -----

    fn step(&mut self) {
        match self.phase {
            Phase::Init | Phase::Stopped { .. } => {
                self.deadline = None;
            }
            Phase::ShuttingDown { .. } => self.step_shutdown(),
            Phase::Spawning { .. } | Phase::Serving | Phase::Reloading { .. } => {
                self.step_serving()
            }
        }
    }

    fn step_shutdown(&mut self) {
        let now = self.now;
        let Phase::ShuttingDown {
            immediate,
            deadline,
            give_up_at,
        } = self.phase
        else {
            return;
        };
        if self.slots.iter().all(Option::is_none) {
            self.log(Level::Info, "all children reaped; exiting".into());
            self.stop(0);
            return;
        }
        if give_up_at.is_none() && now >= deadline {
            self.log(
                Level::Warning,
                format!(
                    "graceful shutdown timed out; KILLing {} children",
                    self.by_pid.len()
                ),
            );
            self.transition(Phase::ShuttingDown {
                immediate,
                deadline,
                give_up_at: Some(now + self.opts.kill_wait),
            });
            for slot in 0..self.slots.len() {
                self.escalate(slot);
            }
            self.deadline = Some(now + self.opts.kill_wait);
            return;
        }
        if let Some(t) = give_up_at {
            if now >= t {
                self.log(
                    Level::Error,
                    format!(
                        "{} children not reaped after KILL; exiting anyway",
                        self.slots.iter().flatten().count()
                    ),
                );
                self.stop(1);
                return;
            }
            self.deadline = Some(t);
        } else {
            self.deadline = Some(deadline);
        }
        self.counts = self.count();
    }

    fn escalate(&mut self, slot: usize) {
        let Some(c) = self.slots[slot].as_mut() else {
            return;
        };
        let Some(pid) = c.pid else { return };
        if c.killed {
            return;
        }
        c.killed = true;
        c.retire.get_or_insert(Retire {
            at: self.now,
            reason: SignalReason::Shutdown,
        });
        self.push(Action::Signal {
            pid,
            signal: ChildSignal::Kill,
            reason: SignalReason::Escalation,
        });
    }

    fn count(&self) -> Counts {
        let mut n = Counts::default();
        for c in self.slots.iter().flatten() {
            if c.retire.is_some() {
                n.retiring += 1;
            } else if !c.is_ready() {
                n.starting += 1;
            } else if c.busy_since.is_some() {
                n.busy += 1;
            } else {
                n.idle += 1;
            }
        }
        n
    }

    fn step_serving(&mut self) {
        let now = self.now;
        let mut next: Option<Time> = None;
        let mut due = |t: Time| {
            next = Some(next.map_or(t, |n: Time| n.min(t)));
        };

        // Per-child timers: escalation, busy and start timeouts, request limits, health.
        let mut fresh_too_big = None;
        for slot in 0..self.slots.len() {
            let Some(c) = self.slots[slot].as_ref() else {
                continue;
            };
            if c.pid.is_none() || c.killed {
                continue;
            }
            if let Some(r) = c.retire {
                let grace = match r.reason {
                    SignalReason::BusyTimeout
                    | SignalReason::Disconnect
                    | SignalReason::StartTimeout => self.opts.kill_grace,
                    _ => self.opts.graceful_timeout,
                };
                let t = r.at + grace;
                if now >= t {
                    self.escalate(slot);
                } else {
                    due(t);
                }
                continue;
            }
            if let (Some(limit), Some(rss), true) =
                (self.opts.max_child_memory, c.memory, c.is_ready())
            {
                if rss > limit && c.requests == 0 && c.busy_since.is_none() {
                    // Too big before serving anything (the parent's shared pages count
                    // in a child's RSS): a replacement would be as big, so retiring it
                    // would only fork in a loop. Said once.
                    fresh_too_big.get_or_insert((c.pid.unwrap_or(Pid(0)), rss, limit));
                } else if rss > limit {
                    self.log(
                        Level::Warning,
                        format!(
                            "child {} uses {rss} bytes of memory (RSS), above max_child_memory {limit}: retiring it",
                            c.pid.unwrap_or(Pid(0))
                        ),
                    );
                    self.retire(slot, SignalReason::MemoryLimit);
                    continue;
                }
            }
            match (c.ready_at, c.busy_since) {
                (None, _) => {
                    let t = c.spawned_at + self.opts.start_timeout;
                    if now >= t {
                        self.log(
                            Level::Warning,
                            format!(
                                "child {} not ready after {:?}",
                                c.pid.unwrap_or(Pid(0)),
                                self.opts.start_timeout
                            ),
                        );
                        self.retire(slot, SignalReason::StartTimeout);
                    } else {
                        due(t);
                    }
                }
                (Some(_), Some(since)) => {
                    if let Some(limit) = self.opts.busy_timeout {
                        let t = since + limit;
                        if now >= t {
                            self.log(
                                Level::Warning,
                                format!(
                                    "child {} busy for {:?}, past the busy timeout",
                                    c.pid.unwrap_or(Pid(0)),
                                    now - since
                                ),
                            );
                            self.retire(slot, SignalReason::BusyTimeout);
                        } else {
                            due(t);
                        }
                    }
                }
                (Some(_), None) => {
                    if c.max_requests.is_some_and(|m| c.requests >= m) {
                        self.retire(slot, SignalReason::MaxRequests);
                    }
                }
            }
            // A child forked since the streak began that stays up for
            // `min_healthy_uptime` ends it: the cause is gone. (Serving a request is
            // not enough: a child may die right after each one.) Older children
            // prove nothing about new ones.
            if self.crash_streak > 0 {
                if let Some(c) = self.slots[slot].as_ref() {
                    if c.serving() && c.spawned_at >= self.streak.since {
                        let healthy_at = c.spawned_at + self.opts.min_healthy_uptime;
                        if now >= healthy_at {
                            let who = format!("child {} is healthy", c.pid.unwrap_or(Pid(0)));
                            self.end_streak(&who);
                        } else {
                            due(healthy_at);
                        }
                    }
                }
            }
        }
        if let (Some((pid, rss, limit)), false) = (fresh_too_big, self.memory_warned) {
            // A replacement would be as big (the parent's shared pages count in a
            // child's RSS): retiring it would only fork in a loop. Said once.
            self.memory_warned = true;
            self.log(
                Level::Warning,
                format!(
                    "child {pid} uses {rss} bytes of memory (RSS) before serving, above \
                     max_child_memory {limit}: the limit is below a fresh child's size; \
                     children are retired for memory only once they have served"
                ),
            );
        }

        if let Phase::Reloading { .. } = self.phase {
            self.step_reload();
        }
        // Until the initial children serve, crashed ones are replaced (after the
        // backoff) and the policy may add children but not retire any: the pool
        // only grows toward its initial size. A TTOU may lower that size.
        let spawn_goal = match self.phase {
            Phase::Spawning { target } => Some(target.min(self.scaling.initial_children())),
            _ => None,
        };
        if let Some(goal) = spawn_goal {
            let n = self.count();
            self.spawn(goal.saturating_sub(n.starting + n.serving()));
        }
        self.scale();

        self.counts = self.count();
        let n = self.counts;
        match self.phase {
            Phase::Spawning { .. } if spawn_goal.is_some_and(|g| n.serving() >= g) => {
                self.transition(Phase::Serving);
                self.log(
                    Level::Info,
                    format!("{} children serving", self.counts.serving()),
                );
                self.push(Action::Notify(Notify::Ready));
            }
            Phase::Reloading { generation, .. } if !self.has_old(generation) => {
                self.transition(Phase::Serving);
                self.log(
                    Level::Info,
                    format!("reload to generation {generation} complete"),
                );
                self.push(Action::Notify(Notify::Ready));
            }
            _ => {}
        }

        // Timers of the whole machine.
        if let Some(t) = self.next_reload_check {
            if now >= t {
                self.push(Action::CheckForChanges);
                let every = self.reload.check_every().unwrap_or(Duration::MAX);
                self.next_reload_check = Some(now + every);
            }
        }
        self.notify_status();
        if self.counts.busy > 0 {
            due(now + self.opts.busy_refresh);
        }
        for t in [
            self.policy_recheck,
            self.next_reload_check,
            self.status_due,
            (self.spawn_not_before > now).then_some(self.spawn_not_before),
        ]
        .into_iter()
        .flatten()
        {
            due(t);
        }
        self.deadline = next;
        // Credit is for the replacements of this event only.
        self.spawn_credit = 0;
    }

    fn has_old(&self, generation: u64) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|c| c.generation < generation && c.retire.is_none())
    }

    fn step_reload(&mut self) {
        let Phase::Reloading {
            generation,
            min_serving,
            target,
            retired,
        } = self.phase
        else {
            return;
        };
        let mut new_ready = 0;
        let mut new_starting = 0;
        let mut old_reload_retiring = 0;
        for c in self.slots.iter().flatten() {
            if c.generation == generation && c.retire.is_none() {
                if c.is_ready() {
                    new_ready += 1;
                } else {
                    new_starting += 1;
                }
            }
            if c.generation < generation
                && c.retire.is_some_and(|r| r.reason == SignalReason::Reload)
            {
                old_reload_retiring += 1;
            }
        }
        // Start replacements.
        let surge = self.reload.max_surge().unwrap_or(usize::MAX);
        let want = target
            .saturating_sub(new_ready + new_starting)
            .min(surge.saturating_sub(new_starting));
        new_starting += self.spawn(want);

        // Retire old children: those not ready yet at once (they serve nobody); ready
        // ones as replacements become ready, never below the minimum serving.
        let mut retired_now = 0;
        loop {
            let n = self.count();
            let Some(slot) = self.pick_old(generation) else {
                break;
            };
            let ready = self.slots[slot].as_ref().is_some_and(Child::is_ready);
            if ready {
                let credit = new_ready > retired + retired_now;
                let stuck = n.alive() >= self.opts.max_children
                    && new_starting == 0
                    && old_reload_retiring == 0;
                if n.serving() <= min_serving || !(credit || stuck) {
                    break;
                }
                old_reload_retiring += 1;
            }
            self.retire(slot, SignalReason::Reload);
            retired_now += 1;
        }
        if let Phase::Reloading { retired, .. } = &mut self.phase {
            *retired += retired_now;
        }
    }

    /// The old child to retire next: not yet ready first, then idle, then busy; lowest
    /// generation first. Children still being forked wait for their pid.
    fn pick_old(&self, generation: u64) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
            .filter(|(_, c)| c.generation < generation && c.retire.is_none() && c.pid.is_some())
            .min_by_key(|(i, c)| (c.is_ready(), c.busy_since.is_some(), c.generation, *i))
            .map(|(i, _)| i)
    }

    fn snapshot(&self) -> PoolSnapshot {
        let n = self.count();
        PoolSnapshot::new(n.starting, n.idle, n.busy, self.opts.max_children)
            .with_retiring(n.retiring)
            .with_backlog(self.backlog)
    }

    fn scale(&mut self) {
        let snapshot = self.snapshot();
        let decision = self.scaling.decide(&snapshot, self.now);
        self.policy_recheck = decision.recheck_at.filter(|&t| t > self.now);
        match decision.scale {
            Scale::Hold => {}
            Scale::Spawn(n) => {
                self.spawn(n);
            }
            Scale::Retire(_) if matches!(self.phase, Phase::Spawning { .. }) => {}
            Scale::Retire(n) => {
                let floor = match self.phase {
                    Phase::Reloading { min_serving, .. } => min_serving,
                    _ => 0,
                };
                let mut serving = snapshot.idle + snapshot.busy;
                for _ in 0..n {
                    if serving <= floor {
                        break;
                    }
                    let Some(slot) = self.pick_idle() else { break };
                    self.retire(slot, SignalReason::ScaleDown);
                    serving -= 1;
                }
            }
        }
    }

    /// The idle child to retire: oldest generation first, then the highest slot.
    fn pick_idle(&self) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
            .filter(|(_, c)| c.serving() && c.busy_since.is_none() && c.pid.is_some())
            .min_by_key(|(i, c)| (c.generation, std::cmp::Reverse(*i)))
            .map(|(i, _)| i)
    }

    /// Spawns up to `n` children into free slots; returns how many.
    fn spawn(&mut self, n: usize) -> usize {
        // The crash-loop backoff delays spawns, except the replacements of healthy
        // children that died in this event.
        let gated = self.now < self.spawn_not_before;
        let n = if gated { n.min(self.spawn_credit) } else { n };
        if n == 0 {
            return 0;
        }
        let mut done = 0;
        for slot in 0..self.slots.len() {
            if done == n {
                break;
            }
            if self.slots[slot].is_some() {
                continue;
            }
            let max_requests = self.opts.max_requests_per_child.map(|m| {
                m.saturating_add(
                    self.rng
                        .below(self.opts.max_requests_jitter.saturating_add(1)),
                )
            });
            self.slots[slot] = Some(Child {
                pid: None,
                generation: self.generation,
                spawned_at: self.now,
                ready_at: None,
                busy_since: None,
                requests: 0,
                memory: None,
                max_requests,
                retire: None,
                killed: false,
            });
            self.push(Action::Spawn {
                slot,
                generation: self.generation,
                max_requests,
            });
            done += 1;
        }
        if gated {
            self.spawn_credit -= done;
        }
        done
    }

    /// Asks a child to leave: TERM, with a reason; KILL follows if it lingers.
    fn retire(&mut self, slot: usize, reason: SignalReason) {
        let now = self.now;
        let Some(c) = self.slots[slot].as_mut() else {
            return;
        };
        let Some(pid) = c.pid else { return };
        if c.retire.is_some() || c.killed {
            return;
        }
        c.retire = Some(Retire { at: now, reason });
        self.push(Action::Signal {
            pid,
            signal: ChildSignal::Term,
            reason,
        });
    }

    /// Whether a child proved the code works: ready, and it served a request or
    /// lived `min_healthy_uptime`. Its death is no crash.
    /// Whether `c` counts as healthy: ready, and it served or lived
    /// `min_healthy_uptime`.
    fn is_healthy(&self, c: &Child) -> bool {
        c.is_ready() && (c.requests > 0 || self.now >= c.spawned_at + self.opts.min_healthy_uptime)
    }

    /// Counts a crash (`what` says which and why) and closes the spawn gate for the
    /// backoff: `backoff_initial` doubling per crash in a row, up to `backoff_max`.
    /// While healthy children serve, the schedule starts one step later (the first
    /// crash is replaced at once), so a stray early death, a kill spree hitting a
    /// starting child, never leaves the pool short; a real crash loop still backs
    /// off from its second crash. The first crash is logged with its reason; later
    /// ones are counted and summarised every [`CRASH_REPORT_EVERY`].
    fn count_crash(&mut self, what: String) {
        let healthy_siblings = self
            .slots
            .iter()
            .flatten()
            .any(|c| c.serving() && self.is_healthy(c));
        self.crash_streak = self.crash_streak.saturating_add(1);
        let steps = self.crash_streak - 1;
        let delay = if healthy_siblings && steps == 0 {
            Duration::ZERO
        } else {
            let exp = steps.saturating_sub(u32::from(healthy_siblings)).min(20);
            self.opts
                .backoff_initial
                .saturating_mul(1u32 << exp)
                .min(self.opts.backoff_max)
        };
        self.spawn_not_before = self.now + delay;
        if self.crash_streak == 1 {
            self.streak = Streak {
                since: self.now,
                reported_at: self.now,
                unreported: 0,
            };
            self.log(
                Level::Error,
                format!(
                    "{what}; next start in {delay:?} (further crashes in a row are summarised)"
                ),
            );
        } else if self.now >= self.streak.reported_at + CRASH_REPORT_EVERY {
            let n = self.streak.unreported + 1;
            self.log(
                Level::Error,
                format!(
                    "crash loop: {} crashes in a row over {:?} ({n} since the last report), latest: {what}; next start in {delay:?}",
                    self.crash_streak,
                    self.now - self.streak.since
                ),
            );
            self.streak.reported_at = self.now;
            self.streak.unreported = 0;
        } else {
            self.streak.unreported += 1;
        }
    }

    /// Ends a crash streak: the backoff resets and the gate opens.
    fn end_streak(&mut self, why: &str) {
        if self.crash_streak > 1 {
            self.log(
                Level::Info,
                format!(
                    "crash loop over after {} crashes in a row over {:?}: {why}",
                    self.crash_streak,
                    self.now - self.streak.since
                ),
            );
        }
        self.crash_streak = 0;
        self.spawn_not_before = self.spawn_not_before.min(self.now);
    }

    fn notify_status(&mut self) {
        let counts = self.counts;
        match self.last_status {
            Some((_, last)) if last == counts => {
                self.status_due = None;
            }
            Some((at, _)) if self.now < at + self.opts.status_interval => {
                self.status_due = Some(at + self.opts.status_interval);
            }
            _ => {
                self.last_status = Some((self.now, counts));
                self.status_due = None;
                self.push(Action::Notify(Notify::Status {
                    busy: counts.busy,
                    idle: counts.idle,
                    starting: counts.starting,
                }));
            }
        }
    }

    // ----- helpers -----

    fn child_mut(&mut self, pid: Pid) -> Option<&mut Child> {
        let slot = *self.by_pid.get(&pid)?;
        self.slots[slot].as_mut()
    }

    fn push(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    fn log(&mut self, level: Level, message: String) {
        self.push(Action::Log { level, message });
    }
}

/// A clean exit, or a death by a signal someone sends to stop a process (KILL,
/// TERM, INT, HUP): not a failure of the child's own.
fn ended_from_outside(status: ExitStatus) -> bool {
    matches!(
        status,
        ExitStatus::Exited(0) | ExitStatus::Signaled(1 | 2 | 9 | 15)
    )
}
