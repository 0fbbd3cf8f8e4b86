//! Acting on a running daemon from another process and waiting for the outcome:
//! `preforkd stop|reload|upgrade|reopen-logs|scale`.
//!
//! The daemon is found by its pid file, trusted only while its lock is held
//! ([`pidfile::is_running`]); its scoreboard (given, or found among the parent's
//! descriptors with [`find_scoreboard`]) tells when the signal has had its
//! effect:
//!
//! | request | signal | done when |
//! |---|---|---|
//! | [`Request::Stop`] | TERM | the pid file's lock is released (the daemon is gone) |
//! | [`Request::Reload`] | HUP | a newer generation serves: every child not retiring is of it and none is starting |
//! | [`Request::Upgrade`] | USR2 | a new image took over (the header counts it) and its generation serves as above; an upgrade the daemon abandons or refuses (one under way, or the last one not proven yet) is a failure at once |
//! | [`Request::ReopenLogs`] | USR1 | the parent says it reopened its logs; a log it could not reopen is a failure |
//! | [`Request::Scale`] | TTIN or TTOU, one at a time, each waited for | the pool holds that many more (fewer) live children |
//!
//! Nothing is ever escalated: a stop that does not end within the timeout is
//! reported, not turned into a SIGKILL. Only a preforkd parent is signalled:
//! the pid must hold a scoreboard whose header names it. Controllers of one
//! daemon take turns (an abstract socket name, `preforkd-control-PID`, is their
//! lock): each judges its outcome by counters the daemon shares with anyone
//! signalling it, so a signal sent by hand meanwhile can still be mistaken for
//! its own.
//!
//! ```no_run
//! use preforkd::runtime::control::{control, Request};
//! use std::time::Duration;
//!
//! let done = control("/run/app.pid".as_ref(), None, Request::Reload, Duration::from_secs(30))?;
//! println!("{}", done.message);
//! # Ok::<(), preforkd::runtime::control::ControlError>(())
//! ```

use super::pidfile::{self, PidFileError};
use super::status::{find_scoreboard, ChildState, Counters, Status, StatusError};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the outcome is looked at.
const POLL: Duration = Duration::from_millis(50);

/// What to ask of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// A graceful stop (TERM).
    Stop,
    /// A rolling reload (HUP).
    Reload,
    /// An in-place upgrade to the executable on disk (USR2).
    Upgrade,
    /// Reopen the logs (USR1), after a rotation.
    ReopenLogs,
    /// Move the pool's size by this many children (TTIN for each one more,
    /// TTOU for each one less).
    Scale(i32),
}

/// The outcome seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// The daemon's pid.
    pub pid: i32,
    /// What happened, for a person.
    pub message: String,
}

/// Why a request did not have its effect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No daemon holds the pid file.
    #[error("not running (no process holds {path})")]
    NotRunning {
        /// The pid file.
        path: PathBuf,
    },
    /// The pid file could not be read.
    #[error(transparent)]
    PidFile(#[from] PidFileError),
    /// The scoreboard could not be found or read.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// The signal could not be sent.
    #[error("cannot send {signal} to pid {pid}: {source}")]
    Signal {
        /// The daemon.
        pid: i32,
        /// The signal.
        signal: &'static str,
        /// Why.
        #[source]
        source: nix::errno::Errno,
    },
    /// The daemon answered that it did not do it.
    #[error("pid {pid}: {message}")]
    Refused {
        /// The daemon.
        pid: i32,
        /// What it did instead.
        message: String,
    },
    /// The outcome was not seen within the timeout.
    #[error("pid {pid}: {message} after {:.1} s", .waited.as_secs_f64())]
    TimedOut {
        /// The daemon.
        pid: i32,
        /// What was seen instead.
        message: String,
        /// How long it was waited for.
        waited: Duration,
    },
}

