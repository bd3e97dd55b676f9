//! How the rest of a service moved between two spans: the shares of the service's functions,
//! each against its own level, the median across them. A function's share falls when another
//! function grows although its own cost stayed; went-away judges a change on the share level
//! divided by how far the rest moved, so a lasting change is not called gone because a later
//! regression elsewhere diluted its share back. Only a move many functions agree on counts: a
//! subtree that grew moves many functions at once, and then the median says little.

use super::candidate::Metric;
use super::stats::median_in_place;
use super::{ServiceSeries, shares};

/// Functions whose mean share lies in this range make the index: smaller ones are all
/// sampling noise, larger ones are the callers of most of the service and move with any
/// change below them.
const SHARES: (f64, f64) = (1e-3, 0.5);

/// At most this many functions (every k-th of those in range): the median is as good and
/// the memory stays bounded on a service with thousands of functions.
const MAX_FUNCTIONS: usize = 256;

/// With fewer functions in range the median says little: no factor.
const MIN_FUNCTIONS: usize = 8;

/// A function above this share holds many of the functions the index is made of, so its own
/// changes move the index with it: it gets no factor.
const MAX_SHARE: f64 = 1.0 / 3.0;

/// The share of functions whose move must lie within a quarter of the median's from it. Not a
/// majority: the callers of each later change move with it, and in a service of 60 functions a
/// few later changes move half of them (on six simulated fleets, 0.6 kept 3 lasting changes
/// from being seen as lasting, at the cost of 1 caller-or-leaf mix-up).
const AGREE: f64 = 0.4;

/// Per metric, the chosen functions' prefix sums of share over the buckets where the service
/// has data, and how many such buckets there are up to each.
#[derive(Default)]
pub struct Dilution {
    cpu: Prefix,
    energy: Prefix,
}

#[derive(Default)]
struct Prefix {
    sums: Vec<Vec<f64>>,
    live: Vec<u32>,
}

impl Dilution {
    /// The index of `series`' first `len` buckets; the energy view only when `energy`.
    pub fn new(series: &ServiceSeries, len: usize, energy: bool) -> Dilution {
        Dilution {
            cpu: Prefix::new(series, len, Metric::Cpu),
            energy: if energy {
                Prefix::new(series, len, Metric::Energy)
            } else {
                Prefix::default()
            },
        }
    }

    /// The factor the rest of the service's shares moved by from bucket span `from` to bucket
    /// span `to` (both [lo, hi)), for a function of share `share`: below 1 when other
    /// functions grew. 1 when unknown, when the functions do not agree on it, or when the
    /// function is too large for the index.
    pub fn factor(
        &self,
        metric: Metric,
        share: f64,
        from: (usize, usize),
        to: (usize, usize),
    ) -> f64 {
        if share > MAX_SHARE {
            return 1.0;
        }
        let p = match metric {
            Metric::Cpu => &self.cpu,
            Metric::Energy => &self.energy,
        };
        p.factor(from, to).unwrap_or(1.0)
    }
}

impl Prefix {
    fn new(series: &ServiceSeries, len: usize, metric: Metric) -> Prefix {
        let whole = match metric {
            Metric::Cpu => &series.samples,
            Metric::Energy => &series.energy_uj,
        };
        let len = len.min(whole.len());
        let mut live = Vec::with_capacity(len + 1);
        live.push(0u32);
        for w in &whole[..len] {
            live.push(live[live.len() - 1] + u32::from(*w > 0.0));
        }
        let n = f64::from(live[len]);
        if n == 0.0 {
            return Prefix::default();
        }
        // Prefix sums of a share series (NaN where the service has no data).
        let prefix = |y: Vec<f64>| -> Vec<f64> {
            let mut out = Vec::with_capacity(y.len() + 1);
            out.push(0.0);
            for v in y {
                out.push(out[out.len() - 1] + if v.is_finite() { v } else { 0.0 });
            }
            out
        };
        // Chosen before their prefix sums are kept: a service of thousands of functions holds
        // MAX_FUNCTIONS of them, not all.
        let mean = |f| {
            shares(series, f, metric, len)
                .iter()
                .filter(|v| v.is_finite())
                .sum::<f64>()
                / n
        };
        let in_range: Vec<_> = (series.functions.iter())
            .filter(|f| (SHARES.0..=SHARES.1).contains(&mean(f)))
            .collect();
        if in_range.len() < MIN_FUNCTIONS {
            return Prefix::default();
        }
        let stride = in_range.len().div_ceil(MAX_FUNCTIONS);
        Prefix {
            sums: (in_range.into_iter().step_by(stride))
                .map(|f| prefix(shares(series, f, metric, len)))
                .collect(),
            live,
        }
    }

