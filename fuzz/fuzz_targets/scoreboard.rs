//! Fuzzes the scoreboard file readers (`preforkd::runtime::parse_scoreboard`, what
//! `read_scoreboard_file` runs on a file's bytes, and `preforkd status`'s strict
//! one, which must agree with it): errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| preforkd::fuzzing::scoreboard(data));
