//! Log files that survive rotation: opened in append mode, reopened on SIGUSR1
//! (logrotate's convention) without losing a line, written one whole line per
//! system call so the parent and every child can share one file.
//!
//! A log that cannot be written (a full disk, a closed pipe, a bad descriptor)
//! never stops the daemon: its lines are counted and dropped, the failure is told
//! once, and when writing works again the number of lines lost is logged.
//!
//! Rotation: the parent reopens the paths on SIGUSR1 and passes the new
//! descriptors to every child over a Unix socket (`SCM_RIGHTS`) before it
//! forwards the signal; a child never opens a log path itself, so rotation works
//! whatever user the children run as.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A log file shared by the parent and the children (each process holds its own
/// descriptor after the fork). Lines are written whole, with `O_APPEND`, so lines of
/// different processes never interleave inside a line.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("preforkd-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let log = preforkd::LogFile::open(dir.join("access.log")).unwrap();
/// log.write_line("first").unwrap();
/// std::fs::rename(dir.join("access.log"), dir.join("access.log.1")).unwrap(); // logrotate
/// log.reopen().unwrap();
/// log.write_line("second").unwrap();
/// assert_eq!(std::fs::read_to_string(dir.join("access.log.1")).unwrap(), "first\n");
/// assert_eq!(std::fs::read_to_string(dir.join("access.log")).unwrap(), "second\n");
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
///
/// # Descriptors held by the children
///
/// Every child holds a writable descriptor of each log file: inherited at the
/// fork, and after each rotation passed by the parent, even when the children run
/// as another [`user`](crate::Prefork::user) and the files belong to root (the
/// children need no permission on the files or their directory). The files are
/// opened with `O_APPEND`: every write goes to the end, so a child cannot
/// overwrite lines already written, but `ftruncate(2)` works on such a descriptor:
/// a compromised child can empty or shorten a log it writes. Ship logs that must
/// be tamper-evident elsewhere as they are written.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<Sink>,
}

/// The open file, and whether the last write failed.
#[derive(Debug)]
struct Sink {
    file: File,
    /// A write failed: a full disk may have left part of a line (ours, or another
    /// process's: they share the file), so the next line written starts with a
    /// newline rather than be glued to a fragment. (At worst an empty line.)
    torn: bool,
}

fn open_append(path: &Path) -> io::Result<File> {
    use nix::fcntl::OFlag;
    let named =
        |e: io::Error| io::Error::new(e.kind(), format!("log file {}: {e}", path.display()));
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        // A log path that is a symlink could be aimed anywhere: refuse it. Opening
        // without blocking: a FIFO nobody reads is an error (ENXIO), not a hang.
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
        .map_err(named)?;
    // Writes block as usual (a FIFO with a reader, a slow device).
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_APPEND))
        .map_err(|e| named(e.into()))?;
    Ok(file)
}

