//! Daemonizing the demo for real: Debian's start-stop-daemon starts and stops it,
//! start-up failures reach the launcher's stderr.
// Real processes need real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;
use support::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn start_stop_daemon_starts_and_stops_the_daemonized_demo_cleanly() {
    let dir = tempdir("ssd");
    let pid_file = dir.join("demo.pid");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let bin = demo_binary();
    let start = Command::new("start-stop-daemon")
        .args(["--start", "--pidfile"])
        .arg(&pid_file)
        .arg("--exec")
        .arg(&bin)
        .args([
            "--",
            "--daemonize",
            "--listen",
            &listen,
            "--prefork",
            "2",
            "--pid-file",
        ])
        .arg(&pid_file)
        .arg("--error-log")
        .arg(dir.join("error.log"))
        .arg("--access-log")
        .arg(dir.join("access.log"))
        .output()
        .expect("start-stop-daemon (Debian's dpkg) is installed");
    let _cleanup = KillOnDrop(pid_file.clone());
    assert!(start.status.success(), "{start:?}");
    // The launcher returned only once the daemon was up: it answers at once.
    let addr = listen.parse().unwrap();
    assert_eq!(get(addr, "/").unwrap(), (200, "hello\n".to_string()));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid));
    // (Ready is the first child serving; the second may still be forking.)
    assert!(
        wait_for(Duration::from_secs(5), || children_of(pid).len() == 2),
        "{:?}",
        children_of(pid)
    );
    let children = children_of(pid);
    // Detached: its own session, no terminal, in /.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(fields[4], "0", "no controlling terminal: {stat}");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        std::path::Path::new("/")
    );
    let stop = Command::new("start-stop-daemon")
        .args(["--stop", "--pidfile"])
        .arg(&pid_file)
        .args(["--retry", "TERM/10/KILL/5"])
        .output()
        .unwrap();
    assert!(stop.status.success(), "{stop:?}");
    assert!(!pid_file.exists(), "pid file left behind");
    assert!(!alive(pid));
    for c in children {
        assert!(!alive(c), "child {c} left behind");
    }
    let log = std::fs::read_to_string(dir.join("error.log")).unwrap();
    assert!(log.contains("all children reaped"), "{log}");
}

#[test]
fn a_bind_failure_makes_the_launcher_exit_non_zero_with_the_reason() {
    let dir = tempdir("bind");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let out = Command::new(demo_binary())
        .args(["--daemonize", "--listen", &listen, "--pid-file"])
        .arg(dir.join("demo.pid"))
        .arg("--error-log")
        .arg(dir.join("error.log"))
        .arg("--access-log")
        .arg(dir.join("access.log"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {listen}")), "{err}");
    // Nothing is left running and the pid file is gone.
    assert!(wait_for(Duration::from_secs(5), || !dir
        .join("demo.pid")
        .exists()));
}

#[test]
fn daemonizing_without_the_paths_is_a_configuration_error() {
    let out = Command::new(demo_binary())
        .args(["--daemonize", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing: error_log_path, access_log_path, pid_path"),
        "{err}"
    );
}

#[test]
fn a_socket_passed_by_the_service_manager_is_served() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();
    let bin = demo_binary();
    let mut cmd = Command::new("sh");
    // LISTEN_PID must be the demo's pid: `exec` keeps the shell's.
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec "$0" --listen 192.0.2.1:9 --prefork 1"#)
        .arg(&bin)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
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
    let mut child = cmd.spawn().unwrap();
    // The --listen address is not on this machine (binding it would fail): only
    // the passed socket can be what answers.
    let ok = wait_for(
        Duration::from_secs(10),
        || matches!(get(addr, "/"), Ok((200, ref b)) if b == "hello\n"),
    );
    send_signal(-(child.id() as i32), 9);
    let _ = child.wait();
    assert!(ok, "the activated socket was not served");
}

fn daemon_args(dir: &std::path::Path, listen: &str) -> Vec<String> {
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    vec![
        "--daemonize".into(),
        "--listen".into(),
        listen.into(),
        "--prefork".into(),
        "1".into(),
        "--pid-file".into(),
        p("demo.pid"),
        "--error-log".into(),
        p("error.log"),
        "--access-log".into(),
        p("access.log"),
    ]
}

/// Stops the daemon named by the pid file, if any; waits until it is gone.
/// KILLs, when dropped, the daemon a pid file names and its children if they
/// still run: a failed assertion must not leave a daemon behind.
struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(&self.0) else {
            return;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            return;
        };
        if alive(pid) {
            for c in children_of(pid) {
                send_signal(c, 9);
            }
            send_signal(pid, 9);
        }
    }
}

