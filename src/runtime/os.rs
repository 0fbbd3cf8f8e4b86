//! The one module with `unsafe`: fork, shared memory, raw signal dispositions.
//!
//! Everything here follows the fork-safety rules: signals are blocked around the
//! fork; the child resets every handled signal before unblocking; the child never
//! returns into the caller's code (it ends with `_exit`).
#![allow(unsafe_code)]

use crate::runtime::scoreboard::{Header, Slot};
use nix::errno::Errno;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow};
use nix::unistd::{self, ForkResult, Pid};
use std::ffi::c_int;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Maps the scoreboard: a header and `slots` records, shared with every child
/// forked afterwards, in `file` (already sized) or in anonymous memory. Never
/// unmapped, hence `'static`.
pub(crate) fn map_board(
    slots: usize,
    file: Option<&std::fs::File>,
) -> nix::Result<(&'static Header, &'static [Slot])> {
    use nix::sys::mman::{MapFlags, ProtFlags};
    let bytes = std::mem::size_of::<Header>() + slots * std::mem::size_of::<Slot>();
    let len = NonZeroUsize::new(bytes).ok_or(Errno::EINVAL)?;
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let ptr: NonNull<u8> = match file {
        // SAFETY: a new mapping at an address the kernel chooses aliases no Rust
        // object; the caller sized the file to `len`.
        Some(f) => {
            unsafe { nix::sys::mman::mmap(None, len, prot, MapFlags::MAP_SHARED, f.as_fd(), 0)? }
                .cast()
        }
        // SAFETY: as above; anonymous memory is zero-filled.
        None => {
            unsafe { nix::sys::mman::mmap_anonymous(None, len, prot, MapFlags::MAP_SHARED)? }.cast()
        }
    };
    // SAFETY: the mapping is `len` bytes, page-aligned (so aligned for the 64-byte
    // records), zero-filled or sized from zero by ftruncate, and never unmapped.
    // Header and Slot hold only atomics, for which all-zero bytes are valid and
    // shared access from several processes is sound.
    unsafe {
        let header = &*ptr.as_ptr().cast::<Header>();
        let first = ptr
            .as_ptr()
            .add(std::mem::size_of::<Header>())
            .cast::<Slot>();
        Ok((header, std::slice::from_raw_parts(first, slots)))
    }
}

/// Forks. In the child, runs `child` with signals reset and then exits with its
/// code through `_exit`; it never returns there. In the parent, returns the
/// child's pid. Call only from the main thread.
pub(crate) fn fork_child(reset: &[c_int], child: impl FnOnce() -> i32) -> nix::Result<Pid> {
    let all = SigSet::all();
    let mut old = SigSet::empty();
    // Block everything so no handler of the parent runs in the child between the
    // fork and the reset below.
    signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&all), Some(&mut old))?;
    // SAFETY: the child only resets signal dispositions (async-signal-safe), then
    // runs code that takes no lock another parent thread could hold: the parent's
    // other threads only wait on a pipe and on signals, and hold no lock while they
    // wait; the allocator is fork-safe (glibc's atfork handlers).
    let r = unsafe { unistd::fork() };
    match r {
        Ok(ForkResult::Child) => {
            for &sig in reset {
                if let Ok(s) = signal::Signal::try_from(sig) {
                    // SAFETY: SIG_DFL is always a valid disposition.
                    let _ = unsafe {
                        signal::sigaction(
                            s,
                            &SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty()),
                        )
                    };
                }
            }
            let _ = signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            let code = child();
            // SAFETY: `_exit` ends the process without running the parent's atexit
            // handlers or unwinding into the caller's code; always sound.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            let _ = signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            Ok(child)
        }
        Err(e) => {
            let _ = signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            Err(e)
        }
    }
}

