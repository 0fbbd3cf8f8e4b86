//! The shared-memory scoreboard: one fixed slot per child, written lock-free by
//! the child that owns it, read by the parent (and by any process that opens the
//! file).
//!
//! Layout (version 1, native byte order, every record 64 bytes):
//!
//! | offset | header field | type |
//! |---|---|---|
//! | 0 | magic `PREFORKD` | `[u8; 8]` |
//! | 8 | layout version (1) | `u32` |
//! | 12 | slot count | `u32` |
//! | 16 | generation | `u64` |
//! | 24 | ready idle children | `u32` |
//! | 28 | wake-up pending | `u32` |
//! | 32 | stopping (graceful shutdown under way) | `u32` |
//! | 36 | the pool can grow (saturation wakes the parent) | `u32` |
//! | 40 | the parent wants to hear of the next busy child | `u32` |
//!
//! Slot `i` starts at `64 * (i + 1)`: pid `i32` at 0, state `u8` at 4 (0 empty,
//! 1 starting, 2 idle, 3 busy, 4 retiring), generation `u64` at 8, requests `u64`
//! at 16, current request start `u64` at 24 and last heartbeat `u64` at 32, both in
//! nanoseconds of `CLOCK_MONOTONIC`.

use crate::runtime::os;
use crate::{Pid, SlotReading, SlotState, Time};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::time::{clock_gettime, ClockId};
use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering};

const MAGIC: [u8; 8] = *b"PREFORKD";
const VERSION: u32 = 1;
const RECORD: usize = 64;

const EMPTY: u8 = 0;
const STARTING: u8 = 1;
const IDLE: u8 = 2;
const BUSY: u8 = 3;
const RETIRING: u8 = 4;

#[repr(C, align(64))]
pub(crate) struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    slots: AtomicU32,
    generation: AtomicU64,
    idle: AtomicU32,
    wake_pending: AtomicU32,
    stopping: AtomicU32,
    /// Non-zero while the pool has room to grow: saturation is worth a wake-up.
    can_grow: AtomicU32,
    /// Set by the parent when it wants to hear of the first child to get busy (to
    /// start looking for hung-up clients); the child that clears it wakes the parent.
    watch_busy: AtomicU32,
}

/// One child's record.
#[repr(C, align(64))]
pub(crate) struct Slot {
    pid: AtomicI32,
    state: AtomicU8,
    generation: AtomicU64,
    requests: AtomicU64,
    request_start: AtomicU64,
    heartbeat: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Header>() == RECORD);
const _: () = assert!(std::mem::size_of::<Slot>() == RECORD);

/// Nanoseconds of `CLOCK_MONOTONIC_COARSE`: read through the vDSO, no system call.
pub(crate) fn coarse_now_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE).map_or(0, ts_ns)
}

/// Nanoseconds of `CLOCK_MONOTONIC`.
pub(crate) fn now_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, ts_ns)
}

fn ts_ns(ts: nix::sys::time::TimeSpec) -> u64 {
    (ts.tv_sec() as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec() as u64)
}

