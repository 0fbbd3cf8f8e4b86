//! Log rotation with children of another user: the parent passes the reopened
//! descriptors over each child's log channel (`SCM_RIGHTS`), and the child
//! switches to them.

use super::LogFile;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

/// Sends the descriptors of `logs` (in their order) to a child over its log
/// channel: one datagram whose bytes are the indices of the logs (error log,
/// then access log, as the child's `Worker` lists them), the descriptors attached
/// (`SCM_RIGHTS`).
pub(crate) fn send_logs(channel: &OwnedFd, logs: &[Arc<LogFile>]) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds: Vec<std::os::fd::RawFd> = logs.iter().map(|l| l.raw_fd()).collect();
    let indices: Vec<u8> = (0..logs.len()).map(|i| i as u8).collect();
    sendmsg::<()>(
        channel.as_raw_fd(),
        &[io::IoSlice::new(&indices)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// What [`take_passed_logs`] found on the channel.
#[derive(Debug, Default)]
pub(crate) struct Passed {
    /// Datagrams read, good or bad.
    pub(crate) sets: usize,
    /// A good set was found, and the logs switched to the last one.
    pub(crate) applied: bool,
    /// Sets skipped because they were bad (their descriptors closed).
    pub(crate) bad: usize,
    /// Why the last bad set was bad, or the socket error that stopped the reading.
    pub(crate) error: Option<io::Error>,
}

impl Passed {
    /// One line for the error log if anything went wrong, else `None`.
    pub(crate) fn problem(&self) -> Option<String> {
        let e = self.error.as_ref()?;
        let what = match self.bad {
            0 => format!("cannot take the reopened logs: {e}"),
            1 => format!("skipped a bad set of reopened logs: {e}"),
            n => format!("skipped {n} bad sets of reopened logs, the last: {e}"),
        };
        let then = if self.applied {
            "switched to the last good set"
        } else {
            "the current files stay in use"
        };
        Some(format!("{what}; {then}"))
    }
}

/// Receives, without waiting, every set of log descriptors the parent sent, and
/// switches `logs` to the last good set. A bad set (descriptors and indices that
/// do not match, a truncated datagram) is skipped, its descriptors closed, and
/// the reading goes on: a later good set still applies. Only a socket error stops
/// it early.
pub(crate) fn take_passed_logs(channel: &OwnedFd, logs: &[Arc<LogFile>]) -> Passed {
    let mut passed = Passed::default();
    let mut last_good: Option<Vec<(usize, OwnedFd)>> = None;
    let mut indices = [0u8; 8];
    loop {
        let set = match crate::runtime::os::recv_fds(channel, &mut indices) {
            Ok(None) => break,
            Ok(Some(set)) => set,
            Err(e) => {
                passed.error = Some(e);
                break;
            }
        };
        passed.sets += 1;
        match set.and_then(|(n, fds)| pair_up(&indices[..n], fds, logs.len())) {
            Ok(pairs) => last_good = Some(pairs),
            Err(e) => {
                passed.bad += 1;
                passed.error = Some(e);
            }
        }
    }
    if let Some(pairs) = last_good {
        passed.applied = true;
        for (i, fd) in pairs {
            logs[i].replace(File::from(fd));
        }
    }
    passed
}

/// Each descriptor with the log it is for; an error if they do not match.
fn pair_up(indices: &[u8], fds: Vec<OwnedFd>, logs: usize) -> io::Result<Vec<(usize, OwnedFd)>> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    if indices.len() != fds.len() {
        return Err(bad(format!(
            "{} log indices with {} descriptors",
            indices.len(),
            fds.len()
        )));
    }
    if let Some(&i) = indices.iter().find(|&&i| usize::from(i) >= logs) {
        return Err(bad(format!("log index {i}, but {logs} logs")));
    }
    Ok(indices.iter().map(|&i| usize::from(i)).zip(fds).collect())
}

/// What the parent logs when it cannot create a new child's log channel. Without
/// a [`user`](crate::Prefork::user) the child is forked and reopens the log paths
/// itself on rotation; with one (`user`), it could not open root's files, so it is
/// not forked: the spawn counts as failed and is retried after the backoff.
pub(crate) fn no_channel_notice(e: &io::Error, user: Option<&str>) -> String {
    let head = format!("cannot create a log channel: {e}");
    match user {
        None => format!("{head}; the new child reopens the log paths itself on each rotation"),
        Some(u) => format!(
            "{head}; no child is forked without one: as {u} it could not reopen the logs \
             after a rotation (retried after the backoff)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::logs::tests::dir;

    /// A fresh directory with an error and an access log, the parent's view and a
    /// child's (their own LogFile objects, same files), and a log channel.
    #[allow(clippy::type_complexity)]
    fn two_views(
        tag: &str,
    ) -> (
        std::path::PathBuf,
        [Arc<LogFile>; 2],
        [Arc<LogFile>; 2],
        OwnedFd,
        OwnedFd,
    ) {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let d = dir().join(tag);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let open = || {
            [
                LogFile::open(d.join("error.log")).unwrap(),
                LogFile::open(d.join("access.log")).unwrap(),
            ]
        };
        let (parent, child) = (open(), open());
        let (p, c) = socketpair(
            AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .unwrap();
        (d, parent, child, p, c)
    }

    #[test]
    fn passed_descriptors_replace_the_files_in_their_order() {
        let (d, parent, child, p, c) = two_views("passed");
        let none = take_passed_logs(&c, &child);
        assert!(none.sets == 0 && !none.applied, "nothing waiting: {none:?}");
        assert!(none.problem().is_none());
        for name in ["error.log", "access.log"] {
            std::fs::rename(d.join(name), d.join(format!("{name}.1"))).unwrap();
        }
        for l in &parent {
            l.reopen().unwrap();
        }
        send_logs(&p, &parent).unwrap();
        send_logs(&p, &parent).unwrap();
        let two = take_passed_logs(&c, &child);
        assert!(two.sets == 2 && two.applied && two.bad == 0, "{two:?}");
        assert!(two.problem().is_none(), "{two:?}");
        child[0].write_line("e").unwrap();
        child[1].write_line("a").unwrap();
        let read = |n: &str| std::fs::read_to_string(d.join(n)).unwrap();
        assert_eq!(read("error.log"), "e\n");
        assert_eq!(read("access.log"), "a\n");
        assert_eq!(read("access.log.1"), "");
    }

    #[test]
    fn a_bad_set_is_skipped_and_a_later_good_one_applied() {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let (d, parent, child, p, c) = two_views("bad-set");
        for name in ["error.log", "access.log"] {
            std::fs::rename(d.join(name), d.join(format!("{name}.1"))).unwrap();
        }
        for l in &parent {
            l.reopen().unwrap();
        }
        let raw = |payload: &[u8], fds: &[std::os::fd::RawFd]| {
            sendmsg::<()>(
                p.as_raw_fd(),
                &[io::IoSlice::new(payload)],
                &[ControlMessage::ScmRights(fds)],
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .unwrap();
        };
        // Two indices, one descriptor; then more descriptors than a child takes.
        raw(&[0, 1], &[parent[0].raw_fd()]);
        raw(&[0, 1], &[parent[0].raw_fd(); 12]);
        send_logs(&p, &parent).unwrap();
        let passed = take_passed_logs(&c, &child);
        assert!(
            passed.sets == 3 && passed.bad == 2 && passed.applied,
            "{passed:?}"
        );
        let told = passed.problem().unwrap();
        assert!(
            told.starts_with("skipped 2 bad sets of reopened logs, the last: only 8 of")
                && told.ends_with("switched to the last good set"),
            "{told}"
        );
        child[0].write_line("e").unwrap();
        child[1].write_line("a").unwrap();
        let read = |n: &str| std::fs::read_to_string(d.join(n)).unwrap();
        assert_eq!(read("error.log"), "e\n", "the good set was applied");
        assert_eq!(read("access.log"), "a\n");
        assert_eq!(read("error.log.1"), "");
        // A bad set alone: nothing applied, and that is said.
        raw(&[0, 1], &[parent[0].raw_fd()]);
        let passed = take_passed_logs(&c, &child);
        assert!(
            passed.sets == 1 && passed.bad == 1 && !passed.applied,
            "{passed:?}"
        );
        let told = passed.problem().unwrap();
        assert_eq!(
            told,
            "skipped a bad set of reopened logs: 2 log indices with 1 descriptors; \
             the current files stay in use"
        );
    }

    #[test]
    fn a_child_without_a_channel_is_told_as_it_is() {
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        let root = no_channel_notice(&e, None);
        assert!(
            root.starts_with("cannot create a log channel: ")
                && root.contains("reopens the log paths itself on each rotation"),
            "{root}"
        );
        // Running as another user it may not open root's files: it is not forked.
        let nobody = no_channel_notice(&e, Some("nobody"));
        assert!(
            nobody.contains("no child is forked") && nobody.contains("as nobody"),
            "{nobody}"
        );
    }
}
