//! A candidate change (one series, one change point or merged run) as it moves through the
//! funnel, and the funnel itself: per stage, how many candidates came in and how many it
//! removed, plus the removed ones (up to a cap per stage) with the filter's figures, for `--all`.

use wattson_proto::v1::FunnelStage;

use super::stats::line_at;

/// The view a series measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Inclusive share of the service's samples (gCPU).
    Cpu,
    /// Inclusive share of the service's energy.
    Energy,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Cpu => "cpu",
            Metric::Energy => "energy",
        }
    }
}

/// The shape of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One level shift.
    Step,
    /// A slow, lasting trend (several same-direction shifts, or a significant Mann-Kendall
    /// trend).
    Creep,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Step => "step",
            Kind::Creep => "creep",
        }
    }
}

/// One candidate change of one series. Bucket indices are on the service's grid.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Index of the function in `ServiceSeries::functions`.
    pub func: usize,
    pub metric: Metric,
    pub kind: Kind,
    /// First bucket after the change point.
    pub start: usize,
    /// First bucket after the last change point of the run (`start` for a step; a creep's
    /// change spans start..end).
    pub end: usize,
    /// Level (share) before and after.
    pub before: f64,
    pub after: f64,
    /// Bucket ranges [lo, hi) the levels were measured on.
    pub before_span: (usize, usize),
    pub after_span: (usize, usize),
    /// Bonferroni p-value of the likelihood-ratio test of the change.
    pub p: f64,
    /// How far off (buckets) the change point's location may be: a small change against the
    /// noise is located loosely (within ~20/snr^2), and root cause allows for it.
    pub loc_err: usize,
    /// Seconds it had to last before it could be reported (longer on a seasonal series; 0
    /// when it never got that far).
    pub lasting: i64,
    /// The same change in the other metric's view (0 when unknown).
    pub other_delta: f64,
    /// The filter that removed it, and its figures.
    pub verdict: Option<(&'static str, String)>,
}

impl Candidate {
    pub fn delta(&self) -> f64 {
        self.after - self.before
    }

    /// True when the two changes happened at about the same time: their spans, widened by
    /// `tolerance` buckets or by how loosely either is located, overlap.
    pub fn overlaps(&self, other: &Candidate, tolerance: usize) -> bool {
        let slack = tolerance.max(self.loc_err).max(other.loc_err);
        self.start <= other.end + slack && other.start <= self.end + slack
    }

    /// The change of the function's own cost as a fraction of the service after it, assuming
    /// the rest of the service kept its cost: a share p that grows by d of the service moves
    /// only by d (1 - p), so the share delta is scaled back by 1 / (1 - before).
    pub fn cost_delta(&self) -> f64 {
        if self.before < 0.999 {
            self.delta() / (1.0 - self.before)
        } else {
            self.delta()
        }
    }

    /// The step of share series `y` (of this candidate's view) at the change point, the
    /// `loc_err` buckets either side skipped, from a line fitted to the `LOCAL` buckets on
    /// each side (so a daily cycle's slope is no step), as a change of the function's own
    /// cost against the rest (scaled by 1 / (1 - share), as [`Self::cost_delta`]): (step,
    /// its variance). None for a creep, which has no one moment to look at, or too little
    /// data either side.
    pub fn local_cost_step(&self, y: &[f64]) -> Option<(f64, f64)> {
        if self.kind != Kind::Step {
            return None;
        }
        let at = self.start;
        let side = |lo: usize, hi: usize| -> Vec<(f64, f64)> {
            (lo..hi.min(y.len()))
                .filter(|i| y[*i].is_finite())
                .map(|i| (i as f64 - at as f64 + 0.5, y[i]))
                .collect()
        };
        let before = side(at.checked_sub(self.loc_err + LOCAL)?, at - self.loc_err);
        let after = side(at + self.loc_err, at + self.loc_err + LOCAL);
        let (b, vb) = line_at(&before, 0.0)?;
        let (a, va) = line_at(&after, 0.0)?;
        let rest = (1.0 - b).max(1e-3);
        Some(((a - b) / rest, (va + vb) / (rest * rest)))
    }

    /// +1 for a growth (regression), -1 for a drop (improvement).
    pub fn sign(&self) -> f64 {
        if self.delta() >= 0.0 { 1.0 } else { -1.0 }
    }
}

/// Buckets on each side of a step that [`Candidate::local_cost_step`] fits a line to (two
/// hours at 5 minutes): short enough for a daily cycle to be nearly straight, long enough to
/// average the noise.
pub const LOCAL: usize = 24;

/// Stages in the order they run (cheapest first). `seasonality` counts change points of the
/// raw values of seasonal series that the daily profile explained.
pub const STAGES: [&str; 7] = [
    "significance",
    "seasonality",
    "min_change",
    "went_away",
    "normalization",
    "cost_shift",
    "dedup",
];

/// Stages whose removed candidates are real changes with a reason not to report them (too
/// small, gone again, moved within one caller): a caller that moved with one of them moved
/// for that reason, and dedup must not report the caller instead.
const EXPLAINING: [&str; 3] = ["min_change", "went_away", "cost_shift"];

/// The funnel's counts and the candidates it removed.
#[derive(Debug)]
pub struct Funnel {
    counts: [(u64, u64); STAGES.len()],
    pub filtered: Vec<Candidate>,
    /// Every candidate an `EXPLAINING` stage removed (not capped: dedup reads them all).
    pub explained: Vec<Candidate>,
    listed: [usize; STAGES.len()],
    max_listed: usize,
}

impl Funnel {
    pub fn new(max_listed: usize) -> Funnel {
        Funnel {
            counts: [(0, 0); STAGES.len()],
            filtered: Vec::new(),
            explained: Vec::new(),
            listed: [0; STAGES.len()],
            max_listed,
        }
    }

    fn index(stage: &str) -> usize {
        STAGES
            .iter()
            .position(|s| *s == stage)
            .expect("funnel stage is one of STAGES")
    }

    /// Adds `candidates_in` and `removed` to a stage's counts.
    pub fn count(&mut self, stage: &'static str, candidates_in: u64, removed: u64) {
        let c = &mut self.counts[Funnel::index(stage)];
        c.0 += candidates_in;
        c.1 += removed;
    }

    /// Runs one filter over `cands`: those for which `verdict` says why are removed (listed
    /// up to the cap), the rest are returned.
    pub fn apply(
        &mut self,
        stage: &'static str,
        cands: Vec<Candidate>,
        mut verdict: impl FnMut(&Candidate) -> Option<String>,
    ) -> Vec<Candidate> {
        let total = cands.len() as u64;
        let mut kept = Vec::with_capacity(cands.len());
        for c in cands {
            match verdict(&c) {
                Some(why) => self.remove(stage, c, why),
                None => kept.push(c),
            }
        }
        self.count(stage, total, total - kept.len() as u64);
        kept
    }

    /// Lists one removed candidate (the count is the caller's).
    pub fn remove(&mut self, stage: &'static str, mut c: Candidate, why: String) {
        let i = Funnel::index(stage);
        c.verdict = Some((stage, why));
        if EXPLAINING.contains(&stage) {
            self.explained.push(c.clone());
        }
        if self.listed[i] < self.max_listed {
            self.listed[i] += 1;
            self.filtered.push(c);
        }
    }

    /// The counts as wire stages.
    pub fn stages(&self) -> Vec<FunnelStage> {
        STAGES
            .iter()
            .zip(&self.counts)
            .map(|(s, (i, r))| FunnelStage {
                stage: (*s).to_string(),
                candidates_in: *i,
                removed: *r,
            })
            .collect()
    }
}
