//! Every setting of `preforkd run`: a flag and a key of the TOML config file
//! each, under the seed's names (flags in kebab case, keys in snake case).
//! Flags override the file.

use preforkd_policies::parse_duration;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// A duration: `1.5` (seconds), `"250ms"`, `"2s"`, `"1m"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dur(pub Duration);

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Dur, String> {
        parse_duration(s).map(Dur)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        preforkd_policies::duration_serde::deserialize(d).map(Dur)
    }
}

/// A size in bytes: `536870912`, `"512M"`, `"2G"` (K, M, G: powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bytes(pub u64);

impl std::str::FromStr for Bytes {
    type Err = String;
    fn from_str(s: &str) -> Result<Bytes, String> {
        let t = s.trim();
        let (num, scale) = match t.chars().last() {
            Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
            Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
            Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
            _ => (t, 1),
        };
        num.trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(scale))
            .map(Bytes)
            .ok_or_else(|| {
                format!("{s:?} is not a size (expected e.g. 536870912, \"512M\", \"2G\")")
            })
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Bytes(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// What to do about a client that hung up while its child works for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OnDisconnect {
    /// Log it (the seed's hook, as a log line).
    Log,
    /// Stop the child working for it (its job is cancelled) and replace it.
    Kill,
}

/// How busy children are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BusyFrom {
    /// From the kernel: a child holding a connection accepted on a listener.
    Kernel,
    /// From the child: it writes its scoreboard slot (docs/run.md).
    Slot,
}

macro_rules! settings {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty ),* $(,)?) => {
        /// The settings, each optional: from the flags, from the file, merged.
        #[derive(Debug, Default, Clone, Deserialize, clap::Args)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $( $(#[$doc])* #[arg(long)] pub $name: Option<$ty>, )*
            /// A listener: tcp://HOST:PORT, tcp://[::1]:PORT or unix:/path (with
            /// ,mode=0660,owner=USER,group=GROUP,name=NAME,backlog=N); repeatable.
            /// None: the sockets of preforkd's own socket activation.
            #[arg(long = "listen", value_name = "SPEC")]
            #[serde(default)]
            pub listen: Vec<String>,
            /// A file whose change rolls the children over (auto_reload_check_every
            /// sets how often it is looked at); repeatable.
            #[arg(long = "watch", value_name = "FILE")]
            #[serde(default)]
            pub watch: Vec<PathBuf>,
            /// The command and its arguments (the file's `command = ["gunicorn",
            /// "app:app"]`; on the command line, after `--`).
            #[arg(skip)]
            #[serde(default)]
            pub command: Vec<String>,
        }

        impl Settings {
            /// `self`, with every setting `over` has replacing this one's.
            pub fn overridden_by(self, over: Settings) -> Settings {
                Settings {
                    $( $name: over.$name.or(self.$name), )*
                    listen: if over.listen.is_empty() { self.listen } else { over.listen },
                    watch: if over.watch.is_empty() { self.watch } else { over.watch },
                    command: if over.command.is_empty() { self.command } else { over.command },
                }
            }
        }
    };
}

settings! {
    /// Children to start, and to shrink back to when idle (3).
    prefork: usize,
    /// The most children at once (150).
    max_children: usize,
    /// Look for changes of the watched files (and preforkd's own executable:
    /// an in-place upgrade) this often (never).
    auto_reload_check_every: Dur,
    /// How long children may take to finish before KILL, at a stop (30s).
    graceful_timeout: Dur,
    /// After KILLing stragglers, how long to wait for them (5s).
    kill_wait: Dur,
    /// A request running longer than this gets its child stopped (none).
    busy_timeout: Dur,
    /// From a busy-timeout or disconnect stop to KILL (5s).
    kill_grace: Dur,
    /// A child not ready this long after its fork is KILLed (30s).
    start_timeout: Dur,
    /// Recycle a child after this many requests (none).
    max_requests_per_child: u64,
    /// Add a random 0..=N to each child's request limit (0).
    max_requests_jitter: u64,
    /// Retire a child whose process tree's memory (RSS) exceeds this (none).
    max_child_memory: Bytes,
    /// The first crash-loop delay; doubles per crash in a row (100ms).
    backoff_initial: Dur,
    /// The longest crash-loop delay (30s).
    backoff_max: Dur,
    /// A child living this long is healthy: its exit is no crash (1s).
    min_healthy_uptime: Dur,
    /// While children are busy, look at the scoreboard this often (1s).
    busy_refresh: Dur,
    /// The least time between two STATUS notifications (1s).
    status_interval: Dur,
    /// Seed of the request-limit jitter.
    seed: u64,
    /// The scoreboard file (a memory file if unset).
    scoreboard_path: PathBuf,
    /// The error log: preforkd's records and the children's output lines (stderr if unset).
    error_log_path: PathBuf,
    /// The access log: the children's stdout lines, as they are (into the error log if unset).
    access_log_path: PathBuf,
    /// The pid file (locked while preforkd runs).
    pid_path: PathBuf,
    /// Detach into the background (needs error_log_path, access_log_path, pid_path) (false).
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    daemonize: bool,
    /// Refuse to start unless root (false).
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    require_root: bool,
    /// Children run as this user.
    user: String,
    /// Children run as this group.
    group: String,
    /// Log records as JSON lines (false).
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    json_log: bool,
    /// What a client hanging up during a request does (nothing looked for if unset).
    #[arg(value_enum)]
    on_client_disconnect: OnDisconnect,
    /// Look for hung-up clients this often (1s).
    disconnect_check_every: Dur,
    /// The signal asking a child to finish and exit: TERM, QUIT, INT, HUP, USR1, USR2, WINCH (TERM).
    stop_signal: String,
    /// Busy children from the kernel (connections) or from the children (their slot) (kernel).
    #[arg(value_enum)]
    busy_from: BusyFrom,
    /// Look at the children's connections this often (50ms).
    busy_check_every: Dur,
    /// Serve metrics over HTTP here (HOST:PORT, e.g. 127.0.0.1:9100): /metrics
    /// (Prometheus text or OpenMetrics) and /metrics.json (none).
    #[arg(value_name = "ADDR")]
    metrics: String,
}

/// The stop signal named (with or without `SIG`).
pub fn stop_signal(name: &str) -> Result<nix::sys::signal::Signal, String> {
    use nix::sys::signal::Signal::*;
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    Ok(match n {
        "TERM" => SIGTERM,
        "QUIT" => SIGQUIT,
        "INT" => SIGINT,
        "HUP" => SIGHUP,
        "USR1" => SIGUSR1,
        "USR2" => SIGUSR2,
        "WINCH" => SIGWINCH,
        _ => {
            return Err(format!(
                "{name:?} is not a stop signal (TERM, QUIT, INT, HUP, USR1, USR2, WINCH)"
            ))
        }
    })
}

/// Reads the config file: a TOML table of settings; an unknown key, a value of
/// the wrong type or a bad duration is refused with its line and column.
pub fn read_file(path: &std::path::Path) -> Result<Settings, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}
