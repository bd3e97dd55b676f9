//! Converting interval [`Profile`]s (and their [`IntervalEnergy`]) to a `wattson.v1` [`Batch`]:
//! one [`BatchBuilder`] collects one or more intervals into shared, deduplicated string,
//! function, frame, stack and process tables, pprof style, so a batch carries each name once.

use std::collections::HashMap;

use wattson_proto::v1::{
    AgentLosses, Batch, ClockEvent, DomainKind, EnergyDomain, EnergySource, Frame, FrameKind,
    Function, Host, IntervalProfile, Process, Sample, Stack,
};

use crate::energy::{AttributionMode, Domain, IntervalEnergy};
use crate::profile::{self, EnergyMeta, Profile};

/// Longest string the agent puts in a batch, bytes, marker included: well under the
/// collector's [`wattson_proto::MAX_STRING_BYTES`] (a batch holding a longer string is refused
/// whole), and long enough for any real symbol or the telling part of a command line.
pub const MAX_STRING_BYTES: usize = 8 << 10;
const _: () = assert!(MAX_STRING_BYTES < wattson_proto::MAX_STRING_BYTES);

/// Appended to a string cut to [`MAX_STRING_BYTES`].
pub const TRUNCATED_MARKER: &str = "…[truncated]";

/// `s` (borrowed) if it fits in `max` bytes, else (owned) its longest prefix that ends on a character boundary
/// and leaves room for [`TRUNCATED_MARKER`], followed by the marker.
pub fn truncate(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max.saturating_sub(TRUNCATED_MARKER.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATED_MARKER}", &s[..end]).into()
}

/// The host a batch comes from (fields that do not change between intervals).
#[derive(Debug, Clone, Default)]
pub struct HostIdentity {
    /// Stable host id (`/etc/machine-id` unless `--host-id` says otherwise).
    pub host_id: String,
    /// CPU model from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// CPU packages (0 when unknown).
    pub packages: u32,
}

/// One interval ready to ship: the profile, and its energy account when a source was read.
#[derive(Debug, Clone)]
pub struct Interval {
    /// The symbolized, aggregated profile.
    pub profile: Profile,
    /// Energy of the interval; `None` when the agent runs without an energy source.
    pub energy: Option<IntervalEnergy>,
}

/// Accumulates intervals into one batch's tables.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    strings: Vec<String>,
    string_ids: HashMap<String, u32>,
    functions: Vec<Function>,
    function_ids: HashMap<(u32, u32), u32>,
    frames: Vec<Frame>,
    frame_ids: HashMap<FrameKey, u32>,
    stacks: Vec<Stack>,
    stack_ids: HashMap<Vec<u32>, u32>,
    processes: Vec<Process>,
    process_ids: HashMap<ProcessKey, u32>,
    profiles: Vec<IntervalProfile>,
    samples: u64,
    truncated_strings: u64,
    hostname: String,
    kernel_release: String,
    cpus: u32,
}

/// Identity of a wire frame (all fields but the address, which the wire does not carry).
type FrameKey = (u32, u32, bool, u32, u64, u32, i32);
/// Identity of a wire process: pid plus every label, since a pid can be reused.
type ProcessKey = (u32, u32, u32, u32, u32, u32, u32, Vec<u32>);

