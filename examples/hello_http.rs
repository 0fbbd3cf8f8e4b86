//! The demo server: a small HTTP/1.1 server on a preforked, autoscaled pool.
//!
//! ```text
//! cargo run --release --example hello_http -- [--listen ADDR] [--prefork N]
//!     [--max-children N] [--scoreboard PATH] [--pid-file PATH]
//!     [--spawn-in-init CMD]
//!     [--max-child-memory BYTES] [--crash-at-start FILE]
//!     [--auto-reload-every DURATION] [--watch PATH]... [--std-bind]
//!     [--fail-init] [--disconnect-every-ms N] [--disconnect-kill]
//!     [--metrics ADDR]
//! ```
//!
//! `--metrics ADDR` (e.g. `127.0.0.1:9100`) serves the pool's metrics at
//! `http://ADDR/metrics` (Prometheus text, or OpenMetrics by `Accept`) and
//! `/metrics.json`; see `docs/metrics.md`. With port 0 the parent logs the port
//! it got (`metrics: serving on http://127.0.0.1:PORT/metrics`).
//!
//! `--disconnect-every-ms N` sets how often clients that hung up on a busy
//! child are looked for (default 1000, at least 50); by default each is printed
//! (`hello_http: client HOST:PORT hung up on child PID (HOST:PORT)`), and with
//! `--disconnect-kill` the child is stopped instead, cancelling its job (the pool
//! replaces it).
//!
//! `--spawn-in-init CMD` starts `sh -c CMD` from `after_init` and leaves it
//! running (it prints `hello_http: spawned pid N`): a stand-in for a helper
//! process a real daemon starts at init (the tests use it to check that such a
//! process does not keep the daemonizing launcher waiting).
//!
//! `--auto-reload-every DURATION` (a bare number is seconds) checks the program
//! and every `--watch PATH` (repeatable) that often; a change runs the
//! `auto_reload_handler`, which prints `hello_http: auto_reload_handler: files
//! changed`, then the children are rolled over; a replaced program upgrades the
//! daemon in place (as `kill -USR2` does). Without it, `--watch` checks nothing.
//!
//! Endpoints: `GET /` answers `hello`, `GET /sleep?ms=N` holds the child N ms
//! first, `GET /pid` answers the child's pid, `GET /version` the build's identity
//! (`version=V [build=B] fnv1a64=H`, see `identity`), `GET /say` writes one line
//! to the child's error log and one to its stderr, then answers its pid (to see
//! where they land after a log rotation), `GET /env` the names of the child's
//! environment variables (one a line), `GET /grow?mb=N[&ms=M]` makes the child
//! allocate, touch and keep N more MiB (then hold it M ms), to try
//! `--max-child-memory`.
//!
//! Fault drills: `--crash-at-start FILE` makes every child's main loop fail at once
//! while FILE exists, appending its pid to FILE first (a crash loop whose forks can
//! be counted; remove the file and send HUP to recover). `--std-bind` binds the
//! listener with the standard library instead of `runtime::listen` (one an
//! in-place upgrade cannot hand over, so refuses). `--fail-init` makes
//! `after_init` fail at its very end, once it has its listener (new code that
//! passes the upgrade's trial, which does not run `after_init`, and then cannot
//! start). Keep-alive is honoured (HTTP/1.1 by default, `Connection: close` ends
//! it). TERM or INT stop it gracefully.

use preforkd::{Prefork, Worker};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

/// A configuration error: exit code 78 (EX_CONFIG).
const EX_CONFIG: i32 = 78;
/// How long a kept-alive connection may stay silent before the child lets it go.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

