//! Two filters that read the stacks around a change: normalization (a function's share moved
//! only because the rest of the service's cost changed: its own cost did not) and cost shift
//! (work moved between functions of one cost domain, a caller whose total barely moved: a
//! refactor, not a regression). A domain that is new (nothing before) is never a shift.

use super::candidate::{Candidate, Funnel, LOCAL, Metric};
use super::dedup::SAME_CHANGE;
use super::{Around, ServiceSeries, shares, span_ratio};

/// Removes candidates whose share moved only because the rest of the service's cost did:
/// their own cost (excess over the rest's scale) moved the other way, or under a third of
/// both their share's move between the windows and their series' change (a part-day window
/// carries other functions' daily cycles); or an opposite change elsewhere (in stacks they do
/// not share; one `went_away` removed counts) that changed the service's total predicts their
/// new share within a third of their move; or, for an energy view, the service's energy per
/// sample moved and theirs did not ([`intensity`]).
pub fn normalization(
    funnel: &mut Funnel,
    cands: Vec<Candidate>,
    s: &ServiceSeries,
    around: &Around,
) -> Vec<Candidate> {
    // A change that went away (a spike, a change rolled back) moved the other shares while it
    // lasted, and again when it ended: it explains them as well as one that lasts.
    let gone: Vec<&Candidate> = funnel
        .explained
        .iter()
        .filter(|a| {
            a.verdict
                .as_ref()
                .is_some_and(|(stage, _)| *stage == "went_away")
        })
        .collect();
    let why = cands.iter().map(|c| {
        let w = around.window(c)?;
        let f = s.functions[c.func].function.as_str();
        if !w.has(f) {
            return None;
        }
        let others = cands.iter().chain(gone.iter().copied());
        if let Some(why) = elsewhere(c, others, s, around) {
            return Some(why);
        }
        if let Some(why) = intensity(c, s) {
            return Some(why);
        }
        let scale = w.scale(c.metric, f)?;
        let own = w.flow(c.metric, None, f, scale);
        let raw = w.raw_delta(c.metric, f);
        let agrees = own * c.sign() > 0.0
            && (own.abs() >= raw.abs() / 3.0 || own.abs() >= c.delta().abs() / 3.0);
        (!agrees).then(|| {
            format!(
                "share moved {:+.4}% but its own cost {:+.4}% of the service: the rest of the \
                 service moved by x{scale:.4}, so other functions' cost changed",
                raw * 100.0,
                own * 100.0
            )
        })
    });
    let why = why.collect();
    one_verdict_per_change(funnel, "normalization", cands, why)
}

