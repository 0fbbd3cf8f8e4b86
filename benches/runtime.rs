//! The runtime's figures with the demo server, printed (no pass/fail: these
//! machines are shared and noisy; compare the medians and ratios of one run).
//!
//! ```text
//! cargo bench --bench runtime                 # all four
//! cargo bench --bench runtime -- burst cold   # a selection: burst cold throughput wakeups
//! BENCH_RUNS=5 BENCH_IDLE_SECS=60 cargo bench --bench runtime -- wakeups
//! ```
//!
//! - **burst**: 140 clients each ask `/sleep?ms=1000` at once; pool from 3, max 150.
//!   Time until the last answer (target ≤ 1.10 s; Net::Server 1.29 s, Apache 7.0 s,
//!   the original 24 s).
//! - **cold**: from launch to 150 children all idle in the scoreboard (target ≤ 100 ms).
//! - **throughput**: a new connection per request, 4 children, `wrk -t2 -c8`,
//!   against Apache prefork (4 children, a static 6-byte file) in the same run
//!   (target ≥ 1.5×). Needs `wrk` and `apache2` (Debian packages).
//! - **wakeups**: the parent's context switches per second over `BENCH_IDLE_SECS`
//!   (60) idle seconds with 150 idle children (target ≤ 0.1).
// A benchmark measures real time and sleeps on purpose.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{build_demo, kill_group, Demo};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    let runs: usize = env_num("BENCH_RUNS", 5);
    let bin = build_demo();
    let mut failed = false;
    if want("burst") {
        let mut v: Vec<f64> = (0..runs).map(|_| burst(&bin)).collect();
        report(
            "burst: 140 x /sleep?ms=1000, pool 3..150, last answer",
            "s",
            &mut v,
        );
    }
    if want("cold") {
        let mut v: Vec<f64> = (0..runs).map(|_| cold_start(&bin) * 1000.0).collect();
        report("cold start: launch to 150 idle children", "ms", &mut v);
    }
    if want("throughput") {
        failed |= !throughput(&bin, runs);
    }
    if want("wakeups") {
        wakeups(&bin, env_num("BENCH_IDLE_SECS", 60));
    }
    if failed {
        std::process::exit(1);
    }
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn report(what: &str, unit: &str, v: &mut [f64]) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let runs: Vec<String> = v.iter().map(|x| format!("{x:.3}")).collect();
    println!(
        "{what}: median {:.3} {unit} (runs: {})",
        median(v),
        runs.join(" ")
    );
}

fn median(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn children_of(pid: i32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| s.split_whitespace().count())
        .unwrap_or(0)
}

fn wait_children(pid: i32, n: usize) {
    let until = Instant::now() + Duration::from_secs(20);
    while children_of(pid) < n {
        assert!(
            Instant::now() < until,
            "the pool never reached {n} children"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn get(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    s.read_to_string(&mut buf).is_ok() && buf.starts_with("HTTP/1.1 200")
}

/// Seconds from the release of 140 simultaneous clients to the last answer.
fn burst(bin: &Path) -> f64 {
    let d = Demo::start(bin, &["--prefork", "3", "--max-children", "150"]);
    wait_children(d.pid(), 3);
    std::thread::sleep(Duration::from_millis(200));
    let n = 140;
    let gate = Arc::new(Barrier::new(n + 1));
    let addr = d.addr;
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || {
                gate.wait();
                let ok = get(addr, "/sleep?ms=1000");
                (ok, Instant::now())
            })
        })
        .collect();
    gate.wait();
    let start = Instant::now();
    let mut last = start;
    let mut failures = 0;
    for t in threads {
        let (ok, at) = t.join().unwrap();
        failures += usize::from(!ok);
        last = last.max(at);
    }
    assert_eq!(failures, 0, "{failures} of {n} requests failed");
    (last - start).as_secs_f64()
}

