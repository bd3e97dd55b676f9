//! The agent's in-memory interval profile: the one model every output (folded, pprof, json),
//! the energy attribution and the gRPC shipping are built from.
//!
//! A [`Profile`] covers one window (start + duration) of sampling at one frequency on one clock
//! event. It holds the processes seen ([`Process`], metadata from procfs), a deduplicated table
//! of symbolized [`Frame`]s, a deduplicated table of [`Stack`]s (frame ids, leaf first), the
//! aggregated [`Sample`]s that point into it, and [`Stats`] saying what was dropped or
//! truncated and why. Ids are plain indexes into the tables, so converting to protobuf or pprof
//! is a walk over vectors. Build one with [`ProfileBuilder`], which does the deduplication.
//!
//! Energy: each sample carries `microjoules`, left `None` by sampling; the energy attribution
//! fills it and sets [`Profile::energy`] to say which source and model produced the joules.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// Index into [`Profile::frames`].
pub type FrameId = u32;
/// Index into [`Profile::stacks`].
pub type StackId = u32;

/// One sampling window, aggregated and symbolized.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Profile {
    /// Start of the window, nanoseconds since the Unix epoch (wall clock).
    pub start_unix_nanos: u64,
    /// Length of the window in nanoseconds.
    pub duration_nanos: u64,
    /// Requested samples per second per CPU.
    pub frequency: u64,
    /// Perf event that drove sampling, as `perf` names it: `cycles` or `cpu-clock`.
    pub clock_event: String,
    /// CPUs the sampler was attached to.
    pub cpus: Vec<u32>,
    /// Host name the profile was taken on.
    pub hostname: String,
    /// Kernel release (`uname -r`).
    pub kernel_release: String,
    /// Processes seen in the window, by thread-group id.
    pub processes: BTreeMap<u32, Process>,
    /// Deduplicated frames; [`FrameId`] indexes this.
    pub frames: Vec<Frame>,
    /// Deduplicated stacks; [`StackId`] indexes this.
    pub stacks: Vec<Stack>,
    /// Aggregated samples, at most one per (tgid, pid, cpu, stack).
    pub samples: Vec<Sample>,
    /// Counts of what was recorded, dropped and truncated.
    pub stats: Stats,
    /// Set by energy attribution: where the joules in `Sample::microjoules` came from.
    pub energy: Option<EnergyMeta>,
}

/// Metadata of one process (thread group), read from procfs while it lived.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Process {
    /// Thread-group id.
    pub tgid: u32,
    /// `comm` (at most 15 bytes, as the kernel keeps it).
    pub comm: String,
    /// Target of `/proc/PID/exe`, when readable, without the kernel's ` (deleted)` suffix.
    pub exe: Option<String>,
    /// GNU build id of the executable, lowercase hex.
    pub build_id: Option<String>,
    /// Command line, one element per argument.
    pub cmdline: Vec<String>,
    /// Cgroup v2 path (or the v1 `cpu`/`name=systemd` path), e.g. `/system.slice/nginx.service`.
    pub cgroup: Option<String>,
    /// Container id (64 hex digits) found in the cgroup path (docker, containerd, cri-o, podman).
    pub container_id: Option<String>,
    /// Systemd unit found in the cgroup path, e.g. `nginx.service`.
    pub systemd_unit: Option<String>,
    /// The service this process counts towards: a configured mapping, else the systemd unit,
    /// else the executable's file name, else `comm`.
    pub service: String,
    /// True when the process was gone before its metadata could be read (only `comm`, from
    /// the BPF program, is known then).
    pub exited: bool,
    /// True for kernel threads (no user address space).
    pub kernel_thread: bool,
}

/// Whether a frame is in the kernel or in user space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    /// Kernel text or a kernel module.
    Kernel,
    /// A user-space ELF object or JIT code.
    User,
}

/// One symbolized frame. Inlined functions get their own frame (with `inlined: true`) placed
/// before (leafward of) the frame of the function they were inlined into, at the same address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Frame {
    /// Kernel or user.
    pub kind: FrameKind,
    /// Demangled function name, when any symbol source named it.
    pub function: Option<String>,
    /// Source file (from DWARF), when known.
    pub file: Option<String>,
    /// Source line (from DWARF), when known; 0 = unknown.
    pub line: u32,
    /// This function was inlined into the next frame of the stack.
    pub inlined: bool,
    /// The object the address falls in: an ELF path, `[kernel.kallsyms]`, `[module]`, or
    /// `[perf-map]` for JIT code, or `[unknown]`.
    pub module: String,
    /// GNU build id of `module`, lowercase hex, when it has one.
    pub build_id: Option<String>,
    /// Offset of the address in `module`'s file (user frames), so a collector holding the
    /// binary can symbolize remotely. For kernel frames, the address itself.
    pub file_offset: Option<u64>,
    /// The sampled instruction pointer (a return address for every frame but the leaf).
    pub address: u64,
}

