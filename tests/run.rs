//! `preforkd run -- COMMAND`: real processes, real signals, real sockets on
//! 127.0.0.1. The command is `examples/activated_http` (a socket-activated
//! server that knows nothing of preforkd) or a shell; Python and gunicorn are in
//! tests/system_run.rs.
// Real processes need real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::run::{preforkd, server, sh, tree, Run};
use support::{alive, children_of, get, send_signal, tempdir, wait_for};

#[test]
fn a_command_gets_the_listeners_its_own_pid_and_no_other_descriptor() {
    let bin = server();
    let r = Run::start("run-env", &["--prefork", "1"], &[bin.to_str().unwrap()]);
    let (code, env) = get(r.addr, "/env").unwrap();
    assert_eq!(code, 200);
    let worker = r.workers()[0];
    // LISTEN_PID is the child's own pid (the server checked it to adopt the socket).
    assert!(
        env.starts_with(&format!(
            "LISTEN_PID={worker} LISTEN_FDS=1 LISTEN_FDNAMES=unknown pid={worker}"
        )),
        "{env}"
    );
    // 0-2, the listener, the connection and the directory being read: none of
    // the parent's pipes, locks, logs or scoreboard, nor what it was started with.
    let (_, fds) = get(r.addr, "/fds").unwrap();
    assert_eq!(fds.trim(), "[0, 1, 2, 3, 4, 5]", "{fds}");
}

#[test]
fn the_commands_output_is_logged_in_whole_lines_once_with_the_childs_pid() {
    let bin = server();
    let r = Run::start("run-out", &["--prefork", "1"], &[bin.to_str().unwrap()]);
    // Written in two pieces 20 ms apart on each stream.
    let (code, said) = get(r.addr, "/say/first-half-second-half").unwrap();
    assert_eq!(code, 200);
    let worker: i32 = said.trim().trim_start_matches("said by ").parse().unwrap();
    assert!(
        r.wait_log(Duration::from_secs(5), "stream: stderr"),
        "{}",
        r.log()
    );
    let log = r.log();
    for stream in ["stdout", "stderr"] {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("stream: {stream}")))
            .collect();
        assert_eq!(lines.len(), 1, "{stream}: {log}");
        assert!(
            lines[0].contains("first-half-second-half,")
                && lines[0].contains(&format!("child: {worker}")),
            "{}",
            lines[0]
        );
    }
}

#[test]
fn the_pool_grows_from_what_the_kernel_shows_and_shrinks_back() {
    let bin = server();
    let r = Run::start(
        "run-grow",
        &["--prefork", "1", "--max-children", "40"],
        &[bin.to_str().unwrap()],
    );
    // 30 one-second requests at once at a server that handles one at a time.
    let started = Instant::now();
    let clients: Vec<_> = (0..30)
        .map(|_| {
            let addr = r.addr;
            std::thread::spawn(move || get(addr, "/sleep/1000").map(|(c, _)| c))
        })
        .collect();
    let most = (0..40)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            r.workers().len()
        })
        .max()
        .unwrap();
    let codes: Vec<u16> = clients
        .into_iter()
        .map(|c| c.join().unwrap().unwrap())
        .collect();
    let took = started.elapsed();
    assert!(codes.iter().all(|&c| c == 200), "{codes:?}");
    assert!(
        most >= 10,
        "the pool grew to {most} children only:\n{}",
        r.log()
    );
    eprintln!("30 one-second requests answered in {took:?}; {most} children at most");
    // Idle again: back to one.
    assert!(
        wait_for(Duration::from_secs(60), || r.workers().len() == 1),
        "still {} children",
        r.workers().len()
    );
}

