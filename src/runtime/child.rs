//! The child's life, from just after the fork to `_exit`.

use super::credentials::Credentials;
use super::logs::file_logger;
use super::os;
use super::prefork::{default_logger, LoggerFactory, Logs, MainLoop};
use super::scoreboard::Board;
use super::worker::Worker;
use nix::sys::signal::Signal as NSig;
use nix::unistd;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub(super) struct ChildStart<'a, T> {
    /// Opened once the child's handlers exist (signals stay blocked until then).
    pub(super) gate: os::SignalGate,
    pub(super) parent_pid: unistd::Pid,
    pub(super) board: Board,
    pub(super) inherited: &'a [std::os::fd::RawFd],
    pub(super) slot: usize,
    pub(super) generation: u64,
    pub(super) max_requests: Option<u64>,
    pub(super) main_loop: &'a MainLoop<T>,
    pub(super) state: &'a T,
    pub(super) child_logger: &'a Option<LoggerFactory>,
    pub(super) logs: &'a Logs,
    pub(super) credentials: Option<&'a Credentials>,
    /// Where the parent passes the reopened logs.
    pub(super) log_channel: Option<OwnedFd>,
    /// Forked during a crash streak: a failing main_loop logs at debug level.
    pub(super) quiet_failure: bool,
    /// A command's child: its stdout and stderr (the parent captures them). Its
    /// slot stays starting: the command is not ready when it is exec'd (the
    /// parent's observer, or the command itself, says when it is).
    pub(super) stdio: Option<(OwnedFd, OwnedFd)>,
}

/// The child's whole life, from just after the fork; returns its exit code.
pub(super) fn child_main<T>(c: ChildStart<'_, T>) -> i32 {
    // First, so that whatever this child says from here on is captured.
    if let Some((out, err)) = &c.stdio {
        if os::redirect_stdio(out.as_raw_fd(), err.as_raw_fd()).is_err() {
            return 1;
        }
    }
    // Drop privileges first: a credential change clears PDEATHSIG.
    if let Some(creds) = c.credentials {
        if let Err(e) = creds.apply() {
            use std::io::Write;
            // Not eprintln!: a closed stderr must not make this a panic.
            let _ = writeln!(
                std::io::stderr(),
                "preforkd child: cannot switch user/group: {e}"
            );
            return 1;
        }
    }
    // Die with the parent; then close the race where it died before this line.
    if nix::sys::prctl::set_pdeathsig(NSig::SIGKILL).is_err() || unistd::getppid() != c.parent_pid {
        return 1;
    }
    // The parent's self-pipe, wake-up reader and locks are not ours to hold; closed
    // first (signals are still blocked), so a child forked at the parent's
    // descriptor limit has room for its own pipe.
    for &fd in c.inherited {
        os::close_inherited(fd);
    }
    let wake = match os::install_worker_handlers(c.gate) {
        Ok(wake) => wake,
        Err(e) => {
            // No logger yet (it is built below); stderr is all there is.
            if !c.quiet_failure {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "preforkd child: cannot install its signal handlers: {e}"
                );
            }
            return 1;
        }
    };
    let me = c.board.worker_slot(c.slot);
    me.claim(unistd::getpid().as_raw());
    let logger = match (c.child_logger, &c.logs.error) {
        (Some(f), _) => f(),
        (None, Some(l)) => file_logger(l, c.logs.json),
        (None, None) => default_logger(),
    };
    let mut worker = Worker::new(
        c.slot,
        c.generation,
        c.max_requests,
        me,
        logger.clone(),
        wake,
    )
    .with_logs(c.logs.all(), c.logs.access.clone());
    if let Some(channel) = c.log_channel {
        worker = worker.with_log_channel(channel);
    }
    if c.stdio.is_none() {
        worker.ready();
    }
    let code = run_main_loop(c.main_loop, &worker, c.state, &logger, c.quiet_failure);
    worker.retire();
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    code
}

/// Runs `main_loop`, catching a panic; returns the child's exit code.
/// `quiet`: a crash streak is on and its reason was logged already, so a failure
/// is logged at debug level only (once per streak, not once per fork).
pub(super) fn run_main_loop<T>(
    f: &MainLoop<T>,
    worker: &Worker,
    state: &T,
    logger: &slog::Logger,
    quiet: bool,
) -> i32 {
    match catch_unwind(AssertUnwindSafe(|| f(worker, state))) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) if quiet => {
            slog::debug!(logger, "main_loop failed: {e}");
            1
        }
        Ok(Err(e)) => {
            slog::error!(logger, "main_loop failed: {e}");
            1
        }
        Err(panic) => {
            let msg = panic_message(&*panic);
            if quiet {
                slog::debug!(logger, "main_loop panicked: {msg}");
            } else {
                slog::error!(logger, "main_loop panicked: {msg}");
            }
            70
        }
    }
}

/// A panic's message, if it has one.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
