//! System tests of the logs: a really full disk (a small tmpfs) and rotation with
//! children running as `nobody` in a root-owned log directory. They need root
//! (`mount`, `--user`); run with `cargo test --features system-tests --test
//! system_logs`. A missing program fails the test, never skips it.
#![cfg(feature = "system-tests")]
// Real processes need real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use support::*;

/// A small tmpfs mounted on a fresh directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempdir("tmpfs");
        let out = Command::new(program("mount"))
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("preforkd-test")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount (needs root): {out:?}");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = program("umount");
        let ok = Command::new(&umount)
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a process not yet gone): detach it now, freed when unused.
            let _ = Command::new(&umount).arg("-l").arg(&self.0).status();
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Writes `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> usize {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = [b'x'; 4096];
    let mut n = 0;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "{e}"); // ENOSPC
                break;
            }
        }
    }
    n
}

#[test]
fn a_full_disk_for_both_logs_keeps_the_pool_serving_and_logging_resumes() {
    let fs = Tmpfs::mount("256k");
    let access = fs.0.join("access.log");
    let errors = fs.0.join("error.log");
    let mut d = Demo::start(&[
        "--prefork",
        "2",
        "--max-children",
        "4",
        "--access-log",
        access.to_str().unwrap(),
        "--error-log",
        errors.to_str().unwrap(),
    ]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 2));
    for k in 0..5 {
        assert_eq!(get(d.addr, &format!("/?id=before-{k}")).unwrap().0, 200);
    }
    let filler = fs.0.join("filler");
    assert!(fill(&filler) > 0);
    // A full disk: requests are served, the parent logs log reopens and a
    // scale-up (to a file it cannot write), a new child starts. (The logs' last
    // pages still have room for a few lines: 60 requests and 30 reopens, two
    // lines each, use it up.)
    for k in 0..60 {
        assert_eq!(get(d.addr, &format!("/?id=full-{k}")).unwrap().0, 200);
        match k {
            10..=39 => d.signal(10), // USR1
            40 => d.signal(21),      // TTIN
            _ => {}
        }
    }
    thread::sleep(Duration::from_millis(500));
    assert!(d.wait_exit(Duration::ZERO).is_none(), "the parent exited");
    assert!(d.children().len() >= 2, "{:?}", d.children());
    assert_eq!(get(d.addr, "/").unwrap().0, 200, "the port answers");
    // Told once per process and log (on stderr, or on the error log while its
    // last page still had room), not once per line.
    let log = d.log() + &std::fs::read_to_string(&errors).unwrap_or_default();
    let notices: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("No space left on device"))
        .collect();
    assert!(!notices.is_empty() && notices.len() <= 12, "{log}");
    assert!(!log.contains("panicked"), "{log}");
    // Space returns: the next lines are written again.
    std::fs::remove_file(&filler).unwrap();
    let after: Vec<String> = (0..20).map(|k| format!("/?id=after-{k}")).collect();
    for path in &after {
        assert_eq!(get(d.addr, path).unwrap().0, 200);
    }
    let resumed = wait_for(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&access).unwrap_or_default();
        after
            .iter()
            .all(|p| text.contains(&format!("GET {p} HTTP/1.1\" 200 6")))
    });
    assert!(
        resumed,
        "{}",
        std::fs::read_to_string(&access).unwrap_or_default()
    );
    // No line is glued to a fragment a full disk left.
    let text = std::fs::read_to_string(&access).unwrap();
    for line in text.lines().filter(|l| l.contains("id=after-")) {
        assert!(line.starts_with("127.0.0.1 - - ["), "{line:?}");
        assert_eq!(line.matches("127.0.0.1").count(), 1, "{line:?}");
    }
    // The error log says how much was lost once it could be written again: the
    // children's access lines, and (at its next record, a reopen) the parent's.
    // (The error log's last page may have held every line of the parent's, so its
    // recovery is asked for only if it did fail: its own notice, with its pid; a
    // child's failed error log recovers at that child's next record, which may
    // never come.)
    let error_log_failed = log.contains(&format!(
        "preforkd[{}]: error log {}: No space left on device",
        d.pid(),
        errors.display()
    ));
    d.signal(10);
    let said = wait_for(Duration::from_secs(5), || {
        let errs = std::fs::read_to_string(&errors).unwrap_or_default();
        errs.contains("access log")
            && errs.contains("lines dropped")
            && (!error_log_failed
                || errs.lines().any(|l| {
                    l.contains(&format!("error log {}: writable again", errors.display()))
                        && l.ends_with(&format!("pid: {}", d.pid()))
                }))
    });
    assert!(said, "{}", std::fs::read_to_string(&errors).unwrap());
    drop(d);
}

/// The demo with two children as `nobody`, logging (access.log, error.log) to a
/// fresh directory that is root's and not writable by them.
fn two_children_as_nobody(tag: &str) -> (PathBuf, Demo) {
    let dir = tempdir(tag);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Demo::start(&[
        "--prefork",
        "2",
        "--max-children",
        "4",
        "--user",
        "nobody",
        "--access-log",
        dir.join("access.log").to_str().unwrap(),
        "--error-log",
        dir.join("error.log").to_str().unwrap(),
    ]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 2));
    (dir, d)
}

#[test]
fn with_user_nobody_usr1_rotation_moves_every_child_to_the_new_files() {
    let (dir, d) = two_children_as_nobody("rotate-nobody");
    let (access, errors) = (dir.join("access.log"), dir.join("error.log"));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = id_load(d.addr, 4, &stop);
    for i in 1..=4 {
        thread::sleep(Duration::from_millis(200));
        std::fs::rename(&access, dir.join(format!("access.log.{i}"))).unwrap();
        std::fs::rename(&errors, dir.join(format!("error.log.{i}"))).unwrap();
        d.signal(10); // USR1
    }
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let sent: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&errors).is_ok_and(|t| t.contains("reopened"))
    }));
    // Every child has had its USR1 by now: what they log goes to the new files.
    thread::sleep(Duration::from_millis(300));
    let last: Vec<String> = (0..20).map(|k| format!("last-{k}")).collect();
    for id in &last {
        assert_eq!(get(d.addr, &format!("/?id={id}")).unwrap().0, 200);
    }
    let (files, seen) = logged_ids(&dir);
    assert_eq!(files, 5, "four rotated files and the current one");
    assert!(sent > 100, "only {sent} requests during the rotations");
    assert_eq!(seen.len(), sent + last.len(), "every request logged");
    assert!(
        seen.values().all(|&n| n == 1),
        "a request logged twice: {seen:?}"
    );
    let current = std::fs::read_to_string(&access).unwrap();
    for id in &last {
        assert!(
            current.contains(&format!("id={id} ")),
            "{id} is not in the new access log:\n{current}"
        );
    }
    // (Counted before /say, whose access lines carry no id.)
    let mut child_pids = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let (status, body) = get(d.addr, "/say").unwrap();
        assert_eq!(status, 200);
        child_pids.insert(body.trim().to_string());
    }
    // The children write the new error log too (their records name their pid).
    let errs = std::fs::read_to_string(&errors).unwrap();
    for pid in &child_pids {
        assert_ne!(pid, &d.pid().to_string());
        assert!(
            errs.contains(&format!("child {pid} says hello")),
            "child {pid} did not write the new error log:\n{errs}"
        );
    }
}

#[test]
fn with_user_nobody_no_child_is_forked_without_a_log_channel() {
    let (dir, d) = two_children_as_nobody("nochannel-nobody");
    let errors = dir.join("error.log");
    let parent = d.pid();
    // At its descriptor limit the parent cannot create a child's log channel.
    set_nofile(parent, lowest_free_fd(parent));
    d.signal(21); // TTIN
    thread::sleep(Duration::from_secs(1));
    let log = std::fs::read_to_string(&errors).unwrap_or_default();
    // Such a child, as nobody, could not reopen root's logs after a rotation: it
    // would write the rotated files for its whole life.
    assert_eq!(
        d.children().len(),
        2,
        "a child was forked without a channel:\n{log}"
    );
    assert!(log.contains("cannot create a log channel"), "{log}");
    assert_eq!(get(d.addr, "/").unwrap().0, 200, "the pool serves on");
    // With descriptors back, the fork goes ahead (after the backoff).
    set_nofile(parent, 1024);
    assert!(
        wait_for(Duration::from_secs(10), || d.children().len() == 3),
        "{}",
        std::fs::read_to_string(&errors).unwrap_or_default()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
