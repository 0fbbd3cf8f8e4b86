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

// `notify.rs`: sd_notify and the watchdog; `activation.rs`: the passed sockets.
// Here: what `run` reads of both at its start, once.
mod activation;
mod notify;

pub(crate) use activation::{held_fds, kept_fds, readopt};
pub use activation::{
    listen_fds, parse_listen_env, ActivatedSocket, ActivationError, LISTEN_FDS_START,
    MAX_LISTEN_FDS,
};
use activation::{Adoption, ListenVars, ADOPTED};
pub use notify::{watchdog_interval, watchdog_interval_from, Notifier, MIN_WATCHDOG_INTERVAL};

use std::io;
use std::time::Duration;

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// The variables of the sd_notify and socket-activation protocols.
const SERVICE_VARS: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
];

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
    /// The variables to set again for an in-place upgrade's new image (same pid):
    /// `NOTIFY_SOCKET` and `WATCHDOG_USEC`, as they were, when they applied to us.
    pub(crate) pass_on: Vec<(std::ffi::OsString, std::ffi::OsString)>,
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
        watchdog: watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id()),
        pass_on: Vec::new(),
        notify_socket,
        notes: Vec::new(),
    };
    if let Some(n) = &env.notify_socket {
        env.pass_on.push(("NOTIFY_SOCKET".into(), n.clone()));
    }
    if let (Some(_), Some(u)) = (env.watchdog, &usec) {
        env.pass_on.push(("WATCHDOG_USEC".into(), u.into()));
    }
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
        // Ours for the process's life: an in-place upgrade hands them over.
        activation::keep(&sockets)?;
        *adopted = Adoption::Held(sockets);
    }
    Ok(env)
}
