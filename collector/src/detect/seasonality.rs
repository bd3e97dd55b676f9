//! Daily seasonality: whether a series repeats every day (its autocorrelation at one day is
//! high, and well above that at half a day, which a mere step would not give), and the
//! per-time-of-day profile that is removed before testing, learned robustly from the history
//! (median over days of each bucket's deviation from its day's median, so a step or a spike on
//! one day barely moves it).

use super::stats::median_in_place;

const DAY: i64 = 86_400;

/// Autocorrelations at one day and at half a day, or None with less than two days of data.
/// `x` is on a fixed `step` grid, NaN where there is no data.
pub fn daily_acf(x: &[f64], step: i64) -> Option<(f64, f64)> {
    let period = (DAY / step) as usize;
    if x.len() < 2 * period {
        return None;
    }
    let (mut sum, mut n) = (0.0, 0usize);
    for v in x.iter().filter(|v| v.is_finite()) {
        sum += v;
        n += 1;
    }
    let mu = sum / n.max(1) as f64;
    let var = x
        .iter()
        .filter(|v| v.is_finite())
        .map(|v| (v - mu).powi(2))
        .sum::<f64>()
        / n.max(1) as f64;
    if !(var > 0.0) {
        return None;
    }
    let acf = |lag: usize| {
        let (mut s, mut k) = (0.0, 0usize);
        for (a, b) in x.iter().zip(&x[lag..]) {
            if a.is_finite() && b.is_finite() {
                s += (a - mu) * (b - mu);
                k += 1;
            }
        }
        if k == 0 { 0.0 } else { s / k as f64 / var }
    };
    Some((acf(period), acf(period / 2)))
}

/// True when the daily cycle is significant: one-day autocorrelation at least `min_acf` and
/// above the half-day one by as much.
pub fn is_seasonal(acf: Option<(f64, f64)>, min_acf: f64) -> bool {
    acf.is_some_and(|(day, half)| day >= min_acf && day - half >= min_acf)
}

/// Subtracts the per-time-of-day profile from `x` in place (buckets start at `start`, Unix
/// seconds, `step` apart). Needs three days with data; returns false (and leaves `x`) otherwise.
pub fn remove_daily_profile(x: &mut [f64], start: i64, step: i64) -> bool {
    let period = (DAY / step) as usize;
    let day_of = |i: usize| (start + i as i64 * step).div_euclid(DAY);
    let phase_of = |i: usize| ((start + i as i64 * step).rem_euclid(DAY) / step) as usize;
    let first_day = day_of(0);
    let days = (day_of(x.len().saturating_sub(1)) - first_day + 1) as usize;
    let mut by_day: Vec<Vec<f64>> = vec![Vec::with_capacity(period); days];
    for (i, v) in x.iter().enumerate() {
        if v.is_finite() {
            by_day[(day_of(i) - first_day) as usize].push(*v);
        }
    }
    let mut full_days = 0;
    let day_median: Vec<f64> = by_day
        .iter_mut()
        .map(|d| {
            if d.len() >= period / 2 {
                full_days += 1;
                median_in_place(d)
            } else {
                f64::NAN
            }
        })
        .collect();
    if full_days < 3 {
        return false;
    }
    let mut by_phase: Vec<Vec<f64>> = vec![Vec::with_capacity(days); period];
    for (i, v) in x.iter().enumerate() {
        let m = day_median[(day_of(i) - first_day) as usize];
        if v.is_finite() && m.is_finite() {
            by_phase[phase_of(i)].push(v - m);
        }
    }
    let profile: Vec<f64> = by_phase
        .iter_mut()
        .map(|p| {
            if p.is_empty() {
                0.0
            } else {
                median_in_place(p)
            }
        })
        .collect();
    for (i, v) in x.iter_mut().enumerate() {
        *v -= profile[phase_of(i)];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testdata::Rng;

    fn daily(days: usize, step_up: Option<usize>, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        let per = (DAY / 300) as usize;
        (0..days * per)
            .map(|i| {
                let phase = (i % per) as f64 / per as f64 * std::f64::consts::TAU;
                let step = step_up.is_some_and(|s| i >= s) as u8 as f64 * 0.5;
                10.0 + 2.0 * phase.sin() + 0.2 * rng.normal() + step
            })
            .collect()
    }

    #[test]
    fn daily_cycle_is_seasonal_a_step_is_not() {
        assert!(is_seasonal(daily_acf(&daily(7, None, 1), 300), 0.3));
        let mut rng = Rng::new(2);
        let step: Vec<f64> = (0..7 * 288)
            .map(|i| rng.normal() + if i > 1000 { 5.0 } else { 0.0 })
            .collect();
        let acf = daily_acf(&step, 300);
        assert!(acf.unwrap().0 > 0.3 && !is_seasonal(acf, 0.3), "{acf:?}");
    }

    #[test]
    fn profile_removal_keeps_a_step_and_flattens_the_cycle() {
        let mut x = daily(7, Some(5 * 288), 4);
        assert!(remove_daily_profile(&mut x, 0, 300));
        let sd = |v: &[f64]| {
            let m = v.iter().sum::<f64>() / v.len() as f64;
            (v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        // Within the first five days only noise (0.2) and the profile's own error remain.
        assert!(sd(&x[..5 * 288]) < 0.3, "{}", sd(&x[..5 * 288]));
        let before = x[..5 * 288].iter().sum::<f64>() / (5.0 * 288.0);
        let after = x[5 * 288..].iter().sum::<f64>() / (2.0 * 288.0);
        assert!((after - before - 0.5).abs() < 0.1, "{before} {after}");
    }
}
