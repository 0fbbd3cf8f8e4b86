//! The parent's loop: waits for signals, wake-ups and timers, reaps children,
//! reads the scoreboard, and feeds the machine.

use super::check::Supervision;
use super::clock::Clock;
use super::error::{io_err, io_err_std, RunError};
use super::prefork::{Logs, Prefork};
use super::scoreboard::Board;
use super::signals::{to_machine_signal, PARENT_SIGNALS};
use super::system::System;
use super::upgrade::{self, Inherited};
use super::{os, systemd};
use crate::supervisor::driver;
use crate::{Event, Machine, Scoreboard};
use crossbeam_channel::{after, never, select, unbounded, Receiver};
use nix::fcntl::OFlag;
use nix::unistd;
use signal_hook::consts::signal as sh;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// The parent: the machine, fed by the loop below, and the [`System`] it acts
/// on, through [`driver`].
pub(super) struct Parent<T> {
    pub(super) machine: Machine,
    /// The last scoreboard reading (its buffers reused).
    pub(super) reading: Scoreboard,
    /// The scoreboard's stop flag is set (see [`driver::before_action`]).
    pub(super) stopping_marked: bool,
    pub(super) signals: Receiver<i32>,
    pub(super) wakes: Receiver<()>,
    pub(super) sys: System<T>,
}

