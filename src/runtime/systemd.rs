//! systemd integration without libsystemd: service-manager notification
//! (the `sd_notify` protocol), the watchdog interval, and socket activation
//! (`LISTEN_FDS`).
//!
//! Everything here is plain Unix: a datagram to the socket named by
//! `NOTIFY_SOCKET`, and descriptors inherited from 3 up. Outside systemd (no
//! `NOTIFY_SOCKET`, no `LISTEN_PID`) every entry point quietly does nothing.
//!
//! [`Prefork::run`](crate::Prefork::run) reads `NOTIFY_SOCKET`, `WATCHDOG_USEC`,
//! `WATCHDOG_PID` and `LISTEN_*` once, first thing (before it opens any
//! descriptor or starts a thread), adopts the passed sockets then, and unsets all
//! six variables, so that children and anything they run never see them. So under
//! `run`, [`listen_fds`] (in `after_init`) returns the sockets adopted at the
//! start, and [`Notifier::from_env`] finds nothing: the runtime does the
//! notifying.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The first descriptor passed by socket activation (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// The pauses before each retry of a state change (READY=1, RELOADING=1,
/// STOPPING=1, MAINPID=) that found the service manager's queue full: 30 ms in
/// all, once per change, then it is dropped.
const STATE_RETRIES: [Duration; 4] = [
    Duration::from_millis(2),
    Duration::from_millis(4),
    Duration::from_millis(8),
    Duration::from_millis(16),
];

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// A connection-less handle on the service manager's notification socket
/// (`NOTIFY_SOCKET`), speaking the `sd_notify` protocol.
///
/// Each method sends one datagram and returns the send's result: the caller
/// decides whether a failure is worth a log line. Nothing here panics.
///
/// Nothing here blocks either (the parent's loop sends these): the socket is
/// non-blocking. When the service manager's queue is full (it is slow, or stuck)
/// the notification is dropped, the method returns a `WouldBlock` error and
/// [`dropped`](Notifier::dropped) counts it; a caller sending often (STATUS, the
/// watchdog) should log such a streak once, not each drop. The periodic
/// notifications ([`status`](Notifier::status), [`watchdog`](Notifier::watchdog),
/// [`send_raw`](Notifier::send_raw)) are tried once: the next one supersedes a
/// lost one. The state changes systemd acts on ([`ready`](Notifier::ready),
/// [`reloading`](Notifier::reloading), [`stopping`](Notifier::stopping),
/// [`mainpid`](Notifier::mainpid)) are sent once per change and a lost one
/// costs more (a lost READY=1 leaves a `Type=notify` start waiting until
/// `TimeoutStartSec`, which then kills the service), so they are retried a few
/// times over 30 ms (sleeping) before being dropped: enough for a manager
/// briefly behind, short enough not to hold the caller.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    dropped: AtomicU64,
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
        // A full queue at the manager must not hold the caller: see `Notifier`.
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket,
            addr: sockaddr,
            dropped: AtomicU64::new(0),
        })
    }

    /// How many notifications were dropped because the service manager's queue
    /// was full, since this notifier was made.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The address notifications go to.
    pub fn addr(&self) -> &SocketAddr {
        &self.addr
    }

    /// Sends `state` as is: newline-separated `KEY=value` assignments. One try,
    /// without waiting.
    ///
    /// # Errors
    /// The send failed (no listener, ...); `WouldBlock` when the manager's queue
    /// is full and the notification was dropped (and counted); the datagram went
    /// out short.
    pub fn send_raw(&self, state: &str) -> io::Result<()> {
        self.send_with_retries(state, &[])
    }

    /// [`send_raw`](Notifier::send_raw) retried after each of `pauses` while the
    /// manager's queue is full.
    fn send_with_retries(&self, state: &str, pauses: &[Duration]) -> io::Result<()> {
        let mut pauses = pauses.iter();
        let n = loop {
            match self.socket.send_to_addr(state.as_bytes(), &self.addr) {
                Ok(n) => break n,
                // A non-blocking send is not expected to be interrupted; if it is,
                // it did not go out: try again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match pauses.next() {
                    Some(&pause) => pause_for(pause),
                    None => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        let key = state.split('=').next().unwrap_or(state);
                        return Err(io::Error::new(
                            io::ErrorKind::WouldBlock,
                            format!("the service manager's queue is full: {key} dropped"),
                        ));
                    }
                },
                Err(e) => return Err(e),
            }
        };
        if n == state.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sd_notify: sent {n} of {} bytes", state.len()),
            ))
        }
    }

    /// `READY=1`: start-up (or a reload) is finished, the service is serving.
    /// Retried for up to 30 ms while the manager's queue is full (see
    /// [`Notifier`]).
    pub fn ready(&self) -> io::Result<()> {
        self.send_with_retries("READY=1", &STATE_RETRIES)
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=<now>` (CLOCK_MONOTONIC, µs), as
    /// systemd 253 and later require for `Type=notify-reload`. Send
    /// [`ready`](Notifier::ready) when the reload is done. Retried as `ready` is.
    pub fn reloading(&self) -> io::Result<()> {
        let now = monotonic_usec()?;
        self.send_with_retries(
            &format!("RELOADING=1\nMONOTONIC_USEC={now}"),
            &STATE_RETRIES,
        )
    }

    /// `STOPPING=1`: the service is shutting down. Retried as `ready` is.
    pub fn stopping(&self) -> io::Result<()> {
        self.send_with_retries("STOPPING=1", &STATE_RETRIES)
    }

    /// `STATUS=busy N, idle N, starting N`: the pool's counts, shown by
    /// `systemctl status`. Tried once.
    pub fn status(&self, busy: usize, idle: usize, starting: usize) -> io::Result<()> {
        self.send_raw(&status_line(busy, idle, starting))
    }

    /// `MAINPID=pid`: the service's main process is `pid`. Retried as `ready` is.
    pub fn mainpid(&self, pid: u32) -> io::Result<()> {
        self.send_with_retries(&format!("MAINPID={pid}"), &STATE_RETRIES)
    }

    /// `WATCHDOG=1`: the keep-alive ping; send it every [`watchdog_interval`].
    /// Tried once: the next ping makes up for a lost one.
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
            Notify::Watchdog => self.watchdog(),
        }
    }
}

/// The pause between retries of a state change: short and bounded (see
/// [`STATE_RETRIES`]).
#[allow(clippy::disallowed_methods)] // a bounded wait for room, 30 ms at most in all
fn pause_for(d: Duration) {
    std::thread::sleep(d);
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

/// The shortest interval [`watchdog_interval_from`] returns: a `WATCHDOG_USEC`
/// below twice this (a misconfiguration: systemd's own minimum is far higher)
/// would otherwise make the pinging process spin.
pub const MIN_WATCHDOG_INTERVAL: Duration = Duration::from_millis(10);

/// How often to send [`Notifier::watchdog`]: half of `WATCHDOG_USEC` (the
/// conventional period), at least [`MIN_WATCHDOG_INTERVAL`], or `None` when the
/// watchdog is off for this process (`WATCHDOG_USEC` unset, zero or not a number;
/// `WATCHDOG_PID` set to another process or not a number).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] from given values of `WATCHDOG_USEC` and `WATCHDOG_PID`,
/// for process `our_pid`.
///
/// ```
/// use preforkd::runtime::systemd::{watchdog_interval_from, MIN_WATCHDOG_INTERVAL};
/// use std::time::Duration;
///
/// let every = watchdog_interval_from(Some("30000000"), Some("7"), 7);
/// assert_eq!(every, Some(Duration::from_secs(15)));
/// // Meant for another process.
/// assert_eq!(watchdog_interval_from(Some("30000000"), Some("8"), 7), None);
/// // Absurdly short: floored, never zero.
/// assert_eq!(watchdog_interval_from(Some("1"), None, 7), Some(MIN_WATCHDOG_INTERVAL));
/// ```
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
    Some(Duration::from_micros(usec / 2).max(MIN_WATCHDOG_INTERVAL))
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
    /// `LISTEN_FDS` passes more descriptors than this process may have open.
    #[error("LISTEN_FDS={fds} passes more descriptors than the open-file limit ({limit}) allows")]
    TooMany {
        /// `LISTEN_FDS`.
        fds: u64,
        /// The open-file limit (`RLIMIT_NOFILE`, soft).
        limit: u64,
    },
    /// `LISTEN_FDNAMES` does not name as many sockets as `LISTEN_FDS` passes.
    #[error("LISTEN_FDNAMES has {names} names but LISTEN_FDS passes {fds} descriptors")]
    NamesMismatch {
        /// `LISTEN_FDS`.
        fds: usize,
        /// The number of colon-separated names in `LISTEN_FDNAMES`.
        names: usize,
    },
    /// A passed socket could not be made close-on-exec.
    #[error("descriptor {fd} passed by LISTEN_FDS is not usable: {source}")]
    NotOpen {
        /// The descriptor.
        fd: RawFd,
        /// Why.
        source: io::Error,
    },
}