impl LogFile {
    /// Opens (creating it 0640 if needed) the log file at `path` for appending.
    /// A path that is a symlink, a directory or not writable is an error naming it.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Arc<LogFile>> {
        let path = path.into();
        let file = open_append(&path)?;
        Ok(Arc::new(LogFile {
            path,
            file: Mutex::new(Sink { file, torn: false }),
        }))
    }

    /// The descriptor of the file in use now (to keep it open when daemonizing,
    /// to pass it to the children).
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        self.file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .file
            .as_raw_fd()
    }

    /// The path it was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again (after logrotate moved the file away) and switches to
    /// the new file. Lines written before go to the old file, lines after to the new:
    /// none is lost. If the new file cannot be opened, the old one stays in use and
    /// the error is returned. If this process's stdout or stderr is the old file
    /// (a daemon's are its error log), they are moved to the new one too.
    pub fn reopen(&self) -> io::Result<()> {
        let fresh = open_append(&self.path)?;
        self.replace(fresh);
        Ok(())
    }

    /// Switches to `fresh` (a descriptor of the new file, opened by this process
    /// or passed by the parent); stdout and stderr follow if they were the old
    /// file. The old file is closed.
    pub(crate) fn replace(&self, fresh: File) {
        let mut sink = self.file.lock().unwrap_or_else(|e| e.into_inner());
        follow_with_stdio(&sink.file, &fresh);
        *sink = Sink {
            file: fresh,
            torn: false,
        };
    }

    /// Appends `line` and a newline with one write.
    pub fn write_line(&self, line: &str) -> io::Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.write_whole(&buf)
    }

    fn write_whole(&self, bytes: &[u8]) -> io::Result<()> {
        let mut sink = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if sink.torn {
            // Only after a failure: end the fragment, then the line, in one write.
            let mut fixed = Vec::with_capacity(bytes.len() + 1);
            fixed.push(b'\n');
            fixed.extend_from_slice(bytes);
            return sink.write_all(&fixed);
        }
        sink.write_all(bytes)
    }

    /// A writer for a log formatter: it collects a record and writes it whole on
    /// each flush (slog's decorators flush once per record).
    pub fn writer(self: &Arc<Self>) -> LineWriter {
        LineWriter {
            log: Arc::clone(self),
            buf: Vec::new(),
        }
    }
}

