//! What the supervisor core is told: events in.

use crate::policy::{Disconnect, Pid, Time};
use serde::{Deserialize, Serialize};

/// The signals the parent receives and reacts to, in [`Event::Signal`]. The runtime
/// maps OS signals onto these; several deliveries of one signal between two reads
/// coalesce into one event. What the parent sends to its children is another type,
/// [`ChildSignal`](crate::ChildSignal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Signal {
    /// Graceful stop (a second one: immediate).
    Term,
    /// Graceful stop, like TERM (a second one: immediate).
    Int,
    /// Immediate stop.
    Quit,
    /// Reload: rolling restart of the children.
    Hup,
    /// Reopen the log files, in the parent and every child.
    Usr1,
    /// Reserved for re-exec handoff; logged and ignored for now.
    Usr2,
    /// One more child (manual scale up).
    Ttin,
    /// One child fewer (manual scale down).
    Ttou,
    /// A child changed state; the runtime reaps and reports [`Event::ChildExited`].
    Chld,
}

impl Signal {
    /// The conventional upper-case name without the SIG prefix (`"TERM"`).
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Quit => "QUIT",
            Signal::Hup => "HUP",
            Signal::Usr1 => "USR1",
            Signal::Usr2 => "USR2",
            Signal::Ttin => "TTIN",
            Signal::Ttou => "TTOU",
            Signal::Chld => "CHLD",
        }
    }
}

/// How a child ended, as `waitpid` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It called exit with this code.
    Exited(i32),
    /// A signal (by number) killed it.
    Signaled(i32),
}

impl ExitStatus {
    /// A clean exit (code 0).
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited(c) => write!(f, "exit code {c}"),
            ExitStatus::Signaled(s) => write!(f, "signal {s}"),
        }
    }
}

/// A child's state in its scoreboard slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SlotState {
    /// Nobody in the slot.
    #[default]
    Empty,
    /// Forked, initialising.
    Starting,
    /// Waiting for work.
    Idle,
    /// Handling a request.
    Busy,
    /// Finishing up before exiting.
    Retiring,
}

/// One scoreboard slot as read at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SlotReading {
    /// The pid written by the child in the slot (0: none).
    pub pid: Pid,
    /// What the child says it is doing.
    pub state: SlotState,
    /// Requests served so far.
    pub requests: u64,
    /// When the current request started, if busy.
    pub request_start: Option<Time>,
    /// The child's last sign of life.
    pub heartbeat: Time,
    /// The child's resident set size in bytes, when the runtime measured it (it
    /// does when [`Options::max_child_memory`](crate::Options::max_child_memory) is
    /// set).
    pub memory: Option<u64>,
}

/// Every slot of the scoreboard at one instant, plus what the runtime knows of the
/// listen backlog. Slot `i` of `slots` is slot `i` of the pool.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Scoreboard {
    /// The slots, indexed by slot number.
    pub slots: Vec<SlotReading>,
    /// Connections waiting to be accepted, if known.
    pub backlog: Option<usize>,
}

/// The TCP state of a child's connection, as far as disconnect handling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnState {
    /// Both sides open.
    Established,
    /// The client closed; the child has not (a client disconnect).
    CloseWait,
    /// Any other state (the child closed first, handshake, time-wait...).
    Other,
}

/// One connection held by a child, seen at a netstat tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// The connection, with the pid of the child holding it.
    pub conn: Disconnect,
    /// Its state.
    pub state: ConnState,
}

/// A hook the runtime runs on the machine's behalf, named as in the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookKind {
    /// `after_init`: after daemonizing, before the first child.
    AfterInit,
    /// `before_shutdown`: when shutdown begins, before children are stopped.
    BeforeShutdown,
    /// `auto_reload_handler`.
    ReloadHandler,
    /// `on_client_disconnect`.
    ClientDisconnect,
}

/// An input to [`Machine::handle`](crate::Machine::handle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A signal reached the parent.
    Signal(Signal),
    /// A hook the machine asked for has run; `ok` is false if it failed.
    /// Only `after_init`'s outcome changes anything: a failure stops the start-up.
    HookFinished {
        /// Which hook.
        hook: HookKind,
        /// Whether it succeeded.
        ok: bool,
    },
    /// The runtime forked the child asked for by [`Action::Spawn`](crate::Action::Spawn).
    ChildSpawned {
        /// The slot from the spawn action.
        slot: usize,
        /// The new child's pid.
        pid: Pid,
    },
    /// The fork asked for in `slot` failed (EAGAIN, ENOMEM...); counted like a crash.
    SpawnFailed {
        /// The slot from the spawn action.
        slot: usize,
    },
    /// The child reported itself ready (before a scoreboard tick shows it).
    ChildReady {
        /// The child.
        pid: Pid,
    },
    /// A child was reaped.
    ChildExited {
        /// The child.
        pid: Pid,
        /// How it ended.
        status: ExitStatus,
    },
    /// The scoreboard was read.
    Scoreboard(&'a Scoreboard),
    /// The children's connections were listed.
    Netstat(&'a [Connection]),
    /// The periodic check (after [`Action::CheckForChanges`](crate::Action::CheckForChanges))
    /// found the code or configuration changed on disk.
    FilesChanged,
    /// The periodic check found the running executable replaced on disk.
    ExecutableChanged,
    /// The trial of the new executable asked for by
    /// [`Action::ProbeUpgrade`](crate::Action::ProbeUpgrade) ended: `ok` if it
    /// started and accepted the configuration and the handoff (the runtime logs
    /// why not).
    UpgradeProbed {
        /// Whether the new executable is fit to take over.
        ok: bool,
    },
    /// The [`Action::ReExec`](crate::Action::ReExec) could not be carried out (the
    /// exec or the handoff failed, said in the log): this image keeps serving.
    ReExecFailed,
    /// Nothing happened; the wake-up time from `poll_timeout` has come.
    Timer,
}
