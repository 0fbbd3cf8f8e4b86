//! The metrics endpoint ([`Prefork::metrics`](super::Prefork::metrics)): a
//! thread of the parent serving the Prometheus text exposition, OpenMetrics and
//! JSON over HTTP (see `docs/metrics.md`).
//!
//! The machine's loop never waits for it: after each turn the loop publishes
//! the machine's figures ([`Figures`]: counts, state, [`Totals`](crate::Totals))
//! into a seqlock of atomics, a handful of stores, and goes on; the thread reads
//! them without a lock, retrying while a write is under way. What the children
//! do it reads from the scoreboard itself, and the listeners' queues and the
//! parent's own figures from the kernel. It never forks, and a client that
//! misbehaves costs only its own connection (see [`http`]).

mod http;
mod render;

use super::os;
use super::scoreboard::Board;
use super::signals::PARENT_SIGNALS;
use crate::{ExitCause, Machine, State};
use render::{Format, Process, Queue, Sample};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;

/// The machine's figures a scrape shows, as the loop published them last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Figures {
    pub(crate) state: State,
    pub(crate) generation: u64,
    pub(crate) crash_streak: u64,
    pub(crate) starting: u64,
    pub(crate) idle: u64,
    pub(crate) busy: u64,
    pub(crate) retiring: u64,
    pub(crate) max_children: u64,
    pub(crate) spawns: u64,
    pub(crate) spawn_failures: u64,
    pub(crate) exited_requests: u64,
    pub(crate) reloads: u64,
    pub(crate) upgrades_begun: u64,
    pub(crate) upgrades_done: u64,
    pub(crate) upgrades_abandoned: u64,
    pub(crate) upgrades_returned: u64,
    pub(crate) scale_ups: u64,
    pub(crate) scale_downs: u64,
    pub(crate) scaled_up_children: u64,
    pub(crate) scaled_down_children: u64,
    /// By [`ExitCause::ALL`]'s order.
    pub(crate) exits: [u64; 7],
}

impl Default for Figures {
    fn default() -> Figures {
        Figures::from_words(&[0; WORDS])
    }
}

/// How many words [`Figures`] takes.
const WORDS: usize = 27;

impl Figures {
    pub(crate) fn of(m: &Machine) -> Figures {
        let c = m.counts();
        let t = m.totals();
        let n = |x: usize| x as u64;
        Figures {
            state: m.state(),
            generation: m.generation(),
            crash_streak: u64::from(m.crash_streak()),
            starting: n(c.starting),
            idle: n(c.idle),
            busy: n(c.busy),
            retiring: n(c.retiring),
            max_children: n(m.options().max_children),
            spawns: t.spawns,
            spawn_failures: t.spawn_failures,
            exited_requests: t.exited_requests,
            reloads: t.reloads,
            upgrades_begun: t.upgrades_begun,
            upgrades_done: t.upgrades_done,
            upgrades_abandoned: t.upgrades_abandoned,
            upgrades_returned: t.upgrades_returned,
            scale_ups: t.scale_ups,
            scale_downs: t.scale_downs,
            scaled_up_children: t.scaled_up_children,
            scaled_down_children: t.scaled_down_children,
            exits: ExitCause::ALL.map(|c| t.exits.get(c)),
        }
    }

    fn to_words(self) -> [u64; WORDS] {
        let state = State::ALL
            .iter()
            .position(|&s| s == self.state)
            .unwrap_or(0) as u64;
        let e = self.exits;
        [
            state,
            self.generation,
            self.crash_streak,
            self.starting,
            self.idle,
            self.busy,
            self.retiring,
            self.max_children,
            self.spawns,
            self.spawn_failures,
            self.exited_requests,
            self.reloads,
            self.upgrades_begun,
            self.upgrades_done,
            self.upgrades_abandoned,
            self.upgrades_returned,
            self.scale_ups,
            self.scale_downs,
            self.scaled_up_children,
            self.scaled_down_children,
            e[0],
            e[1],
            e[2],
            e[3],
            e[4],
            e[5],
            e[6],
        ]
    }

    fn from_words(w: &[u64; WORDS]) -> Figures {
        Figures {
            state: State::ALL
                .get(w[0] as usize)
                .copied()
                .unwrap_or(State::Init),
            generation: w[1],
            crash_streak: w[2],
            starting: w[3],
            idle: w[4],
            busy: w[5],
            retiring: w[6],
            max_children: w[7],
            spawns: w[8],
            spawn_failures: w[9],
            exited_requests: w[10],
            reloads: w[11],
            upgrades_begun: w[12],
            upgrades_done: w[13],
            upgrades_abandoned: w[14],
            upgrades_returned: w[15],
            scale_ups: w[16],
            scale_downs: w[17],
            scaled_up_children: w[18],
            scaled_down_children: w[19],
            exits: [w[20], w[21], w[22], w[23], w[24], w[25], w[26]],
        }
    }
}

