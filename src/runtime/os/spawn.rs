//! What a child that runs a command (`preforkd run`) does between the fork and
//! the command: the argument and environment vectors built before the fork (the
//! one value known only after it, `LISTEN_PID`, has its digits reserved and is
//! filled in place), the listeners moved to descriptors 3, 4..., the signal
//! state reset, its own process group, and `execve` without allocating.

use std::cell::UnsafeCell;
use std::ffi::{c_char, CString, OsStr, OsString};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;

/// The room for `LISTEN_PID=` and a pid's digits (a pid is at most 10 digits).
const PID_ENTRY: usize = 32;
const PID_PREFIX: &[u8] = b"LISTEN_PID=";

/// A command ready to be run in a child: every vector built, every string
/// terminated. Built in the parent; in the child, [`CommandImage::exec`] writes
/// only into memory reserved here.
pub(crate) struct CommandImage {
    program: CString,
    /// The directory the command runs in (a daemon's own is `/`).
    dir: Option<CString>,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _env: Vec<CString>,
    env_ptrs: Vec<*const c_char>,
    /// `LISTEN_PID=` and room for the digits, written in the child.
    listen_pid: Box<UnsafeCell<[u8; PID_ENTRY]>>,
    /// The slot's variable (`NAME=` and room for the digits), when asked for.
    slot: Option<Box<UnsafeCell<[u8; PID_ENTRY]>>>,
}

impl std::fmt::Debug for CommandImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandImage")
            .field("program", &self.program)
            .finish_non_exhaustive()
    }
}

fn c_string(what: &str, s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} {s:?} contains a NUL byte"),
        )
    })
}

impl CommandImage {
    /// `program` (a path: searched in `PATH` by the caller, before), run with
    /// `argv` (its first element is `argv[0]`) and `env` (`NAME=value` entries, a
    /// `LISTEN_PID` among them dropped), plus `LISTEN_PID` = the child's pid and,
    /// when `slot_var` names one, that variable = the child's slot.
    pub(crate) fn new(
        program: &OsStr,
        argv: &[OsString],
        env: &[OsString],
        slot_var: Option<&str>,
        dir: Option<&OsStr>,
    ) -> io::Result<CommandImage> {
        let program = c_string("the program", program)?;
        let dir = dir.map(|d| c_string("the directory", d)).transpose()?;
        let argv: Vec<CString> = argv
            .iter()
            .map(|a| c_string("an argument", a))
            .collect::<io::Result<_>>()?;
        let env: Vec<CString> = env
            .iter()
            .filter(|e| !e.as_bytes().starts_with(PID_PREFIX))
            .map(|e| c_string("an environment entry", e))
            .collect::<io::Result<_>>()?;
        let mut entry = [0u8; PID_ENTRY];
        entry[..PID_PREFIX.len()].copy_from_slice(PID_PREFIX);
        let listen_pid_cell = Box::new(UnsafeCell::new(entry));
        let slot = match slot_var {
            Some(name) if name.len() + 1 + 12 <= PID_ENTRY && !name.contains(['=', '\0']) => {
                let mut e = [0u8; PID_ENTRY];
                e[..name.len()].copy_from_slice(name.as_bytes());
                e[name.len()] = b'=';
                Some(Box::new(UnsafeCell::new(e)))
            }
            Some(name) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name:?} cannot name the slot's variable"),
                ))
            }
            None => None,
        };
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const c_char> = env
            .iter()
            .filter(|e| slot_var.map_or(true, |n| !e.as_bytes().starts_with(n.as_bytes())))
            .map(|e| e.as_ptr())
            .collect();
        env_ptrs.push(listen_pid_cell.get().cast::<c_char>().cast_const());
        if let Some(cell) = &slot {
            env_ptrs.push(cell.get().cast::<c_char>().cast_const());
        }
        env_ptrs.push(std::ptr::null());
        Ok(CommandImage {
            program,
            dir,
            _argv: argv,
            argv_ptrs,
            _env: env,
            env_ptrs,
            listen_pid: listen_pid_cell,
            slot,
        })
    }

    /// In the child, after the fork: puts `listeners` at descriptors 3, 4... (and
    /// `extra` right after them), closes every other descriptor from 3 up, resets every signal to its default disposition
    /// and unblocks them all, makes the child the leader of its own process
    /// group, fills in `LISTEN_PID` and runs the program. Returns only if that
    /// failed, with the reason. Allocates nothing and takes no lock.
    pub(crate) fn exec(&self, listeners: &[RawFd], extra: &[RawFd], slot: usize) -> io::Error {
        // SAFETY: getpid, setpgid, fcntl, dup2, sigaction, sigprocmask and execve
        // are async-signal-safe; every pointer handed over points into vectors and
        // strings built before the fork and alive for this call; the pid entry's
        // memory is this process's own copy, written by this thread alone.
        unsafe {
            let pid = libc::getpid();
            write_number(
                &mut *self.listen_pid.get(),
                PID_PREFIX.len(),
                pid.unsigned_abs(),
            );
            if let Some(cell) = &self.slot {
                let entry = &mut *cell.get();
                let at = entry.iter().position(|&b| b == b'=').map_or(0, |i| i + 1);
                write_number(entry, at, slot as u32);
            }
            // Its own group: a stop or a KILL reaches the whole process tree.
            libc::setpgid(0, 0);
            if let Some(dir) = &self.dir {
                if libc::chdir(dir.as_ptr()) != 0 {
                    return io::Error::last_os_error();
                }
            }
            if let Err(e) = place_fds(listeners, extra) {
                return e;
            }
            // Nothing else reaches the command: not the descriptors the daemon
            // was started with, nor any of its own left without close-on-exec.
            let first = 3 + (listeners.len() + extra.len()) as u32;
            if libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) != 0 {
                for fd in first..4096 {
                    libc::close(fd as RawFd);
                }
            }
            for sig in 1..libc::SIGRTMAX() {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::execve(
                self.program.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.env_ptrs.as_ptr(),
            );
        }
        io::Error::last_os_error()
    }
}

