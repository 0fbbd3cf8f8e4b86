use preforkd::policy::*;
use preforkd::sim::*;
use preforkd::*;
use std::time::Duration;

#[test]
fn explore() {
    for hups in [vec![500u64], vec![1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000]] {
        let w = Workload::burst(140, Time::ZERO, Duration::from_secs(1)).and(Workload::poisson(100.0, Time::ZERO, Duration::from_secs(10), Service::Exponential { mean: Duration::from_millis(50) }, 7));
        let m = Machine::new(Options::default()).unwrap();
        let mut sim = Sim::new(m, w.clone());
        for h in &hups { sim.signal_at(Time::from_millis(*h), Signal::Hup); }
        let r = sim.run_to_completion(Duration::from_secs(200)).clone();
        let m = sim.machine();
        let gens: Vec<_> = m.pids().map(|p| m.generation_of(p)).collect();
        println!("hups={hups:?} n={} completed={} dropped={} p50={:?} p99={:?} max={:?} last={:?} spawns={} ret={} kills={} peak={} final={:?} state={:?} gen={} gens={gens:?} counts={:?} timeout={:?}",
            w.len(), r.completed, r.dropped, r.wait_p50(), r.wait_p99(), r.wait_max(), r.last_finish, r.spawns, r.retirements, r.kills, r.peak_children, r.last_sample(), m.state(), m.generation(), m.counts(), m.poll_timeout());
        for l in r.logs.iter().filter(|l| l.message.contains("reload") && !l.message.contains("retired")) { println!("   {l:?}"); }
        for s in r.samples.iter().filter(|s| s.at >= Time::from_millis(400) && s.at <= Time::from_millis(1200)).step_by(10) { println!("   {s:?}"); }
    }
}
