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

/// What the signal thread has been told and not yet handed to the machine: its
/// flags (set by the handlers), the channel it forwards them down, and the gate it
/// holds while moving one to the other. The re-exec closes the gate and raises
/// again what it finds (the parent's signals held back), so a signal received
/// just before the exec is pending for the new image instead of lost.
#[derive(Clone)]
pub(super) struct Pending {
    pub(super) gate: std::sync::Arc<std::sync::Mutex<()>>,
    pub(super) flags: Vec<(i32, std::sync::Arc<std::sync::atomic::AtomicBool>)>,
    pub(super) forwarded: crossbeam_channel::Receiver<i32>,
}

impl Pending {
    /// Raises again, for this process, every signal told and not yet handled;
    /// returns the gate, closed (keep it until the exec).
    pub(super) fn raise_again(&self) -> std::sync::MutexGuard<'_, ()> {
        let gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        let mut again: Vec<i32> = self
            .flags
            .iter()
            .filter(|(_, f)| f.swap(false, std::sync::atomic::Ordering::AcqRel))
            .map(|(sig, _)| *sig)
            .collect();
        again.extend(self.forwarded.try_iter());
        for sig in again {
            if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), sig);
            }
        }
        gate
    }
}

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
