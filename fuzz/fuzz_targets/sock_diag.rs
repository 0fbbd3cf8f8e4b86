//! Fuzzes the netlink `sock_diag` answer parser the disconnect look uses
//! (through `preforkd::fuzzing::sock_diag`): sockets or an end, never a panic
//! and never a read past the bytes given.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| preforkd::fuzzing::sock_diag(data));
