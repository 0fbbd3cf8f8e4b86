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

fn tempdir(tag: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("preforkd-daemon-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
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
    let children = children_of(pid);
    assert_eq!(children.len(), 2, "{children:?}");
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
