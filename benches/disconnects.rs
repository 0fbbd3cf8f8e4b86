//! Client-disconnect detection, printed (no pass/fail: these machines are shared
//! and noisy; compare medians of one run).
//!
//! ```text
//! cargo bench --bench disconnects
//! ```
//!
//! The host gets 10,000 open loopback sockets (5,000 connections held by this
//! bench); the release demo runs 150 children, each busy with a client asking
//! `/sleep`. Printed: the time of one look at the 150 children with the pidfd
//! probe (the default) at the connection each child said in its scoreboard slot,
//! the same probe at every socket of each child's `/proc/PID/fd` (a child that
//! does not say), the `sock_diag` and `/proc/net/tcp*` fallbacks, and one
//! `netstat -anp` run (what the original ran), medians of 15 each, and their
//! ratios against the first; then the
//! detection latency at `--disconnect-every-ms 50`: from a client's close to the
//! demo's "hung up" line, for 40 clients closed one by one (median, p90, max).
// A benchmark measures real time and sleeps on purpose.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{build_demo, Demo};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHILDREN: usize = 150;
const HOST_CONNECTIONS: usize = 5_000;
const SAMPLES: usize = 15;
const CLOSED: usize = 40;

fn main() {
    raise_open_file_limit();
    let bin = build_demo();
    // The host's other sockets: both ends of each connection are on this host.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut held = Vec::with_capacity(2 * HOST_CONNECTIONS);
    for _ in 0..HOST_CONNECTIONS {
        held.push(TcpStream::connect(l.local_addr().unwrap()).unwrap());
        held.push(l.accept().unwrap().0);
    }
    // When each client's hang-up was reported, by its port.
    let reported: Arc<Mutex<BTreeMap<u16, Instant>>> = Arc::default();
    let sink = Arc::clone(&reported);
    let n = CHILDREN.to_string();
    let dir =
        std::env::temp_dir().join(format!("preforkd-bench-disconnects-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let board = dir.join("scoreboard");
    let demo = Demo::start_with_lines(
        &bin,
        &[
            "--prefork",
            &n,
            "--max-children",
            &n,
            "--disconnect-every-ms",
            "50",
            "--scoreboard",
            board.to_str().unwrap(),
        ],
        move |line| {
            // "hello_http: client 127.0.0.1:PORT hung up on child ..."
            let port = line
                .strip_prefix("hello_http: client ")
                .and_then(|r| r.split(' ').next())
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok());
            if let Some(port) = port {
                sink.lock()
                    .unwrap()
                    .entry(port)
                    .or_insert_with(Instant::now);
            }
        },
    );
    let until = Instant::now() + Duration::from_secs(30);
    while children(demo.pid()).len() < CHILDREN && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut clients = Vec::new();
    for _ in 0..CHILDREN {
        let mut s = TcpStream::connect(demo.addr).unwrap();
        write!(
            s,
            "GET /sleep?ms=60000 HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        clients.push(s);
    }
    // Every child busy before timing (each holds its client's connection).
    std::thread::sleep(Duration::from_secs(2));
    let said = busy_slots(&board);
    let listening = [demo.addr];
    let anonymous: Vec<_> = said.iter().map(|&(pid, _)| (pid, None)).collect();
    let look = |children: &[(i32, Option<(i32, SocketAddr)>)], probe: &str| {
        median_ms(|| {
            preforkd::runtime::disconnect_scan(children, &listening, probe)
                .expect("the probe works here");
        })
    };
    let slot = look(&said, "pidfd");
    let fds = look(&anonymous, "pidfd");
    let diag = look(&said, "diag");
    let proc_tables = look(&said, "proc");
    let netstat = std::process::Command::new("netstat")
        .arg("--version")
        .output()
        .is_ok()
        .then(|| {
            median_ms(|| {
                let out = std::process::Command::new("netstat")
                    .arg("-anp")
                    .output()
                    .expect("netstat runs");
                assert!(out.status.success());
            })
        });
    println!(
        "disconnects: one look at {} busy children ({} said their connection in the scoreboard) with {} loopback sockets open on the host, medians of {SAMPLES}",
        said.len(),
        said.iter().filter(|c| c.1.is_some()).count(),
        2 * HOST_CONNECTIONS
    );
    println!("disconnects: pidfd probe, the connection each child said: {slot:.3} ms");
    println!(
        "disconnects: pidfd probe, every socket in /proc/PID/fd: {fds:.3} ms (ratio {:.1}x)",
        fds / slot
    );
    println!(
        "disconnects: sock_diag probe (CLOSE_WAIT dump): {diag:.3} ms (ratio {:.1}x)",
        diag / slot
    );
    println!(
        "disconnects: /proc/net/tcp probe: {proc_tables:.3} ms (ratio {:.1}x)",
        proc_tables / slot
    );
    match netstat {
        Some(n) => println!(
            "disconnects: netstat -anp {n:.2} ms (ratio {:.1}x)",
            n / slot
        ),
        None => {
            println!("disconnects: netstat -anp: not installed (Debian's net-tools), not compared")
        }
    }
    // Detection latency at 50 ms: clients close one by one.
    let mut latencies = Vec::new();
    for s in clients.drain(..).take(CLOSED) {
        let port = s.local_addr().unwrap().port();
        let closed = Instant::now();
        drop(s);
        let until = closed + Duration::from_secs(5);
        let at = loop {
            if let Some(at) = reported.lock().unwrap().get(&port) {
                break Some(*at);
            }
            if Instant::now() > until {
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        match at {
            Some(at) => latencies.push(at.saturating_duration_since(closed).as_secs_f64() * 1e3),
            None => println!("disconnects: client port {port} was not reported within 5 s"),
        }
    }
    latencies.sort_by(f64::total_cmp);
    if let (Some(max), false) = (latencies.last(), latencies.is_empty()) {
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        println!(
            "disconnects: detection at 50 ms intervals, {} clients: median {:.1} ms, p90 {:.1} ms, max {max:.1} ms",
            latencies.len(),
            at(0.5),
            at(0.9)
        );
    }
    drop(held);
    drop(demo);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The busy children in the scoreboard file, each with the connection it said
/// it serves (the layout documented in the crate's scoreboard module: slot `i`
/// at 64 * (i + 1); pid `i32` at 0, state `u8` at 4 (3: busy), the connection
/// word `u64` at 40: descriptor plus one in bits 0-31, port in 32-47, family in
/// 48-51; the client's address at 48).
fn busy_slots(board: &std::path::Path) -> Vec<(i32, Option<(i32, SocketAddr)>)> {
    let bytes = std::fs::read(board).expect("the scoreboard file is readable");
    let i32_at = |o: usize| i32::from_ne_bytes(bytes[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_ne_bytes(bytes[o..o + 8].try_into().unwrap());
    bytes
        .chunks_exact(64)
        .enumerate()
        .skip(1)
        .map(|(i, _)| 64 * i)
        .filter(|&at| bytes[at + 4] == 3)
        .map(|at| {
            let word = u64_at(at + 40);
            let ip: [u8; 16] = bytes[at + 48..at + 64].try_into().unwrap();
            let port = (word >> 32) as u16;
            let peer = match (word >> 48) & 0xf {
                4 => Some(SocketAddr::from(([ip[0], ip[1], ip[2], ip[3]], port))),
                6 => Some(SocketAddr::from((ip, port))),
                _ => None,
            };
            let fd = (word as u32).checked_sub(1).map(|fd| fd as i32);
            (i32_at(at), fd.zip(peer))
        })
        .collect()
}

/// The median wall time of `f` over [`SAMPLES`] runs, in milliseconds.
fn median_ms(mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// 10,000 sockets need more descriptors than the usual soft limit of 1,024.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