/// An opposite change `a` in stacks `c` does not share that explains `c`: when everything but
/// `a` keeps its cost, `c`'s share becomes before x (1 - a after) / (1 - a before). `a` must
/// have changed the service's total (the stacks through neither moved that way against the
/// service without `c`, at least a quarter as far; a cost shift moves none), and when `c`
/// explains `a` as well (two parts that make up most of the service) the change is the one
/// that needs the smaller cost.
fn elsewhere<'c>(
    c: &Candidate,
    all: impl Iterator<Item = &'c Candidate>,
    s: &ServiceSeries,
    around: &Around,
) -> Option<String> {
    let w = around.window(c)?;
    let f = s.functions[c.func].function.as_str();
    let predicts = |a: &Candidate, c: &Candidate| {
        let predicted = c.before * (1.0 - a.after) / (1.0 - a.before);
        ((c.after - predicted).abs() <= c.delta().abs() / 3.0).then_some(predicted)
    };
    all.filter(|a| a.sign() != c.sign() && a.metric == c.metric)
        .filter(|a| c.overlaps(a, 2) || around.covers(c, a))
        .filter(|a| a.before < 0.999 && a.after < 0.999)
        .filter(|a| w.disjoint(f, &s.functions[a.func].function))
        .find_map(|a| {
            let predicted = predicts(a, c)?;
            if predicts(c, a).is_some() && a.cost_delta().abs() > c.cost_delta().abs() {
                return None;
            }
            let expected = (1.0 - a.after) / (1.0 - a.before);
            let g = s.functions[a.func].function.as_str();
            // Measured on the stacks through neither, against the service without `c`'s: a
            // daily cycle of `c`'s own in a part-day window moves the rest against `a`. When
            // the two leave under 5% of the service, on the stacks outside `a`.
            let cb = w.before(c.metric, f);
            let ca = cb + w.raw_delta(c.metric, f);
            let moved = match w.scale_outside(c.metric, [g, f]) {
                Some(r) => r * (1.0 - cb) / (1.0 - ca),
                None => w.scale(c.metric, g)?,
            };
            let total_changed = (moved - 1.0) * (expected - 1.0) > 0.0
                && (moved - 1.0).abs() >= (expected - 1.0).abs() / 4.0;
            let gone = if a.verdict.is_some() {
                " (a change that went away)"
            } else {
                ""
            };
            total_changed.then(|| {
                format!(
                    "moved only as {}{gone} went {:.4}% -> {:.4}% of the service (the rest of \
                     the service moved x{moved:.4}): expected {:.4}% -> {:.4}%, measured \
                     {:.4}%",
                    s.functions[a.func].function,
                    a.before * 100.0,
                    a.after * 100.0,
                    c.before * 100.0,
                    predicted * 100.0,
                    c.after * 100.0
                )
            })
        })
}

/// An energy view that moved only because the service's energy per sample did: the function's
/// own energy per sample held, so its energy share follows its CPU share over the service's
/// intensity, and that predicts its new level within a third of its move while its CPU share
/// alone explains under a third of it. (Work moved between stacks that draw different power changes
/// every other function's energy share; the stacks around a shift of a third of the service
/// are too changed for the rest's scale to see it.)
fn intensity(c: &Candidate, s: &ServiceSeries) -> Option<String> {
    if c.metric != Metric::Energy {
        return None;
    }
    let f = &s.functions[c.func];
    let (b, a) = (c.before_span, c.after_span);
    let (eb, ea) = (
        span_ratio(&f.energy_incl_uj, &s.energy_uj, b)?,
        span_ratio(&f.energy_incl_uj, &s.energy_uj, a)?,
    );
    let (sb, sa) = (
        span_ratio(&f.samples_incl, &s.samples, b)?,
        span_ratio(&f.samples_incl, &s.samples, a)?,
    );
    let k = span_ratio(&s.energy_uj, &s.samples, a)? / span_ratio(&s.energy_uj, &s.samples, b)?;
    let moved = ea - eb;
    if sb <= 0.0 || !k.is_finite() || k <= 0.0 || moved * c.sign() <= 0.0 {
        return None;
    }
    let by_cpu = eb * sa / sb;
    let predicted = by_cpu / k;
    let explains = (ea - predicted).abs() <= moved.abs() / 3.0
        && (by_cpu - eb) * c.sign() <= moved.abs() / 3.0;
    explains.then(|| {
        format!(
            "energy share moved {:+.4}% with its CPU share {:+.4}% and its energy per sample \
             unchanged: the service's energy per sample moved x{k:.4} (a change in what other \
             stacks draw): expected {:.4}%, measured {:.4}%",
            moved * 100.0,
            (sa - sb) * 100.0,
            predicted * 100.0,
            ea * 100.0
        )
    })
}

/// Callers up to this many levels above a candidate are tried as its cost domain.
const DOMAIN_LEVELS: usize = 32;

