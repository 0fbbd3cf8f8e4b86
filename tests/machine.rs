//! Scenario tests of the supervisor state machine: one behaviour each, driven event by
//! event with explicit times.

use preforkd::policy::{Elastic, Fixed, Pid, Registry, ScalingPolicy, TerminateChild};
use preforkd::{
    Action, ChildSignal, ConnState, Connection, Event, ExitStatus, Hook, HookKind, Level, Machine,
    Notify, Options, Scoreboard, Signal, SignalReason, SlotReading, SlotState, State, Time,
};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// A tiny runtime stand-in: remembers spawns, hands out pids, keeps every action.
struct Rig {
    m: Machine,
    now: Time,
    next_pid: i32,
    /// (slot, pid) of live children, in spawn order.
    children: Vec<(usize, Pid)>,
    busy: Vec<Pid>,
    requests: Vec<(Pid, u64)>,
    /// RSS figures the next ticks report.
    memory: Vec<(Pid, u64)>,
    log: Vec<Action>,
}

impl Rig {
    fn new(m: Machine) -> Rig {
        let mut r = Rig {
            m,
            now: Time::ZERO,
            next_pid: 100,
            children: vec![],
            busy: vec![],
            requests: vec![],
            memory: vec![],
            log: vec![],
        };
        r.drain();
        r
    }

    fn start(opts: Options) -> Rig {
        let mut r = Rig::new(Machine::new(opts).unwrap());
        r.boot();
        r
    }

    /// after_init succeeds, every initial child forks and becomes ready.
    fn boot(&mut self) {
        self.feed(Event::HookFinished {
            hook: HookKind::AfterInit,
            ok: true,
        });
        self.ready_all();
    }

    fn at(&mut self, ms: u64) -> &mut Self {
        self.now = Time::from_millis(ms);
        self
    }

    /// Feeds an event; answers spawns with fresh pids; returns the new actions.
    fn feed(&mut self, e: Event<'_>) -> Vec<Action> {
        self.m.handle(self.now, e);
        self.drain()
    }

    fn drain(&mut self) -> Vec<Action> {
        let mut out = vec![];
        while let Some(a) = self.m.poll_action() {
            out.push(a);
        }
        // Forks are reported after the batch, as a runtime would.
        let mut i = 0;
        while i < out.len() {
            if let Action::Spawn { slot, .. } = out[i] {
                let pid = Pid(self.next_pid);
                self.next_pid += 1;
                self.children.push((slot, pid));
                self.m.handle(self.now, Event::ChildSpawned { slot, pid });
                while let Some(a) = self.m.poll_action() {
                    out.push(a);
                }
            }
            i += 1;
        }
        self.log.extend(out.iter().cloned());
        out
    }

    fn ready_all(&mut self) -> Vec<Action> {
        let mut out = vec![];
        let mut seen = 0;
        // Readiness may trigger more spawns; make those ready too.
        while seen < self.children.len() {
            let (_, pid) = self.children[seen];
            out.extend(self.feed(Event::ChildReady { pid }));
            seen += 1;
        }
        out
    }

    fn exit(&mut self, pid: Pid, status: ExitStatus) -> Vec<Action> {
        self.children.retain(|&(_, p)| p != pid);
        self.busy.retain(|&p| p != pid);
        self.feed(Event::ChildExited { pid, status })
    }

    fn pids(&self) -> Vec<Pid> {
        self.children.iter().map(|&(_, p)| p).collect()
    }

    fn tick(&mut self) -> Vec<Action> {
        let mut sb = Scoreboard {
            slots: vec![SlotReading::default(); self.m.options().max_children],
            backlog: None,
        };
        for &(slot, pid) in &self.children {
            let busy = self.busy.contains(&pid);
            sb.slots[slot] = SlotReading {
                pid,
                state: if busy {
                    SlotState::Busy
                } else {
                    SlotState::Idle
                },
                requests: self
                    .requests
                    .iter()
                    .find(|(p, _)| *p == pid)
                    .map_or(0, |&(_, n)| n),
                request_start: busy.then_some(self.now),
                heartbeat: self.now,
                memory: self.memory.iter().find(|(p, _)| *p == pid).map(|&(_, m)| m),
            };
        }
        self.feed(Event::Scoreboard(&sb))
    }

    fn timer(&mut self) -> Vec<Action> {
        let t = self.m.poll_timeout().expect("a deadline");
        self.now = t;
        self.feed(Event::Timer)
    }
}

fn signals(actions: &[Action]) -> Vec<(Pid, ChildSignal, SignalReason)> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::Signal {
                pid,
                signal,
                reason,
            } => Some((pid, signal, reason)),
            _ => None,
        })
        .collect()
}

fn spawns(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Spawn { .. }))
        .count()
}

fn logged(actions: &[Action], needle: &str) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Log { message, .. } if message.contains(needle)))
}

fn opts(prefork: usize, max: usize) -> Options {
    Options {
        prefork,
        max_children: max,
        ..Options::default()
    }
}

#[test]
fn starts_prefork_children_then_notifies_ready() {
    let mut r = Rig::new(Machine::new(opts(3, 10)).unwrap());
    assert_eq!(r.log, vec![Action::RunHook(Hook::AfterInit)]);
    let a = r.feed(Event::HookFinished {
        hook: HookKind::AfterInit,
        ok: true,
    });
    assert_eq!(spawns(&a), 3);
    assert_eq!(r.m.state(), State::Spawning);
    let a = r.ready_all();
    assert_eq!(r.m.state(), State::Serving);
    assert!(a.contains(&Action::Notify(Notify::Ready)));
    assert_eq!(r.m.counts().idle, 3);
}

#[test]
fn after_init_failure_exits_1_without_children() {
    let mut r = Rig::new(Machine::new(opts(3, 10)).unwrap());
    let a = r.feed(Event::HookFinished {
        hook: HookKind::AfterInit,
        ok: false,
    });
    assert_eq!(spawns(&a), 0);
    assert_eq!(a.last(), Some(&Action::Exit { code: 1 }));
    assert_eq!(r.m.state(), State::Stopped);
    // A stopped machine stays silent.
    assert!(r.feed(Event::Signal(Signal::Hup)).is_empty());
}

