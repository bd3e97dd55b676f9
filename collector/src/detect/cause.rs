//! Root cause: ranks the service's changes near a change point by the share of the change
//! carried by stacks through functions each change touched, and by timing (how close before
//! the change point it took effect). A change is named only when its score clears
//! `cause_min_score`; with no touched functions recorded, timing alone can name a deploy of a
//! new build (the build that shipped exactly then), weighted down, and never anything else.

use wattson_proto::v1;

use super::DetectConfig;
use super::candidate::Candidate;
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
    c: &Candidate,
    func: &str,
    service: &str,
    started: i64,
    step: i64,
    changes: &[v1::Change],
    w: Option<&Window>,
    cfg: &DetectConfig,
) -> Vec<v1::Cause> {
    let tol = cfg.cause_tolerance_steps * step;
    let mut out: Vec<(v1::Cause, i64)> = Vec::new();
    for ch in changes {
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
        let (score, why) = if ch.touched.is_empty() {
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
