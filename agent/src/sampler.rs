//! The BPF stack sampler from user space: loads the embedded `perf_event` program, attaches it
//! to a timer event on every online CPU, and drains the in-kernel aggregation maps.
//!
//! Draining flips `CONFIG_ACTIVE` so BPF writes the other buffer, waits for programs still
//! running on the old index to finish, then reads and clears the idle counts and its paired
//! stack map. Samples that land during the read go to the other buffer: nothing is lost.
//!
//! The object holds the program twice: the full one, and one without `bpf_task_pt_regs` for
//! kernels before 5.15, loaded when the verifier refuses the first (see [`Sampler::program`]).

use std::{collections::HashMap as StdHashMap, io, os::fd::AsFd, thread, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        PerfEvent,
        perf_event::{HardwareEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
use wattson_agent_ebpf::{self as shared, NewProcess, SampleKey, Stack};

use crate::map_batch;

/// The sampler object built by `agent/build.rs` from `agent-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wattson-sampler"));

/// How long to wait after flipping buffers for programs that read the old index to finish.
/// Programs run in interrupt context for microseconds; this is a wide margin, even under TCG.
const FLIP_GRACE: Duration = Duration::from_millis(10);

/// Errors from loading, attaching or draining the sampler.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// The kernel refused to load BPF because this process lacks privileges.
    #[error(
        "permission denied loading BPF: run as root or grant CAP_BPF, CAP_PERFMON and \
         CAP_SYS_RESOURCE (kernels before 5.11 also charge BPF maps to RLIMIT_MEMLOCK)"
    )]
    Permission(#[source] aya::EbpfError),
    /// Loading the object or its maps failed for another reason.
    #[error("loading the BPF sampler failed: {0}")]
    Load(#[source] aya::EbpfError),
    /// The verifier or the kernel rejected the program.
    #[error("loading the perf_event program failed: {0}")]
    Program(#[source] aya::programs::ProgramError),
    /// A map the object should define is missing or has the wrong type.
    #[error("BPF map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Underlying error.
        #[source]
        source: aya::maps::MapError,
    },
    /// `perf_event_open` failed on a CPU.
    #[error(
        "attaching the sampler to CPU {cpu} failed: {source}; check \
         /proc/sys/kernel/perf_event_paranoid and CAP_PERFMON"
    )]
    Attach {
        /// CPU the event was opened on.
        cpu: u32,
        /// Underlying error.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The list of online CPUs could not be read.
    #[error("reading {path}: {source}")]
    OnlineCpus {
        /// File that was read.
        path: &'static str,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
}

/// Which perf event drives sampling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockEvent {
    /// Hardware CPU cycles (needs a PMU; absent in most VMs).
    Cycles,
    /// Software cpu-clock timer (always available).
    CpuClock,
}

impl ClockEvent {
    /// Name as `perf` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cycles => "cycles",
            Self::CpuClock => "cpu-clock",
        }
    }
}

/// Sampler settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SamplerConfig {
    /// Samples per second per CPU.
    pub frequency: u64,
    /// Only sample this process (thread-group id) and the ones [`Sampler::follow`] adds.
    pub tgid_filter: Option<u32>,
    /// Entries of each aggregation map and each stack map.
    pub map_entries: u32,
    /// Try hardware cycles before falling back to cpu-clock.
    pub prefer_cycles: bool,
    /// Drain with `BPF_MAP_LOOKUP_AND_DELETE_BATCH` (Linux 5.6), falling back to per-entry
    /// reads where the kernel refuses it; false reads entry by entry from the start.
    pub batched_drain: bool,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            frequency: 19,
            tgid_filter: None,
            map_entries: shared::DEFAULT_MAP_ENTRIES,
            prefer_cycles: true,
            batched_drain: true,
        }
    }
}