struct Args {
    listen: String,
    prefork: usize,
    max_children: usize,
    scoreboard: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    error_log: Option<PathBuf>,
    access_log: Option<PathBuf>,
    json_log: bool,
    require_root: bool,
    daemonize: bool,
    user: Option<String>,
    group: Option<String>,
    graceful_timeout: Option<Duration>,
    min_healthy_uptime: Option<Duration>,
    busy_timeout: Option<Duration>,
    request_timeout: Duration,
    spawn_in_init: Option<String>,
    max_child_memory: Option<u64>,
    crash_at_start: Option<PathBuf>,
    auto_reload_every: Option<Duration>,
    watch: Vec<PathBuf>,
    std_bind: bool,
    fail_init: bool,
    disconnect_every: Duration,
    disconnect_kill: bool,
    metrics: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        listen: "127.0.0.1:8080".into(),
        prefork: 3,
        max_children: 150,
        scoreboard: None,
        pid_file: None,
        error_log: None,
        access_log: None,
        json_log: false,
        require_root: false,
        daemonize: false,
        user: None,
        group: None,
        graceful_timeout: None,
        min_healthy_uptime: None,
        busy_timeout: None,
        request_timeout: REQUEST_TIMEOUT,
        spawn_in_init: None,
        max_child_memory: None,
        crash_at_start: None,
        auto_reload_every: None,
        watch: Vec::new(),
        std_bind: false,
        fail_init: false,
        disconnect_every: Duration::from_millis(1000),
        disconnect_kill: false,
        metrics: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String, name: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{name}: {v:?} is not a number"))
        };
        let duration = |v: String, name: &str| {
            preforkd::policy::parse_duration(&v).map_err(|e| format!("{name}: {e}"))
        };
        match flag.as_str() {
            "--listen" => a.listen = value()?,
            "--graceful-timeout" => {
                a.graceful_timeout = Some(duration(value()?, "--graceful-timeout")?)
            }
            "--min-healthy-uptime" => {
                a.min_healthy_uptime = Some(duration(value()?, "--min-healthy-uptime")?)
            }
            "--busy-timeout" => a.busy_timeout = Some(duration(value()?, "--busy-timeout")?),
            "--request-timeout" => {
                a.request_timeout = duration(value()?, "--request-timeout")?;
                if a.request_timeout.is_zero() {
                    return Err("--request-timeout must be greater than zero".into());
                }
            }
            "--prefork" => a.prefork = number(value()?, "--prefork")?,
            "--max-children" => a.max_children = number(value()?, "--max-children")?,
            "--scoreboard" => a.scoreboard = Some(value()?.into()),
            "--pid-file" => a.pid_file = Some(value()?.into()),
            "--error-log" => a.error_log = Some(value()?.into()),
            "--access-log" => a.access_log = Some(value()?.into()),
            "--json-log" => a.json_log = true,
            "--require-root" => a.require_root = true,
            "--daemonize" => a.daemonize = true,
            "--user" => a.user = Some(value()?),
            "--group" => a.group = Some(value()?),
            "--spawn-in-init" => a.spawn_in_init = Some(value()?),
            "--max-child-memory" => {
                let v = value()?;
                a.max_child_memory = Some(
                    v.parse()
                        .map_err(|_| format!("--max-child-memory: {v:?} is not a number"))?,
                );
            }
            "--crash-at-start" => a.crash_at_start = Some(value()?.into()),
            "--auto-reload-every" => {
                a.auto_reload_every = Some(duration(value()?, "--auto-reload-every")?)
            }
            "--watch" => a.watch.push(value()?.into()),
            // A drill: a listener the runtime does not know, which an in-place
            // upgrade cannot hand over.
            "--std-bind" => a.std_bind = true,
            "--fail-init" => a.fail_init = true,
            "--disconnect-every-ms" => {
                let ms = number(value()?, "--disconnect-every-ms")?;
                if ms < 50 {
                    return Err(format!("--disconnect-every-ms: {ms} is below 50"));
                }
                a.disconnect_every = Duration::from_millis(ms as u64);
            }
            "--disconnect-kill" => a.disconnect_kill = true,
            "--metrics" => a.metrics = Some(value()?),
            "-h" | "--help" => {
                println!(
                    "usage: hello_http [--listen ADDR] [--prefork N] [--max-children N] \
                     [--scoreboard PATH] [--pid-file PATH] [--error-log PATH] \
                     [--access-log PATH] [--json-log] [--require-root] [--daemonize] [--user NAME] [--group NAME] \
                     [--graceful-timeout DURATION] [--min-healthy-uptime DURATION] [--busy-timeout DURATION] [--request-timeout DURATION] \
                     [--spawn-in-init CMD] [--max-child-memory BYTES] [--crash-at-start FILE] \
                     [--auto-reload-every DURATION] [--watch PATH]... [--std-bind] [--fail-init] \
                     [--disconnect-every-ms N] [--disconnect-kill] [--metrics ADDR]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(a)
}

fn main() {
    // First, before anything else: the bytes this process was started from, not
    // those of a file replaced at that path later (an upgrade in place).
    let identity = identity();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hello_http: {e}");
            std::process::exit(EX_CONFIG);
        }
    };
    let listen = args.listen.clone();
    let std_bind = args.std_bind;
    let request_timeout = args.request_timeout;
    let spawn_in_init = args.spawn_in_init.clone();
    let crash_file = args.crash_at_start.clone();
    let fail_init = args.fail_init;
    let mut daemon = Prefork::new(
        move || {
            if let Some(cmd) = &spawn_in_init {
                let child = std::process::Command::new("sh")
                    .args(["-c", cmd])
                    .stdin(std::process::Stdio::null())
                    .spawn()
                    .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
                // Left running; the daemon reaps it when it exits.
                eprintln!("hello_http: spawned pid {}", child.id());
            }
            // A socket the service manager passed (socket activation), else our own
            // with a deep backlog: a burst waits there while the pool grows.
            let activated = preforkd::runtime::systemd::listen_fds()?;
            let l = match activated.into_iter().next() {
                Some(socket) => socket.into_tcp_listener()?,
                None if std_bind => TcpListener::bind(&listen)
                    .map_err(|e| format!("cannot listen on {listen}: {e}"))?,
                None => preforkd::runtime::listen(&listen, 1024)
                    .map_err(|e| format!("cannot listen on {listen}: {e}"))?,
            };
            // Accepted sockets inherit the listener's receive timeout (Linux): the
            // keep-alive limit is set once here, not once per connection.
            let timeout = nix::sys::time::TimeVal::new(KEEP_ALIVE.as_secs() as i64, 0);
            nix::sys::socket::setsockopt(&l, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)?;
            // Never a panic over a closed stderr: the pool serves without it.
            let _ = writeln!(io::stderr(), "hello_http: listening on {}", l.local_addr()?);
            if fail_init {
                return Err("--fail-init: after_init fails on purpose".into());
            }
            Ok(l)
        },
        move |worker: &Worker, listener: &TcpListener| {
            if let Some(f) = crash_file.as_ref().filter(|f| f.exists()) {
                // One line per crash (the child's pid): the drill counts forks.
                if let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(f) {
                    let _ = writeln!(file, "{}", std::process::id());
                }
                return Err(format!("{} exists (--crash-at-start)", f.display()).into());
            }
            while let Some((stream, peer)) = worker.accept(listener) {
                // A client that misbehaves costs only its own connection. The child
                // counts as busy per request (see `serve`), not while a kept-alive
                // connection sits idle.
                let _ = serve(
                    worker,
                    stream,
                    &peer.ip().to_string(),
                    request_timeout,
                    &identity,
                );
            }
            Ok(())
        },
    )
    // Every option at its default but the one asked for; the ones below are set
    // on top.
    .options(preforkd::Options {
        min_healthy_uptime: args
            .min_healthy_uptime
            .unwrap_or(preforkd::Options::default().min_healthy_uptime),
        ..preforkd::Options::default()
    })
    .prefork(args.prefork)
    .max_children(args.max_children)
    .graceful_timeout(args.graceful_timeout.unwrap_or(Duration::from_secs(30)))
    .busy_timeout(args.busy_timeout)
    .on_client_disconnect(|d| {
        let _ = writeln!(
            io::stderr(),
            "hello_http: client {}:{} hung up on child {} ({}:{})",
            d.foreign_host,
            d.foreign_port,
            d.pid,
            d.local_host,
            d.local_port
        );
    });
    daemon = daemon.disconnect_check_every(args.disconnect_every);
    if args.disconnect_kill {
        daemon = daemon.disconnect_policy(preforkd::policy::TerminateChild);
    }
    if let Some(p) = &args.scoreboard {
        daemon = daemon.scoreboard_path(p);
    }
    if let Some(addr) = &args.metrics {
        daemon = daemon.metrics(addr.as_str());
    }
    if let Some(bytes) = args.max_child_memory {
        daemon = daemon.max_child_memory(bytes);
    }
    if let Some(p) = &args.error_log {
        daemon = daemon.error_log_path(p);
    }
    if let Some(p) = &args.access_log {
        daemon = daemon.access_log_path(p);
    }
    // In the foreground unless asked: the demo is the README's first command.
    daemon = daemon
        .json_log(args.json_log)
        .require_root(args.require_root)
        .daemonize(args.daemonize);
    if let Some(u) = &args.user {
        daemon = daemon.user(u.as_str());
    }
    if let Some(g) = &args.group {
        daemon = daemon.group(g.as_str());
    }
    if let Some(p) = &args.pid_file {
        daemon = daemon.pid_path(p);
    }
    if let Some(every) = args.auto_reload_every {
        daemon = daemon
            .auto_reload_check_every(every)
            // One line per change found: the tests count them.
            .auto_reload_handler(|_: &TcpListener| {
                let _ = writeln!(
                    io::stderr(),
                    "hello_http: auto_reload_handler: files changed"
                );
            });
    }
    for p in &args.watch {
        daemon = daemon.watch_file(p);
    }
    let code = match daemon.run() {
        Ok(code) => code,
        Err(e @ preforkd::RunError::Config(_)) => {
            eprintln!("hello_http: {e}");
            EX_CONFIG
        }
        Err(e) => {
            eprintln!("hello_http: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// Serves one connection: requests until the client or the child is done.
fn serve(
    worker: &Worker,
    stream: TcpStream,
    peer: &str,
    request_timeout: Duration,
    identity: &str,
) -> io::Result<()> {
    // Reads and writes share the socket by reference: no dup per connection.
    let mut reader = BufReader::new(Timed {
        stream: &stream,
        deadline: std::cell::Cell::new(None),
    });
    let mut out = &stream;
    loop {
        // Wait for the request without blocking in a read: a child asked to stop
        // closes an idle connection at once (after a short linger for a request
        // already on its way) instead of waiting for its client.
        if reader.buffer().is_empty() && !worker.wait_for_input(&stream, KEEP_ALIVE)? {
            return Ok(());
        }
        // One deadline for the whole request: a client sending a byte now and then
        // cannot hold the child (or a graceful stop) longer than this.
        reader
            .get_ref()
            .deadline
            .set(Some(deadline_in(request_timeout)));
        let line = match read_line(&mut reader, MAX_REQUEST_LINE)? {
            Line::Eof => return Ok(()),
            Line::TooLong => return respond(&mut out, 414, "request line too long\n", false),
            Line::Bad => return respond(&mut out, 400, "bad request\n", false),
            Line::Text(l) => l,
        };
        // Busy from the request line to the logged answer: one request.
        let _busy = worker.busy();
        let mut parts = line.split_whitespace();
        let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(t), Some(v)) => (m.to_string(), t.to_string(), v.to_string()),
            _ => return respond(&mut out, 400, "bad request\n", false),
        };
        let mut keep_alive = version == "HTTP/1.1";
        let mut length = 0usize;
        let (mut agent, mut referer) = (None, None);
        let mut header_bytes = 0;
        loop {
            let h = match read_line(&mut reader, MAX_HEADERS - header_bytes)? {
                Line::Eof => return Ok(()),
                Line::Bad => return respond(&mut out, 400, "bad request\n", false),
                Line::TooLong => {
                    return respond(&mut out, 431, "request header fields too large\n", false)
                }
                Line::Text(h) => h,
            };
            header_bytes += h.len();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("connection") {
                    if value.eq_ignore_ascii_case("close") {
                        keep_alive = false;
                    } else if value.eq_ignore_ascii_case("keep-alive") {
                        keep_alive = true;
                    }
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    // Chunked bodies are not parsed here: refuse rather than read the
                    // body as the next request.
                    return respond(&mut out, 501, "transfer-encoding not supported\n", false);
                } else if name.eq_ignore_ascii_case("content-length") {
                    length = match value.parse() {
                        Ok(n) if n <= MAX_BODY => n,
                        Ok(_) => return respond(&mut out, 413, "content too large\n", false),
                        Err(_) => return respond(&mut out, 400, "bad content-length\n", false),
                    };
                } else if name.eq_ignore_ascii_case("user-agent") {
                    agent = Some(value.to_string());
                } else if name.eq_ignore_ascii_case("referer") {
                    referer = Some(value.to_string());
                }
            }
        }
        // Discard a body we do not use, so the next request parses.
        io::copy(&mut (&mut reader).take(length as u64), &mut io::sink())?;
        // A child asked to stop finishes this request, then closes.
        keep_alive &= !worker.should_exit();
        let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
        let started = unix_now();
        let (status, body) = match (method.as_str(), path) {
            ("GET", "/") => (200, "hello\n".to_string()),
            ("GET", "/pid") => (200, format!("{}\n", std::process::id())),
            ("GET", "/version") => (200, format!("{identity}\n")),
            ("GET", "/say") => {
                let pid = std::process::id();
                slog::info!(worker.logger(), "child {pid} says hello");
                let _ = writeln!(io::stderr(), "hello_http: child {pid} says hello on stderr");
                (200, format!("{pid}\n"))
            }
            ("GET", "/env") => (200, env_names()),
            ("GET", "/sleep") => {
                let ms = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("ms="))
                    .and_then(|v| v.parse::<u64>().ok());
                match ms {
                    Some(ms) => {
                        hold(Duration::from_millis(ms));
                        (200, format!("slept {ms} ms\n"))
                    }
                    None => (400, "sleep needs ?ms=N\n".to_string()),
                }
            }
            ("GET", "/grow") => {
                let arg = |k: &str| {
                    query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix(k))
                        .and_then(|v| v.parse::<u64>().ok())
                };
                match arg("mb=") {
                    Some(mb) if mb <= 4096 => {
                        let total = grow(mb);
                        hold(Duration::from_millis(arg("ms=").unwrap_or(0)));
                        let pid = std::process::id();
                        (
                            200,
                            format!("grew {mb} MiB, holding {total} MiB in {pid}\n"),
                        )
                    }
                    _ => (400, "grow needs ?mb=N (at most 4096)\n".to_string()),
                }
            }
            _ => (404, "not found\n".to_string()),
        };
        respond(&mut out, status, &body, keep_alive)?;
        worker.log_access(&preforkd::runtime::combined_log_line(
            peer,
            started,
            line.trim_end(),
            status,
            body.len(),
            referer.as_deref(),
            agent.as_deref(),
        ));
        if !keep_alive {
            return Ok(());
        }
    }
}

