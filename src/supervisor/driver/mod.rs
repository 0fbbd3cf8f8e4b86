//! How a runtime drives the [`Machine`]: carrying out its actions and the
//! ordering rules between the outside world's effects and the events fed back,
//! written once over two small traits so the process runtime, the simulator and
//! unit tests with a fake share them (the way tokio's process reaper is generic
//! over small traits): [`Effects`], what the world does (fork, signal, reap, read
//! the scoreboard, run a hook...), and [`Drive`], the machine being fed (the
//! simulator's passes every step through the oracle's monitor).
//!
//! [`carry_out`] is the one action dispatch: a fork answered with
//! `ChildSpawned` or `SpawnFailed`, a hook with `HookFinished`, a check for
//! changes with `FilesChanged`, a disconnect check with `Netstat`.
//!
//! The rules:
//! - **Reaping reads the scoreboard first.** Exits are collected, then the
//!   scoreboard is read and fed while the dead children's slots still show their
//!   last state, then each exit is reported: a child that left by itself (its slot
//!   says retiring) is not mistaken for a crash.
//! - **The stop flag before the first shutdown TERM.** Once the machine is shutting
//!   down, the scoreboard's stop flag is set before any action is carried out, so a
//!   child that gets its TERM sees it and drains the backlog.
//! - **A lone TERM is marked first.** A TERM sent for any reason but a shutdown,
//!   an escalation or a log reopening (a scale-down, a reload, a limit) is marked
//!   on the child's slot before it goes out: that child leaves alone, and the queue
//!   is its siblings'.
//! - **The first busy child is never missed.** The machine schedules its
//!   disconnect check only while it knows a child is busy; until then
//!   ([`Machine::awaits_first_busy`]) the runtime asks the first child that gets
//!   busy to wake it, and reads the scoreboard before sleeping if a slot already
//!   shows one ([`busy_unseen`]). An idle pool is never scanned.

use super::action::{Action, ChildSignal, Hook, Image, Level, Notify, SignalReason};
use super::event::{Connection, Event, ExitStatus, Scoreboard};
use super::machine::{Handoff, Machine};
use super::transitions::State;
use crate::policy::{Pid, Time};

/// The machine as a runtime feeds it: [`Machine`] itself, or a machine behind a
/// checker that sees every step.
pub trait Drive {
    /// The machine, to read.
    fn machine(&self) -> &Machine;
    /// Feeds `event` at `now`.
    fn handle(&mut self, now: Time, event: Event<'_>);
    /// The next action to carry out, if any.
    fn next_action(&mut self) -> Option<Action>;
}

impl Drive for Machine {
    fn machine(&self) -> &Machine {
        self
    }
    fn handle(&mut self, now: Time, event: Event<'_>) {
        Machine::handle(self, now, event);
    }
    fn next_action(&mut self) -> Option<Action> {
        self.poll_action()
    }
}

/// What a look at the watched files found changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Changed {
    /// The running executable was replaced: an in-place upgrade is due.
    pub executable: bool,
    /// Another watched file changed: the reload handler and a rollout.
    pub data: bool,
}

/// A child to fork, as [`Action::Spawn`] asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawn {
    /// Its scoreboard slot.
    pub slot: usize,
    /// Its generation.
    pub generation: u64,
    /// Its request limit, jitter applied.
    pub max_requests: Option<u64>,
    /// A crash streak is on, its reason logged already: the child logs a failure
    /// of its own at debug level only.
    pub quiet_failure: bool,
}

/// The effects a runtime performs for the machine: one per kind of action, and
/// the few the ordering rules of the [module](self) are about.
pub trait Effects {
    /// The machine's time now.
    fn now(&self) -> Time;
    /// Reaps one exited child without blocking; `None` when no child has exited.
    fn try_reap(&mut self) -> Option<(Pid, ExitStatus)>;
    /// Reads the scoreboard into `into`.
    fn read_scoreboard(&mut self, into: &mut Scoreboard);
    /// Frees what a reaped child held (its slot, its log channel).
    fn release(&mut self, pid: Pid);
    /// Sends `signal` to `pid`; `alone`: mark its slot first (see the module docs).
    fn signal(&mut self, pid: Pid, signal: ChildSignal, alone: bool);
    /// Sets the scoreboard's stop flag.
    fn mark_stopping(&mut self);
    /// Whether some slot shows a busy child the machine may not count yet (one
    /// that got busy since the last reading); when none does, asks the first
    /// child that gets busy to wake the parent.
    fn busy_watch(&mut self) -> bool;
    /// Forks a child; its pid, or `None` when the fork (or what it needs) failed,
    /// said in the log.
    fn fork(&mut self, spawn: Spawn) -> Option<Pid>;
    /// Runs `hook`; whether it succeeded (only `after_init`'s answer matters to
    /// the machine).
    fn run_hook(&mut self, hook: Hook) -> bool;
    /// Reopens the log files (children get theirs with the USR1 that follows).
    fn reopen_logs(&mut self);
    /// What changed among the watched files since the last look.
    fn files_changed(&mut self) -> Changed;
    /// Starts the trial of the executable on disk with this configuration and
    /// `handoff` (see [`Action::ProbeUpgrade`]); its outcome if known at once,
    /// `None` if it comes later, from [`probe_outcome`](Effects::probe_outcome).
    fn probe_upgrade(&mut self, handoff: &Handoff) -> Option<bool>;
    /// The outcome of a trial that ended since the last look, if any.
    fn probe_outcome(&mut self) -> Option<bool>;
    /// Re-executes the parent from `image`, handing `handoff` over; returns only
    /// if that could not be done (said in the log).
    fn reexec(&mut self, image: Image, handoff: Handoff);
    /// The connections of these children that the disconnect policy may want to
    /// hear of; `None` when they are looked at elsewhere and arrive later, as an
    /// [`Event::Netstat`] of their own (the parent's loop must not wait for them).
    fn connections(&mut self, children: &[Pid]) -> Option<Vec<Connection>>;
    /// Tells the service manager.
    fn notify(&mut self, notify: Notify);
    /// Writes a line of the machine's to the log.
    fn log(&mut self, level: Level, message: String);
}