impl Frame {
    /// The name to show: the function, or `module+0xoffset` when nothing named it.
    pub fn name(&self) -> String {
        match &self.function {
            Some(f) => f.clone(),
            None => {
                let base = self.module.rsplit('/').next().unwrap_or(&self.module);
                format!("[{base}+{:#x}]", self.file_offset.unwrap_or(self.address))
            }
        }
    }
}

/// A call stack, leaf first: kernel frames (if the sample hit the kernel) then user frames.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Stack {
    /// Frame ids, leaf (innermost) first.
    pub frames: Vec<FrameId>,
    /// The user part likely stops early: its outermost frame is not a thread or process entry
    /// point (typically a frame-pointer-less function in between), or it hit the depth limit.
    pub truncated: bool,
}

/// Aggregated samples of one thread on one CPU with one stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Thread-group id (key into [`Profile::processes`]); 0 for the idle task.
    pub tgid: u32,
    /// Thread id.
    pub pid: u32,
    /// CPU the samples were taken on.
    pub cpu: u32,
    /// Index into [`Profile::stacks`].
    pub stack: StackId,
    /// Number of samples.
    pub count: u64,
    /// Energy attributed to these samples, in microjoules; `None` until energy attribution
    /// ran (or when no energy source is available).
    pub microjoules: Option<u64>,
}

/// Why samples did not make it into the profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The in-kernel aggregation map was full.
    MapFull,
    /// The stack a bucket referenced was no longer in the stack map.
    StackMissing,
    /// Not read back from the kernel before the sampler stopped.
    Unread,
}

impl DropReason {
    /// Stable snake_case name, used in summaries and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::MapFull => "map_full",
            Self::StackMissing => "stack_missing",
            Self::Unread => "unread",
        }
    }
}

/// What was recorded, dropped and truncated in the window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Samples in the profile (sum of `Sample::count`).
    pub samples: u64,
    /// Samples lost, by reason.
    pub dropped: BTreeMap<DropReason, u64>,
    /// Samples (not buckets) whose stack is flagged `truncated`.
    pub truncated_stacks: u64,
    /// Samples of user processes kept without a user stack (the kernel could not walk it).
    pub user_stack_errors: u64,
    /// Samples kept without a kernel stack although the kernel could have had one.
    pub kernel_stack_errors: u64,
    /// Samples the sampler skipped because of a `--pid` filter.
    pub filtered: u64,
    /// New-process announcements lost (their metadata may be missing).
    pub processes_missed: u64,
    /// Frames no symbol source could name.
    pub unsymbolized_frames: u64,
    /// JIT perf maps read only up to the symbolizer's bound (their later entries unnamed).
    pub perf_maps_cut: u64,
    /// Samples whose leaf had no frame pointer set up and whose lost caller was recovered
    /// from the stack with the leaf's `.eh_frame` rule (see [`crate::unwind`]).
    pub leaf_fixups: u64,
    /// Samples whose leaf had no frame pointer set up but whose caller could not be recovered
    /// (the word at the rule's place was not captured): their stacks skip that caller.
    pub leaf_fixups_failed: u64,
    /// User stacks recorded without the words at the stack pointer (kernel-mode samples on
    /// kernels before 5.15), so no fix-up was possible.
    pub leaf_words_missing: u64,
}

impl Stats {
    /// Total samples lost, all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

/// Where the energy figures in a profile came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EnergyMeta {
    /// Source name: `perf`, `powercap`, `msr` or `model`.
    pub source: String,
    /// True when the joules are estimated by a model rather than read from counters.
    pub estimated: bool,
    /// Model or method description (e.g. the curve used by `model`).
    pub model: Option<String>,
    /// Energy measured (or estimated) over the window, all packages, microjoules.
    pub total_microjoules: u64,
    /// Part of it attributed to samples (the rest is idle or unattributed).
    pub attributed_microjoules: u64,
    /// Idle baseline over the window, microjoules; part of `attributed_microjoules` when
    /// `attribution` is `full`, reported apart when it is `dynamic`.
    pub idle_microjoules: u64,
    /// Energy no sample could carry (a package with no samples), microjoules.
    pub unattributed_microjoules: u64,
    /// Energy charged to CPU time outside this profile (processes a `--pid` filter left
    /// out, measured from /proc/stat), microjoules. total = attributed + idle (when not
    /// charged) + unattributed + unsampled.
    pub unsampled_microjoules: u64,
    /// `dynamic` (idle not charged to functions) or `full`.
    pub attribution: String,
    /// Energy by domain over the window, e.g. `package-0`, `dram-0`, `psys`, microjoules.
    pub domains: BTreeMap<String, u64>,
}

