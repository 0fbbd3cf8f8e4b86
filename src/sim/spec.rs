//! Workload specs: one-line descriptions of a [`Workload`], as `preforkd simulate
//! --workload` takes them (the grammar is in `docs/simulate.md`).
//!
//! ```text
//! burst:COUNTxSERVICE[,at=TIME]
//! poisson:RATE/s,SERVICE[,for=DURATION][,at=TIME][,seed=N]
//! ramp:FROM-TO/s,DURATION,SERVICE[,at=TIME][,seed=N]
//! trace:PATH
//! ```
//!
//! Durations are [`parse_duration`]'s: `250ms`, `1.5s`, `2m`, `1h`, `500us`, or a bare
//! number of seconds. Generated workloads start at `at` (1 s by default, so the
//! preforked pool has settled before the load comes), Poisson ones last `for`
//! (60 s by default) and are seeded with `seed` (1 by default): the same spec
//! always gives the same requests.
//!
//! Parsing never touches the file system (the simulator stays free of I/O): a
//! `trace:` spec names its file, and [`WorkloadSpec::build`] is handed the function
//! that reads it.

use super::workload::{Service, Workload};
use crate::policy::parse_duration;
use crate::Time;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The most requests a generated spec may describe (its expected count): a typo
/// such as `poisson:300000/s,for=1h` must not eat the machine's memory.
pub const MAX_SPEC_REQUESTS: f64 = 2_000_000.0;

/// When generated workloads start unless the spec says `at=`.
const DEFAULT_AT: Duration = Duration::from_secs(1);
/// How long Poisson workloads last unless the spec says `for=`.
const DEFAULT_FOR: Duration = Duration::from_secs(60);
/// The seed unless the spec says `seed=`.
const DEFAULT_SEED: u64 = 1;

/// A parsed workload spec. Parse with [`str::parse`]; [`Display`](fmt::Display)
/// writes it back in full (defaults spelled out), and that text parses to the
/// same spec.
///
/// ```
/// use preforkd::sim::WorkloadSpec;
/// let spec: WorkloadSpec = "burst:140x1s".parse()?;
/// assert_eq!(spec.to_string(), "burst:140x1s,at=1s");
/// let work = spec.build(|path| std::fs::read_to_string(path))?;
/// assert_eq!(work.len(), 140);
///
/// let err = "poisson:300,50ms".parse::<WorkloadSpec>().unwrap_err();
/// assert!(err.to_string().contains("requests per second"), "{err}");
/// # Ok::<(), preforkd::sim::SpecError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum WorkloadSpec {
    /// `burst:COUNTxSERVICE[,at=TIME]`: `count` requests all arriving at `at`.
    Burst {
        /// How many requests.
        count: usize,
        /// How long each holds a child.
        service: Duration,
        /// When they arrive.
        at: Time,
    },
    /// `poisson:RATE/s,SERVICE[,for=DURATION][,at=TIME][,seed=N]`: Poisson arrivals.
    Poisson {
        /// Requests per second, on average.
        rate: f64,
        /// How long each holds a child.
        service: Duration,
        /// From when.
        at: Time,
        /// For how long.
        duration: Duration,
        /// The generator's seed.
        seed: u64,
    },
    /// `ramp:FROM-TO/s,DURATION,SERVICE[,at=TIME][,seed=N]`: Poisson arrivals whose
    /// rate moves linearly from `from` to `to` over `duration`.
    Ramp {
        /// The rate at the start, per second.
        from: f64,
        /// The rate at the end, per second.
        to: f64,
        /// How long the ramp lasts.
        duration: Duration,
        /// How long each request holds a child.
        service: Duration,
        /// From when.
        at: Time,
        /// The generator's seed.
        seed: u64,
    },
    /// `trace:PATH`: the requests of a CSV file ([`Workload::from_trace_csv`]).
    Trace {
        /// The file.
        path: PathBuf,
    },
}

