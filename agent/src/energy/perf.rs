//! The perf `power` PMU source: RAPL through perf events (`energy-pkg`, `energy-cores`,
//! `energy-ram`, `energy-psys`, `energy-gpu`), plus AMD's per-core `power_core/energy-core`.
//! Event codes, scale and unit come from the PMU's sysfs description under `--sysfs-root`
//! (`bus/event_source/devices/power/{type,format,events,cpumask}`). Counting only, one event
//! per package on the CPU the PMU's `cpumask` names. The kernel folds the 32-bit MSR into
//! 64 bits, so a count that goes down is a fault, not a wrap.
//!
//! [`describe`] only parses sysfs, so fixtures test the decode path; [`PerfSource::open`]
//! then opens real counters.

use std::path::{Path, PathBuf};

use perf_event::events::Dynamic;

use super::{
    Activity, Domain, DomainId, DomainReading, EnergyError, EnergySource, Fault, SourceKind,
    Topology,
    counter::{Counter, ToMicrojoules, Wrap},
};
use crate::sampler::parse_cpu_list;

/// Events of the `power` PMU and the domains they measure.
const POWER_EVENTS: [(&str, Domain); 5] = [
    ("energy-pkg", Domain::Package),
    ("energy-cores", Domain::Core),
    ("energy-gpu", Domain::Uncore),
    ("energy-ram", Domain::Dram),
    ("energy-psys", Domain::Psys),
];

/// One energy event as sysfs describes it.
#[derive(Clone, Debug)]
pub struct EventDesc {
    /// PMU name (`power` or `power_core`).
    pub pmu: String,
    /// Event name, e.g. `energy-pkg`.
    pub name: String,
    /// Domain it measures.
    pub domain: Domain,
    /// The encoded event.
    pub event: Dynamic,
    /// Joules per count (`.scale`, checked against `.unit` = `Joules`).
    pub joules_per_count: f64,
    /// CPUs to open it on, from the PMU's `cpumask` (empty: not given).
    pub cpumask: Vec<u32>,
}

/// Directory of a PMU under the sysfs root.
pub fn pmu_dir(sysfs_root: &Path, pmu: &str) -> PathBuf {
    sysfs_root.join("bus/event_source/devices").join(pmu)
}

/// Parses the energy events the `power` (and, on AMD, `power_core`) PMU describes.
pub fn describe(sysfs_root: &Path) -> Result<Vec<EventDesc>, EnergyError> {
    let power = pmu_dir(sysfs_root, "power");
    if !power.exists() {
        return Err(EnergyError::Unavailable(format!(
            "no perf `power` PMU at {}: this CPU or hypervisor exposes no RAPL to perf",
            power.display()
        )));
    }
    let mut out = Vec::new();
    for (name, domain) in POWER_EVENTS {
        if power.join("events").join(name).exists() {
            out.push(describe_event(&power, "power", name, domain)?);
        }
    }
    let core = pmu_dir(sysfs_root, "power_core");
    if core.join("events/energy-core").exists() {
        out.push(describe_event(
            &core,
            "power_core",
            "energy-core",
            Domain::Core,
        )?);
    }
    if !out.iter().any(|e| e.domain == Domain::Package) {
        return Err(EnergyError::Unavailable(format!(
            "the perf `power` PMU at {} has no energy-pkg event",
            power.display()
        )));
    }
    Ok(out)
}

