//! Writing an interval's energy into a [`Profile`] (each sample's microjoules and the
//! profile's [`EnergyMeta`]) and summarising it for people: host watts by domain, idle and
//! attributed energy, and the word *estimated* whenever the model produced any of it.

use std::fmt;

use super::{IntervalEnergy, Meter, SampleSlot};
use crate::profile::{EnergyMeta, Profile};

impl Meter {
    /// Charges the energy of the window that just ended (see [`Meter::end_window`]) to the
    /// profile's samples (`Sample::microjoules`) and records where it came from
    /// (`Profile::energy`).
    pub fn attribute_profile(&mut self, profile: &mut Profile) -> IntervalEnergy {
        let slots: Vec<SampleSlot> = profile
            .samples
            .iter()
            .map(|s| SampleSlot {
                cpu: s.cpu,
                count: s.count,
                idle_task: s.tgid == 0 && s.pid == 0,
            })
            .collect();
        let energy = self.window(profile.frequency, &slots);
        for (sample, uj) in profile.samples.iter_mut().zip(&energy.per_slot_uj) {
            sample.microjoules = Some(*uj);
        }
        profile.energy = Some(meta(&energy));
        energy
    }
}

/// The profile's record of an interval's energy.
pub fn meta(e: &IntervalEnergy) -> EnergyMeta {
    let mut domains = std::collections::BTreeMap::new();
    for p in &e.packages {
        for (d, uj) in &p.domains {
            *domains.entry(format!("{d}-{}", p.package)).or_default() += uj;
        }
    }
    for (d, uj) in &e.host_domains {
        *domains.entry(d.to_string()).or_default() += uj;
    }
    let estimated_note = if e.estimated && e.source != super::SourceKind::Model {
        "; some packages ESTIMATED by the model after a counter fault"
    } else {
        ""
    };
    EnergyMeta {
        source: e.source.name().to_owned(),
        estimated: e.estimated,
        model: Some(format!("{}{estimated_note}", e.method)),
        total_microjoules: e.interval_uj(),
        attributed_microjoules: e.attributed_uj() - e.unsampled_uj,
        idle_microjoules: e.idle_uj(),
        unattributed_microjoules: e.unattributed_uj(),
        unsampled_microjoules: e.unsampled_uj,
        attribution: e.attribution.name().to_owned(),
        domains,
    }
}

fn joules(uj: u64) -> f64 {
    uj as f64 / 1e6
}

impl fmt::Display for IntervalEnergy {
    /// A few lines for the `record` summary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let label = if self.estimated {
            "ESTIMATED"
        } else {
            "measured"
        };
        writeln!(
            f,
            "energy: {} ({label}): {}",
            self.source.name(),
            self.method
        )?;
        let watts: Vec<String> = self
            .watts_by_domain()
            .iter()
            .map(|(d, w)| format!("{d} {w:.2} W"))
            .collect();
        let total_w = if secs > 0.0 {
            joules(self.interval_uj()) / secs
        } else {
            0.0
        };
        writeln!(
            f,
            "host power{}: {total_w:.2} W charged (package + dram) over {secs:.1}s; by domain: {}",
            if self.estimated { " (estimated)" } else { "" },
            if watts.is_empty() {
                "none".to_owned()
            } else {
                watts.join(", ")
            }
        )?;
        let idle_basis: Vec<&str> = self.packages.iter().map(|p| p.idle_basis).collect();
        writeln!(
            f,
            "energy {:.3} J = attributed {:.3} J{} + unattributed {:.3} J; idle {:.3} J ({}, \
             attribution {})",
            joules(self.interval_uj()),
            joules(self.attributed_uj()),
            if self.attribution == super::AttributionMode::Full {
                " (idle included)".to_owned()
            } else {
                format!(" + idle {:.3} J", joules(self.idle_uj()))
            },
            joules(self.unattributed_uj()),
            joules(self.idle_uj()),
            idle_basis.first().copied().unwrap_or("none"),
            self.attribution.name()
        )?;
        if self.unsampled_uj > 0 {
            writeln!(
                f,
                "of the attributed energy, {:.3} J went to CPU time outside the profile \
                 (processes the --pid filter left out, busy time from /proc/stat)",
                joules(self.unsampled_uj)
            )?;
        }
        if !self.faults.is_empty() {
            let names: Vec<&str> = self.faults.iter().map(|f| f.name()).collect();
            writeln!(f, "energy faults this interval: {}", names.join(", "))?;
        }
        Ok(())
    }
}
