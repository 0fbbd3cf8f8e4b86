//! Finding the connections whose client has gone: TCP sockets held by a child
//! whose peer can no longer receive.
//!
//! Three probes (see [`Probe`]; `PREFORKD_DISCONNECT_PROBE=pidfd|diag|proc`
//! forces one, and the parent logs once which is in use). The default asks about
//! our own children's sockets only: the connection a child said it serves (its
//! scoreboard slot, written by `Worker::accept`), or else each socket descriptor
//! in its `/proc/PID/fd`, is copied with `pidfd_getfd` and asked its TCP state,
//! and for one in CLOSE_WAIT with a peer on this host, that peer's socket is
//! asked of the kernel by its addresses (`sock_diag`), so the cost grows with our
//! children, not with the host's sockets. Where `pidfd_getfd` is refused (an old
//! kernel, seccomp), the kernel is asked for the host's CLOSE_WAIT sockets alone
//! (a `sock_diag` dump filtered by state), matched to the children by inode;
//! where netlink is refused too, the host's tables (`/proc/net/tcp*`) are read.
//! Only connections accepted on our listeners count (see [`Ours`]).
//!
//! The rule. A socket in CLOSE_WAIT has received the client's FIN: the client
//! will send nothing more, but it may still read (a half-close,
//! `shutdown(SHUT_WR)`, is how some clients say "that was the whole request"). So
//! CLOSE_WAIT alone does not mean gone:
//! - when the client's own socket is on this host (its end appears in the same
//!   tables, local and remote swapped), it is gone only if that socket is orphaned
//!   (no process holds it any more: the client closed it or died); a client that
//!   only half-closed still holds its socket and is not reported, and one whose
//!   socket is not found proves nothing (a REDIRECT or NAT shows us other
//!   addresses than its own) and is not reported either;
//! - when the client is on another host (its address is none of this host's
//!   interfaces), TCP shows nothing more than the FIN until the child writes, so
//!   a remote half-close cannot be told from a close: such a connection is not
//!   reported. (When the child does write to a closed peer, the peer answers with
//!   a reset and the child's own write fails: it learns of the hang-up itself.)
//!   Cancelling a job wrongly is worse than finishing one nobody waits for.

use super::os;
use crate::policy::{Disconnect, Proto};
use crate::{ConnState, Connection, Pid};
use procfs::net::{TcpNetEntry, TcpState};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

/// An address with IPv4-mapped IPv6 addresses written as IPv4, so both ends of a
/// connection match whichever table each is in.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// How the connections are looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// Each child's own sockets, copied with `pidfd_getfd` and asked `TCP_INFO`;
    /// a local peer found by its addresses (`sock_diag`): a cost that grows with
    /// our children's descriptors, not with the host's sockets.
    Pidfd,
    /// The host's CLOSE_WAIT sockets asked of the kernel (a `sock_diag` dump
    /// filtered by state), then matched to the children's sockets by inode: where
    /// `pidfd_getfd` is refused.
    Diag,
    /// The host's TCP tables (`/proc/net/tcp*`), then the children's descriptors
    /// when some socket is in CLOSE_WAIT: where netlink is refused too.
    Proc,
}

impl Probe {
    /// The probe to use where this one is refused.
    pub(crate) fn fallback(self) -> Option<Probe> {
        match self {
            Probe::Pidfd => Some(Probe::Diag),
            Probe::Diag => Some(Probe::Proc),
            Probe::Proc => None,
        }
    }
}

/// The variable that picks the first probe tried (`pidfd`, `diag` or `proc`;
/// a refused one still falls back), for tests and for hosts where the first one
/// misbehaves.
pub(crate) const PROBE_ENV: &str = "PREFORKD_DISCONNECT_PROBE";

/// The probe asked for by [`PROBE_ENV`], if any (an unknown value is `None`:
/// the default).
pub(crate) fn forced_probe() -> Option<Probe> {
    match std::env::var(PROBE_ENV).ok()?.as_str() {
        "pidfd" => Some(Probe::Pidfd),
        "diag" => Some(Probe::Diag),
        "proc" => Some(Probe::Proc),
        _ => None,
    }
}

/// A child to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Child {
    pub(crate) pid: i32,
    /// The connection it said it is serving (its scoreboard slot, written by
    /// `Worker::accept`): then that descriptor alone is looked at, not every
    /// descriptor in `/proc/PID/fd`.
    pub(crate) conn: Option<RawFd>,
    /// That connection's client, as the child wrote it: how a reset connection
    /// (whose peer the kernel forgets) is reported, and how a descriptor number
    /// reused for another socket is told apart.
    pub(crate) peer: Option<SocketAddr>,
    /// Its requests served when the look was asked for: a verdict for it counts
    /// only while it is still on that request.
    pub(crate) requests: u64,
}

impl Child {
    /// A child that did not say which connection it serves.
    #[cfg(test)]
    pub(crate) fn any(pid: i32) -> Child {
        Child {
            pid,
            conn: None,
            peer: None,
            requests: 0,
        }
    }
}

/// Where our clients connect. Only connections accepted on our listeners are a
/// client's: a child's own connection to a database on this host that the
/// database closed is none of the policy's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ours {
    /// The TCP addresses the parent's listening sockets are bound to (empty if
    /// it listens on Unix-domain sockets only: then only the connection a child
    /// said it serves is a client's).
    Listening(Vec<SocketAddr>),
    /// The parent holds no listening socket, or they could not be listed: only
    /// the connection a child said it serves (`Worker::accept`), checked by its
    /// peer, counts.
    Unknown,
    /// Every TCP connection counts (tests of the rule).
    #[cfg_attr(not(test), allow(dead_code))]
    Any,
}