/// Borrows a descriptor this process keeps open for its whole life (the wake-up
/// pipe's write end).
pub(crate) fn borrow_fd(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: callers pass only descriptors that are never closed while the process
    // runs (the wake pipe, created before the first fork and kept until exit).
    unsafe { BorrowedFd::borrow_raw(fd) }
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

extern "C" fn on_stop(_: c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
    poke();
}

extern "C" fn on_reopen(_: c_int) {
    REOPEN_REQUESTED.store(true, Ordering::SeqCst);
    poke();
}

/// Installs the worker's signal dispositions: TERM and INT ask it to stop after the
/// request in hand, USR1 asks for a log reopen (both set a flag and poke the
/// worker's wake-up pipe, whose read end is returned); HUP/TTIN/TTOU/PIPE/USR2 are
/// ignored (they are the parent's business); QUIT keeps its default (immediate).
pub(crate) fn install_worker_handlers() -> nix::Result<OwnedFd> {
    use signal::Signal as S;
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
    // The write end lives as long as the process: the handlers may use it any time.
    WORKER_WAKE_FD.store(write.into_raw_fd(), Ordering::Relaxed);
    let stop = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::empty(),
        SigSet::empty(),
    );
    let reopen = SigAction::new(
        SigHandler::Handler(on_reopen),
        SaFlags::empty(),
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
    Ok(read)
}

/// Ignores SIGPIPE in the parent: a write to a closed pipe or socket is an error
/// to handle, not a reason to die.
pub(crate) fn ignore_sigpipe() -> nix::Result<()> {
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN is always a valid disposition.
    unsafe { signal::sigaction(signal::Signal::SIGPIPE, &ignore) }.map(|_| ())
}

/// Closes a descriptor inherited from the parent that this child must not hold.
pub(crate) fn close_inherited(fd: RawFd) {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: F_GETFD only asks whether `fd` is open; it changes nothing.
    let open = fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
    if open {
        // SAFETY: in the child, just after the fork, nothing else in this process
        // owns or uses `fd` (the parent's owner of it never runs here: the child
        // ends with `_exit`), so taking ownership and closing it is sound.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// Why a descriptor the service manager announced was not adopted.
#[derive(Debug)]
pub(crate) enum NotAdopted {
    /// It is not open in this process.
    NotOpen(std::io::Error),
    /// It is open but not a socket (a file, a pipe...): left alone, still open.
    NotSocket,
}

/// Takes ownership of a descriptor the service manager passed to this process
/// (socket activation, `LISTEN_FDS`), after checking that it is an open socket.
/// Anything else is left as it is.
pub(crate) fn adopt_socket(fd: RawFd) -> Result<OwnedFd, NotAdopted> {
    use std::os::fd::FromRawFd;
    if fd < 0 {
        return Err(NotAdopted::NotOpen(std::io::Error::from_raw_os_error(
            libc::EBADF,
        )));
    }
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat(2) only writes the `stat` buffer it is given, which is large
    // enough; it is sound on any descriptor number.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } == -1 {
        return Err(NotAdopted::NotOpen(std::io::Error::last_os_error()));
    }
    // SAFETY: fstat succeeded, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(NotAdopted::NotSocket);
    }
    // SAFETY: `fd` was passed by the service manager for this process (LISTEN_PID
    // named us), it was just checked to be an open socket, and nothing else in the
    // process owns it: the adoption happens once, at the very start of
    // `Prefork::run` (or in the first `systemd::listen_fds` call), before the
    // runtime opens any descriptor of its own, under a process-wide guard, and the
    // LISTEN_* variables are unset so that no later call sees them.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Which side of a daemonizing fork this process is on.
pub(crate) enum Side {
    /// The process that called `fork`, with the child's pid.
    Parent(Pid),
    /// The new process; it carries on with the caller's code (it becomes the daemon).
    Child,
}

/// A plain fork for daemonizing, where the child does continue with the caller's
/// code. Call it only before the runtime starts any thread.
pub(crate) fn fork_for_daemon() -> nix::Result<Side> {
    // SAFETY: called before `Prefork::run` starts its threads (and the crate
    // documents that `run` must come before the user's own threads), so the child is
    // an exact single-threaded copy: no lock can be held by a thread that does not
    // exist in it.
    match unsafe { unistd::fork() }? {
        ForkResult::Parent { child } => Ok(Side::Parent(child)),
        ForkResult::Child => Ok(Side::Child),
    }
}

/// Ends this process at once, without unwinding into the caller or running
/// atexit handlers (a daemonizing launcher's end).
pub(crate) fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` is always sound; nothing after it runs.
    unsafe { libc::_exit(code) }
}
