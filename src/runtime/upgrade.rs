//! The runtime's half of the in-place upgrade (the steps are the machine's: see
//! [`Handoff`]): the trial of the new executable, the re-exec with what crosses
//! it, and the new image's start from it.
//!
//! What crosses the exec, as descriptors left open and named in a JSON document
//! in a memory file (`PREFORKD_HANDOFF` gives its number): the machine's
//! [`Handoff`], the clock's origin, the scoreboard's file (a memory file, or the
//! `scoreboard_path` file with its lock), the children's wake-up pipe, the pid
//! file (with its lock), each child's log channel, the listeners made with
//! [`listen`](super::listen) (handed back, in order, to the new image's calls of
//! `listen` for a compatible address), the socket-activated sockets (returned
//! again, in order and with their names, by the new image's
//! [`systemd::listen_fds`](super::systemd::listen_fds)), and the image being left
//! (the way back).
//! The service manager's variables are set again for the new image. The same pid
//! runs on: pid files, `MAINPID` and supervisors stay valid, and the children stay
//! its children.
//!
//! The trial (`PREFORKD_TRIAL`): the new executable runs with the same arguments
//! and this handoff; its [`Prefork::run`](super::Prefork::run) checks the
//! configuration against the handoff, says "ok" down a pipe and exits, touching
//! nothing else. It has [`TRIAL_LIMIT_SECS`] seconds (SIGALRM). Code that runs
//! before `run` in `main` runs in the trial too.

use super::error::RunError;
use super::os;
use super::signals::PARENT_SIGNALS;
use super::system::System;
use crate::{ExitStatus, Handoff, Image};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

/// The variable naming the handoff's memory file.
pub(super) const HANDOFF_ENV: &str = "PREFORKD_HANDOFF";
/// The variable naming the trial's report pipe.
pub(super) const TRIAL_ENV: &str = "PREFORKD_TRIAL";
/// The format of the handoff document this image writes and reads.
const CARRIED_FORMAT: u32 = 1;
/// How long the trial of a new executable may take.
pub const TRIAL_LIMIT_SECS: u32 = 30;

/// What crosses the exec besides the machine's handoff: descriptor numbers left
/// open, and what the parent knew at its start.
#[derive(Debug, Serialize, Deserialize)]
struct Carried {
    /// [`CARRIED_FORMAT`] (see [`read_carried`]).
    format: u32,
    machine: Handoff,
    origin_ns: u64,
    board: RawFd,
    slots: usize,
    wake_read: RawFd,
    wake_write: RawFd,
    pid_file: Option<RawFd>,
    channels: Vec<(i32, RawFd)>,
    listeners: Vec<RawFd>,
    /// The socket-activated sockets, in the order passed, with their
    /// `LISTEN_FDNAMES` names. Left out when there are none, so that an image
    /// that does not know the field can still read the document (the way back
    /// to one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    activated: Vec<(RawFd, Option<String>)>,
    previous: Option<RawFd>,
    /// The log files open now, by path.
    logs: Vec<(PathBuf, RawFd)>,
    /// The arguments to return to the previous image with (its own).
    previous_argv: Vec<Vec<u8>>,
    daemonized: bool,
    exe: Option<PathBuf>,
    /// The directory the daemon was first started from: relative paths in the
    /// arguments mean the same files in every image.
    #[serde(default)]
    cwd: Option<PathBuf>,
    /// Set when a new image hands the children back because it could not start:
    /// why, for the image taking them back to log.
    #[serde(default)]
    returned: Option<String>,
    /// The executable this image was run from, left open by the exec (a script
    /// needs it open for its interpreter): closed at the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<RawFd>,
    /// A command's children: the parent's ends of their stdout and stderr
    /// pipes (by pid), so that their output is still read after the exec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    captured: Vec<(i32, RawFd, RawFd)>,
    /// The keeper of the command children's process groups: its pipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keeper: Option<RawFd>,
    /// The metrics endpoint's listener: the new image serves on the very socket
    /// (same port even if port 0 was asked for, and no moment refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metrics: Option<RawFd>,
}

/// A handoff received at the start, its descriptors owned.
#[derive(Debug)]
pub(super) struct Inherited {
    pub(super) machine: Handoff,
    pub(super) origin_ns: u64,
    pub(super) board: File,
    pub(super) slots: usize,
    pub(super) wake_read: OwnedFd,
    pub(super) wake_write: OwnedFd,
    pub(super) pid_file: Option<OwnedFd>,
    pub(super) channels: BTreeMap<i32, OwnedFd>,
    pub(super) previous: Option<File>,
    pub(super) logs: Vec<(PathBuf, File)>,
    pub(super) previous_argv: Vec<Vec<u8>>,
    pub(super) daemonized: bool,
    pub(super) exe: Option<PathBuf>,
    /// Why the image this one handed over to came back at once (see [`fall_back`]).
    pub(super) returned: Option<String>,
    /// A command's children's output pipes (see [`Carried`]).
    pub(super) captured: Vec<(i32, OwnedFd, OwnedFd)>,
    pub(super) keeper: Option<OwnedFd>,
}

