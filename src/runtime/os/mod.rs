//! The one module with `unsafe`: fork, shared memory, raw signal dispositions,
//! raw descriptors and socket calls std does not wrap.
//!
//! Everything here follows the fork-safety rules: signals are blocked around the
//! fork; the child resets every handled signal before unblocking; the child never
//! returns into the caller's code (it ends with `_exit`).
//!
//! A file per concern, every item re-exported here (the runtime writes `os::…`):
//! - `process.rs`: forking a child or a daemon, and ending a process at once;
//! - `signal_handlers.rs`: the new child's signal gate, the worker's handlers and
//!   the flags they set, the parent's SIGPIPE;
//! - `shared_memory.rs`: the scoreboard mapping and shared flags;
//! - `exec.rs`: what the in-place upgrade needs: memory files, descriptors kept
//!   across the exec, the trial process, signals held back across the exec;
//! - `fds.rs`: borrowing, closing and adopting raw descriptors;
//! - `peek.rs`: a copy of a child's descriptor (`pidfd_getfd`), a socket's TCP
//!   state, one socket of this host found by its addresses (`sock_diag`);
//! - `sockets.rs`: a listener's queue length, and descriptors received over a
//!   socket (`SCM_RIGHTS`);
//! - `spawn.rs`: a child that runs a command: its vectors built before the
//!   fork, its descriptors placed, its signals reset, `execve`; process groups.
// Inherited by the files below: nowhere else in the crate is `unsafe` allowed.
#![allow(unsafe_code)]

mod exec;
mod fds;
mod peek;
mod process;
mod shared_memory;
mod signal_handlers;
mod sockets;
mod spawn;

pub(crate) use exec::{
    adopt_fd, dup_handed, hold_signals, memfd, release_signals, set_cloexec, spawn_trial,
};
pub(crate) use fds::{adopt_socket, borrow_fd, close_inherited, NotAdopted};
pub(crate) use peek::{
    diag_answer, error_pending, pidfd_getfd, pidfd_open, tcp_socket, tcp_sockets_in, tcp_state,
};
pub(crate) use process::{copy_open, exit_now, fork_child, fork_for_daemon, without_forks, Side};
pub(crate) use shared_memory::{map_board, shared_flag};
pub(crate) use signal_handlers::{
    ignore_sigpipe, install_worker_handlers, watch_stops, SignalGate, REOPEN_REQUESTED,
    STOP_REQUESTED,
};
pub(crate) use sockets::{listen_queue, listen_queue_len, listening_sockets, recv_fds};
pub(crate) use spawn::{
    fork_keeper, redirect_stdio, say_exec_failed, set_group_of, signal_group, tell_keeper,
    CommandImage, MOST_PASSED,
};
