//! Socket calls std does not wrap: a listener's accept-queue length, and
//! descriptors received with a datagram (`SCM_RIGHTS`).

use nix::errno::Errno;
use std::ffi::c_int;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// How many connections wait in a listening TCP socket's accept queue (the
/// kernel reports it in `TCP_INFO`'s `tcpi_unacked` for a socket in LISTEN).
pub(crate) fn listen_queue_len(listener: BorrowedFd<'_>) -> Option<u32> {
    listen_queue(listener.as_raw_fd()).map(|(waiting, _)| waiting)
}

/// The accept queue of descriptor `fd` if it is a listening TCP socket: the
/// connections waiting and the queue's limit (`tcpi_sacked` for a socket in
/// LISTEN). Takes a bare number: asking a closed or reused one is harmless (it
/// fails, or describes whatever socket holds the number now).
pub(crate) fn listen_queue(fd: std::os::fd::RawFd) -> Option<(u32, u32)> {
    // SAFETY: all-zero bytes are a valid `tcp_info` (plain integers).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt on any number only reads that descriptor's socket state
    // (or fails); `info` is writable for `len` bytes and `len` says so; the
    // kernel writes at most `len` bytes and updates `len`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast(),
            &mut len,
        )
    };
    // TCP_LISTEN in the kernel's tcp_states.h.
    const TCP_LISTEN: u8 = 10;
    let listening = info.tcpi_state == TCP_LISTEN;
    (r == 0 && listening).then_some((info.tcpi_unacked, info.tcpi_sacked))
}

/// The descriptors of this process that are listening sockets (any family), in
/// ascending order, from `/proc/self/fd`.
pub(crate) fn listening_sockets() -> Vec<std::os::fd::RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut fds: Vec<std::os::fd::RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| {
            let mut on: c_int = 0;
            let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
            // SAFETY: getsockopt on any number only reads the descriptor's socket
            // state (or fails: not open, not a socket); `on` is writable for
            // `len` bytes and `len` says so.
            let r = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_ACCEPTCONN,
                    std::ptr::from_mut(&mut on).cast(),
                    &mut len,
                )
            };
            r == 0 && on != 0
        })
        .collect();
    fds.sort_unstable();
    fds
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
    use std::os::fd::RawFd;

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
}
