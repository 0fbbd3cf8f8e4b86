//! The in-place upgrade on the demo, with real processes and real signals: the
//! demo runs from a copy of its binary, which the tests replace (by rename, as a
//! deployment does) before sending USR2.
// Real processes need real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use support::*;

const USR2: i32 = libc::SIGUSR2;

/// A copy of the demo in `dir`, to run and to replace.
fn installed(dir: &Path) -> PathBuf {
    let exe = dir.join("demo");
    std::fs::copy(demo_binary(), &exe).unwrap();
    exe
}

/// Replaces `exe` by rename (a running executable cannot be written in place).
fn replace(exe: &Path, contents: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = exe.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, exe).unwrap();
}

/// Replaces `exe` by a script running a copy of the demo (in `dir`) with `args`
/// (shell words): new code that starts but is configured otherwise.
fn wrap(exe: &Path, dir: &Path, args: &str) {
    let real = dir.join("demo.real");
    std::fs::copy(demo_binary(), &real).unwrap();
    replace(
        exe,
        format!("#!/bin/sh\nexec {} {args}\n", real.display()).as_bytes(),
    );
}

/// A rebuilt demo: the same program with `tag` appended, a different file.
fn rebuild(exe: &Path, tag: &str) {
    let mut bytes = std::fs::read(demo_binary()).unwrap();
    bytes.extend_from_slice(tag.as_bytes());
    replace(exe, &bytes);
}

/// What `/proc/PID/exe` names: "(deleted)" once the file it runs was replaced.
fn running_image(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn start(exe: &Path, args: &[&str]) -> Demo {
    let mut cmd = Command::new(exe);
    cmd.args(["--listen", "127.0.0.1:0", "--prefork", "3"])
        .args(args);
    let demo = Demo::start_command(cmd);
    assert!(
        wait_for(Duration::from_secs(10), || demo.children().len() == 3),
        "{}",
        demo.log()
    );
    demo
}

fn set(v: Vec<i32>) -> BTreeSet<i32> {
    v.into_iter().collect()
}

/// Waits until none of `old` is a child any more and the pool is back to `n`.
fn rolled_over(demo: &Demo, old: &BTreeSet<i32>, n: usize) -> bool {
    wait_for(Duration::from_secs(10), || {
        let now = set(demo.children());
        now.len() == n && now.is_disjoint(old)
    })
}

/// Replaces `exe` by a script that runs `trial` (shell) first when it is the
/// upgrade's trial, then execs `real` with its arguments.
fn trial_script(exe: &Path, trial: &str, real: &Path) {
    replace(
        exe,
        format!(
            "#!/bin/sh\nif [ -n \"$PREFORKD_TRIAL\" ]; then {trial}; fi\nexec {} \"$@\"\n",
            real.display()
        )
        .as_bytes(),
    );
}

/// Starts a daemonizing demo with `cmd` and reads its pid from `pid_file`: the
/// pid, and a guard that KILLs it whatever happens next.
fn daemon(cmd: Command, pid_file: &Path) -> (i32, KillOnDrop) {
    let (status, err) = run_bounded(cmd, Duration::from_secs(15)).expect("the launcher returns");
    assert!(status.success(), "{err}");
    let pid: i32 = std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (pid, KillOnDrop(pid))
}

/// KILLs a pid when dropped.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        send_signal(self.0, 9);
    }
}

/// Waits (10 s at most) until the demo's log holds `needle` `n` times.
fn logged(demo: &Demo, needle: &str, n: usize) {
    assert!(
        wait_for(Duration::from_secs(10), || demo.log_count(needle) == n),
        "{needle:?} not logged {n} times:\n{}",
        demo.log()
    );
}

/// The way back: the previous image took the children (`before`) back, rolled
/// them over itself, and says so (not "upgraded in place").
fn came_back(demo: &Demo, before: &BTreeSet<i32>) {
    assert!(rolled_over(demo, before, 3), "{}", demo.log());
    logged(demo, "back from a failed upgrade", 1);
    assert_eq!(demo.log_count("upgraded in place"), 0, "{}", demo.log());
}

/// How many descriptors `pid` holds once the count holds still: a child forked
/// a moment ago still holds the parent's, until its start closes those it does
/// not need.
fn settled_fds(pid: i32) -> usize {
    let mut last = fd_count(pid);
    let settled = wait_for(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(100));
        let now = fd_count(pid);
        std::mem::replace(&mut last, now) == now
    });
    assert!(settled, "the descriptors of {pid} never settle");
    last
}

