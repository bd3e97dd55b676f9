//! The energy meter: opens the chosen source (or, for `auto`, the best that works), reads it
//! once per interval, stands the model in for any package whose counters failed, keeps the
//! idle baseline, attributes, and counts every fault by kind.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use super::{
    Activity, Domain, DomainReading, EnergyArgs, EnergyError, EnergySource, Fault, SourceChoice,
    SourceKind, Topology,
    args::AttributionMode,
    attribute::{self, IntervalEnergy, PackageInput, SampleSlot},
    cputime::CpuTimes,
    idle::{DEFAULT_MAX_BUSY, IdleLearner},
    model::ModelSource,
    msr::{DevCpuMsr, MsrSource},
    perf::PerfSource,
    powercap::PowercapSource,
};

/// Opens one kind of source with the paths in `args`.
pub fn open_source(
    kind: SourceKind,
    args: &EnergyArgs,
    topology: &Topology,
) -> Result<Box<dyn EnergySource>, EnergyError> {
    Ok(match kind {
        SourceKind::Perf => Box::new(PerfSource::open(&args.sysfs_root, topology)?),
        SourceKind::Powercap => Box::new(PowercapSource::open(&args.powercap_root)?),
        SourceKind::Msr => Box::new(MsrSource::open(
            Box::new(DevCpuMsr::new(&args.msr_root)),
            topology,
        )?),
        SourceKind::Model => Box::new(ModelSource::new(args.curve()?, topology.clone())),
    })
}

/// Opens a measured source the user named, saying what to do when it is not there.
fn explicit(
    kind: SourceKind,
    args: &EnergyArgs,
    topology: &Topology,
) -> Result<Box<dyn EnergySource>, EnergyError> {
    open_source(kind, args, topology).map_err(|e| match e {
        EnergyError::Unavailable(why) => EnergyError::Unavailable(format!(
            "--energy-source {kind}: {why}; `wattson-agent doctor` lists what works here, and \
             --energy-source auto falls back to the (estimated) model"
        )),
        other => other,
    })
}

/// Reads energy each interval and attributes it.
pub struct Meter {
    source: Box<dyn EnergySource>,
    fallback: ModelSource,
    model_idle_per_cpu: f64,
    topology: Topology,
    mode: AttributionMode,
    idle_configured: Option<f64>,
    learner: IdleLearner,
    faults: BTreeMap<Fault, u64>,
    last_read: Instant,
    pending: Option<Pending>,
    partial: Option<Partial>,
}

/// Sampling that sees only some processes: per-CPU busy time comes from /proc/stat.
struct Partial {
    stat: PathBuf,
    start: Option<CpuTimes>,
    busy: Option<BTreeMap<u32, f64>>,
}

/// Counters read when a window ended, waiting for that window's samples.
struct Pending {
    elapsed: Duration,
    /// `None` for estimated sources, which need the samples to estimate.
    readings: Option<(Vec<DomainReading>, Option<Fault>)>,
}

impl Meter {
    /// Opens the source `args` asks for; `Ok(None)` for `--energy-source none`.
    pub fn open(args: &EnergyArgs) -> Result<Option<Self>, EnergyError> {
        args.validate()?;
        let topology = Topology::read(&args.sysfs_root)?;
        let source = match args.energy_source {
            SourceChoice::None => return Ok(None),
            SourceChoice::Auto => {
                let mut chosen = None;
                for kind in SourceKind::MEASURED {
                    match open_source(kind, args, &topology) {
                        Ok(source) => {
                            chosen = Some(source);
                            break;
                        }
                        Err(e) => {
                            tracing::info!(source = kind.name(), reason = %e, "energy source unusable")
                        }
                    }
                }
                match chosen {
                    Some(source) => source,
                    None => {
                        tracing::warn!(
                            "no energy counters on this host (no RAPL): using the model; \
                             every joule is estimated"
                        );
                        open_source(SourceKind::Model, args, &topology)?
                    }
                }
            }
            SourceChoice::Perf => explicit(SourceKind::Perf, args, &topology)?,
            SourceChoice::Powercap => explicit(SourceKind::Powercap, args, &topology)?,
            SourceChoice::Msr => explicit(SourceKind::Msr, args, &topology)?,
            SourceChoice::Model => open_source(SourceKind::Model, args, &topology)?,
        };
        Self::with_source(source, topology, args).map(Some)
    }

    /// A meter over an already opened source (tests, or a caller that chose one itself).
    pub fn with_source(
        source: Box<dyn EnergySource>,
        topology: Topology,
        args: &EnergyArgs,
    ) -> Result<Self, EnergyError> {
        args.validate()?;
        tracing::info!(source = source.kind().name(), method = %source.describe(), "energy source opened");
        Ok(Self {
            source,
            fallback: ModelSource::new(args.curve()?, topology.clone()),
            model_idle_per_cpu: args.model_idle_watts,
            topology,
            mode: args.attribution,
            idle_configured: args.idle_watts,
            learner: IdleLearner::new(args.idle_window, DEFAULT_MAX_BUSY),
            faults: BTreeMap::new(),
            last_read: Instant::now(),
            pending: None,
            partial: None,
        })
    }

