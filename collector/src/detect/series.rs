//! One series through the cheap, per-series stages of the funnel: daily profile removal when
//! the series is seasonal, change points (significance), runs merged into steps and creeps,
//! minimum absolute and relative change, and went-away. What survives goes on to the stages
//! that look across series and at stacks.

use super::DetectConfig;
use super::candidate::{Candidate, Funnel, Metric};
use super::changepoint::{segment, test_levels};
use super::seasonality::{daily_acf, is_seasonal, remove_daily_profile};
use super::stats::{mean, noise_sd};
use super::trend::{Segments, levels, runs, went_away};

/// The grid every series of a service shares, and what the stages need to know about it.
pub struct Grid<'a> {
    pub start: i64,
    pub step: i64,
    pub cfg: &'a DetectConfig,
    /// First bucket whose change points are reported (the analysis window's start).
    pub first_reported: usize,
    /// Median samples per bucket of the service: the binomial noise floor of a share.
    pub samples: f64,
}

/// Runs the per-series stages over `values` (a share per bucket, NaN where the service had no
/// data) and returns the candidates that pass them.
pub fn analyze(
    grid: &Grid<'_>,
    func: usize,
    metric: Metric,
    values: &[f64],
    funnel: &mut Funnel,
) -> Vec<Candidate> {
    let cfg = grid.cfg;
    let m = cfg.buckets(cfg.min_segment);
    let idx: Vec<usize> = (0..values.len())
        .filter(|&i| values[i].is_finite())
        .collect();
    if idx.len() < 2 * m {
        return Vec::new();
    }
    let acf = daily_acf(values, grid.step);
    let mut full = values.to_vec();
    let seasonal = is_seasonal(acf, cfg.seasonal_min_acf)
        && remove_daily_profile(&mut full, grid.start, grid.step);
    let y: Vec<f64> = idx.iter().map(|&i| full[i]).collect();
    let mut scratch = Vec::with_capacity(y.len());
    let sigma = noise(&y, grid.samples, &mut scratch);
    let scan = segment(&y, sigma, m, cfg.alpha);
    funnel.count(
        "significance",
        scan.tried,
        scan.tried - scan.splits.len() as u64,
    );
    if seasonal {
        let raw: Vec<f64> = idx.iter().map(|&i| values[i]).collect();
        let raw_sigma = noise(&raw, grid.samples, &mut scratch);
        let raw_scan = segment(&raw, raw_sigma, m, cfg.alpha);
        let (day, half) = acf.unwrap_or_default();
        let seg = Segments::new(&raw, &raw_scan.splits);
        let mut seen = 0;
        for (j, s) in raw_scan.splits.iter().enumerate() {
            if idx[s.at] < grid.first_reported {
                continue;
            }
            seen += 1;
            if scan.splits.iter().any(|t| t.at.abs_diff(s.at) <= m) {
                continue;
            }
            let (b, a) = (seg.range(j), seg.range(j + 1));
            let c = candidate(func, metric, &idx, &raw, s.at, b, a, s.p);
            let why = format!(
                "daily cycle (autocorrelation {day:.2} at one day, {half:.2} at half a day): \
                 no change point once the daily profile is removed"
            );
            funnel.count("seasonality", 0, 1);
            funnel.remove("seasonality", c, why);
        }
        funnel.count("seasonality", seen, 0);
    }

    let seg = Segments::new(&y, &scan.splits);
    let gap = cfg.buckets(cfg.creep_gap);
    let block = cfg.buckets(3600);
    let history = cfg.buckets(cfg.history);
    let mut cands = Vec::new();
    for r in runs(&seg, &scan.splits, gap, block, cfg.alpha) {
        let at = scan.splits[r.first].at;
        if idx[at] < grid.first_reported {
            continue;
        }
        let ((blo, bhi), a) = levels(&seg, &r, m);
        let b = (blo.max(bhi.saturating_sub(history)), bhi);
        let (_, p) = test_levels(
            mean(&y[b.0..b.1]),
            b.1 - b.0,
            mean(&y[a.0..a.1]),
            a.1 - a.0,
            sigma,
            y.len(),
        );
        let c = candidate(func, metric, &idx, &y, at, b, a, p);
        let lasted = (idx[idx.len() - 1] + 1 - idx[at]) as i64 * grid.step;
        let (tlo, thi) = seg.range(r.first);
        let transient = (idx[thi - 1] + 1 - idx[tlo]) as i64 * grid.step;
        let away = went_away(
            &seg,
            &r,
            c.before,
            c.after,
            lasted,
            transient,
            cfg.min_lasting,
        );
        cands.push((c, away, r.kind));
    }

    let mut kept = Vec::new();
    let n = cands.len() as u64;
    for (mut c, away, kind) in cands {
        c.kind = kind;
        if let Some(why) = too_small(&c, cfg) {
            funnel.remove("min_change", c, why);
        } else {
            kept.push((c, away));
        }
    }
    funnel.count("min_change", n, n - kept.len() as u64);
    let n = kept.len() as u64;
    let mut out = Vec::new();
    for (c, away) in kept {
        match away {
            Some(why) => funnel.remove("went_away", c, why),
            None => out.push(c),
        }
    }
    funnel.count("went_away", n, n - out.len() as u64);
    out
}

/// Robust noise of a share series, never below the binomial sampling noise of a share
/// measured on `samples` samples.
fn noise(y: &[f64], samples: f64, scratch: &mut Vec<f64>) -> f64 {
    let p = mean(y).clamp(0.0, 1.0);
    let binomial = if samples > 0.0 {
        (p * (1.0 - p) / samples).sqrt()
    } else {
        0.0
    };
    let robust = noise_sd(y, scratch);
    let sd = robust.max(binomial);
    // A constant series (a share of exactly 0 or 1) still needs a scale, tiny but positive.
    if sd > 0.0 { sd } else { 1e-12 }
}

/// Why a change is below the configured minimum, or None.
fn too_small(c: &Candidate, cfg: &DetectConfig) -> Option<String> {
    let d = c.delta().abs();
    let rel = d / c.before.abs().max(1e-12);
    if d < cfg.min_abs_change {
        return Some(format!(
            "change {:.4}% of the service is below min_abs_change {:.4}%",
            d * 100.0,
            cfg.min_abs_change * 100.0
        ));
    }
    if rel < cfg.min_rel_change {
        return Some(format!(
            "change {:.2}% of the function's share is below min_rel_change {:.2}%",
            rel * 100.0,
            cfg.min_rel_change * 100.0
        ));
    }
    None
}

/// A candidate changing at compressed index `at`, with levels measured on compressed ranges
/// `b` and `a` of `y`.
#[expect(
    clippy::too_many_arguments,
    reason = "one candidate's figures, all needed"
)]
fn candidate(
    func: usize,
    metric: Metric,
    idx: &[usize],
    y: &[f64],
    at: usize,
    b: (usize, usize),
    a: (usize, usize),
    p: f64,
) -> Candidate {
    let buckets = |(lo, hi): (usize, usize)| (idx[lo], idx[hi - 1] + 1);
    Candidate {
        func,
        metric,
        kind: super::candidate::Kind::Step,
        start: idx[at],
        before: mean(&y[b.0..b.1]),
        after: mean(&y[a.0..a.1]),
        before_span: buckets(b),
        after_span: buckets(a),
        p,
        other_delta: 0.0,
        verdict: None,
    }
}
