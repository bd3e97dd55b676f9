//! Regression detection, FBDetect-style, as pure functions over in-memory series: no I/O. The
//! caller (the collector's detection runner, the fleet simulator's bench) builds one
//! [`ServiceSeries`] per service and hands over a [`StackSource`] and the service's changes;
//! [`detect`] returns the regressions, improvements and (for `--all`) filtered candidates, with
//! the funnel's counts.
//!
//! The funnel, cheapest first: change points per series (daily profile removed when seasonal;
//! CUSUM-located splits kept by a likelihood-ratio test at `alpha`), minimum change, went-away
//! and creep; then, with stacks before and after: normalization (a share that moved only because
//! the rest of the service did), cost shift (work moved inside one caller), dedup (CPU and
//! energy views are one report, and a regression is reported once, at the deepest function
//! carrying nearly all its added cost); then magnitudes and root cause.

mod candidate;
mod cause;
mod changepoint;
mod config;
mod dedup;
mod dilution;
mod hours;
mod regression;
mod seasonality;
mod series;
mod shift;
mod stacks;
mod stats;
mod trend;

#[cfg(test)]
mod testdata;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use wattson_proto::v1;

use candidate::{Candidate, Funnel, Metric};
pub use config::DetectConfig;
use series::Grid;
use stacks::Window;

/// One service's series on a fixed step, summed over all hosts; vectors have equal length.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceSeries {
    pub service: String,
    /// First bucket's start, Unix seconds.
    pub start: i64,
    /// Seconds.
    pub step: i64,
    /// The service's samples per bucket.
    pub samples: Vec<f64>,
    /// The service's µJ (measured + estimated) per bucket.
    pub energy_uj: Vec<f64>,
    /// Any of the energy is model-estimated.
    pub estimated: bool,
    /// Fleet watts / profiled watts (1.0 when no fleet size is configured).
    pub fleet_scale: f64,
    pub functions: Vec<FunctionSeries>,
}

/// One function's inclusive samples and energy per bucket (same grid as its service).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FunctionSeries {
    pub function: String,
    pub samples_incl: Vec<f64>,
    pub energy_incl_uj: Vec<f64>,
}

/// Folded stacks (root first, `;`-separated) of one service over [from, to): (folded, samples, µJ).
pub trait StackSource {
    fn stacks(
        &self,
        service: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, u64, f64)>, DetectError>;

    /// The stacks of one build id only, like [`StackSource::stacks`]: root cause weighs a
    /// change naming a build by the share of the change that build's samples carry. Default:
    /// none known (that evidence is skipped).
    fn build_stacks(
        &self,
        service: &str,
        build: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, u64, f64)>, DetectError> {
        let _ = (service, build, from, to);
        Ok(Vec::new())
    }

    /// Every build's stacks kept apart, in one read: (build id, folded, samples, µJ). `None`
    /// (the default) when the source cannot; [`StackSource::build_stacks`] is then asked per
    /// build.
    fn stacks_by_build(
        &self,
        service: &str,
        from: i64,
        to: i64,
    ) -> Result<Option<Vec<BuildStack>>, DetectError> {
        let _ = (service, from, to);
        Ok(None)
    }
}

/// One build's folded stack: (build id, folded, samples, µJ).
pub type BuildStack = (String, String, u64, f64);

/// A source with no stacks: the stack-based stages (normalization, cost shift, caller/leaf
/// dedup, evidence, touched-function scoring) are skipped and the report's note says so.
pub struct NoStacks;

impl StackSource for NoStacks {
    fn stacks(&self, _: &str, _: i64, _: i64) -> Result<Vec<(String, u64, f64)>, DetectError> {
        Ok(Vec::new())
    }
}