/// How this image starts.
#[derive(Debug)]
pub(super) enum Start {
    /// Afresh.
    Fresh,
    /// From a previous image's handoff.
    Upgrade(Box<Inherited>),
    /// As the trial of an upgrade: check, report down `report`, exit.
    Trial {
        handoff: Box<Handoff>,
        /// The running pool's slots: `max_children` must stay the same.
        slots: usize,
        /// Whether the running daemon holds a pid file: `pid_path` must stay set.
        pid_file: bool,
        report: File,
    },
}

/// Reads the handoff or the trial's variables, if any, and unsets them. Call it
/// at the start of `run`, right after the service manager's variables.
pub(super) fn take_start() -> Result<Start, RunError> {
    let fd = |name: &str| -> Result<Option<RawFd>, RunError> {
        let Some(v) = std::env::var_os(name) else {
            return Ok(None);
        };
        std::env::remove_var(name);
        v.to_str()
            .and_then(|v| v.parse::<RawFd>().ok())
            .filter(|&fd| fd > 2)
            .map(Some)
            .ok_or_else(|| {
                super::error::invalid("handoff", format!("{name}={v:?} is not a descriptor"))
            })
    };
    let handoff = fd(HANDOFF_ENV)?;
    let trial = fd(TRIAL_ENV)?;
    let Some(handoff) = handoff else {
        return Ok(Start::Fresh);
    };
    let io = |what: &'static str| {
        move |e: std::io::Error| RunError::Io {
            what: format!("reading the upgrade's handoff: {what}"),
            source: e,
        }
    };
    // Only the memory file a previous image of this process wrote is read: a
    // variable pointing at anything else is refused.
    let link = std::fs::read_link(format!("/proc/self/fd/{handoff}")).unwrap_or_default();
    if !link
        .to_string_lossy()
        .starts_with("/memfd:preforkd-handoff")
    {
        return Err(super::error::invalid(
            "handoff",
            format!("{HANDOFF_ENV}={handoff} does not name preforkd's handoff memory file"),
        ));
    }
    let mut doc = File::from(os::adopt_fd(handoff).map_err(io("its memory file"))?);
    let mut text = String::new();
    doc.rewind().map_err(io("its memory file"))?;
    doc.read_to_string(&mut text)
        .map_err(io("its memory file"))?;
    let carried = read_carried(&text)?;
    if let Some(fd) = carried.image {
        // Nothing of it is needed any more (`/proc/self/exe` names the image).
        drop(os::adopt_fd(fd));
    }
    if let Some(dir) = &carried.cwd {
        *START_DIR.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir.clone());
    }
    if trial.is_none() {
        // From here on, whatever stops this image before its machine runs sends
        // the children back to the image that handed them over.
        arm_fallback(&carried).map_err(io("keeping the way back"))?;
    }
    if trial.is_none() {
        // Every child handed over must really be ours: the machine will signal them.
        let me = std::process::id() as i32;
        for pid in carried.machine.pids() {
            if parent_of(pid.0) != Some(me) {
                return Err(super::error::invalid(
                    "handoff",
                    format!("pid {pid} is not a child of this process"),
                ));
            }
        }
    }
    if let Some(report) = trial {
        let report = File::from(os::adopt_fd(report).map_err(io("the trial's pipe"))?);
        return Ok(Start::Trial {
            handoff: Box::new(carried.machine),
            slots: carried.slots,
            pid_file: carried.pid_file.is_some(),
            report,
        });
    }
    let adopt = |fd: RawFd| os::adopt_fd(fd).map_err(io("a descriptor"));
    let mut channels = BTreeMap::new();
    for &(pid, fd) in &carried.channels {
        channels.insert(pid, adopt(fd)?);
    }
    let mut logs = Vec::new();
    for (path, fd) in &carried.logs {
        logs.push((path.clone(), File::from(adopt(*fd)?)));
    }
    let mut listeners = Vec::new();
    for &fd in &carried.listeners {
        listeners.push((adopt(fd)?, false));
    }
    let mut activated = Vec::new();
    for (fd, name) in &carried.activated {
        activated.push(super::systemd::ActivatedSocket {
            fd: adopt(*fd)?,
            name: name.clone(),
        });
    }
    super::systemd::readopt(activated)?;
    // Not worth failing the upgrade for: without it the new image binds afresh.
    *INHERITED_METRICS.lock().unwrap_or_else(|e| e.into_inner()) =
        carried.metrics.and_then(|fd| adopt(fd).ok());
    PREVIOUS_KNOWS_METRICS.store(
        carried.metrics.is_some(),
        std::sync::atomic::Ordering::Relaxed,
    );
    *HANDED_ORDER.lock().unwrap_or_else(|e| e.into_inner()) = carried.listeners.clone();
    *INHERITED_LISTENERS
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = listeners;
    UPGRADED.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(Start::Upgrade(Box::new(Inherited {
        machine: carried.machine,
        origin_ns: carried.origin_ns,
        board: File::from(adopt(carried.board)?),
        slots: carried.slots,
        wake_read: adopt(carried.wake_read)?,
        wake_write: adopt(carried.wake_write)?,
        pid_file: carried.pid_file.map(adopt).transpose()?,
        channels,
        previous: carried.previous.map(adopt).transpose()?.map(File::from),
        previous_argv: carried.previous_argv,
        logs,
        daemonized: carried.daemonized,
        exe: carried.exe,
        returned: carried.returned,
        captured: carried
            .captured
            .iter()
            .map(|&(pid, out, err)| Ok((pid, adopt(out)?, adopt(err)?)))
            .collect::<Result<_, RunError>>()?,
        keeper: carried.keeper.map(adopt).transpose()?,
    })))
}

