//! What a scrape shows, written in the three formats: the Prometheus text
//! exposition 0.0.4, OpenMetrics 1.0.0 and JSON (see `docs/metrics.md`). Pure:
//! a [`Sample`] in, bytes out.

use super::Figures;
use crate::{SlotState, State};
use std::fmt::Write;

/// The formats served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `text/plain; version=0.0.4`.
    Text,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `application/json` (schema 1).
    Json,
}

impl Format {
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Json => "application/json",
        }
    }
}

/// One listening socket's accept queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Queue {
    /// Where it listens (`127.0.0.1:8080`, `[::1]:80`).
    pub(crate) listener: String,
    /// Connections waiting to be accepted.
    pub(crate) waiting: u32,
    /// The queue's limit (the listen backlog, capped by `somaxconn`).
    pub(crate) limit: u32,
}

/// The parent process's own figures, from `/proc/self`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Process {
    pub(crate) cpu_seconds: f64,
    pub(crate) resident_bytes: u64,
    pub(crate) virtual_bytes: u64,
    pub(crate) start_time_seconds: f64,
    pub(crate) open_fds: u64,
    pub(crate) max_fds: Option<u64>,
}

/// Everything one scrape shows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    /// The machine's figures, as the loop last published them.
    pub(crate) figures: Figures,
    /// The scoreboard's slots, read by the endpoint's thread.
    pub(crate) slots: Vec<crate::runtime::SlotInfo>,
    /// Requests served since the start: the exited children's and the live
    /// ones' (never less than the last scrape said).
    pub(crate) requests: u64,
    pub(crate) queues: Vec<Queue>,
    pub(crate) process: Option<Process>,
}

const SLOT_STATES: [(SlotState, &str); 5] = [
    (SlotState::Empty, "empty"),
    (SlotState::Starting, "starting"),
    (SlotState::Idle, "idle"),
    (SlotState::Busy, "busy"),
    (SlotState::Retiring, "retiring"),
];

impl Sample {
    /// Busy children over serving ones (idle and busy), as the machine counts
    /// them; 0 with none serving.
    pub(crate) fn busy_ratio(&self) -> f64 {
        let c = &self.figures;
        let serving = c.idle + c.busy;
        if serving == 0 {
            0.0
        } else {
            c.busy as f64 / serving as f64
        }
    }

    fn slots_in(&self, state: SlotState) -> u64 {
        self.slots.iter().filter(|s| s.state == state).count() as u64
    }
}

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    /// Text 0.0.4 has no info type: a gauge named `*_info` there.
    Info,
}

/// A value: integers are written as such.
#[derive(Debug, Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Value::Int(n) => write!(f, "{n}"),
            Value::Float(x) if x.is_nan() => f.write_str("NaN"),
            Value::Float(x) if x.is_infinite() => {
                f.write_str(if x > 0.0 { "+Inf" } else { "-Inf" })
            }
            Value::Float(x) => write!(f, "{x}"),
        }
    }
}

/// The text of one exposition, family by family.
struct Exposition {
    openmetrics: bool,
    out: String,
}

/// A label value escaped as both text formats want it: backslash, double quote
/// and line feed.
pub(crate) fn escape_label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A HELP text escaped: backslash and line feed (and, in OpenMetrics, the
/// double quote too).
pub(crate) fn escape_help(v: &str, openmetrics: bool) -> String {
    let mut s = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '"' if openmetrics => s.push_str("\\\""),
            c => s.push(c),
        }
    }
    s
}

