//! Model tests of the supervisor and its scaling policies through the deterministic
//! simulator (`preforkd::sim`).

use preforkd::policy::{ApacheLike, Decision, Fixed, PoolSnapshot, ScalingPolicy};
use preforkd::sim::{Service, Sim, SimConfig, SimReport, Ticks, Workload};
use preforkd::{Machine, Options, Signal, State, Time};
use std::ops::RangeInclusive;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

fn ms(n: u64) -> Time {
    Time::from_millis(n)
}

/// The seed's defaults: prefork 3, max_children 150, the default Elastic policy.
fn seed_options() -> Options {
    Options {
        max_children: 150,
        ..Options::default()
    }
}

/// 140 clients each holding a child for one second, all at t = 0 (the figure of
/// the reference notes: ideal 1.0 s).
fn burst_140() -> Workload {
    Workload::burst(140, Time::ZERO, SEC)
}

fn elastic() -> Machine {
    Machine::new(seed_options()).unwrap()
}

fn apache_like() -> Machine {
    Machine::builder(seed_options())
        .scaling_policy(ApacheLike::default())
        .build()
        .unwrap()
}

/// Every scenario runs with the oracle's invariants checked at every step.
fn checked_sim(machine: Machine, work: Workload) -> Sim {
    let config = SimConfig {
        check_invariants: true,
        ..SimConfig::default()
    };
    Sim::with_config(machine, work, config)
}

fn max_alive(r: &SimReport) -> usize {
    r.samples.iter().map(|s| s.alive).max().unwrap_or(0)
}

fn assert_absorbed(name: &str, r: &SimReport, n: u64) {
    assert_eq!(r.completed, n, "{name}: every request completes");
    assert_eq!(r.dropped, 0, "{name}: nothing dropped");
    assert_eq!(r.unfinished(), 0, "{name}");
    assert!(
        r.peak_children <= 150,
        "{name}: {} children",
        r.peak_children
    );
    assert!(max_alive(r) <= 150, "{name}");
}

// ----- 1. acceptance: the seed's burst -----

#[test]
fn default_policy_absorbs_a_burst_of_140_within_1_1_s() {
    let mut sim = checked_sim(elastic(), burst_140());
    let r = sim.run_to_completion(Duration::ZERO);
    assert_absorbed("elastic", &r, 140);
    let last = r.last_finish.unwrap();
    assert!(
        last >= ms(1_000),
        "no request finishes before its 1 s service"
    );
    assert!(last <= ms(1_100), "last request finished at {last}");
    // Nobody waited anywhere near a second: the pool grew to the burst at once.
    assert!(r.wait_max().unwrap() < Duration::from_millis(100), "{r:?}");
    // The pool really grew to hold the burst, and no further than needed plus the
    // policy's spare.
    assert!(r.peak_children >= 140, "{}", r.peak_children);
}

/// After the burst the pool shrinks back to `prefork`, then sleeps. A request
/// finishing wakes nobody, so the machine would believe the burst's children busy
/// forever; it reads the scoreboard again every `busy_refresh` while it counts any
/// busy, sees them idle, and the policy retires them.
#[test]
fn default_policy_shrinks_back_to_prefork_after_the_burst() {
    let mut sim = checked_sim(elastic(), burst_140());
    sim.run_to_completion(200 * SEC);
    let last = *sim.report().last_sample().unwrap();
    assert_eq!(
        last.alive,
        3,
        "pool still {last:?} {:?} after the burst finished at {:?}; the machine believes {:?}, \
         poll_timeout {:?}",
        sim.now() - sim.report().last_finish.unwrap(),
        sim.report().last_finish,
        sim.machine().counts(),
        sim.machine().poll_timeout(),
    );
    // Once quiet, the parent sleeps: no tick, no wake-up.
    let (ticks, wakeups) = (sim.report().ticks, sim.report().wakeups);
    let t = sim.now();
    sim.run_until(t + 60 * SEC);
    assert_eq!((sim.report().ticks, sim.report().wakeups), (ticks, wakeups));
}

// ----- 2. a policy written outside the crate, model-tested -----

/// Keeps `spare` children free (idle or starting) on top of the connections waiting
/// in the backlog, never more than `cap` children; gives surplus idle children back
/// half at a time once they have been surplus for `cooldown`.
#[derive(Debug)]
struct SpareBacklog {
    spare: usize,
    cap: usize,
    cooldown: Duration,
    surplus_since: Option<Time>,
}

