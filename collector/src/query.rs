//! Answering queries: checks a request (window, service, function), reads the store and
//! attributes power with the fleet configuration. The gRPC query service and the tests call
//! this; it returns the wire types directly so there is one shape for every consumer.

use std::collections::HashMap;
use std::sync::Arc;

use wattson_proto::v1::{
    FunctionRow, Power, PowerRequest, PowerResponse, RankBy, SeriesPoint, SeriesRequest,
    SeriesResponse, ServicePower, StackRow, StacksRequest, StacksResponse, TimeWindow, TopRequest,
    TopResponse,
};

use crate::attribute::{FleetConfig, add_power};
use crate::store::{Keyed, Rank, Store, StoreError, TopQuery, Window};

/// How a service's joules turn into watts. Each host's joules are divided by the time that
/// host reported within the window (not the whole window), so a host that joined ten minutes
/// into an hour is not diluted six-fold; `seconds` is the equivalent divisor of the service's
/// summed joules (joules / sum of per-host watts), which the service's functions share.
#[derive(Debug, Clone, Copy)]
struct Cover {
    hosts: u64,
    samples: u64,
    joules: f64,
    watts: f64,
    seconds: f64,
    scale: f64,
    fleet: (u64, bool),
}

/// Seconds a host reported in a window: its profiles' total duration, within [1 s, window].
fn host_seconds(duration_ms: u64, window: f64) -> f64 {
    if duration_ms == 0 {
        window
    } else {
        (duration_ms as f64 / 1000.0).clamp(1.0, window)
    }
}

/// Default and largest `top` row counts.
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 10_000;
/// Relative slack when comparing watts computed along different float paths (per-service
/// seconds are sums of quotients), so equal figures never look unequal by a rounding error.
const WATTS_SLACK: f64 = 1e-9;

/// Why a query was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The request is malformed (missing or reversed window, bad step...).
    #[error("{0}")]
    Bad(String),
    /// The service has never reported to this collector.
    #[error("unknown service {service:?}; known services: {known}")]
    UnknownService {
        /// As asked.
        service: String,
        /// What the store knows, comma-separated.
        known: String,
    },
    /// Nothing matches in the window.
    #[error("{0}")]
    NoData(String),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for QueryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BadQuery(m) => QueryError::Bad(m),
            e => QueryError::Store(e),
        }
    }
}

/// Queries over a store with a fleet configuration.
pub struct QueryEngine {
    store: Arc<dyn Store>,
    fleet: FleetConfig,
}

fn window(w: Option<&TimeWindow>) -> Result<Window, QueryError> {
    let w = w.ok_or_else(|| QueryError::Bad("window is required".into()))?;
    Ok(Window {
        from: w.from_unix_seconds,
        to: w.to_unix_seconds,
    }
    .aligned()?)
}

fn wire(w: Window) -> Option<TimeWindow> {
    Some(TimeWindow {
        from_unix_seconds: w.from,
        to_unix_seconds: w.to,
    })
}

/// A series step for a window: about 300 points, whole minutes, whole hours past two days.
pub fn default_step(seconds: i64) -> i64 {
    let step = (seconds / 300).max(60).div_euclid(60) * 60;
    if seconds > 2 * 86_400 {
        (step + 3599) / 3600 * 3600
    } else {
        step
    }
}

impl QueryEngine {
    /// An engine over `store`.
    pub fn new(store: Arc<dyn Store>, fleet: FleetConfig) -> QueryEngine {
        QueryEngine { store, fleet }
    }

    /// The fleet configuration in use.
    pub fn fleet(&self) -> &FleetConfig {
        &self.fleet
    }

    fn check_service(&self, service: &str) -> Result<(), QueryError> {
        if service.is_empty() {
            return Ok(());
        }
        let known = self.store.known_services()?;
        if known.iter().any(|s| s == service) {
            return Ok(());
        }
        Err(QueryError::UnknownService {
            service: service.into(),
            known: if known.is_empty() {
                "none yet (no agent has reported)".into()
            } else {
                known.join(", ")
            },
        })
    }

