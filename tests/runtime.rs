//! The runtime with real processes: the demo server is started, loaded, signalled
//! and killed; children are checked in /proc and in the scoreboard file.
// Real processes need real time: bounded waits and sleeps are the point here.
#![allow(clippy::disallowed_methods)]

mod support;

use preforkd::runtime::read_scoreboard_file;
use preforkd::SlotState;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

/// No child of the demo is a zombie, now.
fn assert_no_zombies(d: &Demo) {
    for pid in d.children() {
        assert_ne!(proc_state(pid), Some('Z'), "child {pid} is a zombie");
    }
}

#[test]
fn pool_starts_at_prefork_and_the_scoreboard_matches_ps() {
    let dir = tempdir("runtime");
    let sb = dir.join("scoreboard");
    let d = Demo::start(&[
        "--prefork",
        "3",
        "--max-children",
        "10",
        "--scoreboard",
        sb.to_str().unwrap(),
    ]);
    assert!(
        wait_for(Duration::from_secs(5), || d.children().len() == 3),
        "children: {:?}",
        d.children()
    );
    let ok = wait_for(Duration::from_secs(5), || {
        let slots = read_scoreboard_file(&sb).expect("readable scoreboard");
        let live: BTreeSet<i32> = slots.iter().filter(|s| s.pid != 0).map(|s| s.pid).collect();
        let ps: BTreeSet<i32> = d.children().into_iter().collect();
        live == ps && slots.iter().filter(|s| s.state == SlotState::Idle).count() == 3
    });
    assert!(
        ok,
        "scoreboard {:?} vs children {:?}",
        read_scoreboard_file(&sb),
        d.children()
    );
    let meta = std::fs::metadata(&sb).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(get(d.addr, "/").unwrap(), (200, "hello\n".to_string()));
    assert_no_zombies(&d);
}

#[test]
fn grows_under_load_never_above_max_children_then_shrinks_back() {
    let d = Demo::start(&["--prefork", "2", "--max-children", "6"]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 2));
    let addr = d.addr;
    let clients: Vec<_> = (0..12)
        .map(|_| thread::spawn(move || get(addr, "/sleep?ms=1500").map(|r| r.0)))
        .collect();
    let mut peak = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2500) {
        let n = d.children().len();
        assert!(n <= 6, "{n} children, above max_children 6");
        peak = peak.max(n);
        assert_no_zombies(&d);
        thread::sleep(Duration::from_millis(25));
    }
    for c in clients {
        assert_eq!(c.join().unwrap().unwrap(), 200);
    }
    assert_eq!(peak, 6, "the pool grew to its cap under load");
    // Idle again: retired one per second down to prefork.
    assert!(
        wait_for(Duration::from_secs(20), || d.children().len() == 2),
        "still {} children; log:\n{}",
        d.children().len(),
        d.log()
    );
    assert_no_zombies(&d);
}

#[test]
fn a_sigkilled_child_is_replaced() {
    let d = Demo::start(&["--prefork", "3", "--max-children", "10"]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 3));
    let victim = d.children()[0];
    send_signal(victim, SIGKILL);
    assert!(
        wait_for(Duration::from_secs(5), || {
            let c = d.children();
            c.len() == 3 && !c.contains(&victim)
        }),
        "children {:?}",
        d.children()
    );
    assert!(!alive(victim));
    assert!(d.log().contains(&format!("child {victim}")), "{}", d.log());
    assert!(d.log().contains("signal 9"), "{}", d.log());
    assert_eq!(get(d.addr, "/").unwrap().0, 200);
}

#[test]
fn graceful_term_lets_the_request_in_flight_finish() {
    let mut d = Demo::start(&["--prefork", "2", "--max-children", "4"]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 2));
    let addr = d.addr;
    let inflight = thread::spawn(move || get(addr, "/sleep?ms=1200"));
    thread::sleep(Duration::from_millis(300));
    let children = d.children();
    d.signal(SIGTERM);
    let r = inflight
        .join()
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(r.0, 200);
    assert_eq!(
        d.wait_exit(Duration::from_secs(10)),
        Some(0),
        "log:\n{}",
        d.log()
    );
    for pid in children {
        assert!(!alive(pid), "child {pid} outlived the parent");
    }
}

