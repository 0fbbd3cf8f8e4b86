//! TTIN and TTOU on the demo (the default Elastic policy), as real signals to a
//! real parent: each moves the idle pool's size by one, within [1, max_children]
//! however many are sent.
// Real processes need real time: bounded waits and sleeps are the point here.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::{Duration, Instant};
use support::*;

const SIGTTIN: i32 = 21;
const SIGTTOU: i32 = 22;

/// The demo's children that are running (not zombies waiting to be reaped).
fn live(d: &Demo) -> usize {
    d.children().into_iter().filter(|&p| alive(p)).count()
}

/// Sends `sig` and waits until the parent has logged handling it: signals of
/// one kind sent faster than they are handled would merge into one.
fn nudge(d: &Demo, sig: i32) {
    let line = match sig {
        SIGTTIN => "TTIN: scaling target adjusted by 1",
        _ => "TTOU: scaling target adjusted by -1",
    };
    let before = d.log_count(line);
    d.signal(sig);
    assert!(
        wait_for(Duration::from_secs(5), || d.log_count(line) == before + 1),
        "signal {sig} not handled; log:\n{}",
        d.log()
    );
}

/// The idle pool reaches `n` children and stays there for 2.5 s: over two
/// retire intervals (1 s), so a pool still on its way elsewhere shows it.
fn settles_at(d: &Demo, n: usize) {
    assert!(
        wait_for(Duration::from_secs(10), || live(d) == n),
        "{} children, expected {n}; log:\n{}",
        live(d),
        d.log()
    );
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert_eq!(live(d), n, "the pool left {n}; log:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start(prefork: usize, max_children: usize) -> Demo {
    let d = Demo::start(&[
        "--prefork",
        &prefork.to_string(),
        "--max-children",
        &max_children.to_string(),
    ]);
    settles_at(&d, prefork);
    d
}

#[test]
fn ttin_grows_an_idle_pool_by_one_each_time_and_it_stays() {
    let d = start(3, 6);
    nudge(&d, SIGTTIN);
    settles_at(&d, 4);
    nudge(&d, SIGTTIN);
    settles_at(&d, 5);
}

#[test]
fn ttou_shrinks_an_idle_pool_by_one_each_time_and_it_stays() {
    let d = start(3, 6);
    nudge(&d, SIGTTOU);
    settles_at(&d, 2);
    nudge(&d, SIGTTIN);
    settles_at(&d, 3);
}

#[test]
fn five_ttou_on_a_pool_of_three_leave_one_child_not_none() {
    let d = start(3, 6);
    for _ in 0..5 {
        nudge(&d, SIGTTOU);
    }
    settles_at(&d, 1);
    assert_eq!(get(d.addr, "/").unwrap(), (200, "hello\n".to_string()));
}

#[test]
fn ttin_after_ttou_past_the_floor_grows_the_pool_at_once() {
    // The TTOUs below 1 are not kept: the next TTIN raises the minimum from 1.
    let d = start(3, 6);
    for _ in 0..5 {
        nudge(&d, SIGTTOU);
    }
    settles_at(&d, 1);
    nudge(&d, SIGTTIN);
    settles_at(&d, 2);
}

#[test]
fn ttin_past_max_children_stays_at_max_and_ttou_then_shrinks_at_once() {
    let d = start(2, 4);
    for _ in 0..5 {
        nudge(&d, SIGTTIN);
    }
    settles_at(&d, 4);
    // The TTINs above the cap are not kept either.
    nudge(&d, SIGTTOU);
    settles_at(&d, 3);
}
