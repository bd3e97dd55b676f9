//! Deterministic synthetic services for the tests: a seeded RNG, a service made of weighted
//! stacks whose samples are drawn per bucket with binomial noise, and an in-memory
//! [`StackSource`] over the same draws (so series and stacks agree, as they do in a store).

use std::collections::BTreeSet;

use super::{DetectError, FunctionSeries, ServiceSeries, StackSource};

/// SplitMix64 with Box-Muller normals: small, seeded, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xd1b5_4a32_d192_ed03)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// `n` points of `shape(i)` plus standard normal noise drawn with `seed`.
pub fn noisy(n: usize, seed: u64, shape: impl Fn(usize) -> f64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n).map(|i| shape(i) + rng.normal()).collect()
}

/// Weight of a stack at a bucket.
pub type Weight = Box<dyn Fn(usize) -> f64>;

/// A synthetic service: stacks with a weight per bucket, `samples` samples per bucket drawn
/// over them, each sample worth `uj_per_sample` µJ times the stack's energy factor.
pub struct Synth {
    pub service: String,
    pub start: i64,
    pub step: i64,
    pub buckets: usize,
    pub samples: f64,
    pub uj_per_sample: f64,
    pub stacks: Vec<(String, Weight, Weight)>,
}

pub const STEP: i64 = 300;
pub const DAY: usize = 288;
/// Monday 2026-11-02 00:00 UTC.
pub const START: i64 = 1_793_577_600;

impl Synth {
    pub fn new(days: usize) -> Synth {
        Synth {
            service: "api".into(),
            start: START,
            step: STEP,
            buckets: days * DAY,
            samples: 1_000_000.0,
            uj_per_sample: 300_000.0,
            stacks: Vec::new(),
        }
    }

    /// Adds a stack of constant weight.
    pub fn stack(mut self, folded: &str, weight: f64) -> Synth {
        self.stacks
            .push((folded.into(), Box::new(|_| 1.0), Box::new(move |_| weight)));
        self
    }

    /// Adds a stack whose weight is a function of the bucket.
    pub fn stack_fn(mut self, folded: &str, weight: impl Fn(usize) -> f64 + 'static) -> Synth {
        self.stacks
            .push((folded.into(), Box::new(|_| 1.0), Box::new(weight)));
        self
    }

    /// Sets the µJ per sample of stack `folded`, relative to the others, per bucket.
    pub fn energy_fn(mut self, folded: &str, factor: impl Fn(usize) -> f64 + 'static) -> Synth {
        let s = self
            .stacks
            .iter_mut()
            .find(|s| s.0 == folded)
            .expect("a stack added before");
        s.1 = Box::new(factor);
        self
    }

    /// Time of bucket `b`.
    pub fn at(&self, b: usize) -> i64 {
        self.start + b as i64 * self.step
    }

    /// The series and the stacks they were summed from, drawn with `seed`.
    pub fn build(&self, seed: u64) -> (ServiceSeries, MemStacks) {
        let mut rng = Rng::new(seed);
        let frames: BTreeSet<&str> = self.stacks.iter().flat_map(|s| s.0.split(';')).collect();
        let mut counts = vec![vec![0u64; self.stacks.len()]; self.buckets];
        for (b, row) in counts.iter_mut().enumerate() {
            let w: Vec<f64> = self.stacks.iter().map(|s| s.2(b).max(0.0)).collect();
            let total: f64 = w.iter().sum();
            for (c, wi) in row.iter_mut().zip(&w) {
                let p = wi / total;
                let mean = self.samples * p;
                let draw = mean + (mean * (1.0 - p)).sqrt() * rng.normal();
                *c = draw.round().max(0.0) as u64;
            }
        }
        let uj: Vec<Vec<f64>> = counts
            .iter()
            .enumerate()
            .map(|(b, r)| {
                r.iter()
                    .enumerate()
                    .map(|(s, n)| *n as f64 * self.uj_per_sample * self.stacks[s].1(b))
                    .collect()
            })
            .collect();
        let mut series = ServiceSeries {
            service: self.service.clone(),
            start: self.start,
            step: self.step,
            samples: counts
                .iter()
                .map(|r| r.iter().sum::<u64>() as f64)
                .collect(),
            energy_uj: uj.iter().map(|r| r.iter().sum()).collect(),
            estimated: false,
            fleet_scale: 10.0,
            functions: Vec::new(),
        };
        for f in frames {
            let through: Vec<usize> = (0..self.stacks.len())
                .filter(|s| self.stacks[*s].0.split(';').any(|x| x == f))
                .collect();
            series.functions.push(FunctionSeries {
                function: f.to_string(),
                samples_incl: counts
                    .iter()
                    .map(|r| through.iter().map(|s| r[*s]).sum::<u64>() as f64)
                    .collect(),
                energy_incl_uj: uj
                    .iter()
                    .map(|r| through.iter().map(|s| r[*s]).sum())
                    .collect(),
            });
        }
        let stacks = MemStacks {
            start: self.start,
            step: self.step,
            names: self.stacks.iter().map(|s| s.0.clone()).collect(),
            counts,
            uj,
        };
        (series, stacks)
    }
}

