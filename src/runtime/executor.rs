//! The action executor's runtime half: the hooks, passing reopened logs to the
//! children, and how notifications went ([`supervisor::driver::carry_out`]
//! dispatches each action to [`System`]'s effects).
//!
//! [`supervisor::driver::carry_out`]: crate::supervisor::driver::carry_out

use super::logs;
use super::logs::LogFile;
use super::system::System;
use crate::Hook;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

impl<T: 'static> System<T> {
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

    /// Passes the current log descriptors to every live child (see
    /// [`Prefork::user`](crate::Prefork::user)); a child that cannot get them keeps its files.
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

    /// Runs `hook`, a panic caught and logged; whether it succeeded.
    pub(super) fn hook(&mut self, hook: Hook) -> bool {
        match hook {
            Hook::AfterInit => {
                let init = std::mem::replace(
                    &mut self.cfg.after_init,
                    Box::new(|| Err("after_init ran twice".into())),
                );
                let outcome = catch_unwind(AssertUnwindSafe(init));
                if matches!(outcome, Ok(Ok(_))) {
                    // Handed-over listeners it did not claim are strays now.
                    super::upgrade::drop_unclaimed_listeners();
                }
                match outcome {
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
                }
            }
            Hook::BeforeShutdown => {
                let mut ok = true;
                if let (Some(f), Some(state)) =
                    (self.cfg.before_shutdown.as_mut(), self.state.as_ref())
                {
                    if catch_unwind(AssertUnwindSafe(|| f(state))).is_err() {
                        slog::error!(self.logger, "before_shutdown panicked");
                        ok = false;
                    }
                }
                ok
            }
            Hook::ReloadHandler => {
                let mut ok = true;
                if let (Some(f), Some(state)) =
                    (self.cfg.auto_reload_handler.as_mut(), self.state.as_ref())
                {
                    if catch_unwind(AssertUnwindSafe(|| f(state))).is_err() {
                        slog::error!(self.logger, "auto_reload_handler panicked");
                        ok = false;
                    }
                }
                ok
            }
            Hook::ClientDisconnect(d) => {
                let mut ok = true;
                if let Some(f) = self.cfg.on_client_disconnect.as_mut() {
                    if catch_unwind(AssertUnwindSafe(|| f(&d))).is_err() {
                        slog::error!(self.logger, "on_client_disconnect panicked");
                        ok = false;
                    }
                }
                ok
            }
        }
    }
}
