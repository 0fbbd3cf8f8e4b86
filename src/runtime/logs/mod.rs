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

// `lossy.rs`: a log that cannot be written costs lines, never the daemon;
// `passing.rs`: the reopened descriptors passed to the children; `access.rs`: the
// access log's line format. Here: the files themselves, and the error logger.
mod access;
mod lossy;
mod passing;
mod stderr;

pub use access::combined_log_line;
pub(crate) use lossy::{Losses, Lossy};
pub(crate) use passing::{no_channel_notice, send_logs, take_passed_logs};
pub(crate) use stderr::ParentStderr;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A log file shared by the parent and the children (each process holds its own
/// descriptor after the fork). Lines are written whole, with `O_APPEND`, so lines of
/// different processes never interleave inside a line.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("preforkd-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let log = preforkd::runtime::LogFile::open(dir.join("access.log")).unwrap();
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
    /// A write failed: a full disk may have left part of a line, ours or another
    /// process's (they share the file), so the next line written, by whichever
    /// process, starts with a newline rather than be glued to the fragment (at
    /// worst an empty line). Shared with the children forked after the open.
    torn: &'static AtomicBool,
}

/// The open file, and whether the last write (of any process) failed.
#[derive(Debug)]
struct Sink {
    file: File,
    torn: &'static AtomicBool,
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
        let torn = crate::runtime::os::shared_flag();
        Ok(Arc::new(LogFile {
            path,
            file: Mutex::new(Sink { file, torn }),
            torn,
        }))
    }

    /// A log file a previous image of this process had open at `path` (an
    /// in-place upgrade hands it over): lines go on to the same file, rotated or
    /// not, until the next reopen.
    pub(crate) fn adopt(path: PathBuf, file: File) -> Arc<LogFile> {
        let torn = crate::runtime::os::shared_flag();
        Arc::new(LogFile {
            path,
            file: Mutex::new(Sink { file, torn }),
            torn,
        })
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
        // A fresh file holds no fragment.
        self.torn.store(false, Ordering::Relaxed);
        *sink = Sink {
            file: fresh,
            torn: self.torn,
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
        if sink.torn.load(Ordering::Acquire) {
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
                    self.torn.store(true, Ordering::Release);
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => {
                    bytes = &bytes[n..];
                    // Whatever was torn before is ended by this write's first byte.
                    self.torn.store(false, Ordering::Release);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.torn.store(true, Ordering::Release);
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

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn dir() -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "preforkd-logs-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        p
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
