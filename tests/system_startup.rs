//! System tests of the start-up checks that need root: a scoreboard file owned by
//! another user. Run as root with
//! `cargo test --features system-tests --test system_startup`; not being root
//! fails the test, never skips it.
#![cfg(feature = "system-tests")]
// Real processes need real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;
use support::*;

#[test]
fn a_scoreboard_owned_by_another_user_is_refused_and_left_untouched() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this system test must run as root (it chowns a file to nobody)"
    );
    let dir = tempdir("board-owner");
    let board = dir.join("board");
    std::fs::write(&board, "someone else's\n").unwrap();
    // nobody:nogroup on Debian.
    std::os::unix::fs::chown(&board, Some(65534), Some(65534)).unwrap();
    let mut cmd = Command::new(demo_binary());
    cmd.args(["--listen", "127.0.0.1:0", "--prefork", "1", "--scoreboard"])
        .arg(&board);
    let (status, err) = run_bounded(cmd, Duration::from_secs(10)).expect("exits at once");
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "scoreboard {} is owned by uid 65534, not by this process's uid 0: refused",
            board.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&board).unwrap(), "someone else's\n");
    let meta = std::fs::metadata(&board).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777 != 0o600), (65534, true));
}