/// The handoff document, of a format this image reads. Fields it does not know
/// are ignored: a field added within a format is optional, so that an image
/// reads what a later one writes (the way back); a change an older reader would
/// misread makes another format, which the trial refuses before anything
/// changes.
fn read_carried(text: &str) -> Result<Carried, RunError> {
    let carried: Carried = serde_json::from_str(text)
        .map_err(|e| super::error::invalid("handoff", format!("unreadable: {e}")))?;
    if carried.format != CARRIED_FORMAT {
        return Err(super::error::invalid(
            "handoff",
            format!(
                "format {} from the running image, this one reads {CARRIED_FORMAT}",
                carried.format
            ),
        ));
    }
    Ok(carried)
}

/// The refusal of a configuration without `pid_path` by an image handed a pid
/// file: dropping its lock would let a second instance start beside this one.
pub(super) fn pid_path_needed() -> RunError {
    super::error::invalid(
        "pid_path",
        "is not set, but the running daemon holds a pid file and its lock: an in-place upgrade keeps them (set pid_path, or restart to drop it)",
    )
}

/// The parent pid of `pid`, from `/proc/PID/stat`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The trial's end: `result` said down the pipe, then the process exits (0: fit
/// to take over; 78: not, the reason said).
pub(super) fn end_trial(mut report: File, result: Result<(), RunError>) -> ! {
    let code = match &result {
        Ok(()) => {
            let _ = report.write_all(b"ok\n");
            0
        }
        Err(e) => {
            let _ = writeln!(report, "{e}");
            78
        }
    };
    drop(report);
    std::process::exit(code)
}

/// Set once this image started from a handoff.
static UPGRADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this image of the daemon started from an in-place upgrade's handoff
/// (its children were adopted) rather than afresh: `after_init` can tell the two
/// apart (e.g. to skip a warm-up the running children already did). False before
/// [`Prefork::run`](super::Prefork::run) and in the upgrade's trial.
pub fn upgrading() -> bool {
    UPGRADED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The listeners made with [`listen`](super::listen): handed over in an upgrade.
static LISTENERS: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());
/// The listeners a previous image handed over, each with whether `listen` claimed
/// it (it got a copy: this one stays open for the way back whatever `after_init`
/// does with its copy).
static INHERITED_LISTENERS: Mutex<Vec<(OwnedFd, bool)>> = Mutex::new(Vec::new());
/// Their numbers in the order handed over: what goes back to the previous image
/// if this one cannot take over (claimed or not, they are open until then).
static HANDED_ORDER: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

/// Listeners of the runtime's own, which cross the exec by their own way (the
/// metrics endpoint's), so no reason to refuse an upgrade.
static PRIVATE_LISTENERS: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

/// Whether the previous image handed a metrics listener over: only then does
/// the way back hand this one's to it (an image without the field would hold it
/// open, unserved).
static PREVIOUS_KNOWS_METRICS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The metrics listener the previous image handed over, until claimed.
static INHERITED_METRICS: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// The metrics listener the previous image handed over, if it listens where
/// `wanted` asks (the same address, and the same port unless port 0 is asked
/// for); one that does not (or any, for an empty `wanted`) is closed.
pub(super) fn claim_metrics_listener(
    wanted: &[std::net::SocketAddr],
) -> Option<std::net::TcpListener> {
    let fd = INHERITED_METRICS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()?;
    let l = std::net::TcpListener::from(fd);
    let local = l.local_addr().ok()?;
    wanted
        .iter()
        .any(|w| w.ip() == local.ip() && (w.port() == 0 || w.port() == local.port()))
        .then_some(l)
}

