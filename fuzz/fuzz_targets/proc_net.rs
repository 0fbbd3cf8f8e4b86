//! Fuzzes the `/proc/net/tcp` table parser the disconnect scan uses (procfs's,
//! through `preforkd::fuzzing::proc_net_tcp`): entries or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| preforkd::fuzzing::proc_net_tcp(data));
