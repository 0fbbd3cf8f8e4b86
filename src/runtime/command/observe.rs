//! Busy children seen from the kernel, for commands that do not report: a
//! thread of the parent stands in for each child's own scoreboard writes.
//!
//! Every `busy_check_every` (and at once when a listener's queue fills; every
//! second or 20 checks while no connection is open and no child starting), it
//! looks at:
//! - the connections accepted on our listeners: TCP sockets in ESTABLISHED or
//!   CLOSE_WAIT whose local address is a listener's (one `sock_diag` dump, the
//!   kernel filtering by state), and Unix-domain sockets connected at a
//!   listener's path (`/proc/net/unix`: an accepted socket carries its
//!   listener's path);
//! - each child's process tree (`/proc/PID/task/*/children`, recursively) and
//!   the socket inodes its processes hold (`/proc/PID/fd`).
//!
//! A child whose tree holds one of those connections is busy, else idle; the
//! slot changes as a child's own `Worker` would change it (see
//! `Board::observed`), so scaling, busy timeouts and the disconnect checks work
//! unchanged. A connection waiting in a listener's queue (`TCP_INFO` of the
//! listening socket, or the listener readable) wakes the parent when the pool
//! can grow. This is a sensor, like a child's own report: it decides nothing.

// A sensor thread's bounded waits between looks (never the machine's).
#![allow(clippy::disallowed_methods)]

use super::{ListenAddr, Supervised};
use crate::runtime::os;
use crate::runtime::scoreboard::Board;
use crate::runtime::signals::PARENT_SIGNALS;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

/// More processes than this in one child's tree are not looked at (a fork bomb
/// must not make the parent's observer slow).
const MOST_PROCESSES: usize = 4096;

/// Starts the observing thread (with the parent's signals blocked in it).
/// `settle`: how long a starting child must be up, with nothing waiting, to
/// count as ready without having served (`min_healthy_uptime`).
pub(crate) fn start(
    board: Board,
    supervised: Arc<Supervised>,
    settle: Duration,
) -> std::io::Result<()> {
    os::hold_signals(&PARENT_SIGNALS)?;
    let started = std::thread::Builder::new()
        .name("preforkd-observer".into())
        .spawn(move || {
            let listening = supervised.listening.get().cloned().unwrap_or_default();
            let mut starting = 0u128;
            let every = supervised.busy_check_every;
            // A pool where nothing happens is looked at seldom (a look costs a
            // walk of the kernel's socket tables); a connection that has to wait
            // for a child still wakes the thread at once.
            let quiet = every
                .saturating_mul(20)
                .min(Duration::from_secs(1))
                .max(every);
            let mut wait = every;
            let mut held = HashMap::new();
            let mut last = HashMap::new();
            loop {
                let queued = wait_for_queue(&listening, wait);
                // A panic costs one look, not the thread.
                let active = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let waiting = queued || queue_len(&listening) > 0;
                    let (active, changed) = if supervised.cooperative {
                        (true, true)
                    } else {
                        look(&board, &listening, waiting, settle, &mut held, &mut last)
                    };
                    if waiting {
                        board.queue_waiting();
                    }
                    (active || waiting, changed || waiting)
                }))
                .unwrap_or_else(|_| {
                    // What a look left half done is not trusted.
                    held.clear();
                    last.clear();
                    (true, true)
                });
                // Looks while children come and go; while the pool holds still
                // (long requests, nothing waiting: a waiting connection wakes the
                // thread at once), fewer and fewer, down to the quiet cadence. A
                // look is a dump of the kernel's socket table, ~3 ms on a large
                // host whatever it holds.
                wait = match active {
                    (false, _) => quiet,
                    (true, true) => every,
                    (true, false) => wait.saturating_mul(2).clamp(every, quiet),
                };
                if supervised.cooperative {
                    // A child that wrote "ready" itself: the parent wants to know
                    // (its "serving" and the service manager's READY wait for it).
                    let now = board.starting();
                    if starting & !now != 0 {
                        board.wake();
                    }
                    starting = now;
                }
                if queued {
                    // The queue stays readable while connections wait: no spin.
                    // While the pool can grow, children starting are seen
                    // serving soon; a full pool gains nothing from faster looks.
                    std::thread::sleep(if board.can_grow() {
                        every.min(Duration::from_millis(10))
                    } else {
                        every
                    });
                }
            }
        });
    let released = os::release_signals(&PARENT_SIGNALS);
    started?;
    released
}

