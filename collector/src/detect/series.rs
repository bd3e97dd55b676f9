//! One series through the cheap, per-series stages of the funnel: daily profile removal when
//! the series is seasonal, change points (significance), runs merged into steps and creeps,
//! minimum absolute and relative change, and went-away. What survives goes on to the stages
//! that look across series and at stacks.

use super::DetectConfig;
use super::candidate::{Candidate, Funnel, Kind, Metric};
use super::changepoint::{segment, test_levels};
use super::dilution::Dilution;
use super::seasonality::{daily_strength, is_seasonal, remove_daily_profile};
use super::stats::{binomial_two_sided, block_means, mean, noise_sd};
use super::trend::{Segments, creep_start, levels, runs, went_away};

/// How long a change of a seasonal series must last, at least (half a day: a leftover of the
/// daily cycle turns back within it).
const SEASONAL_LASTING: i64 = 12 * 3600;

/// Data a seasonal series must have before a change (a day: its daily profile is known).
const SEASONAL_HISTORY: i64 = 24 * 3600;

/// The grid every series of a service shares, and what the stages need to know about it.
pub struct Grid<'a> {
    pub start: i64,
    pub step: i64,
    pub cfg: &'a DetectConfig,
    /// First bucket whose change points are reported (the analysis window's start).
    pub first_reported: usize,
    /// Median samples per bucket of the service: the binomial noise floor of a share.
    pub samples: f64,
    /// The service's samples in each bucket, for the count test of a candidate's levels.
    pub counts: &'a [f64],
    /// How the rest of the service's shares moved, for went-away.
    pub dilution: &'a Dilution,
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
    let strength = daily_strength(values, grid.step);
    let mut full = values.to_vec();
    let seasonal = is_seasonal(strength, cfg.seasonal_min_share)
        && remove_daily_profile(&mut full, grid.start, grid.step);
    let y: Vec<f64> = idx.iter().map(|&i| full[i]).collect();
    let mut scratch = Vec::with_capacity(y.len());
    let sigma = noise(&y, grid.samples, m, &mut scratch);
    let scan = segment(&y, sigma, m, cfg.alpha);
    funnel.count(
        "significance",
        scan.tried,
        scan.tried - scan.splits.len() as u64,
    );
    if seasonal {
        let raw: Vec<f64> = idx.iter().map(|&i| values[i]).collect();
        let raw_sigma = noise(&raw, grid.samples, m, &mut scratch);
        let raw_scan = segment(&raw, raw_sigma, m, cfg.alpha);
        let explained = strength.unwrap_or_default() * 100.0;
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
            let c = candidate(func, metric, &idx, &raw, (s.at, s.at), b, a, s.p);
            let why = format!(
                "daily cycle (its profile explains {explained:.0}% of the variance within days): \
                 no change point once the daily profile is removed"
            );
            funnel.count("seasonality", 0, 1);
            funnel.remove("seasonality", c, why);
        }
        funnel.count("seasonality", seen, 0);
    }

    // A daily profile is never removed exactly (a cycle whose amplitude scales with the
    // level leaves some behind): on a seasonal series a change must outlast half a day.
    let min_lasting = if seasonal {
        cfg.min_lasting.max(SEASONAL_LASTING)
    } else {
        cfg.min_lasting
    };
    let seg = Segments::new(&y, &scan.splits);
    let gap = cfg.buckets(cfg.creep_gap);
    let day = cfg.buckets(super::seasonality::DAY);
    let block = cfg.buckets(3600);
    let history = cfg.buckets(cfg.history);
    let short = cfg.buckets(min_lasting);
    // How long segment j lasts, seconds (gaps in the data included).
    let span_of = |j: usize| {
        let (lo, hi) = seg.range(j);
        (idx[hi - 1] + 1 - idx[lo]) as i64 * grid.step
    };
    let mut cands = Vec::new();
    for r in runs(&seg, &scan.splits, gap, block, cfg.alpha, short) {
        let at = scan.splits[r.first].at;
        if idx[at] < grid.first_reported {
            continue;
        }
        let ((blo, bhi), a) = levels(&seg, &r, m);
        let b = (blo.max(bhi.saturating_sub(history)), bhi);
        let at = match r.kind {
            Kind::Step => at,
            Kind::Creep => creep_start(&y, at, a.0, mean(&y[b.0..b.1]), mean(&y[a.0..a.1])),
        };
        let (_, p) = test_levels(
            mean(&y[b.0..b.1]),
            b.1 - b.0,
            mean(&y[a.0..a.1]),
            a.1 - a.0,
            sigma,
            y.len(),
        );
        let c = candidate(
            func,
            metric,
            &idx,
            &y,
            (at, scan.splits[r.last].at.max(at)),
            b,
            a,
            p,
        );
        // The argmax of a step of snr d sits within ~20/d^2 points of the truth nearly always.
        let snr = c.delta().abs() / sigma;
        let c = Candidate {
            loc_err: ((20.0 / (snr * snr)).ceil() as usize).min(cfg.buckets(cfg.cause_window)),
            lasting: min_lasting,
            p: p.max(count_p(grid.counts, values, &c, y.len())),
            ..c
        };
        let lasted = (idx[idx.len() - 1] + 1 - idx[at]) as i64 * grid.step;
        let transient = span_of(r.first);
        // A seasonal series is judged with its daily profile removed, the index is not: its
        // spans must hold whole days for the cycle to average out.
        let moved = |j: usize| {
            let (lo, hi) = seg.range(j);
            let to = (idx[lo], idx[hi - 1] + 1);
            let from = c.after_span;
            if seasonal && (to.1 - to.0 < day || from.1 - from.0 < day) {
                1.0
            } else {
                grid.dilution.factor(metric, c.after, from, to)
            }
        };
        let away = went_away(
            &seg,
            &r,
            c.before,
            c.after,
            lasted,
            transient,
            min_lasting,
            &moved,
            &span_of,
        )
        .or_else(|| short_lived(&c, &y, a, short, m, r.kind));
        cands.push((c, away, r.kind));
    }

    let mut kept = Vec::new();
    let mut early = 0;
    let mut insignificant = 0;
    let n = cands.len() as u64;
    for (mut c, away, kind) in cands {
        c.kind = kind;
        let known = (c.start - idx[0]) as i64 * grid.step;
        // A daily cycle is known from a day of data: a change before that is not told from it.
        if seasonal && known < SEASONAL_HISTORY {
            let why = format!(
                "daily cycle, and only {} of data before the change: a day is needed to tell \
                 a change from the cycle",
                super::trend::span(known)
            );
            funnel.remove("seasonality", c, why);
            early += 1;
        } else if c.p > cfg.alpha {
            // The split was significant; the levels a run is judged on (its history before,
            // its lasting part after) must be too.
            let why = format!(
                "levels before and after differ with p {:.1e}, above alpha {:.0e}",
                c.p, cfg.alpha
            );
            funnel.remove("significance", c, why);
            insignificant += 1;
        } else if let Some(why) = too_small(&c, cfg) {
            funnel.remove("min_change", c, why);
        } else {
            kept.push((c, away));
        }
    }
    funnel.count("seasonality", 0, early);
    funnel.count("significance", 0, insignificant);
    funnel.count(
        "min_change",
        n - early - insignificant,
        n - early - insignificant - kept.len() as u64,
    );
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
/// measured on `samples` samples, nor below what its `block`-point means say: a share also
/// wanders slowly (what is left of a daily cycle, other functions' changes seen through the
/// share), which point-to-point differences do not see but a test of segment means does.
fn noise(y: &[f64], samples: f64, block: usize, scratch: &mut Vec<f64>) -> f64 {
    let p = mean(y).clamp(0.0, 1.0);
    let binomial = if samples > 0.0 {
        (p * (1.0 - p) / samples).sqrt()
    } else {
        0.0
    };
    let robust = noise_sd(y, scratch);
    let means = block_means(y, block);
    let slow = if block > 1 && means.len() >= 32 {
        noise_sd(&means, scratch) * (block as f64).sqrt()
    } else {
        0.0
    };
    let sd = robust.max(slow).max(binomial);
    // A constant series (a share of exactly 0 or 1) still needs a scale, tiny but positive.
    if sd > 0.0 { sd } else { 1e-12 }
}

