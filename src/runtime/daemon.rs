//! Daemonizing: detach from the terminal and the launching shell, and tell the
//! launcher whether the daemon came up, so a failed start is reported where the
//! operator is looking, with a non-zero exit.

use crate::runtime::os::{self, Side};
use nix::sys::stat::Mode;
use nix::unistd;
use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The daemon's end of the pipe back to the launcher.
#[derive(Debug)]
pub(crate) struct Reporter {
    pipe: Option<std::fs::File>,
}

impl Reporter {
    /// The daemon is up (pid file written, `after_init` done): the launcher exits 0.
    pub(crate) fn ok(&mut self) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(b"OK\n");
        }
    }

    /// Start-up failed: the launcher prints `why` on its stderr and exits 1.
    pub(crate) fn fail(&mut self, why: &str) {
        if let Some(mut p) = self.pipe.take() {
            let _ = writeln!(p, "ERR {why}");
        }
    }

    /// The descriptor to keep open across the daemon's clean-up.
    pub(crate) fn raw_fd(&self) -> Option<RawFd> {
        self.pipe.as_ref().map(AsRawFd::as_raw_fd)
    }
}

/// Forks twice and detaches. Only the daemon returns from here; the launcher waits
/// for the daemon's report and exits (0 when it is up, 1 with the reason on its
/// stderr otherwise); the middle process exits at once.
pub(crate) fn detach() -> std::io::Result<Reporter> {
    // Close-on-exec: a program `after_init` starts must not hold the launcher
    // (which waits for the report) for as long as it lives.
    let (read, write) = unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    match os::fork_for_daemon()? {
        Side::Parent(middle) => {
            drop(write);
            launcher(read, middle)
        }
        Side::Child => {
            drop(read);
            // A new session: no controlling terminal, not killed with the shell.
            let _ = unistd::setsid();
            match os::fork_for_daemon() {
                // The session leader leaves, so the daemon can never reacquire a
                // terminal.
                Ok(Side::Parent(_)) => os::exit_now(0),
                Ok(Side::Child) => Ok(Reporter {
                    pipe: Some(std::fs::File::from(write)),
                }),
                Err(e) => {
                    let mut w = std::fs::File::from(write);
                    let _ = writeln!(w, "ERR second fork failed: {e}");
                    os::exit_now(1)
                }
            }
        }
    }
}

fn launcher(read: OwnedFd, middle: unistd::Pid) -> ! {
    let _ = nix::sys::wait::waitpid(middle, None);
    // One line, not the whole stream: a process forked (without exec) during the
    // start-up may hold the write end long after the report came.
    let mut report = String::new();
    let _ = std::io::BufReader::new(std::fs::File::from(read)).read_line(&mut report);
    match report.lines().next() {
        Some("OK") => os::exit_now(0),
        Some(line) => {
            let why = line.strip_prefix("ERR ").unwrap_or(line);
            eprintln!("{why}");
            os::exit_now(1)
        }
        None => {
            eprintln!("the daemon exited during start-up (see the error log)");
            os::exit_now(1)
        }
    }
}

/// The daemon's surroundings: `/` as working directory, umask 022, stdin from
/// /dev/null, stdout and stderr to the error log, and every other inherited
/// descriptor closed except `keep`.
pub(crate) fn settle(error_log: &Path, keep: &[RawFd]) -> std::io::Result<()> {
    unistd::chdir("/")?;
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    let null = std::fs::File::open("/dev/null")?;
    unistd::dup2_stdin(&null)?;
    // Not blocking on a FIFO nobody reads (the log was checked before, but may
    // have been replaced since).
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(error_log)?;
    nix::fcntl::fcntl(
        &log,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_APPEND),
    )?;
    unistd::dup2_stdout(&log)?;
    unistd::dup2_stderr(&log)?;
    drop((null, log));
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        if fd > 2 && !keep.contains(&fd) {
            os::close_inherited(fd);
        }
    }
    Ok(())
}
