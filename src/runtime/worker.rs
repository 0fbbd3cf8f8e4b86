//! What a child's `main_loop` gets: its slot, the busy/idle guard, the accept helper
//! and the "should I exit now?" question.

use crate::runtime::logs::{self, LogFile, Losses};
use crate::runtime::os;
use crate::runtime::scoreboard::now_ns;
use crate::runtime::scoreboard::{WorkerSlot, WorkerState};
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Access-log lines lost while it cannot be written.
    access_losses: Losses,
    /// Where the parent passes the reopened logs (none: this process reopens
    /// the paths itself, as with `prefork = 0`).
    log_channel: Option<OwnedFd>,
}

/// An epoll set watching one listener (exclusively: a connection wakes one child,
/// not the whole pool) and the worker's wake-up pipe.
struct Poller {
    listener: RawFd,
    epoll: Epoll,
    /// During a graceful shutdown: how many more connections this child may take
    /// from the queue, counted from the queue's length when it first saw the stop.
    drain_left: Option<u32>,
    /// This child already shrank the listener's queue for the shutdown.
    closed_queue: bool,
}

/// How long a stopping child still waits for the next request on a kept-alive
/// connection that was idle (a request crossing our decision to close).
const STOP_LINGER: Duration = Duration::from_millis(250);

/// The epoll tokens of the listener and of the worker's wake-up pipe.
const LISTENER: u64 = 0;
const WAKE: u64 = 1;