/// Runs filter `verdict` over `cands` as one stage, a change's CPU and energy views judged as
/// one: when either view is removed, its twin (same function and direction, at about the same
/// time) goes with it. Work moved to a stack that draws more power still moved: the energy
/// view of a cost shift is no regression of its own.
fn one_verdict_per_change(
    funnel: &mut Funnel,
    stage: &'static str,
    cands: Vec<Candidate>,
    mut why: Vec<Option<String>>,
) -> Vec<Candidate> {
    for i in 0..cands.len() {
        if why[i].is_some() {
            continue;
        }
        let twin = (0..cands.len()).find(|&j| {
            why[j].is_some()
                && !why[j].as_deref().is_some_and(|w| w.starts_with(TWIN))
                && cands[j].func == cands[i].func
                && cands[j].metric != cands[i].metric
                && cands[j].sign() == cands[i].sign()
                && cands[j].overlaps(&cands[i], 2)
        });
        if let Some(j) = twin {
            why[i] = Some(format!(
                "{TWIN} {} view: {}",
                cands[j].metric.name(),
                why[j].as_deref().unwrap_or_default()
            ));
        }
    }
    let mut next = why.into_iter();
    funnel.apply(stage, cands, |_| next.next().flatten())
}

/// How a verdict carried over from the other view starts.
const TWIN: &str = "same change as the";

/// Removes candidates one of whose callers kept its total while they moved: the
/// domain's own change is under `tolerance` of the candidate's change inside it, and measured
/// precisely enough to tell (three standard errors under that change).
pub fn cost_shift(
    funnel: &mut Funnel,
    cands: Vec<Candidate>,
    s: &ServiceSeries,
    around: &Around,
    tolerance: f64,
) -> Vec<Candidate> {
    // Domains a shift was found inside: (function, the candidate that shifted).
    let mut domains: Vec<(String, usize)> = Vec::new();
    let mut why: Vec<Option<String>> = Vec::with_capacity(cands.len());
    for (i, c) in cands.iter().enumerate() {
        why.push(
            shifted(c, &cands, s, around, tolerance).map(|(domain, why)| {
                domains.push((domain, i));
                why
            }),
        );
    }
    for (i, c) in cands.iter().enumerate() {
        if why[i].is_none() {
            why[i] = paired(c, &cands, s, around, tolerance);
        }
    }
    // A domain (or a caller of it) whose work did not move (no change in the cpu view) but
    // whose energy did, as a shift inside it moved work to stacks that draw more (or less)
    // power: that shift.
    for (i, c) in cands.iter().enumerate() {
        let f = s.functions[c.func].function.as_str();
        let cpu_moved = cands
            .iter()
            .any(|o| o.func == c.func && o.metric == Metric::Cpu && o.overlaps(c, 2));
        if why[i].is_some() || c.metric != Metric::Energy || cpu_moved {
            continue;
        }
        let Some(w) = around.window(c) else { continue };
        if let Some((_, j)) = domains.iter().find(|(d, j)| {
            w.calls(f, d) && (cands[*j].overlaps(c, 2) || around.covers(c, &cands[*j]))
        }) {
            why[i] = Some(format!(
                "its work did not change (no change in the cpu view): energy moved with the work \
                 shifted inside it to {} ({})",
                s.functions[cands[*j].func].function,
                why[*j].as_deref().unwrap_or_default()
            ));
        }
    }
    one_verdict_per_change(funnel, "cost_shift", cands, why)
}

/// Work moved between functions with no caller in common that shows it (the whole service's
/// total never moves, so [`shifted`] has no domain to weigh): an opposite change in stacks `c`
/// does not share, at the same change point, of `c`'s size within `tolerance` of the smaller,
/// and neither change the other's dilution (a function's share falls when another grows: a
/// part holding most of the service falls by about the other's growth).
fn paired(
    c: &Candidate,
    all: &[Candidate],
    s: &ServiceSeries,
    around: &Around,
    tolerance: f64,
) -> Option<String> {
    let w = around.window(c)?;
    let f = s.functions[c.func].function.as_str();
    let diluted = |x: &Candidate, by: &Candidate| {
        let expected = x.before * (1.0 - by.after) / (1.0 - by.before);
        (x.after - expected).abs() <= x.delta().abs() / 3.0
    };
    all.iter()
        .filter(|a| a.metric == c.metric && a.sign() != c.sign() && a.before > 0.0)
        .filter(|a| same_point(a, c))
        .filter(|a| {
            (a.delta() + c.delta()).abs() <= tolerance * a.delta().abs().min(c.delta().abs())
        })
        .filter(|a| !diluted(a, c) && !diluted(c, a))
        .find(|a| w.disjoint(f, &s.functions[a.func].function))
        .map(|a| {
            format!(
                "work moved between {} and {f} at one change point, in stacks they do not \
                 share: {f} moved {:+.4}% of the service while {} moved {:+.4}%",
                s.functions[a.func].function,
                c.delta() * 100.0,
                s.functions[a.func].function,
                a.delta() * 100.0
            )
        })
}

