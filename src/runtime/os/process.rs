//! Forking (a child that never returns into the caller's code, or a daemon that
//! does) and ending a process at once.

use super::signal_handlers::SignalGate;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow};
use nix::unistd::{self, ForkResult, Pid};
use std::ffi::c_int;

/// Held by a thread of the parent while it holds descriptors that must not
/// reach a child (a copy of a child's connection, taken to look at it), and by
/// [`fork_child`] around the fork: a child forked while such a copy is open
/// would keep that connection open after the child serving it closed it, and
/// its client would wait for the end of the answer forever.
static NOT_FOR_CHILDREN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The copy of a child's descriptor open in this process, if any (-1: none):
/// a fork that could not wait for [`NOT_FOR_CHILDREN`] closes it in the child.
static OPEN_COPY: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Marks `copy` open (see [`OPEN_COPY`]) until the mark is dropped: drop it
/// before the copy.
pub(crate) fn copy_open(copy: &impl std::os::fd::AsRawFd) -> CopyMark {
    OPEN_COPY.store(copy.as_raw_fd(), std::sync::atomic::Ordering::SeqCst);
    CopyMark
}

/// See [`copy_open`].
pub(crate) struct CopyMark;

impl Drop for CopyMark {
    fn drop(&mut self) {
        OPEN_COPY.store(-1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Runs `f` with no [`fork_child`] under way, none starting before it returns.
/// Keep `f` short: the parent's loop waits for it to fork.
pub(crate) fn without_forks<R>(f: impl FnOnce() -> R) -> R {
    let _held = NOT_FOR_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    f()
}

/// [`NOT_FOR_CHILDREN`] for a fork, waited for about 50 ms (timer slack may
/// stretch it): a look holds it for microseconds, unless its thread is
/// descheduled or throttled meanwhile. Past that the fork goes on without it
/// rather than leave the pool unreplenished, and the child closes the copy
/// marked open ([`OPEN_COPY`]).
#[allow(clippy::disallowed_methods)] // a bounded wait, 50 ms at most
fn hold_copies_back() -> Option<std::sync::MutexGuard<'static, ()>> {
    for _ in 0..500 {
        match NOT_FOR_CHILDREN.try_lock() {
            Ok(g) => return Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => return Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => {
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        }
    }
    None
}

/// Forks. In the child, runs `child` with every handled signal reset to its
/// default and every signal still blocked (the child unblocks them by handing the
/// gate to [`install_worker_handlers`](super::install_worker_handlers)), then
/// exits with its code through `_exit`: it never returns there, not even by a
/// panic (exit code 70). In the parent, returns the child's pid. Call only from
/// the main thread.
pub(crate) fn fork_child(
    reset: &[c_int],
    child: impl FnOnce(SignalGate) -> i32,
) -> nix::Result<Pid> {
    // No copy of a child's connection open in this process while it forks.
    let no_copies = hold_copies_back();
    let open_copy = match no_copies {
        Some(_) => -1,
        None => OPEN_COPY.load(std::sync::atomic::Ordering::SeqCst),
    };
    let all = SigSet::all();
    let mut old = SigSet::empty();
    // Block everything so no handler of the parent runs in the child between the
    // fork and the reset below, and no signal meets a default disposition before
    // the child's own handlers exist.
    signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&all), Some(&mut old))?;
    // SAFETY: the child only resets signal dispositions (async-signal-safe), then
    // runs code that takes no lock another parent thread could hold: the parent's
    // other threads wait on pipes and signals holding no lock, or look at
    // connections (netstat) taking none the child uses (`NOT_FOR_CHILDREN`,
    // held here, is never touched in the child); the allocator is fork-safe
    // (glibc's atfork handlers).
    let r = unsafe { unistd::fork() };
    match r {
        Ok(ForkResult::Child) => {
            if open_copy >= 0 {
                // SAFETY: close is async-signal-safe; that number is the parent's
                // copy of another child's socket, inherited, and nothing here
                // owns it.
                unsafe { libc::close(open_copy) };
            }
            for &sig in reset {
                if let Ok(s) = signal::Signal::try_from(sig) {
                    // SAFETY: SIG_DFL is always a valid disposition.
                    let _ = unsafe {
                        signal::sigaction(
                            s,
                            &SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty()),
                        )
                    };
                }
            }
            let gate = SignalGate { mask: old };
            // A panic must not unwind into the caller's code (the parent's loop, then
            // the user's `main`) in this process: it ends here, as a crash.
            let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child(gate)))
            {
                Ok(code) => code,
                Err(payload) => {
                    // Dropping the payload could panic again: leak it, we exit now.
                    std::mem::forget(payload);
                    70
                }
            };
            exit_now(code)
        }
        Ok(ForkResult::Parent { child }) => {
            let _ = signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            Ok(child)
        }
        Err(e) => {
            let _ = signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            Err(e)
        }
    }
}

