//! `preforkd simulate`: the real binary, its summary, its SVG (parsed as XML)
//! and its refusals, checked against the library's own simulation of the same
//! inputs.

use preforkd::policy::Registry;
use preforkd::sim::{Sim, SimReport, Workload};
use preforkd::{Machine, Options};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The states the children panel draws, with their colours in the SVG.
const STATES: [(&str, &str); 5] = [
    ("alive", "#222222"),
    ("busy", "#D62728"),
    ("idle", "#2CA02C"),
    ("starting", "#1F77B4"),
    ("retiring", "#FF7F0E"),
];

/// A fresh, empty directory for one test.
fn tempdir(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("preforkd-sim-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn simulate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_preforkd"))
        .arg("simulate")
        .args(args)
        .output()
        .expect("preforkd runs")
}

fn ok(args: &[&str]) -> String {
    let out = simulate(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The summary table's rows, as column name → cell, by policy label.
fn summary(stdout: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let lines: Vec<&str> = stdout.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.starts_with("policy "))
        .unwrap_or_else(|| panic!("no table in {stdout}"));
    // Column names have single spaces; columns are two or more apart.
    let split = |l: &str| -> Vec<String> {
        l.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect()
    };
    let names = split(lines[head]);
    lines[head + 1..]
        .iter()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            let cells = split(l);
            assert_eq!(cells.len(), names.len(), "row {l:?}");
            let row: BTreeMap<String, String> = names.iter().cloned().zip(cells).collect();
            (row["policy"].clone(), row)
        })
        .collect()
}

/// What the library measures for the default policy, configured as the
/// command does by default (the Registry's `elastic` from an empty file, the
/// default options and simulator, 10 s of linger).
fn library_run(spec: &str) -> SimReport {
    let mut de = <dyn erased_serde::Deserializer>::erase(toml::Value::Table(toml::Table::new()));
    let policy = Registry::with_builtins()
        .scaling("elastic", &mut de)
        .unwrap();
    let machine = Machine::builder(Options::default())
        .scaling_policy(policy)
        .build()
        .unwrap();
    let work = Workload::from_spec(spec, |p| std::fs::read_to_string(p)).unwrap();
    let mut sim = Sim::new(machine, work);
    sim.run_to_completion(Duration::from_secs(10));
    sim.into_report()
}

/// The SVG's text elements (trimmed) and its elements by name.
struct Svg {
    texts: Vec<String>,
    elements: BTreeMap<String, usize>,
    /// How many elements are stroked with each colour.
    strokes: BTreeMap<String, usize>,
}

fn read_svg(path: &Path) -> Svg {
    let text = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the SVG is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    let mut svg = Svg {
        texts: Vec::new(),
        elements: BTreeMap::new(),
        strokes: BTreeMap::new(),
    };
    for n in root.descendants().filter(|n| n.is_element()) {
        *svg.elements
            .entry(n.tag_name().name().to_string())
            .or_default() += 1;
        if let Some(stroke) = n.attribute("stroke") {
            *svg.strokes.entry(stroke.to_string()).or_default() += 1;
        }
        if n.tag_name().name() == "text" {
            svg.texts
                .push(n.text().unwrap_or_default().trim().to_string());
        }
    }
    svg
}

impl Svg {
    fn has_text(&self, t: &str) -> bool {
        self.texts.iter().any(|x| x == t)
    }
    fn count(&self, element: &str) -> usize {
        self.elements.get(element).copied().unwrap_or(0)
    }
}

#[test]
fn a_burst_under_the_default_policy_draws_its_series_and_sums_up_as_the_library_does() {
    let dir = tempdir("burst");
    let out = dir.join("burst.svg");
    let stdout = ok(&["--workload", "burst:140x1s", "--svg", out.to_str().unwrap()]);
    let lib = library_run("burst:140x1s");
    assert_eq!(lib.completed, 140);
    assert!(
        lib.peak_children > 100,
        "the pool grew: {}",
        lib.peak_children
    );

    assert!(
        stdout.starts_with("workload: burst:140x1s,at=1s (140 requests), then 10s of linger\n"),
        "{stdout}"
    );
    let rows = summary(&stdout);
    assert_eq!(rows.len(), 1, "{stdout}");
    let row = &rows["elastic"];
    assert_eq!(row["completed"], "140");
    assert_eq!(row["peak children"], lib.peak_children.to_string());
    assert_eq!(row["spawns"], lib.spawns.to_string());
    assert_eq!(row["retirements"], lib.retirements.to_string());
    assert_eq!(row["child-seconds"], format!("{:.1}", lib.child_seconds()));
    let ms = |d: Option<Duration>| format!("{:.1}ms", d.unwrap().as_secs_f64() * 1e3);
    assert_eq!(row["p50 wait"], ms(lib.wait_p50()));
    assert_eq!(row["p99 wait"], ms(lib.wait_p99()));
    assert!(
        stdout.ends_with(&format!("\nchart: {}\n", out.display())),
        "{stdout}"
    );

    let svg = read_svg(&out);
    assert!(
        svg.has_text("burst:140x1s,at=1s: elastic"),
        "{:?}",
        svg.texts
    );
    assert!(
        svg.has_text(&format!(
            "children by state (peak: elastic {})",
            lib.peak_children
        )),
        "{:?}",
        svg.texts
    );
    for series in [
        "alive", "busy", "idle", "starting", "retiring", "spawn", "retire", "queue", "wait",
    ] {
        let label = format!("elastic: {series}");
        assert!(svg.has_text(&label), "no legend entry {label:?}");
    }
    for caption in ["queue length", "queue wait (longest of the requests taken)"] {
        assert!(svg.has_text(caption), "no panel {caption:?}");
    }
    // One solid line per state (and its legend sample), in the state's colour.
    for (state, colour) in STATES {
        let n = svg.strokes.get(colour).copied().unwrap_or(0);
        assert!(n >= 2, "{state} ({colour}): {n} stroked elements");
    }
    // 5 states and the queue, each a line and a legend sample: at least 12.
    assert!(svg.count("polyline") >= 12, "{:?}", svg.elements);
    // Spawn marks are triangles: a burst makes several columns of them.
    assert!(svg.count("polygon") >= 3, "{:?}", svg.elements);
    // Wait points are circles.
    assert!(svg.count("circle") >= 2, "{:?}", svg.elements);
}