/// The figures in atomics, written by the loop alone and read by the thread: a
/// seqlock (odd while a write is under way), so the reader sees one whole
/// publication and the writer never waits.
struct Published {
    seq: AtomicU64,
    words: [AtomicU64; WORDS],
}

impl Published {
    fn new() -> Published {
        Published {
            seq: AtomicU64::new(0),
            words: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The one writer's publication.
    fn write(&self, w: &[u64; WORDS]) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for (a, &v) in self.words.iter().zip(w) {
            a.store(v, Ordering::Relaxed);
        }
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// The last whole publication; `None` if a write was under way at each of
    /// many tries (a writer that never pauses: the caller shows what it read
    /// before).
    fn read(&self) -> Option<[u64; WORDS]> {
        let mut w = [0; WORDS];
        for _ in 0..1000 {
            let before = self.seq.load(Ordering::Acquire);
            for (v, a) in w.iter_mut().zip(&self.words) {
                *v = a.load(Ordering::Relaxed);
            }
            fence(Ordering::Acquire);
            let after = self.seq.load(Ordering::Relaxed);
            if before == after && before % 2 == 0 {
                return Some(w);
            }
            std::hint::spin_loop();
        }
        None
    }
}

/// The loop's end of a running endpoint.
pub(super) struct Endpoint {
    /// The listener's descriptor (the thread holds it for the process's life),
    /// for an in-place upgrade to hand over.
    pub(super) fd: RawFd,
    published: Arc<Published>,
    pause: Arc<http::Pause>,
    /// What was published last: unchanged figures are not written again.
    last: [u64; WORDS],
}

/// How long an exec waits for the scrapes under way to be answered (one takes
/// well under a millisecond; a client slower than this loses its connection).
pub(super) const QUIESCE_WITHIN: std::time::Duration = std::time::Duration::from_millis(250);

impl Endpoint {
    /// Starts the thread serving `listener`, with the parent's signals blocked
    /// in it (they are the main thread's, and stay pending across a re-exec);
    /// returns the address it serves on.
    pub(super) fn start(
        listener: TcpListener,
        board: Board,
        logger: slog::Logger,
    ) -> std::io::Result<(Endpoint, std::net::SocketAddr)> {
        let addr = listener.local_addr()?;
        let fd = listener.as_raw_fd();
        let published = Arc::new(Published::new());
        let shared = Arc::clone(&published);
        let pause = Arc::new(http::Pause::new()?);
        let theirs = Arc::clone(&pause);
        os::hold_signals(&PARENT_SIGNALS)?;
        let started = std::thread::Builder::new()
            .name("preforkd-metrics".into())
            .spawn(move || run(listener, board, shared, theirs, logger));
        let released = os::release_signals(&PARENT_SIGNALS);
        started?;
        released?;
        Ok((
            Endpoint {
                fd,
                published,
                pause,
                last: [u64::MAX; WORDS],
            },
            addr,
        ))
    }

    /// Before an exec: stops taking scrapes (they wait in the queue for the next
    /// image) and waits, at most `within`, for those under way to be answered;
    /// whether they were. [`resume`](Self::resume) if the exec fails.
    pub(super) fn quiesce(&self, within: std::time::Duration) -> bool {
        self.pause.begin(within)
    }

    /// Takes scrapes again after a [`quiesce`](Self::quiesce).
    pub(super) fn resume(&self) {
        self.pause.end();
    }

    /// Publishes the machine's figures, if they changed.
    pub(super) fn publish(&mut self, m: &Machine) {
        let w = Figures::of(m).to_words();
        if w != self.last {
            self.published.write(&w);
            self.last = w;
        }
    }
}

/// The thread: serves until the process ends. A panic or a failing poll costs
/// the connections open then, not the endpoint: it starts over (a second later,
/// after an error, said once).
// The pause after a failure is bounded and off the machine's thread.
#[allow(clippy::disallowed_methods)]
fn run(
    listener: TcpListener,
    board: Board,
    published: Arc<Published>,
    pause: Arc<http::Pause>,
    logger: slog::Logger,
) {
    let own = listener.as_raw_fd();
    let mut scraper = Scraper {
        board,
        published,
        own,
        requests: 0,
        figures: Figures::default(),
        slots: Vec::new(),
    };
    let mut said = false;
    loop {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            http::serve(&listener, &pause, &mut |f| scraper.scrape(f))
        }));
        let why = match outcome {
            Ok(e) => e.to_string(),
            Err(p) => format!("panicked: {}", super::child::panic_message(&*p)),
        };
        if !said {
            slog::error!(
                logger,
                "metrics endpoint: {why}; serving it again in a second"
            );
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// What the thread keeps between scrapes.
struct Scraper {
    board: Board,
    published: Arc<Published>,
    /// The endpoint's own listener, left out of the queues.
    own: RawFd,
    /// The requests figure last shown: a counter never goes back.
    requests: u64,
    /// The figures last read whole.
    figures: Figures,
    slots: Vec<super::SlotInfo>,
}

impl Scraper {
    fn scrape(&mut self, format: Format) -> String {
        if let Some(w) = self.published.read() {
            self.figures = Figures::from_words(&w);
        }
        let figures = self.figures;
        self.board.read_infos(&mut self.slots);
        let live: u64 = self
            .slots
            .iter()
            .filter(|s| s.pid > 0)
            .map(|s| s.requests)
            .sum();
        // A child reaped between the two readings would count twice or not at
        // all: shown never lower than before.
        self.requests = self
            .requests
            .max(figures.exited_requests.saturating_add(live));
        let sample = Sample {
            figures,
            slots: std::mem::take(&mut self.slots),
            requests: self.requests,
            queues: queues(self.own),
            process: process(),
        };
        let text = render::render(&sample, format);
        self.slots = sample.slots;
        text
    }
}

/// The accept queues of this process's TCP listeners but `own`.
fn queues(own: RawFd) -> Vec<Queue> {
    os::listening_sockets()
        .into_iter()
        .filter(|&fd| fd != own)
        .filter_map(|fd| {
            let (waiting, limit) = os::listen_queue(fd)?;
            let addr =
                nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(fd).ok()?;
            Some(Queue {
                listener: addr.to_string(),
                waiting,
                limit,
            })
        })
        .collect()
}

/// The parent's own figures, from `/proc/self`; `None` without /proc.
fn process() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let mut p = parse_stat(&stat, &boot, ticks_per_second(), super::memory::page_size())?;
    p.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    p.max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft);
    Some(p)
}

