//! Charts of simulation runs, as SVG (drawn with the `plotters` crate, into a
//! string: no file, no font library).
//!
//! [`svg`] draws one run, or several on the same axes (one policy against
//! another), in three panels over a shared time axis:
//!
//! 1. **children** by state (alive, busy, idle, starting, retiring: the fields of
//!    [`Sample`]), with the supervisor's spawns (triangles) and retirements, TERM
//!    or KILL (crosses; circles for the second run), marked on the alive line;
//! 2. **queue length**: requests waiting in the listen queue;
//! 3. **queue wait**: the longest wait of the requests a child took.
//!
//! The timeline is cut into [`COLUMNS`] equal columns; each point is the most
//! the series reached in its column (a short spike stays visible however long
//! the run) and each mark stands for one or more events in its column. The first
//! run's lines are solid, the second's dashed (then solid again, and so on); the
//! legend names every series `LABEL: SERIES`.
//!
//! ```
//! use preforkd::sim::{plot, Sim, Workload};
//! use preforkd::{Machine, Options, Time};
//! use std::time::Duration;
//!
//! let work = Workload::burst(40, Time::from_secs(1), Duration::from_millis(500));
//! let mut sim = Sim::new(Machine::new(Options::default())?, work);
//! let report = sim.run_to_completion(Duration::from_secs(3));
//! let svg = plot::svg("40 requests at once", &[plot::Run { label: "elastic", report: &report }])?;
//! assert!(svg.starts_with("<svg") && svg.contains("elastic: busy"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use super::report::{PoolEventKind, Sample, SimReport};
use plotters::prelude::*;
use plotters::style::text_anchor;
use std::time::Duration;

/// How many columns the timeline is cut into (about one per pixel).
pub const COLUMNS: usize = 800;

/// The picture's size in pixels.
const WIDTH: u32 = 1150;
const HEIGHT: u32 = 900;
/// The charts' width; the legends take the rest, on the right.
const PLOT_WIDTH: u32 = 900;

/// One run to draw: what to call it in the legend, and what it measured.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    /// The legend's name for it (the policy's name, say).
    pub label: &'a str,
    /// The run's measurements.
    pub report: &'a SimReport,
}

/// The drawing failed (plotters' error, as text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot draw the chart: {0}")]
pub struct PlotError(String);

fn fail(e: impl std::fmt::Display) -> PlotError {
    PlotError(e.to_string())
}

