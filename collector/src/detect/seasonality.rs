//! Daily seasonality: whether a series repeats every day (its daily profile explains much of
//! its variance within days, which a step, a spike or a ramp on a day or two would not), and
//! the per-time-of-day profile that is removed before testing, learned robustly from the history
//! (median over days of each bucket's deviation from its day's median, so a step or a spike on
//! one day barely moves it).

use super::stats::{median_in_place, noise_sd};

pub(super) const DAY: i64 = 86_400;

/// How much of a series' hourly variance within days its daily profile explains, corrected
/// for what the profile of pure noise would explain (about 0 without a cycle, up to 1), or
/// None with under three days of data. `x` is on a fixed `step` grid, NaN where there is no
/// data. Hourly means (a twelfth of the work at a 5-minute step; a daily cycle lives at that
/// scale), each day less its median (a step between days touches one day), the profile the
/// median over days of each hour (a ramp or a spike on one or two days barely moves it), and
/// the noise measured robustly (a step inside one day does not dilute the rest).
pub fn daily_strength(x: &[f64], step: i64) -> Option<f64> {
    let block = if 3600 % step == 0 {
        (3600 / step) as usize
    } else {
        1
    };
    let period = (DAY / step) as usize / block;
    let mut hourly: Vec<f64> = x
        .chunks(block)
        .map(|c| {
            let (s, n) = c
                .iter()
                .filter(|v| v.is_finite())
                .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
            if n == 0 { f64::NAN } else { s / n as f64 }
        })
        .collect();
    let mut scratch = Vec::with_capacity(period);
    let mut days = 0;
    for day in hourly.chunks_mut(period) {
        scratch.clear();
        scratch.extend(day.iter().copied().filter(|v| v.is_finite()));
        if day.len() < period || scratch.len() < period / 2 {
            day.iter_mut().for_each(|v| *v = f64::NAN);
            continue;
        }
        days += 1;
        let m = median_in_place(&mut scratch);
        day.iter_mut().for_each(|v| *v -= m);
    }
    if days < 3 {
        return None;
    }
    let mut profile = vec![f64::NAN; period];
    for (h, p) in profile.iter_mut().enumerate() {
        scratch.clear();
        scratch.extend(
            hourly
                .iter()
                .skip(h)
                .step_by(period)
                .copied()
                .filter(|v| v.is_finite()),
        );
        *p = median_in_place(&mut scratch);
    }
    let known: Vec<f64> = profile.iter().copied().filter(|p| p.is_finite()).collect();
    if known.is_empty() {
        return None;
    }
    let explained = known.iter().map(|p| p * p).sum::<f64>() / known.len() as f64;
    // The noise it leaves, from hour-to-hour differences (their MAD): a step or a spike
    // inside one day, or a sharp edge of the cycle, is one outlier there, so it neither hides
    // a cycle every other day repeats nor passes for one.
    let finite: Vec<f64> = hourly.iter().copied().filter(|v| v.is_finite()).collect();
    let left = noise_sd(&finite, &mut scratch).powi(2);
    let var = explained + left;
    if var.is_nan() || var <= 0.0 {
        return None;
    }
    // The median of n normal values has variance pi/2 sigma^2 / n.
    let noise = std::f64::consts::FRAC_PI_2 * left / days as f64;
    Some((explained - noise) / var)
}

/// True when the daily profile explains at least `min_share` of the variance.
pub fn is_seasonal(strength: Option<f64>, min_share: f64) -> bool {
    strength.is_some_and(|s| s >= min_share)
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
    use crate::detect::testdata::{Rng, noisy};

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
    fn daily_cycle_is_seasonal_a_step_or_a_ramp_is_not() {
        let strength = daily_strength(&daily(7, None, 1), 300);
        assert!(is_seasonal(strength, 0.3), "{strength:?}");
        let step = noisy(7 * 288, 2, |i| if i > 1000 { 5.0 } else { 0.0 });
        let strength = daily_strength(&step, 300);
        assert!(!is_seasonal(strength, 0.3), "{strength:?}");
        let ramp = noisy(7 * 288, 3, |i| {
            ((i as f64 - 864.0) / 576.0).clamp(0.0, 1.0) * 5.0
        });
        let strength = daily_strength(&ramp, 300);
        assert!(!is_seasonal(strength, 0.3), "{strength:?}");
        let noise = noisy(3 * 288, 4, |_| 0.0);
        assert!(daily_strength(&noise, 300).unwrap().abs() < 0.2);
    }

    #[test]
    fn a_cycle_with_a_large_step_inside_one_day_is_seasonal() {
        // Four days of a cycle of amplitude 1 and a step of 8 a few hours into day 3: the
        // step's day must not hide the cycle the other days repeat.
        let mut rng = Rng::new(5);
        let x: Vec<f64> = (0..4 * 288)
            .map(|i| {
                let phase = (i % 288) as f64 / 288.0 * std::f64::consts::TAU;
                phase.sin() + 0.1 * rng.normal() + if i >= 3 * 288 + 43 { 8.0 } else { 0.0 }
            })
            .collect();
        let strength = daily_strength(&x, 300);
        assert!(is_seasonal(strength, 0.3), "{strength:?}");
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
