//! Seeded workloads: when requests arrive, and how long each holds a child.

use crate::{SplitMix64, Time};
use std::time::Duration;

/// One request: when it enters the listen queue, and how long it holds the child
/// that takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// When the request arrives in the queue.
    pub arrival: Time,
    /// How long it keeps a child busy once taken.
    pub service: Duration,
}

/// How long each request of a generated workload holds a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Every request takes exactly this long.
    Fixed(Duration),
    /// Exponentially distributed service times with this mean.
    Exponential {
        /// The mean service time.
        mean: Duration,
    },
}

impl Service {
    fn draw(self, rng: &mut SplitMix64) -> Duration {
        match self {
            Service::Fixed(d) => d,
            Service::Exponential { mean } => secs(exponential(rng, mean.as_secs_f64())),
        }
    }
}

/// `-ln(1 - u) * mean`, with `u` uniform in `[0, 1)`: finite and non-negative.
fn exponential(rng: &mut SplitMix64, mean: f64) -> f64 {
    -(1.0 - rng.unit()).ln() * mean
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
}

/// The requests a simulation replays, sorted by arrival (requests arriving at the
/// same instant keep the order they were given in).
///
/// Every generator is deterministic: the same arguments (and seed) give the same
/// requests. Combine workloads with [`and`](Workload::and).
///
/// ```
/// use preforkd::sim::{Service, Workload};
/// use preforkd::Time;
/// use std::time::Duration;
///
/// let burst = Workload::burst(10, Time::ZERO, Duration::from_secs(1));
/// let steady = Workload::poisson(
///     50.0,                                   // requests per second
///     Time::from_millis(2_000),               // from t = 2 s
///     Duration::from_secs(10),                // for 10 s
///     Service::Exponential { mean: Duration::from_millis(80) },
///     42,                                     // seed
/// );
/// let w = burst.and(steady);
/// assert!(w.len() > 10);
/// assert_eq!(w.requests()[0].arrival, Time::ZERO);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Workload {
    requests: Vec<Request>,
}

impl Workload {
    /// No request at all (to watch a pool start and idle).
    pub fn empty() -> Workload {
        Workload::default()
    }

    /// `n` requests all arriving at `at`, each holding a child for `service`.
    pub fn burst(n: usize, at: Time, service: Duration) -> Workload {
        Workload {
            requests: vec![
                Request {
                    arrival: at,
                    service
                };
                n
            ],
        }
    }

    /// Poisson arrivals at `rate_per_sec` on average, from `start` for `duration`,
    /// with service times drawn from `service`; `seed` seeds the
    /// [`SplitMix64`] generator behind both. A rate that is not a positive finite
    /// number gives an empty workload.
    pub fn poisson(
        rate_per_sec: f64,
        start: Time,
        duration: Duration,
        service: Service,
        seed: u64,
    ) -> Workload {
        let mut requests = Vec::new();
        if !(rate_per_sec.is_finite() && rate_per_sec > 0.0) {
            return Workload { requests };
        }
        let mut rng = SplitMix64::new(seed);
        let end = duration.as_secs_f64();
        let mut offset = 0.0;
        loop {
            offset += exponential(&mut rng, 1.0 / rate_per_sec);
            if offset >= end {
                break;
            }
            let service = service.draw(&mut rng);
            requests.push(Request {
                arrival: start + secs(offset),
                service,
            });
        }
        Workload { requests }
    }

