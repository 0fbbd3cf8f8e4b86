//! Why the runtime could not run the daemon.

use super::{pidfile, systemd};
use crate::ConfigError;

/// An error from a hook or `main_loop`, as users write them (`?` on anything).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why [`Prefork::run`](super::Prefork::run) could not run the daemon. Once it runs, how it ended is
/// [`run`](super::Prefork::run)'s exit code instead: a stop completed past
/// `graceful_timeout` (children KILLed, or the request cut off with
/// `prefork = 0`) is not an error, but exit code 0.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// An option is missing, unusable, or does not fit another (the machine's
    /// options and policies, and the runtime's: logs, user, daemonize...); the
    /// error names the option.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
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

/// A [`RunError::Config`] naming `option`.
pub(super) fn invalid(option: &'static str, reason: impl Into<String>) -> RunError {
    RunError::Config(ConfigError::new(option, reason))
}

/// [`io_err`] for a `std::io::Error`.
pub(super) fn io_err_std(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

pub(super) fn io_err(what: impl Into<String>) -> impl FnOnce(nix::Error) -> RunError {
    let what = what.into();
    move |e| RunError::Io {
        what,
        source: std::io::Error::from(e),
    }
}
