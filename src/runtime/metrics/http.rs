//! Just enough HTTP/1.x for a scrape, by hand: `GET` (and `HEAD`) of
//! `/metrics` (the format chosen by the `Accept` header) or `/metrics.json`,
//! a request of at most [`MAX_REQUEST`] bytes read within [`DEADLINE`], one
//! answer with `Content-Length`, then `Connection: close`.
//!
//! One thread serves every connection, none of them blocking it: non-blocking
//! sockets under `poll`, each with its deadline, at most [`MAX_CONNECTIONS`]
//! open (one more evicts the oldest, so a crowd of idle connections cannot lock
//! a scraper out). A client that is slow, silent, sends garbage or never reads
//! costs its own connection only.

use super::render::Format;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The longest request (line and headers) read.
pub(crate) const MAX_REQUEST: usize = 8 * 1024;
/// How long a connection may take, from its accept to the last byte of its
/// answer.
pub(crate) const DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// What to answer a request with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The metrics, in this format; `head`: headers only.
    Metrics { format: Format, head: bool },
    /// An error: status code, reason, and an `Allow` header for 405.
    Error(u16, &'static str),
}

/// Whether `buf` holds a whole request head (it ends with an empty line).
pub(crate) fn complete(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n")
}

/// The answer to the request head `buf`.
pub(crate) fn answer(buf: &[u8]) -> Answer {
    let Ok(text) = std::str::from_utf8(buf) else {
        return Answer::Error(400, "Bad Request");
    };
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    let request = lines.next().unwrap_or("");
    let mut parts = request.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Answer::Error(400, "Bad Request");
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Answer::Error(400, "Bad Request");
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Answer::Error(405, "Method Not Allowed"),
    };
    let mut accept = None;
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Answer::Error(400, "Bad Request");
        };
        if name.trim().eq_ignore_ascii_case("accept") {
            accept = Some(value.trim());
        }
    }
    let path = target.split('?').next().unwrap_or("");
    let format = match path {
        "/metrics" | "/" => negotiate(accept.unwrap_or("")),
        "/metrics.json" => Format::Json,
        _ => return Answer::Error(404, "Not Found"),
    };
    Answer::Metrics { format, head }
}

/// The format an `Accept` header asks for: the supported media type of the
/// highest quality (the first listed among equals); text 0.0.4 for `*/*`, an
/// empty header, or nothing supported.
pub(crate) fn negotiate(accept: &str) -> Format {
    let mut best: Option<(f32, Format)> = None;
    for range in accept.split(',') {
        let mut params = range.split(';');
        let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1.0f32;
        let mut version = None;
        for p in params {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "q" => q = v.trim().parse().unwrap_or(0.0),
                "version" => version = Some(v.trim().trim_matches('"').to_string()),
                _ => {}
            }
        }
        let format = match media.as_str() {
            // 0.0.1 is the draft Prometheus still lists; 1.0.0 reads the same.
            "application/openmetrics-text"
                if matches!(version.as_deref(), None | Some("1.0.0" | "0.0.1")) =>
            {
                Format::OpenMetrics
            }
            "text/plain" if matches!(version.as_deref(), None | Some("0.0.4")) => Format::Text,
            "application/json" => Format::Json,
            "*/*" | "text/*" => Format::Text,
            _ => continue,
        };
        if q > 0.0 && best.map_or(true, |(b, _)| q > b) {
            best = Some((q, format));
        }
    }
    best.map_or(Format::Text, |(_, f)| f)
}

