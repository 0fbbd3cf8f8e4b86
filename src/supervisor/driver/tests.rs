//! Unit tests of the driver with a fake world: each ordering rule, and each
//! action answered with its event.

use super::*;
use crate::supervisor::action::{Action, Hook, Image};
use crate::supervisor::event::Signal;
use crate::supervisor::event::{HookKind, SlotReading, SlotState};
use crate::supervisor::machine::MachineBuilder;
use crate::Options;
use std::collections::VecDeque;

/// A fake world: children are slots of a scoreboard; every effect is logged.
#[derive(Default)]
struct Fake {
    now: Time,
    slots: Vec<SlotReading>,
    exits: VecDeque<(Pid, ExitStatus)>,
    log: Vec<String>,
    stopping: bool,
    busy_slot: bool,
    /// The next pid a fork gives; `None`: forks fail.
    next_pid: Option<i32>,
    /// What `after_init` answers.
    init_fails: bool,
    changed: bool,
    exe_changed: bool,
    /// A trial's outcome: given at once, or later.
    probe_now: Option<bool>,
    probe_later: Option<bool>,
}

impl Effects for Fake {
    fn now(&self) -> Time {
        self.now
    }
    fn try_reap(&mut self) -> Option<(Pid, ExitStatus)> {
        let e = self.exits.pop_front()?;
        self.log.push(format!("reap {}", e.0 .0));
        Some(e)
    }
    fn read_scoreboard(&mut self, into: &mut Scoreboard) {
        self.log.push("read".into());
        into.slots = self.slots.clone();
    }
    fn release(&mut self, pid: Pid) {
        self.log.push(format!("release {}", pid.0));
        for s in &mut self.slots {
            if s.pid == pid {
                *s = SlotReading::default();
            }
        }
    }
    fn signal(&mut self, pid: Pid, signal: ChildSignal, alone: bool) {
        let seen = if self.stopping {
            " (stop flag set)"
        } else {
            ""
        };
        let alone = if alone { " alone" } else { "" };
        self.log
            .push(format!("{} {}{alone}{seen}", signal.name(), pid.0));
    }
    fn mark_stopping(&mut self) {
        self.log.push("stopping".into());
        self.stopping = true;
    }
    fn busy_watch(&mut self) -> bool {
        self.log.push("busy watch".into());
        self.busy_slot
    }
    fn fork(&mut self, spawn: Spawn) -> Option<Pid> {
        let quiet = if spawn.quiet_failure { " quiet" } else { "" };
        let Some(pid) = self.next_pid.as_mut() else {
            self.log.push(format!("fork {} failed{quiet}", spawn.slot));
            return None;
        };
        *pid += 1;
        self.log
            .push(format!("fork {} as {}{quiet}", spawn.slot, *pid - 1));
        Some(Pid(*pid - 1))
    }
    fn run_hook(&mut self, hook: Hook) -> bool {
        self.log.push(format!("hook {:?}", hook.kind()));
        !(hook == Hook::AfterInit && self.init_fails)
    }
    fn reopen_logs(&mut self) {
        self.log.push("reopen".into());
    }
    fn files_changed(&mut self) -> Changed {
        self.log.push("look at files".into());
        Changed {
            data: std::mem::take(&mut self.changed),
            executable: std::mem::take(&mut self.exe_changed),
        }
    }
    fn probe_upgrade(&mut self, handoff: &Handoff) -> Option<bool> {
        self.log
            .push(format!("probe with {} children", handoff.pids().count()));
        self.probe_now
    }
    fn probe_outcome(&mut self) -> Option<bool> {
        self.probe_later.take()
    }
    fn reexec(&mut self, image: Image, handoff: Handoff) {
        self.log.push(format!(
            "reexec {image:?} with {} children",
            handoff.pids().count()
        ));
    }
    fn connections(&mut self, children: &[Pid]) -> Option<Vec<Connection>> {
        self.log.push(format!("connections of {}", children.len()));
        Some(Vec::new())
    }
    fn notify(&mut self, notify: Notify) {
        self.log.push(format!("notify {notify:?}"));
    }
    fn log(&mut self, level: Level, message: String) {
        self.log.push(format!("log {level:?}: {message}"));
    }
}