/// What a weighted view (folded lines, top functions) counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Weight {
    /// Number of samples.
    Samples,
    /// CPU time in nanoseconds: samples x sampling period.
    CpuNanos,
    /// Attributed microjoules (0 for samples without energy).
    Microjoules,
}

impl Weight {
    /// Unit name for summaries.
    pub fn unit(self) -> &'static str {
        match self {
            Self::Samples => "samples",
            Self::CpuNanos => "cpu-ns",
            Self::Microjoules => "uJ",
        }
    }
}

/// A function's self or inclusive total in a weighted view.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionTotal {
    /// Function display name ([`Frame::name`]).
    pub function: String,
    /// Module it lives in (file name only).
    pub module: String,
    /// Weighted total.
    pub value: u64,
    /// Share of the profile's total weight, 0.0..=1.0.
    pub share: f64,
}

impl Profile {
    /// Sampling period in nanoseconds (what one sample stands for).
    pub fn period_nanos(&self) -> u64 {
        1_000_000_000 / self.frequency.max(1)
    }

    /// A sample's value under `weight`.
    pub fn value(&self, sample: &Sample, weight: Weight) -> u64 {
        match weight {
            Weight::Samples => sample.count,
            Weight::CpuNanos => sample.count.saturating_mul(self.period_nanos()),
            Weight::Microjoules => sample.microjoules.unwrap_or(0),
        }
    }

    /// Total weight of all samples.
    pub fn total(&self, weight: Weight) -> u64 {
        self.samples.iter().map(|s| self.value(s, weight)).sum()
    }

    /// Frames of a stack, leaf first.
    pub fn stack_frames(&self, stack: StackId) -> impl Iterator<Item = &Frame> {
        self.stacks[stack as usize]
            .frames
            .iter()
            .map(|&f| &self.frames[f as usize])
    }

    /// Functions by self weight (the leaf frame of each sample), largest first. Samples with an
    /// empty stack count as `[no stack]`.
    pub fn top_self(&self, weight: Weight) -> Vec<FunctionTotal> {
        let mut totals: HashMap<(String, String), u64> = HashMap::new();
        for s in &self.samples {
            let key = match self.stack_frames(s.stack).next() {
                Some(f) => (f.name(), module_file_name(&f.module).to_owned()),
                None => ("[no stack]".to_owned(), String::new()),
            };
            *totals.entry(key).or_default() += self.value(s, weight);
        }
        self.ranked(totals, weight)
    }

    /// Functions by inclusive weight (anywhere on the stack, counted once per sample).
    pub fn top_inclusive(&self, weight: Weight) -> Vec<FunctionTotal> {
        let mut totals: HashMap<(String, String), u64> = HashMap::new();
        for s in &self.samples {
            let mut seen = std::collections::HashSet::new();
            for f in self.stack_frames(s.stack) {
                let key = (f.name(), module_file_name(&f.module).to_owned());
                if seen.insert(key.clone()) {
                    *totals.entry(key).or_default() += self.value(s, weight);
                }
            }
        }
        self.ranked(totals, weight)
    }

    fn ranked(&self, totals: HashMap<(String, String), u64>, weight: Weight) -> Vec<FunctionTotal> {
        let all = self.total(weight).max(1) as f64;
        let mut out: Vec<FunctionTotal> = totals
            .into_iter()
            .map(|((function, module), value)| FunctionTotal {
                function,
                module,
                value,
                share: value as f64 / all,
            })
            .collect();
        out.sort_by(|a, b| b.value.cmp(&a.value).then(a.function.cmp(&b.function)));
        out
    }
}

/// Last path component of a module path (`/usr/bin/gzip` -> `gzip`).
pub fn module_file_name(module: &str) -> &str {
    module.rsplit('/').next().unwrap_or(module)
}

