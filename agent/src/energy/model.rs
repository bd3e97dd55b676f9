//! The `model` source for hosts without energy counters (VMs, most clouds): each online CPU
//! draws `idle` watts plus a share of `max - idle` given by a utilization curve, piecewise
//! linear between (utilization %, fraction) points. Every figure it produces is *estimated*.
//!
//! Defaults: 0.74 W idle and 3.5 W busy per vCPU (Cloud Carbon Footprint's published AWS
//! averages, from SPECpower results) and a concave curve taken from Teads' published CPU
//! load points (idle, 10%, 50%, 100% at 12%, 32%, 75%, 102% of TDP), rescaled to 0..1.

use std::collections::BTreeMap;

use super::{
    Activity, Domain, DomainId, DomainReading, EnergyError, EnergySource, SourceKind, Topology,
};

/// Default curve, `utilization%:fraction` points.
pub const DEFAULT_CURVE: &str = "0:0,10:0.22,50:0.7,100:1";

/// Watts of one CPU as a function of its utilization.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    idle_watts: f64,
    max_watts: f64,
    points: Vec<(f64, f64)>,
}

impl Curve {
    /// Builds a curve; `points` is `util%:fraction,...` with utilization rising from 0 to 100.
    pub fn new(idle_watts: f64, max_watts: f64, points: &str) -> Result<Self, EnergyError> {
        if !(idle_watts.is_finite() && idle_watts >= 0.0) {
            return Err(EnergyError::Config {
                flag: "--model-idle-watts",
                reason: format!("{idle_watts} is not a non-negative number of watts"),
            });
        }
        if !(max_watts.is_finite() && max_watts >= idle_watts) {
            return Err(EnergyError::Config {
                flag: "--model-max-watts",
                reason: format!("{max_watts} W must be at least the idle {idle_watts} W"),
            });
        }
        let bad = |reason: String| EnergyError::Config {
            flag: "--model-curve",
            reason,
        };
        let mut parsed = Vec::new();
        for part in points.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (u, f) = part
                .split_once(':')
                .ok_or_else(|| bad(format!("{part:?} is not `util%:fraction`")))?;
            let u: f64 = u
                .trim()
                .parse()
                .map_err(|_| bad(format!("bad utilization {u:?}")))?;
            let f: f64 = f
                .trim()
                .parse()
                .map_err(|_| bad(format!("bad fraction {f:?}")))?;
            if !(0.0..=100.0).contains(&u) || !(0.0..=2.0).contains(&f) {
                return Err(bad(format!(
                    "{part:?}: utilization 0..=100, fraction 0..=2"
                )));
            }
            if parsed.last().is_some_and(|&(prev, _)| u / 100.0 <= prev) {
                return Err(bad(format!("utilization must rise: {part:?}")));
            }
            parsed.push((u / 100.0, f));
        }
        if parsed.first().map(|p| p.0) != Some(0.0) || parsed.last().map(|p| p.0) != Some(1.0) {
            return Err(bad(format!("{points:?} must start at 0% and end at 100%")));
        }
        Ok(Self {
            idle_watts,
            max_watts,
            points: parsed,
        })
    }

    /// Watts of one CPU at `busy` (0..=1, clamped).
    pub fn watts(&self, busy: f64) -> f64 {
        let u = if busy.is_finite() {
            busy.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let mut fraction = self.points.last().map_or(1.0, |p| p.1);
        for pair in self.points.windows(2) {
            let ((u0, f0), (u1, f1)) = (pair[0], pair[1]);
            if u <= u1 {
                fraction = f0 + (f1 - f0) * (u - u0) / (u1 - u0);
                break;
            }
        }
        self.idle_watts + (self.max_watts - self.idle_watts) * fraction
    }

    /// Idle watts per CPU.
    pub fn idle_watts(&self) -> f64 {
        self.idle_watts
    }

    /// One line naming the curve, for profiles and `doctor`.
    pub fn describe(&self) -> String {
        let points: Vec<String> = self
            .points
            .iter()
            .map(|(u, f)| format!("{}:{f}", u * 100.0))
            .collect();
        format!(
            "estimated: {} W idle .. {} W busy per CPU, curve {}",
            self.idle_watts,
            self.max_watts,
            points.join(",")
        )
    }
}

