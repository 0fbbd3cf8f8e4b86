//! The real [`Effects`]: system calls and the shared scoreboard, for the
//! ordering rules of [`crate::supervisor::driver`].

use super::clock::Clock;
use super::memory;
use super::scoreboard::Board;
use super::signals::to_os_signal;
use crate::supervisor::driver::Effects;
use crate::{ChildSignal, ExitStatus, Pid, Scoreboard, Time};
use nix::sys::signal as nsig;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

/// The parent's view of the world while it drives the machine: borrowed from
/// [`Parent`](super::parent::Parent)'s fields for one step.
pub(super) struct System<'a> {
    pub(super) board: Board,
    pub(super) clock: Clock,
    pub(super) logger: &'a slog::Logger,
    /// The parent's end of each live child's log channel, by pid.
    pub(super) log_channels: &'a mut BTreeMap<i32, OwnedFd>,
    /// The machine's generation, written to the scoreboard on every reading.
    pub(super) generation: u64,
    /// Read each child's memory with the scoreboard (`max_child_memory` is set).
    pub(super) measure_memory: bool,
}

impl Effects for System<'_> {
    fn now(&self) -> Time {
        self.clock.now()
    }

    fn try_reap(&mut self) -> Option<(Pid, ExitStatus)> {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    return Some((Pid(pid.as_raw()), ExitStatus::Exited(code)))
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    return Some((Pid(pid.as_raw()), ExitStatus::Signaled(sig as i32)))
                }
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return None,
                // Stopped, continued (not asked for), or interrupted: look again.
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    slog::error!(self.logger, "waitpid failed: {e}");
                    return None;
                }
            }
        }
    }

    fn read_scoreboard(&mut self, into: &mut Scoreboard) {
        self.board.clear_wake();
        self.board.set_generation(self.generation);
        self.board
            .read_into(self.clock.origin_ns(), &mut into.slots);
        if self.measure_memory {
            for s in into.slots.iter_mut().filter(|s| s.pid.0 > 0) {
                s.memory = memory::rss_bytes(s.pid.0);
            }
        }
    }

    fn release(&mut self, pid: Pid) {
        self.log_channels.remove(&pid.0);
        if let Some(slot) = self.board.slot_of(pid.0) {
            self.board.release(slot);
        }
    }

    fn signal(&mut self, pid: Pid, signal: ChildSignal, alone: bool) {
        if alone {
            if let Some(slot) = self.board.slot_of(pid.0) {
                self.board.mark_retired_alone(slot);
            }
        }
        match nsig::kill(unistd::Pid::from_raw(pid.0), to_os_signal(signal)) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => slog::error!(self.logger, "kill({pid}, {}) failed: {e}", signal.name()),
        }
    }

    fn mark_stopping(&mut self) {
        self.board.set_stopping();
    }

    fn busy_watch(&mut self) -> bool {
        self.board.arm_busy_watch()
    }
}
