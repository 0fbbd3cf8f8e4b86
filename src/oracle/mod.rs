//! The invariants the supervisor keeps, checked from outside on any run.
//!
//! A [`Harness`] plays a fake runtime around a [`Machine`](crate::Machine): it
//! turns abstract [`Op`]s (a signal arrives, a child starts, gets busy, crashes, a
//! client hangs up, time passes...) into events, carries out the machine's actions
//! on a model of the children, and checks after every step:
//!
//! - live children (forking, starting, serving, retiring) never exceed `max_children`;
//! - every signal targets a live child, and no child is TERMed twice (each child is
//!   retired at most once; only KILL may follow a TERM);
//! - no spawn once shutdown has begun; `Exit` comes last, once, in `Stopped`;
//! - the machine's live pids are exactly the children spawned and not yet reaped;
//! - during a reload, no retirement takes the serving count below the minimum, and
//!   when the reload completes every old-generation child has been retired;
//! - a child that was ready and had served (a kill spree's victim) is no crash: if
//!   its death leaves fewer children than the policy's minimum, it is replaced in
//!   the same step, whatever the backoff;
//! - a crash loop is bounded: from the second crash in a row, the crash is never
//!   replaced in the same step. The harness counts crashes itself (a fork that
//!   failed; a child it did not stop that died unready, or before
//!   `min_healthy_uptime` without having served, or before it by itself), forgiving
//!   rather than strict: a streak ends at a reload or once a child forked since it
//!   began is ready and lives `min_healthy_uptime`. So the machine must count at
//!   least as many ([`crash_streak`](crate::Machine::crash_streak)), and a
//!   machine that forgets crashes is caught;
//!
//! and at the end ([`Harness::finish`]): with events quiet, the pool converges into
//! the scaling policy's quiet range; then a TERM always reaches `Stopped`, reaping
//! every child (KILLing those that ignore TERM after the deadline).
//!
//! The property tests, the fuzz target and users' own model tests share it.
//!
//! ```
//! use preforkd::oracle::{Harness, Op};
//! use preforkd::{Machine, Options, Signal};
//! let m = Machine::new(Options { prefork: 2, max_children: 4, ..Options::default() }).unwrap();
//! let mut h = Harness::new(m);
//! for op in [Op::HookOk, Op::SpawnOk, Op::SpawnOk, Op::Ready(0), Op::Busy(1), Op::Signal(Signal::Hup)] {
//!     h.apply(op).unwrap();
//! }
//! h.finish().unwrap();
//! ```

// `op.rs`: the ops and their decoding from bytes. `harness.rs`: the model of the
// children, ops turned into events; under `harness/`, `actions.rs` checks each
// action, `crashes.rs` reaps and counts the crash streak, `ending.rs` settles the
// pool and shuts it down.
mod harness;
mod op;

pub use harness::Harness;
pub use op::Op;

use std::fmt;

/// A broken invariant: what, and at which step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The index of the op (or of the finishing phase) where it was seen.
    pub step: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {}: {}", self.step, self.message)
    }
}

impl std::error::Error for Violation {}
