//! A candidate as the wire `Regression`: magnitudes (shares, watts on the profiled hosts and on
//! the fleet, MWh a year), confidence, a deterministic id, evidence stacks and causes.

use wattson_proto::v1;

use super::candidate::Candidate;
use super::stacks::Window;
use super::{DetectConfig, ServiceSeries, cause};

/// Hours in a (Julian) year.
const HOURS_PER_YEAR: f64 = 8766.0;
/// Stacks listed as evidence.
const EVIDENCE: usize = 5;

/// What every regression of one pass shares.
pub struct Context<'a> {
    pub series: &'a ServiceSeries,
    pub cfg: &'a DetectConfig,
    pub now: i64,
    pub last_bucket: usize,
    pub changes: &'a [v1::Change],
    /// Where stacks come from (root cause reads the stacks of a change's build).
    pub stacks: &'a dyn super::StackSource,
}

/// The report of `c`; `w` is the stacks around it (evidence and causes need them).
pub fn build(ctx: &Context<'_>, c: &Candidate, w: Option<&Window>) -> v1::Regression {
    let s = ctx.series;
    let f = s.functions[c.func].function.as_str();
    let started = s.start + c.start as i64 * s.step;
    let (lo, hi) = c.after_span;
    let hi = hi.min(s.energy_uj.len());
    let uj = s.energy_uj[lo..hi].iter().sum::<f64>() / (hi - lo).max(1) as f64;
    let watts = uj / s.step as f64 / 1e6;
    // Added watts: the function's own cost change (not its share's, which the rest dilutes).
    let delta_watts = c.cost_delta() * watts;
    let fleet = delta_watts * s.fleet_scale;
    let status = match (&c.verdict, c.sign() > 0.0) {
        (Some(_), _) => "filtered",
        (None, true) => "open",
        (None, false) => "improvement",
    };
    let last_end = s.start + (ctx.last_bucket as i64 + 1) * s.step;
    let evidence = w
        .map(|w| {
            let scale = w.scale(c.metric, f).unwrap_or(1.0);
            w.grown(c.metric, f, c.sign(), scale)
                .into_iter()
                .take(EVIDENCE)
                .map(|(r, _)| {
                    let (b, a) = w.shares(c.metric, r);
                    v1::StackEvidence {
                        folded: r.folded.clone(),
                        before_share: b,
                        after_share: a,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let causes = if c.verdict.is_none() {
        cause::rank(ctx, c, f, started, w)
    } else {
        Vec::new()
    };
    v1::Regression {
        id: id(&s.service, f, c.metric.name(), c.kind.name(), started),
        service: s.service.clone(),
        function: f.to_string(),
        metric: c.metric.name().to_string(),
        kind: c.kind.name().to_string(),
        started_unix_seconds: started,
        // The earliest time the change had lasted long enough to be reported.
        detected_unix_seconds: (started + c.lasting.max(ctx.cfg.min_lasting))
            .min(last_end)
            .min(ctx.now),
        before_share: c.before,
        after_share: c.after,
        delta_share: c.delta(),
        delta_watts,
        fleet_delta_watts: fleet,
        mwh_per_year: fleet * HOURS_PER_YEAR / 1e6,
        estimated: s.estimated,
        confidence: (1.0 - c.p).clamp(0.0, 1.0),
        status: status.to_string(),
        evidence,
        causes,
        filtered_by: c
            .verdict
            .as_ref()
            .map(|(filter, detail)| v1::FilterVerdict {
                filter: (*filter).to_string(),
                detail: detail.clone(),
            }),
        energy_delta_share: c.other_delta,
    }
}

/// Same data, same id: FNV-1a over what identifies the change.
fn id(service: &str, function: &str, metric: &str, kind: &str, started: i64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [service, function, metric, kind, &started.to_string()] {
        for b in part.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("r-{h:016x}")
}