    /// The source being read.
    pub fn source(&self) -> SourceKind {
        self.source.kind()
    }

    /// The source's method line.
    pub fn describe(&self) -> String {
        self.source.describe()
    }

    /// The topology attribution uses.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Faults counted since the meter opened, by kind.
    pub fn faults(&self) -> &BTreeMap<Fault, u64> {
        &self.faults
    }

    /// Declares that the sampler sees only some processes (`record --pid`): each window, the
    /// CPU time it did not see (per CPU, from `stat`, normally /proc/stat) is charged its
    /// share of the energy as `unsampled_uj` instead of the sampled process getting it all.
    pub fn set_partial_sampling(&mut self, stat: PathBuf) {
        let start = self.read_cpu_times(&stat);
        self.partial = Some(Partial {
            stat,
            start,
            busy: None,
        });
    }

    fn read_cpu_times(&self, stat: &std::path::Path) -> Option<CpuTimes> {
        CpuTimes::read(stat)
            .inspect_err(|e| {
                tracing::warn!(error = %e, "no per-CPU busy time: unsampled processes' energy goes to the sampled ones");
            })
            .ok()
    }

    /// Starts a new interval now: reads the counters and discards the energy since the last
    /// read (call when sampling starts, so energy and samples cover the same window).
    pub fn restart(&mut self) {
        let _ = self.read_source(&Activity::default());
        self.last_read = Instant::now();
        self.pending = None;
        if let Some(stat) = self.partial.as_ref().map(|p| p.stat.clone()) {
            let now = self.read_cpu_times(&stat);
            if let Some(p) = self.partial.as_mut() {
                p.start = now;
            }
        }
    }

    /// Marks the end of a sampling window: reads the counters now, so the energy covers the
    /// window and not the time spent symbolizing it. [`attribute_profile`](Self::attribute_profile)
    /// then uses this reading; without it, it reads when called.
    pub fn end_window(&mut self) {
        self.end_window_with(self.last_read.elapsed());
    }

    /// [`end_window`](Self::end_window) for a window whose length the caller measured (or,
    /// in tests driving fixture counters, chose).
    pub fn end_window_with(&mut self, elapsed: Duration) {
        self.last_read = Instant::now();
        if let Some(stat) = self.partial.as_ref().map(|p| p.stat.clone()) {
            let now = self.read_cpu_times(&stat);
            if let Some(p) = self.partial.as_mut() {
                p.busy = match (&now, &p.start) {
                    (Some(now), Some(start)) => Some(now.busy_since(start)),
                    _ => None,
                };
                p.start = now;
            }
        }
        let readings = (!self.source.estimated()).then(|| {
            self.read_source(&Activity {
                elapsed,
                ..Activity::default()
            })
        });
        self.pending = Some(Pending { elapsed, readings });
    }

    /// Attributes the window closed by [`end_window`](Self::end_window) (closing it now if
    /// it was not) to `slots`; the window's length is the time between the two reads.
    pub fn window(&mut self, frequency: u64, slots: &[SampleSlot]) -> IntervalEnergy {
        if self.pending.is_none() {
            self.end_window();
        }
        let Pending { elapsed, readings } = self.pending.take().unwrap_or(Pending {
            elapsed: Duration::ZERO,
            readings: None,
        });
        let sampled = slots.len();
        let mut all = slots.to_vec();
        if let Some(busy) = self.partial.as_mut().and_then(|p| p.busy.take()) {
            all.extend(unsampled_slots(&busy, slots, frequency, elapsed));
        }
        let activity = Activity {
            elapsed,
            cpu_busy: attribute::busy_by_cpu(&all, frequency, elapsed),
        };
        let read = match readings {
            Some(read) => read,
            None => self.read_source(&activity),
        };
        let mut e = self.account(&activity, frequency, &all, read);
        e.unsampled_uj = e.per_slot_uj.drain(sampled..).sum();
        e
    }

    /// Reads the energy of the interval that just ended (`elapsed` long, sampled at
    /// `frequency` Hz per CPU) and attributes it to `slots`.
    pub fn interval(
        &mut self,
        elapsed: Duration,
        frequency: u64,
        slots: &[SampleSlot],
    ) -> IntervalEnergy {
        self.last_read = Instant::now();
        self.pending = None;
        let activity = Activity {
            elapsed,
            cpu_busy: attribute::busy_by_cpu(slots, frequency, elapsed),
        };
        let read = self.read_source(&activity);
        self.account(&activity, frequency, slots, read)
    }

    fn read_source(&mut self, activity: &Activity) -> (Vec<DomainReading>, Option<Fault>) {
        match self.source.read(activity) {
            Ok(r) => (r, None),
            Err(e) => {
                tracing::warn!(source = self.source.kind().name(), error = %e, "energy source read failed");
                (Vec::new(), Some(Fault::Unreadable))
            }
        }
    }