    /// Per service: hosts, samples, scale to the fleet and the seconds its joules average
    /// over (see [`Cover`]), plus host idle watts and whether they are estimated.
    fn coverage(&self, w: Window) -> Result<(HashMap<String, Cover>, f64, bool), QueryError> {
        let window = w.seconds() as f64;
        let mut host_secs = HashMap::new();
        let (mut idle_w, mut idle_est) = (0.0, false);
        for h in self.store.hosts(w)? {
            let t = host_seconds(h.totals.duration_ms, window);
            idle_w += (h.totals.idle_uj + h.totals.est_idle_uj) as f64 / 1e6 / t;
            idle_est |= h.totals.est_idle_uj > 0;
            host_secs.insert(h.key, t);
        }
        let mut out: HashMap<String, Cover> = HashMap::new();
        for r in self.store.service_hosts(w)? {
            let j = (r.totals.uj_self + r.totals.est_uj_self) as f64 / 1e6;
            let t = host_secs.get(&r.key).copied().unwrap_or(window);
            let c = out.entry(r.service).or_insert(Cover {
                hosts: 0,
                samples: 0,
                joules: 0.0,
                watts: 0.0,
                seconds: window,
                scale: 1.0,
                fleet: (0, false),
            });
            c.hosts += 1;
            c.samples += r.totals.samples_self;
            c.joules += j;
            c.watts += j / t;
        }
        for (service, c) in &mut out {
            if c.watts > 0.0 {
                c.seconds = c.joules / c.watts;
            }
            c.fleet = self.fleet.fleet_hosts(service, c.hosts);
            c.scale = c.fleet.0 as f64 / c.hosts.max(1) as f64;
        }
        Ok((out, idle_w, idle_est))
    }

    /// Functions ranked by energy (as watts: each service's joules over its own seconds, see
    /// [`Cover`]) or samples.
    pub fn top(&self, req: &TopRequest) -> Result<TopResponse, QueryError> {
        let w = window(req.window.as_ref())?;
        self.check_service(&req.service)?;
        let rank = match RankBy::try_from(req.rank).unwrap_or(RankBy::Unspecified) {
            RankBy::Unspecified | RankBy::EnergySelf => Rank::EnergySelf,
            RankBy::EnergyInclusive => Rank::EnergyInclusive,
            RankBy::SamplesSelf => Rank::SamplesSelf,
            RankBy::SamplesInclusive => Rank::SamplesInclusive,
        };
        let limit = match req.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        let (cover, _, _) = self.coverage(w)?;
        let secs = w.seconds() as f64;
        let row = |r: Keyed| {
            let (seconds, scale, total) = cover
                .get(&r.service)
                .map_or((secs, 1.0, 0), |c| (c.seconds, c.scale, c.samples));
            let (s, i) = self.fleet.self_and_inclusive(&r.totals, seconds, scale);
            let share = |n: u64| {
                if total == 0 {
                    0.0
                } else {
                    n as f64 / total as f64
                }
            };
            FunctionRow {
                cpu_share_self: share(r.totals.samples_self),
                cpu_share_inclusive: share(r.totals.samples_incl),
                service: r.service,
                function: r.key,
                samples_self: r.totals.samples_self,
                samples_inclusive: r.totals.samples_incl,
                self_power: Some(s),
                inclusive_power: Some(i),
            }
        };
        let query = |limit| TopQuery {
            window: w,
            service: (!req.service.is_empty()).then(|| req.service.clone()),
            rank,
            limit,
        };
        let watts = |f: &FunctionRow| match rank {
            Rank::EnergyInclusive => f.inclusive_power.map_or(0.0, |p| p.watts),
            _ => f.self_power.map_or(0.0, |p| p.watts),
        };
        let mut rows: Vec<FunctionRow> =
            if matches!(rank, Rank::SamplesSelf | Rank::SamplesInclusive) {
                self.store
                    .top(&query(limit))?
                    .into_iter()
                    .map(row)
                    .collect()
            } else {
                // The store ranks by joules, but a service whose hosts reported for less of
                // the window turns fewer joules into more watts: rank by watts here. A row the
                // store left out has at most the last row's joules, so at most those joules
                // over the shortest service seconds in watts; once the limit-th best watts
                // reach that bound the ranking is exact, else more rows are fetched.
                let shortest = cover.values().map(|c| c.seconds).fold(secs, f64::min);
                let mut fetch = limit;
                loop {
                    let got = self.store.top(&query(fetch))?;
                    let complete = got.len() < fetch as usize || fetch >= MAX_LIMIT;
                    let bound = got.last().map_or(0.0, |r| {
                        let (s, i) = self.fleet.self_and_inclusive(&r.totals, shortest, 1.0);
                        match rank {
                            Rank::EnergyInclusive => i.watts,
                            _ => s.watts,
                        }
                    });
                    let mut rows: Vec<FunctionRow> = got.into_iter().map(row).collect();
                    rows.sort_by(|a, b| {
                        watts(b)
                            .total_cmp(&watts(a))
                            .then_with(|| (&a.service, &a.function).cmp(&(&b.service, &b.function)))
                    });
                    let kth = rows.get(limit as usize - 1).map_or(0.0, watts);
                    if complete || kth >= bound * (1.0 - WATTS_SLACK) {
                        break rows;
                    }
                    fetch = fetch.saturating_mul(4).min(MAX_LIMIT);
                }
            };
        rows.truncate(limit as usize);
        Ok(TopResponse {
            window: wire(w),
            rows,
            currency: self.fleet.currency.clone(),
        })
    }