/// A machine serving `n` ready, idle children (pids 100, 101...), and the fake
/// scoreboard showing them.
fn serving(n: usize) -> (Machine, Fake) {
    serving_with(n, |b| b)
}

/// [`serving`], with the builder adjusted by `with`.
fn serving_with(n: usize, with: impl FnOnce(MachineBuilder) -> MachineBuilder) -> (Machine, Fake) {
    let opts = Options {
        prefork: n,
        max_children: n + 2,
        ..Options::default()
    };
    let mut m = with(Machine::builder(opts)).build().unwrap();
    let mut fx = Fake {
        slots: vec![SlotReading::default(); n + 2],
        ..Fake::default()
    };
    m.handle(
        fx.now,
        Event::HookFinished {
            hook: HookKind::AfterInit,
            ok: true,
        },
    );
    let mut pid = 100;
    while let Some(a) = m.poll_action() {
        if let Action::Spawn { slot, .. } = a {
            m.handle(
                fx.now,
                Event::ChildSpawned {
                    slot,
                    pid: Pid(pid),
                },
            );
            m.handle(fx.now, Event::ChildReady { pid: Pid(pid) });
            fx.slots[slot] = SlotReading {
                pid: Pid(pid),
                state: SlotState::Idle,
                ..SlotReading::default()
            };
            pid += 1;
        }
    }
    assert_eq!(m.state(), State::Serving);
    (m, fx)
}

#[test]
fn a_child_that_left_by_itself_is_read_before_its_exit_and_is_no_crash() {
    let (mut m, mut fx) = serving(2);
    // Child 100 served its request limit: its slot says retiring, then it exits.
    fx.now = Time::from_millis(10);
    fx.slots[0].state = SlotState::Retiring;
    fx.slots[0].requests = 5;
    fx.exits.push_back((Pid(100), ExitStatus::Exited(0)));
    let mut reading = Scoreboard::default();
    assert_eq!(reap(&mut m, &mut fx, &mut reading), 1);
    assert_eq!(fx.log, ["reap 100", "read", "release 100"]);
    assert_eq!(m.crash_streak(), 0, "a recycled child is no crash");
    // Reported without the reading first, the same exit is a crash.
    let (mut m, fx) = serving(2);
    m.handle(
        fx.now,
        Event::ChildExited {
            pid: Pid(100),
            status: ExitStatus::Exited(0),
        },
    );
    assert_eq!(m.crash_streak(), 1, "the rule is what tells them apart");
}

#[test]
fn nothing_reaped_reads_nothing() {
    let (mut m, mut fx) = serving(1);
    assert_eq!(reap(&mut m, &mut fx, &mut Scoreboard::default()), 0);
    assert!(fx.log.is_empty(), "{:?}", fx.log);
}

#[test]
fn the_stop_flag_is_set_before_the_first_shutdown_term() {
    let (mut m, mut fx) = serving(3);
    let mut marked = false;
    carry_out(&mut m, &mut fx, &mut marked);
    assert!(fx.log.is_empty(), "{:?}", fx.log);
    m.handle(fx.now, Event::Signal(Signal::Term));
    assert_eq!(carry_out(&mut m, &mut fx, &mut marked), None);
    assert_eq!(
        fx.log.first().map(String::as_str),
        Some("stopping"),
        "{:?}",
        fx.log
    );
    let terms: Vec<&String> = fx.log.iter().filter(|l| l.starts_with("TERM")).collect();
    assert_eq!(terms.len(), 3, "{:?}", fx.log);
    assert!(
        terms
            .iter()
            .all(|l| l.ends_with("(stop flag set)") && !l.contains("alone")),
        "{:?}",
        fx.log
    );
    assert_eq!(fx.log.iter().filter(|l| *l == "stopping").count(), 1);
    assert!(!fx.log.iter().any(|l| l == "hook AfterInit"));
}

#[test]
fn a_term_that_is_no_shutdown_is_marked_alone() {
    let (mut m, mut fx) = serving(2);
    let mut marked = false;
    // TTOU: one child fewer, a lone retirement.
    m.handle(fx.now, Event::Signal(Signal::Ttou));
    carry_out(&mut m, &mut fx, &mut marked);
    assert!(
        fx.log
            .iter()
            .any(|l| l.starts_with("TERM") && l.contains("alone")),
        "{:?}",
        fx.log
    );
    assert!(!marked && !fx.stopping);
}