/// Whether two candidates changed at one change point (up to their location errors).
fn same_point(a: &Candidate, c: &Candidate) -> bool {
    let slack = SAME_CHANGE.max(a.loc_err).max(c.loc_err);
    a.start.abs_diff(c.start) <= slack && a.end.abs_diff(c.end) <= slack
}

/// What `domain` lost (its excess over `scale`) through the largest opposite change inside it,
/// in stacks `c` does not share, that happened at another change point than `c`'s: a change of
/// its own (an improvement a day later), not where `c`'s work came from. 0 when none.
fn apart(
    c: &Candidate,
    all: &[Candidate],
    s: &ServiceSeries,
    w: &super::stacks::Window,
    domain: &str,
    scale: f64,
) -> f64 {
    let f = s.functions[c.func].function.as_str();
    (all.iter())
        .filter(|a| a.metric == c.metric && a.sign() != c.sign() && !same_point(a, c))
        .map(|a| s.functions[a.func].function.as_str())
        .filter(|g| *g != domain && w.calls(domain, g) && w.disjoint(f, g))
        .map(|g| w.flow(c.metric, Some(domain), g, scale))
        .filter(|lost| lost * c.sign() < 0.0)
        .max_by(|x, y| x.abs().total_cmp(&y.abs()))
        .unwrap_or(0.0)
}

/// The domain `c` is a cost shift inside, and why; None when it is not one.
fn shifted(
    c: &Candidate,
    all: &[Candidate],
    s: &ServiceSeries,
    around: &Around,
    tolerance: f64,
) -> Option<(String, String)> {
    {
        let w = around.window(c)?;
        let f = s.functions[c.func].function.as_str();
        let scale = w.scale(c.metric, f)?;
        let own = w.flow(c.metric, None, f, scale);
        // The series' step at the change, for `flat_at` (once, not per domain).
        let own_step = c
            .local_cost_step(&shares(s, &s.functions[c.func], c.metric, s.samples.len()))
            .map(|(step, _)| step);
        // Every caller up the stack: a callee of the function that gained the work grows too.
        for domain in w.callers(c.metric, f, DOMAIN_LEVELS) {
            if w.before(c.metric, &domain) <= 0.0 {
                continue; // a new domain is never a shift
            }
            let Some(dscale) = w.scale(c.metric, &domain) else {
                continue; // the domain is (nearly) the whole service: its share cannot move
            };
            let inside = w.flow(c.metric, Some(&domain), f, dscale);
            if inside * c.sign() <= 0.0 || inside.abs() < own.abs() / 2.0 {
                continue;
            }
            let total = w.flow(c.metric, None, &domain, dscale);
            // "Unchanged" must be measurable: a growth the size of `inside` would stand out.
            if 3.0 * w.flow_noise(c.metric, &domain) < inside.abs()
                && total.abs() < tolerance * inside.abs()
                && (total - apart(c, all, s, w, &domain, dscale)).abs() < tolerance * inside.abs()
            {
                let why = format!(
                    "cost shift inside {domain}: {f} moved {:+.4}% of the service while \
                     {domain}'s total moved {:+.4}%",
                    inside * 100.0,
                    total * 100.0
                );
                return Some((domain, why));
            }
            let dshare = w.before(c.metric, &domain);
            if let Some(why) =
                own_step.and_then(|own| flat_at(c, own, s, (&domain, dshare), tolerance))
            {
                return Some((domain, why));
            }
        }
        None
    }
}