/// The scoreboard mapping. Shared by the parent and every child (inherited across
/// fork); never unmapped, so the references it hands out are `'static`.
#[derive(Clone, Copy)]
pub(crate) struct Board {
    header: &'static Header,
    slots: &'static [Slot],
    /// The write end of the parent's wake-up pipe (children inherit it).
    wake_fd: RawFd,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board")
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl Board {
    /// Creates the scoreboard: in a new file at `path` (0600, refusing symlinks) or,
    /// without a path, in anonymous shared memory.
    pub(crate) fn create(path: Option<&Path>, slots: usize, wake_fd: RawFd) -> io::Result<Board> {
        let len = RECORD * (slots + 1);
        let file = match path {
            Some(p) => Some(create_file(p, len)?),
            None => None,
        };
        let (header, slot_refs) = os::map_board(slots, file.as_ref()).map_err(io::Error::from)?;
        // The mapping stays valid after the file is closed.
        drop(file);
        let board = Board {
            header,
            slots: slot_refs,
            wake_fd,
        };
        let h = board.header;
        h.magic.store(u64::from_ne_bytes(MAGIC), Ordering::Relaxed);
        h.version.store(VERSION, Ordering::Relaxed);
        h.slots.store(slots as u32, Ordering::Relaxed);
        for s in board.slots {
            s.pid.store(0, Ordering::Relaxed);
            s.state.store(EMPTY, Ordering::Relaxed);
        }
        Ok(board)
    }

    /// Parent, before forking into `slot`.
    pub(crate) fn prepare(&self, slot: usize, generation: u64) {
        let s = &self.slots[slot];
        s.pid.store(0, Ordering::Relaxed);
        s.generation.store(generation, Ordering::Relaxed);
        s.requests.store(0, Ordering::Relaxed);
        s.request_start.store(0, Ordering::Relaxed);
        s.heartbeat.store(coarse_now_ns(), Ordering::Relaxed);
        s.state.store(STARTING, Ordering::Release);
    }

    /// Parent, after the fork (the child writes the same pid).
    pub(crate) fn assign(&self, slot: usize, pid: i32) {
        self.slots[slot].pid.store(pid, Ordering::Release);
    }

    /// Parent, once the child in `slot` was reaped: keeps the idle count true and
    /// frees the slot.
    pub(crate) fn release(&self, slot: usize) {
        let s = &self.slots[slot];
        if s.state.swap(EMPTY, Ordering::AcqRel) == IDLE {
            self.header.idle.fetch_sub(1, Ordering::AcqRel);
        }
        s.pid.store(0, Ordering::Release);
    }

    /// Parent: the slot a pid is in, if any.
    pub(crate) fn slot_of(&self, pid: i32) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.pid.load(Ordering::Acquire) == pid)
    }

    /// Parent: whether a saturated pool could grow. At `max_children` a child
    /// taking the last idle slot wakes nobody: the parent could do nothing about it.
    pub(crate) fn set_can_grow(&self, yes: bool) {
        self.header
            .can_grow
            .store(u32::from(yes), Ordering::Relaxed);
    }

    /// Parent: asks to be woken by the next child that gets busy; returns whether a
    /// child is busy already (one that got busy just before the request was armed
    /// would not wake it).
    pub(crate) fn arm_busy_watch(&self) -> bool {
        self.header.watch_busy.store(1, Ordering::SeqCst);
        self.slots
            .iter()
            .any(|s| s.state.load(Ordering::SeqCst) == BUSY)
    }

    /// Parent: the generation new children get, for readers of the file.
    pub(crate) fn set_generation(&self, generation: u64) {
        self.header.generation.store(generation, Ordering::Relaxed);
    }

    /// Parent: graceful shutdown is under way (children drain the backlog).
    pub(crate) fn set_stopping(&self) {
        self.header.stopping.store(1, Ordering::Release);
    }

    /// Parent, before reading after a wake-up: later saturations wake it again.
    pub(crate) fn clear_wake(&self) {
        self.header.wake_pending.store(0, Ordering::Release);
    }

    /// Parent: every slot, with times relative to `origin_ns`, into `out`.
    pub(crate) fn read_into(&self, origin_ns: u64, out: &mut Vec<SlotReading>) {
        out.clear();
        let t = |ns: u64| {
            Time::from_duration(std::time::Duration::from_nanos(
                ns.saturating_sub(origin_ns),
            ))
        };
        for s in self.slots {
            let state = match s.state.load(Ordering::Acquire) {
                STARTING => SlotState::Starting,
                IDLE => SlotState::Idle,
                BUSY => SlotState::Busy,
                RETIRING => SlotState::Retiring,
                _ => SlotState::Empty,
            };
            let start = s.request_start.load(Ordering::Relaxed);
            out.push(SlotReading {
                pid: Pid(s.pid.load(Ordering::Acquire)),
                state,
                requests: s.requests.load(Ordering::Relaxed),
                request_start: (state == SlotState::Busy && start != 0).then(|| t(start)),
                heartbeat: t(s.heartbeat.load(Ordering::Relaxed)),
                // Measured by the runtime from /proc when a limit asks for it.
                memory: None,
            });
        }
    }

    /// The child's handle on its own slot.
    pub(crate) fn worker_slot(&self, slot: usize) -> WorkerSlot {
        WorkerSlot {
            board: *self,
            slot: &self.slots[slot],
        }
    }

    pub(crate) fn stopping(&self) -> bool {
        self.header.stopping.load(Ordering::Acquire) != 0
    }

    fn wake_parent(&self) {
        if self.header.wake_pending.swap(1, Ordering::AcqRel) == 0 && self.wake_fd >= 0 {
            // A full pipe means a wake-up is already pending: nothing lost.
            let _ = nix::unistd::write(os::borrow_fd(self.wake_fd), &[1]);
        }
    }
}

fn create_file(path: &Path, len: usize) -> io::Result<File> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("scoreboard {}: {e}", path.display()),
        )
    })?;
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("scoreboard {} is not a regular file", path.display()),
        ));
    }
    // A scoreboard left by an earlier run is reset, not trusted.
    file.set_len(0)?;
    file.set_len(len as u64)?;
    // Another user's file would keep its mode: insist on 0600.
    nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(0o600)).map_err(io::Error::from)?;
    Ok(file)
}