/// Why a workload spec or trace was refused. The message names the spec (or the
/// file and line) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The spec itself is wrong.
    #[error("workload {spec:?}: {reason}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// A line of a trace is wrong.
    #[error("trace {file}, line {line}: {reason}")]
    Trace {
        /// The file (as named in the spec).
        file: String,
        /// The line, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A trace could not be read, or holds no request.
    #[error("trace {file}: {reason}")]
    TraceFile {
        /// The file (as named in the spec).
        file: String,
        /// What is wrong.
        reason: String,
    },
}

impl SpecError {
    /// Whether the fault is in a trace file's contents or reading it, rather than
    /// in the spec's text (a command line reports the two differently).
    pub fn is_in_file(&self) -> bool {
        !matches!(self, SpecError::Spec { .. })
    }
}

/// A duration, to the microsecond (the unit a spec is written back in, so that
/// the text parses to the same spec).
fn dur(what: &str, text: &str) -> Result<Duration, String> {
    let d = parse_duration(text).map_err(|e| format!("{what}: {e}"))?;
    let micros = u64::try_from((d.as_nanos() + 500) / 1_000)
        .map_err(|_| format!("{what}: {text:?} is too long"))?;
    Ok(Duration::from_micros(micros))
}

/// A rate of requests per second: `300/s`.
fn rate(what: &str, text: &str) -> Result<f64, String> {
    let Some(num) = text.trim().strip_suffix("/s") else {
        return Err(format!(
            "{what} {text:?} must be requests per second, like 300/s"
        ));
    };
    number(what, num)
}

fn number(what: &str, num: &str) -> Result<f64, String> {
    match num.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "{what} {num:?} is not a non-negative number of requests per second"
        )),
    }
}

/// The spec's `key=value` options, each allowed once.
#[derive(Default)]
struct Opts {
    at: Option<Duration>,
    duration: Option<Duration>,
    seed: Option<u64>,
}

impl Opts {
    fn parse(parts: &[&str], allowed: &[&str]) -> Result<Opts, String> {
        let mut o = Opts::default();
        for part in parts {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!(
                    "unexpected {part:?} (options are key=value: {})",
                    allowed.join(", ")
                ));
            };
            let key = key.trim();
            if !allowed.contains(&key) {
                return Err(format!(
                    "unknown option {key:?} (known here: {})",
                    allowed.join(", ")
                ));
            }
            let twice = || format!("option {key:?} given twice");
            match key {
                "at" => {
                    if o.at.replace(dur("at", value)?).is_some() {
                        return Err(twice());
                    }
                }
                "for" => {
                    if o.duration.replace(dur("for", value)?).is_some() {
                        return Err(twice());
                    }
                }
                _ => {
                    let seed = value
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| format!("seed {value:?} is not a whole number"))?;
                    if o.seed.replace(seed).is_some() {
                        return Err(twice());
                    }
                }
            }
        }
        Ok(o)
    }
}

fn check_count(expected: f64) -> Result<(), String> {
    if expected > MAX_SPEC_REQUESTS {
        return Err(format!(
            "about {expected:.0} requests, more than the {MAX_SPEC_REQUESTS:.0} a spec may describe"
        ));
    }
    Ok(())
}

fn positive(what: &str, d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        return Err(format!("{what} must be greater than zero"));
    }
    Ok(d)
}

