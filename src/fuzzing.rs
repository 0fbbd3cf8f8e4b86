//! Placeholder: the fuzz-input decoder lands here.