#[test]
fn graceful_shutdown_waits_for_children_then_kills_stragglers() {
    let mut r = Rig::start(Options {
        graceful_timeout: Duration::from_secs(30),
        ..opts(2, 10)
    });
    let (a, b) = (r.pids()[0], r.pids()[1]);
    r.at(1000);
    let acts = r.feed(Event::Signal(Signal::Term));
    assert_eq!(r.m.state(), State::ShuttingDown);
    // before_shutdown runs before the children are told, as the seed says.
    let hook = acts
        .iter()
        .position(|x| *x == Action::RunHook(Hook::BeforeShutdown))
        .unwrap();
    let first_term = acts
        .iter()
        .position(|x| matches!(x, Action::Signal { .. }))
        .unwrap();
    assert!(hook < first_term);
    assert!(acts.contains(&Action::Notify(Notify::Stopping)));
    assert_eq!(
        signals(&acts),
        vec![
            (a, ChildSignal::Term, SignalReason::Shutdown),
            (b, ChildSignal::Term, SignalReason::Shutdown)
        ]
    );
    assert_eq!(r.m.poll_timeout(), Some(Time::from_millis(31_000)));
    // One child finishes; a HUP or a TTIN now changes nothing and spawns nothing.
    r.exit(a, ExitStatus::Exited(0));
    assert_eq!(spawns(&r.feed(Event::Signal(Signal::Hup))), 0);
    assert_eq!(spawns(&r.feed(Event::Signal(Signal::Ttin))), 0);
    // The other ignores TERM: KILLed at the deadline.
    let acts = r.timer();
    assert_eq!(r.now, Time::from_millis(31_000));
    assert_eq!(
        signals(&acts),
        vec![(b, ChildSignal::Kill, SignalReason::Escalation)]
    );
    let acts = r.exit(b, ExitStatus::Signaled(9));
    assert_eq!(acts.last(), Some(&Action::Exit { code: 0 }));
    assert_eq!(r.m.state(), State::Stopped);
}

#[test]
fn second_term_and_quit_stop_immediately() {
    let mut r = Rig::start(opts(2, 10));
    r.feed(Event::Signal(Signal::Int));
    let acts = r.feed(Event::Signal(Signal::Term));
    let kills: Vec<_> = signals(&acts)
        .into_iter()
        .filter(|s| s.1 == ChildSignal::Kill)
        .collect();
    assert_eq!(kills.len(), 2);

    let mut r = Rig::start(opts(2, 10));
    let acts = r.feed(Event::Signal(Signal::Quit));
    assert_eq!(
        signals(&acts)
            .iter()
            .filter(|s| s.1 == ChildSignal::Kill)
            .count(),
        2
    );
    for pid in r.pids() {
        r.exit(pid, ExitStatus::Signaled(9));
    }
    assert_eq!(r.m.exit_code(), Some(0));
}

#[test]
fn shutdown_gives_up_with_code_1_if_killed_children_are_never_reaped() {
    let mut r = Rig::start(Options {
        graceful_timeout: Duration::from_secs(1),
        kill_wait: Duration::from_secs(2),
        ..opts(1, 4)
    });
    r.feed(Event::Signal(Signal::Term));
    r.timer(); // KILL at 1 s
    let acts = r.timer(); // give up at 3 s
    assert_eq!(r.now, Time::from_millis(3000));
    assert_eq!(acts.last(), Some(&Action::Exit { code: 1 }));
    assert!(logged(&acts, "not reaped"));
}

#[test]
fn crash_loop_backs_off_exponentially_and_a_healthy_child_resets_it() {
    let mut r = Rig::new(
        Machine::builder(Options {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(700),
            ..opts(1, 4)
        })
        .scaling_policy(Fixed(1))
        .build()
        .unwrap(),
    );
    r.feed(Event::HookFinished {
        hook: HookKind::AfterInit,
        ok: true,
    });
    let mut delays = vec![];
    let mut t = 0;
    for k in 0..5 {
        let pid = r.pids()[0];
        let acts = r.exit(pid, ExitStatus::Exited(1));
        assert_eq!(spawns(&acts), 0, "no respawn during backoff");
        // The reason is logged once per streak, not once per fork.
        assert_eq!(
            logged(&acts, "exited early (exit code 1)"),
            k == 0,
            "{acts:?}"
        );
        // Other deadlines (status coalescing) may come first; none of them spawns.
        let mut acts = r.timer();
        for _ in 0..3 {
            if spawns(&acts) > 0 {
                break;
            }
            acts = r.timer();
        }
        assert_eq!(spawns(&acts), 1);
        delays.push(r.now.as_millis() - t);
        t = r.now.as_millis();
    }
    assert_eq!(delays, vec![100, 200, 400, 700, 700]);
    // This one becomes ready and lives past min_healthy_uptime: the streak resets.
    let pid = r.pids()[0];
    r.feed(Event::ChildReady { pid });
    r.at(t + 1500);
    let acts = r.tick();
    assert!(logged(&acts, "crash loop over after 5 crashes"), "{acts:?}");
    let acts = r.exit(pid, ExitStatus::Signaled(11));
    assert_eq!(
        spawns(&acts),
        1,
        "a healthy child's death is replaced at once"
    );
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Log { level: Level::Warning, message } if message.contains("signal 11"))));
    let pid = r.pids()[0];
    r.exit(pid, ExitStatus::Exited(1));
    let before = r.now.as_millis();
    while spawns(&r.timer()) == 0 {}
    assert_eq!(r.now.as_millis() - before, 100);
}

#[test]
fn busy_timeout_terms_then_kills_and_says_why() {
    let mut r = Rig::start(Options {
        busy_timeout: Some(Duration::from_secs(10)),
        kill_grace: Duration::from_secs(2),
        // Refreshes of the busy child's scoreboard would come first otherwise.
        busy_refresh: Duration::from_secs(60),
        ..opts(2, 4)
    });
    let pid = r.pids()[0];
    r.busy.push(pid);
    r.at(1000);
    r.tick();
    assert_eq!(r.m.poll_timeout(), Some(Time::from_millis(11_000)));
    let acts = r.timer();
    assert_eq!(
        signals(&acts),
        vec![(pid, ChildSignal::Term, SignalReason::BusyTimeout)]
    );
    let acts = r.timer();
    assert_eq!(r.now, Time::from_millis(13_000));
    assert_eq!(
        signals(&acts),
        vec![(pid, ChildSignal::Kill, SignalReason::Escalation)]
    );
    let acts = r.exit(pid, ExitStatus::Signaled(9));
    assert!(logged(&acts, "stopped by the busy timeout, KILLed"));
}

