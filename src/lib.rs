//! # preforkd
//!
//! Preforking, autoscaling, auto-reloading Unix daemons: the Rust successor of
//! SHARYANTO::Proc::Daemon::Prefork.
//!
//! ## Contents
//! - [`Prefork`]: the daemon. `after_init` in the parent, `main_loop` in each forked
//!   child (with a [`Worker`]: the busy guard, the accept helper, "should I exit?"),
//!   `before_shutdown`; the seed's options under the same names. See [`runtime`].
//! - [`Machine`]: the supervisor, a pure state machine (Init → Spawning → Serving →
//!   Reloading → ShuttingDown → Stopped). Feed it [`Event`]s with the time, carry out
//!   the [`Action`]s it returns, wake it at [`Machine::poll_timeout`].
//! - [`policy`]: the pluggable deciders ([`ScalingPolicy`], [`ReloadPolicy`],
//!   [`DisconnectPolicy`]) and their defaults, re-exported from `preforkd-policies`.
//! - [`sim`]: a deterministic simulator to model-test a policy against a workload.
//! - [`oracle`]: the invariants the machine keeps, checkable on any run.
//!
//! ## Should I use this?
//! Use it to run a pool of worker processes that share a listening socket and must
//! scale with the load, reload without dropping requests and stop gracefully, on
//! Linux. The process runtime (fork, signals, shared-memory scoreboard) is a thin
//! shell around the pure [`Machine`], which is where every decision is made.
//!
//! ## Example: model-test the default policy
//! ```
//! use preforkd::{Action, Event, HookKind, Machine, Options, State, Time};
//!
//! let mut m = Machine::new(Options { prefork: 3, max_children: 10, ..Options::default() })?;
//! m.handle(Time::ZERO, Event::HookFinished { hook: HookKind::AfterInit, ok: true });
//! let mut pid = 100;
//! let mut spawned = vec![];
//! while let Some(action) = m.poll_action() {
//!     if let Action::Spawn { slot, .. } = action {
//!         pid += 1;
//!         spawned.push((slot, preforkd::policy::Pid(pid)));
//!     }
//! }
//! for (slot, pid) in spawned {
//!     m.handle(Time::ZERO, Event::ChildSpawned { slot, pid });
//!     m.handle(Time::from_millis(5), Event::ChildReady { pid });
//! }
//! assert_eq!(m.state(), State::Serving);
//! assert_eq!(m.counts().idle, 3);
//! # Ok::<(), preforkd::ConfigError>(())
//! ```
// `unsafe` lives only in `runtime::os`, which allows it explicitly.
#![deny(unsafe_code)]

pub mod fuzzing;
pub mod oracle;
pub mod runtime;
pub mod sim;
pub mod supervisor;

/// The policy API (`preforkd-policies`), re-exported.
pub mod policy {
    pub use preforkd_policies::*;
}

pub use policy::{DisconnectPolicy, Pid, ReloadPolicy, ScalingPolicy, Time};
pub use runtime::pidfile::{is_running, kill_running, KillOutcome, PidFile, PidFileError};
pub use runtime::{
    combined_log_line, file_logger, listen, read_scoreboard_file, BoxError, BusyGuard, LineWriter,
    LogFile, Prefork, RunError, SlotInfo, Worker, WorkerState,
};
pub use supervisor::action::{Action, ChildSignal, Hook, Level, Notify, SignalReason};
pub use supervisor::config::{ConfigError, Options};
pub use supervisor::event::{
    ConnState, Connection, Event, ExitStatus, HookKind, Scoreboard, Signal, SlotReading, SlotState,
};
pub use supervisor::machine::{Counts, Machine, MachineBuilder};
pub use supervisor::rng::SplitMix64;
pub use supervisor::transitions::{State, TRANSITIONS};

/// The README's examples, compiled and run as doc tests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