#[test]
fn three_upgrades_under_load_keep_the_pid_and_lose_no_request() {
    let dir = tempdir("upgrade");
    let exe = installed(&dir);
    let demo = start(&exe, &[]);
    let pid = demo.pid();
    let fds = |p: i32| fd_count(p);
    let first_child = *demo.children().first().unwrap();
    let child_fds = settled_fds(first_child);
    let mut parent_fds = 0;
    let stop = Arc::new(AtomicBool::new(false));
    let load = counting_load(demo.addr, 4, "/", &stop);
    for round in 1..=3 {
        let old = set(demo.children());
        assert_eq!(old.len(), 3, "{}", demo.log());
        rebuild(&exe, &format!("build {round}"));
        assert!(running_image(pid).ends_with("(deleted)"));
        demo.signal(USR2);
        assert!(
            rolled_over(&demo, &old, 3),
            "round {round}: the old children are still there\n{}",
            demo.log()
        );
        // The new file runs: no longer the replaced one.
        assert_eq!(running_image(pid), exe.display().to_string());
        assert!(alive(pid));
        // The next upgrade waits until this one is proven (a healthy new child).
        assert!(
            wait_for(Duration::from_secs(10), || demo.log_count("upgrade proven")
                == round),
            "{}",
            demo.log()
        );
        if round == 1 {
            // One more than a fresh start: the previous image, the way back.
            parent_fds = fds(pid);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let (ok, failed) = stop_load(&stop, load);
    assert!(ok > 100, "too little load to mean anything: {ok}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed\n{}",
        ok + failed,
        demo.log()
    );
    assert_eq!(demo.log_count("upgraded in place"), 3, "{}", demo.log());
    assert_eq!(demo.log_count("passed its trial"), 3);
    // Nothing leaks across upgrades, in the parent or into its children.
    assert_eq!(
        fds(pid),
        parent_fds,
        "the parent's descriptors grew from upgrade to upgrade"
    );
    let child = *demo.children().first().unwrap();
    assert_eq!(
        settled_fds(child),
        child_fds,
        "a new child holds more descriptors"
    );
    assert!(zombies(pid).is_empty());
}

#[test]
fn a_broken_executable_leaves_the_old_code_serving_and_a_good_one_upgrades_later() {
    let dir = tempdir("upgrade-broken");
    let exe = installed(&dir);
    let demo = start(&exe, &[]);
    let pid = demo.pid();
    let before = set(demo.children());
    // One that exits at once, one that refuses its configuration.
    replace(&exe, b"#!/bin/sh\nexit 3\n");
    demo.signal(USR2);
    logged(&demo, "upgrade abandoned", 1);
    assert!(demo.log().contains("exit code 3"), "{}", demo.log());
    wrap(&exe, &dir, "--no-such-flag");
    demo.signal(USR2);
    logged(&demo, "upgrade abandoned", 2);
    // Nothing moved: the same children serve.
    assert_eq!(set(demo.children()), before);
    assert_eq!(get(demo.addr, "/").unwrap().0, 200);
    assert!(alive(pid));
    // A good executable then upgrades as usual.
    rebuild(&exe, "good");
    demo.signal(USR2);
    assert!(rolled_over(&demo, &before, 3), "{}", demo.log());
    assert_eq!(demo.log_count("upgraded in place"), 1);
    assert_eq!(get(demo.addr, "/").unwrap().0, 200);
}

#[test]
fn a_new_image_whose_after_init_fails_hands_the_children_back() {
    let dir = tempdir("upgrade-back");
    let exe = installed(&dir);
    let demo = start(&exe, &[]);
    let pid = demo.pid();
    let before = set(demo.children());
    // The new code wants a port that is taken: its after_init fails after the
    // trial (which does not run after_init) passed.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    wrap(
        &exe,
        &dir,
        &format!("--listen 127.0.0.1:{port} --prefork 3"),
    );
    demo.signal(USR2);
    logged(&demo, "handing the children back", 1);
    // The previous image took them back, with its own arguments, on its socket,
    // and rolled them over itself.
    came_back(&demo, &before);
    assert!(alive(pid));
    assert_eq!(get(demo.addr, "/").unwrap().0, 200);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(&port.to_string()),
        "the previous image came back with the new one's arguments"
    );
    drop(busy);
}

