//! The fuzz-input decoder: any byte string becomes a valid machine setup plus a
//! sequence of outside-world [`Op`]s, run through the [`oracle`](crate::oracle).
//!
//! The fuzz target (`fuzz/fuzz_targets/machine.rs`) and the corpus replay test
//! (`tests/fuzz_corpus.rs`) both call [`run`]; it is an ordinary function, so a
//! crashing input can be replayed and debugged on the stable toolchain.
//!
//! The other fuzz targets (`scoreboard`, `options`, `systemd_env`, `proc_net`,
//! `sock_diag`, `workload_spec`) check the parsers of outside input: see
//! [`scoreboard`], [`options`], [`systemd_env`], [`proc_net_tcp`], [`sock_diag`]
//! and [`workload_spec`], each the whole body of its target.
//!
//! ## Input layout
//! The first [`HEADER_LEN`] bytes describe the setup ([`Setup::decode`]; missing bytes
//! read as 0, and every value is clamped into range, so no input is ever refused).
//! The rest, up to [`MAX_OP_BYTES`] bytes, is decoded by [`Op::decode`].
//!
//! | byte | meaning |
//! | --- | --- |
//! | 0 | `max_children` = 1 + b % 16 |
//! | 1 | `prefork` = b % (max_children + 1) |
//! | 2 | flags: bits 0-1 scaling (0, 3: default [`Elastic`](crate::policy::Elastic); 1: [`ApacheLike`]; 2: [`Fixed`]), bit 2 `busy_timeout`, bit 3 `max_requests_per_child`, bit 4 `auto_reload_check_every`, bit 5 explicit [`Rolling`] reload policy, bit 6 [`TerminateChild`] (else [`CallHook`]), bit 7 Rolling's `handler_on_signal` |
//! | 3 | Fixed: n = b % (max_children + 3); ApacheLike: min_spare = b % 4, max_spare = min_spare + 1 + (b >> 2) % 4, max_spawn_rate = `[1, 2, 4, 32][(b >> 4) % 4]` |
//! | 4 | ApacheLike: max_request_workers = 1 + b % 16, start_servers = (b >> 4) % (max_children + 1), at most max_request_workers |
//! | 5 | ApacheLike: retire_interval = 100 + 8 b ms |
//! | 6 | `busy_timeout` = 50 + 12 b ms |
//! | 7 | `max_requests_per_child` = 1 + (b % 32) % 20, `max_requests_jitter` = (b >> 5) % 6 |
//! | 8 | `graceful_timeout` = 100 + 20 b ms |
//! | 9 | `auto_reload_check_every` = 200 + 12 b ms |
//! | 10 | Rolling: bit 0 sets `min_serving` = (b >> 1) % (max_children + 1) |
//! | 11 | Rolling: bit 0 sets `max_surge` = 1 + (b >> 1) % 3 |
//! | 12 | timers: 0 keeps the defaults; else `kill_grace` = 100 + 300 (b % 16) ms, `start_timeout` = 200 + 500 (b >> 4) ms |
//! | 13, 14 | `seed` (little-endian u16, spread over 64 bits) |
//!
//! ```
//! // An empty input is a valid (if dull) run: boot nothing, converge, shut down.
//! preforkd::fuzzing::run(&[]).unwrap();
//! // max 4, prefork 2, default policies; then after_init ok, two forks, HUP, TERM.
//! let mut input = vec![3, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
//! input.extend([3, 5, 5, 0, 3, 0, 0]);
//! preforkd::fuzzing::run(&input).unwrap();
//! ```

use crate::oracle::{Harness, Op, Violation};
use crate::policy::{ApacheLike, ApacheLikeConfig, CallHook, Fixed, Rolling, TerminateChild};
use crate::{Action, ExitStatus, Machine, MachineBuilder, Options};
use std::time::Duration;

/// How many leading bytes of an input describe the setup.
pub const HEADER_LEN: usize = 15;

/// At most this many bytes after the header are decoded into ops; the rest is
/// ignored, which keeps every run fast.
pub const MAX_OP_BYTES: usize = 4096;

/// The scaling policy of a fuzzed setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScalingChoice {
    /// The default [`Elastic`](crate::policy::Elastic), built from `prefork` and
    /// `max_children`.
    Elastic,
    /// [`ApacheLike`] with this (valid) configuration.
    ApacheLike(ApacheLikeConfig),
    /// [`Fixed`] with this many children (may exceed `max_children`).
    Fixed(usize),
}

