//! Fixture trees for the energy tests. This host has no RAPL, so every measured-energy test
//! reads counters from these trees, which the test itself writes and advances: a sysfs root
//! with a CPU topology, and a powercap root with `intel-rapl` zones whose `energy_uj` wraps at
//! `max_energy_range_uj` the way the kernel's does.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use tempfile::TempDir;

/// Held by tests that measure real CPU time, so they do not run busy loops against each other.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The kernel's usual `max_energy_range_uj` for a package zone.
pub const PACKAGE_RANGE: u64 = 262_143_328_850;
/// A typical DRAM zone range.
pub const DRAM_RANGE: u64 = 65_712_999_613;

/// A sysfs root holding `devices/system/cpu/{online,cpuN/topology/*}`.
pub struct Sysfs {
    dir: TempDir,
}

impl Sysfs {
    /// CPUs as (cpu, package, core).
    pub fn new(places: &[(u32, u32, u32)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cpus: Vec<String> = places.iter().map(|p| p.0.to_string()).collect();
        write(dir.path(), "devices/system/cpu/online", &cpus.join(","));
        for &(cpu, package, core) in places {
            let base = format!("devices/system/cpu/cpu{cpu}/topology");
            write(
                dir.path(),
                &format!("{base}/physical_package_id"),
                &package.to_string(),
            );
            write(dir.path(), &format!("{base}/core_id"), &core.to_string());
        }
        Self { dir }
    }

    /// The root to pass as `--sysfs-root`.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// A powercap root with zones the test advances.
pub struct Powercap {
    dir: TempDir,
    zones: BTreeMap<String, (u64, u64)>,
}

impl Default for Powercap {
    fn default() -> Self {
        Self::new()
    }
}

impl Powercap {
    /// An empty powercap class directory.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            zones: BTreeMap::new(),
        }
    }

    /// Adds zone `file` (e.g. `intel-rapl:0:2`) named `name` with its counter at `start`.
    pub fn zone(&mut self, file: &str, name: &str, start: u64, max: u64) -> &mut Self {
        write(self.dir.path(), &format!("{file}/name"), name);
        write(
            self.dir.path(),
            &format!("{file}/max_energy_range_uj"),
            &max.to_string(),
        );
        self.zones.insert(file.to_owned(), (start, max));
        self.store(file);
        self
    }

    /// Adds `uj` to a zone's counter, wrapping past `max_energy_range_uj` like the kernel.
    pub fn advance(&mut self, file: &str, uj: u64) {
        let (value, max) = self.zones.get_mut(file).expect("zone exists");
        let next = *value + uj;
        *value = if next > *max { next - *max } else { next };
        self.store(file);
    }

    /// Sets a zone's counter to `value` (a reset when lower).
    pub fn set(&mut self, file: &str, value: u64) {
        self.zones.get_mut(file).expect("zone exists").0 = value;
        self.store(file);
    }

    /// The zone's counter as last written.
    pub fn value(&self, file: &str) -> u64 {
        self.zones[file].0
    }

    /// Removes a zone directory, as a hot-unplug or driver unload would.
    pub fn remove(&mut self, file: &str) {
        std::fs::remove_dir_all(self.dir.path().join(file)).unwrap();
        self.zones.remove(file);
    }

    /// Writes arbitrary text into a zone's `energy_uj`.
    pub fn corrupt(&self, file: &str, text: &str) {
        write(self.dir.path(), &format!("{file}/energy_uj"), text);
    }

    /// The root to pass as `--powercap-root`.
    pub fn root(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    fn store(&self, file: &str) {
        let value = self.zones[file].0;
        write(
            self.dir.path(),
            &format!("{file}/energy_uj"),
            &value.to_string(),
        );
    }
}

/// Writes `text` + newline at `root/rel`, creating directories.
pub fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Write then rename so a concurrent reader never sees a half-written counter.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{text}\n")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}