/// Runs the machine's timers for 10 s of an idle pool; how many looks for
/// hung-up clients it asked for.
fn idle_looks(m: &mut Machine, fx: &mut Fake, marked: &mut bool) -> usize {
    let end = fx.now + std::time::Duration::from_secs(10);
    let mut looks = 0;
    // (Bounded: a timer that never moved on would fail, not hang.)
    for _ in 0..10_000 {
        let Some(t) = m.poll_timeout().filter(|&t| t <= end) else {
            fx.now = end;
            return looks;
        };
        fx.now = t.max(fx.now);
        m.handle(fx.now, Event::Timer);
        fx.log.clear();
        carry_out(m, fx, marked);
        looks += fx
            .log
            .iter()
            .filter(|l| l.starts_with("connections"))
            .count();
    }
    panic!("the machine's timers never got past {end:?}");
}

#[test]
fn the_first_busy_child_is_never_missed_and_an_idle_pool_never_scanned() {
    let every = std::time::Duration::from_millis(300);
    let (mut m, mut fx) = serving_with(2, |b| b.disconnect_check_every(every));
    let mut marked = false;
    // Idle pool: no look scheduled; the first child to get busy is asked to say so.
    assert!(!busy_unseen(&m, &mut fx));
    assert_eq!(fx.log, ["busy watch"]);
    assert_eq!(idle_looks(&mut m, &mut fx, &mut marked), 0);
    fx.log.clear();
    // Child 101 got busy before the watch was armed: its slot shows it, so
    // the scoreboard must be read before sleeping.
    fx.busy_slot = true;
    fx.slots[1].state = SlotState::Busy;
    fx.slots[1].request_start = Some(fx.now);
    assert!(busy_unseen(&m, &mut fx));
    tick(&mut m, &mut fx, &mut Scoreboard::default());
    // The machine counts it busy now: no watch, and a look one interval on.
    fx.log.clear();
    assert!(!busy_unseen(&m, &mut fx));
    assert!(fx.log.is_empty(), "{:?}", fx.log);
    let at = fx.now + every;
    assert!(m.poll_timeout().is_some_and(|t| t <= at));
    fx.now = at;
    m.handle(fx.now, Event::Timer);
    carry_out(&mut m, &mut fx, &mut marked);
    assert!(
        fx.log.iter().any(|l| l == "connections of 2"),
        "{:?}",
        fx.log
    );
    // Idle again: no look, and the watch is armed again.
    fx.busy_slot = false;
    fx.slots[1].state = SlotState::Idle;
    fx.slots[1].request_start = None;
    tick(&mut m, &mut fx, &mut Scoreboard::default());
    fx.log.clear();
    assert!(!busy_unseen(&m, &mut fx));
    assert_eq!(fx.log, ["busy watch"]);
    assert_eq!(idle_looks(&mut m, &mut fx, &mut marked), 0);
    // Nobody watches disconnects: no watch at all.
    let (m, mut fx) = serving(2);
    assert!(!busy_unseen(&m, &mut fx));
    assert!(fx.log.is_empty(), "{:?}", fx.log);
}

#[test]
fn every_action_is_answered_with_its_event() {
    // after_init runs as a hook and its answer starts the pool; each fork is
    // answered with its pid.
    let opts = Options {
        prefork: 2,
        max_children: 3,
        ..Options::default()
    };
    let mut m = Machine::new(opts.clone()).unwrap();
    let mut fx = Fake {
        next_pid: Some(200),
        ..Fake::default()
    };
    let mut marked = false;
    assert_eq!(carry_out(&mut m, &mut fx, &mut marked), None);
    assert_eq!(fx.log[0], "hook AfterInit");
    assert_eq!(
        fx.log
            .iter()
            .filter(|l| l.starts_with("fork"))
            .collect::<Vec<_>>(),
        ["fork 0 as 200", "fork 1 as 201"]
    );
    assert_eq!(m.pids().collect::<Vec<_>>(), [Pid(200), Pid(201)]);
    // A failing after_init: no fork, and the machine exits with 1.
    let mut m = Machine::new(opts.clone()).unwrap();
    let mut fx = Fake {
        init_fails: true,
        ..Fake::default()
    };
    assert_eq!(carry_out(&mut m, &mut fx, &mut marked), Some(1));
    assert!(
        !fx.log.iter().any(|l| l.starts_with("fork")),
        "{:?}",
        fx.log
    );
}

