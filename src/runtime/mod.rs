//! The process runtime: forks the children, delivers signals, reads the shared
//! scoreboard, runs the hooks, and feeds all of it to the [`Machine`](crate::Machine).
//!
//! One main thread waits (crossbeam `select!`) on three channels: signals (a
//! signal-hook thread forwards them), wake-ups from the children (a thread reads
//! the wake-up pipe they write when the pool saturates or a child becomes ready),
//! and a timer set to the machine's next wake-up time. With none due it sleeps until
//! something happens: an idle pool costs the parent no wake-up.
//!
//! ```no_run
//! use preforkd::{Prefork, Worker};
//! use std::io::Write;
//! use std::net::TcpListener;
//!
//! let code = Prefork::new(
//!     // after_init: bind here; every child inherits the listener.
//!     || Ok(TcpListener::bind("127.0.0.1:8080")?),
//!     // main_loop: runs in each child.
//!     |worker: &Worker, listener: &TcpListener| {
//!         while let Some((mut stream, _)) = worker.accept(listener) {
//!             let _busy = worker.busy();
//!             stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello\n")?;
//!         }
//!         Ok(())
//!     },
//! )
//! .prefork(3)
//! .max_children(150)
//! .daemonize(false) // the seed's default is to daemonize
//! .run()?;
//! std::process::exit(code);
//! # Ok::<(), preforkd::RunError>(())
//! ```
//!
//! ## Layout
//! - `prefork.rs`: the builder ([`Prefork`]), [`Prefork::run`] (validation,
//!   daemonizing, logs, pid file) and [`listen`]; `check.rs`: every check of the
//!   configuration; `error.rs`: [`RunError`].
//! - `in_process.rs`: `main_loop` in this process (`in_process()`, `prefork = 0`).
//! - `parent.rs`: the machine and the parent's loop (signals, wake-ups, timers,
//!   reaping, scoreboard ticks), which drives it through the crate's driver (the
//!   action dispatch and ordering rules the simulator shares); `system.rs`: the
//!   rest of the parent, the driver's real effects; `executor.rs`: the hooks, log
//!   passing and notification failures; `fork.rs`: forks a
//!   child; `upgrade.rs`: the in-place upgrade's trial, re-exec and handoff
//!   (see `docs/upgrade.md`); `signals.rs`: the signals handled and their
//!   translation; `watch.rs` and `watcher.rs`: file-change checks (a change
//!   reported once, once it is stable); `clock.rs`: the machine's time.
//! - `child.rs`: a child's life after the fork; `credentials.rs`: the user and
//!   groups it switches to; `worker.rs`: what `main_loop` gets ([`Worker`]).
//! - `scoreboard.rs` (shared memory), `logs/`, `daemon.rs` (detaching),
//!   `pidfile.rs`, `systemd/` (sd_notify, socket activation), `netstat.rs`
//!   (hung-up clients), `metrics/` (the metrics endpoint's thread, its HTTP
//!   and its formats), `memory.rs` (RSS), `os/` (every `unsafe` call: forks,
//!   signal handlers, shared memory, raw descriptors, sockets).

mod check;
mod child;
mod clock;
pub mod command;
pub mod control;
mod credentials;
mod daemon;
mod error;
mod executor;
mod fork;
mod in_process;
mod logs;
mod memory;
mod metrics;
pub(crate) mod netstat;
pub(crate) mod os;
mod parent;
pub mod pidfile;
mod prefork;
mod scanner;

/// One look for client disconnects with `probe` (`"pidfd"`, `"diag"` or
/// `"proc"`) at `children`: each a pid and the connection it serves (descriptor
/// and client) if it said, the connections accepted on `listening`; how many it
/// found gone. For the disconnect benchmark; not API.
#[doc(hidden)]
pub fn disconnect_scan(
    children: &[(i32, Option<(i32, std::net::SocketAddr)>)],
    listening: &[std::net::SocketAddr],
    probe: &str,
) -> std::io::Result<usize> {
    let probe = match probe {
        "pidfd" => netstat::Probe::Pidfd,
        "diag" => netstat::Probe::Diag,
        "proc" => netstat::Probe::Proc,
        other => {
            return Err(std::io::Error::other(format!("no probe {other:?}")));
        }
    };
    let children: Vec<netstat::Child> = children
        .iter()
        .map(|&(pid, conn)| netstat::Child {
            pid,
            conn: conn.map(|c| c.0),
            peer: conn.map(|c| c.1),
            requests: 0,
        })
        .collect();
    let ours = netstat::Ours::new(listening.to_vec());
    netstat::gone_connections(&children, &ours, probe).map(|c| c.len())
}
mod scoreboard;
mod signals;
pub mod status;
mod system;
pub mod systemd;
mod upgrade;
mod watch;
mod watcher;
mod worker;

pub use error::{BoxError, RunError};
pub use logs::{combined_log_line, file_logger, LineWriter, LogFile};
pub use prefork::{listen, Prefork};
pub use scoreboard::{parse_scoreboard, read_scoreboard_file, SlotInfo, WorkerState};
pub use upgrade::{upgrading, TRIAL_LIMIT_SECS};
pub use worker::{BusyGuard, Worker};