/// The model source: estimated package energy from per-CPU utilization.
pub struct ModelSource {
    curve: Curve,
    topology: Topology,
    carry: BTreeMap<u32, f64>,
}

impl ModelSource {
    /// A model over every online CPU of `topology`.
    pub fn new(curve: Curve, topology: Topology) -> Self {
        Self {
            curve,
            topology,
            carry: BTreeMap::new(),
        }
    }

    /// Estimated microjoules of one package over `activity` (fractions carried over).
    pub fn estimate(&mut self, package: u32, activity: &Activity) -> u64 {
        let secs = activity.elapsed.as_secs_f64();
        let watts: f64 = self
            .topology
            .cpus_of(package)
            .iter()
            .map(|cpu| {
                self.curve
                    .watts(activity.cpu_busy.get(cpu).copied().unwrap_or(0.0))
            })
            .sum();
        let carry = self.carry.entry(package).or_insert(0.0);
        let exact = watts * secs * 1e6 + *carry;
        if !(exact.is_finite() && exact > 0.0) {
            *carry = 0.0;
            return 0;
        }
        let whole = exact.floor();
        *carry = exact - whole;
        whole as u64
    }
}

impl EnergySource for ModelSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Model
    }

    fn estimated(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        self.curve.describe()
    }

    fn domains(&self) -> Vec<DomainId> {
        self.topology
            .packages()
            .into_iter()
            .map(|p| DomainId {
                package: Some(p),
                domain: Domain::Package,
            })
            .collect()
    }

    fn read(&mut self, activity: &Activity) -> Result<Vec<DomainReading>, EnergyError> {
        Ok(self
            .topology
            .packages()
            .into_iter()
            .map(|p| {
                let id = DomainId {
                    package: Some(p),
                    domain: Domain::Package,
                };
                DomainReading::ok(id, self.estimate(p, activity))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_curve_interpolates_between_points() {
        let c = Curve::new(1.0, 3.0, "0:0,50:0.75,100:1").unwrap();
        assert_eq!(c.watts(0.0), 1.0);
        assert_eq!(c.watts(0.25), 1.0 + 2.0 * 0.375);
        assert_eq!(c.watts(1.0), 3.0);
        assert_eq!(c.watts(7.0), 3.0);
        assert_eq!(c.watts(f64::NAN), 1.0);
    }

    #[test]
    fn bad_curves_name_the_flag() {
        for (idle, max, pts) in [
            (1.0, 0.5, DEFAULT_CURVE),
            (-1.0, 3.0, DEFAULT_CURVE),
            (1.0, 3.0, "0:0,50:1"),
            (1.0, 3.0, "0:0,60:0.5,40:0.7,100:1"),
            (1.0, 3.0, "zero"),
        ] {
            let err = Curve::new(idle, max, pts).unwrap_err().to_string();
            assert!(err.contains("--model-"), "{err}");
        }
    }

    #[test]
    fn model_energy_is_watts_times_seconds_per_package_and_estimated() {
        let curve = Curve::new(1.0, 3.0, "0:0,100:1").unwrap();
        let mut src = ModelSource::new(curve, Topology::single_package([0, 1]));
        assert!(src.estimated());
        let activity = Activity {
            elapsed: Duration::from_secs(2),
            cpu_busy: [(0, 1.0), (1, 0.5)].into_iter().collect(),
        };
        let r = src.read(&activity).unwrap();
        // (3 W + 2 W) x 2 s = 10 J.
        assert_eq!(r[0].microjoules, Some(10_000_000));
        assert!(src.describe().starts_with("estimated"));
    }
}