#[test]
fn the_pid_file_and_its_lock_survive_an_upgrade() {
    let dir = tempdir("upgrade-pid");
    let exe = installed(&dir);
    let pid_file = dir.join("demo.pid");
    let demo = start(&exe, &["--pid-file", pid_file.to_str().unwrap()]);
    let pid = demo.pid();
    let before = set(demo.children());
    rebuild(&exe, "pid");
    demo.signal(USR2);
    assert!(rolled_over(&demo, &before, 3), "{}", demo.log());
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    // Still locked by the daemon: a second instance is refused.
    assert_eq!(
        preforkd::runtime::pidfile::is_running(&pid_file).unwrap(),
        Some(pid)
    );
    let mut demo = demo;
    demo.signal(libc::SIGTERM);
    assert_eq!(
        demo.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        demo.log()
    );
    assert!(!pid_file.exists(), "the pid file is removed at the stop");
}

/// A fake service manager's notification socket: every datagram kept, in order.
struct FakeManager {
    path: PathBuf,
    got: Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeManager {
    fn new(dir: &Path) -> FakeManager {
        let path = dir.join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&got);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push(m);
            }
        });
        FakeManager { path, got }
    }

    fn all(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }
}

#[test]
fn a_daemon_upgrades_with_the_same_mainpid_and_tells_its_service_manager() {
    let dir = tempdir("upgrade-daemon");
    let exe = installed(&dir);
    let pid_file = dir.join("demo.pid");
    let manager = FakeManager::new(&dir);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"export WATCHDOG_PID=$$; exec "$@""#)
        .arg("sh")
        .arg(&exe)
        .args(["--daemonize", "--listen", "127.0.0.1:0", "--prefork", "2"])
        .arg("--pid-file")
        .arg(&pid_file)
        .arg("--error-log")
        .arg(dir.join("error.log"))
        .arg("--access-log")
        .arg(dir.join("access.log"))
        .env("NOTIFY_SOCKET", &manager.path)
        .env("WATCHDOG_USEC", "400000");
    let (pid, _kill) = daemon(cmd, &pid_file);
    assert!(wait_for(Duration::from_secs(10), || manager
        .all()
        .contains(&"READY=1".to_string())));
    assert!(wait_for(Duration::from_secs(10), || children_of(pid).len() == 2));
    let before = set(children_of(pid));
    rebuild(&exe, "daemon");
    let seen = manager.all().len();
    send_signal(pid, USR2);
    assert!(
        wait_for(Duration::from_secs(10), || {
            let now = set(children_of(pid));
            now.len() == 2 && now.is_disjoint(&before)
        }),
        "{}",
        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
    );
    assert!(wait_for(Duration::from_secs(10), || manager.all()[seen..]
        .iter()
        .any(|m| m == "READY=1")));
    let after: Vec<String> = manager.all()[seen..].to_vec();
    let reloading = after.iter().position(|m| m.starts_with("RELOADING=1"));
    let ready = after.iter().position(|m| m == "READY=1");
    assert!(
        reloading.is_some() && reloading < ready,
        "RELOADING=1 then READY=1: {after:?}"
    );
    // No other main pid was announced; the watchdog goes on from the new image.
    assert!(
        after
            .iter()
            .filter(|m| m.starts_with("MAINPID="))
            .all(|m| *m == format!("MAINPID={pid}")),
        "{after:?}"
    );
    let pings = manager.all().iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(wait_for(Duration::from_secs(5), || manager
        .all()
        .iter()
        .filter(|m| *m == "WATCHDOG=1")
        .count()
        >= pings + 2));
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    send_signal(pid, libc::SIGTERM);
    assert!(wait_for(Duration::from_secs(10), || !alive(pid)));
}

