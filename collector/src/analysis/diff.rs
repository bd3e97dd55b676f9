//! `diff` as a tool: a baseline window against a window, or build A against build B over a
//! window. Function rows are computed by [`crate::report::diff`] and
//! [`crate::report::build_diff`], the same code as `wattson diff`; stack rows (each folded
//! stack's share of its service on both sides) show which stacks grew.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use wattson_proto::v1::{RankBy, StackRow, StacksRequest, TimeWindow, TopRequest};

use super::{ToolError, Tools, store_window, wire_window};
use crate::flame::Weight;
use crate::report;

/// Functions compared per window (the collector's largest `top`).
const DIFF_FUNCTIONS: u32 = 10_000;
/// Rows returned when the request asks for 0.
const DEFAULT_LIMIT: u32 = 20;

/// What to compare: two windows (`baseline_*` set) or two builds (`build_a`/`build_b` set)
/// over `from..to`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiffRequest {
    /// The window (the "after" side of a window diff), Unix seconds.
    pub from: i64,
    /// End of the window, Unix seconds.
    pub to: i64,
    /// Baseline window start, Unix seconds (window diff).
    pub baseline_from: i64,
    /// Baseline window end (0 with `baseline_from` 0: a build diff).
    pub baseline_to: i64,
    /// Old build id (build diff).
    pub build_a: String,
    /// New build id (build diff).
    pub build_b: String,
    /// Only this service ("" for all).
    pub service: String,
    /// "energy" (default) or "samples".
    pub weight: String,
    /// Rows of each table (0 means 20).
    pub limit: u32,
}

/// One function's change: self rate (W, samples/s) or share of its build (%).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionDelta {
    /// Service.
    pub service: String,
    /// Leaf function.
    pub function: String,
    /// Baseline side.
    pub before: f64,
    /// New side.
    pub after: f64,
    /// `after - before`.
    pub delta: f64,
    /// Either side is estimated energy.
    pub estimated: bool,
}

/// One folded stack's share of its service (samples or energy) on both sides.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackDelta {
    /// Service.
    pub service: String,
    /// Frames root first, `;`-separated.
    pub folded: String,
    /// Share of the service on the baseline side, 0..1.
    pub before_share: f64,
    /// Share of the service on the new side, 0..1.
    pub after_share: f64,
}

/// A diff's answer: largest changes first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffResponse {
    /// Unit of the function rows: "W", "samples/s" or "% of build".
    pub unit: String,
    /// What the two sides are: `["baseline", "window"]` or `["build_a", "build_b"]`.
    pub sides: [String; 2],
    /// Functions by largest absolute change.
    pub functions: Vec<FunctionDelta>,
    /// Stacks by largest absolute change of share.
    pub stacks: Vec<StackDelta>,
    /// True when any energy figure is estimated (no RAPL).
    pub estimated: bool,
}

pub(super) fn run(tools: &Tools, r: &DiffRequest) -> Result<DiffResponse, ToolError> {
    let weight = match r.weight.as_str() {
        "" | "energy" => Weight::Energy,
        "samples" => Weight::Samples,
        w => {
            return Err(ToolError::BadRequest(format!(
                "diff weight {w:?} is neither \"energy\" nor \"samples\""
            )));
        }
    };
    let limit = if r.limit == 0 { DEFAULT_LIMIT } else { r.limit } as usize;
    let window = store_window(Some(&TimeWindow {
        from_unix_seconds: r.from,
        to_unix_seconds: r.to,
    }))?;
    let by_builds = !r.build_a.is_empty() || !r.build_b.is_empty();
    let by_windows = r.baseline_from != 0 || r.baseline_to != 0;
    let stacks = |w, build: &str| {
        tools.stacks(&StacksRequest {
            window: Some(wire_window(w)),
            service: r.service.clone(),
            build_id: build.into(),
        })
    };
    let (d, before, after) = match (by_builds, by_windows) {
        (true, false) => {
            if r.build_a.is_empty() || r.build_b.is_empty() {
                return Err(ToolError::BadRequest(
                    "a build diff needs both build_a and build_b".into(),
                ));
            }
            let before = stacks(window, &r.build_a)?.stacks;
            let after = stacks(window, &r.build_b)?.stacks;
            let d = report::build_diff(&before, &after, weight, limit);
            (d, before, after)
        }
        (false, true) => {
            let baseline = store_window(Some(&TimeWindow {
                from_unix_seconds: r.baseline_from,
                to_unix_seconds: r.baseline_to,
            }))?;
            let rank = match weight {
                Weight::Energy => RankBy::EnergySelf,
                Weight::Samples => RankBy::SamplesSelf,
            };
            let top = |w| {
                tools.top(&TopRequest {
                    window: Some(wire_window(w)),
                    service: r.service.clone(),
                    rank: rank as i32,
                    limit: DIFF_FUNCTIONS,
                })
            };
            let d = report::diff(&top(baseline)?, &top(window)?, weight, limit);
            (d, stacks(baseline, "")?.stacks, stacks(window, "")?.stacks)
        }
        _ => {
            return Err(ToolError::BadRequest(
                "diff needs either a baseline window (baseline_from, baseline_to) or two \
                 builds (build_a, build_b), not both"
                    .into(),
            ));
        }
    };
    let estimated = weight == Weight::Energy
        && before
            .iter()
            .chain(&after)
            .any(|s| s.joules_estimated > 0.0);
    Ok(DiffResponse {
        unit: d.unit.into(),
        sides: d.sides.map(String::from),
        functions: d
            .rows
            .into_iter()
            .map(|row| FunctionDelta {
                delta: row.after - row.before,
                service: row.service,
                function: row.function,
                before: row.before,
                after: row.after,
                estimated: row.estimated,
            })
            .collect(),
        stacks: stack_deltas(&before, &after, weight, limit),
        estimated,
    })
}

/// Each stack's share of its service on both sides, largest absolute change first.
pub fn stack_deltas(
    before: &[StackRow],
    after: &[StackRow],
    weight: Weight,
    limit: usize,
) -> Vec<StackDelta> {
    let shares = |rows: &[StackRow]| {
        let value = |s: &StackRow| match weight {
            Weight::Samples => s.samples as f64,
            Weight::Energy => s.joules_measured + s.joules_estimated,
        };
        let mut totals: HashMap<&str, f64> = HashMap::new();
        for s in rows {
            *totals.entry(&s.service).or_default() += value(s);
        }
        let mut out: HashMap<(String, String), f64> = HashMap::new();
        for s in rows {
            let total = totals[s.service.as_str()];
            if total > 0.0 {
                *out.entry((s.service.clone(), s.folded.clone()))
                    .or_default() += value(s) / total;
            }
        }
        out
    };
    let (b, mut a) = (shares(before), shares(after));
    let mut rows: Vec<StackDelta> = Vec::with_capacity(b.len() + a.len());
    for ((service, folded), before_share) in b {
        let after_share = a.remove(&(service.clone(), folded.clone())).unwrap_or(0.0);
        rows.push(StackDelta {
            service,
            folded,
            before_share,
            after_share,
        });
    }
    rows.extend(
        a.into_iter()
            .map(|((service, folded), after_share)| StackDelta {
                service,
                folded,
                before_share: 0.0,
                after_share,
            }),
    );
    rows.sort_by(|x, y| {
        (y.after_share - y.before_share)
            .abs()
            .total_cmp(&(x.after_share - x.before_share).abs())
            .then_with(|| (&x.service, &x.folded).cmp(&(&y.service, &y.folded)))
    });
    rows.truncate(limit);
    rows
}
