//! What a child's `main_loop` gets: its slot, the busy/idle guard, the accept helper
//! and the "should I exit now?" question.

use crate::runtime::logs::LogFile;
use crate::runtime::os;
use crate::runtime::scoreboard::{WorkerSlot, WorkerState};
use nix::fcntl::OFlag;
use nix::poll::PollTimeout;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// The context of one child, passed to `main_loop`.
///
/// ```no_run
/// # fn serve(_: std::net::TcpStream) {}
/// # fn demo(worker: &preforkd::Worker, listener: &std::net::TcpListener) {
/// while let Some((stream, _peer)) = worker.accept(listener) {
///     let _busy = worker.busy(); // idle again when dropped
///     serve(stream);
/// }
/// # }
/// ```
pub struct Worker {
    slot_index: usize,
    generation: u64,
    max_requests: Option<u64>,
    slot: WorkerSlot,
    logger: slog::Logger,
    /// Readable when a signal arrived (the handlers write to its other end).
    wake: OwnedFd,
    /// The epoll set of the listener `accept` was last called with.
    poller: Mutex<Option<Poller>>,
    /// This process's log files, reopened when the parent passes on SIGUSR1.
    logs: Vec<Arc<LogFile>>,
    /// The access log, if the daemon has one.
    access: Option<Arc<LogFile>>,
}

/// An epoll set watching one listener (exclusively: a connection wakes one child,
/// not the whole pool) and the worker's wake-up pipe.
struct Poller {
    listener: RawFd,
    epoll: Epoll,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("slot", &self.slot_index)
            .field("generation", &self.generation)
            .field("requests", &self.requests())
            .finish()
    }
}

/// Marks the child busy while it lives; dropping it marks the child idle again and
/// counts one request. Cheap: a few atomic operations, no system call.
#[must_use = "the child is idle again as soon as the guard is dropped"]
#[derive(Debug)]
pub struct BusyGuard<'a> {
    worker: &'a Worker,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.worker.slot.end();
    }
}

impl Worker {
    pub(crate) fn new(
        slot_index: usize,
        generation: u64,
        max_requests: Option<u64>,
        slot: WorkerSlot,
        logger: slog::Logger,
        wake: OwnedFd,
    ) -> Worker {
        Worker {
            slot_index,
            generation,
            max_requests,
            slot,
            logger,
            wake,
            poller: Mutex::new(None),
            logs: Vec::new(),
            access: None,
        }
    }

    pub(crate) fn with_logs(
        mut self,
        logs: Vec<Arc<LogFile>>,
        access: Option<Arc<LogFile>>,
    ) -> Worker {
        self.logs = logs;
        self.access = access;
        self
    }

    /// Reopens this process's log files if the parent asked (SIGUSR1, passed on).
    /// [`accept`](Self::accept) and [`log_access`](Self::log_access) call it; a
    /// `main_loop` that does neither can call it between requests.
    pub fn reopen_logs_if_asked(&self) {
        if self.take_reopen_request() {
            for log in &self.logs {
                if let Err(e) = log.reopen() {
                    // The old file stays in use: nothing is lost, say why.
                    slog::error!(self.logger, "cannot reopen {}: {e}", log.path().display());
                }
            }
        }
    }

    /// Writes one line to the access log (for example a
    /// [`combined_log_line`](crate::combined_log_line)), if the daemon has one.
    pub fn log_access(&self, line: &str) {
        self.reopen_logs_if_asked();
        if let Some(log) = &self.access {
            if let Err(e) = log.write_line(line) {
                slog::error!(self.logger, "access log {}: {e}", log.path().display());
            }
        }
    }

    /// A worker with a private one-slot scoreboard, outside any daemon: to test a
    /// `main_loop` or measure the scoreboard's cost. Its parent is nobody: nothing
    /// reads its slot and no signal reaches it through the pool.
    pub fn detached() -> io::Result<Worker> {
        let (board, _) = crate::runtime::scoreboard::Board::create(None, 1, -1)?;
        board.prepare(0, 1);
        let slot = board.worker_slot(0);
        slot.claim(std::process::id() as i32);
        // Nothing signals a detached worker: the pipe only completes the shape.
        let (wake, _) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let w = Worker::new(0, 1, None, slot, logger, wake);
        w.ready();
        Ok(w)
    }

    /// The scoreboard slot this child owns.
    pub fn slot(&self) -> usize {
        self.slot_index
    }

