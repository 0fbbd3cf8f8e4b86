//! Faults the runtime must survive, with real processes: stops under steady load,
//! signals at odd moments, hostile clients. Each test here reproduced a defect
//! before its fix (issue 7).
// Real processes need real time: bounded waits and sleeps are the point here.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const SIGHUP: i32 = 1;
const SIGUSR1: i32 = 10;
const SIGTERM: i32 = 15;

/// Counts of a load run: answered with 200, and failures (refused, reset, empty)
/// split by whether they came before the stop signal was sent.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed_before_stop: AtomicUsize,
}

/// Clients sending `path` as fast as they can until `stop`: each request a new
/// connection (`keep_alive` false) or many requests on one kept-alive connection.
/// A request fails when its connection is refused or reset or the reply is not a
/// 200; failures after `stopped` is set are expected (the listener is closing).
fn steady_load(
    addr: std::net::SocketAddr,
    threads: usize,
    path: &'static str,
    keep_alive: bool,
    stop: &Arc<AtomicBool>,
    stopped: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<thread::JoinHandle<()>> {
    (0..threads)
        .map(|_| {
            let (stop, stopped, tally) = (stop.clone(), stopped.clone(), tally.clone());
            thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    let was_stopped = stopped.load(Ordering::SeqCst);
                    let r = if keep_alive {
                        keep_alive_session(addr, path, 20, &tally.ok)
                    } else {
                        get(addr, path).map(|(s, _)| {
                            tally.ok.fetch_add(usize::from(s == 200), Ordering::Relaxed);
                            usize::from(s == 200)
                        })
                    };
                    match r {
                        Ok(n) if n > 0 => {}
                        _ if was_stopped => thread::sleep(Duration::from_millis(5)),
                        _ => {
                            tally.failed_before_stop.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect()
}

/// Up to `n` requests on one kept-alive connection; how many were answered 200
/// before the server closed it (it says `connection: close` when it stops). A
/// connection closed without that notice, or an error, after answers already
/// given is an error too: the client would see a request fail.
fn keep_alive_session(
    addr: std::net::SocketAddr,
    path: &str,
    n: usize,
    answers: &AtomicUsize,
) -> std::io::Result<usize> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut reader = BufReader::new(s.try_clone()?);
    let mut out = s;
    let mut answered = 0;
    for _ in 0..n {
        write!(out, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")?;
        let mut status = String::new();
        if reader.read_line(&mut status)? == 0 {
            return Err(std::io::Error::other(format!(
                "closed without notice after {answered} answers"
            )));
        }
        let mut length = 0;
        let mut close = false;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            close |= h == "connection: close";
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        if status.split_whitespace().nth(1) != Some("200") {
            break;
        }
        answered += 1;
        answers.fetch_add(1, Ordering::Relaxed);
        if close {
            break;
        }
    }
    Ok(answered)
}

/// TERM under steady load: the stop completes in about one request time, without
/// the graceful timeout's KILL, and every request sent before the TERM is answered.
fn stop_under_load(keep_alive: bool, clients: usize, graceful_timeout: &str) {
    let mut d = Demo::start(&[
        "--prefork",
        "2",
        "--max-children",
        "2",
        "--graceful-timeout",
        graceful_timeout,
    ]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 2));
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = steady_load(
        d.addr,
        clients,
        "/sleep?ms=50",
        keep_alive,
        &stop,
        &stopped,
        &tally,
    );
    thread::sleep(Duration::from_millis(800));
    let served_before = tally.ok.load(Ordering::Relaxed);
    stopped.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    d.signal(SIGTERM);
    // A drain that never ends would last until the graceful timeout's KILL.
    let code = d.wait_exit(Duration::from_secs(10));
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let log = d.log();
    assert_eq!(code, Some(0), "no clean stop within 10 s\nlog:\n{log}");
    assert!(!log.contains("KILL"), "children were KILLed:\n{log}");
    assert!(served_before > 10, "the load ran: {served_before} answers");
    assert_eq!(
        tally.failed_before_stop.load(Ordering::Relaxed),
        0,
        "requests sent before TERM failed\nlog:\n{log}"
    );
    eprintln!("stop under load (keep-alive {keep_alive}) took {took:?}");
}

#[test]
fn term_under_steady_load_stops_without_kill() {
    stop_under_load(false, 6, "30s");
}

/// 100 clients for 2 children keep ~98 connections queued: the pool serves those
/// (49 each, ~2.5 s of 50 ms requests), not 98 each (~5 s) as when every child
/// counted the whole queue as its own share.
#[test]
fn term_with_a_deep_queue_serves_the_queue_once_then_stops() {
    stop_under_load(false, 100, "4s");
}

#[test]
fn term_under_steady_keep_alive_load_stops_without_kill() {
    stop_under_load(true, 6, "30s");
}

/// TERM while a request outlasts a 1 s graceful timeout: the stop completes at the
/// timeout anyway, the request cut off (its child KILLed; with `prefork = 0`, the
/// process ends), with a warning saying why. A requested stop that completed is a
/// successful stop: exit 0 in both modes (`prefork = 0` exited 1, children 0).
fn stop_past_the_graceful_timeout(prefork: &str, warning: &str) {
    let mut d = Demo::start(&["--prefork", prefork, "--graceful-timeout", "1s"]);
    if prefork != "0" {
        assert!(wait_for(Duration::from_secs(5), || !d
            .children()
            .is_empty()));
    }
    let addr = d.addr;
    let held = thread::spawn(move || get(addr, "/sleep?ms=20000"));
    // Taken or still queued, the request holds the stop: a stopping child (or the
    // in-process loop) drains the backlog before leaving.
    thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    d.signal(SIGTERM);
    let code = d.wait_exit(Duration::from_secs(8));
    let took = t0.elapsed();
    let log = d.log();
    assert!(
        code.is_some(),
        "still running 8 s after TERM with a 1 s graceful timeout\nlog:\n{log}"
    );
    assert_eq!(
        code,
        Some(0),
        "a stop completed at the graceful timeout is a successful stop\nlog:\n{log}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "stopped after {took:?}, before the graceful timeout\nlog:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(warning) && l.contains("WARN")),
        "a warning says why ({warning:?}):\n{log}"
    );
    assert!(
        held.join().unwrap().is_err(),
        "the held request was cut off"
    );
}

#[test]
fn prefork_zero_stop_past_the_graceful_timeout_exits_0() {
    stop_past_the_graceful_timeout("0", "graceful_timeout");
}

#[test]
fn prefork_stop_past_the_graceful_timeout_kills_and_exits_0() {
    stop_past_the_graceful_timeout("1", "graceful shutdown timed out; KILLing 1 children");
}

/// USR1 right after HUP reaches children that were just forked: with the signals
/// unblocked before their handlers existed, it killed them (counted as crashes).
#[test]
fn usr1_right_after_hup_kills_no_starting_child() {
    let d = Demo::start(&["--prefork", "4", "--max-children", "8"]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 4));
    // Two seconds of USR1 as fast as it can be sent, with a HUP (a new generation
    // of children) every 20 ms: many USR1s reach children in their first moments.
    let until = Instant::now() + Duration::from_secs(2);
    let mut last_hup = Instant::now() - Duration::from_secs(1);
    while Instant::now() < until {
        if last_hup.elapsed() >= Duration::from_millis(20) {
            d.signal(SIGHUP);
            last_hup = Instant::now();
        }
        d.signal(SIGUSR1);
        thread::sleep(Duration::from_micros(50));
    }
    assert!(wait_for(Duration::from_secs(10), || {
        d.children().len() == 4 && get(d.addr, "/").is_ok()
    }));
    let log = d.log();
    assert!(
        !log.contains("exited early"),
        "children died of a signal sent during their start:\n{log}"
    );
    assert!(!log.contains("signal 10"), "{log}");
}

/// Sends `request` and reads what comes back within 5 s (the reply, or what
/// arrived before the server closed or the time ran out).
fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server may answer and close before it has read all of it.
    let _ = s.write_all(request);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn the_demo_caps_what_a_client_can_make_a_child_hold() {
    let d = Demo::start(&["--prefork", "1", "--max-children", "1"]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 1));
    let child = d.children()[0];
    // A request line that never ends.
    let long_line = vec![b'A'; 4 << 20];
    let reply = raw_exchange(d.addr, &long_line);
    assert!(reply.starts_with("HTTP/1.1 414 "), "{reply:?}");
    // Header fields without end.
    let mut headers = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..2000 {
        headers.extend_from_slice(format!("x-filler-{i}: {}\r\n", "v".repeat(100)).as_bytes());
    }
    let reply = raw_exchange(d.addr, &headers);
    assert!(reply.starts_with("HTTP/1.1 431 "), "{reply:?}");
    // A body too large to be worth reading, and a length that is no number.
    let reply = raw_exchange(
        d.addr,
        b"POST / HTTP/1.1\r\ncontent-length: 1000000000000\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 413 "), "{reply:?}");
    let reply = raw_exchange(d.addr, b"POST / HTTP/1.1\r\ncontent-length: x\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply:?}");
    // The same child goes on serving.
    assert_eq!(get(d.addr, "/pid").unwrap().1.trim(), child.to_string());
}

