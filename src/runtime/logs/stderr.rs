//! The parent's stderr, written without ever blocking: a reader that stops
//! reading (a stalled pipe, a journal that does not keep up) costs lines,
//! counted by [`Lossy`](super::Lossy), never the parent's loop.
//!
//! A pipe is written through a second open file description of it (opened from
//! `/proc/self/fd/2`, with `O_NONBLOCK`), so the children, who share the first,
//! keep their blocking stderr; a socket with `send(MSG_DONTWAIT)`, per call;
//! anything else (a terminal, a file) as it is.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::OnceLock;

enum Sink {
    Plain,
    Socket,
    Pipe(File),
}

static SINK: OnceLock<Sink> = OnceLock::new();

fn detect() -> Sink {
    use nix::sys::stat::{fstat, SFlag};
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(st) = fstat(io::stderr().as_fd()) else {
        return Sink::Plain;
    };
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind == SFlag::S_IFSOCK {
        Sink::Socket
    } else if kind == SFlag::S_IFIFO {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/proc/self/fd/2")
            .map_or(Sink::Plain, Sink::Pipe)
    } else {
        Sink::Plain
    }
}

/// The parent's stderr (see the [module docs](self)). Decides how to write at
/// the first [`ParentStderr::new`], after any daemonizing redirection.
pub(crate) struct ParentStderr(&'static Sink);

impl ParentStderr {
    pub(crate) fn new() -> ParentStderr {
        ParentStderr(SINK.get_or_init(detect))
    }

    /// The parent's stderr if one was made, else the plain one (a notice that
    /// a log fails must not block either).
    pub(crate) fn current() -> Box<dyn Write> {
        match SINK.get() {
            Some(s) => Box::new(ParentStderr(s)),
            None => Box::new(io::stderr()),
        }
    }
}

impl Write for ParentStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0 {
            Sink::Plain => io::stderr().write(buf),
            Sink::Socket => nix::sys::socket::send(
                libc::STDERR_FILENO,
                buf,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            )
            .map_err(io::Error::from),
            Sink::Pipe(f) => {
                let mut f: &File = f;
                f.write(buf)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
