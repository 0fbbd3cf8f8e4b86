//! Children that run a command: the supervisor behind `preforkd run`, for servers
//! written in any language (see `docs/run.md`).
//!
//! Each child execs the command with the listeners at descriptors 3, 4...,
//! announced the systemd way (`LISTEN_FDS`, `LISTEN_PID` = its own pid,
//! `LISTEN_FDNAMES`), in a process group of its own. The parent captures its
//! stdout and stderr line by line into the error log (with the child's pid),
//! stops it with the command's stop signal (then KILLs its whole group), and
//! sees it busy from the kernel: a child whose process tree holds a connection
//! accepted on one of the listeners is busy, and a listener with connections
//! waiting in its queue wakes the parent at once (see docs/run.md). A command
//! that reports for itself gets its scoreboard slot instead
//! ([`Command::cooperative`]).
//!
//! ```no_run
//! use preforkd::runtime::command::{Command, ListenSpec};
//! use preforkd::Prefork;
//!
//! let command = Command::new("gunicorn")?
//!     .args(["-w", "1", "app:app"])
//!     .listen("tcp://127.0.0.1:8000".parse::<ListenSpec>()?);
//! let code = Prefork::command(command).daemonize(false).run()?;
//! std::process::exit(code);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod capture;
mod listen;
pub(crate) mod observe;

pub use listen::{ListenAddr, ListenSpec, ListenSpecError};

pub(crate) use capture::Capture;

use super::error::BoxError;
use super::os;
use super::prefork::Prefork;
use super::worker::Worker;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The environment variable naming the descriptor of the scoreboard a
/// cooperative command writes its slot in.
pub const SCOREBOARD_FD_ENV: &str = "PREFORKD_SCOREBOARD_FD";
/// The environment variable holding a cooperative command's slot number.
pub const SLOT_ENV: &str = "PREFORKD_SLOT";

/// A command every child runs, and how it is supervised.
#[derive(Debug, Clone)]
pub struct Command {
    program: PathBuf,
    argv0: OsString,
    args: Vec<OsString>,
    listen: Vec<ListenSpec>,
    stop_signal: nix::sys::signal::Signal,
    cooperative: bool,
    busy_check_every: Duration,
    dir: Option<PathBuf>,
}

impl Command {
    /// A command running `program`: a path, or a name looked for in `PATH` now
    /// (the daemon may later work from `/`). No listener yet: without any, the
    /// sockets this process got by socket activation are passed on.
    ///
    /// # Errors
    /// `NotFound` naming the program when no executable file of that name is in
    /// `PATH` (or at that path).
    pub fn new(program: impl AsRef<OsStr>) -> io::Result<Command> {
        let name = program.as_ref();
        let path = find_program(name)?;
        Ok(Command {
            program: path,
            argv0: name.to_owned(),
            args: Vec::new(),
            listen: Vec::new(),
            stop_signal: nix::sys::signal::Signal::SIGTERM,
            cooperative: false,
            busy_check_every: Duration::from_millis(50),
            // Where it was asked for: a daemon itself moves to `/`, and a
            // relative argument (`app:app`, `./server.js`) must still mean here.
            dir: std::env::current_dir().ok(),
        })
    }

    /// The directory the command runs in: by default the one this process was
    /// in when the command was made (a daemonizing supervisor moves to `/`).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Command {
        self.dir = Some(dir.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Adds a listener, bound when the daemon starts (before the first child),
    /// in the order given: the first is descriptor 3.
    pub fn listen(mut self, spec: ListenSpec) -> Command {
        self.listen.push(spec);
        self
    }

    /// The signal that asks a child to finish and exit (TERM; QUIT or INT for
    /// servers that want those). KILL follows after the timeout, to the child's
    /// whole process group.
    pub fn stop_signal(mut self, signal: nix::sys::signal::Signal) -> Command {
        self.stop_signal = signal;
        self
    }

    /// The command writes its own scoreboard slot (busy, idle, requests: the
    /// layout is in `docs/run.md`): it gets the scoreboard's descriptor and its
    /// slot number in [`SCOREBOARD_FD_ENV`] and [`SLOT_ENV`], and the parent no
    /// longer infers busy children from their connections (the listen queue
    /// still wakes it).
    pub fn cooperative(mut self, yes: bool) -> Command {
        self.cooperative = yes;
        self
    }

    /// How often the parent looks at the children's connections and the
    /// listeners' queues (50 ms); a queue that fills wakes it sooner.
    pub fn busy_check_every(mut self, every: Duration) -> Command {
        self.busy_check_every = every.max(Duration::from_millis(1));
        self
    }

    /// The program's path, as found.
    pub fn program(&self) -> &Path {
        &self.program
    }
}

/// `name` as a path: itself if it has a slash, else the first executable file
/// of that name in `PATH`.
fn find_program(name: &OsStr) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an empty COMMAND",
        ));
    }
    if name.as_bytes().contains(&b'/') {
        let p = std::path::absolute(Path::new(name))?;
        return if executable(&p) {
            Ok(p)
        } else if p.exists() {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: not an executable file", p.display()),
            ))
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such file", p.display()),
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if executable(&p) {
            return std::path::absolute(p);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: not found in PATH", name.to_string_lossy()),
    ))
}

