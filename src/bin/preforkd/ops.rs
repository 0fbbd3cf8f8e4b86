//! `preforkd status` and the control subcommands: the pool seen and acted on
//! from outside (see `preforkd::runtime::status` and `preforkd::runtime::control`).

use preforkd::runtime::control::{control, Request};
use preforkd::runtime::pidfile;
use preforkd::runtime::status::{find_scoreboard, Status};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// LSB's "program is not running" (init scripts' `status`).
const EX_NOT_RUNNING: i32 = 3;

/// Which pool: its scoreboard file, or its pid file.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub(crate) struct Which {
    /// The pool's scoreboard file (its `scoreboard_path`).
    #[arg(long, value_name = "PATH")]
    scoreboard: Option<PathBuf>,
    /// The daemon's pid file: its scoreboard is found among the parent's
    /// descriptors (a memory file too).
    #[arg(long, value_name = "PATH")]
    pid_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    which: Which,
    /// Print the status as JSON (schema 1: see docs/operating.md).
    #[arg(long)]
    json: bool,
    /// Refresh every SECS seconds (1 by default) until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
    watch: Option<f64>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ControlArgs {
    /// The daemon's pid file.
    #[arg(long, value_name = "PATH")]
    pid_file: PathBuf,
    /// Its scoreboard file, if it has one (else found among its descriptors).
    #[arg(long, value_name = "PATH")]
    scoreboard: Option<PathBuf>,
    /// How long to wait for the outcome, in seconds.
    #[arg(long, value_name = "SECS", default_value = "60")]
    timeout: f64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ScaleArgs {
    /// How many children more (+N) or fewer (-N).
    #[arg(value_name = "+N|-N", allow_negative_numbers = true)]
    by: String,
    #[command(flatten)]
    control: ControlArgs,
}

fn seconds(what: &str, secs: f64) -> Result<Duration, (i32, String)> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            (
                super::EX_USAGE,
                if secs.abs() < 1e9 {
                    format!("{what}: {secs} is not a positive number of seconds")
                } else {
                    format!("{what}: {secs:.3e} is out of range")
                },
            )
        })
}

fn status_once(which: &Which) -> Result<Status, (i32, String)> {
    let path = match (&which.scoreboard, &which.pid_file) {
        (Some(p), _) => p.clone(),
        (None, pid_file) => {
            let Some(pid_file) = pid_file else {
                return Err((super::EX_USAGE, "give --scoreboard or --pid-file".into()));
            };
            let pid = pidfile::is_running(pid_file)
                .map_err(|e| (1, e.to_string()))?
                .ok_or_else(|| {
                    (
                        EX_NOT_RUNNING,
                        format!("not running (no process holds {})", pid_file.display()),
                    )
                })?;
            find_scoreboard(pid).map_err(|e| (1, e.to_string()))?
        }
    };
    Status::read(&path).map_err(|e| (1, e.to_string()))
}

pub(crate) fn status(args: StatusArgs) -> Result<i32, (i32, String)> {
    let every = args.watch.map(|s| seconds("--watch", s)).transpose()?;
    if every.is_some_and(|d| d < Duration::from_millis(100)) {
        return Err((
            super::EX_USAGE,
            "--watch: at least 0.1 s between two readings".into(),
        ));
    }
    let mut out = std::io::stdout();
    loop {
        let s = status_once(&args.which)?;
        let text = if args.json {
            serde_json::to_string_pretty(&s).map_err(|e| (1, e.to_string()))?
        } else {
            s.table()
        };
        if every.is_some() {
            // Home and clear: the table is drawn again in place.
            let _ = write!(out, "\x1b[H\x1b[2J");
        }
        if writeln!(out, "{}", text.trim_end())
            .and_then(|()| out.flush())
            .is_err()
        {
            // The reader went away (a closed pipe): nothing more to show.
            return Ok(0);
        }
        match every {
            Some(d) => pause(d),
            None => return Ok(if s.parent_running { 0 } else { EX_NOT_RUNNING }),
        }
    }
}

// --watch waits between two readings.
#[allow(clippy::disallowed_methods)]
fn pause(d: Duration) {
    std::thread::sleep(d);
}

pub(crate) fn act(args: ControlArgs, request: Request) -> Result<i32, (i32, String)> {
    let timeout = seconds("--timeout", args.timeout)?;
    match control(&args.pid_file, args.scoreboard.as_deref(), request, timeout) {
        Ok(done) => {
            let _ = writeln!(std::io::stdout(), "preforkd: {}", done.message);
            Ok(0)
        }
        // Not running included: start-stop-daemon's "nothing was done" is 1.
        Err(e) => Err((1, e.to_string())),
    }
}

pub(crate) fn scale(args: ScaleArgs) -> Result<i32, (i32, String)> {
    let by: i32 = args
        .by
        .parse()
        .ok()
        .filter(|n: &i32| n.unsigned_abs() <= preforkd::MAX_CHILDREN_LIMIT as u32)
        .ok_or_else(|| {
            (
                super::EX_USAGE,
                format!(
                    "scale: {:?} is not +N or -N (a number of children)",
                    args.by
                ),
            )
        })?;
    act(args.control, Request::Scale(by))
}
