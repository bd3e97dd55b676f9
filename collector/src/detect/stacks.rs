//! Stacks before and after a change point, as shares of the service, and what the cross-series
//! stages read from them: the scale every other stack moved by (a share rises when the rest of
//! the service shrinks), each stack's excess over that scale (its own change), the excess
//! flowing through a function or through a caller to a callee, callers, and the evidence.
//!
//! Frames are interned per window and each function keeps the rows through it: the stages ask
//! about hundreds of functions per window, and a scan of every row's strings per question was
//! most of a pass with stacks.

use foldhash::HashMap;

use super::candidate::Metric;
use super::{DetectError, StackSource};

/// One folded stack's shares in both windows, per metric (index 0 cpu, 1 energy).
#[derive(Debug, Clone)]
pub struct Row {
    pub folded: String,
    /// Frame ids, root first.
    frames: Vec<u32>,
    pub before: [f64; 2],
    pub after: [f64; 2],
}

impl Row {
    fn pos(&self, id: u32) -> Option<usize> {
        self.frames.iter().position(|f| *f == id)
    }
}

/// The stacks of one service around one change point.
#[derive(Debug, Default)]
pub struct Window {
    pub rows: Vec<Row>,
    /// Samples before and after: how precise the shares are.
    samples: (f64, f64),
    /// Frame names by id, and ids by name.
    names: Vec<String>,
    ids: HashMap<String, u32>,
    /// Per frame id, the rows through it (ascending, each once).
    through: Vec<Vec<u32>>,
    /// Per metric, rows with a before share, by after/before ratio (the scale's median).
    by_ratio: [Vec<(f64, u32)>; 2],
}

