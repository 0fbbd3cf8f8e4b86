//! The metrics endpoint on the demo (`hello_http --metrics`) and on `preforkd
//! run --metrics`, as real processes: what a scrape says matches the pool (the
//! scoreboard, /proc), counts what happened (a KILLed child, a reload, an
//! upgrade), and no client, however hostile, stalls it or the pool.
// Real processes need real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::{get, send_signal, tempdir, wait_for, Demo};

/// The address the parent said it serves metrics on.
fn metrics_addr(log: impl Fn() -> String) -> SocketAddr {
    let mut found = None;
    let ok = wait_for(Duration::from_secs(10), || {
        found = log().lines().find_map(|l| {
            let rest = l.split("metrics: serving on http://").nth(1)?;
            rest.split("/metrics").next()?.parse().ok()
        });
        found.is_some()
    });
    assert!(ok, "no metrics address logged: {}", log());
    found.unwrap()
}

/// One request: (status, headers, body), or why there was none.
fn try_request(
    addr: SocketAddr,
    path: &str,
    accept: Option<&str>,
) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n{accept}\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let bad = || std::io::Error::other(format!("bad answer {buf:?}"));
    let (head, body) = buf.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, head.to_string(), body.to_string()))
}

fn request(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    try_request(addr, path, accept).expect("an answer")
}

