//! What happens around and after a change point: runs of same-direction change points that are
//! one change (a slow creep, tested with Mann-Kendall and Theil-Sen, or a staged rollout), and
//! FBDetect's went-away check (a spike that ends, or a change that has not lasted yet, is not a
//! regression).

use super::candidate::Kind;
use super::changepoint::Split;
use super::stats::{block_means, mann_kendall, mean, theil_sen};

/// The levels between change points of one (compressed) series.
pub struct Segments<'a> {
    pub y: &'a [f64],
    /// 0, each split's position, then y.len(): segment j is bounds[j]..bounds[j + 1].
    bounds: Vec<usize>,
}

impl<'a> Segments<'a> {
    pub fn new(y: &'a [f64], splits: &[Split]) -> Segments<'a> {
        let mut bounds = Vec::with_capacity(splits.len() + 2);
        bounds.push(0);
        bounds.extend(splits.iter().map(|s| s.at));
        bounds.push(y.len());
        Segments { y, bounds }
    }

    pub fn count(&self) -> usize {
        self.bounds.len() - 1
    }

    pub fn range(&self, j: usize) -> (usize, usize) {
        (self.bounds[j], self.bounds[j + 1])
    }

    pub fn mean(&self, j: usize) -> f64 {
        let (lo, hi) = self.range(j);
        mean(&self.y[lo..hi])
    }

    /// Direction of split j (between segments j and j + 1).
    fn sign(&self, j: usize) -> f64 {
        (self.mean(j + 1) - self.mean(j)).signum()
    }
}

/// Consecutive splits `first..=last` that are one change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    pub first: usize,
    pub last: usize,
    pub kind: Kind,
}

/// Groups splits into runs: same direction and no more than `gap` points apart. A run of three
/// or more is a creep, and so is one with a significant trend between its splits or after its
/// last one when that is the latest segment (Mann-Kendall on `block`-point means at level
/// `alpha`, Theil-Sen slope the same way).
pub fn runs(
    seg: &Segments<'_>,
    splits: &[Split],
    gap: usize,
    block: usize,
    alpha: f64,
) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for j in 0..splits.len() {
        let joins = out.last().is_some_and(|r| {
            r.last + 1 == j
                && seg.sign(j) == seg.sign(r.last)
                && splits[j].at - splits[r.last].at <= gap
        });
        if joins {
            out.last_mut().expect("a run to join").last = j;
        } else {
            out.push(Run {
                first: j,
                last: j,
                kind: Kind::Step,
            });
        }
    }
    for r in &mut out {
        let sign = seg.sign(r.first);
        // Inside the run, and after it while it is still going (the last segment).
        let end = if r.last + 2 == seg.count() {
            r.last + 1
        } else {
            r.last
        };
        let creep = r.last - r.first >= 2
            || (r.first + 1..=end).any(|j| trending(range(seg, j), block, sign, alpha));
        if creep {
            r.kind = Kind::Creep;
        }
    }
    out
}

fn range<'a>(seg: &Segments<'a>, j: usize) -> &'a [f64] {
    let (lo, hi) = seg.range(j);
    &seg.y[lo..hi]
}

/// A significant Mann-Kendall trend in direction `sign` over `block`-point means.
fn trending(data: &[f64], block: usize, sign: f64, alpha: f64) -> bool {
    let blocks = block_means(data, block);
    if blocks.len() < 6 {
        return false;
    }
    let (s, p) = mann_kendall(&blocks);
    p < alpha && s * sign > 0.0 && theil_sen(&blocks) * sign > 0.0
}

/// Levels a run is judged on: before its first split, and after its last (for a creep, the
/// last quarter of the final segment, where the trend has got to).
pub fn levels(seg: &Segments<'_>, r: &Run, min_points: usize) -> ((usize, usize), (usize, usize)) {
    let before = seg.range(r.first);
    let (lo, hi) = seg.range(r.last + 1);
    let after = match r.kind {
        Kind::Step => (lo, hi),
        Kind::Creep => (hi - ((hi - lo) / 4).max(min_points).min(hi - lo), hi),
    };
    (before, after)
}

