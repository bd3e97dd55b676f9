//! Privileges the agent needs, checked up front so a missing one gives one clear error
//! instead of a failure deep in BPF loading.
//!
//! Loading the sampler needs CAP_BPF and CAP_PERFMON (Linux >= 5.8; CAP_SYS_ADMIN before),
//! plus CAP_SYS_RESOURCE before 5.11 to lift RLIMIT_MEMLOCK. Reading other users' `/proc/PID`
//! maps and executables needs CAP_SYS_PTRACE, and kernel symbol addresses need CAP_SYSLOG
//! when `kptr_restrict` is 1. Root has them all.

use std::fs;

/// A capability the agent uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Name as in capabilities(7).
    pub name: &'static str,
    /// Bit number.
    pub bit: u32,
    /// What it is needed for.
    pub why: &'static str,
    /// Loading fails without it (the others degrade output).
    pub required: bool,
}

/// Every capability the agent uses.
pub const CAPABILITIES: &[Capability] = &[
    Capability {
        name: "CAP_BPF",
        bit: 39,
        why: "load the BPF sampler and create its maps",
        required: true,
    },
    Capability {
        name: "CAP_PERFMON",
        bit: 38,
        why: "open perf events on every CPU and attach BPF to them",
        required: true,
    },
    Capability {
        name: "CAP_SYS_RESOURCE",
        bit: 24,
        why: "raise RLIMIT_MEMLOCK for BPF maps on kernels before 5.11",
        required: false,
    },
    Capability {
        name: "CAP_SYS_PTRACE",
        bit: 19,
        why: "read /proc/PID/maps and exe of other users' processes (symbols)",
        required: false,
    },
    Capability {
        name: "CAP_SYSLOG",
        bit: 34,
        why: "read kernel symbol addresses from /proc/kallsyms (kernel frames)",
        required: false,
    },
];

/// CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON on kernels before 5.8.
const CAP_SYS_ADMIN: u32 = 21;

/// The effective capability set of this process (`CapEff` in `/proc/self/status`).
pub fn effective() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Whether `cap` is in `set`, counting CAP_SYS_ADMIN for the BPF/perf pair.
pub fn has(set: u64, cap: &Capability) -> bool {
    let bit = |b: u32| set & (1u64 << b) != 0;
    bit(cap.bit) || (cap.required && bit(CAP_SYS_ADMIN))
}

/// Capabilities of `CAPABILITIES` missing from `set` that this kernel needs (CAP_SYS_RESOURCE
/// only matters before 5.11, when BPF maps were charged to RLIMIT_MEMLOCK).
pub fn missing(set: u64) -> Vec<&'static Capability> {
    let memlock_accounting = kernel_version().is_none_or(|v| v < (5, 11));
    CAPABILITIES
        .iter()
        .filter(|c| !has(set, c))
        .filter(|c| c.name != "CAP_SYS_RESOURCE" || memlock_accounting)
        .collect()
}

/// Running kernel's (major, minor), from `/proc/sys/kernel/osrelease`.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Fails with one message naming everything missing when a required capability is absent.
pub fn check_can_sample() -> Result<(), String> {
    let missing = missing(effective());
    if !missing.iter().any(|c| c.required) {
        return Ok(());
    }
    let list: Vec<String> = missing
        .iter()
        .map(|c| format!("{} ({})", c.name, c.why))
        .collect();
    Err(format!(
        "insufficient privileges to sample: missing {}. Run as root, or grant them, e.g. \
         `sudo setcap cap_bpf,cap_perfmon,cap_sys_resource,cap_sys_ptrace,cap_syslog+ep \
         $(command -v wattson-agent)`",
        list.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_caps_are_all_named_and_sys_admin_substitutes() {
        assert!(missing(0).len() >= CAPABILITIES.len() - 1);
        let admin = 1u64 << CAP_SYS_ADMIN;
        let names: Vec<_> = missing(admin).iter().map(|c| c.name).collect();
        assert!(!names.contains(&"CAP_BPF") && !names.contains(&"CAP_PERFMON"));
        assert!(missing(u64::MAX).is_empty());
    }
}
