//! The supervisor core, the policies, the simulator and the oracle stay sans-IO
//! and deterministic.
//!
//! Every `.rs` file under `src/supervisor/`, `policies/src/`, `src/sim/` and
//! `src/oracle/` is read, its comments (`//`, `///`, `//!`, `/* */`) and the
//! contents of its string and char literals removed, and the code that remains is
//! split into tokens. The test fails, naming each file and line, if that code
//! mentions:
//!
//! - a crate that makes system calls or starts threads: `nix::`, `libc`, `procfs`,
//!   `signal_hook*`, `crossbeam*`;
//! - a process, thread, file, environment or socket API of `std`: `std::thread`,
//!   `std::process`, `std::fs`, `std::env`, and the socket types `TcpStream`,
//!   `TcpListener`, `UdpSocket`, `UnixStream`, `UnixListener`, `UnixDatagram`;
//! - a clock read: `Instant::now`, `SystemTime::now`;
//! - a `HashMap` or `HashSet` (of any flavour): their iteration order is not
//!   deterministic, so the same events could give actions in another order.
//!
//! Paths are matched segment by segment, whatever the spacing or line breaks, and
//! grouped imports are expanded: `use std::{fs, net::TcpStream};` is caught as
//! `std::fs` and `std::net::TcpStream`. Comments can explain the rule freely.
//! `clippy.toml` (`disallowed-methods`) holds the same line for clock reads and
//! threads however they are imported or aliased.

use std::path::{Path, PathBuf};

/// The directories (every `.rs` file below) and files that must stay pure,
/// relative to the workspace root. The simulator and the oracle drive the machine
/// with a fake clock and fake children: I/O there would make a model test depend
/// on the machine it runs on.
const PURE_PATHS: &[&str] = &["src/supervisor", "policies/src", "src/sim", "src/oracle"];

/// Files that must be among those checked, so that a move cannot make the test
/// pass vacuously.
const MUST_SEE: &[&str] = &[
    "src/supervisor/machine/mod.rs",
    "policies/src/scaling/mod.rs",
    "src/sim/mod.rs",
    "src/oracle/harness.rs",
];

/// `std` modules the core must not use (`std::<module>`).
const STD_MODULES: &[(&str, &str)] = &[
    ("thread", "threads belong to the runtime"),
    ("process", "processes belong to the runtime"),
    ("fs", "file I/O belongs to the runtime"),
    ("env", "the environment is read by the runtime"),
];

/// Identifiers the core must not mention at all.
const IDENTS: &[(&str, &str)] = &[
    ("libc", "system calls belong to the runtime"),
    ("procfs", "reading /proc belongs to the runtime"),
    ("TcpStream", "sockets belong to the runtime"),
    ("TcpListener", "sockets belong to the runtime"),
    ("UdpSocket", "sockets belong to the runtime"),
    ("UnixStream", "sockets belong to the runtime"),
    ("UnixListener", "sockets belong to the runtime"),
    ("UnixDatagram", "sockets belong to the runtime"),
];

/// Identifier prefixes the core must not mention (crates with several names).
const IDENT_PREFIXES: &[(&str, &str)] = &[
    ("signal_hook", "signal handling belongs to the runtime"),
    ("crossbeam", "threads and channels belong to the runtime"),
];

/// Identifier substrings: any hash map or set (`HashMap`, `FxHashSet`...).
const IDENT_PARTS: &[(&str, &str)] = &[
    (
        "HashMap",
        "non-deterministic iteration order; use BTreeMap or a Vec",
    ),
    (
        "HashSet",
        "non-deterministic iteration order; use BTreeSet or a Vec",
    ),
];

/// Consecutive path segments that read a clock.
const CLOCK_READS: &[[&str; 2]] = &[["Instant", "now"], ["SystemTime", "now"]];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Open,
    Close,
    Comma,
    /// Any other punctuation.
    Punct(char),
    /// A literal (its contents are not kept).
    Lit,
}