impl SpareBacklog {
    fn new(spare: usize, cap: usize) -> Self {
        SpareBacklog {
            spare,
            cap,
            cooldown: Duration::from_millis(500),
            surplus_since: None,
        }
    }
}

impl ScalingPolicy for SpareBacklog {
    fn decide(&mut self, pool: &PoolSnapshot, now: Time) -> Decision {
        let cap = self.cap.min(pool.max_children);
        let room = cap.saturating_sub(pool.total()).min(pool.free_slots());
        let free = pool.idle + pool.starting;
        let want = self.spare + pool.backlog.unwrap_or(0);
        // No recheck while children look busy: the supervisor reads the scoreboard
        // every `busy_refresh` then, and asks again.
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

    fn initial_children(&self) -> usize {
        self.spare
    }

    fn quiet_range(&self) -> RangeInclusive<usize> {
        self.spare..=self.spare
    }

    fn name(&self) -> &str {
        "spare_backlog"
    }
}

/// 300 requests a second for 30 s, exponential service with a 100 ms mean: about
/// 30 children busy on average, with Poisson peaks above that.
fn poisson_load(seed: u64) -> Workload {
    Workload::poisson(
        300.0,
        Time::ZERO,
        30 * SEC,
        Service::Exponential {
            mean: Duration::from_millis(100),
        },
        seed,
    )
}

#[test]
fn custom_policy_plugs_in_and_keeps_its_promises() {
    let (spare, cap) = (4, 40);
    let machine = Machine::builder(Options::default())
        .scaling_policy(SpareBacklog::new(spare, cap))
        .build()
        .unwrap();
    assert_eq!(machine.scaling_policy().name(), "spare_backlog");
    let work = poisson_load(5);
    let n = work.len() as u64;
    let mut sim = checked_sim(machine, work.clone());
    let r = sim.run_to_completion(30 * SEC);

    assert_absorbed("spare_backlog", &r, n);
    // Its own cap, well below the supervisor's 150.
    assert!(r.peak_children <= cap, "peak {}", r.peak_children);
    // Queueing stays a small fraction of the service time.
    let p99 = r.wait_p99().unwrap();
    assert!(p99 < Duration::from_millis(50), "p99 wait {p99:?}");
    // Converges into its quiet range once the load is gone, and then sleeps.
    let last = *r.last_sample().unwrap();
    assert!(
        sim.machine()
            .scaling_policy()
            .quiet_range()
            .contains(&last.alive),
        "{last:?}"
    );
    assert_eq!(last.idle, spare);
    let (ticks, wakeups) = (r.ticks, r.wakeups);
    let t = sim.now();
    sim.run_until(t + 60 * SEC);
    assert_eq!((sim.report().ticks, sim.report().wakeups), (ticks, wakeups));

    // Against a fixed pool of the same quiet size, the difference is the point of
    // autoscaling: that pool cannot keep up and its queue waits grow to seconds.
    let fixed = Machine::builder(Options::default())
        .scaling_policy(Fixed(spare))
        .build()
        .unwrap();
    let mut sim = checked_sim(fixed, work);
    let f = sim.run_to_completion(Duration::ZERO);
    assert_eq!(f.completed, n);
    assert!(f.wait_p99().unwrap() > 100 * p99.max(Duration::from_millis(1)));
}

// ----- 3. determinism -----

fn reload_scenario(seed: u64) -> SimReport {
    let mut sim = checked_sim(elastic(), poisson_load(seed));
    sim.signal_at(ms(10_000), Signal::Hup);
    sim.run_to_completion(10 * SEC);
    sim.into_report()
}

#[test]
fn same_seed_same_report_different_seed_different_arrivals() {
    let a = reload_scenario(11);
    let b = reload_scenario(11);
    assert_eq!(a, b);
    assert!(!a.samples.is_empty() && !a.logs.is_empty());

    assert_ne!(poisson_load(11), poisson_load(12));
    let c = reload_scenario(12);
    let arrivals = |r: &SimReport| r.requests.iter().map(|q| q.arrival).collect::<Vec<_>>();
    assert_ne!(arrivals(&a), arrivals(&c));
    assert_ne!(a, c);
}

// ----- 4. ApacheLike against Elastic -----

fn burst_report(machine: Machine, config: SimConfig) -> SimReport {
    let config = SimConfig {
        check_invariants: true,
        ..config
    };
    let mut sim = Sim::with_config(machine, burst_140(), config);
    sim.run_to_completion(Duration::ZERO);
    sim.into_report()
}

#[test]
fn apache_like_ramps_slower_than_elastic_but_absorbs_the_burst() {
    // Children that take 20 ms to start (an interpreter loading its code). ApacheLike
    // counts starting children as idle, so it never has more than MinSpareServers (5)
    // starting and doubles its way up in small steps; Elastic forks the whole backlog
    // at once.
    let slow_boot = SimConfig {
        boot_latency: Duration::from_millis(20),
        ..SimConfig::default()
    };
    let e = burst_report(elastic(), slow_boot.clone());
    let a = burst_report(apache_like(), slow_boot);
    assert_absorbed("elastic", &e, 140);
    assert_absorbed("apache_like", &a, 140);
    let (e_last, a_last) = (e.last_finish.unwrap(), a.last_finish.unwrap());
    assert!(a_last > e_last, "apache_like {a_last} vs elastic {e_last}");
    assert!(a.wait_p50() > e.wait_p50());
    assert!(a.wait_max() > e.wait_max());
    assert!(
        a_last < ms(2_000),
        "still absorbed, well under Apache's 7 s: {a_last}"
    );

    // With the default 1 ms start-up, serial forking (0.5 ms each) bounds both
    // policies alike: both absorb the burst within 1.1 s, but ApacheLike's small
    // steps cost the parent many more wake-ups.
    let e = burst_report(elastic(), SimConfig::default());
    let a = burst_report(apache_like(), SimConfig::default());
    for (name, r) in [("elastic", &e), ("apache_like", &a)] {
        assert_absorbed(name, r, 140);
        assert!(
            r.last_finish.unwrap() <= ms(1_100),
            "{name}: {:?}",
            r.last_finish
        );
    }
    assert!(a.wakeups > 2 * e.wakeups, "{} vs {}", a.wakeups, e.wakeups);

    // With Apache's own once-a-second maintenance loop instead of event-driven
    // ticks, the doubling ramp takes seconds, like the real Apache prefork.
    let polling = SimConfig {
        ticks: Ticks {
            on_saturation: false,
            on_ready: false,
            every: Some(SEC),
            ..Ticks::default()
        },
        report_backlog: false,
        ..SimConfig::default()
    };
    let p = burst_report(apache_like(), polling);
    assert_absorbed("apache_like polling", &p, 140);
    assert!(p.last_finish.unwrap() > ms(3_000), "{:?}", p.last_finish);
}

// ----- 5. rolling reload under load -----

#[test]
fn hup_mid_load_rolls_every_child_over_without_dropping_a_request() {
    // Steady traffic, plus 60 one-second requests just before the HUP so that many
    // old children are busy when it comes.
    let work = Workload::poisson(
        100.0,
        Time::ZERO,
        10 * SEC,
        Service::Exponential {
            mean: Duration::from_millis(50),
        },
        3,
    )
    .and(Workload::burst(60, ms(4_900), SEC));
    let n = work.len() as u64;
    let mut sim = checked_sim(elastic(), work);
    sim.signal_at(ms(5_000), Signal::Hup);

    // Mid-rollout: both generations are alive, and the old ones finish their work.
    sim.run_until(ms(5_010));
    assert_eq!(sim.machine().generation(), 2);
    sim.run_to_completion(200 * SEC);
    let r = sim.report();
    assert_absorbed("reload", r, n);
    assert_eq!(r.kills, 0, "old children left on their own, none KILLed");
    assert!(r
        .logs
        .iter()
        .any(|l| l.message.contains("reload to generation 2 complete")));
    // Serving capacity never dropped below the minimum during the rollout.
    let during = r
        .samples
        .iter()
        .filter(|s| s.at >= ms(5_000) && s.at <= ms(6_000));
    for s in during {
        assert!(s.idle + s.busy >= 3, "{s:?}");
    }

    let m = sim.machine();
    assert_eq!(m.state(), State::Serving);
    let pids: Vec<_> = m.pids().collect();
    assert!(!pids.is_empty());
    for pid in pids {
        assert_eq!(m.generation_of(pid), Some(m.generation()), "{pid}");
    }
    let last = r.last_sample().unwrap();
    assert!(
        m.scaling_policy().quiet_range().contains(&last.alive),
        "{last:?}"
    );
}

#[test]
fn a_reload_paced_one_at_a_time_never_starts_two_new_children_at_once() {
    use preforkd::policy::Rolling;
    // Pitchfork's max-unavailable pacing: Rolling { max_surge: 1 } rolls six
    // children over one by one; the default rolls them all at once (surge).
    let run = |surge: Option<usize>| {
        let m = Machine::builder(Options {
            prefork: 6,
            max_children: 12,
            ..Options::default()
        })
        .scaling_policy(Fixed(6))
        .reload_policy(Rolling {
            max_surge: surge,
            ..Rolling::default()
        })
        .build()
        .unwrap();
        let mut sim = checked_sim(m, Workload::empty());
        sim.signal_at(ms(1_000), Signal::Hup);
        let r = sim.run_until(ms(5_000));
        let peak_starting = r
            .samples
            .iter()
            .filter(|s| s.at >= ms(1_000))
            .map(|s| s.starting)
            .max()
            .unwrap_or(0);
        let done = r
            .logs
            .iter()
            .any(|l| l.message.contains("reload to generation 2 complete"));
        (peak_starting, done, sim.machine().pids().count())
    };
    assert_eq!(run(Some(1)), (1, true, 6), "one at a time");
    // Unpaced, the forks follow each other (0.5 ms each, 1 ms to boot): several
    // new children start at once.
    let (all_at_once, done, n) = run(None);
    assert!(all_at_once > 1 && done && n == 6, "{all_at_once}");
}

// ----- the simulated children's signal semantics -----

#[test]
fn term_lets_requests_finish_and_quit_drops_them() {
    let work = || Workload::burst(20, Time::ZERO, 2 * SEC);

    let mut sim = checked_sim(elastic(), work());
    sim.signal_at(ms(500), Signal::Term);
    let r = sim.run_to_completion(Duration::ZERO);
    assert_eq!((r.completed, r.dropped, r.kills), (20, 0, 0));
    let (at, code) = r.exit.unwrap();
    assert_eq!(code, 0);
    assert!(
        at >= r.last_finish.unwrap(),
        "the parent waits for its children"
    );
    assert_eq!(sim.machine().state(), State::Stopped);

    let mut sim = checked_sim(elastic(), work());
    sim.signal_at(ms(500), Signal::Quit);
    let r = sim.run_to_completion(Duration::ZERO);
    assert_eq!((r.completed, r.dropped), (0, 20));
    assert!(r.kills >= 20);
    assert_eq!(r.exit.map(|(t, _)| t), Some(ms(500)));
}

#[test]
fn request_limits_recycle_children_without_losing_work() {
    let opts = Options {
        max_requests_per_child: Some(20),
        max_requests_jitter: 5,
        ..Options::default()
    };
    let work = Workload::poisson(
        100.0,
        Time::ZERO,
        10 * SEC,
        Service::Exponential {
            mean: Duration::from_millis(50),
        },
        9,
    );
    let n = work.len() as u64;
    let mut sim = checked_sim(Machine::new(opts).unwrap(), work);
    let r = sim.run_to_completion(Duration::ZERO);
    assert_absorbed("max_requests", &r, n);
    // Each child serves at most 25 requests, so at least n / 25 children served.
    assert!(r.spawns >= n / 25, "{} spawns for {n} requests", r.spawns);
    assert!(r.logs.iter().all(|l| !l.message.contains("exited early")));
}

// ----- the simulator's API -----

/// A report is a snapshot the caller owns: holding it does not pin the simulator,
/// which can be inspected and run on, and a later report does not change it.
#[test]
fn a_report_does_not_pin_the_simulator() {
    let mut sim = checked_sim(elastic(), Workload::burst(10, ms(100), SEC));
    let early = sim.run_until(ms(50));
    assert_eq!(sim.machine().state(), State::Serving);
    let done = sim.run_to_completion(Duration::ZERO);
    assert_eq!((early.completed, early.ended_at), (0, ms(50)));
    assert_eq!(done.completed, 10);
    assert_eq!(*done, *sim.report());
    assert_eq!(sim.into_report(), *done);
}