/// Builds a [`Profile`], deduplicating frames, stacks and samples as they are added.
#[derive(Debug, Default)]
pub struct ProfileBuilder {
    profile: Profile,
    frame_ids: HashMap<Frame, FrameId>,
    stack_ids: HashMap<Stack, StackId>,
    sample_ids: HashMap<(u32, u32, u32, StackId), usize>,
}

impl ProfileBuilder {
    /// Starts from a profile header (window, frequency, event, host); its tables are ignored.
    pub fn new(header: Profile) -> Self {
        let profile = Profile {
            frames: Vec::new(),
            stacks: Vec::new(),
            samples: Vec::new(),
            ..header
        };
        Self {
            profile,
            ..Self::default()
        }
    }

    /// The profile being built, to set header fields, processes and stats.
    pub fn profile_mut(&mut self) -> &mut Profile {
        &mut self.profile
    }

    /// Interns a frame.
    pub fn frame(&mut self, frame: Frame) -> FrameId {
        if let Some(&id) = self.frame_ids.get(&frame) {
            return id;
        }
        let id = self.profile.frames.len() as FrameId;
        self.profile.frames.push(frame.clone());
        self.frame_ids.insert(frame, id);
        id
    }

    /// Interns a stack.
    pub fn stack(&mut self, stack: Stack) -> StackId {
        if let Some(&id) = self.stack_ids.get(&stack) {
            return id;
        }
        let id = self.profile.stacks.len() as StackId;
        self.profile.stacks.push(stack.clone());
        self.stack_ids.insert(stack, id);
        id
    }

    /// Adds `count` samples of (tgid, pid, cpu, stack), merging with an existing bucket, and
    /// updates `stats.samples` and `stats.truncated_stacks`.
    pub fn sample(&mut self, tgid: u32, pid: u32, cpu: u32, stack: StackId, count: u64) {
        let p = &mut self.profile;
        p.stats.samples += count;
        if p.stacks[stack as usize].truncated {
            p.stats.truncated_stacks += count;
        }
        match self.sample_ids.get(&(tgid, pid, cpu, stack)) {
            Some(&i) => p.samples[i].count += count,
            None => {
                self.sample_ids
                    .insert((tgid, pid, cpu, stack), p.samples.len());
                p.samples.push(Sample {
                    tgid,
                    pid,
                    cpu,
                    stack,
                    count,
                    microjoules: None,
                });
            }
        }
    }

    /// Finishes the profile.
    pub fn finish(self) -> Profile {
        self.profile
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str) -> Frame {
        Frame {
            kind: FrameKind::User,
            function: Some(name.to_owned()),
            file: None,
            line: 0,
            inlined: false,
            module: "/usr/bin/x".to_owned(),
            build_id: None,
            file_offset: Some(0x10),
            address: 0x1000,
        }
    }

    #[test]
    fn builder_deduplicates_frames_stacks_and_samples() {
        let mut b = ProfileBuilder::new(Profile {
            frequency: 100,
            ..Profile::default()
        });
        let leaf = b.frame(frame("leaf"));
        let main = b.frame(frame("main"));
        assert_eq!(b.frame(frame("leaf")), leaf);
        let s1 = b.stack(Stack {
            frames: vec![leaf, main],
            truncated: false,
        });
        let s2 = b.stack(Stack {
            frames: vec![main],
            truncated: true,
        });
        assert_eq!(
            b.stack(Stack {
                frames: vec![leaf, main],
                truncated: false
            }),
            s1
        );
        b.sample(1, 1, 0, s1, 3);
        b.sample(1, 1, 0, s1, 2);
        b.sample(1, 2, 1, s2, 5);
        let p = b.finish();
        assert_eq!(p.frames.len(), 2);
        assert_eq!(p.stacks.len(), 2);
        assert_eq!(p.samples.len(), 2);
        assert_eq!(p.stats.samples, 10);
        assert_eq!(p.stats.truncated_stacks, 5);
        let top = p.top_self(Weight::Samples);
        assert_eq!(top[0].function, "leaf");
        assert_eq!(top[0].value, 5);
        assert!((top[0].share - 0.5).abs() < 1e-9);
        assert_eq!(p.total(Weight::CpuNanos), 10 * 10_000_000);
        let incl = p.top_inclusive(Weight::Samples);
        assert_eq!(incl[0].function, "main");
        assert_eq!(incl[0].value, 10);
    }

    #[test]
    fn unnamed_frames_show_module_and_offset() {
        let mut f = frame("x");
        f.function = None;
        assert_eq!(f.name(), "[x+0x10]");
    }
}
