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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
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

/// A flag in anonymous shared memory: the parent creates it before forking, and
/// it stays shared with every child forked afterwards. Never unmapped, hence
/// `'static`. If no memory can be mapped, a flag of this process alone.
pub(crate) fn shared_flag() -> &'static AtomicBool {
    use nix::sys::mman::{MapFlags, ProtFlags};
    let len = NonZeroUsize::new(std::mem::size_of::<AtomicBool>()).unwrap_or(NonZeroUsize::MIN);
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // SAFETY: a new anonymous mapping at an address the kernel chooses aliases no
    // Rust object.
    match unsafe { nix::sys::mman::mmap_anonymous(None, len, prot, MapFlags::MAP_SHARED) } {
        // SAFETY: the mapping is page-aligned, zero-filled (a valid `false`) and never
        // unmapped; an atomic is sound to share between processes.
        Ok(ptr) => unsafe { &*ptr.as_ptr().cast::<AtomicBool>() },
        Err(_) => Box::leak(Box::new(AtomicBool::new(false))),
    }
}

/// The signal mask a new child runs with once its own handlers exist. Until then
/// every signal stays blocked (pending, not lost): a signal sent right after the
/// fork must not meet a default disposition and kill the child.
#[derive(Debug)]
pub(crate) struct SignalGate {
    mask: SigSet,
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

/// Forks. In the child, runs `child` with every handled signal reset to its
/// default and every signal still blocked (the child unblocks them by handing the
/// gate to [`install_worker_handlers`]), then exits with its code through `_exit`:
/// it never returns there, not even by a panic (exit code 70). In the parent,
/// returns the child's pid. Call only from the main thread.
pub(crate) fn fork_child(
    reset: &[c_int],
    child: impl FnOnce(SignalGate) -> i32,
) -> nix::Result<Pid> {
    let all = SigSet::all();
    let mut old = SigSet::empty();
    // Block everything so no handler of the parent runs in the child between the
    // fork and the reset below, and no signal meets a default disposition before
    // the child's own handlers exist.
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
            let gate = SignalGate { mask: old };
            // A panic must not unwind into the caller's code (the parent's loop, then
            // the user's `main`) in this process: it ends here, as a crash.
            let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child(gate)))
            {
                Ok(code) => code,
                Err(payload) => {
                    // Dropping the payload could panic again: leak it, we exit now.
                    std::mem::forget(payload);
                    70
                }
            };
            exit_now(code)
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

/// How many connections wait in a listening TCP socket's accept queue (the
/// kernel reports it in `TCP_INFO`'s `tcpi_unacked` for a socket in LISTEN).
pub(crate) fn listen_queue_len(listener: BorrowedFd<'_>) -> Option<u32> {
    // SAFETY: all-zero bytes are a valid `tcp_info` (plain integers).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes and `len` says so; the kernel
    // writes at most `len` bytes and updates `len`.
    let r = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast(),
            &mut len,
        )
    };
    // TCP_LISTEN in the kernel's tcp_states.h.
    const TCP_LISTEN: u8 = 10;
    let listening = info.tcpi_state == TCP_LISTEN;
    (r == 0 && listening).then_some(info.tcpi_unacked)
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

/// The most descriptors [`recv_fds`] takes from one datagram.
const MAX_PASSED_FDS: usize = 8;
/// Room for one `SCM_RIGHTS` message of [`MAX_PASSED_FDS`] descriptors.
// SAFETY: CMSG_SPACE is arithmetic on its argument.
const PASSED_SPACE: usize =
    unsafe { libc::CMSG_SPACE((MAX_PASSED_FDS * std::mem::size_of::<c_int>()) as u32) } as usize;

/// One datagram read by [`recv_fds`]: its length and descriptors, or why it was
/// dropped.
pub(crate) type Datagram = std::io::Result<(usize, Vec<OwnedFd>)>;