fn parse(text: &str) -> Result<WorkloadSpec, String> {
    let Some((kind, rest)) = text.split_once(':') else {
        return Err(
            "expected KIND:ARGS, e.g. burst:140x1s, poisson:300/s,50ms, ramp:0-500/s,60s,50ms or trace:FILE.csv"
                .into(),
        );
    };
    let parts: Vec<&str> = rest.split(',').map(str::trim).collect();
    let need = |n: usize, form: &str| -> Result<(), String> {
        if parts.len() < n || parts[..n].iter().any(|p| p.is_empty() || p.contains('=')) {
            return Err(format!("expected {form}"));
        }
        Ok(())
    };
    match kind.trim() {
        "burst" => {
            let form = "burst:COUNTxSERVICE[,at=TIME], e.g. burst:140x1s";
            need(1, form)?;
            let (count, service) = parts[0]
                .split_once('x')
                .ok_or_else(|| format!("expected {form}"))?;
            let count: usize = count
                .trim()
                .parse()
                .map_err(|_| format!("count {count:?} is not a whole number ({form})"))?;
            if count == 0 {
                return Err("count must be at least 1".into());
            }
            check_count(count as f64)?;
            let service = dur("service time", service)?;
            let o = Opts::parse(&parts[1..], &["at"])?;
            Ok(WorkloadSpec::Burst {
                count,
                service,
                at: Time::from_duration(o.at.unwrap_or(DEFAULT_AT)),
            })
        }
        "poisson" => {
            need(
                2,
                "poisson:RATE/s,SERVICE[,for=DURATION][,at=TIME][,seed=N], e.g. poisson:300/s,50ms",
            )?;
            let rate = rate("rate", parts[0])?;
            if rate == 0.0 {
                return Err("rate must be greater than zero".into());
            }
            let service = dur("service time", parts[1])?;
            let o = Opts::parse(&parts[2..], &["for", "at", "seed"])?;
            let duration = positive("for", o.duration.unwrap_or(DEFAULT_FOR))?;
            check_count(rate * duration.as_secs_f64())?;
            Ok(WorkloadSpec::Poisson {
                rate,
                service,
                at: Time::from_duration(o.at.unwrap_or(DEFAULT_AT)),
                duration,
                seed: o.seed.unwrap_or(DEFAULT_SEED),
            })
        }
        "ramp" => {
            let form =
                "ramp:FROM-TO/s,DURATION,SERVICE[,at=TIME][,seed=N], e.g. ramp:0-500/s,60s,50ms";
            need(3, form)?;
            let rates = parts[0]
                .strip_suffix("/s")
                .ok_or_else(|| format!("rates {:?} must be per second, like 0-500/s", parts[0]))?;
            let (from, to) = rates
                .split_once('-')
                .ok_or_else(|| format!("rates {:?}: expected FROM-TO/s", parts[0]))?;
            let (from, to) = (number("rate", from)?, number("rate", to)?);
            if from == 0.0 && to == 0.0 {
                return Err("the ramp's rates are both zero: no request".into());
            }
            let duration = positive("the ramp's duration", dur("duration", parts[1])?)?;
            let service = dur("service time", parts[2])?;
            let o = Opts::parse(&parts[3..], &["at", "seed"])?;
            check_count((from + to) / 2.0 * duration.as_secs_f64())?;
            Ok(WorkloadSpec::Ramp {
                from,
                to,
                duration,
                service,
                at: Time::from_duration(o.at.unwrap_or(DEFAULT_AT)),
                seed: o.seed.unwrap_or(DEFAULT_SEED),
            })
        }
        "trace" => {
            let path = rest.trim();
            if path.is_empty() {
                return Err("expected trace:FILE.csv".into());
            }
            Ok(WorkloadSpec::Trace { path: path.into() })
        }
        other => Err(format!(
            "unknown kind {other:?} (known: burst, poisson, ramp, trace)"
        )),
    }
}

impl FromStr for WorkloadSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<WorkloadSpec, SpecError> {
        parse(text).map_err(|reason| SpecError::Spec {
            spec: text.to_string(),
            reason,
        })
    }
}

/// A duration in the largest unit that writes it exactly.
fn fmt_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us % 1_000_000 == 0 {
        format!("{}s", us / 1_000_000)
    } else if us % 1_000 == 0 {
        format!("{}ms", us / 1_000)
    } else {
        format!("{us}us")
    }
}

impl fmt::Display for WorkloadSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = fmt_duration;
        match self {
            WorkloadSpec::Burst { count, service, at } => write!(
                f,
                "burst:{count}x{},at={}",
                d(*service),
                d(at.since_origin())
            ),
            WorkloadSpec::Poisson {
                rate,
                service,
                at,
                duration,
                seed,
            } => write!(
                f,
                "poisson:{rate}/s,{},for={},at={},seed={seed}",
                d(*service),
                d(*duration),
                d(at.since_origin())
            ),
            WorkloadSpec::Ramp {
                from,
                to,
                duration,
                service,
                at,
                seed,
            } => write!(
                f,
                "ramp:{from}-{to}/s,{},{},at={},seed={seed}",
                d(*duration),
                d(*service),
                d(at.since_origin())
            ),
            WorkloadSpec::Trace { path } => write!(f, "trace:{}", path.display()),
        }
    }
}

