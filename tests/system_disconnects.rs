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

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;
use support::*;

/// A client asks `/sleep` for 10 s and hangs up after 200 ms; returns the line
/// the demo logs when it sees that, and the child that served it.
fn hang_up(d: &Demo) -> (String, i32) {
    assert!(wait_for(Duration::from_secs(10), || d.children().len() == 1));
    let serving = d.children()[0];
    let mut s = TcpStream::connect(d.addr).unwrap();
    write!(
        s,
        "GET /sleep?ms=10000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let local = s.local_addr().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(s);
    (
        format!(
            "client {}:{} hung up on child {serving} ",
            local.ip(),
            local.port()
        ),
        serving,
    )
}

const ARGS: [&str; 7] = [
    "--prefork",
    "1",
    "--max-children",
    "2",
    "--disconnect-every-ms",
    "50",
    "--user",
];

#[test]
fn children_running_as_nobody_are_looked_at_by_a_root_parent() {
    assert!(nix::unistd::geteuid().is_root(), "run as root");
    let mut args = ARGS.to_vec();
    args.push("nobody");
    let d = Demo::start(&args);
    let (needle, _) = hang_up(&d);
    assert!(
        wait_for(Duration::from_secs(5), || d.log().contains(&needle)),
        "not reported as {needle:?}\n{}",
        d.log()
    );
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
    let mut args = ARGS.to_vec();
    args.push("nobody");
    let d = Demo::start_cmd(cmd, &args);
    let (needle, serving) = hang_up(&d);
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