/// Sends the request to the daemon holding `pid_file` and waits up to `timeout`
/// for its outcome (see the [module docs](self)). `scoreboard`: the daemon's
/// `scoreboard_path`, or `None` to find it among the parent's descriptors.
///
/// # Errors
/// [`ControlError::NotRunning`] if no daemon holds the pid file; the others as
/// their names say.
pub fn control(
    pid_file: &Path,
    scoreboard: Option<&Path>,
    request: Request,
    timeout: Duration,
) -> Result<Done, ControlError> {
    let pid = pidfile::is_running(pid_file)?.ok_or_else(|| ControlError::NotRunning {
        path: pid_file.to_path_buf(),
    })?;
    let start = now();
    let deadline = deadline(start, timeout);
    // One controller at a time per daemon: each judges its outcome by counters
    // the daemon shares between all who signal it.
    let _turn = Turn::take(pid, deadline)?;
    let board = Board {
        pid,
        given: scoreboard.map(Path::to_path_buf),
        pid_file: pid_file.to_path_buf(),
    };
    // Signal only a preforkd parent: the pid holds a scoreboard naming it (a
    // pid file locked by something else may name any process).
    let before = board.read()?;
    let refused = |message: String| ControlError::Refused { pid, message };
    // The outcome, told; the counters seen with it stay here.
    let watch = |decide: &mut dyn FnMut(&Status) -> Step| {
        board.watch(deadline, timeout, decide).map(|(done, _)| done)
    };
    match request {
        Request::Stop => stop(pid_file, pid, start, timeout),
        Request::Reload | Request::Upgrade => {
            let upgrade = request == Request::Upgrade;
            send(
                pid,
                if upgrade {
                    Signal::SIGUSR2
                } else {
                    Signal::SIGHUP
                },
            )?;
            watch(&mut |seen| {
                if upgrade && seen.counters.upgrades_abandoned != before.counters.upgrades_abandoned
                {
                    return Step::Refused(
                        "upgrade abandoned or refused (the last one not proven yet, or one under way): the running image keeps serving; its error log says why"
                            .into(),
                    );
                }
                if upgrade && seen.counters.images == before.counters.images {
                    return Step::Waiting("no new image took over".into());
                }
                match serving_generation(seen, before.generation) {
                    Ok(()) => Step::Done(format!(
                        "{} (pid {pid}): generation {} serving with {} children, in {:.1} s",
                        if upgrade { "upgraded" } else { "reloaded" },
                        seen.generation,
                        seen.live(),
                        start.elapsed().as_secs_f64()
                    )),
                    Err(seen) => Step::Waiting(seen),
                }
            })
        }
        Request::ReopenLogs => {
            send(pid, Signal::SIGUSR1)?;
            watch(&mut |seen| {
                if seen.counters.reopens_failed != before.counters.reopens_failed {
                    Step::Refused(
                        "a log could not be reopened; the old file stays in use (the error log says why)"
                            .into(),
                    )
                } else if seen.counters.reopens != before.counters.reopens {
                    Step::Done(format!("logs reopened (pid {pid})"))
                } else {
                    Step::Waiting("the logs were not reopened".into())
                }
            })
        }
        Request::Scale(0) => Ok(Done {
            pid,
            message: format!("nothing to do: {} children", before.live()),
        }),
        Request::Scale(by) => {
            let live = before.live() as i64;
            let room = before.slots as i64 - live;
            if i64::from(by) > room {
                return Err(refused(format!(
                    "scale {by:+}: the pool holds {live} live children of max_children {}: at most {room:+}",
                    before.slots
                )));
            }
            if by < 0 && live + i64::from(by) < 1 {
                return Err(refused(format!(
                    "scale {by:+}: the pool holds {live} live children, and keeps one at least"
                )));
            }
            let signal = if by > 0 {
                Signal::SIGTTIN
            } else {
                Signal::SIGTTOU
            };
            // One signal at a time, each seen taken before the next: a second
            // one sent while the first is pending would be merged with it.
            let mut counters = before.counters;
            for sent in 0..by.unsigned_abs() {
                send(pid, signal)?;
                let (_, seen) = board.watch(deadline, timeout, &mut |seen| {
                    if seen.counters.nudges_ignored != counters.nudges_ignored {
                        Step::Refused(format!(
                            "{} ignored: the pool is not serving (starting, reloading or stopping)",
                            signal.as_str()
                        ))
                    } else if seen.counters.nudges != counters.nudges {
                        Step::Done(String::new())
                    } else {
                        Step::Waiting(format!(
                            "{sent} of {} {} taken",
                            by.unsigned_abs(),
                            signal.as_str()
                        ))
                    }
                })?;
                counters = seen;
            }
            let want = live + i64::from(by);
            watch(&mut |seen| {
                let now_live = seen.live() as i64;
                if (by > 0 && now_live >= want) || (by < 0 && now_live <= want) {
                    Step::Done(format!(
                        "scaled by {by:+} (pid {pid}): {now_live} children, was {live}"
                    ))
                } else {
                    Step::Waiting(format!(
                        "the policy's target moved by {by:+}, but the pool holds {now_live} live children, not {want} (above the policy's minimum, the load decides its size; max_children bounds it)"
                    ))
                }
            })
        }
    }
}

