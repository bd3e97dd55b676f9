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

/// A segment is part of a creep when its trend adds at least this share of the run's change.
const CREEP_RISE: f64 = 0.25;

/// A change back to the level before a shorter excursion than this ends a transient (a spike,
/// or a change rolled back within a day), not a change of its own.
const TRANSIENT: i64 = 86_400;

/// The least move of the rest of the service's shares that went-away takes out of a later
/// level (another change of at least 0.2% of the service).
const MIN_MOVE: f64 = 0.002;

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
/// `alpha`, Theil-Sen slope the same way). A run without a trend whose first split only ends
/// an excursion shorter than `short` points (see [`ends_excursion`]) starts at its next split.
pub fn runs(
    seg: &Segments<'_>,
    splits: &[Split],
    gap: usize,
    block: usize,
    alpha: f64,
    short: usize,
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
        let rise = CREEP_RISE * (seg.mean(r.last + 1) - seg.mean(r.first)).abs();
        // Inside the run, and after it while it is still going (the last segment).
        let end = if r.last + 2 == seg.count() {
            r.last + 1
        } else {
            r.last
        };
        if (r.first + 1..=end).any(|j| trending(range(seg, j), block, sign, alpha, rise)) {
            r.kind = Kind::Creep;
            continue;
        }
        if r.first < r.last && ends_excursion(seg, r.first, short) {
            r.first += 1;
        }
        if let Some(k) = dominant(seg, r) {
            // One step with smaller wiggles (leftovers of a daily cycle, noise) beside it.
            (r.first, r.last) = (k, k);
        } else if r.last - r.first >= 2 {
            r.kind = Kind::Creep;
        }
    }
    out
}

/// Split `j` takes the series back, within half of its own move, to the level before the
/// opposite split just ahead of it, and the excursion between them is shorter than `short`
/// points: it ends a dip or spike (often another function's, seen through the share). Joined
/// to a real change after it, it would move that change's start to the excursion's end and
/// measure it from the excursion's level.
fn ends_excursion(seg: &Segments<'_>, j: usize, short: usize) -> bool {
    let (lo, hi) = seg.range(j);
    if j == 0 || hi - lo >= short {
        return false;
    }
    let (before, during, after) = (seg.mean(j - 1), seg.mean(j), seg.mean(j + 1));
    let back = after - during;
    back * (during - before) < 0.0 && (after - before).abs() <= back.abs() / 2.0
}

/// The split of a run of several that carries at least `1 - CREEP_RISE` of the run's
/// movement: a creep or a staged rollout moves in parts of comparable size.
fn dominant(seg: &Segments<'_>, r: &Run) -> Option<usize> {
    if r.first == r.last {
        return None;
    }
    let delta = |j: usize| (seg.mean(j + 1) - seg.mean(j)).abs();
    let total: f64 = (r.first..=r.last).map(delta).sum();
    let k = (r.first..=r.last).max_by(|&a, &b| delta(a).total_cmp(&delta(b)))?;
    (delta(k) >= (1.0 - CREEP_RISE) * total).then_some(k)
}

fn range<'a>(seg: &Segments<'a>, j: usize) -> &'a [f64] {
    let (lo, hi) = seg.range(j);
    &seg.y[lo..hi]
}