/// `v`'s digits and a NUL in `entry` from `at`, without allocating.
fn write_number(entry: &mut [u8; PID_ENTRY], at: usize, v: u32) {
    let mut digits = [0u8; 12];
    let mut n = 0;
    let mut v = v;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut at = at;
    for i in (0..n).rev() {
        entry[at] = digits[i];
        at += 1;
    }
    entry[at] = 0;
}

/// The most descriptors [`place_fds`] passes.
pub(crate) const MOST_PASSED: usize = 64;

/// Moves `first` then `then` to 3, 4, ... (clearing close-on-exec on them), with
/// none overwritten before it is moved: each is first copied above the range.
///
/// # Safety
/// Async-signal-safe; call in a child only (it overwrites whatever the target
/// numbers held).
unsafe fn place_fds(first: &[RawFd], then: &[RawFd]) -> io::Result<()> {
    let total = first.len() + then.len();
    let base = 3 + total as RawFd;
    let mut high = [0 as RawFd; MOST_PASSED];
    if total > high.len() {
        // Refused by the configuration's check; never allocate here (a child).
        return Err(io::Error::from_raw_os_error(libc::EMFILE));
    }
    for (i, &fd) in first.iter().chain(then).enumerate() {
        let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, base);
        if h < 0 {
            return Err(io::Error::last_os_error());
        }
        high[i] = h;
    }
    for (i, &h) in high[..total].iter().enumerate() {
        // dup2 clears close-on-exec on the new descriptor.
        if libc::dup2(h, 3 + i as RawFd) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Tells stderr that running `program` failed, with the system's reason: one
/// write, no allocation (an exec path).
pub(crate) fn say_exec_failed(program: &[u8], e: &io::Error) {
    let mut buf = [0u8; 768];
    let mut w = Cursor {
        buf: &mut buf,
        at: 0,
    };
    w.put(b"preforkd: cannot run ");
    w.put(program);
    w.put(b": ");
    let code = e.raw_os_error().unwrap_or(0);
    let mut reason = [0u8; 128];
    // SAFETY: strerror_r (the XSI one in the libc crate's binding) writes at most
    // `reason.len()` bytes, NUL included, into our buffer.
    let ok = unsafe { libc::strerror_r(code, reason.as_mut_ptr().cast(), reason.len()) } == 0;
    if ok {
        let len = reason.iter().position(|&b| b == 0).unwrap_or(reason.len());
        w.put(&reason[..len]);
    } else {
        w.put(b"error ");
        let mut n = [0u8; PID_ENTRY];
        write_number(&mut n, 0, code.unsigned_abs());
        let len = n.iter().position(|&b| b == 0).unwrap_or(0);
        w.put(&n[..len]);
    }
    w.put(b"\n");
    let at = w.at;
    // SAFETY: write from a live buffer of `at` bytes.
    let _ = unsafe { libc::write(2, buf.as_ptr().cast(), at) };
}

struct Cursor<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Cursor<'_> {
    fn put(&mut self, b: &[u8]) {
        let room = self.buf.len().saturating_sub(self.at).saturating_sub(1);
        let n = b.len().min(room);
        self.buf[self.at..self.at + n].copy_from_slice(&b[..n]);
        self.at += n;
    }
}

