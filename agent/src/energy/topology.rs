//! CPU topology from sysfs (`{sysfs-root}/devices/system/cpu`): which package and core each
//! online CPU belongs to. Energy is measured per package, so attribution needs this map; the
//! MSR source also reads AMD's per-core counters on one CPU of each core.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use super::EnergyError;
use crate::sampler::parse_cpu_list;

/// Where one CPU sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuPlace {
    /// `physical_package_id` (negative ids, seen on some VMs, read as 0).
    pub package: u32,
    /// `core_id` within the package.
    pub core: u32,
}

/// Online CPUs and where each one sits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    cpus: BTreeMap<u32, CpuPlace>,
}

impl Topology {
    /// Reads `{sysfs_root}/devices/system/cpu/online` and each CPU's `topology/` files.
    pub fn read(sysfs_root: &Path) -> Result<Self, EnergyError> {
        let base = sysfs_root.join("devices/system/cpu");
        let online = base.join("online");
        let text = std::fs::read_to_string(&online).map_err(|e| EnergyError::io(&online, e))?;
        let list = parse_cpu_list(&text).ok_or_else(|| EnergyError::Parse {
            path: online.clone(),
            text: text.clone(),
            what: "a cpu list like 0-3,8".into(),
        })?;
        let mut cpus = BTreeMap::new();
        for cpu in list {
            let dir = base.join(format!("cpu{cpu}/topology"));
            let package = read_id(&dir.join("physical_package_id"))?;
            let core = read_id(&dir.join("core_id"))?;
            cpus.insert(cpu, CpuPlace { package, core });
        }
        Ok(Self { cpus })
    }

    /// A topology from explicit places (tests, and hosts whose sysfs is unusable).
    pub fn from_places(places: impl IntoIterator<Item = (u32, CpuPlace)>) -> Self {
        Self {
            cpus: places.into_iter().collect(),
        }
    }

    /// A topology from `(cpu, package, core)` triples.
    pub fn from_triples(triples: &[(u32, u32, u32)]) -> Self {
        Self::from_places(
            triples
                .iter()
                .map(|&(cpu, package, core)| (cpu, CpuPlace { package, core })),
        )
    }

    /// All online CPUs on one package, with core ids equal to CPU numbers.
    pub fn single_package(cpus: impl IntoIterator<Item = u32>) -> Self {
        Self::from_places(cpus.into_iter().map(|cpu| {
            (
                cpu,
                CpuPlace {
                    package: 0,
                    core: cpu,
                },
            )
        }))
    }

    /// Online CPUs in order.
    pub fn cpus(&self) -> impl Iterator<Item = u32> + '_ {
        self.cpus.keys().copied()
    }

    /// Package of `cpu`, if it is online.
    pub fn package_of(&self, cpu: u32) -> Option<u32> {
        self.cpus.get(&cpu).map(|p| p.package)
    }

    /// Package ids in order.
    pub fn packages(&self) -> Vec<u32> {
        let set: BTreeSet<u32> = self.cpus.values().map(|p| p.package).collect();
        set.into_iter().collect()
    }

    /// CPUs of one package.
    pub fn cpus_of(&self, package: u32) -> Vec<u32> {
        self.cpus
            .iter()
            .filter(|(_, p)| p.package == package)
            .map(|(&cpu, _)| cpu)
            .collect()
    }

    /// The lowest-numbered CPU of a package (where per-package counters are read).
    pub fn first_cpu(&self, package: u32) -> Option<u32> {
        self.cpus_of(package).into_iter().next()
    }

    /// One CPU per core of a package (the lowest-numbered sibling), in core order.
    pub fn core_cpus(&self, package: u32) -> Vec<u32> {
        let mut first: BTreeMap<u32, u32> = BTreeMap::new();
        for (&cpu, place) in &self.cpus {
            if place.package == package {
                first.entry(place.core).or_insert(cpu);
            }
        }
        first.into_values().collect()
    }

    /// Number of online CPUs.
    pub fn len(&self) -> usize {
        self.cpus.len()
    }

    /// True when no CPU is known.
    pub fn is_empty(&self) -> bool {
        self.cpus.is_empty()
    }
}

fn read_id(path: &Path) -> Result<u32, EnergyError> {
    let text = std::fs::read_to_string(path).map_err(|e| EnergyError::io(path, e))?;
    let id: i64 = text.trim().parse().map_err(|_| EnergyError::Parse {
        path: path.to_owned(),
        text: text.clone(),
        what: "an integer id".into(),
    })?;
    Ok(u32::try_from(id).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn two_packages_with_hyperthreads_read_from_a_fixture_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "devices/system/cpu/online", "0-3\n");
        for (cpu, pkg, core) in [(0, 0, 0), (1, 1, 0), (2, 0, 0), (3, 1, 4)] {
            let base = format!("devices/system/cpu/cpu{cpu}/topology");
            write(
                root,
                &format!("{base}/physical_package_id"),
                &format!("{pkg}\n"),
            );
            write(root, &format!("{base}/core_id"), &format!("{core}\n"));
        }
        let topo = Topology::read(root).unwrap();
        assert_eq!(topo.packages(), vec![0, 1]);
        assert_eq!(topo.cpus_of(1), vec![1, 3]);
        assert_eq!(topo.core_cpus(0), vec![0]);
        assert_eq!(topo.core_cpus(1), vec![1, 3]);
        assert_eq!(topo.package_of(2), Some(0));
        assert_eq!(topo.package_of(9), None);
    }

    #[test]
    fn a_missing_topology_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "devices/system/cpu/online", "0\n");
        let err = Topology::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cpu0/topology/physical_package_id"), "{err}");
    }

    #[test]
    fn this_hosts_sysfs_has_a_topology() {
        let topo = Topology::read(Path::new("/sys")).unwrap();
        assert!(!topo.is_empty());
        assert!(!topo.packages().is_empty());
    }
}
