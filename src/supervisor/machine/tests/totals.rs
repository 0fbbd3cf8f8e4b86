//! The cumulative counters: each counts what the machine did, by cause, and
//! they cross an in-place upgrade.

use super::*;
use crate::supervisor::machine::{ExitCause, Handoff};
use crate::ExitStatus;

fn exits(m: &Machine, cause: ExitCause) -> u64 {
    m.totals().exits.get(cause)
}

/// Reports the spawn of `slot` (pid by [`pid`]) and its readiness at `now`.
fn fork(m: &mut Machine, now: Time, slot: usize) {
    m.handle(
        now,
        Event::ChildSpawned {
            slot,
            pid: pid(slot),
        },
    );
    m.handle(now, Event::ChildReady { pid: pid(slot) });
}

/// The slots the actions spawn into.
fn spawned(a: &[Action]) -> Vec<usize> {
    a.iter()
        .filter_map(|a| match a {
            Action::Spawn { slot, .. } => Some(*slot),
            _ => None,
        })
        .collect()
}

fn exit(m: &mut Machine, now: Time, slot: usize, status: ExitStatus) -> Vec<Action> {
    m.handle(
        now,
        Event::ChildExited {
            pid: pid(slot),
            status,
        },
    );
    drain(m)
}

#[test]
fn spawns_and_failed_forks_are_counted() {
    let mut m = builder(2).build().unwrap();
    m.handle(
        Time::ZERO,
        Event::HookFinished {
            hook: HookKind::AfterInit,
            ok: true,
        },
    );
    let slots = spawned(&drain(&mut m));
    assert_eq!(slots.len(), 2);
    assert_eq!(m.totals().spawns, 0, "asked for is not forked yet");
    fork(&mut m, Time::ZERO, slots[0]);
    m.handle(Time::ZERO, Event::SpawnFailed { slot: slots[1] });
    let t = m.totals();
    assert_eq!((t.spawns, t.spawn_failures), (1, 1));
    // A report that matches nothing counts nothing.
    m.handle(Time::ZERO, Event::SpawnFailed { slot: 3 });
    assert_eq!(m.totals().spawn_failures, 1);
}

#[test]
fn exits_are_counted_by_cause() {
    let mut m = serving(builder(2));
    // Slot 0 served 5 requests, then died of a fault after it was healthy: a
    // crash for the metrics, though the backoff forgives it.
    let mut sb = board(&m, ms(2000), &[]);
    sb.slots[0].requests = 5;
    m.handle(ms(2000), Event::Scoreboard(&sb));
    drain(&mut m);
    let a = exit(&mut m, ms(2000), 0, ExitStatus::Signaled(11));
    assert_eq!(exits(&m, ExitCause::Crash), 1);
    assert_eq!(m.totals().exited_requests, 5);
    assert_eq!(
        m.crash_streak(),
        0,
        "the backoff forgives a child that served"
    );
    // Its replacement is forked at once; it exits 0 by itself after serving.
    let again = spawned(&a);
    assert_eq!(again, vec![0]);
    fork(&mut m, ms(2000), 0);
    assert_eq!(m.totals().spawns, 3);
    let a = exit(&mut m, ms(4000), 0, ExitStatus::Exited(0));
    assert_eq!(exits(&m, ExitCause::Other), 1);
    fork(&mut m, ms(4000), spawned(&a)[0]);
    // A child that fails before it is healthy: a crash.
    m.handle(ms(4100), Event::Timer);
    let _ = exit(&mut m, ms(4100), 0, ExitStatus::Exited(1));
    assert_eq!(exits(&m, ExitCause::Crash), 2);
    assert_eq!(m.crash_streak(), 1);

    // A reload retires the old children: retire, and a reload.
    m.handle(ms(5000), Event::Signal(Signal::Hup));
    assert_eq!(m.totals().reloads, 1);
    let a = drain(&mut m);
    for slot in spawned(&a) {
        fork(&mut m, ms(5000), slot);
    }
    drain(&mut m);
    // The new children prove healthy (up min_healthy_uptime): the old ones go.
    m.handle(ms(6000), Event::Timer);
    drain(&mut m);
    let _ = exit(&mut m, ms(6000), 1, ExitStatus::Exited(0));
    assert_eq!(exits(&m, ExitCause::Retire), 1);

    // Shutdown: the rest leave as stopped.
    m.handle(ms(6500), Event::Signal(Signal::Term));
    drain(&mut m);
    let live: Vec<Pid> = m.pids().collect();
    for p in &live {
        m.handle(
            ms(6600),
            Event::ChildExited {
                pid: *p,
                status: ExitStatus::Exited(0),
            },
        );
    }
    assert_eq!(exits(&m, ExitCause::Shutdown), live.len() as u64);
    let t = m.totals();
    assert_eq!(t.exits.total(), 4 + live.len() as u64);
    assert_eq!(
        t.exits.total(),
        t.spawns,
        "every child forked was reaped, each counted once"
    );
}

