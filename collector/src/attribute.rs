//! Fleet power attribution: turning joules summed over a window on the profiled hosts into
//! watts, then into fleet watts (divided by the profiled fraction of each service's fleet) and,
//! with configured factors, facility watts (PUE), kWh per year, CO2 and cost.
//!
//! Measured and estimated joules travel separately; a [`Power`] is marked estimated as soon as
//! any of its joules came from a model.
//!
//! [`Coverage`] holds what every query attributes with, computed from two store reads (per-host
//! and per-(service, host) rows) so no query reads them twice.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use wattson_proto::v1::Power;

use crate::store::{Keyed, Totals};

const HOURS_PER_YEAR: f64 = 24.0 * 365.0;

/// Errors loading a fleet configuration.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The file could not be read.
    #[error("reading fleet config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("parsing fleet config {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Underlying error.
        #[source]
        source: toml::de::Error,
    },
    /// A factor is out of range.
    #[error("fleet config {path}: {why}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// Fleet size and conversion factors (`--fleet FILE`, TOML):
///
/// ```toml
/// pue = 1.3              # facility watts per IT watt
/// co2_g_per_kwh = 350    # grid carbon intensity
/// price_per_kwh = 0.12
/// currency = "USD"
/// [fleet_hosts]          # hosts running each service, profiled or not
/// api = 12000
/// ```
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FleetConfig {
    /// Hosts per service in the whole fleet; a service not listed counts as fully profiled.
    #[serde(default)]
    pub fleet_hosts: BTreeMap<String, u64>,
    /// Power usage effectiveness (≥ 1).
    pub pue: Option<f64>,
    /// Grams of CO2e per kWh.
    pub co2_g_per_kwh: Option<f64>,
    /// Price per kWh.
    pub price_per_kwh: Option<f64>,
    /// Currency of `price_per_kwh`.
    #[serde(default)]
    pub currency: String,
}

impl FleetConfig {
    /// Loads and checks a TOML file.
    pub fn load(path: &Path) -> Result<FleetConfig, FleetError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| FleetError::Read {
            path: p.clone(),
            source,
        })?;
        let cfg: FleetConfig = toml::from_str(&text).map_err(|source| FleetError::Parse {
            path: p.clone(),
            source,
        })?;
        cfg.check()
            .map_err(|why| FleetError::Invalid { path: p, why })?;
        Ok(cfg)
    }

    /// Sets the fleet size of one service.
    pub fn with_fleet_hosts(mut self, service: &str, hosts: u64) -> FleetConfig {
        self.fleet_hosts.insert(service.into(), hosts);
        self
    }

    /// Sets the PUE.
    pub fn with_pue(mut self, pue: f64) -> FleetConfig {
        self.pue = Some(pue);
        self
    }

    fn check(&self) -> Result<(), String> {
        let positive = |name: &str, v: Option<f64>, min: f64| match v {
            Some(x) if !(x.is_finite() && x >= min) => {
                Err(format!("{name} = {x} must be a finite number >= {min}"))
            }
            _ => Ok(()),
        };
        positive("pue", self.pue, 1.0)?;
        positive("co2_g_per_kwh", self.co2_g_per_kwh, 0.0)?;
        positive("price_per_kwh", self.price_per_kwh, 0.0)?;
        if let Some((s, _)) = self.fleet_hosts.iter().find(|(_, n)| **n == 0) {
            return Err(format!(
                "fleet_hosts.{s} = 0: a service runs on at least one host"
            ));
        }
        Ok(())
    }

    /// Fleet hosts of `service` given `reporting` hosts seen, and whether it was configured.
    /// A configured size below what reports is raised to what reports.
    pub fn fleet_hosts(&self, service: &str, reporting: u64) -> (u64, bool) {
        match self.fleet_hosts.get(service) {
            Some(&n) => (n.max(reporting), true),
            None => (reporting, false),
        }
    }

    /// Power of `measured_uj` + `estimated_uj` over `seconds` on the profiled hosts, scaled by
    /// `scale` (fleet hosts / reporting hosts).
    pub fn power(&self, measured_uj: u64, estimated_uj: u64, seconds: f64, scale: f64) -> Power {
        let jm = measured_uj as f64 / 1e6;
        let je = estimated_uj as f64 / 1e6;
        let watts = if seconds > 0.0 {
            (jm + je) / seconds
        } else {
            0.0
        };
        let fleet_watts = watts * scale;
        let facility_watts = fleet_watts * self.pue.unwrap_or(1.0);
        let kwh_per_year = facility_watts * HOURS_PER_YEAR / 1000.0;
        Power {
            joules_measured: jm,
            joules_estimated: je,
            watts,
            estimated: estimated_uj > 0,
            fleet_watts,
            facility_watts,
            kwh_per_year,
            co2_kg_per_year: kwh_per_year * self.co2_g_per_kwh.unwrap_or(0.0) / 1000.0,
            cost_per_year: kwh_per_year * self.price_per_kwh.unwrap_or(0.0),
        }
    }

    /// Self and inclusive power of a rollup row.
    pub fn self_and_inclusive(&self, t: &Totals, seconds: f64, scale: f64) -> (Power, Power) {
        (
            self.power(t.uj_self, t.est_uj_self, seconds, scale),
            self.power(t.uj_incl, t.est_uj_incl, seconds, scale),
        )
    }
}

