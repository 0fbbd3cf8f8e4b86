//! `preforkd simulate`: a scaling policy against a workload, in the deterministic
//! simulator (`preforkd::sim`), with a summary table on stdout and, with `--svg`,
//! a chart (see `docs/simulate.md`).
//!
//! Exit codes follow `preforkd run`'s: 64 for a bad command line (an unknown
//! policy name, a workload spec that does not parse), 78 for a bad file (a policy
//! configuration, a trace), 1 when the chart cannot be written.

use super::{Refused, EX_CONFIG, EX_USAGE};
use preforkd::policy::{parse_duration, PolicyError, Registry, ScalingPolicy};
use preforkd::sim::{plot, Sim, SimConfig, SimReport, WorkloadSpec};
use preforkd::{Machine, Options};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The children the `fixed` policy keeps without a configuration (the default
/// policy's `prefork`).
const FIXED_DEFAULT: i64 = 3;

/// `preforkd simulate`'s flags.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The scaling policy: elastic (the default policy), apache_like or fixed.
    #[arg(long, value_name = "NAME", default_value = "elastic")]
    policy: String,
    /// The policy's settings, a TOML file of its fields (fixed: `children = N`).
    #[arg(long, value_name = "FILE")]
    policy_config: Option<PathBuf>,
    /// What arrives: burst:140x1s, poisson:300/s,50ms, ramp:0-500/s,60s,50ms or
    /// trace:FILE.csv (the grammar is in docs/simulate.md).
    #[arg(long, value_name = "SPEC")]
    workload: String,
    /// Draw the run (children by state, queue length, queue wait) to this SVG file.
    #[arg(long, value_name = "OUT")]
    svg: Option<PathBuf>,
    /// A second policy, run on the same workload and drawn on the same chart.
    #[arg(long, value_name = "NAME2")]
    compare: Option<String>,
    /// The second policy's settings (a TOML file).
    #[arg(long, value_name = "FILE2", requires = "compare")]
    compare_config: Option<PathBuf>,
    /// The supervisor's hard cap on children (`max_children`).
    #[arg(long, value_name = "N", default_value_t = Options::default().max_children)]
    max_children: usize,
    /// How long to go on after the last request, to watch the pool shrink.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    linger: Duration,
    /// The parent's time per fork [default: 0.5ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    fork_cost: Option<Duration>,
    /// From a child's fork to its readiness [default: 1ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    boot_latency: Option<Duration>,
}

/// One policy's run: its legend label and what it measured.
struct Outcome {
    label: String,
    report: SimReport,
}

/// The largest trace read (a trace of a day at 1,000 requests a second is ~2 GB:
/// beyond this, sample it).
const MOST_TRACE_BYTES: u64 = 256 << 20;

/// A trace file's text: a regular file (a FIFO would block, a device never
/// end) of at most [`MOST_TRACE_BYTES`].
fn read_trace(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    let refuse = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    if meta.len() > MOST_TRACE_BYTES {
        return Err(refuse(format!(
            "{} bytes, more than the {} MiB a trace may have",
            meta.len(),
            MOST_TRACE_BYTES >> 20
        )));
    }
    let mut text = String::new();
    file.take(MOST_TRACE_BYTES).read_to_string(&mut text)?;
    Ok(text)
}