#[test]
fn an_upgrade_while_scaled_up_keeps_the_capacity_until_the_new_children_serve() {
    use preforkd::SlotState;
    let dir = tempdir("upgrade-scaled");
    let exe = installed(&dir);
    let board = dir.join("board");
    let demo = start(
        &exe,
        &[
            "--max-children",
            "24",
            "--scoreboard",
            board.to_str().unwrap(),
        ],
    );
    let serving = || {
        preforkd::runtime::read_scoreboard_file(&board)
            .map(|slots| {
                slots
                    .iter()
                    .filter(|s| s.pid > 0 && matches!(s.state, SlotState::Idle | SlotState::Busy))
                    .count()
            })
            .unwrap_or(0)
    };
    // 12 clients holding a child 1.5 s each: the pool grows past them.
    let addr = demo.addr;
    let clients: Vec<_> = (0..12)
        .map(|_| std::thread::spawn(move || get(addr, "/sleep?ms=1500").map(|r| r.0)))
        .collect();
    assert!(
        wait_for(Duration::from_secs(5), || serving() >= 12),
        "the pool did not grow: {}\n{}",
        serving(),
        demo.log()
    );
    let scaled = serving();
    let old = set(demo.children());
    rebuild(&exe, "scaled");
    demo.signal(USR2);
    // Until the new generation serves, never fewer serving than before the
    // upgrade. (Afterwards the old ones leave as their requests end, and the
    // policy may retire surplus idle new ones: no upgrade's doing.)
    let mut lowest = usize::MAX;
    let rolled = wait_for(Duration::from_secs(15), || {
        lowest = lowest.min(serving());
        demo.log_count("reload to generation 2 complete") == 1
    });
    assert!(rolled, "the new generation never served\n{}", demo.log());
    lowest = lowest.min(serving());
    assert!(
        wait_for(Duration::from_secs(15), || set(demo.children())
            .is_disjoint(&old)),
        "old children still there\n{}",
        demo.log()
    );
    for c in clients {
        assert_eq!(
            c.join().unwrap().unwrap(),
            200,
            "a request in hand was lost"
        );
    }
    assert!(
        lowest >= scaled.min(12),
        "serving dipped to {lowest} from {scaled} during the upgrade\n{}",
        demo.log()
    );
    assert_eq!(demo.log_count("upgraded in place"), 1);
}

#[test]
fn a_forged_handoff_variable_is_refused_before_anything_starts() {
    for value in ["9", "abc", "1"] {
        let mut cmd = Command::new(demo_binary());
        cmd.args(["--listen", "127.0.0.1:0"])
            .env("PREFORKD_HANDOFF", value);
        let (status, err) = run_bounded(cmd, Duration::from_secs(10)).expect("it exits");
        assert_eq!(status.code(), Some(78), "{value}: {err}");
        assert!(err.contains("handoff"), "{value}: {err}");
    }
}

fn version(demo: &Demo) -> String {
    get(demo.addr, "/version").unwrap().1
}

#[test]
fn replacing_the_executable_upgrades_once_with_auto_reload() {
    let dir = tempdir("upgrade-auto");
    let exe = installed(&dir);
    let demo = start(&exe, &["--auto-reload-every", "0.2"]);
    let pid = demo.pid();
    let v1 = version(&demo);
    let old = set(demo.children());
    rebuild(&exe, "auto 1");
    assert!(rolled_over(&demo, &old, 3), "{}", demo.log());
    let v2 = version(&demo);
    assert_ne!(v1, v2, "the old build still answers");
    // Once per change: nothing more while the file stays as it is.
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(demo.log_count("upgraded in place"), 1, "{}", demo.log());
    assert_eq!(
        demo.log_count("auto_reload_handler: files changed"),
        0,
        "a changed executable is an upgrade, not a data reload"
    );
    // A broken one: one failed trial, not one per check; the old code serves.
    let serving = set(demo.children());
    replace(&exe, b"#!/bin/sh\nexit 3\n");
    logged(&demo, "upgrade abandoned", 1);
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(demo.log_count("upgrade abandoned"), 1, "{}", demo.log());
    assert_eq!(set(demo.children()), serving);
    assert_eq!(version(&demo), v2);
    // A good one after it upgrades normally.
    rebuild(&exe, "auto 2");
    assert!(rolled_over(&demo, &serving, 3), "{}", demo.log());
    assert_ne!(version(&demo), v2);
    assert_eq!(demo.log_count("upgraded in place"), 2);
    assert!(alive(pid));
}