/// Carries out every pending action in order, feeding back what each one answers
/// (see the module docs), the stop flag set before any action once shutting down
/// (`marked`: whether it has been). `Some(code)` once the machine exits.
pub fn carry_out(d: &mut impl Drive, fx: &mut impl Effects, marked: &mut bool) -> Option<i32> {
    // A re-exec goes last: the actions queued after it (a TERM, a spawn) are
    // carried out first, so the handoff tells what was really done.
    let mut reexec = None;
    loop {
        let Some(action) = d.next_action() else {
            let Some(image) = reexec.take() else { break };
            fx.reexec(image, d.machine().handoff());
            let now = fx.now();
            d.handle(now, Event::ReExecFailed);
            continue;
        };
        before_action(d.machine(), fx, marked);
        match action {
            Action::Spawn {
                slot,
                generation,
                max_requests,
            } => {
                let spawn = Spawn {
                    slot,
                    generation,
                    max_requests,
                    quiet_failure: d.machine().crash_streak() > 0,
                };
                let event = match fx.fork(spawn) {
                    Some(pid) => Event::ChildSpawned { slot, pid },
                    None => Event::SpawnFailed { slot },
                };
                let now = fx.now();
                d.handle(now, event);
            }
            Action::Signal {
                pid,
                signal,
                reason,
            } => send_signal(fx, pid, signal, reason),
            Action::RunHook(hook) => {
                let kind = hook.kind();
                let ok = fx.run_hook(hook);
                let now = fx.now();
                d.handle(now, Event::HookFinished { hook: kind, ok });
            }
            Action::ReopenLogs => fx.reopen_logs(),
            Action::CheckForChanges => {
                let changed = fx.files_changed();
                // Data first: its handler and rollout, then the upgrade, whose new
                // image rolls every child over anyway.
                for (yes, event) in [
                    (changed.data, Event::FilesChanged),
                    (changed.executable, Event::ExecutableChanged),
                ] {
                    if yes {
                        let now = fx.now();
                        d.handle(now, event);
                    }
                }
            }
            Action::ProbeUpgrade => {
                let handoff = d.machine().handoff();
                if let Some(ok) = fx.probe_upgrade(&handoff) {
                    let now = fx.now();
                    d.handle(now, Event::UpgradeProbed { ok });
                }
            }
            Action::ReExec(image) => reexec = Some(image),
            Action::CheckDisconnects => {
                let children: Vec<Pid> = d.machine().pids().collect();
                if let Some(conns) = fx.connections(&children) {
                    let now = fx.now();
                    d.handle(now, Event::Netstat(&conns));
                }
            }
            Action::Notify(n) => fx.notify(n),
            Action::Log { level, message } => fx.log(level, message),
            Action::Exit { code } => return Some(code),
        }
    }
    None
}

/// Reads the scoreboard and feeds it to the machine.
pub fn tick(d: &mut impl Drive, fx: &mut impl Effects, reading: &mut Scoreboard) {
    fx.read_scoreboard(reading);
    let now = fx.now();
    d.handle(now, Event::Scoreboard(reading));
}

/// Reaps every child that has exited (SIGCHLD coalesces) and reports the exits,
/// the scoreboard read first (see the module docs). Returns how many were reaped.
pub fn reap(d: &mut impl Drive, fx: &mut impl Effects, reading: &mut Scoreboard) -> usize {
    let mut reaped = Vec::new();
    while let Some(exit) = fx.try_reap() {
        reaped.push(exit);
    }
    // The upgrade's trial is a child too, reaped by the runtime for itself.
    if let Some(ok) = fx.probe_outcome() {
        let now = fx.now();
        d.handle(now, Event::UpgradeProbed { ok });
    }
    if reaped.is_empty() {
        return 0;
    }
    tick(d, fx, reading);
    for &(pid, status) in &reaped {
        fx.release(pid);
        let now = fx.now();
        d.handle(now, Event::ChildExited { pid, status });
    }
    reaped.len()
}

/// What a runtime does before carrying out any action the machine returned: sets
/// the stop flag once the machine is shutting down (`marked`: whether it has been).
pub fn before_action(machine: &Machine, fx: &mut impl Effects, marked: &mut bool) {
    if !*marked && machine.state() == State::ShuttingDown {
        fx.mark_stopping();
        *marked = true;
    }
}

/// Carries out an [`Action::Signal`]: `signal` to `pid` for `reason`, a lone
/// TERM marked first (see the module docs).
pub fn send_signal(fx: &mut impl Effects, pid: Pid, signal: ChildSignal, reason: SignalReason) {
    let alone = signal == ChildSignal::Term
        && !matches!(
            reason,
            SignalReason::Shutdown | SignalReason::Escalation | SignalReason::ReopenLogs
        );
    fx.signal(pid, signal, alone);
}

/// Before a runtime sleeps: whether it must read the scoreboard first, because the
/// machine awaits its first busy child and a slot already shows one (see the
/// module docs). Arms the busy watch while the machine awaits.
pub fn busy_unseen(machine: &Machine, fx: &mut impl Effects) -> bool {
    machine.awaits_first_busy() && fx.busy_watch()
}

#[cfg(test)]
mod tests;
