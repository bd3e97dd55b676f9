//! The small statistics detection rests on: normal and chi-square tails, medians and MAD,
//! Mann-Kendall's trend test and Theil-Sen's slope. Plain functions on slices, no allocation
//! beyond a scratch copy where a median needs one.

/// Scale from a MAD to a normal standard deviation.
pub const MAD_TO_SD: f64 = 1.4826;

/// Complementary error function (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// P(|Z| > z) for a standard normal Z.
pub fn normal_two_sided(z: f64) -> f64 {
    erfc(z.abs() / std::f64::consts::SQRT_2)
}

/// P(X > x) for X chi-square with one degree of freedom.
pub fn chi2_1_sf(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    erfc((x / 2.0).sqrt())
}

/// Two-sided p-value of `x` successes in `n` trials of probability `f` (both rounded to whole
/// counts): exact below a few thousand trials, normal with continuity correction above.
pub fn binomial_two_sided(x: f64, n: f64, f: f64) -> f64 {
    let (n, x) = (n.round().max(0.0), x.round().max(0.0));
    let x = x.min(n);
    if n == 0.0 || f <= 0.0 || f >= 1.0 {
        return 1.0;
    }
    let (lower, upper) = if n > 5000.0 {
        let sd = (n * f * (1.0 - f)).sqrt();
        let z = |d: f64| normal_two_sided(d / sd) / 2.0;
        let mu = n * f;
        (
            if x + 0.5 >= mu { 1.0 } else { z(mu - x - 0.5) },
            if x - 0.5 <= mu { 1.0 } else { z(x - 0.5 - mu) },
        )
    } else {
        // Log pmf by recurrence, summed relative to its peak so no term underflows.
        let k = n as usize;
        let mut log_pmf = Vec::with_capacity(k + 1);
        let mut l = n * (1.0 - f).ln();
        log_pmf.push(l);
        let odds = (f / (1.0 - f)).ln();
        for j in 0..k {
            l += ((n - j as f64) / (j as f64 + 1.0)).ln() + odds;
            log_pmf.push(l);
        }
        let peak = log_pmf.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut w = log_pmf;
        for v in &mut w {
            *v = (*v - peak).exp();
        }
        let total: f64 = w.iter().sum();
        let xi = x as usize;
        (
            w[..=xi].iter().sum::<f64>() / total,
            w[xi..].iter().sum::<f64>() / total,
        )
    };
    (2.0 * lower.min(upper)).min(1.0)
}

/// Median of `v`, reordering it; NaN when empty.
pub fn median_in_place(v: &mut [f64]) -> f64 {
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    let (_, m, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    let hi = *m;
    if n % 2 == 1 {
        return hi;
    }
    let lo = v[..n / 2].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo + hi) / 2.0
}

/// Robust standard deviation of i.i.d. noise around a level that may step: the MAD of first
/// differences, scaled to a normal sd and divided by sqrt(2) (a difference has twice the
/// variance). A step moves one difference, so it barely touches the estimate. Long series use
/// an evenly strided subset of about a thousand differences (the estimate's error stays ~3%).
pub fn noise_sd(x: &[f64], scratch: &mut Vec<f64>) -> f64 {
    let stride = (x.len() / 1024).max(1);
    scratch.clear();
    scratch.extend(x.windows(2).step_by(stride).map(|w| w[1] - w[0]));
    let m = median_in_place(scratch);
    for d in scratch.iter_mut() {
        *d = (*d - m).abs();
    }
    median_in_place(scratch) * MAD_TO_SD / std::f64::consts::SQRT_2
}

/// Mean of a slice (NaN when empty).
pub fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// Mann-Kendall trend test: (S, two-sided p-value). Ties are ignored in the variance, which
/// is conservative enough for aggregated (averaged) points.
pub fn mann_kendall(x: &[f64]) -> (f64, f64) {
    let n = x.len();
    if n < 4 {
        return (0.0, 1.0);
    }
    let mut s = 0i64;
    for i in 0..n {
        for j in i + 1..n {
            s += (x[j] - x[i]).partial_cmp(&0.0).map_or(0, |o| o as i64);
        }
    }
    let nf = n as f64;
    let var = nf * (nf - 1.0) * (2.0 * nf + 5.0) / 18.0;
    let z = if s > 0 {
        (s as f64 - 1.0) / var.sqrt()
    } else if s < 0 {
        (s as f64 + 1.0) / var.sqrt()
    } else {
        0.0
    };
    (s as f64, normal_two_sided(z))
}

