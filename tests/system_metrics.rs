//! `promtool check metrics` (Debian's prometheus package, installed by .ci/run)
//! accepts the Prometheus text the demo's metrics endpoint serves, under load and
//! while HUP reloads roll the pool over; the strict OpenMetrics parser of the
//! Python client (python3-prometheus-client, also installed by .ci/run) accepts
//! the OpenMetrics variant at the same moments (promtool 2.42 reads only the
//! text format).
#![cfg(feature = "system-tests")]
// Real processes need real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{get, program, send_signal, wait_for, Demo};

/// The metrics served at `addr`, asking with `accept`.
fn scrape(addr: SocketAddr, accept: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: t\r\nAccept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    body.to_string()
}

/// `program ARGS` fed `text` on stdin: its exit status and what it said on
/// stdout and stderr. Bounded: KILLed (by its pid) after 20 s.
fn feed(
    program: &std::path::Path,
    args: &[&str],
    text: &str,
) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("it runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > until {
            send_signal(child.id() as i32, 9);
            let _ = child.wait();
            panic!("{} did not finish in 20 s", program.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut said = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    (status, said)
}

/// Parses OpenMetrics from stdin with the Python client's strict parser.
const PARSE_OPENMETRICS: &str = "import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
list(text_string_to_metric_families(sys.stdin.read()))";

/// `promtool check metrics` (lint problems on stdout, parse errors on stderr).
fn check(text: &str, when: &str) {
    let (status, said) = feed(&program("promtool"), &["check", "metrics"], text);
    assert!(
        status.success() && said.trim().is_empty(),
        "promtool refused the scrape {when} ({status}): {said}\n{text}"
    );
}

fn check_openmetrics(text: &str, when: &str) {
    let (status, said) = feed(&program("python3"), &["-c", PARSE_OPENMETRICS], text);
    assert!(
        status.success() && said.trim().is_empty(),
        "the OpenMetrics parser refused the scrape {when} ({status}): {said}\n{text}"
    );
}

const TEXT: &str = "text/plain;version=0.0.4";
const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0";

#[test]
fn promtool_accepts_the_metrics_under_load_and_while_reloading() {
    // Found first: a missing program fails here, before anything starts.
    program("promtool");
    let (st, said) = feed(&program("python3"), &["-c", PARSE_OPENMETRICS], "# EOF\n");
    assert!(
        st.success(),
        "the OpenMetrics parser is missing: apt-get install -y python3-prometheus-client \
         (the system-tests feature needs it): {said}"
    );
    let d = Demo::start(&[
        "--prefork",
        "2",
        "--max-children",
        "20",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let log = d.log.clone();
    let mut addr = None;
    assert!(wait_for(Duration::from_secs(10), || {
        addr = log.lock().unwrap().lines().find_map(|l| {
            l.split("metrics: serving on http://")
                .nth(1)?
                .split("/metrics")
                .next()?
                .parse::<SocketAddr>()
                .ok()
        });
        addr.is_some()
    }));
    let addr = addr.unwrap();

    // Load: clients keeping children busy, so the pool grows.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, served, target) = (Arc::clone(&stop), Arc::clone(&served), d.addr);
            std::thread::Builder::new()
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if matches!(get(target, "/sleep?ms=30"), Ok((200, _))) {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .unwrap()
        })
        .collect();
    let mut busy_seen = false;
    for i in 0..10 {
        let text = scrape(addr, TEXT);
        busy_seen |= !text.contains("preforkd_children{state=\"busy\"} 0\n");
        check(&text, &format!("under load ({i})"));
        check_openmetrics(&scrape(addr, OPENMETRICS), &format!("under load ({i})"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(busy_seen, "the load never showed as busy children");

    // Reloads, one after another, still under load.
    for i in 0..10 {
        d.signal(libc::SIGHUP);
        check(&scrape(addr, TEXT), &format!("while reloading ({i})"));
        check_openmetrics(
            &scrape(addr, OPENMETRICS),
            &format!("while reloading ({i})"),
        );
        std::thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let text = scrape(addr, TEXT);
    check(&text, "after the reloads");
    let reloads = text
        .lines()
        .find_map(|l| l.strip_prefix("preforkd_reloads_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    // HUPs coalesce; every one that arrived was counted, and most did.
    assert!((2..=10).contains(&reloads), "{reloads} reloads");
    assert!(served.load(Ordering::Relaxed) > 50);
}
