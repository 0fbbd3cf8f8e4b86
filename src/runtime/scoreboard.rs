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
//! | 44 | the parent's pid (the holder of the file's lock) | `i32` |
//! | 48 | graceful-shutdown drain: connections left to take + 1 (0: not counted yet) | `u32` |
//! | 52 | images that took over in place (bits 0-15), upgrades abandoned (16-31) | `u32` |
//! | 56 | log reopenings done (bits 0-15), failed (16-31) | `u32` |
//! | 60 | TTIN/TTOU nudges taken (bits 0-15), ignored (16-31) | `u32` |
//!
//! The three counters at 52-60 let a controller (`preforkd reload`, `upgrade`,
//! `reopen-logs`, `scale`) see that the signal it sent had its effect; each half
//! wraps at 65,536 and only its change matters. An image older than them leaves
//! them at 0.
//!
//! Slot `i` starts at `64 * (i + 1)`: pid `i32` at 0, state `u8` at 4 (0 empty,
//! 1 starting, 2 idle, 3 busy, 4 retiring), retired alone `u8` at 5 (1: the parent
//! retires this child by itself, its TERM is no shutdown), generation `u64` at 8, requests `u64`
//! at 16, current request start `u64` at 24 and last heartbeat `u64` at 32, both in
//! nanoseconds of `CLOCK_MONOTONIC`, then the connection it accepted last
//! ([`Worker::accept`] sets it, and the parent looks there for a client that hung
//! up): a `u64` at 40 holding its descriptor plus one in bits 0-31 (0: none
//! known), its client's port in bits 32-47, the address family (4 or 6) in bits
//! 48-51 and a count of writes in bits 52-63; and the client's address, 16
//! bytes in network order at 48 (IPv4 in the first four).
//!
//! [`Worker::accept`]: crate::Worker::accept
//!
//! A scoreboard file is created or reused only under an exclusive `flock(2)`,
//! taken without blocking and held by the parent for its whole life: a second
//! instance given the same path is refused ("in use by another instance (pid N)")
//! and never truncates the live file. Children close their copy of the descriptor
//! first thing (as they do the pid file's), so the lock is the parent's alone and
//! dies with it: a new instance can take over a file whose parent was killed even
//! while an orphaned child is still on its way out. The file must be a regular
//! file with a single link, owned by the parent's effective uid.

use crate::runtime::os;
use crate::{Pid, SlotReading, SlotState, Time};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::time::{clock_gettime, ClockId};
use std::fs::File;
use std::io;
use std::net::SocketAddr;
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
    /// The parent's pid, for the error a second instance gets.
    owner: AtomicI32,
    /// During a graceful shutdown, the connections the pool still takes from the
    /// queue, plus one; 0 until the first stopping child counts the queue.
    drain_left: AtomicU32,
    /// Low half: images that adopted this board (an upgrade, or its way back);
    /// high half: upgrades abandoned.
    upgrades: AtomicU32,
    /// Low half: reopenings of the logs that all succeeded; high half: failed.
    reopens: AtomicU32,
    /// Low half: scaling nudges (TTIN/TTOU) handed to the policy; high half:
    /// ignored (not serving).
    nudges: AtomicU32,
}

