//! Fuzzes `preforkd simulate --workload`'s parser: the workload spec (the input's
//! first line) and the trace CSV (the rest), through
//! `preforkd::fuzzing::workload_spec`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| preforkd::fuzzing::workload_spec(data));
