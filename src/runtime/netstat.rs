//! Finding the connections whose client has gone: TCP sockets held by a child
//! whose peer can no longer receive, from /proc (the kernel's tables, not a
//! parsed `netstat` run).
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

    #[test]
    fn a_peer_that_hung_up_is_found_on_our_socket() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, peer) = l.accept().unwrap();
        let me = std::process::id() as i32;
        assert!(closed_connections(&[me])
            .iter()
            .all(|c| c.conn.foreign_port != peer.port()));
        drop(client);
        // The FIN arrives: our end reads EOF and sits in CLOSE_WAIT.
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).unwrap(), 0);
        let found = closed_connections(&[me]);
        let c = found
            .iter()
            .find(|c| c.conn.foreign_port == peer.port())
            .expect("the hung-up connection is listed");
        assert_eq!(c.conn.pid, Pid(me));
        assert_eq!(c.conn.proto, Proto::Tcp);
        assert_eq!(c.conn.local_port, l.local_addr().unwrap().port());
        assert_eq!(c.state, ConnState::CloseWait);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // waits for another process to let go
    fn a_peer_that_only_half_closed_is_not_gone() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, peer) = l.accept().unwrap();
        let me = std::process::id() as i32;
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).unwrap(), 0);
        // Our end is in CLOSE_WAIT, but the client still holds its socket.
        assert!(closed_connections(&[me])
            .iter()
            .all(|c| c.conn.foreign_port != peer.port()));
        drop(client);
        // Another test's fork may hold a copy of the client's descriptor for a
        // moment (forked children inherit it): the socket closes when that exits.
        let gone = (0..250).any(|_| {
            let found = closed_connections(&[me])
                .iter()
                .any(|c| c.conn.foreign_port == peer.port());
            if !found {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            found
        });
        assert!(gone, "the closed client is reported");
    }
}
