//! Dedup: the CPU and energy views of one change are one report (the more significant view
//! is kept, the other's delta rides along), and a change is reported once, at the deepest
//! function through which nearly all of its added cost flows: callers above it and leaves
//! below it that carry only part of it are removed.

use super::candidate::{Candidate, Funnel, Kind, Metric};
use super::stacks::Window;
use super::{Around, ServiceSeries, shares, span_ratio};

/// Change points of one function (or, for a shift, of two) this many buckets apart are the
/// same change.
pub(super) const SAME_CHANGE: usize = 2;

/// Keeps one view per (function, direction, change point). An energy view left without a CPU
/// view of the same change must stand for a change of the function's work (its CPU share
/// moved with it, though too little or too briefly for a CPU view of its own) or of its own
/// energy per sample (by at least [`ENERGY_ALONE`]); otherwise its energy share moved with the
/// service's power draw or the attribution's noise, not with anything the function does.
/// `creep_gap` (buckets) is the config's: parts of a creep resume within it.
pub fn merge_metrics(
    funnel: &mut Funnel,
    cands: Vec<Candidate>,
    s: &ServiceSeries,
    creep_gap: usize,
) -> Vec<Candidate> {
    let n = cands.len() as u64;
    let mut cands = creep_parts(funnel, cands, s.step, creep_gap);
    // On a tie (large changes all have p 0) the CPU view wins: samples are measured directly,
    // energy shares also move with every other stack's power draw.
    let energy = |c: &Candidate| c.metric == Metric::Energy;
    cands.sort_by(|a, b| {
        a.p.total_cmp(&b.p)
            .then(energy(a).cmp(&energy(b)))
            .then(a.func.cmp(&b.func))
            .then(a.start.cmp(&b.start))
    });
    let mut kept: Vec<(Candidate, bool)> = Vec::new();
    for c in cands {
        let twin = kept.iter_mut().find(|(k, _)| {
            k.func == c.func
                && k.metric != c.metric
                && k.sign() == c.sign()
                && k.overlaps(&c, SAME_CHANGE)
        });
        match twin {
            Some((k, paired)) => {
                k.other_delta = c.delta();
                *paired = true;
                let why = format!(
                    "same change as the {} view (p {:.1e})",
                    k.metric.name(),
                    k.p
                );
                funnel.remove("dedup", c, why);
            }
            None => kept.push((c, false)),
        }
    }
    let mut out = Vec::with_capacity(kept.len());
    for (c, paired) in kept {
        match (energy(&c) && !paired)
            .then(|| energy_alone(&c, s))
            .flatten()
        {
            Some(why) => funnel.remove("dedup", c, why),
            None => out.push(c),
        }
    }
    funnel.count("dedup", n, n - out.len() as u64);
    out
}

