//! The MSR source: RAPL registers read through `/dev/cpu/N/msr` (needs the `msr` module and
//! CAP_SYS_RAWIO). Intel: unit 0x606, package 0x611, cores 0x639, DRAM 0x619, platform 0x64d.
//! AMD: unit 0xC0010299, package 0xC001029B, per-core 0xC001029A. Energy counters are 32 bits
//! and wrap; the unit register's bits 12:8 give the energy unit as 2^-ESU joules.
//!
//! Reading goes through [`MsrDevice`] so tests feed register values to the decode paths.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use super::{
    Activity, Domain, DomainId, DomainReading, EnergyError, EnergySource, Fault, SourceKind,
    Topology,
    counter::{Counter, ToMicrojoules, Wrap},
    fault_of,
};

/// Intel `MSR_RAPL_POWER_UNIT`.
pub const INTEL_UNIT: u32 = 0x606;
/// Intel `MSR_PKG_ENERGY_STATUS`.
pub const INTEL_PKG: u32 = 0x611;
/// Intel `MSR_PP0_ENERGY_STATUS` (cores).
pub const INTEL_PP0: u32 = 0x639;
/// Intel `MSR_DRAM_ENERGY_STATUS`.
pub const INTEL_DRAM: u32 = 0x619;
/// Intel `MSR_PLATFORM_ENERGY_STATUS` (psys).
pub const INTEL_PLATFORM: u32 = 0x64d;
/// AMD `MSR_AMD_RAPL_POWER_UNIT`.
pub const AMD_UNIT: u32 = 0xC001_0299;
/// AMD `MSR_AMD_PKG_ENERGY_STATUS`.
pub const AMD_PKG: u32 = 0xC001_029B;
/// AMD `MSR_AMD_CORE_ENERGY_STATUS` (per core).
pub const AMD_CORE: u32 = 0xC001_029A;

/// Reads one 64-bit MSR on one CPU.
pub trait MsrDevice: Send {
    /// The register's value, or the error the device gave (EIO: not implemented).
    fn read(&mut self, cpu: u32, register: u32) -> io::Result<u64>;
}

/// The kernel's `msr` driver: `{root}/N/msr`, read at offset = register number.
pub struct DevCpuMsr {
    root: PathBuf,
    files: HashMap<u32, File>,
}

impl DevCpuMsr {
    /// Uses `{root}/N/msr` (normally `/dev/cpu`).
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            files: HashMap::new(),
        }
    }

    /// Path of one CPU's device.
    pub fn path(&self, cpu: u32) -> PathBuf {
        self.root.join(format!("{cpu}/msr"))
    }
}

impl MsrDevice for DevCpuMsr {
    fn read(&mut self, cpu: u32, register: u32) -> io::Result<u64> {
        if !self.files.contains_key(&cpu) {
            let file = File::open(self.path(cpu))?;
            self.files.insert(cpu, file);
        }
        let mut buf = [0u8; 8];
        self.files[&cpu].read_exact_at(&mut buf, u64::from(register))?;
        Ok(u64::from_le_bytes(buf))
    }
}

/// CPU vendor, which decides the register set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// Intel RAPL registers.
    Intel,
    /// AMD (and Hygon) RAPL registers.
    Amd,
}

/// Joules per counter step from a RAPL unit register: 2^-ESU, ESU in bits 12:8.
pub fn joules_per_count(unit_register: u64) -> f64 {
    let esu = (unit_register >> 8) & 0x1f;
    1.0 / (1u64 << esu) as f64
}

/// Registers read per package for a vendor: (domain, register, per core?).
fn registers(vendor: Vendor) -> &'static [(Domain, u32, bool)] {
    match vendor {
        Vendor::Intel => &[
            (Domain::Package, INTEL_PKG, false),
            (Domain::Core, INTEL_PP0, false),
            (Domain::Dram, INTEL_DRAM, false),
        ],
        Vendor::Amd => &[
            (Domain::Package, AMD_PKG, false),
            (Domain::Core, AMD_CORE, true),
        ],
    }
}

/// One domain: the counters (one per CPU read) summed, then converted.
struct MsrDomain {
    id: DomainId,
    register: u32,
    counters: Vec<(u32, Counter)>,
    convert: ToMicrojoules,
}

/// The MSR source, opened.
pub struct MsrSource {
    device: Box<dyn MsrDevice>,
    vendor: Vendor,
    joules_per_count: f64,
    domains: Vec<MsrDomain>,
}