/// How one service's joules turn into watts over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceCover {
    /// Hosts that reported the service in the window.
    pub hosts: u64,
    /// The service's sums over those hosts (samples and self joules).
    pub totals: Totals,
    /// Divisor of the service's joules: joules / sum over hosts of (host joules / seconds that
    /// host reported), so each host is averaged over its own time, not the whole window.
    pub seconds: f64,
    /// Fleet hosts / reporting hosts.
    pub scale: f64,
    /// Fleet hosts of the service and whether configured ([`FleetConfig::fleet_hosts`]).
    pub fleet: (u64, bool),
}

/// Who reported for how long in a window, per service and per host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Coverage {
    /// Per service.
    pub services: HashMap<String, ServiceCover>,
    /// Hosts reporting.
    pub hosts: u64,
    /// Host idle watts (not charged to functions), each host over its own time.
    pub idle_watts: f64,
    /// Whether any idle joules were estimated.
    pub idle_estimated: bool,
    /// Samples the agents' samplers dropped.
    pub dropped: u64,
}

/// Seconds a host reported in a window: its profiles' total duration, within [1 s, window].
pub fn host_seconds(duration_ms: u64, window: f64) -> f64 {
    if duration_ms == 0 {
        window
    } else {
        (duration_ms as f64 / 1000.0).clamp(1.0, window)
    }
}

impl Coverage {
    /// From a window's per-host rows ([`crate::store::Store::hosts`]) and per-(service, host)
    /// rows ([`crate::store::Store::service_hosts`]). Without host rows every host counts as
    /// reporting the whole window.
    pub fn new(
        window_seconds: f64,
        hosts: &[Keyed],
        service_hosts: &[Keyed],
        fleet: &FleetConfig,
    ) -> Coverage {
        let mut out = Coverage {
            hosts: hosts.len() as u64,
            ..Coverage::default()
        };
        let mut host_secs = HashMap::with_capacity(hosts.len());
        for h in hosts {
            let t = host_seconds(h.totals.duration_ms, window_seconds);
            out.idle_watts += h.totals.idle_uj_all() as f64 / 1e6 / t;
            out.idle_estimated |= h.totals.est_idle_uj > 0;
            out.dropped = out.dropped.saturating_add(h.totals.dropped);
            host_secs.insert(h.key.as_str(), t);
        }
        // Per service: summed joules and summed per-host watts, whose ratio is `seconds`.
        let mut watts: HashMap<&str, (f64, f64)> = HashMap::new();
        for r in service_hosts {
            let j = r.totals.uj_self_all() as f64 / 1e6;
            let t = host_secs
                .get(r.key.as_str())
                .copied()
                .unwrap_or(window_seconds);
            let c = out
                .services
                .entry(r.service.clone())
                .or_insert(ServiceCover {
                    hosts: 0,
                    totals: Totals::default(),
                    seconds: window_seconds,
                    scale: 1.0,
                    fleet: (0, false),
                });
            c.hosts += 1;
            c.totals.add(&r.totals);
            let w = watts.entry(r.service.as_str()).or_default();
            w.0 += j;
            w.1 += j / t;
        }
        for (service, c) in &mut out.services {
            if let Some(&(j, w)) = watts.get(service.as_str())
                && w > 0.0
            {
                c.seconds = j / w;
            }
            c.fleet = fleet.fleet_hosts(service, c.hosts);
            c.scale = c.fleet.0 as f64 / c.hosts.max(1) as f64;
        }
        out
    }
}