impl WorkloadSpec {
    /// The workload. `read` reads a `trace:` spec's file (pass
    /// `|path| std::fs::read_to_string(path)`; the simulator itself does no I/O); it is not
    /// called for the other kinds.
    pub fn build(
        &self,
        read: impl FnOnce(&Path) -> std::io::Result<String>,
    ) -> Result<Workload, SpecError> {
        Ok(match *self {
            WorkloadSpec::Burst { count, service, at } => Workload::burst(count, at, service),
            WorkloadSpec::Poisson {
                rate,
                service,
                at,
                duration,
                seed,
            } => Workload::poisson(rate, at, duration, Service::Fixed(service), seed),
            WorkloadSpec::Ramp {
                from,
                to,
                duration,
                service,
                at,
                seed,
            } => Workload::ramp(from, to, at, duration, Service::Fixed(service), seed),
            WorkloadSpec::Trace { ref path } => {
                let file = path.display().to_string();
                let text = read(path).map_err(|e| SpecError::TraceFile {
                    file: file.clone(),
                    reason: format!("cannot read it: {e}"),
                })?;
                Workload::from_trace_csv(&file, &text)?
            }
        })
    }
}

impl Workload {
    /// The workload a spec describes (see the [`WorkloadSpec`] grammar); `read`
    /// reads a trace's file, as in [`WorkloadSpec::build`].
    ///
    /// ```
    /// use preforkd::sim::Workload;
    /// let w = Workload::from_spec("poisson:300/s,50ms,for=10s", |path| std::fs::read_to_string(path))?;
    /// assert!((2_700..3_300).contains(&w.len()));
    /// # Ok::<(), preforkd::sim::SpecError>(())
    /// ```
    pub fn from_spec(
        spec: &str,
        read: impl FnOnce(&Path) -> std::io::Result<String>,
    ) -> Result<Workload, SpecError> {
        spec.parse::<WorkloadSpec>()?.build(read)
    }

