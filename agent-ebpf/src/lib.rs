//! Types shared between Wattson's BPF sampler and the agent that reads its maps.
//!
//! Every struct is `#[repr(C)]` with explicit integer fields and no implicit padding, so the
//! kernel-side and user-side layouts are identical. Map names and slot indexes live here too,
//! so neither side hard-codes them.
#![no_std]

/// Name of the `perf_event` program in the object file.
pub const PROGRAM_NAME: &str = "wattson_sample";

/// Names of the maps the sampler defines.
pub mod maps {
    /// Two aggregation maps; `CONFIG[CONFIG_ACTIVE]` says which one BPF writes into.
    pub const COUNTS: [&str; 2] = ["COUNTS_0", "COUNTS_1"];
    /// Stack-trace maps paired with `COUNTS`, so a drained buffer's stacks can be cleared
    /// without invalidating ids that the other buffer still references.
    pub const STACKS: [&str; 2] = ["STACKS_0", "STACKS_1"];
    /// `Array<u64>` of settings written by user space (see `CONFIG_*`).
    pub const CONFIG: &str = "CONFIG";
    /// `PerCpuArray<u64>` of counters (see `COUNTER_*`).
    pub const COUNTERS: &str = "COUNTERS";
    /// Ring buffer of [`crate::NewProcess`] events.
    pub const NEW_PROCESSES: &str = "NEW_PROCESSES";
    /// LRU set of thread-group ids already announced on `NEW_PROCESSES`.
    pub const SEEN: &str = "SEEN";
}

/// `CONFIG` slot: index (0 or 1) of the aggregation buffer BPF currently writes.
pub const CONFIG_ACTIVE: u32 = 0;
/// `CONFIG` slot: only sample this thread-group id (0 = every process).
pub const CONFIG_TGID_FILTER: u32 = 1;
/// Number of `CONFIG` slots.
pub const CONFIG_LEN: u32 = 2;

/// `COUNTERS` slot: every time the program ran.
pub const COUNTER_SAMPLES: u32 = 0;
/// `COUNTERS` slot: samples lost because the aggregation map was full.
pub const COUNTER_MAP_FULL: u32 = 1;
/// `COUNTERS` slot: user stacks that could not be collected for a user process (fault, collision).
pub const COUNTER_USER_STACK_ERR: u32 = 2;
/// `COUNTERS` slot: kernel stacks that could not be collected while in kernel mode.
pub const COUNTER_KERNEL_STACK_ERR: u32 = 3;
/// `COUNTERS` slot: new-process events lost because the ring buffer was full.
pub const COUNTER_RINGBUF_FULL: u32 = 4;
/// `COUNTERS` slot: samples skipped by the tgid filter.
pub const COUNTER_FILTERED: u32 = 5;
/// Number of `COUNTERS` slots.
pub const COUNTER_LEN: u32 = 6;

/// Default entries of each aggregation map and each stack map.
pub const DEFAULT_MAP_ENTRIES: u32 = 16_384;
/// Default byte size of the new-process ring buffer.
pub const NEW_PROCESS_RING_BYTES: u32 = 256 * 1024;

/// Key of one aggregated sample bucket. Negative stack ids are the kernel's error codes
/// (for example `-EFAULT` when there is no user stack, `-EEXIST` on a stack-map collision).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SampleKey {
    /// Thread-group id (the process id as user space sees it).
    pub tgid: u32,
    /// Thread id.
    pub pid: u32,
    /// CPU the sample was taken on.
    pub cpu: u32,
    /// Id in the paired stack map, or a negative errno.
    pub user_stack_id: i32,
    /// Id in the paired stack map, or a negative errno.
    pub kernel_stack_id: i32,
    /// Explicit padding so the layout has no holes.
    pub _pad: u32,
}

/// Sent once per thread group the sampler has not seen before, so user space can read
/// `/proc/PID` while the process still lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewProcess {
    /// Thread-group id.
    pub tgid: u32,
    /// Thread that took the first sample.
    pub pid: u32,
    /// `comm` of that thread, NUL padded.
    pub comm: [u8; 16],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are repr(C), made only of integers, with no padding.
    unsafe impl aya::Pod for super::SampleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NewProcess {}
}
