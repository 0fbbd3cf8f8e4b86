//! The cost of the child's scoreboard update: one busy → idle round trip through
//! [`Worker::busy`] (target ≤ 20 ns: a few atomics, no system call).
//!
//! `cargo bench --bench worker`; criterion prints `[low estimate median high]`.

use criterion::{criterion_main, Criterion};
use preforkd::runtime::{Worker, WorkerState};

fn round_trip(c: &mut Criterion) {
    let w = Worker::detached().expect("a private scoreboard");
    c.bench_function("busy_idle_round_trip", |b| {
        b.iter(|| {
            let g = w.busy();
            std::hint::black_box(&g);
        })
    });
    c.bench_function("update_scoreboard_round_trip", |b| {
        b.iter(|| {
            w.update_scoreboard(WorkerState::Busy);
            w.update_scoreboard(WorkerState::Idle);
        })
    });
    assert!(w.requests() > 0, "the guard counted requests");
}

// In a private module: the function the macro generates is public and undocumented.
mod group {
    use criterion::criterion_group;
    criterion_group!(benches, super::round_trip);
}
criterion_main!(group::benches);
