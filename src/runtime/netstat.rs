//! Finding the connections whose client has gone: TCP sockets held by a child
//! whose peer can no longer receive.
//!
//! Two probes (see [`Probe`]; `PREFORKD_DISCONNECT_PROBE=pidfd|proc` forces one,
//! and the parent logs once which is in use). The default asks about our own
//! children's sockets only: each socket descriptor of a child (from
//! `/proc/PID/fd`) is copied with `pidfd_getfd` and asked its TCP state, and for
//! one in CLOSE_WAIT with a peer on this host, that peer's socket is asked of the
//! kernel by its addresses (`sock_diag`), so the cost grows with our children's
//! descriptors, not with the host's sockets. Where `pidfd_getfd` is refused (an
//! old kernel, seccomp), the host's tables (`/proc/net/tcp*`) are read instead.
//!
//! The rule. A socket in CLOSE_WAIT has received the client's FIN: the client
//! will send nothing more, but it may still read (a half-close,
//! `shutdown(SHUT_WR)`, is how some clients say "that was the whole request"). So
//! CLOSE_WAIT alone does not mean gone:
//! - when the client's own socket is on this host (its end appears in the same
//!   tables, local and remote swapped), it is gone only if that socket is orphaned
//!   (no process holds it any more: the client closed it or died) or already gone;
//!   a client that only half-closed still holds its socket and is not reported;
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
use procfs::process::{FDTarget, Process};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

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
    /// The host's TCP tables (`/proc/net/tcp*`), then the children's descriptors
    /// when some socket is in CLOSE_WAIT: where `pidfd_getfd` is refused.
    Proc,
}

/// The variable that forces a probe (`pidfd` or `proc`), for tests and for
/// hosts where the first one misbehaves.
pub(crate) const PROBE_ENV: &str = "PREFORKD_DISCONNECT_PROBE";

/// The probe asked for by [`PROBE_ENV`], if any (an unknown value is `None`:
/// the default).
pub(crate) fn forced_probe() -> Option<Probe> {
    match std::env::var(PROBE_ENV).ok()?.as_str() {
        "pidfd" => Some(Probe::Pidfd),
        "proc" => Some(Probe::Proc),
        _ => None,
    }
}

/// The connections of `children` whose peer is gone, looked at with `probe`;
/// `Err` when that probe is refused here (`pidfd_getfd` unsupported or denied):
/// the caller falls back to [`Probe::Proc`].
pub(crate) fn gone_connections(children: &[i32], probe: Probe) -> std::io::Result<Vec<Connection>> {
    match probe {
        Probe::Proc => Ok(closed_connections(children)),
        Probe::Pidfd => own_closed_connections(children),
    }
}

/// [`Probe::Pidfd`]: the module's rule applied to each child's own sockets.
fn own_closed_connections(children: &[i32]) -> std::io::Result<Vec<Connection>> {
    use std::os::fd::AsFd;
    // The kernel's TCP_CLOSE_WAIT.
    const CLOSE_WAIT: u8 = 8;
    let addrs = std::cell::OnceCell::new();
    let on_this_host = |ip: IpAddr| {
        let ip = ip.to_canonical();
        ip.is_loopback() || addrs.get_or_init(host_addresses).contains(&ip)
    };
    let mut out = Vec::new();
    for &pid in children {
        // A child that exited meanwhile is skipped: the pidfd names it or fails.
        let pidfd = match os::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) if refused(&e) => return Err(e),
            Err(_) => continue,
        };
        let Ok(fds) = Process::new(pid).and_then(|p| p.fd()) else {
            continue;
        };
        for fd in fds.flatten() {
            if !matches!(fd.target, FDTarget::Socket(_)) {
                continue;
            }
            let sock = match os::pidfd_getfd(pidfd.as_fd(), fd.fd) {
                Ok(s) => s,
                Err(e) if refused(&e) => return Err(e),
                // Closed meanwhile, or the child is gone.
                Err(_) => continue,
            };
            if os::tcp_state(sock.as_fd()) != Some(CLOSE_WAIT) {
                continue;
            }
            use nix::sys::socket::{getpeername, getsockname, SockaddrStorage};
            let (Ok(local), Ok(remote)) = (
                getsockname::<SockaddrStorage>(std::os::fd::AsRawFd::as_raw_fd(&sock)),
                getpeername::<SockaddrStorage>(std::os::fd::AsRawFd::as_raw_fd(&sock)),
            ) else {
                continue;
            };
            let (Some(local), Some(remote)) = (socket_addr(&local), socket_addr(&remote)) else {
                continue;
            };
            if !on_this_host(remote.ip()) || !peer_gone(local, remote) {
                continue;
            }
            out.push(Connection {
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
            });
        }
    }
    Ok(out)
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

fn socket_addr(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}