#[test]
fn connections_waiting_in_the_backlog_are_served_on_graceful_stop() {
    let mut d = Demo::start(&["--prefork", "1", "--max-children", "1"]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 1));
    let addr = d.addr;
    // One request holds the only child; three more wait in the listen backlog.
    let first = thread::spawn(move || get(addr, "/sleep?ms=800"));
    thread::sleep(Duration::from_millis(200));
    let queued: Vec<_> = (0..3)
        .map(|_| thread::spawn(move || get(addr, "/")))
        .collect();
    thread::sleep(Duration::from_millis(200));
    d.signal(SIGTERM);
    assert_eq!(first.join().unwrap().unwrap().0, 200);
    for q in queued {
        assert_eq!(
            q.join()
                .unwrap()
                .expect("queued connection answered, not reset")
                .0,
            200
        );
    }
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn prefork_zero_serves_in_the_parent_and_stops_gracefully() {
    let mut d = Demo::start(&["--prefork", "0"]);
    let (status, body) = get(d.addr, "/pid").unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body.trim(),
        d.pid().to_string(),
        "served by the parent itself"
    );
    assert!(d.children().is_empty());
    let addr = d.addr;
    let inflight = thread::spawn(move || get(addr, "/sleep?ms=600"));
    thread::sleep(Duration::from_millis(200));
    d.signal(SIGTERM);
    assert_eq!(inflight.join().unwrap().unwrap().0, 200);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn when_the_parent_is_sigkilled_every_child_exits_and_the_port_is_released() {
    let mut d = Demo::start(&["--prefork", "4", "--max-children", "8"]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 4));
    let children = d.children();
    let addr = d.addr;
    // One of them is busy at that moment.
    let busy = thread::spawn(move || get(addr, "/sleep?ms=3000"));
    thread::sleep(Duration::from_millis(200));
    send_signal(d.pid(), SIGKILL);
    let _ = d.child.wait();
    let killed_at = Instant::now();
    assert!(
        wait_for(Duration::from_secs(1), || children
            .iter()
            .all(|&p| !alive(p))),
        "children left after 1 s: {:?}",
        children.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
    );
    assert!(killed_at.elapsed() <= Duration::from_millis(1100));
    assert!(
        busy.join().unwrap().is_err(),
        "the orphaned request cannot complete"
    );
    assert!(TcpListener::bind(addr).is_ok(), "port {addr} still held");
}