/// Splits Rust source into the tokens that matter here, each with its line number.
/// Comments and the contents of string, byte-string, raw-string and char literals
/// produce no token (a literal produces one `Lit`), so nothing inside them can
/// match. Lifetimes are skipped.
fn tokens(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let n = c.len();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    // Advances over c[i], counting lines.
    macro_rules! bump {
        () => {{
            if c[i] == '\n' {
                line += 1;
            }
            i += 1;
        }};
    }
    while i < n {
        let ch = c[i];
        if ch == '/' && at(i + 1) == '/' {
            while i < n && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < n {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    bump!();
                }
            }
        } else if ch == '"' {
            let start = line;
            i += 1;
            while i < n && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if i < n {
                    bump!();
                }
            }
            i += 1;
            out.push((Tok::Lit, start));
        } else if ch == '\'' {
            if at(i + 1) == '\\' {
                // An escaped char literal: '\n', '\'', '\u{..}'.
                i += 3;
                while i < n && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push((Tok::Lit, line));
            } else if at(i + 2) == '\'' {
                i += 3;
                out.push((Tok::Lit, line));
            } else {
                // A lifetime or a label: skip the quote and its name.
                i += 1;
                while i < n && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
            }
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < n && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let raw_string = matches!(word.as_str(), "r" | "br" | "cr")
                && (at(i) == '"' || (at(i) == '#' && matches!(at(i + 1), '"' | '#')));
            let prefixed = matches!(word.as_str(), "b" | "c") && at(i) == '"';
            if raw_string {
                let start_line = line;
                let mut hashes = 0;
                while at(i) == '#' {
                    hashes += 1;
                    i += 1;
                }
                i += 1; // the opening quote
                loop {
                    if i >= n {
                        break;
                    }
                    if c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                        i += 1 + hashes;
                        break;
                    }
                    bump!();
                }
                out.push((Tok::Lit, start_line));
            } else if prefixed {
                // b"..." or c"...": let the string branch take it.
                continue;
            } else if word == "b" && at(i) == '\'' {
                // A byte literal: b'x', b'\n'.
                i += 1;
                if at(i) == '\\' {
                    i += 2;
                }
                while i < n && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push((Tok::Lit, line));
            } else if word == "r" && at(i) == '#' {
                // A raw identifier: r#type.
                i += 1;
                let s = i;
                while i < n && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
                out.push((Tok::Ident(c[s..i].iter().collect()), line));
            } else {
                out.push((Tok::Ident(word), line));
            }
        } else if ch == ':' && at(i + 1) == ':' {
            out.push((Tok::Sep, line));
            i += 2;
        } else if ch == '{' {
            out.push((Tok::Open, line));
            i += 1;
        } else if ch == '}' {
            out.push((Tok::Close, line));
            i += 1;
        } else if ch == ',' {
            out.push((Tok::Comma, line));
            i += 1;
        } else if ch.is_whitespace() {
            bump!();
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// A path as written, with grouped imports expanded.
#[derive(Debug)]
struct FoundPath {
    /// Its segments: `std::{fs, io}` gives `[std, fs]` and `[std, io]`.
    segs: Vec<String>,
    /// The line of its last segment.
    line: usize,
    /// The token just before the whole path (`use`, `crate`...), if a word.
    before: Option<String>,
}

/// Keywords: never part of a path (`use ::std::fs` is the path `::std::fs`).
fn is_keyword(w: &str) -> bool {
    matches!(
        w,
        "as" | "async"
            | "await"
            | "break"
            | "const"
            | "continue"
            | "crate"
            | "dyn"
            | "else"
            | "enum"
            | "extern"
            | "fn"
            | "for"
            | "if"
            | "impl"
            | "in"
            | "let"
            | "loop"
            | "match"
            | "mod"
            | "move"
            | "mut"
            | "pub"
            | "ref"
            | "return"
            | "static"
            | "struct"
            | "trait"
            | "type"
            | "unsafe"
            | "use"
            | "where"
            | "while"
    )
}

fn word(tok: Option<&(Tok, usize)>) -> Option<&str> {
    match tok {
        Some((Tok::Ident(w), _)) if !is_keyword(w) => Some(w),
        _ => None,
    }
}

/// Reads the path (or path tree) starting at the word `toks[i]`, after `prefix`,
/// into `out`; returns the index after it.
fn read_tree(
    toks: &[(Tok, usize)],
    mut i: usize,
    prefix: &[String],
    before: &Option<String>,
    out: &mut Vec<FoundPath>,
) -> usize {
    let mut segs = prefix.to_vec();
    let mut line = toks.get(i).map_or(0, |t| t.1);
    while let Some(w) = word(toks.get(i)) {
        segs.push(w.to_string());
        line = toks[i].1;
        i += 1;
        if toks.get(i).map(|t| &t.0) != Some(&Tok::Sep) {
            break;
        }
        if word(toks.get(i + 1)).is_some() {
            i += 1;
        } else if toks.get(i + 1).map(|t| &t.0) == Some(&Tok::Open) {
            out.push(FoundPath {
                segs: segs.clone(),
                line,
                before: before.clone(),
            });
            return read_group(toks, i + 1, &segs, before, out);
        } else {
            break;
        }
    }
    out.push(FoundPath {
        segs,
        line,
        before: before.clone(),
    });
    i
}

/// Reads a group `{a, b::c, d::{e, f}}` starting at `toks[i]` (the `{`), every
/// member after `prefix`; returns the index after the `}`.
fn read_group(
    toks: &[(Tok, usize)],
    mut i: usize,
    prefix: &[String],
    before: &Option<String>,
    out: &mut Vec<FoundPath>,
) -> usize {
    i += 1;
    loop {
        match toks.get(i) {
            None => return i,
            Some((Tok::Close, _)) => return i + 1,
            Some((Tok::Open, _)) => i = read_group(toks, i, prefix, before, out),
            Some(_) if word(toks.get(i)).is_some() => i = read_tree(toks, i, prefix, before, out),
            Some(_) => i += 1,
        }
    }
}

/// Every path in the token stream, grouped imports expanded.
fn paths(toks: &[(Tok, usize)]) -> Vec<FoundPath> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let continues = i >= 2
            && toks[i - 1].0 == Tok::Sep
            && (word(toks.get(i - 2)).is_some() || toks[i - 2].0 == Tok::Punct('>'));
        if word(toks.get(i)).is_some() && !continues {
            let before = match i.checked_sub(1).and_then(|j| toks.get(j)) {
                Some((Tok::Ident(w), _)) => Some(w.clone()),
                _ => None,
            };
            i = read_tree(toks, i, &[], &before, &mut out);
        } else {
            i += 1;
        }
    }
    out
}

