//! Fuzzes the parsers of the service manager's variables: `LISTEN_PID`,
//! `LISTEN_FDS`, `LISTEN_FDNAMES`, `WATCHDOG_USEC`, `WATCHDOG_PID`, `NOTIFY_SOCKET`
//! (see `preforkd::fuzzing::systemd_env` for the input layout).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| preforkd::fuzzing::systemd_env(data));