#[test]
fn keep_alive_and_connection_close_are_honoured() {
    let d = Demo::start(&["--prefork", "1", "--max-children", "2"]);
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Two requests on one connection, the second closes it.
    write!(s, "GET / HTTP/1.1\r\nHost: t\r\n\r\nGET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 2, "{all}");
    assert!(all.contains("connection: keep-alive"), "{all}");
    assert!(all.contains("connection: close"), "{all}");
    // The second answer is /pid: one of the demo's children served both.
    let pid: i32 = all
        .trim_end()
        .rsplit('\n')
        .next()
        .unwrap()
        .parse()
        .expect("a pid");
    assert!(
        d.children().contains(&pid),
        "{pid} not among {:?}",
        d.children()
    );
}

#[test]
fn hup_rolls_every_child_over_without_losing_a_request() {
    let d = Demo::start(&["--prefork", "3", "--max-children", "12"]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 3));
    let before: BTreeSet<i32> = d.children().into_iter().collect();
    let addr = d.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            thread::spawn(move || {
                let (mut ok, mut failed) = (0, vec![]);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match get(addr, "/sleep?ms=20") {
                        Ok((200, _)) => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    for _ in 0..4 {
        thread::sleep(Duration::from_millis(500));
        d.signal(1); // HUP
    }
    thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut served = 0;
    for c in clients {
        let (ok, failed) = c.join().unwrap();
        assert!(
            failed.is_empty(),
            "requests lost during reloads: {failed:?}"
        );
        served += ok;
    }
    assert!(served > 50, "only {served} requests served");
    // Every child of the first generation has been replaced.
    assert!(
        wait_for(Duration::from_secs(10), || {
            let now: BTreeSet<i32> = d.children().into_iter().collect();
            !now.is_empty() && now.is_disjoint(&before)
        }),
        "old children remain: before {before:?}, now {:?}\n{}",
        d.children(),
        d.log()
    );
    assert!(
        d.log().contains("reload to generation 5 complete"),
        "{}",
        d.log()
    );
    assert_no_zombies(&d);
}

#[test]
fn a_client_hanging_up_on_a_busy_child_reaches_on_client_disconnect_once() {
    hang_up_reported_once("pidfd", "Pidfd");
}

#[test]
fn a_hang_up_is_found_in_the_hosts_tables_where_pidfd_is_not_used() {
    hang_up_reported_once("proc", "Proc");
}

#[test]
fn a_hang_up_is_found_with_a_sock_diag_dump_where_pidfd_is_not_used() {
    hang_up_reported_once("diag", "Diag");
}

/// A client hangs up on a busy child; the demo looks with `probe`
/// (`PREFORKD_DISCONNECT_PROBE`), and says so (`said`).
fn hang_up_reported_once(probe: &str, said: &str) {
    let d = Demo::start_with_env(
        &["--prefork", "2", "--max-children", "4"],
        &[("PREFORKD_DISCONNECT_PROBE", probe)],
    );
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 2));
    let mut s = TcpStream::connect(d.addr).unwrap();
    write!(
        s,
        "GET /sleep?ms=4000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let local = s.local_addr().unwrap();
    thread::sleep(Duration::from_millis(300));
    // The client gives up: its side closes while the child still sleeps.
    drop(s);
    let needle = format!("client {}:{} hung up on child", local.ip(), local.port());
    assert!(
        wait_for(Duration::from_secs(4), || d.log().contains(&needle)),
        "no disconnect reported; log:\n{}",
        d.log()
    );
    assert!(
        d.log()
            .contains(&format!("looked for with the {said} probe")),
        "{}",
        d.log()
    );
    // And that probe did the looking (no fallback took over).
    assert!(!d.log().contains("refused here"), "{}", d.log());
    // It lingers until the child finishes, yet is reported once.
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(d.log().matches(&needle).count(), 1, "{}", d.log());
}

#[test]
fn usr1_reopens_the_logs_and_every_request_is_logged_exactly_once() {
    let dir = tempdir("runtime");
    let access = dir.join("access.log");
    let errors = dir.join("error.log");
    let d = Demo::start(&[
        "--prefork",
        "2",
        "--max-children",
        "4",
        "--access-log",
        access.to_str().unwrap(),
        "--error-log",
        errors.to_str().unwrap(),
    ]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 2));
    let addr = d.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = id_load(addr, 4, &stop);
    // Rotate five times under load, as logrotate's postrotate would.
    for i in 1..=5 {
        thread::sleep(Duration::from_millis(150));
        std::fs::rename(&access, dir.join(format!("access.log.{i}"))).unwrap();
        std::fs::rename(&errors, dir.join(format!("error.log.{i}"))).unwrap();
        d.signal(10); // USR1
    }
    thread::sleep(Duration::from_millis(150));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    // The parent reopens both logs at once, creating the new files.
    assert!(wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&errors).is_ok_and(|t| t.contains("reopened"))
    }));
    let (files, seen) = logged_ids(&dir);
    assert_eq!(files, 6, "five rotated files and the current one");
    assert!(sent > 100, "only {sent} requests during the rotations");
    assert_eq!(seen.len(), sent, "every request logged");
    assert!(
        seen.values().all(|&n| n == 1),
        "a request logged twice: {seen:?}"
    );
}

