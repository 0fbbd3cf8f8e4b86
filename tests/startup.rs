//! Start-up and daemon plumbing against hostile files and environments: a shared
//! scoreboard, relative paths with `daemonize`, a process started in `after_init`,
//! start-up failures reaching the launcher, a FIFO as pid file, and the service
//! manager's variables (`NOTIFY_SOCKET`, `WATCHDOG_*`, `LISTEN_*`).
// Real processes need real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

const SIGTERM: i32 = 15;
const SIGTTIN: i32 = 21;

fn daemon_cmd(dir: &Path) -> Command {
    let mut cmd = Command::new(demo_binary());
    cmd.args(["--daemonize", "--listen", "127.0.0.1:0", "--prefork", "1"])
        .arg("--pid-file")
        .arg(dir.join("demo.pid"))
        .arg("--error-log")
        .arg(dir.join("error.log"))
        .arg("--access-log")
        .arg(dir.join("access.log"));
    cmd
}

/// Kills, on drop, every daemon named by these pid files and every listed pid:
/// a failed assertion must not leave daemons behind.
struct Reaper {
    pid_files: Vec<PathBuf>,
    pids: Vec<i32>,
    files: Vec<PathBuf>,
}

impl Reaper {
    fn of(pid_file: PathBuf) -> Reaper {
        Reaper {
            pid_files: vec![pid_file],
            pids: Vec::new(),
            files: Vec::new(),
        }
    }

    fn pid_in(path: &Path) -> Option<i32> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let pids: Vec<i32> = self
            .pid_files
            .iter()
            .filter_map(|p| Reaper::pid_in(p))
            .chain(self.pids.iter().copied())
            .collect();
        for pid in pids {
            if pid > 1 {
                send_signal(pid, 9);
            }
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// TERMs the daemon of this pid file and waits until it is gone.
fn stop_daemon(pid_file: &Path) {
    let pid = Reaper::pid_in(pid_file).expect("a pid in the pid file");
    send_signal(pid, 15);
    assert!(
        wait_for(Duration::from_secs(15), || !alive(pid)),
        "daemon {pid} did not stop"
    );
}

// --- 5: two instances sharing a scoreboard ---

fn busy_pids(board: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = preforkd::runtime::read_scoreboard_file(board)
        .expect("a readable scoreboard")
        .iter()
        .map(|s| s.pid)
        .filter(|&p| p != 0)
        .collect();
    pids.sort_unstable();
    pids
}

#[test]
fn a_second_instance_on_the_same_scoreboard_is_refused_and_the_first_keeps_serving() {
    let dir = tempdir("board-shared");
    let board = dir.join("board");
    let board_arg = board.to_str().unwrap();
    let first = Demo::start(&["--prefork", "2", "--scoreboard", board_arg]);
    assert!(
        wait_for(Duration::from_secs(10), || busy_pids(&board).len() == 2),
        "the first instance's scoreboard shows its two children"
    );
    let before_len = std::fs::metadata(&board).unwrap().len();
    let before = busy_pids(&board);

    let mut second = Command::new(demo_binary());
    second.args([
        "--listen",
        "127.0.0.1:0",
        "--prefork",
        "1",
        "--scoreboard",
        board_arg,
    ]);
    let outcome = run_bounded(second, Duration::from_secs(5));
    let (status, err) = outcome.expect("the second instance gave up at once");
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "scoreboard {} is in use by another instance (pid {})",
            board.display(),
            first.pid()
        )),
        "{err}"
    );
    assert!(
        !err.contains("listening on"),
        "it must not have bound: {err}"
    );
    // Untouched: same size, same children.
    assert_eq!(std::fs::metadata(&board).unwrap().len(), before_len);
    assert_eq!(busy_pids(&board), before);
    assert_eq!(get(first.addr, "/").unwrap(), (200, "hello\n".to_string()));
    // A reload still works on the intact file (the audit saw SIGBUS here).
    first.signal(1);
    assert!(wait_for(Duration::from_secs(10), || {
        let now = busy_pids(&board);
        now.len() == 2 && now.iter().all(|p| !before.contains(p))
    }));
    assert_eq!(get(first.addr, "/").unwrap(), (200, "hello\n".to_string()));
    assert!(alive(first.pid()));
}