/// Running totals of the sampler's counters (summed over CPUs, since load).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Times the program ran.
    pub samples: u64,
    /// Samples lost because the aggregation map was full.
    pub map_full: u64,
    /// User stacks that could not be collected for a user process.
    pub user_stack_errors: u64,
    /// Kernel stacks that could not be collected.
    pub kernel_stack_errors: u64,
    /// New-process announcements lost to a full ring buffer.
    pub ringbuf_full: u64,
    /// Samples skipped by the tgid filter.
    pub filtered: u64,
    /// User stacks recorded without the words at the user stack pointer, so no frame-pointer
    /// leaf fix-up was possible (kernel-mode samples on kernels before 5.15).
    pub leaf_words_missing: u64,
}

/// One aggregated bucket read from the kernel, with its stacks resolved to addresses.
#[derive(Clone, Debug)]
pub struct RawSample {
    /// The bucket key.
    pub key: SampleKey,
    /// Samples in the bucket.
    pub count: u64,
    /// User-space instruction pointers, innermost first (empty when unavailable).
    pub user_stack: Vec<u64>,
    /// Kernel instruction pointers, innermost first (empty when unavailable).
    pub kernel_stack: Vec<u64>,
    /// Return-address candidates at the user stack pointer, as (word index above the stack
    /// pointer, word): see [`crate::unwind`].
    pub leaf_candidates: Vec<(u32, u64)>,
}

/// What one drain returned.
#[derive(Clone, Debug, Default)]
pub struct Drained {
    /// Aggregated samples.
    pub samples: Vec<RawSample>,
    /// Buckets whose stack id was valid but whose stack had vanished from the map.
    pub missing_stacks: u64,
}

/// A loaded and attached sampler.
pub struct Sampler {
    ebpf: Ebpf,
    active: u32,
    event: ClockEvent,
    cpus: Vec<u32>,
    frequency: u64,
    program: &'static str,
    new_processes: Option<RingBuf<MapData>>,
    /// What the `TGIDS` filter set holds (empty when every process is sampled).
    followed: std::collections::BTreeSet<u32>,
    /// Drain with batched map reads (cleared when the kernel refuses them).
    batched: bool,
}

impl Sampler {
    /// Loads the program and its maps. Needs root or CAP_BPF + CAP_PERFMON.
    pub fn load(config: &SamplerConfig) -> Result<Self, SamplerError> {
        raise_memlock_limit();
        let entries = config.map_entries;
        let mut loader = EbpfLoader::new();
        for name in shared::maps::COUNTS
            .iter()
            .chain(&shared::maps::STACKS)
            .chain([&shared::maps::SEEN])
        {
            loader.map_max_entries(name, entries);
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| {
            if is_permission(&e) {
                SamplerError::Permission(e)
            } else {
                SamplerError::Load(e)
            }
        })?;
        let program = load_program(&mut ebpf)?;
        let name = shared::maps::NEW_PROCESSES;
        let new_processes = match ebpf.take_map(name) {
            Some(map) => {
                Some(RingBuf::try_from(map).map_err(|source| SamplerError::Map { name, source })?)
            }
            None => None,
        };
        let mut sampler = Self {
            ebpf,
            active: 0,
            event: ClockEvent::CpuClock,
            cpus: Vec::new(),
            frequency: config.frequency,
            program,
            new_processes,
            followed: Default::default(),
            batched: config.batched_drain,
        };
        sampler.set_config(shared::CONFIG_ACTIVE, 0)?;
        if let Some(tgid) = config.tgid_filter {
            sampler.follow(&[tgid])?;
        }
        sampler.set_config(
            shared::CONFIG_TGID_FILTER,
            u64::from(config.tgid_filter.is_some()),
        )?;
        Ok(sampler)
    }