    /// One function over time.
    pub fn series(&self, req: &SeriesRequest) -> Result<SeriesResponse, QueryError> {
        let w = window(req.window.as_ref())?;
        if req.service.is_empty() || req.function.is_empty() {
            return Err(QueryError::Bad(
                "series needs a service and a function".into(),
            ));
        }
        self.check_service(&req.service)?;
        let step = match req.step_seconds {
            0 => default_step(w.seconds()),
            s => i64::from(s),
        };
        let points = self.store.series(w, &req.service, &req.function, step)?;
        if points.is_empty() {
            return Err(QueryError::NoData(format!(
                "function {:?} of service {:?} has no samples in the window \
                 (`wattson top --service {}` lists its functions)",
                req.function, req.service, req.service
            )));
        }
        let scale = self
            .coverage(w)?
            .0
            .get(&req.service)
            .map_or(1.0, |c| c.scale);
        let points = points
            .into_iter()
            .map(|p| {
                let bucket = (step.min(w.to - p.at)) as f64;
                let (s, i) = self.fleet.self_and_inclusive(&p.totals, bucket, scale);
                SeriesPoint {
                    at_unix_seconds: p.at,
                    samples_self: p.totals.samples_self,
                    samples_inclusive: p.totals.samples_incl,
                    self_power: Some(s),
                    inclusive_power: Some(i),
                }
            })
            .collect();
        Ok(SeriesResponse {
            window: wire(w),
            step_seconds: step as u32,
            points,
        })
    }

    /// Folded stacks with samples and joules.
    pub fn stacks(&self, req: &StacksRequest) -> Result<StacksResponse, QueryError> {
        let w = window(req.window.as_ref())?;
        self.check_service(&req.service)?;
        let service = (!req.service.is_empty()).then_some(req.service.as_str());
        let stacks = self
            .store
            .stacks(w, service)?
            .into_iter()
            .map(|k: Keyed| StackRow {
                service: k.service,
                folded: k.key,
                samples: k.totals.samples_self,
                joules_measured: k.totals.uj_self as f64 / 1e6,
                joules_estimated: k.totals.est_uj_self as f64 / 1e6,
            })
            .collect();
        Ok(StacksResponse {
            window: wire(w),
            stacks,
        })
    }

    /// Fleet power per service.
    pub fn power(&self, req: &PowerRequest) -> Result<PowerResponse, QueryError> {
        let w = window(req.window.as_ref())?;
        let (cover, idle_watts, idle_estimated) = self.coverage(w)?;
        let mut total = Power::default();
        let mut services = Vec::new();
        for s in self.store.services(w)? {
            let (seconds, scale, fleet) = cover
                .get(&s.service)
                .map_or((w.seconds() as f64, 1.0, (s.hosts, false)), |c| {
                    (c.seconds, c.scale, c.fleet)
                });
            let power = self
                .fleet
                .power(s.totals.uj_self, s.totals.est_uj_self, seconds, scale);
            add_power(&mut total, &power);
            services.push(ServicePower {
                service: s.service,
                hosts_reporting: s.hosts,
                fleet_hosts: fleet.0,
                fleet_configured: fleet.1,
                samples: s.totals.samples_self,
                power: Some(power),
            });
        }
        // The biggest consumer first: ranked by watts on the profiled hosts, as the W column.
        services.sort_by(|a, b| {
            let w = |s: &ServicePower| s.power.map_or(0.0, |p| p.watts);
            w(b).total_cmp(&w(a))
                .then_with(|| a.service.cmp(&b.service))
        });
        let hosts = self.store.hosts(w)?;
        let dropped = hosts.iter().map(|h| h.totals.dropped).sum();
        Ok(PowerResponse {
            window: wire(w),
            services,
            total: Some(total),
            hosts_reporting: hosts.len() as u64,
            idle_watts,
            idle_estimated,
            dropped_samples: dropped,
            pue: self.fleet.pue.unwrap_or(0.0),
            co2_g_per_kwh: self.fleet.co2_g_per_kwh.unwrap_or(0.0),
            price_per_kwh: self.fleet.price_per_kwh.unwrap_or(0.0),
            currency: self.fleet.currency.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::default_step;

    #[test]
    fn default_steps() {
        assert_eq!(default_step(3600), 60);
        assert_eq!(default_step(86_400), 240);
        assert_eq!(default_step(30 * 86_400), 3 * 3600);
    }
}
