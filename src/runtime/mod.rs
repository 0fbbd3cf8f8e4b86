//! The process runtime: forks the children, delivers signals, reads the shared
//! scoreboard, runs the hooks, and feeds all of it to the [`Machine`].
//!
//! One main thread waits (crossbeam `select!`) on three channels: signals (a
//! signal-hook thread forwards them), wake-ups from the children (a thread reads
//! the wake-up pipe they write when the pool saturates or a child becomes ready),
//! and a timer set to the machine's next deadline. With no deadline it sleeps until
//! something happens: an idle pool costs the parent no wake-up.
//!
//! ```no_run
//! use preforkd::{Prefork, Worker};
//! use std::io::Write;
//! use std::net::TcpListener;
//!
//! let code = Prefork::new(
//!     // after_init: bind here; every child inherits the listener.
//!     || Ok(TcpListener::bind("127.0.0.1:8080")?),
//!     // main_loop: runs in each child.
//!     |worker: &Worker, listener: &TcpListener| {
//!         while let Some((mut stream, _)) = worker.accept(listener) {
//!             let _busy = worker.busy();
//!             stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello\n")?;
//!         }
//!         Ok(())
//!     },
//! )
//! .prefork(3)
//! .max_children(150)
//! .daemonize(false) // the seed's default is to daemonize
//! .run()?;
//! std::process::exit(code);
//! # Ok::<(), preforkd::RunError>(())
//! ```

mod daemon;
mod logs;
mod memory;
pub(crate) mod netstat;
pub(crate) mod os;
pub mod pidfile;
mod scoreboard;
pub mod systemd;
mod worker;

pub use logs::{combined_log_line, file_logger, LineWriter, LogFile};
pub use scoreboard::{parse_scoreboard, read_scoreboard_file, SlotInfo, WorkerState};
pub use worker::{BusyGuard, Worker};

use crate::policy::{Disconnect, DisconnectPolicy, ReloadPolicy, ScalingPolicy};
use crate::ChildSignal;
use crate::{
    Action, ConfigError, Event, ExitStatus, Hook, HookKind, Level, Machine, Notify, Options, Pid,
    Scoreboard, Signal, SignalReason, State, Time,
};
use crossbeam_channel::{after, never, select, unbounded, Receiver};
use nix::fcntl::OFlag;
use nix::sys::signal::{self as nsig, Signal as NSig};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd;
use scoreboard::Board;
use signal_hook::consts::signal as sh;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// An error from a hook or `main_loop`, as users write them (`?` on anything).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why [`Prefork::run`] could not run the daemon. Once it runs, how it ended is
/// [`run`](Prefork::run)'s exit code instead: a stop completed past
/// `graceful_timeout` (children KILLed, or the request cut off with
/// `prefork = 0`) is not an error, but exit code 0.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The options or policies are inconsistent.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A setting is missing or does not fit another.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A system call failed during set-up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The pid file is held by a running instance, or cannot be used.
    #[error(transparent)]
    PidFile(#[from] pidfile::PidFileError),
    /// `after_init` failed: nothing was started.
    #[error("after_init failed: {0}")]
    AfterInit(BoxError),
    /// The socket-activation variables (`LISTEN_*`) are unusable.
    #[error(transparent)]
    Activation(#[from] systemd::ActivationError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(nix::Error) -> RunError {
    let what = what.into();
    move |e| RunError::Io {
        what,
        source: std::io::Error::from(e),
    }
}

type Init<T> = Box<dyn FnOnce() -> Result<T, BoxError>>;
type MainLoop<T> = Box<dyn Fn(&Worker, &T) -> Result<(), BoxError>>;
type StateHook<T> = Box<dyn FnMut(&T)>;
type LoggerFactory = Box<dyn Fn() -> slog::Logger>;
type DisconnectHook = Box<dyn FnMut(&Disconnect)>;

/// A preforking daemon: the seed's options and hooks, under the same names.
///
/// `after_init` runs in the parent before the first child (bind sockets there); its
/// value is shared with every child's `main_loop`. See the [module docs](self).
pub struct Prefork<T> {
    options: Options,
    scoreboard_path: Option<PathBuf>,
    logger: Option<slog::Logger>,
    child_logger: Option<LoggerFactory>,
    error_log_path: Option<PathBuf>,
    access_log_path: Option<PathBuf>,
    json_log: bool,
    pid_path: Option<PathBuf>,
    require_root: bool,
    daemonize: bool,
    keep_fds: Vec<std::os::fd::RawFd>,
    user: Option<String>,
    group: Option<String>,
    after_init: Init<T>,
    main_loop: MainLoop<T>,
    before_shutdown: Option<StateHook<T>>,
    auto_reload_handler: Option<StateHook<T>>,
    on_client_disconnect: Option<DisconnectHook>,
    watch: Vec<PathBuf>,
    disconnect_check_every: Duration,
    scaling: Option<Box<dyn ScalingPolicy>>,
    reload: Option<Box<dyn ReloadPolicy>>,
    disconnect: Option<Box<dyn DisconnectPolicy>>,
}

impl<T> std::fmt::Debug for Prefork<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefork")
            .field("options", &self.options)
            .field("scoreboard_path", &self.scoreboard_path)
            .finish_non_exhaustive()
    }
}

