//! # preforkd
//!
//! Preforking, autoscaling, auto-reloading Unix daemons: the Rust successor of
//! SHARYANTO::Proc::Daemon::Prefork.
//!
//! ## Contents
//! - [`Machine`]: the supervisor, a pure state machine (Init → Spawning → Serving →
//!   Reloading → ShuttingDown → Stopped). Feed it [`Event`]s with the time, carry out
//!   the [`Action`]s it returns, wake it at [`Machine::poll_timeout`]. It lives at
//!   the root, with its [`Options`], events, actions and states.
//! - [`runtime`]: the daemon. [`Prefork`] runs `after_init` in the parent,
//!   `main_loop` in each forked child (with a [`Worker`]: the busy guard, the accept
//!   helper, "should I exit?"), `before_shutdown`; the seed's options under the same
//!   names. [`runtime::pidfile`] and [`runtime::systemd`] are usable on their own.
//! - [`policy`]: the pluggable deciders (`ScalingPolicy`, `ReloadPolicy`,
//!   `DisconnectPolicy`), their defaults and what they see and answer
//!   (`PoolSnapshot`, `Decision`, [`Time`], [`Pid`]...), re-exported from
//!   `preforkd-policies`: `use preforkd::policy::*;` is all a policy needs.
//! - [`sim`]: a deterministic simulator to model-test a policy against a workload.
//! - [`oracle`]: the invariants the machine keeps, checkable on any run.
//!
//! Each item has one home, and its documentation is there: the supervisor's at the
//! root, everything else in its module. The root also re-exports, as links, the
//! few names nearly every program writes: [`Prefork`], [`Worker`], [`RunError`] and
//! [`BoxError`] for a daemon, [`Time`] and [`Pid`], which every event speaks.
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

#[doc(hidden)] // test support for the fuzz targets and the property tests, not API
pub mod fuzzing;
pub mod oracle;
pub mod runtime;
pub mod sim;
// Private: its items' one path is the crate root (below).
mod supervisor;

/// The policy API (`preforkd-policies`), re-exported: the traits a policy
/// implements, what it sees and answers, and the built-in policies.
///
/// One glob import is all a policy needs:
///
/// ```
/// use preforkd::policy::*;
///
/// /// Keep 20 % spare, at least 2.
/// #[derive(Debug)]
/// struct Spare;
///
/// impl ScalingPolicy for Spare {
///     fn decide(&mut self, pool: &PoolSnapshot, _now: Time) -> Decision {
///         let want = (pool.total() / 5).max(2);
///         let spare = pool.idle + pool.starting;
///         if spare < want {
///             Decision::spawn(want - spare)
///         } else {
///             Decision::hold()
///         }
///     }
/// }
///
/// let mut p = Spare;
/// assert_eq!(p.decide(&PoolSnapshot::new(0, 0, 5, 150), Time::ZERO), Decision::spawn(2));
/// ```
pub mod policy {
    pub use preforkd_policies::*;
}

pub use supervisor::action::{Action, ChildSignal, Hook, Image, Level, Notify, SignalReason};
pub use supervisor::config::{ConfigError, Options, MAX_CHILDREN_LIMIT};
pub use supervisor::event::{
    ConnState, Connection, Event, ExitStatus, HookKind, Scoreboard, Signal, SlotReading, SlotState,
};
pub use supervisor::machine::{
    Counts, ExitCause, Exits, Handoff, Machine, MachineBuilder, Totals, CRASH_REPORT_EVERY,
    ROLLBACK_CRASHES,
};
pub use supervisor::rng::SplitMix64;
pub use supervisor::transitions::{State, TRANSITIONS};

#[doc(no_inline)]
pub use policy::{Pid, Time};
#[doc(no_inline)]
pub use runtime::{BoxError, Prefork, RunError, Worker};

/// The README's examples, compiled and run as doc tests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
