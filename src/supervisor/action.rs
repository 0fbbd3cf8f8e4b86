//! What the supervisor core asks for: actions out.

use crate::policy::{Disconnect, Pid};
use crate::supervisor::event::HookKind;
use serde::{Deserialize, Serialize};

/// The signals the parent sends to a child, in [`Action::Signal`]: the three a
/// child obeys. What the parent itself receives is another type,
/// [`Signal`](crate::Signal).
///
/// Deliberately exhaustive: a signal added here must be mapped by every runtime
/// (and the simulator) that carries out actions, so a `match` on it needs no
/// catch-all arm, and none can turn an unknown signal into a KILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ChildSignal {
    /// Finish the request in hand, then exit.
    Term,
    /// Stop at once (the runtime sends SIGKILL).
    Kill,
    /// Reopen the log files.
    Usr1,
}

impl ChildSignal {
    /// The conventional upper-case name without the SIG prefix (`"TERM"`).
    pub fn name(self) -> &'static str {
        match self {
            ChildSignal::Term => "TERM",
            ChildSignal::Kill => "KILL",
            ChildSignal::Usr1 => "USR1",
        }
    }
}

/// Which executable an [`Action::ReExec`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Image {
    /// The executable on disk now: the upgrade.
    New,
    /// The image that handed over to this one, kept open by the runtime: the way
    /// back when the new code cannot take over (its `after_init` failed, or its
    /// children crash before one serves).
    Previous,
}

/// Why a signal is sent to a child; carried in [`Action::Signal`] for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignalReason {
    /// The scaling policy retired an idle child.
    ScaleDown,
    /// A reload retires an old-generation child.
    Reload,
    /// The child reached its request limit.
    MaxRequests,
    /// The child's request ran past the busy timeout.
    BusyTimeout,
    /// The child took too long to start.
    StartTimeout,
    /// The disconnect policy cancels the child's job.
    Disconnect,
    /// Shutdown.
    Shutdown,
    /// The child did not exit in time after TERM: KILL.
    Escalation,
    /// Log reopening (USR1 passed on).
    ReopenLogs,
    /// The child's memory exceeded `max_child_memory`.
    MemoryLimit,
}

/// What to tell the service manager (sd_notify).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notify {
    /// `READY=1`: children are serving.
    Ready,
    /// `RELOADING=1`.
    Reloading,
    /// `STOPPING=1`.
    Stopping,
    /// `WATCHDOG=1`: the keep-alive ping, every
    /// [`watchdog_interval`](crate::MachineBuilder::watchdog_interval).
    Watchdog,
    /// `STATUS=...` with the pool's counts.
    Status {
        /// Busy children.
        busy: usize,
        /// Idle children.
        idle: usize,
        /// Children starting.
        starting: usize,
    },
}

/// How loud a log record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    /// Something is wrong.
    Error,
    /// Something unexpected the supervisor recovered from.
    Warning,
    /// A state change worth knowing.
    Info,
    /// Detail.
    Debug,
}

/// A hook invocation, with its argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hook {
    /// `after_init`.
    AfterInit,
    /// `before_shutdown`.
    BeforeShutdown,
    /// `auto_reload_handler`.
    ReloadHandler,
    /// `on_client_disconnect`, with the connection.
    ClientDisconnect(Disconnect),
}

impl Hook {
    /// The hook's kind, without its argument.
    pub fn kind(&self) -> HookKind {
        match self {
            Hook::AfterInit => HookKind::AfterInit,
            Hook::BeforeShutdown => HookKind::BeforeShutdown,
            Hook::ReloadHandler => HookKind::ReloadHandler,
            Hook::ClientDisconnect(_) => HookKind::ClientDisconnect,
        }
    }
}

/// An output of the machine, taken with [`Machine::poll_action`](crate::Machine::poll_action).
/// Carry each one out in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[must_use = "an action the runtime does not carry out breaks the supervisor's bookkeeping"]
#[non_exhaustive]
pub enum Action {
    /// Fork a child into `slot` for `generation`, then report
    /// [`Event::ChildSpawned`](crate::Event::ChildSpawned) or
    /// [`Event::SpawnFailed`](crate::Event::SpawnFailed).
    Spawn {
        /// The scoreboard slot the child owns.
        slot: usize,
        /// The generation it belongs to.
        generation: u64,
        /// Its request limit (with jitter applied), if any.
        max_requests: Option<u64>,
    },
    /// Send `signal` to child `pid`.
    Signal {
        /// A live child.
        pid: Pid,
        /// TERM (finish, then exit), KILL or USR1.
        signal: ChildSignal,
        /// Why.
        reason: SignalReason,
    },
    /// Run a hook in the parent.
    RunHook(Hook),
    /// Reopen the parent's log files.
    ReopenLogs,
    /// Check whether the code or configuration changed; report
    /// [`Event::FilesChanged`](crate::Event::FilesChanged) if so.
    CheckForChanges,
    /// List the children's connections and report them with
    /// [`Event::Netstat`](crate::Event::Netstat): asked every
    /// [`disconnect_check_every`](crate::MachineBuilder::disconnect_check_every)
    /// while a child is busy, when disconnects are watched.
    CheckDisconnects,
    /// Try the executable on disk (the new code of an in-place upgrade) with this
    /// configuration and [`Machine::handoff`](crate::Machine::handoff), without
    /// disturbing anything; report [`Event::UpgradeProbed`](crate::Event::UpgradeProbed).
    ProbeUpgrade,
    /// Re-execute the parent in place (same pid) from `image`, handing over
    /// [`Machine::handoff`](crate::Machine::handoff), the listening sockets and the
    /// scoreboard; the new image adopts the running children. If it cannot be
    /// done, report [`Event::ReExecFailed`](crate::Event::ReExecFailed).
    ReExec(Image),
    /// Tell the service manager.
    Notify(Notify),
    /// Write a log record.
    Log {
        /// How loud.
        level: Level,
        /// The message.
        message: String,
    },
    /// Exit the parent with this code. Always the last action.
    Exit {
        /// The exit code.
        code: i32,
    },
}