impl Ours {
    pub(crate) fn new(listening: Vec<SocketAddr>) -> Ours {
        Ours::Listening(listening.into_iter().map(canonical).collect())
    }

    /// The listeners this process holds (the children inherit them).
    pub(crate) fn of_this_process() -> Ours {
        use nix::sys::socket::{getsockname, SockaddrStorage};
        let fds = os::listening_sockets();
        if fds.is_empty() {
            return Ours::Unknown;
        }
        Ours::new(
            fds.into_iter()
                .filter_map(|fd| socket_addr(&getsockname::<SockaddrStorage>(fd).ok()?))
                .collect(),
        )
    }

    /// Whether a connection whose own end is `local` is a client's; `said`: it
    /// is, checked by its peer, the connection the child said it serves (which
    /// `Worker::accept` returned: a client's whatever listener it came from).
    fn accepted(&self, local: SocketAddr, said: bool) -> bool {
        let local = canonical(local);
        said || match self {
            Ours::Any => true,
            Ours::Unknown => false,
            Ours::Listening(l) => l.iter().any(|l| {
                l.port() == local.port() && (l.ip().is_unspecified() || l.ip() == local.ip())
            }),
        }
    }
}

/// The connections of `children` accepted by `ours` whose peer is gone, looked
/// at with `probe`; `Err` when that probe is refused here (`pidfd_getfd` or
/// netlink unsupported or denied): the caller falls back to the next one
/// ([`Probe::fallback`]).
pub(crate) fn gone_connections(
    children: &[Child],
    ours: &Ours,
    probe: Probe,
) -> std::io::Result<Vec<Connection>> {
    let addrs = std::cell::OnceCell::new();
    let on_this_host = |ip: IpAddr| {
        let ip = ip.to_canonical();
        ip.is_loopback() || addrs.get_or_init(host_addresses).contains(&ip)
    };
    match probe {
        Probe::Pidfd => own_closed_connections(children, ours, &on_this_host),
        Probe::Diag => diag_closed_connections(children, ours, &on_this_host),
        Probe::Proc => Ok(closed_connections(children, ours, &on_this_host)),
    }
}

/// One look's outcome: the probe that answered, what it found, and the probes
/// refused on the way (each with why; the caller logs them and starts from
/// `used` next time).
#[derive(Debug)]
pub(crate) struct Look {
    pub(crate) used: Probe,
    pub(crate) found: Vec<Connection>,
    pub(crate) refused: Vec<(Probe, std::io::Error)>,
    /// The children looked at, as they were when the look was asked for.
    pub(crate) children: Vec<Child>,
    /// A child whose descriptors could not be read (see [`UNREADABLE`]).
    pub(crate) unreadable: Option<(i32, String)>,
}

impl Look {
    /// A look that found nothing (it could not be made).
    pub(crate) fn empty(children: Vec<Child>, probe: Probe) -> Look {
        Look {
            used: probe,
            found: Vec::new(),
            refused: Vec::new(),
            children,
            unreadable: None,
        }
    }
}

/// [`gone_connections`] with `probe`, then with each fallback it is refused.
pub(crate) fn look(children: Vec<Child>, ours: &Ours, probe: Probe) -> Look {
    let mut refused = Vec::new();
    let mut used = probe;
    let unreadable = || UNREADABLE.lock().unwrap_or_else(|e| e.into_inner()).take();
    loop {
        match gone_connections(&children, ours, used) {
            Ok(found) => {
                return Look {
                    used,
                    found,
                    refused,
                    children,
                    unreadable: unreadable(),
                }
            }
            Err(e) => {
                refused.push((used, e));
                match used.fallback() {
                    Some(next) => used = next,
                    // The last probe is never refused: it reads files.
                    None => {
                        return Look {
                            used,
                            found: Vec::new(),
                            refused,
                            children,
                            unreadable: unreadable(),
                        }
                    }
                }
            }
        }
    }
}

/// The kernel's TCP_CLOSE_WAIT.
const CLOSE_WAIT: u8 = 8;

fn connection(pid: i32, local: SocketAddr, remote: SocketAddr) -> Connection {
    Connection {
        conn: Disconnect {
            pid: Pid(pid),
            proto: if local.is_ipv4() {
                Proto::Tcp
            } else {
                Proto::Tcp6
            },
            local_host: local.ip(),
            local_port: local.port(),
            foreign_host: remote.ip(),
            foreign_port: remote.port(),
        },
        state: ConnState::CloseWait,
    }
}

/// A child whose descriptors could not be read for lack of permission since the
/// last [`look`] (its pid and why): its clients' hang-ups go unseen, which the
/// parent says.
static UNREADABLE: std::sync::Mutex<Option<(i32, String)>> = std::sync::Mutex::new(None);

/// The descriptors of `pid` that are sockets, with their inodes (empty if the
/// child is gone, or they cannot be read: see [`UNREADABLE`]).
pub(crate) fn socket_fds(pid: i32) -> Vec<(RawFd, u64)> {
    use std::io::ErrorKind::PermissionDenied;
    let denied = |e: std::io::Error| {
        let why = format!("/proc/{pid}/fd: {e}");
        *UNREADABLE.lock().unwrap_or_else(|e| e.into_inner()) = Some((pid, why));
    };
    let dir = format!("/proc/{pid}/fd");
    let entries = match std::fs::read_dir(&dir) {
        Ok(d) => d,
        Err(e) if e.kind() == PermissionDenied => {
            denied(e);
            return Vec::new();
        }
        // Gone.
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        match std::fs::read_link(entry.path()) {
            Ok(target) => {
                let inode = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok());
                if let Some(inode) = inode {
                    out.push((fd, inode));
                }
            }
            // The directory lists, but each link is the child's (another user's,
            // not dumpable) to show.
            Err(e) if e.kind() == PermissionDenied => {
                denied(e);
                break;
            }
            // Closed meanwhile.
            Err(_) => {}
        }
    }
    out
}

