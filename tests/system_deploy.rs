//! Deploying under load, measured by wrk (Debian's `wrk`, installed by `.ci/run`):
//! rolling restarts (HUP) and in-place upgrades (USR2) while wrk opens a new
//! connection per request. Run with `cargo test --features system-tests --test
//! system_deploy`. A missing wrk fails the test, never skips it.
#![cfg(feature = "system-tests")]
// Real processes need real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

/// What wrk says of errors: (socket errors of all kinds, non-2xx/3xx responses,
/// requests done).
fn wrk_errors(out: &str) -> (u64, u64, u64) {
    let num = |s: &str| s.trim().trim_end_matches(',').parse::<u64>().unwrap_or(0);
    let mut socket = 0;
    let mut non2xx = 0;
    let mut done = 0;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            socket = rest
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1))
                .map(num)
                .sum();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non2xx = num(rest);
        } else if line.contains(" requests in ") {
            done = num(line.split_whitespace().next().unwrap_or("0"));
        }
    }
    (socket, non2xx, done)
}

/// wrk against `addr` for `secs`, a new connection per request, 8 connections;
/// started now, its output once it ends.
fn wrk(addr: std::net::SocketAddr, secs: u64) -> std::process::Child {
    Command::new(program("wrk"))
        .args([
            "-t2",
            "-c8",
            &format!("-d{secs}s"),
            "-H",
            "Connection: close",
        ])
        .arg(format!("http://{addr}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wrk")
}

fn finish(w: std::process::Child) -> String {
    let out = w.wait_with_output().expect("wrk ran");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rebuild(exe: &Path, tag: &str) {
    use std::os::unix::fs::PermissionsExt;
    let mut bytes = std::fs::read(demo_binary()).unwrap();
    bytes.extend_from_slice(tag.as_bytes());
    let tmp = exe.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, exe).unwrap();
}

#[test]
fn eight_hups_under_wrk_lose_nothing() {
    let demo = Demo::start(&["--prefork", "4", "--max-children", "32"]);
    let w = wrk(demo.addr, 11);
    std::thread::sleep(Duration::from_millis(1_500));
    for _ in 0..8 {
        demo.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_secs(1));
    }
    let out = finish(w);
    let (socket, non2xx, done) = wrk_errors(&out);
    eprintln!("wrk: {done} requests, {socket} socket errors, {non2xx} non-2xx");
    assert!(done > 1_000, "wrk did too little: {out}");
    assert_eq!((socket, non2xx), (0, 0), "{out}\n{}", demo.log());
    assert_eq!(demo.log_count("reloading: rolling"), 8, "{}", demo.log());
}

#[test]
fn three_upgrades_under_wrk_lose_nothing_and_keep_the_pid() {
    let dir = tempdir("deploy-upgrade");
    let exe = dir.join("demo");
    std::fs::copy(demo_binary(), &exe).unwrap();
    let mut cmd = Command::new(&exe);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--prefork",
        "4",
        "--max-children",
        "32",
    ]);
    let demo = Demo::start_command(cmd);
    let pid = demo.pid();
    assert!(wait_for(Duration::from_secs(10), || demo.children().len() == 4));
    let version = || get(demo.addr, "/version").unwrap().1;
    let mut versions = vec![version()];
    let w = wrk(demo.addr, 9);
    std::thread::sleep(Duration::from_millis(1_500));
    let mut seen: BTreeSet<i32> = demo.children().into_iter().collect();
    for round in 0..3 {
        let old: BTreeSet<i32> = demo.children().into_iter().collect();
        seen.extend(&old);
        rebuild(&exe, &format!("wrk build {round}"));
        demo.signal(libc::SIGUSR2);
        assert!(
            wait_for(Duration::from_secs(10), || {
                let now: BTreeSet<i32> = demo.children().into_iter().collect();
                !now.is_empty() && now.is_disjoint(&old)
            }),
            "{}",
            demo.log()
        );
        // The new build answers.
        versions.push(version());
        std::thread::sleep(Duration::from_millis(1_000));
    }
    let out = finish(w);
    let distinct: BTreeSet<&String> = versions.iter().collect();
    assert_eq!(distinct.len(), 4, "a build answered twice: {versions:?}");
    let (socket, non2xx, done) = wrk_errors(&out);
    eprintln!("wrk: {done} requests, {socket} socket errors, {non2xx} non-2xx");
    assert!(done > 1_000, "wrk did too little: {out}");
    assert_eq!((socket, non2xx), (0, 0), "{out}\n{}", demo.log());
    assert!(alive(pid));
    assert_eq!(demo.log_count("upgraded in place"), 3, "{}", demo.log());
    // Every child of before the last upgrade is gone; the new file runs.
    let now: BTreeSet<i32> = demo.children().into_iter().collect();
    assert!(
        now.is_disjoint(&seen),
        "old children left: {now:?} {seen:?}"
    );
    let image = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(image, exe);
}