#[test]
fn a_watched_file_reloads_once_per_change_even_written_in_steps() {
    let dir = tempdir("upgrade-watch");
    let exe = installed(&dir);
    let data = dir.join("config");
    std::fs::write(&data, "a").unwrap();
    let demo = start(
        &exe,
        &[
            "--auto-reload-every",
            "0.3",
            "--watch",
            data.to_str().unwrap(),
        ],
    );
    let old = set(demo.children());
    // Written in steps closer than a check, over several checks: every check
    // sees it move, so one reload, once it rests.
    for part in ["b", "bc", "bcd", "bcde", "bcdef"] {
        std::fs::write(&data, part).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(rolled_over(&demo, &old, 3), "{}", demo.log());
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(
        demo.log_count("auto_reload_handler: files changed"),
        1,
        "{}",
        demo.log()
    );
    assert_eq!(demo.log_count("upgraded in place"), 0);
}

#[test]
fn the_log_files_cross_the_upgrade_and_usr1_reopens_them_after() {
    let dir = tempdir("upgrade-logs");
    let exe = installed(&dir);
    let access = dir.join("access.log");
    let rotated = dir.join("access.log.1");
    let demo = start(
        &exe,
        &[
            "--access-log",
            access.to_str().unwrap(),
            "--error-log",
            dir.join("error.log").to_str().unwrap(),
        ],
    );
    assert_eq!(get(demo.addr, "/").unwrap().0, 200);
    // Rotated (renamed) but not reopened yet when the upgrade comes.
    std::fs::rename(&access, &rotated).unwrap();
    let old = set(demo.children());
    rebuild(&exe, "logs");
    demo.signal(USR2);
    assert!(rolled_over(&demo, &old, 3));
    for _ in 0..5 {
        assert_eq!(get(demo.addr, "/?after-upgrade").unwrap().0, 200);
    }
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("after-upgrade"))
            .count()
    };
    // The new image writes on to the file the old one had open.
    assert!(wait_for(Duration::from_secs(5), || lines(&rotated) == 5));
    assert!(!access.exists(), "the new image reopened the log by path");
    // USR1 then reopens: new lines in a new file.
    demo.signal(libc::SIGUSR1);
    assert!(wait_for(Duration::from_secs(5), || access.exists()));
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        assert_eq!(get(demo.addr, "/?after-usr1").unwrap().0, 200);
    }
    assert!(wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&access)
            .unwrap_or_default()
            .matches("after-usr1")
            .count()
            == 3
    }));
}

#[test]
fn a_new_image_with_another_max_children_is_refused_by_its_trial() {
    let dir = tempdir("upgrade-slots");
    let exe = installed(&dir);
    let demo = start(&exe, &["--max-children", "10"]);
    let before = set(demo.children());
    // Its own arguments, then a different max_children.
    wrap(&exe, &dir, "\"$@\" --max-children 12");
    demo.signal(USR2);
    logged(&demo, "upgrade abandoned", 1);
    assert!(demo.log().contains("keeps max_children"), "{}", demo.log());
    assert_eq!(set(demo.children()), before, "nothing moved");
    assert_eq!(get(demo.addr, "/").unwrap().0, 200);
    assert!(alive(demo.pid()));
}

/// Replaces `exe` by a script running a copy of the demo with the same
/// arguments, plus `extra` (shell words) outside the trial only: new code that
/// passes its trial and then fails to start.
fn wrap_after_trial(exe: &Path, dir: &Path, extra: &str) {
    let real = dir.join("demo.real");
    std::fs::copy(demo_binary(), &real).unwrap();
    replace(
        exe,
        format!(
            "#!/bin/sh\nif [ -n \"$PREFORKD_TRIAL\" ]; then exec {real} \"$@\"; fi\nexec {real} \"$@\" {extra}\n",
            real = real.display()
        )
        .as_bytes(),
    );
}

#[test]
fn a_new_image_that_cannot_start_goes_back_to_the_previous_one() {
    let dir = tempdir("upgrade-start-fails");
    let exe = installed(&dir);
    let demo = start(&exe, &[]);
    let pid = demo.pid();
    let before = set(demo.children());
    let v1 = version(&demo);
    // Its error log cannot be opened: `run` fails before its machine starts.
    wrap_after_trial(
        &exe,
        &dir,
        "--error-log /nonexistent-preforkd-dir/error.log",
    );
    demo.signal(USR2);
    logged(&demo, "could not start", 1);
    // The previous image took the children back and rolled them over itself.
    came_back(&demo, &before);
    assert!(alive(pid));
    assert_eq!(version(&demo), v1);
    assert!(
        demo.log().contains("nonexistent-preforkd-dir"),
        "the log says why: {}",
        demo.log()
    );
    assert!(zombies(pid).is_empty());
    // A good executable then upgrades as usual.
    let serving = set(demo.children());
    rebuild(&exe, "good after a failed start");
    demo.signal(USR2);
    assert!(rolled_over(&demo, &serving, 3), "{}", demo.log());
    assert_ne!(version(&demo), v1);
    assert_eq!(demo.log_count("upgraded in place"), 1, "{}", demo.log());
    assert!(alive(pid));
}

