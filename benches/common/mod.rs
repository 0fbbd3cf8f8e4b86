//! What the benches that drive the demo share: building it in release mode, and
//! a running demo that is killed with its process group when dropped.
// Real processes need real time.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)] // each bench uses its own subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Builds the demo in release mode and returns its path.
pub fn build_demo() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--release", "--example", "hello_http"])
        .status()
        .expect("run cargo");
    assert!(status.success(), "building hello_http failed");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("release/examples/hello_http")
}

/// A running demo.
pub struct Demo {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Demo {
    /// Starts `bin` on an ephemeral loopback port and waits until it listens.
    pub fn start(bin: &Path, args: &[&str]) -> Demo {
        Demo::start_with_lines(bin, args, |_| {})
    }

    /// As [`start`](Self::start), handing every later line of its stderr to
    /// `line` (on a thread), as it comes.
    pub fn start_with_lines(
        bin: &Path,
        args: &[&str],
        mut line_seen: impl FnMut(&str) + Send + 'static,
    ) -> Demo {
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start the demo");
        let mut r = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("the demo exited before listening");
            }
            if let Some(a) = line.trim().strip_prefix("hello_http: listening on ") {
                break a.parse().unwrap();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                line_seen(&line);
                line.clear();
            }
        });
        Demo { child, addr }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        kill_group(self.pid());
        let _ = self.child.wait();
    }
}

/// SIGKILL to a process group.
pub fn kill_group(pgid: i32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
}
