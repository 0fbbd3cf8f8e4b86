//! Fuzzes the supervisor: any input decodes to a valid setup plus outside-world
//! ops (`preforkd::fuzzing::run`), checked by the oracle at every step, run twice
//! for determinism.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(v) = preforkd::fuzzing::run(data) {
        panic!("invariant violated: {v}");
    }
});