/// What a look at the scoreboard decides.
enum Step {
    /// The outcome is seen: what to tell.
    Done(String),
    /// The daemon did something else: what.
    Refused(String),
    /// Not yet: what is seen instead (told if the time runs out).
    Waiting(String),
}

/// TERM, then waits for the pid file's lock to go with the daemon.
fn stop(
    pid_file: &Path,
    pid: i32,
    start: Instant,
    timeout: Duration,
) -> Result<Done, ControlError> {
    let deadline = deadline(start, timeout);
    send(pid, Signal::SIGTERM)?;
    loop {
        if pidfile::is_running(pid_file)? != Some(pid) {
            return Ok(Done {
                pid,
                message: format!(
                    "stopped (pid {pid}) in {:.1} s",
                    start.elapsed().as_secs_f64()
                ),
            });
        }
        if now() >= deadline {
            return Err(ControlError::TimedOut {
                pid,
                message: "still running (its children are finishing their requests?)".into(),
                waited: timeout,
            });
        }
        pause();
    }
}

/// `Ok` once a generation newer than `before` serves alone (every child not
/// retiring is of it, none starting, at least one); else what is seen.
fn serving_generation(seen: &Status, before: u64) -> Result<(), String> {
    if seen.generation <= before {
        return Err(format!("still generation {}", seen.generation));
    }
    let current = seen
        .children
        .iter()
        .filter(|c| c.state != ChildState::Retiring);
    let (mut new, mut old, mut starting) = (0, 0, 0);
    for c in current {
        if c.generation != seen.generation {
            old += 1;
        } else if c.state == ChildState::Starting {
            starting += 1;
        } else {
            new += 1;
        }
    }
    if new > 0 && old == 0 && starting == 0 {
        Ok(())
    } else {
        Err(format!(
            "generation {}: {new} children serving, {starting} starting, {old} of an older generation",
            seen.generation
        ))
    }
}

/// The daemon's scoreboard, read afresh at each look (found again among the
/// parent's descriptors each time: an upgrade may renumber them).
struct Board {
    pid: i32,
    given: Option<PathBuf>,
    pid_file: PathBuf,
}

impl Board {
    fn read(&self) -> Result<Status, ControlError> {
        if pidfile::is_running(&self.pid_file)? != Some(self.pid) {
            return Err(ControlError::Refused {
                pid: self.pid,
                message: "the daemon exited meanwhile".into(),
            });
        }
        let path = match &self.given {
            Some(p) => p.clone(),
            None => find_scoreboard(self.pid)?,
        };
        let status = Status::read(&path)?;
        if status.parent_pid != self.pid {
            return Err(ControlError::Refused {
                pid: self.pid,
                message: format!(
                    "the scoreboard {} is pid {}'s, not the daemon's of {}",
                    path.display(),
                    status.parent_pid,
                    self.pid_file.display()
                ),
            });
        }
        Ok(status)
    }
}

