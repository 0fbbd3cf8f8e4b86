//! Fuzzes the `Options` deserializer (serde_json): errors, never panics; what it
//! accepts validates, builds a machine and serializes without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    preforkd::fuzzing::options(
        data,
        |d: &[u8]| serde_json::from_slice::<preforkd::Options>(d),
        |o: &preforkd::Options| serde_json::to_vec(o),
    )
});
