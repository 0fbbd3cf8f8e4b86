//! Lines lost, never the daemon: a log that cannot be written (a full disk, a
//! closed pipe) is counted and told once, and its recovery says how much was lost.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// Lines lost while a sink fails, so that the failure is told once and the loss
/// when it ends. Lock-free: it is on the access log's path.
#[derive(Debug, Default)]
pub(crate) struct Losses {
    dropped: AtomicU64,
}

impl Losses {
    /// A line could not be written. True for the first of a streak: tell it.
    pub(crate) fn lost(&self) -> bool {
        self.dropped.fetch_add(1, Ordering::Relaxed) == 0
    }

    /// A line was written. If that ends a streak, the lines it lost.
    pub(crate) fn written(&self) -> Option<u64> {
        if self.dropped.load(Ordering::Relaxed) == 0 {
            return None;
        }
        Some(self.dropped.swap(0, Ordering::Relaxed)).filter(|&n| n > 0)
    }

    /// Lines lost in the current streak (0: none).
    pub(crate) fn pending(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The streak goes on after all (the notice of its end was lost too).
    fn relapse(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// Says something on stderr, best effort: it may be the thing that fails.
fn tell_stderr(what: &str) {
    let _ = super::ParentStderr::current().write_all(format!("{what}\n").as_bytes());
}

/// A drain that never fails and never panics (unlike slog's `Fuse`): a record
/// it cannot write is dropped and counted; the first of a streak is told once on
/// stderr; the first record written afterwards is followed by one saying how many
/// were lost.
pub(crate) struct Lossy<D> {
    inner: D,
    /// What is written, for the notices: "error log /var/log/x.log", "stderr".
    what: String,
    losses: Losses,
}

impl<D> Lossy<D> {
    pub(crate) fn new(inner: D, what: String) -> Lossy<D> {
        Lossy {
            inner,
            what,
            losses: Losses::default(),
        }
    }
}

impl<D: slog::Drain<Err = io::Error>> slog::Drain for Lossy<D> {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        match self.inner.log(record, values) {
            Ok(_) => {
                if let Some(n) = self.losses.written() {
                    let msg = format_args!("{}: writable again; {n} lines dropped", self.what);
                    let notice = slog::record!(slog::Level::Warning, "", &msg, slog::b!());
                    if self.inner.log(&notice, values).is_err() {
                        self.losses.relapse(n);
                    }
                }
            }
            Err(e) => {
                if self.losses.lost() {
                    tell_stderr(&format!(
                        "preforkd[{}]: {}: {e}; dropping lines until it can be written again",
                        std::process::id(),
                        self.what
                    ));
                }
            }
        }
        Ok(())
    }
}