    /// The generation this child belongs to (it grows with each reload).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.slot.requests()
    }

    /// This child's logger, built after the fork (never the parent's drains).
    pub fn logger(&self) -> &slog::Logger {
        &self.logger
    }

    /// Marks the child busy until the guard is dropped.
    pub fn busy(&self) -> BusyGuard<'_> {
        self.slot.begin();
        BusyGuard { worker: self }
    }

    /// The seed's `update_scoreboard`: say what the child is doing. Prefer
    /// [`busy`](Self::busy), which cannot forget to go idle again; going from busy to
    /// idle here counts one request.
    pub fn update_scoreboard(&self, state: WorkerState) {
        match state {
            WorkerState::Busy => self.slot.begin(),
            WorkerState::Idle => self.slot.end(),
        }
    }

    /// Whether the child should stop taking work and return from `main_loop`: the
    /// parent asked it to stop (shutdown, scale-down, reload, busy timeout), or it
    /// reached its request limit.
    pub fn should_exit(&self) -> bool {
        os::STOP_REQUESTED.load(Ordering::Relaxed)
            || self.max_requests.is_some_and(|m| self.requests() >= m)
    }

    /// Whether the parent asked for a log reopen (SIGUSR1) since the last call.
    pub fn take_reopen_request(&self) -> bool {
        // A plain load first: this runs on every accept, the swap only on a request.
        os::REOPEN_REQUESTED.load(Ordering::Relaxed)
            && os::REOPEN_REQUESTED.swap(false, Ordering::Relaxed)
    }

    /// Waits for the next connection on `listener`; `None` when the child should
    /// exit. During a graceful shutdown it first serves the connections already
    /// waiting in the backlog, so none is reset; when retired alone (scale-down,
    /// reload, request limit) it leaves them to its siblings.
    ///
    /// The listener is put in non-blocking mode (shared by every child) and watched
    /// with `EPOLLEXCLUSIVE`, so a new connection wakes one waiting child rather than
    /// all of them. A signal wakes the wait at once, whenever it arrives.
    pub fn accept(&self, listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
        let mut guard = self.poller.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().map(|p| p.listener) != Some(listener.as_raw_fd()) {
            *guard = match self.watch(listener) {
                Ok(p) => Some(p),
                Err(e) => {
                    slog::error!(self.logger, "cannot watch the listener: {e}");
                    return None;
                }
            };
        }
        let poller = guard.as_ref()?;
        let mut events = [EpollEvent::empty(); 2];
        loop {
            self.reopen_logs_if_asked();
            if self.should_exit() {
                let limit_reached = self.max_requests.is_some_and(|m| self.requests() >= m);
                if !self.slot.stopping() || limit_reached {
                    return None;
                }
                // Graceful shutdown: drain what is already queued, then leave.
                return listener.accept().ok();
            }
            match listener.accept() {
                // Linux: an accepted socket is blocking, whatever the listener's mode.
                Ok(conn) => return Some(conn),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // EINTR, a connection or a signal's poke: look again.
                    let _ = poller.epoll.wait(&mut events, EpollTimeout::NONE);
                    self.drain_wake();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_transient(&e) => {
                    // Out of descriptors or memory: the listener stays readable, so
                    // pause instead of spinning.
                    let _ = nix::poll::poll(&mut [], PollTimeout::from(100u8));
                }
                Err(e) => {
                    slog::error!(self.logger, "accept failed: {e}");
                    return None;
                }
            }
        }
    }

    fn watch(&self, listener: &TcpListener) -> io::Result<Poller> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            listener,
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, 0),
        )?;
        epoll.add(&self.wake, EpollEvent::new(EpollFlags::EPOLLIN, 1))?;
        Ok(Poller {
            listener: listener.as_raw_fd(),
            epoll,
        })
    }

    fn drain_wake(&self) {
        let mut buf = [0u8; 16];
        while matches!(nix::unistd::read(&self.wake, &mut buf), Ok(n) if n > 0) {}
    }

    pub(crate) fn ready(&self) {
        self.slot.ready();
    }

    pub(crate) fn retire(&self) {
        self.slot.retire();
    }
}

/// Errors after which accepting again is right (the client gave up, or a
/// temporary shortage).
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno) if [
            nix::errno::Errno::ECONNABORTED as i32,
            nix::errno::Errno::EPROTO as i32,
            nix::errno::Errno::EMFILE as i32,
            nix::errno::Errno::ENFILE as i32,
            nix::errno::Errno::ENOBUFS as i32,
            nix::errno::Errno::ENOMEM as i32,
        ].contains(&libc_errno)
    )
}