/// The series of the children panel: name, colour, value.
type Field = (&'static str, RGBColor, fn(&Sample) -> usize);

const STATES: [Field; 5] = [
    ("alive", RGBColor(0x22, 0x22, 0x22), |s| s.alive),
    ("busy", RGBColor(0xd6, 0x27, 0x28), |s| s.busy),
    ("idle", RGBColor(0x2c, 0xa0, 0x2c), |s| s.idle),
    ("starting", RGBColor(0x1f, 0x77, 0xb4), |s| s.starting),
    ("retiring", RGBColor(0xff, 0x7f, 0x0e), |s| s.retiring),
];
const QUEUE: RGBColor = RGBColor(0x94, 0x67, 0xbd);
const WAIT: RGBColor = RGBColor(0x8c, 0x56, 0x4b);
const SPAWN: RGBColor = RGBColor(0x17, 0xbe, 0xcf);
const RETIRE: RGBColor = RGBColor(0xe3, 0x77, 0xc2);

/// The shared time axis: `COLUMNS` columns of `dt` seconds from zero.
#[derive(Clone, Copy)]
struct Axis {
    dt: f64,
}

impl Axis {
    fn column(self, secs: f64) -> usize {
        ((secs / self.dt) as usize).min(COLUMNS - 1)
    }
    fn start(self, c: usize) -> f64 {
        c as f64 * self.dt
    }
}

/// The most `f` reached in each column of the run, as `(column start, value)`,
/// up to the run's end.
fn column_max(r: &SimReport, axis: Axis, f: fn(&Sample) -> usize) -> Vec<(f64, f64)> {
    let end = r.ended_at.since_origin().as_secs_f64();
    let mut out = Vec::new();
    let mut i = 0;
    let mut held: Option<usize> = None;
    for c in 0..COLUMNS {
        let (t0, t1) = (axis.start(c), axis.start(c + 1));
        if t0 > end {
            break;
        }
        let mut most = held;
        while let Some(s) = r.samples.get(i) {
            if s.at.since_origin().as_secs_f64() >= t1 {
                break;
            }
            most = Some(most.map_or(f(s), |m| m.max(f(s))));
            held = Some(f(s));
            i += 1;
        }
        if let Some(v) = most {
            out.push((t0, v as f64));
        }
    }
    out
}

/// The longest queue wait (ms) of the requests a child took in each column that
/// has any.
fn column_wait(r: &SimReport, axis: Axis) -> Vec<(f64, f64)> {
    let mut most: Vec<Option<Duration>> = vec![None; COLUMNS];
    for req in &r.requests {
        if let (Some(start), Some(wait)) = (req.started, req.wait()) {
            let c = axis.column(start.since_origin().as_secs_f64());
            most[c] = Some(most[c].map_or(wait, |m| m.max(wait)));
        }
    }
    most.iter()
        .enumerate()
        .filter_map(|(c, w)| w.map(|w| (axis.start(c), w.as_secs_f64() * 1e3)))
        .collect()
}

/// One mark per column holding events of `kinds`, on the alive line.
fn marks(r: &SimReport, axis: Axis, kinds: &[PoolEventKind]) -> Vec<(f64, f64)> {
    let mut seen = vec![false; COLUMNS];
    let mut out = Vec::new();
    for e in r.events.iter().filter(|e| kinds.contains(&e.kind)) {
        let secs = e.at.since_origin().as_secs_f64();
        let c = axis.column(secs);
        if !seen[c] {
            seen[c] = true;
            let alive = r.sample_at(e.at).map_or(0, |s| s.alive);
            out.push((secs, alive as f64));
        }
    }
    out
}

/// How a legend entry's sample is drawn.
#[derive(Debug, Clone, Copy)]
enum Mark {
    /// A line; dashed or solid.
    Line(RGBColor, bool),
    Triangle(RGBColor),
    Cross(RGBColor),
    /// A circle; filled or hollow.
    Circle(RGBColor, bool),
}

type Area<'b> = DrawingArea<SVGBackend<'b>, plotters::coord::Shift>;
type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A tick label: whole numbers without decimals, others with what they need.
fn tick(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A panel's axes, over time from 0 to `end` and from 0 to a little above `top`.
fn axes<'a, 'b>(
    area: &'a Area<'b>,
    caption: &str,
    y_desc: &str,
    end: f64,
    top: f64,
) -> Result<Chart<'a, 'b>, PlotError> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..end, 0.0..(top * 1.05).max(1.0))
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc(y_desc)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(fail)?;
    Ok(chart)
}

/// Draws run `i`'s line: solid for even runs, dashed for odd ones.
fn line(
    chart: &mut Chart<'_, '_>,
    i: usize,
    color: RGBColor,
    points: Vec<(f64, f64)>,
) -> Result<Mark, PlotError> {
    let style = color.stroke_width(2);
    if i % 2 == 0 {
        chart
            .draw_series(LineSeries::new(points, style))
            .map_err(fail)?;
    } else {
        chart
            .draw_series(DashedLineSeries::new(points, 6, 4, style))
            .map_err(fail)?;
    }
    Ok(Mark::Line(color, i % 2 == 1))
}