impl<T: 'static> Parent<T> {
    pub(super) fn start(
        mut cfg: Prefork<T>,
        supervision: Supervision,
        logger: slog::Logger,
        logs: Logs,
        pid_fd: Option<std::os::fd::RawFd>,
        service: systemd::ServiceEnv,
        handed: Option<Box<Inherited>>,
    ) -> Result<Parent<T>, RunError> {
        let Supervision {
            machine,
            credentials,
        } = supervision;
        os::ignore_sigpipe().map_err(io_err("ignoring SIGPIPE"))?;
        // The helper threads start with the parent's signals blocked (they inherit
        // the mask), so the signals reach the main thread only, and stay pending
        // while it holds them back across a re-exec. (After an upgrade's exec they
        // are held already.)
        os::hold_signals(&PARENT_SIGNALS).map_err(|e| RunError::Io {
            what: "holding signals back".into(),
            source: e,
        })?;

        // Signal handling is in place before the first fork: for each signal a flag,
        // then a byte down a self-pipe we own (so children can close it), read by a
        // thread that forwards the flagged signals. Signals coalesce, as they do.
        let (sig_read, sig_write) =
            std::os::unix::net::UnixStream::pair().map_err(|e| RunError::Io {
                what: "creating the signal pipe".into(),
                source: e,
            })?;
        // Children close these first: the parent's pipes, and the pid file (its lock
        // must not outlive the parent in a child).
        let mut inherited = vec![sig_read.as_raw_fd()];
        inherited.extend(pid_fd);
        let mut flags = Vec::new();
        for &sig in &PARENT_SIGNALS {
            let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let write = sig_write.try_clone().map_err(|e| RunError::Io {
                what: "creating the signal pipe".into(),
                source: e,
            })?;
            inherited.push(write.as_raw_fd());
            signal_hook::flag::register(sig, std::sync::Arc::clone(&flag))
                .and_then(|_| signal_hook::low_level::pipe::register(sig, write))
                .map_err(|e| RunError::Io {
                    what: format!("installing the handler of signal {sig}"),
                    source: e,
                })?;
            flags.push((sig, flag));
        }
        drop(sig_write);
        // A child that exited before the handlers were in place (an orphan PID 1
        // inherited; after an upgrade, one that died across the exec) told
        // nobody: a SIGCHLD of our own, pending until the signals are let in, has
        // the loop reap whatever is there.
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGCHLD);
        let (sig_tx, signals) = unbounded();
        let gate = std::sync::Arc::new(std::sync::Mutex::new(()));
        let pending = super::signals::Pending {
            gate: std::sync::Arc::clone(&gate),
            flags: flags.clone(),
            forwarded: signals.clone(),
        };
        std::thread::Builder::new()
            .name("preforkd-signals".into())
            .spawn(move || {
                let mut sig_read = sig_read;
                let mut buf = [0u8; 64];
                loop {
                    match std::io::Read::read(&mut sig_read, &mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                    // Flag to channel under the gate: a re-exec sees each signal
                    // in one or the other (see `Pending`).
                    let _gate = gate.lock().unwrap_or_else(|e| e.into_inner());
                    for (sig, flag) in &flags {
                        if flag.swap(false, std::sync::atomic::Ordering::AcqRel)
                            && sig_tx.send(*sig).is_err()
                        {
                            return;
                        }
                    }
                }
            })
            .map_err(|e| RunError::Io {
                what: "starting the signal thread".into(),
                source: e,
            })?;

        // Children write a byte here when the pool saturates or a child is ready
        // (after an upgrade, the pipe the adopted children write to).
        let mut handed = handed;
        let (wake_read, wake_write) = match handed.as_mut() {
            Some(h) => {
                let r = h.wake_read.try_clone();
                let w = h.wake_write.try_clone();
                r.and_then(|r| Ok((r, w?))).map_err(|e| RunError::Io {
                    what: "adopting the wake-up pipe".into(),
                    source: e,
                })?
            }
            None => {
                let (r, w) =
                    unistd::pipe2(OFlag::O_CLOEXEC).map_err(io_err("creating the wake-up pipe"))?;
                nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
                    .map_err(io_err("setting up the wake-up pipe"))?;
                (r, w)
            }
        };
        let reader = wake_read.try_clone().map_err(|e| RunError::Io {
            what: "setting up the wake-up pipe".into(),
            source: e,
        })?;
        inherited.push(wake_read.as_raw_fd());
        inherited.push(reader.as_raw_fd());
        let (wake_tx, wakes) = unbounded();
        std::thread::Builder::new()
            .name("preforkd-wakeups".into())
            .spawn(move || {
                let mut buf = [0u8; 64];
                loop {
                    match unistd::read(&reader, &mut buf) {
                        Ok(0) => break,
                        Ok(_) => {
                            if wake_tx.send(()).is_err() {
                                break;
                            }
                        }
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(_) => break,
                    }
                }
            })
            .map_err(|e| RunError::Io {
                what: "starting the wake-up thread".into(),
                source: e,
            })?;
        // Both helper threads run with them blocked: let them in on this thread.
        os::release_signals(&PARENT_SIGNALS).map_err(|e| RunError::Io {
            what: "letting signals in".into(),
            source: e,
        })?;

        let (board, board_file) = match handed.as_mut() {
            Some(h) => {
                let file = h
                    .board
                    .try_clone()
                    .map_err(io_err_std("adopting the scoreboard"))?;
                let slots = cfg.options.max_children;
                if h.slots != slots {
                    return Err(super::error::invalid(
                        "max_children",
                        format!(
                            "is {slots}, but the running pool has {} slots: an in-place upgrade keeps max_children",
                            h.slots
                        ),
                    ));
                }
                let board = Board::adopt(&file, slots, wake_write.as_raw_fd())
                    .map_err(io_err_std("adopting the scoreboard"))?;
                (board, file)
            }
            None => Board::create(
                cfg.scoreboard_path.as_deref(),
                cfg.options.max_children,
                wake_write.as_raw_fd(),
            )
            .map_err(|e| RunError::Io {
                // The error names the file.
                what: "creating the scoreboard".into(),
                source: e,
            })?,
        };
        // The lock is the parent's alone: it must not outlive it in a child.
        inherited.push(board_file.as_raw_fd());
        // Nor is the metrics endpoint a child's to serve.
        let metrics_listener = cfg.metrics_listener.take();
        inherited.extend(metrics_listener.as_ref().map(AsRawFd::as_raw_fd));

        for note in &service.notes {
            slog::warn!(logger, "{note}");
        }
        if let Some(h) = handed.as_ref() {
            // For `preforkd upgrade`, waiting for the outcome: a way back is an
            // upgrade abandoned.
            board.count_image();
            if h.machine.is_returning() || h.returned.is_some() {
                board.count_abandoned();
            }
        }
        if let Some(why) = handed.as_ref().and_then(|h| h.returned.as_ref()) {
            slog::error!(
                logger,
                "upgrade abandoned: the new image could not start ({why}); this image takes its children back"
            );
        }
        let notifier = match &service.notify_socket {
            None => None,
            Some(addr) => match addr.to_str().map(systemd::Notifier::new) {
                Some(Ok(n)) => Some(n),
                Some(Err(e)) => {
                    slog::warn!(logger, "NOTIFY_SOCKET unusable, not notifying: {e}");
                    None
                }
                None => {
                    slog::warn!(logger, "NOTIFY_SOCKET {addr:?} is not UTF-8, not notifying");
                    None
                }
            },
        };

        // The executable an upgrade runs: the one this daemon was started from.
        let exe = match handed.as_ref() {
            Some(h) => h.exe.clone(),
            None => upgrade::started_from(),
        };
        let mut watched: Vec<PathBuf> = exe.iter().cloned().collect();
        let watch_executable = !watched.is_empty();
        watched.append(&mut cfg.watch);
        // The baseline is taken now: a change before the start is no reload.
        let watcher = super::watcher::Watcher::new(watched);
        let n = cfg.options.max_children;
        let clock = match handed.as_ref() {
            Some(h) => Clock::from_origin(h.origin_ns),
            None => Clock::start(),
        };
        let log_channels = handed
            .as_mut()
            .map(|h| std::mem::take(&mut h.channels))
            .unwrap_or_default();
        let previous = handed.as_mut().and_then(|h| h.previous.take());
        let own_image = upgrade::open_own_image();
        // The images are the parent's business: children close them.
        inherited.extend(
            own_image
                .iter()
                .chain(previous.iter())
                .map(AsRawFd::as_raw_fd),
        );
        let previous_argv = handed
            .as_mut()
            .map(|h| std::mem::take(&mut h.previous_argv))
            .unwrap_or_default();
        // The adopted children of a command ran it too.
        let commanded = if cfg.command.is_some() {
            machine.pids().map(|p| p.0).collect()
        } else {
            Default::default()
        };
        let metrics = match metrics_listener {
            None => None,
            Some(l) => match super::metrics::Endpoint::start(l, board, logger.clone()) {
                Ok((e, addr)) => {
                    slog::info!(logger, "metrics: serving on http://{addr}/metrics");
                    Some(e)
                }
                // Serving matters more than being watched.
                Err(e) => {
                    slog::error!(
                        logger,
                        "cannot start the metrics endpoint ({e}): serving without it"
                    );
                    None
                }
            },
        };
        let sys = System {
            metrics,
            cfg,
            logger,
            board,
            clock,
            inherited,
            log_channels,
            _wake_read: wake_read,
            _wake_write: wake_write,
            board_file,
            state: None,
            init_error: None,
            watcher,
            parent_pid: unistd::getpid(),
            logs,
            notifier,
            // Both set by the caller once started (a failed start is reported
            // by the caller).
            daemonized: false,
            reporter: None,
            credentials,
            notify_failing: None,
            fork_failing: None,
            pid_fd,
            exe,
            watch_executable,
            own_image,
            previous,
            previous_argv,
            trial: None,
            probe_result: None,
            service_vars: service.pass_on,
            candidate: None,
            pending,
            disconnect_probe: None,
            unreadable_logged: false,
            scanner: None,
            capture: None,
            command_started: false,
            command_board: None,
            tree_of: Default::default(),
            keeper: handed.as_mut().and_then(|h| h.keeper.take()),
            captured: Default::default(),
            commanded,
            handed_capture: handed
                .as_mut()
                .map(|h| std::mem::take(&mut h.captured))
                .unwrap_or_default(),
        };
        Ok(Parent {
            machine,
            reading: Scoreboard {
                slots: Vec::with_capacity(n),
                backlog: None,
            },
            stopping_marked: false,
            signals,
            wakes,
            sys,
        })
    }

    /// Serves until the machine exits. Whatever ends it before the launcher heard
    /// that the daemon is up is told to the launcher.
    pub(super) fn run(mut self) -> Result<i32, RunError> {
        let result = self.serve();
        self.sys.end_trial_now();
        if let Some(r) = self.sys.reporter.as_mut() {
            match &result {
                Err(e) => r.fail(&e.to_string()),
                Ok(code) => r.fail(&format!(
                    "the daemon stopped during start-up (exit code {code})"
                )),
            }
        }
        result
    }

    pub(super) fn serve(&mut self) -> Result<i32, RunError> {
        // Whether this turn already read the scoreboard for the busy watch.
        let mut looked = false;
        loop {
            let exit =
                driver::carry_out(&mut self.machine, &mut self.sys, &mut self.stopping_marked);
            if let Some(m) = self.sys.metrics.as_mut() {
                m.publish(&self.machine);
            }
            if let Some(code) = exit {
                if let Some(c) = &self.sys.capture {
                    c.drain(std::time::Duration::from_secs(1));
                }
                return match self.sys.init_error.take() {
                    Some(e) => Err(RunError::AfterInit(e)),
                    None => Ok(code),
                };
            }
            let room = self.machine.counts().alive() < self.sys.cfg.options.max_children;
            self.sys.board.set_can_grow(room);
            // Hung-up clients matter only while a child is busy: until then the
            // machine schedules no look, and the first child that gets busy wakes
            // us. One that got busy just before the watch was armed would not: the
            // scoreboard is read now, once a turn (a busy slot the machine does not
            // count must not make the loop spin).
            if driver::busy_unseen(&self.machine, &mut self.sys) && !looked {
                looked = true;
                self.tick();
                continue;
            }
            looked = false;
            let timer = match self.machine.poll_timeout() {
                Some(t) => after(t.saturating_since(self.sys.clock.now())),
                None => never(),
            };
            let looks = match &self.sys.scanner {
                Some(s) => s.found.clone(),
                None => never(),
            };
            select! {
                recv(self.signals) -> sig => match sig {
                    Ok(sig) => self.on_signal(sig),
                    Err(_) => {
                        return Err(RunError::Io {
                            what: "waiting for signals".into(),
                            source: std::io::Error::other("the signal thread stopped"),
                        })
                    }
                },
                recv(self.wakes) -> _ => {
                    while self.wakes.try_recv().is_ok() {}
                    self.tick();
                },
                recv(timer) -> _ => self.tick(),
                recv(looks) -> found => match found {
                    Ok(look) => self.on_look(look),
                    Err(_) => {
                        // The looking thread ended (it panicked): without this the
                        // closed channel would wake the loop at once, for ever.
                        // The next check starts another.
                        slog::error!(
                            self.sys.logger,
                            "client disconnects: the looking thread stopped; starting another at the next check"
                        );
                        self.sys.scanner = None;
                    }
                },
            }
        }
    }

    pub(super) fn on_signal(&mut self, sig: i32) {
        if sig == sh::SIGCHLD {
            self.reap();
            return;
        }
        if let Some(s) = to_machine_signal(sig) {
            let now = self.sys.clock.now();
            if matches!(s, crate::Signal::Ttin | crate::Signal::Ttou) {
                // For `preforkd scale`: the machine takes a nudge only while it
                // accepts work.
                let serving = matches!(
                    self.machine.state(),
                    crate::State::Spawning | crate::State::Serving | crate::State::Reloading
                );
                self.sys.board.count_nudge(!serving);
            }
            if s == crate::Signal::Usr2 && !self.machine.accepts_upgrade() {
                // For `preforkd upgrade`: refused at once, not left to its timeout.
                self.sys.board.count_abandoned();
            }
            self.machine.handle(now, Event::Signal(s));
        }
    }

    /// A look for client disconnects is back (see [`super::scanner`]): its
    /// verdict goes to the machine, and the probe that answered is the one used
    /// from now on.
    fn on_look(&mut self, look: super::netstat::Look) {
        if let Some(s) = self.sys.scanner.as_mut() {
            s.busy = false;
        }
        let conns = self.sys.looked(look);
        let now = self.sys.clock.now();
        self.machine.handle(now, Event::Netstat(&conns));
    }

    /// Reaps every child that has exited, the scoreboard read first (see
    /// [`driver`]).
    pub(super) fn reap(&mut self) {
        driver::reap(&mut self.machine, &mut self.sys, &mut self.reading);
    }

    /// Reads the scoreboard and feeds it to the machine.
    pub(super) fn tick(&mut self) {
        driver::tick(&mut self.machine, &mut self.sys, &mut self.reading);
    }
}
