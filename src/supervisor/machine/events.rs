//! What each event does, before the step that follows every event.

use super::health::ended_from_outside;
use super::phase::Phase;
use super::totals::ExitCause;
use super::Machine;
use crate::policy::{ChildView, DisconnectAction, Pid, ReloadTrigger};
use crate::supervisor::action::{Action, ChildSignal, Hook, Level, SignalReason};
use crate::supervisor::event::{ConnState, Connection, Event, ExitStatus, HookKind, Signal};
use crate::supervisor::transitions::cause;
use std::collections::BTreeSet;

impl Machine {
    pub(super) fn on_event(&mut self, event: Event<'_>) {
        match event {
            Event::Signal(sig) => self.on_signal(sig),
            Event::HookFinished { hook, ok } => self.on_hook_finished(hook, ok),
            Event::ChildSpawned { slot, pid } => self.on_spawned(slot, pid),
            Event::SpawnFailed { slot } => self.on_spawn_failed(slot),
            Event::ChildReady { pid } => self.pool.mark_ready(pid, self.now),
            Event::ChildExited { pid, status } => self.on_exit(pid, status),
            Event::Scoreboard(sb) => {
                self.backlog = sb.backlog;
                self.pool.read_scoreboard(sb, self.now);
            }
            Event::Netstat(conns) => self.on_netstat(conns),
            Event::FilesChanged => self.on_reload_trigger(ReloadTrigger::FilesChanged),
            Event::ExecutableChanged => self.on_reload_trigger(ReloadTrigger::ExecutableChanged),
            Event::UpgradeProbed { ok } => self.on_upgrade_probed(ok),
            Event::ReExecFailed => self.on_reexec_failed(),
            Event::Timer => {}
        }
    }

    fn on_signal(&mut self, sig: Signal) {
        match sig {
            Signal::Term | Signal::Int => self.begin_shutdown(false, sig),
            Signal::Quit => self.begin_shutdown(true, sig),
            Signal::Hup => self.on_reload_trigger(ReloadTrigger::Signal),
            Signal::Usr1 => {
                self.push(Action::ReopenLogs);
                let pids: Vec<Pid> = self
                    .pool
                    .children()
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
            Signal::Usr2 => self.on_reload_trigger(ReloadTrigger::Upgrade),
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
        if ok && self.adopted() {
            self.start_reload_checks();
            self.begin_adopted_reload();
        } else if ok {
            let target = self.scaling.initial_children().min(self.opts.max_children);
            self.transition(Phase::Spawning { target }, cause::AFTER_INIT_DONE);
            self.start_reload_checks();
            self.log(Level::Info, format!("starting {target} children"));
        } else if self.roll_back_if_failing("after_init failed") {
        } else if self.adopted() {
            // No way back: the adopted children are stopped, not orphaned.
            self.log(
                Level::Error,
                "after_init failed after an upgrade, with no previous image to return to; stopping"
                    .into(),
            );
            self.begin_shutdown(false, Signal::Term);
        } else {
            self.log(Level::Error, "after_init failed; not starting".into());
            self.stop(1, cause::AFTER_INIT_FAILED);
        }
    }

    fn on_spawned(&mut self, slot: usize, pid: Pid) {
        if !self.pool.is_pending(slot) || self.pool.slot_of(pid).is_some() {
            self.log(
                Level::Error,
                format!(
                    "spawn report for slot {slot} (pid {pid}) matches no pending spawn; ignored"
                ),
            );
            return;
        }
        self.pool.set_pid(slot, pid);
        super::totals::inc(&mut self.totals.spawns, 1);
        // A child forked while stopping is stopped at once.
        if let Phase::ShuttingDown { immediate, killed } = self.phase {
            self.stop_child(slot, immediate || killed);
        }
    }

    fn on_spawn_failed(&mut self, slot: usize) {
        if !self.pool.is_pending(slot) {
            self.log(
                Level::Error,
                format!("spawn failure for slot {slot} matches no pending spawn; ignored"),
            );
            return;
        }
        self.pool.remove_pending(slot);
        super::totals::inc(&mut self.totals.spawn_failures, 1);
        self.count_crash(format!("fork for slot {slot} failed"));
    }

    fn on_exit(&mut self, pid: Pid, status: ExitStatus) {
        let Some((slot, c)) = self.pool.remove(pid) else {
            self.log(
                Level::Debug,
                format!("reaped pid {pid} ({status}), not one of our children"),
            );
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
            let cause = match r.reason {
                SignalReason::StartTimeout => ExitCause::Crash,
                _ if self_quit => ExitCause::Crash,
                SignalReason::BusyTimeout => ExitCause::BusyTimeout,
                SignalReason::Disconnect => ExitCause::Disconnect,
                SignalReason::MemoryLimit => ExitCause::MemoryLimit,
                SignalReason::MaxRequests | SignalReason::Reload | SignalReason::ScaleDown => {
                    ExitCause::Retire
                }
                SignalReason::Shutdown | SignalReason::Escalation | SignalReason::ReopenLogs => {
                    ExitCause::Shutdown
                }
            };
            self.totals.exited(cause, c.requests);
            if r.reason == SignalReason::StartTimeout || self_quit {
                // A child that cannot start is a crash: back off before the next.
                self.count_crash(line);
            } else {
                self.log(level, line);
            }
            return;
        }
        if matches!(self.phase, Phase::ShuttingDown { .. }) {
            self.totals.exited(ExitCause::Shutdown, c.requests);
            self.log(Level::Info, format!("{who} exited: {status}"));
            return;
        }
        // A child that served but then failed by itself (a non-zero exit, a fault
        // signal) soon after its start is a crash loop one request at a time (a
        // poison request, a handler that dies after each answer): only a death
        // from outside (KILL, TERM, INT, HUP: a kill spree) or a clean exit keeps
        // the credit of having served.
        let failed_soon = uptime < self.opts.min_healthy_uptime && !ended_from_outside(status);
        // For the metrics, any failure no one here asked for is a crash, even one
        // the backoff forgives (a KILL from outside after serving).
        let cause = if status.success() && self.is_healthy(&c) && !failed_soon {
            ExitCause::Other
        } else {
            ExitCause::Crash
        };
        self.totals.exited(cause, c.requests);
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

    fn on_netstat(&mut self, conns: &[Connection]) {
        let mut seen = BTreeSet::new();
        for conn in conns.iter().filter(|c| c.state == ConnState::CloseWait) {
            let d = conn.conn;
            let Some(slot) = self.pool.slot_of(d.pid) else {
                continue;
            };
            seen.insert(d);
            if self.disconnects_seen.contains(&d) {
                continue;
            }
            let Some(c) = self.pool.get(slot) else {
                continue;
            };
            let view = ChildView::new(c.busy_since.is_some(), c.generation, c.requests);
            match self.disconnect.on_disconnect(&d, &view) {
                DisconnectAction::RunHook => self.push(Action::RunHook(Hook::ClientDisconnect(d))),
                DisconnectAction::Terminate => {
                    if self.pool.get(slot).is_some_and(|c| c.retire.is_none()) {
                        self.retire(slot, SignalReason::Disconnect);
                    }
                }
                DisconnectAction::Ignore => {}
            }
        }
        self.disconnects_seen = seen;
    }
}
