//! Property tests of the in-place upgrade's handoff: across any interleaving of
//! events around it (children getting ready, busy, idle, crashing, exiting; HUPs,
//! TTIN/TTOU, timers; upgrades, and the way back), no child is lost from the
//! books, none is counted twice, and the machine itself never takes the serving
//! count below the reload's minimum. Cases: `PROPTEST_CASES` (CI sets 1000).

use preforkd::policy::Fixed;
use preforkd::{
    Action, ChildSignal, Event, ExitStatus, Handoff, HookKind, Image, Machine, Options, Pid,
    Scoreboard, Signal, SlotReading, SlotState, State, Time,
};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone)]
enum Op {
    Ready(usize),
    Busy(usize),
    Idle(usize),
    Crash(usize),
    Tick,
    Advance(u64),
    Hup,
    Ttin,
    Ttou,
    Usr2,
    TrialFails,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..8usize).prop_map(Op::Ready),
        3 => (0..8usize).prop_map(Op::Busy),
        3 => (0..8usize).prop_map(Op::Idle),
        1 => (0..8usize).prop_map(Op::Crash),
        3 => Just(Op::Tick),
        2 => (1..3_000u64).prop_map(Op::Advance),
        1 => Just(Op::Hup),
        1 => Just(Op::Ttin),
        1 => Just(Op::Ttou),
        2 => Just(Op::Usr2),
        1 => Just(Op::TrialFails),
    ]
}

/// A child of the fake world.
#[derive(Debug, Clone, Copy)]
struct Kid {
    slot: usize,
    ready: bool,
    busy: bool,
    /// TERMed or KILLed: it exits at the next step.
    leaving: Option<ExitStatus>,
}

struct World {
    m: Machine,
    now: Time,
    kids: BTreeMap<Pid, Kid>,
    next_pid: i32,
    /// The trial's answer to give next.
    trial_ok: bool,
    upgrades: usize,
}

const MAX: usize = 6;

fn builder() -> preforkd::MachineBuilder {
    Machine::builder(Options {
        prefork: 3,
        max_children: MAX,
        seed: 7,
        ..Options::default()
    })
    .scaling_policy(Fixed(3))
}

impl World {
    fn new() -> World {
        let mut w = World {
            m: builder().build().unwrap(),
            now: Time::ZERO,
            kids: BTreeMap::new(),
            next_pid: 100,
            trial_ok: true,
            upgrades: 0,
        };
        w.carry_out();
        w
    }

    fn feed(&mut self, e: Event<'_>) {
        let now = self.now;
        self.m.handle(now, e);
        self.carry_out();
    }

    fn scoreboard(&self) -> Scoreboard {
        let mut slots = vec![SlotReading::default(); MAX];
        for (&pid, k) in &self.kids {
            slots[k.slot] = SlotReading {
                pid,
                state: match (k.ready, k.busy) {
                    (false, _) => SlotState::Starting,
                    (true, true) => SlotState::Busy,
                    (true, false) => SlotState::Idle,
                },
                request_start: k.busy.then_some(self.now),
                ..SlotReading::default()
            };
        }
        Scoreboard {
            slots,
            backlog: None,
        }
    }

    /// Carries out the machine's actions as a runtime would; a re-exec builds
    /// the new image's machine from the handoff.
    fn carry_out(&mut self) {
        while let Some(a) = self.m.poll_action() {
            let now = self.now;
            match a {
                Action::Spawn { slot, .. } => {
                    let pid = Pid(self.next_pid);
                    self.next_pid += 1;
                    self.kids.insert(
                        pid,
                        Kid {
                            slot,
                            ready: false,
                            busy: false,
                            leaving: None,
                        },
                    );
                    self.m.handle(now, Event::ChildSpawned { slot, pid });
                }
                Action::Signal { pid, signal, .. } => {
                    if let Some(k) = self.kids.get_mut(&pid) {
                        k.leaving = Some(match signal {
                            ChildSignal::Kill => ExitStatus::Signaled(9),
                            ChildSignal::Term => ExitStatus::Exited(0),
                            ChildSignal::Usr1 => continue,
                        });
                    }
                }
                Action::RunHook(h) => {
                    let hook = h.kind();
                    self.m.handle(now, Event::HookFinished { hook, ok: true });
                }
                Action::ProbeUpgrade => {
                    let ok = self.trial_ok;
                    self.m.handle(now, Event::UpgradeProbed { ok });
                }
                Action::ReExec(image) => {
                    self.reexec(image);
                    return;
                }
                _ => {}
            }
        }
    }

    fn reexec(&mut self, image: Image) {
        let h: Handoff = self.m.handoff().with_previous(image == Image::New);
        // Across the exec, as the runtime carries it.
        let h: Handoff = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        let before: Vec<Pid> = self.m.pids().collect();
        let counts = self.m.counts();
        let mut m = builder().adopt(h).build().expect("the handoff fits");
        let after: Vec<Pid> = m.pids().collect();
        assert_eq!(before, after, "children lost or added across the exec");
        assert_eq!(m.counts(), counts, "counted differently across the exec");
        assert!(m.adopted());
        // Its after_init.
        while let Some(a) = m.poll_action() {
            assert!(matches!(a, Action::RunHook(_)), "{a:?}");
        }
        self.m = m;
        self.upgrades += 1;
        let now = self.now;
        self.m.handle(
            now,
            Event::HookFinished {
                hook: HookKind::AfterInit,
                ok: true,
            },
        );
        self.carry_out();
    }

