//! The regression solver: for each open regression detection reports (or the one the request
//! names), a report finding composed through the tools: what changed (the regression), which
//! stacks grew and by how much (`diff` of the window before the change point against the
//! window after it), the culprit change (the regression's best cause, described from
//! `changes`), and a mitigation from the catalogue when a pattern explains the growth (the
//! pattern skills run on the grown stacks).

use wattson_proto::v1::{
    Change, Finding, ListChangesRequest, ListRegressionsRequest, Regression, SkillInfo,
};

use super::pattern::short_stack;
use super::profile::{ServiceProfile, Stack, best_line};
use super::{Context, Skill, SkillError};
use crate::analysis::{DiffRequest, StackDelta, wire_window};
use crate::store::Window;

/// Its skill name.
pub const REGRESSION_SOLVER: &str = "regression-solver";

/// Grown stacks shown as evidence.
const SHOWN_STACKS: usize = 5;
/// Stacks the diff returns (the growth is matched against all of them).
const DIFF_STACKS: u32 = 500;
/// Shortest "before" window compared, seconds.
const MIN_SPAN: i64 = 600;

/// Explains regressions through regressions, changes, diff and the pattern skills.
pub struct RegressionSolver;

impl Skill for RegressionSolver {
    fn info(&self) -> SkillInfo {
        SkillInfo {
            name: REGRESSION_SOLVER.into(),
            description: "For each open regression: what changed, the stacks that grew, the \
                          culprit change and a mitigation from the catalogue"
                .into(),
            needs: vec![
                "regressions".into(),
                "changes".into(),
                "diff".into(),
                "stacks".into(),
                "source".into(),
            ],
            origin: "builtin".into(),
        }
    }

    fn run(&self, ctx: &Context<'_>) -> Result<Vec<Finding>, SkillError> {
        let r = ctx.request;
        let listed = ctx.tools.regressions(&ListRegressionsRequest {
            window: Some(wire_window(ctx.window)),
            service: r.service.clone(),
            all: false,
            as_of_unix_seconds: r.as_of_unix_seconds,
        })?;
        let open: Vec<&Regression> = listed
            .regressions
            .iter()
            .filter(|g| g.status == "open")
            .collect();
        let chosen: Vec<&Regression> = if r.regression_id.is_empty() {
            open.clone()
        } else {
            let one: Vec<&Regression> = listed
                .regressions
                .iter()
                .filter(|g| g.id == r.regression_id)
                .collect();
            if one.is_empty() {
                let ids: Vec<&str> = open.iter().map(|g| g.id.as_str()).collect();
                return Err(SkillError::BadRequest(format!(
                    "no regression {:?} in the window; open ones: {}",
                    r.regression_id,
                    if ids.is_empty() {
                        "none".to_string()
                    } else {
                        ids.join(", ")
                    }
                )));
            }
            one
        };
        if chosen.is_empty() {
            ctx.note(if listed.note.is_empty() {
                "no open regression in the window".to_string()
            } else {
                format!("no open regression in the window: {}", listed.note)
            });
            return Ok(Vec::new());
        }
        let changes = match ctx.tools.changes(&ListChangesRequest {
            window: Some(wire_window(ctx.window)),
            service: r.service.clone(),
        }) {
            Ok(c) => c.changes,
            Err(e) => {
                ctx.note(format!("changes could not be listed: {e}"));
                Vec::new()
            }
        };
        chosen
            .into_iter()
            .map(|g| solve(ctx, g, &changes))
            .collect()
    }
}

