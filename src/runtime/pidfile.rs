//! The daemon's pid file, guarded by a lock.
//!
//! The lock, not the pid written in the file, says whether the daemon runs: a
//! [`PidFile`] holds an exclusive `flock(2)` on the file for as long as it lives, and
//! the kernel drops that lock when the daemon dies, however it dies. A file left
//! behind by a crash is therefore recognised as stale (nobody holds its lock) even if
//! its pid was since given to another program, and it is simply taken over.
//!
//! The original module had none of this (no lock, a check-then-write race, a
//! permission error read as "not running", stop/restart working only from the
//! process that daemonized). Here:
//!
//! - [`PidFile::acquire`] opens the file without following a symlink, locks it
//!   without blocking, and refuses with "already running (pid N)" if someone else
//!   holds it. It never unlinks on takeover, and after locking it checks that the
//!   path still names the inode it locked (retrying otherwise), so any number of
//!   simultaneous starts yield exactly one winner.
//! - The file is removed when the [`PidFile`] is dropped or
//!   [released](PidFile::release), only by the process whose pid it holds and only
//!   if the path still names the inode it locked: never a file that is not ours.
//! - [`is_running`] and [`kill_running`] work from any process (a separate
//!   `stop` command), and they too trust the lock, not the pid.
//!
//! # Across a daemonizing fork
//!
//! A `flock` belongs to the *open file description*, which `fork` shares between
//! parent and child: after the fork both hold the lock, and it is released only when
//! the last descriptor of it is closed. So acquire the pid file before forking, then
//! in the surviving process call [`PidFile::rewrite`] with its pid. The launcher may
//! then exit or drop its copy: dropping only closes its descriptor (this module
//! never calls `LOCK_UN`, which would release the lock for every process sharing
//! it), and it removes the file only in the process whose pid the file holds.
//! Forked workers inherit the descriptor too (`O_CLOEXEC` only closes it on
//! `exec`), so the lock lasts until the last process of the daemon is gone.
//!
//! ```no_run
//! use preforkd::runtime::pidfile::PidFile;
//!
//! let mut pid_file = PidFile::acquire("/run/mydaemon.pid")?; // "already running (pid N)"?
//! // ... fork; in the surviving child:
//! pid_file.rewrite(std::process::id() as i32)?;
//! // ... serve; the file is removed when `pid_file` is dropped.
//! # Ok::<(), preforkd::runtime::pidfile::PidFileError>(())
//! ```

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why a pid file could not be acquired, read, rewritten or acted upon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PidFileError {
    /// Another process holds the pid file's lock: the daemon is running.
    #[error("already running (pid {})", fmt_pid(*.pid))]
    AlreadyRunning {
        /// The pid file.
        path: PathBuf,
        /// The pid it holds, `None` if it could not be read.
        pid: Option<i32>,
    },
    /// The path is a symbolic link: it is not followed.
    #[error("pid file {} is a symlink: refused", .path.display())]
    Symlink {
        /// The pid file.
        path: PathBuf,
    },
    /// The path names something other than a regular file.
    #[error("pid file {} is not a regular file: refused", .path.display())]
    NotRegular {
        /// The pid file.
        path: PathBuf,
    },
    /// The file is locked but holds no valid pid (checked for a while, in case its
    /// holder was still writing it).
    #[error("pid file {} is locked but holds no valid pid", .path.display())]
    NoPid {
        /// The pid file.
        path: PathBuf,
    },
    /// The file kept being replaced under us while we locked it.
    #[error("pid file {} kept being replaced while locking it", .path.display())]
    Unstable {
        /// The pid file.
        path: PathBuf,
    },
    /// The running daemon's pid could not be signalled (e.g. not permitted).
    #[error("pid file {}: cannot send {signal} to pid {pid}: {source}", .path.display())]
    Signal {
        /// The pid file.
        path: PathBuf,
        /// The pid read from it.
        pid: i32,
        /// The signal's name.
        signal: &'static str,
        /// The error.
        source: Errno,
    },
    /// The pid file names the calling process: it will not signal itself.
    #[error("pid file {} names this very process (pid {pid}): refusing to signal it", .path.display())]
    OwnPid {
        /// The pid file.
        path: PathBuf,
        /// The pid (ours).
        pid: i32,
    },
    /// The lock was still held after SIGKILL and the grace period.
    #[error("pid file {}: still locked after SIGKILL to pid {pid}", .path.display())]
    StillLocked {
        /// The pid file.
        path: PathBuf,
        /// The pid that was killed.
        pid: i32,
    },
    /// A system call on the pid file failed.
    #[error("pid file {}: {op}: {source}", .path.display())]
    Io {
        /// The pid file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
}

fn fmt_pid(pid: Option<i32>) -> String {
    match pid {
        Some(p) => p.to_string(),
        None => "unknown".into(),
    }
}

/// What [`kill_running`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KillOutcome {
    /// Nobody held the pid file (or there was none): nothing was signalled.
    NotRunning,
    /// The daemon released the lock after SIGTERM.
    Stopped {
        /// The pid that was sent SIGTERM.
        pid: i32,
        /// How long after SIGTERM the lock was released.
        after: Duration,
    },
    /// The daemon ignored SIGTERM for the whole timeout and was sent SIGKILL.
    Killed {
        /// The pid that was killed.
        pid: i32,
    },
}

