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

/// Capabilities kept once the sampler is loaded and attached: reading other users'
/// `/proc/PID/maps` and executables (CAP_SYS_PTRACE), their binaries and perf maps whatever
/// their modes (CAP_DAC_READ_SEARCH), kernel symbol addresses (CAP_SYSLOG), and opening perf
/// events on CPUs that come online later (CAP_PERFMON).
pub const KEPT_AFTER_ATTACH: &[(&str, u32)] = &[
    ("CAP_DAC_READ_SEARCH", 2),
    ("CAP_SYS_PTRACE", 19),
    ("CAP_SYSLOG", 34),
    ("CAP_PERFMON", 38),
];

/// Drops every capability but [`KEPT_AFTER_ATTACH`] from this thread's effective, permitted
/// and inheritable sets and from the bounding set (so an `exec` cannot regain them), once the
/// BPF programs are loaded and the perf events open: a bug in the symbolizer or the shipper
/// then cannot load BPF, write anywhere, or kill. Capabilities are per thread, so call it
/// before starting any thread. Returns the effective set before and after.
pub fn drop_after_attach() -> std::io::Result<(u64, u64)> {
    let before = effective();
    let keep: u64 = KEPT_AFTER_ATTACH.iter().map(|(_, b)| 1u64 << b).sum();
    let last = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    for cap in (0..=last).filter(|c| keep & (1 << c) == 0) {
        // SAFETY: prctl with integer arguments. Fails (EPERM) without CAP_SETPCAP, in which
        // case only the bounding set stays wider: the sets below still shrink.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: header and a two-element data array, as capget(2) requires for version 3.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    for (i, d) in data.iter_mut().enumerate() {
        let keep = (keep >> (32 * i)) as u32;
        d.permitted &= keep;
        d.effective &= d.permitted;
        d.inheritable = 0;
    }
    // SAFETY: as above; capset only ever shrinks the sets here.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((before, effective()))
}

/// Names of the kept capabilities present in `set`, for logs.
fn kept_names(set: u64) -> Vec<&'static str> {
    KEPT_AFTER_ATTACH
        .iter()
        .filter(|(_, b)| set & (1u64 << b) != 0)
        .map(|(n, _)| *n)
        .collect()
}

/// [`drop_after_attach`], logged; a failure is logged and sampling goes on.
pub fn drop_after_attach_logged() {
    match drop_after_attach() {
        Ok((before, after)) => tracing::info!(
            before = format!("{before:#x}"),
            after = format!("{after:#x}"),
            kept = ?kept_names(after),
            "dropped the capabilities no longer needed after attaching the sampler"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not drop capabilities; running with all of them")
        }
    }
}

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