impl Sink {
    /// `write_all`, remembering whether it failed.
    fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.file.write(bytes) {
                Ok(0) => {
                    self.torn = true;
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => {
                    bytes = &bytes[n..];
                    // Whatever was torn before is ended by this write's first byte.
                    self.torn = false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.torn = true;
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// If this process's stdout or stderr is `old` (the same file), points it at `new`.
fn follow_with_stdio(old: &File, new: &File) {
    let id = |fd: std::os::fd::BorrowedFd<'_>| {
        nix::sys::stat::fstat(fd)
            .ok()
            .map(|st| (st.st_dev, st.st_ino))
    };
    let Some(old_id) = id(old.as_fd()) else {
        return;
    };
    if id(io::stdout().as_fd()) == Some(old_id) {
        let _ = io::stdout().flush();
        let _ = nix::unistd::dup2_stdout(new);
    }
    if id(io::stderr().as_fd()) == Some(old_id) {
        let _ = nix::unistd::dup2_stderr(new);
    }
}

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
    let _ = io::stderr().write_all(format!("{what}\n").as_bytes());
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

/// Buffers what a formatter writes and hands it to its [`LogFile`] whole, on flush
/// (or when it holds a complete line and is dropped).
#[derive(Debug)]
pub struct LineWriter {
    log: Arc<LogFile>,
    buf: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self.log.write_whole(&self.buf);
        self.buf.clear();
        r
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// A slog logger writing plain text (or JSON) records to `log` (the error log),
/// each record whole with one write as soon as it is logged. A record that cannot
/// be written (full disk, ...) is dropped, never a panic: the first of a streak
/// is told on stderr ("error log PATH: No space left on device; dropping lines
/// ..."), and once writing works again a record says how many were dropped.
pub fn file_logger(log: &Arc<LogFile>, json: bool) -> slog::Logger {
    use slog::Drain;
    let what = format!("error log {}", log.path().display());
    if json {
        let drain = slog_json::Json::new(log.writer())
            .add_default_keys()
            // One record, one flush: written whole, at once.
            .set_flush(true)
            .build();
        let drain = std::sync::Mutex::new(Lossy::new(drain, what)).ignore_res();
        slog::Logger::root(drain, slog::o!("pid" => std::process::id()))
    } else {
        let decorator = slog_term::PlainSyncDecorator::new(log.writer());
        let drain = Lossy::new(slog_term::FullFormat::new(decorator).build(), what);
        let drain = slog::LevelFilter::new(drain, slog::Level::Info).ignore_res();
        slog::Logger::root(drain, slog::o!("pid" => std::process::id()))
    }
}

/// Formats one line of the combined log format (Apache's and nginx's default):
/// `host - - [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.1" 200 2326 "referer" "agent"`.
/// `unix_secs` is the time of the request in seconds since the Unix epoch (UTC).
///
/// ```
/// let line = preforkd::combined_log_line("127.0.0.1", 971_186_136, "GET / HTTP/1.1", 200, 6, None, Some("curl/8"));
/// assert_eq!(line, r#"127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.1" 200 6 "-" "curl/8""#);
/// ```
pub fn combined_log_line(
    host: &str,
    unix_secs: u64,
    request_line: &str,
    status: u16,
    bytes: usize,
    referer: Option<&str>,
    user_agent: Option<&str>,
) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d) = civil_from_days((unix_secs / 86_400) as i64);
    let s = unix_secs % 86_400;
    // Quotes and control characters from the client must not break the line.
    let clean = |v: &str| -> String {
        v.chars()
            .map(|c| if c == '"' || c.is_control() { '?' } else { c })
            .collect()
    };
    format!(
        "{host} - - [{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000] \"{}\" {status} {bytes} \"{}\" \"{}\"",
        MONTHS[(m - 1) as usize],
        s / 3600,
        s / 60 % 60,
        s % 60,
        clean(request_line),
        referer.map_or_else(|| "-".into(), clean),
        user_agent.map_or_else(|| "-".into(), clean),
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "preforkd-logs-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_416), (2025, 11, 24));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn client_text_cannot_break_a_line() {
        let l = combined_log_line("h", 0, "GET /\"x\n HTTP/1.1", 404, 0, Some("r\""), None);
        assert_eq!(
            l,
            r#"h - - [01/Jan/1970:00:00:00 +0000] "GET /?x? HTTP/1.1" 404 0 "r?" "-""#
        );
    }

    #[test]
    fn a_symlink_path_is_refused_and_its_target_untouched() {
        let d = dir();
        let target = d.join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = d.join("link.log");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = LogFile::open(&link).unwrap_err().to_string();
        assert!(e.contains("link.log"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }

    #[test]
    fn a_failed_reopen_keeps_the_old_file() {
        let d = dir();
        let sub = d.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        let log = LogFile::open(sub.join("e.log")).unwrap();
        std::fs::rename(sub.join("e.log"), d.join("moved.log")).unwrap();
        std::fs::remove_dir(&sub).unwrap();
        assert!(log.reopen().is_err());
        log.write_line("still here").unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("moved.log")).unwrap(),
            "still here\n"
        );
    }

    #[test]
    fn a_log_that_cannot_be_written_never_panics_and_counts_its_losses() {
        // /dev/full fails every write with ENOSPC.
        let log = LogFile::open("/dev/full").unwrap();
        for json in [false, true] {
            let l = file_logger(&log, json);
            for n in 0..3 {
                slog::error!(l, "lost"; "n" => n);
            }
        }
        assert!(log.write_line("x").is_err());
        let losses = Losses::default();
        assert!(losses.lost(), "the first loss is told");
        assert!(!losses.lost(), "the second is not");
        assert_eq!(losses.pending(), 2);
        assert_eq!(
            losses.written(),
            Some(2),
            "the end of the streak says how many"
        );
        assert_eq!(losses.written(), None);
        assert!(losses.lost(), "a new streak is told again");
    }

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

    #[test]
    fn a_logger_writes_whole_records() {
        let d = dir();
        let log = LogFile::open(d.join("json.log")).unwrap();
        let l = file_logger(&log, true);
        slog::info!(l, "hello"; "n" => 1);
        drop(l);
        let text = std::fs::read_to_string(d.join("json.log")).unwrap();
        assert!(
            text.starts_with('{') && text.contains("\"msg\":\"hello\""),
            "{text}"
        );
        assert!(text.ends_with('\n'));
    }
}
