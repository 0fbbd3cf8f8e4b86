//! Listener specifications (`tcp://HOST:PORT`, `tcp://[::1]:PORT`, `unix:/path`,
//! each with `,option=value` settings) and binding them.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where a listener listens, as the kernel says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP socket's address.
    Tcp(SocketAddr),
    /// A Unix-domain stream socket's path.
    Unix(PathBuf),
}

impl ListenAddr {
    /// The address of `fd`, which must be a listening stream socket (TCP or
    /// Unix-domain with a path).
    pub(crate) fn of(fd: &OwnedFd) -> io::Result<ListenAddr> {
        use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, SockaddrStorage};
        let bad = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("listener (descriptor {}) {why}", fd.as_raw_fd()),
            )
        };
        if getsockopt(&fd.as_fd(), sockopt::SockType).map_err(io::Error::from)? != SockType::Stream
        {
            return Err(bad("is not a stream socket".into()));
        }
        if !getsockopt(&fd.as_fd(), sockopt::AcceptConn).map_err(io::Error::from)? {
            return Err(bad("is not listening".into()));
        }
        let a: SockaddrStorage = getsockname(fd.as_raw_fd()).map_err(io::Error::from)?;
        if let Some(v4) = a.as_sockaddr_in() {
            return Ok(ListenAddr::Tcp(SocketAddr::V4((*v4).into())));
        }
        if let Some(v6) = a.as_sockaddr_in6() {
            return Ok(ListenAddr::Tcp(SocketAddr::V6((*v6).into())));
        }
        match a.as_unix_addr().and_then(|u| u.path()) {
            Some(p) => Ok(ListenAddr::Unix(p.to_path_buf())),
            None => Err(bad("is neither TCP nor a Unix socket with a path".into())),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "tcp://{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Tcp(String),
    Unix(PathBuf),
}

/// A listener to bind: `tcp://HOST:PORT` (`tcp://[::1]:PORT` for IPv6) or
/// `unix:/path`, then `,name=NAME` (its `LISTEN_FDNAMES` entry; `unknown` by
/// default, as systemd's), `,backlog=N` (1024) and, for a Unix socket,
/// `,mode=0660`, `,owner=USER`, `,group=GROUP`.
///
/// ```
/// use preforkd::runtime::command::ListenSpec;
/// let s: ListenSpec = "unix:/run/app.sock,mode=0660,name=web".parse().unwrap();
/// assert_eq!(s.name(), "web");
/// assert!("tcp://127.0.0.1".parse::<ListenSpec>().is_err()); // no port
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    target: Target,
    name: String,
    backlog: i32,
    mode: Option<u32>,
    owner: Option<String>,
    group: Option<String>,
}

/// Why a listener specification was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("listener {spec:?}: {why}")]
pub struct ListenSpecError {
    spec: String,
    why: String,
}

impl FromStr for ListenSpec {
    type Err = ListenSpecError;
    fn from_str(spec: &str) -> Result<ListenSpec, ListenSpecError> {
        let err = |why: String| ListenSpecError {
            spec: spec.to_string(),
            why,
        };
        let mut parts = spec.split(',');
        let head = parts.next().unwrap_or_default();
        let target = if let Some(hp) = head.strip_prefix("tcp://") {
            let (host, port) = split_host_port(hp).ok_or_else(|| {
                err("expected tcp://HOST:PORT (tcp://[::1]:PORT for IPv6)".into())
            })?;
            port.parse::<u16>()
                .map_err(|_| err(format!("{port:?} is not a port number")))?;
            if host.is_empty() {
                return Err(err(
                    "no host (tcp://0.0.0.0:PORT listens on every address)".into()
                ));
            }
            Target::Tcp(hp.to_string())
        } else if let Some(path) = head.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(err(
                    "a Unix socket's path must be absolute (unix:/path)".into()
                ));
            }
            if path.len() > 107 {
                return Err(err("a Unix socket's path is limited to 107 bytes".into()));
            }
            Target::Unix(PathBuf::from(path))
        } else {
            return Err(err("expected tcp://HOST:PORT or unix:/path".into()));
        };
        let mut s = ListenSpec {
            target,
            name: "unknown".into(),
            backlog: 1024,
            mode: None,
            owner: None,
            group: None,
        };
        for part in parts {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| err(format!("{part:?} is not option=value")))?;
            let unix = matches!(s.target, Target::Unix(_));
            match k {
                "name" => {
                    if v.is_empty()
                        || v.len() > 255
                        || v.chars().any(|c| c == ':' || c.is_control())
                    {
                        return Err(err(format!(
                            "name {v:?}: 1 to 255 characters, no ':' or control characters"
                        )));
                    }
                    s.name = v.to_string();
                }
                "backlog" => {
                    s.backlog =
                        v.parse().ok().filter(|&b: &i32| b > 0).ok_or_else(|| {
                            err(format!("backlog {v:?} is not a positive number"))
                        })?;
                }
                "mode" if unix => {
                    s.mode = Some(
                        u32::from_str_radix(v, 8)
                            .ok()
                            .filter(|&m| m <= 0o777)
                            .ok_or_else(|| err(format!("mode {v:?} is not octal, 0 to 0777")))?,
                    );
                }
                "owner" if unix => s.owner = Some(v.to_string()),
                "group" if unix => s.group = Some(v.to_string()),
                "mode" | "owner" | "group" => {
                    return Err(err(format!("{k} applies to unix: listeners only")))
                }
                other => {
                    return Err(err(format!(
                        "unknown option {other:?} (name, backlog; mode, owner, group for unix:)"
                    )))
                }
            }
        }
        Ok(s)
    }
}

