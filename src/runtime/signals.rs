//! The signals the parent handles, and their translation to and from the
//! machine's.

use crate::{ChildSignal, Signal};
use nix::sys::signal::Signal as NSig;
use signal_hook::consts::signal as sh;

/// The signals the parent handles.
pub(super) const PARENT_SIGNALS: [i32; 9] = [
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

pub(super) fn to_machine_signal(sig: i32) -> Option<Signal> {
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

pub(super) fn to_os_signal(sig: ChildSignal) -> NSig {
    match sig {
        ChildSignal::Term => NSig::SIGTERM,
        ChildSignal::Kill => NSig::SIGKILL,
        ChildSignal::Usr1 => NSig::SIGUSR1,
    }
}