#[test]
fn a_daemon_started_with_relative_paths_keeps_them_across_an_upgrade() {
    let dir = tempdir("upgrade-relative");
    let exe = installed(&dir);
    // Files of these names in `/` would be the new image's mistake.
    let names: Vec<&str> = ["demo.pid", "error.log", "access.log"]
        .into_iter()
        .filter(|n| !Path::new("/").join(n).exists())
        .collect();
    let mut cmd = Command::new(&exe);
    cmd.current_dir(&dir)
        .args(["--daemonize", "--listen", "127.0.0.1:0", "--prefork", "2"])
        .args(["--pid-file", "demo.pid", "--error-log", "error.log"])
        .args(["--access-log", "access.log"]);
    let pid_file = dir.join("demo.pid");
    let (pid, _kill) = daemon(cmd, &pid_file);
    let log = || std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    assert!(wait_for(Duration::from_secs(10), || children_of(pid).len() == 2));
    let before = set(children_of(pid));
    rebuild(&exe, "relative");
    send_signal(pid, USR2);
    assert!(
        wait_for(Duration::from_secs(10), || {
            let now = set(children_of(pid));
            now.len() == 2 && now.is_disjoint(&before) && log().contains("upgraded in place")
        }),
        "{}",
        log()
    );
    assert!(alive(pid), "{}", log());
    assert!(!log().contains("could not start"), "{}", log());
    // The new image resolved them where the daemon was started, not in `/`.
    for name in names {
        assert!(!Path::new("/").join(name).exists(), "/{name} was made");
    }
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    assert_eq!(
        preforkd::runtime::pidfile::is_running(&pid_file).unwrap(),
        Some(pid)
    );
    send_signal(pid, libc::SIGTERM);
    assert!(wait_for(Duration::from_secs(10), || !alive(pid)));
    assert!(!pid_file.exists(), "the pid file outlived the daemon");
}

#[test]
fn a_new_configuration_without_the_pid_file_is_refused_and_the_lock_kept() {
    let dir = tempdir("upgrade-pid-dropped");
    let exe = installed(&dir);
    let pid_file = dir.join("demo.pid");
    let demo = start(&exe, &["--pid-file", pid_file.to_str().unwrap()]);
    let pid = demo.pid();
    let before = set(demo.children());
    // The new code runs without --pid-file: it would drop the lock, and a second
    // instance could start beside the running one.
    wrap(&exe, &dir, "--listen 127.0.0.1:0 --prefork 3");
    demo.signal(USR2);
    logged(&demo, "upgrade abandoned", 1);
    assert!(demo.log().contains("pid_path"), "{}", demo.log());
    assert_eq!(set(demo.children()), before);
    assert_eq!(
        preforkd::runtime::pidfile::is_running(&pid_file).unwrap(),
        Some(pid)
    );
}

#[test]
fn a_listener_the_runtime_cannot_hand_over_refuses_the_upgrade_and_keeps_serving() {
    let dir = tempdir("upgrade-stray-listener");
    let exe = installed(&dir);
    let demo = start(&exe, &["--std-bind"]);
    let pid = demo.pid();
    let before = set(demo.children());
    rebuild(&exe, "stray");
    demo.signal(USR2);
    logged(&demo, "upgrade abandoned", 1);
    // The log names the socket; nothing moved.
    assert!(
        demo.log().contains(&demo.addr.to_string()),
        "{}",
        demo.log()
    );
    assert_eq!(demo.log_count("upgraded in place"), 0);
    assert_eq!(set(demo.children()), before);
    assert_eq!(get(demo.addr, "/").unwrap().0, 200);
    assert!(alive(pid));
}

/// The demo (`exe`) started with a socket passed the systemd way, and a
/// `--listen` address that is not on this machine (binding it fails): only the
/// passed socket can serve. Waits for its 3 children.
fn start_activated(exe: &Path) -> (Demo, std::net::SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cmd = socket_activated(exe, &listener, "http");
    cmd.args(["--listen", "192.0.2.1:9", "--prefork", "3"]);
    let demo = Demo::start_command(cmd);
    // Only the demo holds the socket now.
    drop(listener);
    assert_eq!(demo.addr, addr, "{}", demo.log());
    assert!(
        wait_for(Duration::from_secs(10), || demo.children().len() == 3),
        "{}",
        demo.log()
    );
    (demo, addr)
}

