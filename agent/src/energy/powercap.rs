//! The powercap sysfs source: `intel-rapl:N` (package-N, psys) and `intel-rapl:N:M` (core,
//! uncore, dram) zones under `--powercap-root`, each an `energy_uj` counter that wraps at
//! `max_energy_range_uj`. Since the 2020 PLATYPUS fixes `energy_uj` is readable by root only;
//! a zone that cannot be read is reported, not guessed.

use std::{
    io,
    path::{Path, PathBuf},
};

use super::{
    Activity, Domain, DomainId, DomainReading, EnergyError, EnergySource, SourceKind,
    counter::{Counter, Wrap},
    fault_of,
};

/// A zone found under the powercap root.
#[derive(Clone, Debug)]
pub struct ZoneInfo {
    /// Zone directory.
    pub dir: PathBuf,
    /// Contents of its `name` file.
    pub name: String,
    /// What it measures.
    pub id: DomainId,
    /// `max_energy_range_uj`, when readable.
    pub max_range_uj: Option<u64>,
    /// The current `energy_uj`, or why it cannot be read.
    pub energy_uj: Result<u64, String>,
}

/// Lists the RAPL zones under `root` (`intel-rapl:*`; the `intel-rapl-mmio` duplicate of the
/// package zone is skipped), parents before children.
pub fn discover(root: &Path) -> Result<Vec<ZoneInfo>, EnergyError> {
    let entries = std::fs::read_dir(root).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => EnergyError::Unavailable(format!(
            "{} does not exist: no powercap driver (intel_rapl_common not loaded, a VM or \
             a container that masks /sys/devices/virtual/powercap)",
            root.display()
        )),
        _ => EnergyError::io(root, e),
    })?;
    let mut dirs: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let file = entry.file_name().to_string_lossy().into_owned();
            let ids = zone_ids(&file)?;
            Some((ids, entry.path()))
        })
        .collect();
    dirs.sort();
    let mut zones: Vec<ZoneInfo> = Vec::new();
    for (ids, dir) in dirs {
        let name = match std::fs::read_to_string(dir.join("name")) {
            Ok(text) => text.trim().to_owned(),
            Err(e) => {
                tracing::warn!(zone = %dir.display(), error = %e, "powercap zone without a readable name, skipped");
                continue;
            }
        };
        let parent_package = if ids.len() > 1 {
            zones
                .iter()
                .find(|z| zone_ids(&file_name(&z.dir)).as_deref() == Some(&ids[..1]))
                .and_then(|z| z.id.package)
        } else {
            None
        };
        let Some(id) = classify(&name, ids.len() > 1, parent_package) else {
            tracing::debug!(zone = %dir.display(), name, "powercap zone of an unknown kind, skipped");
            continue;
        };
        let max_range_uj = read_u64(&dir.join("max_energy_range_uj")).ok();
        let energy_uj = read_u64(&dir.join("energy_uj")).map_err(|e| e.to_string());
        zones.push(ZoneInfo {
            dir,
            name,
            id,
            max_range_uj,
            energy_uj,
        });
    }
    Ok(zones)
}

/// `intel-rapl:0:1` -> [0, 1].
fn zone_ids(file: &str) -> Option<Vec<u32>> {
    let rest = file.strip_prefix("intel-rapl:")?;
    rest.split(':').map(|p| p.parse().ok()).collect()
}

fn file_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Maps a zone's `name` to a domain: `package-N` (also `package-N-die-M`), `psys`, and the
/// subzones `core`, `uncore`, `dram` (which belong to their parent's package).
fn classify(name: &str, subzone: bool, parent_package: Option<u32>) -> Option<DomainId> {
    if let Some(rest) = name.strip_prefix("package-") {
        let number = rest.split('-').next()?.parse().ok()?;
        return Some(DomainId {
            package: Some(number),
            domain: Domain::Package,
        });
    }
    let domain = match name {
        "psys" => {
            return Some(DomainId {
                package: None,
                domain: Domain::Psys,
            });
        }
        "core" => Domain::Core,
        "uncore" => Domain::Uncore,
        "dram" => Domain::Dram,
        _ => return None,
    };
    let package = if subzone { parent_package } else { None };
    Some(DomainId { package, domain })
}

