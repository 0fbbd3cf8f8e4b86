//! A running pool seen from any process: the scoreboard file read and checked,
//! as `preforkd status` shows it.
//!
//! [`Status::read`] takes a snapshot of a scoreboard (the `scoreboard_path`
//! file, or the parent's own descriptor of it found with [`find_scoreboard`],
//! which also works for a scoreboard kept in a memory file). Nothing is mapped
//! or locked: the file is read once, and a child writing its slot meanwhile
//! shows one state or the other. A file that is not a scoreboard, is truncated,
//! or holds values no preforkd writes is an error naming the problem.
//!
//! ```no_run
//! use preforkd::runtime::status::{find_scoreboard, Status};
//!
//! let path = find_scoreboard(1234)?;
//! let status = Status::read(&path)?;
//! println!("{}", status.table());
//! println!("{}", serde_json::to_string(&status).unwrap());
//! # Ok::<(), preforkd::runtime::status::StatusError>(())
//! ```
//!
//! # The JSON schema (version 1)
//!
//! `preforkd status --json` prints one object:
//!
//! | key | value |
//! |---|---|
//! | `schema` | `1`; a new version is a change that breaks a reader |
//! | `scoreboard` | the file read |
//! | `parent_pid`, `parent_running` | the parent recorded in the header; whether it still runs |
//! | `generation` | the pool's current generation |
//! | `stopping` | a graceful shutdown is under way |
//! | `slots` | the slot count (`max_children`) |
//! | `map` | one character per slot: `_` idle, `S` starting, `W` busy, `R` retiring, `.` empty |
//! | `counts` | `starting`, `idle`, `busy`, `retiring`, `empty` |
//! | `counters` | `images`, `upgrades_abandoned`, `reopens`, `reopens_failed`, `nudges`, `nudges_ignored`: each wraps at 65,536 |
//! | `children` | one object per occupied slot, below |
//!
//! A child: `slot`, `pid` (0 while the fork is under way), `generation`,
//! `state` (`starting`, `idle`, `busy`, `retiring`), `requests` (served),
//! `request_age_ms` (the current request's age, `null` unless busy),
//! `heartbeat_age_ms` (since its last sign of life), `memory_bytes` (its
//! resident set, `null` if it cannot be read: gone, or not permitted). Keys may
//! be added within a version.

use super::memory::rss_bytes;
use super::scoreboard::{coarse_now_ns, read_file, Unreadable};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The version of the JSON document [`Status`] serializes to.
pub const SCHEMA: u32 = 1;

const MAGIC: &[u8; 8] = b"PREFORKD";
const LAYOUT: u32 = 1;
const RECORD: usize = 64;

/// Why a scoreboard could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// The file could not be opened or read.
    #[error("scoreboard {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is no scoreboard, or not one this version reads.
    #[error("scoreboard {path}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The process holds no scoreboard (or cannot be looked at).
    #[error("pid {pid}: {problem}")]
    NotFound {
        /// The process looked at.
        pid: i32,
        /// Why nothing was found.
        problem: String,
    },
}

/// What a child says it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChildState {
    /// Forked, not yet ready.
    Starting,
    /// Waiting for a connection.
    Idle,
    /// Serving a request.
    Busy,
    /// On its way out.
    Retiring,
}

impl ChildState {
    /// Its character in the slot map (mod_status's).
    pub fn symbol(self) -> char {
        match self {
            ChildState::Starting => 'S',
            ChildState::Idle => '_',
            ChildState::Busy => 'W',
            ChildState::Retiring => 'R',
        }
    }

    fn name(self) -> &'static str {
        match self {
            ChildState::Starting => "starting",
            ChildState::Idle => "idle",
            ChildState::Busy => "busy",
            ChildState::Retiring => "retiring",
        }
    }
}

/// One occupied slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildStatus {
    /// The slot's index.
    pub slot: usize,
    /// The child's pid (0 while its fork is under way).
    pub pid: i32,
    /// The generation it was forked for.
    pub generation: u64,
    /// What it says it is doing.
    pub state: ChildState,
    /// Requests it has served.
    pub requests: u64,
    /// How long its current request has run, in milliseconds, if busy.
    pub request_age_ms: Option<u64>,
    /// Milliseconds since its last sign of life.
    pub heartbeat_age_ms: Option<u64>,
    /// Its resident set size in bytes, if it could be read.
    pub memory_bytes: Option<u64>,
}