impl<T: 'static> Prefork<T> {
    /// A daemon with the seed's defaults (prefork 3, max_children 150), the given
    /// `after_init` and `main_loop`.
    pub fn new(
        after_init: impl FnOnce() -> Result<T, BoxError> + 'static,
        main_loop: impl Fn(&Worker, &T) -> Result<(), BoxError> + 'static,
    ) -> Self {
        Prefork {
            options: Options::default(),
            scoreboard_path: None,
            logger: None,
            child_logger: None,
            error_log_path: None,
            access_log_path: None,
            json_log: false,
            pid_path: None,
            require_root: false,
            daemonize: true,
            keep_fds: Vec::new(),
            user: None,
            group: None,
            after_init: Box::new(after_init),
            main_loop: Box::new(main_loop),
            before_shutdown: None,
            auto_reload_handler: None,
            on_client_disconnect: None,
            watch: Vec::new(),
            disconnect_check_every: Duration::from_secs(1),
            scaling: None,
            reload: None,
            disconnect: None,
        }
    }

    /// All the supervisor's options at once.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// Children to start (0: run `main_loop` in this process, no fork).
    pub fn prefork(mut self, n: usize) -> Self {
        self.options.prefork = n;
        self
    }

    /// The most children at once.
    pub fn max_children(mut self, n: usize) -> Self {
        self.options.max_children = n;
        self
    }

    /// How long a graceful stop may take before the children still working are
    /// KILLed (30 s); with `prefork = 0`, before the process ends, cutting off the
    /// request in hand. Either way the stop completes and [`run`](Self::run)'s
    /// exit code is 0: the cut is logged as a warning.
    pub fn graceful_timeout(mut self, d: Duration) -> Self {
        self.options.graceful_timeout = d;
        self
    }

    /// A request running longer than this gets its child stopped: TERM, then KILL
    /// after `kill_grace` (`None`, the default: no limit).
    pub fn busy_timeout(mut self, d: Option<Duration>) -> Self {
        self.options.busy_timeout = d;
        self
    }

    /// Retire a child gracefully once its resident memory exceeds `bytes`; see
    /// [`Options::max_child_memory`].
    pub fn max_child_memory(mut self, bytes: u64) -> Self {
        self.options.max_child_memory = Some(bytes);
        self
    }

    /// Keep the scoreboard in a file here (0600) so other processes can read it;
    /// without it the scoreboard lives in anonymous shared memory (autoscaling
    /// works either way).
    pub fn scoreboard_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.scoreboard_path = Some(path.into());
        self
    }

    /// Check the program and the watched files for changes this often.
    pub fn auto_reload_check_every(mut self, every: Duration) -> Self {
        self.options.auto_reload_check_every = Some(every);
        self
    }

    /// Runs in the parent when a change is found (required with
    /// `auto_reload_check_every`); the children are then rolled over.
    pub fn auto_reload_handler(mut self, f: impl FnMut(&T) + 'static) -> Self {
        self.auto_reload_handler = Some(Box::new(f));
        self
    }

    /// More files whose change triggers a reload (the program itself always is).
    pub fn watch_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.watch.push(path.into());
        self
    }

    /// Runs in the parent when shutdown begins, before the children are stopped.
    pub fn before_shutdown(mut self, f: impl FnMut(&T) + 'static) -> Self {
        self.before_shutdown = Some(Box::new(f));
        self
    }

    /// Runs in the parent for each client that hung up on a child, once per
    /// connection however long it lingers. Hung up means the client can no longer
    /// receive: the child's socket is in CLOSE_WAIT and the client's own socket,
    /// on this host, is closed too; a client that only half-closed
    /// (`shutdown(SHUT_WR)`) and still reads is not reported. A client on another
    /// host shows only its FIN, which cannot be told from a half-close, so it is
    /// not reported (a job is never cancelled for a client still waiting). TCP over
    /// IPv4 and IPv6; connections are looked at every `disconnect_check_every` while
    /// some child is busy (an idle pool is never scanned).
    pub fn on_client_disconnect(mut self, f: impl FnMut(&Disconnect) + 'static) -> Self {
        self.on_client_disconnect = Some(Box::new(f));
        self
    }

    /// How often to look for clients that hung up while children are busy (1 s).
    pub fn disconnect_check_every(mut self, every: Duration) -> Self {
        self.disconnect_check_every = every;
        self
    }

    /// The parent's logger (default: plain text on stderr).
    pub fn logger(mut self, logger: slog::Logger) -> Self {
        self.logger = Some(logger);
        self
    }

    /// Log to this file (appending; reopened on SIGUSR1) instead of stderr, in the
    /// parent and in every child. A record that cannot be written (full disk) is
    /// dropped and counted, never a reason to stop; see [`file_logger`]. Ignored for the parent if [`logger`](Self::logger)
    /// is given, for the children if [`child_logger`](Self::child_logger) is.
    pub fn error_log_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.error_log_path = Some(path.into());
        self
    }

    /// The access log: children write to it with [`Worker::log_access`]; reopened on
    /// SIGUSR1 like the error log.
    pub fn access_log_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.access_log_path = Some(path.into());
        self
    }

    /// Keep a locked pid file here for the daemon's life (see [`pidfile`]): a second
    /// instance refuses to start ("already running (pid N)"), and the file is
    /// removed on exit. Taken before `after_init`, as the seed orders it.
    pub fn pid_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_path = Some(path.into());
        self
    }

    /// The seed's `daemonize` (default true, as in the seed): detach from the
    /// terminal (fork, setsid, fork, chdir /, umask 022, stdin from /dev/null,
    /// stdout and stderr to the error log, inherited descriptors closed except
    /// [`keep_fd`](Self::keep_fd)s). The launching process waits until the daemon has
    /// its pid file and has run `after_init`, then exits 0; if the start fails it
    /// prints the reason on its stderr and exits 1. Needs `error_log_path`,
    /// `access_log_path` and `pid_path`. `false` runs in the foreground.
    pub fn daemonize(mut self, yes: bool) -> Self {
        self.daemonize = yes;
        self
    }

    /// A descriptor the daemon keeps open when it closes what it inherited.
    pub fn keep_fd(mut self, fd: std::os::fd::RawFd) -> Self {
        self.keep_fds.push(fd);
        self
    }

    /// Children run as this user (its supplementary groups and, unless
    /// [`group`](Self::group) says otherwise, its primary group). The parent keeps
    /// its privileges; `after_init` runs before any switch, so it can bind port 80.
    /// Needs root. The uid, gid and group list are looked up once, when `run`
    /// starts (a child never reads the user or group database): a later change
    /// to /etc/group reaches the children at the next start.
    ///
    /// Log rotation works whatever this user may open: on SIGUSR1 the parent
    /// reopens the log files and passes the new descriptors to every child over a
    /// Unix socket (`SCM_RIGHTS`) before forwarding the signal; children never
    /// open a log path. So the children hold writable descriptors of root's log
    /// files: they cannot overwrite what is written (`O_APPEND`) but could
    /// truncate a file (`ftruncate`); see [`LogFile`].
    pub fn user(mut self, name: impl Into<String>) -> Self {
        self.user = Some(name.into());
        self
    }

    /// Children run with this group. Needs root.
    pub fn group(mut self, name: impl Into<String>) -> Self {
        self.group = Some(name.into());
        self
    }

    /// The seed's `require_root`: refuse to start unless the effective uid is 0.
    pub fn require_root(mut self, yes: bool) -> Self {
        self.require_root = yes;
        self
    }

    /// Write the error log as JSON records instead of plain text: one record per
    /// line, each written whole as soon as it is logged.
    pub fn json_log(mut self, yes: bool) -> Self {
        self.json_log = yes;
        self
    }

    /// Builds each child's logger after its fork (default: plain text on stderr).
    pub fn child_logger(mut self, f: impl Fn() -> slog::Logger + 'static) -> Self {
        self.child_logger = Some(Box::new(f));
        self
    }

    /// Use this scaling policy instead of the default built from `prefork`.
    pub fn scaling_policy(mut self, p: impl ScalingPolicy + 'static) -> Self {
        self.scaling = Some(Box::new(p));
        self
    }

    /// Use this reload policy.
    pub fn reload_policy(mut self, p: impl ReloadPolicy + 'static) -> Self {
        self.reload = Some(Box::new(p));
        self
    }

    /// Use this disconnect policy.
    pub fn disconnect_policy(mut self, p: impl DisconnectPolicy + 'static) -> Self {
        self.disconnect = Some(Box::new(p));
        self
    }

    /// Runs the daemon until it stops; returns the exit code to exit with (0 after
    /// a clean shutdown). Call it from the main thread, before starting threads of
    /// your own: children are forked from it. It reaps every child of the process
    /// (`waitpid(-1)`), so do not wait for subprocesses of your own meanwhile. Its
    /// signal handlers and two helper threads stay until the process exits: make it
    /// the last thing `main` does, then exit with the code.
    ///
    /// First of all it reads the service manager's variables (`NOTIFY_SOCKET`,
    /// `WATCHDOG_USEC`, `WATCHDOG_PID`, `LISTEN_*`), adopts the sockets passed by
    /// socket activation (see [`systemd::listen_fds`]) and unsets the six
    /// variables, so children never see them. Then every configured path (logs,
    /// pid file, scoreboard, watched files) is made absolute against the current
    /// directory: a daemon works from `/`, and reopens logs from there.
    ///
    /// # Exit code
    /// - 0: a requested stop (TERM, INT, QUIT) completed, in either mode, even
    ///   when `graceful_timeout` passed with a request in hand: the children still
    ///   working are KILLed (with `prefork = 0`, the process ends there, without
    ///   `before_shutdown`), and that is logged as a warning, not an error. With
    ///   `prefork = 0`, also `main_loop` returning `Ok` by itself.
    /// - 1: with children, some were still not reaped `kill_wait` after the KILL
    ///   (the parent gives up on them); with `prefork = 0`, `main_loop` returned an
    ///   error.
    /// - 70: with `prefork = 0`, `main_loop` panicked.
    ///
    /// # Errors
    /// A [`RunError`] when the daemon could not start (nothing to stop yet): the
    /// configuration, the pid file, `after_init`, a system call while setting up.
    pub fn run(mut self) -> Result<i32, RunError> {
        // Before anything opens a descriptor (the announced numbers must still be
        // the service manager's) or starts a thread (unsetting variables races
        // with threads reading them).
        let service = systemd::take_service_env()?;
        self.make_paths_absolute()?;
        if self.require_root && !unistd::geteuid().is_root() {
            return Err(RunError::Invalid(format!(
                "require_root is set but this process runs as uid {}, not root",
                unistd::geteuid()
            )));
        }
        if (self.user.is_some() || self.group.is_some()) && !unistd::geteuid().is_root() {
            return Err(RunError::Invalid(format!(
                "user/group are set but this process runs as uid {}: only root can switch",
                unistd::geteuid()
            )));
        }
        if self.disconnect_check_every.is_zero() {
            return Err(RunError::Invalid(
                "disconnect_check_every must be greater than zero".into(),
            ));
        }
        if self.options.auto_reload_check_every.is_some() && self.auto_reload_handler.is_none() {
            return Err(RunError::Invalid(
                "auto_reload_handler is required when auto_reload_check_every is set".into(),
            ));
        }
        // Logs are opened before any fork: a path that cannot be used is a
        // configuration error the operator sees at once.
        let open = |p: &Option<PathBuf>| -> Result<Option<Arc<LogFile>>, RunError> {
            p.as_ref()
                .map(LogFile::open)
                .transpose()
                .map_err(|e| RunError::Invalid(format!("cannot open the log: {e}")))
        };
        let logs = Logs {
            error: open(&self.error_log_path)?,
            access: open(&self.access_log_path)?,
            json: self.json_log,
        };
        let mut reporter = None;
        if self.daemonize {
            let missing: Vec<&str> = [
                ("error_log_path", self.error_log_path.is_none()),
                ("access_log_path", self.access_log_path.is_none()),
                ("pid_path", self.pid_path.is_none()),
            ]
            .into_iter()
            .filter_map(|(name, missing)| missing.then_some(name))
            .collect();
            if !missing.is_empty() {
                return Err(RunError::Invalid(format!(
                    "daemonize needs error_log_path, access_log_path and pid_path; missing: {}",
                    missing.join(", ")
                )));
            }
            // Refuse before forking, so the operator sees it at once.
            if let Some(path) = &self.pid_path {
                if let Some(pid) = pidfile::is_running(path)? {
                    return Err(pidfile::PidFileError::AlreadyRunning {
                        path: path.clone(),
                        pid: Some(pid),
                    }
                    .into());
                }
            }
            let r = daemon::detach().map_err(|e| RunError::Io {
                what: "daemonizing".into(),
                source: e,
            })?;
            reporter = Some(r);
        }
        // From here on, in a daemon, a failure is also told to the launcher:
        // whatever ends the start-up (an error, a panic) reaches its stderr.
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.run_detached(&mut reporter, logs, service)
        }));
        match result {
            Ok(result) => {
                if let (Err(e), Some(r)) = (&result, reporter.as_mut()) {
                    r.fail(&e.to_string());
                }
                result
            }
            Err(panic) => {
                if let Some(r) = reporter.as_mut() {
                    r.fail(&format!(
                        "panicked during start-up: {}",
                        panic_message(&*panic)
                    ));
                }
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Every configured path made absolute against the current directory.
    fn make_paths_absolute(&mut self) -> Result<(), RunError> {
        let absolute = |p: &mut PathBuf| -> Result<(), RunError> {
            *p = std::path::absolute(&*p).map_err(|e| RunError::Io {
                what: format!("resolving {}", p.display()),
                source: e,
            })?;
            Ok(())
        };
        for p in [
            &mut self.scoreboard_path,
            &mut self.error_log_path,
            &mut self.access_log_path,
            &mut self.pid_path,
        ]
        .into_iter()
        .flatten()
        {
            absolute(p)?;
        }
        for p in &mut self.watch {
            absolute(p)?;
        }
        Ok(())
    }

    fn run_detached(
        mut self,
        reporter: &mut Option<daemon::Reporter>,
        logs: Logs,
        service: systemd::ServiceEnv,
    ) -> Result<i32, RunError> {
        if let (Some(r), Some(log)) = (reporter.as_ref(), &self.error_log_path) {
            let mut keep = self.keep_fds.clone();
            keep.extend(r.raw_fd());
            keep.extend(logs.all().iter().map(|l| l.raw_fd()));
            // The sockets adopted at the start, waiting for `after_init`.
            keep.extend(systemd::held_fds());
            daemon::settle(log, &keep).map_err(|e| RunError::Io {
                what: "detaching".into(),
                source: e,
            })?;
        }
        let logger = match (self.logger.take(), &logs.error) {
            (Some(l), _) => l,
            (None, Some(f)) => file_logger(f, logs.json),
            (None, None) => default_logger(),
        };
        // Held until `run` returns; dropping it removes the file.
        let pid_file = self
            .pid_path
            .as_ref()
            .map(pidfile::PidFile::acquire)
            .transpose()?;
        if self.options.prefork == 0 {
            return self.run_in_process(logger, logs, reporter);
        }
        let pid_fd = pid_file.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        // A failure to start is returned with the reporter still here: the caller
        // tells the launcher. Once started, the parent reports itself.
        let mut parent = Parent::start(self, logger, logs, pid_fd, service)?;
        parent.daemonized = reporter.is_some();
        parent.reporter = reporter.take();
        let code = parent.run();
        drop(pid_file);
        code
    }

    /// `prefork = 0`: `main_loop` in this process, with the same signals and
    /// graceful shutdown.
    /// A failure is returned with `reporter` untouched (the caller tells the
    /// launcher).
    fn run_in_process(
        self,
        logger: slog::Logger,
        logs: Logs,
        reporter: &mut Option<daemon::Reporter>,
    ) -> Result<i32, RunError> {
        self.options.validate()?;
        os::ignore_sigpipe().map_err(io_err("ignoring SIGPIPE"))?;
        let gate = os::SignalGate::current().map_err(io_err("reading the signal mask"))?;
        let wake =
            os::install_worker_handlers(gate).map_err(io_err("installing signal handlers"))?;
        // The file (and its lock) is held until this returns.
        let (board, _board_file) =
            Board::create(self.scoreboard_path.as_deref(), 1, -1).map_err(|e| RunError::Io {
                what: "creating the scoreboard".into(),
                source: e,
            })?;
        let state = (self.after_init)().map_err(RunError::AfterInit)?;
        if let Some(r) = reporter.as_mut() {
            r.ok();
        }
        board.prepare(0, 1);
        board.worker_slot(0).claim(unistd::getpid().as_raw());
        // TERM here is always a shutdown: drain the backlog before leaving.
        board.set_stopping();
        let worker = Worker::new(
            0,
            1,
            self.options.max_requests_per_child,
            board.worker_slot(0),
            logger.clone(),
            wake,
        )
        .with_logs(logs.all(), logs.access.clone());
        worker.ready();
        let _timeout = GracefulTimeout::start(
            self.options.graceful_timeout,
            logger.clone(),
            self.pid_path.clone(),
        )?;
        let code = run_main_loop(&self.main_loop, &worker, &state, &logger, false);
        // The timeout bounds main_loop's drain, not before_shutdown.
        drop(_timeout);
        worker.retire();
        if let Some(mut f) = self.before_shutdown {
            f(&state);
        }
        Ok(code)
    }
}

/// `prefork = 0`: the graceful timeout, kept by a thread. Once a stop is requested
/// it waits `graceful_timeout` for `main_loop` to return (the caller then drops
/// this guard, before `before_shutdown` runs);
/// past that it logs a warning, removes the pid file and ends the process with exit
/// code 0 (the stop completed, as with children KILLed past the timeout), the
/// request in hand cut off (there is no child to KILL) and `before_shutdown` not
/// run (the main thread is still in `main_loop`).
struct GracefulTimeout {
    done: Option<crossbeam_channel::Sender<()>>,
}

impl GracefulTimeout {
    fn start(
        timeout: Duration,
        logger: slog::Logger,
        pid_path: Option<PathBuf>,
    ) -> Result<GracefulTimeout, RunError> {
        let stops = os::watch_stops().map_err(io_err("creating the stop pipe"))?;
        let (done, finished) = crossbeam_channel::bounded::<()>(0);
        std::thread::Builder::new()
            .name("preforkd-graceful-timeout".into())
            .spawn(move || {
                let mut byte = [0u8; 1];
                loop {
                    match unistd::read(&stops, &mut byte) {
                        Ok(_) => break,
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(_) => return,
                    }
                }
                // The main loop returning drops the sender: a clean stop.
                if !matches!(
                    finished.recv_timeout(timeout),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout)
                ) {
                    return;
                }
                // The stop was asked for and completes: a success, as when the
                // parent KILLs children past the timeout (see `Prefork::run`).
                slog::warn!(
                    logger,
                    "graceful_timeout ({timeout:?}) passed with a request in hand; \
                     exiting (the request is cut off, before_shutdown does not run)"
                );
                if let Some(p) = pid_path {
                    let _ = std::fs::remove_file(p);
                }
                os::exit_now(0);
            })
            .map_err(|e| RunError::Io {
                what: "starting the graceful-timeout thread".into(),
                source: e,
            })?;
        Ok(GracefulTimeout { done: Some(done) })
    }
}