impl MsrSource {
    /// Probes the vendor's unit register on the first CPU (a zero or unreadable unit register
    /// means "not this vendor"), then keeps every domain whose registers read on all CPUs.
    pub fn open(mut device: Box<dyn MsrDevice>, topology: &Topology) -> Result<Self, EnergyError> {
        let first = topology
            .cpus()
            .next()
            .ok_or_else(|| EnergyError::Unavailable("no online CPUs".into()))?;
        let mut errors = Vec::new();
        let mut found = None;
        for (vendor, unit_reg) in [(Vendor::Intel, INTEL_UNIT), (Vendor::Amd, AMD_UNIT)] {
            match device.read(first, unit_reg) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(EnergyError::Unavailable(format!(
                        "no MSR device for CPU {first}: the msr driver is not loaded \
                         (`modprobe msr` creates /dev/cpu/N/msr)"
                    )));
                }
                Ok(0) => errors.push(format!("{vendor:?} unit register {unit_reg:#x} reads 0")),
                Ok(unit) => {
                    found = Some((vendor, unit));
                    break;
                }
                Err(e) => errors.push(format!("{vendor:?} unit register {unit_reg:#x}: {e}")),
            }
        }
        let Some((vendor, unit)) = found else {
            return Err(EnergyError::Unavailable(format!(
                "no RAPL unit register on CPU {first}: {} (EIO: the CPU or hypervisor does \
                 not implement RAPL MSRs)",
                errors.join("; ")
            )));
        };
        let joules_per_count = joules_per_count(unit);
        let mut domains = Vec::new();
        for package in topology.packages() {
            for &(domain, register, per_core) in registers(vendor) {
                let cpus = if per_core {
                    topology.core_cpus(package)
                } else {
                    topology.first_cpu(package).into_iter().collect()
                };
                if let Some(d) = open_domain(
                    device.as_mut(),
                    Some(package),
                    domain,
                    register,
                    &cpus,
                    joules_per_count,
                ) {
                    domains.push(d);
                }
            }
        }
        if vendor == Vendor::Intel
            && let Some(d) = open_domain(
                device.as_mut(),
                None,
                Domain::Psys,
                INTEL_PLATFORM,
                &[first],
                joules_per_count,
            )
        {
            domains.push(d);
        }
        if !domains.iter().any(|d| d.id.domain == Domain::Package) {
            return Err(EnergyError::Unavailable(format!(
                "{vendor:?} unit register reads but no package energy register does"
            )));
        }
        Ok(Self {
            device,
            vendor,
            joules_per_count,
            domains,
        })
    }

    /// The vendor whose registers are read.
    pub fn vendor(&self) -> Vendor {
        self.vendor
    }
}

fn open_domain(
    device: &mut dyn MsrDevice,
    package: Option<u32>,
    domain: Domain,
    register: u32,
    cpus: &[u32],
    joules_per_count: f64,
) -> Option<MsrDomain> {
    let mut counters = Vec::new();
    for &cpu in cpus {
        match device.read(cpu, register) {
            Ok(value) => {
                let mut counter = Counter::new(Wrap::Bits(32));
                let _ = counter.advance(value);
                counters.push((cpu, counter));
            }
            Err(e) => {
                tracing::debug!(cpu, register = format!("{register:#x}"), error = %e, "RAPL register unreadable; domain left out");
                return None;
            }
        }
    }
    (!counters.is_empty()).then(|| MsrDomain {
        id: DomainId { package, domain },
        register,
        counters,
        convert: ToMicrojoules::new(joules_per_count),
    })
}