    fn account(
        &mut self,
        activity: &Activity,
        frequency: u64,
        slots: &[SampleSlot],
        (readings, read_fault): (Vec<DomainReading>, Option<Fault>),
    ) -> IntervalEnergy {
        let elapsed = activity.elapsed;
        let mut faults: Vec<Fault> = read_fault.into_iter().collect();
        if elapsed.is_zero() {
            faults.push(Fault::ZeroInterval);
        }
        let source_estimated = self.source.estimated();
        let mut by_package: BTreeMap<u32, BTreeMap<Domain, Option<u64>>> = BTreeMap::new();
        let mut host: BTreeMap<Domain, u64> = BTreeMap::new();
        for r in &readings {
            if let Some(f) = r.fault {
                faults.push(f);
            }
            match r.id.package {
                Some(p) => {
                    let slot = by_package
                        .entry(p)
                        .or_default()
                        .entry(r.id.domain)
                        .or_insert(Some(0));
                    *slot = match (*slot, r.microjoules) {
                        (Some(a), Some(b)) => Some(a + b),
                        _ => None,
                    };
                }
                None => {
                    if let Some(uj) = r.microjoules {
                        *host.entry(r.id.domain).or_default() += uj;
                    }
                }
            }
        }
        let secs = elapsed.as_secs_f64();
        let mut inputs = Vec::new();
        for package in self.topology.packages() {
            let measured = by_package.remove(&package).unwrap_or_default();
            let cpus = self.topology.cpus_of(package).len() as f64;
            let (domains, estimated) = if matches!(measured.get(&Domain::Package), Some(Some(_))) {
                let domains: Vec<(Domain, u64)> = measured
                    .into_iter()
                    .filter_map(|(d, uj)| uj.map(|uj| (d, uj)))
                    .collect();
                (domains, source_estimated)
            } else {
                if !source_estimated {
                    faults.push(Fault::ModelFallback);
                    tracing::warn!(
                        package,
                        "no package energy this interval: the model estimates it"
                    );
                }
                let uj = self.fallback.estimate(package, activity);
                (vec![(Domain::Package, uj)], true)
            };
            let busy = self
                .topology
                .cpus_of(package)
                .iter()
                .map(|c| activity.cpu_busy.get(c).copied().unwrap_or(0.0))
                .sum::<f64>()
                / cpus.max(1.0);
            let (idle_watts, idle_basis) = if let Some(host_idle) = self.idle_configured {
                (
                    host_idle / self.topology.packages().len().max(1) as f64,
                    "configured",
                )
            } else if estimated {
                (self.model_idle_per_cpu * cpus, "model")
            } else {
                let charged: u64 = domains
                    .iter()
                    .filter(|(d, _)| d.is_charged())
                    .map(|(_, uj)| uj)
                    .sum();
                if secs > 0.0 {
                    self.learner
                        .observe(package, charged as f64 / 1e6 / secs, busy);
                }
                match self.learner.idle_watts(package) {
                    Some(w) => (w, "learned"),
                    None => (0.0, "not learned yet"),
                }
            };
            inputs.push(PackageInput {
                package,
                domains,
                estimated,
                idle_watts,
                idle_basis,
            });
        }
        for (package, _) in by_package {
            tracing::warn!(
                package,
                "energy reported for a package with no online CPU: ignored"
            );
        }
        self.learner.advance(elapsed);
        let (packages, per_slot_uj, more) = attribute::attribute(
            elapsed,
            frequency,
            self.mode,
            &self.topology,
            &inputs,
            slots,
        );
        faults.extend(more);
        for f in &faults {
            *self.faults.entry(*f).or_default() += 1;
        }
        if !faults.is_empty() {
            tracing::warn!(faults = ?faults.iter().map(|f| f.name()).collect::<Vec<_>>(), "energy interval had faults");
        }
        IntervalEnergy {
            source: self.source.kind(),
            estimated: packages.iter().any(|p| p.estimated),
            method: self.source.describe(),
            attribution: self.mode,
            elapsed,
            packages,
            host_domains: host.into_iter().collect(),
            per_slot_uj,
            faults,
            unsampled_uj: 0,
        }
    }
}

/// One slot per CPU for the busy time the sampler did not see: the samples a full-system
/// sampler would have taken (busy x frequency x seconds) minus those it did take.
fn unsampled_slots(
    busy: &BTreeMap<u32, f64>,
    sampled: &[SampleSlot],
    frequency: u64,
    elapsed: Duration,
) -> Vec<SampleSlot> {
    let expected = frequency as f64 * elapsed.as_secs_f64();
    busy.iter()
        .filter_map(|(&cpu, &b)| {
            let seen: u64 = sampled
                .iter()
                .filter(|s| s.cpu == cpu && !s.idle_task)
                .map(|s| s.count)
                .sum();
            let count = ((b * expected).round() as u64).saturating_sub(seen);
            (count > 0).then_some(SampleSlot {
                cpu,
                count,
                idle_task: false,
            })
        })
        .collect()
}