/// Waits up to `every` for a connection to wait in a listener's queue; whether
/// one does.
fn wait_for_queue(listening: &[(RawFd, ListenAddr)], every: Duration) -> bool {
    let mut fds: Vec<PollFd> = listening
        .iter()
        .map(|(fd, _)| PollFd::new(os::borrow_fd(*fd), PollFlags::POLLIN))
        .collect();
    let ms = u16::try_from(every.as_millis()).unwrap_or(u16::MAX);
    if fds.is_empty() {
        std::thread::sleep(every);
        return false;
    }
    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
}

/// Connections waiting in the TCP listeners' queues.
fn queue_len(listening: &[(RawFd, ListenAddr)]) -> u32 {
    listening
        .iter()
        .filter(|(_, a)| matches!(a, ListenAddr::Tcp(_)))
        .filter_map(|(fd, _)| os::listen_queue_len(os::borrow_fd(*fd)))
        .sum()
}

/// One look: every child marked busy or idle (`queued`: connections wait).
/// Whether anything is under way (a connection accepted, or a child starting),
/// and whether anything changed since the last look (`last`: each child's
/// busy or not, then).
///
/// `held` carries, from look to look, the accepted connections each child was
/// seen holding: a child whose connection is still open is still busy without
/// a walk of its descriptors, and the idle ones are walked only while some
/// accepted connection is nobody's yet (a pool of long requests costs one
/// socket-table dump a look, not a walk of every child).
fn look(
    board: &Board,
    listening: &[(RawFd, ListenAddr)],
    queued: bool,
    settle: Duration,
    held: &mut HashMap<i32, Vec<u64>>,
    last: &mut HashMap<i32, bool>,
) -> (bool, bool) {
    let accepted = accepted_connections(listening);
    let active = !accepted.is_empty() || board.starting() != 0;
    let children: Vec<(usize, i32)> = board
        .pids()
        .enumerate()
        .filter(|&(_, pid)| pid > 0)
        .collect();
    held.retain(|pid, inodes| {
        inodes.retain(|i| accepted.contains(i));
        !inodes.is_empty() && children.iter().any(|(_, p)| p == pid)
    });
    let mut changed = last.len() != children.len() || board.starting() != 0;
    let mut unclaimed: HashSet<u64> = accepted
        .iter()
        .filter(|i| !held.values().any(|v| v.contains(i)))
        .copied()
        .collect();
    for &(slot, pid) in &children {
        let busy = held.contains_key(&pid) || {
            let mut mine = Vec::new();
            if !unclaimed.is_empty() {
                for p in process_tree(pid) {
                    for (_, i) in crate::runtime::netstat::socket_fds(p) {
                        if unclaimed.remove(&i) {
                            mine.push(i);
                        }
                    }
                }
            }
            let busy = !mine.is_empty();
            if busy {
                held.insert(pid, mine);
            }
            busy
        };
        changed |= last.get(&pid) != Some(&busy);
        board.observed(slot, pid, busy, queued, settle);
    }
    last.clear();
    last.extend(
        children
            .iter()
            .map(|&(_, pid)| (pid, held.contains_key(&pid))),
    );
    (active, changed)
}

/// The inodes of the connections accepted on `listening`, open now.
pub(crate) fn accepted_connections(listening: &[(RawFd, ListenAddr)]) -> HashSet<u64> {
    let mut out = HashSet::new();
    let tcp: Vec<SocketAddr> = listening
        .iter()
        .filter_map(|(_, a)| match a {
            ListenAddr::Tcp(a) => Some(*a),
            ListenAddr::Unix(_) => None,
        })
        .collect();
    if !tcp.is_empty() {
        const ESTABLISHED: u32 = 1;
        const CLOSE_WAIT: u32 = 8;
        if let Ok(sockets) = os::tcp_sockets_in(1 << ESTABLISHED | 1 << CLOSE_WAIT) {
            for s in sockets {
                let ours = tcp.iter().any(|l| {
                    l.port() == s.local.port()
                        && (l.ip().is_unspecified()
                            || l.ip().to_canonical() == s.local.ip().to_canonical())
                });
                if ours && s.inode != 0 {
                    out.insert(u64::from(s.inode));
                }
            }
        }
    }
    let unix: Vec<&std::path::Path> = listening
        .iter()
        .filter_map(|(_, a)| match a {
            ListenAddr::Unix(p) => Some(p.as_path()),
            ListenAddr::Tcp(_) => None,
        })
        .collect();
    if !unix.is_empty() {
        if let Ok(table) = std::fs::read("/proc/net/unix") {
            out.extend(unix_accepted(&table, &unix));
        }
    }
    out
}