/// A stack's shares (cpu, energy) before and after.
type Sides = ([f64; 2], [f64; 2]);

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
        let mut shares: HashMap<&str, Sides> = HashMap::default();
        for (side, list) in [(0, &b), (1, &a)] {
            let total_s: f64 = list.iter().map(|r| r.1 as f64).sum();
            let total_e: f64 = list.iter().map(|r| r.2).sum();
            for (folded, samples, uj) in list {
                let s = [
                    if total_s > 0.0 {
                        *samples as f64 / total_s
                    } else {
                        0.0
                    },
                    if total_e > 0.0 { uj / total_e } else { 0.0 },
                ];
                let e = shares.entry(folded.as_str()).or_default();
                if side == 0 { e.0 = s } else { e.1 = s }
            }
        }
        let mut sorted: Vec<(&str, Sides)> = shares.into_iter().collect();
        sorted.sort_by(|x, y| x.0.cmp(y.0));
        let samples = |l: &[(String, u64, f64)]| l.iter().map(|r| r.1 as f64).sum::<f64>();
        let mut w = Window {
            samples: (samples(&b), samples(&a)),
            ..Window::default()
        };
        for (folded, (before, after)) in sorted {
            let frames = folded.split(';').map(|f| w.intern(f)).collect();
            w.rows.push(Row {
                folded: folded.to_string(),
                frames,
                before,
                after,
            });
        }
        w.index();
        Ok(w)
    }

    fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }

    /// Builds the per-frame row lists and the ratio orders from the rows.
    fn index(&mut self) {
        self.through = vec![Vec::new(); self.names.len()];
        for (i, r) in self.rows.iter().enumerate() {
            for (p, f) in r.frames.iter().enumerate() {
                // A recursive frame lists its row once.
                if !r.frames[..p].contains(f) {
                    self.through[*f as usize].push(i as u32);
                }
            }
        }
        for k in 0..2 {
            let mut v: Vec<(f64, u32)> = (self.rows.iter().enumerate())
                .filter(|(_, r)| r.before[k] > 0.0)
                .map(|(i, r)| (r.after[k] / r.before[k], i as u32))
                .collect();
            v.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
            self.by_ratio[k] = v;
        }
    }

    fn id(&self, func: &str) -> Option<u32> {
        self.ids.get(func).copied()
    }

    /// The rows through `func` (none when no stack has it).
    fn rows_through(&self, func: &str) -> impl Iterator<Item = &Row> + '_ {
        let list = match self.id(func) {
            Some(id) => self.through[id as usize].as_slice(),
            None => &[],
        };
        list.iter().map(|i| &self.rows[*i as usize])
    }

    /// True when some stack passes through `func`.
    pub fn has(&self, func: &str) -> bool {
        self.rows_through(func).next().is_some()
    }

    /// True when both functions appear in the stacks and no stack passes through both.
    pub fn disjoint(&self, f: &str, g: &str) -> bool {
        let Some(gi) = self.id(g) else {
            return false;
        };
        self.has(f) && !self.rows_through(f).any(|r| r.pos(gi).is_some())
    }

    /// The functions `upper` calls in some stack (at any depth).
    pub fn below(&self, upper: &str) -> std::collections::HashSet<&str> {
        let Some(u) = self.id(upper) else {
            return Default::default();
        };
        self.rows_through(upper)
            .filter_map(|r| Some(&r.frames[r.pos(u)? + 1..]))
            .flatten()
            .map(|f| self.names[*f as usize].as_str())
            .collect()
    }

    /// True when `upper` is `lower` or calls it in some stack.
    pub fn calls(&self, upper: &str, lower: &str) -> bool {
        let (Some(u), Some(l)) = (self.id(upper), self.id(lower)) else {
            return false;
        };
        self.rows_through(lower)
            .any(|r| matches!((r.pos(u), r.pos(l)), (Some(u), Some(l)) if u <= l))
    }

    /// Before share of the stacks through `func`.
    pub fn before(&self, metric: Metric, func: &str) -> f64 {
        let k = m(metric);
        self.rows_through(func).map(|r| r.before[k]).sum()
    }

    /// Share change of the stacks through `func`, scale included.
    pub fn raw_delta(&self, metric: Metric, func: &str) -> f64 {
        let k = m(metric);
        self.rows_through(func)
            .map(|r| r.after[k] - r.before[k])
            .sum()
    }

    /// The factor every stack not through `func` moved by: the median of after/before weighted
    /// by the before share. None when those stacks hold under 5% of the service (nothing to
    /// compare with).
    pub fn scale(&self, metric: Metric, func: &str) -> Option<f64> {
        self.scale_outside(metric, [func])
    }

    /// [`Window::scale`] over the stacks through none of `funcs` (an array: this runs for
    /// every caller and pair the stages weigh, so it allocates nothing).
    pub fn scale_outside<const N: usize>(&self, metric: Metric, funcs: [&str; N]) -> Option<f64> {
        let k = m(metric);
        let ids = funcs.map(|f| self.id(f));
        let outside =
            |i: u32| (ids.iter().flatten()).all(|id| self.rows[i as usize].pos(*id).is_none());
        let ratios = || self.by_ratio[k].iter().filter(|(_, i)| outside(*i));
        let total: f64 = ratios()
            .map(|(_, i)| self.rows[*i as usize].before[k])
            .sum();
        if total < 0.05 {
            return None;
        }
        let mut acc = 0.0;
        let mut last = None;
        for (ratio, i) in ratios() {
            acc += self.rows[*i as usize].before[k];
            last = Some(*ratio);
            if acc >= total / 2.0 {
                return last;
            }
        }
        last
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
        let (Some(l), upper) = (self.id(lower), upper.map(|u| self.id(u))) else {
            return 0.0;
        };
        self.rows_through(lower)
            .filter(|r| match upper {
                None => true,
                Some(None) => false,
                Some(Some(u)) => matches!((r.pos(u), r.pos(l)), (Some(u), Some(l)) if u < l),
            })
            .map(|r| r.after[k] - scale * r.before[k])
            .sum()
    }

    /// Callers of `func`, nearest first up to `levels`: at each level the frame through which
    /// most of its stacks' before share passes.
    pub fn callers(&self, metric: Metric, func: &str, levels: usize) -> Vec<String> {
        let k = m(metric);
        let Some(id) = self.id(func) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for level in 1..=levels {
            let mut tally: HashMap<&str, f64> = HashMap::default();
            for r in self.rows_through(func) {
                if let Some(p) = r.pos(id).filter(|p| *p >= level) {
                    *tally
                        .entry(self.names[r.frames[p - level] as usize].as_str())
                        .or_default() += r.before[k] + r.after[k];
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
            .rows_through(func)
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
        let touched: Vec<u32> = touched.iter().filter_map(|t| self.id(t)).collect();
        let carried: f64 = grown
            .iter()
            .filter(|(r, _)| touched.iter().any(|t| r.pos(*t).is_some()))
            .map(|g| g.1)
            .sum();
        Some(carried / total)
    }

    /// Before and after shares of a row for `metric`.
    pub fn shares(&self, metric: Metric, row: &Row) -> (f64, f64) {
        (row.before[m(metric)], row.after[m(metric)])
    }
}