#[test]
fn a_command_that_exits_at_once_backs_off_and_says_why() {
    let dir = tempdir("run-false");
    let forks = dir.join("forks");
    // /bin/false, counting its runs.
    let script = format!("echo $$ >> {}; exec /bin/false", forks.display());
    let r = Run::start(
        "run-false",
        &["--prefork", "2", "--backoff-initial", "200ms"],
        &sh(&script).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    std::thread::sleep(Duration::from_secs(3));
    let runs = std::fs::read_to_string(&forks)
        .unwrap_or_default()
        .lines()
        .count();
    let log = r.log();
    assert!(log.contains("exited early (exit code 1)"), "{log}");
    // 200 ms doubling: 2 at the start, then a handful in 3 s; never a storm.
    assert!((3..=12).contains(&runs), "{runs} runs in 3 s:\n{log}");
    assert!(alive(r.pid()));
    let _ = std::fs::remove_dir_all(dir);
}

fn children_started(log: &str) -> usize {
    log.matches("exited early").count()
}

#[test]
fn a_command_that_cannot_be_run_is_reported_with_the_reason_and_backed_off() {
    let dir = tempdir("run-noexec");
    let script = dir.join("server");
    std::fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let r = Run::start(
        "run-noexec",
        &["--prefork", "1"],
        &[script.to_str().unwrap()],
    );
    assert!(
        r.wait_log(Duration::from_secs(5), "cannot run"),
        "{}",
        r.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    let log = r.log();
    let line = log.lines().find(|l| l.contains("cannot run")).unwrap();
    assert!(
        line.contains(script.to_str().unwrap())
            && line.contains("No such file or directory")
            && line.contains("child: "),
        "{line}"
    );
    assert!(log.contains("exited early (exit code 127)"), "{log}");
    assert!(
        children_started(&log) <= 3,
        "logged once per streak:\n{log}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn term_stops_every_worker_and_its_descendants() {
    let bin = server();
    // Each worker leaves a descendant that would outlive it.
    let script = format!("sleep 1000 & exec {}", bin.display());
    let mut r = Run::start(
        "run-term",
        &["--prefork", "2", "--graceful-timeout", "3s"],
        &sh(&script).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(wait_for(Duration::from_secs(5), || {
        let w = r.workers();
        w.len() == 2 && w.iter().all(|&w| tree(w).len() == 2)
    }));
    let trees: Vec<i32> = r.workers().into_iter().flat_map(tree).collect();
    assert_eq!(get(r.addr, "/").unwrap().0, 200);
    send_signal(r.pid(), libc::SIGTERM);
    let status = r
        .wait_exit(Duration::from_secs(10))
        .expect("preforkd stops");
    assert_eq!(status.code(), Some(0), "{}", r.log());
    assert!(
        wait_for(Duration::from_secs(3), || trees.iter().all(|&p| !alive(p))),
        "left: {:?}",
        trees.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
    );
}

#[test]
fn the_stop_signal_asks_the_command_to_finish() {
    let script = "trap 'echo got-quit >&2; exit 0' QUIT; while :; do sleep 0.05; done";
    let mut r = Run::start(
        "run-quit",
        &["--prefork", "2", "--stop-signal", "QUIT"],
        &sh(script).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(wait_for(Duration::from_secs(5), || r.workers().len() == 2));
    send_signal(r.pid(), libc::SIGTERM);
    let status = r
        .wait_exit(Duration::from_secs(10))
        .expect("preforkd stops");
    assert_eq!(status.code(), Some(0), "{}", r.log());
    let log = r.log();
    assert_eq!(log.matches("got-quit").count(), 2, "{log}");
    assert_eq!(log.matches("stopped: exit code 0").count(), 2, "{log}");
}

#[test]
fn a_killed_preforkd_leaves_no_orphan() {
    let bin = server();
    // A descendant that ignores everything but KILL, in the worker's group.
    let script = format!(
        "(trap '' TERM HUP INT QUIT; exec sleep 1000) & exec {}",
        bin.display()
    );
    let mut r = Run::start(
        "run-kill",
        &["--prefork", "2"],
        &sh(&script).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // Both workers forked and each with its descendant (an empty list of
    // workers must not pass for "all").
    assert!(wait_for(Duration::from_secs(10), || {
        let w = r.workers();
        w.len() == 2 && w.iter().all(|&w| tree(w).len() == 2)
    }));
    let trees: Vec<i32> = r.workers().into_iter().flat_map(tree).collect();
    assert_eq!(trees.len(), 4, "{trees:?}");
    send_signal(r.pid(), libc::SIGKILL);
    let _ = r.wait_exit(Duration::from_secs(5));
    assert!(
        wait_for(Duration::from_secs(5), || trees.iter().all(|&p| !alive(p))),
        "orphans: {:?}",
        trees.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
    );
}

#[test]
fn a_unix_listener_gets_its_mode_and_is_served() {
    let dir = tempdir("run-unix");
    let path = dir.join("app.sock");
    let bin = server();
    let mut cmd = Command::new(preforkd());
    cmd.arg("run")
        .arg("--listen")
        .arg(format!("unix:{},mode=0660,name=web", path.display()))
        .args(["--prefork", "1", "--"])
        .arg(&bin)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn().unwrap();
    let ok = wait_for(Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&path).is_ok()
    });
    let mode = std::fs::metadata(&path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    let mut body = String::new();
    if ok {
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        s.write_all(b"GET /env HTTP/1.1\r\n\r\n").unwrap();
        s.read_to_string(&mut body).unwrap();
    }
    let kids: Vec<i32> = children_of(child.id() as i32)
        .into_iter()
        .flat_map(tree)
        .collect();
    send_signal(child.id() as i32, libc::SIGKILL);
    for k in kids {
        send_signal(k, libc::SIGKILL);
    }
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "never served on {}", path.display());
    assert_eq!(mode.unwrap(), 0o660);
    assert!(body.contains("LISTEN_FDS=1 LISTEN_FDNAMES=web"), "{body}");
}

/// `preforkd run ARGS` to its end: (exit code, stderr).
fn refused(args: &[&str], config: Option<&str>) -> (i32, String) {
    let dir = tempdir("run-config");
    let mut cmd = Command::new(preforkd());
    cmd.arg("run");
    if let Some(text) = config {
        let f = dir.join("preforkd.toml");
        std::fs::write(&f, text).unwrap();
        cmd.arg("--config").arg(&f);
    }
    cmd.args(args);
    let (status, err) = support::run_bounded(cmd, Duration::from_secs(10)).expect("it ends");
    let _ = std::fs::remove_dir_all(dir);
    (status.code().unwrap_or(-1), err)
}

#[test]
fn bad_configurations_are_refused_with_64_or_78_naming_the_problem() {
    let check = ["--check-config", "--", "/bin/true"];
    // An unknown key: its name and line.
    let (code, err) = refused(&check, Some("prefork = 2\n\nmax_childs = 10\n"));
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("max_childs") && err.contains("line 3"),
        "{err}"
    );
    // A bad value.
    let (code, err) = refused(&check, Some("graceful_timeout = \"soon\"\n"));
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("soon") && err.contains("line 1"), "{err}");
    // A value the supervisor refuses.
    let (code, err) = refused(&check, Some("prefork = 20\nmax_children = 10\n"));
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("max_children") || err.contains("prefork"),
        "{err}"
    );
    // A listener that does not parse.
    let (code, err) = refused(
        &[
            "--listen",
            "tcp://nowhere",
            "--check-config",
            "--",
            "/bin/true",
        ],
        None,
    );
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("tcp://nowhere"), "{err}");
    // No COMMAND.
    let (code, err) = refused(&["--listen", "tcp://127.0.0.1:1"], Some("prefork = 2\n"));
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("no COMMAND"), "{err}");
    // A COMMAND that is not there.
    let (code, err) = refused(&["--check-config", "--", "no-such-server-here"], None);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("no-such-server-here: not found in PATH"),
        "{err}"
    );
    // More listeners than a child can be passed: refused before anything runs,
    // not found out by every child.
    let many: Vec<String> = (0..65)
        .flat_map(|i| {
            [
                "--listen".to_string(),
                format!("tcp://127.0.0.1:{}", 30000 + i),
            ]
        })
        .collect();
    let mut args: Vec<&str> = many.iter().map(String::as_str).collect();
    args.extend(["--check-config", "--", "/bin/true"]);
    let (code, err) = refused(&args, None);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("listen") && err.contains("65 listeners") && err.contains("at most 64"),
        "{err}"
    );
    let mut args: Vec<&str> = many[..128].iter().map(String::as_str).collect();
    args.extend(["--busy-from", "slot", "--check-config", "--", "/bin/true"]);
    let (code, err) = refused(&args, None);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("64 listeners and the scoreboard"), "{err}");
    // A request limit the kernel's view cannot count: refused, not ignored.
    let (code, err) = refused(
        &[
            "--max-requests-per-child",
            "10",
            "--check-config",
            "--",
            "/bin/true",
        ],
        None,
    );
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("max_requests_per_child") && err.contains("busy_from slot"),
        "{err}"
    );
    let (code, err) = refused(
        &[
            "--max-requests-per-child",
            "10",
            "--busy-from",
            "slot",
            "--check-config",
            "--",
            "/bin/true",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    // An unknown flag.
    let (code, err) = refused(&["--max-childs", "3", "--", "/bin/true"], None);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--max-childs"), "{err}");
    // Flags override the file; a good one checks out.
    let (code, err) = refused(
        &["--prefork", "2", "--check-config", "--", "/bin/true"],
        Some("prefork = 20\nmax_children = 10\ncommand = [\"/bin/false\"]\n"),
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_huge_busy_check_interval_neither_panics_nor_stops_the_looking() {
    let bin = server();
    let r = Run::start(
        "run-huge-every",
        &[
            "--prefork",
            "1",
            "--busy-check-every",
            "1000000000000000000s",
        ],
        &[bin.to_str().unwrap()],
    );
    assert_eq!(get(r.addr, "/").unwrap().0, 200);
    std::thread::sleep(Duration::from_millis(300));
    let log = r.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn an_in_place_upgrade_keeps_reading_the_adopted_childrens_output() {
    // The old children are stopped by the new image: what they say then must
    // reach the log (their pipes crossed the exec), and they must not die of a
    // closed pipe.
    let script = "trap 'echo bye-$$ >&2; sleep 0.3; echo done-$$ >&2; exit 0' TERM; while :; do sleep 0.05; done";
    let r = Run::start(
        "run-upgrade",
        &["--prefork", "2"],
        &sh(script).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(wait_for(Duration::from_secs(5), || r.workers().len() == 2));
    let old = r.workers();
    send_signal(r.pid(), libc::SIGUSR2);
    assert!(
        r.wait_log(Duration::from_secs(10), "upgraded in place"),
        "{}",
        r.log()
    );
    for pid in &old {
        assert!(
            r.wait_log(
                Duration::from_secs(10),
                &format!("done-{pid}, stream: stderr, child: {pid}")
            ),
            "{}",
            r.log()
        );
    }
    // Each one's exit is logged once it is reaped, after its last words.
    assert!(
        wait_for(Duration::from_secs(5), || r
            .log()
            .matches("retired by a reload: exit code 0")
            .count()
            == 2),
        "{}",
        r.log()
    );
    let log = r.log();
    assert!(!log.contains("signal 13"), "{log}");
}

#[test]
fn a_client_that_hangs_up_gets_its_command_child_stopped() {
    let bin = server();
    let r = Run::start(
        "run-hangup",
        &[
            "--prefork",
            "1",
            "--on-client-disconnect",
            "kill",
            "--disconnect-check-every",
            "100ms",
            "--kill-grace",
            "500ms",
        ],
        &[bin.to_str().unwrap()],
    );
    let mut c = std::net::TcpStream::connect(r.addr).unwrap();
    c.write_all(b"GET /sleep/20000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // Seen busy (its tree holds the connection), then the client goes.
    std::thread::sleep(Duration::from_millis(500));
    let worker = r.workers()[0];
    drop(c);
    assert!(
        r.wait_log(
            Duration::from_secs(10),
            "stopped after its client disconnected"
        ),
        "{}",
        r.log()
    );
    assert!(r.log().contains(&format!("child {worker} ")), "{}", r.log());
}

#[test]
fn a_stderr_nobody_reads_never_stops_the_supervisor() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempdir("run-stall");
    let fifo = dir.join("stderr");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // The test holds the reading end and never reads: the pipe fills up.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let port = support::run::free_port();
    let mut cmd = Command::new(preforkd());
    cmd.args(["run", "--listen", &format!("tcp://127.0.0.1:{port}")])
        .args(["--prefork", "2", "--graceful-timeout", "2s", "--"])
        .args([
            "sh",
            "-c",
            "while :; do echo 'a line of output, again and again'; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(writer)
        .process_group(0);
    let mut child = support::spawn_retrying(&mut cmd).unwrap();
    let pid = child.id() as i32;
    // The children's output fills the pipe; the parent must go on regardless.
    std::thread::sleep(Duration::from_millis(1_500));
    // It still reacts: a child killed is replaced...
    let before = children_of(pid)
        .into_iter()
        .filter(|&c| !support::run::is_keeper(c))
        .collect::<Vec<_>>();
    send_signal(before[0], libc::SIGKILL);
    let replaced = wait_for(Duration::from_secs(5), || {
        let now: Vec<i32> = children_of(pid)
            .into_iter()
            .filter(|&c| !support::run::is_keeper(c))
            .collect();
        now.len() == 2 && !now.contains(&before[0])
    });
    // ...and TERM stops it within the graceful timeout.
    send_signal(pid, libc::SIGTERM);
    let stopped = wait_for(Duration::from_secs(8), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !stopped {
        support::run::kill_supervisor(pid);
        let _ = child.wait();
    }
    drop(reader);
    assert!(
        replaced,
        "a killed child was not replaced while stderr was not read"
    );
    assert!(
        stopped,
        "TERM did not stop preforkd while stderr was not read"
    );
}

#[test]
fn a_daemonized_supervisor_runs_its_command_where_it_was_started() {
    let dir = tempdir("run-daemon-dir");
    let bin = server();
    std::fs::write(
        dir.join("serve.sh"),
        format!("exec {}\n", bin.to_str().unwrap()),
    )
    .unwrap();
    let port = support::run::free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Relative paths everywhere: the daemon itself moves to `/`.
    let status = Command::new(preforkd())
        .current_dir(&dir)
        .args(["run", "--listen", &format!("tcp://{addr}"), "--daemonize"])
        .args(["--pid-path", "pid", "--error-log-path", "err.log"])
        .args(["--access-log-path", "access.log", "--prefork", "1"])
        .args(["--", "sh", "./serve.sh"])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let pid_file = dir.join("pid");
    let daemon = wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim().parse::<i32>().is_ok())
    })
    .then(|| {
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse::<i32>()
            .unwrap()
    });
    let served = wait_for(Duration::from_secs(10), || {
        get(addr, "/").is_ok_and(|(code, _)| code == 200)
    });
    let log = std::fs::read_to_string(dir.join("err.log")).unwrap_or_default();
    if let Some(pid) = daemon {
        support::run::kill_supervisor(pid);
    }
    assert!(daemon.is_some(), "no pid file; log:\n{log}");
    assert!(served, "the command did not serve; log:\n{log}");
}

#[test]
fn a_child_that_wipes_its_slot_still_has_its_leftovers_killed() {
    // A cooperative child that writes zeros over its own record (pid included)
    // and exits, leaving a process behind in its group: the parent knows its
    // children from its forks, not from what they write.
    let dir = tempdir("run-wipe");
    let left = dir.join("left");
    let script = format!(
        "sleep 999 & echo $! >> {left}; \
         dd if=/dev/zero of=/proc/self/fd/$PREFORKD_SCOREBOARD_FD bs=64 seek=$((PREFORKD_SLOT + 1)) count=1 conv=notrunc 2>/dev/null; \
         sleep 0.2; exit 0",
        left = left.display()
    );
    let r = Run::start(
        "run-wipe",
        &[
            "--prefork",
            "1",
            "--busy-from",
            "slot",
            "--backoff-initial",
            "1s",
        ],
        &sh(&script).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let dead = |pid: i32| matches!(support::proc_state(pid), None | Some('Z'));
    assert!(wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&left).is_ok_and(|s| s.lines().count() >= 2)
    }));
    let pids: Vec<i32> = std::fs::read_to_string(&left)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    // The first child's leftover is gone once the next child has run.
    let gone = wait_for(Duration::from_secs(3), || dead(pids[0]));
    let log = r.log();
    drop(r);
    for &p in &pids {
        send_signal(p, libc::SIGKILL);
    }
    assert!(
        gone,
        "the leftover {} of a child that wiped its slot survived; log:\n{log}",
        pids[0]
    );
}

/// What preforkd tells a service manager on `NOTIFY_SOCKET` within `within`,
/// running `command` with `flags`.
fn notified(tag: &str, flags: &[&str], command: &[&str], within: Duration) -> String {
    let dir = tempdir(tag);
    let sock_path = dir.join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let port = support::run::free_port();
    let mut cmd = Command::new(preforkd());
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .args(["run", "--listen", &format!("tcp://127.0.0.1:{port}")])
        .args(flags)
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = support::spawn_retrying(&mut cmd).unwrap();
    let pid = child.id() as i32;
    let mut said = String::new();
    let until = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        if let Ok(n) = sock.recv(&mut buf) {
            said.push_str(&String::from_utf8_lossy(&buf[..n]));
            said.push('\n');
        }
    }
    support::run::kill_supervisor(pid);
    let _ = child.wait();
    said
}

#[test]
fn ready_is_told_once_the_command_is_up_never_for_one_that_fails_at_once() {
    // Up 0.3 s, then it fails: it never was ready, and neither is the service.
    let said = notified(
        "run-ready-fails",
        &["--prefork", "2"],
        &["sh", "-c", "sleep 0.3; exit 3"],
        Duration::from_millis(2_500),
    );
    assert!(!said.contains("READY=1"), "{said}");
    // A server that stays up: ready.
    let bin = server();
    let said = notified(
        "run-ready-ok",
        &["--prefork", "2"],
        &[bin.to_str().unwrap()],
        Duration::from_millis(2_500),
    );
    assert!(said.contains("READY=1"), "{said}");
}
