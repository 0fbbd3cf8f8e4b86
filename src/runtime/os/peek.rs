//! Looking at our own children's connections without reading the host's tables:
//! a copy of a child's descriptor (`pidfd_getfd`, Linux 5.6: ptrace rights over
//! the child, which a parent has over children of its own user), the TCP state
//! of a socket (`TCP_INFO`), one socket of this host found by its addresses (a
//! `sock_diag` netlink query for exactly that socket), and the sockets in some
//! states (a `sock_diag` dump).

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

/// Whether a socket has an error pending (POLLERR), without taking it: a
/// connection the peer reset has one until its holder reads it (`SO_ERROR` or
/// `recv` would clear it, and the child would never learn of the reset).
pub(crate) fn error_pending(sock: BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(sock, PollFlags::empty())];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLERR))
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

/// One TCP socket of this host as `sock_diag` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiagSocket {
    /// The kernel's `TCP_*` state.
    pub(crate) state: u8,
    pub(crate) local: SocketAddr,
    pub(crate) remote: SocketAddr,
    /// 0: no process holds it any more.
    pub(crate) inode: u32,
}

/// A `sock_diag` netlink socket with `req` sent on it (`dump`: every socket that
/// matches the request's states, rather than the one its addresses name).
fn diag_ask(req: DiagReq, dump: bool) -> io::Result<OwnedFd> {
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
    let flags = libc::NLM_F_REQUEST | if dump { libc::NLM_F_DUMP } else { 0 };
    let request = Request {
        header: libc::nlmsghdr {
            nlmsg_len: std::mem::size_of::<Request>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: flags as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        req,
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
    Ok(sock)
}

/// What one netlink message of an answer says.
enum Said {
    Socket(DiagMsg),
    /// NLMSG_DONE, or an error message with code 0.
    Done,
    Failed(io::Error),
    /// Another message type: skipped.
    Other,
}

/// The messages in the first `n` bytes of `buf` (at most all of it), in order.
fn messages(buf: &[u64], n: usize) -> Vec<Said> {
    let n = n.min(std::mem::size_of_val(buf));
    let header_len = std::mem::size_of::<libc::nlmsghdr>();
    let base = buf.as_ptr().cast::<u8>();
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + header_len <= n {
        // SAFETY: a whole header is within the `n` bytes received (checked); any
        // bytes are a valid `nlmsghdr` (plain integers).
        let header: libc::nlmsghdr = unsafe { std::ptr::read_unaligned(base.add(at).cast()) };
        let len = header.nlmsg_len as usize;
        if len < header_len || at + len > n {
            out.push(Said::Failed(io::Error::from(io::ErrorKind::InvalidData)));
            break;
        }
        let body = at + header_len;
        // The error code an NLMSG_ERROR carries, and an NLMSG_DONE too (a dump
        // that failed part-way ends with its error), when there is one.
        let code = || -> Option<i32> {
            (body + std::mem::size_of::<i32>() <= at + len).then(|| {
                // SAFETY: an i32 is within this message (checked).
                unsafe { std::ptr::read_unaligned::<i32>(base.add(body).cast()) }
            })
        };
        let said = match header.nlmsg_type {
            t if t == libc::NLMSG_DONE as u16 => match code().unwrap_or(0) {
                0 => Said::Done,
                c => Said::Failed(io::Error::from_raw_os_error(c.wrapping_neg())),
            },
            t if t == libc::NLMSG_ERROR as u16 => match code() {
                None => Said::Failed(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Some(0) => Said::Done,
                // ENOENT too: no such socket, or no diag handler in this kernel
                // (the caller tells which it can bear).
                Some(c) => Said::Failed(io::Error::from_raw_os_error(c.wrapping_neg())),
            },
            SOCK_DIAG_BY_FAMILY if body + std::mem::size_of::<DiagMsg>() <= at + len => {
                // SAFETY: a whole `inet_diag_msg` is within this message (checked);
                // any bytes are a valid one (plain integers).
                Said::Socket(unsafe { std::ptr::read_unaligned(base.add(body).cast()) })
            }
            _ => Said::Other,
        };
        out.push(said);
        // Messages are 4-aligned (NLMSG_ALIGN).
        at += (len + 3) & !3;
    }
    out
}

/// For the fuzz target: one netlink answer of `bytes` read as [`tcp_sockets_in`]
/// reads it: the sockets it lists (their addresses decoded), and whether it ends
/// (done, or an error).
pub(crate) fn diag_answer(bytes: &[u8]) -> (Vec<DiagSocket>, bool) {
    let mut buf = vec![0u64; bytes.len().div_ceil(8)];
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        buf[i] = u64::from_ne_bytes(word);
    }
    let mut sockets = Vec::new();
    let mut ends = false;
    for said in messages(&buf, bytes.len()) {
        match said {
            Said::Socket(m) => sockets.push(DiagSocket {
                state: m.state,
                local: addr(m.family, m.id.src, m.id.sport),
                remote: addr(m.family, m.id.dst, m.id.dport),
                inode: m.inode,
            }),
            Said::Done | Said::Failed(_) => ends = true,
            Said::Other => {}
        }
    }
    (sockets, ends)
}

/// Receives into `buf`: the byte count.
fn diag_recv(sock: &OwnedFd, buf: &mut [u64]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its size in bytes, which recv() is told.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            std::mem::size_of_val(buf),
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn addr(family: u8, ip: [u32; 4], port: u16) -> SocketAddr {
    let port = u16::from_be(port);
    if i32::from(family) == libc::AF_INET {
        SocketAddr::from((ip[0].to_ne_bytes(), port))
    } else {
        let mut o = [0u8; 16];
        for (i, w) in ip.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        SocketAddr::from((o, port))
    }
}

/// A request for the TCP sockets of `family` in `states`: those bound to and
/// connected to `exact` (local, remote), or all of them.
fn tcp_request(family: i32, states: u32, exact: Option<(SocketAddr, SocketAddr)>) -> DiagReq {
    let (sport, dport, src, dst) = match exact {
        Some((l, r)) => (
            l.port().to_be(),
            r.port().to_be(),
            words(l.ip()),
            words(r.ip()),
        ),
        None => (0, 0, [0; 4], [0; 4]),
    };
    DiagReq {
        family: family as u8,
        protocol: libc::IPPROTO_TCP as u8,
        ext: 0,
        pad: 0,
        states,
        id: SockId {
            sport,
            dport,
            src,
            dst,
            interface: 0,
            // INET_DIAG_NOCOOKIE: found by addresses (or state), not by cookie.
            cookie: [!0, !0],
        },
    }
}

/// The TCP sockets of this host (IPv4 and IPv6) in one of `states` (a bit per
/// `TCP_*` state), asked of the kernel, which filters them: the cost grows with
/// the sockets in those states, not with all the host's. `ENOENT`: this kernel
/// has no TCP diag handler (an empty list is `Ok`).
pub(crate) fn tcp_sockets_in(states: u32) -> io::Result<Vec<DiagSocket>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let sock = diag_ask(tcp_request(family, states, None), true)?;
        let mut buf = vec![0u64; 4096];
        'answer: loop {
            let n = diag_recv(&sock, &mut buf)?;
            if n == 0 {
                break;
            }
            for said in messages(&buf, n) {
                match said {
                    Said::Socket(m) => out.push(DiagSocket {
                        state: m.state,
                        local: addr(m.family, m.id.src, m.id.sport),
                        remote: addr(m.family, m.id.dst, m.id.dport),
                        inode: m.inode,
                    }),
                    Said::Done => break 'answer,
                    Said::Failed(e) => return Err(e),
                    Said::Other => {}
                }
            }
        }
    }
    Ok(out)
}