/// The legend, in the column right of a panel's chart (so it never hides data).
fn legend(area: &Area<'_>, entries: &[(String, Mark)]) -> Result<(), PlotError> {
    let font = ("sans-serif", 15)
        .into_font()
        .color(&BLACK)
        .pos(text_anchor::Pos::new(
            text_anchor::HPos::Left,
            text_anchor::VPos::Center,
        ));
    for (k, (label, mark)) in entries.iter().enumerate() {
        let y = 50 + 20 * k as i32;
        match *mark {
            Mark::Line(c, false) => {
                area.draw(&PathElement::new(vec![(6, y), (30, y)], c.stroke_width(2)))
            }
            Mark::Line(c, true) => area
                .draw(&PathElement::new(vec![(6, y), (14, y)], c.stroke_width(2)))
                .and_then(|()| {
                    area.draw(&PathElement::new(vec![(20, y), (30, y)], c.stroke_width(2)))
                }),
            Mark::Triangle(c) => area.draw(&TriangleMarker::new((18, y), 5, c.filled())),
            Mark::Cross(c) => area.draw(&Cross::new((18, y), 4, c.stroke_width(2))),
            Mark::Circle(c, filled) => {
                let style = if filled {
                    c.filled()
                } else {
                    c.stroke_width(2)
                };
                area.draw(&Circle::new((18, y), 4, style))
            }
        }
        .map_err(fail)?;
        area.draw(&Text::new(label.clone(), (38, y), font.clone()))
            .map_err(fail)?;
    }
    Ok(())
}

