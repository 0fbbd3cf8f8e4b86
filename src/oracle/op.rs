//! The oracle's alphabet: abstract steps of the outside world, and their decoding
//! from bytes (what the property tests and the fuzz target generate).

use crate::{ExitStatus, Signal};

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
