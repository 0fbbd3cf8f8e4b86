//! Finding the connections whose client has gone: TCP sockets in CLOSE_WAIT held
//! by a child, from /proc (the kernel's tables, not a parsed `netstat` run).

use crate::policy::{Disconnect, Proto};
use crate::{ConnState, Connection, Pid};
use procfs::net::{TcpNetEntry, TcpState};
use procfs::process::{FDTarget, Process};
use std::collections::BTreeMap;

/// The CLOSE_WAIT sockets of `children`. Cheap when nobody hung up: the per-child
/// descriptor scan happens only if the kernel's tables list some CLOSE_WAIT socket.
pub(crate) fn closed_connections(children: &[i32]) -> Vec<Connection> {
    let mut closed: BTreeMap<u64, (Proto, TcpNetEntry)> = BTreeMap::new();
    for (proto, path) in [
        (Proto::Tcp, "/proc/net/tcp"),
        (Proto::Tcp6, "/proc/net/tcp6"),
    ] {
        // A missing table (no IPv6) or one that does not parse is simply empty.
        let Ok(table) = std::fs::read(path) else {
            continue;
        };
        for e in parse_tcp_table(&table).into_iter().flatten() {
            if e.state == TcpState::CloseWait {
                closed.insert(e.inode, (proto, e));
            }
        }
    }
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
}
