//! Types shared between Wattson's BPF sampler and the agent that reads its maps.
//!
//! Every struct is `#[repr(C)]` with explicit integer fields and no implicit padding, so the
//! kernel-side and user-side layouts are identical. Map names and slot indexes live here too,
//! so neither side hard-codes them.
#![no_std]

/// Name of the `perf_event` program in the object file.
pub const PROGRAM_NAME: &str = "wattson_sample";
/// The same program without `bpf_task_pt_regs` (kernel 5.15), for older kernels: a sample
/// taken in kernel mode then has no user stack pointer, so no [`Stack::leaf_words`].
pub const COMPAT_PROGRAM_NAME: &str = "wattson_sample_compat";

/// Names of the maps the sampler defines.
pub mod maps {
    /// Two aggregation maps; `CONFIG[CONFIG_ACTIVE]` says which one BPF writes into.
    pub const COUNTS: [&str; 2] = ["COUNTS_0", "COUNTS_1"];
    /// Stack maps paired with `COUNTS` (`HashMap<u64, Stack>`, keyed by the stack's hash), so
    /// a drained buffer's stacks can be cleared without invalidating ids that the other buffer
    /// still references.
    pub const STACKS: [&str; 2] = ["STACKS_0", "STACKS_1"];
    /// `Array<u64>` of settings written by user space (see `CONFIG_*`).
    pub const CONFIG: &str = "CONFIG";
    /// `PerCpuArray<u64>` of counters (see `COUNTER_*`).
    pub const COUNTERS: &str = "COUNTERS";
    /// Ring buffer of [`crate::NewProcess`] events.
    pub const NEW_PROCESSES: &str = "NEW_PROCESSES";
    /// LRU set of thread-group ids already announced on `NEW_PROCESSES`.
    pub const SEEN: &str = "SEEN";
    /// Set (`HashMap<u32, u8>`) of the thread-group ids sampled while `CONFIG_TGID_FILTER` is
    /// on: the process given to `--pid` and its descendants, kept current by user space.
    pub const TGIDS: &str = "TGIDS";
}

/// `CONFIG` slot: index (0 or 1) of the aggregation buffer BPF currently writes.
pub const CONFIG_ACTIVE: u32 = 0;
/// `CONFIG` slot: nonzero = only sample the thread groups in `TGIDS` (0 = every process).
pub const CONFIG_TGID_FILTER: u32 = 1;
/// Number of `CONFIG` slots.
pub const CONFIG_LEN: u32 = 2;

/// `COUNTERS` slot: every time the program ran.
pub const COUNTER_SAMPLES: u32 = 0;
/// `COUNTERS` slot: samples lost because the aggregation map was full.
pub const COUNTER_MAP_FULL: u32 = 1;
/// `COUNTERS` slot: user stacks that could not be collected for a user process (the helper
/// failed, or the stack map was full).
pub const COUNTER_USER_STACK_ERR: u32 = 2;
/// `COUNTERS` slot: kernel stacks that could not be collected while in kernel mode (the helper
/// failed, or the stack map was full).
pub const COUNTER_KERNEL_STACK_ERR: u32 = 3;
/// `COUNTERS` slot: new-process events lost because the ring buffer was full.
pub const COUNTER_RINGBUF_FULL: u32 = 4;
/// `COUNTERS` slot: samples skipped by the tgid filter.
pub const COUNTER_FILTERED: u32 = 5;
/// `COUNTERS` slot: user stacks recorded without the words at the user stack pointer (a
/// kernel-mode sample on a kernel without `bpf_task_pt_regs`, or the read failed).
pub const COUNTER_LEAF_WORDS_MISSING: u32 = 6;
/// Number of `COUNTERS` slots.
pub const COUNTER_LEN: u32 = 7;

/// Default entries of each aggregation map and each stack map.
pub const DEFAULT_MAP_ENTRIES: u32 = 16_384;
/// Deepest stack recorded, in frames (the kernel's default `perf_event_max_stack`).
pub const MAX_STACK_DEPTH: usize = 127;
/// Words above the user stack pointer scanned for the leaf function's return address.
pub const LEAF_SCAN_WORDS: usize = 16;
/// Return-address candidates kept per user stack (see [`Stack::leaf_words`]).
pub const LEAF_WORDS: usize = 4;
/// Entries of the `TGIDS` filter set (a process tree followed by `--pid`).
pub const TGID_FILTER_ENTRIES: u32 = 4096;
/// Default byte size of the new-process ring buffer.
pub const NEW_PROCESS_RING_BYTES: u32 = 256 * 1024;