/// How many slots are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    /// Starting children.
    pub starting: usize,
    /// Idle children.
    pub idle: usize,
    /// Busy children.
    pub busy: usize,
    /// Retiring children.
    pub retiring: usize,
    /// Empty slots.
    pub empty: usize,
}

/// The header's counters, for a controller waiting for a signal's effect. Each
/// wraps at 65,536: only a change matters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Images that took over the pool in place (an upgrade, or its way back).
    pub images: u16,
    /// Upgrades abandoned (the trial failed, the exec failed, or the new image
    /// came back).
    pub upgrades_abandoned: u16,
    /// Reopenings of the logs that all succeeded.
    pub reopens: u16,
    /// Reopenings of which at least one log failed.
    pub reopens_failed: u16,
    /// TTIN/TTOU nudges handed to the scaling policy.
    pub nudges: u16,
    /// TTIN/TTOU nudges ignored (the pool was not serving).
    pub nudges_ignored: u16,
}

/// A snapshot of a pool (see the [module docs](self) for its JSON form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// [`SCHEMA`].
    pub schema: u32,
    /// The file read.
    pub scoreboard: PathBuf,
    /// The parent's pid, from the header.
    pub parent_pid: i32,
    /// Whether that pid still runs.
    pub parent_running: bool,
    /// The pool's generation.
    pub generation: u64,
    /// A graceful shutdown is under way.
    pub stopping: bool,
    /// The number of slots.
    pub slots: usize,
    /// One character per slot (see [`ChildState::symbol`]; `.` empty).
    pub map: String,
    /// Slots by state.
    pub counts: StateCounts,
    /// The header's counters.
    pub counters: Counters,
    /// The occupied slots, in slot order.
    pub children: Vec<ChildStatus>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(w)
}

fn halves(w: u32) -> (u16, u16) {
    (w as u16, (w >> 16) as u16)
}

impl Status {
    /// Reads and checks the scoreboard at `path`.
    ///
    /// # Errors
    /// [`StatusError::Io`] if it cannot be opened or read; [`StatusError::Invalid`]
    /// if it is not a regular file, not a preforkd scoreboard, of another layout,
    /// truncated, or holds a value no preforkd writes.
    pub fn read(path: impl AsRef<Path>) -> Result<Status, StatusError> {
        let path = path.as_ref();
        let (bytes, file) = read_board(path)?;
        let mut s = Status::parse(path, &bytes, coarse_now_ns())?;
        // Alive, and (where it can be looked at) holding this very file: a pid
        // reused since by another process is no parent.
        s.parent_running = alive(s.parent_pid) && holds(s.parent_pid, &file) != Some(false);
        for c in &mut s.children {
            c.memory_bytes = (c.pid > 0).then(|| rss_bytes(c.pid)).flatten();
        }
        Ok(s)
    }