    /// Attaches to every online CPU at `config.frequency`, with cycles when the PMU allows.
    pub fn attach(&mut self, config: &SamplerConfig) -> Result<ClockEvent, SamplerError> {
        let cpus = online_cpus()?;
        let freq = config.frequency;
        let program = program_mut(&mut self.ebpf, self.program)?;
        let mut event = ClockEvent::CpuClock;
        if config.prefer_cycles
            && let Some(&first) = cpus.first()
            && attach_one(program, ClockEvent::Cycles, first, freq).is_ok()
        {
            event = ClockEvent::Cycles;
        }
        for &cpu in &cpus {
            if event == ClockEvent::Cycles && Some(&cpu) == cpus.first() {
                continue;
            }
            attach_one(program, event, cpu, freq)
                .map_err(|source| SamplerError::Attach { cpu, source })?;
        }
        tracing::info!(
            cpus = cpus.len(),
            event = event.name(),
            freq,
            "sampler attached"
        );
        self.event = event;
        self.cpus = cpus;
        self.frequency = freq;
        Ok(event)
    }

    /// Attaches to CPUs that came online since [`Self::attach`] (or the last call), with the
    /// same event and frequency. Returns the CPUs added. CPUs that went offline keep their
    /// (idle) events; the kernel re-enables them if the CPU returns.
    pub fn attach_new_cpus(&mut self) -> Result<Vec<u32>, SamplerError> {
        let online = online_cpus()?;
        let added: Vec<u32> = online
            .into_iter()
            .filter(|c| !self.cpus.contains(c))
            .collect();
        let (event, freq) = (self.event, self.frequency);
        let program = program_mut(&mut self.ebpf, self.program)?;
        for &cpu in &added {
            attach_one(program, event, cpu, freq)
                .map_err(|source| SamplerError::Attach { cpu, source })?;
            tracing::info!(cpu, "sampler attached to a CPU that came online");
        }
        self.cpus.extend(&added);
        Ok(added)
    }

    /// Thread groups seen for the first time since the last call (from the BPF ring buffer),
    /// so their `/proc` entries can be read while they still exist.
    pub fn new_processes(&mut self) -> Vec<NewProcess> {
        let mut out = Vec::new();
        if let Some(ring) = self.new_processes.as_mut() {
            while let Some(item) = ring.next() {
                if item.len() >= std::mem::size_of::<NewProcess>() {
                    // SAFETY: the BPF side writes exactly one NewProcess (repr(C), integers
                    // only) per record; read_unaligned copes with the ring's 8-byte alignment.
                    out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
                }
            }
        }
        out
    }

    /// Lets the BPF program announce `tgids` again at their next sample: the caller forgot
    /// them (exited, or the tgid now holds another program), so a process that reuses one is
    /// read while it runs, and the map does not fill with the dead.
    pub fn forget_processes(&mut self, tgids: &[u32]) -> Result<(), SamplerError> {
        if tgids.is_empty() {
            return Ok(());
        }
        let mut seen: HashMap<&mut MapData, u32, u8> = self.typed_map(shared::maps::SEEN)?;
        for tgid in tgids {
            // Not there (evicted, or never sampled): nothing to forget.
            let _ = seen.remove(tgid);
        }
        Ok(())
    }

    /// Makes the tgid filter (on when loaded with [`SamplerConfig::tgid_filter`]) sample
    /// exactly `tgids`: a followed process tree changes as it forks and its children exit.
    /// Returns the tgids added.
    pub fn follow(&mut self, tgids: &[u32]) -> Result<Vec<u32>, SamplerError> {
        let wanted: std::collections::BTreeSet<u32> = tgids.iter().copied().collect();
        if wanted == self.followed {
            return Ok(Vec::new());
        }
        let name = shared::maps::TGIDS;
        let added: Vec<u32> = wanted.difference(&self.followed).copied().collect();
        let gone: Vec<u32> = self.followed.difference(&wanted).copied().collect();
        let mut set: HashMap<&mut MapData, u32, u8> = self.typed_map(name)?;
        for tgid in &added {
            set.insert(tgid, 1, 0)
                .map_err(|source| SamplerError::Map { name, source })?;
        }
        for tgid in &gone {
            let _ = set.remove(tgid);
        }
        self.followed = wanted;
        Ok(added)
    }

