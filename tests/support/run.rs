//! `preforkd run` as a real process, for tests/run.rs and tests/system_run.rs.

use super::{children_of, send_signal, tempdir, wait_for};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn preforkd() -> &'static str {
    env!("CARGO_BIN_EXE_preforkd")
}

/// The socket-activated example server.
pub fn server() -> PathBuf {
    super::example_binary("activated_http")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A `preforkd run`, its stderr (the log) in a file; on drop every process it
/// started is KILLed by pid (its children, their descendants, then itself).
pub struct Run {
    pub child: Child,
    pub log: PathBuf,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Run {
    pub fn start(tag: &str, flags: &[&str], command: &[&str]) -> Run {
        let dir = tempdir(tag);
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = dir.join("log");
        let mut cmd = Command::new(preforkd());
        cmd.arg("run")
            .arg("--listen")
            .arg(format!("tcp://{addr}"))
            .args(flags)
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .process_group(0);
        let child = super::spawn_retrying(&mut cmd).expect("start preforkd");
        let r = Run {
            child,
            log,
            addr,
            dir,
        };
        assert!(
            wait_for(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
            "not listening; log:\n{}",
            r.log()
        );
        r
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its children (not the keeper: a process whose name says so).
    pub fn workers(&self) -> Vec<i32> {
        children_of(self.pid())
            .into_iter()
            .filter(|&p| !is_keeper(p))
            .collect()
    }

    pub fn wait_log(&self, within: Duration, needle: &str) -> bool {
        wait_for(within, || self.log().contains(needle))
    }

    /// Waits for it to exit; its status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// KILLs a preforkd (`pid`) and every process of its children's trees (seen
/// before, so that none is reparented out of sight).
pub fn kill_supervisor(pid: i32) {
    let mut all = Vec::new();
    for c in children_of(pid) {
        all.extend(tree(c));
    }
    send_signal(pid, libc::SIGKILL);
    for p in all {
        send_signal(p, libc::SIGKILL);
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        kill_supervisor(self.pid());
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn is_keeper(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.trim() == "preforkd-keeper")
}

/// `pid` and its descendants.
pub fn tree(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let kids = children_of(out[i]);
        out.extend(kids);
        i += 1;
    }
    out
}

pub fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}