/// Draws `runs` (at least one) as an SVG document under `title`; see the
/// [module docs](self) for what is drawn. The same runs give the same bytes.
pub fn svg(title: &str, runs: &[Run<'_>]) -> Result<String, PlotError> {
    if runs.is_empty() {
        return Err(PlotError("no run to draw".into()));
    }
    let end = runs
        .iter()
        .map(|r| r.report.ended_at.since_origin().as_secs_f64())
        .fold(0.0, f64::max)
        .max(1e-3);
    let axis = Axis {
        dt: end / COLUMNS as f64,
    };
    let top = |f: fn(&SimReport) -> f64| runs.iter().map(|r| f(r.report)).fold(0.0, f64::max);
    let peak = top(|r| r.peak_children as f64);
    let peak_queue = top(|r| r.peak_queue as f64);
    let peak_wait = top(|r| r.wait_max().unwrap_or_default().as_secs_f64() * 1e3);
    let peaks = runs
        .iter()
        .map(|r| format!("{} {}", r.label, r.report.peak_children))
        .collect::<Vec<_>>()
        .join(", ");

    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(fail)?;
        let root = root.titled(title, ("sans-serif", 26)).map_err(fail)?;
        let (children, rest) = root.split_vertically(420);
        let (queue, wait) = rest.split_vertically(210);

        // Children by state, with the spawns and retirements.
        let (plot, side) = children.split_horizontally(PLOT_WIDTH);
        let mut chart = axes(
            &plot,
            &format!("children by state (peak: {peaks})"),
            "children",
            end,
            peak,
        )?;
        let mut entries = Vec::new();
        for (i, run) in runs.iter().enumerate() {
            for (name, color, f) in STATES {
                let mark = line(&mut chart, i, color, column_max(run.report, axis, f))?;
                entries.push((format!("{}: {name}", run.label), mark));
            }
            let spawns = marks(run.report, axis, &[PoolEventKind::Spawn]);
            let style = SPAWN.filled();
            chart
                .draw_series(spawns.into_iter().map(|p| TriangleMarker::new(p, 5, style)))
                .map_err(fail)?;
            entries.push((format!("{}: spawn", run.label), Mark::Triangle(SPAWN)));
            let kinds = [PoolEventKind::Retire, PoolEventKind::Kill];
            let retires = marks(run.report, axis, &kinds);
            let style = RETIRE.stroke_width(2);
            // Crosses for even runs, circles for odd ones: both visible where they meet.
            let mark = if i % 2 == 0 {
                chart
                    .draw_series(retires.into_iter().map(|p| Cross::new(p, 4, style)))
                    .map_err(fail)?;
                Mark::Cross(RETIRE)
            } else {
                chart
                    .draw_series(retires.into_iter().map(|p| Circle::new(p, 4, style)))
                    .map_err(fail)?;
                Mark::Circle(RETIRE, false)
            };
            entries.push((format!("{}: retire", run.label), mark));
        }
        legend(&side, &entries)?;

        // The listen queue.
        let (plot, side) = queue.split_horizontally(PLOT_WIDTH);
        let mut chart = axes(&plot, "queue length", "requests", end, peak_queue)?;
        let mut entries = Vec::new();
        for (i, run) in runs.iter().enumerate() {
            let points = column_max(run.report, axis, |s| s.queue);
            let mark = line(&mut chart, i, QUEUE, points)?;
            entries.push((format!("{}: queue", run.label), mark));
        }
        legend(&side, &entries)?;

        // The queue wait, at the time a child took the request.
        let (plot, side) = wait.split_horizontally(PLOT_WIDTH);
        let caption = "queue wait (longest of the requests taken)";
        let mut chart = axes(&plot, caption, "wait (ms)", end, peak_wait)?;
        let mut entries = Vec::new();
        for (i, run) in runs.iter().enumerate() {
            let points = column_wait(run.report, axis);
            // Points, not a line: columns with no request taken have no wait.
            let mark = if i % 2 == 0 {
                let style = WAIT.filled();
                chart
                    .draw_series(points.into_iter().map(|p| Circle::new(p, 3, style)))
                    .map_err(fail)?;
                Mark::Circle(WAIT, true)
            } else {
                let style = WAIT.stroke_width(2);
                chart
                    .draw_series(points.into_iter().map(|p| Cross::new(p, 3, style)))
                    .map_err(fail)?;
                Mark::Cross(WAIT)
            };
            entries.push((format!("{}: wait", run.label), mark));
        }
        legend(&side, &entries)?;
        root.present().map_err(fail)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Sim, Workload};
    use crate::{Machine, Options, Time};

    fn burst_report(prefork: usize) -> SimReport {
        let work = Workload::burst(30, Time::from_secs(1), Duration::from_millis(300));
        let opts = Options {
            prefork,
            ..Options::default()
        };
        Sim::new(Machine::new(opts).unwrap(), work)
            .run_to_completion(Duration::from_secs(3))
            .as_ref()
            .clone()
    }

    #[test]
    fn column_max_keeps_spikes_and_holds_values() {
        let r = burst_report(3);
        let axis = Axis {
            dt: r.ended_at.since_origin().as_secs_f64() / COLUMNS as f64,
        };
        let alive = column_max(&r, axis, |s| s.alive);
        let top = alive.iter().map(|p| p.1).fold(0.0, f64::max);
        assert_eq!(top, r.peak_children as f64);
        // Before the burst the pool holds 3 in every column.
        let before: Vec<_> = alive.iter().filter(|p| p.0 > 0.1 && p.0 < 0.9).collect();
        assert!(!before.is_empty() && before.iter().all(|p| p.1 == 3.0));
        let spawns = marks(&r, axis, &[PoolEventKind::Spawn]);
        assert!(!spawns.is_empty() && spawns.len() <= r.spawns as usize);
        let waits = column_wait(&r, axis);
        let most = waits.iter().map(|p| p.1).fold(0.0, f64::max);
        assert_eq!(most, r.wait_max().unwrap().as_secs_f64() * 1e3);
    }

    #[test]
    fn draws_every_series_of_every_run_deterministically() {
        let (a, b) = (burst_report(3), burst_report(10));
        let runs = [
            Run {
                label: "three",
                report: &a,
            },
            Run {
                label: "ten",
                report: &b,
            },
        ];
        let svg1 = svg("two", &runs).unwrap();
        assert_eq!(svg1, svg("two", &runs).unwrap());
        for label in ["three", "ten"] {
            for series in [
                "alive", "busy", "idle", "starting", "retiring", "spawn", "retire", "queue", "wait",
            ] {
                // plotters writes a text element's contents on a line of its own.
                let text = format!("\n{label}: {series}\n");
                assert!(svg1.contains(&text), "{text} missing");
            }
        }
        assert!(svg1.contains(&format!(
            "peak: three {}, ten {}",
            a.peak_children, b.peak_children
        )));
        assert_eq!(
            svg("none", &[]).unwrap_err().to_string(),
            "cannot draw the chart: no run to draw"
        );
    }
}
