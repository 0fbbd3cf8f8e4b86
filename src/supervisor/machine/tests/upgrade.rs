//! The in-place upgrade, step by step: the trial, the re-exec, the adoption, and
//! the ways back.

use super::*;
use crate::supervisor::action::Image;
use crate::supervisor::machine::{Handoff, ROLLBACK_CRASHES};
use crate::ExitStatus;

fn upgrades(a: &[Action]) -> (usize, usize, usize) {
    let n = |f: &dyn Fn(&Action) -> bool| a.iter().filter(|a| f(a)).count();
    (
        n(&|a| matches!(a, Action::ProbeUpgrade)),
        n(&|a| matches!(a, Action::ReExec(Image::New))),
        n(&|a| matches!(a, Action::ReExec(Image::Previous))),
    )
}

fn notifies(a: &[Action], n: Notify) -> usize {
    a.iter()
        .filter(|x| **x == Action::Notify(n.clone()))
        .count()
}

/// The TERMs among `a`.
fn terms(a: &[Action]) -> usize {
    a.iter()
        .filter(|a| {
            matches!(
                a,
                Action::Signal {
                    signal: ChildSignal::Term,
                    ..
                }
            )
        })
        .count()
}

fn errors(a: &[Action]) -> Vec<String> {
    a.iter()
        .filter_map(|a| match a {
            Action::Log {
                level: crate::Level::Error,
                message,
            } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn usr2_tries_the_new_executable_first_and_a_failed_trial_keeps_serving() {
    let mut m = serving(builder(2));
    m.handle(ms(10), Event::Signal(Signal::Usr2));
    let a = drain(&mut m);
    assert_eq!(upgrades(&a), (1, 0, 0), "{a:?}");
    assert_eq!(notifies(&a, Notify::Reloading), 1);
    // A second USR2 while the trial runs: ignored.
    m.handle(ms(20), Event::Signal(Signal::Usr2));
    assert_eq!(upgrades(&drain(&mut m)), (0, 0, 0));
    // The trial fails: said, READY again, nothing else changes.
    m.handle(ms(30), Event::UpgradeProbed { ok: false });
    let a = drain(&mut m);
    assert_eq!(upgrades(&a), (0, 0, 0));
    assert_eq!(notifies(&a, Notify::Ready), 1);
    assert!(
        errors(&a).iter().any(|e| e.contains("keeps serving")),
        "{a:?}"
    );
    assert_eq!(m.state(), State::Serving);
    assert_eq!(m.pids().count(), 2);
    // A later USR2 tries again.
    m.handle(ms(40), Event::Signal(Signal::Usr2));
    assert_eq!(upgrades(&drain(&mut m)), (1, 0, 0));
}

#[test]
fn a_passed_trial_re_executes_and_a_failed_exec_keeps_serving() {
    let mut m = serving(builder(2));
    m.handle(ms(10), Event::ExecutableChanged);
    assert_eq!(upgrades(&drain(&mut m)), (1, 0, 0));
    m.handle(ms(20), Event::UpgradeProbed { ok: true });
    assert_eq!(upgrades(&drain(&mut m)), (0, 1, 0));
    m.handle(ms(30), Event::ReExecFailed);
    let a = drain(&mut m);
    assert_eq!(notifies(&a, Notify::Ready), 1);
    assert_eq!(m.state(), State::Serving);
    // An answer nobody asked for changes nothing.
    m.handle(ms(40), Event::UpgradeProbed { ok: true });
    assert_eq!(upgrades(&drain(&mut m)), (0, 0, 0));
}

#[test]
fn a_stop_during_the_trial_wins() {
    let mut m = serving(builder(2));
    m.handle(ms(10), Event::Signal(Signal::Usr2));
    drain(&mut m);
    m.handle(ms(20), Event::Signal(Signal::Term));
    drain(&mut m);
    m.handle(ms(30), Event::UpgradeProbed { ok: true });
    assert_eq!(upgrades(&drain(&mut m)), (0, 0, 0));
    assert_eq!(m.state(), State::ShuttingDown);
}

/// A machine of 4 slots serving 2 children (pids 100, 101), child 0 busy, then
/// its handoff as the runtime takes it at the re-exec.
fn handed_over(previous: bool) -> (Machine, Handoff) {
    let mut m = serving(builder(2));
    tick(&mut m, ms(500), &[0]);
    m.handle(ms(600), Event::Signal(Signal::Usr2));
    m.handle(ms(610), Event::UpgradeProbed { ok: true });
    drain(&mut m);
    let h = m.handoff().with_previous(previous);
    (m, h)
}

fn after_init(m: &mut Machine, now: Time, ok: bool) -> Vec<Action> {
    m.handle(
        now,
        Event::HookFinished {
            hook: HookKind::AfterInit,
            ok,
        },
    );
    drain(m)
}

#[test]
fn the_handoff_carries_every_child_and_survives_serde() {
    let (old, h) = handed_over(true);
    let text = serde_json::to_string(&h).unwrap();
    let h2: Handoff = serde_json::from_str(&text).unwrap();
    assert_eq!(h, h2);
    assert_eq!(h.pids().collect::<Vec<_>>(), old.pids().collect::<Vec<_>>());
    assert_eq!(h.now(), ms(610));
    // A field added by a later image of the same format is ignored (the way back
    // to an older image must not fail on it)...
    let later = text.replacen('{', "{\"extra\":1,", 1);
    let later = later.replacen("\"children\":[{", "\"children\":[{\"extra\":2,", 1);
    assert_eq!(serde_json::from_str::<Handoff>(&later).unwrap(), h);
    // ...while another format is refused, naming it, before anything is adopted.
    let other = text.replacen("\"format\":1", "\"format\":2", 1);
    assert_ne!(other, text);
    let e = Machine::builder(Options {
        prefork: 2,
        max_children: 4,
        ..Options::default()
    })
    .scaling_policy(Fixed(2))
    .adopt(serde_json::from_str(&other).unwrap())
    .build()
    .unwrap_err();
    assert_eq!(e.option(), "handoff");
    assert!(e.reason().contains("format 2"), "{e}");
}

#[test]
fn the_new_image_adopts_the_children_and_rolls_them_over_without_a_dip() {
    let (old, h) = handed_over(true);
    let mut m = builder(2).adopt(h).build().unwrap();
    assert!(m.adopted());
    assert_eq!(m.state(), State::Init);
    assert_eq!(m.pids().collect::<Vec<_>>(), old.pids().collect::<Vec<_>>());
    assert_eq!(m.counts(), old.counts(), "counted as they were");
    // after_init succeeds: Reloading to a new generation, old ones still serving.
    let a = after_init(&mut m, ms(700), true);
    assert_eq!(m.state(), State::Reloading);
    let spawns: Vec<usize> = a
        .iter()
        .filter_map(|a| match a {
            Action::Spawn {
                slot, generation, ..
            } => {
                assert_eq!(*generation, 2);
                Some(*slot)
            }
            _ => None,
        })
        .collect();
    assert_eq!(spawns.len(), 2, "{a:?}");
    assert!(spawns.iter().all(|s| *s >= 2), "adopted slots stay taken");
    assert_eq!(
        a.iter()
            .filter(|a| matches!(a, Action::Signal { .. }))
            .count(),
        0,
        "no old child retired before a new one serves"
    );
    let mut later = Vec::new();
    for (i, &slot) in spawns.iter().enumerate() {
        let p = Pid(200 + i as i32);
        m.handle(ms(701), Event::ChildSpawned { slot, pid: p });
        assert!(m.counts().serving() >= 2);
        m.handle(ms(702), Event::ChildReady { pid: p });
        later.extend(drain(&mut m));
        assert!(m.counts().serving() >= 2, "never below the minimum");
    }
    // Ready is no proof: the old ones serve on until the new ones prove
    // healthy, here by staying up min_healthy_uptime (1 s after their READY).
    assert_eq!(terms(&later), 0, "{later:?}");
    while let Some(t) = m.poll_timeout().filter(|&t| t < ms(1702)) {
        m.handle(t, Event::Timer);
        let a = drain(&mut m);
        assert_eq!(terms(&a), 0, "at {t:?}: {a:?}");
    }
    assert_eq!(m.poll_timeout(), Some(ms(1702)));
    m.handle(ms(1702), Event::Timer);
    later.extend(drain(&mut m));
    // Both old ones retired once the new ones are proved: READY, Serving, and they go.
    let retired = terms(&later);
    assert_eq!(retired, 2, "{later:?}");
    assert_eq!(m.state(), State::Serving);
    assert_eq!(notifies(&later, Notify::Ready), 1, "{later:?}");
    for p in [100, 101] {
        m.handle(
            ms(1800),
            Event::ChildExited {
                pid: Pid(p),
                status: ExitStatus::Exited(0),
            },
        );
    }
    drain(&mut m);
    assert_eq!(m.pids().collect::<Vec<_>>(), [Pid(200), Pid(201)]);
    assert_eq!(m.generation(), 2);
}

#[test]
fn a_failed_after_init_hands_the_children_back_or_stops_them() {
    let (_, h) = handed_over(true);
    let mut m = builder(2).adopt(h).build().unwrap();
    let a = after_init(&mut m, ms(700), false);
    assert_eq!(upgrades(&a), (0, 0, 1), "{a:?}");
    assert_eq!(m.pids().count(), 2, "still its children until the exec");
    // That exec failing too: no way left; the adopted children are stopped
    // gracefully (this image has no after_init state to fork with).
    m.handle(ms(710), Event::ReExecFailed);
    let a = drain(&mut m);
    assert_eq!(m.state(), State::ShuttingDown, "{a:?}");

    // Without a previous image: the adopted children are stopped, not orphaned.
    let (_, h) = handed_over(false);
    let mut m = builder(2).adopt(h).build().unwrap();
    let a = after_init(&mut m, ms(700), false);
    assert_eq!(upgrades(&a), (0, 0, 0));
    assert_eq!(m.state(), State::ShuttingDown);
    assert_eq!(terms(&a), 2);
}

/// Answers every spawn in `a` and later timers with a child that dies at once,
/// until the machine asks for the way back (within 50 s); the time then, or
/// `None` if it never did.
fn crash_until_way_back(m: &mut Machine, mut a: Vec<Action>, mut t: u64) -> Option<u64> {
    let mut next_pid = 300;
    for _ in 0..50 {
        if upgrades(&a).2 == 1 {
            return Some(t);
        }
        let spawns: Vec<usize> = a
            .iter()
            .filter_map(|x| match x {
                Action::Spawn { slot, .. } => Some(*slot),
                _ => None,
            })
            .collect();
        a.clear();
        for slot in spawns {
            let p = Pid(next_pid);
            next_pid += 1;
            m.handle(ms(t), Event::ChildSpawned { slot, pid: p });
            m.handle(
                ms(t + 1),
                Event::ChildExited {
                    pid: p,
                    status: ExitStatus::Exited(1),
                },
            );
            a.extend(drain(m));
            assert!(m.pids().any(|p| p == Pid(100)), "old children kept");
        }
        t += 1_000;
        if upgrades(&a).2 == 1 {
            return Some(t);
        }
        a.extend(timer(m, ms(t)));
    }
    None
}

#[test]
fn a_new_generation_that_crashes_before_serving_is_rolled_back() {
    let (_, h) = handed_over(true);
    let mut m = builder(2).adopt(h).build().unwrap();
    let a = after_init(&mut m, ms(700), true);
    // Every new child dies at once; the old ones keep serving meanwhile.
    let back = crash_until_way_back(&mut m, a, 700);
    assert!(
        back.is_some(),
        "no rollback after repeated crashes: streak {}, {:?}",
        m.crash_streak(),
        m.state()
    );
    assert!(m.crash_streak() >= ROLLBACK_CRASHES);
}

#[test]
fn a_handoff_that_does_not_fit_is_refused_naming_max_children() {
    let (_, h) = handed_over(true);
    // Two children in slots 0 and 1: a pool of one slot cannot hold them.
    let e = Machine::builder(Options {
        prefork: 1,
        max_children: 1,
        ..Options::default()
    })
    .scaling_policy(Fixed(1))
    .adopt(h)
    .build()
    .unwrap_err();
    assert_eq!(e.option(), "max_children");
    assert!(e.reason().contains("at least 2"), "{e}");
}

#[test]
fn the_operators_ttin_and_the_policys_state_cross_the_upgrade() {
    let mut m = serving(builder(2));
    m.handle(ms(10), Event::Signal(Signal::Ttin));
    m.handle(ms(11), Event::Signal(Signal::Ttin));
    m.handle(ms(12), Event::Signal(Signal::Ttou));
    drain(&mut m);
    let h = m.handoff();
    let adopted = builder(2).adopt(h).build().unwrap();
    assert_eq!(
        adopted.scaling_policy().quiet_range(),
        3..=3,
        "Fixed(2) + 1"
    );
    // The default policy's ramp state travels by name.
    let e = Machine::new(Options {
        prefork: 2,
        max_children: 4,
        ..Options::default()
    })
    .unwrap();
    let text = serde_json::to_string(&e.handoff()).unwrap();
    assert!(text.contains("\"elastic\""), "{text}");
    let h: Handoff = serde_json::from_str(&text).unwrap();
    let again = Machine::builder(Options {
        prefork: 2,
        max_children: 4,
        ..Options::default()
    })
    .adopt(h)
    .build()
    .unwrap();
    assert!(again.adopted());
}

#[test]
fn a_failed_way_back_is_not_retried_at_every_step_and_no_upgrade_stacks_on_an_unproven_one() {
    let (_, h) = handed_over(true);
    let mut m = builder(2).adopt(h).build().unwrap();
    let a = after_init(&mut m, ms(700), true);
    // An upgrade before the new generation is proven: refused.
    m.handle(ms(701), Event::Signal(Signal::Usr2));
    assert_eq!(upgrades(&drain(&mut m)), (0, 0, 0));
    // Crash the new generation until the way back is asked for.
    let t = crash_until_way_back(&mut m, a, 700).expect("no way back asked for");
    // It fails: not asked again, at this step or later ones.
    m.handle(ms(t), Event::ReExecFailed);
    let mut later = drain(&mut m);
    for i in 1..5 {
        later.extend(timer(&mut m, ms(t + i * 1_000)));
    }
    assert_eq!(upgrades(&later).2, 0, "{later:?}");
}