impl Exposition {
    /// A family `name` (without `_total` or `_info`, which are added) and its
    /// samples, each with its labels.
    fn family(&mut self, name: &str, kind: Kind, help: &str, samples: &[(&[(&str, &str)], Value)]) {
        let (family, sample, ty) = match (kind, self.openmetrics) {
            (Kind::Counter, true) => (name.to_string(), format!("{name}_total"), "counter"),
            (Kind::Counter, false) => {
                let n = format!("{name}_total");
                (n.clone(), n, "counter")
            }
            (Kind::Info, true) => (name.to_string(), format!("{name}_info"), "info"),
            (Kind::Info, false) => {
                let n = format!("{name}_info");
                (n.clone(), n, "gauge")
            }
            (Kind::Gauge, _) => (name.to_string(), name.to_string(), "gauge"),
        };
        let help = escape_help(help, self.openmetrics);
        let _ = writeln!(self.out, "# HELP {family} {help}");
        let _ = writeln!(self.out, "# TYPE {family} {ty}");
        for (labels, value) in samples {
            self.out.push_str(&sample);
            if !labels.is_empty() {
                self.out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{k}=\"{}\"", escape_label_value(v));
                }
                self.out.push('}');
            }
            let _ = writeln!(self.out, " {value}");
        }
    }

    fn one(&mut self, name: &str, kind: Kind, help: &str, value: Value) {
        self.family(name, kind, help, &[(&[], value)]);
    }
}

/// The sample in `format`.
pub(crate) fn render(s: &Sample, format: Format) -> String {
    match format {
        Format::Text => exposition(s, false),
        Format::OpenMetrics => exposition(s, true),
        Format::Json => json(s),
    }
}

