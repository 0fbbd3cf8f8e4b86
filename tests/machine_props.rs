//! Property tests: the supervisor's invariants under arbitrary event sequences.
//!
//! Each case builds a machine with random options and policies, applies a random
//! sequence of outside-world ops through the oracle harness (which checks every
//! invariant after every step), then lets events go quiet (the pool must settle into
//! the policy's quiet range) and shuts down (it must reach Stopped with every child
//! reaped). Cases per property: `PROPTEST_CASES` (CI sets 1000).

use preforkd::fuzzing::{ScalingChoice, Setup};
use preforkd::oracle::{Harness, Op};
use preforkd::policy::{ApacheLikeConfig, Rolling};
use preforkd::{Action, ExitStatus, Options, Signal, State};
use proptest::prelude::*;
use std::time::Duration;

fn ms(range: std::ops::RangeInclusive<u64>) -> impl Strategy<Value = Duration> {
    range.prop_map(Duration::from_millis)
}

fn setup() -> impl Strategy<Value = Setup> {
    (1usize..=10)
        .prop_flat_map(|max| {
            let opts = (
                0..=max,
                proptest::option::of(ms(50..=3000)),
                proptest::option::of((1u64..=20, 0u64..=5)),
                ms(100..=5000),
                proptest::option::of(ms(200..=3000)),
                any::<u64>(),
            )
                .prop_map(
                    move |(prefork, busy, maxreq, graceful, reload, seed)| Options {
                        prefork,
                        max_children: max,
                        busy_timeout: busy,
                        max_requests_per_child: maxreq.map(|(m, _)| m),
                        max_requests_jitter: maxreq.map_or(0, |(_, j)| j),
                        graceful_timeout: graceful,
                        auto_reload_check_every: reload,
                        seed,
                        ..Options::default()
                    },
                );
            let policy = prop_oneof![
                Just(ScalingChoice::Elastic),
                (0usize..=3, 1usize..=4, 1usize..=16, 0..=max, ms(100..=2000)).prop_map(
                    move |(min_spare, extra, workers, start, interval)| {
                        ScalingChoice::ApacheLike(ApacheLikeConfig {
                            start_servers: start.min(workers),
                            min_spare_servers: min_spare,
                            max_spare_servers: min_spare + extra,
                            max_request_workers: workers,
                            max_spawn_rate: 32,
                            retire_interval: interval,
                        })
                    }
                ),
                (0..=max + 2).prop_map(ScalingChoice::Fixed),
            ];
            let rolling = proptest::option::of(
                (
                    proptest::option::of(0..=max),
                    proptest::option::of(1usize..=3),
                    any::<bool>(),
                )
                    .prop_map(|(min_serving, max_surge, handler_on_signal)| {
                        Rolling {
                            check_every: None,
                            handler_on_signal,
                            min_serving,
                            max_surge,
                        }
                    }),
            );
            (Just(max), opts, policy, rolling, any::<bool>())
        })
        .prop_map(
            |(_, opts, scaling, rolling, terminate_on_disconnect)| Setup {
                opts,
                scaling,
                rolling,
                terminate_on_disconnect,
            },
        )
}

fn signal() -> impl Strategy<Value = Signal> {
    prop_oneof![
        1 => Just(Signal::Term),
        1 => Just(Signal::Int),
        1 => Just(Signal::Quit),
        4 => Just(Signal::Hup),
        2 => Just(Signal::Usr1),
        1 => Just(Signal::Usr2),
        3 => Just(Signal::Ttin),
        3 => Just(Signal::Ttou),
        1 => Just(Signal::Chld),
    ]
}

fn status() -> impl Strategy<Value = ExitStatus> {
    prop_oneof![
        (0i32..3).prop_map(ExitStatus::Exited),
        prop_oneof![Just(9), Just(11), Just(15)].prop_map(ExitStatus::Signaled),
    ]
}

fn op(with_stop: bool) -> impl Strategy<Value = Op> {
    let sig = if with_stop {
        signal().boxed()
    } else {
        signal()
            .prop_filter("no stop signal", |s| {
                !matches!(s, Signal::Term | Signal::Int | Signal::Quit)
            })
            .boxed()
    };
    prop_oneof![
        3 => sig.prop_map(Op::Signal),
        4 => (0u16..3000).prop_map(Op::Advance),
        3 => Just(Op::Timeout),
        2 => Just(Op::HookOk),
        1 => Just(Op::HookFail),
        10 => Just(Op::SpawnOk),
        1 => Just(Op::SpawnFail),
        6 => any::<u8>().prop_map(Op::Ready),
        6 => any::<u8>().prop_map(Op::Busy),
        6 => any::<u8>().prop_map(Op::Idle),
        2 => (any::<u8>(), 0u8..10).prop_map(|(i, n)| Op::Served(i, n)),
        1 => any::<u8>().prop_map(Op::SelfRetire),
        2 => (any::<u8>(), status()).prop_map(|(i, s)| Op::Exit(i, s)),
        4 => Just(Op::Deliver),
        1 => any::<u16>().prop_map(Op::BogusExit),
        1 => Just(Op::DuplicateExit),
        1 => any::<u16>().prop_map(Op::BogusSpawn),
        1 => Just(Op::StaleTick),
        1 => any::<u8>().prop_map(Op::Disconnect),
        1 => Just(Op::FilesChanged),
    ]
}

fn run(setup: &Setup, ops: &[Op]) -> Result<Harness, TestCaseError> {
    let mut h = Harness::new(setup.build());
    for (i, &op) in ops.iter().enumerate() {
        h.apply(op)
            .map_err(|v| TestCaseError::fail(format!("op #{i} {op:?}: {v}")))?;
    }
    Ok(h)
}

proptest! {
    /// Every invariant holds after every step, the pool settles into the policy's
    /// quiet range once events go quiet, and shutdown always reaches Stopped.
    #[test]
    fn invariants_hold_for_any_events(
        setup in setup(),
        ops in proptest::collection::vec(op(true), 0..160),
    ) {
        let mut h = run(&setup, &ops)?;
        h.finish().map_err(|v| TestCaseError::fail(format!("finish: {v}")))?;
        prop_assert_eq!(h.machine().state(), State::Stopped);
    }

    /// Without stop signals the machine keeps serving: after the ops it settles into
    /// the quiet range in Serving (checked by `quiesce`), with every child in the
    /// current generation once a reload is over.
    #[test]
    fn pool_converges_and_reloads_complete(
        setup in setup(),
        ops in proptest::collection::vec(op(false), 0..160),
    ) {
        let mut ops = ops;
        ops.insert(0, Op::HookOk);
        let mut h = run(&setup, &ops)?;
        h.quiesce().map_err(|v| TestCaseError::fail(format!("quiesce: {v}")))?;
        let m = h.machine();
        if m.state() == State::Serving {
            let generation = m.generation();
            let pids: Vec<_> = m.pids().collect();
            for pid in pids {
                prop_assert_eq!(m.generation_of(pid), Some(generation));
            }
        } else {
            // Only a failed after_init stops a machine that got no stop signal.
            prop_assert_eq!(m.exit_code(), Some(1));
        }
    }

    /// The same options, seed and events always give the same actions.
    #[test]
    fn same_events_same_actions(
        setup in setup(),
        ops in proptest::collection::vec(op(true), 0..120),
    ) {
        let a = run(&setup, &ops)?;
        let b = run(&setup, &ops)?;
        prop_assert_eq!(a.trace(), b.trace());
        prop_assert!(a.trace().iter().any(|x| matches!(x, Action::RunHook(_))));
    }
}