fn describe_event(
    pmu_dir: &Path,
    pmu: &str,
    name: &str,
    domain: Domain,
) -> Result<EventDesc, EnergyError> {
    let event_path = pmu_dir.join("events").join(name);
    let io_err = |e| EnergyError::io(&event_path, e);
    let mut builder = Dynamic::builder(pmu_dir).map_err(io_err)?;
    builder.event(name).map_err(io_err)?;
    let event = builder.build().map_err(|e| EnergyError::Parse {
        path: event_path.clone(),
        text: format!("{builder:?}"),
        what: e.to_string(),
    })?;
    let scale_path = event_path.with_extension("scale");
    let scale = builder
        .scale()
        .map_err(|e| EnergyError::io(&scale_path, e))?
        .ok_or_else(|| EnergyError::Parse {
            path: scale_path.clone(),
            text: String::new(),
            what: "a scale (the file is missing)".into(),
        })?;
    let unit_path = event_path.with_extension("unit");
    let unit = builder
        .unit()
        .map_err(|e| EnergyError::io(&unit_path, e))?
        .unwrap_or_default();
    if unit != "Joules" || !(scale.is_finite() && scale > 0.0) {
        return Err(EnergyError::Parse {
            path: unit_path,
            text: format!("unit {unit:?}, scale {scale}"),
            what: "unit `Joules` with a positive scale".into(),
        });
    }
    let cpumask = std::fs::read_to_string(pmu_dir.join("cpumask"))
        .ok()
        .and_then(|t| parse_cpu_list(&t))
        .unwrap_or_default();
    Ok(EventDesc {
        pmu: pmu.to_owned(),
        name: name.to_owned(),
        domain,
        event,
        joules_per_count: scale,
        cpumask,
    })
}

/// The CPUs to open an event on, with the package each stands for (`None`: host-wide psys).
/// Per-core events open on one CPU per core; others on the PMU's `cpumask` CPU of each
/// package, or the package's first CPU when the mask is missing.
pub fn placements(desc: &EventDesc, topology: &Topology) -> Vec<(Option<u32>, u32)> {
    let mut out = Vec::new();
    for package in topology.packages() {
        if desc.pmu == "power_core" {
            out.extend(
                topology
                    .core_cpus(package)
                    .into_iter()
                    .map(|c| (Some(package), c)),
            );
            continue;
        }
        let cpu = desc
            .cpumask
            .iter()
            .copied()
            .find(|&c| topology.package_of(c) == Some(package))
            .or_else(|| topology.first_cpu(package));
        if let Some(cpu) = cpu {
            let package = (desc.domain != Domain::Psys).then_some(package);
            out.push((package, cpu));
            if package.is_none() {
                break;
            }
        }
    }
    out
}

struct Opened {
    id: DomainId,
    counters: Vec<(perf_event::Counter, Counter)>,
    convert: ToMicrojoules,
}

/// The perf power PMU source, opened.
pub struct PerfSource {
    opened: Vec<Opened>,
}

impl PerfSource {
    /// Opens every described event on its CPUs; fails unless energy-pkg opens everywhere.
    pub fn open(sysfs_root: &Path, topology: &Topology) -> Result<Self, EnergyError> {
        let mut opened: Vec<Opened> = Vec::new();
        for desc in describe(sysfs_root)? {
            let mut by_package: Vec<(Option<u32>, Vec<u32>)> = Vec::new();
            for (package, cpu) in placements(&desc, topology) {
                match by_package.iter_mut().find(|(p, _)| *p == package) {
                    Some((_, cpus)) => cpus.push(cpu),
                    None => by_package.push((package, vec![cpu])),
                }
            }
            for (package, cpus) in by_package {
                match open_counters(&desc, &cpus) {
                    Ok(counters) => opened.push(Opened {
                        id: DomainId {
                            package,
                            domain: desc.domain,
                        },
                        counters,
                        convert: ToMicrojoules::new(desc.joules_per_count),
                    }),
                    Err(e) if desc.domain == Domain::Package => return Err(e),
                    Err(e) => {
                        tracing::warn!(event = desc.name, error = %e, "perf energy event left out")
                    }
                }
            }
        }
        Ok(Self { opened })
    }
}