fn stop(pid_file: &std::path::Path) {
    if let Ok(pid) = std::fs::read_to_string(pid_file) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            send_signal(pid, 15);
            assert!(wait_for(Duration::from_secs(10), || !alive(pid)));
        }
    }
}

#[test]
fn ten_simultaneous_starts_yield_exactly_one_daemon() {
    let dir = tempdir("ten");
    let starts: Vec<_> = (0..10)
        .map(|_| {
            Command::new(demo_binary())
                .args(daemon_args(&dir, &format!("127.0.0.1:{}", free_port())))
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outcomes: Vec<_> = starts
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let _cleanup = KillOnDrop(dir.join("demo.pid"));
    let winners = outcomes.iter().filter(|o| o.status.success()).count();
    let pid = std::fs::read_to_string(dir.join("demo.pid")).unwrap();
    stop(&dir.join("demo.pid"));
    assert_eq!(winners, 1, "{outcomes:?}");
    for o in outcomes.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("already running (pid {})", pid.trim())),
            "{err}"
        );
    }
}

#[test]
fn a_stale_pid_file_is_recovered_and_a_symlinked_one_refused() {
    let dir = tempdir("stale");
    // A pid that cannot be running (beyond pid_max), and no lock.
    std::fs::write(dir.join("demo.pid"), "999999999\n").unwrap();
    let out = Command::new(demo_binary())
        .args(daemon_args(&dir, &format!("127.0.0.1:{}", free_port())))
        .output()
        .unwrap();
    let cleanup = KillOnDrop(dir.join("demo.pid"));
    assert!(out.status.success(), "{out:?}");
    let pid = std::fs::read_to_string(dir.join("demo.pid")).unwrap();
    assert_ne!(pid.trim(), "999999999");
    stop(&dir.join("demo.pid"));
    drop(cleanup);

    let dir = tempdir("symlink");
    let target = dir.join("elsewhere");
    std::fs::write(&target, "precious\n").unwrap();
    std::os::unix::fs::symlink(&target, dir.join("demo.pid")).unwrap();
    let out = Command::new(demo_binary())
        .args(daemon_args(&dir, &format!("127.0.0.1:{}", free_port())))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a symlink"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
}

#[test]
fn bad_configuration_gets_one_clear_error_each_and_exit_78() {
    let dir = tempdir("config");
    let run = |args: &[&str]| {
        let out = Command::new(demo_binary())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let unwritable = "/proc/preforkd-no-such-dir/error.log";
    for (args, needle) in [
        (
            vec!["--prefork", "10", "--max-children", "5"],
            "prefork (10) exceeds max_children (5)",
        ),
        (vec!["--max-children", "0"], "max_children"),
        (
            vec!["--daemonize"],
            "option daemonize: needs error_log_path, access_log_path and pid_path; missing: error_log_path, access_log_path, pid_path",
        ),
        (
            vec!["--error-log", unwritable],
            "option error_log_path: cannot open the log",
        ),

        (
            vec!["--prefork", "many"],
            "--prefork: \"many\" is not a number",
        ),
    ] {
        let (code, err) = run(&args);
        assert_eq!(code, Some(78), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one error, got {err}");
    }
    drop(dir);
}
