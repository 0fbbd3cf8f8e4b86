//! Replays the fuzz corpus on the stable toolchain.
//!
//! Every file in `fuzz/corpus/machine/` (the fuzzer's minimised corpus),
//! `fuzz/seeds/machine/` (hand-written seeds) and `fuzz/regressions/` (crashers found
//! by the fuzzer, kept once fixed) goes through [`preforkd::fuzzing::run`], which
//! checks every invariant of the oracle at every step and that two runs agree. A
//! failure names the file and the violation (or the panic).
//!
//! The parser targets (`scoreboard`, `options`, `systemd_env`, `proc_net`,
//! `sock_diag`, `workload_spec`) replay `fuzz/corpus/<target>/` and `fuzz/seeds/<target>/`
//! through the same functions their fuzz targets call (see `preforkd::fuzzing`).
//!
//! The hand-written seeds are defined below, readable; `seeds_are_current` checks
//! the files match, and rewrites them with `PREFORKD_WRITE_SEEDS=1`.

use preforkd::fuzzing::{self, encode_ops, HEADER_LEN};
use preforkd::oracle::Op;
use preforkd::{ExitStatus, Signal as Sig};
use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Fewer corpus files than this and the test fails: CI must not pass vacuously.
const MIN_CORPUS_FILES: usize = 20;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The regular files of `dir`, sorted; empty if `dir` does not exist.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

/// Runs one input, turning a panic into an error message.
fn check(path: &Path) -> Result<(), String> {
    let data = fs::read(path).map_err(|e| format!("unreadable: {e}"))?;
    match panic::catch_unwind(AssertUnwindSafe(|| fuzzing::run(&data))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(v)) => Err(format!("violation at {v}")),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "(non-string panic)".into());
            Err(format!("panicked: {msg}"))
        }
    }
}

fn replay(files: &[PathBuf]) {
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| check(f).err().map(|e| format!("{}: {e}", f.display())))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} inputs failed (replay one with `cargo fuzz run machine <file>`):\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_replays_clean() {
    let dir = fuzz_dir().join("corpus").join("machine");
    assert!(dir.is_dir(), "fuzz corpus {} is missing", dir.display());
    let files = files_in(&dir);
    assert!(
        files.len() >= MIN_CORPUS_FILES,
        "fuzz corpus {} has {} files, fewer than {MIN_CORPUS_FILES}",
        dir.display(),
        files.len()
    );
    replay(&files);
}

#[test]
fn seeds_and_regressions_replay_clean() {
    let mut files = files_in(&fuzz_dir().join("seeds").join("machine"));
    assert!(
        !files.is_empty(),
        "no hand-written seeds in fuzz/seeds/machine"
    );
    files.extend(files_in(&fuzz_dir().join("regressions")));
    replay(&files);
}

/// A header (see `preforkd::fuzzing`'s layout table), padded with zeros.
fn header(bytes: &[u8]) -> Vec<u8> {
    let mut h = bytes.to_vec();
    h.resize(HEADER_LEN, 0);
    h
}

