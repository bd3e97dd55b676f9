//! What `doctor` says about energy: every source, the domains it would report, why an
//! unusable one is unusable, and which source `auto` picks (and whether that is estimated).

use std::fmt;

use super::{EnergyArgs, SourceKind, Topology, meter::open_source, powercap};

/// One source's verdict.
#[derive(Clone, Debug)]
pub struct SourceReport {
    /// The source.
    pub kind: SourceKind,
    /// True when it opened and read.
    pub usable: bool,
    /// Domains it reports (e.g. `package-0`, `dram-0`).
    pub domains: Vec<String>,
    /// The method line when usable; the reason when not.
    pub detail: String,
    /// When unusable: what it would take to make it work.
    pub fix: Option<String>,
}

/// The energy part of `doctor`.
#[derive(Clone, Debug)]
pub struct Diagnosis {
    /// Packages and CPUs, or why the topology could not be read.
    pub topology: Result<String, String>,
    /// Each source, best first.
    pub sources: Vec<SourceReport>,
    /// What `--energy-source auto` would use (`None` if not even the model opens).
    pub auto: Option<SourceKind>,
    /// True when any RAPL interface (perf, powercap, msr) works.
    pub rapl: bool,
}

/// Tries every source with the paths in `args` and reports.
pub fn diagnose(args: &EnergyArgs) -> Diagnosis {
    let topology = Topology::read(&args.sysfs_root);
    let topo_line = topology
        .as_ref()
        .map(|t| {
            format!(
                "{} CPUs in {} package(s) (from {})",
                t.len(),
                t.packages().len(),
                args.sysfs_root.join("devices/system/cpu").display()
            )
        })
        .map_err(ToString::to_string);
    let topology = topology.unwrap_or_else(|_| Topology::single_package([0]));
    let mut sources = Vec::new();
    for kind in SourceKind::MEASURED.into_iter().chain([SourceKind::Model]) {
        let mut report = match open_source(kind, args, &topology) {
            Ok(source) => SourceReport {
                kind,
                usable: true,
                domains: source.domains().iter().map(ToString::to_string).collect(),
                detail: source.describe(),
                fix: None,
            },
            Err(e) => SourceReport {
                kind,
                usable: false,
                domains: Vec::new(),
                detail: e.to_string(),
                fix: Some(fix(kind).to_owned()),
            },
        };
        if kind == SourceKind::Powercap
            && let Ok(zones) = powercap::discover(&args.powercap_root)
        {
            for z in zones {
                if let Err(e) = &z.energy_uj {
                    report.detail.push_str(&format!(
                        "; zone {} ({}) unreadable: {e}",
                        z.dir.display(),
                        z.name
                    ));
                }
            }
        }
        sources.push(report);
    }
    let auto = sources.iter().find(|s| s.usable).map(|s| s.kind);
    let rapl = sources
        .iter()
        .any(|s| s.usable && s.kind != SourceKind::Model);
    Diagnosis {
        topology: topo_line,
        sources,
        auto,
        rapl,
    }
}

/// What makes a source work, for `doctor`.
fn fix(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Perf => {
            "needs RAPL hardware (bare metal, or a hypervisor that passes the power PMU \
             through) and root or CAP_PERFMON"
        }
        SourceKind::Powercap => {
            "needs RAPL hardware and the intel_rapl_common driver (`modprobe intel_rapl_msr`); \
             energy_uj is root-only; containers must not mask /sys/devices/virtual/powercap"
        }
        SourceKind::Msr => "needs RAPL hardware, `modprobe msr` and root (CAP_SYS_RAWIO)",
        SourceKind::Model => "check --model-idle-watts, --model-max-watts and --model-curve",
    }
}

impl Diagnosis {
    /// One plain sentence: is there RAPL, and what does `auto` use.
    pub fn verdict(&self) -> String {
        match (self.rapl, self.auto) {
            (true, Some(kind)) => {
                format!("RAPL available: --energy-source auto uses {kind} (measured)")
            }
            (false, Some(SourceKind::Model)) => {
                "no RAPL on this host (no perf power PMU, no powercap \
                zones, no RAPL MSRs): --energy-source auto falls back to the model, so every joule \
                is ESTIMATED from CPU utilization, not measured"
                    .to_owned()
            }
            _ => "no energy source works: energy is disabled".to_owned(),
        }
    }
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.topology {
            Ok(line) => writeln!(f, "  topology: {line}")?,
            Err(e) => writeln!(f, "  topology: unreadable ({e}); assuming one package")?,
        }
        for s in &self.sources {
            if s.usable {
                writeln!(
                    f,
                    "  {:<9} ok       domains: {}; {}",
                    s.kind.name(),
                    s.domains.join(", "),
                    s.detail
                )?;
            } else {
                writeln!(f, "  {:<9} unusable: {}", s.kind.name(), s.detail)?;
            }
        }
        writeln!(f, "  {}", self.verdict())
    }
}
