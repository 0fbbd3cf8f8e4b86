//! The state diagram in `docs/architecture.md` is `preforkd::TRANSITIONS`, drawn.
//!
//! The test reads the one mermaid `stateDiagram-v2` block of the document and
//! fails, listing every difference, if an edge is missing or extra (in either
//! direction; a pair of states has one edge per cause in the table), a label is
//! not the transition's cause, a state name is unknown, a
//! line is not a transition, or the start and end markers (`[*] --> Init`,
//! `Stopped --> [*]`) are wrong. On failure it also prints the block as it should be.

use preforkd::{Machine, Options, State, TRANSITIONS};
use std::collections::{BTreeMap, BTreeSet};

const DOC: &str = "docs/architecture.md";

/// One end of an edge: a state, or mermaid's `[*]` (start or end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Star,
    State(State),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Edge {
    from: Node,
    to: Node,
    label: Option<String>,
    /// Line number in the document (1-based).
    line: usize,
}

fn known_states() -> String {
    State::ALL
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn node(token: &str, line: usize) -> Result<Node, String> {
    if token == "[*]" {
        return Ok(Node::Star);
    }
    State::ALL
        .iter()
        .find(|s| s.name() == token)
        .map(|&s| Node::State(s))
        .ok_or_else(|| {
            format!(
                "line {line}: unknown state `{token}` (known: [*], {})",
                known_states()
            )
        })
}

/// The lines of the single mermaid block that holds a `stateDiagram-v2`, with their
/// line numbers in the document.
fn state_diagram_block(md: &str) -> Result<Vec<(usize, &str)>, String> {
    let mut blocks: Vec<Vec<(usize, &str)>> = Vec::new();
    let mut current: Option<(usize, Vec<(usize, &str)>)> = None;
    for (i, raw) in md.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        match current.as_mut() {
            None => {
                if trimmed.starts_with("```") && trimmed[3..].trim() == "mermaid" {
                    current = Some((line, Vec::new()));
                }
            }
            Some((_, body)) => {
                if trimmed.starts_with("```") {
                    let (_, body) = current.take().expect("inside a block");
                    blocks.push(body);
                } else {
                    body.push((line, raw));
                }
            }
        }
    }
    if let Some((start, _)) = current {
        return Err(format!(
            "the mermaid block opened at line {start} is never closed"
        ));
    }
    let mut diagrams: Vec<Vec<(usize, &str)>> = blocks
        .into_iter()
        .filter(|b| {
            b.iter()
                .map(|(_, l)| l.trim())
                .find(|l| !l.is_empty() && !l.starts_with("%%"))
                .is_some_and(|l| l.starts_with("stateDiagram"))
        })
        .collect();
    match diagrams.len() {
        1 => Ok(diagrams.remove(0)),
        0 => Err("no ```mermaid block with a stateDiagram-v2".into()),
        n => Err(format!(
            "{n} ```mermaid blocks hold a state diagram; expected exactly one"
        )),
    }
}

