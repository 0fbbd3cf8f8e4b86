//! A scaling policy written as a user of the crate writes one, "keep 20 % of the
//! pool spare, at least 2", and its model test: a burst in the simulator, with
//! the oracle's invariants checked at every step.
//!
//! `cargo test` runs the model test (the example is registered with `test = true`
//! in `Cargo.toml`); so does `cargo run --example spare_policy`.

use preforkd::policy::{Decision, PoolSnapshot, RampState, ScalingPolicy};
use preforkd::sim::{Sim, SimConfig, Workload};
use preforkd::{Machine, Options, Time};
use std::time::Duration;

/// Keeps 20 % of the pool spare (idle or starting), at least 2, on top of the
/// requests waiting for a child; gives surplus idle children back one a second, so
/// the tail of a burst is not retired at once only to be started again.
#[derive(Debug, Default)]
pub struct TwentyPercentSpare {
    pace: RampState,
}

impl ScalingPolicy for TwentyPercentSpare {
    fn decide(&mut self, pool: &PoolSnapshot, now: Time) -> Decision {
        let waiting = pool.backlog.unwrap_or(0);
        // Spare `s` is 20 % of a pool of `demand + s`: s = demand / 4.
        let spare = (pool.busy + waiting).div_ceil(4).max(2);
        let (free, need) = (pool.idle + pool.starting, waiting + spare);
        if free < need {
            Decision::spawn(need - free) // the supervisor caps it at max_children
        } else if free > need && pool.idle > 0 {
            self.pace
                .retire_one(now, Duration::from_secs(1), free - 1 > need)
        } else {
            Decision::hold()
        }
    }

    /// Idle, the pool holds 2 children; the supervisor starts with as many.
    fn quiet_range(&self) -> std::ops::RangeInclusive<usize> {
        2..=2
    }
}

/// The model test: 50 clients at t = 1 s, each holding a child for half a second.
fn model_test() {
    let opts = Options {
        max_children: 64,
        ..Options::default()
    };
    let policy = TwentyPercentSpare::default();
    let machine = Machine::builder(opts)
        .scaling_policy(policy)
        .build()
        .unwrap();
    let burst = Workload::burst(50, Time::from_secs(1), Duration::from_millis(500));
    let checked = SimConfig {
        check_invariants: true,
        ..SimConfig::default()
    };
    let mut sim = Sim::with_config(machine, burst, checked);
    let r = sim.run_to_completion(Duration::from_secs(90));

    assert_eq!((r.completed, r.dropped), (50, 0));
    // Children for the whole burst at once: nobody waits for more than the forks.
    assert!(r.wait_p99().unwrap() < Duration::from_millis(50));
    // 50 busy and 20 % spare: 63 children at most, each started once (no churn).
    assert!(r.peak_children <= 63);
    assert_eq!(r.spawns, r.peak_children as u64);
    // One retired a second afterwards, down to 2; the queue was empty nearly always.
    assert_eq!(r.last_sample().unwrap().alive, 2);
    assert!(r.time_share(|s| s.queue == 0).unwrap() > 0.99);
}

#[test]
fn twenty_percent_spare_absorbs_a_burst_without_churn() {
    model_test();
}

fn main() {
    model_test();
    println!("the model test of TwentyPercentSpare passed");
}