#[test]
fn a_scoreboard_with_two_links_is_refused_and_left_untouched() {
    let dir = tempdir("board-link");
    let precious = dir.join("precious");
    std::fs::write(&precious, "precious\n").unwrap();
    let board = dir.join("board");
    std::fs::hard_link(&precious, &board).unwrap();
    let mut cmd = Command::new(demo_binary());
    cmd.args(["--listen", "127.0.0.1:0", "--prefork", "1", "--scoreboard"])
        .arg(&board);
    let (status, err) = run_bounded(cmd, Duration::from_secs(10)).expect("exits at once");
    assert!(!status.success(), "{err}");
    assert!(err.contains("hard links"), "{err}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "precious\n");
}

// --- 8: relative paths with daemonize ---

#[test]
fn relative_paths_with_daemonize_stay_in_the_starting_directory() {
    let dir = tempdir("relative");
    // Unique names: on a broken build they land in `/`, and are removed from there.
    let tag = format!("preforkd-relative-{}", std::process::id());
    let names = ["pid", "error.log", "access.log", "board"].map(|n| format!("{tag}.{n}"));
    let _reaper = Reaper {
        pid_files: vec![dir.join(&names[0]), Path::new("/").join(&names[0])],
        pids: Vec::new(),
        files: names.iter().map(|n| Path::new("/").join(n)).collect(),
    };
    let mut cmd = Command::new(demo_binary());
    cmd.current_dir(&dir)
        .args(["--daemonize", "--listen", "127.0.0.1:0", "--prefork", "1"])
        .args(["--pid-file", &names[0], "--error-log", &names[1]])
        .args(["--access-log", &names[2], "--scoreboard", &names[3]]);
    let (status, err) = run_bounded(cmd, Duration::from_secs(15)).expect("the launcher returns");
    assert!(status.success(), "{err}");
    for n in &names {
        assert!(dir.join(n).exists(), "{n} is not in the starting directory");
        assert!(!Path::new("/").join(n).exists(), "{n} landed in /");
    }
    let pid = Reaper::pid_in(&dir.join(&names[0])).expect("the daemon's pid");
    assert!(alive(pid));
    // Reopening (USR1) also goes to the starting directory.
    let error_log = dir.join(&names[1]);
    std::fs::rename(&error_log, dir.join("rotated")).unwrap();
    send_signal(pid, 10);
    assert!(
        wait_for(Duration::from_secs(10), || error_log.exists()),
        "the error log was not reopened where it was"
    );
    assert!(!Path::new("/").join(&names[1]).exists());
    stop_daemon(&dir.join(&names[0]));
}

// --- 10: a process started in after_init ---

#[test]
fn a_process_started_in_after_init_does_not_hold_the_launcher() {
    let dir = tempdir("spawn-in-init");
    let mut reaper = Reaper::of(dir.join("demo.pid"));
    let mut cmd = daemon_cmd(&dir);
    cmd.args(["--spawn-in-init", "exec sleep 60"]);
    let started = Instant::now();
    let outcome = run_bounded(cmd, Duration::from_secs(10));
    let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    let spawned: Option<i32> = log
        .lines()
        .find_map(|l| l.split("hello_http: spawned pid ").nth(1))
        .and_then(|p| p.trim().parse().ok());
    reaper.pids.extend(spawned);
    let (status, err) = outcome.expect("the launcher returned while the helper still runs");
    assert!(status.success(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let helper = spawned.expect("the helper's pid in the error log");
    assert!(alive(helper), "the helper is still running");
    stop_daemon(&dir.join("demo.pid"));
}

// --- 12: start-up failures inside the parent's start ---

#[test]
fn a_start_up_failure_in_the_parent_reaches_the_launcher_with_its_reason() {
    for prefork in ["1", "0"] {
        let dir = tempdir("start-failure");
        let _reaper = Reaper::of(dir.join("demo.pid"));
        let board = dir.join("board-is-a-dir");
        std::fs::create_dir(&board).unwrap();
        let mut cmd = daemon_cmd(&dir);
        cmd.args(["--prefork", prefork, "--scoreboard"]).arg(&board);
        let (status, err) = run_bounded(cmd, Duration::from_secs(10)).expect("exits at once");
        assert!(!status.success(), "prefork {prefork}: {err}");
        assert!(
            err.contains(&board.display().to_string()) && !err.contains("see the error log"),
            "prefork {prefork}: the launcher must give the reason: {err}"
        );
    }
}

// --- 14: a FIFO at the pid-file path ---

#[test]
fn a_fifo_at_the_pid_file_path_is_refused_without_blocking() {
    let dir = tempdir("fifo");
    let fifo = dir.join("demo.pid");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let outcome = run_bounded(daemon_cmd(&dir), Duration::from_secs(10));
    let (status, err) = outcome.expect("refused at once, not blocked on the FIFO");
    assert!(!status.success(), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
}

// --- 13, 15: the service manager's variables ---

/// A fake service manager's notification socket, read on a thread: every datagram
/// is kept (the socket never fills up).
struct FakeManager {
    path: PathBuf,
    got: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeManager {
    fn new(dir: &Path) -> FakeManager {
        let path = dir.join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&got);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        FakeManager { path, got }
    }

    fn count(&self, what: &str) -> usize {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|m| *m == what)
            .count()
    }

    fn all(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }
}

#[test]
fn a_daemonized_demo_pings_the_watchdog() {
    let dir = tempdir("watchdog-daemon");
    let _reaper = Reaper::of(dir.join("demo.pid"));
    let manager = FakeManager::new(&dir);
    // As systemd does: WATCHDOG_PID names the process it started (the launcher).
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"export WATCHDOG_PID=$$; exec "$@""#)
        .arg("sh")
        .arg(demo_binary())
        .args(daemon_cmd(&dir).get_args())
        .env("NOTIFY_SOCKET", &manager.path)
        .env("WATCHDOG_USEC", "400000");
    let (status, err) = run_bounded(cmd, Duration::from_secs(15)).expect("the launcher returns");
    assert!(status.success(), "{err}");
    let pid = Reaper::pid_in(&dir.join("demo.pid")).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || manager.count("WATCHDOG=1") >= 2),
        "no watchdog pings from the daemon: {:?}",
        manager.all()
    );
    assert!(manager.all().contains(&format!("MAINPID={pid}")));
    stop_daemon(&dir.join("demo.pid"));
}

#[test]
fn watchdog_usec_of_one_microsecond_does_not_make_the_parent_spin() {
    let dir = tempdir("watchdog-spin");
    let manager = FakeManager::new(&dir);
    let path = manager.path.to_str().unwrap().to_string();
    let demo = Demo::start_with_env(
        &["--prefork", "1"],
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "1")],
    );
    let t0 = cpu_time(demo.pid());
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_time(demo.pid()) - t0;
    let wall = started.elapsed();
    assert!(
        used < wall / 2,
        "the parent used {used:?} of CPU in {wall:?}: it spins"
    );
    assert_eq!(get(demo.addr, "/").unwrap(), (200, "hello\n".to_string()));
    // The watchdog is still kept (at a floored rate), and the log says so.
    assert!(manager.count("WATCHDOG=1") > 0, "{:?}", manager.all());
    assert!(demo.log().contains("WATCHDOG_USEC"), "{}", demo.log());
}