/// Runs the subcommand; the exit code, or why it refused.
pub fn simulate(args: SimulateArgs) -> Result<i32, Refused> {
    let spec: WorkloadSpec = args
        .workload
        .parse()
        .map_err(|e| Refused(EX_USAGE, format!("{e}")))?;
    for name in [Some(&args.policy), args.compare.as_ref()]
        .into_iter()
        .flatten()
    {
        known(name)?;
    }
    let workload = spec.build(read_trace).map_err(|e| {
        let code = if e.is_in_file() { EX_CONFIG } else { EX_USAGE };
        Refused(code, e.to_string())
    })?;
    let mut config = SimConfig::default();
    config.fork_cost = args.fork_cost.unwrap_or(config.fork_cost);
    config.boot_latency = args.boot_latency.unwrap_or(config.boot_latency);

    let mut asked = vec![(&args.policy, &args.policy_config, "--policy-config")];
    if let Some(name) = &args.compare {
        asked.push((name, &args.compare_config, "--compare-config"));
    }
    let mut outcomes: Vec<Outcome> = Vec::new();
    for (name, file, flag) in asked {
        let policy = build_policy(name, file.as_deref(), flag)?;
        let opts = Options {
            max_children: args.max_children,
            ..Options::default()
        };
        let machine = Machine::builder(opts)
            .scaling_policy(policy)
            .build()
            .map_err(|e| Refused(EX_CONFIG, format!("{name}: {e}")))?;
        let mut sim = Sim::with_config(machine, workload.clone(), config.clone());
        sim.run_to_completion(args.linger);
        let mut label = match file {
            Some(f) => format!("{name} ({})", f.display()),
            None => name.clone(),
        };
        // Two identical labels would make the legend ambiguous.
        if outcomes.iter().any(|o| o.label == label) {
            label.push_str(" (2)");
        }
        outcomes.push(Outcome {
            label,
            report: sim.into_report(),
        });
    }

    let mut out = format!(
        "workload: {spec} ({} requests), then {} of linger\n\n",
        workload.len(),
        fmt_secs(args.linger)
    );
    out.push_str(&table(&outcomes));
    for o in &outcomes {
        let left = o.report.unfinished();
        if left > 0 {
            let _ = writeln!(
                out,
                "{}: {left} requests unfinished when the run stopped at {}",
                o.label,
                fmt_secs(o.report.ended_at.since_origin())
            );
        }
    }
    if let Some(path) = &args.svg {
        let runs: Vec<plot::Run<'_>> = outcomes
            .iter()
            .map(|o| plot::Run {
                label: &o.label,
                report: &o.report,
            })
            .collect();
        let names: Vec<&str> = outcomes.iter().map(|o| o.label.as_str()).collect();
        let title = format!("{spec}: {}", names.join(" vs "));
        let svg = plot::svg(&title, &runs).map_err(|e| Refused(1, e.to_string()))?;
        std::fs::write(path, svg)
            .map_err(|e| Refused(1, format!("cannot write {}: {e}", path.display())))?;
        let _ = writeln!(out, "\nchart: {}", path.display());
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(0)
}

/// Refuses a scaling policy name the registry does not know (a usage error,
/// before any file is read).
fn known(name: &str) -> Result<(), Refused> {
    // The registry answers "unknown" before reading the configuration, so any
    // configuration will do to ask.
    let mut probe = <dyn erased_serde::Deserializer>::erase(toml::Value::Table(toml::Table::new()));
    match Registry::with_builtins().scaling(name, &mut probe) {
        Err(e @ PolicyError::Unknown { .. }) => Err(Refused(EX_USAGE, e.to_string())),
        _ => Ok(()),
    }
}

/// The scaling policy `name`, configured from `file` (its defaults without one).
/// `flag` names the file's flag in messages.
fn build_policy(
    name: &str,
    file: Option<&Path>,
    flag: &str,
) -> Result<Box<dyn ScalingPolicy>, Refused> {
    let config = |msg: String| Refused(EX_CONFIG, msg);
    let shown = match file {
        Some(f) => format!("{flag} {}", f.display()),
        None => format!("{name}'s defaults"),
    };
    let table: toml::Table = match file {
        None => toml::Table::new(),
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| config(format!("{shown}: {e}")))?;
            text.parse().map_err(|e: toml::de::Error| {
                config(format!("{shown}: {}", e.to_string().trim_end()))
            })?
        }
    };
    // `fixed`'s configuration is a bare number, which a TOML file cannot be:
    // its file says `children = N`.
    let value = if name == "fixed" {
        let mut table = table;
        let children = table
            .remove("children")
            .unwrap_or(toml::Value::Integer(FIXED_DEFAULT));
        if let Some(key) = table.keys().next() {
            return Err(config(format!(
                "{shown}: unknown key {key:?} for the fixed policy (it has one: children)"
            )));
        }
        children
    } else {
        toml::Value::Table(table)
    };
    let mut de = <dyn erased_serde::Deserializer>::erase(value);
    Registry::with_builtins()
        .scaling(name, &mut de)
        .map_err(|e| {
            // The deserializer's message spans lines ("...\n\nin `prefork`"): one line.
            let one_line = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            config(format!("{shown}: {one_line}"))
        })
}

/// A duration in seconds, as short as it stays exact to the microsecond.
fn fmt_secs(d: Duration) -> String {
    let s = format!("{:.6}", d.as_secs_f64());
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}s")
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1}ms", d.as_secs_f64() * 1e3))
}

/// The summary: one row per policy, columns aligned.
fn table(outcomes: &[Outcome]) -> String {
    let header = [
        "policy",
        "completed",
        "p50 wait",
        "p99 wait",
        "max wait",
        "peak children",
        "child-seconds",
        "spawns",
        "retirements",
        "last done",
    ];
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            let r = &o.report;
            vec![
                o.label.clone(),
                r.completed.to_string(),
                ms(r.wait_p50()),
                ms(r.wait_p99()),
                ms(r.wait_max()),
                r.peak_children.to_string(),
                format!("{:.1}", r.child_seconds()),
                r.spawns.to_string(),
                r.retirements.to_string(),
                r.last_finish
                    .map_or("-".into(), |t| fmt_secs(t.since_origin())),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |cells: &[&str], out: &mut String| {
        let mut l = String::new();
        for (c, cell) in cells.iter().enumerate() {
            if c == 0 {
                let _ = write!(l, "{cell:<w$}", w = widths[c]);
            } else {
                let _ = write!(l, "  {cell:>w$}", w = widths[c]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header, &mut out);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&cells, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_short_and_exact() {
        assert_eq!(fmt_secs(Duration::from_secs(10)), "10s");
        assert_eq!(fmt_secs(Duration::from_micros(1_020_500)), "1.0205s");
    }
}