impl BatchBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        let mut b = Self::default();
        b.intern(""); // strings[0] == ""
        b
    }

    /// Intervals added so far.
    pub fn intervals(&self) -> usize {
        self.profiles.len()
    }

    /// Samples added so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Distinct strings cut to [`MAX_STRING_BYTES`] so far.
    pub fn truncated_strings(&self) -> u64 {
        self.truncated_strings
    }

    /// The one place strings enter the batch: each is interned once, cut to
    /// [`MAX_STRING_BYTES`] with a marker.
    fn intern(&mut self, s: &str) -> u32 {
        let cut = truncate(s, MAX_STRING_BYTES);
        if let Some(&id) = self.string_ids.get(&*cut) {
            return id;
        }
        if cut.len() < s.len() {
            self.truncated_strings += 1;
            tracing::debug!(bytes = s.len(), "string cut to fit a batch");
        }
        let s = &*cut;
        let id = self.strings.len() as u32;
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), id);
        id
    }

    fn intern_opt(&mut self, s: Option<&str>) -> u32 {
        s.map_or(0, |s| self.intern(s))
    }

    fn frame(&mut self, f: &profile::Frame) -> u32 {
        let name = self.intern(&f.name());
        let file = self.intern_opt(f.file.as_deref());
        let next = self.functions.len() as u32;
        let function = *self.function_ids.entry((name, file)).or_insert(next);
        if function == next {
            self.functions.push(Function {
                name_index: name,
                file_index: file,
            });
        }
        let kind = match f.kind {
            profile::FrameKind::Kernel => FrameKind::Kernel,
            profile::FrameKind::User => FrameKind::User,
        } as i32;
        let build_id = self.intern_opt(f.build_id.as_deref());
        let module = self.intern(&f.module);
        let offset = f.file_offset.unwrap_or(f.address);
        let key = (function, f.line, f.inlined, build_id, offset, module, kind);
        let next = self.frames.len() as u32;
        let id = *self.frame_ids.entry(key).or_insert(next);
        if id == next {
            self.frames.push(Frame {
                function_index: function,
                line: f.line,
                inlined: f.inlined,
                build_id_index: build_id,
                file_offset: offset,
                module_index: module,
                kind,
            });
        }
        id
    }

    fn process(&mut self, tgid: u32, p: Option<&profile::Process>) -> u32 {
        let (comm, exe, cmdline, service, container, unit, build_ids) = match p {
            Some(p) => (
                self.intern(&p.comm),
                self.intern_opt(p.exe.as_deref()),
                self.intern(&p.cmdline.join(" ")),
                self.intern(&p.service),
                self.intern_opt(p.container_id.as_deref()),
                self.intern_opt(p.systemd_unit.as_deref()),
                p.build_id.iter().map(|b| self.intern(b)).collect(),
            ),
            // The idle task and processes whose metadata never arrived.
            None => {
                let comm = if tgid == 0 { "swapper" } else { "[unknown]" };
                let c = self.intern(comm);
                (c, 0, 0, c, 0, 0, Vec::new())
            }
        };
        let key = (
            tgid,
            comm,
            exe,
            cmdline,
            service,
            container,
            unit,
            build_ids.clone(),
        );
        let next = self.processes.len() as u32;
        let id = *self.process_ids.entry(key).or_insert(next);
        if id == next {
            self.processes.push(Process {
                pid: tgid,
                comm_index: comm,
                exe_index: exe,
                cmdline_index: cmdline,
                service_index: service,
                container_index: container,
                unit_index: unit,
                build_id_indices: build_ids,
            });
        }
        id
    }

    /// Adds one interval. Its samples are merged per (stack, process, thread): the wire does
    /// not carry the CPU, which only mattered for per-package attribution, done already.
    pub fn add(&mut self, interval: &Interval) {
        let p = &interval.profile;
        self.hostname.clone_from(&p.hostname);
        self.kernel_release.clone_from(&p.kernel_release);
        self.cpus = self.cpus.max(p.cpus.len() as u32);

        let frame_ids: Vec<u32> = p.frames.iter().map(|f| self.frame(f)).collect();
        let stack_ids: Vec<u32> = p
            .stacks
            .iter()
            .map(|s| {
                let frames: Vec<u32> = s.frames.iter().map(|&f| frame_ids[f as usize]).collect();
                let next = self.stacks.len() as u32;
                let id = *self.stack_ids.entry(frames.clone()).or_insert(next);
                if id == next {
                    self.stacks.push(Stack {
                        frame_indices: frames,
                    });
                }
                id
            })
            .collect();

        let mut rows: HashMap<(u32, u32, u32), usize> = HashMap::new();
        let mut samples: Vec<Sample> = Vec::new();
        let energy = interval.energy.as_ref();
        for s in &p.samples {
            let process = self.process(s.tgid, p.processes.get(&s.tgid));
            let stack = stack_ids[s.stack as usize];
            let uj = s.microjoules.unwrap_or(0);
            let at = *rows.entry((stack, process, s.pid)).or_insert_with(|| {
                samples.push(Sample {
                    stack_index: stack,
                    process_index: process,
                    tid: s.pid,
                    count: 0,
                    microjoules: 0.0,
                });
                samples.len() - 1
            });
            samples[at].count += s.count;
            samples[at].microjoules += uj as f64;
            self.samples += s.count;
        }

        let model = p
            .energy
            .as_ref()
            .filter(|m| m.estimated)
            .and_then(|m| m.model.clone())
            .or_else(|| energy.filter(|e| e.estimated).map(|e| e.method.clone()));
        let energy_model_index = self.intern_opt(model.as_deref());
        // One account for both cases: the interval's energy goes through the same record
        // (`energy::meta`) that a profile without it carries, so the two cannot disagree.
        let recorded = energy.map(crate::energy::meta);
        let account = Account::of(recorded.as_ref().or(p.energy.as_ref()));
        let domains = energy.map(domains).unwrap_or_default();
        self.profiles.push(IntervalProfile {
            start_unix_nanos: p.start_unix_nanos,
            duration_nanos: p.duration_nanos,
            frequency_hz: u32::try_from(p.frequency).unwrap_or(u32::MAX),
            clock_event: match p.clock_event.as_str() {
                "cycles" => ClockEvent::Cycles,
                "cpu-clock" => ClockEvent::CpuClock,
                _ => ClockEvent::Unspecified,
            } as i32,
            energy_source: account.source as i32,
            energy_model_index,
            domains,
            interval_microjoules: account.interval_uj,
            idle_microjoules: account.idle_uj,
            attributed_microjoules: account.attributed_uj,
            estimated: account.estimated,
            dropped_samples: p.stats.dropped_total(),
            samples,
        });
    }

    /// The batch, with its identity and the agent's cumulative losses.
    pub fn finish(self, host: &HostIdentity, sequence: u64, losses: AgentLosses) -> Batch {
        Batch {
            host_id: host.host_id.clone(),
            sequence,
            host: Some(Host {
                host_id: host.host_id.clone(),
                hostname: self.hostname,
                kernel_release: self.kernel_release,
                cpu_model: host.cpu_model.clone(),
                cpus: self.cpus,
                packages: host.packages,
                agent_version: env!("CARGO_PKG_VERSION").into(),
            }),
            created_unix_nanos: now_unix_nanos(),
            strings: self.strings,
            functions: self.functions,
            frames: self.frames,
            stacks: self.stacks,
            processes: self.processes,
            profiles: self.profiles,
            losses: Some(losses),
            // Stamped by the spool when it writes the batch (`Spool::push`).
            agent_instance: String::new(),
        }
    }
}

