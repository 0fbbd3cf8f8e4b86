//! The action executor: carries out what the machine decided (signals, spawns,
//! hooks, log reopening, notifications).

use super::error::RunError;
use super::logs;
use super::logs::LogFile;
use super::netstat;
use super::parent::{system, Parent};
use super::system::System;
use crate::supervisor::driver;
use crate::{Action, Event, Hook, HookKind, Level, Notify};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

impl<T: 'static> Parent<T> {
    /// Logs how a notification went: the first failure of a streak, then nothing
    /// more for periodic ones (STATUS and watchdog pings: a stuck service manager
    /// would get a line per second or faster) until one goes through, which is
    /// logged with the count of failures meanwhile. A failed state change
    /// (`change`: READY, RELOADING, STOPPING, MAINPID) is always logged: rare, and
    /// the service manager acts on it.
    pub(super) fn notified(&mut self, what: &str, change: bool, sent: std::io::Result<()>) {
        match (sent, self.notify_failing.as_mut()) {
            (Ok(()), None) => {}
            (Ok(()), Some(failed)) => {
                slog::info!(
                    self.logger,
                    "sd_notify works again ({failed} notifications lost while it failed)"
                );
                self.notify_failing = None;
            }
            (Err(e), None) => {
                slog::warn!(
                    self.logger,
                    "sd_notify {what}: {e} (further STATUS and WATCHDOG failures said once it works again)"
                );
                self.notify_failing = Some(1);
            }
            (Err(e), Some(failed)) => {
                *failed += 1;
                if change {
                    slog::warn!(self.logger, "sd_notify {what}: {e}");
                }
            }
        }
    }

    /// Carries out every pending action; `Some(code)` once the machine exits.
    pub(super) fn carry_out(&mut self) -> Result<Option<i32>, RunError> {
        while let Some(action) = self.machine.poll_action() {
            // The stop flag before any shutdown TERM: children seeing it drain the backlog.
            driver::before_action(&self.machine, &mut system!(self), &mut self.stopping_marked);
            match action {
                Action::Spawn {
                    slot,
                    generation,
                    max_requests,
                } => self.spawn(slot, generation, max_requests),
                Action::Signal {
                    pid,
                    signal,
                    reason,
                } => driver::send_signal(&mut system!(self), pid, signal, reason),
                Action::RunHook(hook) => self.run_hook(hook),
                Action::ReopenLogs => {
                    let all = self.logs.all();
                    for log in &all {
                        // A daemon's stdout and stderr follow its error log.
                        match log.reopen() {
                            Ok(()) => slog::info!(self.logger, "reopened {}", log.path().display()),
                            // The old file stays in use: nothing is lost.
                            Err(e) => slog::error!(self.logger, "cannot reopen: {e}"),
                        }
                    }
                    // Before the USR1 that follows: a child finds them when it looks.
                    self.pass_logs(&all);
                }
                Action::CheckForChanges => {
                    if self.files_changed() {
                        let now = self.now();
                        self.machine.handle(now, Event::FilesChanged);
                    }
                }
                Action::CheckDisconnects => {
                    let children: Vec<i32> = self.machine.pids().map(|p| p.0).collect();
                    let conns = netstat::closed_connections(&children);
                    let now = self.now();
                    self.machine.handle(now, Event::Netstat(&conns));
                }
                Action::Notify(n) => {
                    if let (Some(notifier), true, Notify::Ready) =
                        (&self.notifier, self.daemonized, &n)
                    {
                        // After the double fork, the pid systemd started is gone.
                        let sent = notifier.mainpid(std::process::id());
                        self.notified("MAINPID", true, sent);
                    }
                    if let Some(notifier) = &self.notifier {
                        let sent = notifier.send(&n);
                        // STATUS and WATCHDOG are periodic; the others are state changes.
                        let (what, change) = match n {
                            Notify::Watchdog => ("WATCHDOG=1".to_string(), false),
                            Notify::Status { .. } => (format!("{n:?}"), false),
                            _ => (format!("{n:?}"), true),
                        };
                        self.notified(&what, change, sent);
                    }
                }
                Action::Log { level, message } => match level {
                    Level::Error => slog::error!(self.logger, "{message}"),
                    Level::Warning => slog::warn!(self.logger, "{message}"),
                    Level::Info => slog::info!(self.logger, "{message}"),
                    Level::Debug => slog::debug!(self.logger, "{message}"),
                },
                Action::Exit { code } => {
                    if let Some(e) = self.init_error.take() {
                        return Err(RunError::AfterInit(e));
                    }
                    return Ok(Some(code));
                }
            }
        }
        Ok(None)
    }

    /// Passes the current log descriptors to every live child (see
    /// [`Prefork::user`]); a child that cannot get them keeps its files.
    pub(super) fn pass_logs(&self, all: &[Arc<LogFile>]) {
        let mut failed = 0;
        let mut last = None;
        for (&pid, channel) in &self.log_channels {
            match logs::send_logs(channel, all) {
                Ok(()) => {}
                // The child has exited and is not reaped yet: nothing to pass.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNREFUSED) | Some(libc::EPIPE)
                    ) => {}
                Err(e) => {
                    failed += 1;
                    last = Some((pid, e));
                }
            }
        }
        if let Some((pid, e)) = last {
            slog::error!(
                self.logger,
                "could not pass the reopened logs to {failed} children (child {pid}: {e}); \
                 they keep writing the old files"
            );
        }
    }

    pub(super) fn run_hook(&mut self, hook: Hook) {
        let now = self.now();
        match hook {
            Hook::AfterInit => {
                let init = std::mem::replace(
                    &mut self.cfg.after_init,
                    Box::new(|| Err("after_init ran twice".into())),
                );
                let ok = match catch_unwind(AssertUnwindSafe(init)) {
                    Ok(Ok(state)) => {
                        self.state = Some(state);
                        if let Some(r) = self.reporter.as_mut() {
                            r.ok();
                        }
                        true
                    }
                    Ok(Err(e)) => {
                        slog::error!(self.logger, "after_init failed: {e}");
                        if let Some(r) = self.reporter.as_mut() {
                            r.fail(&format!("after_init failed: {e}"));
                        }
                        self.init_error = Some(e);
                        false
                    }
                    Err(_) => {
                        self.init_error = Some("after_init panicked".into());
                        false
                    }
                };
                self.machine.handle(
                    now,
                    Event::HookFinished {
                        hook: HookKind::AfterInit,
                        ok,
                    },
                );
            }
            Hook::BeforeShutdown => {
                if let (Some(f), Some(state)) =
                    (self.cfg.before_shutdown.as_mut(), self.state.as_ref())
                {
                    if catch_unwind(AssertUnwindSafe(|| f(state))).is_err() {
                        slog::error!(self.logger, "before_shutdown panicked");
                    }
                }
            }
            Hook::ReloadHandler => {
                if let (Some(f), Some(state)) =
                    (self.cfg.auto_reload_handler.as_mut(), self.state.as_ref())
                {
                    if catch_unwind(AssertUnwindSafe(|| f(state))).is_err() {
                        slog::error!(self.logger, "auto_reload_handler panicked");
                    }
                }
            }
            Hook::ClientDisconnect(d) => {
                if let Some(f) = self.cfg.on_client_disconnect.as_mut() {
                    if catch_unwind(AssertUnwindSafe(|| f(&d))).is_err() {
                        slog::error!(self.logger, "on_client_disconnect panicked");
                    }
                }
            }
        }
    }
}