/// Parses the diagram's lines strictly: the header, then only transitions
/// (`From --> To` or `From --> To: label`), blank lines, `%%` comments and a
/// `direction` line. Collects every problem instead of stopping at the first.
fn parse(block: &[(usize, &str)]) -> (Vec<Edge>, Vec<String>) {
    let mut edges = Vec::new();
    let mut problems = Vec::new();
    let mut header = false;
    for &(line, raw) in block {
        let text = raw.trim();
        if text.is_empty() || text.starts_with("%%") {
            continue;
        }
        if !header {
            if text != "stateDiagram-v2" {
                problems.push(format!(
                    "line {line}: expected `stateDiagram-v2` as the first line, found `{text}`"
                ));
            }
            header = true;
            continue;
        }
        if let Some(dir) = text.strip_prefix("direction ") {
            if !matches!(dir.trim(), "LR" | "RL" | "TB" | "BT") {
                problems.push(format!("line {line}: unknown direction `{}`", dir.trim()));
            }
            continue;
        }
        let Some((lhs, rhs)) = text.split_once("-->") else {
            problems.push(format!(
                "line {line}: not a transition (`From --> To: cause`): `{text}`"
            ));
            continue;
        };
        let (to, label) = match rhs.split_once(':') {
            Some((to, label)) => (to, Some(label.trim())),
            None => (rhs, None),
        };
        let (from, to) = (lhs.trim(), to.trim());
        let mut bad = false;
        for token in [from, to] {
            if token.is_empty() || token.contains(char::is_whitespace) || token.contains("--") {
                problems.push(format!("line {line}: malformed transition `{text}`"));
                bad = true;
                break;
            }
        }
        if bad {
            continue;
        }
        if label == Some("") {
            problems.push(format!("line {line}: empty label after `:` in `{text}`"));
            continue;
        }
        match (node(from, line), node(to, line)) {
            (Ok(from), Ok(to)) => edges.push(Edge {
                from,
                to,
                label: label.map(str::to_string),
                line,
            }),
            (from, to) => problems.extend(from.err().into_iter().chain(to.err())),
        }
    }
    if !header {
        problems.push("the state diagram block is empty".into());
    }
    (edges, problems)
}

/// The states with no transition out: the ones that must lead to `[*]`.
fn terminal_states() -> BTreeSet<State> {
    State::ALL
        .iter()
        .copied()
        .filter(|&s| !TRANSITIONS.iter().any(|&(from, _, _)| from == s))
        .collect()
}

/// The diagram `TRANSITIONS` calls for, to paste into the document.
fn expected_block() -> String {
    let initial = Machine::new(Options::default())
        .expect("default options are valid")
        .state();
    let mut out = String::from("```mermaid\nstateDiagram-v2\n");
    out += &format!("    [*] --> {}\n", initial.name());
    for &(from, to, cause) in TRANSITIONS {
        out += &format!("    {} --> {}: {cause}\n", from.name(), to.name());
    }
    for s in terminal_states() {
        out += &format!("    {} --> [*]\n", s.name());
    }
    out += "```\n";
    out
}