impl EnergySource for MsrSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Msr
    }

    fn describe(&self) -> String {
        format!(
            "{:?} RAPL MSRs, {} uJ per count",
            self.vendor,
            self.joules_per_count * 1e6
        )
    }

    fn domains(&self) -> Vec<DomainId> {
        self.domains.iter().map(|d| d.id).collect()
    }

    fn read(&mut self, _activity: &Activity) -> Result<Vec<DomainReading>, EnergyError> {
        let mut out = Vec::with_capacity(self.domains.len());
        for d in &mut self.domains {
            let mut counts = 0u64;
            let mut fault: Option<Fault> = None;
            for (cpu, counter) in &mut d.counters {
                match self.device.read(*cpu, d.register) {
                    Ok(value) => match counter.advance(value) {
                        Ok(delta) => counts += delta,
                        Err(f) => fault = Some(f),
                    },
                    Err(e) => {
                        tracing::warn!(cpu = *cpu, register = format!("{:#x}", d.register), error = %e, "MSR read failed");
                        fault = Some(fault_of(&e));
                    }
                }
            }
            out.push(match fault {
                None => DomainReading::ok(d.id, d.convert.convert(counts)),
                Some(f) => DomainReading::failed(d.id, f),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Register values a test sets; a missing register reads as EIO, like real hardware.
    #[derive(Clone, Default)]
    struct Registers(std::sync::Arc<std::sync::Mutex<HashMap<(u32, u32), u64>>>);

    impl Registers {
        fn set(&self, cpu: u32, register: u32, value: u64) {
            self.0.lock().unwrap().insert((cpu, register), value);
        }
    }

    impl MsrDevice for Registers {
        fn read(&mut self, cpu: u32, register: u32) -> io::Result<u64> {
            self.0
                .lock()
                .unwrap()
                .get(&(cpu, register))
                .copied()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))
        }
    }

    fn reading(readings: &[DomainReading], package: Option<u32>, domain: Domain) -> Option<u64> {
        readings
            .iter()
            .find(|r| r.id == DomainId { package, domain })
            .and_then(|r| r.microjoules)
    }

    #[test]
    fn unit_register_decodes_to_joules() {
        // Intel's common 0xA0E03: ESU = 0xE -> 2^-14 J = 61.03515625 uJ.
        assert_eq!(joules_per_count(0xA0E03) * 1e6, 61.035_156_25);
        // AMD Zen 0x000A1003: ESU = 0x10 -> 2^-16 J = 15.2587890625 uJ.
        assert_eq!(joules_per_count(0x000A_1003) * 1e6, 15.258_789_062_5);
    }

    #[test]
    fn intel_registers_with_known_values_give_known_microjoules_and_wrap() {
        let regs = Registers::default();
        let topo = Topology::single_package([0, 1]);
        regs.set(0, INTEL_UNIT, 0xA0E03);
        regs.set(0, INTEL_PKG, 0xFFFF_F000);
        regs.set(0, INTEL_PP0, 100);
        regs.set(0, INTEL_DRAM, 7);
        let mut src = MsrSource::open(Box::new(regs.clone()), &topo).unwrap();
        assert_eq!(src.vendor(), Vendor::Intel);
        // Package wraps: 0xFFFFF000 -> 0x1000 is 0x2000 = 8192 counts = 500000 uJ.
        regs.set(0, INTEL_PKG, 0x1000);
        regs.set(0, INTEL_PP0, 100 + 16_384); // 1 J
        regs.set(0, INTEL_DRAM, 7 + 1_638); // 99975.5859375 uJ -> 99975, 0.5859375 carried
        let r = src.read(&Activity::default()).unwrap();
        assert_eq!(reading(&r, Some(0), Domain::Package), Some(500_000));
        assert_eq!(reading(&r, Some(0), Domain::Core), Some(1_000_000));
        assert_eq!(reading(&r, Some(0), Domain::Dram), Some(99_975));
        // No platform register here: psys is not reported.
        assert!(!src.domains().iter().any(|d| d.domain == Domain::Psys));
        regs.set(0, INTEL_DRAM, 7 + 1_638 * 2);
        let r = src.read(&Activity::default()).unwrap();
        assert_eq!(reading(&r, Some(0), Domain::Dram), Some(99_976));
    }

    #[test]
    fn amd_reads_package_per_socket_and_core_energy_per_core() {
        let regs = Registers::default();
        let topo = Topology::from_triples(&[(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)]);
        for cpu in 0..4 {
            regs.set(cpu, AMD_UNIT, 0x000A_1003);
            regs.set(cpu, AMD_CORE, 0);
        }
        regs.set(0, AMD_PKG, 0);
        regs.set(2, AMD_PKG, 0);
        let mut src = MsrSource::open(Box::new(regs.clone()), &topo).unwrap();
        assert_eq!(src.vendor(), Vendor::Amd);
        regs.set(0, AMD_PKG, 65_536); // 1 J
        regs.set(2, AMD_PKG, 131_072); // 2 J
        regs.set(0, AMD_CORE, 65_536);
        regs.set(1, AMD_CORE, 32_768);
        let r = src.read(&Activity::default()).unwrap();
        assert_eq!(reading(&r, Some(0), Domain::Package), Some(1_000_000));
        assert_eq!(reading(&r, Some(1), Domain::Package), Some(2_000_000));
        assert_eq!(reading(&r, Some(0), Domain::Core), Some(1_500_000));
        assert_eq!(reading(&r, Some(0), Domain::Dram), None);
    }

    #[test]
    fn no_unit_register_is_explained() {
        let regs = Registers::default();
        let err = match MsrSource::open(Box::new(regs), &Topology::single_package([0])) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("opened without registers"),
        };
        assert!(
            err.contains("0x606") && err.contains("not implement RAPL MSRs"),
            "{err}"
        );
    }

    #[test]
    fn dev_cpu_msr_reads_little_endian_at_the_register_offset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("0")).unwrap();
        let file = File::create(dir.path().join("0/msr")).unwrap();
        file.write_all_at(&0xA0E03u64.to_le_bytes(), u64::from(INTEL_UNIT))
            .unwrap();
        let mut dev = DevCpuMsr::new(dir.path());
        assert_eq!(dev.read(0, INTEL_UNIT).unwrap(), 0xA0E03);
        // A hole before the written register reads as zero; past the end is an error.
        assert_eq!(dev.read(0, 0x500).unwrap(), 0);
        assert!(dev.read(0, INTEL_PKG).is_err());
        assert_eq!(
            dev.read(1, INTEL_PKG).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