/// One child's record.
#[repr(C, align(64))]
pub(crate) struct Slot {
    pid: AtomicI32,
    state: AtomicU8,
    /// Set by the parent before it TERMs this child alone (scale-down, reload,
    /// limits): a TERM without it comes from a shutdown, whoever sent it.
    retired_alone: AtomicU8,
    generation: AtomicU64,
    requests: AtomicU64,
    request_start: AtomicU64,
    heartbeat: AtomicU64,
    /// The connection the child accepted last, in one word so that it is read
    /// whole: its descriptor plus one (bits 0-31; 0: none known, or being
    /// written), its client's port (32-47) and address family (48-51: 4 or 6),
    /// and a count of the writes (52-63) that tells a reader the address below
    /// was rewritten meanwhile. Where the parent looks for a client that hung up.
    conn: AtomicU64,
    /// That connection's client's address (IPv4 in the first four bytes), in
    /// network order.
    peer_ip: [AtomicU64; 2],
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
    /// Creates the scoreboard: in a file at `path` (0600, refusing symlinks, locked:
    /// see the [module docs](self)) or, without a path, in a memory file (shared
    /// like anonymous memory, and able to cross an in-place upgrade's exec). The
    /// file is returned with the board: its lock lasts as long as it is open, so
    /// the caller keeps it for its life (and children close it).
    pub(crate) fn create(
        path: Option<&Path>,
        slots: usize,
        wake_fd: RawFd,
    ) -> io::Result<(Board, File)> {
        let len = RECORD * (slots + 1);
        let file = match path {
            Some(p) => create_file(p, len)?,
            // A memory file, not anonymous memory: an in-place upgrade's new image
            // maps it again.
            None => {
                let f = os::memfd("preforkd-scoreboard")?;
                f.set_len(len as u64)?;
                f
            }
        };
        let (header, slot_refs) = os::map_board(slots, Some(&file)).map_err(io::Error::from)?;
        let board = Board {
            header,
            slots: slot_refs,
            wake_fd,
        };
        let h = board.header;
        h.magic.store(u64::from_ne_bytes(MAGIC), Ordering::Relaxed);
        h.version.store(VERSION, Ordering::Relaxed);
        h.slots.store(slots as u32, Ordering::Relaxed);
        h.owner.store(std::process::id() as i32, Ordering::Relaxed);
        for s in board.slots {
            s.pid.store(0, Ordering::Relaxed);
            s.state.store(EMPTY, Ordering::Relaxed);
        }
        Ok((board, file))
    }

