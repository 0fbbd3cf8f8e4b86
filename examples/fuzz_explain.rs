//! A debugging aid for fuzz findings: prints what a fuzz input means (the machine
//! setup and the numbered ops) and the verdict of the oracle.
//!
//! ```text
//! cargo run --example fuzz_explain -- fuzz/regressions/<file>
//! ```

use preforkd::fuzzing;

fn main() {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: fuzz_explain FILE");
        std::process::exit(2);
    };
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("fuzz_explain: cannot read {}: {e}", path.to_string_lossy());
            std::process::exit(1);
        }
    };
    let (setup, ops) = fuzzing::decode(&data);
    println!("{setup:#?}");
    for (i, op) in ops.iter().enumerate() {
        // Harness steps count from 1.
        println!("step {:>4}: {op:?}", i + 1);
    }
    match fuzzing::run(&data) {
        Ok(()) => println!("result: every invariant held"),
        Err(v) => {
            println!("result: {v}");
            std::process::exit(1);
        }
    }
}