/// The hand-written seeds: name, header bytes, ops.
fn seeds() -> Vec<(&'static str, Vec<u8>, Vec<Op>)> {
    use Op::*;
    let boot2 = vec![HookOk, SpawnOk, SpawnOk, Ready(0), Ready(1)];
    let with = |mut a: Vec<Op>, b: &[Op]| {
        a.extend_from_slice(b);
        a
    };
    vec![
        (
            "boot_hup_term",
            // max 4, prefork 2, default policies.
            header(&[3, 2]),
            with(
                boot2.clone(),
                &[
                    Busy(0),
                    Signal(Sig::Hup),
                    SpawnOk,
                    SpawnOk,
                    Ready(2),
                    Ready(3),
                    Deliver,
                    Idle(0),
                    Deliver,
                    Advance(800),
                    Signal(Sig::Term),
                    Deliver,
                    Timeout,
                    Deliver,
                ],
            ),
        ),
        (
            "double_term_and_quit",
            header(&[5, 3]),
            with(
                vec![
                    HookOk,
                    SpawnOk,
                    SpawnOk,
                    SpawnOk,
                    Busy(0),
                    Busy(1),
                    Ready(2),
                ],
                &[
                    Signal(Sig::Int),
                    Signal(Sig::Term),
                    Signal(Sig::Quit),
                    Deliver,
                    Timeout,
                    Timeout,
                ],
            ),
        ),
        (
            "apache_load_ttin_ttou",
            // max 8, prefork 2, ApacheLike min_spare 1, max_spare 3, spawn rate 2,
            // workers 8, start 2, retire interval 180 ms.
            header(&[7, 2, 1, 0b0001_0101, 0x27, 10]),
            with(
                vec![HookOk, SpawnOk, SpawnOk, Busy(0), Busy(1)],
                &[
                    Advance(200),
                    SpawnOk,
                    SpawnOk,
                    Busy(2),
                    Busy(3),
                    Advance(400),
                    SpawnOk,
                    SpawnOk,
                    Signal(Sig::Ttin),
                    Signal(Sig::Ttin),
                    Idle(0),
                    Idle(1),
                    Idle(2),
                    Idle(3),
                    Advance(1000),
                    Deliver,
                    Signal(Sig::Ttou),
                    Advance(1000),
                    Deliver,
                    Timeout,
                ],
            ),
        ),
        (
            "fixed_crash_loop",
            // max 3, Fixed(3), short timers.
            header(&[2, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0x21]),
            with(
                vec![HookOk, SpawnOk, SpawnFail],
                &[
                    Exit(0, ExitStatus::Signaled(11)),
                    Timeout,
                    SpawnOk,
                    Exit(0, ExitStatus::Exited(1)),
                    Timeout,
                    SpawnOk,
                    SpawnOk,
                    SpawnOk,
                    Timeout,
                    Ready(0),
                    Advance(2000),
                    Timeout,
                    Deliver,
                    Timeout,
                    SpawnOk,
                    Ready(0),
                    Ready(1),
                    Ready(2),
                ],
            ),
        ),
        (
            "rolling_reload_files_changed",
            // max 6, prefork 3, auto reload every 440 ms, explicit Rolling with
            // handler on HUP, min_serving 2, max_surge 1.
            header(&[5, 3, 0b1011_0000, 0, 0, 0, 0, 0, 10, 20, 0b101, 1]),
            with(
                vec![
                    HookOk,
                    SpawnOk,
                    SpawnOk,
                    SpawnOk,
                    Ready(0),
                    Ready(1),
                    Ready(2),
                ],
                &[
                    Timeout,
                    FilesChanged,
                    SpawnOk,
                    Ready(3),
                    Deliver,
                    Timeout,
                    SpawnOk,
                    Busy(4),
                    Deliver,
                    Signal(Sig::Hup),
                    SpawnOk,
                    Signal(Sig::Hup),
                    SpawnOk,
                    Ready(0),
                    Ready(1),
                    Ready(2),
                    Deliver,
                    Timeout,
                    Deliver,
                    Timeout,
                ],
            ),
        ),
        (
            "busy_timeout_and_disconnect",
            // max 4, prefork 3, busy timeout 170 ms, TerminateChild, short timers.
            header(&[3, 3, 0b0100_0100, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0x11]),
            with(
                vec![
                    HookOk,
                    SpawnOk,
                    SpawnOk,
                    SpawnOk,
                    Ready(0),
                    Ready(1),
                    Ready(2),
                ],
                &[
                    Busy(0),
                    Busy(1),
                    Disconnect(1),
                    Advance(200),
                    Timeout,
                    Deliver,
                    Timeout,
                    Deliver,
                    SpawnOk,
                    SpawnOk,
                    Disconnect(0),
                    Disconnect(0),
                    Deliver,
                ],
            ),
        ),
        (
            "max_requests_recycle",
            // max 3, prefork 2, max_requests 5 + jitter up to 2, seed 7.
            header(&[
                2,
                2,
                0b0000_1000,
                0,
                0,
                0,
                0,
                0b0100_0100,
                0,
                0,
                0,
                0,
                0,
                7,
                0,
            ]),
            with(
                boot2.clone(),
                &[
                    Served(0, 3),
                    Served(0, 4),
                    Idle(0),
                    Served(1, 9),
                    SelfRetire(1),
                    Deliver,
                    SpawnOk,
                    SpawnOk,
                    Ready(0),
                    Ready(1),
                    Served(0, 200),
                    Deliver,
                ],
            ),
        ),
        (
            "hook_fail",
            header(&[3, 2]),
            vec![HookFail, HookOk, SpawnOk, Signal(Sig::Hup), Timeout],
        ),
        (
            "bogus_reports",
            header(&[3, 2]),
            with(
                boot2.clone(),
                &[
                    BogusExit(7),
                    Exit(0, ExitStatus::Exited(0)),
                    DuplicateExit,
                    BogusSpawn(0),
                    BogusSpawn(3),
                    StaleTick,
                    SpawnOk,
                    DuplicateExit,
                    Signal(Sig::Chld),
                    Signal(Sig::Usr1),
                    Signal(Sig::Usr2),
                    Timeout,
                ],
            ),
        ),
        (
            "reload_during_boot_then_shutdown",
            // max 16, prefork 16, default Rolling with auto reload every 200 ms.
            header(&[15, 16, 0b0001_0000]),
            with(
                vec![
                    HookOk,
                    SpawnOk,
                    SpawnOk,
                    Ready(0),
                    Signal(Sig::Hup),
                    SpawnOk,
                ],
                &[
                    Timeout,
                    FilesChanged,
                    SpawnOk,
                    SpawnOk,
                    Ready(1),
                    Signal(Sig::Term),
                    SpawnOk,
                    SpawnOk,
                    Deliver,
                    Timeout,
                    Timeout,
                ],
            ),
        ),
    ]
}