/// Two runs of one series in one direction, one of them a creep, the later starting within
/// `gap` buckets (the config's `creep_gap`, which joins same-direction changes into a creep)
/// of the earlier's last change point, are one creep that a transient (another function's
/// spike seen through the share) broke in two: the earlier is kept as measured (its stacks
/// were read around its own levels; on 20 bench fleets, giving it the later's level after
/// found one fewer regression and let through one more false positive) and the later removed
/// (the count is the caller's).
fn creep_parts(
    funnel: &mut Funnel,
    mut cands: Vec<Candidate>,
    step: i64,
    gap: usize,
) -> Vec<Candidate> {
    cands.sort_by(|a, b| {
        (a.func, a.metric == Metric::Energy, a.start).cmp(&(
            b.func,
            b.metric == Metric::Energy,
            b.start,
        ))
    });
    let mut out: Vec<Candidate> = Vec::with_capacity(cands.len());
    for c in cands {
        match out.last_mut() {
            Some(k)
                if k.func == c.func
                    && k.metric == c.metric
                    && k.sign() == c.sign()
                    && (k.kind == Kind::Creep || c.kind == Kind::Creep)
                    && c.start <= k.end + gap =>
            {
                let why = format!(
                    "continues the creep of this function that began {} earlier (a transient \
                     broke it in two): reported once, at its start",
                    super::trend::span((c.start - k.start) as i64 * step)
                );
                k.kind = Kind::Creep;
                funnel.remove("dedup", c, why);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Least move of a function's own energy per sample, relative, that an energy view without a
/// CPU view must show. Energy per function is attributed, not measured (package energy per
/// interval spread over its samples): below a couple of percent it is the attribution's noise
/// and other stacks' power draw seen through the share.
pub const ENERGY_ALONE: f64 = 0.02;

/// Why energy view `c` is no change of its own (None: it is one). Moves are relative to the
/// level before. The function's share of energy over its share of samples is its energy per
/// sample over the service's (no daily cycle of its share in it); what that ratio does not
/// explain of the candidate's move (its levels, a daily profile taken out) is its work's.
fn energy_alone(c: &Candidate, s: &ServiceSeries) -> Option<String> {
    // The CPU share over the same spans (`other_delta`) moved the other way or far more: the
    // function's work changed and its energy per sample went against it, leaving a remainder.
    // That change is the CPU view's (reported or explained there), not one of its energy.
    if c.other_delta.abs() > WORK_MOVED * c.delta().abs() {
        return Some(format!(
            "energy view alone, a remainder of a larger move of its work: its energy share \
             moved {:+.4}% of the service while its CPU share moved {:+.4}% (over {WORK_MOVED}x \
             as much); that change is judged in the CPU view",
            c.delta() * 100.0,
            c.other_delta * 100.0
        ));
    }
    let f = &s.functions[c.func];
    let per_sample = |uj: &[f64], n: &[f64], span| span_ratio(uj, n, span).filter(|r| *r > 0.0);
    let ratio = |uj: &[f64], n: &[f64]| {
        Some(per_sample(uj, n, c.after_span)? / per_sample(uj, n, c.before_span)?)
    };
    let own = ratio(&f.energy_incl_uj, &f.samples_incl)?;
    let service = ratio(&s.energy_uj, &s.samples)?;
    let moved = c.after / c.before.max(f64::MIN_POSITIVE) - 1.0;
    let work = moved - (own / service - 1.0);
    let with_work = work * c.sign() >= moved.abs() / 2.0;
    let own = own - 1.0;
    (!with_work && own * c.sign() < ENERGY_ALONE).then(|| {
        format!(
            "energy view alone: its energy share moved {:+.2}% (of itself), its work {:+.2}% \
             and its energy per sample {:+.2}% (under the {:.0}% an energy-only change must \
             show; the service's moved {:+.2}%)",
            moved * 100.0,
            work * 100.0,
            own * 100.0,
            ENERGY_ALONE * 100.0,
            (service - 1.0) * 100.0
        )
    })
}

/// An energy view alone whose function's CPU share moved over this many times as much (either
/// way) is what is left of a change of its work: on the 20 bench fleets, 5 such views were
/// false positives and none an injected regression (those moved both shares alike, 0.8x to
/// 1.7x; one energy-only regression moved its CPU share -1.25x).
const WORK_MOVED: f64 = 3.0;

/// The filters whose removed changes take the leaves below them along. Not `min_change`: a
/// caller's change can be small for the caller and still be all of a real change below it
/// (2 of 5 leaves it took in the 6-seed bench were injected regressions).
const LEAF_OF: [&str; 1] = ["cost_shift"];

/// Two growths are one factor when they differ by at most this fraction of the larger.
const SAME_FACTOR: f64 = 0.25;

/// A candidate's change relative to its own cost before it.
fn growth(c: &Candidate) -> f64 {
    c.cost_delta() / c.before.max(f64::MIN_POSITIVE)
}

/// True when `a` and `b` grew by about the same factor, as the functions of one subtree do
/// when the whole subtree grows.
fn same_factor(a: &Candidate, b: &Candidate) -> bool {
    same_growth(growth(a), growth(b))
}

fn same_growth(x: f64, y: f64) -> bool {
    x * y > 0.0 && (x - y).abs() <= SAME_FACTOR * x.abs().max(y.abs())
}

/// A callee carries at least this much of its caller's change to count toward [`several`].
const PART: f64 = 0.1;

/// Reported callees of `a` in distinct stacks (none calls another) that each carry at least
/// [`PART`] and together at least `flow` of `a`'s added cost, none grown by `a`'s own factor
/// (with the chosen ones' changes taken out; a whole subtree that grew is one change, at its
/// root): two changes under one caller are reported each at its own function, not once at the
/// caller. Their names and the part carried.
fn several<'c>(
    wa: &Window,
    a: &Candidate,
    callees: &[(&'c Candidate, f64, f64)],
    total: f64,
    flow: f64,
    name: impl Fn(&Candidate) -> &'c str,
) -> Option<(String, f64)> {
    let mut parts: Vec<&(&Candidate, f64, f64)> = (callees.iter())
        .filter(|(b, f, _)| b.verdict.is_none() && *f >= PART * total)
        .collect();
    parts.sort_by(|x, y| y.1.total_cmp(&x.1));
    let mut chosen: Vec<&Candidate> = Vec::new();
    let mut carried = 0.0;
    // `a`'s growth with the chosen callees' changes taken out: one callee's big change makes
    // `a`'s whole growth look like another callee's own factor.
    // Passes until none adds a callee: taking out a smaller one can tell a bigger one apart.
    let (mut delta, mut before) = (a.cost_delta(), a.before);
    let mut added = true;
    while added {
        added = false;
        for &&(b, f, _) in &parts {
            let rest = delta / before.max(f64::MIN_POSITIVE);
            // A chosen one is not disjoint from itself.
            if chosen.iter().all(|c| wa.disjoint(name(c), name(b))) && !same_growth(rest, growth(b))
            {
                chosen.push(b);
                carried += f / total;
                delta -= b.cost_delta();
                before -= b.before;
                added = true;
            }
        }
    }
    (chosen.len() > 1 && carried >= flow).then(|| {
        let names: Vec<&str> = chosen.iter().map(|c| name(c)).collect();
        (names.join(" and "), carried)
    })
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
    // Flow of `c` (through `upper` first when given) in window `w`, in `c`'s direction.
    let flow_in = |w: &Window, c: &Candidate, upper: Option<&Candidate>| -> f64 {
        let f = name(c);
        let scale = w.scale(c.metric, upper.map_or(f, name)).unwrap_or(1.0);
        c.sign() * w.flow(c.metric, upper.map(name), f, scale)
    };
    // The same in `c`'s own window.
    let flow_of = |c: &Candidate, upper: Option<&Candidate>| -> Option<f64> {
        around.window(c).map(|w| flow_in(w, c, upper))
    };
    // A step's size right at its change point, when measured there (3 standard errors).
    let local_step = |c: &Candidate| -> Option<f64> {
        let y = shares(s, &s.functions[c.func], c.metric, s.samples.len());
        let (step, var) = c.local_cost_step(&y)?;
        (step * c.sign() > 3.0 * var.sqrt()).then_some(step.abs())
    };
    // Possible callees: the reported candidates, and the changes a filter explained (their
    // stacks were not loaded, so they are read in the caller's window).
    let explained = std::mem::take(&mut funnel.explained);
    let steps: Vec<Option<f64>> = cands.iter().map(local_step).collect();
    let mut callers = vec![None; cands.len()];
    // Per caller removed for one callee: that callee's index and the part of the caller's
    // change it carries (all of it when the rest is within the caller's noise).
    let mut best_of: Vec<Option<(usize, f64)>> = vec![None; cands.len()];
    for (i, a) in cands.iter().enumerate() {
        let Some(wa) = around.window(a) else {
            continue;
        };
        let total = flow_in(wa, a, None);
        if total <= 0.0 {
            continue;
        }
        // What a callee leaves unexplained must be small, or within the caller's noise (a
        // caller holding most of the service is measured against little else).
        let noise = 3.0 * wa.flow_noise(a.metric, name(a));
        // The series' view too: the part of b's change (of its own cost, the daily cycle
        // taken out) that flows through a, against a's; for steps also as measured right at
        // the change. Stacks compared across times of day carry a seasonal subtree's swing
        // into a caller's total, and levels over long spans carry a cycle's drift.
        let a_step = steps[i];
        let by_series = |b: &Candidate, b_step: Option<f64>, f: f64, through_b: Option<f64>| {
            let through = through_b
                .filter(|t| *t > 0.0)
                .map_or(0.0, |t| (f / t).clamp(0.0, 1.0));
            let levels = b.cost_delta().abs() / a.cost_delta().abs().max(f64::MIN_POSITIVE);
            let at_change = match (b_step, a_step) {
                (Some(x), Some(y)) => x / y,
                _ => 0.0,
            };
            through * levels.max(at_change)
        };
        let reported = cands
            .iter()
            .zip(&steps)
            .filter(|(b, _)| related(a, b))
            .filter_map(|(b, step)| Some((b, *step, flow_of(b, Some(a))?, flow_of(b, None))));
        // Only those a calls; a's scale serves them all (each its own would sort the
        // window's rows once per pair, and there are thousands of them in a large service).
        let under = wa.below(name(a));
        let mut scales = [None; 2];
        let filtered = explained
            .iter()
            .filter(|b| under.contains(name(b)) && related(a, b))
            .map(|b| {
                let k = usize::from(b.metric == Metric::Energy);
                let scale =
                    *scales[k].get_or_insert_with(|| wa.scale(b.metric, name(a)).unwrap_or(1.0));
                let f = b.sign() * wa.flow(b.metric, Some(name(a)), name(b), scale);
                let t = b.sign() * wa.flow(b.metric, None, name(b), scale);
                (b, local_step(b), f, Some(t))
            });
        let callees: Vec<(&Candidate, f64, f64)> = reported
            .chain(filtered)
            .filter(|(_, _, f, _)| *f > 0.0)
            .map(|(b, step, f, t)| (b, f, (f / total).max(by_series(b, step, f, t))))
            .collect();
        let best = (callees.iter())
            .filter(|(_, f, carried)| *carried >= flow || total - f <= noise)
            .max_by(|x, y| x.2.total_cmp(&y.2));
        if let Some((b, f, carried)) = best {
            if let Some(j) = cands.iter().position(|x| std::ptr::eq(x, *b)) {
                let part = if total - f <= noise {
                    1.0
                } else {
                    carried.min(1.0)
                };
                best_of[i] = Some((j, part));
            }
            let removed = match &b.verdict {
                Some((stage, _)) => format!(" ({stage} removed it)"),
                None => String::new(),
            };
            callers[i] = Some(format!(
                "caller of {}, which carries {:.0}% of its added cost{removed}",
                name(b),
                carried.min(1.0) * 100.0
            ));
        } else if let Some((names, carried)) = several(wa, a, &callees, total, flow, name) {
            callers[i] = Some(format!(
                "caller of {names}, changes of their own which together carry {:.0}% of its \
                 added cost",
                carried.min(1.0) * 100.0
            ));
        }
    }
    // Below a change that cost shift explained, carrying less of it than a
    // reported callee must: its subtree moved with it, and the leaf is part of that change.
    let below_explained = |l: &Candidate, total: f64| {
        let w = around.window(l)?;
        (explained.iter())
            .filter(|b| matches!(&b.verdict, Some((st, _)) if LEAF_OF.contains(st)))
            .filter(|b| related(l, b))
            .find_map(|b| {
                let scale = w.scale(l.metric, name(b)).unwrap_or(1.0);
                let through = l.sign() * w.flow(l.metric, Some(name(b)), name(l), scale);
                let whole = l.sign() * w.flow(l.metric, None, name(b), scale);
                (through >= total / 2.0 && whole > 0.0 && total < whole * flow)
                    .then(|| (b, total / whole))
            })
    };
    let cut = deepest_of_chains(&mut callers, &best_of, flow, |i| name(&cands[i]));
    let mut leaves = vec![None; cands.len()];
    for (i, l) in cands.iter().enumerate() {
        if callers[i].is_some() {
            continue;
        }
        let Some(total) = flow_of(l, None).filter(|t| *t > 0.0) else {
            continue;
        };
        // Below a kept change and carrying under half of it; or below a caller removed
        // above, grown by the same factor as it and carrying less than its reported callee
        // must: its whole subtree grew, and the change is reported at the callee that
        // carries most of it. A change larger than `b`'s own is no part of it, whatever flows
        // through `b`.
        let above = cands.iter().enumerate().find(|(j, b)| {
            related(l, b)
                && flow_of(l, Some(b)).is_some_and(|f| f >= total / 2.0)
                && flow_of(b, None).is_some_and(|t| {
                    total < t
                        && (callers[*j].is_none()
                            || (same_factor(l, b) && total < t * (1.0 - flow)))
                })
        });
        if let Some((j, b)) = above {
            let share = flow_of(b, None).map_or(0.0, |t| total / t * 100.0);
            leaves[i] = Some(if callers[j].is_none() {
                format!(
                    "below {}, which changed; it carries only {share:.0}% of that change",
                    name(b)
                )
            } else {
                format!(
                    "below {}, which grew by the same factor ({:+.0}%, this {:+.0}%) and is \
                     the caller of a reported change; it carries only {share:.0}% of it",
                    name(b),
                    growth(b) * 100.0,
                    growth(l) * 100.0
                )
            });
        } else if let Some((b, share)) = below_explained(l, total) {
            let stage = b.verdict.as_ref().map_or("", |v| v.0);
            leaves[i] = Some(format!(
                "below {}, which changed ({stage} removed it); it carries only {:.0}% of that \
                 change",
                name(b),
                share * 100.0
            ));
        }
    }
    let n = cands.len();
    let mut kept = Vec::new();
    for (((c, caller), cut), leaf) in cands.into_iter().zip(callers).zip(cut).zip(leaves) {
        match caller.or(cut).or(leaf) {
            Some(why) => funnel.remove("dedup", c, why),
            None => kept.push(c),
        }
    }
    funnel.count("dedup", 0, (n - kept.len()) as u64);
    kept
}

/// Along each chain of callers removed for one callee, the change is reported at the deepest
/// function carrying `flow` of the whole of it (of the top caller's change), not of its own
/// caller's part: the parts multiply down the chain. Keeps that function (clears its entry in
/// `callers`) and returns, per candidate, why the chain's last one, below it, is removed.
fn deepest_of_chains<'n>(
    callers: &mut [Option<String>],
    best_of: &[Option<(usize, f64)>],
    flow: f64,
    name: impl Fn(usize) -> &'n str,
) -> Vec<Option<String>> {
    let n = best_of.len();
    let mut cut = vec![None; n];
    let mut is_callee = vec![false; n];
    for (j, _) in best_of.iter().flatten() {
        is_callee[*j] = true;
    }
    for top in (0..n).filter(|t| best_of[*t].is_some() && !is_callee[*t]) {
        // (function, part of the top's change it carries), top first; at most n long.
        let mut chain = vec![(top, 1.0)];
        while chain.len() <= n {
            let (last, part) = chain[chain.len() - 1];
            let Some((next, p)) = best_of[last] else {
                break;
            };
            chain.push((next, part * p));
        }
        // The top carries all of it, so a link that falls below `flow` has one above it.
        if let Some(k) = chain.iter().position(|(_, part)| *part < flow) {
            let ((node, part), (end, carried)) = (chain[k - 1], chain[chain.len() - 1]);
            callers[node] = None;
            cut[end] = Some(format!(
                "below {}, which carries {:.0}% of the change at {}; this carries only {:.0}% \
                 of it",
                name(node),
                part * 100.0,
                name(top),
                carried * 100.0
            ));
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testdata::{DAY, MemStacks, Synth, around, step_at};
    use crate::detect::{DetectConfig, shares, span_mean};

    /// The default config's creep gap, buckets.
    fn gap() -> usize {
        let cfg = DetectConfig::default();
        cfg.buckets(cfg.creep_gap)
    }

    const AT: usize = 5 * DAY;

    /// A step of function `name`'s CPU share at `AT`, measured a day either side.
    fn step(s: &ServiceSeries, name: &str) -> Candidate {
        step_of(s, name, Metric::Cpu)
    }

    /// A step of function `name`'s share in `metric` at `AT`, measured a day either side.
    fn step_of(s: &ServiceSeries, name: &str, metric: Metric) -> Candidate {
        step_at(s, name, metric, AT, DAY)
    }

    /// Dedup of `handle` alone, after `stage` (when given) removed the step of `hash`, the
    /// callee that carries all of handle's change.
    fn handle_after(stage: Option<&'static str>) -> (Vec<Candidate>, Funnel) {
        dedup_handle(0.0, stage, false)
    }

    /// Dedup of `handle` beside `hash`'s step at `AT` (+0.005 of the service), `hash` reported
    /// or removed by `stage`; `parse`, also under handle, grows `drift` of the service a day
    /// all along (not a candidate).
    fn dedup_handle(
        drift: f64,
        stage: Option<&'static str>,
        hash_reported: bool,
    ) -> (Vec<Candidate>, Funnel) {
        let (s, stacks) = Synth::new(7)
            .stack_fn("main;serve;handle;parse", move |b| {
                0.20 + drift * b as f64 / DAY as f64
            })
            .stack_fn(
                "main;serve;handle;hash",
                |b| {
                    if b >= AT { 0.115 } else { 0.11 }
                },
            )
            .stack("main;gc", 0.10)
            .stack("main;serve;io", 0.59)
            .build(5);
        let mut funnel = Funnel::new(10);
        if let Some(stage) = stage {
            funnel.remove(stage, step(&s, "hash"), "test".into());
        }
        let mut cands = vec![step(&s, "handle")];
        if hash_reported {
            cands.push(step(&s, "hash"));
        }
        let kept = dedup(&s, &stacks, &mut funnel, cands);
        (kept, funnel)
    }

    /// `callers_and_leaves` over `cands` with the default settings and their stacks loaded.
    fn dedup(
        s: &ServiceSeries,
        stacks: &MemStacks,
        funnel: &mut Funnel,
        cands: Vec<Candidate>,
    ) -> Vec<Candidate> {
        let around = around(s, stacks, &cands);
        callers_and_leaves(
            funnel,
            cands,
            s,
            &around,
            DetectConfig::default().dedup_flow,
        )
    }

    #[test]
    fn a_caller_of_a_change_a_filter_explained_is_that_change() {
        for stage in ["went_away", "min_change", "cost_shift"] {
            let (kept, funnel) = handle_after(Some(stage));
            assert!(kept.is_empty(), "{stage}: {kept:?}");
            let why = funnel
                .filtered
                .iter()
                .find_map(|c| c.verdict.as_ref().filter(|v| v.0 == "dedup"))
                .map(|v| v.1.as_str());
            assert_eq!(
                why,
                Some(
                    format!(
                        "caller of hash, which carries 100% of its added cost ({stage} removed it)"
                    )
                    .as_str()
                ),
            );
        }
    }

    #[test]
    fn a_caller_alone_or_of_noise_is_kept() {
        // No callee changed, or the only one was not told from noise: handle is the change.
        for stage in [None, Some("significance")] {
            let (kept, _) = handle_after(stage);
            assert_eq!(kept.len(), 1, "{stage:?}");
        }
    }

    #[test]
    fn a_caller_whose_other_work_drifts_is_a_caller_at_the_change() {
        // Over the day either side that the stacks and levels compare, handle also grows
        // with parse's drift (as much as hash's step), but right at the change point its
        // step is all hash's.
        let (kept, funnel) = dedup_handle(0.005, None, true);
        assert_eq!(kept.len(), 1, "{kept:?}\n{:?}", funnel.filtered);
        let why = funnel.filtered[0].verdict.as_ref().unwrap();
        assert!(why.1.starts_with("caller of hash"), "{why:?}");
    }

    #[test]
    fn a_change_larger_than_its_callers_is_no_part_of_the_callers() {
        // hash's work grows by 0.5% of the service while its energy per sample falls a little
        // more: in the stacks handle's energy falls, while its energy view's levels (over
        // other spans, say) rose a little. hash's CPU view is no part of that change.
        let (s, stacks) = Synth::new(7)
            .stack("main;serve;handle;parse", 0.20)
            .stack_fn(
                "main;serve;handle;hash",
                |b| if b >= AT { 0.115 } else { 0.11 },
            )
            .energy_fn(
                "main;serve;handle;hash",
                |b| if b >= AT { 0.955 } else { 1.0 },
            )
            .stack("main;gc", 0.10)
            .stack("main;serve;io", 0.59)
            .build(5);
        let handle = step_of(&s, "handle", Metric::Energy);
        let handle = Candidate {
            after: handle.before + 0.0004,
            ..handle
        };
        let mut funnel = Funnel::new(10);
        let kept = dedup(&s, &stacks, &mut funnel, vec![handle, step(&s, "hash")]);
        assert!(
            kept.iter().any(|c| s.functions[c.func].function == "hash"),
            "{:?}",
            funnel.filtered
        );
    }

    /// Dedup of `hash` below `handle`, whose step a filter (`stage`) removed; with `subtree`
    /// handle's own time and its other callee grew by hash's factor too.
    fn hash_below_removed_handle(stage: &'static str, subtree: bool) -> (Vec<Candidate>, Funnel) {
        let grow = move |w: f64| move |b: usize| if b >= AT { w * 1.2 } else { w };
        let other = move |w: f64| move |b: usize| if subtree { grow(w)(b) } else { w };
        let (s, stacks) = Synth::new(7)
            .stack_fn("main;serve;handle", other(0.10))
            .stack_fn("main;serve;handle;parse", other(0.10))
            .stack_fn("main;serve;handle;hash", grow(0.05))
            .stack("main;gc", 0.10)
            .stack("main;serve;io", 0.65)
            .build(5);
        let mut funnel = Funnel::new(10);
        funnel.remove(stage, step(&s, "handle"), "test".into());
        let kept = dedup(&s, &stacks, &mut funnel, vec![step(&s, "hash")]);
        (kept, funnel)
    }

    #[test]
    fn a_leaf_of_a_subtree_a_filter_explained_is_that_change() {
        let (kept, funnel) = hash_below_removed_handle("cost_shift", true);
        assert!(kept.is_empty(), "{kept:?}");
        let why = &funnel.filtered.last().unwrap().verdict.as_ref().unwrap().1;
        assert!(
            why.starts_with("below handle, which changed (cost_shift removed it)"),
            "{why}"
        );
        // Alone in its caller's change it is the change; and a caller's change too small for
        // the caller, a spike that went away, or noise explains nothing.
        assert_eq!(hash_below_removed_handle("cost_shift", false).0.len(), 1);
        for stage in ["min_change", "went_away", "significance"] {
            assert_eq!(hash_below_removed_handle(stage, true).0.len(), 1, "{stage}");
        }
    }

    #[test]
    fn an_energy_view_left_from_a_larger_move_of_the_work_is_not_its_own() {
        // hash's samples rise a third at AT while its energy per sample falls a quarter: its
        // energy share barely moves, its CPU share moves far more. The energy view alone is
        // no change of its energy; with the work's move alike (no power change) it is one.
        let build = |power: f64| {
            Synth::new(7)
                .stack_fn(
                    "main;serve;handle;hash",
                    |b| {
                        if b >= AT { 0.12 } else { 0.09 }
                    },
                )
                .energy_fn(
                    "main;serve;handle;hash",
                    move |b| if b >= AT { power } else { 1.0 },
                )
                .stack("main;serve;io", 0.88)
                .build(7)
                .0
        };
        let alone = |s: &ServiceSeries| {
            let mut c = step_of(s, "hash", Metric::Energy);
            let cpu = shares(s, &s.functions[c.func], Metric::Cpu, s.samples.len());
            c.other_delta = span_mean(&cpu, c.after_span) - span_mean(&cpu, c.before_span);
            let mut funnel = Funnel::new(10);
            let kept = merge_metrics(&mut funnel, vec![c], s, gap()).len();
            let why = funnel.filtered.first().and_then(|c| c.verdict.clone());
            (kept, why.map(|v| v.1).unwrap_or_default())
        };
        let (kept, why) = alone(&build(0.78));
        assert_eq!(kept, 0);
        assert!(
            why.contains("a remainder of a larger move of its work"),
            "{why}"
        );
        assert_eq!(alone(&build(1.0)), (1, String::new()));
    }

    #[test]
    fn a_creep_a_transient_broke_in_two_is_one_report() {
        let (s, _) = Synth::new(7)
            .stack_fn("main;serve;handle;hash", |b| {
                0.1 + 0.01 * (b as f64 / DAY as f64)
            })
            .stack("main;serve;io", 0.8)
            .build(7);
        let part = |start: usize, end: usize| Candidate {
            kind: Kind::Creep,
            start,
            end,
            before_span: (start - DAY / 2, start),
            after_span: (end, end + DAY / 2),
            ..step(&s, "hash")
        };
        let ys = shares(
            &s,
            &s.functions[part(AT, AT).func],
            Metric::Cpu,
            s.samples.len(),
        );
        let level = |c: Candidate| Candidate {
            before: span_mean(&ys, c.before_span),
            after: span_mean(&ys, c.after_span),
            ..c
        };
        // The second part resumes 6 h after the first's last change point: one creep, at the
        // first's start.
        let (first, second) = (level(part(AT, AT + 24)), level(part(AT + 96, AT + 120)));
        let mut funnel = Funnel::new(10);
        let kept = merge_metrics(&mut funnel, vec![second.clone(), first.clone()], &s, gap());
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!((kept[0].start, kept[0].after), (first.start, first.after));
        let why = &funnel.filtered[0].verdict.as_ref().unwrap().1;
        assert!(
            why.starts_with("continues the creep of this function that began 8h earlier"),
            "{why}"
        );
        // Over a day on, or the other way, it is a change of its own.
        let later = level(part(AT + 400, AT + 420));
        let down = Candidate {
            after: second.before - 0.01,
            ..second.clone()
        };
        for other in [later, down] {
            let mut funnel = Funnel::new(10);
            assert_eq!(
                merge_metrics(&mut funnel, vec![first.clone(), other], &s, gap()).len(),
                2
            );
        }
        // The gap is the config's: with creeps joined over 2 h only, 6 h apart are two.
        let mut funnel = Funnel::new(10);
        let kept = merge_metrics(&mut funnel, vec![first.clone(), second], &s, 24);
        assert_eq!(kept.len(), 2, "{kept:?}");
    }
}