    /// File descriptor that becomes readable when [`Self::new_processes`] has events, for
    /// callers that `poll` instead of polling on a timer.
    pub fn new_processes_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd as _;
        self.new_processes.as_ref().map(|r| r.as_fd())
    }

    /// The event sampling is driven by.
    pub fn event(&self) -> ClockEvent {
        self.event
    }

    /// Samples per second per CPU the events were opened with.
    pub fn frequency(&self) -> u64 {
        self.frequency
    }

    /// Name of the program loaded: [`shared::PROGRAM_NAME`], or
    /// [`shared::COMPAT_PROGRAM_NAME`] on kernels without `bpf_task_pt_regs` (before 5.15).
    pub fn program(&self) -> &'static str {
        self.program
    }

    /// CPUs the sampler is attached to.
    pub fn cpus(&self) -> &[u32] {
        &self.cpus
    }

    /// Reads the counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, SamplerError> {
        let name = shared::maps::COUNTERS;
        let map = self.ebpf.map(name).ok_or(SamplerError::Map {
            name,
            source: aya::maps::MapError::InvalidName { name: name.into() },
        })?;
        let array = PerCpuArray::<_, u64>::try_from(map)
            .map_err(|source| SamplerError::Map { name, source })?;
        let read = |slot: u32| -> Result<u64, SamplerError> {
            let values = array
                .get(&slot, 0)
                .map_err(|source| SamplerError::Map { name, source })?;
            Ok(values.iter().sum())
        };
        Ok(Counters {
            samples: read(shared::COUNTER_SAMPLES)?,
            map_full: read(shared::COUNTER_MAP_FULL)?,
            user_stack_errors: read(shared::COUNTER_USER_STACK_ERR)?,
            kernel_stack_errors: read(shared::COUNTER_KERNEL_STACK_ERR)?,
            ringbuf_full: read(shared::COUNTER_RINGBUF_FULL)?,
            filtered: read(shared::COUNTER_FILTERED)?,
            leaf_words_missing: read(shared::COUNTER_LEAF_WORDS_MISSING)?,
        })
    }

    /// Flips buffers and returns everything aggregated in the one just retired.
    pub fn drain(&mut self) -> Result<Drained, SamplerError> {
        let idle = self.active;
        self.active ^= 1;
        self.set_config(shared::CONFIG_ACTIVE, u64::from(self.active))?;
        thread::sleep(FLIP_GRACE);

        let counts_name = shared::maps::COUNTS[idle as usize];
        let stacks_name = shared::maps::STACKS[idle as usize];
        let mut buckets = Vec::new();
        let mut frames = StdHashMap::new();
        if self.batched {
            match self.take_batched(counts_name, stacks_name, &mut buckets, &mut frames) {
                Ok(()) => {}
                Err(map_batch::BatchError::Unsupported(e)) => {
                    tracing::info!(error = %e, "reading BPF maps entry by entry");
                    self.batched = false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "batched drain failed; the rest is read entry by entry")
                }
            }
        }
        // Also what a failed batch left behind.
        self.take_per_entry(counts_name, stacks_name, &mut buckets, &mut frames)?;

        let mut drained = Drained::default();
        for (key, count) in buckets {
            let resolve = |id: u64| -> Option<Frames> {
                if id == 0 {
                    return Some(Default::default());
                }
                frames.get(&id).cloned()
            };
            let user = resolve(key.user_stack);
            let kernel = resolve(key.kernel_stack);
            if user.is_none() || kernel.is_none() {
                drained.missing_stacks += count;
            }
            let (user_stack, leaf_candidates) = user.unwrap_or_default();
            drained.samples.push(RawSample {
                key,
                count,
                user_stack,
                kernel_stack: kernel.unwrap_or_default().0,
                leaf_candidates,
            });
        }
        Ok(drained)
    }

    /// Whether drains read the maps in batches (false before Linux 5.6, or when configured).
    pub fn batched(&self) -> bool {
        self.batched
    }

    /// Reads and clears the idle counts and stacks a chunk per system call.
    fn take_batched(
        &mut self,
        counts_name: &'static str,
        stacks_name: &'static str,
        buckets: &mut Vec<(SampleKey, u64)>,
        frames: &mut StdHashMap<u64, Frames>,
    ) -> Result<(), map_batch::BatchError> {
        let (counts, stacks) = (self.map_fd(counts_name), self.map_fd(stacks_name));
        let (Some(counts), Some(stacks)) = (counts, stacks) else {
            return Ok(());
        };
        map_batch::take_all::<SampleKey, u64>(counts, BATCH_CHUNK, |k, v| buckets.push((*k, *v)))?;
        // Stacks are ~1.2 KiB each: a smaller chunk keeps the buffer small.
        map_batch::take_all::<u64, Stack>(stacks, BATCH_CHUNK / 8, |id, st| {
            frames.insert(*id, frames_of(st));
        })?;
        Ok(())
    }

    /// Reads and clears whatever the idle maps still hold, three system calls per entry.
    fn take_per_entry(
        &mut self,
        counts_name: &'static str,
        stacks_name: &'static str,
        buckets: &mut Vec<(SampleKey, u64)>,
        frames: &mut StdHashMap<u64, Frames>,
    ) -> Result<(), SamplerError> {
        let mut counts: HashMap<&mut MapData, SampleKey, u64> = self.typed_map(counts_name)?;
        let keys: Vec<SampleKey> = counts.keys().filter_map(Result::ok).collect();
        for key in keys {
            if let Ok(count) = counts.get(&key, 0) {
                buckets.push((key, count));
            }
            // A failed remove leaves the key to be read again next drain: counted twice is
            // worse than late, so a failure here is logged and the key is skipped next time
            // only if it still fails to read.
            if let Err(e) = counts.remove(&key) {
                tracing::warn!(error = %e, "could not clear an aggregation entry");
            }
        }
        let mut stacks: HashMap<&mut MapData, u64, Stack> = self.typed_map(stacks_name)?;
        let ids: Vec<u64> = stacks.keys().filter_map(Result::ok).collect();
        for id in ids {
            if let Ok(st) = stacks.get(&id, 0) {
                frames.insert(id, frames_of(&st));
            }
            let _ = stacks.remove(&id);
        }
        Ok(())
    }

    fn map_fd(&self, name: &str) -> Option<std::os::fd::BorrowedFd<'_>> {
        match self.ebpf.map(name)? {
            aya::maps::Map::HashMap(data) => Some(data.fd().as_fd()),
            _ => None,
        }
    }

    fn set_config(&mut self, slot: u32, value: u64) -> Result<(), SamplerError> {
        let name = shared::maps::CONFIG;
        let mut config: Array<&mut MapData, u64> = self.typed_map(name)?;
        config
            .set(slot, value, 0)
            .map_err(|source| SamplerError::Map { name, source })
    }

    fn typed_map<'a, T>(&'a mut self, name: &'static str) -> Result<T, SamplerError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or(SamplerError::Map {
            name,
            source: aya::maps::MapError::InvalidName { name: name.into() },
        })?;
        T::try_from(map).map_err(|source| SamplerError::Map { name, source })
    }
}