/// A machine setup decoded from a fuzz input's header: always valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    /// The supervisor's options (they pass [`Options::validate`]).
    pub opts: Options,
    /// The scaling policy.
    pub scaling: ScalingChoice,
    /// An explicit reload policy; `None`: the default one built from the options.
    pub rolling: Option<Rolling>,
    /// [`TerminateChild`] on client disconnects, else [`CallHook`].
    pub terminate_on_disconnect: bool,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Setup {
    /// Decodes the first [`HEADER_LEN`] bytes (missing ones read as 0) into a
    /// valid setup, and returns it with the rest of the input.
    ///
    /// ```
    /// use preforkd::fuzzing::{ScalingChoice, Setup};
    /// let (s, rest) = Setup::decode(&[255, 255, 2, 17]);
    /// assert_eq!(s.opts.max_children, 16);
    /// assert!(s.opts.prefork <= 16);
    /// assert_eq!(s.scaling, ScalingChoice::Fixed(17));
    /// assert!(rest.is_empty());
    /// s.build();
    /// ```
    pub fn decode(data: &[u8]) -> (Setup, &[u8]) {
        let split = data.len().min(HEADER_LEN);
        let (head, rest) = data.split_at(split);
        let b = |i: usize| head.get(i).copied().unwrap_or(0);
        let w = |i: usize| u64::from(b(i));

        let max = 1 + usize::from(b(0)) % 16;
        let prefork = usize::from(b(1)) % (max + 1);
        let flags = b(2);
        let bit = |n: u8| flags & (1 << n) != 0;

        let scaling = match flags & 3 {
            1 => {
                let p = b(3);
                let min_spare = usize::from(p % 4);
                let workers = 1 + usize::from(b(4) % 16);
                ScalingChoice::ApacheLike(ApacheLikeConfig {
                    start_servers: (usize::from(b(4) >> 4) % (max + 1)).min(workers),
                    min_spare_servers: min_spare,
                    max_spare_servers: min_spare + 1 + usize::from((p >> 2) % 4),
                    max_request_workers: workers,
                    max_spawn_rate: [1, 2, 4, 32][usize::from((p >> 4) % 4)],
                    retire_interval: ms(100 + 8 * w(5)),
                })
            }
            2 => ScalingChoice::Fixed(usize::from(b(3)) % (max + 3)),
            _ => ScalingChoice::Elastic,
        };

        let mut opts = Options {
            prefork,
            max_children: max,
            graceful_timeout: ms(100 + 20 * w(8)),
            seed: u64::from(u16::from_le_bytes([b(13), b(14)])).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            ..Options::default()
        };
        if bit(2) {
            opts.busy_timeout = Some(ms(50 + 12 * w(6)));
        }
        if bit(3) {
            opts.max_requests_per_child = Some(1 + (w(7) % 32) % 20);
            opts.max_requests_jitter = (w(7) >> 5) % 6;
        }
        if bit(4) {
            opts.auto_reload_check_every = Some(ms(200 + 12 * w(9)));
        }
        if b(12) != 0 {
            opts.kill_grace = ms(100 + 300 * (w(12) % 16));
            opts.start_timeout = ms(200 + 500 * (w(12) >> 4));
        }

        let rolling = bit(5).then(|| Rolling {
            check_every: opts.auto_reload_check_every,
            handler_on_signal: bit(7),
            min_serving: (b(10) & 1 == 1).then(|| usize::from(b(10) >> 1) % (max + 1)),
            max_surge: (b(11) & 1 == 1).then(|| 1 + usize::from(b(11) >> 1) % 3),
        });

        let setup = Setup {
            opts,
            scaling,
            rolling,
            terminate_on_disconnect: bit(6),
        };
        (setup, rest)
    }

    /// Builds the machine (in `Init`).
    ///
    /// # Panics
    /// If the setup is invalid, which [`Setup::decode`] never produces: such a
    /// panic is a decoder bug, and the fuzzer reports it as a crash.
    pub fn build(&self) -> Machine {
        let mut b = Machine::builder(self.opts.clone());
        b = match &self.scaling {
            ScalingChoice::Elastic => b,
            ScalingChoice::ApacheLike(c) => {
                b.scaling_policy(ApacheLike::new(*c).expect("decoded ApacheLike config is valid"))
            }
            ScalingChoice::Fixed(n) => b.scaling_policy(Fixed(*n)),
        };
        b = with_reload_and_disconnect(b, self.rolling, self.terminate_on_disconnect);
        match b.build() {
            Ok(m) => m,
            Err(e) => panic!("decoded setup is invalid: {e} ({self:?})"),
        }
    }
}