    fn nth(&self, i: usize) -> Option<Pid> {
        let live: Vec<Pid> = self
            .kids
            .iter()
            .filter(|(_, k)| k.leaving.is_none())
            .map(|(&p, _)| p)
            .collect();
        (!live.is_empty()).then(|| live[i % live.len()])
    }

    fn step(&mut self, op: &Op) {
        // Children told to leave, leave.
        let leaving: Vec<(Pid, ExitStatus)> = self
            .kids
            .iter()
            .filter_map(|(&p, k)| k.leaving.map(|s| (p, s)))
            .collect();
        for (pid, status) in leaving {
            self.kids.remove(&pid);
            self.feed(Event::ChildExited { pid, status });
        }
        let serving_before = self.m.counts().serving();
        let reloading_before = self.m.state() == State::Reloading;
        let mut exited = false;
        match *op {
            Op::Ready(i) => {
                if let Some(p) = self.nth(i) {
                    self.kids.get_mut(&p).unwrap().ready = true;
                    self.feed(Event::ChildReady { pid: p });
                }
            }
            Op::Busy(i) | Op::Idle(i) => {
                if let Some(p) = self.nth(i) {
                    let k = self.kids.get_mut(&p).unwrap();
                    if k.ready {
                        k.busy = matches!(op, Op::Busy(_));
                    }
                }
            }
            Op::Crash(i) => {
                if let Some(p) = self.nth(i) {
                    self.kids.remove(&p);
                    exited = true;
                    self.feed(Event::ChildExited {
                        pid: p,
                        status: ExitStatus::Exited(1),
                    });
                }
            }
            Op::Tick => {
                let sb = self.scoreboard();
                self.feed(Event::Scoreboard(&sb));
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                self.feed(Event::Timer);
            }
            Op::Hup => self.feed(Event::Signal(Signal::Hup)),
            Op::Ttin => self.feed(Event::Signal(Signal::Ttin)),
            Op::Ttou => self.feed(Event::Signal(Signal::Ttou)),
            Op::Usr2 => {
                self.trial_ok = true;
                self.feed(Event::Signal(Signal::Usr2));
            }
            Op::TrialFails => {
                self.trial_ok = false;
                self.feed(Event::Signal(Signal::Usr2));
            }
        }
        self.check(serving_before, reloading_before, exited);
    }

    /// `reloading`: the step began and ended in a reload (a scale-down just before
    /// an upgrade is the policy's, not the rollout's); `exited`: a child died by
    /// itself in it (no machine can keep that one serving).
    fn check(&self, serving_before: usize, reloading: bool, exited: bool) {
        let mut books: Vec<Pid> = self.m.pids().collect();
        books.sort();
        books.dedup();
        assert_eq!(books.len(), self.m.pids().count(), "a pid counted twice");
        let world: Vec<Pid> = self.kids.keys().copied().collect();
        assert_eq!(books, world, "the books and the world disagree");
        assert_eq!(self.m.counts().alive(), self.kids.len());
        assert!(self.m.counts().alive() <= MAX);
        if reloading && self.m.state() == State::Reloading && !exited {
            let floor = self.m.min_serving().unwrap_or(0).min(serving_before);
            assert!(
                self.m.counts().serving() >= floor,
                "serving {} < {floor} during a reload",
                self.m.counts().serving()
            );
        }
    }
}

proptest! {
    #[test]
    fn no_child_is_lost_or_counted_twice_around_a_handoff(ops in proptest::collection::vec(op(), 1..120)) {
        let mut w = World::new();
        for op in &ops {
            w.step(op);
            if w.m.state() == State::Stopped {
                break;
            }
        }
    }
}

/// The property's setting really reaches upgrades (a vacuous run would pass).
#[test]
fn the_operations_do_upgrade() {
    let mut w = World::new();
    let all_ready = |w: &mut World| {
        // Until every child there is ready (new ones may start meanwhile).
        for _ in 0..MAX {
            let starting: Vec<usize> = (0..w.kids.len())
                .filter(|&i| w.nth(i).is_some_and(|p| !w.kids[&p].ready))
                .collect();
            for i in starting {
                w.step(&Op::Ready(i));
            }
        }
        w.step(&Op::Tick);
    };
    all_ready(&mut w);
    for _ in 0..2 {
        w.step(&Op::Usr2);
        all_ready(&mut w);
        // The old generation TERMed leaves at the next step; the new one proves
        // healthy with time (an upgrade waits for that).
        w.step(&Op::Tick);
        for _ in 0..4 {
            w.step(&Op::Advance(2_999));
            w.step(&Op::Tick);
        }
    }
    assert_eq!(w.upgrades, 2);
    assert_eq!(w.m.state(), State::Serving);
    assert_eq!(w.m.generation(), 3);
    assert_eq!(w.kids.len(), 3);
}