#[test]
fn a_busy_timeout_is_its_own_cause() {
    let mut m = serving(
        Machine::builder(Options {
            prefork: 1,
            max_children: 4,
            busy_timeout: Some(Duration::from_secs(1)),
            ..Options::default()
        })
        .scaling_policy(Fixed(1)),
    );
    let mut sb = board(&m, ms(100), &[0]);
    sb.slots[0].request_start = Some(ms(100));
    m.handle(ms(100), Event::Scoreboard(&sb));
    drain(&mut m);
    m.handle(ms(1200), Event::Scoreboard(&sb));
    let a = drain(&mut m);
    assert!(
        a.iter().any(|a| matches!(
            a,
            Action::Signal {
                reason: crate::SignalReason::BusyTimeout,
                ..
            }
        )),
        "{a:?}"
    );
    let _ = exit(&mut m, ms(1300), 0, ExitStatus::Signaled(15));
    assert_eq!(exits(&m, ExitCause::BusyTimeout), 1);
    assert_eq!(exits(&m, ExitCause::Crash), 0);
}

#[test]
fn scaling_decisions_are_counted_with_their_children() {
    let mut m = serving(builder(2));
    m.handle(ms(10), Event::Signal(Signal::Ttin));
    let a = drain(&mut m);
    assert_eq!(spawned(&a).len(), 1, "{a:?}");
    let t = m.totals();
    assert_eq!((t.scale_ups, t.scaled_up_children), (1, 1));
    fork(&mut m, ms(10), spawned(&a)[0]);
    drain(&mut m);
    m.handle(ms(20), Event::Signal(Signal::Ttou));
    drain(&mut m);
    let t = m.totals();
    assert_eq!((t.scale_downs, t.scaled_down_children), (1, 1));
    // Holding: no decision counted.
    m.handle(ms(30), Event::Timer);
    drain(&mut m);
    assert_eq!(m.totals().scale_ups + m.totals().scale_downs, 2);
}

#[test]
fn upgrades_are_counted_and_the_totals_cross_the_exec() {
    let mut m = serving(builder(2));
    m.handle(ms(10), Event::Signal(Signal::Usr2));
    drain(&mut m);
    m.handle(ms(20), Event::UpgradeProbed { ok: false });
    drain(&mut m);
    let t = m.totals();
    assert_eq!((t.upgrades_begun, t.upgrades_abandoned), (1, 1));
    assert_eq!(t.reloads, 0, "an upgrade is not counted as a reload");

    m.handle(ms(30), Event::Signal(Signal::Usr2));
    drain(&mut m);
    m.handle(ms(40), Event::UpgradeProbed { ok: true });
    drain(&mut m);
    let handoff: Handoff = m.handoff();
    // Through the JSON the exec carries it in.
    let text = serde_json::to_string(&handoff).unwrap();
    let handoff: Handoff = serde_json::from_str(&text).unwrap();
    let mut new = builder(2).adopt(handoff).build().unwrap();
    assert_eq!(new.totals().spawns, 2);
    new.handle(
        ms(50),
        Event::HookFinished {
            hook: HookKind::AfterInit,
            ok: true,
        },
    );
    let t = new.totals();
    assert_eq!((t.upgrades_begun, t.upgrades_done), (2, 1));
    assert_eq!(t.upgrades_abandoned, 1);
}

#[test]
fn a_handoff_without_totals_starts_them_at_zero() {
    // An older image's handoff has no `totals`: read as zeros.
    let m = serving(builder(1));
    let mut doc = serde_json::to_value(m.handoff()).unwrap();
    doc.as_object_mut().unwrap().remove("totals");
    let handoff: Handoff = serde_json::from_value(doc).unwrap();
    let new = builder(1).adopt(handoff).build().unwrap();
    assert_eq!(new.totals(), crate::Totals::default());
}
