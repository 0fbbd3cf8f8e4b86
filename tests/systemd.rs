//! systemd integration: `sd_notify` datagrams to a fake `NOTIFY_SOCKET` (a path
//! and an abstract name), the watchdog interval, and socket activation in a
//! re-executed child that inherits a real listener as descriptor 3.

mod support;
use preforkd::runtime::systemd::{
    listen_fds, watchdog_interval, watchdog_interval_from, ActivatedSocket, ActivationError,
    Notifier, MIN_WATCHDOG_INTERVAL,
};
use preforkd::Notify;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use support::fill_datagram_queue;

/// Tests that set or read process environment variables take this lock: the
/// variables are process-wide and the tests run on parallel threads.
static ENV: Mutex<()> = Mutex::new(());

fn env_lock() -> MutexGuard<'static, ()> {
    ENV.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "preforkd-systemd-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The next datagram on `sock`, as text (fails after a bounded wait).
fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8(buf[..n].to_vec()).expect("UTF-8 notification")
}

fn monotonic_usec() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
}

/// Checks a `RELOADING=1` datagram: the flag, then a plausible `MONOTONIC_USEC`.
fn assert_reloading(msg: &str, before: u64) {
    let lines: Vec<&str> = msg.lines().collect();
    assert_eq!(lines.len(), 2, "{msg:?}");
    assert_eq!(lines[0], "RELOADING=1");
    let usec: u64 = lines[1]
        .strip_prefix("MONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {msg:?}"))
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(
        before <= usec && usec <= monotonic_usec(),
        "MONOTONIC_USEC={usec} is not CLOCK_MONOTONIC now"
    );
}