/// A service manager that has stopped reading, its queue full: the parent drops
/// its notifications (a watchdog ping every 10 ms, STATUS, READY, STOPPING)
/// instead of waiting up to a second on each, so it still acts on signals at once;
/// and it says so once, not once per dropped ping or status, then once more when
/// the manager reads again.
#[test]
fn a_full_notify_socket_never_holds_the_parent() {
    let dir = tempdir("notify-full");
    let path = dir.join("notify");
    // Not read until the end: the manager is stuck.
    let manager = UnixDatagram::bind(&path).unwrap();
    fill_datagram_queue(&path);
    let mut demo = Demo::start_with_env(
        &["--prefork", "1", "--max-children", "4"],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "20000"),
        ],
    );
    assert!(wait_for(Duration::from_secs(5), || demo.children().len() == 1));
    // Pings and statuses pile up against the full queue meanwhile.
    std::thread::sleep(Duration::from_millis(500));
    // TTIN: one child more. Each reaction of the parent's is a loop turn that a
    // blocking send would hold for a second.
    let t0 = Instant::now();
    for _ in 0..3 {
        demo.signal(SIGTTIN);
        std::thread::sleep(Duration::from_millis(50));
    }
    let grew = wait_for(Duration::from_secs(10), || demo.children().len() == 4);
    let grow_took = t0.elapsed();
    // The manager reads again: the next ping goes through, and the log says so.
    manager
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let reading = reading.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let mut got = Vec::new();
            while reading.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = manager.recv(&mut buf) {
                    got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
            got
        })
    };
    let recovered = wait_for(Duration::from_secs(5), || {
        demo.log().contains("sd_notify works again")
    });
    let t0 = Instant::now();
    demo.signal(SIGTERM);
    let code = demo.wait_exit(Duration::from_secs(15));
    let stop_took = t0.elapsed();
    // STOPPING=1 may still be on its way from the socket's queue.
    std::thread::sleep(Duration::from_millis(200));
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    let got = reader.join().unwrap();
    let log = demo.log();
    eprintln!("grew in {grow_took:?}, stopped in {stop_took:?}");
    assert!(grew, "3 TTINs did not make 4 children\nlog:\n{log}");
    assert!(recovered, "no word of sd_notify working again\nlog:\n{log}");
    assert!(
        got.iter().any(|m| m == "STOPPING=1"),
        "the manager reading again did not hear STOPPING=1: {got:?}"
    );
    assert_eq!(code, Some(0), "log:\n{log}");
    // Generous margins: a blocked parent takes a second per notification.
    assert!(
        grow_took < Duration::from_secs(2),
        "3 TTINs took {grow_took:?}\nlog:\n{log}"
    );
    assert!(
        stop_took < Duration::from_secs(2),
        "TERM took {stop_took:?}\nlog:\n{log}"
    );
    // The first failure (STATUS or a ping), READY=1 (a state change: always
    // told), and the recovery; before the fix, a line per STATUS as well.
    let notify_lines = log.lines().filter(|l| l.contains("sd_notify")).count();
    assert!(
        notify_lines <= 3,
        "{notify_lines} sd_notify lines, not one per streak:\n{log}"
    );
}

