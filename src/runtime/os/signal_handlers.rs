//! Signal dispositions: the gate a new child's signals wait behind, the worker's
//! handlers and the flags they set, SIGPIPE ignored in the parent.

use super::fds::borrow_fd;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow};
use std::ffi::c_int;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The signal mask a new child runs with once its own handlers exist. Until then
/// every signal stays blocked (pending, not lost): a signal sent right after the
/// fork must not meet a default disposition and kill the child.
#[derive(Debug)]
pub(crate) struct SignalGate {
    // Visible to `process`: `fork_child` builds the gate from the mask it saved.
    pub(super) mask: SigSet,
}

impl SignalGate {
    /// A gate that restores this thread's current mask (no fork involved:
    /// `prefork = 0` installs the worker's handlers in the parent itself).
    pub(crate) fn current() -> nix::Result<SignalGate> {
        let mut mask = SigSet::empty();
        signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, None, Some(&mut mask))?;
        Ok(SignalGate { mask })
    }

    fn open(self) -> nix::Result<()> {
        signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.mask), None)
    }
}

/// What a child's signal handler found.
pub(crate) static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
/// USR1 arrived: reopen the logs.
pub(crate) static REOPEN_REQUESTED: AtomicBool = AtomicBool::new(false);
/// The write end of this worker's own wake-up pipe (-1: none), written by its
/// signal handlers so a worker waiting in `epoll_wait` never misses a signal that
/// arrived just before it started waiting.
static WORKER_WAKE_FD: AtomicI32 = AtomicI32::new(-1);

fn poke() {
    let fd = WORKER_WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; `fd` is the pipe's write end, kept
        // open for the process's life; a full pipe (EAGAIN) means a wake-up is
        // already pending.
        let _ = unsafe { libc::write(fd, std::ptr::from_ref(&byte).cast(), 1) };
    }
}

/// The write end of a pipe told of every stop request (-1: none): how the
/// in-process mode's graceful-timeout thread learns that a stop began.
static STOP_WATCH_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_stop(_: c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
    poke();
    let fd = STOP_WATCH_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; `fd` is kept open for the
        // process's life; a full pipe means the watcher was told already.
        let _ = unsafe { libc::write(fd, std::ptr::from_ref(&1u8).cast(), 1) };
    }
}

/// A descriptor that becomes readable once a stop is requested (TERM or INT
/// reached the worker's handlers), for a thread to wait on in a blocking read.
pub(crate) fn watch_stops() -> nix::Result<OwnedFd> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(
        &write,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    // The write end lives as long as the process: the handler may use it any time.
    // SeqCst on both sides (here and in the handler): one of the two always sees
    // the other's store, so a stop is never missed.
    STOP_WATCH_FD.store(write.into_raw_fd(), Ordering::SeqCst);
    if STOP_REQUESTED.load(Ordering::SeqCst) {
        // A stop that came before the pipe existed.
        let _ = nix::unistd::write(borrow_fd(STOP_WATCH_FD.load(Ordering::SeqCst)), &[1]);
    }
    Ok(read)
}

extern "C" fn on_reopen(_: c_int) {
    REOPEN_REQUESTED.store(true, Ordering::SeqCst);
    poke();
}

/// Installs the worker's signal dispositions: TERM and INT ask it to stop after the
/// request in hand, USR1 asks for a log reopen (both set a flag and poke the
/// worker's wake-up pipe, whose read end is returned); HUP/TTIN/TTOU/PIPE/USR2 are
/// ignored (they are the parent's business); QUIT keeps its default (immediate).
/// The handlers restart interrupted system calls (`SA_RESTART`): a log rotation
/// must not make a busy child's blocking read fail. Linux never restarts a socket
/// read or write that has a timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO`): those still
/// fail with `EINTR` (`ErrorKind::Interrupted`), which std's `read_exact`,
/// `read_line`, `write_all` and `io::copy` retry, and a plain `read` must too. Then it opens `gate`: signals
/// that arrived since the fork are delivered to these handlers.
pub(crate) fn install_worker_handlers(gate: SignalGate) -> nix::Result<OwnedFd> {
    use signal::Signal as S;
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
    // The write end lives as long as the process: the handlers may use it any time.
    WORKER_WAKE_FD.store(write.into_raw_fd(), Ordering::Relaxed);
    let stop = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    let reopen = SigAction::new(
        SigHandler::Handler(on_reopen),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: the handlers only store to atomics and write(2) to a pipe, both
    // async-signal-safe.
    unsafe {
        signal::sigaction(S::SIGTERM, &stop)?;
        signal::sigaction(S::SIGINT, &stop)?;
        signal::sigaction(S::SIGUSR1, &reopen)?;
        for s in [S::SIGHUP, S::SIGTTIN, S::SIGTTOU, S::SIGPIPE, S::SIGUSR2] {
            signal::sigaction(s, &ignore)?;
        }
    }
    gate.open()?;
    Ok(read)
}

/// Ignores SIGPIPE in the parent: a write to a closed pipe or socket is an error
/// to handle, not a reason to die.
pub(crate) fn ignore_sigpipe() -> nix::Result<()> {
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN is always a valid disposition.
    unsafe { signal::sigaction(signal::Signal::SIGPIPE, &ignore) }.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::os::fork_child;
    use nix::errno::Errno;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{self, Pid};

    fn exit_of(pid: Pid) -> WaitStatus {
        waitpid(pid, None).expect("waitpid")
    }

    #[test]
    fn a_signal_sent_right_after_the_fork_waits_for_the_childs_handlers() {
        let pid = fork_child(&[libc::SIGUSR1], |gate| {
            // As a parent's USR1 would: it arrives before the handlers exist.
            let _ = signal::raise(signal::Signal::SIGUSR1);
            let Ok(_wake) = install_worker_handlers(gate) else {
                return 2;
            };
            if REOPEN_REQUESTED.load(Ordering::SeqCst) {
                0
            } else {
                3
            }
        })
        .expect("fork");
        assert_eq!(exit_of(pid), WaitStatus::Exited(pid, 0));
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a real child needs real time to block
    fn a_worker_signal_does_not_break_a_blocking_read() {
        let (ready_r, ready_w) = unistd::pipe().unwrap();
        let (data_r, data_w) = unistd::pipe().unwrap();
        let pid = fork_child(&[], |gate| {
            let Ok(_wake) = install_worker_handlers(gate) else {
                return 2;
            };
            let _ = unistd::write(&ready_w, b"r");
            let mut buf = [0u8; 1];
            // nix does not retry on EINTR: only SA_RESTART keeps this read going.
            match unistd::read(&data_r, &mut buf) {
                Ok(1) => 0,
                Err(Errno::EINTR) => 4,
                _ => 5,
            }
        })
        .expect("fork");
        let mut buf = [0u8; 1];
        assert_eq!(unistd::read(&ready_r, &mut buf), Ok(1));
        // Let the child block in read(2), then interrupt it.
        std::thread::sleep(std::time::Duration::from_millis(200));
        signal::kill(pid, signal::Signal::SIGUSR1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        unistd::write(&data_w, b"d").unwrap();
        assert_eq!(exit_of(pid), WaitStatus::Exited(pid, 0));
    }
}