/// Where the activated sockets are: not looked for yet, adopted and waiting for
/// [`listen_fds`], or handed out (each is adopted and handed out at most once per
/// process).
enum Adoption {
    NotYet,
    Held(Vec<ActivatedSocket>),
    Taken,
}

static ADOPTED: Mutex<Adoption> = Mutex::new(Adoption::NotYet);

/// The variables of the sd_notify and socket-activation protocols.
const SERVICE_VARS: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
];

/// The sockets the service manager passed to this process (socket activation,
/// `sd_listen_fds_with_names`).
///
/// Reads `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`. Of the descriptors
/// announced (`LISTEN_FDS` of them, from 3 up), the open sockets are returned,
/// owned and close-on-exec, with their names; anything else (a descriptor that is
/// not open, a file, a pipe) is skipped and left as it is. None are returned when
/// the variables are unset, when `LISTEN_PID` is another process (they were meant
/// for it, not for us), or when they were already taken by an earlier call.
/// Whatever the outcome, the three variables are then unset, so that processes
/// started later do not see them.
///
/// Under [`Prefork::run`](crate::Prefork::run), the sockets were adopted at the
/// start of `run` (before the runtime opened descriptors of its own, which the
/// announced numbers could otherwise name): this returns those.
///
/// Call it early, before any thread starts: unsetting variables races with
/// threads that read the environment through libc.
///
/// # Errors
/// A variable that is not a number, a count beyond the open-file limit, a
/// `LISTEN_FDNAMES` with another count of names than `LISTEN_FDS`.
pub fn listen_fds() -> Result<Vec<ActivatedSocket>, ActivationError> {
    let mut adopted = ADOPTED.lock().unwrap_or_else(|e| e.into_inner());
    let vars = ListenVars::take();
    match std::mem::replace(&mut *adopted, Adoption::Taken) {
        Adoption::Held(sockets) => Ok(sockets),
        Adoption::Taken => Ok(Vec::new()),
        Adoption::NotYet => match vars.adopt() {
            Ok((sockets, _skipped)) => Ok(sockets),
            Err(e) => {
                // Refused variables adopted nothing: a later call may try again.
                if !matches!(e, ActivationError::NotOpen { .. }) {
                    *adopted = Adoption::NotYet;
                }
                Err(e)
            }
        },
    }
}