/// Seconds from launch to 150 idle children in the scoreboard file.
fn cold_start(bin: &Path) -> f64 {
    let dir = std::env::temp_dir().join(format!("preforkd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sb = dir.join("scoreboard");
    let _ = std::fs::remove_file(&sb);
    let start = Instant::now();
    let d = Demo::start(
        bin,
        &[
            "--prefork",
            "150",
            "--max-children",
            "150",
            "--scoreboard",
            sb.to_str().unwrap(),
        ],
    );
    loop {
        if let Ok(slots) = preforkd::runtime::read_scoreboard_file(&sb) {
            if slots
                .iter()
                .filter(|s| s.state == preforkd::SlotState::Idle)
                .count()
                == 150
            {
                let t = start.elapsed().as_secs_f64();
                drop(d);
                return t;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "150 children never came up"
        );
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn wrk(addr: SocketAddr) -> Option<f64> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            "-c8",
            "-d10s",
            "-H",
            "Connection: close",
            &format!("http://{addr}/"),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    // Errors of any kind mean the figure is not comparable.
    if let Some(l) = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
    {
        eprintln!("wrk reported: {}", l.trim());
    }
    Some(rps)
}

/// Requests per second of preforkd and Apache prefork, alternating, same run.
fn throughput(bin: &Path, runs: usize) -> bool {
    let missing: Vec<&str> = ["wrk", "apache2"]
        .into_iter()
        .filter(|p| {
            Command::new("sh")
                .args(["-c", &format!("command -v {p} || test -x /usr/sbin/{p}")])
                .stdout(Stdio::null())
                .status()
                .map_or(true, |s| !s.success())
        })
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "throughput: missing {} (apt-get install -y wrk apache2)",
            missing.join(", ")
        );
        return false;
    }
    let (mut ours, mut theirs) = (vec![], vec![]);
    for _ in 0..runs.min(3) {
        let d = Demo::start(bin, &["--prefork", "4", "--max-children", "4"]);
        wait_children(d.pid(), 4);
        ours.push(wrk(d.addr).expect("wrk against preforkd"));
        drop(d);
        let a = Apache::start();
        theirs.push(wrk(a.addr).expect("wrk against apache"));
    }
    report(
        "throughput preforkd (4 children, new connection per request)",
        "req/s",
        &mut ours,
    );
    report(
        "throughput apache prefork (4 children, static file)",
        "req/s",
        &mut theirs,
    );
    println!(
        "throughput ratio preforkd/apache: {:.2}",
        median(&ours) / median(&theirs)
    );
    true
}

struct Apache {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Apache {
    fn start() -> Apache {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("preforkd-apache-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::write(dir.join("www/index.html"), "hello\n").unwrap();
        let conf = format!(
            "ServerRoot /etc/apache2\nLoadModule mpm_prefork_module /usr/lib/apache2/modules/mod_mpm_prefork.so\n\
             LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so\n\
             LoadModule dir_module /usr/lib/apache2/modules/mod_dir.so\n\
             LoadModule mime_module /usr/lib/apache2/modules/mod_mime.so\n\
             User www-data\nGroup www-data\nServerName localhost\nListen 127.0.0.1:{port}\n\
             PidFile {d}/httpd.pid\nErrorLog {d}/error.log\nDocumentRoot {d}/www\n\
             <Directory {d}/www>\n  Require all granted\n</Directory>\nDirectoryIndex index.html\n\
             StartServers 4\nMinSpareServers 4\nMaxSpareServers 4\nServerLimit 4\nMaxRequestWorkers 4\n\
             MaxConnectionsPerChild 0\nKeepAlive Off\nMutex file:{d}\nTypesConfig /etc/mime.types\n",
            d = dir.display()
        );
        std::fs::write(dir.join("httpd.conf"), conf).unwrap();
        let child = Command::new("/usr/sbin/apache2")
            .args([
                "-f",
                dir.join("httpd.conf").to_str().unwrap(),
                "-DFOREGROUND",
            ])
            .env("APACHE_RUN_DIR", &dir)
            .env("APACHE_LOCK_DIR", &dir)
            .env("APACHE_LOG_DIR", &dir)
            .process_group(0)
            .spawn()
            .expect("start apache2");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while !get(addr, "/") {
            assert!(
                Instant::now() < until,
                "apache did not start: {:?}",
                std::fs::read_to_string(dir.join("error.log"))
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        Apache { child, addr, dir }
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        kill_group(self.child.id() as i32);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Context switches of every thread of `pid`.
fn switches(pid: i32) -> u64 {
    let mut total = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("status")) {
                total += s
                    .lines()
                    .filter(|l| l.contains("ctxt_switches"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum::<u64>();
            }
        }
    }
    total
}

fn wakeups(bin: &Path, secs: usize) {
    let d = Demo::start(bin, &["--prefork", "150", "--max-children", "150"]);
    wait_children(d.pid(), 150);
    // Let start-up settle (the coalesced status notification fires after 1 s).
    std::thread::sleep(Duration::from_secs(3));
    let before = switches(d.pid());
    std::thread::sleep(Duration::from_secs(secs as u64));
    let after = switches(d.pid());
    println!(
        "idle parent, 150 idle children: {} context switches in {secs} s = {:.3} per second",
        after - before,
        (after - before) as f64 / secs as f64
    );
}
