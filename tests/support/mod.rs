//! Shared helpers of the tests that run the demo server as a real process.
// Real processes need real time.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)] // each test file uses its own subset

pub mod run;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The demo binary that `cargo test` builds next to the test binaries.
pub fn demo_binary() -> PathBuf {
    example_binary("hello_http")
}

/// An example that `cargo test` builds next to the test binaries.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: `cargo test` builds the examples before the tests",
        bin.display()
    );
    bin
}

/// A running demo server, killed (its whole process group) when dropped.
pub struct Demo {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl Demo {
    /// Starts the demo on an ephemeral loopback port with these extra flags and waits
    /// until it listens and its first children are up.
    pub fn start(args: &[&str]) -> Demo {
        Demo::start_with_env(args, &[])
    }

    /// [`start`](Self::start) with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Demo {
        let mut cmd = Command::new(demo_binary());
        cmd.envs(env.iter().copied())
            .args(["--listen", "127.0.0.1:0"])
            .args(args);
        Demo::start_command(cmd)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The demo's children, from /proc.
    pub fn children(&self) -> Vec<i32> {
        children_of(self.pid())
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        send_signal(self.pid(), sig);
    }

    /// Waits for the parent to exit; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // Kill the whole group: the parent and any child it left.
        send_signal(-self.pid(), 9);
        let _ = self.child.wait();
    }
}

/// kill(2): a negative `pid` signals that process group. Errors (the target is
/// gone) are ignored: the tests check effects, not delivery.
pub fn send_signal(pid: i32, sig: i32) {
    let target = nix::unistd::Pid::from_raw(pid);
    if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
        let _ = nix::sys::signal::kill(target, sig);
    }
}

/// Direct children of `pid`, from /proc/PID/task/*/children.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = vec![];
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out.sort_unstable();
    out
}

/// The process state letter from /proc/PID/stat (`Z` for a zombie), if it exists.
pub fn proc_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    after.trim_start().chars().next()
}

pub fn alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some(c) if c != 'Z')
}

/// Polls `f` every 20 ms until it holds or `within` passes.
pub fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.1 request with `Connection: close`: (status, body).
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    parse_response(&buf)
}

pub fn parse_response(buf: &str) -> std::io::Result<(u16, String)> {
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad response {buf:?}"),
        )
    };
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .ok_or_else(bad)?;
    Ok((status, body))
}

/// Clients asking `/?id=T-K` from `threads` threads, each request a new
/// connection, until `stop` is set; each handle gives how many that thread sent.
pub fn id_load(
    addr: SocketAddr,
    threads: usize,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<usize>> {
    (0..threads)
        .map(|t| {
            let stop = Arc::clone(stop);
            std::thread::spawn(move || {
                let mut k = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, _) = get(addr, &format!("/?id={t}-{k}")).expect("answered");
                    assert_eq!(status, 200);
                    k += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                k
            })
        })
        .collect()
}

/// Reads every `access.log*` file in `dir`: how many files, and how many times each
/// `id` of [`id_load`] was logged. Every line must be a combined-format 200 of 6
/// bytes (`"GET /?id=T-K HTTP/1.1" 200 6 "-" "-"`).
pub fn logged_ids(dir: &std::path::Path) -> (usize, std::collections::BTreeMap<String, usize>) {
    let mut seen = std::collections::BTreeMap::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("access.log")
        {
            continue;
        }
        files += 1;
        for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
            assert!(line.contains("\" 200 6 "), "{line}");
            let id = line.split("id=").nth(1).unwrap().split(' ').next().unwrap();
            *seen.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    (files, seen)
}

/// A fresh, empty directory for one test: unique per tag, process and call.
pub fn tempdir(tag: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("preforkd-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

// --- start-up and daemon plumbing (scoreboard, daemonize, systemd environment) ---

impl Demo {
    /// Starts the demo through `cmd` (e.g. `sh -c '... exec demo ...'`, keeping the
    /// pid) and waits until it listens, as [`start`](Self::start) does. `cmd` gets
    /// its stderr piped and its own process group here.
    pub fn start_command(mut cmd: Command) -> Demo {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = spawn_retrying(&mut cmd).expect("start the demo");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = String::new();
            let mut tx = Some(tx);
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if let Some(rest) = line.trim().strip_prefix("hello_http: listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.to_string());
                    }
                }
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(a) => a.parse().expect("listen address"),
            Err(_) => {
                send_signal(-(child.id() as i32), 9);
                let _ = child.wait();
                panic!("the demo did not start: {}", log.lock().unwrap());
            }
        };
        Demo { child, addr, log }
    }
}