    /// The median of the functions' moves from `from` to `to`, when most agree on it.
    fn factor(&self, from: (usize, usize), to: (usize, usize)) -> Option<f64> {
        let last = self.live.len().checked_sub(1)?;
        let clamp = |(lo, hi): (usize, usize)| (lo.min(last), hi.min(last));
        let ((a, b), (c, d)) = (clamp(from), clamp(to));
        let (n1, n2) = (self.live[b] - self.live[a], self.live[d] - self.live[c]);
        if n1 == 0 || n2 == 0 || self.sums.is_empty() {
            return None;
        }
        let mut moves: Vec<f64> = self
            .sums
            .iter()
            .filter_map(|s| {
                let before = (s[b] - s[a]) / f64::from(n1);
                let after = (s[d] - s[c]) / f64::from(n2);
                (before > 0.0).then(|| after / before)
            })
            .collect();
        if moves.len() < MIN_FUNCTIONS {
            return None;
        }
        let median = median_in_place(&mut moves);
        let near = (median - 1.0).abs() / 4.0;
        let agree = moves.iter().filter(|m| (*m - median).abs() <= near).count();
        (agree as f64 >= AGREE * moves.len() as f64).then_some(median)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::FunctionSeries;

    /// Twenty functions of 2% each and one of 20%; from bucket 100 on, the big one's cost
    /// doubles (so the service grows by 20%).
    fn service() -> ServiceSeries {
        let n = 200;
        let total = |i: usize| if i < 100 { 1000.0 } else { 1200.0 };
        let mut functions: Vec<FunctionSeries> = (0..20)
            .map(|k| FunctionSeries {
                function: format!("f{k}"),
                samples_incl: vec![20.0; n],
                energy_incl_uj: vec![0.0; n],
            })
            .collect();
        functions.push(FunctionSeries {
            function: "big".into(),
            samples_incl: (0..n).map(|i| total(i) - 600.0).collect(),
            energy_incl_uj: vec![0.0; n],
        });
        ServiceSeries {
            service: "svc".into(),
            start: 0,
            step: 300,
            samples: (0..n).map(total).collect(),
            energy_uj: vec![0.0; n],
            functions,
            ..ServiceSeries::default()
        }
    }

    #[test]
    fn another_functions_growth_dilutes_the_rest_by_its_factor() {
        let d = Dilution::new(&service(), 200, false);
        let f = d.factor(Metric::Cpu, 0.02, (0, 100), (100, 200));
        assert!((f - 1000.0 / 1200.0).abs() < 1e-9, "{f}");
        // Within one level nothing moved.
        assert!((d.factor(Metric::Cpu, 0.02, (0, 50), (50, 100)) - 1.0).abs() < 1e-12);
        // The big function itself holds too much of the service to be judged by the index.
        assert_eq!(d.factor(Metric::Cpu, 0.45, (0, 100), (100, 200)), 1.0);
        // The energy view was not built (no energy): unknown is 1.
        assert_eq!(d.factor(Metric::Energy, 0.02, (0, 100), (100, 200)), 1.0);
    }

    #[test]
    fn a_move_the_functions_do_not_agree_on_is_no_factor() {
        // Half the small functions double from bucket 100 (a subtree that grew): the median
        // lies between two camps, and it is not taken.
        let mut s = service();
        for f in &mut s.functions[..10] {
            for v in &mut f.samples_incl[100..] {
                *v *= 2.0;
            }
        }
        for i in 100..200 {
            s.samples[i] += 200.0;
        }
        let d = Dilution::new(&s, 200, false);
        assert_eq!(d.factor(Metric::Cpu, 0.02, (0, 100), (100, 200)), 1.0);
    }

    #[test]
    fn too_few_functions_in_range_is_no_index() {
        let mut s = service();
        s.functions.drain(..15);
        let d = Dilution::new(&s, 200, false);
        assert_eq!(d.factor(Metric::Cpu, 0.02, (0, 100), (100, 200)), 1.0);
    }
}
