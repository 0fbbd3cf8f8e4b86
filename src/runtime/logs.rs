//! Log files that survive rotation: opened in append mode, reopened on SIGUSR1
//! (logrotate's convention) without losing a line, written one whole line per
//! system call so the parent and every child can share one file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
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
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        // A log path that is a symlink could be aimed anywhere: refuse it.
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("log file {}: {e}", path.display())))
}

impl LogFile {
    /// Opens (creating it 0640 if needed) the log file at `path` for appending.
    /// A path that is a symlink, a directory or not writable is an error naming it.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Arc<LogFile>> {
        let path = path.into();
        let file = open_append(&path)?;
        Ok(Arc::new(LogFile {
            path,
            file: Mutex::new(file),
        }))
    }

    /// The descriptor of the file in use now (to keep it open when daemonizing).
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_raw_fd()
    }

    /// The path it was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again (after logrotate moved the file away) and switches to
    /// the new file. Lines written before go to the old file, lines after to the new:
    /// none is lost. If the new file cannot be opened, the old one stays in use and
    /// the error is returned.
    pub fn reopen(&self) -> io::Result<()> {
        let fresh = open_append(&self.path)?;
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        *f = fresh;
        Ok(())
    }

    /// Appends `line` and a newline with one write.
    pub fn write_line(&self, line: &str) -> io::Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.write_whole(&buf)
    }

    fn write_whole(&self, bytes: &[u8]) -> io::Result<()> {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(bytes)
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

/// A slog logger writing plain text (or JSON) records to `log`.
pub fn file_logger(log: &Arc<LogFile>, json: bool) -> slog::Logger {
    use slog::Drain;
    if json {
        let drain = slog_json::Json::new(log.writer())
            .add_default_keys()
            .build();
        let drain = std::sync::Mutex::new(drain).map(slog::Fuse);
        slog::Logger::root(drain, slog::o!("pid" => std::process::id()))
    } else {
        let decorator = slog_term::PlainSyncDecorator::new(log.writer());
        let drain = slog_term::FullFormat::new(decorator).build();
        let drain = slog::LevelFilter::new(drain, slog::Level::Info).fuse();
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