/// The state a child reports (the seed's `update_scoreboard` states: `_` idle,
/// `R`/`W` busy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Waiting for work.
    Idle,
    /// Handling a request.
    Busy,
}

/// A child's own slot: the only one it writes.
#[derive(Clone, Copy)]
pub(crate) struct WorkerSlot {
    board: Board,
    slot: &'static Slot,
}

impl WorkerSlot {
    /// First thing in the child: claim the slot.
    pub(crate) fn claim(&self, pid: i32) {
        self.slot.pid.store(pid, Ordering::Release);
    }

    // The child is the only writer of its slot while it lives, so it reads its own
    // state and counter with plain loads and writes them with plain stores: no
    // locked instruction except on the shared idle count.

    fn set_state(&self, state: u8) -> u8 {
        let prev = self.slot.state.load(Ordering::Relaxed);
        self.slot.state.store(state, Ordering::Release);
        prev
    }

    /// Ready for work (idle).
    pub(crate) fn ready(&self) {
        self.slot
            .heartbeat
            .store(coarse_now_ns(), Ordering::Relaxed);
        let prev = self.set_state(IDLE);
        if prev != IDLE {
            self.board.header.idle.fetch_add(1, Ordering::AcqRel);
        }
        if prev == STARTING {
            // The parent wants to know promptly that the pool is up.
            self.board.wake_parent();
        }
    }

    /// Idle → busy. The child that takes the last idle slot wakes the parent.
    pub(crate) fn begin(&self) {
        let now = coarse_now_ns();
        self.slot.request_start.store(now, Ordering::Relaxed);
        self.slot.heartbeat.store(now, Ordering::Relaxed);
        let h = &self.board.header;
        let saturated = self.set_state(BUSY) == IDLE
            && h.idle.fetch_sub(1, Ordering::AcqRel) == 1
            && h.can_grow.load(Ordering::Relaxed) != 0;
        // A plain load first: the swap (a locked instruction) only when armed.
        let watched = h.watch_busy.load(Ordering::Relaxed) != 0
            && h.watch_busy.swap(0, Ordering::AcqRel) != 0;
        if saturated || watched {
            self.board.wake_parent();
        }
    }

    /// Busy → idle, one more request served.
    pub(crate) fn end(&self) {
        let n = self.slot.requests.load(Ordering::Relaxed);
        self.slot.requests.store(n + 1, Ordering::Relaxed);
        if self.set_state(IDLE) != IDLE {
            self.board.header.idle.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Leaving: no longer idle, not to be counted as capacity.
    pub(crate) fn retire(&self) {
        if self.set_state(RETIRING) == IDLE {
            self.board.header.idle.fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn requests(&self) -> u64 {
        self.slot.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn stopping(&self) -> bool {
        self.board.stopping()
    }
}

/// One slot of a scoreboard read from another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlotInfo {
    /// The child's pid (0: free slot).
    pub pid: i32,
    /// What it is doing.
    pub state: SlotState,
    /// Its generation.
    pub generation: u64,
    /// Requests it has served.
    pub requests: u64,
}

/// Reads a scoreboard file written by a running preforkd parent (for status tools
/// and tests). Checks the magic, version and size; a file that is not a preforkd
/// scoreboard is an `InvalidData` error naming the problem.
pub fn read_scoreboard_file(path: &Path) -> io::Result<Vec<SlotInfo>> {
    let data = std::fs::read(path)?;
    let bad = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    if data.len() < RECORD || data[..8] != MAGIC {
        return Err(bad("not a preforkd scoreboard (bad magic)".into()));
    }
    let u32_at = |o: usize| u32::from_ne_bytes(data[o..o + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |o: usize| u64::from_ne_bytes(data[o..o + 8].try_into().unwrap_or([0; 8]));
    if u32_at(8) != VERSION {
        return Err(bad(format!(
            "layout version {} (this reader knows {VERSION})",
            u32_at(8)
        )));
    }
    let slots = u32_at(12) as usize;
    if data.len() != RECORD * (slots + 1) {
        return Err(bad(format!("{} bytes for {slots} slots", data.len())));
    }
    Ok((0..slots)
        .map(|i| {
            let o = RECORD * (i + 1);
            SlotInfo {
                pid: i32::from_ne_bytes(data[o..o + 4].try_into().unwrap_or([0; 4])),
                state: match data[o + 4] {
                    STARTING => SlotState::Starting,
                    IDLE => SlotState::Idle,
                    BUSY => SlotState::Busy,
                    RETIRING => SlotState::Retiring,
                    _ => SlotState::Empty,
                },
                generation: u64_at(o + 8),
                requests: u64_at(o + 16),
            }
        })
        .collect())
}