#[test]
fn the_demo_busy_timeout_stops_a_request_that_holds_a_child() {
    let d = Demo::start(&[
        "--prefork",
        "1",
        "--max-children",
        "2",
        "--busy-timeout",
        "500ms",
    ]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 1));
    let t0 = Instant::now();
    let r = get(d.addr, "/sleep?ms=60000");
    // busy_refresh (1 s) notices it, then TERM and KILL after kill_grace (5 s).
    assert!(r.is_err(), "the held request was cut off: {r:?}");
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert!(
        wait_for(Duration::from_secs(5), || d.log().contains("busy timeout")),
        "log:\n{}",
        d.log()
    );
    assert!(wait_for(Duration::from_secs(5), || get(d.addr, "/").is_ok()));
}

/// A client that sent its request and shut down its write side still reads the
/// answer: it has not hung up, and a cancel-on-disconnect policy must not kill
/// its job. (The client that really closes is reported: tests/runtime.rs.)
#[test]
fn a_half_closed_client_is_not_reported_as_hung_up() {
    for probe in ["pidfd", "diag", "proc"] {
        half_closed_client_not_reported(probe);
    }
}

fn half_closed_client_not_reported(probe: &str) {
    let d = Demo::start_with_env(
        &["--prefork", "1", "--max-children", "2"],
        &[("PREFORKD_DISCONNECT_PROBE", probe)],
    );
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 1));
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /sleep?ms=2500 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply:?}");
    assert!(reply.ends_with("slept 2500 ms\n"), "{reply:?}");
    assert!(
        !d.log().contains("hung up on child"),
        "{probe}: a half-closed client was reported:\n{}",
        d.log()
    );
}

