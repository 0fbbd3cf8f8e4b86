//! The demo's build identity and auto-reload flags, with the demo as a real
//! process: `GET /version` names the bytes it runs (a copy with bytes appended
//! answers differently), and `--auto-reload-every` with `--watch` turns one change
//! of a watched file into one `auto_reload_handler` call and one rolling restart.
// Real processes need real time: bounded waits and sleeps are the point here.
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};
use support::*;

/// FNV-1a, 64 bits: the test's own, to check the demo's.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn the_test_fnv_matches_the_published_vectors() {
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
}

/// `/version` of `d`, checked to be 200.
fn version(d: &Demo) -> String {
    let (status, body) = get(d.addr, "/version").expect("answered");
    assert_eq!(status, 200, "{body}");
    body
}

/// What `/version` must answer for the executable at `exe` (no
/// `HELLO_HTTP_BUILD` in the tests' build).
fn expected_version(exe: &Path) -> String {
    let bytes = std::fs::read(exe).unwrap();
    let build = option_env!("HELLO_HTTP_BUILD")
        .map(|b| format!(" build={b}"))
        .unwrap_or_default();
    format!(
        "version={}{build} fnv1a64={:016x}\n",
        env!("CARGO_PKG_VERSION"),
        fnv1a64(&bytes)
    )
}

#[test]
fn version_names_the_executable_and_is_the_same_from_every_child() {
    let d = Demo::start(&["--prefork", "3", "--max-children", "3"]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 3));
    let first = version(&d);
    assert_eq!(first, expected_version(&demo_binary()));
    // Many connections, so several children answer: all the same.
    let mut answered_by = BTreeSet::new();
    for _ in 0..30 {
        assert_eq!(version(&d), first);
        answered_by.insert(get(d.addr, "/pid").unwrap().1);
    }
    assert!(!answered_by.is_empty());
}

#[test]
fn a_copy_of_the_binary_with_bytes_appended_answers_another_version() {
    let dir = tempdir("demo-version");
    let copy = dir.join("hello_http");
    // Written by a shell, never opened for writing in this process: a fork from
    // another test's thread cannot hold it open and make the exec fail (ETXTBSY).
    let st = Command::new("sh")
        .args([
            "-c",
            "cp \"$1\" \"$2\" && printf 'appended' >> \"$2\"",
            "sh",
            demo_binary().to_str().unwrap(),
            copy.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let original = Demo::start(&["--prefork", "1", "--max-children", "1"]);
    let copied = Demo::start_cmd(
        Command::new(&copy),
        &["--prefork", "1", "--max-children", "1"],
    );
    let (a, b) = (version(&original), version(&copied));
    assert_ne!(a, b);
    assert_eq!(b, expected_version(&copy));
    // Only the digest differs: same crate version, same build label.
    let strip = |v: &str| v.rsplit_once(" fnv1a64=").unwrap().0.to_string();
    assert_eq!(strip(&a), strip(&b));
    drop(copied);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The pids `/pid` answers over `n` connections.
fn pids_answering(d: &Demo, n: usize) -> BTreeSet<i32> {
    (0..n)
        .map(|_| {
            let (status, body) = get(d.addr, "/pid").expect("answered");
            assert_eq!(status, 200);
            body.trim().parse().expect("a pid")
        })
        .collect()
}

const HANDLER_LINE: &str = "auto_reload_handler: files changed";
const ROLLING: &str = "reloading: rolling";

#[test]
fn a_changed_watched_file_is_one_handler_call_and_one_rolling_restart() {
    let dir = tempdir("demo-watch");
    let file = dir.join("config");
    std::fs::write(&file, "version 1\n").unwrap();
    // An mtime well in the past: the change below moves it whatever the
    // filesystem's timestamp granularity.
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(past)
        .unwrap();
    let d = Demo::start(&[
        "--prefork",
        "2",
        "--max-children",
        "4",
        "--auto-reload-every",
        "1",
        "--watch",
        file.to_str().unwrap(),
    ]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 2));
    let old: BTreeSet<i32> = d.children().into_iter().collect();
    assert!(pids_answering(&d, 10).is_subset(&old));
    // Two checks with nothing changed: nothing reported, nobody replaced.
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(d.log_count(HANDLER_LINE), 0, "{}", d.log());
    assert_eq!(d.children().into_iter().collect::<BTreeSet<_>>(), old);

    // A real content change, in one write (one mtime update): no look can see
    // it half done.
    let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.write_all(b"version 2, longer\n").unwrap();
    drop(f);

    assert!(
        wait_for(Duration::from_secs(5), || d.log_count(HANDLER_LINE) == 1),
        "no handler call; log:\n{}",
        d.log()
    );
    // Every old child replaced by a new one, and gone.
    let rolled = wait_for(Duration::from_secs(15), || {
        let now: BTreeSet<i32> = d.children().into_iter().collect();
        now.len() == 2 && now.is_disjoint(&old) && old.iter().all(|&p| !alive(p))
    });
    assert!(
        rolled,
        "children {:?} (old {old:?}); log:\n{}",
        d.children(),
        d.log()
    );
    let new: BTreeSet<i32> = d.children().into_iter().collect();
    let answering = pids_answering(&d, 10);
    assert!(answering.is_subset(&new), "{answering:?} vs {new:?}");
    assert!(answering.is_disjoint(&old), "{answering:?} vs {old:?}");

    // About three more checks with nothing changed: no second report, no
    // second rollout.
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(d.log_count(HANDLER_LINE), 1, "{}", d.log());
    assert_eq!(d.log_count(ROLLING), 1, "{}", d.log());
    assert_eq!(d.children().into_iter().collect::<BTreeSet<_>>(), new);
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_auto_reload_a_watched_file_changing_does_nothing() {
    let dir = tempdir("demo-watch-off");
    let file = dir.join("config");
    std::fs::write(&file, "version 1\n").unwrap();
    let d = Demo::start(&["--prefork", "1", "--watch", file.to_str().unwrap()]);
    assert!(wait_for(Duration::from_secs(5), || d.children().len() == 1));
    let old = d.children();
    std::fs::write(&file, "version 2\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(d.log_count(HANDLER_LINE), 0, "{}", d.log());
    assert_eq!(d.log_count(ROLLING), 0, "{}", d.log());
    assert_eq!(d.children(), old);
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
