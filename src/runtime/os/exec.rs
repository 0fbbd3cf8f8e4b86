//! What the in-place upgrade needs from the OS: descriptors that survive an exec,
//! memory files, the trial process, and the signals held back across the exec.

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use std::fs::File;
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// A memory file (`memfd_create`, close-on-exec) named `name`, for the
/// anonymous scoreboard and the handoff: it can cross an exec, anonymous memory
/// cannot.
pub(crate) fn memfd(name: &str) -> io::Result<File> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC)?;
    Ok(File::from(fd))
}

/// Sets or clears close-on-exec on `fd`.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD)?);
    let flags = if on {
        flags | FdFlag::FD_CLOEXEC
    } else {
        flags - FdFlag::FD_CLOEXEC
    };
    fcntl(fd, FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// Takes ownership of a descriptor handed over by the previous image of this
/// process (its number is in the handoff), after checking it is open, and marks
/// it close-on-exec again.
pub(crate) fn adopt_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: fcntl(F_GETFD) reads the descriptor's flags and is sound on any
    // number; it fails with EBADF if the number is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the previous image of this process left `fd` open for us and named it
    // in the handoff, which is read once at the start of `Prefork::run`, before the
    // runtime opens any descriptor of its own; nothing else in the process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(std::os::fd::AsFd::as_fd(&owned), true)?;
    Ok(owned)
}

/// A close-on-exec copy (numbered 3 or above) of a descriptor handed over by the
/// previous image, which the copy outlives: the new image's way back keeps them
/// while the originals are adopted and may be closed by a failed start.
pub(crate) fn dup_handed(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_DUPFD_CLOEXEC on any number either fails (EBADF: not open) or
    // makes a new descriptor, touching nothing else.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if copy == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` was just made by this call and nothing else knows it.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Starts `cmd` as the upgrade's trial: `keep` stay open in it (close-on-exec
/// cleared in the child only), and it gets SIGALRM after `limit_secs`, which ends
/// it if it does not finish in time (an alarm survives the exec).
pub(crate) fn spawn_trial(cmd: &mut Command, keep: &[RawFd], limit_secs: u32) -> io::Result<Child> {
    let keep = keep.to_vec();
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (fcntl, alarm, sigprocmask), allocating nothing
    // (`keep` was allocated before the fork).
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &keep {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags == -1 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            // The parent may hold signals back; the trial starts with none held.
            let mut none = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::alarm(limit_secs);
            Ok(())
        });
    }
    cmd.spawn()
}

/// The signals the parent handles, held back (blocked) across its re-exec: the new
/// image finds them pending once its handlers are in place, instead of dying of
/// the default action in between.
pub(crate) fn hold_signals(signals: &[i32]) -> io::Result<()> {
    mask(SigmaskHow::SIG_BLOCK, signals)
}

/// Lets the held signals in again (the new image, once its handlers are in
/// place; or the old one, when the exec failed).
pub(crate) fn release_signals(signals: &[i32]) -> io::Result<()> {
    mask(SigmaskHow::SIG_UNBLOCK, signals)
}

fn mask(how: SigmaskHow, signals: &[i32]) -> io::Result<()> {
    let mut set = SigSet::empty();
    for &s in signals {
        set.add(Signal::try_from(s)?);
    }
    nix::sys::signal::pthread_sigmask(how, Some(&set), None)?;
    Ok(())
}