#[test]
fn notifications_reach_a_path_socket_in_order() {
    let dir = TempDir::new();
    let path = dir.0.join("notify");
    let manager = UnixDatagram::bind(&path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let notifier = {
        let _env = env_lock();
        std::env::set_var("NOTIFY_SOCKET", &path);
        let n = Notifier::from_env();
        std::env::remove_var("NOTIFY_SOCKET");
        n.expect("NOTIFY_SOCKET is a usable path")
    };
    let before = monotonic_usec();
    for notify in [
        Notify::Ready,
        Notify::Reloading,
        Notify::Status {
            busy: 2,
            idle: 3,
            starting: 1,
        },
        Notify::Stopping,
    ] {
        notifier.send(&notify).unwrap();
    }
    assert_eq!(recv(&manager), "READY=1");
    assert_reloading(&recv(&manager), before);
    assert_eq!(recv(&manager), "STATUS=busy 2, idle 3, starting 1");
    assert_eq!(recv(&manager), "STOPPING=1");
}

#[test]
fn notifications_reach_an_abstract_socket_in_order() {
    let name = format!("preforkd-test-notify-{}", std::process::id());
    let manager = UnixDatagram::bind_addr(&UnixAddr::from_abstract_name(&name).unwrap()).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let notifier = Notifier::new(&format!("@{name}")).unwrap();
    assert_eq!(notifier.addr().as_abstract_name(), Some(name.as_bytes()));

    let before = monotonic_usec();
    notifier.ready().unwrap();
    notifier.reloading().unwrap();
    notifier.status(0, 5, 0).unwrap();
    notifier.mainpid(1234).unwrap();
    notifier.watchdog().unwrap();
    notifier.stopping().unwrap();
    assert_eq!(recv(&manager), "READY=1");
    assert_reloading(&recv(&manager), before);
    assert_eq!(recv(&manager), "STATUS=busy 0, idle 5, starting 0");
    assert_eq!(recv(&manager), "MAINPID=1234");
    assert_eq!(recv(&manager), "WATCHDOG=1");
    assert_eq!(recv(&manager), "STOPPING=1");
}

#[test]
fn bad_notify_addresses_are_errors_not_panics() {
    let long = format!("/{}", "x".repeat(200));
    for addr in ["", "relative/path", "@", long.as_str(), "/with\0nul"] {
        let err = Notifier::new(addr).expect_err(addr);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{addr:?}: {err}");
    }
    {
        let _env = env_lock();
        std::env::set_var("NOTIFY_SOCKET", "");
        assert!(Notifier::from_env().is_none());
        assert!(Notifier::try_from_env().unwrap().is_none());
        std::env::set_var("NOTIFY_SOCKET", "not-absolute");
        assert!(Notifier::from_env().is_none());
        let err = Notifier::try_from_env().unwrap_err();
        assert!(err.to_string().contains("not-absolute"), "{err}");
        std::env::remove_var("NOTIFY_SOCKET");
        assert!(Notifier::from_env().is_none());
    }
    // Nobody listens there: the send fails, and says so.
    let dir = TempDir::new();
    let notifier = Notifier::new(dir.0.join("absent").to_str().unwrap()).unwrap();
    assert_eq!(notifier.ready().unwrap_err().kind(), ErrorKind::NotFound);
    assert!(notifier.send(&Notify::Stopping).is_err());
}

/// A service manager that has stopped reading: once its queue is full, each
/// notification returns at once (dropped: `WouldBlock`) rather than holding the
/// sender (the parent's loop) for a second; and once it reads again, they go through.
#[test]
#[allow(clippy::disallowed_methods)] // "returns promptly" needs a clock
fn a_full_notify_socket_drops_notifications_without_blocking() {
    let dir = TempDir::new();
    let path = dir.0.join("notify");
    let manager = UnixDatagram::bind(&path).unwrap();
    let notifier = Notifier::new(path.to_str().unwrap()).unwrap();
    // Fill the manager's queue (net.unix.max_dgram_qlen) from another socket.
    fill_datagram_queue(&path);
    let mut slowest = Duration::ZERO;
    let mut dropped = 0u64;
    for _ in 0..5 {
        let sends: [&dyn Fn() -> std::io::Result<()>; 6] = [
            &|| notifier.ready(),
            &|| notifier.reloading(),
            &|| notifier.status(1, 2, 3),
            &|| notifier.watchdog(),
            &|| notifier.mainpid(42),
            &|| notifier.stopping(),
        ];
        for send in sends {
            let t0 = std::time::Instant::now();
            let r = send();
            slowest = slowest.max(t0.elapsed());
            let e = r.expect_err("the manager's queue is full");
            assert_eq!(e.kind(), ErrorKind::WouldBlock, "{e}");
            dropped += 1;
        }
    }
    // Generous: the point is "not a second each", the retried READY, RELOADING,
    // MAINPID and STOPPING included.
    assert!(
        slowest < Duration::from_millis(200),
        "a notification to a full socket took {slowest:?}"
    );
    assert_eq!(notifier.dropped(), dropped);
    // The manager reads again: notifications go through, in order.
    manager.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    while manager.recv(&mut buf).is_ok() {}
    manager.set_nonblocking(false).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    notifier.ready().unwrap();
    notifier.status(0, 1, 0).unwrap();
    assert_eq!(recv(&manager), "READY=1");
    assert_eq!(recv(&manager), "STATUS=busy 0, idle 1, starting 0");
    assert_eq!(notifier.dropped(), dropped, "counted once, not reset");
}

#[test]
fn watchdog_interval_is_half_of_watchdog_usec() {
    let me = 4242;
    let half = |us| Some(Duration::from_micros(us));
    assert_eq!(
        watchdog_interval_from(Some("2000000"), None, me),
        half(1_000_000)
    );
    // Floored: an absurdly short watchdog must not make the pinger spin.
    assert_eq!(
        watchdog_interval_from(Some("3"), Some("4242"), me),
        Some(MIN_WATCHDOG_INTERVAL)
    );
    assert_eq!(
        watchdog_interval_from(Some("1"), None, me),
        Some(MIN_WATCHDOG_INTERVAL)
    );
    assert_eq!(
        watchdog_interval_from(Some("20000"), None, me),
        half(10_000)
    );
    assert_eq!(
        watchdog_interval_from(Some("40000"), None, me),
        half(20_000)
    );
    assert_eq!(watchdog_interval_from(None, None, me), None);
    assert_eq!(watchdog_interval_from(Some("0"), None, me), None);
    assert_eq!(watchdog_interval_from(Some(""), None, me), None);
    assert_eq!(watchdog_interval_from(Some("-5"), None, me), None);
    assert_eq!(watchdog_interval_from(Some("1s"), None, me), None);
    assert_eq!(watchdog_interval_from(Some("1000"), Some("1"), me), None);
    assert_eq!(watchdog_interval_from(Some("1000"), Some("x"), me), None);
    assert_eq!(watchdog_interval_from(Some("1000"), Some(""), me), None);

    let _env = env_lock();
    let me = std::process::id().to_string();
    std::env::set_var("WATCHDOG_USEC", "30000000");
    std::env::set_var("WATCHDOG_PID", &me);
    assert_eq!(watchdog_interval(), Some(Duration::from_secs(15)));
    std::env::remove_var("WATCHDOG_PID");
    assert_eq!(watchdog_interval(), Some(Duration::from_secs(15)));
    std::env::set_var("WATCHDOG_PID", other_pid());
    assert_eq!(watchdog_interval(), None);
    std::env::remove_var("WATCHDOG_PID");
    std::env::remove_var("WATCHDOG_USEC");
    assert_eq!(watchdog_interval(), None);
}

/// A process id that is not ours.
fn other_pid() -> String {
    if std::process::id() == 1 { "2" } else { "1" }.to_string()
}

fn assert_listen_vars_unset() {
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        assert!(std::env::var_os(var).is_none(), "{var} is still set");
    }
}

#[test]
fn sockets_for_another_process_are_not_taken() {
    let _env = env_lock();
    std::env::set_var("LISTEN_PID", other_pid());
    std::env::set_var("LISTEN_FDS", "1");
    std::env::set_var("LISTEN_FDNAMES", "web");
    assert!(listen_fds().unwrap().is_empty());
    assert_listen_vars_unset();
    // Nothing set: nothing passed.
    assert!(listen_fds().unwrap().is_empty());
}