/// What one socket of a child is, to [`Probe::Pidfd`].
enum Seen {
    /// It may be gone: the rule decides once the copy is closed (it may read
    /// the host's tables, which must not hold up a fork). A reset is gone.
    Check(Candidate),
    /// Still connected, or not a client's connection.
    Fine,
    /// Not the connection the child said (its descriptor number was reused).
    Other,
}

/// A connection of ours that may be gone, and why.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    pid: i32,
    local: SocketAddr,
    remote: SocketAddr,
    /// Reset (closed, with an error waiting for the child) rather than in
    /// CLOSE_WAIT.
    closed: bool,
}

/// The kernel's TCP_CLOSE: what a connection becomes when its peer resets it
/// (an error then waits for its holder), and also once both sides have closed
/// in order (no error).
const CLOSED: u8 = 7;

/// One socket of a child (a copy of its descriptor); `said`: the client the
/// child recorded for it, if it did.
fn judge(
    pid: i32,
    sock: std::os::fd::BorrowedFd<'_>,
    said: Option<SocketAddr>,
    ours: &Ours,
) -> Seen {
    use nix::sys::socket::{getpeername, getsockname, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let state = os::tcp_state(sock);
    let remote = || {
        getpeername::<SockaddrStorage>(sock.as_raw_fd())
            .ok()
            .and_then(|a| socket_addr(&a))
    };
    if state != Some(CLOSE_WAIT) && state != Some(CLOSED) {
        // The connection the child said, unless the number names another socket.
        return match (said, state) {
            (Some(p), Some(_)) if remote().map(canonical) == Some(canonical(p)) => Seen::Fine,
            (Some(_), _) => Seen::Other,
            (None, _) => Seen::Fine,
        };
    }
    let Some(local) = getsockname::<SockaddrStorage>(sock.as_raw_fd())
        .ok()
        .and_then(|a| socket_addr(&a))
    else {
        return Seen::Fine;
    };
    if local.port() == 0 {
        return Seen::Other;
    }
    if state == Some(CLOSED) {
        // Reset: an error waits for the child (an orderly end leaves none). The
        // kernel has forgotten the peer; only the child's word names it, and it
        // cannot be checked against the socket, so a reused number naming
        // another connection is told apart by our listener's address alone.
        return match said {
            Some(remote) if ours.accepted(local, false) => {
                if os::error_pending(sock) {
                    Seen::Check(Candidate {
                        pid,
                        local,
                        remote,
                        closed: true,
                    })
                } else {
                    Seen::Fine
                }
            }
            Some(_) => Seen::Other,
            None => Seen::Fine,
        };
    }
    let Some(remote) = remote() else {
        return Seen::Fine;
    };
    let is_said = match said {
        Some(p) if canonical(p) != canonical(remote) => return Seen::Other,
        Some(_) => true,
        None => false,
    };
    if !ours.accepted(local, is_said) {
        return Seen::Fine;
    }
    Seen::Check(Candidate {
        pid,
        local,
        remote,
        closed: false,
    })
}

/// The rule, for a candidate found by [`judge`]: a reset is gone; a CLOSE_WAIT
/// is gone when its client, on this host, has closed its socket.
fn verdict(c: &Candidate, on_this_host: &dyn Fn(IpAddr) -> bool) -> Option<Connection> {
    let gone = c.closed || (on_this_host(c.remote.ip()) && peer_gone(c.local, c.remote));
    gone.then(|| connection(c.pid, c.local, c.remote))
}

/// [`Probe::Pidfd`]: the module's rule applied to each child's own sockets: the
/// one it said it serves, or all of them (also when that one turns out to be
/// another socket now). Each copy of a child's socket is made, looked at and
/// closed with no fork under way ([`os::without_forks`]): a child forked while
/// a copy of a connection is open here would hold that connection open for
/// good. The rule is applied after, with the copies closed.
fn own_closed_connections(
    children: &[Child],
    ours: &Ours,
    on_this_host: &dyn Fn(IpAddr) -> bool,
) -> std::io::Result<Vec<Connection>> {
    let mut candidates = Vec::new();
    for child in children {
        look_at_child(child, ours, &mut candidates)?;
    }
    Ok(candidates
        .iter()
        .filter_map(|c| verdict(c, on_this_host))
        .collect())
}

/// One child, for [`own_closed_connections`]: what may be gone goes to `out`.
fn look_at_child(child: &Child, ours: &Ours, out: &mut Vec<Candidate>) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    // A child that exited meanwhile is skipped: the pidfd names it or fails.
    let pidfd = match os::pidfd_open(child.pid) {
        Ok(fd) => fd,
        Err(e) if refused(&e) => return Err(e),
        Err(_) => return Ok(()),
    };
    // One socket of the child, copied and judged; `None`: no such descriptor
    // (closed meanwhile, or the child is gone).
    let seen = |fd: RawFd, said: Option<SocketAddr>| -> std::io::Result<Option<Seen>> {
        os::without_forks(|| match os::pidfd_getfd(pidfd.as_fd(), fd) {
            Ok(sock) => {
                let _marked = os::copy_open(&sock);
                Ok(Some(judge(child.pid, sock.as_fd(), said, ours)))
            }
            Err(e) if refused(&e) => Err(e),
            Err(_) => Ok(None),
        })
    };
    let mut other = None;
    if let Some(fd) = child.conn {
        match seen(fd, child.peer)? {
            Some(Seen::Check(c)) => {
                out.push(c);
                return Ok(());
            }
            Some(Seen::Fine) => return Ok(()),
            // Another socket now: looked at below like any other.
            Some(Seen::Other) => other = Some(fd),
            // Closed since: the child may serve another connection of its own.
            None => {}
        }
    }
    for (fd, _) in socket_fds(child.pid) {
        if Some(fd) == child.conn && other.is_none() {
            continue;
        }
        if let Some(Seen::Check(c)) = seen(fd, None)? {
            out.push(c);
        }
    }
    Ok(())
}