/// Reads a decimal counter file.
pub(crate) fn read_u64(path: &Path) -> io::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not an integer: {:?}", path.display(), text.trim()),
        )
    })
}

struct Zone {
    file: PathBuf,
    id: DomainId,
    counter: Counter,
}

/// The powercap source, opened.
pub struct PowercapSource {
    root: PathBuf,
    zones: Vec<Zone>,
}

impl PowercapSource {
    /// Opens every readable zone under `root`; fails unless at least one package zone reads.
    pub fn open(root: &Path) -> Result<Self, EnergyError> {
        let found = discover(root)?;
        if found.is_empty() {
            return Err(EnergyError::Unavailable(format!(
                "no intel-rapl zones under {}: this CPU or hypervisor exposes no RAPL",
                root.display()
            )));
        }
        let mut zones = Vec::new();
        let mut problems = Vec::new();
        for info in found {
            match info.energy_uj {
                Ok(value) => {
                    let wrap = info.max_range_uj.map_or(Wrap::Never, Wrap::Range);
                    let mut counter = Counter::new(wrap);
                    let _ = counter.advance(value);
                    zones.push(Zone {
                        file: info.dir.join("energy_uj"),
                        id: info.id,
                        counter,
                    });
                }
                Err(e) => problems.push(format!("{} ({}): {e}", info.dir.display(), info.name)),
            }
        }
        if !zones.iter().any(|z| z.id.domain == Domain::Package) {
            return Err(EnergyError::Unavailable(format!(
                "no readable package zone under {}: {}; energy_uj is root-only since the 2020 \
                 PLATYPUS fixes (CVE-2020-8694): run as root",
                root.display(),
                problems.join("; ")
            )));
        }
        for p in &problems {
            tracing::warn!(zone = %p, "powercap zone unreadable, left out");
        }
        Ok(Self {
            root: root.to_owned(),
            zones,
        })
    }
}

impl EnergySource for PowercapSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Powercap
    }

    fn describe(&self) -> String {
        format!(
            "powercap {} ({} zones)",
            self.root.display(),
            self.zones.len()
        )
    }

    fn domains(&self) -> Vec<DomainId> {
        self.zones.iter().map(|z| z.id).collect()
    }

    fn read(&mut self, _activity: &Activity) -> Result<Vec<DomainReading>, EnergyError> {
        let mut out = Vec::with_capacity(self.zones.len());
        for zone in &mut self.zones {
            let reading = match read_u64(&zone.file) {
                Ok(value) => match zone.counter.advance(value) {
                    Ok(uj) => DomainReading::ok(zone.id, uj),
                    Err(fault) => DomainReading::failed(zone.id, fault),
                },
                Err(e) => {
                    tracing::warn!(file = %zone.file.display(), error = %e, "powercap read failed");
                    DomainReading::failed(zone.id, fault_of(&e))
                }
            };
            out.push(reading);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_names_map_to_domains() {
        let pkg = classify("package-1", false, None).unwrap();
        assert_eq!((pkg.package, pkg.domain), (Some(1), Domain::Package));
        let die = classify("package-0-die-1", false, None).unwrap();
        assert_eq!(die.package, Some(0));
        let dram = classify("dram", true, Some(1)).unwrap();
        assert_eq!((dram.package, dram.domain), (Some(1), Domain::Dram));
        assert_eq!(classify("psys", false, None).unwrap().package, None);
        assert_eq!(classify("gpu-thing", true, Some(0)), None);
        assert_eq!(zone_ids("intel-rapl:0:2"), Some(vec![0, 2]));
        assert_eq!(zone_ids("intel-rapl-mmio:0"), None);
    }
}
