//! Energy: where the agent's joules come from and how they are charged to samples.
//!
//! Four sources sit behind one [`EnergySource`] trait, best first: the perf `power` PMU
//! ([`perf`]), powercap sysfs ([`powercap`]), RAPL MSRs ([`msr`]) and a utilization
//! [`model`] whose every figure is labelled *estimated*. [`Meter`] opens one (`auto` picks the
//! best that works), reads it once per interval, falls back to the model for a package whose
//! counters failed, and hands the energy to [`attribute`], which splits each package's energy
//! over the samples taken on that package's CPUs in integer microjoules that add up exactly.
//! [`diagnose`] explains, for `doctor`, which sources work on this host and why the others do
//! not. Paths come from [`EnergyArgs`] so tests can point every source at fixture trees.

mod args;
pub mod attribute;
mod counter;
pub mod cputime;
mod diagnose;
mod idle;
mod meter;
pub mod model;
pub mod msr;
pub mod perf;
pub mod powercap;
mod report;
pub mod topology;

use std::{fmt, io, path::PathBuf, time::Duration};

pub use args::{AttributionMode, EnergyArgs, SourceChoice};
pub use attribute::{IntervalEnergy, PackageEnergy, SampleSlot};
pub use diagnose::{Diagnosis, SourceReport, diagnose};
pub use idle::IdleLearner;
pub use meter::Meter;
pub use report::meta;
pub use topology::Topology;

/// An energy domain as RAPL names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Domain {
    /// The whole package (socket): cores, caches, uncore.
    Package,
    /// The cores of a package (PP0); part of `Package`.
    Core,
    /// The uncore or graphics of a package (PP1); part of `Package`.
    Uncore,
    /// Memory attached to the package; not part of `Package`.
    Dram,
    /// The whole platform (SoC + more); overlaps every other domain.
    Psys,
}

impl Domain {
    /// Name as `doctor`, summaries and profiles print it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Package => "package",
            Self::Core => "core",
            Self::Uncore => "uncore",
            Self::Dram => "dram",
            Self::Psys => "psys",
        }
    }

    /// Whether the domain's energy is charged to samples. Core and uncore are inside the
    /// package and psys overlaps everything, so charging them too would count twice.
    pub fn is_charged(self) -> bool {
        matches!(self, Self::Package | Self::Dram)
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which kind of source produced a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKind {
    /// perf `power` PMU (RAPL through perf events).
    Perf,
    /// powercap sysfs (`intel-rapl:N[:M]/energy_uj`).
    Powercap,
    /// RAPL model-specific registers through `/dev/cpu/N/msr`.
    Msr,
    /// Utilization x watts curve: estimated, not measured.
    Model,
}

impl SourceKind {
    /// Name as the `--energy-source` flag spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Perf => "perf",
            Self::Powercap => "powercap",
            Self::Msr => "msr",
            Self::Model => "model",
        }
    }

    /// Measured sources, best first (the order `auto` tries them).
    pub const MEASURED: [Self; 3] = [Self::Perf, Self::Powercap, Self::Msr];
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A domain of one package, or of the whole host (`package: None`, e.g. psys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainId {
    /// Physical package id, `None` for host-wide domains.
    pub package: Option<u32>,
    /// The domain.
    pub domain: Domain,
}

impl fmt::Display for DomainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.package {
            Some(p) => write!(f, "{}-{p}", self.domain),
            None => write!(f, "{}", self.domain),
        }
    }
}

/// Why a reading or a share of energy is missing. Each is counted by [`Meter`] and logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// A counter file or register could not be read (permissions, I/O error, bad text).
    Unreadable,
    /// A zone or device that existed at open time is gone.
    Vanished,
    /// A counter went backwards by more than a wrap-around explains (reset or hot-plug).
    Backwards,
    /// A package had energy but no samples to charge it to: reported as unattributed.
    NoSamples,
    /// The interval had zero length: nothing to divide by, nothing charged.
    ZeroInterval,
    /// A package's measured energy was missing and the model estimated it instead.
    ModelFallback,
}

