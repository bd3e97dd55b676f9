//! Synthetic but well-formed batches for tests and benchmarks: a host with a few services whose
//! stacks share frames the way real ones do (common roots, distinct leaves), deterministic for a
//! given seed so runs compare. Not used on any production path.

use crate::v1::{
    AgentLosses, Batch, ClockEvent, DomainKind, EnergyDomain, EnergySource, Frame, FrameKind,
    Function, Host, IntervalProfile, Process, Sample, Stack,
};

/// Shape of a synthetic batch.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Interval profiles in the batch.
    pub profiles: usize,
    /// Distinct functions.
    pub functions: usize,
    /// Distinct stacks.
    pub stacks: usize,
    /// Frames per stack.
    pub depth: usize,
    /// Processes.
    pub processes: usize,
    /// Sample rows per profile.
    pub samples_per_profile: usize,
    /// CPUs of the host.
    pub cpus: u32,
    /// Interval length, seconds.
    pub interval_secs: u64,
    /// Sampling frequency, Hz.
    pub frequency_hz: u32,
    /// Fleet-wide distinct stacks the batch's stacks are drawn from, with one build id per
    /// service: hosts run the same code, as in a real fleet. 0 makes every batch's stacks and
    /// build id its own (the worst case for any store that sums across hosts).
    pub stack_pool: usize,
}

impl Default for Shape {
    /// One 10 s interval at 19 Hz of a busy 8-CPU host: ~1,500 samples over 300 stacks.
    fn default() -> Self {
        Self {
            profiles: 1,
            functions: 400,
            stacks: 300,
            depth: 24,
            processes: 20,
            samples_per_profile: 300,
            cpus: 8,
            interval_secs: 10,
            frequency_hz: 19,
            stack_pool: 0,
        }
    }
}

/// Small deterministic generator (xorshift), so this module needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A valid batch of `shape` from `host_id` with `sequence`, whose first interval starts at
/// `start_unix_nanos`. Sample counts stay within what the host's CPUs can deliver.
pub fn batch(
    host_id: &str,
    sequence: u64,
    start_unix_nanos: u64,
    shape: &Shape,
    seed: u64,
) -> Batch {
    let mut rng = Rng(seed | 1);
    let mut strings = vec![String::new()];
    let mut intern = |s: String| {
        strings.push(s);
        (strings.len() - 1) as u32
    };
    let libc = intern("/usr/lib/x86_64-linux-gnu/libc.so.6".into());
    // One build per batch, or with a fleet pool one per service (below).
    let builds: Vec<u32> = if shape.stack_pool == 0 {
        vec![intern(format!("{:040x}", seed))]
    } else {
        (0..5u64)
            .map(|k| intern(format!("{:040x}", 0xb0_0000 + k)))
            .collect()
    };
    let build = builds[0];
    let functions: Vec<Function> = (0..shape.functions)
        .map(|i| Function {
            name_index: intern(format!("svc{}::module{}::function_{i}", i % 7, i % 31)),
            file_index: intern(format!("src/module{}.rs", i % 31)),
        })
        .collect();
    let frames: Vec<Frame> = (0..shape.functions)
        .map(|i| Frame {
            function_index: i as u32,
            line: 10 + (i as u32 % 500),
            inlined: i % 9 == 0,
            build_id_index: build,
            file_offset: 0x1000 + 0x40 * i as u64,
            module_index: libc,
            kind: if i % 10 == 0 {
                FrameKind::Kernel
            } else {
                FrameKind::User
            } as i32,
        })
        .collect();
    // Shared roots (low indexes), varied leaves.
    let path = |rng: &mut Rng| -> Vec<u32> {
        (0..shape.depth)
            .map(|d| {
                let spread = (shape.functions * (d + 1) / shape.depth.max(1)).max(1);
                rng.below(spread) as u32
            })
            .rev()
            .collect()
    };
    let stacks: Vec<Stack> = (0..shape.stacks)
        .map(|_| {
            let frame_indices = if shape.stack_pool == 0 {
                path(&mut rng)
            } else {
                // Pool stack k is the same path on every host.
                let k = rng.below(shape.stack_pool) as u64;
                path(&mut Rng((k + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1))
            };
            Stack { frame_indices }
        })
        .collect();
    let processes: Vec<Process> = (0..shape.processes)
        .map(|i| Process {
            pid: 1000 + i as u32,
            comm_index: intern(format!("worker{i}")),
            exe_index: intern(format!("/usr/bin/service{}", i % 5)),
            cmdline_index: intern(format!("/usr/bin/service{} --port {}", i % 5, 8000 + i)),
            service_index: intern(format!("service{}", i % 5)),
            container_index: 0,
            unit_index: intern(format!("service{}.service", i % 5)),
            build_id_indices: vec![builds[i % 5 % builds.len()]],
        })
        .collect();
    let duration = shape.interval_secs * 1_000_000_000;
    let budget = u64::from(shape.frequency_hz) * shape.interval_secs * u64::from(shape.cpus);
    let per_row = (budget / shape.samples_per_profile.max(1) as u64).max(1);
    let profiles = (0..shape.profiles)
        .map(|p| {
            let samples: Vec<Sample> = (0..shape.samples_per_profile)
                .map(|_| {
                    let count = 1 + rng.next() % per_row;
                    Sample {
                        stack_index: rng.below(shape.stacks) as u32,
                        process_index: rng.below(shape.processes) as u32,
                        tid: 1000 + rng.below(64) as u32,
                        count,
                        microjoules: count as f64 * 1_250.0,
                    }
                })
                .collect();
            let idle = 20.0 * shape.interval_secs as f64 * 1e6;
            interval(
                start_unix_nanos + p as u64 * duration,
                duration,
                shape.frequency_hz,
                idle,
                samples,
            )
        })
        .collect();
    Batch {
        host_id: host_id.into(),
        sequence,
        host: Some(Host {
            host_id: host_id.into(),
            hostname: host_id.into(),
            kernel_release: "6.18.0".into(),
            cpu_model: "synthetic".into(),
            cpus: shape.cpus,
            packages: 1,
            agent_version: env!("CARGO_PKG_VERSION").into(),
        }),
        created_unix_nanos: start_unix_nanos,
        strings,
        functions,
        frames,
        stacks,
        processes,
        profiles,
        losses: Some(AgentLosses::default()),
        agent_instance: String::new(),
    }
}

/// A cpu-clock interval profile with measured (powercap) package energy: the samples' microjoules
/// attributed, `idle_microjoules` more for the host's idle, no drops.
pub fn interval(
    start_unix_nanos: u64,
    duration_nanos: u64,
    frequency_hz: u32,
    idle_microjoules: f64,
    samples: Vec<Sample>,
) -> IntervalProfile {
    let attributed: f64 = samples.iter().map(|s| s.microjoules).sum();
    IntervalProfile {
        start_unix_nanos,
        duration_nanos,
        frequency_hz,
        clock_event: ClockEvent::CpuClock as i32,
        energy_source: EnergySource::Powercap as i32,
        energy_model_index: 0,
        domains: vec![EnergyDomain {
            kind: DomainKind::Package as i32,
            package: 0,
            microjoules: attributed + idle_microjoules,
            estimated: false,
        }],
        interval_microjoules: attributed + idle_microjoules,
        idle_microjoules,
        attributed_microjoules: attributed,
        estimated: false,
        dropped_samples: 0,
        samples,
    }
}

/// Sum of sample counts over every profile of `batch`.
pub fn sample_count(batch: &Batch) -> u64 {
    batch
        .profiles
        .iter()
        .flat_map(|p| &p.samples)
        .map(|s| s.count)
        .sum()
}