/// The module's rule for a connection of ours (`local`) in CLOSE_WAIT whose peer
/// (`remote`) is on this host: gone unless the peer's own socket is still held by
/// a process (a half-close). Asked of the kernel for that one socket; if it cannot
/// be asked, the host's tables say.
fn peer_gone(local: SocketAddr, remote: SocketAddr) -> bool {
    match os::tcp_socket(remote, local) {
        // Gone already, or orphaned (no process holds it): the client closed.
        Ok(None) => true,
        Ok(Some((_, inode))) => inode == 0,
        Err(_) => {
            let held = [
                ("/proc/net/tcp", remote.is_ipv4()),
                ("/proc/net/tcp6", remote.is_ipv6()),
            ]
            .into_iter()
            .filter(|(_, fits)| *fits)
            .filter_map(|(path, _)| std::fs::read(path).ok())
            .flat_map(|t| parse_tcp_table(&t).unwrap_or_default())
            .any(|e| {
                e.inode != 0
                    && canonical(e.local_address) == canonical(remote)
                    && canonical(e.remote_address) == canonical(local)
            });
            !held
        }
    }
}

/// The CLOSE_WAIT sockets of `children` whose peer is gone (see the module docs).
/// Cheap when nobody hung up: the per-child descriptor scan happens only if the
/// kernel's tables list some CLOSE_WAIT socket.
pub(crate) fn closed_connections(children: &[i32]) -> Vec<Connection> {
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
    // This host's addresses, asked for only when some socket is in CLOSE_WAIT.
    let addrs = std::cell::OnceCell::new();
    let on_this_host = |ip: IpAddr| {
        let ip = ip.to_canonical();
        ip.is_loopback() || addrs.get_or_init(host_addresses).contains(&ip)
    };
    let closed = gone_sockets(&tables, &on_this_host);
    if closed.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for &pid in children {
        // A child that just exited has no /proc entry: nothing to report for it.
        let Ok(fds) = Process::new(pid).and_then(|p| p.fd()) else {
            continue;
        };
        for fd in fds.flatten() {
            if let FDTarget::Socket(inode) = fd.target {
                if let Some((proto, e)) = closed.get(&inode) {
                    out.push(Connection {
                        conn: Disconnect {
                            pid: Pid(pid),
                            proto: *proto,
                            local_host: e.local_address.ip(),
                            local_port: e.local_address.port(),
                            foreign_host: e.remote_address.ip(),
                            foreign_port: e.remote_address.port(),
                        },
                        state: ConnState::CloseWait,
                    });
                }
            }
        }
    }
    out
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
    // Those still held by a process: a client that only half-closed.
    let held: BTreeSet<(SocketAddr, SocketAddr)> = tables
        .iter()
        .flat_map(|(_, t)| t)
        .filter(|e| e.inode != 0 && e.state != TcpState::Listen)
        .map(|e| (canonical(e.local_address), canonical(e.remote_address)))
        .filter(|k| peers.contains(k))
        .collect();
    closed.retain(|_, (_, e)| {
        !held.contains(&(canonical(e.remote_address), canonical(e.local_address)))
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
    use std::io::Read;
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
        let (ours, client) = ("0100007F:1F90", "0100007F:D431");
        // The local client closed: its socket is orphaned (inode 0) in FIN_WAIT2.
        assert_eq!(
            judged(&[
                line(ours, client, CLOSE_WAIT, 11),
                line(client, ours, FIN_WAIT2, 0)
            ]),
            [11]
        );
        // The local client's socket is gone already (it died, or the timeout passed).
        assert_eq!(judged(&[line(ours, client, CLOSE_WAIT, 12)]), [12]);
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
        assert_eq!(judged(&[line(ours, client, CLOSE_WAIT, 15)]), [15]);
        // A client on another host: a FIN alone cannot be told from a half-close,
        // so it is not taken for gone.
        assert!(judged(&[line(ours, "077100CB:D431", CLOSE_WAIT, 16)]).is_empty());
        // Nothing in CLOSE_WAIT: nothing is gone.
        assert!(judged(&[line(ours, client, ESTABLISHED, 17)]).is_empty());
    }

    const PROBES: [Probe; 2] = [Probe::Pidfd, Probe::Proc];

    fn gone(me: i32, probe: Probe) -> Vec<Connection> {
        gone_connections(&[me], probe).expect("pidfd_getfd works on this host")
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
    fn an_ipv6_peer_that_hung_up_is_found_by_the_pidfd_probe() {
        let Ok(l) = TcpListener::bind("[::1]:0") else {
            panic!("::1 is not configured on this host");
        };
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, peer) = l.accept().unwrap();
        let me = std::process::id() as i32;
        drop(client);
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).unwrap(), 0);
        let found = gone(me, Probe::Pidfd);
        let c = found
            .iter()
            .find(|c| c.conn.foreign_port == peer.port())
            .expect("the hung-up connection is listed");
        assert_eq!(c.conn.proto, Proto::Tcp6);
        assert_eq!(c.conn.foreign_host, peer.ip());
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
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, peer) = l.accept().unwrap();
        drop(client);
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).unwrap(), 0);
        // A process that has exited (and been reaped): its pid names nothing now.
        let mut gone_child = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone_child.id() as i32;
        gone_child.wait().unwrap();
        let me = std::process::id() as i32;
        for probe in PROBES {
            let found = gone_connections(&[gone_pid, me, gone_pid], probe).unwrap();
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
