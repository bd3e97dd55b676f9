//! Detection's input from the store: a service's [`ServiceSeries`] (its totals and every
//! function's inclusive samples and energy per step, two reads whatever the number of
//! functions), the fleet scale of each service, and [`StoreStacks`], the stacks of a window.

use std::collections::HashMap;

use crate::attribute::FleetConfig;
use crate::detect::{
    BuildStack, DetectConfig, DetectError, FunctionSeries, ServiceSeries, StackSource,
};
use crate::store::rollup::split_stack_key;
use crate::store::{BucketSeries, Of, Store, StoreError, Window};

/// Hosts reporting a service over this long before `now` set its fleet scale.
const SCALE_WINDOW: i64 = 86_400;

/// The series of `service` over `cfg.history` before `now` (from the midnight before, see
/// [`crate::detect::day_start`]), on `cfg.step` buckets aligned to the step (the last bucket
/// is the one holding `now`), starting at the first bucket with samples: a young service
/// costs its own age, not the whole history. Functions are not read when the history is
/// shorter than `cfg.min_history` (detection only says so).
pub fn read(
    store: &dyn Store,
    service: &str,
    cfg: &DetectConfig,
    fleet_scale: f64,
    now: i64,
) -> Result<ServiceSeries, StoreError> {
    let step = cfg.step;
    let to = (now.div_euclid(step) + 1) * step;
    let window = Window {
        from: crate::detect::day_start(to - cfg.history.div_euclid(step).max(1) * step),
        to,
    };
    let totals = store.buckets(Of::Totals, window, service, step)?;
    let total = totals.series.first();
    let first = total.and_then(|t| t.samples.iter().position(|&n| n > 0));
    let from = first.map_or(totals.len, |i| i);
    let start = totals.start + from as i64 * step;
    let functions = match first {
        Some(_) if to - start >= cfg.min_history => {
            store
                .buckets(Of::Functions, Window { from: start, to }, service, step)?
                .series
        }
        _ => Vec::new(),
    };
    let f64s = |v: &[u64]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let energy = |s: &BucketSeries, from: usize| -> Vec<f64> {
        (s.uj[from..].iter().zip(&s.est_uj[from..]))
            .map(|(&m, &e)| (m + e) as f64)
            .collect()
    };
    Ok(ServiceSeries {
        service: service.to_string(),
        start,
        step,
        samples: total.map_or_else(Vec::new, |t| f64s(&t.samples[from..])),
        energy_uj: total.map_or_else(Vec::new, |t| energy(t, from)),
        estimated: total.is_some_and(BucketSeries::estimated)
            || functions.iter().any(BucketSeries::estimated),
        fleet_scale,
        functions: (functions.iter())
            .map(|f| FunctionSeries {
                function: f.key.clone(),
                samples_incl: f64s(&f.samples),
                energy_incl_uj: energy(f, 0),
            })
            .collect(),
    })
}

/// Per service, fleet hosts / hosts reporting over the last day (services without a
/// configured fleet size are absent: their scale is 1).
pub fn fleet_scales(
    store: &dyn Store,
    fleet: &FleetConfig,
    now: i64,
) -> Result<HashMap<String, f64>, StoreError> {
    if fleet.fleet_hosts.is_empty() {
        return Ok(HashMap::new());
    }
    let w = Window {
        from: now - SCALE_WINDOW,
        to: now + 60,
    };
    Ok((store.services(w)?.into_iter())
        .filter(|s| s.hosts > 0)
        .map(|s| {
            let (fleet_hosts, _) = fleet.fleet_hosts(&s.service, s.hosts);
            (s.service, fleet_hosts as f64 / s.hosts as f64)
        })
        .collect())
}

/// [`StackSource`] over [`Store::stacks`] (every build's stacks of a service, summed) and
/// [`Store::build_stacks`] (one build's).
pub struct StoreStacks<'a>(pub &'a dyn Store);

impl StoreStacks<'_> {
    fn read(
        &self,
        service: &str,
        build: Option<&str>,
        w: Window,
    ) -> Result<Vec<(String, u64, f64)>, DetectError> {
        let rows = match build {
            None => self.0.stacks(w, Some(service)),
            Some(b) => self.0.build_stacks(w, Some(service), b),
        }
        .map_err(|e| DetectError::Stacks {
            service: service.to_string(),
            reason: e.to_string(),
        })?;
        Ok(rows
            .into_iter()
            .map(|k| {
                let t = k.totals;
                (k.key, t.samples_self, t.uj_self_all() as f64)
            })
            .collect())
    }
}

impl StackSource for StoreStacks<'_> {
    fn stacks(
        &self,
        service: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, u64, f64)>, DetectError> {
        self.read(service, None, Window { from, to })
    }

    fn build_stacks(
        &self,
        service: &str,
        build: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, u64, f64)>, DetectError> {
        self.read(service, Some(build), Window { from, to })
    }

    fn stacks_by_build(
        &self,
        service: &str,
        from: i64,
        to: i64,
    ) -> Result<Option<Vec<BuildStack>>, DetectError> {
        let rows = (self.0.stack_rows(Window { from, to }, Some(service))).map_err(|e| {
            DetectError::Stacks {
                service: service.to_string(),
                reason: e.to_string(),
            }
        })?;
        Ok(Some(
            rows.into_iter()
                .map(|k| {
                    let (build, folded) = split_stack_key(&k.key);
                    let t = &k.totals;
                    let uj = t.uj_self_all() as f64;
                    (build.to_string(), folded.to_string(), t.samples_self, uj)
                })
                .collect(),
        ))
    }
}
