//! Stacks before and after a change point, as shares of the service, and what the cross-series
//! stages read from them: the scale every other stack moved by (a share rises when the rest of
//! the service shrinks), each stack's excess over that scale (its own change), the excess
//! flowing through a function or through a caller to a callee, callers, and the evidence.

use std::collections::HashMap;

use super::candidate::Metric;
use super::{DetectError, StackSource};

/// One folded stack's shares in both windows, per metric (index 0 cpu, 1 energy).
#[derive(Debug, Clone)]
pub struct Row {
    pub folded: String,
    frames: Vec<String>,
    pub before: [f64; 2],
    pub after: [f64; 2],
}

impl Row {
    fn pos(&self, func: &str) -> Option<usize> {
        self.frames.iter().position(|f| f == func)
    }

    fn through(&self, func: &str) -> bool {
        self.pos(func).is_some()
    }
}

/// The stacks of one service around one change point.
#[derive(Debug, Default)]
pub struct Window {
    pub rows: Vec<Row>,
    /// Samples before and after: how precise the shares are.
    samples: (f64, f64),
}

fn m(metric: Metric) -> usize {
    match metric {
        Metric::Cpu => 0,
        Metric::Energy => 1,
    }
}

impl Window {
    /// Stacks of `service` over `before` and `after` ([from, to), Unix seconds).
    pub fn load(
        src: &dyn StackSource,
        service: &str,
        before: (i64, i64),
        after: (i64, i64),
    ) -> Result<Window, DetectError> {
        let b = src.stacks(service, before.0, before.1)?;
        let a = src.stacks(service, after.0, after.1)?;
        let mut rows: HashMap<String, Row> = HashMap::new();
        for (side, list) in [(0, &b), (1, &a)] {
            let total_s: f64 = list.iter().map(|r| r.1 as f64).sum();
            let total_e: f64 = list.iter().map(|r| r.2).sum();
            for (folded, samples, uj) in list {
                let row = rows.entry(folded.clone()).or_insert_with(|| Row {
                    folded: folded.clone(),
                    frames: folded.split(';').map(str::to_string).collect(),
                    before: [0.0; 2],
                    after: [0.0; 2],
                });
                let shares = [
                    if total_s > 0.0 {
                        *samples as f64 / total_s
                    } else {
                        0.0
                    },
                    if total_e > 0.0 { uj / total_e } else { 0.0 },
                ];
                if side == 0 {
                    row.before = shares;
                } else {
                    row.after = shares;
                }
            }
        }
        let mut rows: Vec<Row> = rows.into_values().collect();
        rows.sort_by(|x, y| x.folded.cmp(&y.folded));
        let samples = |l: &[(String, u64, f64)]| l.iter().map(|r| r.1 as f64).sum::<f64>();
        Ok(Window {
            rows,
            samples: (samples(&b), samples(&a)),
        })
    }

    /// True when some stack passes through `func`.
    pub fn has(&self, func: &str) -> bool {
        self.rows.iter().any(|r| r.through(func))
    }

    /// True when both functions appear in the stacks and no stack passes through both.
    pub fn disjoint(&self, f: &str, g: &str) -> bool {
        self.has(f) && self.has(g) && !self.rows.iter().any(|r| r.through(f) && r.through(g))
    }

    /// The functions `upper` calls in some stack (at any depth).
    pub fn below(&self, upper: &str) -> std::collections::HashSet<&str> {
        self.rows
            .iter()
            .filter_map(|r| Some(&r.frames[r.pos(upper)? + 1..]))
            .flatten()
            .map(String::as_str)
            .collect()
    }

    /// True when `upper` is `lower` or calls it in some stack.
    pub fn calls(&self, upper: &str, lower: &str) -> bool {
        self.rows
            .iter()
            .any(|r| matches!((r.pos(upper), r.pos(lower)), (Some(u), Some(l)) if u <= l))
    }

    /// Before share of the stacks through `func`.
    pub fn before(&self, metric: Metric, func: &str) -> f64 {
        let k = m(metric);
        self.rows
            .iter()
            .filter(|r| r.through(func))
            .map(|r| r.before[k])
            .sum()
    }

    /// Share change of the stacks through `func`, scale included.
    pub fn raw_delta(&self, metric: Metric, func: &str) -> f64 {
        let k = m(metric);
        self.rows
            .iter()
            .filter(|r| r.through(func))
            .map(|r| r.after[k] - r.before[k])
            .sum()
    }

