//! System tests of the supervisor under resource exhaustion: they run the demo as
//! `nobody` (root is exempt from RLIMIT_NPROC), so they need root. Run with
//! `cargo test --features system-tests --test system_machine`. A missing program
//! or privilege fails the test, never skips it.
#![cfg(feature = "system-tests")]
// Real processes need real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

/// Tasks (threads included) that RLIMIT_NPROC counts for uid 65534 right now, and
/// how many of them are zombies (still counted until reaped).
fn nobody_tasks() -> (usize, usize) {
    let (mut n, mut zombies) = (0, 0);
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let real_uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next().map(str::to_string));
        if real_uid.as_deref() == Some("65534") {
            n += std::fs::read_dir(format!("/proc/{pid}/task")).map_or(1, |d| d.count());
            if status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
            {
                zombies += 1;
            }
        }
    }
    (n, zombies)
}

/// Forks failing with EAGAIN (RLIMIT_NPROC reached): the parent logs the error once
/// per streak, backs off, and serves with the children it has; it never dies.
#[test]
fn forks_failing_with_eagain_leave_the_pool_serving_with_what_it_has() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs the demo as nobody: run it as root"
    );
    let (prlimit, setpriv) = (program("prlimit"), program("setpriv"));
    // Processes of nobody's that an earlier test killed may still be on their way
    // out, or zombies waiting for PID 1: they count against the limit until gone,
    // so count once none is left and the number held still for a second.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let mut settled = nobody_tasks();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = nobody_tasks();
        if (now == settled && now.1 == 0) || std::time::Instant::now() > until {
            break;
        }
        settled = now;
    }
    let settled = settled.0;
    // The parent is 3 tasks (main, signal and wake-up threads): room for 2 children.
    let limit = settled + 3 + 2;
    let mut cmd = Command::new(prlimit);
    cmd.arg(format!("--nproc={limit}:{limit}"))
        .arg(setpriv)
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(demo_binary());
    let demo = Demo::start_cmd(cmd, &["--prefork", "4", "--max-children", "8"]);
    assert!(
        wait_for(Duration::from_secs(10), || demo.children().len() == 2),
        "{:?}\n{}",
        demo.children(),
        demo.log()
    );
    // Load for a few seconds: the pool grows as far as forks let it, no further.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = counting_load(demo.addr, 3, "/", &stop);
    std::thread::sleep(Duration::from_secs(4));
    let (ok, failed) = stop_load(&stop, load);
    let log = demo.log();
    eprintln!(
        "answered {ok}, failed {failed}, children {:?}",
        demo.children()
    );
    assert!(alive(demo.pid()), "the parent died:\n{log}");
    assert_eq!(failed, 0, "{log}");
    assert!(ok > 100, "{ok} answered\n{log}");
    assert_eq!(demo.children().len(), 2, "{log}");
    assert!(zombies(demo.pid()).is_empty());
    // The error is named, once for the whole streak of failures.
    assert_eq!(demo.log_count("fork failed: EAGAIN"), 1, "{log}");
    assert_eq!(demo.log_count("fork for slot"), 1, "{log}");
    let (status, _) = get(demo.addr, "/").expect("still serving");
    assert_eq!(status, 200);
}