/// Notes a listener of the runtime's own that an upgrade leaves behind.
pub(super) fn register_private_listener(fd: RawFd) {
    PRIVATE_LISTENERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(fd);
}

/// Notes a listener made by [`listen`](super::listen), to hand over in an upgrade.
pub(super) fn register_listener(fd: RawFd) {
    let mut l = LISTENERS.lock().unwrap_or_else(|e| e.into_inner());
    if !l.contains(&fd) {
        l.push(fd);
    }
}

/// A copy of the first handed-over listener not claimed yet and bound where
/// `wanted` asks (the same address, and the same port unless it asks for port 0),
/// now claimed; `None` if there is none.
pub(super) fn claim_listener(
    wanted: &[std::net::SocketAddr],
) -> std::io::Result<Option<std::net::TcpListener>> {
    let mut inherited = INHERITED_LISTENERS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let found = inherited.iter_mut().find(|(fd, claimed)| {
        if *claimed {
            return false;
        }
        let Ok(l) = fd.try_clone().map(std::net::TcpListener::from) else {
            return false;
        };
        let Ok(local) = l.local_addr() else {
            return false;
        };
        wanted
            .iter()
            .any(|w| w.ip() == local.ip() && (w.port() == 0 || w.port() == local.port()))
    });
    let Some((fd, claimed)) = found else {
        return Ok(None);
    };
    let copy = fd.try_clone()?;
    *claimed = true;
    Ok(Some(std::net::TcpListener::from(copy)))
}

/// A copy of the handed-over Unix-domain listener bound at `path`, now
/// claimed; `None` if there is none.
pub(super) fn claim_unix_listener(path: &std::path::Path) -> std::io::Result<Option<OwnedFd>> {
    let mut inherited = INHERITED_LISTENERS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let found = inherited.iter_mut().find(|(fd, claimed)| {
        !*claimed
            && nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(fd.as_raw_fd())
                .ok()
                .and_then(|a| a.path().map(|p| p == path))
                .unwrap_or(false)
    });
    let Some((fd, claimed)) = found else {
        return Ok(None);
    };
    let copy = fd.try_clone()?;
    *claimed = true;
    Ok(Some(copy))
}

/// Closes this image's copies of the handed-over listeners once `after_init`
/// succeeded: those it did not claim are strays (the old children hold their
/// own copies, the new ones must not inherit them), and those it claimed it
/// holds itself. (After a failed one they all stay open: they go back to the
/// previous image, even those it claimed and dropped.)
pub(super) fn drop_unclaimed_listeners() {
    INHERITED_LISTENERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    HANDED_ORDER
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
}

/// The listeners to hand over, still open as sockets (one dropped by the program
/// may have had its number reused): to the previous image, those it handed over,
/// in its order; otherwise those made with `listen`.
fn live_listeners(image: Image) -> Vec<RawFd> {
    let handed = HANDED_ORDER
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let l = match image {
        Image::Previous if !handed.is_empty() => handed,
        _ => LISTENERS.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    };
    l.iter()
        .copied()
        .filter(|&fd| {
            nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(fd).is_ok()
        })
        .collect()
}

/// A listening socket of this process that an upgrade would not hand over (made
/// other than with `listen`), described: the new image could not serve on it,
/// nor could the previous one on the way back (its old children hold the port).
fn stray_listener() -> Option<String> {
    // By socket, not by number: the program holds copies of the ones handed over
    // (a socket-activated one is a copy of the runtime's).
    let socket = |fd: RawFd| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok();
    let handed: Vec<_> = live_listeners(Image::New)
        .into_iter()
        .chain(super::systemd::kept_fds().into_iter().map(|(fd, _)| fd))
        .chain(
            PRIVATE_LISTENERS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .copied(),
        )
        .filter_map(socket)
        .collect();
    let fd = os::listening_sockets()
        .into_iter()
        .find(|&fd| socket(fd).is_some_and(|s| !handed.contains(&s)))?;
    let addr = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(fd)
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "an unnamed socket".into());
    Some(format!(
        "the listening socket {addr} (descriptor {fd}) was not made with runtime::listen: it cannot cross the exec"
    ))
}

