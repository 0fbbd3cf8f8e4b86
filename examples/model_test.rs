//! Model-test a home-made scaling policy against the default one, with the
//! deterministic simulator: same seeded workload, same simulated machine.
//!
//! Run with `cargo run --example model_test`.

use preforkd::policy::{ApacheLike, Decision, PoolSnapshot, ScalingPolicy};
use preforkd::sim::{Service, Sim, SimConfig, SimReport, Workload};
use preforkd::{Machine, Options, Time};
use std::ops::RangeInclusive;
use std::time::Duration;

/// Keep `spare` children free (idle or starting) on top of whatever waits in the
/// listen backlog, up to `cap` children; give surplus idle children back, half at a
/// time, once they have been surplus for `cooldown`.
#[derive(Debug)]
struct SpareBacklog {
    spare: usize,
    cap: usize,
    cooldown: Duration,
    surplus_since: Option<Time>,
}

impl ScalingPolicy for SpareBacklog {
    fn decide(&mut self, pool: &PoolSnapshot, now: Time) -> Decision {
        let cap = self.cap.min(pool.max_children);
        let room = cap.saturating_sub(pool.total()).min(pool.free_slots());
        let free = pool.idle + pool.starting;
        let want = self.spare + pool.backlog.unwrap_or(0);
        // No recheck needed while children are busy: the supervisor reads the
        // scoreboard every `busy_refresh` then, and asks again.
        if free < want && room > 0 {
            self.surplus_since = None;
            return Decision::spawn((want - free).min(room));
        }
        if pool.idle > self.spare && pool.total() > self.spare {
            let since = *self.surplus_since.get_or_insert(now);
            if now >= since + self.cooldown {
                self.surplus_since = None;
                return Decision::retire((pool.idle - self.spare).div_ceil(2));
            }
            return Decision::hold().recheck_at(since + self.cooldown);
        }
        self.surplus_since = None;
        Decision::hold()
    }

    fn quiet_range(&self) -> RangeInclusive<usize> {
        self.spare..=self.spare
    }

    fn name(&self) -> &str {
        "spare_backlog"
    }
}

/// Steady Poisson traffic (200 req/s, exponential 80 ms service: ~16 busy children)
/// with a burst of 100 one-second requests at t = 10 s.
fn workload() -> Workload {
    let steady = Workload::poisson(
        200.0,
        Time::ZERO,
        Duration::from_secs(30),
        Service::Exponential {
            mean: Duration::from_millis(80),
        },
        2024,
    );
    steady.and(Workload::burst(
        100,
        Time::from_millis(10_000),
        Duration::from_secs(1),
    ))
}

fn run(machine: Machine, work: &Workload) -> SimReport {
    let checked = SimConfig {
        check_invariants: true,
        ..SimConfig::default()
    };
    let mut sim = Sim::with_config(machine, work.clone(), checked);
    sim.run_to_completion(Duration::from_secs(120));
    sim.into_report()
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
}

fn main() -> Result<(), preforkd::ConfigError> {
    let opts = Options {
        max_children: 150,
        ..Options::default()
    };
    let work = workload();
    let runs = [
        ("elastic (default)", Machine::new(opts.clone())?),
        (
            "apache_like",
            Machine::builder(opts.clone())
                .scaling_policy(ApacheLike::default())
                .build()?,
        ),
        (
            "spare_backlog",
            Machine::builder(opts)
                .scaling_policy(SpareBacklog {
                    spare: 4,
                    cap: 120,
                    cooldown: Duration::from_millis(500),
                    surplus_since: None,
                })
                .build()?,
        ),
    ];

    println!("{} requests, seed 2024\n", work.len());
    println!(
        "{:<18} {:>9} {:>9} {:>9} {:>7} {:>5} {:>12} {:>6}",
        "policy", "p50 ms", "p99 ms", "max ms", "spawns", "peak", "last finish", "final"
    );
    for (name, machine) in runs {
        let r = run(machine, &work);
        println!(
            "{:<18} {:>9} {:>9} {:>9} {:>7} {:>5} {:>12} {:>6}",
            name,
            ms(r.wait_p50()),
            ms(r.wait_p99()),
            ms(r.wait_max()),
            r.spawns,
            r.peak_children,
            r.last_finish.map_or("-".into(), |t| t.to_string()),
            r.last_sample().map_or(0, |s| s.alive),
        );
        assert_eq!(r.dropped, 0);
    }
    println!("\n(final: children alive 120 s after the last request)");
    Ok(())
}
