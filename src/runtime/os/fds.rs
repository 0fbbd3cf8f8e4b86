//! Raw descriptors: borrowed for the process's life, closed after a fork, adopted
//! from the service manager.

use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

/// Borrows a descriptor this process keeps open for its whole life (the wake-up
/// pipe's write end).
pub(crate) fn borrow_fd(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: callers pass only descriptors that are never closed while the process
    // runs (the wake pipe, created before the first fork and kept until exit).
    unsafe { BorrowedFd::borrow_raw(fd) }
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