/// What one pass over a service found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Open regressions, improvements, then the candidates a filter removed (status
    /// "filtered").
    pub regressions: Vec<v1::Regression>,
    /// Per stage of the funnel, candidates in and removed.
    pub funnel: Vec<v1::FunnelStage>,
    /// Series examined (0 when the history is empty or too short).
    pub series: u64,
    /// Why nothing could be reported, or what was skipped; empty otherwise.
    pub note: String,
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// A configuration value is out of range or does not parse.
    #[error("{key}: {reason}")]
    Config {
        /// The key at fault, e.g. `detect.alpha`.
        key: String,
        /// What is wrong and the accepted range.
        reason: String,
    },
    /// A series is malformed (vectors of unequal length, a step that does not divide a day).
    #[error("series of service {service:?}: {reason}")]
    Series { service: String, reason: String },
    /// The stack source failed.
    #[error("stacks of service {service:?}: {reason}")]
    Stacks { service: String, reason: String },
}

/// The UTC midnight at or before `t`. History and analysis windows start there: change points
/// found by segmenting a series move with the series' start, so passes within one day must
/// all see the same start to agree.
pub fn day_start(t: i64) -> i64 {
    t.div_euclid(seasonality::DAY) * seasonality::DAY
}

/// Runs the funnel over one service's series as of `now` (Unix seconds; buckets starting at or
/// after it are ignored). `changes` are the root-cause candidates (other services' are ignored).
pub fn detect(
    series: &ServiceSeries,
    stacks: &dyn StackSource,
    changes: &[v1::Change],
    cfg: &DetectConfig,
    now: i64,
) -> Result<Report, DetectError> {
    let mut cfg = cfg.for_service(&series.service);
    cfg.validate()?;
    check_shape(series)?;
    cfg.step = series.step;
    let len = ((now - series.start + series.step - 1).div_euclid(series.step))
        .clamp(0, series.samples.len() as i64) as usize;
    let have = |i: &usize| series.samples[*i] > 0.0;
    let (Some(first), Some(last)) = ((0..len).find(have), (0..len).rev().find(have)) else {
        return Ok(Report {
            funnel: Funnel::new(0).stages(),
            note: format!(
                "history empty: no samples of {} before {now}",
                series.service
            ),
            ..Report::default()
        });
    };
    let span = (last + 1 - first) as i64 * series.step;
    if span < cfg.min_history {
        return Ok(Report {
            funnel: Funnel::new(0).stages(),
            note: format!(
                "history too short: {} of the {} needed",
                trend::span(span),
                trend::span(cfg.min_history)
            ),
            ..Report::default()
        });
    }
    let first_reported = ((day_start(now - cfg.analysis_window) - series.start)
        .div_euclid(series.step))
    .max(0) as usize;
    let mut counts: Vec<f64> = (0..len)
        .map(|i| series.samples[i])
        .filter(|s| *s > 0.0)
        .collect();
    let energy_known = series.energy_uj[..len].iter().any(|e| *e > 0.0);
    let dilution = dilution::Dilution::new(series, len, energy_known);
    let grid = Grid {
        start: series.start,
        step: series.step,
        cfg: &cfg,
        first_reported,
        samples: stats::median_in_place(&mut counts),
        counts: &series.samples[..len],
        dilution: &dilution,
    };

    let mut funnel = Funnel::new(cfg.max_filtered);
    let mut cands = Vec::new();
    let mut examined = 0;
    for (fi, f) in series.functions.iter().enumerate() {
        for metric in [Metric::Cpu, Metric::Energy] {
            if metric == Metric::Energy && !energy_known {
                continue;
            }
            let values = shares(series, f, metric, len);
            examined += 1;
            for mut c in series::analyze(&grid, fi, metric, &values, &mut funnel) {
                let other = match metric {
                    Metric::Cpu => Metric::Energy,
                    Metric::Energy => Metric::Cpu,
                };
                c.other_delta = if other == Metric::Energy && !energy_known {
                    0.0
                } else {
                    let o = shares(series, f, other, len);
                    span_mean(&o, c.after_span) - span_mean(&o, c.before_span)
                };
                cands.push(c);
            }
        }
    }

    // Group windows overlap (each up to a day each side): read each hour once per pass.
    let cached = hours::HourCache::new(stacks);
    let stacks: &dyn StackSource = &cached;
    let mut around = Around::load(series, stacks, &grid, &cands)?;
    let cands = shift::normalization(&mut funnel, cands, series, &around);
    let cands = shift::cost_shift(&mut funnel, cands, series, &around, cfg.shift_tolerance);
    let cands = dedup::merge_metrics(&mut funnel, cands, series, cfg.buckets(cfg.creep_gap));
    let cands = dedup::callers_and_leaves(&mut funnel, cands, series, &around, cfg.dedup_flow);
    around.missing_note(&cands);

    let ctx = regression::Context {
        series,
        cfg: &cfg,
        now,
        last_bucket: last,
        changes,
        stacks,
    };
    let mut regressions: Vec<v1::Regression> = cands
        .iter()
        .map(|c| regression::build(&ctx, c, around.window(c)))
        .collect();
    regressions.sort_by(|a, b| {
        (a.status != "open")
            .cmp(&(b.status != "open"))
            .then(
                b.fleet_delta_watts
                    .abs()
                    .total_cmp(&a.fleet_delta_watts.abs()),
            )
            .then(a.id.cmp(&b.id))
    });
    regressions.extend(
        funnel
            .filtered
            .iter()
            .map(|c| regression::build(&ctx, c, None)),
    );
    tracing::debug!(service = %series.service, reads = cached.reads(), "stack reads of the pass");
    Ok(Report {
        regressions,
        funnel: funnel.stages(),
        series: examined,
        note: around.note,
    })
}