impl Drop for GracefulTimeout {
    fn drop(&mut self) {
        self.done.take();
    }
}

/// Binds a TCP listener with a listen backlog of `backlog` connections (the
/// standard library's `bind` uses 128, too few for a burst of clients arriving
/// while children are still being forked; the kernel caps it at `somaxconn`).
///
/// ```
/// let l = preforkd::listen("127.0.0.1:0", 1024).unwrap();
/// assert!(l.local_addr().unwrap().port() > 0);
/// ```
pub fn listen(
    addr: impl std::net::ToSocketAddrs,
    backlog: i32,
) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    // Listening again on a listening socket only changes its backlog (Linux).
    let backlog = nix::sys::socket::Backlog::new(backlog).map_err(std::io::Error::from)?;
    nix::sys::socket::listen(&l, backlog).map_err(std::io::Error::from)?;
    Ok(l)
}

/// The log files of a daemon, shared by the parent and (after the fork, each its
/// own copy) the children.
#[derive(Debug, Clone)]
struct Logs {
    error: Option<Arc<LogFile>>,
    access: Option<Arc<LogFile>>,
    json: bool,
}

impl Logs {
    fn all(&self) -> Vec<Arc<LogFile>> {
        self.error
            .iter()
            .chain(self.access.iter())
            .cloned()
            .collect()
    }
}