/// Wall clock, nanoseconds since the Unix epoch.
pub fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// An interval profile's energy figures, as the wire states them.
struct Account {
    source: EnergySource,
    interval_uj: f64,
    idle_uj: f64,
    attributed_uj: f64,
    estimated: bool,
}

impl Account {
    /// The figures of `m`, the profile's record of its energy (`None`: no energy source).
    fn of(m: Option<&EnergyMeta>) -> Account {
        let Some(m) = m else {
            return Account {
                source: EnergySource::None,
                interval_uj: 0.0,
                idle_uj: 0.0,
                attributed_uj: 0.0,
                estimated: false,
            };
        };
        Account {
            source: source_name(&m.source),
            interval_uj: m.total_microjoules as f64,
            // The explicit idle figure: total - attributed would count unattributed and
            // unsampled energy as idle. Under `full` idle is in attributed already.
            idle_uj: if m.attribution == AttributionMode::Full.name() {
                0.0
            } else {
                m.idle_microjoules as f64
            },
            // What the samples carry (the proto's sum of `Sample.microjoules`): `meta` leaves
            // out the share charged to CPU time the sampler did not see (`unsampled`).
            attributed_uj: m.attributed_microjoules as f64,
            estimated: m.estimated,
        }
    }
}

fn source_name(name: &str) -> EnergySource {
    match name {
        "perf" => EnergySource::Perf,
        "powercap" => EnergySource::Powercap,
        "msr" => EnergySource::Msr,
        "model" => EnergySource::Model,
        _ => EnergySource::Unspecified,
    }
}

