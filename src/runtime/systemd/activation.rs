//! Socket activation (`sd_listen_fds_with_names`): the sockets passed from
//! descriptor 3 up, adopted once per process.

use super::invalid;
use crate::runtime::os;
use nix::sys::socket::SockaddrStorage;
use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike};
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// The first descriptor passed by socket activation (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

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
pub(super) enum Adoption {
    NotYet,
    Held(Vec<ActivatedSocket>),
    Taken,
}

pub(super) static ADOPTED: Mutex<Adoption> = Mutex::new(Adoption::NotYet);

/// The runtime's own copy of each socket adopted by `run` (passed at the start,
/// or handed over by the previous image in an in-place upgrade), with its name,
/// in the order passed: what the next image gets. The service manager passes
/// them once per process, so they are kept whatever the program does with its
/// copies; a socket it closed still has the service manager's copy anyway.
static KEPT: Mutex<Vec<ActivatedSocket>> = Mutex::new(Vec::new());

/// A second descriptor for each of `sockets`, with its name: close-on-exec and
/// numbered 3 or above (`try_clone`).
fn copies(sockets: &[ActivatedSocket]) -> Result<Vec<ActivatedSocket>, ActivationError> {
    sockets
        .iter()
        .map(|s| {
            Ok(ActivatedSocket {
                fd: s.fd.try_clone().map_err(|e| ActivationError::NotOpen {
                    fd: s.fd.as_raw_fd(),
                    source: e,
                })?,
                name: s.name.clone(),
            })
        })
        .collect()
}

/// Keeps a copy of each of `sockets`, just adopted at the start of `run` (see
/// [`KEPT`]).
pub(super) fn keep(sockets: &[ActivatedSocket]) -> Result<(), ActivationError> {
    let copies = copies(sockets)?;
    KEPT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(copies);
    Ok(())
}

/// The kept sockets' numbers and names, in order: an in-place upgrade hands them
/// over.
pub(crate) fn kept_fds() -> Vec<(RawFd, Option<String>)> {
    KEPT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|s| (s.fd.as_raw_fd(), s.name.clone()))
        .collect()
}

/// In an image started by an in-place upgrade (or going back from one): takes
/// the activated sockets the previous image handed over, in its order and with
/// its names, as if the service manager had just passed them: kept for the next
/// image, and a copy of each held for [`listen_fds`]. The kept one stays open
/// whatever `after_init` does with its copy, so a failed one can hand it back.
pub(crate) fn readopt(handed: Vec<ActivatedSocket>) -> Result<(), ActivationError> {
    let mut adopted = ADOPTED.lock().unwrap_or_else(|e| e.into_inner());
    let mut held = copies(&handed)?;
    KEPT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(handed);
    // Any passed to this image itself come after them (none are: the previous
    // image unset the variables).
    if let Adoption::Held(fresh) = std::mem::replace(&mut *adopted, Adoption::Taken) {
        held.extend(fresh);
    }
    *adopted = Adoption::Held(held);
    Ok(())
}

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
/// announced numbers could otherwise name): this returns those. The runtime keeps
/// a copy of each for an in-place upgrade: in the new image (and on its way back
/// to the previous one) this returns the same sockets again, in the same order
/// and with the same names, as if the service manager had just passed them (at
/// other descriptor numbers), whatever the previous image did with its own.
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
pub(super) struct ListenVars {
    pid: Option<String>,
    fds: Option<String>,
    names: Option<String>,
}

impl ListenVars {
    /// Reads the three variables and unsets them.
    pub(super) fn take() -> ListenVars {
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
    pub(super) fn adopt(self) -> Result<(Vec<ActivatedSocket>, Vec<String>), ActivationError> {
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

/// The descriptors adopted at the start of `run` and not yet handed out, and the
/// runtime's kept copies: a daemon keeps them open when it closes what it
/// inherited.
pub(crate) fn held_fds() -> Vec<RawFd> {
    let mut fds: Vec<RawFd> = kept_fds().into_iter().map(|(fd, _)| fd).collect();
    if let Adoption::Held(sockets) = &*ADOPTED.lock().unwrap_or_else(|e| e.into_inner()) {
        fds.extend(sockets.iter().map(|s| s.fd.as_raw_fd()));
    }
    fds
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

    /// What an upgrade hands over comes back from `listen_fds` in order, with its
    /// names, and stays kept whatever the program does with its copies.
    #[test]
    fn handed_over_sockets_are_activated_again_and_kept() {
        let listeners: Vec<TcpListener> = (0..2)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let handed: Vec<ActivatedSocket> = listeners
            .into_iter()
            .zip([Some("web".to_string()), None])
            .map(|(l, name)| ActivatedSocket {
                fd: OwnedFd::from(l),
                name,
            })
            .collect();
        let handed_fds: Vec<RawFd> = handed.iter().map(|s| s.fd.as_raw_fd()).collect();
        readopt(handed).unwrap();
        let got = listen_fds().unwrap();
        assert_eq!(
            got.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            [Some("web".to_string()), None]
        );
        for (s, fd) in got.iter().zip(&handed_fds) {
            assert_ne!(s.fd.as_raw_fd(), *fd, "the program gets a copy");
        }
        let got: Vec<_> = got
            .into_iter()
            .map(|s| s.into_tcp_listener().unwrap().local_addr().unwrap())
            .collect();
        assert_eq!(got, addrs);
        // The program's copies are dropped: the kept ones are still open, to hand on.
        let kept = kept_fds();
        assert_eq!(
            kept,
            vec![
                (handed_fds[0], Some("web".to_string())),
                (handed_fds[1], None)
            ]
        );
        for (fd, _) in kept {
            assert!(getsockname::<SockaddrStorage>(fd).is_ok());
        }
        assert!(listen_fds().unwrap().is_empty(), "taken once");
    }

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
}