/// How many times [`PidFile::acquire`] reopens a file replaced under it.
const MAX_ATTEMPTS: u32 = 50;
/// How often a busy lock is tried again before "already running": a checker
/// ([`is_running`]) may hold it for a few microseconds.
const BUSY_RETRIES: u32 = 5;
const BUSY_PAUSE: Duration = Duration::from_millis(4);
/// How long to wait for a just-locked file's pid to be written by its holder.
const PID_PATIENCE: Duration = Duration::from_millis(200);
/// How often [`kill_running`] looks at the lock.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// How long [`kill_running`] waits after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// The daemon's pid file, locked for as long as this value lives.
///
/// Dropping it (or [`release`](PidFile::release)) removes the file if this is the
/// process whose pid it holds and the path still names the file it locked, then
/// closes the descriptor; the kernel releases the lock once every process sharing
/// it (after a fork) has closed it. See the [module docs](self).
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    file: Option<File>,
    dev: u64,
    ino: u64,
    pid: i32,
}

impl PidFile {
    /// Takes over the pid file a previous image of this process held, with its
    /// lock, through the descriptor that crossed the in-place upgrade's exec (a new
    /// open could not take the lock: it is that descriptor's).
    pub(crate) fn adopt(path: &Path, fd: std::os::fd::OwnedFd) -> Result<PidFile, PidFileError> {
        let path = path.to_path_buf();
        let file = File::from(fd);
        let meta = file.metadata().map_err(io_error(&path, "fstat"))?;
        // Still the file at the path (the lock is this descriptor's).
        match std::fs::symlink_metadata(&path) {
            Ok(now) if now.dev() == meta.dev() && now.ino() == meta.ino() => {}
            _ => {
                return Err(PidFileError::Io {
                    path,
                    op: "adopting after an upgrade: it is no longer the file at its path",
                    source: io::Error::from(io::ErrorKind::NotFound),
                })
            }
        }
        Ok(PidFile {
            path,
            file: Some(file),
            dev: meta.dev(),
            ino: meta.ino(),
            pid: std::process::id() as i32,
        })
    }