#[test]
fn compare_draws_both_policies_on_one_chart() {
    let dir = tempdir("compare");
    let (one, two) = (dir.join("one.svg"), dir.join("two.svg"));
    ok(&[
        "--workload",
        "burst:60x500ms",
        "--svg",
        one.to_str().unwrap(),
    ]);
    let stdout = ok(&[
        "--workload",
        "burst:60x500ms",
        "--compare",
        "apache_like",
        "--svg",
        two.to_str().unwrap(),
    ]);
    let rows = summary(&stdout);
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        ["apache_like", "elastic"],
        "{stdout}"
    );
    assert_eq!(rows["elastic"]["completed"], "60");
    assert_eq!(rows["apache_like"]["completed"], "60");
    // The default policy's row is the same alone and compared.
    assert_eq!(
        summary(&ok(&["--workload", "burst:60x500ms"]))["elastic"],
        rows["elastic"]
    );

    let (one, two) = (read_svg(&one), read_svg(&two));
    assert!(two.has_text("burst:60x500ms,at=1s: elastic vs apache_like"));
    for label in ["elastic", "apache_like"] {
        for series in [
            "alive", "busy", "idle", "starting", "retiring", "queue", "wait",
        ] {
            let entry = format!("{label}: {series}");
            assert!(two.has_text(&entry), "no legend entry {entry:?}");
        }
    }
    assert!(!one.has_text("apache_like: busy"));
    // The second run's lines are dashed: many more line pieces than one run has.
    assert!(
        two.count("polyline") > 2 * one.count("polyline"),
        "{} vs {}",
        two.count("polyline"),
        one.count("polyline")
    );
}