/// Adds `b` into `a` (sums of powers over disjoint parts of the fleet).
pub fn add_power(a: &mut Power, b: &Power) {
    a.joules_measured += b.joules_measured;
    a.joules_estimated += b.joules_estimated;
    a.watts += b.watts;
    a.estimated |= b.estimated;
    a.fleet_watts += b.fleet_watts;
    a.facility_watts += b.facility_watts;
    a.kwh_per_year += b.kwh_per_year;
    a.co2_kg_per_year += b.co2_kg_per_year;
    a.cost_per_year += b.cost_per_year;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_scales_by_profiled_fraction_and_pue() {
        let cfg = FleetConfig {
            co2_g_per_kwh: Some(500.0),
            price_per_kwh: Some(0.1),
            ..FleetConfig::default()
        }
        .with_pue(1.5);
        // 600 J measured + 600 J estimated over 60 s = 20 W; 1 of 4 hosts profiled -> 80 W.
        let p = cfg.power(600_000_000, 600_000_000, 60.0, 4.0);
        assert!((p.watts - 20.0).abs() < 1e-9);
        assert!(p.estimated);
        assert!((p.fleet_watts - 80.0).abs() < 1e-9);
        assert!((p.facility_watts - 120.0).abs() < 1e-9);
        assert!((p.kwh_per_year - 120.0 * 8.76).abs() < 1e-6);
        assert!((p.co2_kg_per_year - p.kwh_per_year * 0.5).abs() < 1e-6);
        assert!(!cfg.power(1, 0, 1.0, 1.0).estimated);
    }

    #[test]
    fn each_host_is_averaged_over_its_own_time_and_fleets_scale_by_hosts() {
        let row = |service: &str, key: &str, t: Totals| Keyed {
            service: service.into(),
            key: key.into(),
            totals: t,
            hosts: 1,
        };
        let host = |key: &str, secs: u64, idle_uj: u64| {
            row(
                "",
                key,
                Totals {
                    duration_ms: secs * 1000,
                    est_idle_uj: idle_uj,
                    dropped: 2,
                    ..Totals::default()
                },
            )
        };
        let uj = |uj_self: u64, samples_self: u64| Totals {
            uj_self,
            samples_self,
            ..Totals::default()
        };
        // a reported 600 s (60 J: 0.1 W), b 60 s (60 J: 1 W): api draws 1.1 W over 120 J, so
        // its joules average over 120 / 1.1 s. db ran on a only.
        let hosts = [host("a", 600, 60_000_000), host("b", 60, 0)];
        let sh = [
            row("api", "a", uj(60_000_000, 10)),
            row("api", "b", uj(60_000_000, 30)),
            row("db", "a", uj(6_000_000, 5)),
        ];
        let fleet = FleetConfig::default().with_fleet_hosts("api", 8);
        let c = Coverage::new(600.0, &hosts, &sh, &fleet);
        assert_eq!((c.hosts, c.dropped), (2, 4));
        assert!((c.idle_watts - 0.1).abs() < 1e-12 && c.idle_estimated);
        let api = c.services["api"];
        assert_eq!((api.hosts, api.totals.samples_self), (2, 40));
        assert!((api.seconds - 120.0 / 1.1).abs() < 1e-9, "{api:?}");
        assert_eq!((api.fleet, api.scale), ((8, true), 4.0));
        let db = c.services["db"];
        assert!(
            (db.seconds - 600.0).abs() < 1e-9 && db.scale == 1.0,
            "{db:?}"
        );
        // No host rows: every host counts as reporting the whole window.
        let c = Coverage::new(600.0, &[], &sh, &fleet);
        assert!((c.services["api"].seconds - 600.0).abs() < 1e-9);
    }

    #[test]
    fn bad_factors_are_refused_with_the_field_named() {
        let cfg: FleetConfig = toml::from_str("pue = 0.5").unwrap();
        assert!(cfg.check().unwrap_err().contains("pue"));
        let cfg: FleetConfig = toml::from_str("[fleet_hosts]\napi = 0").unwrap();
        assert!(cfg.check().unwrap_err().contains("fleet_hosts.api"));
        assert!(toml::from_str::<FleetConfig>("pues = 1").is_err());
        let cfg = FleetConfig::default().with_fleet_hosts("api", 10);
        assert_eq!(cfg.fleet_hosts("api", 12), (12, true));
        assert_eq!(cfg.fleet_hosts("db", 3), (3, false));
    }
}
