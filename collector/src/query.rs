//! Answering queries: checks a request (window, service, function), reads the store and
//! attributes power with the fleet configuration. The gRPC query service and the tests call
//! this; it returns the wire types directly so there is one shape for every consumer.
//!
//! Store reads are the cost of a query (each scans a window of rollup rows; attribution itself
//! is arithmetic), so each query reads only what it needs, once: `top` the function rows plus
//! the two coverage reads, `power` the coverage reads alone, `series` one function's rows plus
//! the service's hosts only when a fleet size scales it.

use std::sync::Arc;

use wattson_proto::v1::{
    BuildRow, BuildsRequest, BuildsResponse, FunctionRow, Power, PowerRequest, PowerResponse,
    RankBy, SeriesPoint, SeriesRequest, SeriesResponse, ServicePower, StackRow, StacksRequest,
    StacksResponse, TimeWindow, TopRequest, TopResponse,
};

use crate::attribute::{Coverage, FleetConfig, add_power};
use crate::store::{Keyed, Rank, Store, StoreError, TopQuery, Window};

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

    /// Who reported for how long in `w`: two store reads (hosts, and services per host), run
    /// alongside `with` (another read the query needs), whose answer comes back too.
    fn coverage_with<T>(
        &self,
        w: Window,
        with: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<(Coverage, T), QueryError> {
        // The reads are independent, so they overlap: ClickHouse answers each on its own
        // connection. (SQLite's one reader connection takes them in turn either way.)
        let (hosts, service_hosts, other) = std::thread::scope(|s| {
            let hosts = s.spawn(|| self.store.hosts(w));
            let service_hosts = s.spawn(|| self.store.service_hosts(w));
            let other = with();
            (joined(hosts), joined(service_hosts), other)
        });
        let cover = Coverage::new(w.seconds() as f64, &hosts?, &service_hosts?, &self.fleet);
        Ok((cover, other?))
    }

    /// Functions ranked by energy (as watts: each service's joules over its own seconds, see
    /// [`crate::attribute::ServiceCover`]) or samples.
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
        let query = |limit| TopQuery {
            window: w,
            service: (!req.service.is_empty()).then(|| req.service.clone()),
            rank,
            limit,
        };
        let (cover, first) = self.coverage_with(w, || self.store.top(&query(limit)))?;
        let secs = w.seconds() as f64;
        let row = |r: Keyed| {
            let (seconds, scale, total) =
                cover.services.get(&r.service).map_or((secs, 1.0, 0), |c| {
                    (c.seconds, c.scale, c.totals.samples_self)
                });
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
        let watts = |f: &FunctionRow| match rank {
            Rank::EnergyInclusive => f.inclusive_power.map_or(0.0, |p| p.watts),
            _ => f.self_power.map_or(0.0, |p| p.watts),
        };
        // Most watts first; ties by name, as the store breaks them.
        let by_watts = |a: &FunctionRow, b: &FunctionRow| {
            watts(b)
                .total_cmp(&watts(a))
                .then_with(|| (&a.service, &a.function).cmp(&(&b.service, &b.function)))
        };
        let mut rows: Vec<FunctionRow> =
            if matches!(rank, Rank::SamplesSelf | Rank::SamplesInclusive) {
                first.into_iter().map(row).collect()
            } else {
                // The store ranks by joules, but a service whose hosts reported for less of
                // the window turns fewer joules into more watts: rank by watts here. A row the
                // store left out has at most the last row's joules, so at most those joules
                // over the shortest service seconds in watts; once the limit-th best watts
                // reach that bound the ranking is exact, else more rows are fetched.
                let shortest = cover
                    .services
                    .values()
                    .map(|c| c.seconds)
                    .fold(secs, f64::min);
                let (mut fetch, mut got) = (limit, first);
                loop {
                    let complete = got.len() < fetch as usize || fetch >= MAX_LIMIT;
                    let bound = got.last().map_or(0.0, |r| {
                        let (s, i) = self.fleet.self_and_inclusive(&r.totals, shortest, 1.0);
                        match rank {
                            Rank::EnergyInclusive => i.watts,
                            _ => s.watts,
                        }
                    });
                    let mut rows: Vec<FunctionRow> = got.into_iter().map(row).collect();
                    rows.sort_by(by_watts);
                    let kth = rows.get(limit as usize - 1).map_or(0.0, watts);
                    if complete || kth >= bound * (1.0 - WATTS_SLACK) {
                        break rows;
                    }
                    fetch = fetch.saturating_mul(4).min(MAX_LIMIT);
                    got = self.store.top(&query(fetch))?;
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
        // Only a configured fleet size scales (fleet hosts / reporting hosts); otherwise the
        // scale is 1 and the service's hosts need not be read at all.
        let scale = if self.fleet.fleet_hosts.contains_key(&req.service) {
            let service_hosts = self.store.service_hosts(w)?;
            Coverage::new(w.seconds() as f64, &[], &service_hosts, &self.fleet)
                .services
                .get(&req.service)
                .map_or(1.0, |c| c.scale)
        } else {
            1.0
        };
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
        let rows = if req.build_id.is_empty() {
            self.store.stacks(w, service)?
        } else {
            let rows = self.store.build_stacks(w, service, &req.build_id)?;
            if rows.is_empty() {
                let seen: Vec<String> = self
                    .store
                    .builds(w, service)?
                    .into_iter()
                    .filter(|k| !k.key.is_empty())
                    .map(|k| format!("{} ({})", k.key, k.service))
                    .collect();
                return Err(QueryError::NoData(format!(
                    "no samples of build {:?} in this window; builds seen: {}",
                    req.build_id,
                    if seen.is_empty() {
                        "none".into()
                    } else {
                        seen.join(", ")
                    }
                )));
            }
            rows
        };
        let stacks = rows
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

    /// Builds each service ran in the window, most samples first.
    pub fn builds(&self, req: &BuildsRequest) -> Result<BuildsResponse, QueryError> {
        let w = window(req.window.as_ref())?;
        self.check_service(&req.service)?;
        let service = (!req.service.is_empty()).then_some(req.service.as_str());
        let mut builds: Vec<BuildRow> = self
            .store
            .builds(w, service)?
            .into_iter()
            .map(|k| BuildRow {
                service: k.service,
                build_id: k.key,
                samples: k.totals.samples_self,
                joules_measured: k.totals.uj_self as f64 / 1e6,
                joules_estimated: k.totals.est_uj_self as f64 / 1e6,
            })
            .collect();
        builds.sort_by(|a, b| {
            (&a.service, b.samples, &a.build_id).cmp(&(&b.service, a.samples, &b.build_id))
        });
        Ok(BuildsResponse {
            window: wire(w),
            builds,
        })
    }

    /// Fleet power per service.
    pub fn power(&self, req: &PowerRequest) -> Result<PowerResponse, QueryError> {
        let w = window(req.window.as_ref())?;
        // Everything here is in the coverage: per-service sums are its service rows summed.
        let (cover, ()) = self.coverage_with(w, || Ok(()))?;
        let mut services: Vec<ServicePower> = cover
            .services
            .iter()
            .map(|(service, c)| ServicePower {
                service: service.clone(),
                hosts_reporting: c.hosts,
                fleet_hosts: c.fleet.0,
                fleet_configured: c.fleet.1,
                samples: c.totals.samples_self,
                power: Some(self.fleet.power(
                    c.totals.uj_self,
                    c.totals.est_uj_self,
                    c.seconds,
                    c.scale,
                )),
            })
            .collect();
        // The biggest consumer first: ranked by watts on the profiled hosts, as the W column.
        services.sort_by(|a, b| {
            let w = |s: &ServicePower| s.power.map_or(0.0, |p| p.watts);
            w(b).total_cmp(&w(a))
                .then_with(|| a.service.cmp(&b.service))
        });
        let mut total = Power::default();
        for s in &services {
            add_power(&mut total, &s.power.unwrap_or_default());
        }
        Ok(PowerResponse {
            window: wire(w),
            services,
            total: Some(total),
            hosts_reporting: cover.hosts,
            idle_watts: cover.idle_watts,
            idle_estimated: cover.idle_estimated,
            dropped_samples: cover.dropped,
            pue: self.fleet.pue.unwrap_or(0.0),
            co2_g_per_kwh: self.fleet.co2_g_per_kwh.unwrap_or(0.0),
            price_per_kwh: self.fleet.price_per_kwh.unwrap_or(0.0),
            currency: self.fleet.currency.clone(),
        })
    }
}

/// A scoped thread's result; its panic, if any, carries on in the caller.
fn joined<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
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
