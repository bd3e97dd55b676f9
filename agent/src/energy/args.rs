//! The energy flags every agent command that measures energy shares (`run`, `record`,
//! `doctor`): which source, where its files are, idle power and attribution, model curve.

use std::{path::PathBuf, time::Duration};

use super::{EnergyError, model::Curve};

/// Which energy source to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceChoice {
    /// The best source that works: perf, then powercap, then msr, then model.
    Auto,
    /// The perf `power` PMU.
    Perf,
    /// powercap sysfs zones.
    Powercap,
    /// RAPL MSRs through /dev/cpu/N/msr.
    Msr,
    /// Utilization model (estimated).
    Model,
    /// No energy: profiles carry samples and CPU time only.
    None,
}

/// Whether idle power is charged to functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttributionMode {
    /// Charge only energy above the idle baseline; report idle as host idle.
    Dynamic,
    /// Charge everything, idle included, in proportion to samples.
    Full,
}

impl AttributionMode {
    /// Name as the flag spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dynamic => "dynamic",
            Self::Full => "full",
        }
    }
}

/// Energy measurement and attribution flags.
#[derive(Clone, Debug, clap::Args)]
#[non_exhaustive]
pub struct EnergyArgs {
    /// Energy source: auto picks the best that works (perf, powercap, msr, then the
    /// estimated model).
    #[arg(long, value_enum, default_value_t = SourceChoice::Auto, env = "WATTSON_ENERGY_SOURCE")]
    pub energy_source: SourceChoice,
    /// Root of the powercap class (intel-rapl zones).
    #[arg(long, value_name = "DIR", default_value = "/sys/class/powercap")]
    pub powercap_root: PathBuf,
    /// Root of sysfs: CPU topology and the perf power PMU description are read below it.
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    pub sysfs_root: PathBuf,
    /// Directory of the msr driver's per-CPU devices (N/msr).
    #[arg(long, value_name = "DIR", default_value = "/dev/cpu")]
    pub msr_root: PathBuf,
    /// Host idle power in watts (all packages together); default: learned as the lowest
    /// power seen at low utilization within --idle-window.
    #[arg(long, value_name = "WATTS")]
    pub idle_watts: Option<f64>,
    /// How long learned idle observations are kept.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub idle_window: Duration,
    /// dynamic: charge functions only the energy above idle; full: charge idle too.
    #[arg(long, value_enum, default_value_t = AttributionMode::Dynamic)]
    pub attribution: AttributionMode,
    /// Model: watts of one idle CPU (estimated figures).
    #[arg(long, value_name = "WATTS", default_value_t = 0.74)]
    pub model_idle_watts: f64,
    /// Model: watts of one fully busy CPU (estimated figures).
    #[arg(long, value_name = "WATTS", default_value_t = 3.5)]
    pub model_max_watts: f64,
    /// Model: utilization curve as `util%:fraction` points from 0 to 100, fraction of the
    /// way from idle to max watts.
    #[arg(long, value_name = "POINTS", default_value = super::model::DEFAULT_CURVE)]
    pub model_curve: String,
}

impl Default for EnergyArgs {
    fn default() -> Self {
        Self {
            energy_source: SourceChoice::Auto,
            powercap_root: "/sys/class/powercap".into(),
            sysfs_root: "/sys".into(),
            msr_root: "/dev/cpu".into(),
            idle_watts: None,
            idle_window: Duration::from_secs(3600),
            attribution: AttributionMode::Dynamic,
            model_idle_watts: 0.74,
            model_max_watts: 3.5,
            model_curve: super::model::DEFAULT_CURVE.into(),
        }
    }
}

impl EnergyArgs {
    /// The model curve these flags describe.
    pub fn curve(&self) -> Result<Curve, EnergyError> {
        Curve::new(
            self.model_idle_watts,
            self.model_max_watts,
            &self.model_curve,
        )
    }

    /// Checks values clap cannot.
    pub fn validate(&self) -> Result<(), EnergyError> {
        if let Some(w) = self.idle_watts
            && !(w.is_finite() && w >= 0.0)
        {
            return Err(EnergyError::Config {
                flag: "--idle-watts",
                reason: format!("{w} is not a non-negative number of watts"),
            });
        }
        self.curve().map(|_| ())
    }
}