impl Board {
    /// Reads the scoreboard every [`POLL`] until `decide` settles, or the
    /// deadline (then what it saw last is the time-out's message): the outcome
    /// and the counters of the reading that showed it.
    fn watch(
        &self,
        deadline: Instant,
        timeout: Duration,
        decide: &mut dyn FnMut(&Status) -> Step,
    ) -> Result<(Done, Counters), ControlError> {
        loop {
            let seen = self.read()?;
            match decide(&seen) {
                Step::Done(message) => {
                    let done = Done {
                        pid: self.pid,
                        message,
                    };
                    return Ok((done, seen.counters));
                }
                Step::Refused(message) => {
                    return Err(ControlError::Refused {
                        pid: self.pid,
                        message,
                    })
                }
                Step::Waiting(message) if now() >= deadline => {
                    return Err(ControlError::TimedOut {
                        pid: self.pid,
                        message,
                        waited: timeout,
                    })
                }
                Step::Waiting(_) => pause(),
            }
        }
    }
}

/// A controller's turn at a daemon: an abstract Unix socket name bound for as
/// long as it lasts (no file to leave behind; the kernel frees it with the
/// process, however it ends).
struct Turn(#[allow(dead_code)] std::os::unix::net::UnixDatagram);

impl Turn {
    fn take(pid: i32, deadline: Instant) -> Result<Turn, ControlError> {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("preforkd-control-{pid}");
        loop {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .map_err(|e| ControlError::Refused {
                    pid,
                    message: format!("cannot make the controllers' lock: {e}"),
                })?;
            match std::os::unix::net::UnixDatagram::bind_addr(&addr) {
                Ok(s) => return Ok(Turn(s)),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    if now() >= deadline {
                        return Err(ControlError::Refused {
                            pid,
                            message: "another preforkd control command is acting on it".into(),
                        });
                    }
                    pause();
                }
                Err(e) => {
                    return Err(ControlError::Refused {
                        pid,
                        message: format!("cannot take the controllers' lock: {e}"),
                    })
                }
            }
        }
    }
}

// Waiting for another process needs the clock.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

// Waiting for another process needs to sleep.
#[allow(clippy::disallowed_methods)]
fn pause() {
    std::thread::sleep(POLL);
}

/// `start + timeout`, a year at most (a huge timeout must not overflow).
fn deadline(start: Instant, timeout: Duration) -> Instant {
    start + timeout.min(Duration::from_secs(365 * 24 * 3600))
}

fn send(pid: i32, signal: Signal) -> Result<(), ControlError> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).map_err(|source| {
        ControlError::Signal {
            pid,
            signal: signal.as_str(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::status::{ChildStatus, Counters, StateCounts};

    fn status(generation: u64, children: &[(u64, ChildState)]) -> Status {
        Status {
            schema: 1,
            scoreboard: PathBuf::from("/x"),
            parent_pid: 1,
            parent_running: true,
            generation,
            stopping: false,
            slots: 8,
            map: String::new(),
            counts: StateCounts::default(),
            counters: Counters::default(),
            children: children
                .iter()
                .enumerate()
                .map(|(slot, &(generation, state))| ChildStatus {
                    slot,
                    pid: 10 + slot as i32,
                    generation,
                    state,
                    requests: 0,
                    request_age_ms: None,
                    heartbeat_age_ms: None,
                    memory_bytes: None,
                })
                .collect(),
        }
    }

    #[test]
    fn a_generation_serves_only_alone_and_ready() {
        use ChildState::*;
        assert!(serving_generation(&status(2, &[(2, Idle), (2, Busy)]), 1).is_ok());
        // Old ones retiring do not count.
        assert!(serving_generation(&status(2, &[(2, Idle), (1, Retiring)]), 1).is_ok());
        let e = serving_generation(&status(2, &[(2, Idle), (1, Busy)]), 1).unwrap_err();
        assert!(e.contains("1 of an older generation"), "{e}");
        let e = serving_generation(&status(2, &[(2, Starting)]), 1).unwrap_err();
        assert!(e.contains("1 starting"), "{e}");
        let e = serving_generation(&status(1, &[(1, Idle)]), 1).unwrap_err();
        assert!(e.contains("still generation 1"), "{e}");
        assert!(
            serving_generation(&status(2, &[]), 1).is_err(),
            "nobody serves"
        );
    }

    #[test]
    fn a_daemon_not_running_is_told() {
        let path =
            std::env::temp_dir().join(format!("preforkd-control-{}.pid", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let e = control(&path, None, Request::Stop, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ControlError::NotRunning { .. }), "{e}");
        assert!(e.to_string().contains("not running"), "{e}");
    }
}