/// FBDetect's went-away check for a run whose levels are `before` and `after`: why it is not a
/// lasting change, or None. `lasted` is how long the data after the change covers and
/// `transient` the length of the segment before the run, both seconds; `min_lasting` seconds.
pub fn went_away(
    seg: &Segments<'_>,
    r: &Run,
    before: f64,
    after: f64,
    lasted: i64,
    transient: i64,
    min_lasting: i64,
) -> Option<String> {
    let delta = after - before;
    if lasted < min_lasting {
        return Some(format!(
            "not lasting yet: {} of the {} needed",
            span(lasted),
            span(min_lasting)
        ));
    }
    if r.first >= 1 && transient < min_lasting {
        let earlier = seg.mean(r.first - 1);
        if (after - earlier).abs() < 0.5 * delta.abs() {
            return Some(format!(
                "ends a transient of {}: back to {:.6} from {:.6} (the level before it was {:.6})",
                span(transient),
                after,
                before,
                earlier
            ));
        }
    }
    let last = seg.count() - 1;
    if last > r.last + 1 {
        let now = seg.mean(last);
        let remains = (now - before) / delta;
        if remains < 0.5 {
            return Some(format!(
                "went away: {:.6} -> {:.6}, now back to {:.6} ({:.0}% of the change remains)",
                before,
                after,
                now,
                remains * 100.0
            ));
        }
    }
    None
}

/// A duration in words: "2h", "40m", "1d 3h".
pub fn span(seconds: i64) -> String {
    let (d, h, m) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
    );
    match (d, h, m) {
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h{m:02}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::changepoint::segment;
    use crate::detect::testdata::Rng;

    fn runs_of(x: &[f64]) -> (Vec<Split>, Vec<Run>) {
        let s = segment(x, 1.0, 12, 0.01);
        let seg = Segments::new(x, &s.splits);
        let r = runs(&seg, &s.splits, 144, 12, 0.01);
        (s.splits, r)
    }

    #[test]
    fn a_slow_creep_is_one_creep() {
        let mut rng = Rng::new(11);
        // Flat for two days, then +3 sd spread over one day, then flat.
        let x: Vec<f64> = (0..864)
            .map(|i| rng.normal() + ((i as f64 - 576.0) / 288.0).clamp(0.0, 1.0) * 3.0)
            .collect();
        let (s, r) = runs_of(&x);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].kind, Kind::Creep, "{s:?}");
    }

    #[test]
    fn a_step_is_not_a_creep() {
        let mut rng = Rng::new(12);
        let x: Vec<f64> = (0..864)
            .map(|i| rng.normal() + if i >= 600 { 1.0 } else { 0.0 })
            .collect();
        let (_, r) = runs_of(&x);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].kind, Kind::Step);
    }

    #[test]
    fn went_away_fires_on_a_spike_not_on_a_lasting_step() {
        let mut rng = Rng::new(13);
        let spike: Vec<f64> = (0..864)
            .map(|i| rng.normal() + if (300..360).contains(&i) { 2.0 } else { 0.0 })
            .collect();
        let (splits, r) = runs_of(&spike);
        let seg = Segments::new(&spike, &splits);
        let up = r[0];
        let why = went_away(
            &seg,
            &up,
            seg.mean(up.first),
            seg.mean(up.last + 1),
            86_400,
            86_400,
            10_800,
        );
        assert!(
            why.as_deref().is_some_and(|w| w.starts_with("went away")),
            "{why:?}"
        );
        let down = r[1];
        let why = went_away(
            &seg,
            &down,
            seg.mean(down.first),
            seg.mean(down.last + 1),
            86_400,
            5 * 3600,
            6 * 3600,
        );
        assert!(
            why.as_deref()
                .is_some_and(|w| w.starts_with("ends a transient")),
            "{why:?}"
        );

        let step: Vec<f64> = (0..864)
            .map(|i| rng.normal() + if i >= 300 { 2.0 } else { 0.0 })
            .collect();
        let (splits, r) = runs_of(&step);
        let seg = Segments::new(&step, &splits);
        let why = went_away(
            &seg,
            &r[0],
            seg.mean(0),
            seg.mean(1),
            86_400,
            86_400,
            10_800,
        );
        assert_eq!(why, None);
        let why = went_away(&seg, &r[0], seg.mean(0), seg.mean(1), 3600, 86_400, 10_800);
        assert!(why.is_some_and(|w| w.contains("not lasting yet: 1h of the 3h")));
    }
}