impl<T: 'static> System<T> {
    fn carried(&self, machine: Handoff, image: Image, previous: Option<RawFd>) -> Carried {
        Carried {
            format: CARRIED_FORMAT,
            machine,
            origin_ns: self.clock.origin_ns(),
            board: self.board_file.as_raw_fd(),
            slots: self.cfg.options.max_children,
            wake_read: self._wake_read.as_raw_fd(),
            wake_write: self._wake_write.as_raw_fd(),
            pid_file: self.pid_fd,
            channels: self
                .log_channels
                .iter()
                .map(|(&pid, fd)| (pid, fd.as_raw_fd()))
                .collect(),
            listeners: live_listeners(image),
            activated: super::systemd::kept_fds(),
            previous,
            logs: self
                .logs
                .all()
                .iter()
                .map(|l| (l.path().to_path_buf(), l.raw_fd()))
                .collect(),
            previous_argv: if previous.is_some() {
                std::env::args_os().map(|a| a.into_vec()).collect()
            } else {
                Vec::new()
            },
            daemonized: self.daemonized,
            exe: self.exe.clone(),
            cwd: start_dir(),
            returned: None,
            image: None,
            captured: self
                .captured
                .iter()
                .map(|(&pid, (o, e))| (pid, o.as_raw_fd(), e.as_raw_fd()))
                .collect(),
            keeper: self.keeper.as_ref().map(AsRawFd::as_raw_fd),
            metrics: match image {
                Image::Previous
                    if !PREVIOUS_KNOWS_METRICS.load(std::sync::atomic::Ordering::Relaxed) =>
                {
                    None
                }
                _ => self.metrics.as_ref().map(|m| m.fd),
            },
        }
    }

    /// Starts the trial of the executable on disk (see the module docs); its
    /// outcome comes when it is reaped. `Some(false)` if it could not start.
    pub(super) fn start_probe(&mut self, handoff: &Handoff) -> Option<bool> {
        match self.spawn_probe(handoff) {
            Ok(()) => None,
            Err(e) => {
                slog::error!(
                    self.logger,
                    "upgrade: cannot start the trial of the new executable: {e}"
                );
                Some(false)
            }
        }
    }

    fn spawn_probe(&mut self, handoff: &Handoff) -> std::io::Result<()> {
        let exe = self.exe.clone().ok_or_else(|| {
            std::io::Error::other("the executable's path is unknown (current_exe failed at start)")
        })?;
        if self.trial.is_some() {
            return Err(std::io::Error::other("a trial is already running"));
        }
        if let Some(why) = stray_listener() {
            return Err(std::io::Error::other(why));
        }
        // Opened once: the trial runs this file, and so does the exec if it passes,
        // whatever lands at the path meanwhile.
        // O_PATH: an executable the daemon may run but not read is opened too.
        let image = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(&exe)?;
        let image_fd = image.as_raw_fd();
        let doc = self.handoff_file(&Carried {
            image: Some(image_fd),
            ..self.carried(handoff.clone(), Image::New, None)
        })?;
        // The read end never blocks: a process the trial left behind may hold the
        // write end open after the trial is reaped.
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        nix::fcntl::fcntl(
            &read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        let mut cmd = std::process::Command::new(format!("/proc/self/fd/{image_fd}"));
        let mut args = std::env::args_os();
        if let Some(arg0) = args.next() {
            std::os::unix::process::CommandExt::arg0(&mut cmd, arg0);
        }
        cmd.args(args)
            .env(HANDOFF_ENV, doc.as_raw_fd().to_string())
            .env(TRIAL_ENV, write.as_raw_fd().to_string())
            .stdin(std::process::Stdio::null());
        // The image stays open in the trial too: a script's interpreter opens it.
        let keep = [doc.as_raw_fd(), write.as_raw_fd(), image_fd];
        // A file just written may still be open for writing in some process for
        // an instant (ETXTBSY): a few short retries, not a failed upgrade.
        let mut tries = 0;
        let child = loop {
            match os::spawn_trial(&mut cmd, &keep, TRIAL_LIMIT_SECS) {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 5 => {
                    tries += 1;
                    // Bounded: 5 ms at most, once per upgrade.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                other => break other?,
            }
        };
        slog::info!(
            self.logger,
            "upgrade: trying {} (pid {})",
            exe.display(),
            child.id()
        );
        self.trial = Some((child.id() as i32, File::from(read)));
        self.candidate = Some(image);
        Ok(())
    }

    /// Ends a trial still running (the parent stops): it must not outlive it.
    pub(super) fn end_trial_now(&mut self) {
        if let Some((pid, _)) = self.trial.take() {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        self.candidate = None;
    }

    /// Whether `pid` is the trial; if so, its outcome is noted.
    pub(super) fn reaped_trial(&mut self, pid: i32, status: ExitStatus) -> bool {
        if self.trial.as_ref().map(|(p, _)| *p) != Some(pid) {
            return false;
        }
        let Some((_, mut pipe)) = self.trial.take() else {
            return false;
        };
        let mut said = String::new();
        // The trial has exited: its end of the pipe is closed, this does not block.
        let _ = pipe.read_to_string(&mut said);
        let said = said.trim();
        let ok = status == ExitStatus::Exited(0) && said == "ok";
        if ok {
            slog::info!(self.logger, "upgrade: the new executable passed its trial");
        } else {
            let why = if said.is_empty() {
                format!("it ended ({status}) before checking its configuration")
            } else {
                said.to_string()
            };
            slog::error!(
                self.logger,
                "upgrade: the new executable failed its trial: {why}"
            );
        }
        if !ok {
            self.candidate = None;
        }
        self.probe_result = Some(ok);
        true
    }

    /// A memory file holding `carried`, open for the next image.
    fn handoff_file(&self, carried: &Carried) -> std::io::Result<File> {
        let mut f = os::memfd("preforkd-handoff")?;
        serde_json::to_writer(&mut f, carried).map_err(std::io::Error::other)?;
        f.rewind()?;
        Ok(f)
    }

    /// Re-executes the parent from `image` (see the module docs); returns only if
    /// it could not, every descriptor as it was and the reason logged.
    pub(super) fn exec_image(&mut self, image: Image, handoff: Handoff) {
        let e = self.try_exec(image, handoff);
        slog::error!(self.logger, "upgrade: the re-exec ({image:?}) failed: {e}");
    }

    fn try_exec(&mut self, image: Image, handoff: Handoff) -> std::io::Error {
        // The way back from the new image is this one, kept open since the start.
        let previous = match image {
            Image::New => self.own_image.as_ref().map(AsRawFd::as_raw_fd),
            Image::Previous => None,
        };
        let handoff = match image {
            Image::New => handoff.with_previous(previous.is_some()),
            Image::Previous => handoff.with_previous(false).returning(),
        };
        // The new image is the file tried (see `spawn_probe`), left open for a
        // script's interpreter, closed by the new image at its start.
        let candidate = match image {
            Image::New => self.candidate.as_ref().map(AsRawFd::as_raw_fd),
            Image::Previous => None,
        };
        let carried = Carried {
            image: candidate,
            ..self.carried(handoff, image, previous)
        };
        let doc = match self.handoff_file(&carried) {
            Ok(f) => f,
            Err(e) => return e,
        };
        let mut keep: Vec<RawFd> = vec![
            doc.as_raw_fd(),
            carried.board,
            carried.wake_read,
            carried.wake_write,
        ];
        keep.extend(carried.pid_file);
        keep.extend(carried.channels.iter().map(|&(_, fd)| fd));
        keep.extend(&carried.listeners);
        keep.extend(carried.activated.iter().map(|(fd, _)| *fd));
        keep.extend(carried.previous);
        keep.extend(carried.logs.iter().map(|(_, fd)| *fd));
        keep.extend(carried.captured.iter().flat_map(|&(_, o, e)| [o, e]));
        keep.extend(carried.keeper);
        keep.extend(carried.metrics);
        keep.extend(candidate);
        let mut cleared = Vec::new();
        let mut error = None;
        for &fd in &keep {
            match os::set_cloexec(os::borrow_fd(fd), false) {
                Ok(()) => cleared.push(fd),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        if error.is_none() {
            let env = next_env(&self.service_vars, &doc);
            // The previous image returns with its own arguments.
            let argv: Vec<CString> = match image {
                Image::New => std::env::args_os().map(|a| a.into_vec()).collect(),
                Image::Previous => self.previous_argv.clone(),
            }
            .into_iter()
            .filter_map(|a| CString::new(a).ok())
            .collect();
            // The exec closes the scrapes under way: answered first, new ones
            // left in the queue for the next image.
            let metrics = self.metrics.as_ref();
            if metrics.is_some_and(|m| !m.quiesce(super::metrics::QUIESCE_WITHIN)) {
                slog::info!(
                    self.logger,
                    "upgrade: a metrics scrape still open after {:?} is closed by the exec",
                    super::metrics::QUIESCE_WITHIN
                );
            }
            let held = os::hold_signals(&PARENT_SIGNALS);
            // Signals told and not yet handled are raised again, held back: the
            // new image finds them pending (the helper threads block them).
            let pending = self.pending.clone();
            let gate = pending.raise_again();
            let errno = match (image, &self.candidate, &self.previous) {
                (Image::New, Some(new), _) => nix::unistd::fexecve(new.as_fd(), &argv, &env).err(),
                (Image::Previous, _, Some(prev)) => {
                    nix::unistd::fexecve(prev.as_fd(), &argv, &env).err()
                }
                _ => Some(nix::errno::Errno::ENOENT),
            };
            drop(gate);
            if held.is_ok() {
                let _ = os::release_signals(&PARENT_SIGNALS);
            }
            if let Some(m) = self.metrics.as_ref() {
                m.resume();
            }
            error = Some(match (image, errno) {
                (Image::New, Some(e)) if self.candidate.is_none() => {
                    std::io::Error::other(format!("no executable was tried ({e})"))
                }
                (Image::Previous, Some(_)) if self.previous.is_none() => {
                    std::io::Error::other("no previous image to return to")
                }
                (_, Some(e)) => std::io::Error::from(e),
                (_, None) => std::io::Error::other("exec returned"),
            });
        }
        for fd in cleared {
            let _ = os::set_cloexec(os::borrow_fd(fd), true);
        }
        error.unwrap_or_else(|| std::io::Error::other("exec returned"))
    }
}

/// The environment of the next image: this one's, the service manager's
/// variables set again, and the handoff's memory file named.
fn next_env(service_vars: &[(OsString, OsString)], doc: &File) -> Vec<CString> {
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != HANDOFF_ENV && k != TRIAL_ENV)
        .chain(service_vars.iter().cloned())
        .chain([(
            OsString::from(HANDOFF_ENV),
            OsString::from(doc.as_raw_fd().to_string()),
        )])
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    env.push(
        CString::new(format!("WATCHDOG_PID={}", std::process::id())).expect("digits have no NUL"),
    );
    env
}

/// The directory the daemon was first started from (carried across upgrades).
static START_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The directory relative paths are resolved against: the one the daemon was
/// first started from, noted at its first call (a fresh start's current
/// directory; after an upgrade, the one carried over, even though a daemon now
/// works from `/`).
pub(super) fn start_dir() -> Option<PathBuf> {
    let mut dir = START_DIR.lock().unwrap_or_else(|e| e.into_inner());
    if dir.is_none() {
        *dir = std::env::current_dir().ok();
    }
    dir.clone()
}

/// The way back of an image started from a handoff, until its machine runs:
/// copies of every descriptor handed over (the originals are adopted, and a
/// failed start may close them), and the document to hand them back with.
struct Fallback {
    carried: Carried,
    fds: Vec<OwnedFd>,
    image: OwnedFd,
    /// The previous image's own arguments.
    argv: Vec<Vec<u8>>,
}

static FALLBACK: Mutex<Option<Fallback>> = Mutex::new(None);

/// Keeps the way back of `carried` (if it has one: the previous image handed
/// over its own image): see [`fall_back`].
fn arm_fallback(carried: &Carried) -> std::io::Result<()> {
    let Some(image) = carried.previous else {
        return Ok(());
    };
    let mut fds = Vec::new();
    let mut copy = |fd: RawFd| -> std::io::Result<RawFd> {
        let c = os::dup_handed(fd)?;
        let n = c.as_raw_fd();
        fds.push(c);
        Ok(n)
    };
    let back = Carried {
        format: CARRIED_FORMAT,
        machine: carried.machine.clone().with_previous(false).returning(),
        origin_ns: carried.origin_ns,
        board: copy(carried.board)?,
        slots: carried.slots,
        wake_read: copy(carried.wake_read)?,
        wake_write: copy(carried.wake_write)?,
        pid_file: carried.pid_file.map(&mut copy).transpose()?,
        channels: carried
            .channels
            .iter()
            .map(|&(pid, fd)| Ok((pid, copy(fd)?)))
            .collect::<std::io::Result<_>>()?,
        listeners: carried
            .listeners
            .iter()
            .map(|&fd| copy(fd))
            .collect::<std::io::Result<_>>()?,
        activated: carried
            .activated
            .iter()
            .map(|(fd, name)| Ok((copy(*fd)?, name.clone())))
            .collect::<std::io::Result<_>>()?,
        previous: None,
        logs: carried
            .logs
            .iter()
            .map(|(path, fd)| Ok((path.clone(), copy(*fd)?)))
            .collect::<std::io::Result<_>>()?,
        previous_argv: Vec::new(),
        daemonized: carried.daemonized,
        exe: carried.exe.clone(),
        cwd: carried.cwd.clone(),
        returned: None,
        image: None,
        captured: carried
            .captured
            .iter()
            .map(|&(pid, o, e)| Ok((pid, copy(o)?, copy(e)?)))
            .collect::<std::io::Result<_>>()?,
        keeper: carried.keeper.map(&mut copy).transpose()?,
        metrics: carried.metrics.map(&mut copy).transpose()?,
    };
    let image = os::dup_handed(image)?;
    *FALLBACK.lock().unwrap_or_else(|e| e.into_inner()) = Some(Fallback {
        carried: back,
        fds,
        image,
        argv: carried.previous_argv.clone(),
    });
    Ok(())
}

/// The new image's machine runs: from here on it decides about the way back, and
/// the copies kept for it are closed.
pub(super) fn disarm_fallback() {
    FALLBACK.lock().unwrap_or_else(|e| e.into_inner()).take();
}

/// Hands the children back to the previous image because this one could not
/// start (`why`), if it started from a handoff whose machine has not run yet.
/// Returns only if there is no way back (nothing said) or it failed (said on
/// stderr, which a daemon points at its error log).
pub(super) fn fall_back(service_vars: &[(OsString, OsString)], why: &str) {
    let Some(fallback) = FALLBACK.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    eprintln!(
        "upgrade: the new image failed at its start ({why}); returning to the previous image"
    );
    let e = exec_back(fallback, service_vars, why);
    eprintln!("upgrade: the way back to the previous image failed too: {e}");
}

fn exec_back(
    fallback: Fallback,
    service_vars: &[(OsString, OsString)],
    why: &str,
) -> std::io::Error {
    let Fallback {
        mut carried,
        fds,
        image,
        argv,
    } = fallback;
    let argv: Vec<CString> = argv
        .into_iter()
        .filter_map(|a| CString::new(a).ok())
        .collect();
    carried.returned = Some(why.to_string());
    let doc = (|| {
        let mut f = os::memfd("preforkd-handoff")?;
        serde_json::to_writer(&mut f, &carried).map_err(std::io::Error::other)?;
        f.rewind()?;
        Ok::<_, std::io::Error>(f)
    })();
    let doc = match doc {
        Ok(f) => f,
        Err(e) => return e,
    };
    for fd in fds.iter().map(AsFd::as_fd).chain([doc.as_fd()]) {
        if let Err(e) = os::set_cloexec(fd, false) {
            return e;
        }
    }
    let env = next_env(service_vars, &doc);
    // Signals stay held until the previous image's handlers are in place.
    let _ = os::hold_signals(&PARENT_SIGNALS);
    let e = match nix::unistd::fexecve(image.as_fd(), &argv, &env) {
        Err(e) => std::io::Error::from(e),
        Ok(never) => match never {},
    };
    let _ = os::release_signals(&PARENT_SIGNALS);
    e
}

/// The executable an upgrade runs: the path this process was started from, made
/// absolute against the start directory, symlinks kept (a deployment that flips
/// a `current` link upgrades to the new release), found in `PATH` as a shell
/// does when it has no slash; `/proc/self/exe` (symlinks resolved) when that
/// path does not name the running file.
pub(super) fn started_from() -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let running = std::fs::metadata("/proc/self/exe").ok();
    let same = |p: &std::path::Path| {
        let (Some(r), Ok(m)) = (&running, std::fs::metadata(p)) else {
            return false;
        };
        r.dev() == m.dev() && r.ino() == m.ino()
    };
    let arg0 = PathBuf::from(std::env::args_os().next().unwrap_or_default());
    let found = if arg0.as_os_str().as_bytes().contains(&b'/') {
        let p = match start_dir() {
            Some(dir) if arg0.is_relative() => dir.join(&arg0),
            _ => arg0,
        };
        std::path::absolute(p).ok().filter(|p| same(p))
    } else if arg0.as_os_str().is_empty() {
        None
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .filter(|d| d.is_absolute())
                .map(|d| d.join(&arg0))
                .find(|p| same(p))
        })
    };
    found.or_else(|| std::env::current_exe().ok())
}