/// The values of `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`.
struct ListenVars {
    pid: Option<String>,
    fds: Option<String>,
    names: Option<String>,
}

impl ListenVars {
    /// Reads the three variables and unsets them.
    fn take() -> ListenVars {
        let get = |name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        let vars = ListenVars {
            pid: get("LISTEN_PID"),
            fds: get("LISTEN_FDS"),
            names: get("LISTEN_FDNAMES"),
        };
        for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            // Not `unsafe` in edition 2021, but the same rule as edition 2024's:
            // this runs before other threads start (see `listen_fds`).
            std::env::remove_var(var);
        }
        vars
    }

    /// Adopts the announced sockets: the sockets, and a line for each descriptor
    /// skipped (not open, not a socket).
    fn adopt(self) -> Result<(Vec<ActivatedSocket>, Vec<String>), ActivationError> {
        let Some(names) = parse_listen_env(
            self.pid.as_deref(),
            self.fds.as_deref(),
            self.names.as_deref(),
            std::process::id(),
            open_file_limit(),
        )?
        else {
            return Ok((Vec::new(), Vec::new()));
        };
        let mut sockets = Vec::with_capacity(names.len());
        let mut skipped = Vec::new();
        for (i, name) in names.into_iter().enumerate() {
            // The count was checked against the open-file limit: no overflow.
            let fd = LISTEN_FDS_START + i as RawFd;
            let owned = match os::adopt_socket(fd) {
                Ok(owned) => owned,
                Err(os::NotAdopted::NotOpen(e)) => {
                    skipped.push(format!(
                        "descriptor {fd} passed by LISTEN_FDS is not open ({e}): ignored"
                    ));
                    continue;
                }
                Err(os::NotAdopted::NotSocket) => {
                    skipped.push(format!(
                        "descriptor {fd} passed by LISTEN_FDS is not a socket: ignored (left open)"
                    ));
                    continue;
                }
            };
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
        Ok((sockets, skipped))
    }
}

