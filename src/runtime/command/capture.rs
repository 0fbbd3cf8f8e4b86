//! The children's stdout and stderr, captured line by line: each child writes
//! into pipes of its own, and a thread of the parent logs every complete line
//! with the child's pid (a line is never cut by another child's output). Into
//! the error log; stdout into the access log instead when there is one.

// The capture thread's one bounded sleep, after an impossible poll error.
#![allow(clippy::disallowed_methods)]

use crate::runtime::logs::LogFile;
use crate::runtime::os;
use crate::runtime::signals::PARENT_SIGNALS;
use crossbeam_channel::{unbounded, Receiver, Sender};
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

/// A line longer than this is logged in pieces (each marked as continued).
const LONGEST_LINE: usize = 16 * 1024;

/// Which of the child's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Out,
    Err,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Out => "stdout",
            Stream::Err => "stderr",
        }
    }
}

/// The capturing thread, and the way to hand it a new child's pipes.
#[derive(Debug)]
pub(crate) struct Capture {
    add: Sender<Added>,
    /// Told when a drain asked for is done.
    drained: Receiver<()>,
    /// A byte here wakes the thread to take what was added.
    poke: OwnedFd,
}

/// The pipes of one child, made before its fork: the parent's (read) ends and
/// the child's (write) ends, all close-on-exec.
pub(crate) struct Pipes {
    pub(crate) read: (OwnedFd, OwnedFd),
    pub(crate) write: (OwnedFd, OwnedFd),
}

impl Pipes {
    pub(crate) fn new() -> io::Result<Pipes> {
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        for r in [&out_r, &err_r] {
            nix::fcntl::fcntl(r, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
                .map_err(io::Error::from)?;
        }
        Ok(Pipes {
            read: (out_r, err_r),
            write: (out_w, err_w),
        })
    }
}

/// What the parent hands the thread: a child's pipe, or a request to log
/// everything written so far (before the parent exits).
enum Added {
    Pipe(i32, Stream, OwnedFd),
    Drain,
}

struct Source {
    pid: i32,
    stream: Stream,
    fd: OwnedFd,
    pending: Vec<u8>,
}

impl Capture {
    /// Starts the thread (with the parent's signals blocked in it).
    pub(crate) fn start(logger: slog::Logger, access: Option<Arc<LogFile>>) -> io::Result<Capture> {
        let (add, added) = unbounded();
        let (done, drained) = crossbeam_channel::bounded(1);
        let (poked, poke) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(io::Error::from)?;
        os::hold_signals(&PARENT_SIGNALS)?;
        let started = std::thread::Builder::new()
            .name("preforkd-capture".into())
            .spawn(move || run(&logger, access.as_deref(), &poked, &added, &done));
        let released = os::release_signals(&PARENT_SIGNALS);
        started?;
        released?;
        Ok(Capture { add, drained, poke })
    }

    /// Waits, up to `within`, until what the children wrote so far is logged:
    /// the parent exits right after its last child is reaped, and the last
    /// lines would be lost with it.
    pub(crate) fn drain(&self, within: std::time::Duration) {
        let _ = self.add.send(Added::Drain);
        let _ = nix::unistd::write(&self.poke, &[1]);
        let _ = self.drained.recv_timeout(within);
    }

    /// Hands over the parent's ends of child `pid`'s pipes.
    pub(crate) fn add(&self, pid: i32, (out, err): (OwnedFd, OwnedFd)) {
        let _ = self.add.send(Added::Pipe(pid, Stream::Out, out));
        let _ = self.add.send(Added::Pipe(pid, Stream::Err, err));
        // A full pipe means the thread has a wake-up coming already.
        let _ = nix::unistd::write(&self.poke, &[1]);
    }
}

fn run(
    logger: &slog::Logger,
    access: Option<&LogFile>,
    poked: &OwnedFd,
    added: &Receiver<Added>,
    done: &Sender<()>,
) {
    let mut sources: Vec<Source> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (ready_poke, ready): (bool, Vec<bool>) = {
            let mut fds = Vec::with_capacity(sources.len() + 1);
            fds.push(PollFd::new(poked.as_fd(), PollFlags::POLLIN));
            for s in &sources {
                fds.push(PollFd::new(s.fd.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                // Cannot happen with valid descriptors; do not spin on it.
                Err(_) => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            }
            let any = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (any(&fds[0]), fds[1..].iter().map(any).collect())
        };
        let mut gone = Vec::new();
        for (i, s) in sources.iter_mut().enumerate() {
            if !ready[i] {
                continue;
            }
            match nix::unistd::read(&s.fd, &mut buf) {
                Ok(0) => gone.push(i),
                Ok(n) => {
                    s.pending.extend_from_slice(&buf[..n]);
                    emit_lines(logger, access, s, false);
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                Err(_) => gone.push(i),
            }
        }
        for &i in gone.iter().rev() {
            let mut s = sources.swap_remove(i);
            // The last line, even without its newline.
            emit_lines(logger, access, &mut s, true);
        }
        if ready_poke {
            let mut drain = [0u8; 64];
            while matches!(nix::unistd::read(poked, &mut drain), Ok(n) if n > 0) {}
            loop {
                match added.try_recv() {
                    Ok(Added::Pipe(pid, stream, fd)) => sources.push(Source {
                        pid,
                        stream,
                        fd,
                        pending: Vec::new(),
                    }),
                    Ok(Added::Drain) => {
                        drain_all(logger, access, &mut sources, &mut buf);
                        let _ = done.try_send(());
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    // The parent is going: what is left still drains.
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        if sources.is_empty() {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    }
}

/// Reads every pipe until it is empty and logs it all, unfinished lines too.
fn drain_all(
    logger: &slog::Logger,
    access: Option<&LogFile>,
    sources: &mut [Source],
    buf: &mut [u8],
) {
    for s in sources.iter_mut() {
        // Bounded: a writer still going must not keep the parent from exiting.
        for _ in 0..64 {
            match nix::unistd::read(&s.fd, buf) {
                Ok(n) if n > 0 => {
                    s.pending.extend_from_slice(&buf[..n]);
                    emit_lines(logger, access, s, false);
                }
                _ => break,
            }
        }
        emit_lines(logger, access, s, true);
    }
}

/// Logs the complete lines in `s.pending` (and, at `end`, what is left); a
/// line longer than [`LONGEST_LINE`] goes out in pieces.
fn emit_lines(logger: &slog::Logger, access: Option<&LogFile>, s: &mut Source, end: bool) {
    let mut from = 0;
    loop {
        let rest = &s.pending[from..];
        let (line, used, whole) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) if i <= LONGEST_LINE => (&rest[..i], i + 1, true),
            _ if rest.len() >= LONGEST_LINE => (&rest[..LONGEST_LINE], LONGEST_LINE, false),
            _ if end && !rest.is_empty() => (rest, rest.len(), true),
            _ => break,
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = String::from_utf8_lossy(line);
        let continued = if whole { "" } else { " [continued]" };
        match (s.stream, access) {
            (Stream::Out, Some(log)) => {
                // A full disk drops the line; the log says so when it can again.
                let _ = log.write_line(&format!("{text}{continued}"));
            }
            _ => {
                slog::info!(logger, "{text}{continued}"; "child" => s.pid, "stream" => s.stream.name())
            }
        }
        from += used;
    }
    s.pending.drain(..from);
}