fn open_counters(
    desc: &EventDesc,
    cpus: &[u32],
) -> Result<Vec<(perf_event::Counter, Counter)>, EnergyError> {
    let mut out = Vec::new();
    for &cpu in cpus {
        let fail = |e: std::io::Error| {
            EnergyError::Unavailable(format!(
                "perf_event_open {}/{} on CPU {cpu}: {e}; needs root or CAP_PERFMON \
                 (perf_event_paranoid <= 0 for system-wide events)",
                desc.pmu, desc.name
            ))
        };
        let mut counter = perf_event::Builder::new(desc.event)
            .one_cpu(cpu as usize)
            .any_pid()
            .exclude_kernel(false)
            .exclude_hv(false)
            .build()
            .map_err(fail)?;
        counter.enable().map_err(fail)?;
        let value = counter.read().map_err(fail)?;
        let mut wrap = Counter::new(Wrap::Never);
        let _ = wrap.advance(value);
        out.push((counter, wrap));
    }
    Ok(out)
}

impl EnergySource for PerfSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Perf
    }

    fn describe(&self) -> String {
        let names: Vec<String> = self.opened.iter().map(|o| o.id.to_string()).collect();
        format!("perf power PMU ({})", names.join(", "))
    }

    fn domains(&self) -> Vec<DomainId> {
        self.opened.iter().map(|o| o.id).collect()
    }

    fn read(&mut self, _activity: &Activity) -> Result<Vec<DomainReading>, EnergyError> {
        let mut out = Vec::with_capacity(self.opened.len());
        for o in &mut self.opened {
            let mut counts = 0u64;
            let mut fault = None;
            for (counter, wrap) in &mut o.counters {
                match counter.read() {
                    Ok(value) => match wrap.advance(value) {
                        Ok(delta) => counts += delta,
                        Err(f) => fault = Some(f),
                    },
                    Err(e) => {
                        tracing::warn!(domain = %o.id, error = %e, "perf energy read failed");
                        fault = Some(Fault::Unreadable);
                    }
                }
            }
            out.push(match fault {
                None => DomainReading::ok(o.id, o.convert.convert(counts)),
                Some(f) => DomainReading::failed(o.id, f),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2^-32 J, the scale the kernel's RAPL PMU publishes.
    const SCALE: &str = "2.3283064365386962890625e-10";

    /// Writes a `power` PMU description like the kernel's under `root`.
    fn fixture(root: &Path, events: &[(&str, &str, &str, &str)], cpumask: &str) {
        let pmu = pmu_dir(root, "power");
        std::fs::create_dir_all(pmu.join("events")).unwrap();
        std::fs::create_dir_all(pmu.join("format")).unwrap();
        std::fs::write(pmu.join("type"), "4095\n").unwrap();
        std::fs::write(pmu.join("format/event"), "config:0-7\n").unwrap();
        std::fs::write(pmu.join("cpumask"), format!("{cpumask}\n")).unwrap();
        for (name, code, scale, unit) in events {
            let base = pmu.join("events").join(name);
            std::fs::write(&base, format!("{code}\n")).unwrap();
            std::fs::write(base.with_extension("scale"), format!("{scale}\n")).unwrap();
            std::fs::write(base.with_extension("unit"), format!("{unit}\n")).unwrap();
        }
    }

    #[test]
    fn fixture_event_descriptions_decode_to_codes_scales_and_domains() {
        let dir = tempfile::tempdir().unwrap();
        fixture(
            dir.path(),
            &[
                ("energy-pkg", "event=0x02", SCALE, "Joules"),
                ("energy-ram", "event=0x03", "1.52587890625e-05", "Joules"),
                ("energy-psys", "event=0x05", SCALE, "Joules"),
            ],
            "0,2",
        );
        let descs = describe(dir.path()).unwrap();
        let pkg = descs.iter().find(|d| d.name == "energy-pkg").unwrap();
        assert_eq!(pkg.domain, Domain::Package);
        assert_eq!(
            format!("{:?}", pkg.event),
            "Dynamic { ty: 4095, config: 2, config1: 0, config2: 0 }"
        );
        assert_eq!(pkg.joules_per_count, 2f64.powi(-32));
        assert_eq!(pkg.cpumask, vec![0, 2]);
        let ram = descs.iter().find(|d| d.name == "energy-ram").unwrap();
        assert_eq!(
            (ram.domain, ram.joules_per_count),
            (Domain::Dram, 2f64.powi(-16))
        );

        // Known conversions: 2^32 counts of energy-pkg are 1 J; 3 x 2^16 of energy-ram, 3 J.
        let mut conv = ToMicrojoules::new(pkg.joules_per_count);
        assert_eq!(conv.convert(1 << 32), 1_000_000);
        assert_eq!(conv.convert(3 << 31), 1_500_000);
        let mut conv = ToMicrojoules::new(ram.joules_per_count);
        assert_eq!(conv.convert(3 << 16), 3_000_000);

        // The cpumask names one CPU per package; psys is opened once for the host.
        let topo = Topology::from_triples(&[(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)]);
        assert_eq!(placements(pkg, &topo), vec![(Some(0), 0), (Some(1), 2)]);
        let psys = descs.iter().find(|d| d.name == "energy-psys").unwrap();
        assert_eq!(placements(psys, &topo), vec![(None, 0)]);
    }

    #[test]
    fn amd_power_core_pmu_opens_one_energy_core_event_per_core() {
        let dir = tempfile::tempdir().unwrap();
        fixture(
            dir.path(),
            &[("energy-pkg", "event=0x02", SCALE, "Joules")],
            "0",
        );
        let core = pmu_dir(dir.path(), "power_core");
        std::fs::create_dir_all(core.join("events")).unwrap();
        std::fs::create_dir_all(core.join("format")).unwrap();
        std::fs::write(core.join("type"), "4094\n").unwrap();
        std::fs::write(core.join("format/event"), "config:0-7\n").unwrap();
        std::fs::write(core.join("events/energy-core"), "event=0x01\n").unwrap();
        std::fs::write(core.join("events/energy-core.scale"), format!("{SCALE}\n")).unwrap();
        std::fs::write(core.join("events/energy-core.unit"), "Joules\n").unwrap();
        let descs = describe(dir.path()).unwrap();
        let per_core = descs.iter().find(|d| d.pmu == "power_core").unwrap();
        assert_eq!(per_core.domain, Domain::Core);
        // SMT siblings share a core: one event per core, on its first CPU.
        let topo = Topology::from_triples(&[(0, 0, 0), (1, 0, 1), (2, 0, 0), (3, 0, 1)]);
        assert_eq!(
            placements(per_core, &topo),
            vec![(Some(0), 0), (Some(0), 1)]
        );
    }

    #[test]
    fn a_wrong_unit_or_missing_package_event_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        fixture(
            dir.path(),
            &[("energy-pkg", "event=0x02", SCALE, "Watts")],
            "0",
        );
        let err = describe(dir.path()).unwrap_err().to_string();
        assert!(err.contains("Joules"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        fixture(
            dir.path(),
            &[("energy-ram", "event=0x03", SCALE, "Joules")],
            "0",
        );
        let err = describe(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no energy-pkg"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let err = describe(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no perf `power` PMU"), "{err}");
    }

    #[test]
    fn opening_an_event_the_kernel_does_not_have_fails_with_the_reason() {
        // The fixture's PMU type 4095 does not exist in this kernel: perf_event_open refuses.
        let dir = tempfile::tempdir().unwrap();
        fixture(
            dir.path(),
            &[("energy-pkg", "event=0x02", SCALE, "Joules")],
            "0",
        );
        let err = match PerfSource::open(dir.path(), &Topology::single_package([0])) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a fake PMU type opened"),
        };
        assert!(
            err.contains("perf_event_open power/energy-pkg on CPU 0"),
            "{err}"
        );
    }
}