/// What the parent's side knows of the command: how to stop its children, and
/// (once `after_init` bound them) the listeners to watch.
#[derive(Debug)]
pub(crate) struct Supervised {
    pub(crate) stop_signal: nix::sys::signal::Signal,
    pub(crate) cooperative: bool,
    pub(crate) busy_check_every: Duration,
    pub(crate) listening: OnceLock<Vec<(RawFd, ListenAddr)>>,
    /// A descriptor of the scoreboard of its own (no share in the parent's lock),
    /// set by the parent before the first fork when cooperative.
    pub(crate) board_fd: OnceLock<RawFd>,
    /// Listeners given (0: socket activation, counted once taken).
    pub(crate) listeners: usize,
}

/// The most descriptors a command child is passed (listeners, plus the
/// scoreboard's when cooperative).
pub(crate) const MOST_PASSED: usize = os::MOST_PASSED;

/// Refuses more descriptors than a child can be passed, naming the option.
pub(crate) fn check_passed(listeners: usize, cooperative: bool) -> Result<(), String> {
    let passed = listeners + usize::from(cooperative);
    if passed > MOST_PASSED {
        return Err(format!(
            "{listeners} listeners{}: at most {MOST_PASSED} descriptors are passed to a command",
            if cooperative {
                " and the scoreboard's descriptor (busy_from slot)"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

/// The command, ready to run in a child (what `after_init` returns).
pub struct Prepared {
    image: os::CommandImage,
    listeners: Vec<OwnedFd>,
    raw: Vec<RawFd>,
    supervised: Arc<Supervised>,
    program: PathBuf,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("program", &self.program)
            .field("listeners", &self.raw)
            .finish_non_exhaustive()
    }
}

impl Prepared {
    fn new(command: Command, supervised: &Arc<Supervised>) -> Result<Prepared, BoxError> {
        let mut listeners: Vec<(OwnedFd, String, ListenAddr)> = Vec::new();
        if command.listen.is_empty() {
            for s in super::systemd::listen_fds()? {
                let addr = ListenAddr::of(&s.fd)?;
                let name = s.name.unwrap_or_else(|| "unknown".into());
                listeners.push((s.fd, name, addr));
            }
            if listeners.is_empty() {
                return Err(
                    "no listener: give --listen, or start preforkd by socket activation".into(),
                );
            }
        } else {
            for spec in &command.listen {
                let fd = spec.bind()?;
                let addr = ListenAddr::of(&fd)?;
                listeners.push((fd, spec.name().to_string(), addr));
            }
        }
        // Socket activation's count is known only now.
        check_passed(listeners.len(), supervised.cooperative)
            .map_err(|e| format!("listen: {e}"))?;
        let raw: Vec<RawFd> = listeners.iter().map(|(fd, _, _)| fd.as_raw_fd()).collect();
        let _ = supervised.listening.set(
            listeners
                .iter()
                .map(|(fd, _, a)| (fd.as_raw_fd(), a.clone()))
                .collect(),
        );
        // The environment now: after the runtime took the service manager's
        // variables out of it.
        let mut env: Vec<OsString> = std::env::vars_os()
            .filter(|(k, _)| {
                ![
                    "LISTEN_FDS",
                    "LISTEN_FDNAMES",
                    "LISTEN_PID",
                    SCOREBOARD_FD_ENV,
                    SLOT_ENV,
                ]
                .contains(&k.to_str().unwrap_or(""))
            })
            .map(|(k, v)| {
                let mut e = k;
                e.push("=");
                e.push(v);
                e
            })
            .collect();
        env.push(format!("LISTEN_FDS={}", raw.len()).into());
        let names: Vec<&str> = listeners.iter().map(|(_, n, _)| n.as_str()).collect();
        env.push(format!("LISTEN_FDNAMES={}", names.join(":")).into());
        if supervised.cooperative {
            env.push(format!("{SCOREBOARD_FD_ENV}={}", 3 + raw.len()).into());
        }
        let mut argv = vec![command.argv0.clone()];
        argv.extend(command.args.iter().cloned());
        let image = os::CommandImage::new(
            command.program.as_os_str(),
            &argv,
            &env,
            supervised.cooperative.then_some(SLOT_ENV),
            command.dir.as_deref().map(Path::as_os_str),
        )?;
        Ok(Prepared {
            image,
            listeners: listeners.into_iter().map(|(fd, _, _)| fd).collect(),
            raw,
            supervised: Arc::clone(supervised),
            program: command.program,
        })
    }

    /// In the child: runs the command; on failure says why on stderr (the parent
    /// logs it with this child's pid) and exits with 127, a crash to the parent.
    fn run(&self, worker: &Worker) -> Result<(), BoxError> {
        let extra: &[RawFd] = match self.supervised.board_fd.get() {
            Some(fd) if self.supervised.cooperative => std::slice::from_ref(fd),
            _ => &[],
        };
        debug_assert_eq!(self.listeners.len(), self.raw.len());
        let e = self.image.exec(&self.raw, extra, worker.slot());
        os::say_exec_failed(self.program.as_os_str().as_bytes(), &e);
        os::exit_now(127)
    }
}

impl Prefork<Prepared> {
    /// A daemon whose children run `command` (the seed's options and the
    /// builder's apply as for any daemon; `main_loop` is the command).
    pub fn command(command: Command) -> Prefork<Prepared> {
        let supervised = Arc::new(Supervised {
            stop_signal: command.stop_signal,
            cooperative: command.cooperative,
            busy_check_every: command.busy_check_every,
            listening: OnceLock::new(),
            board_fd: OnceLock::new(),
            listeners: command.listen.len(),
        });
        let theirs = Arc::clone(&supervised);
        let mut p = Prefork::new(
            move || Prepared::new(command, &theirs),
            |worker: &Worker, prepared: &Prepared| prepared.run(worker),
        );
        p.command = Some(supervised);
        p
    }
}