#[test]
fn request_limits_have_seeded_jitter_and_recycle_children() {
    let limits = |seed: u64| {
        let r = Rig::start(Options {
            max_requests_per_child: Some(100),
            max_requests_jitter: 50,
            seed,
            ..opts(8, 8)
        });
        r.log
            .iter()
            .filter_map(|a| match a {
                Action::Spawn { max_requests, .. } => *max_requests,
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let a = limits(1);
    assert_eq!(a.len(), 8);
    assert!(a.iter().all(|&m| (100..=150).contains(&m)), "{a:?}");
    assert!(a.iter().any(|&m| m != a[0]), "jitter spreads limits: {a:?}");
    assert_eq!(a, limits(1));
    assert_ne!(a, limits(2));

    let mut r = Rig::start(Options {
        max_requests_per_child: Some(10),
        ..opts(2, 4)
    });
    let pid = r.pids()[1];
    r.requests.push((pid, 10));
    let acts = r.tick();
    assert_eq!(
        signals(&acts),
        vec![(pid, ChildSignal::Term, SignalReason::MaxRequests)]
    );
    assert_eq!(spawns(&acts), 1, "the recycled child is replaced at once");
    let acts = r.exit(pid, ExitStatus::Exited(0));
    assert!(logged(&acts, "recycled after its request limit"));
    assert_eq!(spawns(&acts), 0);
}

#[test]
fn usr1_reopens_logs_in_parent_and_children() {
    let mut r = Rig::start(opts(3, 4));
    let acts = r.feed(Event::Signal(Signal::Usr1));
    assert_eq!(acts[0], Action::ReopenLogs);
    let usr1: Vec<_> = signals(&acts)
        .into_iter()
        .filter(|s| s.1 == ChildSignal::Usr1)
        .map(|s| s.0)
        .collect();
    assert_eq!(usr1, r.pids());
}

fn closed(pid: Pid, port: u16) -> Connection {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    Connection {
        conn: preforkd::policy::Disconnect {
            pid,
            proto: preforkd::policy::Proto::Tcp,
            local_host: lo,
            local_port: 8080,
            foreign_host: lo,
            foreign_port: port,
        },
        state: ConnState::CloseWait,
    }
}

#[test]
fn a_lingering_disconnect_is_reported_once() {
    let mut r = Rig::start(opts(2, 4));
    let pid = r.pids()[0];
    let conns = [closed(pid, 5000)];
    let hooks = |acts: &[Action]| {
        acts.iter()
            .filter(|a| matches!(a, Action::RunHook(Hook::ClientDisconnect(_))))
            .count()
    };
    assert_eq!(hooks(&r.feed(Event::Netstat(&conns))), 1);
    assert_eq!(hooks(&r.feed(Event::Netstat(&conns))), 0);
    assert_eq!(hooks(&r.feed(Event::Netstat(&conns))), 0);
    // Established connections and unknown pids are not disconnects.
    let other = [
        Connection {
            state: ConnState::Established,
            ..closed(pid, 5001)
        },
        closed(Pid(4242), 5002),
    ];
    assert_eq!(hooks(&r.feed(Event::Netstat(&other))), 0);
    // A new disconnect on another port is reported.
    assert_eq!(hooks(&r.feed(Event::Netstat(&[closed(pid, 5003)]))), 1);
}

#[test]
fn terminate_child_policy_cancels_a_busy_childs_job() {
    let mut r = Rig::new(
        Machine::builder(opts(2, 4))
            .disconnect_policy(TerminateChild)
            .build()
            .unwrap(),
    );
    r.boot();
    let (a, b) = (r.pids()[0], r.pids()[1]);
    r.busy.push(a);
    r.tick();
    let acts = r.feed(Event::Netstat(&[closed(a, 6000), closed(b, 6001)]));
    assert_eq!(
        signals(&acts),
        vec![(a, ChildSignal::Term, SignalReason::Disconnect)]
    );
}

#[test]
fn unknown_and_duplicate_exits_are_harmless() {
    let mut r = Rig::start(opts(2, 4));
    let acts = r.feed(Event::ChildExited {
        pid: Pid(99_999),
        status: ExitStatus::Exited(0),
    });
    assert!(logged(&acts, "not one of our children"));
    assert_eq!(r.m.counts().idle, 2);
    let pid = r.pids()[0];
    r.exit(pid, ExitStatus::Exited(0));
    let n = r.m.counts();
    let acts = r.feed(Event::ChildExited {
        pid,
        status: ExitStatus::Exited(0),
    });
    assert_eq!(spawns(&acts), 0);
    assert_eq!(r.m.counts(), n);
    // A spawn report for a slot nobody asked for is refused.
    let acts = r.feed(Event::ChildSpawned {
        slot: 3,
        pid: Pid(5),
    });
    assert!(logged(&acts, "matches no pending spawn"));
    assert!(!r.m.pids().any(|p| p == Pid(5)));
}

#[test]
fn ttin_and_ttou_move_the_pool() {
    let mut r = Rig::new(
        Machine::builder(opts(2, 5))
            .scaling_policy(Fixed(2))
            .build()
            .unwrap(),
    );
    r.boot();
    assert_eq!(spawns(&r.feed(Event::Signal(Signal::Ttin))), 1);
    r.ready_all();
    assert_eq!(r.m.counts().idle, 3);
    let acts = r.feed(Event::Signal(Signal::Ttou));
    assert_eq!(signals(&acts).len(), 1);
    assert_eq!(signals(&acts)[0].2, SignalReason::ScaleDown);
}

#[test]
fn elastic_grows_when_saturated_and_shrinks_back_gently() {
    let mut r = Rig::start(opts(3, 150));
    r.busy = r.pids();
    let acts = r.tick();
    assert_eq!(spawns(&acts), 1, "ramp starts at one");
    r.ready_all();
    r.busy = r.pids();
    assert_eq!(spawns(&r.tick()), 2, "then doubles");
    r.ready_all();
    r.busy.clear();
    r.at(10_000);
    // 6 idle: retire one per second down to prefork (3).
    let mut retired = 0;
    let acts = r.tick();
    for (pid, sig, why) in signals(&acts) {
        assert_eq!((sig, why), (ChildSignal::Term, SignalReason::ScaleDown));
        r.exit(pid, ExitStatus::Exited(0));
        retired += 1;
    }
    while let Some(t) = r.m.poll_timeout() {
        assert!(t.as_millis() >= r.now.as_millis() + 1000 || retired == 0);
        let acts = r.timer();
        for (pid, _, _) in signals(&acts) {
            r.exit(pid, ExitStatus::Exited(0));
            retired += 1;
        }
    }
    assert_eq!(retired, 3);
    assert_eq!(r.m.counts().idle, 3);
    // Idle and in range: nothing to wake up for.
    assert_eq!(r.m.poll_timeout(), None);
}

#[test]
fn busy_children_are_looked_at_again_so_the_pool_can_shrink() {
    let mut r = Rig::start(opts(3, 10));
    r.busy = r.pids();
    r.tick();
    r.ready_all();
    // Requests finishing do not wake the parent; a refresh is due while any is busy.
    assert_eq!(r.m.poll_timeout(), Some(Time::from_millis(1000)));
    r.busy.clear();
    r.at(1000).tick();
    r.at(2000).tick();
    assert_eq!(r.m.counts().busy, 0);
    while r.m.poll_timeout().is_some() {
        let acts = r.timer();
        for (pid, _, _) in signals(&acts) {
            r.exit(pid, ExitStatus::Exited(0));
        }
    }
    assert_eq!(r.m.counts().idle, 3);
}

#[test]
fn hup_rolls_children_over_without_dropping_below_the_minimum() {
    let mut r = Rig::start(opts(3, 10));
    let old = r.pids();
    let acts = r.feed(Event::Signal(Signal::Hup));
    assert_eq!(r.m.state(), State::Reloading);
    assert!(acts.contains(&Action::Notify(Notify::Reloading)));
    assert_eq!(spawns(&acts), 3, "replacements first");
    assert!(
        signals(&acts).is_empty(),
        "no old child retired before a replacement is ready"
    );
    let new: Vec<Pid> = r.pids().into_iter().filter(|p| !old.contains(p)).collect();
    // Each new child ready and proved (it served a request) retires one old one.
    for (i, &pid) in new.iter().enumerate() {
        let acts = r.feed(Event::ChildReady { pid });
        assert!(signals(&acts).is_empty(), "step {i}: ready is no proof");
        r.requests.push((pid, 1));
        let acts = r.tick();
        let s = signals(&acts);
        assert_eq!(s.len(), 1, "step {i}: {s:?}");
        assert_eq!(s[0].2, SignalReason::Reload);
        assert!(old.contains(&s[0].0));
    }
    assert_eq!(r.m.state(), State::Serving);
    assert!(r.log.contains(&Action::Notify(Notify::Ready)));
    for pid in new {
        assert_eq!(r.m.generation_of(pid), Some(2));
    }
}

/// A HUP to new code whose children report ready and then fail at once (a bad
/// deploy that boots, then dies on its first step): the old children keep
/// serving, every one of them, for as long as the new generation has not proved
/// itself. (Before: each new child *ready* retired an old one, and the pool
/// served nobody.) Once a new child proves healthy, the rollover goes on.
#[test]
fn a_reload_to_children_that_fail_right_after_start_keeps_every_old_one_serving() {
    let mut r = Rig::new(
        Machine::builder(Options {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..opts(2, 10)
        })
        .scaling_policy(Fixed(2))
        .build()
        .unwrap(),
    );
    r.boot();
    let old = r.pids();
    let mut all = r.feed(Event::Signal(Signal::Hup));
    assert_eq!(r.m.state(), State::Reloading);
    // For 10 s, every new child reports ready, then fails 10 ms later.
    while r.now < Time::from_millis(10_000) {
        let fresh: Vec<Pid> = r.pids().into_iter().filter(|p| !old.contains(p)).collect();
        for &pid in &fresh {
            all.extend(r.feed(Event::ChildReady { pid }));
        }
        let t = r.now.as_millis() + 10;
        r.at(t);
        for pid in fresh {
            all.extend(r.exit(pid, ExitStatus::Exited(1)));
        }
        if !r.pids().iter().any(|p| !old.contains(p)) {
            all.extend(r.timer());
        }
    }
    let retired: Vec<_> = signals(&all)
        .into_iter()
        .filter(|s| old.contains(&s.0))
        .collect();
    assert!(retired.is_empty(), "old children retired: {retired:?}");
    assert!(
        logged(
            &all,
            "the reload waits: 2 children of generation 1 and older serve on"
        ),
        "{all:?}"
    );
    assert_eq!(r.m.state(), State::Reloading);
    assert!(r.m.crash_streak() > 3, "{}", r.m.crash_streak());
    // The fix lands: a new child that stays up min_healthy_uptime proves the
    // generation, and the rollover goes on to its end.
    let fresh: Vec<Pid> = r.pids().into_iter().filter(|p| !old.contains(p)).collect();
    let mut acts = vec![];
    if fresh.is_empty() {
        acts = r.timer();
    }
    acts.extend(r.ready_all());
    let mut retired_now: Vec<Pid> = vec![];
    for _ in 0..10 {
        retired_now.extend(
            signals(&acts)
                .into_iter()
                .filter(|s| old.contains(&s.0) && s.2 == SignalReason::Reload)
                .map(|s| s.0),
        );
        if retired_now.len() == old.len() {
            break;
        }
        acts = r.timer();
    }
    retired_now.sort_unstable();
    assert_eq!(retired_now, old, "{:?}", r.log);
}

/// A reload retires an old child only for a new one proved healthy (it served a
/// request, or it stayed up `min_healthy_uptime`), and the scaling policy does not
/// retire the surplus meanwhile: no moment with fewer proved children serving
/// than before.
#[test]
fn a_reload_retires_old_children_only_for_proven_new_ones() {
    let mut r = Rig::new(
        Machine::builder(opts(3, 10))
            .scaling_policy(Elastic::default())
            .build()
            .unwrap(),
    );
    r.boot();
    let old = r.pids();
    r.feed(Event::Signal(Signal::Hup));
    let acts = r.ready_all();
    assert!(signals(&acts).is_empty(), "retired before proof: {acts:?}");
    // One new child serves a request: one old child may go, no more.
    r.at(100);
    let new: Vec<Pid> = r.pids().into_iter().filter(|p| !old.contains(p)).collect();
    assert_eq!(new.len(), 3);
    r.requests = vec![(new[0], 1)];
    let acts = r.tick();
    let s = signals(&acts);
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(
        old.contains(&s[0].0) && s[0].2 == SignalReason::Reload,
        "{s:?}"
    );
    // The others prove themselves by staying up: the rest go at 1 s, not before.
    r.at(900);
    assert!(signals(&r.tick()).is_empty());
    let acts = r.timer();
    assert_eq!(r.now, Time::from_millis(1_000));
    let s: Vec<Pid> = signals(&acts).into_iter().map(|s| s.0).collect();
    assert_eq!(s.len(), 2, "{acts:?}");
    assert!(s.iter().all(|p| old.contains(p)));
    assert!(
        new.iter().all(|p| r.pids().contains(p)),
        "a new child was retired"
    );
}

/// HUPs in a row, faster than new children prove themselves: each rollout aims
/// at the pool's size before the first, not at old plus unproven new children
/// (which would double the pool at every HUP).
#[test]
fn hups_in_a_row_keep_the_pools_size() {
    let mut r = Rig::new(
        Machine::builder(opts(3, 30))
            .scaling_policy(Fixed(3))
            .build()
            .unwrap(),
    );
    r.boot();
    for i in 0..4 {
        r.at(10 * (i + 1));
        let acts = r.feed(Event::Signal(Signal::Hup));
        assert_eq!(spawns(&acts), 3, "HUP {i}: {acts:?}");
        r.ready_all();
        assert!(r.m.counts().alive() <= 3 + 3 * (i as usize + 1));
    }
    // Proved by time: the last generation's three serve, every other one goes.
    while r.m.state() == State::Reloading {
        r.timer();
        for (pid, _, _) in signals(&r.log.clone()) {
            if r.pids().contains(&pid) {
                r.exit(pid, ExitStatus::Exited(0));
            }
        }
    }
    assert_eq!(r.m.counts().serving(), 3, "{:?}", r.m.counts());
}

#[test]
fn hup_with_a_full_pool_replaces_one_child_at_a_time() {
    let mut r = Rig::new(
        Machine::builder(opts(3, 3))
            .scaling_policy(Fixed(3))
            .build()
            .unwrap(),
    );
    r.boot();
    let acts = r.feed(Event::Signal(Signal::Hup));
    assert_eq!(spawns(&acts), 0, "no free slot");
    let s = signals(&acts);
    assert_eq!(s.len(), 1, "one old child makes room: {s:?}");
    let mut retiring = s[0].0;
    for _ in 0..3 {
        assert!(r.m.counts().serving() >= 2);
        let acts = r.exit(retiring, ExitStatus::Exited(0));
        assert_eq!(spawns(&acts), 1);
        let newest = *r.pids().last().unwrap();
        r.feed(Event::ChildReady { pid: newest });
        r.requests.push((newest, 1));
        let acts = r.tick();
        match signals(&acts).as_slice() {
            [] => break,
            [(pid, ChildSignal::Term, SignalReason::Reload)] => retiring = *pid,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(r.m.state(), State::Serving);
    assert!(r.pids().iter().all(|&p| r.m.generation_of(p) == Some(2)));
}

#[test]
fn files_changed_runs_the_reload_handler_and_checks_are_periodic() {
    let mut r = Rig::start(Options {
        auto_reload_check_every: Some(Duration::from_secs(5)),
        ..opts(1, 4)
    });
    // The first deadline is the coalesced status notification, then the check.
    assert_eq!(r.m.poll_timeout(), Some(Time::from_millis(1000)));
    r.timer();
    assert_eq!(r.m.poll_timeout(), Some(Time::from_millis(5000)));
    let acts = r.at(5000).feed(Event::Timer);
    assert!(acts.contains(&Action::CheckForChanges));
    assert_eq!(r.m.poll_timeout(), Some(Time::from_millis(10_000)));
    let acts = r.feed(Event::FilesChanged);
    assert!(acts.contains(&Action::RunHook(Hook::ReloadHandler)));
    assert_eq!(r.m.state(), State::Reloading);
}

#[test]
fn time_never_runs_backwards() {
    let mut r = Rig::start(Options {
        busy_timeout: Some(Duration::from_secs(10)),
        ..opts(1, 4)
    });
    let pid = r.pids()[0];
    r.busy.push(pid);
    r.at(20_000);
    r.tick();
    r.at(5_000);
    let acts = r.feed(Event::Timer);
    assert!(signals(&acts).is_empty());
    let acts = r.at(30_000).feed(Event::Timer);
    assert_eq!(signals(&acts)[0].2, SignalReason::BusyTimeout);
}

#[test]
fn options_and_policies_load_from_config_files_by_seed_names() {
    let opts: Options = serde_json::from_str(
        r#"{"prefork": 4, "max_children": 20, "auto_reload_check_every": 10}"#,
    )
    .unwrap();
    assert_eq!(opts.auto_reload_check_every, Some(Duration::from_secs(10)));
    let m = Machine::new(opts).unwrap();
    assert_eq!(m.scaling_policy().name(), "elastic");
    assert_eq!(m.scaling_policy().quiet_range(), 4..=4);

    let err = serde_json::from_str::<Options>(r#"{"max_childern": 3}"#).unwrap_err();
    assert!(err.to_string().contains("max_childern"), "{err}");

    let registry = Registry::with_builtins();
    let cfg = r#"{"prefork": 2, "max_children": 9}"#;
    let mut de = serde_json::Deserializer::from_str(cfg);
    let p = registry
        .scaling(
            "elastic",
            &mut <dyn erased_serde::Deserializer>::erase(&mut de),
        )
        .unwrap();
    let m = Machine::builder(Options::default())
        .scaling_policy(p)
        .build()
        .unwrap();
    // The boxed policy is boxed again by the builder: every method still reaches it.
    assert_eq!(m.scaling_policy().initial_children(), 2);
    assert_eq!(m.scaling_policy().quiet_range(), 2..=2);
    assert_eq!(m.scaling_policy().name(), "elastic");
    assert!(m.scaling_policy().config().is_some());

    let mut de = serde_json::Deserializer::from_str("{}");
    let err = registry
        .scaling(
            "apache",
            &mut <dyn erased_serde::Deserializer>::erase(&mut de),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown scaling policy \"apache\""), "{err}");
    assert!(err.contains("apache_like"), "{err}");

    let mut de = serde_json::Deserializer::from_str(r#"{"prefork": 9, "max_children": 3}"#);
    let err = registry
        .scaling(
            "elastic",
            &mut <dyn erased_serde::Deserializer>::erase(&mut de),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("prefork (9) exceeds max_children (3)"),
        "{err}"
    );
}

#[test]
fn a_running_policy_state_survives_serialization() {
    let mut a = Elastic::from_seed(3, 150).unwrap();
    let busy = preforkd::policy::PoolSnapshot::new(0, 0, 5, 150);
    for _ in 0..3 {
        let _ = a.decide(&busy, Time::ZERO);
    }
    let mut buf = vec![];
    {
        let mut ser = serde_json::Serializer::new(&mut buf);
        let state = a.state().unwrap();
        erased_serde::serialize(state, &mut ser).unwrap();
    }
    let mut b = Elastic::from_seed(3, 150).unwrap();
    let mut de = serde_json::Deserializer::from_slice(&buf);
    b.restore_state(&mut <dyn erased_serde::Deserializer>::erase(&mut de))
        .unwrap();
    // Three decisions ramped 1, 2, 4: both continue at 8, then 16.
    assert_eq!(a.decide(&busy, Time::ZERO), b.decide(&busy, Time::ZERO));
    assert_eq!(
        b.decide(&busy, Time::ZERO).scale,
        preforkd::policy::Scale::Spawn(16)
    );
}

#[test]
fn bad_options_name_the_option() {
    for (o, needle) in [
        (opts(3, 0), "max_children"),
        (opts(10, 5), "prefork (10) exceeds max_children (5)"),
        (
            Options {
                max_requests_jitter: 5,
                ..Options::default()
            },
            "max_requests_jitter",
        ),
        (
            Options {
                auto_reload_check_every: Some(Duration::ZERO),
                ..Options::default()
            },
            "auto_reload_check_every",
        ),
    ] {
        let e = Machine::new(o).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
}

#[test]
fn every_refused_option_is_named_first_in_the_error() {
    let zero = Duration::ZERO;
    let d = Options::default;
    for (o, option) in [
        (opts(3, 0), "max_children"),
        (opts(10, 5), "prefork"),
        (opts(1, 70_000), "max_children"),
        (
            Options {
                auto_reload_check_every: Some(zero),
                ..d()
            },
            "auto_reload_check_every",
        ),
        (
            Options {
                busy_timeout: Some(zero),
                ..d()
            },
            "busy_timeout",
        ),
        (
            Options {
                max_child_memory: Some(1000),
                ..d()
            },
            "max_child_memory",
        ),
        (
            Options {
                max_requests_per_child: Some(0),
                ..d()
            },
            "max_requests_per_child",
        ),
        (
            Options {
                max_requests_jitter: 5,
                ..d()
            },
            "max_requests_jitter",
        ),
        (
            Options {
                kill_wait: zero,
                ..d()
            },
            "kill_wait",
        ),
        (
            Options {
                kill_grace: zero,
                ..d()
            },
            "kill_grace",
        ),
        (
            Options {
                start_timeout: zero,
                ..d()
            },
            "start_timeout",
        ),
        (
            Options {
                backoff_initial: zero,
                ..d()
            },
            "backoff_initial",
        ),
        (
            Options {
                status_interval: zero,
                ..d()
            },
            "status_interval",
        ),
        (
            Options {
                busy_refresh: zero,
                ..d()
            },
            "busy_refresh",
        ),
        (
            Options {
                backoff_max: Duration::from_millis(1),
                ..d()
            },
            "backoff_max",
        ),
    ] {
        let e = Machine::new(o).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with(&format!("option {option}: ")), "{text}");
        assert_eq!(e.option(), option, "{text}");
        assert!(!e.reason().is_empty(), "{text}");
        assert!(text.ends_with(e.reason()), "{text}");
    }
}

// ----- fault tolerance: kill sprees and crash loops -----

/// Serving children, one killed every 100 ms (a tick first shows each has served):
/// every death is replaced at once and the pool never drops below its minimum.
#[test]
fn a_kill_spree_of_serving_children_is_replaced_at_once() {
    let mut r = Rig::start(opts(4, 10));
    let mut t = 0;
    for k in 0..60u64 {
        t += 100;
        r.at(t);
        // Everyone alive has served some requests by now.
        let pids = r.pids();
        r.requests = pids.iter().map(|&p| (p, 10 + k)).collect();
        r.tick();
        let victim = pids[(k as usize * 7) % pids.len()];
        let acts = r.exit(victim, ExitStatus::Signaled(9));
        assert_eq!(
            spawns(&acts),
            1,
            "kill {k}: a serving child's death is replaced at once: {acts:?}"
        );
        assert!(
            !logged(&acts, "exited early"),
            "kill {k}: a child that served is no crash: {acts:?}"
        );
        let n = r.m.counts();
        assert!(n.serving() + n.starting >= 4, "kill {k}: {n:?}");
        assert!(n.serving() >= 3, "kill {k}: {n:?}");
        r.ready_all();
        assert_eq!(r.m.counts().serving(), 4, "kill {k}");
    }
}

/// A fresh replacement killed before it served (the spree hit it while it started)
/// is replaced at once while its siblings serve: the backoff does not leave the pool
/// below its minimum.
#[test]
fn a_starting_child_killed_while_siblings_serve_is_replaced_at_once() {
    let mut r = Rig::start(opts(3, 10));
    r.at(5_000);
    let pids = r.pids();
    r.requests = pids.iter().map(|&p| (p, 100)).collect();
    r.tick();
    let acts = r.exit(pids[0], ExitStatus::Signaled(9));
    assert_eq!(spawns(&acts), 1);
    // The replacement dies at once, before it is ready.
    r.at(5_010);
    let fresh = *r.pids().last().unwrap();
    let acts = r.exit(fresh, ExitStatus::Signaled(9));
    assert_eq!(
        spawns(&acts),
        1,
        "first crash with healthy siblings: {acts:?}"
    );
    let n = r.m.counts();
    assert_eq!(n.serving() + n.starting, 3, "{n:?}");
}

/// One slot crash-looping while healthy siblings serve: the first crash of the streak
/// is replaced at once, then the backoff doubles as usual; fork rate stays bounded.
#[test]
fn a_crash_loop_beside_healthy_children_is_still_backed_off() {
    let mut r = Rig::start(Options {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(1_000),
        ..opts(3, 10)
    });
    r.at(5_000);
    let pids = r.pids();
    r.requests = pids.iter().map(|&p| (p, 100)).collect();
    r.tick();
    // A healthy child dies: replaced at once; then every replacement crashes at start.
    let acts = r.exit(pids[0], ExitStatus::Signaled(9));
    assert_eq!(spawns(&acts), 1);
    let mut delays = vec![];
    let mut forks = 0;
    let start = r.now.as_millis();
    let mut last = start;
    while r.now.as_millis() < start + 5_000 {
        let fresh = *r.pids().last().unwrap();
        let mut acts = r.exit(fresh, ExitStatus::Exited(1));
        while spawns(&acts) == 0 {
            acts = r.timer();
        }
        forks += 1;
        delays.push(r.now.as_millis() - last);
        last = r.now.as_millis();
    }
    assert_eq!(&delays[..6], &[0, 100, 200, 400, 800, 1000], "{delays:?}");
    assert!(forks <= 12, "{forks} forks in 5 s: {delays:?}");
    // The siblings never stopped serving.
    assert_eq!(r.m.counts().serving(), 2);
}

/// A crash loop logs its reason once, then a summary at most every
/// `CRASH_REPORT_EVERY`; a HUP (the operator's fix) resets the backoff at once.
#[test]
fn a_crash_loop_logs_once_per_streak_and_a_reload_resets_the_backoff() {
    let mut r = Rig::new(
        Machine::builder(Options {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            ..opts(2, 4)
        })
        .scaling_policy(Fixed(2))
        .build()
        .unwrap(),
    );
    r.feed(Event::HookFinished {
        hook: HookKind::AfterInit,
        ok: true,
    });
    let mut all = vec![];
    let mut forks = 0;
    // Every child exits at once, for 5 simulated minutes.
    while r.now < Time::from_millis(300_000) {
        let mut acts = vec![];
        for pid in r.pids() {
            acts.extend(r.exit(pid, ExitStatus::Exited(3)));
        }
        while spawns(&acts) == 0 {
            all.extend(acts);
            acts = r.timer();
        }
        forks += spawns(&acts);
        all.extend(acts);
    }
    let reasons = all
        .iter()
        .filter(|a| matches!(a, Action::Log { message, .. } if message.contains("exited early (exit code 3)") && !message.contains("crash loop")))
        .count();
    assert_eq!(reasons, 1, "the reason is logged once per streak");
    let summaries = all
        .iter()
        .filter(|a| matches!(a, Action::Log { message, .. } if message.starts_with("crash loop:")))
        .count();
    // One per CRASH_REPORT_EVERY (60 s) at most, over 300 s.
    assert!((4..=5).contains(&summaries), "{summaries} summaries");
    // Bounded by the backoff: ~2 forks each 2 s at most.
    assert!(forks <= 2 * 300 / 2 + 20, "{forks} forks in 300 s");
    assert!(r.m.crash_streak() > 100);
    // The fix lands; HUP: the new generation starts at once.
    let acts = r.feed(Event::Signal(Signal::Hup));
    assert!(spawns(&acts) >= 1, "{acts:?}");
    assert!(logged(&acts, "crash loop over"), "{acts:?}");
    assert_eq!(r.m.crash_streak(), 0);
    r.ready_all();
    r.at(r.now.as_millis() + 10);
    let pids = r.pids();
    r.requests = pids.iter().map(|&p| (p, 1)).collect();
    r.tick();
    assert_eq!(r.m.counts().serving(), 2);
}

/// A main_loop that returns at once: the child marks its slot retiring and exits 0
/// without serving. That is a crash loop, not a recycling: it backs off.
#[test]
fn a_child_leaving_by_itself_before_serving_is_a_crash() {
    let mut r = Rig::new(
        Machine::builder(opts(1, 4))
            .scaling_policy(Fixed(1))
            .build()
            .unwrap(),
    );
    r.feed(Event::HookFinished {
        hook: HookKind::AfterInit,
        ok: true,
    });
    let mut forks = 1;
    let mut all = vec![];
    for _ in 0..1_000 {
        if r.now >= Time::from_millis(10_000) || forks > 100 {
            break;
        }
        if let Some(&(slot, pid)) = r.children.first() {
            // As the runtime does on a reap: the scoreboard first, then the exit.
            let mut sb = Scoreboard {
                slots: vec![SlotReading::default(); 4],
                backlog: None,
            };
            sb.slots[slot] = SlotReading {
                pid,
                state: SlotState::Retiring,
                requests: 0,
                request_start: None,
                heartbeat: r.now,
                memory: None,
            };
            let acts = r.feed(Event::Scoreboard(&sb));
            forks += spawns(&acts);
            all.extend(acts);
            let acts = r.exit(pid, ExitStatus::Exited(0));
            forks += spawns(&acts);
            all.extend(acts);
        } else {
            let acts = r.timer();
            forks += spawns(&acts);
            all.extend(acts);
        }
    }
    // 100 + 200 + ... ms: about 7 forks in 10 s; without the backoff, thousands.
    assert!(forks <= 10, "{forks} forks in 10 s");
    assert!(r.m.crash_streak() >= 6, "{}", r.m.crash_streak());
    assert!(logged(&all, "left by itself before serving"));
    assert!(!logged(&all, "recycled"));
}

// ----- memory limits -----

/// A child over `max_child_memory` is retired gracefully (TERM, with the figure in
/// the log) and replaced; one under it, or unmeasured, is left alone.
#[test]
fn a_child_over_the_memory_limit_is_retired_gracefully_and_replaced() {
    let mut r = Rig::start(Options {
        max_child_memory: Some(100 << 20),
        ..opts(3, 10)
    });
    let pids = r.pids();
    r.memory = vec![(pids[0], 20 << 20), (pids[1], 100 << 20)];
    assert!(signals(&r.tick()).is_empty(), "at or under the limit");
    // The busy one grows past it: TERM (it finishes its request), a replacement.
    r.busy.push(pids[2]);
    r.memory.push((pids[2], 150 << 20));
    let acts = r.tick();
    assert_eq!(
        signals(&acts),
        vec![(pids[2], ChildSignal::Term, SignalReason::MemoryLimit)]
    );
    assert!(logged(&acts, "uses 157286400 bytes"), "{acts:?}");
    assert!(logged(&acts, "above max_child_memory 104857600"));
    assert_eq!(spawns(&acts), 1, "replaced at once");
    // Told once, however many ticks follow.
    assert!(signals(&r.tick()).is_empty());
    let acts = r.exit(pids[2], ExitStatus::Exited(0));
    assert!(logged(&acts, "retired over the memory limit"), "{acts:?}");
    assert_eq!(r.m.crash_streak(), 0, "no crash");
}

#[test]
fn max_child_memory_is_validated_and_read_from_config() {
    let bad = Options {
        max_child_memory: Some(4096),
        ..Options::default()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("max_child_memory"));
    let o: Options = serde_json::from_str(r#"{"max_child_memory": 268435456}"#).unwrap();
    assert_eq!(o.max_child_memory, Some(256 << 20));
    o.validate().unwrap();
}

/// A limit below a fresh child's size (the parent's shared pages count in RSS)
/// must not make the pool retire and refork in a loop: an idle child that has
/// served nothing is not retired for memory, and the operator is told once.
#[test]
fn a_limit_below_a_fresh_childs_size_retires_nobody_idle_and_says_so_once() {
    let mut r = Rig::start(Options {
        max_child_memory: Some(2 << 20),
        ..opts(2, 10)
    });
    let pids = r.pids();
    r.memory = pids.iter().map(|&p| (p, 3 << 20)).collect();
    let acts = r.tick();
    assert!(signals(&acts).is_empty(), "{acts:?}");
    assert!(logged(&acts, "below a fresh child's size"), "{acts:?}");
    assert_eq!(spawns(&acts), 0);
    for _ in 0..10 {
        let acts = r.tick();
        assert!(signals(&acts).is_empty() && spawns(&acts) == 0, "{acts:?}");
        assert!(!logged(&acts, "below a fresh child's size"), "said once");
    }
}

/// A child that serves one request and then fails by itself (a poison request, a
/// handler that dies after each answer) is a crash loop one request at a time:
/// backed off like any other, not replaced at once forever.
#[test]
fn children_that_fail_right_after_serving_are_backed_off() {
    let mut r = Rig::start(Options {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(1_000),
        ..opts(3, 10)
    });
    let mut forks = 0;
    let start = r.now.as_millis();
    // (Bounded in forks too: without a backoff, time would never move.)
    while r.now.as_millis() < start + 5_000 && forks < 100 {
        let victim = *r.pids().last().unwrap();
        r.requests = vec![(victim, 1)];
        r.tick();
        let mut acts = r.exit(victim, ExitStatus::Exited(1));
        let mut waits = 0;
        while spawns(&acts) == 0 {
            waits += 1;
            assert!(waits < 100, "no replacement: {acts:?} {:?}", r.m.counts());
            acts = r.timer();
        }
        forks += 1;
        r.ready_all();
    }
    assert!(forks <= 12, "{forks} forks in 5 s");
    assert!(r.m.crash_streak() > 1);
}

// ----- rollouts under faults (a hostile review's findings) -----

/// HUP rolls children; a rollout keeps at least `n` serving.
#[derive(Debug)]
struct RollKeeping(usize);
impl preforkd::policy::ReloadPolicy for RollKeeping {
    fn plan(&mut self, _: preforkd::policy::ReloadTrigger) -> preforkd::policy::ReloadPlan {
        preforkd::policy::ReloadPlan::ROLL
    }
    fn min_serving(&self) -> Option<usize> {
        Some(self.0)
    }
}

/// A full pool (max_children == pool) and new code whose children report ready
/// then fail 10 ms later: no new child ever proves healthy, so one old child at
/// most goes (to make room); every other one keeps serving. (Before: room was
/// made again at each new child's READY, down to min_serving.)
#[test]
fn a_full_pool_reload_to_failing_code_retires_only_one_old_child_to_make_room() {
    let mut r = Rig::new(
        Machine::builder(Options {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..opts(4, 4)
        })
        .scaling_policy(Fixed(4))
        .reload_policy(RollKeeping(1))
        .build()
        .unwrap(),
    );
    r.boot();
    let old = r.pids();
    let mut all = r.feed(Event::Signal(Signal::Hup));
    while r.now < Time::from_millis(10_000) {
        // Old children TERMed by the reload leave at once.
        for (pid, _, why) in signals(&all) {
            if why == SignalReason::Reload && r.pids().contains(&pid) {
                all.extend(r.exit(pid, ExitStatus::Exited(0)));
            }
        }
        let fresh: Vec<Pid> = r.pids().into_iter().filter(|p| !old.contains(p)).collect();
        for &pid in &fresh {
            all.extend(r.feed(Event::ChildReady { pid }));
        }
        let t = r.now.as_millis() + 10;
        r.at(t);
        for pid in fresh {
            all.extend(r.exit(pid, ExitStatus::Exited(1)));
        }
        if r.m.poll_timeout().is_some_and(|t| t > r.now) {
            all.extend(r.timer());
        } else {
            r.at(r.now.as_millis() + 10);
            all.extend(r.tick());
        }
    }
    let retired: Vec<_> = signals(&all)
        .into_iter()
        .filter(|s| old.contains(&s.0) && s.2 == SignalReason::Reload)
        .collect();
    assert!(
        retired.len() <= 1,
        "{} old children retired for new ones that never proved healthy: {retired:?}",
        retired.len()
    );
}

/// Two HUPs in a row: the first rollout's children, unproved, are no reliable
/// "old" children for the second: the generation known to work serves on until
/// a new one proves itself. (Before: both of its children were retired within
/// 60 ms, for children that had proved nothing.)
#[test]
fn hups_in_a_row_keep_the_known_good_generation_until_a_new_one_proves() {
    let mut r = Rig::new(
        Machine::builder(opts(2, 4))
            .scaling_policy(Fixed(2))
            .build()
            .unwrap(),
    );
    r.boot();
    let gen1 = r.pids();
    r.at(10);
    let mut all = r.feed(Event::Signal(Signal::Hup));
    all.extend(r.ready_all()); // generation 2: ready, unproven
    r.at(20);
    all.extend(r.feed(Event::Signal(Signal::Hup)));
    for _ in 0..4 {
        for (pid, _, why) in signals(&all) {
            if why == SignalReason::Reload && r.pids().contains(&pid) {
                r.at(r.now.as_millis() + 10);
                all.extend(r.exit(pid, ExitStatus::Exited(0)));
            }
        }
        all.extend(r.ready_all()); // generation 3: ready, unproven
    }
    assert!(
        r.now < Time::from_millis(1000),
        "nothing lived min_healthy_uptime"
    );
    let serving_gen1 = gen1.iter().filter(|p| r.pids().contains(p)).count();
    let retired: Vec<_> = signals(&all)
        .into_iter()
        .filter(|s| gen1.contains(&s.0))
        .collect();
    assert!(
        serving_gen1 >= 1,
        "no child of the proven generation serves; none of generations 2, 3 proved healthy: {retired:?}, counts {:?}",
        r.m.counts()
    );
}

/// The old children a rollout retires at the proof wake-up are TERMed after the
/// per-child pass has set the next wake-up: the retirement itself arms the KILL's
/// deadline. (Before: none, and a child ignoring TERM was never KILLed.)
#[test]
fn old_children_retired_at_the_proof_wake_up_get_a_kill_deadline() {
    let mut r = Rig::new(
        Machine::builder(opts(2, 10))
            .scaling_policy(Fixed(2))
            .build()
            .unwrap(),
    );
    r.boot();
    let old = r.pids();
    r.feed(Event::Signal(Signal::Hup));
    r.ready_all();
    let acts = r.timer(); // min_healthy_uptime: the new ones are proved
    let s = signals(&acts);
    assert_eq!(s.len(), 2, "{acts:?}");
    assert!(s.iter().all(|x| old.contains(&x.0)));
    let kill_at = r.now + r.m.options().graceful_timeout;
    // The old children ignore TERM (a long request): they must be KILLed at kill_at.
    let next = r.m.poll_timeout();
    assert!(
        next.is_some_and(|t| t <= kill_at),
        "next wake-up {next:?}, KILL due at {kill_at:?}"
    );
}

/// An upgrade during a rollout hands over old and new children: the adopting
/// image aims at the rollout's size, not at all of them (which doubled the pool).
#[test]
fn an_upgrade_during_a_reload_keeps_the_pools_size() {
    let mut r = Rig::new(
        Machine::builder(opts(3, 30))
            .scaling_policy(Fixed(3))
            .build()
            .unwrap(),
    );
    r.boot();
    r.at(10);
    r.feed(Event::Signal(Signal::Hup));
    r.ready_all();
    assert_eq!(r.m.state(), State::Reloading);
    assert_eq!(r.m.counts().serving(), 6);
    let h = r.m.handoff().with_previous(true);
    let mut r2 = Rig::new(
        Machine::builder(opts(3, 30))
            .scaling_policy(Fixed(3))
            .adopt(h)
            .build()
            .unwrap(),
    );
    r2.now = r.now;
    r2.next_pid = 1000;
    let acts = r2.feed(Event::HookFinished {
        hook: HookKind::AfterInit,
        ok: true,
    });
    assert_eq!(r2.m.state(), State::Reloading);
    assert!(
        spawns(&acts) <= 3,
        "{} spawned for a pool of 3",
        spawns(&acts)
    );
}

/// New code that takes longer than min_healthy_uptime (1 s) to boot, reports
/// ready, and would fail at once: for a rollout, "lived min_healthy_uptime" counts
/// from its READY, not from its fork, so its READY proves nothing. (Before: every
/// old child was retired at the new ones' READY.)
#[test]
fn a_child_slower_to_boot_than_min_healthy_uptime_is_not_proved_by_its_ready() {
    let mut r = Rig::new(
        Machine::builder(opts(2, 10))
            .scaling_policy(Fixed(2))
            .build()
            .unwrap(),
    );
    r.boot();
    let old = r.pids();
    r.at(10_000);
    r.feed(Event::Signal(Signal::Hup));
    // The new code boots in 1.5 s, reports ready...
    r.at(11_500);
    let acts = r.ready_all();
    let s: Vec<_> = signals(&acts)
        .into_iter()
        .filter(|s| old.contains(&s.0))
        .collect();
    // ...and would fail 10 ms later: nothing proved it healthy yet.
    assert!(
        s.is_empty(),
        "old children retired at the new ones' READY: {s:?}"
    );
}

/// A HUP storm (a deploy script sending one HUP per file changed, every 10 ms)
/// to children that boot fast: the children of a generation superseded before it
/// proved itself go at once, so the pool of 3 stays near its size. (Before: each
/// HUP kept them and forked a full new set, up to max_children.)
#[test]
fn a_hup_storm_keeps_the_pool_near_its_size() {
    let mut r = Rig::new(
        Machine::builder(opts(3, 150))
            .scaling_policy(Fixed(3))
            .build()
            .unwrap(),
    );
    r.boot();
    let mut most = 0;
    for i in 0..60 {
        r.at(10 * (i + 1));
        let mut acts = r.feed(Event::Signal(Signal::Hup));
        acts.extend(r.ready_all());
        // Children TERMed leave at once.
        for (pid, _, why) in signals(&acts) {
            if why == SignalReason::Reload && r.pids().contains(&pid) {
                r.exit(pid, ExitStatus::Exited(0));
            }
        }
        r.ready_all();
        most = most.max(r.m.counts().alive());
    }
    assert!(
        most <= 9,
        "a pool of 3 grew to {most} children ({:?})",
        r.m.counts()
    );
}
