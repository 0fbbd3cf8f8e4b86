//! Looking for clients that hung up, off the parent's main thread: the loop hands
//! the busy children (and the connection each said it serves) to a thread of the
//! parent and goes on; the verdict comes back on a channel, and the loop gives it
//! to the machine as its `Event::Netstat`. One look at a time: a check asked while one is under way is
//! skipped (the machine asks again at its next check).

use super::netstat::{self, Child, Ours, Probe};
use super::os;
use super::signals::PARENT_SIGNALS;
use crossbeam_channel::{unbounded, Receiver, Sender};

/// What a look found (see [`netstat::Look`]).
pub(super) type Found = netstat::Look;

/// The thread, and the channels to it and back.
pub(super) struct Scanner {
    ask: Sender<(Vec<Child>, Probe)>,
    /// Where the verdicts arrive (the parent's loop waits on it too).
    pub(super) found: Receiver<Found>,
    /// A look is under way.
    pub(super) busy: bool,
}

impl Scanner {
    /// Starts the thread, with the parent's signals blocked in it (they are the
    /// main thread's business, and must stay pending across a re-exec).
    pub(super) fn start() -> std::io::Result<Scanner> {
        let (ask, asked) = unbounded::<(Vec<Child>, Probe)>();
        let (tell, found) = unbounded();
        os::hold_signals(&PARENT_SIGNALS)?;
        let started = std::thread::Builder::new()
            .name("preforkd-disconnects".into())
            .spawn(move || {
                // The listeners are made before the first look and kept.
                let ours = Ours::of_this_process();
                for (children, probe) in asked {
                    // A panic in a look costs that look, not the thread: the
                    // loop waits for its answer.
                    let look = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        netstat::look(children.clone(), &ours, probe)
                    }))
                    .unwrap_or_else(|_| netstat::Look::empty(children, probe));
                    if tell.send(look).is_err() {
                        return;
                    }
                }
            });
        let released = os::release_signals(&PARENT_SIGNALS);
        started?;
        released?;
        Ok(Scanner {
            ask,
            found,
            busy: false,
        })
    }

    /// Asks for a look at `children` with `probe`, unless one is under way.
    /// Returns whether it was asked.
    pub(super) fn ask(&mut self, children: Vec<Child>, probe: Probe) -> bool {
        if self.busy {
            return false;
        }
        self.busy = self.ask.send((children, probe)).is_ok();
        self.busy
    }
}
