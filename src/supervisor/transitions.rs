//! The states of the supervisor and the transitions between them. The table here is
//! the single source of truth: `docs/architecture.md` draws it, and a test checks the
//! drawing against it.

use serde::{Deserialize, Serialize};

/// The supervisor's state, without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum State {
    /// Created; `after_init` is running.
    Init,
    /// The first children are starting.
    Spawning,
    /// Serving, scaling with the load.
    Serving,
    /// Rolling the children over to a new generation.
    Reloading,
    /// Stopping children; no more spawning.
    ShuttingDown,
    /// Done; the parent exits.
    Stopped,
}

impl State {
    /// Every state, in order.
    pub const ALL: [State; 6] = [
        State::Init,
        State::Spawning,
        State::Serving,
        State::Reloading,
        State::ShuttingDown,
        State::Stopped,
    ];

    /// The state's name as in the docs.
    pub fn name(self) -> &'static str {
        match self {
            State::Init => "Init",
            State::Spawning => "Spawning",
            State::Serving => "Serving",
            State::Reloading => "Reloading",
            State::ShuttingDown => "ShuttingDown",
            State::Stopped => "Stopped",
        }
    }
}

/// The causes in [`TRANSITIONS`], by name: the machine names the one it acts on.
pub(crate) mod cause {
    /// `after_init` succeeded.
    pub(crate) const AFTER_INIT_DONE: &str = "after_init done";
    /// `after_init` failed.
    pub(crate) const AFTER_INIT_FAILED: &str = "after_init failed";
    /// A stop was asked for.
    pub(crate) const STOP: &str = "TERM/INT/QUIT";
    /// As many children as the pool starts with are ready.
    pub(crate) const INITIAL_READY: &str = "initial children ready";
    /// A reload was asked for.
    pub(crate) const RELOAD: &str = "HUP / files changed";
    /// `after_init` succeeded in an image that adopted the previous one's children.
    pub(crate) const ADOPTED: &str = "after_init done: adopted children";
    /// A reload was asked for during a reload.
    pub(crate) const RELOAD_AGAIN: &str = "HUP again: newer generation";
    /// No child of an older generation serves any more.
    pub(crate) const OLD_RETIRED: &str = "old generation retired";
    /// A second stop, or QUIT, during a graceful shutdown.
    pub(crate) const STOP_AGAIN: &str = "second TERM/QUIT: immediate";
    /// Children still alive when `graceful_timeout` ran out are KILLed.
    pub(crate) const GRACEFUL_TIMEOUT: &str = "graceful_timeout passed: KILL";
    /// Every child was reaped.
    pub(crate) const ALL_REAPED: &str = "all children reaped";
    /// KILLed children were still not reaped after `kill_wait`.
    pub(crate) const GIVE_UP: &str = "kill_wait passed: exit 1";
}

/// Every legal transition: (from, to, what causes it). A pair of states may have
/// more than one row, one per cause.
pub const TRANSITIONS: &[(State, State, &str)] = &[
    (State::Init, State::Spawning, cause::AFTER_INIT_DONE),
    (State::Init, State::Reloading, cause::ADOPTED),
    (State::Init, State::ShuttingDown, cause::STOP),
    (State::Init, State::Stopped, cause::AFTER_INIT_FAILED),
    (State::Spawning, State::Serving, cause::INITIAL_READY),
    (State::Spawning, State::Reloading, cause::RELOAD),
    (State::Spawning, State::ShuttingDown, cause::STOP),
    (State::Serving, State::Reloading, cause::RELOAD),
    (State::Serving, State::ShuttingDown, cause::STOP),
    (State::Reloading, State::Serving, cause::OLD_RETIRED),
    (State::Reloading, State::Reloading, cause::RELOAD_AGAIN),
    (State::Reloading, State::ShuttingDown, cause::STOP),
    (State::ShuttingDown, State::ShuttingDown, cause::STOP_AGAIN),
    (
        State::ShuttingDown,
        State::ShuttingDown,
        cause::GRACEFUL_TIMEOUT,
    ),
    (State::ShuttingDown, State::Stopped, cause::ALL_REAPED),
    (State::ShuttingDown, State::Stopped, cause::GIVE_UP),
];

/// Whether `from → to` is in [`TRANSITIONS`] with this cause.
pub(crate) fn is_legal_because(from: State, to: State, why: &str) -> bool {
    TRANSITIONS
        .iter()
        .any(|&(f, t, c)| f == from && t == to && c == why)
}