fn check_shape(s: &ServiceSeries) -> Result<(), DetectError> {
    let bad = |reason: String| {
        Err(DetectError::Series {
            service: s.service.clone(),
            reason,
        })
    };
    if s.step <= 0 || 86_400 % s.step != 0 {
        return bad(format!("step {} s must be > 0 and divide a day", s.step));
    }
    let n = s.samples.len();
    if s.energy_uj.len() != n {
        return bad(format!(
            "energy_uj has {} buckets, samples {n}",
            s.energy_uj.len()
        ));
    }
    for f in &s.functions {
        if f.samples_incl.len() != n || f.energy_incl_uj.len() != n {
            return bad(format!(
                "function {:?} has {} and {} buckets, the service {n}",
                f.function,
                f.samples_incl.len(),
                f.energy_incl_uj.len()
            ));
        }
    }
    if !(s.fleet_scale.is_finite() && s.fleet_scale > 0.0) {
        return bad(format!(
            "fleet_scale {} must be a finite number > 0",
            s.fleet_scale
        ));
    }
    Ok(())
}

/// A function's inclusive share per bucket (NaN where the service has none).
fn shares(s: &ServiceSeries, f: &FunctionSeries, metric: Metric, len: usize) -> Vec<f64> {
    let (part, whole) = match metric {
        Metric::Cpu => (&f.samples_incl, &s.samples),
        Metric::Energy => (&f.energy_incl_uj, &s.energy_uj),
    };
    (0..len)
        .map(|i| {
            if whole[i] > 0.0 {
                (part[i] / whole[i]).clamp(0.0, 1.0)
            } else {
                f64::NAN
            }
        })
        .collect()
}

/// Mean of the finite values of `x` over bucket range [lo, hi).
fn span_mean(x: &[f64], (lo, hi): (usize, usize)) -> f64 {
    let (s, n) = x[lo..hi.min(x.len())]
        .iter()
        .filter(|v| v.is_finite())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { s / n as f64 }
}

/// Sum of `part` over sum of `whole` across bucket range [lo, hi): a share, or an energy per
/// sample, over a span with each bucket weighing what it holds. None when `whole` sums to 0.
fn span_ratio(part: &[f64], whole: &[f64], (lo, hi): (usize, usize)) -> Option<f64> {
    let hi = hi.min(part.len()).min(whole.len());
    let lo = lo.min(hi);
    let w: f64 = whole[lo..hi].iter().sum();
    (w > 0.0).then(|| part[lo..hi].iter().sum::<f64>() / w)
}

/// Stacks windows at least this long (seconds) are moved to whole hours.
const WHOLE_HOURS_FROM: i64 = 6 * 3600;