/// Which side of a daemonizing fork this process is on.
pub(crate) enum Side {
    /// The process that called `fork`, with the child's pid.
    Parent(Pid),
    /// The new process; it carries on with the caller's code (it becomes the daemon).
    Child,
}

/// A plain fork for daemonizing, where the child does continue with the caller's
/// code. Call it only before the runtime starts any thread.
pub(crate) fn fork_for_daemon() -> nix::Result<Side> {
    // SAFETY: called before `Prefork::run` starts its threads (and the crate
    // documents that `run` must come before the user's own threads), so the child is
    // an exact single-threaded copy: no lock can be held by a thread that does not
    // exist in it.
    match unsafe { unistd::fork() }? {
        ForkResult::Parent { child } => Ok(Side::Parent(child)),
        ForkResult::Child => Ok(Side::Child),
    }
}

/// Ends this process at once, without unwinding into the caller or running
/// atexit handlers (a daemonizing launcher's end).
pub(crate) fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` is always sound; nothing after it runs.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};

    fn exit_of(pid: Pid) -> WaitStatus {
        waitpid(pid, None).expect("waitpid")
    }

    /// Forks while another thread holds a descriptor under `without_forks` for
    /// `hold` after the fork is asked for; returns whether the child saw it open.
    #[allow(clippy::disallowed_methods)] // a thread that holds a copy for a while
    fn fork_while_holding(hold: std::time::Duration, marked: bool) -> bool {
        use std::os::fd::AsRawFd;
        let (fd_tx, fd_rx) = std::sync::mpsc::channel();
        let (forking_tx, forking) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            without_forks(|| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let mark = marked.then(|| copy_open(&l));
                fd_tx.send(l.as_raw_fd()).unwrap();
                forking.recv().unwrap();
                std::thread::sleep(hold);
                drop(mark);
                drop(l);
            })
        });
        let fd = fd_rx.recv().unwrap();
        // Its identity: another test's thread may reuse the number once closed.
        // SAFETY: all-zero bytes are a valid `stat`; fstat only fills it (the
        // holder keeps `fd` open until it hears of the fork below).
        let ino = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(fd, &mut st);
            st.st_ino
        };
        forking_tx.send(()).unwrap();
        // The child only asks whether that socket is open there (fstat is
        // async-signal-safe).
        let pid = fork_child(&[], move |_| {
            // SAFETY: all-zero bytes are a valid `stat`; fstat on any number only
            // fills it or fails; `_exit` ends the child without the stdio locks
            // another test's thread may have held at the fork.
            unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                let same = libc::fstat(fd, &mut st) == 0 && st.st_ino == ino;
                libc::_exit(i32::from(same))
            }
        })
        .expect("fork");
        let saw = match exit_of(pid) {
            WaitStatus::Exited(_, code) => code == 1,
            other => panic!("{other:?}"),
        };
        holder.join().unwrap();
        saw
    }

    #[test]
    fn a_fork_waits_until_no_copy_meant_for_the_parent_alone_is_open() {
        let held = fork_while_holding(std::time::Duration::from_millis(1), false);
        assert!(!held, "the child inherited the copy");
    }

    #[test]
    fn a_look_held_up_does_not_hold_the_fork_back_nor_give_it_the_copy() {
        // A look whose thread is held up must not stop the pool from being
        // replenished: the fork goes on without the lock (the unmarked
        // descriptor shows it did), and the child closes the copy marked open.
        let started = std::time::Duration::from_secs(2);
        assert!(
            fork_while_holding(started, false),
            "the fork waited for the look's end"
        );
        assert!(
            !fork_while_holding(started, true),
            "the child inherited the marked copy"
        );
    }

    #[test]
    fn a_child_that_panics_ends_in_exit_never_in_the_callers_code() {
        // A panic runs the panic hook (stderr and backtrace locks): forked from this
        // many-threaded test process, the child could find a lock held by another
        // test's thread and wait forever. So the fork happens in a copy of this
        // test binary that runs this test alone.
        const ALONE: &str = "PREFORKD_OS_PANIC_TEST_ALONE";
        if std::env::var_os(ALONE).is_some() {
            let pid = fork_child(&[], |_| panic!("outside any catch_unwind")).expect("fork");
            assert_eq!(exit_of(pid), WaitStatus::Exited(pid, 70));
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "runtime::os::process::tests::a_child_that_panics_ends_in_exit_never_in_the_callers_code",
                "--exact",
                "--test-threads=1",
            ])
            .env(ALONE, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 passed"), "the test ran alone: {text}");
    }
}