/// The whole response for `answer`, the body made by `body` (only when it is
/// the metrics).
pub(crate) fn response(answer: &Answer, body: impl FnOnce(Format) -> String) -> Vec<u8> {
    let (status, reason, ty, body, head, allow) = match answer {
        Answer::Metrics { format, head } => (
            200,
            "OK",
            format.content_type(),
            body(*format),
            *head,
            false,
        ),
        Answer::Error(code, reason) => (
            *code,
            *reason,
            "text/plain; charset=utf-8",
            format!("{reason}: GET /metrics or /metrics.json\n"),
            false,
            *code == 405,
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ty}\r\nContent-Length: {}\r\n{}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len(),
        if allow { "Allow: GET, HEAD\r\n" } else { "" },
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// One client.
struct Conn {
    stream: TcpStream,
    request: Vec<u8>,
    /// The response and how much of it is written, once the request is read.
    reply: Option<(Vec<u8>, usize)>,
    deadline: Instant,
}

impl Conn {
    /// Reads what is there; whether the connection is still worth keeping.
    fn read(&mut self, body: &mut dyn FnMut(Format) -> String) -> bool {
        let mut buf = [0u8; 2048];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    self.request.extend_from_slice(&buf[..n]);
                    if complete(&self.request) {
                        let a = answer(&self.request);
                        self.reply = Some((response(&a, &mut *body), 0));
                        return self.write();
                    }
                    if self.request.len() > MAX_REQUEST {
                        let a = Answer::Error(431, "Request Header Fields Too Large");
                        self.reply = Some((response(&a, |_| String::new()), 0));
                        return self.write();
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Writes what the socket takes; whether there is more to write.
    fn write(&mut self) -> bool {
        let Some((out, at)) = self.reply.as_mut() else {
            return true;
        };
        while *at < out.len() {
            match self.stream.write(&out[*at..]) {
                Ok(0) => return false,
                Ok(n) => *at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        false
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // A child forked meanwhile holds a copy of the socket: shutdown, not only
        // close, ends the connection for the client.
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// A pause of the endpoint, for an in-place upgrade's exec (which closes every
/// socket the thread has open but the listener): asked for by the main thread,
/// the thread stops taking connections, which wait in the listen queue for the
/// next image, finishes those it holds, then says it is quiet.
pub(crate) struct Pause {
    state: Mutex<Paused>,
    quiet: Condvar,
    /// Wakes the thread's poll when the pause is asked for or ended.
    wake_rx: UnixStream,
    wake_tx: UnixStream,
}

#[derive(Debug, Clone, Copy, Default)]
struct Paused {
    asked: bool,
    quiet: bool,
}

impl Pause {
    pub(crate) fn new() -> std::io::Result<Pause> {
        let (wake_rx, wake_tx) = UnixStream::pair()?;
        wake_rx.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        Ok(Pause {
            state: Mutex::new(Paused::default()),
            quiet: Condvar::new(),
            wake_rx,
            wake_tx,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Paused> {
        // The state is two flags, whole after any panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self) {
        // A full socket already holds a wake-up: nothing is lost.
        let _ = (&self.wake_tx).write(&[1]);
    }

    /// Asks for the pause and waits, at most `within`, for the thread to hold
    /// no connection; whether it does.
    pub(crate) fn begin(&self, within: Duration) -> bool {
        self.lock().asked = true;
        self.wake();
        let guard = self.lock();
        let (guard, _) = self
            .quiet
            .wait_timeout_while(guard, within, |s| !s.quiet)
            .unwrap_or_else(|p| p.into_inner());
        guard.quiet
    }

    /// Ends the pause (the exec failed): the thread takes connections again.
    pub(crate) fn end(&self) {
        *self.lock() = Paused::default();
        self.wake();
    }

    /// The thread's side: whether the pause is asked for; says it is quiet once
    /// it is asked and `open` is 0.
    fn asked(&self, open: usize) -> bool {
        let mut s = self.lock();
        let quiet = s.asked && open == 0;
        if quiet && !s.quiet {
            s.quiet = true;
            self.quiet.notify_all();
        }
        s.quiet = quiet;
        s.asked
    }

    fn drain_wakes(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.wake_rx).read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// Serves `listener` for ever, `body` making each scrape's text, taking no
/// connection while `pause` is asked for. Returns only if the listener fails
/// for good (an error the caller logs).
// The deadlines need the clock; the one sleep is bounded (descriptors ran out).
#[allow(clippy::disallowed_methods)]
pub(crate) fn serve(
    listener: &TcpListener,
    pause: &Pause,
    body: &mut dyn FnMut(Format) -> String,
) -> std::io::Error {
    if let Err(e) = listener.set_nonblocking(true) {
        return e;
    }
    let mut conns: Vec<Conn> = Vec::new();
    loop {
        let now = Instant::now();
        conns.retain(|c| c.deadline > now);
        // After the expired ones are gone: the count says whether it is quiet.
        let paused = pause.asked(conns.len());
        let timeout = conns
            .iter()
            .map(|c| c.deadline.saturating_duration_since(now))
            .min()
            .map_or(PollTimeout::NONE, |d| {
                // Rounded up, so a deadline is not polled for at 0 ms in a loop.
                let ms = d.as_millis().saturating_add(1);
                PollTimeout::from(ms.min(60_000) as u16)
            });
        let ready: Vec<PollFlags> = {
            let mut fds = Vec::with_capacity(conns.len() + 2);
            let take = if paused {
                PollFlags::empty()
            } else {
                PollFlags::POLLIN
            };
            fds.push(PollFd::new(listener.as_fd(), take));
            for c in &conns {
                let want = if c.reply.is_some() {
                    PollFlags::POLLOUT
                } else {
                    PollFlags::POLLIN
                };
                fds.push(PollFd::new(c.stream.as_fd(), want));
            }
            fds.push(PollFd::new(pause.wake_rx.as_fd(), PollFlags::POLLIN));
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return e.into(),
            }
            fds.iter()
                .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                .collect()
        };
        if ready.last().is_some_and(|r| !r.is_empty()) {
            pause.drain_wakes();
        }
        // Connections first (their indices are those polled), then new ones.
        let mut keep = Vec::with_capacity(conns.len());
        for (mut c, r) in conns.drain(..).zip(&ready[1..]) {
            let alive = if r.is_empty() {
                true
            } else if r.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL) {
                false
            } else if c.reply.is_some() {
                c.write()
            } else {
                // POLLHUP with data still to read: read it (the request may be whole).
                c.read(body)
            };
            if alive {
                keep.push(c);
            }
        }
        conns = keep;
        let mut accept_failed = false;
        if !paused && !ready[0].is_empty() {
            // At most a poll's worth of new connections per round: the others wait
            // in the queue, and those here get their turn.
            for _ in 0..MAX_CONNECTIONS {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if stream.set_nonblocking(true).is_err() {
                            continue;
                        }
                        if conns.len() >= MAX_CONNECTIONS {
                            // The oldest goes: a crowd of idle clients cannot keep a
                            // scraper out.
                            conns.remove(0);
                        }
                        let mut c = Conn {
                            stream,
                            request: Vec::new(),
                            reply: None,
                            deadline: Instant::now() + DEADLINE,
                        };
                        // The request is often there already.
                        if c.read(body) {
                            conns.push(c);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    // The client gave up before its accept, or descriptors ran out
                    // (EMFILE): try again at the next round; never a reason to stop.
                    Err(_) => {
                        accept_failed = true;
                        break;
                    }
                }
            }
        }
        // Out of descriptors, the listener stays readable: do not spin on it.
        if accept_failed {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pause takes no connection (it waits in the queue), answers the one it
    /// holds first, and its end serves the waiting one.
    #[test]
    #[allow(clippy::disallowed_methods)]
    fn a_pause_finishes_what_it_holds_and_leaves_the_rest_queued() {
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let pause = Arc::new(Pause::new().unwrap());
        let theirs = Arc::clone(&pause);
        std::thread::spawn(move || serve(&listener, &theirs, &mut |_| "x 1\n".into()));
        // A connection taken before the pause, its request not sent yet.
        let mut held = TcpStream::connect(addr).unwrap();
        held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !pause.begin(Duration::from_millis(100)),
            "quiet with one held"
        );
        held.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        held.read_to_string(&mut out).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("x 1\n"),
            "{out}"
        );
        assert!(pause.begin(Duration::from_secs(5)), "quiet once answered");
        // Paused: a new connection waits in the queue, unanswered.
        let mut queued = TcpStream::connect(addr).unwrap();
        queued.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        queued
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 16];
        let e = queued.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WouldBlock, "{e}");
        pause.end();
        queued
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut out = String::new();
        queued.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }

    /// A connection that expires while the pause is asked for leaves the thread
    /// holding none: it must say so.
    #[test]
    #[allow(clippy::disallowed_methods)]
    fn a_pause_is_quiet_once_the_held_connection_expires() {
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let pause = Arc::new(Pause::new().unwrap());
        let theirs = Arc::clone(&pause);
        std::thread::spawn(move || serve(&listener, &theirs, &mut |_| "x 1\n".into()));
        // A client that connects and never sends: it expires after DEADLINE.
        let _idle = TcpStream::connect(addr).unwrap();
        std::thread::sleep(DEADLINE - Duration::from_millis(200));
        let t = Instant::now();
        assert!(
            pause.begin(Duration::from_secs(2)),
            "not quiet {:?} after the pause, though the one connection expired ~200 ms in",
            t.elapsed()
        );
    }

    #[test]
    fn a_request_is_whole_once_its_head_ends() {
        assert!(!complete(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"));
        assert!(complete(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(complete(b"GET /metrics HTTP/1.0\n\n"));
    }

    #[test]
    fn requests_are_answered_by_method_and_path() {
        let m = |format, head| Answer::Metrics { format, head };
        assert_eq!(
            answer(b"GET /metrics HTTP/1.1\r\n\r\n"),
            m(Format::Text, false)
        );
        assert_eq!(
            answer(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            m(Format::Text, true)
        );
        assert_eq!(
            answer(b"GET /metrics.json HTTP/1.1\r\nAccept: text/plain\r\n\r\n"),
            m(Format::Json, false)
        );
        assert_eq!(
            answer(b"GET /metrics HTTP/1.1\r\naccept: application/json\r\n\r\n"),
            m(Format::Json, false)
        );
        assert_eq!(
            answer(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Answer::Error(405, "Method Not Allowed")
        );
        assert_eq!(
            answer(b"GET /other HTTP/1.1\r\n\r\n"),
            Answer::Error(404, "Not Found")
        );
        for garbage in [
            &b"\x16\x03\x01\x02\x00\x01\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert_eq!(answer(garbage), Answer::Error(400, "Bad Request"));
        }
    }

    #[test]
    fn the_accept_header_chooses_the_format() {
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(prometheus), Format::OpenMetrics);
        assert_eq!(
            negotiate("text/plain;version=0.0.4;q=0.9, application/openmetrics-text; version=1.0.0; q=0.5"),
            Format::Text
        );
        assert_eq!(negotiate(""), Format::Text);
        assert_eq!(negotiate("*/*"), Format::Text);
        assert_eq!(negotiate("image/png"), Format::Text);
        assert_eq!(negotiate("application/json"), Format::Json);
        assert_eq!(
            negotiate("application/openmetrics-text;version=2.0.0, application/json;q=0.2"),
            Format::Json
        );
        assert_eq!(
            negotiate("application/openmetrics-text;q=0, text/plain"),
            Format::Text
        );
        assert_eq!(
            negotiate("application/json;q=0.5, text/plain;q=0.5"),
            Format::Json
        );
    }

    #[test]
    fn a_response_says_its_length_and_closes() {
        let r = response(
            &Answer::Metrics {
                format: Format::Text,
                head: false,
            },
            |_| "a 1\n".into(),
        );
        let r = String::from_utf8(r).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Length: 4\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\na 1\n"));
        let head = response(
            &Answer::Metrics {
                format: Format::Json,
                head: true,
            },
            |_| "{}".into(),
        );
        let head = String::from_utf8(head).unwrap();
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 2\r\n"));
        let e = String::from_utf8(response(
            &Answer::Error(405, "Method Not Allowed"),
            |_| unreachable!(),
        ))
        .unwrap();
        assert!(e.contains("Allow: GET, HEAD\r\n"), "{e}");
    }
}
