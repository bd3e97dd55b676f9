//! Helpers shared by Wattson's end-to-end tests (in `tests/tests/`) and, for the skills
//! workloads, `cargo xtask bench --only skills`.

pub mod procs;
pub mod workloads;