/// `b` with the rolling reload policy if any, and the disconnect policy that
/// terminates the child (`terminate`) or calls the hook: the fuzz target's and the
/// property tests' shared choice of non-scaling policies.
pub fn with_reload_and_disconnect(
    mut b: MachineBuilder,
    rolling: Option<Rolling>,
    terminate: bool,
) -> MachineBuilder {
    if let Some(r) = rolling {
        b = b.reload_policy(r);
    }
    if terminate {
        b.disconnect_policy(TerminateChild)
    } else {
        b.disconnect_policy(CallHook)
    }
}

/// Decodes a whole fuzz input: the setup, and the ops of the next
/// [`MAX_OP_BYTES`] bytes.
///
/// ```
/// use preforkd::oracle::Op;
/// let (_setup, ops) = preforkd::fuzzing::decode(&[0; 16]);
/// assert_eq!(ops, vec![Op::Signal(preforkd::Signal::Term)]);
/// ```
pub fn decode(data: &[u8]) -> (Setup, Vec<Op>) {
    let (setup, rest) = Setup::decode(data);
    let rest = &rest[..rest.len().min(MAX_OP_BYTES)];
    (setup, Op::decode(rest))
}

/// What one run through the [`Harness`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `Ok`, or the first invariant broken.
    pub result: Result<(), Violation>,
    /// Every action the machine produced, in order.
    pub trace: Vec<Action>,
    /// `steps[i]`: the trace's length after step `i` (0: the fresh machine, then one
    /// per op, then one for [`Harness::finish`]), to locate a divergence.
    pub steps: Vec<usize>,
}

/// Builds the machine of `setup`, applies `ops` through a [`Harness`] (checking every
/// invariant at every step) and, if they all pass, [`finish`](Harness::finish)es:
/// quiet convergence, then shutdown to `Stopped`.
///
/// ```
/// use preforkd::fuzzing::{run_once, Setup};
/// use preforkd::oracle::Op;
/// let (setup, _) = Setup::decode(&[2, 1]);
/// let out = run_once(&setup, &[Op::HookOk, Op::SpawnOk, Op::Ready(0)]);
/// assert_eq!(out.result, Ok(()));
/// assert_eq!(out.steps.len(), 5);
/// ```
pub fn run_once(setup: &Setup, ops: &[Op]) -> Outcome {
    let mut h = Harness::new(setup.build());
    let mut steps = Vec::with_capacity(ops.len() + 2);
    steps.push(h.trace().len());
    let mut result = Ok(());
    for &op in ops {
        result = h.apply(op);
        steps.push(h.trace().len());
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = h.finish();
        steps.push(h.trace().len());
    }
    Outcome {
        result,
        trace: h.trace().to_vec(),
        steps,
    }
}

/// Compares two runs of the same input: the same actions in the same order, and the
/// same verdict. Returns the first difference as a [`Violation`] at the step where
/// the traces part.
///
/// ```
/// use preforkd::fuzzing::{compare, run_once, Setup};
/// let (setup, _) = Setup::decode(&[]);
/// let a = run_once(&setup, &[]);
/// assert_eq!(compare(&a, &a.clone()), Ok(()));
/// let mut b = a.clone();
/// b.trace.pop();
/// assert!(compare(&a, &b).unwrap_err().message.starts_with("nondeterministic"));
/// ```
pub fn compare(a: &Outcome, b: &Outcome) -> Result<(), Violation> {
    let first_diff = a
        .trace
        .iter()
        .zip(&b.trace)
        .position(|(x, y)| x != y)
        .or_else(|| (a.trace.len() != b.trace.len()).then(|| a.trace.len().min(b.trace.len())));
    if let Some(i) = first_diff {
        // The step during which action `i` was produced.
        let step = a
            .steps
            .iter()
            .position(|&len| len > i)
            .unwrap_or(a.steps.len());
        return Err(Violation {
            step,
            message: format!(
                "nondeterministic: same setup and ops, action #{i} differs: {:?} vs {:?}",
                a.trace.get(i),
                b.trace.get(i)
            ),
        });
    }
    if a.result != b.result || a.steps != b.steps {
        return Err(Violation {
            step: a.steps.len().saturating_sub(1),
            message: format!(
                "nondeterministic: same setup and ops, verdicts differ: {:?} vs {:?}",
                a.result, b.result
            ),
        });
    }
    Ok(())
}

