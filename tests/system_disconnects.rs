//! System tests of client disconnects with children running as another user
//! (`--user nobody`): a root parent copies their connections (it holds
//! CAP_SYS_PTRACE); one without it cannot, and says so rather than going quiet.
//! They need root and `setpriv` (util-linux); run with
//! `cargo test --features system-tests --test system_disconnects`. Not being
//! root or a missing program fails the test, never skips it.
#![cfg(feature = "system-tests")]
// Real processes need real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

/// [`ONE_CHILD`], its children running as nobody.
fn as_nobody() -> Vec<&'static str> {
    [&ONE_CHILD[..], &["--user", "nobody"]].concat()
}

#[test]
fn children_running_as_nobody_are_looked_at_by_a_root_parent() {
    assert!(nix::unistd::geteuid().is_root(), "run as root");
    let d = Demo::start(&as_nobody());
    let (needle, _) = hang_up_on(&d, HangUp::Close);
    logged_once(&d, &needle, "children as nobody");
    assert!(!d.log().contains("refused here"), "{}", d.log());
}

#[test]
fn a_parent_that_cannot_look_at_its_childrens_descriptors_says_so() {
    assert!(nix::unistd::geteuid().is_root(), "run as root");
    // Root without CAP_SYS_PTRACE (as in a container's default set): children
    // running as nobody are out of its reach.
    let mut cmd = Command::new(program("setpriv"));
    cmd.args(["--bounding-set", "-sys_ptrace", "--inh-caps", "-sys_ptrace"])
        .arg(demo_binary());
    let d = Demo::start_cmd(cmd, &as_nobody());
    let (needle, serving) = hang_up_on(&d, HangUp::Close);
    assert!(
        wait_for(Duration::from_secs(5), || d.log().contains(&format!(
            "cannot read the descriptors of child {serving} "
        ))),
        "no word of the blind spot\n{}",
        d.log()
    );
    assert!(
        d.log().contains("the Pidfd probe is refused here"),
        "{}",
        d.log()
    );
    assert!(!d.log().contains(&needle), "{}", d.log());
    assert_eq!(
        d.log().matches("cannot read the descriptors").count(),
        1,
        "said once\n{}",
        d.log()
    );
}
