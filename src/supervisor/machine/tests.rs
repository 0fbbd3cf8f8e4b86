//! Unit tests of the machine's timers: each fires at its time, and the earliest
//! one is `poll_timeout`'s answer.

use super::timer_table::Timer;
use super::{Machine, MachineBuilder};
use crate::policy::{Fixed, Pid, Time};
use crate::supervisor::action::{Action, ChildSignal, Notify};
use crate::supervisor::config::Options;
use crate::supervisor::event::{Event, HookKind, Scoreboard, Signal, SlotReading, SlotState};
use crate::supervisor::transitions::State;
use std::time::Duration;

mod totals;
mod upgrade;

fn ms(n: u64) -> Time {
    Time::from_millis(n)
}

fn builder(children: usize) -> MachineBuilder {
    Machine::builder(Options {
        prefork: children,
        max_children: 4,
        ..Options::default()
    })
    .scaling_policy(Fixed(children))
}

fn pid(slot: usize) -> Pid {
    Pid(100 + slot as i32)
}

fn drain(m: &mut Machine) -> Vec<Action> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

/// after_init at 0, every spawn forked and ready at 0: Serving.
fn serving(b: MachineBuilder) -> Machine {
    let mut m = b.build().unwrap();
    m.handle(
        Time::ZERO,
        Event::HookFinished {
            hook: HookKind::AfterInit,
            ok: true,
        },
    );
    let slots: Vec<usize> = drain(&mut m)
        .into_iter()
        .filter_map(|a| match a {
            Action::Spawn { slot, .. } => Some(slot),
            _ => None,
        })
        .collect();
    for &slot in &slots {
        m.handle(
            Time::ZERO,
            Event::ChildSpawned {
                slot,
                pid: pid(slot),
            },
        );
        m.handle(Time::ZERO, Event::ChildReady { pid: pid(slot) });
    }
    drain(&mut m);
    assert_eq!(m.state(), State::Serving);
    m
}

/// A reading with children in `busy` busy (since `now`) and the rest idle.
fn board(m: &Machine, now: Time, busy: &[usize]) -> Scoreboard {
    Scoreboard {
        slots: (0..m.options().max_children)
            .map(|slot| match m.pool.get(slot).and_then(|c| c.pid) {
                Some(p) if busy.contains(&slot) => SlotReading {
                    pid: p,
                    state: SlotState::Busy,
                    request_start: Some(now),
                    ..SlotReading::default()
                },
                Some(p) => SlotReading {
                    pid: p,
                    state: SlotState::Idle,
                    ..SlotReading::default()
                },
                None => SlotReading::default(),
            })
            .collect(),
        backlog: None,
    }
}

fn tick(m: &mut Machine, now: Time, busy: &[usize]) -> Vec<Action> {
    let sb = board(m, now, busy);
    m.handle(now, Event::Scoreboard(&sb));
    drain(m)
}

fn timer(m: &mut Machine, now: Time) -> Vec<Action> {
    m.handle(now, Event::Timer);
    drain(m)
}

fn checks(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::CheckDisconnects))
        .count()
}

fn pings(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Notify(Notify::Watchdog)))
        .count()
}

#[test]
fn the_disconnect_check_runs_only_while_a_child_is_busy() {
    let every = Duration::from_millis(300);
    let mut m = serving(builder(2).disconnect_check_every(every));
    // Idle: nothing scheduled, and the machine waits to hear of a busy child.
    assert_eq!(m.timers.get(Timer::DisconnectCheck), None);
    assert!(m.awaits_first_busy());
    assert_eq!(checks(&tick(&mut m, ms(100), &[])), 0);
    assert_eq!(m.timers.get(Timer::DisconnectCheck), None);

    // A child gets busy at 200: the first look one interval later.
    assert_eq!(checks(&tick(&mut m, ms(200), &[0])), 0);
    assert!(!m.awaits_first_busy());
    assert_eq!(m.timers.get(Timer::DisconnectCheck), Some(ms(500)));
    assert_eq!(m.poll_timeout(), Some(ms(500)), "the earliest timer");
    assert_eq!(checks(&timer(&mut m, ms(499))), 0);
    assert_eq!(checks(&timer(&mut m, ms(500))), 1);
    // Then every interval, counted from the look, while still busy.
    assert_eq!(m.timers.get(Timer::DisconnectCheck), Some(ms(800)));
    assert_eq!(checks(&tick(&mut m, ms(800), &[0])), 1);
    assert_eq!(m.timers.get(Timer::DisconnectCheck), Some(ms(1100)));

    // Idle again: the check stops, and starts afresh with the next busy child.
    assert_eq!(checks(&tick(&mut m, ms(900), &[])), 0);
    assert_eq!(m.timers.get(Timer::DisconnectCheck), None);
    assert!(m.awaits_first_busy());
    assert_eq!(checks(&tick(&mut m, ms(2000), &[1])), 0);
    assert_eq!(m.timers.get(Timer::DisconnectCheck), Some(ms(2300)));
}

