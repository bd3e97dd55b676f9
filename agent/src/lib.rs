//! Wattson's host agent as a library: the binary (`wattson-agent`) is a thin CLI over these
//! modules, and the integration tests (on this kernel and in the VM lab) drive them directly.
//!
//! Data flows kernel maps -> [`sampler`] -> interval profile -> outputs and shipping.

pub mod energy;
pub mod profile;
pub mod sampler;
