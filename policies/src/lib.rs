//! # preforkd-policies
//!
//! The small, I/O-free API that decides what a preforking supervisor does:
//!
//! - [`ScalingPolicy`]: how many children to start or retire, over a [`PoolSnapshot`].
//!   Built in: [`Elastic`] (the default: the seed's `prefork`/`max_children`
//!   semantics), [`ApacheLike`] (prefork MPM's spare-server maintenance) and
//!   [`Fixed`].
//! - [`ReloadPolicy`]: when to reload and how to roll children over; built in:
//!   [`Rolling`].
//! - [`DisconnectPolicy`]: what to do when a client hangs up on a child; built in:
//!   [`CallHook`] (the default) and [`TerminateChild`].
//! - [`Registry`]: policies chosen and configured by name from a config file.
//!
//! Policies are pure deciders: they get a snapshot and the [`Time`] as parameters
//! and never read a clock or do I/O, so they can be model-tested with the
//! simulator in the `preforkd` crate, which re-exports everything here.
#![forbid(unsafe_code)]

mod disconnect;
pub mod duration_serde;
mod registry;
mod reload;
mod scaling;
mod time;

pub use disconnect::{
    CallHook, ChildView, Disconnect, DisconnectAction, DisconnectPolicy, Proto, TerminateChild,
};
pub use duration_serde::parse_duration;
pub use registry::Registry;
pub use reload::{ReloadPlan, ReloadPolicy, ReloadTrigger, Rolling};
pub use scaling::{
    ApacheLike, ApacheLikeConfig, Decision, Elastic, ElasticConfig, Fixed, PoolSnapshot, RampState,
    Scale, ScalingPolicy,
};
pub use time::Time;

use serde::{Deserialize, Serialize};
use std::fmt;

/// A process id, as the supervisor and the policies see it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pid(pub i32);

impl fmt::Debug for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}", self.0)
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a policy could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The settings are inconsistent.
    #[error("invalid {policy} policy configuration: {reason}")]
    InvalidConfig {
        /// The policy's registered name.
        policy: String,
        /// What is wrong, naming the setting.
        reason: String,
    },
    /// The settings could not be read (unknown field, wrong type...).
    #[error("cannot read {policy} policy configuration: {message}")]
    Config {
        /// The policy's registered name.
        policy: String,
        /// The deserializer's message.
        message: String,
    },
    /// No policy of that kind is registered under that name.
    #[error("unknown {kind} policy {name:?} (known: {known})")]
    Unknown {
        /// scaling, reload or disconnect.
        kind: &'static str,
        /// The name asked for.
        name: String,
        /// The registered names, comma-separated.
        known: String,
    },
}
