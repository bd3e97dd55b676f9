//! Wattson's host agent as a library: the binary (`wattson-agent`) is a thin CLI over these
//! modules, and the integration tests (on this kernel and in the VM lab) drive them directly.
//!
//! Data flows kernel maps -> [`sampler`] -> interval profile -> outputs and shipping.

pub mod binary;
pub mod energy;
pub mod file_pages;
pub mod interval;
mod map_batch;
pub mod metrics;
pub mod output;
pub mod privilege;
pub mod process;
pub mod profile;
pub mod sampler;
pub mod ship;
pub mod symbol_cache;
pub mod symbolize;
pub mod unwind;
