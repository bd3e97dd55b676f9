//! Wattson's stack sampler: a `perf_event` program attached to a timer event on every CPU.
//!
//! Each sample is aggregated in the kernel under (tgid, pid, cpu, user stack, kernel stack) in
//! one of two buffers, picked by `CONFIG[CONFIG_ACTIVE]`, so user space drains the idle buffer
//! while this program keeps writing the other. Everything that cannot be recorded is counted.
//!
//! Stacks are copied with `bpf_get_stack` and kept in a hash map under a 64-bit hash of their
//! frames, not in a `BPF_MAP_TYPE_STACK_TRACE` map: `bpf_get_stackid` puts a stack in bucket
//! `hash % entries` and answers `-EEXIST` when another stack holds that bucket, so a share of
//! samples equal to the map's occupancy lost their stack (their leaf too, for user-mode
//! samples). Programs without frame pointers, whose every sample is a new stack, lost several
//! percent whenever draining was slow. A hash map only refuses a stack when it is full.
//!
//! A user stack also keeps the return-address-like words at the user stack pointer (see
//! [`wattson_agent_ebpf::Stack`]). A sample taken in kernel mode reads the user stack pointer
//! from the task's saved registers (`bpf_task_pt_regs`, kernel 5.15); older kernels load
//! [`wattson_agent_ebpf::COMPAT_PROGRAM_NAME`], which skips that and counts it.
//!
//! On a host build this file compiles to an empty binary so the workspace stays buildable.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod sampler {
    use aya_ebpf::{
        EbpfContext,
        bindings::{BPF_F_USER_STACK, bpf_perf_event_data, pt_regs},
        helpers::{
            bpf_get_current_task_btf, bpf_get_smp_processor_id, bpf_get_stack,
            bpf_probe_read_kernel, bpf_probe_read_user, bpf_task_pt_regs,
        },
        macros::{map, perf_event},
        maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
        programs::PerfEventContext,
    };
    use wattson_agent_ebpf::{
        CONFIG_ACTIVE, CONFIG_LEN, CONFIG_TGID_FILTER, COUNTER_FILTERED, COUNTER_KERNEL_STACK_ERR,
        COUNTER_LEAF_WORDS_MISSING, COUNTER_LEN, COUNTER_MAP_FULL, COUNTER_RINGBUF_FULL,
        COUNTER_SAMPLES, COUNTER_USER_STACK_ERR, DEFAULT_MAP_ENTRIES, LEAF_SCAN_WORDS, LEAF_WORDS,
        MAX_STACK_DEPTH, NEW_PROCESS_RING_BYTES, NewProcess, SampleKey, Stack, TGID_FILTER_ENTRIES,
        stack_id,
    };

    const EFAULT: i64 = 14;
    const EEXIST: i64 = 17;
    const BPF_NOEXIST: u64 = 1;

    #[map]
    static COUNTS_0: HashMap<SampleKey, u64> = HashMap::with_max_entries(DEFAULT_MAP_ENTRIES, 0);
    #[map]
    static COUNTS_1: HashMap<SampleKey, u64> = HashMap::with_max_entries(DEFAULT_MAP_ENTRIES, 0);
    #[map]
    static STACKS_0: HashMap<u64, Stack> = HashMap::with_max_entries(DEFAULT_MAP_ENTRIES, 0);
    #[map]
    static STACKS_1: HashMap<u64, Stack> = HashMap::with_max_entries(DEFAULT_MAP_ENTRIES, 0);
    /// Per-CPU room for the stack being copied (too big for the 512-byte BPF stack).
    #[map]
    static SCRATCH: PerCpuArray<Stack> = PerCpuArray::with_max_entries(1, 0);
    #[map]
    static CONFIG: Array<u64> = Array::with_max_entries(CONFIG_LEN, 0);
    #[map]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_LEN, 0);
    #[map]
    static NEW_PROCESSES: RingBuf = RingBuf::with_byte_size(NEW_PROCESS_RING_BYTES, 0);
    #[map]
    static TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(TGID_FILTER_ENTRIES, 0);
    #[map]
    static SEEN: LruHashMap<u32, u8> = LruHashMap::with_max_entries(DEFAULT_MAP_ENTRIES, 0);

    #[inline(always)]
    fn bump(slot: u32) {
        if let Some(v) = COUNTERS.get_ptr_mut(slot) {
            // SAFETY: per-CPU slot, only this CPU's program touches it and programs do not nest.
            unsafe { *v += 1 };
        }
    }

    #[inline(always)]
    fn config(slot: u32) -> u64 {
        CONFIG.get(slot).copied().unwrap_or(0)
    }

    #[perf_event]
    pub fn wattson_sample(ctx: PerfEventContext) -> u32 {
        sample::<true>(&ctx);
        0
    }

    /// For kernels before 5.15 (no `bpf_task_pt_regs`).
    #[perf_event]
    pub fn wattson_sample_compat(ctx: PerfEventContext) -> u32 {
        sample::<false>(&ctx);
        0
    }

    #[inline(always)]
    fn sample<const TASK_REGS: bool>(ctx: &PerfEventContext) {
        bump(COUNTER_SAMPLES);
        let tgid = ctx.tgid();
        if config(CONFIG_TGID_FILTER) != 0 && TGIDS.get_ptr(&tgid).is_none() {
            bump(COUNTER_FILTERED);
            return;
        }
        let active = config(CONFIG_ACTIVE) & 1;
        let (counts, stacks) = if active == 0 {
            (&COUNTS_0, &STACKS_0)
        } else {
            (&COUNTS_1, &STACKS_1)
        };

        // An empty user stack is the normal answer for kernel threads and the idle task.
        let user_stack = match record_stack::<TASK_REGS>(ctx, stacks, u64::from(BPF_F_USER_STACK)) {
            Ok(id) => id,
            Err(e) => {
                if tgid != 0 && e != -EFAULT {
                    bump(COUNTER_USER_STACK_ERR);
                }
                0
            }
        };
        // An empty kernel stack means the sample hit user mode.
        let kernel_stack = match record_stack::<TASK_REGS>(ctx, stacks, 0) {
            Ok(id) => id,
            Err(e) => {
                if e != -EFAULT {
                    bump(COUNTER_KERNEL_STACK_ERR);
                }
                0
            }
        };

        // SAFETY: the helper has no preconditions.
        let cpu = unsafe { bpf_get_smp_processor_id() };
        let key = SampleKey {
            tgid,
            pid: ctx.pid(),
            cpu,
            _pad: 0,
            user_stack,
            kernel_stack,
        };
        // The key holds the CPU, so only this CPU ever updates this entry: a plain add is safe.
        if let Some(count) = counts.get_ptr_mut(&key) {
            // SAFETY: pointer into a live map value owned by this CPU's key.
            unsafe { *count += 1 };
        } else if counts.insert(&key, &1, BPF_NOEXIST).is_err() {
            bump(COUNTER_MAP_FULL);
        }

        if SEEN.get_ptr(&tgid).is_none() {
            let _ = SEEN.insert(&tgid, &1, 0);
            announce(ctx, tgid);
        }
    }

    /// Copies the user (`BPF_F_USER_STACK`) or kernel stack of the sample into `stacks` and
    /// returns its id, 0 for an empty stack, or the error (negative errno) that lost it.
    #[inline(always)]
    fn record_stack<const TASK_REGS: bool>(
        ctx: &PerfEventContext,
        stacks: &HashMap<u64, Stack>,
        flags: u64,
    ) -> Result<u64, i64> {
        let Some(buf) = SCRATCH.get_ptr_mut(0) else {
            return Err(0);
        };
        // SAFETY: this CPU's scratch slot; programs do not nest on a CPU.
        let buf = unsafe { &mut *buf };
        const BYTES: u32 = (MAX_STACK_DEPTH * 8) as u32;
        // SAFETY: `ips` is BYTES long and writable; the helper writes at most that much.
        let copied =
            unsafe { bpf_get_stack(ctx.as_ptr(), buf.ips.as_mut_ptr().cast(), BYTES, flags) };
        if copied < 0 {
            return Err(copied);
        }
        let len = (copied as usize / 8).min(MAX_STACK_DEPTH);
        if len == 0 {
            return Ok(0);
        }
        buf.len = len as u64;
        buf.leaf_words = [0; LEAF_WORDS];
        buf.leaf_slots = [0; LEAF_WORDS];
        if flags != 0 && !leaf_words::<TASK_REGS>(ctx, buf) {
            bump(COUNTER_LEAF_WORDS_MISSING);
        }
        let id = stack_id(buf, len);
        match stacks.insert(id, &*buf, BPF_NOEXIST) {
            Ok(()) => Ok(id),
            // Already stored (by an earlier sample, or another CPU just now).
            Err(e) if i64::from(e) == -EEXIST => Ok(id),
            Err(e) => Err(i64::from(e)),
        }
    }

    /// The user stack pointer: from the sample's registers in user mode, else from the
    /// registers the task saved on entering the kernel (`None` without `TASK_REGS`).
    #[inline(always)]
    fn user_sp<const TASK_REGS: bool>(ctx: &PerfEventContext) -> Option<u64> {
        let data = ctx.as_ptr() as *const bpf_perf_event_data;
        // SAFETY: the context of a perf_event program is a `bpf_perf_event_data`.
        let (ip, sp) = unsafe { ((*data).regs.rip, (*data).regs.rsp) };
        // User addresses are the lower half of the x86-64 address space.
        if (ip as i64) >= 0 {
            return Some(sp);
        }
        if !TASK_REGS {
            return None;
        }
        // SAFETY: both helpers take the current task, which the verifier types as BTF.
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
        // SAFETY: a kernel read of one word; a bad pointer just fails.
        unsafe { bpf_probe_read_kernel(core::ptr::addr_of!((*regs).rsp)) }.ok()
    }

    /// Keeps in `buf` the words at the user stack pointer that a call instruction precedes.
    /// False when the words could not be read.
    #[inline(always)]
    fn leaf_words<const TASK_REGS: bool>(ctx: &PerfEventContext, buf: &mut Stack) -> bool {
        let Some(sp) = user_sp::<TASK_REGS>(ctx) else {
            return false;
        };
        // SAFETY: reads user memory; failure is reported.
        let Ok(words) = (unsafe { bpf_probe_read_user(sp as *const [u64; LEAF_SCAN_WORDS]) })
        else {
            return false;
        };
        let mut kept = 0usize;
        let mut i = 0usize;
        while i < LEAF_SCAN_WORDS {
            let w = words[i];
            // Small integers and kernel addresses are not return addresses: skip them without
            // reading. (Stack addresses are read: a thread's stack may lie next to a library.)
            if w > 0x10000 && (w as i64) > 0 && follows_call(w) {
                if let (Some(word), Some(slot)) =
                    (buf.leaf_words.get_mut(kept), buf.leaf_slots.get_mut(kept))
                {
                    *word = w;
                    *slot = i as u32;
                }
                kept += 1;
                if kept >= LEAF_WORDS {
                    break;
                }
            }
            i += 1;
        }
        true
    }

    /// True when the bytes before `addr` end with an x86-64 call: `call rel32`, or `call`
    /// through a register or memory operand (opcode 0xff /2) 2, 3, 4, 6 or 7 bytes long.
    #[inline(always)]
    fn follows_call(addr: u64) -> bool {
        // SAFETY: reads 8 user bytes; failure (unmapped) means no.
        let Ok(b) = (unsafe { bpf_probe_read_user((addr - 8) as *const [u8; 8]) }) else {
            return false;
        };
        let ff2 = |op: u8, modrm: u8| op == 0xff && (modrm & 0x38) == 0x10;
        b[3] == 0xe8
            || ff2(b[6], b[7])
            || ff2(b[5], b[6])
            || ff2(b[4], b[5])
            || ff2(b[2], b[3])
            || ff2(b[1], b[2])
    }

    #[inline(always)]
    fn announce(ctx: &PerfEventContext, tgid: u32) {
        let Some(mut entry) = NEW_PROCESSES.reserve::<NewProcess>(0) else {
            bump(COUNTER_RINGBUF_FULL);
            // Forget the tgid so the next sample tries again.
            let _ = SEEN.remove(&tgid);
            return;
        };
        entry.write(NewProcess {
            tgid,
            pid: ctx.pid(),
            comm: ctx.command().unwrap_or([0; 16]),
        });
        entry.submit(0);
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
        loop {}
    }
}