#[test]
fn a_socket_activated_daemon_upgrades_on_the_same_socket() {
    let dir = tempdir("upgrade-activated");
    let exe = installed(&dir);
    let (demo, addr) = start_activated(&exe);
    let pid = demo.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let load = counting_load(addr, 4, "/", &stop);
    let mut versions = vec![version(&demo)];
    let mut parent_fds = Vec::new();
    // Twice: the second time from an image that got the socket by a handoff.
    for round in 1..=2 {
        let old = set(demo.children());
        rebuild(&exe, &format!("activated {round}"));
        demo.signal(USR2);
        assert!(
            rolled_over(&demo, &old, 3),
            "round {round}: the old children are still there\n{}",
            demo.log()
        );
        assert!(alive(pid), "{}", demo.log());
        assert_eq!(running_image(pid), exe.display().to_string());
        let v = version(&demo);
        assert!(
            !versions.contains(&v),
            "round {round}: an old build answers"
        );
        versions.push(v);
        assert!(
            wait_for(Duration::from_secs(10), || demo.log_count("upgrade proven")
                == round),
            "{}",
            demo.log()
        );
        parent_fds.push(fd_count(pid));
    }
    std::thread::sleep(Duration::from_millis(200));
    let (ok, failed) = stop_load(&stop, load);
    assert!(ok > 50, "too little load to mean anything: {ok}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed\n{}",
        ok + failed,
        demo.log()
    );
    assert_eq!(demo.log_count("upgraded in place"), 2, "{}", demo.log());
    assert_eq!(
        parent_fds[0], parent_fds[1],
        "the parent's descriptors grew from upgrade to upgrade"
    );
    assert!(zombies(pid).is_empty());
}

#[test]
fn a_socket_activated_daemon_whose_new_image_fails_goes_back_on_the_same_socket() {
    let dir = tempdir("upgrade-activated-back");
    let exe = installed(&dir);
    let (demo, addr) = start_activated(&exe);
    let pid = demo.pid();
    let v1 = version(&demo);
    let before = set(demo.children());
    let stop = Arc::new(AtomicBool::new(false));
    let load = counting_load(addr, 4, "/", &stop);
    // Passes its trial (which does not run after_init), then after_init fails
    // once it has taken the socket.
    wrap(&exe, &dir, "\"$@\" --fail-init");
    demo.signal(USR2);
    logged(&demo, "handing the children back", 1);
    assert!(demo.log().contains("--fail-init"), "{}", demo.log());
    // The previous image took the children back, on the passed socket, and
    // rolled them over itself.
    assert!(rolled_over(&demo, &before, 3), "{}", demo.log());
    assert!(alive(pid), "{}", demo.log());
    assert_eq!(version(&demo), v1);
    // And the socket crosses the next, good, upgrade too.
    let serving = set(demo.children());
    rebuild(&exe, "good after the way back");
    demo.signal(USR2);
    assert!(rolled_over(&demo, &serving, 3), "{}", demo.log());
    assert!(alive(pid));
    assert_ne!(version(&demo), v1);
    let (ok, failed) = stop_load(&stop, load);
    assert!(ok > 50, "too little load to mean anything: {ok}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed\n{}",
        ok + failed,
        demo.log()
    );
}

#[test]
fn a_new_image_whose_after_init_fails_after_taking_its_listener_hands_it_back() {
    let dir = tempdir("upgrade-back-claimed");
    let exe = installed(&dir);
    let demo = start(&exe, &[]);
    let pid = demo.pid();
    let v1 = version(&demo);
    let before = set(demo.children());
    // The same arguments: `listen` in the new image takes the handed-over
    // listener; then its after_init fails.
    wrap(&exe, &dir, "\"$@\" --fail-init");
    demo.signal(USR2);
    logged(&demo, "handing the children back", 1);
    assert!(rolled_over(&demo, &before, 3), "{}", demo.log());
    assert!(alive(pid), "{}", demo.log());
    // The previous image serves on the very listener it handed over, not on a
    // new port.
    assert_eq!(version(&demo), v1);
    assert_eq!(
        demo.log_count("hello_http: listening on"),
        3,
        "{}",
        demo.log()
    );
    assert!(
        demo.log()
            .lines()
            .filter(|l| l.contains("hello_http: listening on"))
            .all(|l| l.ends_with(&demo.addr.to_string())),
        "{}",
        demo.log()
    );
}

