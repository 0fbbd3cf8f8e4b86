//! Fault drills with figures, printed (no pass/fail: timings on a shared machine
//! are noisy; the outcome assertions live in `tests/chaos.rs`).
//!
//! ```text
//! cargo bench --bench chaos -- spree        # 30 s, a SIGKILL every 100 ms
//! cargo bench --bench chaos -- soak         # 10 min of mixed faults (a core busy)
//! BENCH_SPREE_SECS=10 BENCH_SOAK_SECS=60 cargo bench --bench chaos -- spree soak
//! ```
//!
//! - **spree**: the demo (4 children) under 4 client threads, a random child
//!   SIGKILLed every 100 ms for `BENCH_SPREE_SECS` (30). Prints the median and 90th
//!   percentile of the time from each kill until the pool is back to 4 live children
//!   (target: median ≤ 50 ms), failed requests against kills (target: failed ≤
//!   kills), and zombies at the end (target: 0).
//! - **soak**: `BENCH_SOAK_SECS` (600) of mixed load (`/` and `/sleep?ms=20`) with a
//!   reload every 10 s, a log rotation every 7 s, TTIN/TTOU every 3 s and a kill
//!   every 2 s. Prints the parent's RSS and descriptors at start and end (target:
//!   flat), failed requests, and zombies at the end (target: 0).
//!
//! Not part of `cargo bench` without a name: the soak takes ten minutes.
// A benchmark measures real time and sleeps on purpose.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{build_demo, Demo};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if args.is_empty() {
        println!("chaos: name a drill: spree, soak (see benches/chaos.rs)");
        return;
    }
    let want = |name: &str| args.iter().any(|a| a == name);
    let bin = build_demo();
    if want("spree") {
        spree(&bin, env_num("BENCH_SPREE_SECS", 30));
    }
    if want("soak") {
        soak(&bin, env_num("BENCH_SOAK_SECS", 600));
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

fn children_of(pid: i32) -> Vec<i32> {
    let mut out = vec![];
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out
}

fn state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

fn live_children(pid: i32) -> Vec<i32> {
    children_of(pid)
        .into_iter()
        .filter(|&c| matches!(state(c), Some(s) if s != 'Z'))
        .collect()
}

fn zombies(pid: i32) -> usize {
    children_of(pid)
        .into_iter()
        .filter(|&c| state(c) == Some('Z'))
        .count()
}

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn get(addr: SocketAddr, path: &str) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf.starts_with("HTTP/1.1 200"))
    };
    attempt().unwrap_or(false)
}