/// Opens the running image (`/proc/self/exe`) so that an upgrade can come back
/// to it even once its file on disk is replaced.
pub(super) fn open_own_image() -> Option<File> {
    File::open("/proc/self/exe").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> serde_json::Value {
        let machine = crate::Machine::builder(crate::Options::default())
            .build()
            .unwrap()
            .handoff();
        serde_json::json!({
            "format": CARRIED_FORMAT, "machine": machine, "origin_ns": 1, "board": 3,
            "slots": 4, "wake_read": 4, "wake_write": 5, "pid_file": null,
            "channels": [], "listeners": [], "previous": null, "logs": [],
            "previous_argv": [], "daemonized": false, "exe": null,
        })
    }

    #[test]
    fn a_later_images_fields_are_ignored_and_another_format_is_refused() {
        let mut doc = document();
        assert!(read_carried(&doc.to_string()).is_ok());
        doc["a_later_field"] = serde_json::json!([7]);
        let read = read_carried(&doc.to_string()).unwrap();
        assert_eq!(read.slots, 4);
        doc["format"] = serde_json::json!(CARRIED_FORMAT + 1);
        let e = read_carried(&doc.to_string()).unwrap_err().to_string();
        assert!(e.contains("handoff") && e.contains("format 2"), "{e}");
        doc.as_object_mut().unwrap().remove("board");
        let e = read_carried(&doc.to_string()).unwrap_err().to_string();
        assert!(e.contains("board"), "{e}");
    }
}