/// The fuzz entry point: decodes `data` ([`decode`]), runs it twice
/// ([`run_once`]), and returns the first invariant broken, or a determinism
/// [`Violation`] if the two runs differ.
///
/// ```
/// preforkd::fuzzing::run(b"any bytes at all are a valid input").unwrap();
/// ```
pub fn run(data: &[u8]) -> Result<(), Violation> {
    let (setup, ops) = decode(data);
    let first = run_once(&setup, &ops);
    let second = run_once(&setup, &ops);
    compare(&first, &second)?;
    first.result
}

/// Encodes ops into bytes that [`Op::decode`] turns back into the same ops: for
/// writing seed inputs by hand. Values the decoder cannot produce are mapped to the
/// nearest it can (a signal the decoder never produces becomes TERM; `Advance` rounds down to a multiple of 8 ms, at most 2040;
/// `BogusExit`/`BogusSpawn` keep the low byte; an exit status keeps its code modulo
/// 128).
///
/// ```
/// use preforkd::fuzzing::encode_ops;
/// use preforkd::oracle::Op;
/// use preforkd::{ExitStatus, Signal};
/// let ops = vec![
///     Op::HookOk, Op::SpawnOk, Op::Ready(0), Op::Busy(0), Op::Advance(80),
///     Op::Signal(Signal::Hup), Op::Exit(0, ExitStatus::Signaled(9)), Op::StaleTick,
///     Op::Disconnect(1), Op::FilesChanged, Op::Served(0, 3), Op::Timeout,
/// ];
/// assert_eq!(Op::decode(&encode_ops(&ops)), ops);
/// ```
pub fn encode_ops(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for &op in ops {
        match op {
            Op::Signal(s) => {
                // Ask the decoder itself, so this follows its signal table; a
                // signal it never produces (KILL) encodes as TERM.
                let i = (0..=u8::MAX)
                    .find(|&i| Op::decode(&[0, i]) == [Op::Signal(s)])
                    .unwrap_or(0);
                out.extend([0, i]);
            }
            Op::Advance(ms) => out.extend([1, u8::try_from(ms / 8).unwrap_or(u8::MAX)]),
            Op::Timeout => out.push(2),
            Op::HookOk => out.push(3),
            Op::HookFail => out.push(4),
            Op::SpawnOk => out.push(5),
            Op::SpawnFail => out.push(7),
            Op::Ready(i) => out.extend([8, i]),
            Op::Busy(i) => out.extend([9, i]),
            Op::Idle(i) => out.extend([10, i]),
            Op::Served(i, n) => out.extend([11, i, n]),
            Op::SelfRetire(i) => out.extend([12, i]),
            Op::Exit(i, status) => {
                let s = match status {
                    ExitStatus::Exited(c) => (c.rem_euclid(128) as u8) << 1,
                    ExitStatus::Signaled(n) => ((n.rem_euclid(128) as u8) << 1) | 1,
                };
                out.extend([13, i, s]);
            }
            Op::Deliver => out.push(14),
            Op::BogusExit(n) => out.extend([15, n as u8]),
            Op::DuplicateExit => out.push(16),
            Op::BogusSpawn(n) => out.extend([17, n as u8]),
            Op::StaleTick => out.push(18 + 20 * 6),
            Op::Disconnect(i) => out.extend([18, i]),
            Op::FilesChanged => out.push(19),
        }
    }
    out
}

