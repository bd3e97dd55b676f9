//! Root cause: ranks the service's changes near a change point by the share of the change
//! carried by stacks through functions each change touched, or by the samples of the build a
//! change shipped (a build first seen near the change point whose own share of the function
//! grew), and by timing (how close before the change point it took effect). A change is named
//! only when its score clears `cause_min_score`; with neither kind of evidence, timing alone
//! can name a deploy of a new build (the build that shipped exactly then), weighted down, and
//! never anything else.

use wattson_proto::v1;

use super::StackSource;
use super::candidate::{Candidate, Metric};
use super::regression::Context;
use super::stacks::Window;
use super::trend::span;

/// Weights of the evidence when the change lists the functions it touched.
const TOUCHED: f64 = 0.65;
const TIMING: f64 = 0.35;
/// Ceiling of a timing-only score: a deploy of a build, any other deploy, anything else.
const BUILD_ONLY: f64 = 0.6;
const DEPLOY_ONLY: f64 = 0.55;
const OTHER_ONLY: f64 = 0.4;

/// The causes of candidate `c` (function `func`, started at `started`), best first.
pub fn rank(
    ctx: &Context<'_>,
    c: &Candidate,
    func: &str,
    started: i64,
    w: Option<&Window>,
) -> Vec<v1::Cause> {
    let (service, step, cfg) = (ctx.series.service.as_str(), ctx.series.step, ctx.cfg);
    let tol = cfg.cause_tolerance_steps.max(c.loc_err as i64) * step;
    let mut out: Vec<(v1::Cause, i64)> = Vec::new();
    for ch in ctx.changes {
        if ch.service != service
            || ch.at_unix_seconds > started + tol
            || ch.at_unix_seconds < started - tol - cfg.cause_window
        {
            continue;
        }
        let early = (started - tol - ch.at_unix_seconds).max(0);
        let timing = (1.0 - early as f64 / cfg.cause_window as f64).clamp(0.0, 1.0);
        let when = match ch.at_unix_seconds - started {
            d if d.abs() < step => "at the change point".to_string(),
            d if d < 0 => format!("{} before the change point", span(-d)),
            d => format!("{} after the change point (within the tolerance)", span(d)),
        };
        let by_build = build_carried(ctx, c, func, &ch.build_id);
        let (score, why) = if let Some(b) = by_build.filter(|&b| b > 0.0 && ch.touched.is_empty()) {
            let short: String = ch.build_id.chars().take(12).collect();
            (
                TOUCHED * b + TIMING * timing,
                format!(
                    "samples of build {short}, new since the change point, carry {:.0}% of the \
                     change in {func}; {when}",
                    b * 100.0
                ),
            )
        } else if ch.touched.is_empty() {
            let (ceiling, what) = match (ch.kind.as_str(), ch.build_id.is_empty()) {
                ("deploy", false) => (BUILD_ONLY, format!("deploy of build {}", ch.build_id)),
                ("deploy", true) => (DEPLOY_ONLY, "deploy".to_string()),
                (k, _) => (
                    OTHER_ONLY,
                    format!("{} change", if k.is_empty() { "a" } else { k }),
                ),
            };
            (
                ceiling * timing,
                format!("{what} {when}; no touched functions recorded, so timing only"),
            )
        } else {
            let scale = w.and_then(|w| w.scale(c.metric, func)).unwrap_or(1.0);
            let carried = w
                .and_then(|w| w.carried_by(c.metric, func, &ch.touched, c.sign(), scale))
                .unwrap_or_else(|| {
                    if ch.touched.iter().any(|t| t == func) {
                        1.0
                    } else {
                        0.0
                    }
                });
            let touched = ch.touched.join(", ");
            // A build that carries more of it than the touched functions do speaks for it.
            let carried = carried.max(by_build.unwrap_or(0.0));
            (
                TOUCHED * carried + TIMING * timing,
                format!(
                    "touched {touched}, through which {:.0}% of the change in {func} flows; {when}",
                    carried * 100.0
                ),
            )
        };
        if score >= cfg.cause_min_score {
            out.push((
                v1::Cause {
                    change_id: ch.id.clone(),
                    score,
                    why: format!("{why} (score {score:.2})"),
                },
                (ch.at_unix_seconds - started).abs(),
            ));
        }
    }
    out.sort_by(|a, b| {
        b.0.score
            .total_cmp(&a.0.score)
            .then(a.1.cmp(&b.1))
            .then(a.0.change_id.cmp(&b.0.change_id))
    });
    out.into_iter().map(|(c, _)| c).collect()
}

