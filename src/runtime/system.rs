//! The real [`Effects`]: the parent's side of the world (system calls, the shared
//! scoreboard, the children's channels, the hooks, the logs and the service
//! manager) that [`crate::supervisor::driver`] drives the machine against.

use super::clock::Clock;
use super::credentials::Credentials;
use super::error::BoxError;
use super::netstat::Child;
use super::prefork::{Logs, Prefork};
use super::scoreboard::Board;
use super::signals::to_os_signal;
use super::{daemon, memory, netstat, systemd};
use crate::supervisor::driver::{Changed, Effects, Spawn};
use crate::{ChildSignal, Connection, ExitStatus, Hook, Level, Notify, Pid, Scoreboard, Time};
use crate::{Handoff, Image};
use nix::sys::signal as nsig;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd;
use std::collections::BTreeMap;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;

/// Everything of the parent but the machine: what carrying out its actions needs.
pub(super) struct System<T> {
    pub(super) cfg: Prefork<T>,
    pub(super) logger: slog::Logger,
    pub(super) board: Board,
    pub(super) clock: Clock,
    /// The parent's ends of its pipes, and its locks: a child closes them first.
    pub(super) inherited: Vec<RawFd>,
    /// The parent's end of each live child's log channel (by pid), where the
    /// reopened logs are passed; closed when the child is reaped.
    pub(super) log_channels: BTreeMap<i32, OwnedFd>,
    pub(super) _wake_read: OwnedFd,
    // Kept open for the daemon's life: children write wake-ups to it.
    pub(super) _wake_write: OwnedFd,
    /// The scoreboard's file (the `scoreboard_path` file, locked for the parent's
    /// life, or a memory file); children close it.
    pub(super) board_file: std::fs::File,
    /// What `after_init` returned, lent to every child.
    pub(super) state: Option<T>,
    pub(super) init_error: Option<BoxError>,
    /// The watched files (the executable first, when known).
    pub(super) watcher: super::watcher::Watcher,
    pub(super) parent_pid: unistd::Pid,
    pub(super) logs: Logs,
    /// The service manager, when NOTIFY_SOCKET names one.
    pub(super) notifier: Option<systemd::Notifier>,
    /// The launcher waiting for the daemon to be up, when daemonized.
    pub(super) reporter: Option<daemon::Reporter>,
    /// Who the children run as.
    pub(super) credentials: Option<Credentials>,
    /// Notifications are failing: how many have, the first (logged) included
    /// (STATUS and watchdog pings are not logged one by one).
    pub(super) notify_failing: Option<u64>,
    /// Daemonized: the service manager must be told the main pid changed.
    pub(super) daemonized: bool,
    /// The error of the forks failing in a row, and how many did.
    pub(super) fork_failing: Option<(nix::errno::Errno, u32)>,
    /// The pid file's descriptor (its lock crosses an upgrade's exec).
    pub(super) pid_fd: Option<RawFd>,
    /// The executable an upgrade runs: the path this image started from.
    pub(super) exe: Option<PathBuf>,
    /// Whether the first watched file is `exe`: its change is an upgrade.
    pub(super) watch_executable: bool,
    /// This image, open since the start: the new image's way back.
    pub(super) own_image: Option<std::fs::File>,
    /// The image that handed over to this one, if it can be returned to.
    pub(super) previous: Option<std::fs::File>,
    /// Its arguments, to return with.
    pub(super) previous_argv: Vec<Vec<u8>>,
    /// The upgrade's trial under way: its pid and the pipe it reports down.
    pub(super) trial: Option<(i32, std::fs::File)>,
    /// The outcome of a trial reaped since the driver last asked.
    pub(super) probe_result: Option<bool>,
    /// The service manager's variables to set again for the next image.
    pub(super) service_vars: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    /// The executable being upgraded to, opened once when its trial starts: the
    /// re-exec runs this very file, the one tried.
    pub(super) candidate: Option<std::fs::File>,
    /// The signals received but not yet handled, for the re-exec to pass on.
    pub(super) pending: super::signals::Pending,
    /// How client disconnects are looked for, once the first look chose.
    pub(super) disconnect_probe: Option<netstat::Probe>,
    /// Said once: some child's descriptors cannot be read.
    pub(super) unreadable_logged: bool,
    /// The thread that looks for client disconnects, once started.
    pub(super) scanner: Option<super::scanner::Scanner>,
    /// Children running a command: the thread capturing their output, once
    /// started (`None` after it could not start: they write where the parent does).
    pub(super) capture: Option<super::command::Capture>,
    /// The command's threads were started (or tried).
    pub(super) command_started: bool,
    /// A cooperative command's own descriptor of the scoreboard.
    pub(super) command_board: Option<std::fs::File>,
    /// During a disconnect look at command children: each looked-at process of
    /// a child's tree, and the child it belongs to.
    pub(super) tree_of: BTreeMap<i32, i32>,
    /// The keeper's pipe (see `os::fork_keeper`): the command children's groups.
    pub(super) keeper: Option<OwnedFd>,
    /// Copies of the parent's ends of each command child's output pipes (by
    /// pid), for an in-place upgrade to hand over; closed when it is reaped.
    pub(super) captured: BTreeMap<i32, (OwnedFd, OwnedFd)>,
    /// Those an upgrade handed over, for the capture thread once it starts.
    pub(super) handed_capture: Vec<(i32, OwnedFd, OwnedFd)>,
    /// The command children, by pid, as forked (or adopted): what is left of
    /// their groups is killed when they go. Known from the forks, never from the
    /// scoreboard, which a child may have written anything into.
    pub(super) commanded: std::collections::BTreeSet<i32>,
    /// The metrics endpoint, when asked for and started.
    pub(super) metrics: Option<super::metrics::Endpoint>,
}

