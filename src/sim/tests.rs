//! Unit tests of the simulator's model.

use super::*;
use crate::{Event, ExitStatus, Options};

fn machine(prefork: usize) -> Machine {
    Machine::new(Options {
        prefork,
        max_children: 20,
        ..Options::default()
    })
    .unwrap()
}

#[test]
fn forks_are_serial_and_children_boot_after_their_fork() {
    let mut sim = Sim::new(machine(3), Workload::empty());
    let r = sim.run_until(Time::from_millis(10));
    let at = |us: u64| *r.sample_at(Time::from_micros(us)).unwrap();
    assert_eq!((at(500).starting, at(500).alive), (1, 1));
    assert_eq!((at(1_000).starting, at(1_000).alive), (2, 2));
    assert_eq!((at(1_500).starting, at(1_500).idle), (2, 1));
    assert_eq!(at(2_500).idle, 3);
    assert_eq!(r.spawns, 3);
    assert_eq!(sim.machine().state(), crate::State::Serving);
}

#[test]
fn an_idle_quiet_pool_never_wakes_the_parent() {
    let mut sim = Sim::new(machine(3), Workload::empty());
    // Start-up, and the deferred STATUS notification (status_interval, 1 s).
    sim.run_until(Time::from_millis(5_000));
    let (ticks, wakeups) = (sim.report().ticks, sim.report().wakeups);
    sim.run_until(Time::from_millis(1_000_000));
    assert_eq!((sim.report().ticks, sim.report().wakeups), (ticks, wakeups));
    assert_eq!(sim.machine().poll_timeout(), None);
}

#[test]
fn requests_tick_only_when_configured() {
    // One request at a time on a pool of three: nothing saturates.
    let work = Workload::from_requests(
        (0..10).map(|i| (Time::from_millis(100 + 10 * i), Duration::from_millis(1))),
    );
    let quiet = Sim::new(machine(3), work.clone())
        .run_to_completion(Duration::ZERO)
        .clone();
    let startup_ticks = 3; // one per child becoming ready
    assert_eq!(quiet.ticks, startup_ticks);
    assert_eq!(quiet.completed, 10);
    let config = SimConfig {
        ticks: Ticks {
            on_every_request: true,
            ..Ticks::default()
        },
        ..SimConfig::default()
    };
    let chatty = Sim::with_config(machine(3), work, config)
        .run_to_completion(Duration::ZERO)
        .clone();
    assert_eq!(chatty.ticks, startup_ticks + 20);
}

#[test]
fn saturation_ticks_carry_the_backlog() {
    let work = Workload::burst(5, Time::from_millis(100), Duration::from_millis(50));
    let mut sim = Sim::new(machine(1), work);
    let r = sim.run_to_completion(Duration::ZERO);
    assert_eq!(r.completed, 5);
    assert!(r.peak_children >= 5, "grew on the reported backlog");
    assert!(r.wait_max().unwrap() < Duration::from_millis(10));
}

#[test]
fn fixed_interval_sampling() {
    let config = SimConfig {
        sample_every: Some(Duration::from_millis(10)),
        ..SimConfig::default()
    };
    let mut sim = Sim::with_config(machine(2), Workload::empty(), config);
    let r = sim.run_until(Time::from_millis(95));
    assert_eq!(r.samples.len(), 10);
    assert!(r
        .samples
        .iter()
        .enumerate()
        .all(|(i, s)| s.at == Time::from_millis(10 * i as u64)));
    assert_eq!(r.samples[9].idle, 2);
}

#[test]
fn time_share_weighs_each_sample_by_how_long_it_held() {
    let mut sim = Sim::new(machine(3), Workload::empty());
    let r = sim.run_until(Time::from_millis(10));
    // Forks at 0.5, 1 and 1.5 ms, each child ready 1 ms later: all three idle from
    // 2.5 ms to the end at 10 ms, of a run sampled from 0.
    assert_eq!(r.samples[0].at, Time::ZERO);
    assert_eq!(r.time_share(|s| s.idle == 3), Some(0.75));
    assert_eq!(r.time_share(|_| true), Some(1.0));
    assert_eq!(r.time_share(|s| s.alive > 3), Some(0.0));
    assert_eq!(SimReport::default().time_share(|_| true), None);
}

fn checked() -> SimConfig {
    SimConfig {
        check_invariants: true,
        ..SimConfig::default()
    }
}

/// The checks run on every step: a machine driven behind the monitor's back (here:
/// told of an exit the simulated world never had) is caught at its next event.
#[test]
#[should_panic(expected = "invariant broken")]
fn a_checked_run_panics_at_a_broken_invariant() {
    let mut sim = Sim::with_config(machine(3), Workload::empty(), checked());
    sim.run_until(Time::from_millis(10));
    let pid = sim.machine().pids().next().unwrap();
    let status = ExitStatus::Exited(0);
    let now = sim.now;
    let core = sim.core.as_mut().unwrap();
    core.driven
        .machine
        .handle(now, Event::ChildExited { pid, status });
    sim.signal_at(Time::from_millis(20), Signal::Hup);
    sim.run_until(Time::from_millis(30));
}

/// Checking changes nothing of the run.
#[test]
fn a_checked_run_is_the_same_run() {
    let work = || Workload::burst(30, Time::from_millis(5), Duration::from_millis(200));
    let mut sim = Sim::with_config(machine(3), work(), checked());
    sim.signal_at(Time::from_millis(100), Signal::Hup);
    let mut unchecked = Sim::new(machine(3), work());
    unchecked.signal_at(Time::from_millis(100), Signal::Hup);
    let r = sim.run_to_completion(Duration::from_secs(5));
    assert_eq!(r, unchecked.run_to_completion(Duration::from_secs(5)));
    assert_eq!((r.completed, sim.machine().generation()), (30, 2));
}
