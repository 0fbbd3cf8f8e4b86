//! Unit tests of the machine's timers.