/// A child retired by a reload used to take the wake-up meant for a new
/// connection (the listener is watched with EPOLLEXCLUSIVE: one waiter is woken)
/// and leave without accepting it: the client hung until another connection came.
#[test]
fn a_reload_never_leaves_a_connection_unanswered() {
    let d = Demo::start(&["--prefork", "2", "--max-children", "4"]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 2));
    let mut hangs = Vec::new();
    for round in 0..40 {
        for k in 0..8 {
            if k == 2 {
                d.signal(SIGHUP);
            }
            let mut s = TcpStream::connect_timeout(&d.addr, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut reply = String::new();
            if s.read_to_string(&mut reply).is_err() || !reply.starts_with("HTTP/1.1 200") {
                hangs.push((round, k));
            }
        }
    }
    assert!(hangs.is_empty(), "unanswered (round, request): {hangs:?}");
}

/// The busy timeout limits one request: a kept-alive client sending quick
/// requests for longer than the timeout is never cut off.
#[test]
fn the_busy_timeout_counts_requests_not_kept_alive_connections() {
    let d = Demo::start(&[
        "--prefork",
        "1",
        "--max-children",
        "2",
        "--busy-timeout",
        "1s",
    ]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 1));
    let s = TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut out = s;
    for i in 0..8 {
        write!(out, "GET /pid HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut head = String::new();
        loop {
            let mut l = String::new();
            reader.read_line(&mut l).unwrap();
            if l == "\r\n" || l.is_empty() {
                break;
            }
            head.push_str(&l);
        }
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head:?}");
        assert!(
            head.contains("connection: keep-alive"),
            "request {i} closed the connection: {head:?}\nlog:\n{}",
            d.log()
        );
        let mut body = String::new();
        reader.read_line(&mut body).unwrap();
        thread::sleep(Duration::from_millis(300));
    }
    assert!(!d.log().contains("busy timeout"), "{}", d.log());
}

/// A client that sends its request a byte at a time cannot hold a child past
/// the request timeout, nor turn a graceful stop into the graceful timeout's KILL.
#[test]
fn a_dribbling_client_cannot_hold_a_graceful_stop() {
    let mut d = Demo::start(&[
        "--prefork",
        "1",
        "--max-children",
        "1",
        "--request-timeout",
        "2s",
        "--graceful-timeout",
        "20s",
    ]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 1));
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let dribble = thread::spawn(move || {
        for _ in 0..30 {
            if s.write_all(b"x").is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(500));
        }
    });
    thread::sleep(Duration::from_millis(300));
    d.signal(SIGTERM);
    let code = d.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "log:\n{}", d.log());
    assert!(!d.log().contains("KILL"), "{}", d.log());
    dribble.join().unwrap();
}

/// A FIFO nobody reads at a log path is refused at once with its name; it never
/// hangs the start.
#[test]
fn a_fifo_at_a_log_path_is_refused_without_blocking() {
    let dir = tempdir("faults");
    let fifo = dir.join("error.log");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut child = std::process::Command::new(demo_binary())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--error-log",
            fifo.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_for(Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the start blocked on a FIFO log path");
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error.log"), "{err}");
}

/// An absurd pool size is a configuration error naming the option, never an
/// abort while allocating slots for it.
#[test]
fn an_absurd_max_children_is_refused_not_an_abort() {
    let out = std::process::Command::new(demo_binary())
        .args(["--listen", "127.0.0.1:0", "--max-children", "4000000000"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("max_children"), "{err}");
}