#[test]
fn a_failed_fork_is_a_crash_and_later_forks_are_told_to_be_quiet() {
    let opts = Options {
        prefork: 1,
        max_children: 2,
        ..Options::default()
    };
    let mut m = Machine::new(opts).unwrap();
    let mut fx = Fake::default(); // forks fail
    let mut marked = false;
    carry_out(&mut m, &mut fx, &mut marked);
    assert!(fx.log.iter().any(|l| l == "fork 0 failed"), "{:?}", fx.log);
    assert_eq!(m.crash_streak(), 1, "answered with SpawnFailed");
    // The retry after the backoff: the streak's reason is logged already.
    fx.next_pid = Some(300);
    fx.now = m.poll_timeout().expect("the backoff's end");
    fx.log.clear();
    m.handle(fx.now, Event::Timer);
    carry_out(&mut m, &mut fx, &mut marked);
    assert!(
        fx.log.iter().any(|l| l == "fork 0 as 300 quiet"),
        "{:?}",
        fx.log
    );
}

#[test]
fn a_changed_file_is_answered_and_the_machine_reloads() {
    let opts = Options {
        prefork: 1,
        max_children: 3,
        auto_reload_check_every: Some(std::time::Duration::from_secs(1)),
        ..Options::default()
    };
    let (mut m, mut fx) = serving_with(1, |_| Machine::builder(opts));
    let mut marked = false;
    fx.next_pid = Some(400);
    fx.changed = true;
    fx.now = m.poll_timeout().expect("the check's time");
    m.handle(fx.now, Event::Timer);
    carry_out(&mut m, &mut fx, &mut marked);
    let at = |what: &str| fx.log.iter().position(|l| l.starts_with(what));
    let (look, handler, fork) = (at("look at files"), at("hook ReloadHandler"), at("fork"));
    assert!(
        look.is_some() && look < handler && handler < fork,
        "{:?}",
        fx.log
    );
    assert_eq!(m.state(), State::Reloading);
}

#[test]
fn a_re_exec_comes_after_every_other_action_of_its_step() {
    let opts = Options {
        prefork: 2,
        max_children: 4,
        busy_timeout: Some(std::time::Duration::from_millis(100)),
        ..Options::default()
    };
    let mut m = Machine::new(opts).unwrap();
    let mut fx = Fake {
        next_pid: Some(500),
        slots: vec![SlotReading::default(); 4],
        ..Fake::default()
    };
    let mut marked = false;
    carry_out(&mut m, &mut fx, &mut marked);
    for (slot, pid) in [(0, 500), (1, 501)] {
        m.handle(fx.now, Event::ChildReady { pid: Pid(pid) });
        fx.slots[slot] = SlotReading {
            pid: Pid(pid),
            state: SlotState::Idle,
            ..SlotReading::default()
        };
    }
    // Child 500 busy since 0 (its busy timeout passes at 100 ms).
    fx.slots[0].state = SlotState::Busy;
    fx.slots[0].request_start = Some(Time::ZERO);
    tick(&mut m, &mut fx, &mut Scoreboard::default());
    carry_out(&mut m, &mut fx, &mut marked);
    // USR2 at 50 ms; the trial's answer comes with a reap at 200 ms, the step
    // that also finds the busy timeout passed.
    fx.now = Time::from_millis(50);
    m.handle(fx.now, Event::Signal(Signal::Usr2));
    carry_out(&mut m, &mut fx, &mut marked);
    fx.now = Time::from_millis(200);
    fx.probe_later = Some(true);
    fx.log.clear();
    reap(&mut m, &mut fx, &mut Scoreboard::default());
    carry_out(&mut m, &mut fx, &mut marked);
    let at = |what: &str| fx.log.iter().position(|l| l.starts_with(what));
    let (term, reexec) = (at("TERM 500"), at("reexec New"));
    assert!(
        term.is_some() && reexec.is_some() && term < reexec,
        "{:?}",
        fx.log
    );
    // And the fork asked in the same step, before the handoff is taken.
    assert!(at("fork 2") < reexec, "{:?}", fx.log);
}
