//! Helpers shared by Wattson's end-to-end tests (in `tests/tests/`).

pub mod procs;
