//! The builder, [`Prefork`], and [`Prefork::run`]: validation, daemonizing, and
//! the hand-over to the parent's loop (or to the in-process mode).

use super::check::Supervision;
use super::child::panic_message;
use super::error::{invalid, BoxError, RunError};
use super::logs::{file_logger, LogFile};
use super::parent::Parent;
use super::upgrade::{self, Inherited, Start};
use super::worker::Worker;
use super::{daemon, logs, pidfile, systemd};
use crate::policy::{Disconnect, DisconnectPolicy, ReloadPolicy, ScalingPolicy};
use crate::Options;
use std::net::ToSocketAddrs;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub(super) type Init<T> = Box<dyn FnOnce() -> Result<T, BoxError>>;
pub(super) type MainLoop<T> = Box<dyn Fn(&Worker, &T) -> Result<(), BoxError>>;
pub(super) type StateHook<T> = Box<dyn FnMut(&T)>;
pub(super) type LoggerFactory = Box<dyn Fn() -> slog::Logger>;
pub(super) type DisconnectHook = Box<dyn FnMut(&Disconnect)>;

/// A preforking daemon: the seed's options and hooks, under the same names.
///
/// `after_init` runs in the parent before the first child (bind sockets there); its
/// value is shared with every child's `main_loop`. See the [module docs](crate::runtime).
pub struct Prefork<T> {
    pub(super) options: Options,
    pub(super) in_process: bool,
    pub(super) scoreboard_path: Option<PathBuf>,
    pub(super) logger: Option<slog::Logger>,
    pub(super) child_logger: Option<LoggerFactory>,
    pub(super) error_log_path: Option<PathBuf>,
    pub(super) access_log_path: Option<PathBuf>,
    pub(super) json_log: bool,
    pub(super) pid_path: Option<PathBuf>,
    pub(super) require_root: bool,
    pub(super) daemonize: bool,
    pub(super) keep_fds: Vec<std::os::fd::RawFd>,
    pub(super) user: Option<String>,
    pub(super) group: Option<String>,
    pub(super) after_init: Init<T>,
    pub(super) main_loop: MainLoop<T>,
    pub(super) before_shutdown: Option<StateHook<T>>,
    pub(super) auto_reload_handler: Option<StateHook<T>>,
    pub(super) on_client_disconnect: Option<DisconnectHook>,
    pub(super) watch: Vec<PathBuf>,
    pub(super) disconnect_check_every: Duration,
    pub(super) scaling: Option<Box<dyn ScalingPolicy>>,
    pub(super) reload: Option<Box<dyn ReloadPolicy>>,
    pub(super) disconnect: Option<Box<dyn DisconnectPolicy>>,
    /// Children run a command (see [`super::command`]).
    pub(super) command: Option<Arc<super::command::Supervised>>,
    /// Where to serve the metrics ([`metrics`](Self::metrics)).
    pub(super) metrics: Option<String>,
    /// Its listener, bound at the start (see [`Prefork::bind_metrics`]).
    pub(super) metrics_listener: Option<std::net::TcpListener>,
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
            in_process: false,
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
            command: None,
            metrics: None,
            metrics_listener: None,
        }
    }

    /// All the supervisor's options at once.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// Runs `main_loop` in this process, without forking: no children, so no
    /// scaling, reload or disconnect policy (setting one is an error), but the same
    /// signals, logs, pid file and graceful shutdown (`graceful_timeout`). The
    /// seed's `prefork = 0` means the same.
    pub fn in_process(mut self) -> Self {
        self.in_process = true;
        self
    }

    /// Children to start with the default scaling policy (0: the seed's way of
    /// asking for [`in_process`](Self::in_process)). Not read with a
    /// [`scaling_policy`](Self::scaling_policy) of your own.
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

    /// Runs in the parent for each client that hung up on a busy child, once per
    /// connection however long it lingers. Hung up means the client can no longer
    /// receive: it reset the connection, or the child's socket is in CLOSE_WAIT
    /// and the client's own socket, on this host, is orphaned (closed, no process
    /// holds it); a client that only half-closed (`shutdown(SHUT_WR)`) and still
    /// reads is not reported. A
    /// client on another host shows only its FIN, which cannot be told from a
    /// half-close, so it is not reported (a job is never cancelled for a client
    /// still waiting). Only connections accepted on the parent's listeners count;
    /// TCP over IPv4 and IPv6 (Unix-domain sockets are not looked at). The look
    /// runs on a thread of the parent every `disconnect_check_every` while some
    /// child is busy (an idle pool is never looked at); a child that accepts with
    /// [`Worker::accept`](crate::Worker::accept) has the one connection it serves
    /// looked at. See `docs/disconnects.md`.
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

    /// Use this scaling policy instead of the default built from `prefork` and
    /// `max_children` ([`Options::default_scaling`]); `prefork` is then not read,
    /// nor checked. A `Box<dyn ScalingPolicy>` (for example one built by a
    /// [`Registry`](crate::policy::Registry)) is a policy too. An error in process
    /// ([`in_process`](Self::in_process)).
    pub fn scaling_policy(mut self, p: impl ScalingPolicy + 'static) -> Self {
        self.scaling = Some(Box::new(p));
        self
    }

    /// Use this reload policy instead of [`Rolling`](crate::policy::Rolling) with
    /// `auto_reload_check_every`; a `Box<dyn ReloadPolicy>` is one too. An error in
    /// process ([`in_process`](Self::in_process)).
    pub fn reload_policy(mut self, p: impl ReloadPolicy + 'static) -> Self {
        self.reload = Some(Box::new(p));
        self
    }

    /// Use this disconnect policy instead of [`CallHook`](crate::policy::CallHook)
    /// (which calls [`on_client_disconnect`](Self::on_client_disconnect)); a
    /// `Box<dyn DisconnectPolicy>` is one too. Setting one turns the
    /// [`disconnect_check_every`](Self::disconnect_check_every) look on, as the hook
    /// does. An error in process ([`in_process`](Self::in_process)).
    pub fn disconnect_policy(mut self, p: impl DisconnectPolicy + 'static) -> Self {
        self.disconnect = Some(Box::new(p));
        self
    }

    /// Serve metrics over HTTP at `addr` (`127.0.0.1:9100`; a host name is
    /// resolved once, at the start): `GET /metrics` answers the Prometheus text
    /// exposition 0.0.4, or OpenMetrics 1.0.0 when the `Accept` header prefers
    /// it, and `GET /metrics.json` (or `Accept: application/json`) a JSON
    /// document: children by state, spawns, exits by cause, reloads, upgrades,
    /// the busy ratio, the listeners' queues, requests served, scaling decisions
    /// (see `docs/metrics.md`, and [`Totals`](crate::Totals)).
    ///
    /// Served by a thread of the parent that never forks and never holds the
    /// supervisor back (the loop publishes its figures lock-free; the thread
    /// reads the scoreboard itself); a slow or hostile client costs only its own
    /// connection. Children do not inherit the listener. The address is bound
    /// when `run` starts, before `after_init`: one that cannot be bound is a
    /// configuration error naming `metrics`. An in-place upgrade hands the
    /// listener over to the new image (the same socket: no scrape is refused,
    /// and a port 0 keeps the port it got); a new image asked for another
    /// address binds that, and if it cannot, serves on without metrics and logs
    /// why. Not for plain HTTP on an open
    /// network: no TLS, no authentication (listen on loopback, or behind a
    /// proxy). An error in process ([`in_process`](Self::in_process)).
    pub fn metrics(mut self, addr: impl Into<String>) -> Self {
        self.metrics = Some(addr.into());
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
    pub fn run(self) -> Result<i32, RunError> {
        // Before anything opens a descriptor (the announced numbers must still be
        // the service manager's) or starts a thread (unsetting variables races
        // with threads reading them).
        let service = systemd::take_service_env()?;
        let pass_on = service.pass_on.clone();
        // An upgrade's new image that fails before its machine runs (an error or a
        // panic) hands the children back to the previous image (the call returns
        // only if there is no way back, or it failed).
        let outcome = catch_unwind(AssertUnwindSafe(move || self.start_up(service)));
        match &outcome {
            Ok(Err(e)) => upgrade::fall_back(&pass_on, &e.to_string()),
            Err(panic) => {
                upgrade::fall_back(&pass_on, &format!("panicked: {}", panic_message(&**panic)))
            }
            Ok(Ok(_)) => {}
        }
        match outcome {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    fn start_up(mut self, service: systemd::ServiceEnv) -> Result<i32, RunError> {
        let start = upgrade::take_start()?;
        self.make_paths_absolute()?;
        let mut inherited = match start {
            Start::Trial {
                handoff,
                slots,
                pid_file,
                report,
            } => {
                // The upgrade's trial: check, say, exit; touch nothing.
                let checked = if pid_file && self.pid_path.is_none() {
                    Err(upgrade::pid_path_needed())
                } else if self.options.max_children != slots {
                    Err(invalid(
                        "max_children",
                        format!(
                            "is {}, but the running pool has {slots} slots: an in-place upgrade keeps max_children",
                            self.options.max_children
                        ),
                    ))
                } else {
                    self.check(&service, Some(*handoff)).map(|_| ())
                };
                upgrade::end_trial(report, checked)
            }
            Start::Upgrade(inherited) => Some(inherited),
            Start::Fresh => None,
        };
        let handoff = inherited.as_ref().map(|i| i.machine.clone());
        let checked = self.check(&service, handoff)?;
        let metrics_note = self.bind_metrics(inherited.is_some())?;
        // Logs are opened before any fork: a path that cannot be used is a
        // configuration error the operator sees at once.
        // After an upgrade: the files the previous image had open, by path.
        let mut handed_logs = inherited
            .as_mut()
            .map(|i| std::mem::take(&mut i.logs))
            .unwrap_or_default();
        let mut open = |option, p: &Option<PathBuf>| -> Result<Option<Arc<LogFile>>, RunError> {
            let Some(p) = p else { return Ok(None) };
            if let Some(i) = handed_logs.iter().position(|(path, _)| path == p) {
                let (path, file) = handed_logs.swap_remove(i);
                return Ok(Some(LogFile::adopt(path, file)));
            }
            LogFile::open(p)
                .map(Some)
                .map_err(|e| invalid(option, format!("cannot open the log: {e}")))
        };
        let logs = Logs {
            error: open("error_log_path", &self.error_log_path)?,
            access: open("access_log_path", &self.access_log_path)?,
            json: self.json_log,
        };
        let mut reporter = None;
        // After an upgrade the process is the daemon already.
        if self.daemonize && inherited.is_none() {
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
            self.run_detached(
                &mut reporter,
                logs,
                service,
                checked,
                inherited,
                metrics_note,
            )
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

    /// Checks the configuration as [`run`](Self::run) would before it opens or
    /// forks anything (options, policies, user and group), and nothing else: for
    /// `preforkd run --check-config`.
    ///
    /// # Errors
    /// The [`RunError::Config`] naming the option at fault.
    pub fn check_config(mut self) -> Result<(), RunError> {
        self.make_paths_absolute()?;
        let service = systemd::ServiceEnv {
            notify_socket: None,
            watchdog: None,
            notes: Vec::new(),
            pass_on: Vec::new(),
        };
        self.check(&service, None).map(|_| ())
    }

    /// Every configured path made absolute against the directory the daemon was
    /// first started from (after an upgrade too, though it works from `/`).
    pub(super) fn make_paths_absolute(&mut self) -> Result<(), RunError> {
        let dir = upgrade::start_dir();
        let absolute = |p: &mut PathBuf| -> Result<(), RunError> {
            let joined = match &dir {
                Some(dir) if p.is_relative() => dir.join(&*p),
                _ => p.clone(),
            };
            *p = std::path::absolute(&joined).map_err(|e| RunError::Io {
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

    pub(super) fn run_detached(
        mut self,
        reporter: &mut Option<daemon::Reporter>,
        logs: Logs,
        service: systemd::ServiceEnv,
        checked: Option<Supervision>,
        mut inherited: Option<Box<Inherited>>,
        metrics_note: Option<String>,
    ) -> Result<i32, RunError> {
        if let (Some(r), Some(log)) = (reporter.as_ref(), &self.error_log_path) {
            let mut keep = self.keep_fds.clone();
            keep.extend(r.raw_fd());
            keep.extend(logs.all().iter().map(|l| l.raw_fd()));
            keep.extend(self.metrics_listener.as_ref().map(AsRawFd::as_raw_fd));
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
            (None, None) => parent_logger(),
        };
        if let Some(note) = metrics_note {
            slog::error!(logger, "{note}");
        }
        // Held until `run` returns; dropping it removes the file.
        let pid_file = match (
            &self.pid_path,
            inherited.as_mut().and_then(|i| i.pid_file.take()),
        ) {
            // The lock crossed the exec with its descriptor.
            (Some(path), Some(fd)) => Some(pidfile::PidFile::adopt(path, fd)?),
            (Some(path), None) => Some(pidfile::PidFile::acquire(path)?),
            (None, Some(_)) => return Err(upgrade::pid_path_needed()),
            (None, None) => None,
        };
        let Some(supervision) = checked else {
            return self.run_in_process(logger, logs, reporter);
        };
        let pid_fd = pid_file.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        // A failure to start is returned with the reporter still here: the caller
        // tells the launcher. Once started, the parent reports itself.
        let daemonized = inherited.as_ref().is_some_and(|i| i.daemonized);
        let mut parent =
            Parent::start(self, supervision, logger, logs, pid_fd, service, inherited)?;
        // The machine runs from here on: it decides about the way back.
        upgrade::disarm_fallback();
        parent.sys.daemonized = reporter.is_some() || daemonized;
        parent.sys.reporter = reporter.take();
        let code = parent.run();
        drop(pid_file);
        code
    }
}

/// Binds a TCP listener with a listen backlog of `backlog` connections (the
/// standard library's `bind` uses 128, too few for a burst of clients arriving
/// while children are still being forked; the kernel caps it at `somaxconn`).
///
/// The listeners made here cross an in-place upgrade: in the new image, `listen`
/// hands back, in the order asked, the previous image's listener bound where it
/// is asked to bind (the same address; the same port unless port 0 is asked
/// for), so after_init gets the very socket the running children accept on. (A
/// copy of it: if `after_init` then fails, the runtime still has the socket to
/// hand back to the previous image.)
///
/// ```
/// let l = preforkd::runtime::listen("127.0.0.1:0", 1024).unwrap();
/// assert!(l.local_addr().unwrap().port() > 0);
/// ```
pub fn listen(addr: impl ToSocketAddrs, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let wanted: Vec<std::net::SocketAddr> = addr.to_socket_addrs()?.collect();
    // After an in-place upgrade: the listener the previous image made here.
    let l = match super::upgrade::claim_listener(&wanted)? {
        Some(l) => l,
        None => std::net::TcpListener::bind(&wanted[..])?,
    };
    // Listening again on a listening socket only changes its backlog (Linux).
    let backlog = nix::sys::socket::Backlog::new(backlog).map_err(std::io::Error::from)?;
    nix::sys::socket::listen(&l, backlog).map_err(std::io::Error::from)?;
    super::upgrade::register_listener(std::os::fd::AsRawFd::as_raw_fd(&l));
    Ok(l)
}

/// The log files of a daemon, shared by the parent and (after the fork, each its
/// own copy) the children.
#[derive(Debug, Clone)]
pub(super) struct Logs {
    pub(super) error: Option<Arc<LogFile>>,
    pub(super) access: Option<Arc<LogFile>>,
    pub(super) json: bool,
}

impl Logs {
    pub(super) fn all(&self) -> Vec<Arc<LogFile>> {
        self.error
            .iter()
            .chain(self.access.iter())
            .cloned()
            .collect()
    }
}

/// Plain text on stderr. A write that fails (a closed pipe, a full disk behind a
/// redirection) drops the record: never a panic, never a stop.
pub(super) fn default_logger() -> slog::Logger {
    stderr_logger(std::io::stderr())
}

/// [`default_logger`] for the parent: a stderr that is not read (a stalled
/// pipe or socket) drops records instead of blocking the loop.
fn parent_logger() -> slog::Logger {
    stderr_logger(logs::ParentStderr::new())
}

fn stderr_logger(w: impl std::io::Write + Send + 'static) -> slog::Logger {
    use slog::Drain;
    let decorator = slog_term::PlainSyncDecorator::new(w);
    let drain = logs::Lossy::new(
        slog_term::FullFormat::new(decorator).build(),
        "stderr".into(),
    );
    let drain = slog::LevelFilter::new(drain, slog::Level::Info).ignore_res();
    slog::Logger::root(drain, slog::o!("pid" => std::process::id()))
}
