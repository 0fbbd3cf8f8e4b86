//! systemd integration without libsystemd: service-manager notification
//! (the `sd_notify` protocol), the watchdog interval, and socket activation
//! (`LISTEN_FDS`).
//!
//! Everything here is plain Unix: a datagram to the socket named by
//! `NOTIFY_SOCKET`, and descriptors inherited from 3 up. Outside systemd (no
//! `NOTIFY_SOCKET`, no `LISTEN_PID`) every entry point quietly does nothing.
//!
//! ```no_run
//! use preforkd::runtime::systemd::{self, Notifier};
//! use std::net::TcpListener;
//!
//! // Before any thread starts: it unsets LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES.
//! let activated = systemd::listen_fds()?;
//! let listener = match activated.into_iter().next() {
//!     Some(socket) => socket.into_tcp_listener()?,
//!     None => TcpListener::bind("127.0.0.1:8080")?,
//! };
//! if let Some(notifier) = Notifier::from_env() {
//!     if let Err(e) = notifier.ready() {
//!         eprintln!("sd_notify: {e}");
//!     }
//! }
//! # drop(listener);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::runtime::os;
use crate::Notify;
use nix::sys::socket::SockaddrStorage;
use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike};
use nix::time::{clock_gettime, ClockId};
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Mutex;
use std::time::Duration;