/// [`Probe::Diag`]: the host's CLOSE_WAIT sockets from the kernel, judged by the
/// module's rule, then found among the children's sockets by inode (looked for
/// only when some socket is gone). No copy of a child's descriptor is made, so
/// no fork waits for it (a child forked meanwhile may inherit the netlink socket
/// or a `/proc` directory of this look: a descriptor, never a connection).
fn diag_closed_connections(
    children: &[Child],
    ours: &Ours,
    on_this_host: &dyn Fn(IpAddr) -> bool,
) -> std::io::Result<Vec<Connection>> {
    let sockets = match os::tcp_sockets_in(1 << CLOSE_WAIT) {
        Ok(s) => s,
        Err(e) if diag_refused(&e) => return Err(e),
        // Out of descriptors or memory: no verdict this time; the next look asks
        // again.
        Err(_) => return Ok(Vec::new()),
    };
    let gone: BTreeMap<u64, (SocketAddr, SocketAddr)> = sockets
        .into_iter()
        .filter(|s| {
            s.state == CLOSE_WAIT
                && s.inode != 0
                && on_this_host(s.remote.ip())
                && peer_gone(s.local, s.remote)
        })
        .map(|s| (u64::from(s.inode), (s.local, s.remote)))
        .collect();
    Ok(held_by_children(children, ours, &gone))
}

/// The connections in `gone` (by inode: our end, the client) that a child
/// holds and that are a client's ([`Ours`]).
fn held_by_children(
    children: &[Child],
    ours: &Ours,
    gone: &BTreeMap<u64, (SocketAddr, SocketAddr)>,
) -> Vec<Connection> {
    let mut out = Vec::new();
    if gone.is_empty() {
        return out;
    }
    for child in children {
        for (fd, inode) in socket_fds(child.pid) {
            if let Some((local, remote)) = gone.get(&inode) {
                // The connection the child said, if the client matches too (the
                // number may name another socket by now).
                let said =
                    Some(fd) == child.conn && child.peer.map(canonical) == Some(canonical(*remote));
                if ours.accepted(*local, said) {
                    out.push(connection(child.pid, *local, *remote));
                }
            }
        }
    }
    out
}

/// Whether a `pidfd_*` error means the call is not available here (an old
/// kernel, a seccomp filter, no permission), rather than this child or
/// descriptor being gone.
fn refused(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::EACCES)
    )
}

/// Whether a `sock_diag` error means netlink cannot answer here (no such
/// protocol or family, a seccomp filter, a request the kernel does not know),
/// rather than a passing shortage.
fn diag_refused(e: &std::io::Error) -> bool {
    // An answer that does not parse (no OS error) is a passing oddity too.
    e.raw_os_error().is_some()
        && !matches!(
            e.raw_os_error(),
            Some(libc::EMFILE)
                | Some(libc::ENFILE)
                | Some(libc::ENOMEM)
                | Some(libc::ENOBUFS)
                | Some(libc::EINTR)
                | Some(libc::EAGAIN)
        )
}

fn socket_addr(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}

/// The module's rule for a connection of ours (`local`) in CLOSE_WAIT whose peer
/// (`remote`) is on this host: gone only if the peer's own socket is there and no
/// process holds it any more (orphaned: the client closed it or died; it stays
/// so for `tcp_fin_timeout`). A peer socket still held is a half-close; one not
/// found at all proves nothing (the client's addresses may differ from what we
/// see, behind a REDIRECT or NAT): not gone.
fn peer_gone(local: SocketAddr, remote: SocketAddr) -> bool {
    find_socket(remote, local).is_some_and(|(_, inode)| inode == 0)
}

/// The TCP socket of this host bound to `local` and connected to `remote`: its
/// state and inode, asked of the kernel (`sock_diag`) where that is known to
/// answer, else found in the host's tables.
fn find_socket(local: SocketAddr, remote: SocketAddr) -> Option<(u8, u64)> {
    if diag_answers() {
        if let Ok(found) = os::tcp_socket(local, remote) {
            return found.map(|(state, inode)| (state, u64::from(inode)));
        }
    }
    // Both tables: an IPv4 connection may be filed in either (with mapped
    // addresses in tcp6, for a dual-stack socket).
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .into_iter()
        .filter_map(|path| std::fs::read(path).ok())
        .flat_map(|t| parse_tcp_table(&t).unwrap_or_default())
        .find(|e| {
            e.state != TcpState::Listen
                && canonical(e.local_address) == canonical(local)
                && canonical(e.remote_address) == canonical(remote)
        })
        .map(|e| (e.state.to_u8(), e.inode))
}