/// Plain text on stderr. A write that fails (a closed pipe, a full disk behind a
/// redirection) drops the record: never a panic, never a stop.
fn default_logger() -> slog::Logger {
    use slog::Drain;
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = logs::Lossy::new(
        slog_term::FullFormat::new(decorator).build(),
        "stderr".into(),
    );
    let drain = slog::LevelFilter::new(drain, slog::Level::Info).ignore_res();
    slog::Logger::root(drain, slog::o!("pid" => std::process::id()))
}

/// Runs `main_loop`, catching a panic; returns the child's exit code.
/// `quiet`: a crash streak is on and its reason was logged already, so a failure
/// is logged at debug level only (once per streak, not once per fork).
fn run_main_loop<T>(
    f: &MainLoop<T>,
    worker: &Worker,
    state: &T,
    logger: &slog::Logger,
    quiet: bool,
) -> i32 {
    match catch_unwind(AssertUnwindSafe(|| f(worker, state))) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) if quiet => {
            slog::debug!(logger, "main_loop failed: {e}");
            1
        }
        Ok(Err(e)) => {
            slog::error!(logger, "main_loop failed: {e}");
            1
        }
        Err(panic) => {
            let msg = panic_message(&*panic);
            if quiet {
                slog::debug!(logger, "main_loop panicked: {msg}");
            } else {
                slog::error!(logger, "main_loop panicked: {msg}");
            }
            70
        }
    }
}

/// A panic's message, if it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// The signals the parent handles.
const PARENT_SIGNALS: [i32; 9] = [
    sh::SIGTERM,
    sh::SIGINT,
    sh::SIGQUIT,
    sh::SIGHUP,
    sh::SIGUSR1,
    sh::SIGUSR2,
    sh::SIGTTIN,
    sh::SIGTTOU,
    sh::SIGCHLD,
];

fn to_machine_signal(sig: i32) -> Option<Signal> {
    Some(match sig {
        sh::SIGTERM => Signal::Term,
        sh::SIGINT => Signal::Int,
        sh::SIGQUIT => Signal::Quit,
        sh::SIGHUP => Signal::Hup,
        sh::SIGUSR1 => Signal::Usr1,
        sh::SIGUSR2 => Signal::Usr2,
        sh::SIGTTIN => Signal::Ttin,
        sh::SIGTTOU => Signal::Ttou,
        sh::SIGCHLD => Signal::Chld,
        _ => return None,
    })
}

fn to_os_signal(sig: ChildSignal) -> NSig {
    match sig {
        ChildSignal::Term => NSig::SIGTERM,
        ChildSignal::Kill => NSig::SIGKILL,
        ChildSignal::Usr1 => NSig::SIGUSR1,
    }
}

struct Parent<T> {
    cfg: Prefork<T>,
    logger: slog::Logger,
    machine: Machine,
    board: Board,
    origin_ns: u64,
    signals: Receiver<i32>,
    wakes: Receiver<()>,
    // The parent's ends of its pipes, which a child closes first thing.
    inherited: Vec<std::os::fd::RawFd>,
    /// The parent's end of each live child's log channel (by pid), where the
    /// reopened logs are passed; closed when the child is reaped.
    log_channels: std::collections::BTreeMap<i32, OwnedFd>,
    _wake_read: OwnedFd,
    // Kept open for the daemon's life: children write wake-ups to it.
    _wake_write: OwnedFd,
    /// The scoreboard file, locked for the parent's life (children close it).
    _board_file: Option<std::fs::File>,
    state: Option<T>,
    init_error: Option<BoxError>,
    reading: Scoreboard,
    baseline: Vec<(PathBuf, Option<SystemTime>)>,
    parent_pid: unistd::Pid,
    logs: Logs,
    /// The service manager, when NOTIFY_SOCKET names one.
    notifier: Option<systemd::Notifier>,
    /// The launcher waiting for the daemon to be up, when daemonized.
    reporter: Option<daemon::Reporter>,
    /// Who the children run as.
    credentials: Option<Credentials>,
    /// Ticks at half the service manager's watchdog interval (WATCHDOG_USEC).
    watchdog: Option<Receiver<std::time::Instant>>,
    /// Notifications are failing: how many have, the first (logged) included
    /// (STATUS and watchdog pings are not logged one by one).
    notify_failing: Option<u64>,
    /// Daemonized: the service manager must be told the main pid changed.
    daemonized: bool,
    stopping_marked: bool,
    /// Look for hung-up clients at all (a hook or a disconnect policy is set).
    watch_disconnects: bool,
    /// When the next look is due (ns of CLOCK_MONOTONIC), while children are busy.
    disconnect_due: Option<u64>,
    /// The error of the forks failing in a row, and how many did.
    fork_failing: Option<(nix::errno::Errno, u32)>,
}

