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

/// Every legal transition: (from, to, what causes it).
pub const TRANSITIONS: &[(State, State, &str)] = &[
    (State::Init, State::Spawning, "after_init done"),
    (State::Init, State::ShuttingDown, "TERM/INT/QUIT"),
    (State::Init, State::Stopped, "after_init failed"),
    (State::Spawning, State::Serving, "initial children ready"),
    (State::Spawning, State::Reloading, "HUP / files changed"),
    (State::Spawning, State::ShuttingDown, "TERM/INT/QUIT"),
    (State::Serving, State::Reloading, "HUP / files changed"),
    (State::Serving, State::ShuttingDown, "TERM/INT/QUIT"),
    (State::Reloading, State::Serving, "old generation retired"),
    (
        State::Reloading,
        State::Reloading,
        "HUP again: newer generation",
    ),
    (State::Reloading, State::ShuttingDown, "TERM/INT/QUIT"),
    (
        State::ShuttingDown,
        State::ShuttingDown,
        "second TERM/QUIT: immediate",
    ),
    (State::ShuttingDown, State::Stopped, "all children reaped"),
];

/// Whether `from → to` is in [`TRANSITIONS`].
pub(crate) fn is_legal(from: State, to: State) -> bool {
    TRANSITIONS.iter().any(|&(f, t, _)| f == from && t == to)
}
