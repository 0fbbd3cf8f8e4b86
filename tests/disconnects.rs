//! Client disconnects on the demo, with real clients on 127.0.0.1 and ::1: a
//! client that hangs up on a busy child is reported once, with that child's pid
//! and the client's port; with `--disconnect-kill` the child is stopped and its
//! job never completes; clients still there are never reported.
// Real processes need real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;
use support::*;

fn hang_up_is_reported(listen: &str, probe: &str) {
    let mut cmd = std::process::Command::new(demo_binary());
    cmd.env("PREFORKD_DISCONNECT_PROBE", probe)
        .args(["--listen", listen, "--prefork", "1", "--max-children", "4"])
        .args(["--disconnect-every-ms", "50"]);
    let d = Demo::start_command(cmd);
    let (needle, _) = hang_up_on(&d, HangUp::Close);
    logged_once(&d, &needle, &format!("{probe} on {listen}"));
}

#[test]
fn a_client_that_hangs_up_is_reported_with_the_childs_pid_and_its_port() {
    hang_up_is_reported("127.0.0.1:0", "pidfd");
}

#[test]
fn on_ipv6_too() {
    hang_up_is_reported("[::1]:0", "pidfd");
}

#[test]
fn and_through_the_fallbacks_where_pidfd_is_not_used() {
    for probe in ["diag", "proc"] {
        hang_up_is_reported("127.0.0.1:0", probe);
        hang_up_is_reported("[::1]:0", probe);
    }
}

/// A dual-stack listener (`[::]`, Linux's default) and a client on 127.0.0.1:
/// our end has IPv4-mapped addresses, the client's socket is an IPv4 one.
#[test]
fn an_ipv4_client_of_a_dual_stack_listener_is_reported() {
    for probe in ["pidfd", "diag", "proc"] {
        let mut cmd = std::process::Command::new(demo_binary());
        cmd.env("PREFORKD_DISCONNECT_PROBE", probe)
            .args(["--listen", "[::]:0"])
            .args(ONE_CHILD);
        let d = Demo::start_command(cmd);
        let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], d.addr.port()));
        let (needle, _) = hang_up_at(&d, v4, HangUp::Close);
        // Reported as the kernel names it: tcp6, ::ffff:127.0.0.1.
        let needle = needle.replacen("client 127.0.0.1:", "client ::ffff:127.0.0.1:", 1);
        logged_once(&d, &needle, probe);
    }
}

/// A client that resets its connection (SO_LINGER 0, or closing with unread
/// data) leaves the child's socket closed, not in CLOSE_WAIT, and the kernel
/// forgets its peer: the client the child wrote in its slot names it.
#[test]
fn a_client_that_resets_is_reported_too() {
    let d = Demo::start(&ONE_CHILD);
    let (needle, _) = hang_up_on(&d, HangUp::Reset);
    logged_once(&d, &needle, "a reset");
}

#[test]
fn with_the_kill_policy_the_child_is_replaced_and_its_job_never_completes() {
    let dir = tempdir("disconnect-kill");
    let access = dir.join("access.log");
    let d = Demo::start(&[
        "--prefork",
        "2",
        "--max-children",
        "4",
        "--disconnect-every-ms",
        "50",
        "--disconnect-kill",
        "--access-log",
        access.to_str().unwrap(),
    ]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 2));
    let before = d.children();
    // TERM first, then KILL after kill_grace (5 s): a 10 s job is cut short.
    let started = std::time::Instant::now();
    let s = sleeper(d.addr, 10_000);
    std::thread::sleep(Duration::from_millis(200));
    drop(s);
    // Some child is stopped and replaced: the pool is back to 2 without it. The
    // child sleeps through its TERM: it goes at the KILL, kill_grace (5 s) after
    // the hang-up was seen, which the wait must outlast (it ends before the job
    // would have, at 10 s).
    assert!(
        wait_for(Duration::from_secs(9), || {
            let now = d.children();
            now.len() == 2 && before.iter().any(|c| !now.contains(c))
        }),
        "no child was replaced\n{}",
        d.log()
    );
    assert!(
        d.log().contains("stopped after its client disconnected"),
        "{}",
        d.log()
    );
    // Past the job's end: it never completed (no access line for it).
    std::thread::sleep(Duration::from_millis(10_500).saturating_sub(started.elapsed()));
    let log = std::fs::read_to_string(&access).unwrap_or_default();
    assert!(!log.contains("/sleep?ms=10000"), "the job completed: {log}");
    assert!(!d.log().contains("hung up on child"), "{}", d.log());
    assert_eq!(get(d.addr, "/").unwrap().0, 200);
}

#[test]
fn a_client_that_stays_is_never_reported_and_gets_its_answer() {
    for probe in ["pidfd", "diag", "proc"] {
        let d = Demo::start_with_env(&ONE_CHILD, &[("PREFORKD_DISCONNECT_PROBE", probe)]);
        assert!(wait_for(Duration::from_secs(5), || d.children().len() == 1));
        let mut s = sleeper(d.addr, 1_000);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.ends_with("slept 1000 ms\n"), "{reply:?}");
        assert!(
            !d.log().contains("hung up on child"),
            "{probe}: {}",
            d.log()
        );
    }
}

/// The socket inodes process `pid` holds.
fn socket_inodes(pid: i32) -> std::collections::BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let t = std::fs::read_link(e.path()).ok()?;
                    t.to_str()?
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The parent copies a busy child's connection (`pidfd_getfd`) to look at it,
/// on a thread of its own, while the main thread forks: a child forked then
/// must not inherit the copy, or the connection outlives the child serving it
/// and its client never sees the end of the answer.
#[test]
fn no_child_inherits_a_connection_the_parent_is_looking_at() {
    const BUSY: usize = 60;
    let d = Demo::start(&[
        "--prefork",
        "60",
        "--max-children",
        "150",
        "--disconnect-every-ms",
        "50",
    ]);
    assert!(wait_for(Duration::from_secs(10), || d.children().len() == BUSY));
    let old = d.children();
    let before: Vec<_> = old.iter().map(|&c| socket_inodes(c)).collect();
    let clients: Vec<TcpStream> = (0..BUSY).map(|_| sleeper(d.addr, 30_000)).collect();
    // Each child's new socket is its client's connection.
    let new_sockets = || -> Vec<Vec<u64>> {
        old.iter()
            .zip(&before)
            .map(|(&c, b)| socket_inodes(c).difference(b).copied().collect())
            .collect()
    };
    assert!(
        wait_for(Duration::from_secs(10), || new_sockets()
            .iter()
            .all(|n| n.len() == 1)),
        "not every child busy with one connection: {:?}",
        new_sockets()
    );
    let connections: std::collections::BTreeSet<u64> =
        new_sockets().into_iter().flatten().collect();
    assert_eq!(connections.len(), BUSY);
    // Each HUP forks a new pool while the old children stay busy (and looked at).
    let mut leaked = Vec::new();
    for _ in 0..12 {
        d.signal(1);
        std::thread::sleep(Duration::from_millis(250));
        for c in d.children().into_iter().filter(|c| !old.contains(c)) {
            let held: Vec<u64> = socket_inodes(c)
                .intersection(&connections)
                .copied()
                .collect();
            if !held.is_empty() {
                leaked.push((c, held));
            }
        }
    }
    assert!(
        leaked.is_empty(),
        "new children hold busy children's connections: {leaked:?}"
    );
    drop(clients);
}