    /// Opens or creates the pid file (mode 0644 less the umask, `O_NOFOLLOW`,
    /// `O_CLOEXEC`), takes its lock without blocking, and writes this process's pid
    /// followed by a newline (synced to disk).
    ///
    /// A stale file (nobody holds its lock, whatever pid it names) is taken over.
    ///
    /// # Errors
    /// [`PidFileError::AlreadyRunning`] if another open of the file holds the lock
    /// (even in this process); [`PidFileError::Symlink`] if the path is a symbolic
    /// link (its target is left untouched); [`PidFileError::NotRegular`],
    /// [`PidFileError::Unstable`] or [`PidFileError::Io`] otherwise.
    pub fn acquire(path: impl AsRef<Path>) -> Result<PidFile, PidFileError> {
        let path = path.as_ref().to_path_buf();
        for _ in 0..MAX_ATTEMPTS {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false) // truncated only once the lock is ours
                .mode(0o644)
                // O_NONBLOCK: a FIFO at the path must be refused, not waited on.
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
                .open(&path)
                .map_err(|e| open_error(&path, e))?;
            let meta = file.metadata().map_err(io_error(&path, "fstat"))?;
            if !meta.file_type().is_file() {
                return Err(PidFileError::NotRegular { path });
            }
            if !lock_patiently(&file, &path)? {
                let pid = read_pid_patiently(&file);
                return Err(PidFileError::AlreadyRunning { path, pid });
            }
            // Locked. Is it still the file at `path`? A holder that released it
            // unlinked it (while still holding the lock) before we got the lock: we
            // would hold the lock of an orphan inode. Then start over.
            match std::fs::symlink_metadata(&path) {
                Ok(now) if now.dev() == meta.dev() && now.ino() == meta.ino() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&path, "lstat")(e)),
            }
            let me = std::process::id() as i32;
            let pid_file = PidFile {
                path,
                file: Some(file),
                dev: meta.dev(),
                ino: meta.ino(),
                pid: me,
            };
            pid_file.write_pid(me)?;
            return Ok(pid_file);
        }
        Err(PidFileError::Unstable { path })
    }

    /// Writes `pid` into the file in place of the current one (truncate, write,
    /// fsync), keeping the lock: call it in the process that survives a daemonizing
    /// fork, with its pid. From then on only the process with that pid removes the
    /// file on drop.
    ///
    /// # Errors
    /// [`PidFileError::Io`] if the file cannot be written.
    pub fn rewrite(&mut self, pid: i32) -> Result<(), PidFileError> {
        self.write_pid(pid)?;
        self.pid = pid;
        Ok(())
    }

    /// The pid written in the file.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file (if ours: see the [type docs](PidFile)) and closes it,
    /// reporting a failure to remove that dropping would ignore.
    ///
    /// # Errors
    /// [`PidFileError::Io`] if the path could not be examined or removed.
    pub fn release(mut self) -> Result<(), PidFileError> {
        self.remove_if_ours()
    }

    fn write_pid(&self, pid: i32) -> Result<(), PidFileError> {
        let Some(file) = self.file.as_ref() else {
            return Ok(());
        };
        file.set_len(0).map_err(io_error(&self.path, "truncate"))?;
        file.write_all_at(format!("{pid}\n").as_bytes(), 0)
            .map_err(io_error(&self.path, "write"))?;
        file.sync_all().map_err(io_error(&self.path, "fsync"))
    }

    /// Unlinks the path if it names our inode and we are the process it names, then
    /// closes our descriptor (the unlink happens while the lock is still held).
    fn remove_if_ours(&mut self) -> Result<(), PidFileError> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let result = if self.pid == std::process::id() as i32 {
            match std::fs::symlink_metadata(&self.path) {
                Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                    match std::fs::remove_file(&self.path) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => {
                            Err(io_error(&self.path, "unlink")(e))
                        }
                        _ => Ok(()),
                    }
                }
                // Replaced or removed by someone else: not ours to remove.
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error(&self.path, "lstat")(e)),
            }
        } else {
            Ok(())
        };
        drop(file);
        result
    }
}

impl std::os::fd::AsRawFd for PidFile {
    /// The locked descriptor (-1 once released), for a forked child to close so
    /// that it does not keep the lock alive after the parent is gone.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file
            .as_ref()
            .map_or(-1, std::os::fd::AsRawFd::as_raw_fd)
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = self.remove_if_ours();
    }
}

