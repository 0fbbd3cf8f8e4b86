//! Looking at our own children's connections without reading the host's tables:
//! a copy of a child's descriptor (`pidfd_getfd`, Linux 5.6, its parent needs no
//! privilege), the TCP state of a socket (`TCP_INFO`), and one socket of this host
//! found by its addresses (a `sock_diag` netlink query for exactly that socket).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A descriptor naming process `pid` (`pidfd_open`): calls through it reach that
/// process or fail, never another that reused the number.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1;
    // it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A copy, in this process, of descriptor `fd` of the process `pidfd` names
/// (close-on-exec, as `pidfd_getfd` makes it).
pub(crate) fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes two descriptor numbers and flags and returns a new
    // descriptor or -1; it touches no memory of ours.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(copy as RawFd) })
}

/// The TCP state of a socket (the kernel's `TCP_*` numbering: 1 established, 8
/// close-wait...), or `None` if it is not a TCP socket.
pub(crate) fn tcp_state(sock: BorrowedFd<'_>) -> Option<u8> {
    // SAFETY: all-zero bytes are a valid `tcp_info` (plain integers).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes and `len` says so.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast(),
            &mut len,
        )
    };
    (r == 0 && len > 0).then_some(info.tcpi_state)
}

/// `struct inet_diag_sockid` (linux/inet_diag.h): ports and addresses in network
/// order.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy)]
struct DiagReq {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// `struct inet_diag_msg`.
#[repr(C)]
#[derive(Clone, Copy)]
struct DiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// The addresses' words in network order, as `inet_diag_sockid` holds them.
fn words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        }
    }
}

/// The TCP socket of this host bound to `local` and connected to `remote`, asked
/// of the kernel by exactly those addresses: its state and inode (0: no process
/// holds it any more), or `None` if there is no such socket. Both addresses of one
/// family (an IPv4-mapped address counts as IPv6, as the kernel files it).
pub(crate) fn tcp_socket(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<(u8, u32)>> {
    let family = match (local, remote) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => libc::AF_INET,
        (SocketAddr::V6(_), SocketAddr::V6(_)) => libc::AF_INET6,
        _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
    };
    // SAFETY: socket() returns a new descriptor or -1.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by the kernel and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    #[repr(C)]
    struct Request {
        header: libc::nlmsghdr,
        req: DiagReq,
    }
    let request = Request {
        header: libc::nlmsghdr {
            nlmsg_len: std::mem::size_of::<Request>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: libc::NLM_F_REQUEST as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        req: DiagReq {
            family: family as u8,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: !0,
            id: SockId {
                sport: local.port().to_be(),
                dport: remote.port().to_be(),
                src: words(local.ip()),
                dst: words(remote.ip()),
                interface: 0,
                // INET_DIAG_NOCOOKIE: find it by its addresses.
                cookie: [!0, !0],
            },
        },
    };
    // SAFETY: `request` is a plain repr(C) value, readable for its size; send()
    // reads exactly that many bytes.
    let sent = unsafe {
        libc::send(
            sock.as_raw_fd(),
            std::ptr::from_ref(&request).cast(),
            std::mem::size_of::<Request>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // One answer: the socket, or an error message (ENOENT: there is none).
    let mut buf = [0u64; 128];
    // SAFETY: `buf` is writable for its size in bytes, which recv() is told.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            std::mem::size_of_val(&buf),
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    let header_len = std::mem::size_of::<libc::nlmsghdr>();
    if n < header_len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    // SAFETY: `buf` holds at least a header's bytes (checked), is 8-aligned, and
    // any bytes are a valid `nlmsghdr` (plain integers).
    let header: libc::nlmsghdr = unsafe { std::ptr::read(buf.as_ptr().cast()) };
    let body = header_len;
    if header.nlmsg_type == libc::NLMSG_ERROR as u16 {
        if n < body + std::mem::size_of::<i32>() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        // SAFETY: the error code (an i32) is within the bytes received (checked),
        // at a 4-aligned offset of an 8-aligned buffer.
        let code: i32 = unsafe { std::ptr::read(buf.as_ptr().cast::<u8>().add(body).cast()) };
        return match -code {
            libc::ENOENT => Ok(None),
            0 => Ok(None),
            e => Err(io::Error::from_raw_os_error(e)),
        };
    }
    if header.nlmsg_type != SOCK_DIAG_BY_FAMILY || n < body + std::mem::size_of::<DiagMsg>() {
        return Err(io::Error::from(io::ErrorKind::InvalidData));
    }
    // SAFETY: a whole `inet_diag_msg` is within the bytes received (checked), at a
    // 4-aligned offset; any bytes are a valid one (plain integers).
    let msg: DiagMsg =
        unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<u8>().add(body).cast()) };
    Ok(Some((msg.state, msg.inode)))
}