    /// The requests of a trace in CSV: one request per line, `ARRIVAL,SERVICE`,
    /// each a duration ([`parse_duration`]: a bare number is seconds, or give a
    /// unit: `250ms`), the arrival counted from the start of the simulation. The
    /// rows may come in any order. An optional first line `arrival,service` is a
    /// header; blank lines and lines starting with `#` are skipped; spaces around
    /// fields are ignored. `file` names the trace in errors, which give the line.
    /// A trace with no request is refused.
    ///
    /// ```
    /// use preforkd::sim::Workload;
    /// use preforkd::Time;
    /// let w = Workload::from_trace_csv("t.csv", "arrival,service\n0.5,1\n2s,250ms\n")?;
    /// assert_eq!(w.requests()[1].arrival, Time::from_secs(2));
    /// let err = Workload::from_trace_csv("t.csv", "0.5,1\n2s\n").unwrap_err();
    /// assert_eq!(err.to_string(), "trace t.csv, line 2: expected ARRIVAL,SERVICE, got \"2s\"");
    /// # Ok::<(), preforkd::sim::SpecError>(())
    /// ```
    pub fn from_trace_csv(file: &str, text: &str) -> Result<Workload, SpecError> {
        let mut list = Vec::new();
        let mut seen_row = false;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| SpecError::Trace {
                file: file.to_string(),
                line: i + 1,
                reason,
            };
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let first = !seen_row;
            seen_row = true;
            if first
                && fields.len() == 2
                && fields[0].eq_ignore_ascii_case("arrival")
                && fields[1].eq_ignore_ascii_case("service")
            {
                continue;
            }
            let [arrival, service] = fields[..] else {
                return Err(bad(format!("expected ARRIVAL,SERVICE, got {line:?}")));
            };
            let arrival = dur("arrival", arrival).map_err(bad)?;
            let service = dur("service", service).map_err(bad)?;
            list.push((Time::from_duration(arrival), service));
        }
        if list.is_empty() {
            return Err(SpecError::TraceFile {
                file: file.to_string(),
                reason: "no request in it (lines ARRIVAL,SERVICE, e.g. 0.25,1s)".into(),
            });
        }
        Ok(Workload::from_requests(list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_file(_: &Path) -> std::io::Result<String> {
        panic!("no file is read for a generated spec")
    }

    fn err(spec: &str) -> String {
        spec.parse::<WorkloadSpec>().unwrap_err().to_string()
    }

    #[test]
    fn burst() {
        let w = Workload::from_spec("burst:140x1s", no_file).unwrap();
        assert_eq!(w.len(), 140);
        assert!(w
            .requests()
            .iter()
            .all(|r| r.arrival == Time::from_secs(1) && r.service == Duration::from_secs(1)));
        let w = Workload::from_spec("burst:3x250ms,at=0", no_file).unwrap();
        assert_eq!(w.requests()[0].arrival, Time::ZERO);
        assert_eq!(w.requests()[0].service, Duration::from_millis(250));
    }

    #[test]
    fn poisson_is_seeded_and_has_defaults() {
        let a = Workload::from_spec("poisson:300/s,50ms", no_file).unwrap();
        let b = Workload::from_spec("poisson:300/s,50ms,for=60s,at=1s,seed=1", no_file).unwrap();
        assert_eq!(a, b, "the defaults are for=60s, at=1s, seed=1");
        assert!((17_000..19_000).contains(&a.len()), "{}", a.len());
        assert!(a.requests()[0].arrival >= Time::from_secs(1));
        assert!(a.requests().last().unwrap().arrival < Time::from_secs(61));
        let c = Workload::from_spec("poisson:300/s,50ms,seed=2", no_file).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn ramp_rises() {
        let w = Workload::from_spec("ramp:0-500/s,60s,50ms", no_file).unwrap();
        // 15,000 expected: (0 + 500) / 2 * 60.
        assert!((14_000..16_000).contains(&w.len()), "{}", w.len());
        let in_window = |from: u64, to: u64| {
            w.requests()
                .iter()
                .filter(|r| r.arrival >= Time::from_secs(from) && r.arrival < Time::from_secs(to))
                .count()
        };
        // The first 10 s average 41.7/s, the last 10 s 458/s.
        assert!(in_window(1, 11) * 5 < in_window(51, 61));
        let down = Workload::from_spec("ramp:100-0/s,10s,1ms,at=0", no_file).unwrap();
        assert!(!down.is_empty());
    }

    #[test]
    fn durations_are_kept_to_the_microsecond() {
        let spec: WorkloadSpec = "burst:1x1.0000004s,at=2.5us".parse().unwrap();
        assert_eq!(spec.to_string(), "burst:1x1s,at=3us");
        assert!(err("burst:1x1e3s").contains("service time: unknown duration unit \"e3s\""));
        assert!(err("burst:1x20000000000000s").contains("is too long"));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "burst:140x1s",
            "burst:2x1500us,at=250ms",
            "poisson:300/s,50ms",
            "poisson:0.5/s,2s,for=1m,seed=9",
            "ramp:0-500/s,60s,50ms",
            "ramp:10.5-3/s,1s,1ms,at=0,seed=4",
            "trace:some dir/t.csv",
            "burst:1x1.0000005s,at=0.1234567",
            "poisson:0.000001/s,1h,for=2h",
        ] {
            let spec: WorkloadSpec = s.parse().unwrap();
            let again: WorkloadSpec = spec.to_string().parse().unwrap();
            assert_eq!(spec, again, "{s} -> {spec}");
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let cases = [
            ("burst140x1s", "expected KIND:ARGS"),
            (
                "bursts:140x1s",
                "unknown kind \"bursts\" (known: burst, poisson, ramp, trace)",
            ),
            ("burst:140", "expected burst:COUNTxSERVICE"),
            ("burst:x1s", "count \"\" is not a whole number"),
            ("burst:0x1s", "count must be at least 1"),
            ("burst:-3x1s", "count \"-3\" is not a whole number"),
            (
                "burst:140x1parsec",
                "service time: unknown duration unit \"parsec\"",
            ),
            ("burst:140x1s,at=soon", "at: \"soon\" is not a duration"),
            (
                "burst:140x1s,for=1s",
                "unknown option \"for\" (known here: at)",
            ),
            ("burst:140x1s,at=1s,at=2s", "option \"at\" given twice"),
            ("burst:140x1s,later", "unexpected \"later\""),
            (
                "burst:99999999x1s",
                "more than the 2000000 a spec may describe",
            ),
            (
                "poisson:300,50ms",
                "rate \"300\" must be requests per second, like 300/s",
            ),
            ("poisson:300/s", "expected poisson:RATE/s,SERVICE"),
            ("poisson:0/s,50ms", "rate must be greater than zero"),
            ("poisson:NaN/s,50ms", "is not a non-negative number"),
            ("poisson:inf/s,50ms", "is not a non-negative number"),
            ("poisson:300/s,50ms,for=0s", "for must be greater than zero"),
            (
                "poisson:300/s,50ms,seed=-1",
                "seed \"-1\" is not a whole number",
            ),
            ("poisson:1000000/s,1ms,for=1h", "more than the 2000000"),
            ("poisson:300/s,for=10s", "expected poisson:RATE/s,SERVICE"),
            ("ramp:0-500,60s,50ms", "must be per second, like 0-500/s"),
            ("ramp:500/s,60s,50ms", "expected FROM-TO/s"),
            ("ramp:0-0/s,60s,50ms", "both zero"),
            (
                "ramp:0-500/s,0s,50ms",
                "the ramp's duration must be greater than zero",
            ),
            (
                "ramp:0-500/s,60s",
                "expected ramp:FROM-TO/s,DURATION,SERVICE",
            ),
            ("ramp:0-500/s,60s,50ms,for=1s", "unknown option \"for\""),
            ("trace:", "expected trace:FILE.csv"),
        ];
        for (spec, want) in cases {
            let got = err(spec);
            assert!(got.contains(want), "{spec}: {got}");
            assert!(got.starts_with(&format!("workload {spec:?}: ")), "{got}");
        }
    }

    #[test]
    fn traces() {
        let w = Workload::from_trace_csv(
            "t.csv",
            "# a comment\nArrival , Service\n\n2,1\n0.5, 250ms\r\n1m,1us\n",
        )
        .unwrap();
        let got: Vec<_> = w
            .requests()
            .iter()
            .map(|r| (r.arrival, r.service))
            .collect();
        assert_eq!(
            got,
            [
                (Time::from_millis(500), Duration::from_millis(250)),
                (Time::from_secs(2), Duration::from_secs(1)),
                (Time::from_secs(60), Duration::from_micros(1)),
            ]
        );
        // The spec reads the file through the function it is given.
        let w = Workload::from_spec("trace:x.csv", |p| {
            assert_eq!(p, Path::new("x.csv"));
            Ok("1,1\n".into())
        })
        .unwrap();
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn bad_traces_name_the_line() {
        let bad = |text: &str| {
            Workload::from_trace_csv("t.csv", text)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            bad("1,1\n\n1,2,3\n"),
            "trace t.csv, line 3: expected ARRIVAL,SERVICE, got \"1,2,3\""
        );
        assert!(bad("1,1\nsoon,1\n")
            .starts_with("trace t.csv, line 2: arrival: \"soon\" is not a duration"));
        assert!(bad("1,-1\n").starts_with("trace t.csv, line 1: service:"));
        // A header is only the first line: later, it is a bad row.
        assert!(bad("1,1\narrival,service\n").starts_with("trace t.csv, line 2: arrival:"));
        assert_eq!(
            bad("arrival,service\n# nothing\n"),
            "trace t.csv: no request in it (lines ARRIVAL,SERVICE, e.g. 0.25,1s)"
        );
        let e = Workload::from_spec("trace:gone.csv", |_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "No such file",
            ))
        })
        .unwrap_err();
        assert!(e.is_in_file());
        assert_eq!(
            e.to_string(),
            "trace gone.csv: cannot read it: No such file"
        );
        assert!(!"burst:1".parse::<WorkloadSpec>().unwrap_err().is_in_file());
    }
}