/// The soft `RLIMIT_NOFILE` (a generous default if it cannot be read).
fn open_file_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1 << 20, |(soft, _)| soft)
}

/// What the service manager passed, read once at the start of
/// [`Prefork::run`](crate::Prefork::run).
#[derive(Debug, Default)]
pub(crate) struct ServiceEnv {
    /// `NOTIFY_SOCKET`, if set and not empty.
    pub(crate) notify_socket: Option<std::ffi::OsString>,
    /// The watchdog period, if the watchdog is on for this process (judged with
    /// the pid at the start, the one the service manager started).
    pub(crate) watchdog: Option<Duration>,
    /// Lines to log once there is a logger (skipped descriptors, a floored
    /// watchdog).
    pub(crate) notes: Vec<String>,
}

/// Reads the service manager's variables, adopts the passed sockets (held for
/// [`listen_fds`]) and unsets all six variables. Call it first thing in `run`,
/// before any descriptor is opened and any thread started.
pub(crate) fn take_service_env() -> Result<ServiceEnv, ActivationError> {
    let mut adopted = ADOPTED.lock().unwrap_or_else(|e| e.into_inner());
    let string = |name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    let notify_socket = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty());
    let usec = string("WATCHDOG_USEC");
    let pid = string("WATCHDOG_PID");
    let listen = ListenVars::take();
    for var in SERVICE_VARS {
        // As in `ListenVars::take`: no other thread runs yet.
        std::env::remove_var(var);
    }
    let mut env = ServiceEnv {
        notify_socket,
        watchdog: watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id()),
        notes: Vec::new(),
    };
    if env.watchdog == Some(MIN_WATCHDOG_INTERVAL) {
        if let Some(u) = usec.as_deref().and_then(|u| u.parse::<u64>().ok()) {
            if Duration::from_micros(u / 2) < MIN_WATCHDOG_INTERVAL {
                env.notes.push(format!(
                    "WATCHDOG_USEC={u} asks for a ping every {} µs: pinging every {} ms instead",
                    u / 2,
                    MIN_WATCHDOG_INTERVAL.as_millis()
                ));
            }
        }
    }
    if let Adoption::NotYet = *adopted {
        let (sockets, skipped) = listen.adopt()?;
        env.notes.extend(skipped);
        *adopted = Adoption::Held(sockets);
    }
    Ok(env)
}

/// The descriptors adopted at the start of `run` and not yet handed out: a
/// daemon keeps them open when it closes what it inherited.
pub(crate) fn held_fds() -> Vec<RawFd> {
    match &*ADOPTED.lock().unwrap_or_else(|e| e.into_inner()) {
        Adoption::Held(sockets) => sockets.iter().map(|s| s.fd.as_raw_fd()).collect(),
        _ => Vec::new(),
    }
}

