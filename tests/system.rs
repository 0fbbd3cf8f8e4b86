//! System tests: the demo with programs a fresh machine lacks. Run with
//! `cargo test --features system-tests --test system`; `.ci/run` installs what they
//! need. A missing program fails the test, never skips it.
#![cfg(feature = "system-tests")]
// Real processes need real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::thread;
use std::time::Duration;
use support::*;

#[test]
fn logrotate_with_a_usr1_postrotate_loses_no_access_log_line() {
    let logrotate = program("logrotate");
    let dir = tempdir("logrotate");
    let access = dir.join("access.log");
    let errors = dir.join("error.log");
    let pid_file = dir.join("demo.pid");
    let d = Demo::start(&[
        "--prefork",
        "2",
        "--max-children",
        "4",
        "--access-log",
        access.to_str().unwrap(),
        "--error-log",
        errors.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 2));
    let conf = dir.join("logrotate.conf");
    std::fs::write(
        &conf,
        format!(
            "{dir}/access.log {dir}/error.log {{\n  rotate 20\n  missingok\n  nocompress\n  \
             sharedscripts\n  postrotate\n    kill -USR1 $(cat {pid})\n  endscript\n}}\n",
            dir = dir.display(),
            pid = pid_file.display()
        ),
    )
    .unwrap();
    let addr = d.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = id_load(addr, 4, &stop);
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(200));
        let out = Command::new(&logrotate)
            .arg("--force")
            .arg("--state")
            .arg(dir.join("state"))
            .arg(&conf)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    // The daemon has reopened after the last rotation (it logs that it did).
    assert!(wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&errors).is_ok_and(|t| t.contains("reopened"))
    }));
    let (_, seen) = logged_ids(&dir);
    assert!(sent > 100, "only {sent} requests");
    assert_eq!(seen.len(), sent, "every request logged");
    assert!(seen.values().all(|&n| n == 1), "a request logged twice");
    assert!(
        dir.join("access.log.3").exists(),
        "three rotations happened"
    );
}

#[test]
fn as_pid_1_it_reaps_re_parented_grandchildren() {
    // The subshell's `sleep` is orphaned and re-parented to the demo; when it
    // exits, only the demo can reap it.
    pid_1_reaps(r#"(sleep 0.5 &); exec "$0" --listen 127.0.0.1:0 --prefork 1"#);
}

#[test]
fn as_pid_1_it_reaps_an_orphan_that_died_before_it_started() {
    // This one dies before the demo has its handlers: its SIGCHLD went to
    // nobody, and no other child exits to make the demo look.
    pid_1_reaps(r#"(sleep 0 &); exec "$0" --listen 127.0.0.1:0 --prefork 1"#);
}

/// Runs `script` (the demo as `$0`) as PID 1 of a new pid namespace and checks
/// that the `sleep` it leaves the demo is reaped.
fn pid_1_reaps(script: &str) {
    let unshare = program("unshare");
    let bin = demo_binary();
    let mut ns = Command::new(unshare)
        .args(["--pid", "--fork", "--kill-child", "sh", "-c", script])
        .arg(&bin)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("unshare (util-linux) runs as root");
    let unshare_pid = ns.id() as i32;
    // The demo is unshare's child (host pids); the sleep becomes the demo's child
    // (a zombie already, maybe).
    let is_sleep = |c: &i32| {
        std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == "sleep")
    };
    let mut demo = None;
    let mut sleeper = None;
    let found = wait_for(Duration::from_secs(5), || {
        demo = children_of(unshare_pid).first().copied();
        // The demo itself, once it has exec'd (not the shell before it).
        let is_demo = demo.is_some_and(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|n| n.trim() != "sh")
        });
        sleeper = demo.and_then(|p| children_of(p).into_iter().find(is_sleep));
        is_demo && sleeper.is_some()
    });
    let reaped =
        sleeper.is_some_and(|s| wait_for(Duration::from_secs(5), || proc_state(s).is_none()));
    send_signal(-unshare_pid, 9);
    let _ = ns.wait();
    assert!(found, "the orphaned sleep was not re-parented to the demo");
    assert!(reaped, "the re-parented grandchild was left a zombie");
}
