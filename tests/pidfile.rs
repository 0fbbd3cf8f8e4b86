//! The pid file with real processes: the test binary re-executes itself as the
//! holder (the `helper` test, selected by an environment variable), so the lock is
//! contended, checked and killed across processes.
// Real processes need real time: bounded waits and sleeps are the point here.
#![allow(clippy::disallowed_methods)]

use preforkd::runtime::pidfile::{is_running, kill_running, KillOutcome, PidFile, PidFileError};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const MODE: &str = "PREFORKD_PIDFILE_HELPER";
const PATH: &str = "PREFORKD_PIDFILE_PATH";
const HOLD_MS: &str = "PREFORKD_PIDFILE_HOLD_MS";
const GO: &str = "PREFORKD_PIDFILE_GO";

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

/// Not a test: the body of the helper processes (does nothing unless `MODE` is set).
///
/// Modes: `hold` (acquire, print "won"/"lost: ...", hold for `HOLD_MS`, drop),
/// `hold-ignore-term` (the same, deaf to SIGTERM), `sleep` (touch nothing, sleep),
/// `check-as-nobody` (become uid 65534, print what `is_running` says).
#[test]
fn helper() {
    let Ok(mode) = std::env::var(MODE) else {
        return;
    };
    let path = PathBuf::from(std::env::var(PATH).expect("path"));
    let hold = Duration::from_millis(
        std::env::var(HOLD_MS)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10_000),
    );
    if let Ok(go) = std::env::var(GO) {
        // All contenders start together: wait for the go file (bounded).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Path::new(&go).exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
    }
    match mode.as_str() {
        "hold" | "hold-ignore-term" => {
            if mode == "hold-ignore-term" {
                let flag = Arc::new(AtomicBool::new(false));
                signal_hook::flag::register(signal_hook::consts::SIGTERM, flag).expect("handler");
            }
            match PidFile::acquire(&path) {
                Ok(pid_file) => {
                    say(&format!("won {}", std::process::id()));
                    thread::sleep(hold);
                    drop(pid_file);
                }
                Err(e) => say(&format!("lost: {e}")),
            }
        }
        "churn" => {
            // Acquire and release over and over; while holding, own a marker file
            // created exclusively: two holders at once would collide on it.
            let marker = path.with_extension("inside");
            let deadline = Instant::now() + hold;
            let (mut wins, mut overlaps) = (0, 0);
            while Instant::now() < deadline {
                if let Ok(pid_file) = PidFile::acquire(&path) {
                    match std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&marker)
                    {
                        Ok(_) => {
                            thread::sleep(Duration::from_micros(200));
                            std::fs::remove_file(&marker).expect("remove marker");
                            wins += 1;
                        }
                        Err(_) => overlaps += 1,
                    }
                    pid_file.release().expect("release");
                }
            }
            say(&format!("churned {wins} {overlaps}"));
        }
        "sleep" => {
            say("sleeping");
            thread::sleep(hold);
        }
        "check-as-nobody" => {
            nix::unistd::setgid(nix::unistd::Gid::from_raw(65534)).expect("setgid");
            nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).expect("setuid");
            match is_running(&path) {
                Ok(r) => say(&format!("ok: {r:?}")),
                Err(e) => say(&format!("error: {e}")),
            }
        }
        other => panic!("unknown helper mode {other}"),
    }
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "PIDFILE {line}");
    let _ = out.flush();
}

/// A helper process, killed and reaped when dropped.
struct Helper {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Helper {
    fn start(mode: &str, path: &Path, hold_ms: u64, go: Option<&Path>) -> Helper {
        let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
        cmd.args(["helper", "--exact", "--nocapture", "--test-threads=1"])
            .env(MODE, mode)
            .env(PATH, path)
            .env(HOLD_MS, hold_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(go) = go {
            cmd.env(GO, go);
        }
        let mut child = cmd.spawn().expect("spawn helper");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Helper { child, out }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The helper's next "PIDFILE ..." line (without the prefix); the helpers' waits
    /// are bounded, so this is too (EOF at the latest).
    fn line(&mut self) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            if self.out.read_line(&mut line).expect("read helper") == 0 {
                return String::new();
            }
            // libtest may print "test helper ... " on the same line first.
            if let Some(at) = line.find("PIDFILE ") {
                return line[at + "PIDFILE ".len()..].trim_end().to_string();
            }
        }
    }