/// A stack's user frames and leaf return-address candidates.
type Frames = (Vec<u64>, Vec<(u32, u64)>);

fn frames_of(st: &Stack) -> Frames {
    (st.frames().to_vec(), st.leaf_candidates().collect())
}

/// Count entries per batched read: 64 KiB of keys and values.
const BATCH_CHUNK: usize = 2048;

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut PerfEvent, SamplerError> {
    let program = ebpf
        .program_mut(name)
        .expect("the embedded object defines the sampler programs");
    program.try_into().map_err(SamplerError::Program)
}

/// Loads the full program, or the one without `bpf_task_pt_regs` where the kernel (before
/// 5.15) refuses that helper; returns the name of the one loaded.
fn load_program(ebpf: &mut Ebpf) -> Result<&'static str, SamplerError> {
    let full = program_mut(ebpf, shared::PROGRAM_NAME)?.load();
    let Err(e) = full else {
        return Ok(shared::PROGRAM_NAME);
    };
    let compat = shared::COMPAT_PROGRAM_NAME;
    program_mut(ebpf, compat)?
        .load()
        .map_err(SamplerError::Program)?;
    tracing::info!(
        error = %e,
        "this kernel has no bpf_task_pt_regs (5.15): samples taken in a system call cannot \
         recover the caller of a function without a frame pointer"
    );
    Ok(compat)
}