    /// Maps again the scoreboard an in-place upgrade's previous image created
    /// (`file`, a memory file or the `scoreboard_path` file, still locked), with
    /// its children's slots as they are. Refused unless it is a scoreboard of
    /// `slots` slots.
    pub(crate) fn adopt(file: &File, slots: usize, wake_fd: RawFd) -> io::Result<Board> {
        let len = RECORD * (slots + 1);
        if file.metadata()?.len() != len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the handed-over scoreboard is not one of {slots} slots"),
            ));
        }
        let (header, slot_refs) = os::map_board(slots, Some(file)).map_err(io::Error::from)?;
        let board = Board {
            header,
            slots: slot_refs,
            wake_fd,
        };
        let h = board.header;
        if h.magic.load(Ordering::Relaxed) != u64::from_ne_bytes(MAGIC)
            || h.slots.load(Ordering::Relaxed) as usize != slots
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the handed-over scoreboard's header is not preforkd's",
            ));
        }
        Ok(board)
    }

    /// Parent, before forking into `slot`.
    pub(crate) fn prepare(&self, slot: usize, generation: u64) {
        let s = &self.slots[slot];
        s.pid.store(0, Ordering::Relaxed);
        s.retired_alone.store(0, Ordering::Relaxed);
        s.generation.store(generation, Ordering::Relaxed);
        s.requests.store(0, Ordering::Relaxed);
        s.request_start.store(0, Ordering::Relaxed);
        s.heartbeat.store(coarse_now_ns(), Ordering::Relaxed);
        s.conn.store(0, Ordering::Relaxed);
        s.state.store(STARTING, Ordering::Release);
    }

    /// Parent: whether the child in `slot` is busy (`None`: not), and then its
    /// requests served so far (a look's verdict is kept only if they have not
    /// changed: the child is still on the same request) and the connection it
    /// accepted last, if it said: its descriptor and its client's address.
    pub(crate) fn busy_with(&self, slot: usize) -> Option<(u64, Option<(RawFd, SocketAddr)>)> {
        let s = self.slots.get(slot)?;
        if s.state.load(Ordering::Acquire) != BUSY {
            return None;
        }
        Some((s.requests.load(Ordering::Relaxed), Self::conn_in(s)))
    }

    /// The connection word and the address, read whole (`None` if none is
    /// known, or the child was writing the next one).
    fn conn_in(s: &Slot) -> Option<(RawFd, SocketAddr)> {
        let before = s.conn.load(Ordering::Acquire);
        let fd = (before as u32).checked_sub(1)?;
        let ip = [
            s.peer_ip[0].load(Ordering::Relaxed).to_ne_bytes(),
            s.peer_ip[1].load(Ordering::Relaxed).to_ne_bytes(),
        ];
        // The child clears the descriptor and counts a write before it writes
        // the address, and sets both after (see `WorkerSlot::set_conn`): the same
        // word on both sides means the address read is that connection's.
        std::sync::atomic::fence(Ordering::Acquire);
        if s.conn.load(Ordering::Relaxed) != before {
            return None;
        }
        let mut octets = [0u8; 16];
        octets[..8].copy_from_slice(&ip[0]);
        octets[8..].copy_from_slice(&ip[1]);
        let port = (before >> 32) as u16;
        let peer = match (before >> 48) & 0xf {
            4 => SocketAddr::from(([octets[0], octets[1], octets[2], octets[3]], port)),
            6 => SocketAddr::from((octets, port)),
            _ => return None,
        };
        Some((RawFd::try_from(fd).ok()?, peer))
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

    /// The parent's observer of children that do not report for themselves
    /// (`preforkd run`): marks the child `pid` in `slot` busy or idle, as its
    /// connections say, as the child would (request start, requests served, the
    /// idle count, the wake-ups). A starting child is ready once it holds a
    /// connection, or once it has been up `settle` with no connection waiting
    /// (`queued`): a command still loading while connections queue is not idle
    /// capacity, and one that fails soon after its start was never ready. Only
    /// while the slot is that child's: a slot emptied or retiring meanwhile is
    /// left alone (a compare-and-swap on its state).
    pub(crate) fn observed(
        &self,
        slot: usize,
        pid: i32,
        busy: bool,
        queued: bool,
        settle: std::time::Duration,
    ) {
        let Some(s) = self.slots.get(slot) else {
            return;
        };
        if s.pid.load(Ordering::Acquire) != pid {
            return;
        }
        let h = &self.header;
        let starting = s.state.load(Ordering::Acquire) == STARTING;
        // Its heartbeat is its fork's time until it is ready.
        let up = coarse_now_ns().saturating_sub(s.heartbeat.load(Ordering::Relaxed));
        if starting && !busy && (queued || u128::from(up) < settle.as_nanos()) {
            return;
        }
        if busy || starting {
            let now = coarse_now_ns();
            s.request_start.store(now, Ordering::Relaxed);
            s.heartbeat.store(now, Ordering::Relaxed);
        }
        if starting {
            let to = if busy { BUSY } else { IDLE };
            if s.state
                .compare_exchange(STARTING, to, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                if !busy {
                    h.idle.fetch_add(1, Ordering::AcqRel);
                }
                // As a library child's `ready`: the parent wants to know at once.
                self.wake_parent();
            }
            return;
        }
        let (from, to) = if busy { (IDLE, BUSY) } else { (BUSY, IDLE) };
        if s.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        if busy {
            let saturated = h.idle.fetch_sub(1, Ordering::AcqRel) == 1
                && h.can_grow.load(Ordering::Relaxed) != 0;
            let watched = h.watch_busy.load(Ordering::Relaxed) != 0
                && h.watch_busy.swap(0, Ordering::AcqRel) != 0;
            if saturated || watched {
                self.wake_parent();
            }
        } else {
            s.requests.fetch_add(1, Ordering::Relaxed);
            h.idle.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The observer: connections wait in a listener's queue. Wakes the parent
    /// if the pool can grow (a full pool has nothing to do about it).
    pub(crate) fn queue_waiting(&self) {
        if self.header.can_grow.load(Ordering::Relaxed) != 0 {
            self.wake_parent();
        }
    }

    /// The slots whose child is starting (a cooperative command has not said it
    /// is ready yet), as a bit per slot of the first 128.
    pub(crate) fn starting(&self) -> u128 {
        self.slots
            .iter()
            .take(128)
            .enumerate()
            .filter(|(_, s)| s.state.load(Ordering::Acquire) == STARTING)
            .fold(0, |bits, (i, _)| bits | 1 << i)
    }

    /// The observer: a cooperative command's child said it is ready (it wrote
    /// its state itself, without waking the parent).
    pub(crate) fn wake(&self) {
        self.wake_parent();
    }

    /// Every slot's pid (0: none).
    pub(crate) fn pids(&self) -> impl Iterator<Item = i32> + '_ {
        self.slots.iter().map(|s| s.pid.load(Ordering::Acquire))
    }

    /// Parent, before it TERMs the child in `slot` by itself (not a shutdown).
    pub(crate) fn mark_retired_alone(&self, slot: usize) {
        self.slots[slot].retired_alone.store(1, Ordering::SeqCst);
    }

    /// Parent: the slot a pid is in, if any.
    pub(crate) fn slot_of(&self, pid: i32) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.pid.load(Ordering::Acquire) == pid)
    }

    /// Parent: whether a saturated pool could grow. At `max_children` a child
    /// taking the last idle slot wakes nobody: the parent could do nothing about it.
    /// Whether the pool has room to grow (as the parent last said).
    pub(crate) fn can_grow(&self) -> bool {
        self.header.can_grow.load(Ordering::Relaxed) != 0
    }

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

    /// Parent, at each fork: the generation new children get, for readers of the file.
    pub(crate) fn set_generation(&self, generation: u64) {
        self.header.generation.store(generation, Ordering::Relaxed);
    }

    /// Parent: graceful shutdown is under way (children drain the backlog).
    pub(crate) fn set_stopping(&self) {
        self.header.stopping.store(1, Ordering::Release);
    }

    /// Parent: an image adopted this board (after an upgrade or its way back).
    pub(crate) fn count_image(&self) {
        bump(&self.header.upgrades, false);
    }

    /// Parent: an upgrade was abandoned (this image keeps serving).
    pub(crate) fn count_abandoned(&self) {
        bump(&self.header.upgrades, true);
    }

    /// Parent: the logs were reopened (`failed`: at least one could not be).
    pub(crate) fn count_reopen(&self, failed: bool) {
        bump(&self.header.reopens, failed);
    }

    /// Parent: a TTIN or TTOU was handed to the scaling policy (`ignored`: the
    /// machine was not serving).
    pub(crate) fn count_nudge(&self, ignored: bool) {
        bump(&self.header.nudges, ignored);
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

    /// Every slot as the metrics endpoint shows it (pid, state, generation,
    /// requests), into `out`; read from any thread of the parent, lock-free.
    pub(crate) fn read_infos(&self, out: &mut Vec<SlotInfo>) {
        out.clear();
        out.extend(self.slots.iter().map(|s| SlotInfo {
            pid: s.pid.load(Ordering::Acquire),
            state: match s.state.load(Ordering::Acquire) {
                STARTING => SlotState::Starting,
                IDLE => SlotState::Idle,
                BUSY => SlotState::Busy,
                RETIRING => SlotState::Retiring,
                _ => SlotState::Empty,
            },
            generation: s.generation.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
        }));
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

/// Adds one to a half of a two-counter word; each half wraps by itself.
fn bump(word: &AtomicU32, high: bool) {
    let _ = word.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
        let (lo, hi) = (w as u16, (w >> 16) as u16);
        let (lo, hi) = if high {
            (lo, hi.wrapping_add(1))
        } else {
            (lo.wrapping_add(1), hi)
        };
        Some(u32::from(lo) | (u32::from(hi) << 16))
    });
}

