//! Property tests: the supervisor's invariants under arbitrary event sequences.
//!
//! Each case builds a machine with random options and policies, applies a random
//! sequence of outside-world ops through the oracle harness (which checks every
//! invariant after every step), then lets events go quiet (the pool must settle into
//! the policy's quiet range) and shuts down (it must reach Stopped with every child
//! reaped). Cases per property: `PROPTEST_CASES` (CI sets 1000).
//!
//! The strategies are parametric in the scaling policy ([`cases`]): the built-in
//! policies are one choice, a policy of your own ([`Custom`]) is another.

use preforkd::fuzzing::{with_reload_and_disconnect, ScalingChoice};
use preforkd::oracle::{Harness, Op};
use preforkd::policy::{
    ApacheLike, ApacheLikeConfig, Decision, Fixed, PoolSnapshot, RampState, Rolling, ScalingPolicy,
};
use preforkd::{Action, ExitStatus, Machine, MachineBuilder, Options, Signal, State, Time};
use proptest::prelude::*;
use std::fmt::Debug;
use std::ops::RangeInclusive;
use std::time::Duration;

fn ms(range: std::ops::RangeInclusive<u64>) -> impl Strategy<Value = Duration> {
    range.prop_map(Duration::from_millis)
}

/// One case: the options, a scaling policy, the reload and disconnect policies.
#[derive(Debug, Clone)]
struct Case<P> {
    opts: Options,
    scaling: P,
    rolling: Option<Rolling>,
    terminate_on_disconnect: bool,
}

/// A scaling policy a case plugs into the machine.
trait Plug: Clone + Debug {
    fn plug(&self, builder: MachineBuilder) -> MachineBuilder;
}

impl Plug for ScalingChoice {
    fn plug(&self, b: MachineBuilder) -> MachineBuilder {
        match self {
            ScalingChoice::Elastic => b,
            ScalingChoice::ApacheLike(c) => b.scaling_policy(ApacheLike::new(*c).unwrap()),
            ScalingChoice::Fixed(n) => b.scaling_policy(Fixed(*n)),
        }
    }
}

/// A policy of your own, as it is.
#[derive(Debug, Clone)]
struct Custom<P>(P);

impl<P: ScalingPolicy + Clone + 'static> Plug for Custom<P> {
    fn plug(&self, b: MachineBuilder) -> MachineBuilder {
        b.scaling_policy(self.0.clone())
    }
}

impl<P: Plug> Case<P> {
    fn build(&self) -> Machine {
        let b = self.scaling.plug(Machine::builder(self.opts.clone()));
        with_reload_and_disconnect(b, self.rolling, self.terminate_on_disconnect)
            .build()
            .unwrap_or_else(|e| panic!("invalid case: {e} ({self:?})"))
    }
}

/// Cases of 1 to 10 children at most, random options and reload policies, and the
/// scaling policies `scaling(max)` gives for a pool of at most `max`.
fn cases<S>(scaling: impl Fn(usize) -> S) -> impl Strategy<Value = Case<S::Value>>
where
    S: Strategy,
    S::Value: Plug,
{
    (1usize..=10)
        .prop_flat_map(move |max| {
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
            (Just(max), opts, scaling(max), rolling, any::<bool>())
        })
        .prop_map(
            |(_, opts, scaling, rolling, terminate_on_disconnect)| Case {
                opts,
                scaling,
                rolling,
                terminate_on_disconnect,
            },
        )
}

/// The built-in policies, configured at random for a pool of at most `max`.
fn builtin(max: usize) -> impl Strategy<Value = ScalingChoice> {
    prop_oneof![
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
    ]
}

/// A policy written outside the crate: keep `percent` % of the pool spare (idle
/// or starting), at least `min`, and retire surplus idle children one per `pace`.
#[derive(Debug, Clone)]
struct Spare {
    min: usize,
    percent: usize,
    pace: Duration,
    state: RampState,
}

impl ScalingPolicy for Spare {
    fn decide(&mut self, pool: &PoolSnapshot, now: Time) -> Decision {
        let spare = pool.idle + pool.starting;
        // spare / (busy + spare) >= percent
        let want = (pool.busy * self.percent)
            .div_ceil(100 - self.percent)
            .max(self.min);
        if spare < want {
            Decision::spawn(want - spare)
        } else if spare > want && pool.idle > 0 {
            self.state.retire_one(now, self.pace, spare - 1 > want)
        } else {
            Decision::hold()
        }
    }

    fn quiet_range(&self) -> RangeInclusive<usize> {
        self.min..=self.min
    }
}

fn spare(_max: usize) -> impl Strategy<Value = Custom<Spare>> {
    (0usize..=4, 0usize..=50, ms(1..=2000)).prop_map(|(min, percent, pace)| {
        Custom(Spare {
            min,
            percent,
            pace,
            state: RampState::default(),
        })
    })
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

fn run<P: Plug>(case: &Case<P>, ops: &[Op]) -> Result<Harness, TestCaseError> {
    let mut h = Harness::new(case.build());
    for (i, &op) in ops.iter().enumerate() {
        h.apply(op)
            .map_err(|v| TestCaseError::fail(format!("op #{i} {op:?}: {v}")))?;
    }
    Ok(h)
}

/// Every invariant holds after every step, the pool settles into the policy's
/// quiet range once events go quiet, and shutdown always reaches Stopped.
fn invariants_hold<P: Plug>(case: &Case<P>, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut h = run(case, ops)?;
    h.finish()
        .map_err(|v| TestCaseError::fail(format!("finish: {v}")))?;
    prop_assert_eq!(h.machine().state(), State::Stopped);
    Ok(())
}

proptest! {
    /// [`invariants_hold`], for the built-in policies.
    #[test]
    fn invariants_hold_for_any_events(
        case in cases(builtin),
        ops in proptest::collection::vec(op(true), 0..160),
    ) {
        invariants_hold(&case, &ops)?;
    }

    /// [`invariants_hold`], for a policy written outside the crate.
    #[test]
    fn invariants_hold_for_a_custom_policy(
        case in cases(spare),
        ops in proptest::collection::vec(op(true), 0..160),
    ) {
        invariants_hold(&case, &ops)?;
    }

    /// Without stop signals the machine keeps serving: after the ops it settles into
    /// the quiet range in Serving (checked by `quiesce`), with every child in the
    /// current generation once a reload is over.
    #[test]
    fn pool_converges_and_reloads_complete(
        case in cases(builtin),
        ops in proptest::collection::vec(op(false), 0..160),
    ) {
        let mut ops = ops;
        ops.insert(0, Op::HookOk);
        let mut h = run(&case, &ops)?;
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
        case in cases(builtin),
        ops in proptest::collection::vec(op(true), 0..120),
    ) {
        let a = run(&case, &ops)?;
        let b = run(&case, &ops)?;
        prop_assert_eq!(a.trace(), b.trace());
        prop_assert!(a.trace().iter().any(|x| matches!(x, Action::RunHook(_))));
    }
}