/// Spawns `cmd`. A binary the test just wrote may still be open for writing in a
/// child another test thread forked meanwhile (ETXTBSY until it execs): retried.
pub fn spawn_retrying(cmd: &mut Command) -> std::io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Runs `cmd` (in its own process group) for at most `within`: its exit status
/// and stderr, or `None` (after killing its group) if it was still running.
pub fn run_bounded(
    mut cmd: Command,
    within: Duration,
) -> Option<(std::process::ExitStatus, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = spawn_retrying(&mut cmd).expect("start the command");
    let mut stderr = child.stderr.take().expect("stderr");
    // Read on a thread: a grandchild holding the pipe must not block the test.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    let until = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let err = rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
            return Some((status, err));
        }
        if Instant::now() >= until {
            send_signal(-(child.id() as i32), 9);
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ----- fault tolerance (kill sprees, crash loops, storms, limits) -----

impl Demo {
    /// Starts the demo through `cmd` (a wrapper such as `setpriv ... DEMO` or
    /// `prlimit ... DEMO`, whose last word is the demo binary): adds the listen
    /// address, pipes stderr, and waits until it listens.
    pub fn start_cmd(mut cmd: Command, args: &[&str]) -> Demo {
        cmd.args(["--listen", "127.0.0.1:0"]).args(args);
        Demo::start_command(cmd)
    }

    /// How many lines of the log contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }
}

/// Open descriptors of `pid`, from /proc/PID/fd.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of `pid` in KiB (VmRSS of /proc/PID/status).
pub fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time `pid` used so far (user + system), from /proc/PID/stat.
pub fn cpu_time(pid: i32) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = s
        .rsplit_once(')')
        .map(|x| x.1.split_whitespace().collect())
        .unwrap_or_default();
    // After the command: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // USER_HZ is 100 on every Linux ABI.
    Duration::from_millis(ticks * 10)
}

/// Children of `pid` that are zombies (exited, not reaped).
pub fn zombies(pid: i32) -> Vec<i32> {
    children_of(pid)
        .into_iter()
        .filter(|&c| proc_state(c) == Some('Z'))
        .collect()
}

/// Clients asking `path` from `threads` threads, each request a new connection,
/// until `stop` is set; each handle gives (answered with 200, failed).
pub fn counting_load(
    addr: SocketAddr,
    threads: usize,
    path: &'static str,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<(usize, usize)>> {
    (0..threads)
        .map(|_| {
            let stop = Arc::clone(stop);
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match get(addr, path) {
                        Ok((200, _)) => ok += 1,
                        _ => failed += 1,
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                (ok, failed)
            })
        })
        .collect()
}

/// Stops a [`counting_load`] and sums its figures: (answered, failed).
pub fn stop_load(
    stop: &Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<std::thread::JoinHandle<(usize, usize)>>,
) -> (usize, usize) {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    handles
        .into_iter()
        .map(|h| h.join().expect("load thread"))
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

/// A small deterministic generator for tests that pick victims "at random".
pub struct Lcg(pub u64);

impl Lcg {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n.max(1) as u64) as usize
    }
}

/// The lowest descriptor number `pid` has free: with the limit set to it, the
/// next descriptor it opens fails with EMFILE (the limit bounds numbers, not counts).
pub fn lowest_free_fd(pid: i32) -> usize {
    // The lowest over a few looks: a descriptor held for a moment (a /proc read)
    // would otherwise leave one free below the limit.
    (0..20)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(5));
            let used: std::collections::BTreeSet<usize> =
                std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .unwrap()
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect();
            (0..).find(|n| !used.contains(n)).unwrap()
        })
        .min()
        .unwrap()
}

/// Sets the soft RLIMIT_NOFILE of a running process (the hard limit stays, so
/// no privilege is needed to restore it).
pub fn set_nofile(pid: i32, soft: usize) {
    let st = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={soft}:"))
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(st.success(), "prlimit --pid={pid} --nofile={soft}: failed");
}