/// This build's identity, as `GET /version` answers it: `version=V`, the
/// crate's version; `build=B` when `HELLO_HTTP_BUILD` was set at build time;
/// `fnv1a64=H`, the FNV-1a 64-bit digest (16 hex digits) of the executable's
/// bytes, so that two binaries of one version still differ (`unreadable` if
/// the executable cannot be read).
fn identity() -> String {
    let mut id = format!("version={}", env!("CARGO_PKG_VERSION"));
    if let Some(build) = option_env!("HELLO_HTTP_BUILD") {
        id.push_str(&format!(" build={build}"));
    }
    // `/proc/self/exe` itself, not the path it names: after an upgrade's way back
    // that file was replaced, and the previous image runs from its deleted one.
    let digest = std::fs::File::open("/proc/self/exe").and_then(fnv1a64);
    match digest {
        Ok(h) => id.push_str(&format!(" fnv1a64={h:016x}")),
        Err(_) => id.push_str(" fnv1a64=unreadable"),
    }
    id
}

/// FNV-1a, 64 bits, of everything `r` reads.
fn fnv1a64(mut r: impl Read) -> io::Result<u64> {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(h),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h = buf[..n]
            .iter()
            .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    }
}

/// The names of this process's environment variables, one a line.
fn env_names() -> String {
    std::env::vars_os()
        .map(|(k, _)| format!("{}\n", k.to_string_lossy()))
        .collect()
}