/// Points the child's stdout and stderr at `out` and `err`.
pub(crate) fn redirect_stdio(out: RawFd, err: RawFd) -> io::Result<()> {
    // SAFETY: dup2 is async-signal-safe; 1 and 2 are this process's to replace.
    unsafe {
        if libc::dup2(out, 1) < 0 || libc::dup2(err, 2) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The parent's half of the child's own process group (either side may win the
/// race; the other's call fails harmlessly).
pub(crate) fn set_group_of(pid: i32) {
    // SAFETY: setpgid on a child of ours only changes its group.
    unsafe { libc::setpgid(pid, pid) };
}

/// Sends `sig` to the process group `pgid`; ESRCH (no such group left) is no error.
pub(crate) fn signal_group(pgid: i32, sig: i32) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a group"));
    }
    // SAFETY: kill on a negative pid signals that group; no memory involved.
    let r = unsafe { libc::kill(-pgid, sig) };
    let e = io::Error::last_os_error();
    if r == 0 || e.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(e)
    }
}

/// Forks the keeper: a small process that outlives this one only to KILL the
/// process groups of its command children if this process dies without doing it
/// (a SIGKILL): their children's descendants would be orphans otherwise. It
/// learns the groups from the pipe whose write end is returned (a pid as four
/// native-endian bytes: a new group; negated: gone), holds at most `capacity`,
/// and exits once this process is gone (after the KILLs), or once the pipe is
/// closed (an in-place upgrade's exec) and every group it knows is empty.
pub(crate) fn fork_keeper(capacity: usize) -> io::Result<(i32, std::os::fd::OwnedFd)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut groups: Vec<i32> = vec![0; capacity.max(1)];
    let parent = std::process::id() as i32;
    let mut pipe = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors of ours.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    // SAFETY: the set is initialised by sigfillset before use; the old mask is
    // restored in the parent. The child only makes async-signal-safe calls on
    // memory allocated before the fork, and ends with _exit.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::fork();
        if pid != 0 {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if pid < 0 {
                return Err(io::Error::last_os_error());
            }
            drop(read);
            return Ok((pid, write));
        }
        // The keeper. Signals meant for the daemon are not its business.
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_IGN);
            }
        }
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        libc::setpgid(0, 0);
        // Told apart from the daemon in ps and top.
        libc::prctl(libc::PR_SET_NAME, c"preforkd-keeper".as_ptr());
        // Only the pipe: no lock, listener or log of the daemon is held here.
        libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&read), 0);
        if libc::syscall(libc::SYS_close_range, 1u32, u32::MAX, 0u32) != 0 {
            for fd in 1..65536 {
                libc::close(fd);
            }
        }
        keep(&mut groups, parent)
    }
}