#[test]
fn a_retiring_child_still_busy_keeps_the_disconnect_check() {
    let every = Duration::from_millis(300);
    let mut m = serving(builder(1).disconnect_check_every(every));
    tick(&mut m, ms(100), &[0]);
    // A graceful shutdown: the child, TERMed, finishes its request.
    m.handle(ms(150), Event::Signal(Signal::Term));
    drain(&mut m);
    assert_eq!(m.counts().busy, 0, "retiring, not busy");
    assert_eq!(m.pool.in_request(), 1);
    assert!(!m.awaits_first_busy());
    assert_eq!(checks(&timer(&mut m, ms(400))), 1);
    assert_eq!(m.timers.get(Timer::DisconnectCheck), Some(ms(700)));
    // Its request done: no more looks.
    tick(&mut m, ms(500), &[]);
    assert_eq!(m.timers.get(Timer::DisconnectCheck), None);
}

#[test]
fn without_watched_disconnects_there_is_no_check() {
    let mut m = serving(builder(2));
    assert!(!m.awaits_first_busy());
    tick(&mut m, ms(100), &[0, 1]);
    for t in [1_000, 2_000, 10_000] {
        assert_eq!(checks(&tick(&mut m, ms(t), &[0, 1])), 0);
    }
    assert_eq!(m.timers.get(Timer::DisconnectCheck), None);
}