/// A significant Mann-Kendall trend in direction `sign` over `block`-point means.
/// The rise over the data must also be material: at least `min_rise` (a share of the run's
/// change), so residual wiggles of a long, flat segment are not a creep.
fn trending(data: &[f64], block: usize, sign: f64, alpha: f64, min_rise: f64) -> bool {
    let blocks = block_means(data, block);
    if blocks.len() < 6 {
        return false;
    }
    let (s, p) = mann_kendall(&blocks);
    p < alpha && s * sign > 0.0 && theil_sen(&blocks) * sign * blocks.len() as f64 >= min_rise
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

/// Where a creep got going, searched from its first split `at` up to `to` (compressed
/// indices): after the last point at which the series had not yet moved a quarter of the way
/// from level `before` to level `after` (a one-sided CUSUM against that line falls back to
/// zero there). A split located in the flat stretch before a slow ramp moves to the ramp;
/// it never moves earlier.
pub fn creep_start(y: &[f64], at: usize, to: usize, before: f64, after: f64) -> usize {
    let sign = (after - before).signum();
    let line = before + (after - before) / 4.0;
    let mut cusum = 0.0;
    let mut start = at;
    for (i, v) in y.iter().enumerate().take(to.min(y.len())).skip(at) {
        cusum = (cusum + sign * (v - line)).max(0.0);
        if cusum == 0.0 {
            start = i + 1;
        }
    }
    start.min(to.saturating_sub(1)).max(at)
}

/// FBDetect's went-away check for a run whose levels are `before` and `after`: why it is not a
/// lasting change, or None. `lasted` is how long the data after the change covers and
/// `transient` the length of the segment before the run, both seconds; `min_lasting` seconds.
/// `moved(j)` is the factor the rest of the service's shares moved by from the run's level
/// after to segment j: a later level is judged divided by it, on the function's own cost.
/// `span_of(j)` is how long segment j lasts, seconds: a later level shorter than `min_lasting`
/// (another function's spike seen through this share) is not what the change went back to.
#[expect(
    clippy::too_many_arguments,
    reason = "one run's levels and spans, all needed"
)]
pub fn went_away(
    seg: &Segments<'_>,
    r: &Run,
    before: f64,
    after: f64,
    lasted: i64,
    transient: i64,
    min_lasting: i64,
    moved: &dyn Fn(usize) -> f64,
    span_of: &dyn Fn(usize) -> i64,
) -> Option<String> {
    let delta = after - before;
    if lasted < min_lasting {
        return Some(format!(
            "not lasting yet: {} of the {} needed",
            span(lasted),
            span(min_lasting)
        ));
    }
    if r.first >= 1 && transient < TRANSIENT.max(min_lasting) {
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
    // The first lasting level after the run's, then the latest lasting one: a spike ends at
    // the first even when later changes (other functions' regressions seen through this
    // share) move the latest level away again.
    // Runs once per candidate of every series: no list of the lasting levels is built.
    let lasts = |j: &usize| span_of(*j) >= min_lasting;
    let next = (r.last + 2..last)
        .find(lasts)
        .map(|j| (j, "then", "remained until the next change"));
    let now = (r.last + 2..=last)
        .rfind(lasts)
        .map(|j| (j, "now", "remains"));
    for (j, when, kept) in next.into_iter().chain(now) {
        // A factor within sampling noise of 1 is no move: it would only add its noise.
        let factor = Some(moved(j))
            .filter(|f| (f - 1.0).abs() >= MIN_MOVE)
            .unwrap_or(1.0);
        let level = seg.mean(j);
        let remains = (level / factor - before) / delta;
        if remains < 0.5 {
            let rest = if factor == 1.0 {
                String::new()
            } else {
                format!(", the rest of the service's shares having moved x{factor:.4}")
            };
            return Some(format!(
                "went away: {before:.6} -> {after:.6}, {when} back to {level:.6} ({:.0}% of the \
                 change {kept}{rest})",
                remains * 100.0
            ));
        }
    }
    None
}

/// A duration in words: "2h", "40m", "24h", "3d 4h" (days from two on).
pub fn span(seconds: i64) -> String {
    let days = if seconds >= 2 * 86_400 {
        seconds / 86_400
    } else {
        0
    };
    let (d, h, m) = (days, (seconds - days * 86_400) / 3600, seconds % 3600 / 60);
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

    #[test]
    fn a_creep_starts_where_its_ramp_does_not_at_an_early_split() {
        // Flat at 0 until 200, a ramp to 10 over 100 points, then flat; unit noise.
        let y = noisy(400, 7, |i| ((i as f64 - 200.0) / 10.0).clamp(0.0, 10.0));
        let start = creep_start(&y, 120, 330, 0.0, 10.0);
        assert!((200..=240).contains(&start), "{start}");
        // Already inside the ramp: left where it is.
        assert_eq!(creep_start(&y, 260, 330, 0.0, 10.0), 260);
    }
    use crate::detect::changepoint::segment;
    use crate::detect::testdata::noisy;

    fn runs_of(x: &[f64]) -> (Vec<Split>, Vec<Run>) {
        let s = segment(x, 1.0, 12, 0.01);
        let seg = Segments::new(x, &s.splits);
        let r = runs(&seg, &s.splits, 144, 12, 0.01, 36);
        (s.splits, r)
    }

    #[test]
    fn a_slow_creep_is_one_creep() {
        // Flat for two days, then +3 sd spread over one day.
        let x = noisy(864, 11, |i| {
            ((i as f64 - 576.0) / 288.0).clamp(0.0, 1.0) * 3.0
        });
        let (s, r) = runs_of(&x);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].kind, Kind::Creep, "{s:?}");
    }

    #[test]
    fn a_step_is_not_a_creep() {
        let x = noisy(864, 12, |i| if i >= 600 { 1.0 } else { 0.0 });
        let (_, r) = runs_of(&x);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].kind, Kind::Step);
    }

    #[test]
    fn a_step_beside_a_smaller_wiggle_is_a_step_where_it_happened() {
        // +1.5 sd at 500 (a leftover of a daily cycle, say), then the real +8 sd at 600.
        let x = noisy(864, 15, |i| match i {
            0..500 => 0.0,
            500..600 => 1.5,
            _ => 9.5,
        });
        let (s, r) = runs_of(&x);
        let at: Vec<_> = r
            .iter()
            .map(|r| (s[r.first].at, s[r.last].at, r.kind))
            .collect();
        assert!(at.contains(&(600, 600, Kind::Step)), "{at:?}");
    }

    #[test]
    fn a_step_after_a_short_dip_is_a_step_where_it_happened() {
        // A 20-point dip (another function's spike seen through the share) ends at 420, and
        // the real +8 sd step comes at 480: both splits go up, neither carries 3/4 of the two.
        let at = |x: &[f64]| {
            let (s, r) = runs_of(x);
            r.iter()
                .map(|r| (s[r.first].at, s[r.last].at, r.kind))
                .collect::<Vec<_>>()
        };
        let x = noisy(864, 16, |i| match i {
            400..420 => -10.0,
            480.. => 8.0,
            _ => 0.0,
        });
        assert!(at(&x).contains(&(480, 480, Kind::Step)), "{:?}", at(&x));
        // Two stages of one rollout, no dip: one change from the first stage.
        let x = noisy(864, 16, |i| match i {
            0..400 => 0.0,
            400..480 => 4.0,
            _ => 8.0,
        });
        assert!(at(&x).contains(&(400, 480, Kind::Step)), "{:?}", at(&x));
    }

    /// The went-away verdict of run `r` with the levels of its own segments.
    fn verdict(seg: &Segments<'_>, r: &Run, lasted: i64, transient: i64, min: i64) -> String {
        let (before, after) = (seg.mean(r.first), seg.mean(r.last + 1));
        let long = &|_| i64::MAX;
        went_away(
            seg,
            r,
            before,
            after,
            lasted,
            transient,
            min,
            &|_| 1.0,
            long,
        )
        .unwrap_or_default()
    }

    #[test]
    fn a_step_whose_share_others_diluted_back_did_not_go_away() {
        // A share steps 10 -> 12 at 300; from 600 another function's growth shrinks every
        // share x0.85, this one's to 10.2 although its own cost kept the step.
        let y = noisy(864, 21, |i| match i {
            ..300 => 10.0,
            300..600 => 12.0,
            _ => 10.2,
        });
        let (splits, r) = runs_of(&y);
        let seg = Segments::new(&y, &splits);
        let (before, after) = (seg.mean(r[0].first), seg.mean(r[0].last + 1));
        let judge = |moved: &dyn Fn(usize) -> f64| {
            went_away(
                &seg,
                &r[0],
                before,
                after,
                86_400,
                86_400,
                10_800,
                moved,
                &|_| i64::MAX,
            )
        };
        let why = judge(&|_| 1.0).unwrap_or_default();
        assert!(why.starts_with("went away"), "{why}");
        let last = seg.count() - 1;
        let diluted = |j: usize| if j == last { 0.85 } else { 1.0 };
        assert_eq!(judge(&diluted), None);
        // The rest grew instead (x1.15): the fall is the function's own, it went away.
        let why = judge(&|j| if j == last { 1.15 } else { 1.0 }).unwrap_or_default();
        assert!(why.contains("having moved x1.1500"), "{why}");
    }

    #[test]
    fn went_away_fires_on_a_spike_not_on_a_lasting_step() {
        let spike = noisy(864, 13, |i| if (300..360).contains(&i) { 2.0 } else { 0.0 });
        let (splits, r) = runs_of(&spike);
        let seg = Segments::new(&spike, &splits);
        let why = verdict(&seg, &r[0], 86_400, 86_400, 10_800);
        assert!(why.starts_with("went away"), "{why}");
        let why = verdict(&seg, &r[1], 86_400, 5 * 3600, 6 * 3600);
        assert!(why.starts_with("ends a transient"), "{why}");

        // A spike, then a lasting rise of the same share days later (another function's
        // regression seen through it): the spike still went away.
        let later = noisy(864, 16, |i| match i {
            300..360 => 2.0,
            600.. => 3.0,
            _ => 0.0,
        });
        let (splits, r) = runs_of(&later);
        let seg = Segments::new(&later, &splits);
        assert_eq!(splits.len(), 3, "{splits:?}");
        let why = verdict(&seg, &r[0], 86_400, 86_400, 10_800);
        assert!(why.contains("until the next change"), "{why}");

        let step = noisy(864, 14, |i| if i >= 300 { 2.0 } else { 0.0 });
        let (splits, r) = runs_of(&step);
        let seg = Segments::new(&step, &splits);
        assert_eq!(verdict(&seg, &r[0], 86_400, 86_400, 10_800), "");
        let why = verdict(&seg, &r[0], 3600, 86_400, 10_800);
        assert!(why.contains("not lasting yet: 1h of the 3h"), "{why}");
    }

    #[test]
    fn a_step_is_not_gone_because_of_a_short_dip_after_it() {
        // +3 at 300 that lasts; 600..624 (2 h at 5-minute points) another function's spike
        // dilutes the share back down for a while. The dip is no level the change went back
        // to; a rollback that lasts is.
        let dip = |end: usize| {
            noisy(864, 17, move |i| match i {
                ..300 => 0.0,
                600..624 => 0.0,
                _ if i >= end => 0.0,
                _ => 3.0,
            })
        };
        fn five_min<'s>(seg: &'s Segments<'_>) -> impl Fn(usize) -> i64 + 's {
            move |j: usize| {
                let (lo, hi) = seg.range(j);
                (hi - lo) as i64 * 300
            }
        }
        let y = dip(usize::MAX);
        let (splits, r) = runs_of(&y);
        let seg = Segments::new(&y, &splits);
        assert!(splits.len() >= 3, "{splits:?}");
        let (before, after) = (seg.mean(r[0].first), seg.mean(r[0].last + 1));
        let span_of = five_min(&seg);
        let judge = |seg: &Segments<'_>, r: &Run, span_of: &dyn Fn(usize) -> i64| {
            went_away(
                seg,
                r,
                before,
                after,
                86_400,
                86_400,
                3 * 3600,
                &|_| 1.0,
                span_of,
            )
        };
        assert_eq!(judge(&seg, &r[0], &span_of), None);
        let why = judge(&seg, &r[0], &|_| i64::MAX).unwrap_or_default();
        assert!(why.contains("until the next change"), "{why}");
        // Rolled back for good after the dip: it went away.
        let y = dip(700);
        let (splits, r) = runs_of(&y);
        let seg = Segments::new(&y, &splits);
        let why = judge(&seg, &r[0], &five_min(&seg)).unwrap_or_default();
        assert!(why.starts_with("went away"), "{why}");
    }
}