impl<T: 'static> Effects for System<T> {
    fn now(&self) -> Time {
        self.clock.now()
    }

    fn try_reap(&mut self) -> Option<(Pid, ExitStatus)> {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    let status = ExitStatus::Exited(code);
                    if !self.reaped_trial(pid.as_raw(), status) {
                        return Some((Pid(pid.as_raw()), status));
                    }
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    let status = ExitStatus::Signaled(sig as i32);
                    if !self.reaped_trial(pid.as_raw(), status) {
                        return Some((Pid(pid.as_raw()), status));
                    }
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
        // After an upgrade no fork may come for a while: the adopted children's
        // output is read from the first look on.
        if self.cfg.command.is_some() && !self.command_started && self.state.is_some() {
            self.start_command_threads();
        }
        self.board.clear_wake();
        self.board
            .read_into(self.clock.origin_ns(), &mut into.slots);
        if self.cfg.options.max_child_memory.is_some() {
            for s in into.slots.iter_mut().filter(|s| s.pid.0 > 0) {
                s.memory = if self.cfg.command.is_some() {
                    // A command's memory is its whole process tree's.
                    let tree = super::command::observe::process_tree(s.pid.0);
                    memory::rss_bytes(s.pid.0).map(|own| {
                        tree[1..]
                            .iter()
                            .filter_map(|&p| memory::rss_bytes(p))
                            .fold(own, u64::saturating_add)
                    })
                } else {
                    memory::rss_bytes(s.pid.0)
                };
            }
        }
    }

    fn release(&mut self, pid: Pid) {
        self.log_channels.remove(&pid.0);
        self.captured.remove(&pid.0);
        if self.commanded.remove(&pid.0) {
            // What is left of its process group (its leader is gone) is an orphan.
            if let Err(e) = super::os::signal_group(pid.0, nix::libc::SIGKILL) {
                slog::warn!(
                    self.logger,
                    "killing what is left of child {pid}'s process group: {e}"
                );
            }
            if let Some(k) = &self.keeper {
                super::os::tell_keeper(k, -pid.0);
            }
        }
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
        let mut sig = to_os_signal(signal);
        if let Some(cmd) = &self.cfg.command {
            match signal {
                // Its output goes through the parent: there is no log of its to
                // reopen, and USR1 may mean anything to it.
                ChildSignal::Usr1 => return,
                ChildSignal::Term => sig = cmd.stop_signal,
                // The whole process tree, however it spread in its group.
                ChildSignal::Kill => {
                    if let Err(e) = super::os::signal_group(pid.0, nix::libc::SIGKILL) {
                        slog::error!(self.logger, "kill(-{pid}, KILL) failed: {e}");
                    }
                }
            }
        }
        match nsig::kill(unistd::Pid::from_raw(pid.0), sig) {
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

    fn fork(&mut self, spawn: Spawn) -> Option<Pid> {
        self.fork_child(spawn)
    }

    fn run_hook(&mut self, hook: Hook) -> bool {
        self.hook(hook)
    }

    fn reopen_logs(&mut self) {
        let all = self.logs.all();
        let mut failed = false;
        for log in &all {
            // A daemon's stdout and stderr follow its error log.
            match log.reopen() {
                Ok(()) => slog::info!(self.logger, "reopened {}", log.path().display()),
                // The old file stays in use: nothing is lost.
                Err(e) => {
                    failed = true;
                    slog::error!(self.logger, "cannot reopen: {e}");
                }
            }
        }
        // For `preforkd reopen-logs`, waiting for the outcome.
        self.board.count_reopen(failed);
        // Before the USR1 that follows: a child finds them when it looks.
        self.pass_logs(&all);
    }

    fn files_changed(&mut self) -> Changed {
        self.look_at_files()
    }

    fn probe_upgrade(&mut self, handoff: &Handoff) -> Option<bool> {
        let ok = self.start_probe(handoff);
        if ok == Some(false) {
            self.board.count_abandoned();
        }
        ok
    }

    fn probe_outcome(&mut self) -> Option<bool> {
        let ok = self.probe_result.take();
        if ok == Some(false) {
            self.board.count_abandoned();
        }
        ok
    }

    fn reexec(&mut self, image: Image, handoff: Handoff) {
        self.exec_image(image, handoff);
        // Back here: the exec failed, this image keeps serving.
        self.board.count_abandoned();
    }

    fn connections(&mut self, children: &[Pid]) -> Option<Vec<Connection>> {
        // Only a busy child has a job to cancel; one that said which connection
        // it serves is looked at there alone.
        let children: Vec<Child> = children
            .iter()
            .filter_map(|&Pid(pid)| {
                let slot = self.board.slot_of(pid)?;
                let (requests, conn) = self.board.busy_with(slot)?;
                Some(Child {
                    pid,
                    conn: conn.map(|c| c.0),
                    peer: conn.map(|c| c.1),
                    requests,
                })
            })
            .collect();
        if children.is_empty() {
            return Some(Vec::new());
        }
        // A command's connections may be held anywhere in its process tree
        // (gunicorn's worker is the child's child): every process is looked at,
        // and what is found counts for the child.
        let children = if self.cfg.command.is_some() {
            self.tree_of.clear();
            let mut all = Vec::new();
            for c in children {
                for p in super::command::observe::process_tree(c.pid) {
                    self.tree_of.insert(p, c.pid);
                    all.push(Child {
                        pid: p,
                        conn: None,
                        peer: None,
                        requests: c.requests,
                    });
                }
            }
            all
        } else {
            children
        };
        let probe = match self.disconnect_probe {
            Some(p) => p,
            None => {
                let p = netstat::forced_probe().unwrap_or(netstat::Probe::Pidfd);
                slog::info!(
                    self.logger,
                    "client disconnects: looked for with the {p:?} probe"
                );
                self.disconnect_probe = Some(p);
                p
            }
        };
        if self.scanner.is_none() {
            match super::scanner::Scanner::start() {
                Ok(s) => self.scanner = Some(s),
                Err(e) => {
                    // Without the thread the look is made here: it only takes
                    // longer.
                    slog::warn!(
                        self.logger,
                        "client disconnects: cannot start the looking thread ({e}): looking on the main thread"
                    );
                }
            }
        }
        match self.scanner.as_mut() {
            Some(s) => {
                s.ask(children, probe);
                None
            }
            None => {
                let ours = netstat::Ours::of_this_process();
                let look = netstat::look(children, &ours, probe);
                Some(self.looked(look))
            }
        }
    }

    fn notify(&mut self, n: Notify) {
        if let (Some(notifier), true, Notify::Ready) = (&self.notifier, self.daemonized, &n) {
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

    fn log(&mut self, level: Level, message: String) {
        match level {
            Level::Error => slog::error!(self.logger, "{message}"),
            Level::Warning => slog::warn!(self.logger, "{message}"),
            Level::Info => slog::info!(self.logger, "{message}"),
            Level::Debug => slog::debug!(self.logger, "{message}"),
        }
    }
}

impl<T: 'static> System<T> {
    /// A look's verdict: the connections; a probe refused on the way is logged
    /// once, and the one that answered is used from now on.
    pub(super) fn looked(&mut self, look: netstat::Look) -> Vec<Connection> {
        for (probe, e) in &look.refused {
            slog::warn!(
                self.logger,
                "client disconnects: the {probe:?} probe is refused here ({e}): the {:?} probe from now on",
                look.used
            );
        }
        self.disconnect_probe = Some(look.used);
        if let (Some((pid, why)), false) = (&look.unreadable, self.unreadable_logged) {
            self.unreadable_logged = true;
            slog::warn!(
                self.logger,
                "client disconnects: cannot read the descriptors of child {pid} ({why}): its clients' hang-ups go unseen (children running as another user need a parent with CAP_SYS_PTRACE)"
            );
        }
        // A child that finished that request meanwhile (and may be on the next
        // one, whose client is there) is not judged by what was seen of the last.
        let mut look = look;
        for c in &mut look.found {
            if let Some(&leader) = self.tree_of.get(&c.conn.pid.0) {
                c.conn.pid = Pid(leader);
            }
        }
        for c in &mut look.children {
            if let Some(&leader) = self.tree_of.get(&c.pid) {
                c.pid = leader;
            }
        }
        let board = &self.board;
        let still = |pid: i32| {
            look.children.iter().any(|c| {
                c.pid == pid
                    && board
                        .slot_of(pid)
                        .and_then(|slot| board.busy_with(slot))
                        .map(|(requests, _)| requests)
                        == Some(c.requests)
            })
        };
        look.found
            .into_iter()
            .filter(|c| still(c.conn.pid.0))
            .collect()
    }
}