#[test]
fn a_second_instance_on_the_same_pid_file_refuses_to_start() {
    let dir = tempdir("runtime");
    let pid_file = dir.join("demo.pid");
    let p = pid_file.to_str().unwrap();
    let mut first = Demo::start(&["--prefork", "1", "--pid-file", p]);
    let written = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(written.trim(), first.pid().to_string());
    let out = std::process::Command::new(demo_binary())
        .args(["--listen", "127.0.0.1:0", "--prefork", "1", "--pid-file", p])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("already running (pid {})", first.pid())),
        "{err}"
    );
    // The refused start left the pid file alone; a clean stop removes it.
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), written);
    first.signal(SIGTERM);
    assert_eq!(first.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(!pid_file.exists(), "pid file left behind");
}

#[test]
fn the_service_manager_hears_ready_status_and_stopping_in_order() {
    let dir = tempdir("runtime");
    let sock_path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut d = Demo::start_with_env(
        &["--prefork", "2", "--max-children", "4"],
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let mut got: Vec<String> = Vec::new();
    let mut buf = [0u8; 512];
    let mut stopped = false;
    while let Ok(n) = sock.recv(&mut buf) {
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        let ready_seen = got.iter().any(|m| m.starts_with("READY=1"));
        // Once READY=1 and a STATUS after it have arrived, stop the daemon.
        if ready_seen && msg.starts_with("STATUS=") && !stopped {
            stopped = true;
            d.signal(SIGTERM);
        }
        let done = msg.starts_with("STOPPING=1");
        got.push(msg);
        if done {
            break;
        }
    }
    let ready = got.iter().position(|m| m.starts_with("READY=1"));
    let status = ready.and_then(|r| {
        got.iter()
            .skip(r)
            .position(|m| m.starts_with("STATUS=busy 0, idle 2"))
            .map(|i| i + r)
    });
    let stopping = got.iter().position(|m| m.starts_with("STOPPING=1"));
    assert!(
        ready.is_some() && status.is_some() && stopping.is_some(),
        "{got:?}"
    );
    assert!(ready < status && status < stopping, "{got:?}");
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn require_root_refuses_a_non_root_start_with_a_clear_message() {
    if !nix::unistd::geteuid().is_root() {
        // Not root already: the demo itself must refuse.
        let out = std::process::Command::new(demo_binary())
            .args(["--listen", "127.0.0.1:0", "--require-root"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78));
        assert!(String::from_utf8_lossy(&out.stderr).contains("require_root"));
        return;
    }
    // As root: run the demo as nobody (setuid in the child before exec).
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(demo_binary())
        .args(["--listen", "127.0.0.1:0", "--require-root"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("require_root is set but this process runs as uid 65534, not root"),
        "{err}"
    );
}

/// The uid (real) in /proc/PID/status.
fn uid_of(pid: i32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn children_run_as_the_configured_user() {
    if !nix::unistd::geteuid().is_root() {
        // Only root can switch: anyone else gets a clear refusal.
        let out = std::process::Command::new(demo_binary())
            .args(["--listen", "127.0.0.1:0", "--user", "nobody"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78));
        assert!(String::from_utf8_lossy(&out.stderr).contains("only root can switch"));
        return;
    }
    let d = Demo::start(&["--prefork", "2", "--user", "nobody"]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 2));
    assert_eq!(get(d.addr, "/").unwrap().0, 200);
    assert_eq!(uid_of(d.pid()), Some(0), "the parent keeps root");
    // A child seen just after its fork may not have switched yet: give it a moment.
    assert!(
        wait_for(Duration::from_secs(5), || d
            .children()
            .iter()
            .all(|&c| uid_of(c) == Some(65534))),
        "children run as nobody: {:?}",
        d.children()
            .iter()
            .map(|&c| (c, uid_of(c)))
            .collect::<Vec<_>>()
    );
    let unknown = std::process::Command::new(demo_binary())
        .args(["--listen", "127.0.0.1:0", "--user", "no-such-user-here"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr)
        .contains("user \"no-such-user-here\" does not exist"));
}