/// Whether this kernel answers exact `sock_diag` lookups (a kernel without the
/// TCP diag handler says "no such socket" of every socket, which must not be
/// read as "closed"): a dump of the listening sockets (a few) answers, or is
/// refused with ENOENT. Asked until it answers one way or the other.
fn diag_answers() -> bool {
    const LISTEN: u8 = 10;
    static ANSWERS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if let Some(&known) = ANSWERS.get() {
        return known;
    }
    match os::tcp_sockets_in(1 << LISTEN) {
        Ok(_) => *ANSWERS.get_or_init(|| true),
        Err(e) if diag_refused(&e) => *ANSWERS.get_or_init(|| false),
        // A passing shortage: ask again next time.
        Err(_) => false,
    }
}

/// [`Probe::Proc`]: the CLOSE_WAIT sockets of `children` whose peer is gone (see
/// the module docs), from the host's tables. Cheap when nobody hung up: the
/// per-child descriptor scan happens only if the tables list some CLOSE_WAIT
/// socket.
fn closed_connections(
    children: &[Child],
    ours: &Ours,
    on_this_host: &dyn Fn(IpAddr) -> bool,
) -> Vec<Connection> {
    let mut tables = Vec::new();
    for (proto, path) in [
        (Proto::Tcp, "/proc/net/tcp"),
        (Proto::Tcp6, "/proc/net/tcp6"),
    ] {
        // A missing table (no IPv6) or one that does not parse is simply empty.
        let Ok(table) = std::fs::read(path) else {
            continue;
        };
        tables.push((
            proto,
            parse_tcp_table(&table).into_iter().flatten().collect(),
        ));
    }
    let gone = gone_sockets(&tables, on_this_host)
        .into_iter()
        .map(|(inode, (_, e))| (inode, (e.local_address, e.remote_address)))
        .collect();
    held_by_children(children, ours, &gone)
}

/// The addresses of this host's interfaces (empty if they cannot be listed: then
/// only loopback peers count as local, the cautious side of the rule).
fn host_addresses() -> BTreeSet<IpAddr> {
    let Ok(ifaces) = nix::ifaddrs::getifaddrs() else {
        return BTreeSet::new();
    };
    ifaces
        .filter_map(|i| i.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6()
                    .map(|v6| IpAddr::V6(v6.ip()).to_canonical())
            }
        })
        .collect()
}

/// The rule of the module docs applied to the kernel's tables: the CLOSE_WAIT
/// sockets (by inode) whose peer can no longer receive. `on_this_host` says
/// whether an address is one of this host's own.
fn gone_sockets(
    tables: &[(Proto, Vec<TcpNetEntry>)],
    on_this_host: &dyn Fn(IpAddr) -> bool,
) -> BTreeMap<u64, (Proto, TcpNetEntry)> {
    let mut closed: BTreeMap<u64, (Proto, TcpNetEntry)> = BTreeMap::new();
    for (proto, entries) in tables {
        for e in entries {
            if e.state == TcpState::CloseWait && on_this_host(e.remote_address.ip()) {
                closed.insert(e.inode, (*proto, e.clone()));
            }
        }
    }
    if closed.is_empty() {
        return closed;
    }
    // The client's end of each CLOSE_WAIT connection, as it appears in the
    // tables (local, remote swapped).
    let peers: BTreeSet<(SocketAddr, SocketAddr)> = closed
        .values()
        .map(|(_, e)| (canonical(e.remote_address), canonical(e.local_address)))
        .collect();
    // Those no process holds any more: a client that closed (or died). One
    // still held only half-closed; one not listed at all proves nothing (see
    // `peer_gone`).
    let orphaned: BTreeSet<(SocketAddr, SocketAddr)> = tables
        .iter()
        .flat_map(|(_, t)| t)
        .filter(|e| e.inode == 0 && e.state != TcpState::Listen)
        .map(|e| (canonical(e.local_address), canonical(e.remote_address)))
        .filter(|k| peers.contains(k))
        .collect();
    closed.retain(|_, (_, e)| {
        orphaned.contains(&(canonical(e.remote_address), canonical(e.local_address)))
    });
    closed
}

