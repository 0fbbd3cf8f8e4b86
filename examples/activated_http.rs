//! A socket-activated HTTP server that knows nothing of preforkd: one request at
//! a time on the sockets passed the systemd way (`LISTEN_FDS`, `LISTEN_PID`),
//! TCP or Unix-domain. What `preforkd run` supervises, as it would gunicorn:
//!
//! ```text
//! cargo build --example activated_http
//! cargo run --bin preforkd -- run --listen tcp://127.0.0.1:8000 -- target/debug/examples/activated_http
//! curl 127.0.0.1:8000/sleep/1000
//! ```
//!
//! Paths: `/sleep/MS` answers after MS milliseconds; `/env` the three
//! variables it got; `/fds` its open descriptors; `/say/TEXT` writes TEXT to
//! stdout and stderr (a line each, in two pieces) and answers with its pid;
//! anything else its pid.

// A stand-in server in its own process: threads and sleeps are its business.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

fn main() {
    // Read before listen_fds, which unsets it.
    let listen_pid = std::env::var("LISTEN_PID").unwrap_or_default();
    let sockets = match preforkd::runtime::systemd::listen_fds() {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => {
            eprintln!("activated_http: no socket passed (LISTEN_FDS)");
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("activated_http: {e}");
            std::process::exit(2);
        }
    };
    let env = format!(
        "LISTEN_PID={} LISTEN_FDS={} LISTEN_FDNAMES={} pid={}\n",
        listen_pid,
        sockets.len(),
        sockets
            .iter()
            .map(|s| s.name.clone().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(":"),
        std::process::id()
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGTERM, std::sync::Arc::clone(&stop));
    std::thread::spawn(move || loop {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            STOP.store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    // The first socket is served (a second, if any, on a thread).
    let mut threads = Vec::new();
    for s in sockets {
        let env = env.clone();
        let fd = s.fd;
        threads.push(std::thread::spawn(move || {
            let tcp = fd
                .try_clone()
                .map(std::net::TcpListener::from)
                .and_then(|l| l.local_addr())
                .is_ok();
            if tcp {
                let l = std::net::TcpListener::from(fd);
                accept_loop(
                    || l.accept().map(|(c, _)| c),
                    &l,
                    &env,
                    |c| c.set_nonblocking(false),
                );
            } else {
                let l = UnixListener::from(fd);
                accept_loop(
                    || l.accept().map(|(c, _)| c),
                    &l,
                    &env,
                    |c| c.set_nonblocking(false),
                );
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
}

/// Accepts until TERM: the request in hand is finished first (a graceful stop,
/// as preforkd's stop signal expects).
fn accept_loop<L: std::os::fd::AsFd, C: Read + Write>(
    accept: impl Fn() -> std::io::Result<C>,
    listener: &L,
    env: &str,
    blocking: impl Fn(&C) -> std::io::Result<()>,
) {
    let fd = listener.as_fd();
    let _ = nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    while !STOP.load(std::sync::atomic::Ordering::Relaxed) {
        match accept() {
            Ok(c) => {
                let _ = blocking(&c);
                serve(c, env);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut p = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut p, nix::poll::PollTimeout::from(100u16));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    std::process::exit(0);
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn serve<S: Read + Write>(mut conn: S, env: &str) {
    let mut line = String::new();
    let mut reader = BufReader::new(&mut conn);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // The rest of the head.
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => break,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {}
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let body = if let Some(ms) = path.strip_prefix("/sleep/") {
        std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
        format!("slept {ms} pid {}\n", std::process::id())
    } else if path == "/env" {
        env.to_string()
    } else if path == "/fds" {
        let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        fds.sort();
        format!("{fds:?}\n")
    } else if let Some(text) = path.strip_prefix("/say/") {
        // In pieces, as a program's buffered output may come: the log must
        // still get whole lines.
        let (a, b) = text.split_at(text.len() / 2);
        for mut out in [
            Box::new(std::io::stdout()) as Box<dyn Write>,
            Box::new(std::io::stderr()),
        ] {
            let _ = out.write_all(a.as_bytes());
            let _ = out.flush();
            std::thread::sleep(Duration::from_millis(20));
            let _ = out.write_all(format!("{b}\n").as_bytes());
            let _ = out.flush();
        }
        format!("said by {}\n", std::process::id())
    } else {
        format!("pid {}\n", std::process::id())
    };
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}