    /// The factor every stack not through `func` moved by: the median of after/before weighted
    /// by the before share. None when those stacks hold under 5% of the service (nothing to
    /// compare with).
    pub fn scale(&self, metric: Metric, func: &str) -> Option<f64> {
        let k = m(metric);
        let mut ratios: Vec<(f64, f64)> = self
            .rows
            .iter()
            .filter(|r| r.before[k] > 0.0 && !r.through(func))
            .map(|r| (r.after[k] / r.before[k], r.before[k]))
            .collect();
        let total: f64 = ratios.iter().map(|r| r.1).sum();
        if total < 0.05 {
            return None;
        }
        ratios.sort_by(|x, y| x.0.total_cmp(&y.0));
        let mut acc = 0.0;
        for (ratio, w) in &ratios {
            acc += w;
            if acc >= total / 2.0 {
                return Some(*ratio);
            }
        }
        ratios.last().map(|r| r.0)
    }

    /// Standard error of the excess of stacks through `func` (share `p` of the service) when
    /// the scale is measured on the stacks not through `func`: the scale's sampling error
    /// times `p`, plus the stacks' own.
    pub fn flow_noise(&self, metric: Metric, func: &str) -> f64 {
        let (nb, na) = self.samples;
        if nb <= 0.0 || na <= 0.0 {
            return f64::INFINITY;
        }
        let p = self.before(metric, func).clamp(0.0, 1.0);
        let rest = (1.0 - p).max(1e-9);
        let scale_rel = (1.0 / (rest * nb) + 1.0 / (rest * na)).sqrt();
        p * scale_rel + (p * (1.0 - p) * (1.0 / nb + 1.0 / na)).sqrt()
    }

    /// Excess (own change, the rest's `scale` taken out) of the stacks through `upper` and then
    /// `lower` below it (through `lower` alone when `upper` is None).
    pub fn flow(&self, metric: Metric, upper: Option<&str>, lower: &str, scale: f64) -> f64 {
        let k = m(metric);
        self.rows
            .iter()
            .filter(|r| match (upper.and_then(|u| r.pos(u)), r.pos(lower)) {
                (_, None) => false,
                (Some(u), Some(l)) => u < l,
                (None, Some(_)) => upper.is_none(),
            })
            .map(|r| r.after[k] - scale * r.before[k])
            .sum()
    }

    /// Callers of `func`, nearest first up to `levels`: at each level the frame through which
    /// most of its stacks' before share passes.
    pub fn callers(&self, metric: Metric, func: &str, levels: usize) -> Vec<String> {
        let k = m(metric);
        let mut out = Vec::new();
        for level in 1..=levels {
            let mut tally: HashMap<&str, f64> = HashMap::new();
            for r in &self.rows {
                if let Some(p) = r.pos(func).filter(|p| *p >= level) {
                    *tally.entry(r.frames[p - level].as_str()).or_default() +=
                        r.before[k] + r.after[k];
                }
            }
            match tally
                .into_iter()
                .max_by(|x, y| x.1.total_cmp(&y.1).then(y.0.cmp(x.0)))
            {
                Some((f, _)) => out.push(f.to_string()),
                None => break,
            }
        }
        out
    }

    /// Stacks through `func` whose excess goes most in direction `sign`, largest first.
    pub fn grown(&self, metric: Metric, func: &str, sign: f64, scale: f64) -> Vec<(&Row, f64)> {
        let k = m(metric);
        let mut v: Vec<(&Row, f64)> = self
            .rows
            .iter()
            .filter(|r| r.through(func))
            .map(|r| (r, sign * (r.after[k] - scale * r.before[k])))
            .filter(|(_, e)| *e > 0.0)
            .collect();
        v.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.folded.cmp(&y.0.folded)));
        v
    }

    /// Of the excess in direction `sign` through `func`, the fraction whose stacks also pass
    /// through one of `touched`.
    pub fn carried_by(
        &self,
        metric: Metric,
        func: &str,
        touched: &[String],
        sign: f64,
        scale: f64,
    ) -> Option<f64> {
        let grown = self.grown(metric, func, sign, scale);
        let total: f64 = grown.iter().map(|g| g.1).sum();
        if total <= 0.0 {
            return None;
        }
        let carried: f64 = grown
            .iter()
            .filter(|(r, _)| touched.iter().any(|t| r.through(t)))
            .map(|g| g.1)
            .sum();
        Some(carried / total)
    }

    /// Before and after shares of a row for `metric`.
    pub fn shares(&self, metric: Metric, row: &Row) -> (f64, f64) {
        (row.before[m(metric)], row.after[m(metric)])
    }
}