    /// Checks and decodes the bytes of a scoreboard file, with ages measured at
    /// `now_ns` (`CLOCK_MONOTONIC` nanoseconds); nothing is looked up (the
    /// parent is taken as gone, memory as unknown).
    pub(crate) fn parse(path: &Path, b: &[u8], now_ns: u64) -> Result<Status, StatusError> {
        let bad = |problem: String| StatusError::Invalid {
            path: path.to_path_buf(),
            problem,
        };
        if b.len() < RECORD {
            return Err(bad(format!(
                "truncated: {} bytes, shorter than the {RECORD}-byte header",
                b.len()
            )));
        }
        if &b[..8] != MAGIC {
            return Err(bad(
                "not a preforkd scoreboard (it does not start with \"PREFORKD\")".into(),
            ));
        }
        let layout = u32_at(b, 8);
        if layout != LAYOUT {
            return Err(bad(format!(
                "layout version {layout}; this preforkd reads version {LAYOUT}"
            )));
        }
        let slots = u32_at(b, 12) as usize;
        if slots == 0 || slots > crate::MAX_CHILDREN_LIMIT {
            return Err(bad(format!(
                "the header says {slots} slots (1 to {} expected)",
                crate::MAX_CHILDREN_LIMIT
            )));
        }
        let want = RECORD * (slots + 1);
        if b.len() != want {
            return Err(bad(format!(
                "{} bytes where {slots} slots take {want}: truncated or not preforkd's",
                b.len()
            )));
        }
        let parent_pid = u32_at(b, 44) as i32;
        if parent_pid <= 0 {
            return Err(bad(format!(
                "the header names pid {parent_pid}, which no preforkd writes"
            )));
        }
        let (images, upgrades_abandoned) = halves(u32_at(b, 52));
        let (reopens, reopens_failed) = halves(u32_at(b, 56));
        let (nudges, nudges_ignored) = halves(u32_at(b, 60));
        let mut counts = StateCounts::default();
        let mut map = String::with_capacity(slots);
        let mut children = Vec::new();
        let age = |ns: u64| (ns != 0).then(|| now_ns.saturating_sub(ns) / 1_000_000);
        for slot in 0..slots {
            let r = &b[RECORD * (slot + 1)..RECORD * (slot + 2)];
            let state = match r[4] {
                0 => None,
                1 => Some(ChildState::Starting),
                2 => Some(ChildState::Idle),
                3 => Some(ChildState::Busy),
                4 => Some(ChildState::Retiring),
                other => {
                    return Err(bad(format!(
                        "slot {slot} has state {other}, which no preforkd writes"
                    )))
                }
            };
            let Some(state) = state else {
                counts.empty += 1;
                map.push('.');
                continue;
            };
            let pid = u32_at(r, 0) as i32;
            if pid < 0 {
                return Err(bad(format!("slot {slot} holds pid {pid}")));
            }
            match state {
                ChildState::Starting => counts.starting += 1,
                ChildState::Idle => counts.idle += 1,
                ChildState::Busy => counts.busy += 1,
                ChildState::Retiring => counts.retiring += 1,
            }
            map.push(state.symbol());
            children.push(ChildStatus {
                slot,
                pid,
                generation: u64_at(r, 8),
                state,
                requests: u64_at(r, 16),
                request_age_ms: if state == ChildState::Busy {
                    age(u64_at(r, 24))
                } else {
                    None
                },
                heartbeat_age_ms: age(u64_at(r, 32)),
                memory_bytes: None,
            });
        }
        Ok(Status {
            schema: SCHEMA,
            scoreboard: path.to_path_buf(),
            parent_pid,
            parent_running: false,
            generation: u64_at(b, 16),
            stopping: u32_at(b, 32) != 0,
            slots,
            map,
            counts,
            counters: Counters {
                images,
                upgrades_abandoned,
                reopens,
                reopens_failed,
                nudges,
                nudges_ignored,
            },
            children,
        })
    }

    /// The children alive and not on their way out (starting, idle or busy).
    pub fn live(&self) -> usize {
        self.counts.starting + self.counts.idle + self.counts.busy
    }

    /// The table `preforkd status` prints: a header, the slot map, the counts,
    /// and one line per child.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let running = if self.parent_running {
            ""
        } else {
            " (NOT RUNNING: the scoreboard is stale)"
        };
        let _ = writeln!(
            t,
            "preforkd pid {}{running}, generation {}, {} slots{}",
            self.parent_pid,
            self.generation,
            self.slots,
            if self.stopping { ", stopping" } else { "" }
        );
        let c = &self.counts;
        let _ = writeln!(
            t,
            "{} children: {} starting, {} idle, {} busy, {} retiring; {} empty slots",
            self.children.len(),
            c.starting,
            c.idle,
            c.busy,
            c.retiring,
            c.empty
        );
        let _ = writeln!(
            t,
            "\nScoreboard key: \"_\" idle, \"S\" starting, \"W\" busy, \"R\" retiring, \".\" empty"
        );
        // 64 slots a line, as mod_status wraps its map.
        for line in self.map.as_bytes().chunks(64) {
            let _ = writeln!(t, "{}", String::from_utf8_lossy(line));
        }
        if self.children.is_empty() {
            return t;
        }
        let _ = writeln!(
            t,
            "\n{:>5} {:>8} {:>5} {:<9} {:>9} {:>11} {:>10}",
            "slot", "pid", "gen", "state", "requests", "request age", "memory"
        );
        for ch in &self.children {
            let req_age = ch
                .request_age_ms
                .map_or("-".to_string(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
            let mem = ch.memory_bytes.map_or("-".to_string(), human_bytes);
            let _ = writeln!(
                t,
                "{:>5} {:>8} {:>5} {:<9} {:>9} {:>11} {:>10}",
                ch.slot,
                ch.pid,
                ch.generation,
                ch.state.name(),
                ch.requests,
                req_age,
                mem
            );
        }
        t
    }
}