/// Receives one datagram without waiting, and the descriptors passed with it
/// (`SCM_RIGHTS`, at most 8), each close-on-exec. `Ok(None)`: nothing is waiting.
/// The outer error is the socket's (stop reading it); the inner one says what was
/// wrong with this datagram, which is consumed all the same: its payload did not
/// fit in `payload`, or not all its descriptors could be received (more than 8,
/// or this process is at its descriptor limit). Every descriptor the kernel
/// installed is owned here from the start, so on such an error they are closed,
/// never leaked.
pub(crate) fn recv_fds(sock: &OwnedFd, payload: &mut [u8]) -> std::io::Result<Option<Datagram>> {
    use std::os::fd::FromRawFd;
    // Aligned as a cmsghdr is (its first field is a size_t or smaller).
    let mut space = [0usize; PASSED_SPACE.div_ceil(std::mem::size_of::<usize>())];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: msghdr is plain data (pointers and integers, padding on some libcs);
    // all zeroes is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = PASSED_SPACE as _;
    let bytes = loop {
        // SAFETY: `msg` points at `iov` (over `payload`) and `space`, both live and
        // writable for the lengths given, and outlives the call.
        let n = unsafe {
            libc::recvmsg(
                sock.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n >= 0 {
            break n as usize;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::EAGAIN => return Ok(None),
            e => return Err(e.into()),
        }
    };
    // Take every descriptor installed, before looking at anything else.
    let mut fds = Vec::new();
    // SAFETY: `msg` is the header recvmsg filled; its control length is what the
    // kernel wrote into `space`.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return a whole, aligned header inside
        // the control data the kernel wrote, or null.
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: as above; CMSG_DATA is the header's address plus its size.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<c_int>();
            // SAFETY: CMSG_LEN is arithmetic.
            let head = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (hdr.cmsg_len as usize).saturating_sub(head) / std::mem::size_of::<c_int>();
            for i in 0..count {
                // SAFETY: the kernel wrote `count` descriptors after the header (a
                // truncated message's length counts only those it installed).
                let fd = unsafe { data.add(i).read_unaligned() };
                // SAFETY: the kernel has just installed `fd` in this process for
                // this message; nothing else knows of it: this is its only owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: `cmsg` is a header inside `msg`'s control data.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Ok(Some(Err(bad(format!(
            "only {} of the descriptors passed could be received (over {MAX_PASSED_FDS} sent, \
             or this process is at its descriptor limit); the set is dropped",
            fds.len()
        )))));
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Ok(Some(Err(bad(format!(
            "a datagram longer than {} bytes; dropped",
            payload.len()
        )))));
    }
    Ok(Some(Ok((bytes, fds))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};

    fn exit_of(pid: Pid) -> WaitStatus {
        waitpid(pid, None).expect("waitpid")
    }

    /// A file only this test opens, and how many descriptors of it this process
    /// holds (other tests open and close descriptors meanwhile: counting them all
    /// would be racy).
    fn marker(name: &str) -> (std::path::PathBuf, impl Fn() -> usize) {
        let path = std::env::temp_dir().join(format!(
            "preforkd-os-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, "").unwrap();
        let target = path.clone();
        let held = move || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| *l == target)
                .count()
        };
        (path, held)
    }

    fn datagram_pair() -> (OwnedFd, OwnedFd) {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        socketpair(
            AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .unwrap()
    }

    fn send(sock: &OwnedFd, payload: &[u8], fds: &[RawFd]) {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        sendmsg::<()>(
            sock.as_raw_fd(),
            &[std::io::IoSlice::new(payload)],
            &[ControlMessage::ScmRights(fds)],
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .unwrap();
    }

    #[test]
    fn truncated_descriptors_are_closed_and_reported() {
        let (path, held) = marker("ctrunc");
        let (tx, rx) = datagram_pair();
        let file = std::fs::File::open(&path).unwrap();
        // More than the receiver takes: the kernel installs 8 and sets MSG_CTRUNC
        // (as it does when the receiver is at its descriptor limit).
        send(&tx, &[0, 1], &[file.as_raw_fd(); 12]);
        drop(file);
        assert_eq!(held(), 0);
        let mut payload = [0u8; 8];
        let e = recv_fds(&rx, &mut payload).unwrap().unwrap().unwrap_err();
        assert!(e.to_string().contains("only 8 of the descriptors"), "{e}");
        assert_eq!(held(), 0, "the installed descriptors were closed");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_truncated_payload_is_reported_and_its_descriptors_closed() {
        let (path, held) = marker("trunc");
        let (tx, rx) = datagram_pair();
        let file = std::fs::File::open(&path).unwrap();
        send(&tx, &[0; 9], &[file.as_raw_fd()]);
        drop(file);
        let mut payload = [0u8; 8];
        let e = recv_fds(&rx, &mut payload).unwrap().unwrap().unwrap_err();
        assert!(e.to_string().contains("longer than 8 bytes"), "{e}");
        assert_eq!(held(), 0, "its descriptor was closed");
        let _ = std::fs::remove_file(&path);
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

    #[test]
    fn a_child_that_panics_ends_in_exit_never_in_the_callers_code() {
        // A panic runs the panic hook (stderr and backtrace locks): forked from this
        // many-threaded test process, the child could find a lock held by another
        // test's thread and wait forever. So the fork happens in a copy of this
        // test binary that runs this test alone.
        const ALONE: &str = "PREFORKD_OS_PANIC_TEST_ALONE";
        if std::env::var_os(ALONE).is_some() {
            let pid = fork_child(&[], |_| panic!("outside any catch_unwind")).expect("fork");
            assert_eq!(exit_of(pid), WaitStatus::Exited(pid, 70));
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "runtime::os::tests::a_child_that_panics_ends_in_exit_never_in_the_callers_code",
                "--exact",
                "--test-threads=1",
            ])
            .env(ALONE, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 passed"), "the test ran alone: {text}");
    }
}
