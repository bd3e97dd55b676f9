//! Two filters that read the stacks around a change: normalization (a function's share moved
//! only because the rest of the service's cost changed: its own cost did not) and cost shift
//! (work moved between functions of one cost domain, a caller whose total barely moved: a
//! refactor, not a regression). A domain that is new (nothing before) is never a shift.

use super::candidate::{Candidate, Funnel};
use super::{Around, ServiceSeries};

/// Removes candidates whose own cost (excess over the rest's scale) moved under a third of
/// their share's move, or the other way.
pub fn normalization(
    funnel: &mut Funnel,
    cands: Vec<Candidate>,
    s: &ServiceSeries,
    around: &Around,
) -> Vec<Candidate> {
    funnel.apply("normalization", cands, |c| {
        let w = around.window(c)?;
        let f = s.functions[c.func].function.as_str();
        if !w.has(f) {
            return None;
        }
        let scale = w.scale(c.metric, f)?;
        let own = w.flow(c.metric, None, f, scale);
        let raw = w.raw_delta(c.metric, f);
        let agrees = own * c.sign() > 0.0 && own.abs() >= raw.abs() / 3.0;
        (!agrees).then(|| {
            format!(
                "share moved {:+.4}% but its own cost {:+.4}% of the service: the rest of the \
                 service moved by x{scale:.4}, so other functions' cost changed",
                raw * 100.0,
                own * 100.0
            )
        })
    })
}

/// Removes candidates whose caller (or its caller) kept its total while they moved: the
/// domain's own change is under `tolerance` of the candidate's change inside it.
pub fn cost_shift(
    funnel: &mut Funnel,
    cands: Vec<Candidate>,
    s: &ServiceSeries,
    around: &Around,
    tolerance: f64,
) -> Vec<Candidate> {
    funnel.apply("cost_shift", cands, |c| {
        let w = around.window(c)?;
        let f = s.functions[c.func].function.as_str();
        let scale = w.scale(c.metric, f)?;
        let own = w.flow(c.metric, None, f, scale);
        for domain in w.callers(c.metric, f, 2) {
            if w.before(c.metric, &domain) <= 0.0 {
                continue; // a new domain is never a shift
            }
            let Some(dscale) = w.scale(c.metric, &domain) else {
                continue; // the domain is (nearly) the whole service
            };
            let inside = w.flow(c.metric, Some(&domain), f, dscale);
            let total = w.flow(c.metric, None, &domain, dscale);
            if inside * c.sign() > 0.0
                && inside.abs() >= own.abs() / 2.0
                && total.abs() < tolerance * inside.abs()
            {
                return Some(format!(
                    "cost shift inside {domain}: {f} moved {:+.4}% of the service while \
                     {domain}'s total moved {:+.4}%",
                    inside * 100.0,
                    total * 100.0
                ));
            }
        }
        None
    })
}
