//! Change points of one series: seeded binary segmentation where each interval's split is the
//! one of maximum likelihood for a shift of the mean (a CUSUM over prefix sums, O(n) per scale,
//! O(n log n) in all), kept only when a likelihood-ratio chi-square test rejects "no change" at
//! level `alpha`, Bonferroni-corrected for the positions tried, with at least `min_segment`
//! points on either side.

use super::stats::chi2_1_sf;

/// A significant split: `at` is the index of the first point after the change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Split {
    pub at: usize,
    /// Likelihood-ratio statistic (chi-square, one degree of freedom under no change).
    pub lr: f64,
    /// Bonferroni-corrected p-value.
    pub p: f64,
}

/// The outcome of segmenting one series.
#[derive(Debug, Default)]
pub struct Scan {
    /// Significant splits, by position.
    pub splits: Vec<Split>,
    /// Splits located and tested (significant or not).
    pub tried: u64,
}

/// Never more than this many change points per series: beyond it the series is not a sequence
/// of levels, and the later filters would drown.
const MAX_SPLITS: usize = 48;

/// Segments `x` with noise standard deviation `sigma`. Cheap rejection first: the same scan
/// on means of `min_segment`-point blocks (a twelfth of the work at a 1 h minimum segment and a
/// 5 min step), at a relaxed level; only a series where that finds something is scanned at full
/// resolution.
pub fn segment(x: &[f64], sigma: f64, min_segment: usize, alpha: f64) -> Scan {
    let m = min_segment.max(1);
    if m > 1 && x.len() >= 8 * m {
        let blocks: Vec<f64> = x
            .chunks_exact(m)
            .map(|c| c.iter().sum::<f64>() / m as f64)
            .collect();
        let screen = seeded(
            &blocks,
            sigma / (m as f64).sqrt(),
            1,
            (alpha * SCREEN_RELAX).min(0.5),
        );
        if screen.splits.is_empty() {
            return screen;
        }
    }
    seeded(x, sigma, m, alpha)
}

/// How much more lenient the block screen is than the full test.
const SCREEN_RELAX: f64 = 10.0;

/// Seeded binary segmentation of `x` with noise standard deviation `sigma`: the best
/// split of every interval of a deterministic multi-scale cover (lengths n, n/2, n/4, ... down
/// to 3 `min_segment`, each shifted by half its length), so a short spike inside a long series
/// is seen at its own scale. Splits are accepted greedily, most significant first, from
/// intervals that hold no accepted split. The test is Bonferroni-corrected over every position
/// tried.
fn seeded(x: &[f64], sigma: f64, min_segment: usize, alpha: f64) -> Scan {
    let m = min_segment.max(1);
    let n = x.len();
    let mut scan = Scan::default();
    if n < 2 * m || sigma.is_nan() || sigma <= 0.0 {
        return scan;
    }
    let prefix = prefix_sums(x);
    let var = sigma * sigma;
    let mut found: Vec<(usize, usize, usize, f64)> = Vec::new();
    let mut positions = 0usize;
    let mut len = n;
    loop {
        let shift = (len / 2).max(1);
        let mut lo = 0;
        loop {
            let hi = (lo + len).min(n);
            if hi - lo >= 2 * m {
                positions += hi - lo - 2 * m + 1;
                if let Some((at, lr)) = best_split(&prefix, lo, hi, m, var) {
                    found.push((lo, hi, at, lr));
                }
            }
            if hi == n {
                break;
            }
            lo += shift;
        }
        if len / 2 < 3 * m {
            break;
        }
        len /= 2;
    }
    scan.tried = found.len() as u64;
    // Cheap rejection: the threshold in LR units, so most intervals never reach the tail.
    let factor = positions as f64;
    found.retain(|f| factor * chi2_1_sf(f.3) < alpha);
    found.sort_by(|a, b| b.3.total_cmp(&a.3).then(a.2.cmp(&b.2)));
    for (lo, hi, at, lr) in found {
        if scan.splits.len() >= MAX_SPLITS {
            break;
        }
        let clear = scan
            .splits
            .iter()
            .all(|s| (s.at <= lo || s.at >= hi) && s.at.abs_diff(at) >= m);
        if clear {
            let p = (factor * chi2_1_sf(lr)).min(1.0);
            scan.splits.push(Split { at, lr, p });
        }
    }
    scan.splits.sort_by_key(|s| s.at);
    scan
}

/// `p[i]` is the sum of `x[..i]`.
fn prefix_sums(x: &[f64]) -> Vec<f64> {
    let mut p = Vec::with_capacity(x.len() + 1);
    let mut acc = 0.0;
    p.push(0.0);
    for v in x {
        acc += v;
        p.push(acc);
    }
    p
}

/// Positions [`best_split`] weighs side by side.
const LANES: usize = 4;