/// Client threads asking `paths` in turn until stopped; counts (ok, failed).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, threads: usize, paths: &'static [&'static str]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|t| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                std::thread::spawn(move || {
                    let mut k = t;
                    while !stop.load(Ordering::Relaxed) {
                        let counter = if get(addr, paths[k % paths.len()]) {
                            &ok
                        } else {
                            &failed
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        k += 1;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n.max(1) as u64) as usize
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn spree(bin: &Path, secs: u64) {
    const POOL: usize = 4;
    let demo = Demo::start(bin, &["--prefork", "4", "--max-children", "16"]);
    let pid = demo.pid();
    let until = Instant::now() + Duration::from_secs(10);
    while live_children(pid).len() != POOL && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    let load = Load::start(demo.addr, 4, &["/"]);
    std::thread::sleep(Duration::from_millis(500));
    let mut rng = Lcg(0x5eed);
    let mut restore_ms = vec![];
    let mut not_restored = 0;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        let started = Instant::now();
        let children = live_children(pid);
        if children.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let victim = children[rng.below(children.len())];
        signal(victim, nix::sys::signal::Signal::SIGKILL);
        let kill_at = Instant::now();
        // Back to size: the victim gone (reaped, not a zombie) and POOL live.
        let restored = loop {
            let live = live_children(pid);
            if live.len() >= POOL && !live.contains(&victim) && state(victim).is_none() {
                break Some(kill_at.elapsed());
            }
            if kill_at.elapsed() > Duration::from_secs(5) {
                break None;
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        match restored {
            Some(d) => restore_ms.push(d.as_secs_f64() * 1000.0),
            None => not_restored += 1,
        }
        let spent = started.elapsed();
        if spent < Duration::from_millis(100) {
            std::thread::sleep(Duration::from_millis(100) - spent);
        }
    }
    let kills = restore_ms.len() + not_restored;
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed) = load.stop();
    std::thread::sleep(Duration::from_millis(500));
    let median = percentile(&mut restore_ms, 0.5);
    let p90 = percentile(&mut restore_ms, 0.9);
    let max = restore_ms.last().copied().unwrap_or(f64::NAN);
    println!(
        "spree: {secs} s, a SIGKILL every 100 ms, pool {POOL}: {kills} kills, pool back to size \
         after a kill: median {median:.2} ms, p90 {p90:.2} ms, max {max:.2} ms, \
         {not_restored} not back within 5 s (target: median <= 50 ms)"
    );
    println!(
        "spree: requests answered {ok}, failed {failed}, kills {kills} (target: failed <= kills); \
         parent alive {}, zombies {}, live children at the end {}",
        state(pid).is_some_and(|s| s != 'Z'),
        zombies(pid),
        live_children(pid).len()
    );
}

fn soak(bin: &Path, secs: u64) {
    let dir = std::env::temp_dir().join(format!("preforkd-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let access = dir.join("access.log");
    let error = dir.join("error.log");
    let demo = Demo::start(
        bin,
        &[
            "--prefork",
            "4",
            "--max-children",
            "12",
            "--access-log",
            access.to_str().unwrap(),
            "--error-log",
            error.to_str().unwrap(),
        ],
    );
    let pid = demo.pid();
    let load = Load::start(demo.addr, 4, &["/", "/", "/sleep?ms=20"]);
    // Warm up one of each fault before "start": first-use allocations are not growth.
    std::thread::sleep(Duration::from_secs(2));
    for sig in [
        nix::sys::signal::Signal::SIGHUP,
        nix::sys::signal::Signal::SIGUSR1,
        nix::sys::signal::Signal::SIGTTIN,
        nix::sys::signal::Signal::SIGTTOU,
    ] {
        signal(pid, sig);
        std::thread::sleep(Duration::from_secs(1));
    }
    let (rss0, fds0) = (rss_kib(pid), fds(pid));
    println!("soak: start: parent RSS {rss0} KiB, {fds0} descriptors");
    let mut rng = Lcg(7);
    let mut kills = 0;
    let mut grow = true;
    let start = Instant::now();
    let mut second = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        second += 1;
        if second % 10 == 0 {
            signal(pid, nix::sys::signal::Signal::SIGHUP);
        }
        if second % 7 == 0 {
            // Rotation as logrotate does it: rename, then USR1; the old files go.
            for (p, n) in [(&access, "access.log.1"), (&error, "error.log.1")] {
                let _ = std::fs::rename(p, dir.join(n));
            }
            signal(pid, nix::sys::signal::Signal::SIGUSR1);
        }
        if second % 3 == 0 {
            let sig = if grow {
                nix::sys::signal::Signal::SIGTTIN
            } else {
                nix::sys::signal::Signal::SIGTTOU
            };
            signal(pid, sig);
            grow = !grow;
        }
        if second % 2 == 0 {
            let c = live_children(pid);
            if !c.is_empty() {
                signal(c[rng.below(c.len())], nix::sys::signal::Signal::SIGKILL);
                kills += 1;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let (ok, failed) = load.stop();
    std::thread::sleep(Duration::from_secs(3));
    let (rss1, fds1) = (rss_kib(pid), fds(pid));
    println!("soak: end after {secs} s: parent RSS {rss1} KiB, {fds1} descriptors");
    println!(
        "soak: requests answered {ok}, failed {failed}, kills {kills}; parent alive {}, \
         zombies {}, live children {}",
        state(pid).is_some_and(|s| s != 'Z'),
        zombies(pid),
        live_children(pid).len()
    );
    drop(demo);
    let _ = std::fs::remove_dir_all(&dir);
}