/// The `scoreboard` target: [`parse_scoreboard`](crate::runtime::parse_scoreboard)
/// on any bytes returns a result, and a scoreboard it accepts has exactly as many
/// slots as its size says; `preforkd status`'s strict reader
/// ([`Status`](crate::runtime::status::Status)) returns a result too, and what
/// it accepts the lenient one accepts with the same children. Panics (a
/// finding) otherwise.
///
/// ```
/// preforkd::fuzzing::scoreboard(b"PREFORKD");
/// ```
pub fn scoreboard(data: &[u8]) {
    // The strict reader of `preforkd status`: what it accepts, the lenient one
    // accepts too, with the same children.
    if let Ok(st) =
        crate::runtime::status::Status::parse(std::path::Path::new("fuzz"), data, u64::MAX)
    {
        let slots = crate::runtime::parse_scoreboard(data).expect("the lenient reader refused");
        assert_eq!(st.slots, slots.len());
        assert_eq!(st.map.len(), st.slots);
        for c in &st.children {
            assert_eq!(slots[c.slot].pid, c.pid);
            assert_eq!(slots[c.slot].requests, c.requests);
        }
        let _ = st.table();
    }
    if let Ok(slots) = crate::runtime::parse_scoreboard(data) {
        assert_eq!(
            data.len(),
            64 * (slots.len() + 1),
            "accepted a scoreboard whose size does not match its slots"
        );
        assert_eq!(
            u32::from_ne_bytes(data[12..16].try_into().unwrap_or_default()) as usize,
            slots.len()
        );
    }
}

/// The `options` target: an [`Options`] read from `data` by `from_json` (the
/// caller's `serde_json::from_slice`, which this crate does not depend on) is
/// either an error or a value whose validation, machine construction and
/// serialization (`to_json`) return without panicking, and whose serialization
/// reads back (as a value or an error: durations are written as float seconds,
/// which may round). Panics (a finding) otherwise.
///
/// ```
/// let from_json = |d: &[u8]| -> Result<preforkd::Options, String> {
///     std::str::from_utf8(d).map_err(|e| e.to_string())?;
///     Err("no JSON parser in this example".into())
/// };
/// preforkd::fuzzing::options(b"{}", from_json, |_| Ok(Vec::new()));
/// ```
pub fn options<E: std::fmt::Display>(
    data: &[u8],
    from_json: impl Fn(&[u8]) -> Result<Options, E>,
    to_json: impl Fn(&Options) -> Result<Vec<u8>, E>,
) {
    let Ok(opts) = from_json(data) else { return };
    // Valid for the default policies: the options, and `prefork` (read by the
    // default scaling policy only).
    if opts.validate().is_ok() && opts.default_scaling().is_ok() {
        // A valid configuration builds a machine. Bounded: a huge (if valid)
        // pool would only measure the allocator.
        if opts.max_children <= 4096 {
            Machine::new(opts.clone()).expect("validated options build a machine");
        }
    } else {
        assert!(
            Machine::new(opts.clone()).is_err(),
            "invalid options built a machine"
        );
    }
    let json = to_json(&opts).unwrap_or_else(|e| panic!("cannot serialize {opts:?}: {e}"));
    let _ = from_json(&json);
}

/// The `systemd_env` target: the parsers of the service manager's variables on
/// any values. `data` is split at newlines into `LISTEN_PID`, `LISTEN_FDS`,
/// `LISTEN_FDNAMES`, `WATCHDOG_USEC`, `WATCHDOG_PID` and `NOTIFY_SOCKET` (a missing
/// line is an unset variable; the first byte, if any, picks the open-file
/// limit). Checks: [`parse_listen_env`](crate::runtime::systemd::parse_listen_env)
/// returns one name per announced descriptor, never more than the limit allows;
/// [`watchdog_interval_from`](crate::runtime::systemd::watchdog_interval_from) is
/// never below the floor; [`Notifier::new`](crate::runtime::systemd::Notifier::new)
/// returns. Panics (a finding) otherwise.
///
/// ```
/// preforkd::fuzzing::systemd_env(b"\x004242\n2\nweb:\n1\n4242\n@notify");
/// ```
pub fn systemd_env(data: &[u8]) {
    use crate::runtime::systemd::{
        parse_listen_env, watchdog_interval_from, Notifier, MIN_WATCHDOG_INTERVAL,
    };
    const OUR_PID: u32 = 4242;
    let (limit, rest) = match data.split_first() {
        Some((&b, rest)) => ([0, 3, 4, 64, 1024, 1 << 20, u64::MAX][b as usize % 7], rest),
        None => (1024, data),
    };
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let mut next = || lines.next();
    let (pid, fds, names, usec, wpid, notify) = (next(), next(), next(), next(), next(), next());
    if let Ok(Some(names)) = parse_listen_env(pid, fds, names, OUR_PID, limit) {
        let announced: u64 = fds.and_then(|f| f.parse().ok()).expect("a parsed count");
        assert_eq!(names.len() as u64, announced);
        assert!(
            announced + 3 <= limit,
            "{announced} descriptors over the limit {limit}"
        );
    }
    if let Some(every) = watchdog_interval_from(usec, wpid, OUR_PID) {
        assert!(every >= MIN_WATCHDOG_INTERVAL, "watchdog every {every:?}");
    }
    if let Some(addr) = notify {
        let _ = Notifier::new(addr);
    }
}

