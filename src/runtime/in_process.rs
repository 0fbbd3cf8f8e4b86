//! `prefork = 0`: `main_loop` in the parent's own process, with the same signals
//! and graceful shutdown.

use super::child::run_main_loop;
use super::error::{io_err, RunError};
use super::prefork::{Logs, Prefork};
use super::scoreboard::Board;
use super::worker::Worker;
use super::{daemon, os};
use nix::unistd;
use std::path::PathBuf;
use std::time::Duration;

impl<T: 'static> Prefork<T> {
    /// `prefork = 0`: `main_loop` in this process, with the same signals and
    /// graceful shutdown.
    /// A failure is returned with `reporter` untouched (the caller tells the
    /// launcher).
    pub(super) fn run_in_process(
        self,
        logger: slog::Logger,
        logs: Logs,
        reporter: &mut Option<daemon::Reporter>,
    ) -> Result<i32, RunError> {
        os::ignore_sigpipe().map_err(io_err("ignoring SIGPIPE"))?;
        let gate = os::SignalGate::current().map_err(io_err("reading the signal mask"))?;
        let wake =
            os::install_worker_handlers(gate).map_err(io_err("installing signal handlers"))?;
        // The file (and its lock) is held until this returns.
        let (board, _board_file) =
            Board::create(self.scoreboard_path.as_deref(), 1, -1).map_err(|e| RunError::Io {
                what: "creating the scoreboard".into(),
                source: e,
            })?;
        let state = (self.after_init)().map_err(RunError::AfterInit)?;
        if let Some(r) = reporter.as_mut() {
            r.ok();
        }
        board.prepare(0, 1);
        board.worker_slot(0).claim(unistd::getpid().as_raw());
        // TERM here is always a shutdown: drain the backlog before leaving.
        board.set_stopping();
        let worker = Worker::new(
            0,
            1,
            self.options.max_requests_per_child,
            board.worker_slot(0),
            logger.clone(),
            wake,
        )
        .with_logs(logs.all(), logs.access.clone());
        worker.ready();
        let _timeout = GracefulTimeout::start(
            self.options.graceful_timeout,
            logger.clone(),
            self.pid_path.clone(),
        )?;
        let code = run_main_loop(&self.main_loop, &worker, &state, &logger, false);
        // The timeout bounds main_loop's drain, not before_shutdown.
        drop(_timeout);
        worker.retire();
        if let Some(mut f) = self.before_shutdown {
            f(&state);
        }
        Ok(code)
    }
}

/// `prefork = 0`: the graceful timeout, kept by a thread. Once a stop is requested
/// it waits `graceful_timeout` for `main_loop` to return (the caller then drops
/// this guard, before `before_shutdown` runs);
/// past that it logs a warning, removes the pid file and ends the process with exit
/// code 0 (the stop completed, as with children KILLed past the timeout), the
/// request in hand cut off (there is no child to KILL) and `before_shutdown` not
/// run (the main thread is still in `main_loop`).
pub(super) struct GracefulTimeout {
    pub(super) done: Option<crossbeam_channel::Sender<()>>,
}

impl GracefulTimeout {
    pub(super) fn start(
        timeout: Duration,
        logger: slog::Logger,
        pid_path: Option<PathBuf>,
    ) -> Result<GracefulTimeout, RunError> {
        let stops = os::watch_stops().map_err(io_err("creating the stop pipe"))?;
        let (done, finished) = crossbeam_channel::bounded::<()>(0);
        std::thread::Builder::new()
            .name("preforkd-graceful-timeout".into())
            .spawn(move || {
                let mut byte = [0u8; 1];
                loop {
                    match unistd::read(&stops, &mut byte) {
                        Ok(_) => break,
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(_) => return,
                    }
                }
                // The main loop returning drops the sender: a clean stop.
                if !matches!(
                    finished.recv_timeout(timeout),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout)
                ) {
                    return;
                }
                // The stop was asked for and completes: a success, as when the
                // parent KILLs children past the timeout (see `Prefork::run`).
                slog::warn!(
                    logger,
                    "graceful_timeout ({timeout:?}) passed with a request in hand; \
                     exiting (the request is cut off, before_shutdown does not run)"
                );
                if let Some(p) = pid_path {
                    let _ = std::fs::remove_file(p);
                }
                os::exit_now(0);
            })
            .map_err(|e| RunError::Io {
                what: "starting the graceful-timeout thread".into(),
                source: e,
            })?;
        Ok(GracefulTimeout { done: Some(done) })
    }
}

impl Drop for GracefulTimeout {
    fn drop(&mut self) {
        self.done.take();
    }
}