/// The first descriptor passed by socket activation (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// How long a notification may wait for room in the service manager's socket
/// before [`Notifier`] gives up with an error (the caller logs it and carries on).
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// A connection-less handle on the service manager's notification socket
/// (`NOTIFY_SOCKET`), speaking the `sd_notify` protocol.
///
/// Each method sends one datagram and returns the send's result: the caller
/// decides whether a failure is worth a log line. Nothing here panics.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier for `NOTIFY_SOCKET`, or `None` when the variable is unset,
    /// empty, or not a usable address (see [`Notifier::try_from_env`] for the
    /// reason).
    pub fn from_env() -> Option<Notifier> {
        Notifier::try_from_env().ok().flatten()
    }

    /// The notifier for `NOTIFY_SOCKET`: `Ok(None)` when the variable is unset or
    /// empty (not run by a service manager), an error when it is set but not a
    /// usable address (see [`Notifier::new`]).
    pub fn try_from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => match v.to_str() {
                Some(s) => Notifier::new(s).map(Some),
                None => Err(invalid(format!("NOTIFY_SOCKET is not UTF-8: {v:?}"))),
            },
        }
    }

    /// A notifier sending to `addr`: an absolute path (`/run/systemd/notify`), or
    /// an abstract socket name when it starts with `@` (`@name`, without the `@`
    /// in the name itself).
    ///
    /// # Errors
    /// An empty or relative address, an empty abstract name, a path too long for a
    /// Unix socket address or holding a NUL byte (`InvalidInput`); failure to
    /// create the socket.
    pub fn new(addr: &str) -> io::Result<Notifier> {
        let sockaddr = if let Some(name) = addr.strip_prefix('@') {
            if name.is_empty() {
                return Err(invalid("NOTIFY_SOCKET: empty abstract socket name".into()));
            }
            SocketAddr::from_abstract_name(name.as_bytes())
                .map_err(|e| invalid(format!("NOTIFY_SOCKET {addr:?}: {e}")))?
        } else if addr.starts_with('/') {
            SocketAddr::from_pathname(addr)
                .map_err(|e| invalid(format!("NOTIFY_SOCKET {addr:?}: {e}")))?
        } else {
            return Err(invalid(format!(
                "NOTIFY_SOCKET {addr:?}: expected an absolute path or an @abstract name"
            )));
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(Notifier {
            socket,
            addr: sockaddr,
        })
    }

    /// The address notifications go to.
    pub fn addr(&self) -> &SocketAddr {
        &self.addr
    }

    /// Sends `state` as is: newline-separated `KEY=value` assignments.
    ///
    /// # Errors
    /// The send failed (no listener, the manager's socket stayed full for a
    /// second, ...), or the datagram went out short.
    pub fn send_raw(&self, state: &str) -> io::Result<()> {
        let n = self.socket.send_to_addr(state.as_bytes(), &self.addr)?;
        if n == state.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sd_notify: sent {n} of {} bytes", state.len()),
            ))
        }
    }

    /// `READY=1`: start-up is finished, the service is serving.
    pub fn ready(&self) -> io::Result<()> {
        self.send_raw("READY=1")
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=<now>` (CLOCK_MONOTONIC, µs), as
    /// systemd 253 and later require for `Type=notify-reload`. Send
    /// [`ready`](Notifier::ready) when the reload is done.
    pub fn reloading(&self) -> io::Result<()> {
        let now = monotonic_usec()?;
        self.send_raw(&format!("RELOADING=1\nMONOTONIC_USEC={now}"))
    }

    /// `STOPPING=1`: the service is shutting down.
    pub fn stopping(&self) -> io::Result<()> {
        self.send_raw("STOPPING=1")
    }

    /// `STATUS=busy N, idle N, starting N`: the pool's counts, shown by
    /// `systemctl status`.
    pub fn status(&self, busy: usize, idle: usize, starting: usize) -> io::Result<()> {
        self.send_raw(&status_line(busy, idle, starting))
    }

    /// `MAINPID=pid`: the service's main process is `pid`.
    pub fn mainpid(&self, pid: u32) -> io::Result<()> {
        self.send_raw(&format!("MAINPID={pid}"))
    }

    /// `WATCHDOG=1`: the keep-alive ping; send it every [`watchdog_interval`].
    pub fn watchdog(&self) -> io::Result<()> {
        self.send_raw("WATCHDOG=1")
    }

    /// Sends what the supervisor asked for in
    /// [`Action::Notify`](crate::Action::Notify).
    pub fn send(&self, notify: &Notify) -> io::Result<()> {
        match *notify {
            Notify::Ready => self.ready(),
            Notify::Reloading => self.reloading(),
            Notify::Stopping => self.stopping(),
            Notify::Status {
                busy,
                idle,
                starting,
            } => self.status(busy, idle, starting),
        }
    }
}

fn status_line(busy: usize, idle: usize, starting: usize) -> String {
    format!("STATUS=busy {busy}, idle {idle}, starting {starting}")
}

/// CLOCK_MONOTONIC in microseconds (systemd's `now(CLOCK_MONOTONIC)`).
fn monotonic_usec() -> io::Result<u64> {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).map_err(io::Error::from)?;
    let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
    Ok(secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000))
}

/// How often to send [`Notifier::watchdog`]: half of `WATCHDOG_USEC` (the
/// conventional period), or `None` when the watchdog is off for this process
/// (`WATCHDOG_USEC` unset, zero or not a number; `WATCHDOG_PID` set to another
/// process or not a number).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] from given values of `WATCHDOG_USEC` and `WATCHDOG_PID`,
/// for process `our_pid`.
pub fn watchdog_interval_from(
    usec: Option<&str>,
    pid: Option<&str>,
    our_pid: u32,
) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.parse::<u32>().ok()? != our_pid {
            return None;
        }
    }
    let usec = usec?.parse::<u64>().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

/// A socket passed by the service manager (socket activation).
#[derive(Debug)]
pub struct ActivatedSocket {
    /// The descriptor, now owned by this process (and close-on-exec).
    pub fd: OwnedFd,
    /// Its name from `LISTEN_FDNAMES` (`FileDescriptorName=` in the socket unit),
    /// if one was given.
    pub name: Option<String>,
}

impl ActivatedSocket {
    /// The socket as a [`TcpListener`].
    ///
    /// # Errors
    /// `InvalidInput` when it is not a listening (`SO_ACCEPTCONN`) stream socket
    /// of the IPv4 or IPv6 family (a datagram socket, a Unix socket, a connected
    /// stream...); the system call's error when it cannot be inspected (not a
    /// socket at all).
    pub fn into_tcp_listener(self) -> io::Result<TcpListener> {
        let what = |problem: &str| {
            let name = self.name.as_deref().unwrap_or("(unnamed)");
            invalid(format!(
                "activated socket {name} (fd {}) {problem}",
                self.fd.as_raw_fd()
            ))
        };
        let ty = getsockopt(&self.fd.as_fd(), sockopt::SockType).map_err(io::Error::from)?;
        if ty != SockType::Stream {
            return Err(what(&format!("is not a stream socket but {ty:?}")));
        }
        let addr: SockaddrStorage = getsockname(self.fd.as_raw_fd()).map_err(io::Error::from)?;
        match addr.family() {
            Some(AddressFamily::Inet | AddressFamily::Inet6) => {}
            other => return Err(what(&format!("is not a TCP socket (family {other:?})"))),
        }
        if !getsockopt(&self.fd.as_fd(), sockopt::AcceptConn).map_err(io::Error::from)? {
            return Err(what("is not listening"));
        }
        Ok(TcpListener::from(self.fd))
    }
}

/// Why [`listen_fds`] could not take the activated sockets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivationError {
    /// A variable is not what the protocol says it holds.
    #[error("{name}={value:?} is not {expected}")]
    BadVariable {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// `LISTEN_FDNAMES` does not name as many sockets as `LISTEN_FDS` passes.
    #[error("LISTEN_FDNAMES has {names} names but LISTEN_FDS passes {fds} descriptors")]
    NamesMismatch {
        /// `LISTEN_FDS`.
        fds: usize,
        /// The number of colon-separated names in `LISTEN_FDNAMES`.
        names: usize,
    },
    /// A descriptor `LISTEN_FDS` announces is not open in this process.
    #[error("descriptor {fd} passed by LISTEN_FDS is not usable: {source}")]
    NotOpen {
        /// The descriptor.
        fd: RawFd,
        /// Why.
        source: io::Error,
    },
}

/// Taken while reading the variables and adopting the descriptors; `true` once
/// they were adopted: each is adopted (owned) at most once per process.
static ADOPTED: Mutex<bool> = Mutex::new(false);

/// The sockets the service manager passed to this process (socket activation,
/// `sd_listen_fds_with_names`).
///
/// Reads `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`. The descriptors
/// (`LISTEN_FDS` of them, from 3 up) are returned, owned and close-on-exec, with
/// their names; none when the variables are unset, when `LISTEN_PID` is another
/// process (they were meant for it, not for us), or when they were already taken
/// by an earlier call. Whatever the outcome, the three variables are then unset,
/// so that processes started later do not see them.
///
/// Call it early, before any thread starts: unsetting variables races with
/// threads that read the environment through libc.
///
/// # Errors
/// A variable that is not a number, a `LISTEN_FDNAMES` with another count of
/// names than `LISTEN_FDS`, a descriptor that is not open.
pub fn listen_fds() -> Result<Vec<ActivatedSocket>, ActivationError> {
    let mut adopted = ADOPTED.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    if pid.is_some() || fds.is_some() || names.is_some() {
        // Not `unsafe` in edition 2021, but the same rule as edition 2024's: this
        // must run before other threads start (see the documentation above).
        for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(var);
        }
    }
    if *adopted {
        return Ok(Vec::new());
    }
    let Some(names) = parse_listen_env(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )?
    else {
        return Ok(Vec::new());
    };
    *adopted = true;
    let mut sockets = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        // The count was checked to fit: no overflow.
        let fd = LISTEN_FDS_START + i as RawFd;
        let owned = os::adopt_fd(fd).map_err(|source| ActivationError::NotOpen { fd, source })?;
        nix::fcntl::fcntl(
            owned.as_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| ActivationError::NotOpen {
            fd,
            source: e.into(),
        })?;
        sockets.push(ActivatedSocket { fd: owned, name });
    }
    Ok(sockets)
}

/// Checks the values of `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` for
/// process `our_pid`: one name per passed descriptor (`None`
/// without `LISTEN_FDNAMES`, or for an empty name), or `None` when nothing is
/// passed to this process.
fn parse_listen_env(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
) -> Result<Option<Vec<Option<String>>>, ActivationError> {
    let bad = |name, value: &str, expected| ActivationError::BadVariable {
        name,
        value: value.to_string(),
        expected,
    };
    let Some(pid) = pid else { return Ok(None) };
    let pid: u32 = pid
        .parse()
        .map_err(|_| bad("LISTEN_PID", pid, "a process id"))?;
    if pid != our_pid {
        return Ok(None);
    }
    let Some(fds) = fds else { return Ok(None) };
    let count: usize = fds
        .parse()
        .ok()
        .filter(|&n: &usize| {
            RawFd::try_from(n).is_ok_and(|n| n.checked_add(LISTEN_FDS_START).is_some())
        })
        .ok_or_else(|| bad("LISTEN_FDS", fds, "a descriptor count"))?;
    if count == 0 {
        return Ok(None);
    }
    let names = match names {
        None => vec![None; count],
        Some(names) => {
            let names: Vec<Option<String>> = names
                .split(':')
                .map(|n| (!n.is_empty()).then(|| n.to_string()))
                .collect();
            if names.len() != count {
                return Err(ActivationError::NamesMismatch {
                    fds: count,
                    names: names.len(),
                });
            }
            names
        }
    };
    Ok(Some(names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_env_parsing() {
        let me = 42;
        assert!(parse_listen_env(None, Some("1"), None, me)
            .unwrap()
            .is_none());
        assert!(parse_listen_env(Some("7"), Some("1"), None, me)
            .unwrap()
            .is_none());
        assert!(parse_listen_env(Some("42"), None, None, me)
            .unwrap()
            .is_none());
        assert!(parse_listen_env(Some("42"), Some("0"), None, me)
            .unwrap()
            .is_none());
        let names = parse_listen_env(Some("42"), Some("2"), None, me)
            .unwrap()
            .unwrap();
        assert_eq!(names, vec![None, None]);
        let names = parse_listen_env(Some("42"), Some("2"), Some("web:"), me)
            .unwrap()
            .unwrap();
        assert_eq!(names, vec![Some("web".to_string()), None]);
        for (pid, fds) in [
            ("x", "1"),
            ("", "1"),
            ("42", "-1"),
            ("42", "1x"),
            ("42", ""),
        ] {
            assert!(matches!(
                parse_listen_env(Some(pid), Some(fds), None, me),
                Err(ActivationError::BadVariable { .. })
            ));
        }
        assert!(matches!(
            parse_listen_env(Some("42"), Some("99999999999"), None, me),
            Err(ActivationError::BadVariable { .. })
        ));
        let err = parse_listen_env(Some("42"), Some("3"), Some("a:b"), me).unwrap_err();
        assert_eq!(
            err.to_string(),
            "LISTEN_FDNAMES has 2 names but LISTEN_FDS passes 3 descriptors"
        );
    }

    #[test]
    fn status_format() {
        assert_eq!(status_line(1, 2, 3), "STATUS=busy 1, idle 2, starting 3");
    }
}