/// Every difference between the document's diagram and `TRANSITIONS`.
fn check(md: &str) -> Result<(), Vec<String>> {
    let block = state_diagram_block(md).map_err(|e| vec![e])?;
    let (edges, mut problems) = parse(&block);

    // A pair of states may have several rows, one per cause.
    let mut expected: BTreeMap<(State, State), Vec<&str>> = BTreeMap::new();
    for &(from, to, cause) in TRANSITIONS {
        expected.entry((from, to)).or_default().push(cause);
    }
    let initial = Machine::new(Options::default())
        .expect("default options are valid")
        .state();
    let terminal = terminal_states();

    let mut drawn: BTreeMap<(State, State), Vec<&Edge>> = BTreeMap::new();
    let mut starts = Vec::new();
    let mut ends = BTreeSet::new();
    for e in &edges {
        match (e.from, e.to) {
            (Node::Star, Node::Star) => problems.push(format!(
                "line {}: `[*] --> [*]` is not a transition",
                e.line
            )),
            (Node::Star, Node::State(s)) => {
                if let Some(label) = &e.label {
                    problems.push(format!(
                        "line {}: the start marker takes no label, found `{label}`",
                        e.line
                    ));
                }
                starts.push((s, e.line));
            }
            (Node::State(s), Node::Star) => {
                if let Some(label) = &e.label {
                    problems.push(format!(
                        "line {}: an end marker takes no label, found `{label}`",
                        e.line
                    ));
                }
                if !ends.insert(s) {
                    problems.push(format!(
                        "line {}: `{} --> [*]` drawn twice",
                        e.line,
                        s.name()
                    ));
                }
                if !terminal.contains(&s) {
                    problems.push(format!(
                        "line {}: `{} --> [*]`, but {} has transitions out (only states without any end)",
                        e.line,
                        s.name(),
                        s.name()
                    ));
                }
            }
            (Node::State(from), Node::State(to)) => {
                let same = drawn.entry((from, to)).or_default();
                if let Some(first) = same.iter().find(|d| d.label == e.label) {
                    problems.push(format!(
                        "line {}: `{} --> {}` drawn twice (first at line {})",
                        e.line,
                        from.name(),
                        to.name(),
                        first.line
                    ));
                }
                same.push(e);
            }
        }
    }

    match starts.as_slice() {
        [(s, _)] if *s == initial => {}
        [] => problems.push(format!(
            "no start marker: expected `[*] --> {}`",
            initial.name()
        )),
        _ => {
            for (s, line) in &starts {
                if *s != initial || starts.len() > 1 {
                    problems.push(format!(
                        "line {line}: `[*] --> {}`; expected exactly one start marker, `[*] --> {}`",
                        s.name(),
                        initial.name()
                    ));
                }
            }
        }
    }
    for s in terminal.difference(&ends) {
        problems.push(format!(
            "no end marker for {0}: expected `{0} --> [*]`",
            s.name()
        ));
    }

    for (&(from, to), causes) in &expected {
        let edges = drawn.get(&(from, to)).map(Vec::as_slice).unwrap_or(&[]);
        let says = causes
            .iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(" or ");
        let mut mislabelled = false;
        for e in edges {
            if !e.label.as_deref().is_some_and(|l| causes.contains(&l)) {
                mislabelled = true;
                problems.push(format!(
                    "line {}: `{} --> {}` is labelled {:?}; TRANSITIONS says {says}",
                    e.line,
                    from.name(),
                    to.name(),
                    e.label.as_deref().unwrap_or("(nothing)")
                ));
            }
        }
        // A mislabelled edge is reported as such, not also as a missing one.
        for cause in causes {
            let drawn_right = edges.iter().any(|e| e.label.as_deref() == Some(*cause));
            if !drawn_right && !mislabelled {
                problems.push(format!(
                    "in TRANSITIONS but not in the diagram: `{} --> {}: {cause}`",
                    from.name(),
                    to.name()
                ));
            }
        }
    }
    for (&(from, to), edges) in &drawn {
        if !expected.contains_key(&(from, to)) {
            for e in edges {
                problems.push(format!(
                    "line {}: in the diagram but not in TRANSITIONS: `{} --> {}`",
                    e.line,
                    from.name(),
                    to.name()
                ));
            }
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[test]
fn the_diagram_is_the_transition_table() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DOC);
    let md = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    if let Err(problems) = check(&md) {
        panic!(
            "the state diagram in {DOC} differs from preforkd::TRANSITIONS:\n  - {}\n\nThe diagram should read:\n\n{}",
            problems.join("\n  - "),
            expected_block()
        );
    }
}

// ----- the checker itself: it must catch every kind of drift -----

fn doc_with(block: &str) -> String {
    format!("# Doc\n\nText.\n\n{block}\nMore text.\n")
}

fn expect_problem(block: &str, needle: &str) {
    match check(&doc_with(block)) {
        Ok(()) => panic!("accepted a diagram that should fail ({needle}):\n{block}"),
        Err(problems) => assert!(
            problems.iter().any(|p| p.contains(needle)),
            "expected a problem mentioning {needle:?}, got {problems:#?}"
        ),
    }
}

#[test]
fn the_generated_diagram_passes() {
    check(&doc_with(&expected_block())).unwrap();
}

#[test]
fn other_mermaid_blocks_are_ignored() {
    let md = format!(
        "```mermaid\nflowchart LR\n    a --> b\n```\n\n{}",
        expected_block()
    );
    check(&md).unwrap();
}

#[test]
fn a_misspelled_state_fails() {
    let block = expected_block().replace("Serving --> ShuttingDown", "Servng --> ShuttingDown");
    expect_problem(&block, "unknown state `Servng`");
}

#[test]
fn a_missing_edge_fails() {
    let block = expected_block().replace("    Init --> Stopped: after_init failed\n", "");
    expect_problem(
        &block,
        "in TRANSITIONS but not in the diagram: `Init --> Stopped",
    );
}

#[test]
fn an_extra_edge_fails() {
    let block = expected_block().replace(
        "    [*] --> Init\n",
        "    [*] --> Init\n    Serving --> Init: oops\n",
    );
    expect_problem(
        &block,
        "in the diagram but not in TRANSITIONS: `Serving --> Init`",
    );
}

#[test]
fn a_reversed_edge_fails_both_ways() {
    let block = expected_block().replace(
        "Spawning --> Serving: initial children ready",
        "Serving --> Spawning: initial children ready",
    );
    expect_problem(&block, "not in the diagram: `Spawning --> Serving");
    expect_problem(&block, "not in TRANSITIONS: `Serving --> Spawning`");
}

#[test]
fn a_wrong_label_fails() {
    let block = expected_block().replace("after_init failed", "after_init crashed");
    expect_problem(&block, "TRANSITIONS says \"after_init failed\"");
    let block = expected_block().replace(": all children reaped", "");
    expect_problem(&block, "labelled \"(nothing)\"");
}

#[test]
fn a_malformed_line_fails() {
    let block = expected_block().replace("Init --> Spawning", "Init -> Spawning");
    expect_problem(&block, "not a transition");
    let block = expected_block().replace("Init --> Spawning", "Init ---> Spawning");
    expect_problem(&block, "malformed transition");
    let block = expected_block().replace("stateDiagram-v2", "stateDiagram");
    expect_problem(&block, "expected `stateDiagram-v2`");
}

#[test]
fn a_duplicate_edge_fails() {
    let block = expected_block().replace(
        "    [*] --> Init\n",
        "    [*] --> Init\n    Init --> Spawning: after_init done\n",
    );
    expect_problem(&block, "drawn twice");
}

#[test]
fn wrong_start_and_end_markers_fail() {
    let block = expected_block().replace("[*] --> Init", "[*] --> Serving");
    expect_problem(&block, "expected exactly one start marker");
    let block = expected_block().replace("    [*] --> Init\n", "");
    expect_problem(&block, "no start marker");
    let block = expected_block().replace("    Stopped --> [*]\n", "");
    expect_problem(&block, "no end marker for Stopped");
    let block = expected_block().replace("Stopped --> [*]", "Serving --> [*]");
    expect_problem(&block, "Serving has transitions out");
}

#[test]
fn each_cause_of_a_pair_is_its_own_edge() {
    // ShuttingDown --> ShuttingDown has two rows: both must be drawn...
    let block = expected_block().replace(
        "    ShuttingDown --> ShuttingDown: graceful_timeout passed: KILL\n",
        "",
    );
    expect_problem(
        &block,
        "not in the diagram: `ShuttingDown --> ShuttingDown: graceful_timeout passed: KILL`",
    );
    // ...and a third, with a cause the table does not have, is not.
    let block = expected_block().replace(
        "    [*] --> Init\n",
        "    [*] --> Init\n    ShuttingDown --> ShuttingDown: third TERM\n",
    );
    expect_problem(
        &block,
        "is labelled \"third TERM\"; TRANSITIONS says \"second TERM/QUIT: immediate\" or \"graceful_timeout passed: KILL\"",
    );
}

#[test]
fn zero_or_two_diagrams_fail() {
    expect_problem(
        "```mermaid\nflowchart LR\n    a --> b\n```\n",
        "no ```mermaid block",
    );
    let two = format!("{}\n{}", expected_block(), expected_block());
    expect_problem(&two, "expected exactly one");
    expect_problem("```mermaid\nstateDiagram-v2\n", "never closed");
}