/// The demo started through `sh`, so that `LISTEN_PID` can name it: `exec` keeps
/// the shell's pid.
fn activated_demo(listen_fds: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            r#"export LISTEN_PID=$$ LISTEN_FDS={listen_fds}; exec "$@""#
        ))
        .arg("sh")
        .arg(demo_binary())
        .args(["--listen", "127.0.0.1:0", "--prefork", "1"])
        .args(extra);
    cmd
}

#[test]
fn listen_fds_naming_non_sockets_is_ignored_never_a_crash() {
    use std::os::unix::process::CommandExt;
    let mut cmd = activated_demo("5", &[]);
    // Descriptor 3 is a plain file (not a socket); 4 to 7 are not open at all.
    let null = std::fs::File::open("/dev/null").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&null);
    // SAFETY: between fork and exec the closure only calls dup2(2) and fcntl(2),
    // both async-signal-safe, on a descriptor this process owns.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            nix::libc::fcntl(3, nix::libc::F_SETFD, 0);
            Ok(())
        });
    }
    let demo = Demo::start_command(cmd);
    drop(null);
    assert_eq!(get(demo.addr, "/").unwrap(), (200, "hello\n".to_string()));
    // The runtime's own descriptors were not taken for activated sockets: signals
    // still work (a reload rolls the pool over).
    let before = demo.children();
    demo.signal(1);
    assert!(wait_for(Duration::from_secs(10), || {
        let now = demo.children();
        now.len() == 1 && now != before
    }));
    assert_eq!(get(demo.addr, "/").unwrap(), (200, "hello\n".to_string()));
    let log = demo.log();
    assert!(
        log.contains("descriptor 3 passed by LISTEN_FDS is not a socket"),
        "{log}"
    );
}

#[test]
fn an_absurd_listen_fds_count_is_a_clear_error_never_a_crash() {
    for count in ["2147483644", "2147483647", "4294967296"] {
        let (status, err) = run_bounded(activated_demo(count, &[]), Duration::from_secs(10))
            .expect("exits at once");
        assert!(
            status.code().is_some(),
            "LISTEN_FDS={count}: killed by a signal: {status:?} {err}"
        );
        assert!(!status.success(), "{err}");
        assert_ne!(
            status.code(),
            Some(101),
            "LISTEN_FDS={count}: a panic: {err}"
        );
        assert!(
            err.contains(&format!("LISTEN_FDS={count}")),
            "LISTEN_FDS={count}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    }
}

#[test]
fn children_do_not_see_the_service_manager_variables() {
    let dir = tempdir("child-env");
    let manager = FakeManager::new(&dir);
    let path = manager.path.to_str().unwrap().to_string();
    let demo = Demo::start_with_env(
        &["--prefork", "1"],
        &[
            ("NOTIFY_SOCKET", &path),
            ("WATCHDOG_USEC", "30000000"),
            // Meant for another process: not ours to take, and not to pass on.
            ("LISTEN_PID", "1"),
            ("LISTEN_FDS", "1"),
            ("LISTEN_FDNAMES", "web"),
        ],
    );
    let (status, body) = get(demo.addr, "/env").unwrap();
    assert_eq!(status, 200);
    let names: Vec<&str> = body.lines().collect();
    assert!(names.contains(&"PATH"), "{names:?}");
    for var in [
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
    ] {
        assert!(!names.contains(&var), "a child sees {var}: {names:?}");
    }
    // The parent still talks to the manager.
    assert!(wait_for(Duration::from_secs(5), || manager
        .count("READY=1")
        == 1));
}