fn exposition(s: &Sample, openmetrics: bool) -> String {
    use Value::{Float, Int};
    let f = &s.figures;
    let mut e = Exposition {
        openmetrics,
        out: String::with_capacity(8192),
    };
    let version = env!("CARGO_PKG_VERSION");
    e.family(
        "preforkd_build",
        Kind::Info,
        "The preforkd library this daemon is built with.",
        &[(&[("version", version)], Int(1))],
    );
    e.family(
        "preforkd_children",
        Kind::Gauge,
        "Children by state, as the supervisor counts them (retiring: on their way out, whatever they do).",
        &[
            (&[("state", "starting")], Int(f.starting)),
            (&[("state", "idle")], Int(f.idle)),
            (&[("state", "busy")], Int(f.busy)),
            (&[("state", "retiring")], Int(f.retiring)),
        ],
    );
    e.one(
        "preforkd_max_children",
        Kind::Gauge,
        "The most children at once (max_children).",
        Int(f.max_children),
    );
    let slot_samples: Vec<(&str, Value)> = SLOT_STATES
        .iter()
        .map(|&(st, name)| (name, Int(s.slots_in(st))))
        .collect();
    let slot_labels: Vec<[(&str, &str); 1]> =
        slot_samples.iter().map(|(n, _)| [("state", *n)]).collect();
    let samples: Vec<(&[(&str, &str)], Value)> = slot_labels
        .iter()
        .zip(&slot_samples)
        .map(|(l, (_, v))| (&l[..], *v))
        .collect();
    e.family(
        "preforkd_scoreboard_slots",
        Kind::Gauge,
        "Scoreboard slots by the state their child wrote last.",
        &samples,
    );
    e.one(
        "preforkd_busy_ratio",
        Kind::Gauge,
        "Busy children over serving (idle and busy) ones; 0 with none serving.",
        Float(s.busy_ratio()),
    );
    e.one(
        "preforkd_requests",
        Kind::Counter,
        "Requests served by the children, those gone included.",
        Int(s.requests),
    );
    e.one(
        "preforkd_spawns",
        Kind::Counter,
        "Children forked.",
        Int(f.spawns),
    );
    e.one(
        "preforkd_spawn_failures",
        Kind::Counter,
        "Forks that failed.",
        Int(f.spawn_failures),
    );
    let exits: Vec<([(&str, &str); 1], Value)> = crate::ExitCause::ALL
        .iter()
        .zip(f.exits)
        .map(|(c, n)| ([("cause", c.name())], Int(n)))
        .collect();
    let samples: Vec<(&[(&str, &str)], Value)> = exits.iter().map(|(l, v)| (&l[..], *v)).collect();
    e.family(
        "preforkd_exits",
        Kind::Counter,
        "Children reaped, by why they left.",
        &samples,
    );
    e.one(
        "preforkd_reloads",
        Kind::Counter,
        "Reloads begun (HUP, a change found).",
        Int(f.reloads),
    );
    e.family(
        "preforkd_upgrades",
        Kind::Counter,
        "In-place upgrades, by outcome (begun: USR2 or a new executable found).",
        &[
            (&[("outcome", "begun")], Int(f.upgrades_begun)),
            (&[("outcome", "done")], Int(f.upgrades_done)),
            (&[("outcome", "abandoned")], Int(f.upgrades_abandoned)),
            (&[("outcome", "returned")], Int(f.upgrades_returned)),
        ],
    );
    e.family(
        "preforkd_scaling_decisions",
        Kind::Counter,
        "Scaling-policy decisions that moved the pool, by direction.",
        &[
            (&[("direction", "up")], Int(f.scale_ups)),
            (&[("direction", "down")], Int(f.scale_downs)),
        ],
    );
    e.family(
        "preforkd_scaled_children",
        Kind::Counter,
        "Children the scaling policy's decisions spawned (up) or retired (down).",
        &[
            (&[("direction", "up")], Int(f.scaled_up_children)),
            (&[("direction", "down")], Int(f.scaled_down_children)),
        ],
    );
    e.one(
        "preforkd_generation",
        Kind::Gauge,
        "The generation new children get (one more per reload or upgrade).",
        Int(f.generation),
    );
    e.one(
        "preforkd_crash_streak",
        Kind::Gauge,
        "Crashes in a row the crash-loop backoff counts (0: none).",
        Int(f.crash_streak),
    );
    let state_labels: Vec<[(&str, &str); 1]> =
        State::ALL.iter().map(|st| [("state", st.name())]).collect();
    let samples: Vec<(&[(&str, &str)], Value)> = State::ALL
        .iter()
        .zip(&state_labels)
        .map(|(st, l)| (&l[..], Int(u64::from(*st == f.state))))
        .collect();
    e.family(
        "preforkd_supervisor_state",
        Kind::Gauge,
        "1 for the supervisor's current state.",
        &samples,
    );
    if !s.queues.is_empty() {
        let labels: Vec<[(&str, &str); 1]> = s
            .queues
            .iter()
            .map(|q| [("listener", q.listener.as_str())])
            .collect();
        let waiting: Vec<(&[(&str, &str)], Value)> = labels
            .iter()
            .zip(&s.queues)
            .map(|(l, q)| (&l[..], Int(u64::from(q.waiting))))
            .collect();
        e.family(
            "preforkd_listen_queue_depth",
            Kind::Gauge,
            "Connections waiting in a listening socket's accept queue.",
            &waiting,
        );
        let limits: Vec<(&[(&str, &str)], Value)> = labels
            .iter()
            .zip(&s.queues)
            .map(|(l, q)| (&l[..], Int(u64::from(q.limit))))
            .collect();
        e.family(
            "preforkd_listen_queue_limit",
            Kind::Gauge,
            "The accept queue's limit (the listen backlog, capped by somaxconn).",
            &limits,
        );
    }
    if let Some(p) = &s.process {
        e.one(
            "process_cpu_seconds",
            Kind::Counter,
            "User and system CPU time of the parent, in seconds.",
            Float(p.cpu_seconds),
        );
        e.one(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory of the parent, in bytes.",
            Int(p.resident_bytes),
        );
        e.one(
            "process_virtual_memory_bytes",
            Kind::Gauge,
            "Virtual memory of the parent, in bytes.",
            Int(p.virtual_bytes),
        );
        e.one(
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the parent since the Unix epoch, in seconds (an in-place upgrade keeps it).",
            Float(p.start_time_seconds),
        );
        e.one(
            "process_open_fds",
            Kind::Gauge,
            "Open descriptors of the parent.",
            Int(p.open_fds),
        );
        if let Some(max) = p.max_fds {
            e.one(
                "process_max_fds",
                Kind::Gauge,
                "The parent's limit on open descriptors.",
                Int(max),
            );
        }
    }
    if openmetrics {
        e.out.push_str("# EOF\n");
    }
    e.out
}