impl<T: 'static> Parent<T> {
    fn start(
        mut cfg: Prefork<T>,
        logger: slog::Logger,
        logs: Logs,
        pid_fd: Option<std::os::fd::RawFd>,
        service: systemd::ServiceEnv,
    ) -> Result<Parent<T>, RunError> {
        let mut builder = Machine::builder(cfg.options.clone());
        if let Some(p) = cfg.scaling.take() {
            builder = builder.scaling_boxed(p);
        }
        if let Some(p) = cfg.reload.take() {
            builder = builder.reload_boxed(p);
        }
        let credentials = Credentials::resolve(cfg.user.as_deref(), cfg.group.as_deref())?;
        let watch_disconnects = cfg.on_client_disconnect.is_some() || cfg.disconnect.is_some();
        if let Some(p) = cfg.disconnect.take() {
            builder = builder.disconnect_boxed(p);
        }
        let machine = builder.build()?;
        os::ignore_sigpipe().map_err(io_err("ignoring SIGPIPE"))?;

        // Signal handling is in place before the first fork: for each signal a flag,
        // then a byte down a self-pipe we own (so children can close it), read by a
        // thread that forwards the flagged signals. Signals coalesce, as they do.
        let (sig_read, sig_write) =
            std::os::unix::net::UnixStream::pair().map_err(|e| RunError::Io {
                what: "creating the signal pipe".into(),
                source: e,
            })?;
        // Children close these first: the parent's pipes, and the pid file (its lock
        // must not outlive the parent in a child).
        let mut inherited = vec![sig_read.as_raw_fd()];
        inherited.extend(pid_fd);
        let mut flags = Vec::new();
        for &sig in &PARENT_SIGNALS {
            let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let write = sig_write.try_clone().map_err(|e| RunError::Io {
                what: "creating the signal pipe".into(),
                source: e,
            })?;
            inherited.push(write.as_raw_fd());
            signal_hook::flag::register(sig, std::sync::Arc::clone(&flag))
                .and_then(|_| signal_hook::low_level::pipe::register(sig, write))
                .map_err(|e| RunError::Io {
                    what: format!("installing the handler of signal {sig}"),
                    source: e,
                })?;
            flags.push((sig, flag));
        }
        drop(sig_write);
        let (sig_tx, signals) = unbounded();
        std::thread::Builder::new()
            .name("preforkd-signals".into())
            .spawn(move || {
                let mut sig_read = sig_read;
                let mut buf = [0u8; 64];
                loop {
                    match std::io::Read::read(&mut sig_read, &mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                    for (sig, flag) in &flags {
                        if flag.swap(false, std::sync::atomic::Ordering::AcqRel)
                            && sig_tx.send(*sig).is_err()
                        {
                            return;
                        }
                    }
                }
            })
            .map_err(|e| RunError::Io {
                what: "starting the signal thread".into(),
                source: e,
            })?;

        // Children write a byte here when the pool saturates or a child is ready.
        let (wake_read, wake_write) =
            unistd::pipe2(OFlag::O_CLOEXEC).map_err(io_err("creating the wake-up pipe"))?;
        nix::fcntl::fcntl(
            &wake_write,
            nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
        )
        .map_err(io_err("setting up the wake-up pipe"))?;
        let reader = wake_read.try_clone().map_err(|e| RunError::Io {
            what: "setting up the wake-up pipe".into(),
            source: e,
        })?;
        inherited.push(wake_read.as_raw_fd());
        inherited.push(reader.as_raw_fd());
        let (wake_tx, wakes) = unbounded();
        std::thread::Builder::new()
            .name("preforkd-wakeups".into())
            .spawn(move || {
                let mut buf = [0u8; 64];
                loop {
                    match unistd::read(&reader, &mut buf) {
                        Ok(0) => break,
                        Ok(_) => {
                            if wake_tx.send(()).is_err() {
                                break;
                            }
                        }
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(_) => break,
                    }
                }
            })
            .map_err(|e| RunError::Io {
                what: "starting the wake-up thread".into(),
                source: e,
            })?;

        let (board, board_file) = Board::create(
            cfg.scoreboard_path.as_deref(),
            cfg.options.max_children,
            wake_write.as_raw_fd(),
        )
        .map_err(|e| RunError::Io {
            // The error names the file.
            what: "creating the scoreboard".into(),
            source: e,
        })?;
        // The lock is the parent's alone: it must not outlive it in a child.
        inherited.extend(board_file.as_ref().map(AsRawFd::as_raw_fd));

        for note in &service.notes {
            slog::warn!(logger, "{note}");
        }
        let notifier = match &service.notify_socket {
            None => None,
            Some(addr) => match addr.to_str().map(systemd::Notifier::new) {
                Some(Ok(n)) => Some(n),
                Some(Err(e)) => {
                    slog::warn!(logger, "NOTIFY_SOCKET unusable, not notifying: {e}");
                    None
                }
                None => {
                    slog::warn!(logger, "NOTIFY_SOCKET {addr:?} is not UTF-8, not notifying");
                    None
                }
            },
        };
        // Pings go to the service manager: without one, no timer at all.
        let watchdog = service
            .watchdog
            .filter(|_| notifier.is_some())
            .map(crossbeam_channel::tick);

        let mut watched: Vec<PathBuf> = std::env::current_exe().into_iter().collect();
        watched.append(&mut cfg.watch);
        let baseline = watched
            .into_iter()
            .map(|p| {
                let m = mtime(&p);
                (p, m)
            })
            .collect();
        let n = cfg.options.max_children;
        Ok(Parent {
            cfg,
            logger,
            machine,
            board,
            origin_ns: scoreboard::now_ns(),
            signals,
            wakes,
            inherited,
            log_channels: std::collections::BTreeMap::new(),
            _wake_read: wake_read,
            _wake_write: wake_write,
            _board_file: board_file,
            state: None,
            init_error: None,
            reading: Scoreboard {
                slots: Vec::with_capacity(n),
                backlog: None,
            },
            baseline,
            parent_pid: unistd::getpid(),
            logs,
            notifier,
            // Both set by the caller once started (a failed start is reported
            // by the caller).
            daemonized: false,
            reporter: None,
            credentials,
            watchdog,
            notify_failing: None,
            stopping_marked: false,
            watch_disconnects,
            disconnect_due: None,
            fork_failing: None,
        })
    }

    fn now(&self) -> Time {
        Time::from_duration(Duration::from_nanos(
            scoreboard::now_ns().saturating_sub(self.origin_ns),
        ))
    }

    /// Serves until the machine exits. Whatever ends it before the launcher heard
    /// that the daemon is up is told to the launcher.
    fn run(mut self) -> Result<i32, RunError> {
        let result = self.serve();
        if let Some(r) = self.reporter.as_mut() {
            match &result {
                Err(e) => r.fail(&e.to_string()),
                Ok(code) => r.fail(&format!(
                    "the daemon stopped during start-up (exit code {code})"
                )),
            }
        }
        result
    }

    fn serve(&mut self) -> Result<i32, RunError> {
        loop {
            if let Some(code) = self.carry_out()? {
                return Ok(code);
            }
            let room = self.machine.counts().alive() < self.cfg.options.max_children;
            self.board.set_can_grow(room);
            let timer = match self.machine.poll_timeout() {
                Some(t) => after(t.saturating_since(self.now())),
                None => never(),
            };
            // Hung-up clients matter only while a child is busy with one; an idle
            // pool asks its first busy child to say so, and sleeps meanwhile.
            // (Arming also tells whether a slot shows a busy child the machine does
            // not count as busy: one that got busy just before, or a retiring one.)
            let busy = self.machine.counts().busy > 0
                || (self.watch_disconnects && self.board.arm_busy_watch());
            let every = self.cfg.disconnect_check_every.as_nanos() as u64;
            self.disconnect_due = match (self.watch_disconnects && busy, self.disconnect_due) {
                (false, _) => None,
                (true, Some(due)) => Some(due),
                (true, None) => Some(scoreboard::now_ns().saturating_add(every)),
            };
            let netstat = match self.disconnect_due {
                Some(due) => after(Duration::from_nanos(
                    due.saturating_sub(scoreboard::now_ns()),
                )),
                None => never(),
            };
            let watchdog = self.watchdog.clone().unwrap_or_else(never);
            select! {
                recv(self.signals) -> sig => match sig {
                    Ok(sig) => self.on_signal(sig),
                    Err(_) => {
                        return Err(RunError::Io {
                            what: "waiting for signals".into(),
                            source: std::io::Error::other("the signal thread stopped"),
                        })
                    }
                },
                recv(self.wakes) -> _ => {
                    while self.wakes.try_recv().is_ok() {}
                    self.tick();
                },
                recv(timer) -> _ => self.tick(),
                recv(watchdog) -> _ => {
                    if let Some(n) = &self.notifier {
                        let sent = n.watchdog();
                        self.notified("WATCHDOG=1", false, sent);
                    }
                }
                recv(netstat) -> _ => {
                    self.disconnect_due = None;
                    let children: Vec<i32> = self.machine.pids().map(|p| p.0).collect();
                    let conns = netstat::closed_connections(&children);
                    let now = self.now();
                    self.machine.handle(now, Event::Netstat(&conns));
                }
            }
        }
    }

    fn on_signal(&mut self, sig: i32) {
        if sig == sh::SIGCHLD {
            self.reap();
            return;
        }
        if let Some(s) = to_machine_signal(sig) {
            let now = self.now();
            self.machine.handle(now, Event::Signal(s));
        }
    }

    /// Reaps every child that has exited (SIGCHLD coalesces).
    fn reap(&mut self) {
        let mut reaped = Vec::new();
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => reaped.push((pid, ExitStatus::Exited(code))),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    reaped.push((pid, ExitStatus::Signaled(sig as i32)))
                }
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    slog::error!(self.logger, "waitpid failed: {e}");
                    break;
                }
            }
        }
        if reaped.is_empty() {
            return;
        }
        // Read the scoreboard while the dead children's slots still show their last
        // state: one that left by itself (request limit) says so, and its exit is
        // not mistaken for a crash.
        self.tick();
        for (pid, status) in reaped {
            self.log_channels.remove(&pid.as_raw());
            if let Some(slot) = self.board.slot_of(pid.as_raw()) {
                self.board.release(slot);
            }
            let now = self.now();
            self.machine.handle(
                now,
                Event::ChildExited {
                    pid: Pid(pid.as_raw()),
                    status,
                },
            );
        }
    }

    fn tick(&mut self) {
        self.board.clear_wake();
        self.board.set_generation(self.machine.generation());
        let mut reading = std::mem::take(&mut self.reading);
        self.board.read_into(self.origin_ns, &mut reading.slots);
        if self.cfg.options.max_child_memory.is_some() {
            for s in reading.slots.iter_mut().filter(|s| s.pid.0 > 0) {
                s.memory = memory::rss_bytes(s.pid.0);
            }
        }
        let now = self.now();
        self.machine.handle(now, Event::Scoreboard(&reading));
        self.reading = reading;
    }

    /// Logs how a notification went: the first failure of a streak, then nothing
    /// more for periodic ones (STATUS and watchdog pings: a stuck service manager
    /// would get a line per second or faster) until one goes through, which is
    /// logged with the count of failures meanwhile. A failed state change
    /// (`change`: READY, RELOADING, STOPPING, MAINPID) is always logged: rare, and
    /// the service manager acts on it.
    fn notified(&mut self, what: &str, change: bool, sent: std::io::Result<()>) {
        match (sent, self.notify_failing.as_mut()) {
            (Ok(()), None) => {}
            (Ok(()), Some(failed)) => {
                slog::info!(
                    self.logger,
                    "sd_notify works again ({failed} notifications lost while it failed)"
                );
                self.notify_failing = None;
            }
            (Err(e), None) => {
                slog::warn!(
                    self.logger,
                    "sd_notify {what}: {e} (further STATUS and WATCHDOG failures said once it works again)"
                );
                self.notify_failing = Some(1);
            }
            (Err(e), Some(failed)) => {
                *failed += 1;
                if change {
                    slog::warn!(self.logger, "sd_notify {what}: {e}");
                }
            }
        }
    }

    /// Carries out every pending action; `Some(code)` once the machine exits.
    fn carry_out(&mut self) -> Result<Option<i32>, RunError> {
        while let Some(action) = self.machine.poll_action() {
            if !self.stopping_marked && self.machine.state() == State::ShuttingDown {
                // Before any shutdown TERM goes out: children seeing it drain the backlog.
                self.board.set_stopping();
                self.stopping_marked = true;
            }
            match action {
                Action::Spawn {
                    slot,
                    generation,
                    max_requests,
                } => self.spawn(slot, generation, max_requests),
                Action::Signal {
                    pid,
                    signal,
                    reason,
                } => {
                    let alone = !matches!(
                        reason,
                        SignalReason::Shutdown
                            | SignalReason::Escalation
                            | SignalReason::ReopenLogs
                    );
                    if signal == ChildSignal::Term && alone {
                        // Before the TERM: the child must know it leaves alone and
                        // that the queue is its siblings' (a TERM without this mark
                        // is a shutdown, whoever sent it).
                        if let Some(slot) = self.board.slot_of(pid.0) {
                            self.board.mark_retired_alone(slot);
                        }
                    }
                    match nsig::kill(unistd::Pid::from_raw(pid.0), to_os_signal(signal)) {
                        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                        Err(e) => slog::error!(
                            self.logger,
                            "kill({}, {}) failed: {e}",
                            pid,
                            signal.name()
                        ),
                    }
                }
                Action::RunHook(hook) => self.run_hook(hook),
                Action::ReopenLogs => {
                    let all = self.logs.all();
                    for log in &all {
                        // A daemon's stdout and stderr follow its error log.
                        match log.reopen() {
                            Ok(()) => slog::info!(self.logger, "reopened {}", log.path().display()),
                            // The old file stays in use: nothing is lost.
                            Err(e) => slog::error!(self.logger, "cannot reopen: {e}"),
                        }
                    }
                    // Before the USR1 that follows: a child finds them when it looks.
                    self.pass_logs(&all);
                }
                Action::CheckForChanges => {
                    if self.files_changed() {
                        let now = self.now();
                        self.machine.handle(now, Event::FilesChanged);
                    }
                }
                Action::Notify(n) => {
                    if let (Some(notifier), true, Notify::Ready) =
                        (&self.notifier, self.daemonized, &n)
                    {
                        // After the double fork, the pid systemd started is gone.
                        let sent = notifier.mainpid(std::process::id());
                        self.notified("MAINPID", true, sent);
                    }
                    if let Some(notifier) = &self.notifier {
                        let sent = notifier.send(&n);
                        // STATUS is periodic; the others are state changes.
                        let change = !matches!(n, Notify::Status { .. });
                        self.notified(&format!("{n:?}"), change, sent);
                    }
                }
                Action::Log { level, message } => match level {
                    Level::Error => slog::error!(self.logger, "{message}"),
                    Level::Warning => slog::warn!(self.logger, "{message}"),
                    Level::Info => slog::info!(self.logger, "{message}"),
                    Level::Debug => slog::debug!(self.logger, "{message}"),
                },
                Action::Exit { code } => {
                    if let Some(e) = self.init_error.take() {
                        return Err(RunError::AfterInit(e));
                    }
                    return Ok(Some(code));
                }
            }
        }
        Ok(None)
    }

    /// Passes the current log descriptors to every live child (see
    /// [`Prefork::user`]); a child that cannot get them keeps its files.
    fn pass_logs(&self, all: &[Arc<LogFile>]) {
        let mut failed = 0;
        let mut last = None;
        for (&pid, channel) in &self.log_channels {
            match logs::send_logs(channel, all) {
                Ok(()) => {}
                // The child has exited and is not reaped yet: nothing to pass.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNREFUSED) | Some(libc::EPIPE)
                    ) => {}
                Err(e) => {
                    failed += 1;
                    last = Some((pid, e));
                }
            }
        }
        if let Some((pid, e)) = last {
            slog::error!(
                self.logger,
                "could not pass the reopened logs to {failed} children (child {pid}: {e}); \
                 they keep writing the old files"
            );
        }
    }

    fn run_hook(&mut self, hook: Hook) {
        let now = self.now();
        match hook {
            Hook::AfterInit => {
                let init = std::mem::replace(
                    &mut self.cfg.after_init,
                    Box::new(|| Err("after_init ran twice".into())),
                );
                let ok = match catch_unwind(AssertUnwindSafe(init)) {
                    Ok(Ok(state)) => {
                        self.state = Some(state);
                        if let Some(r) = self.reporter.as_mut() {
                            r.ok();
                        }
                        true
                    }
                    Ok(Err(e)) => {
                        slog::error!(self.logger, "after_init failed: {e}");
                        if let Some(r) = self.reporter.as_mut() {
                            r.fail(&format!("after_init failed: {e}"));
                        }
                        self.init_error = Some(e);
                        false
                    }
                    Err(_) => {
                        self.init_error = Some("after_init panicked".into());
                        false
                    }
                };
                self.machine.handle(
                    now,
                    Event::HookFinished {
                        hook: HookKind::AfterInit,
                        ok,
                    },
                );
            }
            Hook::BeforeShutdown => {
                if let (Some(f), Some(state)) =
                    (self.cfg.before_shutdown.as_mut(), self.state.as_ref())
                {
                    if catch_unwind(AssertUnwindSafe(|| f(state))).is_err() {
                        slog::error!(self.logger, "before_shutdown panicked");
                    }
                }
            }
            Hook::ReloadHandler => {
                if let (Some(f), Some(state)) =
                    (self.cfg.auto_reload_handler.as_mut(), self.state.as_ref())
                {
                    if catch_unwind(AssertUnwindSafe(|| f(state))).is_err() {
                        slog::error!(self.logger, "auto_reload_handler panicked");
                    }
                }
            }
            Hook::ClientDisconnect(d) => {
                if let Some(f) = self.cfg.on_client_disconnect.as_mut() {
                    if catch_unwind(AssertUnwindSafe(|| f(&d))).is_err() {
                        slog::error!(self.logger, "on_client_disconnect panicked");
                    }
                }
            }
        }
    }

    fn files_changed(&mut self) -> bool {
        let mut changed = false;
        for (path, seen) in &mut self.baseline {
            let now = mtime(path);
            if now != *seen {
                slog::info!(self.logger, "{} changed", path.display());
                // The new state is the baseline: one change, one reload.
                *seen = now;
                changed = true;
            }
        }
        changed
    }

    fn spawn(&mut self, slot: usize, generation: u64, max_requests: Option<u64>) {
        self.board.prepare(slot, generation);
        let Some(state) = self.state.as_ref() else {
            // No after_init value: cannot happen (the machine spawns only after it).
            let now = self.now();
            self.machine.handle(now, Event::SpawnFailed { slot });
            return;
        };
        // The channel the reopened logs will come down (only with log files).
        let (parent_end, child_end) = if self.logs.all().is_empty() {
            (None, None)
        } else {
            match log_channel() {
                Ok((p, c)) => (Some(p), Some(c)),
                Err(e) => {
                    let user = self.credentials.as_ref().and_then(Credentials::user_name);
                    slog::error!(
                        self.logger,
                        "{}",
                        logs::no_channel_notice(&e, user.as_deref())
                    );
                    if user.is_some() {
                        // As that user it could not reopen root's logs after a
                        // rotation: a failed fork (backoff, retried) instead.
                        let now = self.now();
                        self.machine.handle(now, Event::SpawnFailed { slot });
                        return;
                    }
                    (None, None)
                }
            }
        };
        // What the child closes first: the parent's pipes and the parent's ends of
        // every log channel (a fork copies them all; close-on-exec is no help).
        let mut inherited = self.inherited.clone();
        inherited.extend(self.log_channels.values().map(AsRawFd::as_raw_fd));
        inherited.extend(parent_end.as_ref().map(AsRawFd::as_raw_fd));
        let parent_pid = self.parent_pid;
        let board = self.board;
        let inherited = &inherited;
        let main_loop = &self.cfg.main_loop;
        let child_logger = &self.cfg.child_logger;
        let logs = &self.logs;
        let credentials = self.credentials.as_ref();
        let quiet_failure = self.machine.crash_streak() > 0;
        // `move`: the child's end goes with the closure, which the parent drops
        // (closing its copy) and the child consumes.
        let result = os::fork_child(&PARENT_SIGNALS, move |gate| {
            child_main(ChildStart {
                gate,
                parent_pid,
                board,
                inherited,
                slot,
                generation,
                max_requests,
                main_loop,
                state,
                child_logger,
                logs,
                credentials,
                log_channel: child_end,
                quiet_failure,
            })
        });
        let now = self.now();
        match result {
            Ok(pid) => {
                if let Some(p) = parent_end {
                    self.log_channels.insert(pid.as_raw(), p);
                }
                if let Some((e, n)) = self.fork_failing.take() {
                    slog::info!(self.logger, "fork works again after {n} failures ({e})");
                }
                self.board.assign(slot, pid.as_raw());
                self.machine.handle(
                    now,
                    Event::ChildSpawned {
                        slot,
                        pid: Pid(pid.as_raw()),
                    },
                );
            }
            Err(e) => {
                // Once per streak of failures (or when the error changes); the
                // machine counts them and backs off.
                match &mut self.fork_failing {
                    Some((last, n)) if *last == e => *n += 1,
                    _ => {
                        slog::error!(
                            self.logger,
                            "fork failed: {e}; serving with the children there are"
                        );
                        self.fork_failing = Some((e, 1));
                    }
                }
                self.board.release(slot);
                self.machine.handle(now, Event::SpawnFailed { slot });
            }
        }
    }
}