/// `host:port` or `[v6]:port`.
fn split_host_port(hp: &str) -> Option<(&str, &str)> {
    if let Some(rest) = hp.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        Some((host, port))
    } else {
        let (host, port) = hp.rsplit_once(':')?;
        (!host.contains(':')).then_some((host, port))
    }
}

impl ListenSpec {
    /// Its `LISTEN_FDNAMES` entry.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Binds it (after an in-place upgrade: takes the previous image's listener
    /// bound there). A Unix socket's path is replaced only if it is a socket
    /// nobody listens on (a stale one); its mode, owner and group are set.
    ///
    /// # Errors
    /// The system's, naming the listener.
    pub fn bind(&self) -> io::Result<OwnedFd> {
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{self}: {e}"));
        match &self.target {
            Target::Tcp(hp) => {
                let l = crate::runtime::listen(hp.as_str(), self.backlog).map_err(named)?;
                Ok(OwnedFd::from(l))
            }
            Target::Unix(path) => self.bind_unix(path).map_err(named),
        }
    }

    fn bind_unix(&self, path: &Path) -> io::Result<OwnedFd> {
        use std::os::unix::net::{UnixListener, UnixStream};
        if let Some(l) = crate::runtime::upgrade::claim_unix_listener(path)? {
            return Ok(l);
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "another process listens there",
                    ))
                }
                // Nobody listens: a stale socket, left by a killed daemon.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)?
                }
                Err(e) => return Err(e),
            },
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a socket: refused",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let l = UnixListener::bind(path)?;
        let backlog = nix::sys::socket::Backlog::new(self.backlog).map_err(io::Error::from)?;
        nix::sys::socket::listen(&l, backlog).map_err(io::Error::from)?;
        if let Some(mode) = self.mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        if self.owner.is_some() || self.group.is_some() {
            let uid = self
                .owner
                .as_deref()
                .map(|u| found("user", u, nix::unistd::User::from_name(u)).map(|u| u.uid))
                .transpose()?;
            let gid = self
                .group
                .as_deref()
                .map(|g| found("group", g, nix::unistd::Group::from_name(g)).map(|g| g.gid))
                .transpose()?;
            nix::unistd::chown(path, uid, gid).map_err(io::Error::from)?;
        }
        crate::runtime::upgrade::register_listener(l.as_raw_fd());
        Ok(OwnedFd::from(l))
    }
}

/// A user or group looked up by name: `NotFound` naming it if there is none.
fn found<T>(what: &str, name: &str, r: nix::Result<Option<T>>) -> io::Result<T> {
    r.map_err(io::Error::from)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no {what} {name:?}")))
}

impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Tcp(hp) => write!(f, "tcp://{hp}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specifications_parse_or_are_refused_with_the_reason() {
        let s: ListenSpec = "tcp://[::1]:8080,name=web,backlog=16".parse().unwrap();
        assert_eq!((s.name(), s.backlog), ("web", 16));
        assert_eq!(s.to_string(), "tcp://[::1]:8080");
        let u: ListenSpec = "unix:/tmp/x.sock,mode=0660,owner=root".parse().unwrap();
        assert_eq!(u.mode, Some(0o660));
        for (bad, why) in [
            ("tcp://127.0.0.1", "expected tcp://HOST:PORT"),
            ("tcp://127.0.0.1:http", "not a port number"),
            ("tcp://::1:80", "expected tcp://HOST:PORT"),
            ("unix:relative.sock", "must be absolute"),
            ("http://x:1", "expected tcp://"),
            ("tcp://127.0.0.1:80,mode=0600", "unix: listeners only"),
            ("unix:/x,mode=999", "is not octal"),
            ("tcp://127.0.0.1:80,name=a:b", "no ':'"),
            ("tcp://127.0.0.1:80,colour=red", "unknown option"),
            ("tcp://127.0.0.1:80,backlog=0", "positive"),
        ] {
            let e = bad.parse::<ListenSpec>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }
}