/// Parses a kernel TCP table (the contents of `/proc/net/tcp` or `tcp6`: a header
/// line, then one socket a line) with procfs's parser.
pub(crate) fn parse_tcp_table(table: &[u8]) -> procfs::ProcResult<Vec<TcpNetEntry>> {
    use procfs::FromReadSI;
    procfs::net::TcpNetEntries::from_read(table, procfs::current_system_info()).map(|t| t.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn tables_parse_and_garbage_is_an_error() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 0100007F:D431 08 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 0 10 -1\n";
        let entries = parse_tcp_table(table.as_bytes()).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].state, TcpState::CloseWait);
        assert_eq!(entries[0].inode, 4242);
        assert_eq!(entries[0].local_address.port(), 0x1F90);
        assert!(parse_tcp_table(b"header\n0: zz").is_err());
        assert!(parse_tcp_table(b"").unwrap().is_empty());
    }

    /// A kernel table line: `local` and `remote` as the kernel writes them (hex).
    fn line(local: &str, remote: &str, state: u8, inode: u64) -> String {
        format!("   0: {local} {remote} {state:02X} 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000 20 4 0 10 -1\n")
    }

    fn judged(lines: &[String]) -> Vec<u64> {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        let table = parse_tcp_table((header.to_string() + &lines.concat()).as_bytes()).unwrap();
        // This host: loopback and 10.0.0.5 (0500000A); 203.0.113.7 (077100CB) is not.
        let here = |ip: IpAddr| ip.is_loopback() || ip == IpAddr::from([10, 0, 0, 5]);
        gone_sockets(&[(Proto::Tcp, table)], &here)
            .into_keys()
            .collect()
    }

    #[test]
    fn the_rule_judges_each_kind_of_peer() {
        const CLOSE_WAIT: u8 = 8;
        const FIN_WAIT2: u8 = 5;
        const ESTABLISHED: u8 = 1;
        const TIME_WAIT: u8 = 6;
        let (ours, client) = ("0100007F:1F90", "0100007F:D431");
        // The local client closed: its socket is orphaned (inode 0) in FIN_WAIT2.
        assert_eq!(
            judged(&[
                line(ours, client, CLOSE_WAIT, 11),
                line(client, ours, FIN_WAIT2, 0)
            ]),
            [11]
        );
        // The client's socket is not listed at all: it may be gone (past
        // tcp_fin_timeout), or its addresses are not what we see (a REDIRECT,
        // NAT): nothing proves it closed, so it is not taken for gone.
        assert!(judged(&[line(ours, client, CLOSE_WAIT, 12)]).is_empty());
        // The local client only half-closed: it still holds its socket.
        assert!(judged(&[
            line(ours, client, CLOSE_WAIT, 13),
            line(client, ours, FIN_WAIT2, 99)
        ])
        .is_empty());
        // Same, through another of this host's addresses.
        let (ours, client) = ("0500000A:1F90", "0500000A:D431");
        assert!(judged(&[
            line(ours, client, CLOSE_WAIT, 14),
            line(client, ours, FIN_WAIT2, 98)
        ])
        .is_empty());
        assert_eq!(
            judged(&[
                line(ours, client, CLOSE_WAIT, 15),
                line(client, ours, TIME_WAIT, 0)
            ]),
            [15]
        );
        // A client on another host: a FIN alone cannot be told from a half-close,
        // so it is not taken for gone.
        assert!(judged(&[line(ours, "077100CB:D431", CLOSE_WAIT, 16)]).is_empty());
        // Nothing in CLOSE_WAIT: nothing is gone.
        assert!(judged(&[line(ours, client, ESTABLISHED, 17)]).is_empty());
    }

    const PROBES: [Probe; 3] = [Probe::Pidfd, Probe::Diag, Probe::Proc];

    /// This process as a child that said it serves descriptor `fd`, whose
    /// client is `peer`.
    fn said(fd: std::os::fd::RawFd, peer: SocketAddr) -> Child {
        Child {
            pid: std::process::id() as i32,
            conn: Some(fd),
            peer: Some(peer),
            requests: 0,
        }
    }

    /// The child sends `answer` and shuts down its side; the client reads it
    /// all and closes: our end, `server`, ends closed in order (no error waits).
    fn end_in_order(server: &mut TcpStream, mut client: TcpStream, answer: &[u8]) {
        server.write_all(answer).unwrap();
        server.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        drop(client);
        wait_closed(server);
    }

    fn gone(me: i32, probe: Probe) -> Vec<Connection> {
        gone_connections(&[Child::any(me)], &Ours::Any, probe)
            .expect("pidfd_getfd and sock_diag work on this host")
    }

    #[test]
    fn a_peer_that_hung_up_is_found_on_our_socket() {
        for probe in PROBES {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (mut server, peer) = l.accept().unwrap();
            let me = std::process::id() as i32;
            assert!(gone(me, probe)
                .iter()
                .all(|c| c.conn.foreign_port != peer.port()));
            drop(client);
            // The FIN arrives: our end reads EOF and sits in CLOSE_WAIT.
            let mut buf = [0u8; 1];
            assert_eq!(server.read(&mut buf).unwrap(), 0);
            let found = gone(me, probe);
            let c = found
                .iter()
                .find(|c| c.conn.foreign_port == peer.port())
                .unwrap_or_else(|| panic!("{probe:?}: the hung-up connection is listed"));
            assert_eq!(c.conn.pid, Pid(me));
            assert_eq!(c.conn.proto, Proto::Tcp);
            assert_eq!(c.conn.local_port, l.local_addr().unwrap().port());
            assert_eq!(c.conn.foreign_host, peer.ip());
            assert_eq!(c.state, ConnState::CloseWait);
        }
    }

    #[test]
    fn an_ipv6_peer_that_hung_up_is_found_by_each_probe() {
        let Ok(l) = TcpListener::bind("[::1]:0") else {
            panic!("::1 is not configured on this host");
        };
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, peer) = l.accept().unwrap();
        let me = std::process::id() as i32;
        drop(client);
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).unwrap(), 0);
        for probe in PROBES {
            let found = gone(me, probe);
            let c = found
                .iter()
                .find(|c| c.conn.foreign_port == peer.port())
                .unwrap_or_else(|| panic!("{probe:?}: the hung-up connection is listed"));
            assert_eq!(c.conn.proto, Proto::Tcp6);
            assert_eq!(c.conn.foreign_host, peer.ip());
            assert_eq!(c.conn.local_port, l.local_addr().unwrap().port());
        }
    }

    /// A hung-up connection of this process: the listener, our end (read to
    /// EOF: in CLOSE_WAIT) and the client's address.
    fn hung_up() -> (TcpListener, TcpStream, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, peer) = l.accept().unwrap();
        drop(client);
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).unwrap(), 0);
        (l, server, peer)
    }

    #[test]
    fn only_connections_accepted_on_our_listeners_count() {
        let (l, _server, peer) = hung_up();
        let me = [Child::any(std::process::id() as i32)];
        let here = l.local_addr().unwrap();
        let elsewhere = SocketAddr::from(([127, 0, 0, 1], here.port().wrapping_add(1).max(1)));
        let wildcard = SocketAddr::from(([0, 0, 0, 0], here.port()));
        let other_ip = SocketAddr::from(([127, 0, 0, 2], here.port()));
        for probe in PROBES {
            let listed = |listening: Vec<SocketAddr>| {
                gone_connections(&me, &Ours::new(listening), probe)
                    .unwrap()
                    .iter()
                    .any(|c| c.conn.foreign_port == peer.port())
            };
            assert!(listed(vec![here]), "{probe:?}: on our listener");
            assert!(listed(vec![elsewhere, wildcard]), "{probe:?}: on 0.0.0.0");
            assert!(
                !listed(vec![elsewhere]),
                "{probe:?}: another port's connection taken for a client's"
            );
            assert!(
                !listed(vec![other_ip]),
                "{probe:?}: another address's connection taken for a client's"
            );
        }
    }

    #[test]
    fn a_child_that_said_its_connection_is_looked_at_there() {
        use std::os::fd::AsRawFd;
        let (l, server, peer) = hung_up();
        // Another connection of ours, still up, on a lower or higher descriptor.
        let up = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (up_server, up_peer) = l.accept().unwrap();
        let ours = Ours::new(vec![l.local_addr().unwrap()]);
        let found = |child| {
            own_closed_connections(&[child], &ours, &|ip: IpAddr| ip.is_loopback()).unwrap()
        };
        // Its connection, hung up: found there.
        let f = found(said(server.as_raw_fd(), peer));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].conn.foreign_port, peer.port());
        // Its connection is up: the other sockets are not looked at.
        assert!(found(said(up_server.as_raw_fd(), up_peer)).is_empty());
        // The number names another client's socket now: every socket is looked at.
        let f = found(said(up_server.as_raw_fd(), peer));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].conn.foreign_port, peer.port());
        // Closed since: the same.
        let f = found(said(9999, up_peer));
        assert_eq!(f.len(), 1);
        drop((up, up_server));
    }

    #[test]
    fn a_reset_connection_is_found_where_the_child_named_its_client() {
        use std::os::fd::AsRawFd;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, peer) = l.accept().unwrap();
        // SO_LINGER 0: the close sends a reset.
        nix::sys::socket::setsockopt(
            &client,
            nix::sys::socket::sockopt::Linger,
            &libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        )
        .unwrap();
        drop(client);
        // The reset arrives; the child has not read it yet.
        wait_closed(&server);
        let me = std::process::id() as i32;
        let ours = Ours::new(vec![l.local_addr().unwrap()]);
        let here = |ip: IpAddr| ip.is_loopback();
        let said = said(server.as_raw_fd(), peer);
        let f = own_closed_connections(&[said], &ours, &here).unwrap();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].conn.foreign_port, peer.port());
        assert_eq!(f[0].conn.local_port, l.local_addr().unwrap().port());
        // The kernel forgot the peer: a child that did not say is not reported.
        let f = own_closed_connections(&[Child::any(me)], &ours, &here).unwrap();
        assert!(f.iter().all(|c| c.conn.foreign_port != peer.port()));
        // Looking took nothing from the child: it still reads the reset.
        let mut buf = [0u8; 1];
        let e = server
            .read(&mut buf)
            .expect_err("the reset is the child's to read");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
        // Once it has, it knows: nothing is reported for it any more.
        let f = own_closed_connections(&[said], &ours, &here).unwrap();
        assert!(f.is_empty(), "{f:?}");
    }

    /// Waits (1 s at most) until `s`, ours, is closed (TCP_CLOSE).
    #[allow(clippy::disallowed_methods)] // waits for the kernel's last ACK
    fn wait_closed(s: &TcpStream) {
        let closed = (0..100).any(|_| {
            let c = os::tcp_state(std::os::fd::AsFd::as_fd(s)) == Some(CLOSED);
            if !c {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            c
        });
        assert!(closed, "our end closed");
    }

    #[test]
    fn a_connection_that_ended_in_order_is_not_taken_for_a_reset() {
        use std::os::fd::AsRawFd;
        let here = |ip: IpAddr| ip.is_loopback();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = Ours::new(vec![l.local_addr().unwrap()]);
        // The child answered and shut down its side, then the client closed.
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, peer) = l.accept().unwrap();
        end_in_order(&mut server, client, b"");
        let f = own_closed_connections(&[said(server.as_raw_fd(), peer)], &ours, &here).unwrap();
        assert!(f.is_empty(), "an orderly end taken for a reset: {f:?}");
        // The client half-closed, the child answered and shut down, the client
        // read it all and closed.
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, peer) = l.accept().unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).unwrap(), 0);
        end_in_order(&mut server, client, b"answer");
        let f = own_closed_connections(&[said(server.as_raw_fd(), peer)], &ours, &here).unwrap();
        assert!(f.is_empty(), "an orderly end taken for a reset: {f:?}");
    }

    /// A dual-stack listener (`[::]`) and a client on 127.0.0.1: our end has
    /// IPv4-mapped addresses, the client's socket is an IPv4 one.
    #[test]
    fn an_ipv4_client_of_a_dual_stack_listener_is_judged_like_any() {
        use std::os::fd::AsRawFd;
        let l = TcpListener::bind("[::]:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ours = Ours::new(vec![l.local_addr().unwrap()]);
        let me = std::process::id() as i32;
        let here = |ip: IpAddr| ip.to_canonical().is_loopback();
        // Hung up: found by each probe.
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, peer) = l.accept().unwrap();
        assert!(peer.is_ipv6(), "{peer}: mapped");
        drop(client);
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).unwrap(), 0);
        for probe in PROBES {
            let f = gone_connections(&[Child::any(me)], &ours, probe).unwrap();
            assert!(
                f.iter().any(|c| c.conn.foreign_port == peer.port()),
                "{probe:?}: {f:?}"
            );
        }
        // Only half-closed: not gone.
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut half, half_peer) = l.accept().unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(half.read(&mut buf).unwrap(), 0);
        for probe in PROBES {
            let f = gone_connections(&[Child::any(me)], &ours, probe).unwrap();
            assert!(
                f.iter().all(|c| c.conn.foreign_port != half_peer.port()),
                "{probe:?}: a half-close taken for a hang-up: {f:?}"
            );
        }
        // An orderly end after the child's answer: no reset.
        end_in_order(&mut half, client, b"answer");
        let f = own_closed_connections(&[said(half.as_raw_fd(), half_peer)], &ours, &here).unwrap();
        assert!(f.is_empty(), "an orderly end taken for a reset: {f:?}");
        drop(server);
    }

    #[test]
    fn a_lookup_never_answers_with_a_listener() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let nobody = SocketAddr::from(([127, 0, 0, 1], 9));
        assert_eq!(
            os::tcp_socket(l.local_addr().unwrap(), nobody).unwrap(),
            None
        );
        assert_eq!(find_socket(l.local_addr().unwrap(), nobody), None);
    }

    #[test]
    fn only_the_connection_a_child_said_counts_where_our_listeners_are_unknown_or_unix() {
        use std::os::fd::AsRawFd;
        let (_l, server, peer) = hung_up();
        let (_l2, _other, other_peer) = hung_up();
        let said = said(server.as_raw_fd(), peer);
        for probe in PROBES {
            // No listener known, or a parent listening on Unix-domain sockets
            // alone: the one said, only.
            for ours in [Ours::Unknown, Ours::new(Vec::new())] {
                let f = gone_connections(&[said], &ours, probe).unwrap();
                let ports: Vec<u16> = f.iter().map(|c| c.conn.foreign_port).collect();
                assert!(ports.contains(&peer.port()), "{probe:?} {ours:?}: {f:?}");
                assert!(
                    !ports.contains(&other_peer.port()),
                    "{probe:?} {ours:?}: {f:?}"
                );
            }
            // The number said names another client's socket now: it is not
            // taken for the one said.
            let stale = Child {
                peer: Some(other_peer),
                ..said
            };
            let f = gone_connections(&[stale], &Ours::Unknown, probe).unwrap();
            assert!(f.is_empty(), "{probe:?}: {f:?}");
        }
    }

    #[test]
    fn the_kernel_lists_the_close_wait_sockets_alone() {
        let (_l, server, peer) = hung_up();
        let up = TcpListener::bind("127.0.0.1:0").unwrap();
        let _a = TcpStream::connect(up.local_addr().unwrap()).unwrap();
        let all = os::tcp_sockets_in(1 << CLOSE_WAIT).unwrap();
        assert!(all.iter().all(|s| s.state == CLOSE_WAIT), "{all:?}");
        let ours = all
            .iter()
            .find(|s| s.remote == peer)
            .expect("our CLOSE_WAIT socket is listed");
        assert_eq!(ours.local, server.local_addr().unwrap());
        assert_ne!(ours.inode, 0);
        assert!(all.iter().all(|s| s.local != up.local_addr().unwrap()));
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // waits for another process to let go
    fn a_peer_that_only_half_closed_is_not_gone() {
        for probe in PROBES {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (mut server, peer) = l.accept().unwrap();
            let me = std::process::id() as i32;
            client.shutdown(std::net::Shutdown::Write).unwrap();
            let mut buf = [0u8; 1];
            assert_eq!(server.read(&mut buf).unwrap(), 0);
            // Our end is in CLOSE_WAIT, but the client still holds its socket.
            assert!(
                gone(me, probe)
                    .iter()
                    .all(|c| c.conn.foreign_port != peer.port()),
                "{probe:?}: a half-close taken for a hang-up"
            );
            drop(client);
            // Another test's fork may hold a copy of the client's descriptor for a
            // moment (forked children inherit it): the socket closes when that exits.
            let found = (0..250).any(|_| {
                let found = gone(me, probe)
                    .iter()
                    .any(|c| c.conn.foreign_port == peer.port());
                if !found {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                found
            });
            assert!(found, "{probe:?}: the closed client is reported");
        }
    }

    #[test]
    fn a_child_gone_before_or_during_the_scan_is_skipped() {
        let (_l, _server, peer) = hung_up();
        // A process that has exited (and been reaped): its pid names nothing now.
        let mut gone_child = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone_child.id() as i32;
        gone_child.wait().unwrap();
        let me = std::process::id() as i32;
        for probe in PROBES {
            let children = [Child::any(gone_pid), Child::any(me), Child::any(gone_pid)];
            let found = gone_connections(&children, &Ours::Any, probe).unwrap();
            assert!(
                found.iter().all(|c| c.conn.pid == Pid(me)),
                "{probe:?}: {found:?}"
            );
            assert!(found.iter().any(|c| c.conn.foreign_port == peer.port()));
        }
    }

    #[test]
    fn a_socket_is_found_by_its_addresses_and_its_holder_seen() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        let (c_local, c_remote) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        // Held by this process: an inode.
        let (state, inode) = os::tcp_socket(c_local, c_remote).unwrap().unwrap();
        assert_eq!(state, 1, "established");
        assert_ne!(inode, 0);
        // No such socket.
        let nowhere = SocketAddr::from(([127, 0, 0, 1], 1));
        assert_eq!(os::tcp_socket(nowhere, c_remote).unwrap(), None);
        drop(server);
        drop(client);
    }
}
