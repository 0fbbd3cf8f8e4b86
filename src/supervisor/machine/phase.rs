//! The states with their data, and the one way to change state: a transition
//! named in [`TRANSITIONS`](crate::TRANSITIONS).

use super::Machine;
use crate::supervisor::action::{Action, Level, Notify};
use crate::supervisor::transitions::{cause, is_legal_because, State};

/// The state with its data: each variant holds exactly what is valid in it. The
/// times of a state (a shutdown's KILL, giving up) are in the timer table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Phase {
    Init,
    Spawning {
        /// Ready children needed before the pool counts as up.
        target: usize,
    },
    Serving,
    Reloading {
        /// The generation being rolled out; every child of an older one is retired.
        generation: u64,
        /// Ready children that must keep serving throughout.
        min_serving: usize,
        /// Children of the new generation to have when done.
        target: usize,
        /// Old children retired so far by this rollout.
        retired: usize,
        /// The newest generation that served before this chain of reloads began:
        /// its children are relied on; those of a later old generation only once
        /// proved.
        base: u64,
    },
    ShuttingDown {
        /// QUIT or a second TERM: children are KILLed, not asked.
        immediate: bool,
        /// The children were KILLed (at once, or when `graceful_timeout` ran out):
        /// the parent waits `kill_wait` for them to be reaped, then gives up.
        killed: bool,
    },
    Stopped {
        code: i32,
    },
}

impl Phase {
    pub(super) fn state(&self) -> State {
        match self {
            Phase::Init => State::Init,
            Phase::Spawning { .. } => State::Spawning,
            Phase::Serving => State::Serving,
            Phase::Reloading { .. } => State::Reloading,
            Phase::ShuttingDown { .. } => State::ShuttingDown,
            Phase::Stopped { .. } => State::Stopped,
        }
    }
}

impl Machine {
    /// Moves to `to`, for `cause`: the cause of its row in `TRANSITIONS`.
    pub(super) fn transition(&mut self, to: Phase, cause: &'static str) {
        debug_assert!(
            is_legal_because(self.phase.state(), to.state(), cause),
            "transition {:?} -> {:?} ({cause:?}) is not in TRANSITIONS",
            self.phase.state(),
            to.state()
        );
        self.phase = to;
    }

    /// Whether the pool serves (and so reloads and scales).
    pub(super) fn accepts_work(&self) -> bool {
        matches!(
            self.phase,
            Phase::Spawning { .. } | Phase::Serving | Phase::Reloading { .. }
        )
    }
}

impl Machine {
    /// Ends Spawning once the initial children serve (`spawn_goal` of them), and
    /// Reloading once no old child serves; either way READY is told.
    pub(super) fn complete_phase(&mut self, spawn_goal: Option<usize>) {
        let n = self.pool.counts();
        match self.phase {
            Phase::Spawning { .. } if spawn_goal.is_some_and(|g| n.serving() >= g) => {
                self.transition(Phase::Serving, cause::INITIAL_READY);
                self.log(Level::Info, format!("{} children serving", n.serving()));
                self.push(Action::Notify(Notify::Ready));
            }
            Phase::Reloading { generation, .. } if !self.pool.has_old(generation) => {
                self.transition(Phase::Serving, cause::OLD_RETIRED);
                self.log(
                    Level::Info,
                    format!("reload to generation {generation} complete"),
                );
                self.push(Action::Notify(Notify::Ready));
            }
            _ => {}
        }
    }
}