fn create_file(path: &Path, len: usize) -> io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("scoreboard {} {what}: refused", path.display()),
        )
    };
    // O_NONBLOCK: a FIFO planted at the path must not block the start.
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
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
        return Err(refuse("is not a regular file".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(refuse(format!(
            "is owned by uid {}, not by this process's uid {me}",
            meta.uid()
        )));
    }
    // Another name for the same inode (a hard link to some other file) would be
    // overwritten through this one.
    if meta.nlink() != 1 {
        return Err(refuse(format!("has {} hard links", meta.nlink())));
    }
    if !lock(&file).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("scoreboard {}: flock: {e}", path.display()),
        )
    })? {
        let owner = owner_pid(&file).map_or("unknown".to_string(), |p| p.to_string());
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "scoreboard {} is in use by another instance (pid {owner})",
                path.display()
            ),
        ));
    }
    // Ours now: a scoreboard left by an earlier run is reset, not trusted.
    file.set_len(0)?;
    file.set_len(len as u64)?;
    // Insist on 0600 whatever mode the file had.
    nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(0o600)).map_err(io::Error::from)?;
    Ok(file)
}

/// Takes the file's exclusive lock without blocking: false if another open file
/// description holds it. (The deprecated free function, as in the pid file: the
/// `Flock` type would unlock on drop.)
#[allow(deprecated)]
fn lock(file: &File) -> io::Result<bool> {
    use nix::fcntl::{flock, FlockArg};
    use std::os::fd::AsRawFd;
    loop {
        match flock(file.as_raw_fd(), FlockArg::LockExclusiveNonblock) {
            Ok(()) => return Ok(true),
            Err(nix::errno::Errno::EWOULDBLOCK) => return Ok(false),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The pid recorded in a scoreboard file's header, if it is one.
fn owner_pid(file: &File) -> Option<i32> {
    use std::os::unix::fs::FileExt;
    let mut header = [0u8; RECORD];
    file.read_exact_at(&mut header, 0).ok()?;
    if header[..8] != MAGIC {
        return None;
    }
    let pid = i32::from_ne_bytes(header[44..48].try_into().ok()?);
    (pid > 0).then_some(pid)
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

    /// Child: the connection it just accepted (see [`Board::busy_with`]).
    pub(crate) fn set_conn(&self, fd: RawFd, peer: SocketAddr) {
        let s = self.slot;
        let Ok(fd) = u32::try_from(fd) else {
            return;
        };
        let (family, octets) = match peer.ip() {
            std::net::IpAddr::V4(v4) => {
                let mut o = [0u8; 16];
                o[..4].copy_from_slice(&v4.octets());
                (4u64, o)
            }
            std::net::IpAddr::V6(v6) => (6u64, v6.octets()),
        };
        let writes = s.conn.load(Ordering::Relaxed) >> 52;
        // Being written: no descriptor, one more write counted.
        s.conn
            .store((writes.wrapping_add(1) & 0xfff) << 52, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        let (a, b) = octets.split_at(8);
        let word = |h: &[u8]| u64::from_ne_bytes(h.try_into().unwrap_or_default());
        s.peer_ip[0].store(word(a), Ordering::Relaxed);
        s.peer_ip[1].store(word(b), Ordering::Relaxed);
        let conn = (writes.wrapping_add(2) & 0xfff) << 52
            | family << 48
            | u64::from(peer.port()) << 32
            | u64::from(fd.wrapping_add(1));
        // Published last.
        s.conn.store(conn, Ordering::Release);
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

    /// Whether the parent retired this child by itself (its TERM is no shutdown).
    pub(crate) fn retired_alone(&self) -> bool {
        self.slot.retired_alone.load(Ordering::SeqCst) != 0
    }

    /// Graceful shutdown: takes one connection from the pool's drain budget,
    /// which the first child to ask sets to `queued()` (the queue's length then).
    /// `false` once the pool has taken as many as were queued.
    pub(crate) fn take_drain(&self, queued: impl FnOnce() -> u32) -> bool {
        let d = &self.board.header.drain_left;
        if d.load(Ordering::Acquire) == 0 {
            let _ = d.compare_exchange(
                0,
                queued().saturating_add(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        d.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n > 1).then(|| n - 1)
        })
        .is_ok()
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
/// and tests): [`parse_scoreboard`] of its contents. A path that is not a regular
/// file (a FIFO, a device) is refused without blocking.
///
/// # Errors
/// The file cannot be read, or it is not a preforkd scoreboard: an
/// `InvalidData` error naming the path and the problem.
pub fn read_scoreboard_file(path: &Path) -> io::Result<Vec<SlotInfo>> {
    let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let data = match read_file(path) {
        Ok((data, _)) => data,
        Err(Unreadable::Io(e)) => return Err(with_path(e)),
        Err(Unreadable::NotRegular) => {
            return Err(with_path(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )))
        }
    };
    parse_scoreboard(&data).map_err(with_path)
}

/// Why [`read_file`] read nothing.
pub(crate) enum Unreadable {
    /// Opening or reading failed.
    Io(io::Error),
    /// Not a regular file: a FIFO would block, a device never end.
    NotRegular,
}

/// A scoreboard file's bytes, read once, and its metadata: a regular file only,
/// and never more than one byte beyond the largest scoreboard (so that a larger
/// file is told apart without being read whole).
pub(crate) fn read_file(path: &Path) -> Result<(Vec<u8>, std::fs::Metadata), Unreadable> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(Unreadable::Io)?;
    let meta = file.metadata().map_err(Unreadable::Io)?;
    if !meta.is_file() {
        return Err(Unreadable::NotRegular);
    }
    let most = (RECORD * (crate::MAX_CHILDREN_LIMIT + 1)) as u64;
    let mut data = Vec::new();
    file.take(most + 1)
        .read_to_end(&mut data)
        .map_err(Unreadable::Io)?;
    Ok((data, meta))
}

/// Decodes a scoreboard (the bytes of a scoreboard file: a 64-byte header starting
/// with the magic `PREFORKD`, the layout version 1 as a native `u32` and the slot
/// count as a native `u32`, then one 64-byte record per slot: pid `i32` at 0,
/// state `u8` at 4, generation `u64` at 8, requests `u64` at 16). Checks the
/// magic, version and size.
///
/// ```
/// let mut data = vec![0u8; 64 * 3];
/// data[..8].copy_from_slice(b"PREFORKD");
/// data[8..12].copy_from_slice(&1u32.to_ne_bytes());
/// data[12..16].copy_from_slice(&2u32.to_ne_bytes());
/// data[64..68].copy_from_slice(&4242i32.to_ne_bytes());
/// let slots = preforkd::runtime::parse_scoreboard(&data).unwrap();
/// assert_eq!(slots.len(), 2);
/// assert_eq!(slots[0].pid, 4242);
/// assert!(preforkd::runtime::parse_scoreboard(b"not a scoreboard").is_err());
/// ```
///
/// # Errors
/// Bytes that are not a preforkd scoreboard: an `InvalidData` error naming the
/// problem. Never panics, whatever the bytes.
pub fn parse_scoreboard(data: &[u8]) -> io::Result<Vec<SlotInfo>> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
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
    let expected = slots.checked_add(1).and_then(|n| n.checked_mul(RECORD));
    if expected != Some(data.len()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_childs_connection_is_read_back_at_its_documented_place() {
        let dir = std::env::temp_dir().join(format!("preforkd-sb-conn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("board");
        let (board, _file) = Board::create(Some(&path), 2, -1).unwrap();
        board.prepare(1, 1);
        let me = board.worker_slot(1);
        me.claim(4242);
        me.ready();
        assert_eq!(board.busy_with(1), None, "idle: not looked at");
        me.begin();
        assert_eq!(
            board.busy_with(1),
            Some((0, None)),
            "busy, no connection said"
        );
        let v4 = SocketAddr::from(([127, 0, 0, 9], 40001));
        me.set_conn(7, v4);
        assert_eq!(board.busy_with(1), Some((0, Some((7, v4)))));
        // The documented layout: slot 1 at 128; the connection word at 40
        // (descriptor + 1, port, family, writes), the address at 48.
        let bytes = std::fs::read(&path).unwrap();
        let word = u64::from_ne_bytes(bytes[128 + 40..128 + 48].try_into().unwrap());
        assert_eq!(word as u32, 8);
        assert_eq!((word >> 32) as u16, 40001);
        assert_eq!((word >> 48) & 0xf, 4);
        assert_eq!(word >> 52, 2, "two writes counted");
        assert_eq!(bytes[128 + 48..128 + 52], [127, 0, 0, 9]);
        let v6: SocketAddr = "[2001:db8::5]:443".parse().unwrap();
        me.set_conn(12, v6);
        assert_eq!(board.busy_with(1), Some((0, Some((12, v6)))));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            bytes[128 + 48..128 + 64],
            "2001:db8::5"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        // The same descriptor for the next client: still told apart by the count.
        let before = u64::from_ne_bytes(bytes[128 + 40..128 + 48].try_into().unwrap());
        me.set_conn(12, v4);
        let after = u64::from_ne_bytes(
            std::fs::read(&path).unwrap()[128 + 40..128 + 48]
                .try_into()
                .unwrap(),
        );
        assert_ne!(before, after);
        assert_eq!(board.busy_with(1), Some((0, Some((12, v4)))));
        me.end();
        assert_eq!(board.busy_with(1), None);
        // A new child in the slot starts with no connection.
        board.prepare(1, 2);
        let next = board.worker_slot(1);
        next.claim(4243);
        next.ready();
        next.begin();
        assert_eq!(board.busy_with(1), Some((0, None)));
        assert_eq!(board.busy_with(5), None, "no such slot");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
