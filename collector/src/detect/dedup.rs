//! Dedup: the CPU and energy views of one change are one report (the more significant view
//! is kept, the other's delta rides along), and a change is reported once, at the deepest
//! function through which nearly all of its added cost flows: callers above it and leaves
//! below it that carry only part of it are removed.

use super::candidate::{Candidate, Funnel, Metric};
use super::{Around, ServiceSeries};

/// Change points of one function this many buckets apart are the same change.
const SAME_CHANGE: usize = 2;

/// Keeps one view per (function, direction, change point).
pub fn merge_metrics(funnel: &mut Funnel, mut cands: Vec<Candidate>) -> Vec<Candidate> {
    // On a tie (large changes all have p 0) the CPU view wins: samples are measured directly,
    // energy shares also move with every other stack's power draw.
    let energy = |c: &Candidate| c.metric == Metric::Energy;
    cands.sort_by(|a, b| {
        a.p.total_cmp(&b.p)
            .then(energy(a).cmp(&energy(b)))
            .then(a.func.cmp(&b.func))
            .then(a.start.cmp(&b.start))
    });
    let mut kept: Vec<Candidate> = Vec::new();
    let n = cands.len() as u64;
    for c in cands {
        let twin = kept.iter_mut().find(|k| {
            k.func == c.func
                && k.metric != c.metric
                && k.sign() == c.sign()
                && k.overlaps(&c, SAME_CHANGE)
        });
        match twin {
            Some(k) => {
                k.other_delta = c.delta();
                let why = format!(
                    "same change as the {} view (p {:.1e})",
                    k.metric.name(),
                    k.p
                );
                funnel.remove("dedup", c, why);
            }
            None => kept.push(c),
        }
    }
    funnel.count("dedup", n, n - kept.len() as u64);
    kept
}

/// Removes callers of a candidate that carries at least `flow` of their added cost (or all
/// but what the caller's noise could hide), then candidates below a kept one that carry less.
pub fn callers_and_leaves(
    funnel: &mut Funnel,
    cands: Vec<Candidate>,
    s: &ServiceSeries,
    around: &Around,
    flow: f64,
) -> Vec<Candidate> {
    let name = |c: &Candidate| s.functions[c.func].function.as_str();
    // `b` changed the same way within the stacks measured around `a` (a change point located
    // loosely, as a small one is, still falls inside).
    let related = |a: &Candidate, b: &Candidate| {
        a.func != b.func
            && a.sign() == b.sign()
            && (a.overlaps(b, SAME_CHANGE) || around.covers(a, b))
    };
    // Flow of `c` (through `upper` first when given), in `c`'s direction.
    let flow_of = |c: &Candidate, upper: Option<&Candidate>| -> Option<f64> {
        let w = around.window(c)?;
        let f = name(c);
        let scale = w.scale(c.metric, upper.map_or(f, name)).unwrap_or(1.0);
        Some(c.sign() * w.flow(c.metric, upper.map(name), f, scale))
    };
    let mut callers = vec![None; cands.len()];
    for (i, a) in cands.iter().enumerate() {
        let Some(total) = flow_of(a, None).filter(|t| *t > 0.0) else {
            continue;
        };
        // What a callee leaves unexplained must be small, or within the caller's noise (a
        // caller holding most of the service is measured against little else).
        let noise = around
            .window(a)
            .map_or(0.0, |w| 3.0 * w.flow_noise(a.metric, name(a)));
        // The series' view too: the part of b's change (of its own cost, the daily cycle
        // taken out) that flows through a, against a's. Stacks compared across times of
        // day carry a seasonal subtree's swing into a caller's total.
        let by_series = |b: &Candidate, f: f64| -> f64 {
            let through = flow_of(b, None)
                .filter(|t| *t > 0.0)
                .map_or(0.0, |t| (f / t).clamp(0.0, 1.0));
            through * b.cost_delta().abs() / a.cost_delta().abs().max(f64::MIN_POSITIVE)
        };
        let best = cands
            .iter()
            .filter(|b| related(a, b))
            .filter_map(|b| flow_of(b, Some(a)).map(|f| (b, f)))
            .filter(|(_, f)| *f > 0.0)
            .map(|(b, f)| (b, (f / total).max(by_series(b, f)), total - f <= noise))
            .filter(|(_, carried, within_noise)| *carried >= flow || *within_noise)
            .max_by(|x, y| x.1.total_cmp(&y.1));
        if let Some((b, carried, _)) = best {
            callers[i] = Some(format!(
                "caller of {}, which carries {:.0}% of its added cost",
                name(b),
                carried.min(1.0) * 100.0
            ));
        }
    }
    let mut leaves = vec![None; cands.len()];
    for (i, l) in cands.iter().enumerate() {
        if callers[i].is_some() {
            continue;
        }
        let Some(total) = flow_of(l, None).filter(|t| *t > 0.0) else {
            continue;
        };
        let above = cands.iter().enumerate().find(|(j, b)| {
            callers[*j].is_none()
                && related(l, b)
                && flow_of(l, Some(b)).is_some_and(|f| f >= total / 2.0)
        });
        if let Some((_, b)) = above {
            let share = flow_of(b, None).map_or(0.0, |t| total / t * 100.0);
            leaves[i] = Some(format!(
                "below {}, which changed; it carries only {share:.0}% of that change",
                name(b)
            ));
        }
    }
    let n = cands.len();
    let mut kept = Vec::new();
    for ((c, caller), leaf) in cands.into_iter().zip(callers).zip(leaves) {
        match caller.or(leaf) {
            Some(why) => funnel.remove("dedup", c, why),
            None => kept.push(c),
        }
    }
    funnel.count("dedup", 0, (n - kept.len()) as u64);
    kept
}