/// The kernel's TCP_LISTEN.
const TCP_LISTEN: u8 = 10;

/// `a` with an IPv4-mapped IPv6 address written as IPv4: the kernel answers
/// about an IPv4 socket in either form (a dual-stack listener's connection from
/// an IPv4 client is asked about with mapped addresses, and its client's socket
/// is an IPv4 one).
fn plain(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The TCP socket of this host bound to `local` and connected to `remote`, asked
/// of the kernel by exactly those addresses: its state and inode (0: no process
/// holds it any more), or `None` if none is known (no such socket, or a kernel
/// without the TCP diag handler: a caller must not read it as "closed"). Both
/// addresses of one family (an IPv4-mapped address counts as IPv6, as the
/// kernel files it; the answer may name an IPv4 socket).
pub(crate) fn tcp_socket(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<(u8, u32)>> {
    let family = match (local, remote) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => libc::AF_INET,
        (SocketAddr::V6(_), SocketAddr::V6(_)) => libc::AF_INET6,
        _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
    };
    let sock = diag_ask(tcp_request(family, !0, Some((local, remote))), false)?;
    // One answer: the socket, or an error message (ENOENT: there is none).
    let mut buf = [0u64; 128];
    let n = diag_recv(&sock, &mut buf)?;
    match messages(&buf, n).into_iter().next() {
        // The kernel's lookup falls back to a listener bound to `local`: that is
        // not the connection asked about.
        Some(Said::Socket(m))
            if m.state == TCP_LISTEN
                || plain(addr(m.family, m.id.src, m.id.sport)) != plain(local)
                || plain(addr(m.family, m.id.dst, m.id.dport)) != plain(remote) =>
        {
            Ok(None)
        }
        Some(Said::Socket(m)) => Ok(Some((m.state, m.inode))),
        Some(Said::Done) => Ok(None),
        // No such socket, or no handler: either way nothing is known of it.
        Some(Said::Failed(e)) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Some(Said::Failed(e)) => Err(e),
        Some(Said::Other) | None => Err(io::Error::from(io::ErrorKind::InvalidData)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink answer that lies about its lengths ends the reading with an
    /// error; it never loops or reads past what was received.
    #[test]
    fn a_malformed_answer_is_an_error_not_a_panic() {
        let header = std::mem::size_of::<libc::nlmsghdr>();
        for (len, n) in [(0u32, 64usize), (8, 64), (4096, 64), (16, 15), (20, 64)] {
            let mut buf = [0u64; 16];
            // nlmsg_len first, then the type: SOCK_DIAG_BY_FAMILY, too short for
            // a whole message.
            buf[0] = u64::from(len) | u64::from(SOCK_DIAG_BY_FAMILY) << 32;
            let said = messages(&buf, n);
            assert!(said.len() <= n / header + 1, "{len} {n}");
            if len < header as u32 || len as usize > n {
                assert!(matches!(said.last(), Some(Said::Failed(_)) | None));
            }
        }
        // Nothing received: nothing said.
        assert!(messages(&[0u64; 4], 0).is_empty());
    }

    #[test]
    fn a_dump_lists_an_established_pair_both_ways() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        // 1 << 1: ESTABLISHED.
        let all = tcp_sockets_in(1 << 1).unwrap();
        let ends = |local, remote| {
            all.iter()
                .any(|d| d.local == local && d.remote == remote && d.state == 1)
        };
        assert!(ends(c.local_addr().unwrap(), s.local_addr().unwrap()));
        assert!(ends(s.local_addr().unwrap(), c.local_addr().unwrap()));
        assert!(all.iter().all(|d| d.state == 1));
    }
}