    /// Waits (bounded) for the helper to exit; its status.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "helper {} did not exit",
                self.pid()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn rest(&mut self) -> String {
        let mut s = String::new();
        let _ = self.out.read_to_string(&mut s);
        s
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "preforkd-pidfile-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read pid file")
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).expect("stat").ino()
}

#[test]
fn acquire_writes_the_pid_and_a_second_acquire_is_refused() {
    let dir = TempDir::new("second");
    let path = dir.join("d.pid");
    let me = std::process::id() as i32;
    let pid_file = PidFile::acquire(&path).expect("acquire");
    assert_eq!(read(&path), format!("{me}\n"));
    assert_eq!(pid_file.pid(), me);
    assert_eq!(pid_file.path(), path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o644, 0, "mode {mode:o} is at most 0644");

    let err = PidFile::acquire(&path).expect_err("second acquire");
    assert_eq!(err.to_string(), format!("already running (pid {me})"));
    assert!(matches!(err, PidFileError::AlreadyRunning { pid: Some(p), .. } if p == me));
    // The refused attempt changed nothing.
    assert_eq!(read(&path), format!("{me}\n"));
    assert_eq!(is_running(&path).unwrap(), Some(me));
    drop(pid_file);
    assert!(!path.exists(), "removed on drop");
    assert_eq!(is_running(&path).unwrap(), None);
}

#[test]
fn an_unreadable_pid_is_reported_as_unknown() {
    let dir = TempDir::new("unknown");
    let path = dir.join("d.pid");
    let pid_file = PidFile::acquire(&path).expect("acquire");
    std::fs::write(&path, "garbage").unwrap(); // same inode: the lock still holds
    let err = PidFile::acquire(&path).expect_err("second acquire");
    assert_eq!(err.to_string(), "already running (pid unknown)");
    assert!(matches!(is_running(&path), Err(PidFileError::NoPid { .. })));
    drop(pid_file);
}

#[test]
fn ten_simultaneous_acquisitions_in_ten_processes_yield_one_winner() {
    let dir = TempDir::new("race");
    let path = dir.join("d.pid");
    for round in 0..3 {
        if round == 1 {
            // A stale file to take over, racing.
            std::fs::write(&path, "99999999\n").unwrap();
        }
        let go = dir.join(&format!("go{round}"));
        let mut helpers: Vec<Helper> = (0..10)
            .map(|_| Helper::start("hold", &path, 1500, Some(&go)))
            .collect();
        std::fs::write(&go, "").unwrap();
        let lines: Vec<(i32, String)> = helpers.iter_mut().map(|h| (h.pid(), h.line())).collect();
        let winners: Vec<i32> = lines
            .iter()
            .filter(|(_, l)| l.starts_with("won"))
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {lines:?}");
        let winner = winners[0];
        for (pid, line) in &lines {
            if *pid != winner {
                assert_eq!(
                    line,
                    &format!("lost: already running (pid {winner})"),
                    "round {round}: {lines:?}"
                );
            }
        }
        assert_eq!(is_running(&path).unwrap(), Some(winner));
        for h in &mut helpers {
            assert!(h.wait(Duration::from_secs(10)).success());
        }
        assert!(!path.exists(), "round {round}: the winner removed the file");
    }
}

#[test]
fn a_stale_file_is_taken_over() {
    let dir = TempDir::new("stale");
    let path = dir.join("d.pid");
    let me = std::process::id() as i32;
    // A pid that cannot exist (above any pid_max), no lock.
    std::fs::write(&path, "99999999\n").unwrap();
    assert_eq!(is_running(&path).unwrap(), None);
    let pid_file = PidFile::acquire(&path).expect("take over a dead pid");
    assert_eq!(read(&path), format!("{me}\n"));
    drop(pid_file);

    // A pid reused by another, live program (here: a sleeping helper): the lock, not
    // the pid, is the truth.
    let mut other = Helper::start("sleep", &path, 10_000, None);
    assert_eq!(other.line(), "sleeping");
    std::fs::write(&path, format!("{}\n", other.pid())).unwrap();
    assert_eq!(is_running(&path).unwrap(), None);
    assert_eq!(
        kill_running(&path, Duration::from_millis(200)).unwrap(),
        KillOutcome::NotRunning
    );
    assert!(other.child.try_wait().unwrap().is_none(), "not signalled");
    let pid_file = PidFile::acquire(&path).expect("take over a reused pid");
    assert_eq!(read(&path), format!("{me}\n"));
    drop(pid_file);
}

