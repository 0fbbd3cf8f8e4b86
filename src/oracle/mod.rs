//! The invariants the supervisor keeps, checked from outside on any run.
//!
//! A [`Harness`] plays a fake runtime around a [`Machine`](crate::Machine): it turns abstract
//! [`Op`]s (a signal arrives, a child starts, gets busy, crashes, a client hangs up,
//! time passes...) into events, carries out the machine's actions on a model of the
//! children, and checks after every step:
//!
//! - the invariants of every step, which a [`Monitor`] checks from the events and
//!   actions alone (so any driver can check them, the simulator included):
//!   - live children (forking, starting, serving, retiring) never exceed
//!     `max_children`;
//!   - every signal targets a live child, and no child is TERMed twice (each child
//!     is retired at most once; only KILL may follow a TERM);
//!   - no spawn once shutdown has begun; `Exit` comes last, once, in `Stopped`;
//!   - the machine's live pids are exactly the children spawned and not yet reaped;
//!   - during a reload, no retirement takes the serving count below the minimum,
//!     and when the reload completes every old-generation child has been retired;
//! - a child that was ready and had served (a kill spree's victim) is no crash: if
//!   its death leaves fewer children than the policy's minimum, it is replaced in
//!   the same step, whatever the backoff;
//! - a crash loop is bounded: from the second crash in a row, the crash is never
//!   replaced in the same step. The harness counts crashes itself (a fork that
//!   failed; a child it did not stop that died unready, or before
//!   `min_healthy_uptime` without having served, or before it by itself), forgiving
//!   rather than strict: a streak ends at a reload or once a child forked since it
//!   began is ready and lives `min_healthy_uptime`. So the machine must count at
//!   least as many ([`crash_streak`](crate::Machine::crash_streak)), and a machine that
//!   forgets crashes is caught;
//!
//! and at the end ([`Harness::finish`]): with events quiet, the pool converges into
//! the scaling policy's quiet range; then a TERM always reaches `Stopped`, reaping
//! every child (KILLing those that ignore TERM after the deadline).
//!
//! The property tests, the fuzz target and users' own model tests share it. It
//! wraps any machine, whatever its policies: a scaling policy of your own is
//! checked the same way (the end checks use its
//! [`quiet_range`](crate::policy::ScalingPolicy::quiet_range)).
//!
//! ```
//! use preforkd::oracle::{Harness, Op};
//! use preforkd::policy::{Decision, PoolSnapshot, ScalingPolicy};
//! use preforkd::{Machine, Options, Signal, Time};
//!
//! /// Two children, always.
//! #[derive(Debug)]
//! struct Two;
//! impl ScalingPolicy for Two {
//!     fn decide(&mut self, pool: &PoolSnapshot, _: Time) -> Decision {
//!         match pool.total() {
//!             n if n < 2 => Decision::spawn(2 - n),
//!             n => Decision::retire(n - 2),
//!         }
//!     }
//!     fn quiet_range(&self) -> std::ops::RangeInclusive<usize> {
//!         2..=2
//!     }
//! }
//!
//! let m = Machine::builder(Options { max_children: 4, ..Options::default() })
//!     .scaling_policy(Two)
//!     .build()
//!     .unwrap();
//! let mut h = Harness::new(m);
//! for op in [Op::HookOk, Op::SpawnOk, Op::SpawnOk, Op::Ready(0), Op::Busy(1), Op::Signal(Signal::Hup)] {
//!     h.apply(op).unwrap();
//! }
//! h.finish().unwrap();
//! ```

mod harness;
mod monitor;

pub use harness::Harness;
pub use monitor::Monitor;

use crate::{ExitStatus, Signal};
use std::fmt;

/// One abstract step of the outside world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A signal reaches the parent.
    Signal(Signal),
    /// Time passes (milliseconds), then the timer fires.
    Advance(u16),
    /// Time jumps to the machine's deadline, and the timer fires.
    Timeout,
    /// `after_init` succeeded.
    HookOk,
    /// `after_init` failed.
    HookFail,
    /// The oldest pending fork succeeds.
    SpawnOk,
    /// The oldest pending fork fails.
    SpawnFail,
    /// Child `i` (modulo the live count) reports itself ready.
    Ready(u8),
    /// Child `i` takes a request (scoreboard tick).
    Busy(u8),
    /// Child `i` finishes its request (scoreboard tick).
    Idle(u8),
    /// Child `i` has served this many more requests (scoreboard tick).
    Served(u8, u8),
    /// Child `i` decides to leave by itself (scoreboard shows it retiring).
    SelfRetire(u8),
    /// Child `i` exits on its own.
    Exit(u8, ExitStatus),
    /// Children carry out the signals they got: KILLed ones die, TERMed ones that
    /// are not busy exit cleanly.
    Deliver,
    /// A pid that was never a child is reaped.
    BogusExit(u16),
    /// The last reaped child is reported again.
    DuplicateExit,
    /// A spawn report for a slot with no pending fork.
    BogusSpawn(u16),
    /// A scoreboard tick whose slots hold pids of nobody.
    StaleTick,
    /// Child `i`'s client hangs up (listed at every netstat tick from now on).
    Disconnect(u8),
    /// The reload check found changes.
    FilesChanged,
}

impl Op {
    /// Decodes a byte string into ops (for fuzzing): every input is valid.
    ///
    /// ```
    /// use preforkd::oracle::Op;
    /// assert!(!Op::decode(&[1, 2, 3, 4, 5]).is_empty());
    /// assert!(Op::decode(&[]).is_empty());
    /// ```
    pub fn decode(bytes: &[u8]) -> Vec<Op> {
        const SIGNALS: [Signal; 9] = [
            Signal::Term,
            Signal::Int,
            Signal::Quit,
            Signal::Hup,
            Signal::Usr1,
            Signal::Usr2,
            Signal::Ttin,
            Signal::Ttou,
            Signal::Chld,
        ];
        let mut ops = Vec::new();
        let mut it = bytes.iter().copied();
        while let Some(tag) = it.next() {
            let mut arg = || it.next().unwrap_or(0);
            let op = match tag % 20 {
                0 => Op::Signal(SIGNALS[usize::from(arg()) % SIGNALS.len()]),
                1 => Op::Advance(u16::from(arg()) * 8),
                2 => Op::Timeout,
                3 => Op::HookOk,
                4 => Op::HookFail,
                5 | 6 => Op::SpawnOk,
                7 => Op::SpawnFail,
                8 => Op::Ready(arg()),
                9 => Op::Busy(arg()),
                10 => Op::Idle(arg()),
                11 => Op::Served(arg(), arg()),
                12 => Op::SelfRetire(arg()),
                13 => {
                    let i = arg();
                    let s = arg();
                    let status = if s & 1 == 0 {
                        ExitStatus::Exited(i32::from(s >> 1))
                    } else {
                        ExitStatus::Signaled(i32::from(s >> 1))
                    };
                    Op::Exit(i, status)
                }
                14 => Op::Deliver,
                15 => Op::BogusExit(u16::from(arg())),
                16 => Op::DuplicateExit,
                17 => Op::BogusSpawn(u16::from(arg())),
                18 => {
                    if tag >= 128 {
                        Op::StaleTick
                    } else {
                        Op::Disconnect(arg())
                    }
                }
                _ => Op::FilesChanged,
            };
            ops.push(op);
        }
        ops
    }
}

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