fn scrape(addr: SocketAddr) -> String {
    let (status, _, body) = request(addr, "/metrics", None);
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample `key` (`name{labels}` as written).
fn value(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
}

fn get_value(addr: SocketAddr, key: &str) -> f64 {
    let text = scrape(addr);
    value(&text, key).unwrap_or_else(|| panic!("no {key} in {text}"))
}

/// Waits until the sample `key` reads `want`.
fn wait_value(addr: SocketAddr, key: &str, want: f64, within: Duration) {
    let mut last = None;
    let ok = wait_for(within, || {
        last = value(&scrape(addr), key);
        last == Some(want)
    });
    assert!(ok, "{key} is {last:?}, not {want}");
}

fn demo(args: &[&str]) -> (Demo, SocketAddr) {
    let mut all = vec!["--metrics", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let d = Demo::start(&all);
    let log = d.log.clone();
    let addr = metrics_addr(move || log.lock().unwrap().clone());
    (d, addr)
}

fn json(addr: SocketAddr) -> serde_json::Value {
    let (status, head, body) = request(addr, "/metrics.json", None);
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    serde_json::from_str(&body).expect("JSON")
}

#[test]
fn a_scrape_shows_the_pool_the_scoreboard_and_proc_show() {
    let dir = tempdir("metrics-pool");
    let board = dir.join("scoreboard");
    let (d, addr) = demo(&["--prefork", "3", "--scoreboard", board.to_str().unwrap()]);
    wait_value(
        addr,
        r#"preforkd_children{state="idle"}"#,
        3.0,
        Duration::from_secs(10),
    );
    let text = scrape(addr);
    for (state, n) in [("starting", 0.0), ("busy", 0.0), ("retiring", 0.0)] {
        assert_eq!(
            value(&text, &format!("preforkd_children{{state=\"{state}\"}}")),
            Some(n),
            "{state}"
        );
    }
    assert_eq!(value(&text, "preforkd_spawns_total"), Some(3.0));
    assert_eq!(value(&text, "preforkd_generation"), Some(1.0));
    assert_eq!(
        value(&text, r#"preforkd_scoreboard_slots{state="idle"}"#),
        Some(3.0)
    );
    assert_eq!(value(&text, "preforkd_max_children"), Some(150.0));
    // The demo's listener and its queue (empty, 1024 deep).
    let listener = format!("preforkd_listen_queue_limit{{listener=\"{}\"}}", d.addr);
    assert_eq!(value(&text, &listener), Some(1024.0), "{text}");

    // The JSON's slots are the scoreboard file's, and the parent's children.
    let doc = json(addr);
    let pids: BTreeSet<i64> = doc["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_i64().unwrap())
        .collect();
    let from_board: BTreeSet<i64> = preforkd::runtime::read_scoreboard_file(&board)
        .unwrap()
        .iter()
        .filter(|s| s.pid != 0)
        .map(|s| i64::from(s.pid))
        .collect();
    let from_proc: BTreeSet<i64> = d.children().into_iter().map(i64::from).collect();
    assert_eq!(pids, from_board);
    assert_eq!(pids, from_proc);
    assert_eq!(doc["children"]["idle"], 3);
    assert_eq!(doc["state"], "Serving");

    // Requests served: each one counted, as the children wrote them.
    for _ in 0..7 {
        assert_eq!(get(d.addr, "/").unwrap().0, 200);
    }
    wait_value(addr, "preforkd_requests_total", 7.0, Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_format_follows_the_accept_header_and_the_path() {
    let (_d, addr) = demo(&["--prefork", "1"]);
    let (status, head, body) = request(addr, "/metrics", None);
    assert_eq!(status, 200);
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(!body.contains("# EOF"));
    // What Prometheus sends: OpenMetrics first.
    let (_, head, body) = request(
        addr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    );
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE preforkd_spawns counter\n"));
    let (_, head, body) = request(addr, "/metrics", Some("application/json"));
    assert!(head.contains("Content-Type: application/json"), "{head}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["schema"], 1);
    assert_eq!(request(addr, "/nothing", None).0, 404);
}

#[test]
fn a_killed_child_is_counted_as_a_crash_and_its_replacement_as_a_spawn() {
    let (d, addr) = demo(&["--prefork", "2"]);
    wait_value(
        addr,
        r#"preforkd_children{state="idle"}"#,
        2.0,
        Duration::from_secs(10),
    );
    assert_eq!(get_value(addr, "preforkd_spawns_total"), 2.0);
    // Healthy first (min_healthy_uptime, 1 s): its death is then no crash loop,
    // but still a crash for the metrics (nobody here asked for it).
    std::thread::sleep(Duration::from_millis(1100));
    let victim = d.children()[0];
    send_signal(victim, libc::SIGKILL);
    wait_value(addr, "preforkd_spawns_total", 3.0, Duration::from_secs(10));
    wait_value(
        addr,
        r#"preforkd_exits_total{cause="crash"}"#,
        1.0,
        Duration::from_secs(5),
    );
    wait_value(
        addr,
        r#"preforkd_children{state="idle"}"#,
        2.0,
        Duration::from_secs(10),
    );
    let text = scrape(addr);
    assert_eq!(
        value(&text, r#"preforkd_exits_total{cause="retire"}"#),
        Some(0.0)
    );
    assert_eq!(value(&text, "preforkd_crash_streak"), Some(0.0));
    assert!(!d.children().contains(&victim));
}

#[test]
fn a_reload_is_counted_after_hup_and_its_children_as_retired() {
    let (d, addr) = demo(&["--prefork", "2"]);
    wait_value(
        addr,
        r#"preforkd_children{state="idle"}"#,
        2.0,
        Duration::from_secs(10),
    );
    let before: BTreeSet<i32> = d.children().into_iter().collect();
    d.signal(libc::SIGHUP);
    wait_value(addr, "preforkd_reloads_total", 1.0, Duration::from_secs(10));
    wait_value(
        addr,
        r#"preforkd_exits_total{cause="retire"}"#,
        2.0,
        Duration::from_secs(15),
    );
    let text = scrape(addr);
    assert_eq!(value(&text, "preforkd_generation"), Some(2.0));
    assert_eq!(value(&text, "preforkd_spawns_total"), Some(4.0));
    assert_eq!(
        value(&text, r#"preforkd_exits_total{cause="crash"}"#),
        Some(0.0)
    );
    let after: BTreeSet<i32> = d.children().into_iter().collect();
    assert!(before.is_disjoint(&after), "{before:?} {after:?}");
}

#[test]
fn the_counts_go_on_across_an_in_place_upgrade() {
    let (d, addr) = demo(&["--prefork", "2"]);
    wait_value(
        addr,
        r#"preforkd_children{state="idle"}"#,
        2.0,
        Duration::from_secs(10),
    );
    d.signal(libc::SIGHUP);
    wait_value(addr, "preforkd_reloads_total", 1.0, Duration::from_secs(10));
    d.signal(libc::SIGUSR2);
    // The new image serves on the very socket, handed over: every scrape is
    // answered (one made during the exec waits in its queue), and the counts go
    // on from the old image's.
    let mut last = String::new();
    let done = wait_for(Duration::from_secs(30), || {
        last = scrape(addr);
        value(&last, r#"preforkd_upgrades_total{outcome="done"}"#) == Some(1.0)
    });
    assert!(done, "{last}\n{}", d.log());
    assert_eq!(value(&last, "preforkd_reloads_total"), Some(1.0));
    assert_eq!(
        value(&last, r#"preforkd_upgrades_total{outcome="begun"}"#),
        Some(1.0)
    );
    assert!(
        value(&last, "preforkd_spawns_total").unwrap() >= 4.0,
        "{last}"
    );
    let said = format!("metrics: serving on http://{addr}/metrics");
    assert_eq!(d.log().matches(&said).count(), 2, "{}", d.log());
}

/// Scrapes without a pause from four clients across in-place upgrades: every one
/// is answered, by the image before or the one after. (Before: a scrape the old
/// image's thread had accepted and not answered yet was closed by the exec.)
#[test]
fn every_scrape_during_upgrades_is_answered() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (d, addr) = demo(&["--prefork", "2"]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match try_request(addr, "/metrics", None) {
                        Ok((200, _, _)) => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    for n in 1..=3 {
        d.signal(libc::SIGUSR2);
        let mut last = String::new();
        let done = wait_for(Duration::from_secs(30), || {
            last = try_request(addr, "/metrics", None)
                .map(|r| r.2)
                .unwrap_or_default();
            value(&last, r#"preforkd_upgrades_total{outcome="done"}"#) == Some(f64::from(n))
                && !d.log().contains("upgrade (Upgrade) ignored")
        });
        assert!(done, "upgrade {n}: {last}\n{}", d.log());
        // The next one is accepted once this one is proven.
        assert!(
            wait_for(Duration::from_secs(10), || d
                .log()
                .matches("upgrade proven")
                .count()
                >= n as usize),
            "{}",
            d.log()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.join().unwrap();
        ok += o;
        failed.extend(f);
    }
    eprintln!("{ok} scrapes answered, {} not", failed.len());
    assert!(ok > 100, "{ok}");
    assert!(failed.is_empty(), "{failed:?}\n{}", d.log());
}

/// The inode of the TCP socket listening at `addr`, from /proc/net/tcp.
fn listening_inode(addr: SocketAddr) -> Option<String> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = format!(":{:04X}", addr.port());
    tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1)?.ends_with(&port) && f.get(3)? == &"0A")
            .then(|| f.get(9).map(|s| s.to_string()))?
    })
}

/// The sockets `pid` holds, by inode.
fn socket_inodes(pid: i32) -> BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn children_do_not_hold_the_metrics_listener() {
    let (d, addr) = demo(&["--prefork", "2"]);
    wait_value(
        addr,
        r#"preforkd_children{state="idle"}"#,
        2.0,
        Duration::from_secs(10),
    );
    let inode = listening_inode(addr).expect("the endpoint's socket");
    assert!(socket_inodes(d.pid()).contains(&inode), "the parent has it");
    let children = d.children();
    assert_eq!(children.len(), 2);
    for c in children {
        assert!(!socket_inodes(c).contains(&inode), "child {c} holds it");
    }
}

#[test]
fn a_used_address_is_refused_naming_the_option() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut cmd = std::process::Command::new(support::demo_binary());
    cmd.args(["--listen", "127.0.0.1:0", "--metrics", &addr]);
    let (status, err) = support::run_bounded(cmd, Duration::from_secs(10)).expect("it ends");
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(err.contains("metrics") && err.contains(&addr), "{err}");
}

/// Connections that misbehave, each its own way; dropped at the end.
fn hostile(addr: SocketAddr) -> Vec<TcpStream> {
    let mut held = Vec::new();
    // A crowd that connects and says nothing.
    for _ in 0..1000 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            held.push(s);
        }
    }
    // Garbage, then a head too long for any request.
    let mut g = TcpStream::connect(addr).unwrap();
    let _ = g.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n");
    held.push(g);
    let mut long = TcpStream::connect(addr).unwrap();
    let _ = long.write_all(&vec![b'A'; 64 * 1024]);
    held.push(long);
    // Requests whose answers are never read.
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(b"GET /metrics.json HTTP/1.1\r\n\r\n");
        held.push(s);
    }
    held
}

#[test]
fn hostile_clients_stall_neither_the_scrape_nor_the_pool() {
    let (d, addr) = demo(&["--prefork", "2"]);
    wait_value(
        addr,
        r#"preforkd_children{state="idle"}"#,
        2.0,
        Duration::from_secs(10),
    );
    let fds_before = support::fd_count(d.pid());
    let held = hostile(addr);
    // One more, slow: a byte every 50 ms for 10 s, never a whole request.
    let slow = std::thread::Builder::new()
        .spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            for _ in 0..200 {
                if s.write_all(b"G").is_err() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })
        .unwrap();
    // A scrape is answered at once, whatever the others do.
    for _ in 0..5 {
        let t = Instant::now();
        let text = scrape(addr);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(
            value(&text, r#"preforkd_children{state="idle"}"#),
            Some(2.0)
        );
    }
    // The pool serves, and its loop acts on signals.
    assert_eq!(get(d.addr, "/").unwrap().0, 200);
    d.signal(libc::SIGTTIN);
    wait_value(
        addr,
        r#"preforkd_children{state="idle"}"#,
        3.0,
        Duration::from_secs(10),
    );
    // The slow client is cut off by the deadline (5 s), not served for ever.
    assert!(slow.join().unwrap(), "the slow client was never cut off");
    drop(held);
    // Every connection's descriptor is closed again (none leaked).
    let ok = wait_for(Duration::from_secs(10), || {
        support::fd_count(d.pid()) <= fds_before + 2
    });
    assert!(
        ok,
        "{} descriptors, {fds_before} before",
        support::fd_count(d.pid())
    );
    assert_eq!(
        scrape(addr).lines().next().map(|l| l.starts_with("# HELP")),
        Some(true)
    );
}

#[test]
fn preforkd_run_serves_the_metrics_of_its_command_children() {
    let port = support::run::free_port();
    let metrics = format!("127.0.0.1:{port}");
    let bin = support::run::server();
    let r = support::run::Run::start(
        "run-metrics",
        &["--prefork", "2", "--metrics", &metrics],
        &[bin.to_str().unwrap()],
    );
    let addr: SocketAddr = metrics.parse().unwrap();
    wait_value(
        addr,
        r#"preforkd_children{state="idle"}"#,
        2.0,
        Duration::from_secs(15),
    );
    let doc = json(addr);
    let mut pids: Vec<i32> = doc["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_i64().unwrap() as i32)
        .collect();
    pids.sort_unstable();
    let mut workers = r.workers();
    workers.sort_unstable();
    assert_eq!(pids, workers);
    let listener = format!("preforkd_listen_queue_depth{{listener=\"{}\"}}", r.addr);
    assert_eq!(get_value(addr, &listener), 0.0);
}

#[test]
fn a_new_image_that_cannot_start_hands_the_endpoint_back_with_the_children() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("metrics-back");
    let exe = dir.join("demo");
    std::fs::copy(support::demo_binary(), &exe).unwrap();
    let mut cmd = std::process::Command::new(&exe);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--prefork",
        "2",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let d = Demo::start_command(cmd);
    let log = d.log.clone();
    let addr = metrics_addr(move || log.lock().unwrap().clone());
    wait_value(
        addr,
        r#"preforkd_children{state="idle"}"#,
        2.0,
        Duration::from_secs(10),
    );
    // New code whose after_init fails (its port is taken) after the trial passed.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let real = dir.join("demo.real");
    std::fs::copy(support::demo_binary(), &real).unwrap();
    let tmp = dir.join("demo.new");
    let script = format!(
        "#!/bin/sh\nexec {} --listen 127.0.0.1:{port} --prefork 2 --metrics 127.0.0.1:0\n",
        real.display()
    );
    std::fs::write(&tmp, script).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, &exe).unwrap();
    d.signal(libc::SIGUSR2);
    // The previous image took the children back, and serves the metrics on the
    // same socket, counting the way back.
    wait_value(
        addr,
        r#"preforkd_upgrades_total{outcome="returned"}"#,
        1.0,
        Duration::from_secs(30),
    );
    let text = scrape(addr);
    assert_eq!(
        value(&text, r#"preforkd_upgrades_total{outcome="done"}"#),
        Some(0.0)
    );
    assert_eq!(get(d.addr, "/").unwrap().0, 200);
    drop(busy);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn preforkd_run_checks_the_metrics_address_as_a_flag_and_a_key() {
    let check = |args: &[&str]| {
        let mut cmd = std::process::Command::new(support::run::preforkd());
        cmd.arg("run").args(args);
        support::run_bounded(cmd, Duration::from_secs(10)).expect("it ends")
    };
    let (status, err) = check(&["--metrics", "nonsense", "--check-config", "--", "/bin/true"]);
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(err.contains("metrics") && err.contains("nonsense"), "{err}");
    let dir = tempdir("metrics-toml");
    let file = dir.join("preforkd.toml");
    std::fs::write(
        &file,
        "metrics = \"127.0.0.1:9\"\ncommand = [\"/bin/true\"]\n",
    )
    .unwrap();
    // Only checked, not bound: a running daemon may hold the port.
    let (status, err) = check(&["--config", file.to_str().unwrap(), "--check-config"]);
    assert_eq!(status.code(), Some(0), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
