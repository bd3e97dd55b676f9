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
            },
            Err(e) => SourceReport {
                kind,
                usable: false,
                domains: Vec::new(),
                detail: e.to_string(),
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
        if !self.rapl {
            writeln!(
                f,
                "  no RAPL: this host exposes no energy counters (no perf power PMU, no \
                 powercap zones, no RAPL MSRs)"
            )?;
        }
        match self.auto {
            Some(SourceKind::Model) => writeln!(
                f,
                "  --energy-source auto uses: model (every joule is ESTIMATED from CPU \
                 utilization, not measured)"
            ),
            Some(kind) => writeln!(f, "  --energy-source auto uses: {kind} (measured)"),
            None => writeln!(f, "  --energy-source auto: nothing usable, energy disabled"),
        }
    }
}