struct ChildStart<'a, T> {
    /// Opened once the child's handlers exist (signals stay blocked until then).
    gate: os::SignalGate,
    parent_pid: unistd::Pid,
    board: Board,
    inherited: &'a [std::os::fd::RawFd],
    slot: usize,
    generation: u64,
    max_requests: Option<u64>,
    main_loop: &'a MainLoop<T>,
    state: &'a T,
    child_logger: &'a Option<LoggerFactory>,
    logs: &'a Logs,
    credentials: Option<&'a Credentials>,
    /// Where the parent passes the reopened logs.
    log_channel: Option<OwnedFd>,
    /// Forked during a crash streak: a failing main_loop logs at debug level.
    quiet_failure: bool,
}

/// A connected pair of Unix datagram sockets, close-on-exec: (parent's end,
/// child's end). The parent's end never blocks: a child that does not read in
/// time misses that rotation's descriptors, the parent does not wait for it.
fn log_channel() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )?)
}

/// The user and groups children switch to, resolved once in the parent, before
/// any fork: a child only makes the set*id calls (no NSS lookup, which allocates
/// and may take a lock another parent thread held at the fork).
#[derive(Debug, Clone)]
struct Credentials {
    /// The user's uid (`None`: only the group changes, the uid stays).
    uid: Option<unistd::Uid>,
    gid: unistd::Gid,
    /// The supplementary groups: `getgrouplist(user, gid)`, or just `gid`
    /// without a user.
    groups: Vec<unistd::Gid>,
    /// The user's name, for messages.
    user_name: Option<String>,
}

