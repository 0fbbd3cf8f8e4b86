//! `preforkd`: the autoscaling supervisor for servers written in any language.
//!
//! `preforkd run [OPTIONS] -- COMMAND [ARGS...]` forks children that exec COMMAND
//! with the listeners passed the systemd way (see `docs/run.md`);
//! `preforkd status`, `stop`, `reload`, `upgrade`, `reopen-logs` and `scale`
//! show and act on a running pool (see `docs/operating.md`).
//!
//! Exit codes: 0 after a requested stop; 64 a usage error (an unknown flag, no
//! COMMAND); 78 a configuration error (the file: an unknown key, a bad value;
//! an option the supervisor refuses; a COMMAND not found); 1 a failure to start
//! or a stop that left children behind; for the control subcommands, an outcome
//! not seen (the daemon not running included); 3 `status` of a daemon not
//! running.

mod ops;
mod settings;
mod simulate;

use clap::Parser;
use preforkd::runtime::command::{Command, ListenSpec};
use preforkd::runtime::control::Request;
use preforkd::{Prefork, RunError};
use settings::{BusyFrom, OnDisconnect, Settings};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

const EX_USAGE: i32 = 64;
const EX_CONFIG: i32 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "preforkd",
    version,
    about = "Preforking, autoscaling supervisor for any server"
)]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, clap::Subcommand)]
// Parsed once per process: the variants' sizes do not matter.
enum Sub {
    /// Run COMMAND in an autoscaled pool of children sharing the listeners.
    Run(Box<RunArgs>),
    /// Show a running pool: its slot map, counts and children.
    Status(ops::StatusArgs),
    /// Stop the daemon gracefully (TERM) and wait until it is gone.
    Stop(ops::ControlArgs),
    /// Reload (HUP) and wait until a new generation serves.
    Reload(ops::ControlArgs),
    /// Upgrade in place (USR2) and wait until the new executable serves.
    Upgrade(ops::ControlArgs),
    /// Reopen the logs (USR1) and wait until they are.
    ReopenLogs(ops::ControlArgs),
    /// Move the pool's size by +N or -N children (TTIN/TTOU) and wait for it.
    Scale(ops::ScaleArgs),
    /// Run a scaling policy against a workload in the simulator: a summary, a chart.
    Simulate(simulate::SimulateArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// A TOML file of settings (the keys are the flags' names in snake case).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the settings and exit (0: valid).
    #[arg(long)]
    check_config: bool,
    #[command(flatten)]
    settings: Settings,
    /// The command every child runs, and its arguments.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// A refusal: the message and the exit code.
struct Refused(i32, String);

fn refused((code, msg): (i32, String)) -> Refused {
    Refused(code, msg)
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let outcome = match cli.command {
        Sub::Run(args) => run(*args),
        Sub::Status(args) => ops::status(args).map_err(refused),
        Sub::Stop(args) => ops::act(args, Request::Stop).map_err(refused),
        Sub::Reload(args) => ops::act(args, Request::Reload).map_err(refused),
        Sub::Upgrade(args) => ops::act(args, Request::Upgrade).map_err(refused),
        Sub::ReopenLogs(args) => ops::act(args, Request::ReopenLogs).map_err(refused),
        Sub::Scale(args) => ops::scale(args).map_err(refused),
        Sub::Simulate(args) => simulate::simulate(args),
    };
    let code = match outcome {
        Ok(code) => code,
        Err(Refused(code, msg)) => {
            let _ = writeln!(std::io::stderr(), "preforkd: {msg}");
            code
        }
    };
    std::process::exit(code);
}

fn run(args: RunArgs) -> Result<i32, Refused> {
    let config = |msg: String| Refused(EX_CONFIG, msg);
    let file = match &args.config {
        Some(p) => settings::read_file(p).map_err(config)?,
        None => Settings::default(),
    };
    let mut flags = args.settings;
    flags.command = args
        .command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let s = file.overridden_by(flags);
    // The command line's COMMAND as given (not lossy); else the file's.
    let argv: Vec<OsString> = if args.command.is_empty() {
        s.command.iter().map(OsString::from).collect()
    } else {
        args.command
    };
    let Some((program, rest)) = argv.split_first() else {
        return Err(Refused(
            EX_USAGE,
            "no COMMAND: give it after `--` (preforkd run --listen tcp://127.0.0.1:8000 -- gunicorn app:app) or as `command = [...]` in the config file".into(),
        ));
    };
    let daemon = build(&s, program, rest).map_err(config)?;
    if args.check_config {
        daemon
            .check_config()
            .map_err(|e| config(format!("invalid configuration: {e}")))?;
        let _ = writeln!(std::io::stdout(), "preforkd: configuration OK");
        return Ok(0);
    }
    match daemon.run() {
        Ok(code) => Ok(code),
        Err(e @ RunError::Config(_)) => Err(config(e.to_string())),
        Err(e) => Err(Refused(1, e.to_string())),
    }
}

/// The daemon the settings describe.
fn build(
    s: &Settings,
    program: &OsString,
    rest: &[OsString],
) -> Result<Prefork<preforkd::runtime::command::Prepared>, String> {
    let mut command = Command::new(program)
        .map_err(|e| format!("COMMAND: {e}"))?
        .args(rest);
    for l in &s.listen {
        command = command.listen(
            l.parse::<ListenSpec>()
                .map_err(|e| format!("listen: {e}"))?,
        );
    }
    if let Some(name) = &s.stop_signal {
        command = command
            .stop_signal(settings::stop_signal(name).map_err(|e| format!("stop_signal: {e}"))?);
    }
    if let Some(every) = s.busy_check_every {
        if every.0.is_zero() {
            return Err("busy_check_every: must be greater than zero".into());
        }
        command = command.busy_check_every(every.0);
    }
    command = command.cooperative(s.busy_from == Some(BusyFrom::Slot));

    let mut o = preforkd::Options::default();
    macro_rules! set {
        ($($name:ident),*) => { $( if let Some(v) = s.$name { o.$name = v; } )* };
    }
    macro_rules! set_dur {
        ($($name:ident),*) => { $( if let Some(v) = s.$name { o.$name = v.0; } )* };
    }
    set!(prefork, max_children, max_requests_jitter, seed);
    set_dur!(
        graceful_timeout,
        kill_wait,
        kill_grace,
        start_timeout,
        backoff_initial,
        backoff_max,
        min_healthy_uptime,
        busy_refresh,
        status_interval
    );
    o.auto_reload_check_every = s.auto_reload_check_every.map(|d| d.0);
    o.busy_timeout = s.busy_timeout.map(|d| d.0);
    o.max_requests_per_child = s.max_requests_per_child;
    o.max_child_memory = s.max_child_memory.map(|b| b.0);

    let mut p = Prefork::command(command)
        .options(o)
        // A command-line supervisor runs in the foreground unless asked: under a
        // service manager, or in a terminal. (The library's seed default is to
        // daemonize.)
        .daemonize(s.daemonize.unwrap_or(false))
        .require_root(s.require_root.unwrap_or(false))
        .json_log(s.json_log.unwrap_or(false));
    if s.auto_reload_check_every.is_some() {
        // A change rolls the children over; nothing else to do for it here.
        p = p.auto_reload_handler(|_| {});
    }
    for w in &s.watch {
        p = p.watch_file(w);
    }
    if let Some(v) = &s.scoreboard_path {
        p = p.scoreboard_path(v);
    }
    if let Some(v) = &s.error_log_path {
        p = p.error_log_path(v);
    }
    if let Some(v) = &s.access_log_path {
        p = p.access_log_path(v);
    }
    if let Some(v) = &s.pid_path {
        p = p.pid_path(v);
    }
    if let Some(v) = &s.metrics {
        p = p.metrics(v.as_str());
    }
    if let Some(v) = &s.user {
        p = p.user(v);
    }
    if let Some(v) = &s.group {
        p = p.group(v);
    }
    if let Some(every) = s.disconnect_check_every {
        p = p.disconnect_check_every(every.0);
    }
    match s.on_client_disconnect {
        Some(OnDisconnect::Kill) => p = p.disconnect_policy(preforkd::policy::TerminateChild),
        Some(OnDisconnect::Log) => {
            p = p.on_client_disconnect(|d| {
                let _ = writeln!(
                    std::io::stderr(),
                    "preforkd: client {}:{} of child {} hung up (on {}:{})",
                    d.foreign_host,
                    d.foreign_port,
                    d.pid,
                    d.local_host,
                    d.local_port
                );
            })
        }
        None => {}
    }
    Ok(p)
}
