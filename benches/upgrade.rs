//! The in-place upgrade's figures with the demo server, printed (no pass/fail:
//! these machines are shared and noisy; compare medians of one run).
//!
//! ```text
//! cargo bench --bench upgrade
//! BENCH_RUNS=5 cargo bench --bench upgrade
//! ```
//!
//! Each run: the release demo runs from a copy of its binary (4 children), 8
//! client threads ask `/` with a new connection per request; after 2 s the copy is
//! replaced by a rebuilt one (the same program with bytes appended) and USR2 is
//! sent; the run ends 3 s after the new generation serves. Printed: requests/s in
//! the 2 s before, from USR2 until the new generation serves ("during"), and in
//! the 2 s after; failed requests; and the time from USR2 to the new generation
//! serving (every old child gone, the pool back to its size).
// A benchmark measures real time and sleeps on purpose.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{build_demo, Demo};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let bin = build_demo();
    let mut figures = Vec::new();
    for i in 0..runs {
        figures.push(run(&bin, i));
    }
    let median = |f: &dyn Fn(&Figures) -> f64| {
        let mut v: Vec<f64> = figures.iter().map(f).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let list = |f: &dyn Fn(&Figures) -> f64| {
        figures
            .iter()
            .map(|x| format!("{:.0}", f(x)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "upgrade: req/s before {:.0} (runs: {}), during {:.0} (runs: {}), after {:.0} (runs: {})",
        median(&|f| f.before),
        list(&|f| f.before),
        median(&|f| f.during),
        list(&|f| f.during),
        median(&|f| f.after),
        list(&|f| f.after),
    );
    println!(
        "upgrade: USR2 to the new generation serving: median {:.1} ms (runs: {}); failed requests: {}",
        median(&|f| f.switch_ms),
        figures
            .iter()
            .map(|f| format!("{:.1}", f.switch_ms))
            .collect::<Vec<_>>()
            .join(" "),
        figures.iter().map(|f| f.failed).sum::<usize>()
    );
    println!(
        "upgrade: during/before ratio {:.2}",
        median(&|f| f.during / f.before)
    );
}

struct Figures {
    before: f64,
    during: f64,
    after: f64,
    switch_ms: f64,
    failed: usize,
}

fn children(pid: i32) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out
}

fn request(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
}

fn run(bin: &Path, i: usize) -> Figures {
    let dir =
        std::env::temp_dir().join(format!("preforkd-bench-upgrade-{}-{i}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("demo");
    std::fs::copy(bin, &exe).unwrap();
    let demo = Demo::start(&exe, &["--prefork", "4", "--max-children", "32"]);
    let pid = demo.pid();
    while children(pid).len() < 4 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // Completion times, in µs since t0, and failures.
    let done: Arc<Mutex<Vec<u64>>> = Arc::default();
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
            let addr = demo.addr;
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if request(addr) {
                        mine.push(t0.elapsed().as_micros() as u64);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.lock().unwrap().extend(mine);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let old = children(pid);
    let mut bytes = std::fs::read(bin).unwrap();
    bytes.extend_from_slice(format!("bench build {i}").as_bytes());
    let tmp = dir.join("demo.new");
    std::fs::write(&tmp, bytes).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::rename(&tmp, &exe).unwrap();
    let usr2 = t0.elapsed();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR2,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = children(pid);
        if now.len() >= 4 && now.is_disjoint(&old) {
            break;
        }
        assert!(Instant::now() < deadline, "the upgrade did not complete");
        std::thread::sleep(Duration::from_micros(500));
    }
    let served = t0.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let done = done.lock().unwrap();
    let rate = |from: Duration, to: Duration| {
        let (a, b) = (from.as_micros() as u64, to.as_micros() as u64);
        let n = done.iter().filter(|&&t| t >= a && t < b).count();
        n as f64 / (to - from).as_secs_f64().max(1e-6)
    };
    let f = Figures {
        before: rate(Duration::from_millis(0), usr2),
        during: rate(usr2, served.max(usr2 + Duration::from_millis(1))),
        after: rate(
            served + Duration::from_secs(1),
            served + Duration::from_secs(3),
        ),
        switch_ms: (served - usr2).as_secs_f64() * 1000.0,
        failed: failed.load(Ordering::Relaxed),
    };
    drop(demo);
    let _ = std::fs::remove_dir_all(&dir);
    f
}