/// Why a child could not switch: the call that failed and its errno, or the ids
/// it ended up with are not the configured ones. Built without allocating.
#[derive(Debug, PartialEq)]
enum SwitchError {
    Call(&'static str, nix::Error),
    NotDropped,
}

impl std::fmt::Display for SwitchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwitchError::Call(call, e) => write!(f, "{call}: {e}"),
            SwitchError::NotDropped => {
                f.write_str("the ids after the switch are not the configured ones")
            }
        }
    }
}

impl Credentials {
    fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Credentials>, RunError> {
        if user.is_none() && group.is_none() {
            return Ok(None);
        }
        let lookup = |e: nix::Error| RunError::Io {
            what: "looking up the user or group".into(),
            source: e.into(),
        };
        let u = match user {
            Some(name) => Some(
                unistd::User::from_name(name)
                    .map_err(lookup)?
                    .ok_or_else(|| RunError::Invalid(format!("user {name:?} does not exist")))?,
            ),
            None => None,
        };
        let gid = match group {
            Some(name) => {
                unistd::Group::from_name(name)
                    .map_err(lookup)?
                    .ok_or_else(|| RunError::Invalid(format!("group {name:?} does not exist")))?
                    .gid
            }
            None => u.as_ref().map_or(unistd::getgid(), |u| u.gid),
        };
        let groups = match &u {
            Some(u) => {
                let name = std::ffi::CString::new(u.name.clone())
                    .map_err(|_| RunError::Invalid(format!("user name {:?} has a NUL", u.name)))?;
                // What initgroups(name, gid) would set, looked up here, not in a child.
                unistd::getgrouplist(&name, gid).map_err(|e| RunError::Io {
                    what: format!("looking up the groups of user {:?}", u.name),
                    source: e.into(),
                })?
            }
            None => vec![gid],
        };
        Ok(Some(Credentials {
            user_name: u.as_ref().map(|u| u.name.clone()),
            uid: u.map(|u| u.uid),
            gid,
            groups,
        }))
    }