/// The most connections a stopping child takes from the queue when the kernel
/// cannot say how many are waiting.
const DRAIN_FALLBACK: u32 = 128;

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
            access_losses: Losses::default(),
            log_channel: None,
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

    /// The child's end of its log channel: the parent sends the reopened logs there.
    pub(crate) fn with_log_channel(mut self, channel: OwnedFd) -> Worker {
        self.log_channel = Some(channel);
        self
    }

    /// Switches this process's log files to the new ones if the parent asked
    /// (SIGUSR1, passed on). [`accept`](Self::accept) and
    /// [`log_access`](Self::log_access) call it; a `main_loop` that does neither
    /// can call it between requests.
    ///
    /// A child never opens a log path: the parent (root, when the children run as
    /// another [`user`](crate::Prefork::user)) reopens the files and passes their
    /// descriptors to each child before it forwards the signal, so they are
    /// always waiting here (a bad set is skipped and logged; the last good one
    /// wins). If stdout or stderr were the old error log (a daemon's are), they
    /// move to the new one too. With `prefork = 0`, or in a child the parent could
    /// not give a channel, the process reopens the paths itself.
    pub fn reopen_logs_if_asked(&self) {
        if !self.take_reopen_request() {
            return;
        }
        match &self.log_channel {
            Some(channel) => {
                // A bad set is skipped (the current files stay in use until a
                // good one comes): nothing is lost; say why, once per rotation.
                if let Some(problem) = logs::take_passed_logs(channel, &self.logs).problem() {
                    slog::error!(self.logger, "{problem}");
                }
            }
            None => {
                for log in &self.logs {
                    if let Err(e) = log.reopen() {
                        // The old file stays in use: nothing is lost, say why.
                        slog::error!(self.logger, "cannot reopen {}: {e}", log.path().display());
                    }
                }
            }
        }
    }

    /// Writes one line to the access log (for example a
    /// [`combined_log_line`](crate::runtime::combined_log_line)), if the daemon has one.
    ///
    /// A line that cannot be written (full disk, ...) is dropped: serving goes on.
    /// The first failure of a streak is logged once on the error log; when lines
    /// are written again, how many were dropped.
    pub fn log_access(&self, line: &str) {
        self.reopen_logs_if_asked();
        if let Some(log) = &self.access {
            match log.write_line(line) {
                Ok(()) => {
                    if let Some(n) = self.access_losses.written() {
                        slog::warn!(
                            self.logger,
                            "access log {}: writable again; {n} lines dropped",
                            log.path().display()
                        );
                    }
                }
                Err(e) => {
                    if self.access_losses.lost() {
                        slog::error!(
                            self.logger,
                            "access log {}: {e}; dropping lines until it can be written again",
                            log.path().display()
                        );
                    }
                }
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
    /// exit. During a graceful shutdown it first serves the connections that were
    /// waiting in the queue when it saw the stop (so none of them is reset), then
    /// leaves even if clients keep connecting: the stop ends in about one request
    /// time. Connections that arrive later are reset when the last process holding
    /// the listener closes it (as with Apache's graceful-stop). When
    /// retired alone (scale-down, reload, request limit) it leaves the queue to its
    /// siblings.
    ///
    /// The listener is put in non-blocking mode (shared by every child) and watched
    /// with `EPOLLEXCLUSIVE`, so a new connection wakes one waiting child rather than
    /// all of them. A signal wakes the wait at once, whenever it arrives.
    ///
    /// The accepted connection's descriptor is written in this child's
    /// scoreboard slot, so the parent can tell whether its client hung up by
    /// looking at that one socket (see [`crate::Prefork::on_client_disconnect`]).
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
        let poller = guard.as_mut()?;
        let mut events = [EpollEvent::empty(); 2];
        loop {
            self.reopen_logs_if_asked();
            if self.should_exit() {
                let limit_reached = self.max_requests.is_some_and(|m| self.requests() >= m);
                let shutdown = self.slot.stopping();
                if limit_reached || (self.slot.retired_alone() && !shutdown) {
                    // Retired alone: the queue is the siblings' to serve.
                    return None;
                }
                // A shutdown (the parent's, or a TERM sent to the whole group, as
                // systemd does): serve what was queued, then leave.
                let queued = || os::listen_queue_len(listener.as_fd()).unwrap_or(DRAIN_FALLBACK);
                let take = if shutdown {
                    if !poller.closed_queue {
                        poller.closed_queue = true;
                        // New connections are no longer completed (their SYNs are
                        // dropped, so clients retry and are refused once the
                        // listener closes); the queued ones stay.
                        if let Ok(zero) = nix::sys::socket::Backlog::new(0) {
                            let _ = nix::sys::socket::listen(listener, zero);
                        }
                    }
                    // One budget for the whole pool: together the children take
                    // as many connections as were queued, not that many each.
                    self.slot.take_drain(queued)
                } else {
                    let left = poller.drain_left.get_or_insert_with(queued);
                    let ok = *left > 0;
                    *left = left.saturating_sub(1);
                    ok
                };
                if !take {
                    return None;
                }
                loop {
                    match listener.accept() {
                        Ok(conn) => return Some(self.noted(conn)),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // Nothing queued any more (or the client gave up): done.
                        Err(_) => return None,
                    }
                }
            }
            match listener.accept() {
                // Linux: an accepted socket is blocking, whatever the listener's mode.
                Ok(conn) => return Some(self.noted(conn)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // EINTR, a connection or a signal's poke: look again.
                    let n = poller
                        .epoll
                        .wait(&mut events, EpollTimeout::NONE)
                        .unwrap_or(0);
                    self.drain_wake();
                    if events[..n].iter().any(|e| e.data() == LISTENER) {
                        // EPOLLEXCLUSIVE woke this child alone for a connection: take
                        // it even if a stop arrived with it (one more request), or it
                        // waits until the next connection wakes another child.
                        if let Ok(conn) = listener.accept() {
                            return Some(self.noted(conn));
                        }
                    }
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

    /// `conn`, its descriptor written in this child's slot: where the parent
    /// looks for a client that hung up (no scan of the child's descriptors).
    fn noted(&self, conn: (TcpStream, SocketAddr)) -> (TcpStream, SocketAddr) {
        self.slot.set_conn(conn.0.as_raw_fd(), conn.1);
        conn
    }

    /// Waits until `conn` has something to read (a kept-alive connection's next
    /// request), at most `timeout`: `true` when it has (or the peer closed it, so
    /// a read returns at once), `false` when the time is up. Once the child should
    /// exit it waits at most 250 ms more (for a request already on its way) and
    /// then answers `false`. Call it before each request instead of blocking in a
    /// read: a child asked to stop closes an idle connection within 250 ms rather
    /// than waiting for its client, while a request the client already sent is
    /// still served. Log
    /// reopen requests are handled meanwhile. It looks at the socket only: check
    /// your own read buffer first (`BufReader::buffer`), a pipelined request may
    /// already be there.
    pub fn wait_for_input(&self, conn: &impl AsFd, timeout: Duration) -> io::Result<bool> {
        let mut deadline = now_ns().saturating_add(timeout.as_nanos().min(u64::MAX as u128) as u64);
        let mut lingering = false;
        loop {
            self.reopen_logs_if_asked();
            if !lingering && self.should_exit() {
                // A request the client sent just as we decided to stop is still on
                // its way: wait a moment for it rather than close on it.
                lingering = true;
                deadline = deadline.min(now_ns().saturating_add(STOP_LINGER.as_nanos() as u64));
            }
            let left_ms = deadline.saturating_sub(now_ns()).div_ceil(1_000_000);
            let wait = PollTimeout::try_from(left_ms.min(i32::MAX as u64) as i32)
                .unwrap_or(PollTimeout::MAX);
            let mut fds = [
                PollFd::new(conn.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, wait) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[0]) {
                return Ok(true);
            }
            if left_ms == 0 || now_ns() >= deadline {
                return Ok(false);
            }
            if ready(&fds[1]) {
                self.drain_wake();
            }
        }
    }

    fn watch(&self, listener: &TcpListener) -> io::Result<Poller> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            listener,
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, LISTENER),
        )?;
        epoll.add(&self.wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
        Ok(Poller {
            listener: listener.as_raw_fd(),
            epoll,
            drain_left: None,
            closed_queue: false,
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
        // A child leaving during a streak of lost access lines still says how many.
        let lost = self.access_losses.pending();
        if let (Some(log), true) = (&self.access, lost > 0) {
            slog::warn!(
                self.logger,
                "access log {}: {lost} lines dropped (still failing at exit)",
                log.path().display()
            );
        }
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