/// Bonferroni p-value (over `positions`) of a candidate's levels judged as counts: the
/// function's samples before and after against the service's. A share measured on few
/// samples (a function seen a handful of times) is not normal; given the function's samples
/// on both sides, how many fall after is binomial when its share did not change. 1.0 when
/// counts are unknown.
fn count_p(counts: &[f64], shares: &[f64], c: &Candidate, positions: usize) -> f64 {
    let tally = |(lo, hi): (usize, usize)| {
        (lo..hi.min(counts.len()).min(shares.len()))
            .filter(|&i| shares[i].is_finite())
            .fold((0.0, 0.0), |(k, n), i| {
                (k + shares[i] * counts[i], n + counts[i])
            })
    };
    let (kb, nb) = tally(c.before_span);
    let (ka, na) = tally(c.after_span);
    if nb <= 0.0 || na <= 0.0 {
        return 1.0;
    }
    let p = binomial_two_sided(ka, ka + kb, na / (na + nb));
    (positions.max(1) as f64 * p).min(1.0)
}

/// A step whose level, once it has had `lasting` points to settle, keeps under half of its
/// change (a spike shorter than the minimum segment lifts the mean of the long segment it
/// sits in): why, or None. `a` is the after range of `y`, compressed; `m` the least points
/// the late level is measured on.
fn short_lived(
    c: &Candidate,
    y: &[f64],
    a: (usize, usize),
    lasting: usize,
    m: usize,
    kind: super::candidate::Kind,
) -> Option<String> {
    if kind != super::candidate::Kind::Step || a.1 < a.0 + lasting + m {
        return None;
    }
    let late = mean(&y[a.0 + lasting..a.1]);
    let remains = (late - c.before) / c.delta();
    (remains < 0.5).then(|| {
        format!(
            "did not last: {:.6} -> {:.6}, but {:.6} once settled ({:.0}% of the change remains)",
            c.before,
            c.after,
            late,
            remains * 100.0
        )
    })
}

/// Why a change is below the configured minimum, or None.
fn too_small(c: &Candidate, cfg: &DetectConfig) -> Option<String> {
    let d = c.cost_delta().abs();
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
            "change {:.3}% of the function's cost is below min_rel_change {:.3}%",
            rel * 100.0,
            cfg.min_rel_change * 100.0
        ));
    }
    None
}

/// A candidate changing from compressed index `at` to `end`, with levels measured on compressed ranges
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
    (at, end): (usize, usize),
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
        end: idx[end],
        before: mean(&y[b.0..b.1]),
        after: mean(&y[a.0..a.1]),
        before_span: buckets(b),
        after_span: buckets(a),
        p,
        other_delta: 0.0,
        loc_err: 0,
        lasting: 0,
        verdict: None,
    }
}