/// Theil-Sen slope (median of pairwise slopes) per index unit.
pub fn theil_sen(x: &[f64]) -> f64 {
    let n = x.len();
    let mut slopes = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            slopes.push((x[j] - x[i]) / (j - i) as f64);
        }
    }
    median_in_place(&mut slopes)
}

/// The least-squares line through `(x, y)` points, evaluated at `x0`: (value, its variance
/// from the residuals). None with fewer than three points or all at one x.
pub fn line_at(points: &[(f64, f64)], x0: f64) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 3 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / sxx;
    let rss: f64 = points
        .iter()
        .map(|p| (p.1 - my - slope * (p.0 - mx)).powi(2))
        .sum();
    let sigma2 = rss / (n - 2.0);
    let value = my + slope * (x0 - mx);
    Some((value, sigma2 * (1.0 / n + (x0 - mx).powi(2) / sxx)))
}

/// Means of consecutive blocks of `width` points (the last block may be shorter).
pub fn block_means(x: &[f64], width: usize) -> Vec<f64> {
    x.chunks(width.max(1)).map(mean).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_match_tables() {
        assert!((normal_two_sided(1.959_964) - 0.05).abs() < 1e-6);
        assert!((chi2_1_sf(6.634_897) - 0.01).abs() < 1e-6);
        assert!((erfc(-1.0) - 1.842_700_79).abs() < 1e-6);
    }

    #[test]
    fn binomial_tails() {
        // 0 of 7 where each falls before with probability 0.375: 2 * 0.625^7.
        assert!((binomial_two_sided(0.0, 7.0, 0.375) - 2.0 * 0.625f64.powi(7)).abs() < 1e-12);
        // 10 heads of 20 fair coins is no evidence at all.
        assert_eq!(binomial_two_sided(10.0, 20.0, 0.5), 1.0);
        // 60 of 100 fair: 2 P(X >= 60) = 0.0569 (tables).
        assert!((binomial_two_sided(60.0, 100.0, 0.5) - 0.0569).abs() < 1e-3);
        // The normal branch agrees with the exact one where they meet.
        let exact = binomial_two_sided(2600.0, 5000.0, 0.5);
        let approx = binomial_two_sided(5200.0, 10000.0, 0.5);
        assert!(exact < 0.01 && approx < 1e-4, "{exact} {approx}");
        assert!((binomial_two_sided(5100.0, 10000.0, 0.5) - 0.0466).abs() < 2e-3);
    }

    #[test]
    fn medians_and_noise() {
        assert_eq!(median_in_place(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_in_place(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        // A big step barely moves the noise estimate.
        let x = crate::detect::testdata::noisy(2000, 5, |i| if i > 1000 { 50.0 } else { 0.0 });
        let sd = noise_sd(&x, &mut Vec::new());
        assert!((sd - 1.0).abs() < 0.08, "{sd}");
    }

    #[test]
    fn a_line_extrapolates_with_a_variance_that_grows_with_distance() {
        let pts: Vec<(f64, f64)> = crate::detect::testdata::noisy(40, 3, |i| 2.0 + 0.5 * i as f64)
            .into_iter()
            .enumerate()
            .map(|(i, y)| (i as f64, y))
            .collect();
        let (v, var) = line_at(&pts, -5.0).unwrap();
        assert!((v - -0.5).abs() < 3.0 * var.sqrt(), "{v} {var}");
        let (_, near) = line_at(&pts, 20.0).unwrap();
        assert!(near < var && near > 0.0);
        assert!(line_at(&pts[..2], 0.0).is_none());
        assert!(line_at(&[(1.0, 1.0); 5], 0.0).is_none());
    }

    #[test]
    fn trend_tests() {
        let up: Vec<f64> = (0..30).map(|i| i as f64 * 0.5 + (i % 3) as f64).collect();
        let (s, p) = mann_kendall(&up);
        assert!(s > 0.0 && p < 0.001, "{s} {p}");
        assert!((theil_sen(&up) - 0.5).abs() < 0.1);
        let flat: Vec<f64> = (0..30).map(|i| (i % 3) as f64).collect();
        assert!(mann_kendall(&flat).1 > 0.05);
    }
}