#[test]
fn bad_activation_variables_are_clear_errors() {
    let _env = env_lock();
    let me = std::process::id().to_string();
    // The checks come before any descriptor is adopted: these never take fd 3.
    std::env::set_var("LISTEN_PID", &me);
    std::env::set_var("LISTEN_FDS", "2");
    std::env::set_var("LISTEN_FDNAMES", "a:b:c");
    let err = listen_fds().unwrap_err();
    assert!(
        matches!(err, ActivationError::NamesMismatch { fds: 2, names: 3 }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("2") && msg.contains("3"), "{msg}");
    assert_listen_vars_unset();

    std::env::set_var("LISTEN_PID", &me);
    std::env::set_var("LISTEN_FDS", "many");
    let err = listen_fds().unwrap_err();
    assert!(err.to_string().contains("LISTEN_FDS"), "{err}");
    assert_listen_vars_unset();

    std::env::set_var("LISTEN_PID", "not-a-pid");
    std::env::set_var("LISTEN_FDS", "1");
    let err = listen_fds().unwrap_err();
    assert!(err.to_string().contains("LISTEN_PID"), "{err}");
    assert_listen_vars_unset();
}

#[test]
fn only_listening_tcp_sockets_become_tcp_listeners() {
    let localhost = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let as_activated = |fd: OwnedFd| ActivatedSocket {
        fd,
        name: Some("test".into()),
    };

    let udp = UdpSocket::bind(localhost).unwrap();
    let err = as_activated(udp.into()).into_tcp_listener().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("not a stream socket"), "{err}");

    let listener = TcpListener::bind(localhost).unwrap();
    let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let err = as_activated(stream.into()).into_tcp_listener().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("not listening"), "{err}");

    let dir = TempDir::new();
    let unix = UnixListener::bind(dir.0.join("stream")).unwrap();
    let err = as_activated(unix.into()).into_tcp_listener().unwrap_err();
    assert!(err.to_string().contains("not a TCP socket"), "{err}");

    let file = std::fs::File::open("/dev/null").unwrap();
    assert!(as_activated(file.into()).into_tcp_listener().is_err());

    let tcp = as_activated(listener.into()).into_tcp_listener().unwrap();
    assert!(tcp.local_addr().is_ok());
}

/// Selects [`activation_child`] in a re-executed test binary.
const CHILD_VAR: &str = "PREFORKD_SYSTEMD_TEST_ACTIVATION_CHILD";

/// The parent passes a real listener as descriptor 3 (as systemd does), with
/// `LISTEN_FDS=1` and a name; the child takes it with `listen_fds` and answers a
/// connection on it.
#[test]
fn activated_listener_accepts_in_a_child() {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();

    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "activation_child",
        "--test-threads=1",
        "--nocapture",
    ])
    .env(CHILD_VAR, "1")
    .env("LISTEN_FDS", "1")
    .env("LISTEN_FDNAMES", "web")
    // The child sets LISTEN_PID itself: its pid is not known before the fork.
    .env_remove("LISTEN_PID")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure only calls dup2(2) and fcntl(2),
    // both async-signal-safe, on descriptors it does not allocate; it touches no
    // lock and no heap.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) == -1 || libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = {
        let _env = env_lock();
        cmd.spawn().expect("re-execute the test binary")
    };
    // Only the child holds the listening socket now.
    drop(listener);

    let answer = (|| -> std::io::Result<String> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })();
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "child {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{report}");
    assert_eq!(
        answer.as_deref().ok(),
        Some("hello from web on fd 3\n"),
        "{answer:?}\n{report}"
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "the child ran no test\n{report}"
    );
}

/// The child side of [`activated_listener_accepts_in_a_child`]; does nothing in a
/// normal test run.
#[test]
fn activation_child() {
    if std::env::var_os(CHILD_VAR).is_none() {
        return;
    }
    std::env::set_var("LISTEN_PID", std::process::id().to_string());
    let sockets = listen_fds().expect("the passed socket");
    assert_listen_vars_unset();
    assert_eq!(sockets.len(), 1);
    assert_eq!(sockets[0].fd.as_raw_fd(), 3);
    assert_eq!(sockets[0].name.as_deref(), Some("web"));
    let flags = nix::fcntl::fcntl(&sockets[0].fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert_ne!(
        flags & libc::FD_CLOEXEC,
        0,
        "adopted descriptors are close-on-exec"
    );

    let socket = sockets.into_iter().next().unwrap();
    let name = socket.name.clone().unwrap();
    let listener = socket.into_tcp_listener().expect("a TCP listener");
    let (mut stream, _) = listener.accept().unwrap();
    writeln!(stream, "hello from {name} on fd {}", listener.as_raw_fd()).unwrap();

    // Taken once: a second call finds nothing.
    std::env::set_var("LISTEN_PID", std::process::id().to_string());
    std::env::set_var("LISTEN_FDS", "1");
    assert!(listen_fds().unwrap().is_empty());
}