/// The path of an outside program a system test needs, from the usual
/// directories; a missing one fails the test (never skips it), naming the Debian
/// package that has it.
pub fn program(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = std::path::Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    let package = match name {
        "useradd" | "userdel" | "groupadd" | "groupdel" | "gpasswd" => "passwd",
        "mount" | "umount" | "prlimit" | "setpriv" | "unshare" => "util-linux",
        other => other,
    };
    panic!(
        "{name} is not installed: apt-get install -y {package} (the system-tests feature needs it)"
    );
}

/// Fills the receive queue of the datagram socket bound at `path` (a service
/// manager that never reads); returns how many datagrams it took.
pub fn fill_datagram_queue(path: &std::path::Path) -> usize {
    let filler = std::os::unix::net::UnixDatagram::unbound().unwrap();
    filler.set_nonblocking(true).unwrap();
    let mut queued = 0;
    while queued < 100_000 && filler.send_to(b"FILL=1", path).is_ok() {
        queued += 1;
    }
    assert!(queued < 100_000, "the manager's queue never filled");
    queued
}

/// A command running `program` the way a service manager starts a
/// socket-activated service: `listener` as descriptor 3, `LISTEN_FDS=1`,
/// `LISTEN_FDNAMES=name` and `LISTEN_PID` its pid (set by `sh`, whose pid `exec`
/// keeps: it is not known before the fork). Add the program's arguments to it;
/// keep `listener` open until it is spawned.
pub fn socket_activated(
    program: &std::path::Path,
    listener: &std::net::TcpListener,
    name: &str,
) -> Command {
    let fd = std::os::fd::AsRawFd::as_raw_fd(listener);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"export LISTEN_PID=$$; exec "$@""#)
        .arg("sh")
        .arg(program)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", name)
        .env_remove("LISTEN_PID");
    // SAFETY: between fork and exec the closure only calls dup2(2) and fcntl(2),
    // both async-signal-safe, on a descriptor the caller keeps open; it touches no
    // lock and no heap.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) == -1 || libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Asks the demo for `/sleep?ms={ms}` and returns the connection, open.
pub fn sleeper(addr: SocketAddr, ms: u64) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /sleep?ms={ms} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s
}

/// The demo with one child (room for another), looking for hung-up clients
/// every 50 ms.
pub const ONE_CHILD: [&str; 6] = [
    "--prefork",
    "1",
    "--max-children",
    "2",
    "--disconnect-every-ms",
    "50",
];

/// How a client ends its connection in [`hang_up_on`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum HangUp {
    /// `close`: a FIN.
    Close,
    /// `SO_LINGER` 0, then `close`: a reset.
    Reset,
}

/// The demo's only child is asked for a 10 s job whose client hangs up after
/// 200 ms (`how`); returns the line the demo logs when it sees that, and the
/// child.
pub fn hang_up_on(d: &Demo, how: HangUp) -> (String, i32) {
    hang_up_at(d, d.addr, how)
}

/// [`hang_up_on`], the client connecting to `addr` (another address the demo
/// listens on).
pub fn hang_up_at(d: &Demo, addr: SocketAddr, how: HangUp) -> (String, i32) {
    assert!(wait_for(Duration::from_secs(10), || d.children().len() == 1));
    let serving = d.children()[0];
    let s = sleeper(addr, 10_000);
    let local = s.local_addr().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    if how == HangUp::Reset {
        nix::sys::socket::setsockopt(
            &s,
            nix::sys::socket::sockopt::Linger,
            &libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        )
        .unwrap();
    }
    drop(s);
    let needle = format!(
        "client {}:{} hung up on child {serving} ",
        local.ip(),
        local.port()
    );
    (needle, serving)
}

/// `needle` shows in the demo's log within 5 s, and once only (half a second
/// later).
pub fn logged_once(d: &Demo, needle: &str, what: &str) {
    assert!(
        wait_for(Duration::from_secs(5), || d.log().contains(needle)),
        "{what}: not reported as {needle:?}\n{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.log().matches(needle).count(), 1, "{what}: {}", d.log());
}