/// The share of candidate `c`'s change in `func` that the samples of `build` carry: with
/// `w` the build's part of the service after the change point, `a` the function's share in
/// the build's samples and `b` its share before, `w * (a - b)` of the whole change `d`
/// (clamped to 0..1). `None` when the change names no build, the stacks are not known, the
/// build was already a large part of the service before (not new near the change point), or
/// the change is too small to split.
fn build_carried(ctx: &Context<'_>, c: &Candidate, func: &str, build: &str) -> Option<f64> {
    if build.is_empty() {
        return None;
    }
    let s = ctx.series;
    let time = |b: usize| s.start + b as i64 * s.step;
    let before = (time(c.before_span.0), time(c.before_span.1));
    let after = (time(c.after_span.0), time(c.after_span.1));
    let src: &dyn StackSource = ctx.stacks;
    let read = |build: Option<&str>, (from, to): (i64, i64)| {
        let got = match build {
            Some(b) => src.build_stacks(&s.service, b, from, to),
            None => src.stacks(&s.service, from, to),
        };
        got.map_err(|e| tracing::debug!(error = %e, build, "no build evidence"))
            .ok()
    };
    let (all_before, all_after) = (read(None, before)?, read(None, after)?);
    let (of_before, of_after) = (read(Some(build), before)?, read(Some(build), after)?);
    let weight = |r: &(String, u64, f64)| match c.metric {
        Metric::Cpu => r.1 as f64,
        Metric::Energy => r.2,
    };
    let through = |rows: &[(String, u64, f64)]| -> (f64, f64) {
        let total: f64 = rows.iter().map(weight).sum();
        let f: f64 = (rows.iter())
            .filter(|r| r.0.split(';').any(|fr| fr == func))
            .map(weight)
            .sum();
        (f, total)
    };
    let share = |(f, t): (f64, f64)| (t > 0.0).then(|| f / t);
    let (_, t_before) = through(&all_before);
    let (_, t_new_before) = through(&of_before);
    if t_before <= 0.0 || t_new_before / t_before >= NEW_BUILD_BEFORE {
        return None;
    }
    let b = share(through(&all_before))?;
    let d = share(through(&all_after))? - b;
    let (f_new, t_new) = through(&of_after);
    let w = t_new / through(&all_after).1;
    let a = share((f_new, t_new))?;
    if (d * c.sign()) <= 0.0 || d.abs() < f64::EPSILON {
        return None;
    }
    Some((w * (a - b) / d).clamp(0.0, 1.0))
}

/// A build holding this much of the service before the change point was not new there.
const NEW_BUILD_BEFORE: f64 = 0.5;

#[cfg(test)]
mod tests {
    use wattson_proto::v1::Change;

    use crate::detect::testdata::{DAY, MemStacks, Synth};
    use crate::detect::{DetectConfig, DetectError, StackSource, detect};

    const AT: usize = 5 * DAY;

    /// The synthetic stacks, where build "new" runs every process from `at` on (a full
    /// rollout) and build "old" runs them all the time.
    struct Builds {
        all: MemStacks,
        at: i64,
    }

    impl StackSource for Builds {
        fn stacks(
            &self,
            s: &str,
            from: i64,
            to: i64,
        ) -> Result<Vec<(String, u64, f64)>, DetectError> {
            self.all.stacks(s, from, to)
        }

        fn build_stacks(
            &self,
            s: &str,
            build: &str,
            from: i64,
            to: i64,
        ) -> Result<Vec<(String, u64, f64)>, DetectError> {
            match build {
                "new" if to > self.at => self.all.stacks(s, from.max(self.at), to),
                "old" => self.all.stacks(s, from, to),
                _ => Ok(Vec::new()),
            }
        }
    }

    fn deploy(id: &str, build: &str, at: i64) -> Change {
        Change {
            id: id.into(),
            service: "api".into(),
            at_unix_seconds: at,
            title: id.into(),
            kind: "deploy".into(),
            build_id: build.into(),
            ..Change::default()
        }
    }

    #[test]
    fn a_deploy_whose_new_build_carries_the_change_outscores_timing_alone() {
        let s = Synth::new(7)
            .stack("main;serve;parse", 0.30)
            .stack_fn("main;serve;hash", |b| if b >= AT { 0.105 } else { 0.10 })
            .stack("main;gc", 0.10)
            .stack("main;io", 0.50);
        let (series, all) = s.build(3);
        let t = s.at(AT);
        let src = Builds { all, at: t };
        let changes = [
            deploy("ships-new", "new", t - 120),
            deploy("old-build", "old", t - 120),
        ];
        let r = detect(
            &series,
            &src,
            &changes,
            &DetectConfig::default(),
            s.at(s.buckets),
        )
        .unwrap();
        let hash = (r.regressions.iter())
            .find(|g| g.status == "open" && g.function == "hash")
            .unwrap_or_else(|| panic!("no open regression at hash: {:?}", r.regressions));
        let new = (hash.causes.iter())
            .find(|c| c.change_id == "ships-new")
            .unwrap_or_else(|| panic!("the new build's deploy is not named: {:?}", hash.causes));
        assert!(new.why.contains("samples of build new"), "{}", new.why);
        // Timing alone caps a deploy at 0.6; the build's samples carry the whole change.
        assert!(new.score > 0.9, "{new:?}");
        assert_eq!(hash.causes[0].change_id, "ships-new", "{:?}", hash.causes);
        // A build that ran before the change point as much as after is no evidence.
        if let Some(old) = hash.causes.iter().find(|c| c.change_id == "old-build") {
            assert!(
                old.score <= 0.6 && old.why.contains("timing only"),
                "{old:?}"
            );
        }
    }
}