#[test]
fn a_symlink_is_refused_and_its_target_untouched() {
    let dir = TempDir::new("symlink");
    let target = dir.join("target");
    let path = dir.join("d.pid");
    std::fs::write(&target, "precious\n").unwrap();
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let err = PidFile::acquire(&path).expect_err("symlink");
    assert!(matches!(err, PidFileError::Symlink { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("pid file {} is a symlink: refused", path.display())
    );
    assert_eq!(read(&target), "precious\n");
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(matches!(
        is_running(&path),
        Err(PidFileError::Symlink { .. })
    ));
    // A dangling symlink is not followed into creating its target either.
    let dangling = dir.join("dangling.pid");
    std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
    assert!(matches!(
        PidFile::acquire(&dangling),
        Err(PidFileError::Symlink { .. })
    ));
    assert!(!dir.join("nowhere").exists());
}

#[test]
fn is_running_from_another_process_sees_the_holder() {
    let dir = TempDir::new("running");
    let path = dir.join("d.pid");
    assert_eq!(is_running(&path).unwrap(), None, "no file");
    let mut holder = Helper::start("hold", &path, 10_000, None);
    assert_eq!(holder.line(), format!("won {}", holder.pid()));
    assert_eq!(is_running(&path).unwrap(), Some(holder.pid()));
    // Checking does not disturb the holder, and a start is still refused.
    let err = PidFile::acquire(&path).expect_err("held");
    assert_eq!(
        err.to_string(),
        format!("already running (pid {})", holder.pid())
    );
    // Killed outright: the file stays, stale, and is seen as such.
    holder.child.kill().unwrap();
    holder.wait(Duration::from_secs(5));
    assert!(path.exists());
    assert_eq!(is_running(&path).unwrap(), None);
}

#[test]
fn a_permission_error_is_an_error_not_not_running() {
    let dir = TempDir::new("perm");
    let path = dir.join("d.pid");
    std::fs::write(&path, "1\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if nix::unistd::geteuid().is_root() {
        // Root reads anything: ask as nobody, in a helper.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut checker = Helper::start("check-as-nobody", &path, 0, None);
        let line = checker.line();
        assert!(line.starts_with("error: pid file "), "{line}");
        assert!(line.contains("Permission denied"), "{line}");
        checker.wait(Duration::from_secs(10));
    } else {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        let err = is_running(&path).expect_err("permission");
        assert!(matches!(err, PidFileError::Io { .. }), "{err:?}");
    }
}

#[test]
fn kill_running_stops_a_holder_with_term() {
    let dir = TempDir::new("stop");
    let path = dir.join("d.pid");
    assert_eq!(
        kill_running(&path, Duration::from_secs(1)).unwrap(),
        KillOutcome::NotRunning
    );
    let mut holder = Helper::start("hold", &path, 20_000, None);
    assert_eq!(holder.line(), format!("won {}", holder.pid()));
    let start = Instant::now();
    let outcome = kill_running(&path, Duration::from_secs(5)).unwrap();
    match outcome {
        KillOutcome::Stopped { pid, after } => {
            assert_eq!(pid, holder.pid());
            assert!(after < Duration::from_secs(5), "{after:?}");
        }
        other => panic!("expected Stopped, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    let status = holder.wait(Duration::from_secs(5));
    assert_eq!(status.signal(), Some(SIGTERM));
    assert_eq!(is_running(&path).unwrap(), None);
    assert_eq!(
        kill_running(&path, Duration::from_secs(1)).unwrap(),
        KillOutcome::NotRunning
    );
}

#[test]
fn kill_running_kills_a_holder_that_ignores_term() {
    let dir = TempDir::new("kill");
    let path = dir.join("d.pid");
    let mut holder = Helper::start("hold-ignore-term", &path, 20_000, None);
    assert_eq!(holder.line(), format!("won {}", holder.pid()));
    let start = Instant::now();
    let outcome = kill_running(&path, Duration::from_millis(300)).unwrap();
    assert_eq!(outcome, KillOutcome::Killed { pid: holder.pid() });
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(start.elapsed() < Duration::from_secs(5));
    let status = holder.wait(Duration::from_secs(5));
    assert_eq!(status.signal(), Some(SIGKILL));
    assert_eq!(is_running(&path).unwrap(), None);
    assert_eq!(holder.rest(), "", "nothing after won: it never let go");
}

#[test]
fn the_file_is_removed_on_drop_and_on_release() {
    let dir = TempDir::new("remove");
    let path = dir.join("d.pid");
    drop(PidFile::acquire(&path).unwrap());
    assert!(!path.exists());
    PidFile::acquire(&path).unwrap().release().unwrap();
    assert!(!path.exists());
    // Once released, it can be acquired again.
    drop(PidFile::acquire(&path).unwrap());
    assert!(!path.exists());
}

#[test]
fn a_replaced_file_is_not_removed() {
    let dir = TempDir::new("replaced");
    let path = dir.join("d.pid");
    let pid_file = PidFile::acquire(&path).unwrap();
    let ours = inode(&path);
    let other = dir.join("other");
    std::fs::write(&other, "4242\n").unwrap();
    std::fs::rename(&other, &path).unwrap();
    assert_ne!(inode(&path), ours);
    drop(pid_file);
    assert_eq!(read(&path), "4242\n", "not ours: left alone");

    // Removed by someone else, then recreated: still not ours.
    let pid_file = PidFile::acquire(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "4343\n").unwrap();
    pid_file.release().unwrap();
    assert_eq!(read(&path), "4343\n");
}

#[test]
fn rewrite_changes_the_pid_and_who_removes_the_file() {
    let dir = TempDir::new("rewrite");
    let path = dir.join("d.pid");
    let mut pid_file = PidFile::acquire(&path).unwrap();
    // As after a daemonizing fork, seen from the launcher: the file now names the
    // daemon (here a pid that is not ours), the lock is kept.
    pid_file.rewrite(4_000_000).unwrap();
    assert_eq!(read(&path), "4000000\n");
    assert_eq!(pid_file.pid(), 4_000_000);
    assert_eq!(is_running(&path).unwrap(), Some(4_000_000));
    assert!(PidFile::acquire(&path).is_err());
    // The launcher drops its copy: the file belongs to the daemon, it stays.
    drop(pid_file);
    assert_eq!(read(&path), "4000000\n");
    // And, nobody holding the lock any more, it is stale.
    assert_eq!(is_running(&path).unwrap(), None);

    let me = std::process::id() as i32;
    let mut pid_file = PidFile::acquire(&path).unwrap();
    pid_file.rewrite(me).unwrap();
    drop(pid_file);
    assert!(!path.exists(), "ours again: removed");
}

#[test]
fn acquiring_and_releasing_in_a_loop_from_many_processes_never_overlaps() {
    // Each release unlinks the file while a contender may hold an fd to it: the
    // contender must notice (inode check) and start over, never hold an orphan.
    let dir = TempDir::new("churn");
    let path = dir.join("d.pid");
    let go = dir.join("go");
    let mut helpers: Vec<Helper> = (0..6)
        .map(|_| Helper::start("churn", &path, 1500, Some(&go)))
        .collect();
    std::fs::write(&go, "").unwrap();
    let mut total = 0u64;
    for h in &mut helpers {
        let line = h.line();
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("churned"), "{line}");
        let wins: u64 = words.next().unwrap().parse().unwrap();
        let overlaps: u64 = words.next().unwrap().parse().unwrap();
        assert_eq!(overlaps, 0, "two holders at once: {line}");
        total += wins;
        assert!(h.wait(Duration::from_secs(10)).success());
    }
    assert!(total > 10, "only {total} acquisitions");
    assert!(!path.exists());
}