#[test]
fn a_deployment_that_flips_a_symlink_upgrades_to_the_new_release() {
    let dir = tempdir("upgrade-symlink");
    for release in ["v1", "v2"] {
        std::fs::create_dir_all(dir.join(release)).unwrap();
    }
    std::fs::copy(demo_binary(), dir.join("v1/demo")).unwrap();
    std::os::unix::fs::symlink("v1", dir.join("current")).unwrap();
    let demo = start(&dir.join("current/demo"), &[]);
    let pid = demo.pid();
    let v1 = version(&demo);
    let old = set(demo.children());
    // The deployment: a new release beside the old, the link flipped by rename.
    rebuild(&dir.join("v2/demo"), "release 2");
    std::os::unix::fs::symlink("v2", dir.join("current.new")).unwrap();
    std::fs::rename(dir.join("current.new"), dir.join("current")).unwrap();
    demo.signal(USR2);
    assert!(rolled_over(&demo, &old, 3), "{}", demo.log());
    assert_ne!(version(&demo), v1, "the old release still answers");
    assert_eq!(
        running_image(pid),
        dir.join("v2/demo").display().to_string()
    );
}

#[test]
fn the_executable_tried_is_the_one_executed_even_if_replaced_meanwhile() {
    let dir = tempdir("upgrade-tried");
    let exe = installed(&dir);
    let demo = start(&exe, &[]);
    let v1 = version(&demo);
    let old = set(demo.children());
    let tried = dir.join("tried");
    // A release whose trial takes a moment (and says when it runs).
    let real = dir.join("demo.real");
    rebuild(&real, "the tried one");
    trial_script(&exe, &format!("touch {}; sleep 1", tried.display()), &real);
    demo.signal(USR2);
    assert!(wait_for(Duration::from_secs(10), || tried.exists()));
    // A second deployment lands during the trial: it was never tried.
    rebuild(&exe, "never tried");
    assert!(rolled_over(&demo, &old, 3), "{}", demo.log());
    let v2 = version(&demo);
    assert_ne!(v2, v1);
    assert!(
        running_image(demo.pid()).starts_with(&real.display().to_string()),
        "the parent runs {} (the tried release is {})",
        running_image(demo.pid()),
        real.display()
    );
}

#[test]
fn a_stop_around_the_exec_is_never_lost() {
    // The trial's helper sends TERM to the parent a little after the trial ends:
    // around the re-exec, at a different instant each round.
    for round in 0..12u32 {
        let dir = tempdir("upgrade-stop-around-exec");
        let exe = installed(&dir);
        let mut demo = start(&exe, &["--graceful-timeout", "2"]);
        let pid = demo.pid();
        let children = set(demo.children());
        let real = dir.join("demo.real");
        rebuild(&real, &format!("round {round}"));
        let delay = format!("0.{:03}", round * 4);
        let trial = format!(
            "{} \"$@\"; rc=$?; (sleep {delay}; kill -TERM {pid}) & exit $rc",
            real.display()
        );
        trial_script(&exe, &trial, &real);
        demo.signal(USR2);
        let code = demo.wait_exit(Duration::from_secs(10));
        assert_eq!(code, Some(0), "round {round}: TERM lost\n{}", demo.log());
        for c in children {
            assert!(
                wait_for(Duration::from_secs(5), || !alive(c)),
                "round {round}: child {c} outlived the parent"
            );
        }
    }
}

#[test]
fn a_stop_during_the_trial_ends_the_trial_with_the_parent() {
    let dir = tempdir("upgrade-trial-stop");
    let exe = installed(&dir);
    let mut demo = start(&exe, &[]);
    let real = dir.join("demo.real");
    std::fs::copy(demo_binary(), &real).unwrap();
    let trial_pid = dir.join("trial.pid");
    let trial = format!("echo $$ > {}; exec sleep 25", trial_pid.display());
    trial_script(&exe, &trial, &real);
    demo.signal(USR2);
    let read_pid = || {
        std::fs::read_to_string(&trial_pid)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
    };
    assert!(wait_for(Duration::from_secs(10), || read_pid().is_some()));
    let trial = read_pid().unwrap();
    demo.signal(libc::SIGTERM);
    assert_eq!(
        demo.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        demo.log()
    );
    assert!(
        wait_for(Duration::from_secs(3), || !alive(trial)),
        "the trial (pid {trial}) outlived the parent"
    );
}
