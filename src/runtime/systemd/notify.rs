//! The `sd_notify` protocol: READY, RELOADING, STOPPING, STATUS, MAINPID and the
//! watchdog, sent to `NOTIFY_SOCKET` without blocking the parent.

use super::invalid;
use crate::Notify;
use nix::time::{clock_gettime, ClockId};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The pauses before each retry of a state change (READY=1, RELOADING=1,
/// STOPPING=1, MAINPID=) that found the service manager's queue full: 30 ms in
/// all, once per change, then it is dropped.
const STATE_RETRIES: [Duration; 4] = [
    Duration::from_millis(2),
    Duration::from_millis(4),
    Duration::from_millis(8),
    Duration::from_millis(16),
];

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_format() {
        assert_eq!(status_line(1, 2, 3), "STATUS=busy 1, idle 2, starting 3");
    }
}