/// Every forbidden mention in `src`: (line, what, why).
fn violations(src: &str) -> Vec<(usize, String, &'static str)> {
    let toks = tokens(src);
    let mut found = Vec::new();
    for (tok, line) in &toks {
        let Tok::Ident(name) = tok else { continue };
        for &(word, why) in IDENTS {
            if name == word {
                found.push((*line, word.to_string(), why));
            }
        }
        for &(prefix, why) in IDENT_PREFIXES {
            if name.starts_with(prefix) {
                found.push((*line, name.clone(), why));
            }
        }
        for &(part, why) in IDENT_PARTS {
            if name.contains(part) {
                found.push((*line, name.clone(), why));
            }
        }
    }
    for p in paths(&toks) {
        let segs = &p.segs;
        let line = p.line;
        // `nix::...`, `use nix;`, `extern crate nix;`
        if segs[0] == "nix"
            && (segs.len() > 1 || matches!(p.before.as_deref(), Some("use" | "crate")))
        {
            found.push((line, "nix::".into(), "system calls belong to the runtime"));
        }
        if segs[0] == "std" || segs[0] == "core" {
            if let Some(module) = segs.get(1) {
                for &(m, why) in STD_MODULES {
                    if module == m {
                        found.push((line, format!("std::{m}"), why));
                    }
                }
            }
        }
        for pair in segs.windows(2) {
            for read in CLOCK_READS {
                if pair[0] == read[0] && pair[1] == read[1] {
                    found.push((
                        line,
                        format!("{}::{}", read[0], read[1]),
                        "the core takes `now` as a parameter",
                    ));
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_core_the_policies_the_simulator_and_the_oracle_do_no_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for path in PURE_PATHS {
        let path = root.join(path);
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else {
            files.push(path);
        }
    }
    files.sort();
    for must in MUST_SEE {
        assert!(
            files.contains(&root.join(must)),
            "{must} was not among the files checked: update PURE_PATHS or MUST_SEE"
        );
    }
    let mut report = Vec::new();
    for file in &files {
        let src = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let rel = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        for (line, what, why) in violations(&src) {
            report.push(format!("{rel}:{line}: `{what}`: {why}"));
        }
    }
    assert!(
        report.is_empty(),
        "the sans-IO core mentions what it must not ({} files checked):\n  {}",
        files.len(),
        report.join("\n  ")
    );
}

// ----- the scanner itself -----

fn what(src: &str) -> Vec<(usize, String)> {
    violations(src)
        .into_iter()
        .map(|(line, what, _)| (line, what))
        .collect()
}

#[test]
fn comments_and_literals_do_not_count() {
    let src = r##"
//! The core never calls `Instant::now` or uses a HashMap.
/// Not std::fs, not libc.
/* a block comment: std::process::exit, /* nested */ still HashSet */
fn f() -> &'static str {
    let _url = "http://example.com // std::env::var";
    let _raw = r#"crossbeam "quoted" nix::unistd"#;
    let _c = '"';
    let _b = b'\'';
    "TcpStream"
}
"##;
    assert_eq!(what(src), vec![]);
}

#[test]
fn code_after_a_string_with_slashes_still_counts() {
    let src = "let u = \"a//b\"; let m: HashMap<u8, u8> = todo!();\n";
    assert_eq!(what(src), vec![(1, "HashMap".to_string())]);
}

#[test]
fn paths_are_caught_however_written() {
    let src = "\
use std::fs;
use std::{
    collections::BTreeMap,
    net::TcpListener,
    process,
};
use ::std::thread::sleep;
fn f() { let _ = std::time::Instant::now(); let _ = SystemTime :: now(); }
use nix::unistd::fork;
extern crate libc;
use std::env as environment;
type M = rustc_hash::FxHashMap<u8, u8>;
use crossbeam_channel::bounded;
use signal_hook::flag;
fn g() { let _ = ::std::fs::read(\"x\"); }
";
    let found = what(src);
    let expect: Vec<(usize, String)> = vec![
        (1, "std::fs".into()),
        (4, "TcpListener".into()),
        (5, "std::process".into()),
        (7, "std::thread".into()),
        (8, "Instant::now".into()),
        (8, "SystemTime::now".into()),
        (9, "nix::".into()),
        (10, "libc".into()),
        (11, "std::env".into()),
        (12, "FxHashMap".into()),
        (13, "crossbeam_channel".into()),
        (14, "signal_hook".into()),
        (15, "std::fs".into()),
    ];
    assert_eq!(found, expect);
}

#[test]
fn look_alikes_are_not_caught() {
    let src = "\
use std::os::unix::ffi::OsStrExt;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
fn f(now: Instant) -> Instant { now }
let glibc_version = 2; let unix = 1; let envelope = 3; let fsync_count = 4;
use crate::supervisor::process_table;
let name = env!(\"CARGO_PKG_NAME\");
let p = self::process::Table::new();
let v = Vec::<u8>::new(); let w = <Vec<u8> as Default>::default();
";
    assert_eq!(what(src), vec![]);
}