/// The `proc_net` target: the kernel TCP table parser the disconnect scan uses
/// (procfs's `/proc/net/tcp` reader, through the runtime's own function) on any
/// bytes returns entries or an error. Panics (a finding) otherwise.
///
/// ```
/// preforkd::fuzzing::proc_net_tcp(b"header\n   0: 0100007F:1F90 00000000:0000 0A");
/// ```
pub fn proc_net_tcp(data: &[u8]) {
    if let Ok(entries) = crate::runtime::netstat::parse_tcp_table(data) {
        // One entry a line after the header, at most.
        assert!(entries.len() <= data.split(|&b| b == b'\n').count());
    }
}

/// The `sock_diag` target: the netlink answer parser the disconnect look uses
/// (the kernel's `sock_diag` messages) on any bytes lists sockets, at most one
/// a 16-byte header, and never reads past what it was given. Panics (a
/// finding) otherwise.
///
/// ```
/// // NLMSG_DONE, code 0.
/// let done = [20, 0, 0, 0, 3, 0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// preforkd::fuzzing::sock_diag(&done);
/// ```
pub fn sock_diag(data: &[u8]) {
    let (sockets, _ends) = crate::runtime::os::diag_answer(data);
    assert!(sockets.len() <= data.len() / 16);
}

/// The `workload_spec` target: `preforkd simulate --workload`'s parser. The input's
/// first line is a spec ([`WorkloadSpec`](crate::sim::WorkloadSpec)), the rest the
/// contents of a trace file. Parsing returns a spec or an error; a spec written
/// back parses to the same spec; a spec describing at most 10,000 requests builds
/// (a `trace:` one from the rest of the input) into a sorted workload of the size
/// it says; the rest parsed as a trace gives requests or an error naming a line
/// that exists. Panics (a finding) otherwise.
///
/// ```
/// preforkd::fuzzing::workload_spec(b"trace:t.csv\narrival,service\n0.5,1s\n");
/// preforkd::fuzzing::workload_spec(b"burst:3x1s");
/// ```
pub fn workload_spec(data: &[u8]) {
    use crate::sim::{SpecError, Workload, WorkloadSpec};
    let text = String::from_utf8_lossy(data);
    let (first, trace) = text.split_once('\n').unwrap_or((&text, ""));
    if let Ok(spec) = first.parse::<WorkloadSpec>() {
        let again: WorkloadSpec = spec
            .to_string()
            .parse()
            .unwrap_or_else(|e| panic!("{spec} (from {first:?}) does not parse: {e}"));
        assert_eq!(again, spec, "written back as {spec}");
        let expected = match spec {
            WorkloadSpec::Burst { count, .. } => count as f64,
            WorkloadSpec::Poisson { rate, duration, .. } => rate * duration.as_secs_f64(),
            WorkloadSpec::Ramp {
                from, to, duration, ..
            } => (from + to) / 2.0 * duration.as_secs_f64(),
            WorkloadSpec::Trace { .. } => 0.0,
        };
        if expected <= 10_000.0 {
            if let Ok(w) = spec.build(|_| Ok(trace.to_string())) {
                let r = w.requests();
                assert!(r.windows(2).all(|p| p[0].arrival <= p[1].arrival));
                if let WorkloadSpec::Burst { count, .. } = spec {
                    assert_eq!(w.len(), count);
                }
            }
        }
    }
    match Workload::from_trace_csv("fuzz.csv", trace) {
        Ok(w) => assert!(!w.is_empty() && w.len() <= trace.lines().count()),
        Err(SpecError::Trace { line, .. }) => {
            assert!((1..=trace.lines().count()).contains(&line), "line {line}")
        }
        Err(SpecError::TraceFile { .. }) => {}
        Err(e @ SpecError::Spec { .. }) => panic!("a trace's error names no line: {e}"),
    }
}