#[test]
fn seeds_are_current() {
    let dir = fuzz_dir().join("seeds").join("machine");
    let write = std::env::var_os("PREFORKD_WRITE_SEEDS").is_some();
    if write {
        fs::create_dir_all(&dir).expect("create the seed directory");
    }
    for (name, header, ops) in seeds() {
        let mut bytes = header;
        bytes.extend(encode_ops(&ops));
        assert_eq!(
            fuzzing::decode(&bytes).1,
            ops,
            "seed {name} does not round-trip"
        );
        let path = dir.join(name);
        if write {
            fs::write(&path, &bytes).expect("write a seed");
        } else {
            let on_disk = fs::read(&path).unwrap_or_default();
            assert!(
                on_disk == bytes,
                "seed {} is out of date: rerun with PREFORKD_WRITE_SEEDS=1",
                path.display()
            );
        }
    }
}

// --- the parser targets: scoreboard, options, systemd_env, proc_net, sock_diag ---

/// Fewer corpus files than this for a parser target and the test fails.
const MIN_PARSER_CORPUS_FILES: usize = 5;

/// Replays `fuzz/corpus/<target>/` (at least [`MIN_PARSER_CORPUS_FILES`] files)
/// and `fuzz/seeds/<target>/` (at least one) through `body`, the target's whole
/// body; a panic is a failure naming the file.
fn replay_parser(target: &str, body: impl Fn(&[u8])) {
    let corpus = fuzz_dir().join("corpus").join(target);
    let corpus_files = files_in(&corpus);
    assert!(
        corpus_files.len() >= MIN_PARSER_CORPUS_FILES,
        "fuzz corpus {} has {} files, fewer than {MIN_PARSER_CORPUS_FILES}",
        corpus.display(),
        corpus_files.len()
    );
    let seeds = files_in(&fuzz_dir().join("seeds").join(target));
    assert!(!seeds.is_empty(), "no seeds in fuzz/seeds/{target}");
    let failures: Vec<String> = corpus_files
        .iter()
        .chain(&seeds)
        .filter_map(|f| {
            let data = fs::read(f).expect("readable corpus file");
            panic::catch_unwind(AssertUnwindSafe(|| body(&data)))
                .err()
                .map(|p| {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                        .unwrap_or_else(|| "(non-string panic)".into());
                    format!("{}: panicked: {msg}", f.display())
                })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} inputs failed (replay one with `cargo fuzz run {target} <file>`):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn scoreboard_corpus_replays_clean() {
    replay_parser("scoreboard", fuzzing::scoreboard);
}

#[test]
fn options_corpus_replays_clean() {
    replay_parser("options", |data| {
        fuzzing::options(
            data,
            |d: &[u8]| serde_json::from_slice::<preforkd::Options>(d),
            |o: &preforkd::Options| serde_json::to_vec(o),
        )
    });
}

#[test]
fn systemd_env_corpus_replays_clean() {
    replay_parser("systemd_env", fuzzing::systemd_env);
}

#[test]
fn proc_net_corpus_replays_clean() {
    replay_parser("proc_net", fuzzing::proc_net_tcp);
}

#[test]
fn sock_diag_corpus_replays_clean() {
    replay_parser("sock_diag", fuzzing::sock_diag);
}

#[test]
fn workload_spec_corpus_replays_clean() {
    replay_parser("workload_spec", fuzzing::workload_spec);
}

/// The parser targets' checks are not vacuous: each rejects what it must.
#[test]
fn parser_checks_see_bad_input() {
    use preforkd::runtime::systemd::{parse_listen_env, ActivationError};
    assert!(preforkd::runtime::parse_scoreboard(b"PREFORKD").is_err());
    let two = parse_listen_env(Some("1"), Some("2"), None, 1, 1024).unwrap();
    assert_eq!(two.map(|n| n.len()), Some(2));
    assert!(matches!(
        parse_listen_env(Some("1"), Some("2147483644"), None, 1, u64::MAX),
        Err(ActivationError::TooMany { .. })
    ));
    assert!(serde_json::from_slice::<preforkd::Options>(br#"{"kill_wait": -1}"#).is_err());
    // A serializer that fails on accepted options is a finding.
    let failing = panic::catch_unwind(|| {
        fuzzing::options(
            b"{}",
            |d: &[u8]| serde_json::from_slice::<preforkd::Options>(d).map_err(|e| e.to_string()),
            |_: &preforkd::Options| Err("cannot".to_string()),
        )
    });
    assert!(failing.is_err());
}
