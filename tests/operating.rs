//! `preforkd status` and the control subcommands on the demo, with real
//! processes and real signals: what they show is what /proc shows, and each
//! one waits for its outcome or says why it did not come.
// Real processes need real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use support::*;

fn preforkd(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_preforkd"))
        .args(args)
        .output()
        .expect("run preforkd");
    out
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> serde_json::Value {
    assert_eq!(o.status.code(), Some(0), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The demo with a pid file (and `extra`), its pool of `prefork` up.
fn start(dir: &Path, prefork: usize, extra: &[&str]) -> (Demo, PathBuf) {
    let pid_file = dir.join("demo.pid");
    let n = prefork.to_string();
    let mut args = vec!["--pid-file", s(&pid_file), "--prefork", &n];
    args.extend_from_slice(extra);
    let demo = Demo::start(&args);
    assert!(
        wait_for(Duration::from_secs(10), || demo.children().len() == prefork),
        "{}",
        demo.log()
    );
    (demo, pid_file)
}

fn status_of(pid_file: &Path) -> serde_json::Value {
    json(&preforkd(&["status", "--pid-file", s(pid_file), "--json"]))
}

fn live(st: &serde_json::Value) -> usize {
    let c = &st["counts"];
    (c["starting"].as_u64().unwrap() + c["idle"].as_u64().unwrap() + c["busy"].as_u64().unwrap())
        as usize
}

fn rss(pid: i32) -> u64 {
    rss_kib(pid) * 1024
}

#[test]
fn status_json_matches_the_processes() {
    let dir = tempdir("status");
    let board = dir.join("board");
    let (demo, pid_file) = start(&dir, 3, &["--max-children", "8", "--scoreboard", s(&board)]);
    let _a = sleeper(demo.addr, 4_000);
    let _b = sleeper(demo.addr, 4_000);
    let mut st = serde_json::Value::Null;
    assert!(
        wait_for(Duration::from_secs(5), || {
            st = json(&preforkd(&["status", "--scoreboard", s(&board), "--json"]));
            st["counts"]["busy"] == 2
        }),
        "{st:#}"
    );
    assert_eq!(st["schema"], 1);
    assert_eq!(st["parent_pid"], demo.pid());
    assert_eq!(st["parent_running"], true);
    assert_eq!(st["slots"], 8);
    let map = st["map"].as_str().unwrap();
    assert_eq!(map.len(), 8);
    assert_eq!(map.matches('W').count(), 2, "{map}");
    // The children it names are the parent's children in /proc, with their
    // memory as /proc tells it.
    let named: BTreeSet<i32> = st["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["pid"].as_i64().unwrap() as i32)
        .collect();
    let procs: BTreeSet<i32> = demo.children().into_iter().collect();
    assert_eq!(named, procs, "{st:#}");
    for c in st["children"].as_array().unwrap() {
        let pid = c["pid"].as_i64().unwrap() as i32;
        let mem = c["memory_bytes"].as_u64().unwrap();
        let now = rss(pid);
        assert!(
            mem.abs_diff(now) < now / 4,
            "child {pid}: {mem} bytes said, {now} in /proc"
        );
        assert_eq!(c["generation"], 1);
        if c["state"] == "busy" {
            assert!(c["request_age_ms"].as_u64().unwrap() < 5_000, "{c}");
        } else {
            assert!(c["request_age_ms"].is_null(), "{c}");
        }
    }
    // Found from the pid file alone: the same pool.
    let by_pid = status_of(&pid_file);
    assert_eq!(by_pid["parent_pid"], demo.pid());
    assert_eq!(by_pid["slots"], 8);
    // The table shows the map and the children.
    let table = preforkd(&["status", "--pid-file", s(&pid_file)]);
    let t = String::from_utf8_lossy(&table.stdout).to_string();
    assert_eq!(table.status.code(), Some(0), "{}", text(&table));
    assert!(t.contains(map), "{t}");
    assert!(t.contains("2 busy"), "{t}");
    for pid in &procs {
        assert!(t.contains(&format!(" {pid} ")), "{pid} missing: {t}");
    }
    // Once the parent is gone, its file is stale: told, exit 3.
    drop(demo);
    let o = preforkd(&["status", "--scoreboard", s(&board)]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("NOT RUNNING"), "{}", text(&o));
    let o = preforkd(&["status", "--pid-file", s(&pid_file)]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("not running"), "{}", text(&o));
}

#[test]
fn status_refuses_corrupt_truncated_and_foreign_files() {
    let dir = tempdir("status-bad");
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("empty", vec![], "truncated: 0 bytes"),
        (
            "foreign",
            b"#!/bin/sh\necho hi\n".repeat(8),
            "not a preforkd scoreboard",
        ),
        (
            "short",
            {
                let mut b = vec![0u8; 64 * 3];
                b[..8].copy_from_slice(b"PREFORKD");
                b[8..12].copy_from_slice(&1u32.to_ne_bytes());
                b[12..16].copy_from_slice(&10u32.to_ne_bytes());
                b
            },
            "192 bytes where 10 slots take 704",
        ),
        (
            "state",
            {
                let mut b = vec![0u8; 64 * 2];
                b[..8].copy_from_slice(b"PREFORKD");
                b[8..12].copy_from_slice(&1u32.to_ne_bytes());
                b[12..16].copy_from_slice(&1u32.to_ne_bytes());
                b[44..48].copy_from_slice(&1i32.to_ne_bytes());
                b[64 + 4] = 200;
                b
            },
            "slot 0 has state 200",
        ),
    ];
    for (name, bytes, says) in cases {
        let f = dir.join(name);
        std::fs::write(&f, bytes).unwrap();
        for json in [false, true] {
            let mut args = vec!["status", "--scoreboard", s(&f)];
            if json {
                args.push("--json");
            }
            let o = preforkd(&args);
            assert_eq!(o.status.code(), Some(1), "{name}: {}", text(&o));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains(says) && err.contains(s(&f)),
                "{name}: {}",
                text(&o)
            );
            assert!(!err.contains("panicked"), "{name}: {}", text(&o));
        }
    }
    let o = preforkd(&["status", "--scoreboard", s(&dir)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not a regular file"), "{}", text(&o));
    // Neither or both of --scoreboard and --pid-file: a usage error.
    assert_eq!(preforkd(&["status"]).status.code(), Some(64));
    let both = preforkd(&["status", "--scoreboard", "a", "--pid-file", "b"]);
    assert_eq!(both.status.code(), Some(64), "{}", text(&both));
}

#[test]
fn stop_waits_until_gone_and_says_when_not_running() {
    let dir = tempdir("stop");
    let (mut demo, pid_file) = start(&dir, 2, &[]);
    let o = preforkd(&["stop", "--pid-file", s(&pid_file), "--timeout", "20"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("stopped (pid {})", demo.pid())),
        "{}",
        text(&o)
    );
    // It returned once the daemon was gone: no waiting left.
    assert_eq!(
        demo.wait_exit(Duration::from_secs(2)),
        Some(0),
        "{}",
        demo.log()
    );
    let o = preforkd(&["stop", "--pid-file", s(&pid_file)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not running"), "{}", text(&o));
}

#[test]
fn only_a_preforkd_parent_and_its_own_scoreboard_are_acted_on() {
    let dir = tempdir("stop-other");
    // A pid file locked by some process (flock), naming an unrelated one.
    let mut victim = Command::new("sleep").arg("30").spawn().unwrap();
    let pid_file = dir.join("other.pid");
    std::fs::write(&pid_file, format!("{}\n", victim.id())).unwrap();
    let mut holder = Command::new("flock")
        .arg(&pid_file)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(5), || {
        pidfile_locked(&pid_file)
    }));
    for sub in ["stop", "reload", "upgrade", "reopen-logs"] {
        let o = preforkd(&[sub, "--pid-file", s(&pid_file), "--timeout", "1"]);
        assert_eq!(o.status.code(), Some(1), "{sub}: {}", text(&o));
        assert!(
            text(&o).contains("holds no preforkd scoreboard"),
            "{sub}: {}",
            text(&o)
        );
    }
    assert!(
        victim.try_wait().unwrap().is_none(),
        "the unrelated process was signalled"
    );
    let _ = victim.kill();
    let _ = victim.wait();
    let _ = holder.kill();
    let _ = holder.wait();
    // Another pool's scoreboard given for this daemon: refused before any signal.
    let (demo, pid_file) = start(&dir, 1, &[]);
    let (other, _) = start(
        &tempdir("stop-other-2"),
        1,
        &["--scoreboard", s(&dir.join("b2"))],
    );
    let o = preforkd(&[
        "reload",
        "--pid-file",
        s(&pid_file),
        "--scoreboard",
        s(&dir.join("b2")),
        "--timeout",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("is pid {}'s", other.pid())),
        "{}",
        text(&o)
    );
    assert_eq!(
        status_of(&pid_file)["generation"],
        1,
        "the daemon was signalled"
    );
    drop(demo);
}

/// Whether someone holds a lock on `path` (a shared lock cannot be taken).
fn pidfile_locked(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    #[allow(deprecated)]
    let r = nix::fcntl::flock(f.as_raw_fd(), nix::fcntl::FlockArg::LockSharedNonblock);
    r.is_err()
}

#[test]
fn stop_says_when_the_daemon_is_still_draining_at_the_timeout() {
    let dir = tempdir("stop-slow");
    let (mut demo, pid_file) = start(&dir, 1, &["--graceful-timeout", "20"]);
    let _busy = sleeper(demo.addr, 3_000);
    assert!(wait_for(Duration::from_secs(5), || status_of(&pid_file)
        ["counts"]["busy"]
        == 1));
    let o = preforkd(&["stop", "--pid-file", s(&pid_file), "--timeout", "0.5"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("still running"), "{}", text(&o));
    // Nothing was escalated: the request finishes and the daemon stops itself.
    assert_eq!(
        demo.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        demo.log()
    );
}

#[test]
fn reload_waits_for_the_new_generation_and_says_when_it_cannot_serve() {
    let dir = tempdir("reload");
    let crash = dir.join("crash");
    let (demo, pid_file) = start(&dir, 2, &["--crash-at-start", s(&crash)]);
    let before: BTreeSet<i32> = demo.children().into_iter().collect();
    let o = preforkd(&["reload", "--pid-file", s(&pid_file), "--timeout", "20"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("generation 2 serving"), "{}", text(&o));
    let st = status_of(&pid_file);
    assert_eq!(st["generation"], 2);
    for c in st["children"].as_array().unwrap() {
        if c["state"] != "retiring" {
            assert_eq!(c["generation"], 2, "{st:#}");
            assert!(
                !before.contains(&(c["pid"].as_i64().unwrap() as i32)),
                "{st:#}"
            );
        }
    }
    // New children that crash at start: the reload is reported as not done.
    std::fs::write(&crash, "").unwrap();
    let o = preforkd(&["reload", "--pid-file", s(&pid_file), "--timeout", "2"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("generation 3") && t.contains("of an older generation"),
        "{t}"
    );
    // Meanwhile generation 2 serves on, every child of it: none was retired for
    // a new child that only said it was ready.
    let st = status_of(&pid_file);
    let serving: BTreeSet<i64> = st["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["generation"] == 2 && c["state"] != "retiring")
        .map(|c| c["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(serving.len(), 2, "{st:#}\n{}", demo.log());
    for _ in 0..5 {
        assert_eq!(get(demo.addr, "/").unwrap().0, 200, "{}", demo.log());
    }
    // The fix lands: another HUP, and generation 4 takes over.
    std::fs::remove_file(&crash).unwrap();
    let o = preforkd(&["reload", "--pid-file", s(&pid_file), "--timeout", "20"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", text(&o), demo.log());
    assert!(text(&o).contains("generation 4 serving"), "{}", text(&o));
    drop(demo);
}

#[test]
fn upgrade_waits_for_the_new_image_and_fails_at_once_when_abandoned() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("upgrade-ctl");
    let exe = dir.join("demo");
    std::fs::copy(demo_binary(), &exe).unwrap();
    let pid_file = dir.join("demo.pid");
    let mut cmd = Command::new(&exe);
    // Its children prove healthy by serving a request (not by time): the
    // refusal below does not race the clock, and the rollover waits for traffic.
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--prefork",
        "2",
        "--pid-file",
        s(&pid_file),
    ])
    .args(["--min-healthy-uptime", "1h"]);
    let demo = Demo::start_command(cmd);
    assert!(wait_for(Duration::from_secs(10), || demo.children().len() == 2));
    let replace = |bytes: &[u8]| {
        let tmp = dir.join("demo.new");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &exe).unwrap();
    };
    let mut rebuilt = std::fs::read(demo_binary()).unwrap();
    rebuilt.extend_from_slice(b"rebuilt");
    replace(&rebuilt);
    // The new image takes over, but with no traffic its children prove nothing:
    // the old ones serve on, and the upgrade is reported as not done yet.
    let o = preforkd(&["upgrade", "--pid-file", s(&pid_file), "--timeout", "5"]);
    assert_eq!(o.status.code(), Some(1), "{}\n{}", text(&o), demo.log());
    assert!(
        text(&o).contains("generation 2") && text(&o).contains("of an older generation"),
        "{}",
        text(&o)
    );
    // The same pid runs the new file (the old one is deleted, not the new).
    let image = std::fs::read_link(format!("/proc/{}/exe", demo.pid())).unwrap();
    assert!(!image.to_string_lossy().contains("(deleted)"), "{image:?}");
    assert!(demo.log().contains("upgraded in place"), "{}", demo.log());
    // Again, not proven yet: refused, said at once.
    let o = preforkd(&["upgrade", "--pid-file", s(&pid_file), "--timeout", "120"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("abandoned or refused"), "{}", text(&o));
    // Traffic: new children serve, prove the image, and the rollover ends. (One
    // request at a time goes to the child that served last: four at once reach
    // every child.)
    let addr = demo.addr;
    assert!(
        wait_for(Duration::from_secs(20), || {
            let clients: Vec<_> = (0..4)
                .map(|_| std::thread::spawn(move || get(addr, "/sleep?ms=300")))
                .collect();
            for c in clients {
                assert_eq!(c.join().unwrap().unwrap().0, 200);
            }
            demo.log().contains("upgrade proven")
        }),
        "{}",
        demo.log()
    );
    assert!(
        wait_for(Duration::from_secs(20), || status_of(&pid_file)["children"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "retiring" || c["generation"] == 2)),
        "{}",
        demo.log()
    );
    // A new file that cannot start: said at once, not at the timeout.
    replace(b"#!/bin/sh\nexit 3\n");
    let o = preforkd(&["upgrade", "--pid-file", s(&pid_file), "--timeout", "120"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("upgrade abandoned"), "{}", text(&o));
    assert_eq!(get(demo.addr, "/").unwrap().0, 200);
}

#[test]
fn reopen_logs_waits_and_says_when_a_log_cannot_be_reopened() {
    let dir = tempdir("reopen");
    let log = dir.join("error.log");
    let (demo, pid_file) = start(&dir, 1, &["--error-log", s(&log)]);
    std::fs::rename(&log, dir.join("error.log.1")).unwrap();
    let o = preforkd(&["reopen-logs", "--pid-file", s(&pid_file), "--timeout", "10"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("logs reopened"), "{}", text(&o));
    // Done when it returned: the new file is there already.
    assert!(log.exists());
    // A directory where the log goes: it cannot be reopened, and that is said.
    std::fs::rename(&log, dir.join("error.log.2")).unwrap();
    std::fs::create_dir(&log).unwrap();
    let o = preforkd(&["reopen-logs", "--pid-file", s(&pid_file), "--timeout", "10"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("could not be reopened"), "{}", text(&o));
    assert_eq!(get(demo.addr, "/").unwrap().0, 200);
}

#[test]
fn scale_moves_the_pool_and_says_when_it_cannot() {
    let dir = tempdir("scale");
    let (demo, pid_file) = start(&dir, 2, &["--max-children", "4"]);
    let o = preforkd(&["scale", "+2", "--pid-file", s(&pid_file), "--timeout", "10"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(live(&status_of(&pid_file)), 4);
    assert_eq!(demo.children().len(), 4);
    // Beyond max_children: refused at once, naming it.
    let o = preforkd(&["scale", "+1", "--pid-file", s(&pid_file), "--timeout", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("holds 4 live children of max_children 4: at most +0"),
        "{}",
        text(&o)
    );
    let o = preforkd(&["scale", "-3", "--pid-file", s(&pid_file), "--timeout", "10"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(live(&status_of(&pid_file)), 1);
    // More than max_children leaves room for, or fewer than one: refused at once.
    let o = preforkd(&["scale", "+9", "--pid-file", s(&pid_file), "--timeout", "60"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("max_children 4: at most +3"),
        "{}",
        text(&o)
    );
    let o = preforkd(&["scale", "-1", "--pid-file", s(&pid_file), "--timeout", "60"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("keeps one at least"), "{}", text(&o));
    // Two controllers at once take turns: both moves happen, both are told.
    let a = std::thread::spawn({
        let p = pid_file.clone();
        move || preforkd(&["scale", "+1", "--pid-file", s(&p), "--timeout", "20"])
    });
    let b = preforkd(&["scale", "+1", "--pid-file", s(&pid_file), "--timeout", "20"]);
    let a = a.join().unwrap();
    assert_eq!(a.status.code(), Some(0), "{}", text(&a));
    assert_eq!(b.status.code(), Some(0), "{}", text(&b));
    assert_eq!(live(&status_of(&pid_file)), 3);
    for bad in ["many", "+", "99999999999"] {
        let o = preforkd(&["scale", bad, "--pid-file", s(&pid_file)]);
        assert_eq!(o.status.code(), Some(64), "{bad}: {}", text(&o));
    }
    let o = preforkd(&["reload", "--pid-file", s(&pid_file), "--timeout", "0"]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
}

#[test]
fn status_watch_redraws_in_place_until_stopped() {
    use std::io::Read;
    let dir = tempdir("watch");
    let (demo, pid_file) = start(&dir, 2, &[]);
    let mut watch = Command::new(env!("CARGO_BIN_EXE_preforkd"))
        .args(["status", "--pid-file", s(&pid_file), "--watch", "0.1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut all = Vec::new();
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let _ = tx.send(all.clone());
        }
    });
    let mut seen = Vec::new();
    let frames = |b: &[u8]| String::from_utf8_lossy(b).matches("\x1b[H\x1b[2J").count();
    assert!(
        wait_for(Duration::from_secs(10), || {
            while let Ok(b) = rx.try_recv() {
                seen = b;
            }
            frames(&seen) >= 3
        }),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    // Each frame is the whole table.
    let last = String::from_utf8_lossy(&seen);
    let last = last
        .rsplit("\x1b[H\x1b[2J")
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        last.contains(&format!("preforkd pid {}", demo.pid())),
        "{last}"
    );
    let _ = watch.kill();
    let _ = watch.wait();
}