#[allow(clippy::disallowed_methods)] // the access log records wall-clock time
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Allocates `mb` MiB, touches every page so it is resident, and keeps it for the
/// child's life; the MiB held in all.
fn grow(mb: u64) -> u64 {
    static HELD: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
    let mut block = vec![0u8; (mb as usize) << 20];
    for b in block.iter_mut().step_by(4096) {
        *b = 1;
    }
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    held.push(block);
    held.iter().map(|b| b.len() as u64 >> 20).sum()
}

#[allow(clippy::disallowed_methods)] // the demo's /sleep holds the child on purpose
fn hold(d: Duration) {
    std::thread::sleep(d);
}

/// The longest request line, the most header bytes and the largest body a request
/// may have: a client cannot make a child hold more than this.
const MAX_REQUEST_LINE: usize = 8 * 1024;
const MAX_HEADERS: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;

/// How long a client may take to send one whole request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[allow(clippy::disallowed_methods)] // a network deadline is wall-clock time
fn deadline_in(d: Duration) -> std::time::Instant {
    std::time::Instant::now() + d
}

/// The connection, read under the current request's deadline: each read may
/// wait only for what is left of it, so a client sending a byte now and then
/// cannot stretch a request past it.
struct Timed<'a> {
    stream: &'a TcpStream,
    deadline: std::cell::Cell<Option<std::time::Instant>>,
}

