//! Cumulative counters of what the machine did: spawns, exits by cause, reloads,
//! upgrades, scaling decisions. Kept by the pure machine (it is the one that
//! knows why a child left), read with [`Machine::totals`], handed over across an
//! in-place upgrade so they keep counting.

use super::Machine;
use serde::{Deserialize, Serialize};

/// Why a child left, as [`Totals::exits`] counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExitCause {
    /// It ended by itself, not asked to: a failure (a non-zero exit, a signal no
    /// one in the parent sent: a fault, a KILL from outside), or a start that did
    /// not come in time, or a main loop that left before serving. Wider than the
    /// crash-loop backoff's count, which forgives a child that had served.
    Crash,
    /// Retired by the parent: scale-down, reload, request limit.
    Retire,
    /// Stopped by the busy timeout.
    BusyTimeout,
    /// Retired over `max_child_memory`.
    MemoryLimit,
    /// Stopped after its client disconnected (the disconnect policy).
    Disconnect,
    /// Stopped by a shutdown.
    Shutdown,
    /// Anything else: a child that had served and exited cleanly by itself.
    Other,
}

impl ExitCause {
    /// Every cause, in the order the metrics list them.
    pub const ALL: [ExitCause; 7] = [
        ExitCause::Crash,
        ExitCause::Retire,
        ExitCause::BusyTimeout,
        ExitCause::MemoryLimit,
        ExitCause::Disconnect,
        ExitCause::Shutdown,
        ExitCause::Other,
    ];

    /// The snake-case name (`"busy_timeout"`): a label value in the metrics.
    pub fn name(self) -> &'static str {
        match self {
            ExitCause::Crash => "crash",
            ExitCause::Retire => "retire",
            ExitCause::BusyTimeout => "busy_timeout",
            ExitCause::MemoryLimit => "memory_limit",
            ExitCause::Disconnect => "disconnect",
            ExitCause::Shutdown => "shutdown",
            ExitCause::Other => "other",
        }
    }
}

/// Exits counted by [`ExitCause`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Exits {
    crash: u64,
    retire: u64,
    busy_timeout: u64,
    memory_limit: u64,
    disconnect: u64,
    shutdown: u64,
    other: u64,
}

impl Exits {
    /// The exits of `cause` so far.
    pub fn get(&self, cause: ExitCause) -> u64 {
        match cause {
            ExitCause::Crash => self.crash,
            ExitCause::Retire => self.retire,
            ExitCause::BusyTimeout => self.busy_timeout,
            ExitCause::MemoryLimit => self.memory_limit,
            ExitCause::Disconnect => self.disconnect,
            ExitCause::Shutdown => self.shutdown,
            ExitCause::Other => self.other,
        }
    }

    /// Every exit, whatever its cause.
    pub fn total(&self) -> u64 {
        ExitCause::ALL.iter().map(|&c| self.get(c)).sum()
    }

    fn bump(&mut self, cause: ExitCause) {
        let n = match cause {
            ExitCause::Crash => &mut self.crash,
            ExitCause::Retire => &mut self.retire,
            ExitCause::BusyTimeout => &mut self.busy_timeout,
            ExitCause::MemoryLimit => &mut self.memory_limit,
            ExitCause::Disconnect => &mut self.disconnect,
            ExitCause::Shutdown => &mut self.shutdown,
            ExitCause::Other => &mut self.other,
        };
        *n = n.saturating_add(1);
    }
}

/// What the machine did since the daemon started (across in-place upgrades:
/// the counts are handed over). Every field only grows.
///
/// ```
/// use preforkd::{Event, HookKind, Machine, Options, Time};
/// let mut m = Machine::new(Options { prefork: 2, ..Options::default() }).unwrap();
/// m.handle(Time::ZERO, Event::HookFinished { hook: HookKind::AfterInit, ok: true });
/// while m.poll_action().is_some() {}
/// m.handle(Time::ZERO, Event::ChildSpawned { slot: 0, pid: preforkd::Pid(10) });
/// assert_eq!(m.totals().spawns, 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Totals {
    /// Children forked (reported by [`Event::ChildSpawned`](crate::Event::ChildSpawned)).
    pub spawns: u64,
    /// Forks that failed ([`Event::SpawnFailed`](crate::Event::SpawnFailed)).
    pub spawn_failures: u64,
    /// Children reaped, by why they left.
    pub exits: Exits,
    /// Requests served by children that have exited (the live ones' are on the
    /// scoreboard).
    pub exited_requests: u64,
    /// Reloads begun (HUP, a change found, a reload policy's plan); an upgrade's
    /// rollout is counted in `upgrades`.
    pub reloads: u64,
    /// In-place upgrades begun (USR2, a new executable found).
    pub upgrades_begun: u64,
    /// Upgrades whose new image took the children over.
    pub upgrades_done: u64,
    /// Upgrades abandoned before the re-exec: the trial failed, or the exec did.
    pub upgrades_abandoned: u64,
    /// Upgrades whose new image handed the children back to the previous one.
    pub upgrades_returned: u64,
    /// Scaling-policy decisions that added children (at least one spawned).
    pub scale_ups: u64,
    /// Scaling-policy decisions that retired children (at least one).
    pub scale_downs: u64,
    /// Children the scaling policy's decisions spawned.
    pub scaled_up_children: u64,
    /// Children the scaling policy's decisions retired.
    pub scaled_down_children: u64,
}

/// Adds one, never overflowing.
pub(super) fn inc(n: &mut u64, by: u64) {
    *n = n.saturating_add(by);
}

impl Totals {
    pub(super) fn exited(&mut self, cause: ExitCause, requests: u64) {
        self.exits.bump(cause);
        inc(&mut self.exited_requests, requests);
    }
}

impl Machine {
    /// The cumulative counters (see [`Totals`]).
    pub fn totals(&self) -> Totals {
        self.totals
    }
}