/// Stacks around each group of candidates that changed at about the same time (one query pair
/// per group, not per candidate). A group holds the candidates whose start and end are both
/// within the location slack of its first one's: chaining overlapping spans would stretch a
/// short change's "after" to the end of a long creep, past changes that have nothing to do
/// with it.
pub(crate) struct Around {
    /// Per candidate (start, end) bucket, the window of its group.
    of: HashMap<(usize, usize), usize>,
    /// Per group, its stacks and the buckets they cover (before start, after end).
    windows: Vec<(Window, (usize, usize))>,
    note: String,
}

impl Around {
    fn load(
        s: &ServiceSeries,
        src: &dyn StackSource,
        grid: &Grid<'_>,
        cands: &[Candidate],
    ) -> Result<Around, DetectError> {
        let mut starts: Vec<&Candidate> = cands.iter().collect();
        starts.sort_by_key(|c| (c.start, c.end));
        let tol = grid.cfg.cause_tolerance_steps.max(2) as usize;
        let day = grid.cfg.buckets(86_400);
        let mut groups: Vec<Vec<&Candidate>> = Vec::new();
        for c in starts {
            let slack = tol.max(c.loc_err);
            let fits = |g: &Vec<&Candidate>| {
                let first = g[0];
                c.start.abs_diff(first.start) <= slack.max(first.loc_err)
                    && c.end.abs_diff(first.end) <= slack.max(first.loc_err)
            };
            match groups.iter_mut().rev().take(8).find(|g| fits(g)) {
                Some(g) => g.push(c),
                None => groups.push(vec![c]),
            }
        }
        let mut around = Around {
            of: HashMap::new(),
            windows: Vec::new(),
            note: String::new(),
        };
        let time = |b: usize| s.start + b as i64 * s.step;
        for g in groups {
            let t0 = g.iter().map(|c| c.start).min().unwrap_or(0);
            let t1 = g.iter().map(|c| c.end).max().unwrap_or(t0);
            // As long as the best-measured member allows, up to a whole day (so a daily
            // cycle in some stacks cancels between before and after).
            let w = g
                .iter()
                .map(|c| (c.before_span.1 - c.before_span.0).min(c.after_span.1 - c.after_span.0))
                .max()
                .unwrap_or(1)
                .clamp(1, day);
            let mut before = (time(t0.saturating_sub(w)), time(t0));
            let skip = usize::from(w > 1);
            let mut after = (time(t1 + skip), time(t1 + skip + w));
            if w as i64 * s.step >= WHOLE_HOURS_FROM {
                // Whole hours, each window moved away from the change by under an hour: the
                // pass then reads only cached hours, never a part-hour edge.
                before = (hours::floor(before.0), hours::floor(before.1));
                after = (hours::ceil(after.0), hours::ceil(after.1));
            }
            let window = Window::load(src, &s.service, before, after)?;
            for c in &g {
                around.of.insert((c.start, c.end), around.windows.len());
            }
            let bucket = |t: i64| (t - s.start).div_euclid(s.step).max(0) as usize;
            let covered = (bucket(before.0), bucket(after.1 + s.step - 1));
            around.windows.push((window, covered));
        }
        Ok(around)
    }

    /// The stacks around a candidate's change, when there are any.
    pub fn window(&self, c: &Candidate) -> Option<&Window> {
        self.of
            .get(&(c.start, c.end))
            .map(|i| &self.windows[*i].0)
            .filter(|w| !w.rows.is_empty())
    }

    /// True when `other` changed inside the buckets the stacks around `c` cover: what flows
    /// through it there is part of what was measured for `c`.
    pub fn covers(&self, c: &Candidate, other: &Candidate) -> bool {
        self.of
            .get(&(c.start, c.end))
            .is_some_and(|i| (self.windows[*i].1.0..self.windows[*i].1.1).contains(&other.start))
    }

    fn missing_note(&mut self, cands: &[Candidate]) {
        let missing = cands.iter().filter(|c| self.window(c).is_none()).count();
        if missing > 0 {
            self.note = format!(
                "no stacks around {missing} of {} reported changes: normalization, cost shift, \
                 caller/leaf dedup and evidence skipped for them",
                cands.len()
            );
        }
    }
}