/// The report of one regression.
fn solve(ctx: &Context<'_>, g: &Regression, changes: &[Change]) -> Result<Finding, SkillError> {
    let pct = |x: f64| x * 100.0;
    let est = if g.estimated { " estimated" } else { "" };
    let mut evidence = vec![format!(
        "what changed: {} in {} went from {:.2}% to {:.2}% of the service's {} ({:+.2} points, \
         a {}) at {}; {:+.3}{est} W on the profiled hosts, {:+.3}{est} W fleet-wide",
        if g.function.is_empty() {
            "the service total"
        } else {
            &g.function
        },
        g.service,
        pct(g.before_share),
        pct(g.after_share),
        if g.metric == "energy" {
            "energy"
        } else {
            "samples"
        },
        pct(g.delta_share),
        if g.kind.is_empty() { "step" } else { &g.kind },
        g.started_unix_seconds,
        g.delta_watts,
        g.fleet_delta_watts,
    )];
    let grown = grown_stacks(ctx, g)?;
    for d in grown.iter().take(SHOWN_STACKS) {
        let frames: Vec<String> = d.folded.split(';').map(str::to_string).collect();
        evidence.push(format!(
            "grew: {}: {:.2}% -> {:.2}% ({:+.2} points)",
            short_stack(&frames),
            pct(d.before_share),
            pct(d.after_share),
            pct(d.after_share - d.before_share)
        ));
    }
    if grown.is_empty() {
        for e in g.evidence.iter().take(SHOWN_STACKS) {
            evidence.push(format!(
                "grew (detection's evidence): {}: {:.2}% -> {:.2}%",
                e.folded,
                pct(e.before_share),
                pct(e.after_share)
            ));
        }
    }
    // The culprit: detection's best-scored cause, described from the change log.
    let mut causes: Vec<_> = g.causes.iter().collect();
    causes.sort_by(|a, b| b.score.total_cmp(&a.score));
    let culprit = causes.first();
    let mut advice = String::new();
    match culprit {
        Some(c) => {
            let what = changes.iter().find(|ch| ch.id == c.change_id).map_or_else(
                || "not in the change log of the window".to_string(),
                |ch| {
                    format!(
                        "{} {:?}{}{} at {}",
                        if ch.kind.is_empty() {
                            "change"
                        } else {
                            &ch.kind
                        },
                        ch.title,
                        if ch.build_id.is_empty() {
                            String::new()
                        } else {
                            format!(", build {}", ch.build_id)
                        },
                        if ch.author.is_empty() {
                            String::new()
                        } else {
                            format!(", by {}", ch.author)
                        },
                        ch.at_unix_seconds
                    )
                },
            );
            evidence.push(format!(
                "culprit: change {} ({what}), score {:.2}: {}",
                c.change_id, c.score, c.why
            ));
            advice = format!(
                "Regression likely caused by change {}: revert it or fix forward.",
                c.change_id
            );
        }
        None => {
            ctx.note(format!(
                "regression {}: detection named no candidate change",
                g.id
            ));
            advice.push_str("No change was found before it: look at config and traffic.");
        }
    }
    let mut finding = Finding {
        skill: REGRESSION_SOLVER.into(),
        service: g.service.clone(),
        function: g.function.clone(),
        share: g.delta_share,
        savings_watts: g.delta_watts.max(0.0),
        savings_fleet_watts: g.fleet_delta_watts.max(0.0),
        savings_model: format!(
            "the regression's added {:.3}{est} W ({:.3}{est} W fleet-wide), recovered by \
             reverting or fixing the culprit",
            g.delta_watts, g.fleet_delta_watts
        ),
        estimated: g.estimated,
        confidence: g.confidence * culprit.map_or(0.5, |c| 0.5 + c.score / 2.0),
        regression_id: g.id.clone(),
        change_id: culprit.map(|c| c.change_id.clone()).unwrap_or_default(),
        ..Finding::default()
    };
    // Mitigation: the pattern that explains most of the growth, above its own threshold.
    if let Some(m) = mitigation(ctx, g, &grown) {
        evidence.push(format!(
            "mitigation: {} explains {:.0}% of the growth",
            m.skill,
            m.share * 100.0
        ));
        advice.push(' ');
        advice.push_str(&m.advice);
        finding.location = m.location;
        finding.patch = m.patch;
        if finding.function.is_empty() {
            finding.function = m.function;
        }
    } else if !g.function.is_empty() {
        let lines = ctx
            .tools
            .source(&g.service, &g.function, ctx.window)
            .unwrap_or_default();
        finding.location =
            best_line(&lines, &g.function, "").map(|l| wattson_proto::v1::SourceLocation {
                file: l.file.clone(),
                line: l.line,
                function: l.function.clone(),
            });
    }
    finding.evidence = evidence;
    finding.advice = advice;
    Ok(finding)
}

/// Stacks of the regressed function (or service) whose share grew from the window before the
/// change point to the window after it, most growth first.
fn grown_stacks(ctx: &Context<'_>, g: &Regression) -> Result<Vec<StackDelta>, SkillError> {
    let to = ctx.window.to.max(g.started_unix_seconds + 60);
    let span = (to - g.started_unix_seconds).max(MIN_SPAN);
    let before = Window {
        from: g.started_unix_seconds - span,
        to: g.started_unix_seconds,
    };
    let diff = ctx.tools.diff(&DiffRequest {
        from: g.started_unix_seconds,
        to,
        baseline_from: before.from,
        baseline_to: before.to,
        service: g.service.clone(),
        weight: "samples".into(),
        limit: DIFF_STACKS,
        ..DiffRequest::default()
    });
    let diff = match diff {
        Ok(d) => d,
        Err(e) => {
            ctx.note(format!("regression {}: no diff of its windows: {e}", g.id));
            return Ok(Vec::new());
        }
    };
    Ok(diff
        .stacks
        .into_iter()
        .filter(|d| {
            d.after_share > d.before_share
                && (g.function.is_empty() || d.folded.split(';').any(|f| f == g.function))
        })
        .collect())
}

/// The best pattern finding over the grown part of the stacks: each grown stack weighs its
/// growth, so a pattern's share is the part of the growth it explains.
fn mitigation(ctx: &Context<'_>, g: &Regression, grown: &[StackDelta]) -> Option<Finding> {
    const SCALE: f64 = 1e6;
    let stacks: Vec<Stack> = grown
        .iter()
        .map(|d| Stack {
            frames: d.folded.split(';').map(str::to_string).collect(),
            samples: ((d.after_share - d.before_share) * SCALE).round() as u64,
            joules: 0.0,
        })
        .filter(|s| s.samples > 0)
        .collect();
    let sp = ServiceProfile {
        service: g.service.clone(),
        samples: stacks.iter().map(|s| s.samples).sum(),
        stacks,
        ..ServiceProfile::default()
    };
    ctx.patterns()
        .iter()
        .filter_map(|p| p.evidence(&sp).map(|m| (p, m)))
        .max_by(|(_, a), (_, b)| a.samples.cmp(&b.samples))
        .map(|(p, m)| p.finding(ctx, &sp, &m))
}