/// The series' view of a step's domain, for when the stacks compared across times of day
/// carry the domain's daily swing into its total: the domain's own cost just before and just
/// after the change point (a line fitted on each side, so a cycle's slope is no step) moved
/// under `tolerance` of `c`'s (`own`, measured the same way), and measurably so: `c`'s step
/// stands out, and the domain's is told from the one `c`'s growth alone would give it (its
/// share, `dshare` of the service, grows by `own` x (1 - dshare) / (1 - `c`'s share)).
fn flat_at(
    c: &Candidate,
    own: f64,
    s: &ServiceSeries,
    (domain, dshare): (&str, f64),
    tolerance: f64,
) -> Option<String> {
    let f = &s.functions[c.func];
    let d = s.functions.iter().find(|g| g.function == domain)?;
    let (moved, var) = c.local_cost_step(&shares(s, d, c.metric, s.samples.len()))?;
    let se = var.sqrt();
    let grown = own * (1.0 - dshare) / (1.0 - c.before).max(1e-9);
    let told = (grown - moved) * c.sign() >= 2.0 * se;
    (own * c.sign() > 3.0 * se && moved.abs() < tolerance * own.abs() && told).then(|| {
        format!(
            "cost shift inside {domain}: at the change {} stepped {:+.4}% of the service while \
             {domain} stepped {:+.4}% (standard error {:.4}%; lines fitted {} either side)",
            f.function,
            own * 100.0,
            moved * 100.0,
            se * 100.0,
            super::trend::span(LOCAL as i64 * s.step)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testdata::{DAY, Synth, around, step_at, with_fillers};

    #[test]
    fn a_change_that_went_away_still_explains_the_shares_it_moved() {
        // `a` falls by 0.5% of the service at noon of the last day; `x` (8%) follows the day,
        // so over the half days around the change its own cost moves by a half and that
        // check cannot tell; only `a`'s fall explains `x`'s rise at the change point. `a`'s
        // fall was removed as gone again (it came back later): it still moved the shares.
        let cycle =
            |b: usize| 1.0 - 0.4 * ((b % DAY) as f64 / DAY as f64 * std::f64::consts::TAU).sin();
        let at = 6 * DAY + DAY / 2 - 24;
        let (s, stacks) = with_fillers(
            Synth::new(7)
                .stack_fn("main;a", move |b| if b >= at { 0.055 } else { 0.06 })
                .stack_fn("main;serve;x", move |b| 0.08 * cycle(b))
                .stack("main;serve;io", 0.30)
                .stack("main;gc", 0.40),
        )
        .build(13);
        let a = step_at(&s, "a", Metric::Cpu, at, DAY / 2);
        // Its levels as the series sees them with the daily profile taken out: the rise
        // `a`'s fall gives it. Its stacks are those of the half days.
        let x = step_at(&s, "x", Metric::Cpu, at, DAY / 2);
        let level = step_at(&s, "x", Metric::Cpu, at, 6).before;
        let x = Candidate {
            before: level,
            after: level * (1.0 - a.after) / (1.0 - a.before),
            ..x
        };
        let around = around(&s, &stacks, &[x.clone(), a.clone()]);
        let mut funnel = Funnel::new(10);
        let kept = normalization(&mut funnel, vec![x.clone()], &s, &around);
        assert_eq!(
            kept.len(),
            1,
            "nothing known explains x: {:?}",
            funnel.filtered
        );
        let mut funnel = Funnel::new(10);
        funnel.remove("went_away", a, "test".into());
        let kept = normalization(&mut funnel, vec![x], &s, &around);
        assert!(kept.is_empty(), "{kept:?}");
        let why = &funnel.filtered[1].verdict.as_ref().unwrap().1;
        assert!(
            why.starts_with("moved only as a (a change that went away) went"),
            "{why}"
        );
    }
}