/// The keeper's loop (see [`fork_keeper`]).
///
/// # Safety
/// In the keeper only: it ends the process.
unsafe fn keep(groups: &mut [i32], parent: i32) -> ! {
    let mut held = 0usize;
    let mut buf = [0u8; 4096];
    let mut partial = [0u8; 4];
    let mut have = 0usize;
    let mut open = true;
    loop {
        let mut p = libc::pollfd {
            fd: if open { 0 } else { -1 },
            events: libc::POLLIN,
            revents: 0,
        };
        libc::poll(&mut p, 1, 200);
        if open && p.revents != 0 {
            let n = libc::read(0, buf.as_mut_ptr().cast(), buf.len());
            if n <= 0 {
                if n == 0 || *libc::__errno_location() != libc::EINTR {
                    open = false;
                }
            } else {
                for &b in &buf[..n as usize] {
                    partial[have] = b;
                    have += 1;
                    if have < 4 {
                        continue;
                    }
                    have = 0;
                    let v = i32::from_ne_bytes(partial);
                    if v > 0 {
                        // A slot whose group is gone, else a new one.
                        let free = (0..held).find(|&i| groups[i] == 0);
                        match free {
                            Some(i) => groups[i] = v,
                            None if held < groups.len() => {
                                groups[held] = v;
                                held += 1;
                            }
                            None => {}
                        }
                    } else if v < 0 {
                        for g in groups[..held].iter_mut().filter(|g| **g == -v) {
                            *g = 0;
                        }
                    }
                }
            }
        }
        if libc::getppid() != parent {
            for &g in &groups[..held] {
                if g > 1 {
                    libc::kill(-g, libc::SIGKILL);
                }
            }
            libc::_exit(0);
        }
        if !open {
            let mut any = false;
            for g in groups[..held].iter_mut() {
                if *g > 1 && libc::kill(-*g, 0) == 0 {
                    any = true;
                } else {
                    *g = 0;
                }
            }
            if !any {
                libc::_exit(0);
            }
        }
    }
}

/// Tells the keeper (its pipe's write end) of a group made (`pgid`) or gone
/// (`-pgid`). Never blocks: a full pipe drops it (the keeper is behind by 16 K
/// groups; it is a last resort).
pub(crate) fn tell_keeper(pipe: &std::os::fd::OwnedFd, v: i32) {
    use std::os::fd::AsRawFd;
    let b = v.to_ne_bytes();
    // SAFETY: a write of a live 4-byte buffer; a pipe write of 4 bytes is atomic.
    unsafe {
        let flags = libc::fcntl(pipe.as_raw_fd(), libc::F_GETFL);
        if flags & libc::O_NONBLOCK == 0 {
            libc::fcntl(pipe.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        libc::write(pipe.as_raw_fd(), b.as_ptr().cast(), 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pid_is_written_in_place_with_its_terminator() {
        let mut e = [0xffu8; PID_ENTRY];
        e[..PID_PREFIX.len()].copy_from_slice(PID_PREFIX);
        write_number(&mut e, PID_PREFIX.len(), 4194304);
        assert_eq!(
            std::ffi::CStr::from_bytes_until_nul(&e).unwrap().to_bytes(),
            b"LISTEN_PID=4194304"
        );
        write_number(&mut e, PID_PREFIX.len(), 7);
        assert_eq!(
            std::ffi::CStr::from_bytes_until_nul(&e).unwrap().to_bytes(),
            b"LISTEN_PID=7"
        );
    }

    #[test]
    fn a_nul_in_an_argument_is_refused_by_name() {
        let e = CommandImage::new(
            OsStr::new("/bin/true"),
            &[OsString::from("a\0b")],
            &[],
            None,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("an argument"), "{e}");
    }
}