fn attach_one(
    program: &mut PerfEvent,
    event: ClockEvent,
    cpu: u32,
    freq: u64,
) -> Result<(), aya::programs::ProgramError> {
    let config = match event {
        ClockEvent::Cycles => PerfEventConfig::Hardware(HardwareEvent::CpuCycles),
        ClockEvent::CpuClock => PerfEventConfig::Software(SoftwareEvent::CpuClock),
    };
    program.attach(
        config,
        PerfEventScope::AllProcessesOneCpu { cpu },
        SamplePolicy::Frequency(freq),
        false,
    )?;
    Ok(())
}

/// CPUs listed in `/sys/devices/system/cpu/online`.
pub fn online_cpus() -> Result<Vec<u32>, SamplerError> {
    const PATH: &str = "/sys/devices/system/cpu/online";
    let text = std::fs::read_to_string(PATH)
        .map_err(|source| SamplerError::OnlineCpus { path: PATH, source })?;
    parse_cpu_list(&text).ok_or(SamplerError::OnlineCpus {
        path: PATH,
        source: io::Error::new(io::ErrorKind::InvalidData, format!("bad cpu list {text:?}")),
    })
}

/// Parses the kernel's cpu list format (`0-3,8,10-11`).
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if b < a {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

fn is_permission(e: &aya::EbpfError) -> bool {
    let text = format!("{e:?}");
    text.contains("PermissionDenied") || text.contains("Operation not permitted")
}

/// BPF maps are charged to RLIMIT_MEMLOCK before Linux 5.11; lift it so loading works there.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall on a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            error = %io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::parse_cpu_list;
    use wattson_agent_ebpf::{Stack, stack_id};

    #[test]
    fn stack_ids_depend_on_the_valid_frames_only_and_are_never_zero() {
        let mut a = Stack::EMPTY;
        a.ips[..3].copy_from_slice(&[0x401000, 0x401234, 0x7f00_0000_1000]);
        let mut b = a;
        b.ips[5] = 0xdead; // beyond `len`: ignored
        assert_eq!(stack_id(&a, 3), stack_id(&b, 3));
        assert_ne!(stack_id(&a, 3), stack_id(&a, 2));
        assert_ne!(stack_id(&a, 3), stack_id(&a, 4));
        // The leaf's caller candidates and where they were found are part of the stack.
        let mut c = a;
        c.leaf_words[0] = 0x401100;
        assert_ne!(stack_id(&a, 3), stack_id(&c, 3));
        let mut d = c;
        d.leaf_slots[0] = 5;
        assert_ne!(stack_id(&c, 3), stack_id(&d, 3));
        // Neighbouring leaf addresses of one loop (the common case) get different ids.
        let mut ids = std::collections::HashSet::new();
        for ip in 0..100_000u64 {
            a.ips[0] = 0x401000 + ip;
            let id = stack_id(&a, 3);
            assert_ne!(id, 0);
            ids.insert(id);
        }
        assert_eq!(ids.len(), 100_000);
    }

    #[test]
    fn cpu_lists_parse_like_the_kernel_writes_them() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("0\n"), Some(vec![0]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }
}