fn slot_state_name(st: SlotState) -> &'static str {
    SLOT_STATES
        .iter()
        .find(|(s, _)| *s == st)
        .map_or("empty", |(_, n)| n)
}

fn json(s: &Sample) -> String {
    let f = &s.figures;
    let exits: serde_json::Map<String, serde_json::Value> = crate::ExitCause::ALL
        .iter()
        .zip(f.exits)
        .map(|(c, n)| (c.name().to_string(), n.into()))
        .collect();
    let slots: Vec<serde_json::Value> = s
        .slots
        .iter()
        .enumerate()
        .filter(|(_, x)| x.pid != 0 || x.state != SlotState::Empty)
        .map(|(i, x)| {
            serde_json::json!({
                "slot": i,
                "pid": x.pid,
                "state": slot_state_name(x.state),
                "generation": x.generation,
                "requests": x.requests,
            })
        })
        .collect();
    let queues: Vec<serde_json::Value> = s
        .queues
        .iter()
        .map(
            |q| serde_json::json!({"listener": q.listener, "waiting": q.waiting, "limit": q.limit}),
        )
        .collect();
    let process = s.process.map(|p| {
        serde_json::json!({
            "cpu_seconds": p.cpu_seconds,
            "resident_memory_bytes": p.resident_bytes,
            "virtual_memory_bytes": p.virtual_bytes,
            "start_time_seconds": p.start_time_seconds,
            "open_fds": p.open_fds,
            "max_fds": p.max_fds,
        })
    });
    let doc = serde_json::json!({
        "schema": 1,
        "version": env!("CARGO_PKG_VERSION"),
        "state": f.state.name(),
        "generation": f.generation,
        "crash_streak": f.crash_streak,
        "max_children": f.max_children,
        "children": {
            "starting": f.starting,
            "idle": f.idle,
            "busy": f.busy,
            "retiring": f.retiring,
        },
        "busy_ratio": s.busy_ratio(),
        "requests": s.requests,
        "spawns": f.spawns,
        "spawn_failures": f.spawn_failures,
        "exits": exits,
        "reloads": f.reloads,
        "upgrades": {
            "begun": f.upgrades_begun,
            "done": f.upgrades_done,
            "abandoned": f.upgrades_abandoned,
            "returned": f.upgrades_returned,
        },
        "scaling_decisions": {"up": f.scale_ups, "down": f.scale_downs},
        "scaled_children": {"up": f.scaled_up_children, "down": f.scaled_down_children},
        "listen_queues": queues,
        "slots": slots,
        "process": process,
    });
    let mut text = doc.to_string();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::SlotInfo;

    fn sample() -> Sample {
        let mut figures = Figures {
            state: State::Serving,
            generation: 2,
            starting: 1,
            idle: 2,
            busy: 2,
            max_children: 10,
            spawns: 7,
            reloads: 1,
            scale_ups: 3,
            ..Figures::default()
        };
        figures.exits[0] = 2;
        let slot = |pid, state, requests| SlotInfo {
            pid,
            state,
            generation: 2,
            requests,
        };
        Sample {
            figures,
            slots: vec![
                slot(10, SlotState::Idle, 4),
                slot(11, SlotState::Busy, 5),
                slot(0, SlotState::Empty, 0),
            ],
            requests: 42,
            queues: vec![Queue {
                listener: "127.0.0.1:8080".into(),
                waiting: 3,
                limit: 1024,
            }],
            process: Some(Process {
                cpu_seconds: 0.25,
                resident_bytes: 4096,
                ..Process::default()
            }),
        }
    }

    /// The sample lines (not comments) of an exposition, as (name{labels}, value).
    fn samples(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn value(text: &str, key: &str) -> Option<String> {
        samples(text)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("line\nbreak"), "line\\nbreak");
        assert_eq!(escape_label_value("[::1]:80 ünï"), "[::1]:80 ünï");
        assert_eq!(escape_help("a \"q\" \\ \n", false), "a \"q\" \\\\ \\n");
        assert_eq!(escape_help("a \"q\"", true), "a \\\"q\\\"");
        // A label value in a rendered family.
        let mut s = sample();
        s.queues[0].listener = "odd\"name\\\n".into();
        let text = render(&s, Format::Text);
        assert!(
            text.contains(r#"preforkd_listen_queue_depth{listener="odd\"name\\\n"} 3"#),
            "{text}"
        );
    }

    #[test]
    fn the_text_format_names_counters_with_total_and_types_every_family() {
        let text = render(&sample(), Format::Text);
        assert!(
            text.contains("# TYPE preforkd_spawns_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE preforkd_build_info gauge\n"));
        assert_eq!(value(&text, "preforkd_spawns_total").as_deref(), Some("7"));
        assert_eq!(
            value(&text, r#"preforkd_exits_total{cause="crash"}"#).as_deref(),
            Some("2")
        );
        assert_eq!(
            value(&text, r#"preforkd_exits_total{cause="busy_timeout"}"#).as_deref(),
            Some("0")
        );
        assert_eq!(
            value(&text, r#"preforkd_children{state="busy"}"#).as_deref(),
            Some("2")
        );
        assert_eq!(value(&text, "preforkd_busy_ratio").as_deref(), Some("0.5"));
        assert_eq!(
            value(&text, "preforkd_requests_total").as_deref(),
            Some("42")
        );
        assert_eq!(
            value(&text, r#"preforkd_scoreboard_slots{state="empty"}"#).as_deref(),
            Some("1")
        );
        assert_eq!(
            value(&text, r#"preforkd_supervisor_state{state="Serving"}"#).as_deref(),
            Some("1")
        );
        assert_eq!(
            value(&text, r#"preforkd_supervisor_state{state="Init"}"#).as_deref(),
            Some("0")
        );
        assert_eq!(
            value(&text, "process_cpu_seconds_total").as_deref(),
            Some("0.25")
        );
        assert!(!text.contains("# EOF"));
        // Every sample belongs to a family with HELP and TYPE before it.
        let mut typed = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
            }
        }
        for (k, _) in samples(&text) {
            let name = k.split('{').next().unwrap();
            assert!(typed.contains(name), "{name} has no TYPE");
        }
    }

    #[test]
    fn openmetrics_names_families_without_suffixes_and_ends_with_eof() {
        let text = render(&sample(), Format::OpenMetrics);
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        assert!(text.contains("# TYPE preforkd_spawns counter\n"));
        assert!(text.contains("# TYPE preforkd_build info\n"));
        assert!(text.contains("\npreforkd_build_info{version=\""));
        assert_eq!(value(&text, "preforkd_spawns_total").as_deref(), Some("7"));
        assert_eq!(text.matches("# EOF").count(), 1);
    }

    #[test]
    fn json_follows_its_schema() {
        let text = render(&sample(), Format::Json);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["state"], "Serving");
        assert_eq!(v["children"]["busy"], 2);
        assert_eq!(v["exits"]["crash"], 2);
        assert_eq!(v["exits"].as_object().unwrap().len(), 7);
        assert_eq!(v["requests"], 42);
        assert_eq!(
            v["slots"].as_array().unwrap().len(),
            2,
            "empty slots left out"
        );
        assert_eq!(v["slots"][1]["state"], "busy");
        assert_eq!(v["listen_queues"][0]["waiting"], 3);
        assert_eq!(v["process"]["resident_memory_bytes"], 4096);
    }

    #[test]
    fn the_ratio_is_zero_with_nobody_serving() {
        let mut s = sample();
        s.figures.idle = 0;
        s.figures.busy = 0;
        assert_eq!(s.busy_ratio(), 0.0);
        assert_eq!(Value::Float(f64::NAN).to_string(), "NaN");
    }
}