impl Read for Timed<'_> {
    #[allow(clippy::disallowed_methods)]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(end) = self.deadline.get() {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "request too slow"));
            }
            self.stream.set_read_timeout(Some(left))?;
        }
        self.stream.read(buf)
    }
}

/// A line read with a bound on its length.
enum Line {
    Eof,
    TooLong,
    /// Not UTF-8.
    Bad,
    Text(String),
}

/// Reads one line of at most `limit` bytes (newline included) without ever
/// buffering more than that.
fn read_line(reader: &mut BufReader<Timed<'_>>, limit: usize) -> io::Result<Line> {
    let mut bytes = Vec::new();
    let n = (&mut *reader)
        .take(limit as u64)
        .read_until(b'\n', &mut bytes)?;
    if n == 0 {
        return Ok(if limit == 0 { Line::TooLong } else { Line::Eof });
    }
    if bytes.last() != Some(&b'\n') {
        // Cut off by the limit (or the peer closed mid-line).
        return Ok(if n == limit { Line::TooLong } else { Line::Eof });
    }
    Ok(String::from_utf8(bytes).map_or(Line::Bad, Line::Text))
}

/// Writes the whole response with one system call.
fn respond(out: &mut &TcpStream, status: u16, body: &str, keep_alive: bool) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        _ => "Not Found",
    };
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: {connection}\r\n\r\n{body}",
        body.len()
    );
    out.write_all(response.as_bytes())
}