impl Fault {
    /// Name in logs and summaries.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unreadable => "unreadable",
            Self::Vanished => "vanished",
            Self::Backwards => "counter_backwards",
            Self::NoSamples => "no_samples",
            Self::ZeroInterval => "zero_interval",
            Self::ModelFallback => "model_fallback",
        }
    }
}

/// One domain's energy over an interval, or why it is unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainReading {
    /// Which domain.
    pub id: DomainId,
    /// Energy since the previous reading in microjoules; `None` when it could not be read.
    pub microjoules: Option<u64>,
    /// Why `microjoules` is `None` (or, for `Backwards`, why the interval was dropped).
    pub fault: Option<Fault>,
}

impl DomainReading {
    /// A successful reading.
    pub fn ok(id: DomainId, microjoules: u64) -> Self {
        Self {
            id,
            microjoules: Some(microjoules),
            fault: None,
        }
    }

    /// A failed reading.
    pub fn failed(id: DomainId, fault: Fault) -> Self {
        Self {
            id,
            microjoules: None,
            fault: Some(fault),
        }
    }
}

/// What the CPUs did over an interval: the model source needs it, counters ignore it.
#[derive(Clone, Debug, Default)]
pub struct Activity {
    /// Length of the interval.
    pub elapsed: Duration,
    /// Busy fraction (0..=1) of each CPU over the interval, by CPU number.
    pub cpu_busy: std::collections::BTreeMap<u32, f64>,
}

/// A source of energy readings. Opening a source reads every counter once, so a source that
/// opened works and each [`read`](Self::read) returns the energy since the previous one.
pub trait EnergySource: Send {
    /// Which kind of source this is.
    fn kind(&self) -> SourceKind;
    /// True when figures are estimated rather than measured.
    fn estimated(&self) -> bool {
        false
    }
    /// A one-line description of the method (the curve, the PMU, the zones read).
    fn describe(&self) -> String;
    /// The domains this source reports.
    fn domains(&self) -> Vec<DomainId>;
    /// Energy per domain since the previous call. Per-domain failures are reported in the
    /// readings; `Err` means the whole source stopped working.
    fn read(&mut self, activity: &Activity) -> Result<Vec<DomainReading>, EnergyError>;
}

/// Errors from opening or reading energy sources and topology.
#[derive(Debug, thiserror::Error)]
pub enum EnergyError {
    /// A file of a source or of the topology could not be read.
    #[error("reading {path}: {source}{hint}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
        /// What to do about it (may be empty), starting with "; ".
        hint: String,
    },
    /// A file held something that does not parse.
    #[error("{path}: cannot parse {text:?}: {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was read.
        text: String,
        /// What was expected.
        what: String,
    },
    /// The source does not exist on this host.
    #[error("{0}")]
    Unavailable(String),
    /// A configuration value is invalid.
    #[error("invalid energy setting {flag}: {reason}")]
    Config {
        /// The flag at fault.
        flag: &'static str,
        /// Why.
        reason: String,
    },
}

impl EnergyError {
    /// An I/O error on `path`, with a hint chosen from the error kind.
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        let hint = match source.kind() {
            io::ErrorKind::PermissionDenied => {
                "; energy counters are readable by root only since the 2020 PLATYPUS fixes \
                 (CVE-2020-8694, CVE-2020-12912): run as root or grant read access"
            }
            io::ErrorKind::NotFound => "; the file does not exist on this host",
            _ => "",
        };
        Self::Io {
            path: path.into(),
            source,
            hint: hint.to_owned(),
        }
    }
}

/// Classifies an I/O error for a per-domain fault.
pub(crate) fn fault_of(e: &io::Error) -> Fault {
    match e.kind() {
        io::ErrorKind::NotFound => Fault::Vanished,
        _ => Fault::Unreadable,
    }
}