    /// The user children switch to, if one is set.
    fn user_name(&self) -> Option<String> {
        self.user_name.clone()
    }

    /// Switches this (child) process: groups first, then the gid, then the uid;
    /// then checks all real, effective and saved ids took. Only system calls
    /// (async-signal-safe, no allocation): it runs between fork and the child's
    /// main loop.
    fn apply(&self) -> Result<(), SwitchError> {
        unistd::setgroups(&self.groups).map_err(|e| SwitchError::Call("setgroups", e))?;
        unistd::setgid(self.gid).map_err(|e| SwitchError::Call("setgid", e))?;
        if let Some(uid) = self.uid {
            unistd::setuid(uid).map_err(|e| SwitchError::Call("setuid", e))?;
        }
        let g = unistd::getresgid().map_err(|e| SwitchError::Call("getresgid", e))?;
        if [g.real, g.effective, g.saved] != [self.gid; 3] {
            return Err(SwitchError::NotDropped);
        }
        if let Some(uid) = self.uid {
            let u = unistd::getresuid().map_err(|e| SwitchError::Call("getresuid", e))?;
            if [u.real, u.effective, u.saved] != [uid; 3] {
                return Err(SwitchError::NotDropped);
            }
        }
        Ok(())
    }
}

/// The child's whole life, from just after the fork; returns its exit code.
fn child_main<T>(c: ChildStart<'_, T>) -> i32 {
    // Drop privileges first: a credential change clears PDEATHSIG.
    if let Some(creds) = c.credentials {
        if let Err(e) = creds.apply() {
            use std::io::Write;
            // Not eprintln!: a closed stderr must not make this a panic.
            let _ = writeln!(
                std::io::stderr(),
                "preforkd child: cannot switch user/group: {e}"
            );
            return 1;
        }
    }
    // Die with the parent; then close the race where it died before this line.
    if nix::sys::prctl::set_pdeathsig(NSig::SIGKILL).is_err() || unistd::getppid() != c.parent_pid {
        return 1;
    }
    // The parent's self-pipe, wake-up reader and locks are not ours to hold; closed
    // first (signals are still blocked), so a child forked at the parent's
    // descriptor limit has room for its own pipe.
    for &fd in c.inherited {
        os::close_inherited(fd);
    }
    let wake = match os::install_worker_handlers(c.gate) {
        Ok(wake) => wake,
        Err(e) => {
            // No logger yet (it is built below); stderr is all there is.
            if !c.quiet_failure {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "preforkd child: cannot install its signal handlers: {e}"
                );
            }
            return 1;
        }
    };
    let me = c.board.worker_slot(c.slot);
    me.claim(unistd::getpid().as_raw());
    let logger = match (c.child_logger, &c.logs.error) {
        (Some(f), _) => f(),
        (None, Some(l)) => file_logger(l, c.logs.json),
        (None, None) => default_logger(),
    };
    let mut worker = Worker::new(
        c.slot,
        c.generation,
        c.max_requests,
        me,
        logger.clone(),
        wake,
    )
    .with_logs(c.logs.all(), c.logs.access.clone());
    if let Some(channel) = c.log_channel {
        worker = worker.with_log_channel(channel);
    }
    worker.ready();
    let code = run_main_loop(c.main_loop, &worker, c.state, &logger, c.quiet_failure);
    worker.retire();
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    code
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_of_a_user_carry_its_getgrouplist_resolved_before_any_fork() {
        let c = Credentials::resolve(Some("root"), None).unwrap().unwrap();
        let root = unistd::Gid::from_raw(0);
        assert_eq!(c.uid, Some(unistd::Uid::from_raw(0)));
        assert_eq!(c.gid, root);
        let want = unistd::getgrouplist(c"root", root).unwrap();
        assert!(want.contains(&root), "{want:?}");
        assert_eq!(c.groups, want);
    }

    #[test]
    fn credentials_of_a_group_alone_keep_the_uid_and_only_that_group() {
        let c = Credentials::resolve(None, Some("root")).unwrap().unwrap();
        assert_eq!(c.uid, None);
        assert_eq!(c.groups, vec![unistd::Gid::from_raw(0)]);
        assert!(Credentials::resolve(None, None).unwrap().is_none());
    }

    #[test]
    fn unknown_users_and_groups_are_refused_by_name() {
        for (user, group, want) in [
            (
                Some("no-such-user-here"),
                None,
                "user \"no-such-user-here\" does not exist",
            ),
            (
                None,
                Some("no-such-group-here"),
                "group \"no-such-group-here\" does not exist",
            ),
        ] {
            match Credentials::resolve(user, group) {
                Err(RunError::Invalid(m)) => assert_eq!(m, want),
                other => panic!("{user:?}/{group:?}: {other:?}"),
            }
        }
    }
}
