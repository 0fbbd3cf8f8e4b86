//! Fork orchestration: preparing a slot, the child's log channel, and the fork.

use super::child::{child_main, ChildStart};
use super::credentials::Credentials;
use super::signals::PARENT_SIGNALS;
use super::system::System;
use super::{logs, os};
use crate::supervisor::driver::Spawn;
use crate::Pid;
use std::os::fd::{AsRawFd, OwnedFd};

impl<T: 'static> System<T> {
    /// Forks the child `spawn` asks for; its pid, or `None` if it could not be
    /// forked (logged once per streak of failures).
    pub(super) fn fork_child(&mut self, spawn: Spawn) -> Option<Pid> {
        let Spawn {
            slot,
            generation,
            max_requests,
            quiet_failure,
        } = spawn;
        if self.cfg.command.is_some() && !self.command_started {
            self.start_command_threads();
        }
        // A command's output pipes, made before the fork.
        let pipes = match (&self.cfg.command, &self.capture) {
            (Some(_), Some(_)) => match super::command::capture::Pipes::new() {
                Ok(p) => Some(p),
                Err(e) => {
                    // Like a failed fork: counted, backed off, retried.
                    self.fork_failed(
                        nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                        "making the child's output pipes",
                    );
                    return None;
                }
            },
            _ => None,
        };
        let (stdio_read, stdio) = match pipes {
            Some(p) => (Some(p.read), Some(p.write)),
            None => (None, None),
        };
        let Some(state) = self.state.as_ref() else {
            // No after_init value: cannot happen (the machine spawns only after it).
            slog::error!(self.logger, "no after_init value to fork slot {slot} with");
            return None;
        };
        // The channel the reopened logs will come down (only with log files; a
        // command's children write through the parent instead).
        let (parent_end, child_end) = if self.logs.all().is_empty() || self.cfg.command.is_some() {
            (None, None)
        } else {
            match log_channel() {
                Ok((p, c)) => (Some(p), Some(c)),
                Err(e) => {
                    let user = self.credentials.as_ref().and_then(Credentials::user_name);
                    slog::error!(
                        self.logger,
                        "{}",
                        logs::no_channel_notice(&e, user.as_deref())
                    );
                    if user.is_some() {
                        // As that user it could not reopen root's logs after a
                        // rotation: a failed fork (backoff, retried) instead.
                        return None;
                    }
                    (None, None)
                }
            }
        };
        // Prepared only once the fork will be tried: a spawn refused above leaves
        // the slot empty in the scoreboard.
        self.board.prepare(slot, generation);
        self.board.set_generation(generation);
        // What the child closes first: the parent's pipes and the parent's ends of
        // every log channel (a fork copies them all; close-on-exec is no help).
        let mut inherited = self.inherited.clone();
        inherited.extend(self.log_channels.values().map(AsRawFd::as_raw_fd));
        inherited.extend(parent_end.as_ref().map(AsRawFd::as_raw_fd));
        let parent_pid = self.parent_pid;
        let board = self.board;
        let inherited = &inherited;
        let main_loop = &self.cfg.main_loop;
        let child_logger = &self.cfg.child_logger;
        let logs = &self.logs;
        let credentials = self.credentials.as_ref();
        // `move`: the child's end goes with the closure, which the parent drops
        // (closing its copy) and the child consumes.
        let result = os::fork_child(&PARENT_SIGNALS, move |gate| {
            child_main(ChildStart {
                gate,
                parent_pid,
                board,
                inherited,
                slot,
                generation,
                max_requests,
                main_loop,
                state,
                child_logger,
                logs,
                credentials,
                log_channel: child_end,
                quiet_failure,
                stdio,
            })
        });
        match result {
            Ok(pid) => {
                if self.cfg.command.is_some() {
                    self.commanded.insert(pid.as_raw());
                    super::os::set_group_of(pid.as_raw());
                    if let Some(k) = &self.keeper {
                        super::os::tell_keeper(k, pid.as_raw());
                    }
                }
                if let (Some(c), Some(read)) = (&self.capture, stdio_read) {
                    if let (Ok(o), Ok(e)) = (read.0.try_clone(), read.1.try_clone()) {
                        self.captured.insert(pid.as_raw(), (o, e));
                    }
                    c.add(pid.as_raw(), read);
                }
                if let Some(p) = parent_end {
                    self.log_channels.insert(pid.as_raw(), p);
                }
                if let Some((e, n)) = self.fork_failing.take() {
                    slog::info!(self.logger, "fork works again after {n} failures ({e})");
                }
                self.board.assign(slot, pid.as_raw());
                Some(Pid(pid.as_raw()))
            }
            Err(e) => {
                self.fork_failed(e, "fork");
                self.board.release(slot);
                None
            }
        }
    }

    /// A fork that failed (or could not be tried): logged once per streak of
    /// failures (or when the error changes); the machine counts them and backs off.
    fn fork_failed(&mut self, e: nix::errno::Errno, what: &str) {
        match &mut self.fork_failing {
            Some((last, n)) if *last == e => *n += 1,
            _ => {
                slog::error!(
                    self.logger,
                    "{what} failed: {e}; serving with the children there are"
                );
                self.fork_failing = Some((e, 1));
            }
        }
    }

    /// Before the first command child: the output capture, the cooperative
    /// command's scoreboard descriptor, the busy observer.
    pub(super) fn start_command_threads(&mut self) {
        self.command_started = true;
        let Some(cmd) = self.cfg.command.clone() else {
            return;
        };
        match super::command::Capture::start(self.logger.clone(), self.logs.access.clone()) {
            Ok(c) => {
                // The adopted children's pipes, from the image before.
                for (pid, out, err) in std::mem::take(&mut self.handed_capture) {
                    if let (Ok(o), Ok(e)) = (out.try_clone(), err.try_clone()) {
                        self.captured.insert(pid, (o, e));
                    }
                    c.add(pid, (out, err));
                }
                self.capture = Some(c);
            }
            Err(e) => slog::error!(
                self.logger,
                "cannot start capturing the children's output ({e}): they write where the parent does"
            ),
        }
        // Slots for every child, and as many again for those retiring (after an
        // upgrade, the keeper of the image before goes on).
        if self.keeper.is_none() {
            match super::os::fork_keeper(self.cfg.options.max_children.saturating_mul(2) + 16) {
                Ok((_, pipe)) => self.keeper = Some(pipe),
                Err(e) => slog::error!(
                    self.logger,
                    "cannot fork the keeper ({e}): if preforkd is KILLed, the children's own children may outlive it"
                ),
            }
        }
        if cmd.cooperative {
            // A description of its own: a child's copy must not share the
            // parent's lock on the file.
            let own = format!("/proc/self/fd/{}", self.board_file.as_raw_fd());
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&own)
            {
                Ok(f) => {
                    let _ = cmd.board_fd.set(f.as_raw_fd());
                    self.command_board = Some(f);
                }
                Err(e) => slog::error!(
                    self.logger,
                    "cannot open the scoreboard for the children ({e}): they cannot report"
                ),
            }
        }
        if let Err(e) =
            super::command::observe::start(self.board, cmd, self.cfg.options.min_healthy_uptime)
        {
            slog::error!(
                self.logger,
                "cannot start the busy observer ({e}): the pool will not grow with the load"
            );
        }
    }
}

/// A connected pair of Unix datagram sockets, close-on-exec: (parent's end,
/// child's end). The parent's end never blocks: a child that does not read in
/// time misses that rotation's descriptors, the parent does not wait for it.
pub(super) fn log_channel() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )?)
}