/// From `/proc/net/unix`: the connected, non-listening stream sockets bound at
/// one of `paths` (an accepted socket carries its listener's path).
fn unix_accepted(table: &[u8], paths: &[&std::path::Path]) -> Vec<u64> {
    // Num RefCount Protocol Flags Type St Inode Path
    const ACCEPTCON: u32 = 0x10000;
    const STREAM: &str = "0001";
    const CONNECTED: &str = "03";
    String::from_utf8_lossy(table)
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (f, path) = unix_fields(line)?;
            let (flags, ty, st, inode) = (f[3], f[4], f[5], f[6]);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let ours = paths
                .iter()
                .any(|p| p.as_os_str() == std::ffi::OsStr::new(path));
            (ours && flags & ACCEPTCON == 0 && ty == STREAM && st == CONNECTED)
                .then(|| inode.parse().ok())
                .flatten()
        })
        .collect()
}

/// A `/proc/net/unix` line's seven first fields and its path: the rest of the
/// line after the one space that follows the inode (a path may hold spaces).
fn unix_fields(line: &str) -> Option<([&str; 7], &str)> {
    let mut f = [""; 7];
    let mut rest = line.trim_start();
    for (i, field) in f.iter_mut().enumerate() {
        let end = rest.find(' ')?;
        *field = &rest[..end];
        if field.is_empty() {
            return None;
        }
        // Fields are padded on the left; the path follows the inode after
        // exactly one space (and may start with one).
        rest = if i < 6 {
            rest[end..].trim_start_matches(' ')
        } else {
            &rest[end + 1..]
        };
    }
    (!rest.is_empty()).then_some((f, rest))
}

/// `pid` and its descendants (from `/proc/PID/task/*/children`), at most
/// [`MOST_PROCESSES`].
pub(crate) fn process_tree(pid: i32) -> Vec<i32> {
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() && tree.len() < MOST_PROCESSES {
        let p = tree[i];
        i += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(kids) = std::fs::read_to_string(t.path().join("children")) else {
                continue;
            };
            for k in kids
                .split_whitespace()
                .filter_map(|k| k.parse::<i32>().ok())
            {
                if !tree.contains(&k) && tree.len() < MOST_PROCESSES {
                    tree.push(k);
                }
            }
        }
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accepted_unix_socket_is_found_by_its_listeners_path_and_nothing_else() {
        let table = b"Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 100 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 101 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 102
0000000000000000: 00000003 00000000 00000000 0001 03 103 /run/other.sock
0000000000000000: 00000003 00000000 00000000 0002 03 104 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 01 105 /run/app.sock
";
        let got = unix_accepted(table, &[std::path::Path::new("/run/app.sock")]);
        assert_eq!(got, vec![101]);
    }

    #[test]
    fn a_unix_path_with_spaces_is_read_whole() {
        let table = b"Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000003 00000000 00000000 0001 03  7101 /tmp/my app.sock
0000000000000000: 00000003 00000000 00000000 0001 03  7102 /tmp/my
0000000000000000: 00000003 00000000 00000000 0001 03 17103  lead.sock
";
        let my = std::path::Path::new("/tmp/my app.sock");
        assert_eq!(unix_accepted(table, &[my]), vec![7101]);
        let lead = std::path::Path::new(" lead.sock");
        assert_eq!(unix_accepted(table, &[lead]), vec![17103]);
    }

    #[test]
    fn a_process_tree_holds_the_process_and_its_descendants() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let mut tree = Vec::new();
        for _ in 0..200 {
            tree = process_tree(pid);
            if tree.len() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let grandchild = tree.get(1).copied();
        let _ = child.kill();
        let _ = child.wait();
        if let Some(g) = grandchild {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(g),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert_eq!(tree.len(), 2, "{tree:?}");
        assert_eq!(tree[0], pid);
    }
}