fn human_bytes(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b >= 1024 * 1024 * 1024 {
        format!("{:.1} GiB", b as f64 / (MIB * 1024.0))
    } else {
        format!("{:.1} MiB", b as f64 / MIB)
    }
}

fn alive(pid: i32) -> bool {
    // EPERM: it exists, owned by someone else.
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Ok(()) | Err(nix::errno::Errno::EPERM)
    )
}

/// The whole file (see [`read_file`]), its problems in this module's terms.
fn read_board(path: &Path) -> Result<(Vec<u8>, std::fs::Metadata), StatusError> {
    read_file(path).map_err(|e| match e {
        Unreadable::Io(source) => StatusError::Io {
            path: path.to_path_buf(),
            source,
        },
        Unreadable::NotRegular => StatusError::Invalid {
            path: path.to_path_buf(),
            problem: "not a regular file".into(),
        },
    })
}

/// Whether process `pid` has the file `file` open (`None`: its descriptors
/// cannot be listed, not permitted).
fn holds(pid: i32, file: &std::fs::Metadata) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(entries.flatten().any(|e| {
        std::fs::metadata(e.path()).is_ok_and(|m| m.dev() == file.dev() && m.ino() == file.ino())
    }))
}

/// The scoreboard the running parent `pid` holds: its `scoreboard_path` file or
/// its memory file, as a `/proc/PID/fd/N` path that [`Status::read`] opens (which
/// needs the right to look at the process: root, or its user).
///
/// # Errors
/// [`StatusError::NotFound`] if the process does not exist, cannot be looked at,
/// or holds no scoreboard whose header names it.
pub fn find_scoreboard(pid: i32) -> Result<PathBuf, StatusError> {
    let not_found = |problem: String| StatusError::NotFound { pid, problem };
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        not_found(match e.kind() {
            std::io::ErrorKind::NotFound => "no such process".into(),
            std::io::ErrorKind::PermissionDenied => {
                format!("cannot look at its descriptors ({e}): run as its user or root")
            }
            _ => format!("cannot list {}: {e}", dir.display()),
        })
    })?;
    for entry in entries.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let t = target.as_os_str().as_encoded_bytes();
        // A file (the scoreboard_path) or the memory file; never a socket, a
        // pipe or a device (opening a device could have effects).
        if !(t.starts_with(b"/memfd:preforkd-scoreboard") || t.starts_with(b"/")) {
            continue;
        }
        if t.starts_with(b"/dev/") {
            continue;
        }
        let path = entry.path();
        let mut head = [0u8; RECORD];
        let holds = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.is_file()))
            .and_then(|mut f| f.read_exact(&mut head).ok())
            .is_some_and(|()| &head[..8] == MAGIC && u32_at(&head, 44) as i32 == pid);
        if holds {
            return Ok(path);
        }
    }
    Err(not_found(
        "holds no preforkd scoreboard (is it a preforkd parent?)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(slots: u32) -> Vec<u8> {
        let mut b = vec![0u8; RECORD * (slots as usize + 1)];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&1u32.to_ne_bytes());
        b[12..16].copy_from_slice(&slots.to_ne_bytes());
        b[16..24].copy_from_slice(&7u64.to_ne_bytes());
        b[44..48].copy_from_slice(&(std::process::id() as i32).to_ne_bytes());
        b
    }

    fn set_slot(b: &mut [u8], slot: usize, pid: i32, state: u8, requests: u64, start: u64) {
        let r = &mut b[RECORD * (slot + 1)..RECORD * (slot + 2)];
        r[0..4].copy_from_slice(&pid.to_ne_bytes());
        r[4] = state;
        r[8..16].copy_from_slice(&7u64.to_ne_bytes());
        r[16..24].copy_from_slice(&requests.to_ne_bytes());
        r[24..32].copy_from_slice(&start.to_ne_bytes());
        r[32..40].copy_from_slice(&start.to_ne_bytes());
    }

    fn parse(b: &[u8]) -> Result<Status, StatusError> {
        Status::parse(Path::new("/x"), b, 10_000_000_000)
    }

    #[test]
    fn a_board_reads_into_map_counts_and_children() {
        let mut b = board(5);
        set_slot(&mut b, 0, 100, 2, 3, 1_000_000_000);
        set_slot(&mut b, 2, 101, 3, 9, 7_500_000_000);
        set_slot(&mut b, 3, 0, 1, 0, 0);
        set_slot(&mut b, 4, 103, 4, 1, 0);
        b[52..56].copy_from_slice(&(2u32 | (1 << 16)).to_ne_bytes());
        let s = parse(&b).unwrap();
        assert_eq!(s.map, "_.WSR");
        assert_eq!(
            s.counts,
            StateCounts {
                starting: 1,
                idle: 1,
                busy: 1,
                retiring: 1,
                empty: 1
            }
        );
        assert_eq!(s.live(), 3);
        assert_eq!(s.generation, 7);
        assert_eq!((s.counters.images, s.counters.upgrades_abandoned), (2, 1));
        let busy = &s.children[1];
        assert_eq!((busy.slot, busy.pid, busy.requests), (2, 101, 9));
        assert_eq!(busy.request_age_ms, Some(2_500));
        assert_eq!(s.children[0].request_age_ms, None, "idle: no request");
        let table = s.table();
        assert!(table.contains("_.WSR"), "{table}");
        assert!(table.contains("1 busy"), "{table}");
        let json: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(json["schema"], 1);
        assert_eq!(json["children"][1]["state"], "busy");
        assert_eq!(json["counts"]["empty"], 1);
    }

    #[test]
    fn hostile_files_are_errors_naming_the_problem() {
        let err = |b: &[u8]| parse(b).unwrap_err().to_string();
        assert!(err(b"PREF").contains("truncated: 4 bytes"));
        let mut foreign = board(2);
        foreign[..8].copy_from_slice(b"NOTOURS!");
        assert!(err(&foreign).contains("not a preforkd scoreboard"));
        let mut layout = board(2);
        layout[8] = 9;
        assert!(err(&layout).contains("layout version 9"));
        let mut cut = board(4);
        cut.truncate(RECORD * 3);
        assert!(err(&cut).contains("192 bytes where 4 slots take 320"));
        let mut slots = board(2);
        slots[12..16].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(err(&slots).contains("4294967295 slots"));
        let mut zero = board(2);
        zero[12..16].copy_from_slice(&0u32.to_ne_bytes());
        assert!(err(&zero).contains("0 slots"));
        let mut state = board(2);
        set_slot(&mut state, 1, 5, 17, 0, 0);
        assert!(err(&state).contains("slot 1 has state 17"));
        let mut pid = board(2);
        set_slot(&mut pid, 0, -4, 2, 0, 0);
        assert!(err(&pid).contains("slot 0 holds pid -4"));
        let mut parent = board(2);
        parent[44..48].copy_from_slice(&(-5i32).to_ne_bytes());
        assert!(err(&parent).contains("the header names pid -5"));
    }

    #[test]
    fn a_dead_parent_is_told() {
        let dir = std::env::temp_dir().join(format!("preforkd-status-dead-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("board");
        let mut b = board(1);
        // Above pid_max: no such process.
        b[44..48].copy_from_slice(&(i32::MAX).to_ne_bytes());
        std::fs::write(&f, &b).unwrap();
        let s = Status::read(&f).unwrap();
        assert!(!s.parent_running);
        assert!(s.table().contains("NOT RUNNING"));
        // This process is alive, but running only while it holds the file.
        b[44..48].copy_from_slice(&(std::process::id() as i32).to_ne_bytes());
        std::fs::write(&f, &b).unwrap();
        assert!(!Status::read(&f).unwrap().parent_running, "a pid reused");
        let held = std::fs::File::open(&f).unwrap();
        assert!(Status::read(&f).unwrap().parent_running);
        drop(held);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_refuses_what_is_not_a_regular_file() {
        let dir = std::env::temp_dir().join(format!("preforkd-status-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = Status::read(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = Status::read(&dir).unwrap_err().to_string();
        assert!(
            e.contains("not a regular file") || e.contains("directory"),
            "{e}"
        );
        let e = Status::read(dir.join("absent")).unwrap_err().to_string();
        assert!(e.contains("No such file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_process_without_a_scoreboard_is_told() {
        // Not this process: other tests here create scoreboards naming it.
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let e = find_scoreboard(sleeper.id() as i32);
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        let e = e.unwrap_err().to_string();
        assert!(e.contains("holds no preforkd scoreboard"), "{e}");
        let e = find_scoreboard(i32::MAX).unwrap_err().to_string();
        assert!(e.contains("no such process"), "{e}");
    }
}