#[test]
fn the_watchdog_pings_at_its_interval_in_every_state_until_stopped() {
    let every = Duration::from_millis(400);
    let mut m = builder(1).watchdog_interval(every).build().unwrap();
    // From the start, Init included.
    assert_eq!(m.poll_timeout(), Some(ms(400)));
    assert_eq!(pings(&timer(&mut m, ms(399))), 0);
    assert_eq!(pings(&timer(&mut m, ms(400))), 1);
    assert_eq!(m.timers.get(Timer::Watchdog), Some(ms(800)));
    m.handle(
        ms(500),
        Event::HookFinished {
            hook: HookKind::AfterInit,
            ok: true,
        },
    );
    let spawned = drain(&mut m);
    assert_eq!(pings(&spawned), 0, "not early");
    for a in spawned {
        if let Action::Spawn { slot, .. } = a {
            m.handle(
                ms(500),
                Event::ChildSpawned {
                    slot,
                    pid: pid(slot),
                },
            );
        }
    }
    drain(&mut m);
    assert_eq!(pings(&timer(&mut m, ms(800))), 1);
    // A late wake-up pings once; the next is one interval after the missed one,
    // or after now if that passed too.
    assert_eq!(pings(&timer(&mut m, ms(1_300))), 1);
    assert_eq!(m.timers.get(Timer::Watchdog), Some(ms(1_600)));
    assert_eq!(pings(&timer(&mut m, ms(2_500))), 1);
    assert_eq!(m.timers.get(Timer::Watchdog), Some(ms(2_900)));
    // Shutting down still pings; stopped, nothing is due.
    m.handle(ms(2_600), Event::Signal(Signal::Term));
    drain(&mut m);
    assert_eq!(m.state(), State::ShuttingDown);
    assert_eq!(pings(&timer(&mut m, ms(2_900))), 1);
    let pids: Vec<Pid> = m.pids().collect();
    for p in pids {
        m.handle(
            ms(3_000),
            Event::ChildExited {
                pid: p,
                status: crate::ExitStatus::Exited(0),
            },
        );
    }
    drain(&mut m);
    assert_eq!(m.state(), State::Stopped);
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn without_a_watchdog_interval_there_is_no_ping() {
    let mut m = serving(builder(1));
    for t in [1_000, 60_000] {
        assert_eq!(pings(&timer(&mut m, ms(t))), 0);
    }
    assert_eq!(m.timers.get(Timer::Watchdog), None);
}

#[test]
fn a_status_line_held_back_goes_out_when_its_interval_ends() {
    // status_interval is 1 s: a change at 300 waits for 1000 (the last STATUS
    // went out at 0).
    let mut m = serving(builder(2));
    let status = |a: &[Action]| {
        a.iter()
            .filter(|a| matches!(a, Action::Notify(Notify::Status { .. })))
            .count()
    };
    assert_eq!(status(&tick(&mut m, ms(300), &[0])), 0);
    assert_eq!(m.timers.get(Timer::Status), Some(ms(1_000)));
    // busy_refresh (1 s after 300) is later: the status timer is the next wake-up.
    assert_eq!(m.poll_timeout(), Some(ms(1_000)));
    assert_eq!(status(&timer(&mut m, ms(1_000))), 1);
    assert_eq!(m.timers.get(Timer::Status), None);
}

#[test]
fn the_shutdown_kill_and_give_up_times_are_timers() {
    let mut m = serving(builder(1));
    m.handle(ms(100), Event::Signal(Signal::Term));
    drain(&mut m);
    let graceful = m.options().graceful_timeout;
    let kill_wait = m.options().kill_wait;
    let kill_at = ms(100) + graceful;
    assert_eq!(
        m.timers.entries().collect::<Vec<_>>(),
        vec![(Timer::ShutdownKill, kill_at)],
        "only the shutdown's timer: the serving ones are stopped"
    );
    let a = timer(&mut m, kill_at);
    assert!(a.iter().any(|a| matches!(
        a,
        Action::Signal {
            signal: ChildSignal::Kill,
            ..
        }
    )));
    assert_eq!(
        m.timers.entries().collect::<Vec<_>>(),
        vec![(Timer::ShutdownGiveUp, kill_at + kill_wait)]
    );
    let a = timer(&mut m, kill_at + kill_wait);
    assert_eq!(a.last(), Some(&Action::Exit { code: 1 }));
}

#[test]
fn zero_intervals_are_refused_by_name() {
    for (b, name) in [
        (
            builder(1).disconnect_check_every(Duration::ZERO),
            "disconnect_check_every",
        ),
        (
            builder(1).watchdog_interval(Duration::ZERO),
            "watchdog_interval",
        ),
    ] {
        match b.build() {
            Err(e) => assert_eq!(e.option(), name),
            other => panic!("{name} = 0 accepted: {other:?}"),
        }
    }
}

#[test]
fn a_child_that_leaves_before_it_served_is_replaced_only_once_its_exit_is_known() {
    // Spawning 3; child 0 becomes ready, then its main_loop fails at once: its slot
    // says retiring before its exit is reaped. Replacing it then would fork past
    // the crash-loop backoff, which only its exit can start.
    let mut m = builder(3).build().unwrap();
    m.handle(
        Time::ZERO,
        Event::HookFinished {
            hook: HookKind::AfterInit,
            ok: true,
        },
    );
    for a in drain(&mut m) {
        if let Action::Spawn { slot, .. } = a {
            m.handle(
                Time::ZERO,
                Event::ChildSpawned {
                    slot,
                    pid: pid(slot),
                },
            );
        }
    }
    drain(&mut m);
    let mut sb = board(&m, ms(1), &[]);
    sb.slots[0].state = SlotState::Retiring;
    for slot in [1, 2] {
        sb.slots[slot].state = SlotState::Starting;
    }
    for t in [1, 2, 3] {
        m.handle(ms(t), Event::Scoreboard(&sb));
        let spawns = drain(&mut m)
            .iter()
            .filter(|a| matches!(a, Action::Spawn { .. }))
            .count();
        assert_eq!(spawns, 0, "replaced before its exit was known (at {t} ms)");
    }
    // Its exit: a crash, and the backoff holds the replacement back.
    m.handle(
        ms(4),
        Event::ChildExited {
            pid: pid(0),
            status: crate::ExitStatus::Exited(1),
        },
    );
    assert_eq!(m.crash_streak(), 1);
    let a = drain(&mut m);
    assert!(
        !a.iter().any(|a| matches!(a, Action::Spawn { .. })),
        "{a:?}"
    );
    let end = m.timers.get(Timer::BackoffEnd).expect("a backoff");
    let a = timer(&mut m, end);
    assert_eq!(
        a.iter()
            .filter(|a| matches!(a, Action::Spawn { .. }))
            .count(),
        1,
        "{a:?}"
    );
}