/// Key of one aggregated sample bucket. A stack id is the key of the stack in the paired
/// `STACKS` map (a 64-bit hash of its frames, never 0); 0 means the sample has no such stack
/// (a user-mode sample has no kernel stack, a kernel thread no user stack, or it could not
/// be recorded, which the counters say).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SampleKey {
    /// Thread-group id (the process id as user space sees it).
    pub tgid: u32,
    /// Thread id.
    pub pid: u32,
    /// CPU the sample was taken on.
    pub cpu: u32,
    /// Explicit padding so the layout has no holes.
    pub _pad: u32,
    /// Key in the paired stack map, or 0.
    pub user_stack: u64,
    /// Key in the paired stack map, or 0.
    pub kernel_stack: u64,
}

/// One stack as `bpf_get_stack` wrote it: `len` instruction pointers, innermost first; the
/// rest of `ips` is zero.
///
/// A user stack also carries the words found on the user stack that look like return
/// addresses (each preceded by a call instruction), among the [`LEAF_SCAN_WORDS`] words at
/// the user stack pointer: when the sampled function has not set up a frame pointer (a leaf
/// like glibc's syscall wrappers), the frame-pointer walk skips its caller, and user space
/// finds the caller's return address among these with the function's `.eh_frame` rule.
/// Only call-preceded words are kept (not the raw words) so locals that change every
/// iteration do not make every sample a new stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stack {
    /// Number of valid entries in `ips`.
    pub len: u64,
    /// Instruction pointers, innermost first.
    pub ips: [u64; MAX_STACK_DEPTH],
    /// Return-address candidates, in stack order; 0 = none.
    pub leaf_words: [u64; LEAF_WORDS],
    /// Index of each candidate in words above the user stack pointer (its address is
    /// `sp + 8 * slot`).
    pub leaf_slots: [u32; LEAF_WORDS],
}

impl Stack {
    /// An empty stack (also the BPF side's starting point).
    pub const EMPTY: Stack = Stack {
        len: 0,
        ips: [0; MAX_STACK_DEPTH],
        leaf_words: [0; LEAF_WORDS],
        leaf_slots: [0; LEAF_WORDS],
    };

    /// The (slot, word) return-address candidates found above the user stack pointer.
    pub fn leaf_candidates(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.leaf_slots
            .iter()
            .zip(&self.leaf_words)
            .filter(|(_, w)| **w != 0)
            .map(|(s, w)| (*s, *w))
    }

    /// The valid instruction pointers, innermost first.
    pub fn frames(&self) -> &[u64] {
        let len = (self.len as usize).min(MAX_STACK_DEPTH);
        &self.ips[..len]
    }
}

/// The id a stack is stored under: a 64-bit hash of its first `len` frames and its leaf
/// candidates (MurmurHash3's mixing), never 0. Unlike a stack-trace map, whose fixed buckets reject a new stack that
/// lands on a taken bucket, a hash map keyed by this keeps every stack until it is full;
/// two different stacks sharing a 64-bit id is negligible (about n^2 / 2^65 for n stacks).
/// Written so the BPF verifier sees a loop bounded by [`MAX_STACK_DEPTH`].
#[inline(always)]
pub fn stack_id(stack: &Stack, len: usize) -> u64 {
    let ips = &stack.ips;
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut i = 0;
    while i < MAX_STACK_DEPTH {
        if i >= len {
            break;
        }
        let k = ips[i].wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(27).wrapping_mul(5).wrapping_add(0x52dc_e729);
        i += 1;
    }
    let mut j = 0;
    while j < LEAF_WORDS {
        let k = (stack.leaf_words[j] ^ (u64::from(stack.leaf_slots[j]) << 56))
            .wrapping_mul(C1)
            .rotate_left(31)
            .wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(27).wrapping_mul(5).wrapping_add(0x52dc_e729);
        j += 1;
    }
    h ^= len as u64;
    // fmix64
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    if h == 0 { 1 } else { h }
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
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Stack {}
}