/// CPU time, memory and start time from a `/proc/PID/stat` line and the boot
/// time in `/proc/stat`.
fn parse_stat(stat: &str, proc_stat: &str, ticks: u64, page: u64) -> Option<Process> {
    // "pid (comm) state ...": comm may hold spaces and parentheses; the fields
    // after it are numbered from 3 (state).
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let ticks = ticks.max(1) as f64;
    let btime: u64 = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(Process {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        start_time_seconds: btime as f64 + field(22)? as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)?.saturating_mul(page),
        open_fds: 0,
        max_fds: None,
    })
}

fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_cross_the_seqlock_whole() {
        let f = Figures {
            state: State::Reloading,
            generation: 3,
            busy: 4,
            spawns: u64::MAX,
            exits: [1, 2, 3, 4, 5, 6, 7],
            ..Figures::default()
        };
        let p = Published::new();
        assert_eq!(Figures::from_words(&p.read().unwrap()), Figures::default());
        p.write(&f.to_words());
        assert_eq!(Figures::from_words(&p.read().unwrap()), f);
        assert_eq!(p.seq.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_reader_never_sees_half_a_publication() {
        let p = Arc::new(Published::new());
        let writer = {
            let p = Arc::clone(&p);
            std::thread::Builder::new()
                .spawn(move || {
                    for i in 0..20_000u64 {
                        p.write(&[i; WORDS]);
                    }
                })
                .unwrap()
        };
        while !writer.is_finished() {
            if let Some(w) = p.read() {
                assert!(w.iter().all(|&x| x == w[0]), "a mixed reading: {w:?}");
            }
        }
        writer.join().unwrap();
        assert_eq!(p.read(), Some([19_999; WORDS]));
    }

    #[test]
    fn the_process_figures_are_read_from_stat() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 3 0 5000 1000000 256 18446744073709551615";
        let p = parse_stat(stat, "cpu 1 2 3\nbtime 1700000000\n", 100, 4096).unwrap();
        assert_eq!(p.cpu_seconds, 4.0);
        assert_eq!(p.start_time_seconds, 1_700_000_050.0);
        assert_eq!(p.virtual_bytes, 1_000_000);
        assert_eq!(p.resident_bytes, 256 * 4096);
        assert!(parse_stat("garbage", "btime 1", 100, 4096).is_none());
        assert!(parse_stat(stat, "no boot time", 100, 4096).is_none());
        // This process's own.
        let me = process().unwrap();
        assert!(me.resident_bytes > 0 && me.open_fds > 2 && me.start_time_seconds > 1e9);
    }
}