fn domain_kind(d: Domain) -> DomainKind {
    match d {
        Domain::Package => DomainKind::Package,
        Domain::Core => DomainKind::Cores,
        Domain::Uncore => DomainKind::Uncore,
        Domain::Dram => DomainKind::Dram,
        Domain::Psys => DomainKind::Psys,
    }
}

fn domains(e: &IntervalEnergy) -> Vec<EnergyDomain> {
    let per_package = e.packages.iter().flat_map(|p| {
        p.domains.iter().map(move |&(d, uj)| EnergyDomain {
            kind: domain_kind(d) as i32,
            package: p.package,
            microjoules: uj as f64,
            estimated: p.estimated,
        })
    });
    let host = e.host_domains.iter().map(|&(d, uj)| EnergyDomain {
        kind: domain_kind(d) as i32,
        package: 0,
        microjoules: uj as f64,
        estimated: e.estimated,
    });
    per_package.chain(host).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energy::SourceKind;
    use crate::profile::{
        Frame as PFrame, FrameKind as PKind, Process as PProcess, ProfileBuilder,
    };

    fn frame(name: &str, addr: u64) -> PFrame {
        PFrame {
            kind: PKind::User,
            function: Some(name.into()),
            file: Some("src/main.rs".into()),
            line: 7,
            inlined: false,
            module: "/usr/bin/app".into(),
            build_id: Some("abcd".into()),
            file_offset: Some(addr),
            address: addr,
        }
    }

    /// One interval of `app` (tgid 10): main -> hot on CPUs 0 and 1, plus the idle task.
    fn interval(start: u64, uj: u64) -> Interval {
        let mut b = ProfileBuilder::new(Profile {
            start_unix_nanos: start,
            duration_nanos: 1_000_000_000,
            frequency: 99,
            clock_event: "cpu-clock".into(),
            cpus: vec![0, 1],
            hostname: "h".into(),
            kernel_release: "6.18".into(),
            ..Profile::default()
        });
        let main = b.frame(frame("main", 0x10));
        let hot = b.frame(frame("hot", 0x20));
        let stack = b.stack(crate::profile::Stack {
            frames: vec![hot, main],
            truncated: false,
        });
        let empty = b.stack(crate::profile::Stack {
            frames: vec![],
            truncated: false,
        });
        b.sample(10, 11, 0, stack, 5);
        b.sample(10, 11, 1, stack, 3);
        b.sample(0, 0, 1, empty, 2);
        b.profile_mut().processes.insert(
            10,
            PProcess {
                tgid: 10,
                comm: "app".into(),
                service: "app".into(),
                build_id: Some("abcd".into()),
                ..PProcess::default()
            },
        );
        let mut profile = b.finish();
        for s in &mut profile.samples {
            s.microjoules = Some(uj * s.count);
        }
        Interval {
            profile,
            energy: None,
        }
    }

    /// 1000 uJ = 600 attributed + 300 idle + 100 unattributed (a package without samples).
    fn package(idle_charged: bool) -> crate::energy::PackageEnergy {
        crate::energy::PackageEnergy {
            package: 0,
            domains: vec![(Domain::Package, 1000)],
            estimated: false,
            interval_uj: 1000,
            idle_uj: 300,
            idle_basis: "configured",
            idle_charged,
            attributed_uj: if idle_charged { 900 } else { 600 },
            unattributed_uj: 100,
            samples: 10,
            busy: 0.5,
        }
    }

    fn energy(mode: AttributionMode) -> IntervalEnergy {
        let p = package(mode == AttributionMode::Full);
        assert!(p.balanced());
        IntervalEnergy {
            source: SourceKind::Powercap,
            estimated: false,
            method: "fixture".into(),
            attribution: mode,
            elapsed: std::time::Duration::from_secs(1),
            packages: vec![p],
            host_domains: Vec::new(),
            per_slot_uj: Vec::new(),
            faults: Vec::new(),
            unsampled_uj: 0,
        }
    }

    /// Regression: a profile whose energy came only as its `EnergyMeta` reported idle as
    /// total - attributed, which counted unattributed energy as idle.
    #[test]
    fn idle_is_the_explicit_idle_figure_not_total_minus_attributed() {
        for mode in [AttributionMode::Dynamic, AttributionMode::Full] {
            let e = energy(mode);
            let with_meta = |energy: Option<IntervalEnergy>| {
                let mut i = interval(1_700_000_000_000_000_000, 100);
                i.profile.energy = Some(profile::EnergyMeta {
                    source: "powercap".into(),
                    total_microjoules: e.interval_uj(),
                    attributed_microjoules: e.attributed_uj(),
                    idle_microjoules: e.idle_uj(),
                    unattributed_microjoules: e.unattributed_uj(),
                    attribution: mode.name().into(),
                    ..profile::EnergyMeta::default()
                });
                i.energy = energy;
                let mut b = BatchBuilder::new();
                b.add(&i);
                b.finish(&HostIdentity::default(), 1, AgentLosses::default())
                    .profiles
                    .remove(0)
            };
            // Both paths: the interval's account, and the profile's record of it alone.
            for p in [with_meta(Some(e.clone())), with_meta(None)] {
                assert_eq!(p.interval_microjoules, 1000.0, "{mode:?}");
                match mode {
                    AttributionMode::Dynamic => {
                        assert_eq!(
                            (p.idle_microjoules, p.attributed_microjoules),
                            (300.0, 600.0)
                        );
                        assert_ne!(
                            p.idle_microjoules,
                            p.interval_microjoules - p.attributed_microjoules
                        );
                    }
                    // Idle charged to functions is inside attributed, not reported apart.
                    AttributionMode::Full => {
                        assert_eq!((p.idle_microjoules, p.attributed_microjoules), (0.0, 900.0));
                    }
                }
            }
        }
    }

    /// Regression: with the interval's account at hand, attributed included the energy
    /// charged to CPU time the sampler did not see (`--pid`), so it exceeded the sum of the
    /// samples' energy that the proto says it is; the profile's record alone left it out.
    #[test]
    fn attributed_is_what_the_samples_carry_without_unsampled_energy() {
        // 600 uJ charged: 200 to unsampled CPU time, 400 to the 10 samples (40 each).
        let mut e = energy(AttributionMode::Dynamic);
        e.unsampled_uj = 200;
        let mut i = interval(1_700_000_000_000_000_000, 40);
        i.profile.energy = Some(crate::energy::meta(&e));
        let profile = |energy: Option<IntervalEnergy>| {
            let mut i = i.clone();
            i.energy = energy;
            let mut b = BatchBuilder::new();
            b.add(&i);
            b.finish(&HostIdentity::default(), 1, AgentLosses::default())
                .profiles
                .remove(0)
        };
        for p in [profile(Some(e.clone())), profile(None)] {
            let carried: f64 = p.samples.iter().map(|s| s.microjoules).sum();
            assert_eq!(carried, 400.0);
            assert_eq!(p.attributed_microjoules, carried);
            assert_eq!(
                (p.interval_microjoules, p.idle_microjoules),
                (1000.0, 300.0)
            );
        }
    }

    /// Regression: a process with a command line or a symbol over 64 KiB got the host's whole
    /// batch refused by the collector (its string limit); such strings are now cut, marked,
    /// and counted, and the batch keeps every sample.
    #[test]
    fn huge_command_lines_and_symbols_are_cut_with_a_marker() {
        let mut i = interval(1_700_000_000_000_000_000, 100);
        let huge_arg = "x".repeat(100 << 10);
        // Multi-byte characters across the cut: it must land on a character boundary.
        let huge_name = "é".repeat(40 << 10);
        let p = i.profile.processes.get_mut(&10).unwrap();
        p.cmdline = vec!["/usr/bin/java".into(), "-cp".into(), huge_arg.clone()];
        i.profile.frames[0].function = Some(huge_name.clone());
        let mut b = BatchBuilder::new();
        b.add(&i);
        assert_eq!(b.truncated_strings(), 2);
        let batch = b.finish(&HostIdentity::default(), 1, AgentLosses::default());
        for s in &batch.strings {
            assert!(
                s.len() <= MAX_STRING_BYTES && s.len() <= wattson_proto::MAX_STRING_BYTES,
                "a {} byte string reached the batch",
                s.len()
            );
        }
        let cut: Vec<&String> = batch
            .strings
            .iter()
            .filter(|s| s.ends_with(TRUNCATED_MARKER))
            .collect();
        assert_eq!(cut.len(), 2, "both strings marked");
        assert!(cut.iter().any(|s| s.starts_with("/usr/bin/java -cp xxx")));
        assert!(cut.iter().any(|s| s.starts_with("ééé")));
        let samples: u64 = batch.profiles[0].samples.iter().map(|s| s.count).sum();
        assert_eq!(samples, 10, "no sample lost");
        assert_eq!(truncate("short", 8), "short");
    }

    #[test]
    fn intervals_share_deduplicated_tables_and_keep_every_sample() {
        let mut b = BatchBuilder::new();
        b.add(&interval(1_700_000_000_000_000_000, 100));
        b.add(&interval(1_700_000_001_000_000_000, 100));
        assert_eq!((b.intervals(), b.samples()), (2, 20));
        let host = HostIdentity {
            host_id: "h-1".into(),
            ..HostIdentity::default()
        };
        let batch = b.finish(&host, 9, AgentLosses::default());
        assert_eq!((batch.host_id.as_str(), batch.sequence), ("h-1", 9));
        assert_eq!(batch.strings[0], "");
        // Two functions, two frames, two stacks (one empty), two processes, across both intervals.
        assert_eq!(batch.functions.len(), 2);
        assert_eq!(batch.frames.len(), 2);
        assert_eq!(batch.stacks.len(), 2);
        assert_eq!(batch.processes.len(), 2);
        let swapper = &batch.processes[batch.profiles[0].samples[1].process_index as usize];
        assert_eq!(batch.strings[swapper.comm_index as usize], "swapper");
        for p in &batch.profiles {
            // CPU 0 and 1 rows of the same thread and stack merge into one.
            assert_eq!(p.samples.len(), 2);
            assert_eq!(p.samples.iter().map(|s| s.count).sum::<u64>(), 10);
            assert_eq!(p.samples[0].microjoules, 800.0);
            assert_eq!(p.clock_event, ClockEvent::CpuClock as i32);
            assert_eq!(p.energy_source, EnergySource::None as i32);
        }
        let leaf = &batch.frames[batch.stacks[0].frame_indices[0] as usize];
        let f = &batch.functions[leaf.function_index as usize];
        assert_eq!(batch.strings[f.name_index as usize], "hot");
        assert_eq!(batch.strings[leaf.build_id_index as usize], "abcd");
        assert_eq!(leaf.file_offset, 0x20);
    }
}
