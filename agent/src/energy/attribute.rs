//! Charging an interval's energy to samples, per package: the package's energy (package plus
//! DRAM domains) minus its idle baseline is split over the samples taken on that package's
//! CPUs in proportion to their counts; with `--attribution full` the baseline is charged too.
//! All figures are integer microjoules and the split distributes remainders (largest first),
//! so for every package `interval = attributed + unattributed (+ idle when not charged)`
//! holds exactly and the per-sample figures sum to the attributed total.

use std::{collections::BTreeMap, time::Duration};

use super::{AttributionMode, Domain, Fault, SourceKind, Topology};

/// Samples of one aggregation bucket, as attribution needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleSlot {
    /// CPU the samples were taken on.
    pub cpu: u32,
    /// How many samples.
    pub count: u64,
    /// Samples of the idle task (pid 0): they carry no dynamic energy, only idle under
    /// `--attribution full`.
    pub idle_task: bool,
}

/// One package's energy over an interval and where it went.
#[derive(Clone, Debug, PartialEq)]
pub struct PackageEnergy {
    /// Physical package id.
    pub package: u32,
    /// Energy by domain (core and uncore are inside package; only package and dram are
    /// charged), microjoules.
    pub domains: Vec<(Domain, u64)>,
    /// True when the figures come from the model (the source is `model`, or the package's
    /// counters failed and the model stood in).
    pub estimated: bool,
    /// Charged energy of the interval: package + dram, microjoules.
    pub interval_uj: u64,
    /// Idle baseline over the interval (at most `interval_uj`), microjoules.
    pub idle_uj: u64,
    /// Where the idle power came from: `configured`, `learned`, `model` or `not learned yet`.
    pub idle_basis: &'static str,
    /// True under `--attribution full`: the idle baseline is part of `attributed_uj`.
    pub idle_charged: bool,
    /// Charged to samples, microjoules.
    pub attributed_uj: u64,
    /// Energy with no sample to carry it (a package with no samples), microjoules.
    pub unattributed_uj: u64,
    /// Samples taken on the package's CPUs.
    pub samples: u64,
    /// Mean utilization of the package's CPUs (0..=1).
    pub busy: f64,
}

impl PackageEnergy {
    /// The accounting identity every result satisfies.
    pub fn balanced(&self) -> bool {
        let idle_kept = if self.idle_charged { 0 } else { self.idle_uj };
        self.interval_uj == self.attributed_uj + self.unattributed_uj + idle_kept
    }
}

/// One interval's energy: its source, every package's account, and each slot's share.
#[derive(Clone, Debug)]
pub struct IntervalEnergy {
    /// The source that was read.
    pub source: SourceKind,
    /// True when any figure is estimated (the model, or a model fallback).
    pub estimated: bool,
    /// The source's method (zones, PMU, or the model curve).
    pub method: String,
    /// Whether idle was charged.
    pub attribution: AttributionMode,
    /// Interval length.
    pub elapsed: Duration,
    /// Per-package accounts.
    pub packages: Vec<PackageEnergy>,
    /// Host-wide domains (psys), reported but not charged, microjoules.
    pub host_domains: Vec<(Domain, u64)>,
    /// Microjoules charged to each input slot, in input order.
    pub per_slot_uj: Vec<u64>,
    /// What went wrong this interval (each also counted by the meter and logged).
    pub faults: Vec<Fault>,
    /// Part of `attributed_uj()` charged to CPU time the sampler did not see (processes
    /// outside a `--pid` filter, measured from /proc/stat); not in `per_slot_uj`.
    pub unsampled_uj: u64,
}

impl IntervalEnergy {
    /// Sum of `interval_uj` over packages.
    pub fn interval_uj(&self) -> u64 {
        self.packages.iter().map(|p| p.interval_uj).sum()
    }
    /// Sum of `idle_uj` over packages.
    pub fn idle_uj(&self) -> u64 {
        self.packages.iter().map(|p| p.idle_uj).sum()
    }
    /// Sum of `attributed_uj` over packages.
    pub fn attributed_uj(&self) -> u64 {
        self.packages.iter().map(|p| p.attributed_uj).sum()
    }
    /// Sum of `unattributed_uj` over packages.
    pub fn unattributed_uj(&self) -> u64 {
        self.packages.iter().map(|p| p.unattributed_uj).sum()
    }

    /// Mean watts by domain over all packages (and host-wide domains), for summaries.
    pub fn watts_by_domain(&self) -> Vec<(Domain, f64)> {
        let secs = self.elapsed.as_secs_f64();
        let mut sums: BTreeMap<Domain, u64> = BTreeMap::new();
        for (d, uj) in self
            .packages
            .iter()
            .flat_map(|p| p.domains.iter())
            .chain(self.host_domains.iter())
        {
            *sums.entry(*d).or_default() += uj;
        }
        sums.into_iter()
            .map(|(d, uj)| {
                (
                    d,
                    if secs > 0.0 {
                        uj as f64 / 1e6 / secs
                    } else {
                        0.0
                    },
                )
            })
            .collect()
    }
}