#[test]
fn the_same_inputs_give_the_same_bytes() {
    let dir = tempdir("same");
    let (a, b) = (dir.join("a.svg"), dir.join("b.svg"));
    let args = |p: &Path| {
        vec![
            "--workload".to_string(),
            "poisson:200/s,20ms,for=5s".to_string(),
            "--compare".into(),
            "fixed".into(),
            "--svg".into(),
            p.to_str().unwrap().to_string(),
        ]
    };
    let run = |p: &Path| {
        let a = args(p);
        ok(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (out_a, out_b) = (run(&a), run(&b));
    assert_eq!(
        out_a.replace(a.to_str().unwrap(), "OUT"),
        out_b.replace(b.to_str().unwrap(), "OUT")
    );
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn policy_files_and_traces_are_read() {
    let dir = tempdir("files");
    let fixed = dir.join("fixed.toml");
    std::fs::write(&fixed, "children = 5\n").unwrap();
    let elastic = dir.join("elastic.toml");
    std::fs::write(&elastic, "prefork = 2\nmax_children = 4\n").unwrap();
    let trace = dir.join("t.csv");
    std::fs::write(&trace, "arrival,service\n0.5,1s\n1.5,250ms\n1.5,250ms\n").unwrap();
    let spec = format!("trace:{}", trace.display());
    let stdout = ok(&[
        "--workload",
        &spec,
        "--policy",
        "fixed",
        "--policy-config",
        fixed.to_str().unwrap(),
        "--compare",
        "elastic",
        "--compare-config",
        elastic.to_str().unwrap(),
        "--linger",
        "1s",
    ]);
    let rows = summary(&stdout);
    let fixed_row = &rows[&format!("fixed ({})", fixed.display())];
    assert_eq!(fixed_row["completed"], "3");
    assert_eq!(fixed_row["peak children"], "5");
    assert_eq!(fixed_row["spawns"], "5");
    assert_eq!(fixed_row["p99 wait"], "0.0ms");
    let elastic_row = &rows[&format!("elastic ({})", elastic.display())];
    assert!(elastic_row["peak children"].parse::<usize>().unwrap() <= 4);
    assert!(
        stdout.contains(" (3 requests), then 1s of linger"),
        "{stdout}"
    );
}

#[test]
fn refusals_say_why_with_the_usage_or_config_exit_code() {
    let dir = tempdir("refusals");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let bad_type = write("type.toml", "prefork = \"x\"\n");
    let unknown_key = write("key.toml", "prefork = 2\nwat = 1\n");
    let invalid = write("invalid.toml", "prefork = 9\nmax_children = 3\n");
    let not_toml = write("syntax.toml", "prefork = \n");
    let bad_row = write("t.csv", "arrival,service\n1,1\n2,soon\n");
    let missing = dir.join("missing.toml").to_str().unwrap().to_string();
    let bad_trace = format!("trace:{bad_row}");
    let missing_trace = format!("trace:{}", dir.join("gone.csv").display());
    let cases: Vec<(Vec<&str>, i32, String)> = vec![
        // Neither a device that never ends nor a directory is read.
        (
            vec!["--workload", "trace:/dev/zero"],
            78,
            "not a regular file".into(),
        ),
        (
            vec!["--workload", "trace:/tmp"],
            78,
            "not a regular file".into(),
        ),
        (
            vec!["--workload", "burst:1x1s", "--policy", "apache"],
            64,
            "unknown scaling policy \"apache\" (known: apache_like, elastic, fixed)".into(),
        ),
        (
            vec!["--workload", "burst:1x1s", "--compare", "nope", "--policy-config", &missing],
            64,
            "unknown scaling policy \"nope\"".into(),
        ),
        (
            vec!["--workload", "bursts:140x1s"],
            64,
            "workload \"bursts:140x1s\": unknown kind \"bursts\" (known: burst, poisson, ramp, trace)".into(),
        ),
        (
            vec!["--workload", "poisson:300,50ms"],
            64,
            "must be requests per second, like 300/s".into(),
        ),
        (vec!["--policy", "elastic"], 64, "--workload <SPEC>".into()),
        (
            vec!["--workload", "burst:1x1s", "--linger", "forever"],
            64,
            "--linger".into(),
        ),
        (
            vec!["--workload", "burst:1x1s", "--policy-config", &bad_type],
            78,
            format!("--policy-config {bad_type}: cannot read elastic policy configuration: invalid type: string \"x\", expected usize in `prefork`"),
        ),
        (
            vec!["--workload", "burst:1x1s", "--policy-config", &unknown_key],
            78,
            "unknown field `wat`".into(),
        ),
        (
            vec!["--workload", "burst:1x1s", "--policy-config", &invalid],
            78,
            "invalid elastic policy configuration: prefork (9) exceeds max_children (3)".into(),
        ),
        (
            vec!["--workload", "burst:1x1s", "--policy-config", &not_toml],
            78,
            "TOML parse error at line 1".into(),
        ),
        (
            vec!["--workload", "burst:1x1s", "--policy-config", &missing],
            78,
            format!("--policy-config {missing}: No such file"),
        ),
        (
            vec!["--workload", "burst:1x1s", "--policy", "fixed", "--policy-config", &unknown_key],
            78,
            "unknown key \"prefork\" for the fixed policy (it has one: children)".into(),
        ),
        (
            vec!["--workload", &bad_trace],
            78,
            format!("trace {bad_row}, line 3: service: \"soon\" is not a duration"),
        ),
        (
            vec!["--workload", &missing_trace],
            78,
            "cannot read it: No such file".into(),
        ),
    ];
    for (args, code, message) in cases {
        let out = simulate(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(&message), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed a summary");
    }
    // An unwritable chart is a failure, after the simulation.
    let out = simulate(&[
        "--workload",
        "burst:1x1s",
        "--svg",
        "/nonexistent/dir/x.svg",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot write /nonexistent/dir/x.svg: No such file"));
}

/// The README's picture and table are what its documented command gives now.
#[test]
fn the_readme_picture_and_table_come_from_its_command() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let image = "docs/img/simulate-burst.svg";
    assert!(
        readme.contains(&format!("]({image})")),
        "the README embeds {image}"
    );
    let prefix = "cargo run --bin preforkd -- simulate ";
    let command = readme
        .lines()
        .find(|l| l.starts_with(prefix) && l.contains(image))
        .unwrap_or_else(|| panic!("no `{prefix}... {image}` line in the README"));
    let dir = tempdir("readme");
    let fresh = dir.join("fresh.svg");
    let args: Vec<String> = command[prefix.len()..]
        .split_whitespace()
        .map(|a| {
            if a == image {
                fresh.to_str().unwrap().to_string()
            } else {
                a.to_string()
            }
        })
        .collect();
    let stdout = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let committed = std::fs::read(root.join(image)).unwrap();
    assert!(
        std::fs::read(&fresh).unwrap() == committed,
        "{image} is stale: rerun `{command}`"
    );
    // The README shows the output (with the image's path, as the command gives it).
    let shown = stdout.replace(fresh.to_str().unwrap(), image);
    let block = format!("which prints\n\n```text\n{shown}```\n");
    assert!(
        readme.contains(&block),
        "the README's table is stale; the command prints:\n{shown}"
    );
}