/// The split of [lo, hi) maximizing k1 k2 / n (mean1 - mean2)^2 / var, and that statistic
/// (the first such position on ties).
fn best_split(prefix: &[f64], lo: usize, hi: usize, m: usize, var: f64) -> Option<(usize, f64)> {
    let (first, last) = (lo + m, hi.checked_sub(m)?);
    if first > last {
        return None;
    }
    let n = (hi - lo) as f64;
    let (base, total) = (prefix[lo], prefix[hi] - prefix[lo]);
    // k1 k2 / n (s1/k1 - s2/k2)^2 = (s1 n - total k1)^2 / (k1 k2 n). This loop was a quarter
    // of a pass: LANES independent maxima (one per position mod LANES) let the divisions and
    // comparisons of neighbouring positions run at once instead of one after another.
    let stat = |k: usize| {
        let k1 = (k - lo) as f64;
        let d = (prefix[k] - base) * n - total * k1;
        d * d / (k1 * (n - k1))
    };
    let mut best = [(f64::NEG_INFINITY, usize::MAX); LANES];
    let mut k = first;
    while k + LANES <= last + 1 {
        for (j, b) in best.iter_mut().enumerate() {
            let v = stat(k + j);
            if v > b.0 {
                *b = (v, k + j);
            }
        }
        k += LANES;
    }
    // The rest join lane 0 (later than every position before, so ties keep the earlier).
    for k in k..=last {
        let v = stat(k);
        if v > best[0].0 {
            best[0] = (v, k);
        }
    }
    let (v, k) = best
        .into_iter()
        .fold((f64::NEG_INFINITY, usize::MAX), |a, b| {
            if b.0 > a.0 || (b.0 == a.0 && b.1 < a.1) {
                b
            } else {
                a
            }
        });
    (k != usize::MAX).then(|| (k, v / (n * var)))
}

/// Likelihood ratio and Bonferroni p-value of a change between two adjacent ranges with
/// means `a` and `b`, `na` and `nb` points, over `positions` positions tried.
pub fn test_levels(
    a: f64,
    na: usize,
    b: f64,
    nb: usize,
    sigma: f64,
    positions: usize,
) -> (f64, f64) {
    let (na, nb) = (na as f64, nb as f64);
    let lr = na * nb / (na + nb) * (a - b).powi(2) / (sigma * sigma);
    (lr, (positions.max(1) as f64 * chi2_1_sf(lr)).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testdata::noisy;

    #[test]
    fn noise_alone_has_no_change_point() {
        let mut false_alarms = 0;
        for seed in 0..50 {
            let x = noisy(2000, seed, |_| 10.0);
            false_alarms += segment(&x, 1.0, 12, 0.01).splits.len();
        }
        // 50 scans at alpha = 0.01 (Bonferroni: conservative) expect at most a few.
        assert!(
            false_alarms <= 2,
            "{false_alarms} false change points in 50 noise series"
        );
    }

    /// The first position of greatest statistic, one position at a time.
    fn best_split_one_by_one(x: &[f64], lo: usize, hi: usize, m: usize) -> Option<(usize, f64)> {
        let mean = |a: usize, b: usize| x[a..b].iter().sum::<f64>() / (b - a) as f64;
        let n = (hi - lo) as f64;
        let mut best: Option<(usize, f64)> = None;
        for k in lo + m..=hi.checked_sub(m)? {
            let (k1, k2) = ((k - lo) as f64, (hi - k) as f64);
            let stat = k1 * k2 / n * (mean(lo, k) - mean(k, hi)).powi(2);
            if best.is_none_or(|(_, b)| stat > b * (1.0 + 1e-9)) {
                best = Some((k, stat));
            }
        }
        best
    }

    #[test]
    fn best_split_takes_the_first_greatest_position_of_any_interval() {
        // A step, noise, and flat series whose every position ties (the first must win, in
        // any lane). Positions tried: 180, 141, 30, 11 and 1 (every remainder of the lane
        // count), and none.
        let series = [
            noisy(203, 5, |i| if i >= 77 { 2.0 } else { 0.0 }),
            noisy(203, 6, |_| 0.0),
            vec![1.0; 203],
            (0..203).map(|i| (i % 2) as f64).collect(),
        ];
        for x in &series {
            let p = prefix_sums(x);
            for (lo, hi, m) in [
                (0, 203, 12),
                (5, 151, 3),
                (10, 41, 1),
                (0, 34, 12),
                (0, 24, 12),
                (0, 23, 12),
            ] {
                let fast = best_split(&p, lo, hi, m, 1.0);
                let slow = best_split_one_by_one(x, lo, hi, m);
                match (fast, slow) {
                    (Some((a, s)), Some((b, t))) => {
                        assert_eq!(a, b, "{lo}..{hi} m {m}: {x:?}");
                        assert!((s - t).abs() <= 1e-9 * t.abs().max(1.0), "{s} vs {t}");
                    }
                    (f, s) => assert_eq!(f.is_none(), s.is_none(), "{lo}..{hi} m {m}"),
                }
            }
        }
    }

    #[test]
    fn a_step_is_found_where_it_is() {
        let x = noisy(2000, 7, |i| if i >= 1500 { 11.0 } else { 10.0 });
        let s = segment(&x, 1.0, 12, 0.01);
        assert_eq!(s.splits.len(), 1, "{:?}", s.splits);
        assert!((s.splits[0].at as i64 - 1500).abs() <= 10, "{:?}", s.splits);
        assert!(s.splits[0].p < 1e-6);
    }

    #[test]
    fn a_spike_gives_two_change_points() {
        let x = noisy(1000, 3, |i| if (400..440).contains(&i) { 3.0 } else { 0.0 });
        let s = segment(&x, 1.0, 12, 0.01);
        let at: Vec<usize> = s.splits.iter().map(|s| s.at).collect();
        assert_eq!(at.len(), 2, "{at:?}");
        assert!(
            at[0].abs_diff(400) <= 2 && at[1].abs_diff(440) <= 2,
            "{at:?}"
        );
    }
}