/// A package's measured (or estimated) energy and idle power, input to [`attribute`].
#[derive(Clone, Debug)]
pub struct PackageInput {
    /// Physical package id.
    pub package: u32,
    /// Energy by domain, microjoules.
    pub domains: Vec<(Domain, u64)>,
    /// Estimated rather than measured.
    pub estimated: bool,
    /// Idle power of the package, watts.
    pub idle_watts: f64,
    /// Where `idle_watts` came from.
    pub idle_basis: &'static str,
}

/// Busy fraction of each CPU: its non-idle samples / (frequency x seconds), at most 1.
pub fn busy_by_cpu(slots: &[SampleSlot], frequency: u64, elapsed: Duration) -> BTreeMap<u32, f64> {
    let expected = frequency as f64 * elapsed.as_secs_f64();
    let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
    for s in slots.iter().filter(|s| !s.idle_task) {
        *counts.entry(s.cpu).or_default() += s.count;
    }
    counts
        .into_iter()
        .map(|(cpu, n)| {
            let busy = if expected > 0.0 {
                (n as f64 / expected).min(1.0)
            } else {
                0.0
            };
            (cpu, busy)
        })
        .collect()
}

/// Splits `total` in proportion to `weights` so the parts sum to `total` exactly (largest
/// remainder first, ties to the earlier slot). All-zero weights give all zeros.
pub fn split_exact(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let mut parts = Vec::with_capacity(weights.len());
    let mut rems = Vec::with_capacity(weights.len());
    let mut given: u128 = 0;
    for (i, &w) in weights.iter().enumerate() {
        let exact = u128::from(total) * u128::from(w);
        let part = exact / sum;
        given += part;
        parts.push(part as u64);
        rems.push((exact % sum, i));
    }
    let mut left = u128::from(total) - given;
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in rems {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    parts
}

/// Attributes each package's energy to the slots taken on its CPUs.
pub fn attribute(
    elapsed: Duration,
    frequency: u64,
    mode: AttributionMode,
    topology: &Topology,
    packages: &[PackageInput],
    slots: &[SampleSlot],
) -> (Vec<PackageEnergy>, Vec<u64>, Vec<Fault>) {
    let secs = elapsed.as_secs_f64();
    let busy = busy_by_cpu(slots, frequency, elapsed);
    let mut per_slot = vec![0u64; slots.len()];
    let mut faults = Vec::new();
    let mut out = Vec::with_capacity(packages.len());
    for input in packages {
        let interval_uj: u64 = input
            .domains
            .iter()
            .filter(|(d, _)| d.is_charged())
            .map(|(_, uj)| uj)
            .sum();
        let idle_exact = input.idle_watts * secs * 1e6;
        let idle_uj = if idle_exact.is_finite() && idle_exact > 0.0 {
            (idle_exact.round() as u64).min(interval_uj)
        } else {
            0
        };
        let idle_charged = mode == AttributionMode::Full;
        let chargeable = if idle_charged {
            interval_uj
        } else {
            interval_uj - idle_uj
        };
        let on_package: Vec<usize> = (0..slots.len())
            .filter(|&i| topology.package_of(slots[i].cpu) == Some(input.package))
            .filter(|&i| idle_charged || !slots[i].idle_task)
            .collect();
        let weights: Vec<u64> = on_package.iter().map(|&i| slots[i].count).collect();
        let samples: u64 = weights.iter().sum();
        let (attributed_uj, unattributed_uj) = if samples == 0 {
            if chargeable > 0 {
                tracing::debug!(
                    package = input.package,
                    chargeable,
                    "package has energy but no samples: left unattributed"
                );
                faults.push(Fault::NoSamples);
            }
            (0, chargeable)
        } else {
            for (&i, share) in on_package.iter().zip(split_exact(chargeable, &weights)) {
                per_slot[i] += share;
            }
            (chargeable, 0)
        };
        let cpus = topology.cpus_of(input.package);
        let package_busy = if cpus.is_empty() {
            0.0
        } else {
            cpus.iter()
                .map(|c| busy.get(c).copied().unwrap_or(0.0))
                .sum::<f64>()
                / cpus.len() as f64
        };
        out.push(PackageEnergy {
            package: input.package,
            domains: input.domains.clone(),
            estimated: input.estimated,
            interval_uj,
            idle_uj,
            idle_basis: input.idle_basis,
            idle_charged,
            attributed_uj,
            unattributed_uj,
            samples,
            busy: package_busy,
        });
    }
    (out, per_slot, faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(cpu: u32, count: u64) -> SampleSlot {
        SampleSlot {
            cpu,
            count,
            idle_task: false,
        }
    }

    #[test]
    fn split_exact_sums_to_the_total_and_follows_the_weights() {
        assert_eq!(split_exact(10, &[1, 1, 1]), vec![4, 3, 3]);
        assert_eq!(split_exact(0, &[5, 0]), vec![0, 0]);
        assert_eq!(split_exact(7, &[0, 0]), vec![0, 0]);
        let parts = split_exact(u64::MAX, &[u64::MAX, 1, 3]);
        assert_eq!(
            parts.iter().map(|&p| u128::from(p)).sum::<u128>(),
            u128::from(u64::MAX)
        );
    }

    fn two_packages() -> Topology {
        Topology::from_triples(&[(0, 0, 0), (1, 1, 0)])
    }

    fn input(package: u32, pkg: u64, dram: Option<u64>, idle_watts: f64) -> PackageInput {
        let mut domains = vec![(Domain::Package, pkg), (Domain::Core, pkg / 2)];
        domains.extend(dram.map(|d| (Domain::Dram, d)));
        PackageInput {
            package,
            domains,
            estimated: false,
            idle_watts,
            idle_basis: "configured",
        }
    }

    #[test]
    fn each_package_is_split_over_its_own_cpus_samples_with_dram() {
        let topo = two_packages();
        let slots = [slot(0, 30), slot(0, 10), slot(1, 5)];
        let packages = [
            input(0, 10_000_000, Some(2_000_000), 1.0),
            input(1, 4_000_000, None, 1.0),
        ];
        let (accounts, per_slot, faults) = attribute(
            Duration::from_secs(2),
            99,
            AttributionMode::Dynamic,
            &topo,
            &packages,
            &slots,
        );
        assert!(faults.is_empty());
        // Package 0: 12 J - 2 J idle = 10 J over 40 samples; core is not charged again.
        assert_eq!(accounts[0].interval_uj, 12_000_000);
        assert_eq!(accounts[0].idle_uj, 2_000_000);
        assert_eq!(per_slot, vec![7_500_000, 2_500_000, 2_000_000]);
        assert!(accounts.iter().all(PackageEnergy::balanced));
    }

    #[test]
    fn full_attribution_charges_idle_and_the_idle_task() {
        let topo = Topology::single_package([0]);
        let slots = [
            slot(0, 1),
            SampleSlot {
                cpu: 0,
                count: 1,
                idle_task: true,
            },
        ];
        let packages = [input(0, 3_000_001, None, 1.0)];
        let (a, per_slot, _) = attribute(
            Duration::from_secs(1),
            99,
            AttributionMode::Full,
            &topo,
            &packages,
            &slots,
        );
        assert_eq!(per_slot, vec![1_500_001, 1_500_000]);
        assert_eq!(a[0].attributed_uj, 3_000_001);
        assert_eq!(a[0].idle_uj, 1_000_000);
        assert!(a[0].balanced());
        let (_, per_slot, _) = attribute(
            Duration::from_secs(1),
            99,
            AttributionMode::Dynamic,
            &topo,
            &packages,
            &slots,
        );
        assert_eq!(per_slot, vec![2_000_001, 0]);
    }

    #[test]
    fn a_package_without_samples_keeps_its_energy_unattributed_and_says_why() {
        let topo = two_packages();
        let (a, per_slot, faults) = attribute(
            Duration::from_secs(1),
            99,
            AttributionMode::Dynamic,
            &topo,
            &[
                input(0, 5_000_000, None, 0.5),
                input(1, 5_000_000, None, 0.5),
            ],
            &[slot(0, 3)],
        );
        assert_eq!(faults, vec![Fault::NoSamples]);
        assert_eq!(a[1].unattributed_uj, 4_500_000);
        assert_eq!(per_slot, vec![4_500_000]);
        assert!(a.iter().all(PackageEnergy::balanced));
    }

    #[test]
    fn idle_above_the_measured_energy_is_capped_and_zero_intervals_do_not_divide() {
        let topo = Topology::single_package([0]);
        let (a, per_slot, _) = attribute(
            Duration::from_secs(1),
            99,
            AttributionMode::Dynamic,
            &topo,
            &[input(0, 100, None, 50.0)],
            &[slot(0, 3)],
        );
        assert_eq!((a[0].idle_uj, a[0].attributed_uj), (100, 0));
        assert_eq!(per_slot, vec![0]);
        let (a, _, _) = attribute(
            Duration::ZERO,
            99,
            AttributionMode::Dynamic,
            &topo,
            &[input(0, 100, None, f64::NAN)],
            &[slot(0, 3)],
        );
        assert_eq!((a[0].idle_uj, a[0].attributed_uj, a[0].busy), (0, 100, 0.0));
        assert!(a[0].balanced());
    }
}