/// The pid of the daemon holding the pid file at `path`, from any process:
/// `Some(pid)` iff the file exists and its lock is held; `None` if there is no file
/// or it is stale.
///
/// The lock is tested with a non-blocking shared lock on a separate open, released
/// at once.
///
/// # Errors
/// A permission or other I/O error is an error, not "not running";
/// [`PidFileError::Symlink`] and [`PidFileError::NotRegular`] as for
/// [`PidFile::acquire`]; [`PidFileError::NoPid`] if the file is locked but holds no
/// pid.
pub fn is_running(path: impl AsRef<Path>) -> Result<Option<i32>, PidFileError> {
    let path = path.as_ref();
    let Some(file) = open_for_check(path)? else {
        return Ok(None);
    };
    locked_pid(&file, path)
}

/// Stops the daemon holding the pid file at `path`, from any process: SIGTERM, then
/// waits up to `timeout` for the lock to be released (looking every 50 ms), then
/// SIGKILL and waits up to 2 s more.
///
/// Only a pid read from a *locked* file is signalled: a stale file's pid, perhaps
/// reused by another program, is left alone.
///
/// # Errors
/// As for [`is_running`]; [`PidFileError::Signal`] if the pid cannot be signalled
/// (not permitted); [`PidFileError::OwnPid`] if the file names the calling process;
/// [`PidFileError::StillLocked`] if the lock outlives SIGKILL.
pub fn kill_running(
    path: impl AsRef<Path>,
    timeout: Duration,
) -> Result<KillOutcome, PidFileError> {
    let path = path.as_ref();
    let Some(file) = open_for_check(path)? else {
        return Ok(KillOutcome::NotRunning);
    };
    let Some(pid) = locked_pid(&file, path)? else {
        return Ok(KillOutcome::NotRunning);
    };
    if pid == std::process::id() as i32 {
        return Err(PidFileError::OwnPid {
            path: path.to_path_buf(),
            pid,
        });
    }
    let start = now();
    signal(path, pid, Signal::SIGTERM)?;
    if wait_unlocked(&file, path, timeout)? {
        return Ok(KillOutcome::Stopped {
            pid,
            after: now().saturating_duration_since(start),
        });
    }
    signal(path, pid, Signal::SIGKILL)?;
    if wait_unlocked(&file, path, KILL_GRACE)? {
        return Ok(KillOutcome::Killed { pid });
    }
    Err(PidFileError::StillLocked {
        path: path.to_path_buf(),
        pid,
    })
}

/// Sends `sig` to `pid`; a pid already gone is not an error (the lock decides).
fn signal(path: &Path, pid: i32, sig: Signal) -> Result<(), PidFileError> {
    match kill(unistd::Pid::from_raw(pid), sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(PidFileError::Signal {
            path: path.to_path_buf(),
            pid,
            signal: sig.as_str(),
            source,
        }),
    }
}

