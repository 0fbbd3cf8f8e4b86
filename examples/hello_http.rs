//! The demo server: a small HTTP/1.1 server on a preforked, autoscaled pool.
//!
//! ```text
//! cargo run --release --example hello_http -- [--listen ADDR] [--prefork N]
//!     [--max-children N] [--scoreboard PATH] [--pid-file PATH]
//!     [--max-child-memory BYTES] [--crash-at-start FILE]
//! ```
//!
//! Endpoints: `GET /` answers `hello`, `GET /sleep?ms=N` holds the child N ms
//! first, `GET /pid` answers the child's pid, `GET /grow?mb=N[&ms=M]` makes the
//! child allocate, touch and keep N more MiB (then hold it M ms), to try
//! `--max-child-memory`.
//!
//! Fault drills: `--crash-at-start FILE` makes every child's main loop fail at once
//! while FILE exists, appending its pid to FILE first (a crash loop whose forks can
//! be counted; remove the file and send HUP to recover). Keep-alive is honoured (HTTP/1.1 by
//! default, `Connection: close` ends it). TERM or INT stop it gracefully.

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
    max_child_memory: Option<u64>,
    crash_at_start: Option<PathBuf>,
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
        max_child_memory: None,
        crash_at_start: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String, name: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{name}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--listen" => a.listen = value()?,
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
            "--max-child-memory" => {
                let v = value()?;
                a.max_child_memory = Some(
                    v.parse()
                        .map_err(|_| format!("--max-child-memory: {v:?} is not a number"))?,
                );
            }
            "--crash-at-start" => a.crash_at_start = Some(value()?.into()),
            "-h" | "--help" => {
                println!(
                    "usage: hello_http [--listen ADDR] [--prefork N] [--max-children N] \
                     [--scoreboard PATH] [--pid-file PATH] [--error-log PATH] \
                     [--access-log PATH] [--json-log] [--require-root] [--daemonize] [--user NAME] [--group NAME] \
                     [--max-child-memory BYTES] [--crash-at-start FILE]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hello_http: {e}");
            std::process::exit(EX_CONFIG);
        }
    };
    let listen = args.listen.clone();
    let crash_file = args.crash_at_start.clone();
    let mut daemon = Prefork::new(
        move || {
            // A socket the service manager passed (socket activation), else our own
            // with a deep backlog: a burst waits there while the pool grows.
            let activated = preforkd::runtime::systemd::listen_fds()?;
            let l = match activated.into_iter().next() {
                Some(socket) => socket.into_tcp_listener()?,
                None => preforkd::listen(&listen, 1024)
                    .map_err(|e| format!("cannot listen on {listen}: {e}"))?,
            };
            // Accepted sockets inherit the listener's receive timeout (Linux): the
            // keep-alive limit is set once here, not once per connection.
            let timeout = nix::sys::time::TimeVal::new(KEEP_ALIVE.as_secs() as i64, 0);
            nix::sys::socket::setsockopt(&l, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)?;
            eprintln!("hello_http: listening on {}", l.local_addr()?);
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
                let _busy = worker.busy();
                // A client that misbehaves costs only its own connection.
                let _ = serve(worker, stream, &peer.ip().to_string());
            }
            Ok(())
        },
    )
    .prefork(args.prefork)
    .max_children(args.max_children)
    .on_client_disconnect(|d| {
        eprintln!(
            "hello_http: client {}:{} hung up on child {} ({}:{})",
            d.foreign_host, d.foreign_port, d.pid, d.local_host, d.local_port
        )
    });
    if let Some(p) = &args.scoreboard {
        daemon = daemon.scoreboard_path(p);
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
    let code = match daemon.run() {
        Ok(code) => code,
        Err(e @ (preforkd::RunError::Config(_) | preforkd::RunError::Invalid(_))) => {
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
fn serve(worker: &Worker, stream: TcpStream, peer: &str) -> io::Result<()> {
    // Reads and writes share the socket by reference: no dup per connection.
    let mut reader = BufReader::new(&stream);
    let mut out = &stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(t), Some(v)) => (m.to_string(), t.to_string(), v.to_string()),
            _ => return respond(&mut out, 400, "bad request\n", false),
        };
        let mut keep_alive = version == "HTTP/1.1";
        let mut length = 0usize;
        let (mut agent, mut referer) = (None, None);
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
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
                } else if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().unwrap_or(0);
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
        worker.log_access(&preforkd::combined_log_line(
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

/// Writes the whole response with one system call.
fn respond(out: &mut &TcpStream, status: u16, body: &str, keep_alive: bool) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Not Found",
    };
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: {connection}\r\n\r\n{body}",
        body.len()
    );
    out.write_all(response.as_bytes())
}