    /// Poisson arrivals whose rate moves linearly from `from_per_sec` at `start` to
    /// `to_per_sec` at `start + duration` (either may be zero), with service times
    /// drawn from `service`; `seed` seeds the [`SplitMix64`] generator. Rates that
    /// are not finite and non-negative, or both zero, give an empty workload.
    ///
    /// ```
    /// use preforkd::sim::{Service, Workload};
    /// use preforkd::Time;
    /// use std::time::Duration;
    /// let up = Duration::from_secs(10);
    /// let w = Workload::ramp(0.0, 200.0, Time::ZERO, up, Service::Fixed(up / 1000), 3);
    /// // 1,000 expected; the second half of the ramp holds three quarters of them.
    /// let late = w.requests().iter().filter(|r| r.arrival >= Time::from_secs(5)).count();
    /// assert!((850..1150).contains(&w.len()) && late > 2 * (w.len() - late));
    /// ```
    pub fn ramp(
        from_per_sec: f64,
        to_per_sec: f64,
        start: Time,
        duration: Duration,
        service: Service,
        seed: u64,
    ) -> Workload {
        let mut requests = Vec::new();
        let ok = |r: f64| r.is_finite() && r >= 0.0;
        let peak = from_per_sec.max(to_per_sec);
        let end = duration.as_secs_f64();
        if !(ok(from_per_sec) && ok(to_per_sec) && peak > 0.0 && end > 0.0) {
            return Workload { requests };
        }
        // Thinning (Lewis and Shedler): candidates at the peak rate, each kept with
        // the probability rate(t) / peak, is exactly the ramped Poisson process.
        let mut rng = SplitMix64::new(seed);
        let mut offset = 0.0;
        loop {
            offset += exponential(&mut rng, 1.0 / peak);
            if offset >= end {
                break;
            }
            let rate = from_per_sec + (to_per_sec - from_per_sec) * offset / end;
            let keep = rng.unit() * peak < rate;
            let service = service.draw(&mut rng);
            if keep {
                requests.push(Request {
                    arrival: start + secs(offset),
                    service,
                });
            }
        }
        Workload { requests }
    }

    /// An explicit list of `(arrival, service)` pairs, in any order.
    pub fn from_requests(list: impl IntoIterator<Item = (Time, Duration)>) -> Workload {
        let mut requests: Vec<Request> = list
            .into_iter()
            .map(|(arrival, service)| Request { arrival, service })
            .collect();
        requests.sort_by_key(|r| r.arrival);
        Workload { requests }
    }

    /// Both workloads merged (at equal arrival times, `self`'s requests first).
    pub fn and(mut self, other: Workload) -> Workload {
        self.requests.extend(other.requests);
        self.requests.sort_by_key(|r| r.arrival);
        self
    }

    /// The requests, sorted by arrival.
    pub fn requests(&self) -> &[Request] {
        &self.requests
    }

    /// How many requests.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// Whether there is no request.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_is_seeded_and_roughly_at_rate() {
        let a = Workload::poisson(
            100.0,
            Time::ZERO,
            Duration::from_secs(100),
            Service::Fixed(Duration::from_millis(1)),
            7,
        );
        let b = Workload::poisson(
            100.0,
            Time::ZERO,
            Duration::from_secs(100),
            Service::Fixed(Duration::from_millis(1)),
            7,
        );
        assert_eq!(a, b);
        assert!((9_000..11_000).contains(&a.len()), "{}", a.len());
        assert!(a
            .requests()
            .windows(2)
            .all(|w| w[0].arrival <= w[1].arrival));
        assert!(a
            .requests()
            .iter()
            .all(|r| r.arrival < Time::from_millis(100_000)));
    }

    #[test]
    fn exponential_service_has_its_mean() {
        let w = Workload::poisson(
            1000.0,
            Time::ZERO,
            Duration::from_secs(20),
            Service::Exponential {
                mean: Duration::from_millis(50),
            },
            1,
        );
        let mean = w
            .requests()
            .iter()
            .map(|r| r.service.as_secs_f64())
            .sum::<f64>()
            / w.len() as f64;
        assert!((0.045..0.055).contains(&mean), "{mean}");
    }

    #[test]
    fn bad_rate_is_empty_and_lists_are_sorted() {
        let w = Workload::poisson(
            f64::NAN,
            Time::ZERO,
            Duration::from_secs(1),
            Service::Fixed(Duration::ZERO),
            0,
        );
        assert!(w.is_empty());
        let w = Workload::from_requests([
            (Time::from_millis(5), Duration::ZERO),
            (Time::from_millis(1), Duration::ZERO),
        ]);
        assert_eq!(w.requests()[0].arrival, Time::from_millis(1));
    }
}
