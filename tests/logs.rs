//! The logs under faults, with the demo as a real process: a closed stderr, a log
//! that cannot be written (`/dev/full`), JSON records written when they are logged,
//! the daemon's stdout/stderr following a rotation.
// Real processes need real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;
use support::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills a process group when dropped (the test's clean-up on any outcome).
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        send_signal(-self.0, 9);
    }
}

fn answers(addr: SocketAddr) -> bool {
    wait_for(
        Duration::from_secs(10),
        || matches!(get(addr, "/"), Ok((200, ref b)) if b == "hello\n"),
    )
}

#[test]
fn a_closed_stderr_neither_kills_the_parent_nor_stops_serving() {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut demo = Command::new(demo_binary())
        .args(["--listen", &addr.to_string(), "--prefork", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    // The read end closed: every write to the daemon's stderr (its only log) fails
    // with EPIPE, in the parent and in every child.
    drop(demo.stderr.take());
    let pid = demo.id() as i32;
    let _group = Group(pid);
    assert!(answers(addr), "the demo never answered");
    // A scale-up makes the parent log (its start-up already did), a new child starts.
    send_signal(pid, 21); // TTIN
    for _ in 0..30 {
        assert_eq!(get(addr, "/").unwrap(), (200, "hello\n".to_string()));
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(500));
    assert!(
        demo.try_wait().unwrap().is_none(),
        "the parent exited: {:?}",
        demo.try_wait()
    );
    assert!(children_of(pid).len() >= 2, "{:?}", children_of(pid));
    assert_eq!(get(addr, "/").unwrap().0, 200);
    send_signal(pid, 15);
    let status = demo.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "a clean stop despite the closed stderr"
    );
}

#[test]
fn logs_that_cannot_be_written_are_reported_once_per_process_and_serving_goes_on() {
    // /dev/full fails every write with ENOSPC: a disk that is always full.
    let mut d = Demo::start(&[
        "--prefork",
        "2",
        "--max-children",
        "4",
        "--error-log",
        "/dev/full",
        "--access-log",
        "/dev/full",
    ]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 2));
    for k in 0..40 {
        assert_eq!(get(d.addr, &format!("/?id={k}")).unwrap().0, 200);
        match k {
            10 => d.signal(10), // USR1: the parent logs the reopens
            20 => d.signal(21), // TTIN: the parent logs it, a new child starts
            _ => {}
        }
    }
    thread::sleep(Duration::from_millis(500));
    assert!(d.wait_exit(Duration::ZERO).is_none(), "the parent exited");
    assert!(d.children().len() >= 2, "{:?}", d.children());
    let log = d.log();
    // Said once per process (`preforkd[PID]: error log ...`), not once per line.
    let pids: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("error log /dev/full"))
        .map(|l| l.split(['[', ']']).nth(1).unwrap_or_else(|| panic!("{l}")))
        .collect();
    let distinct: std::collections::BTreeSet<_> = pids.iter().collect();
    assert!(!pids.is_empty() && distinct.len() == pids.len(), "{log}");
    assert!(distinct.contains(&d.pid().to_string().as_str()), "{log}");
    assert!(log.contains("No space left on device"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn json_records_are_in_the_file_as_soon_as_they_are_logged() {
    let dir = tempdir("json");
    let errors = dir.join("error.log");
    let d = Demo::start(&[
        "--prefork",
        "1",
        "--json-log",
        "--error-log",
        errors.to_str().unwrap(),
    ]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 1));
    let (status, body) = get(d.addr, "/say").unwrap();
    assert_eq!(status, 200);
    let says = format!("child {} says hello", body.trim());
    let records = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&errors)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    };
    let has = |recs: &[serde_json::Value]| recs.iter().any(|r| r["msg"] == says.as_str());
    assert!(
        wait_for(Duration::from_secs(5), || has(&records())),
        "the child's record is not in the file while the daemon runs: {:?}",
        std::fs::read_to_string(&errors)
    );
    // A SIGKILL to everything: what was logged is already in the file.
    let pid = d.pid();
    drop(d);
    assert!(!alive(pid));
    let recs = records();
    assert!(has(&recs), "{recs:?}");
    assert!(recs
        .iter()
        .all(|r| r["msg"].is_string() && r["level"].is_string()));
}

/// Stops the daemon whose pid is `pid` (TERM, then KILL), and its children.
struct Daemon(i32);

impl Drop for Daemon {
    fn drop(&mut self) {
        let kids = children_of(self.0);
        send_signal(self.0, 15);
        if !wait_for(Duration::from_secs(10), || !alive(self.0)) {
            send_signal(self.0, 9);
        }
        for k in kids {
            send_signal(k, 9);
        }
    }
}

#[test]
fn after_usr1_the_daemons_stderr_goes_to_the_new_error_log() {
    let dir = tempdir("stdio");
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let listen = format!("127.0.0.1:{}", free_port());
    let addr: SocketAddr = listen.parse().unwrap();
    let out = Command::new(demo_binary())
        .args(["--daemonize", "--listen", &listen, "--prefork", "1"])
        .args(["--pid-file", &p("demo.pid")])
        .args(["--error-log", &p("error.log")])
        .args(["--access-log", &p("access.log")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let pid: i32 = std::fs::read_to_string(p("demo.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _daemon = Daemon(pid);
    assert!(answers(addr));
    std::fs::rename(p("error.log"), p("error.log.1")).unwrap();
    send_signal(pid, 10); // USR1
    let new_log = || std::fs::read_to_string(p("error.log")).unwrap_or_default();
    assert!(wait_for(Duration::from_secs(5), || new_log().contains("reopened")));
    // A child's stderr: /say writes a line there (its USR1 may still be in flight
    // for the first request: ask again until it lands or the time is up).
    let mut said = String::new();
    let child_ok = wait_for(Duration::from_secs(5), || {
        let (_, body) = get(addr, "/say").unwrap();
        said = format!("child {} says hello on stderr", body.trim());
        new_log().contains(&said)
    });
    // The parent's stderr: the demo's on_client_disconnect hook writes there.
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /sleep?ms=2000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    thread::sleep(Duration::from_millis(300));
    drop(s);
    let parent_ok = wait_for(Duration::from_secs(5), || {
        new_log().contains("hung up on child")
    });
    let old = std::fs::read_to_string(p("error.log.1")).unwrap();
    assert!(
        child_ok,
        "a child's stderr is not in the new error log:\nnew:\n{}\nold:\n{old}",
        new_log()
    );
    assert!(
        parent_ok,
        "the parent's stderr is not in the new error log:\nnew:\n{}\nold:\n{old}",
        new_log()
    );
    assert!(!old.contains("hung up on child"), "{old}");
}

#[test]
fn each_child_holds_its_own_log_channel_and_no_siblings() {
    let dir = tempdir("channels");
    let d = Demo::start(&[
        "--prefork",
        "3",
        "--access-log",
        dir.join("access.log").to_str().unwrap(),
        "--error-log",
        dir.join("error.log").to_str().unwrap(),
    ]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 3));
    let sockets = |pid: i32| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|l| l.to_string_lossy().into_owned())
            .filter(|l| l.starts_with("socket:"))
            .collect()
    };
    // The listener and the child's end of its log channel: the parent's ends of
    // its siblings' channels (copied by each fork) are closed once it has started.
    let clean = wait_for(Duration::from_secs(5), || {
        d.children().into_iter().all(|c| sockets(c).len() == 2)
    });
    let seen: Vec<_> = d.children().into_iter().map(|c| (c, sockets(c))).collect();
    assert!(clean, "{seen:?}");
}
