//! The supervisor core: a pure state machine. Events in, actions out, time as a
//! parameter. No clock, no system call, no thread, no unseeded randomness; the
//! `core_is_pure` test and clippy's `disallowed-methods` hold that line.

pub mod action;
pub mod config;
pub mod driver;
pub mod event;
pub mod machine;
pub mod rng;
pub mod transitions;