/// Polls the lock of `file` every [`POLL_EVERY`] for up to `limit`; true once free.
fn wait_unlocked(file: &File, path: &Path, limit: Duration) -> Result<bool, PidFileError> {
    let deadline = now() + limit;
    loop {
        if try_lock(file, path, Lock::Shared)? {
            unlock(file);
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(now());
        if left.is_zero() {
            return Ok(false);
        }
        pause(left.min(POLL_EVERY));
    }
}

/// Opens the pid file read-only for a check; `None` if it does not exist.
fn open_for_check(path: &Path) -> Result<Option<File>, PidFileError> {
    let file = match OpenOptions::new()
        .read(true)
        // O_NONBLOCK: opening a FIFO for reading would wait for a writer.
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(open_error(path, e)),
    };
    let meta = file.metadata().map_err(io_error(path, "fstat"))?;
    if !meta.file_type().is_file() {
        return Err(PidFileError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    Ok(Some(file))
}

/// `Some(pid)` if someone holds the lock of `file`; its pid, read patiently.
fn locked_pid(file: &File, path: &Path) -> Result<Option<i32>, PidFileError> {
    if try_lock(file, path, Lock::Shared)? {
        unlock(file);
        return Ok(None);
    }
    match read_pid_patiently(file) {
        Some(pid) => Ok(Some(pid)),
        None => Err(PidFileError::NoPid {
            path: path.to_path_buf(),
        }),
    }
}

#[derive(Clone, Copy)]
enum Lock {
    Shared,
    Exclusive,
}

/// Tries to take the lock without blocking: true if taken, false if held elsewhere.
///
/// `nix::fcntl::Flock` is not used for the daemon's lock because its `Drop` calls
/// `LOCK_UN`, which would release the lock for every process sharing the open file
/// description (a daemonizing fork's parent dropping its copy would unlock the
/// daemon). The deprecated free function is the safe way to flock a borrowed fd.
#[allow(deprecated)]
fn try_lock(file: &File, path: &Path, lock: Lock) -> Result<bool, PidFileError> {
    use nix::fcntl::{flock, FlockArg};
    let arg = match lock {
        Lock::Shared => FlockArg::LockSharedNonblock,
        Lock::Exclusive => FlockArg::LockExclusiveNonblock,
    };
    loop {
        match flock(file.as_raw_fd(), arg) {
            Ok(()) => return Ok(true),
            Err(Errno::EWOULDBLOCK) => return Ok(false),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io_error(path, "flock")(io::Error::from(e))),
        }
    }
}

/// Drops a checker's lock on its own open file description (never the daemon's).
#[allow(deprecated)]
fn unlock(file: &File) {
    let _ = nix::fcntl::flock(file.as_raw_fd(), nix::fcntl::FlockArg::Unlock);
}

/// Takes the exclusive lock, trying again briefly if it is busy (a checker may hold
/// a shared lock for an instant); false if someone really holds it.
fn lock_patiently(file: &File, path: &Path) -> Result<bool, PidFileError> {
    for attempt in 0..BUSY_RETRIES {
        if try_lock(file, path, Lock::Exclusive)? {
            return Ok(true);
        }
        if attempt + 1 < BUSY_RETRIES {
            pause(BUSY_PAUSE);
        }
    }
    Ok(false)
}

/// The pid in `file`, waiting up to [`PID_PATIENCE`] for its holder to write it
/// (between locking and writing, the file may be empty).
fn read_pid_patiently(file: &File) -> Option<i32> {
    let deadline = now() + PID_PATIENCE;
    loop {
        if let Some(pid) = read_pid(file) {
            return Some(pid);
        }
        if now() >= deadline {
            return None;
        }
        pause(Duration::from_millis(5));
    }
}

/// The pid written in `file`: a positive decimal number, then a newline.
fn read_pid(file: &File) -> Option<i32> {
    let mut buf = [0u8; 32];
    let n = file.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    let digits = text.strip_suffix('\n')?;
    match digits.parse::<i32>() {
        Ok(pid) if pid > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => Some(pid),
        _ => None,
    }
}

fn open_error(path: &Path, e: io::Error) -> PidFileError {
    if e.raw_os_error() == Some(Errno::ELOOP as i32) {
        PidFileError::Symlink {
            path: path.to_path_buf(),
        }
    } else {
        io_error(path, "open")(e)
    }
}

fn io_error(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> PidFileError {
    let path = path.to_path_buf();
    move |source| PidFileError::Io { path, op, source }
}

// Waiting for another process (a busy lock, a daemon stopping) needs the clock.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

// Waiting for another process (a busy lock, a daemon stopping) needs to sleep.
#[allow(clippy::disallowed_methods)]
fn pause(d: Duration) {
    std::thread::sleep(d);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_path_and_the_problem() {
        let e = PidFileError::AlreadyRunning {
            path: "/x".into(),
            pid: Some(42),
        };
        assert_eq!(e.to_string(), "already running (pid 42)");
        let e = PidFileError::AlreadyRunning {
            path: "/x".into(),
            pid: None,
        };
        assert_eq!(e.to_string(), "already running (pid unknown)");
        let e = PidFileError::Symlink { path: "/x".into() };
        assert_eq!(e.to_string(), "pid file /x is a symlink: refused");
    }
}