/// The most descriptors [`parse_listen_env`] accepts whatever the open-file limit:
/// far more than any socket unit passes, few enough that the names cost little.
pub const MAX_LISTEN_FDS: u64 = 65_536;

/// Checks the values of `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` for
/// process `our_pid`, whose open-file limit is `fd_limit` (the descriptors must
/// all be below it, and be at most [`MAX_LISTEN_FDS`]): one name per passed
/// descriptor (`None` without `LISTEN_FDNAMES`, or for an empty name), or `None`
/// when nothing is passed to this process.
///
/// ```
/// use preforkd::runtime::systemd::parse_listen_env;
///
/// let names = parse_listen_env(Some("7"), Some("2"), Some("web:"), 7, 1024).unwrap();
/// assert_eq!(names, Some(vec![Some("web".to_string()), None]));
/// // For another process: nothing for us.
/// assert_eq!(parse_listen_env(Some("8"), Some("2"), None, 7, 1024).unwrap(), None);
/// // More than the open-file limit: an error, not a huge allocation.
/// assert!(parse_listen_env(Some("7"), Some("2147483644"), None, 7, 1024).is_err());
/// ```
///
/// # Errors
/// As for [`listen_fds`].
pub fn parse_listen_env(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
    fd_limit: u64,
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
    let count: u64 = fds
        .parse()
        .map_err(|_| bad("LISTEN_FDS", fds, "a descriptor count"))?;
    if count == 0 {
        return Ok(None);
    }
    // The descriptors are 3 .. 3 + count: all must be below the limit (and the
    // count within reason: one name is allocated per descriptor).
    let limit = fd_limit.min(MAX_LISTEN_FDS + LISTEN_FDS_START as u64);
    if count.saturating_add(LISTEN_FDS_START as u64) > limit {
        return Err(ActivationError::TooMany { fds: count, limit });
    }
    let count =
        usize::try_from(count).map_err(|_| ActivationError::TooMany { fds: count, limit })?;
    let names = match names {
        None => vec![None; count],
        Some(names) => {
            let n = names.split(':').count();
            if n != count {
                return Err(ActivationError::NamesMismatch {
                    fds: count,
                    names: n,
                });
            }
            names
                .split(':')
                .map(|n| (!n.is_empty()).then(|| n.to_string()))
                .collect()
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
        assert!(parse_listen_env(None, Some("1"), None, me, 1024)
            .unwrap()
            .is_none());
        assert!(parse_listen_env(Some("7"), Some("1"), None, me, 1024)
            .unwrap()
            .is_none());
        assert!(parse_listen_env(Some("42"), None, None, me, 1024)
            .unwrap()
            .is_none());
        assert!(parse_listen_env(Some("42"), Some("0"), None, me, 1024)
            .unwrap()
            .is_none());
        let names = parse_listen_env(Some("42"), Some("2"), None, me, 1024)
            .unwrap()
            .unwrap();
        assert_eq!(names, vec![None, None]);
        let names = parse_listen_env(Some("42"), Some("2"), Some("web:"), me, 1024)
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
                parse_listen_env(Some(pid), Some(fds), None, me, 1024),
                Err(ActivationError::BadVariable { .. })
            ));
        }
        for huge in ["99999999999", "2147483644", "1022"] {
            assert!(matches!(
                parse_listen_env(Some("42"), Some(huge), None, me, 1024),
                Err(ActivationError::TooMany { .. })
            ));
        }
        assert!(parse_listen_env(Some("42"), Some("1021"), None, me, 1024).is_ok());
        assert!(matches!(
            parse_listen_env(Some("42"), Some("99999999999999999999999"), None, me, 1024),
            Err(ActivationError::BadVariable { .. })
        ));
        let err = parse_listen_env(Some("42"), Some("3"), Some("a:b"), me, 1024).unwrap_err();
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