/// The stacks a [`Synth`] drew, summed over whole buckets in [from, to).
pub struct MemStacks {
    start: i64,
    step: i64,
    names: Vec<String>,
    counts: Vec<Vec<u64>>,
    uj: Vec<Vec<f64>>,
}

impl StackSource for MemStacks {
    fn stacks(&self, _: &str, from: i64, to: i64) -> Result<Vec<(String, u64, f64)>, DetectError> {
        let b = |t: i64| {
            ((t - self.start).div_euclid(self.step)).clamp(0, self.counts.len() as i64) as usize
        };
        let mut sums = vec![(0u64, 0.0f64); self.names.len()];
        for (row, uj) in self.counts[b(from)..b(to)]
            .iter()
            .zip(&self.uj[b(from)..b(to)])
        {
            for ((s, n), e) in sums.iter_mut().zip(row).zip(uj) {
                s.0 += n;
                s.1 += e;
            }
        }
        Ok(self
            .names
            .iter()
            .zip(sums)
            .filter(|(_, (n, _))| *n > 0)
            .map(|(name, (n, e))| (name.clone(), n, e))
            .collect())
    }
}

/// A step of function `name`'s share in `metric` at bucket `at`, measured over `half` buckets
/// either side, as the funnel's stages receive it.
pub fn step_at(
    s: &ServiceSeries,
    name: &str,
    metric: super::Metric,
    at: usize,
    half: usize,
) -> super::candidate::Candidate {
    let func = s.functions.iter().position(|f| f.function == name).unwrap();
    let y = super::shares(s, &s.functions[func], metric, s.samples.len());
    let end = (at + half).min(y.len());
    let (before_span, after_span) = ((at - half, at), (at, end));
    super::candidate::Candidate {
        func,
        metric,
        kind: super::candidate::Kind::Step,
        start: at,
        end: at,
        before: super::span_mean(&y, before_span),
        after: super::span_mean(&y, after_span),
        before_span,
        after_span,
        p: 0.0,
        loc_err: 0,
        lasting: 0,
        other_delta: 0.0,
        verdict: None,
    }
}

/// The stacks around `cands`, loaded as a pass does with the default settings.
pub fn around(
    s: &ServiceSeries,
    stacks: &MemStacks,
    cands: &[super::candidate::Candidate],
) -> super::Around {
    let cfg = super::DetectConfig::default();
    let grid = super::series::Grid {
        start: s.start,
        step: s.step,
        cfg: &cfg,
        first_reported: 0,
        samples: 1e6,
        counts: &s.samples,
        dilution: &super::dilution::Dilution::default(),
    };
    super::Around::load(s, stacks, &grid, cands).unwrap()
}

/// Eight fillers of 2% each under main, so the service has functions that keep their cost.
pub fn with_fillers(s: Synth) -> Synth {
    (0..8).fold(s, |s, k| s.stack(&format!("main;fill{k}"), 0.02))
}
