//! The cost of one scoreboard tick in a full pool.
//!
//! What is measured: one `Machine::handle(now, Event::Scoreboard(&sb))` plus draining
//! every action with `poll_action()`, for a pool of 150 children in `Serving`
//! (`prefork = max_children = 150`). Between two ticks four children flip between
//! busy and idle (a different four each time) and the clock moves 10 ms on, so every
//! tick recounts the pool and asks the scaling policy again; the flips themselves
//! (four stores into the scoreboard) are inside the timed loop and cost a few
//! nanoseconds. Roughly once per simulated second a tick also emits a STATUS
//! notification, as the machine would in production.
//!
//! Variants: the default policy (`Elastic`, built from `prefork`/`max_children`),
//! `ApacheLike` configured so that 150 children is a steady size, and `Fixed(150)`.
//! After each run the bench checks its own premise: still `Serving` with 150 live
//! children, and no spawn or signal was asked for while it was timed.
//!
//! The target is at most 2 µs per tick.
//!
//! Run it with
//!
//! ```text
//! cargo bench --bench machine              # full run, about 30 s
//! cargo bench --bench machine -- --quick   # a quick estimate, a few seconds
//! cargo bench --bench machine -- elastic   # one variant
//! ```
//!
//! For each variant criterion prints `time: [low estimate high]`: the middle figure
//! is its best estimate of the time per tick (a regression over the samples), the
//! outer two a 95 % confidence interval. The median of the samples is not printed;
//! it is `"median"` in `target/criterion/tick_150_serving_<variant>/new/estimates.json`.

use criterion::{criterion_main, Criterion};
use preforkd::policy::{ApacheLike, ApacheLikeConfig, Fixed, Pid};
use preforkd::{
    Action, Event, HookKind, Machine, Options, Scoreboard, SlotReading, SlotState, State, Time,
};
use std::hint::black_box;
use std::time::Duration;

const POOL: usize = 150;
/// Children that flip between busy and idle at each tick.
const FLIPS: usize = 4;
/// Simulated time between two ticks.
const TICK: Duration = Duration::from_millis(10);

fn options() -> Options {
    Options {
        prefork: POOL,
        max_children: POOL,
        ..Options::default()
    }
}

fn pid_of(slot: usize) -> Pid {
    Pid(10_000 + slot as i32)
}

/// Drives a fresh machine through `after_init` and the first spawns until it serves
/// with `POOL` ready children; returns it with the time reached.
fn serving(mut m: Machine) -> (Machine, Time) {
    let mut now = Time::ZERO;
    m.handle(
        now,
        Event::HookFinished {
            hook: HookKind::AfterInit,
            ok: true,
        },
    );
    for _ in 0..10 {
        if m.state() == State::Serving {
            break;
        }
        let mut spawned = Vec::new();
        while let Some(action) = m.poll_action() {
            if let Action::Spawn { slot, .. } = action {
                spawned.push(slot);
            }
        }
        now += Duration::from_millis(1);
        for &slot in &spawned {
            m.handle(
                now,
                Event::ChildSpawned {
                    slot,
                    pid: pid_of(slot),
                },
            );
        }
        now += Duration::from_millis(1);
        for &slot in &spawned {
            m.handle(now, Event::ChildReady { pid: pid_of(slot) });
        }
    }
    while m.poll_action().is_some() {}
    assert_eq!(m.state(), State::Serving, "the pool did not come up");
    assert_eq!(m.counts().idle, POOL, "expected {POOL} idle children");
    (m, now)
}

/// The scoreboard of a pool where every child is idle.
fn idle_scoreboard(now: Time) -> Scoreboard {
    Scoreboard {
        slots: (0..POOL)
            .map(|slot| SlotReading {
                pid: pid_of(slot),
                state: SlotState::Idle,
                requests: 0,
                request_start: None,
                heartbeat: now,
                memory: None,
            })
            .collect(),
        backlog: None,
    }
}

fn bench_ticks(c: &mut Criterion, name: &str, machine: Machine) {
    let (mut m, start) = serving(machine);
    let mut sb = idle_scoreboard(start);
    let mut now = start;
    let mut tick: usize = 0;
    // Spawns and signals would mean the pool is not the steady one being measured.
    let mut unexpected: Vec<Action> = Vec::new();

    c.bench_function(name, |b| {
        b.iter(|| {
            tick += 1;
            now += TICK;
            for k in 0..FLIPS {
                let s = &mut sb.slots[(tick + k * (POOL / FLIPS)) % POOL];
                if s.state == SlotState::Busy {
                    s.state = SlotState::Idle;
                    s.request_start = None;
                    s.requests += 1;
                } else {
                    s.state = SlotState::Busy;
                    s.request_start = Some(now);
                }
                s.heartbeat = now;
            }
            m.handle(black_box(now), Event::Scoreboard(black_box(&sb)));
            while let Some(action) = m.poll_action() {
                if matches!(action, Action::Spawn { .. } | Action::Signal { .. })
                    && unexpected.len() < 8
                {
                    unexpected.push(action.clone());
                }
                let _ = black_box(action);
            }
        })
    });

    assert!(
        unexpected.is_empty(),
        "{name}: the pool did not stay steady: {unexpected:?}"
    );
    assert_eq!(m.state(), State::Serving, "{name}: left Serving");
    assert_eq!(m.counts().alive(), POOL, "{name}: pool size changed");
}

fn ticks(c: &mut Criterion) {
    bench_ticks(
        c,
        "tick_150_serving/elastic",
        Machine::new(options()).expect("valid options"),
    );

    // Spare bounds wide enough that 150 children, mostly idle, is a steady size.
    let apache = ApacheLike::new(ApacheLikeConfig {
        start_servers: POOL,
        min_spare_servers: 5,
        max_spare_servers: POOL,
        max_request_workers: POOL,
        ..ApacheLikeConfig::default()
    })
    .expect("valid ApacheLike configuration");
    bench_ticks(
        c,
        "tick_150_serving/apache_like",
        Machine::builder(options())
            .scaling_policy(apache)
            .build()
            .expect("valid options"),
    );

    bench_ticks(
        c,
        "tick_150_serving/fixed",
        Machine::builder(options())
            .scaling_policy(Fixed(POOL))
            .build()
            .expect("valid options"),
    );
}

// In a private module: the function the macro generates is public and undocumented.
mod group {
    use criterion::criterion_group;
    criterion_group!(benches, super::ticks);
}
criterion_main!(group::benches);
