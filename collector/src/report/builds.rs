//! Builds (versions) of services: `wattson builds` lists them, and `wattson diff --build-a OLD
//! --build-b NEW` compares two versions of the same code by each function's share of its
//! build's self weight (energy or samples), from the stacks of each build over one window.
//! Shares, not rates: the two builds rarely run on the same number of hosts (a canary runs on
//! a few), and a function that got costlier grows its share on any number of hosts.

use std::collections::HashMap;

use serde_json::{Value, json};
use wattson_proto::v1::{BuildsResponse, StackRow};

use super::{Diff, DiffRow, fitted_table, largest_changes, window_line, window_value};
use crate::flame::Weight;

/// Self weight per (service, leaf function) of one build's stacks, and their total.
fn leaf_weights(stacks: &[StackRow], w: Weight) -> (HashMap<(String, String), f64>, f64) {
    let mut by_leaf: HashMap<(String, String), f64> = HashMap::new();
    let mut total = 0.0;
    for s in stacks {
        let v = match w {
            Weight::Energy => s.joules_measured + s.joules_estimated,
            Weight::Samples => s.samples as f64,
        };
        // Folded stacks are root first: the leaf is the last frame.
        let leaf = s.folded.rsplit(';').next().unwrap_or_default();
        *by_leaf
            .entry((s.service.clone(), leaf.to_string()))
            .or_default() += v;
        total += v;
    }
    (by_leaf, total)
}

/// Per (service, function): its percentage of build A's and of build B's self weight, the
/// `limit` largest changes first.
pub fn build_diff(a: &[StackRow], b: &[StackRow], w: Weight, limit: usize) -> Diff {
    let estimated = w == Weight::Energy && a.iter().chain(b).any(|s| s.joules_estimated > 0.0);
    let (wa, ta) = leaf_weights(a, w);
    let (wb, tb) = leaf_weights(b, w);
    let share = |v: f64, total: f64| if total > 0.0 { v / total * 100.0 } else { 0.0 };
    let mut rows: HashMap<(String, String), DiffRow> = HashMap::new();
    for (side, (weights, total)) in [(0, (&wa, ta)), (1, (&wb, tb))] {
        for ((service, function), v) in weights {
            let r = rows
                .entry((service.clone(), function.clone()))
                .or_insert_with(|| DiffRow {
                    service: service.clone(),
                    function: function.clone(),
                    before: 0.0,
                    after: 0.0,
                    estimated,
                });
            if side == 0 {
                r.before = share(*v, total);
            } else {
                r.after = share(*v, total);
            }
        }
    }
    Diff {
        unit: "% of build",
        sides: ["build_a", "build_b"],
        rows: largest_changes(rows.into_values().collect(), limit),
    }
}

/// `builds` as a table: one line per (service, build), joules labelled estimated when any are.
pub fn builds_table(r: &BuildsResponse, width: usize) -> String {
    let rows: Vec<Vec<String>> = r
        .builds
        .iter()
        .map(|b| {
            let est = if b.joules_estimated > 0.0 { " est" } else { "" };
            vec![
                b.service.clone(),
                if b.build_id.is_empty() {
                    "(unknown)".into()
                } else {
                    b.build_id.clone()
                },
                b.samples.to_string(),
                format!("{:.1}{est}", b.joules_measured + b.joules_estimated),
            ]
        })
        .collect();
    let mut out = window_line(r.window.as_ref());
    out.push_str(&fitted_table(
        &["SERVICE", "BUILD ID", "SAMPLES", "JOULES"],
        &rows,
        width,
    ));
    out
}

/// `builds` as JSON.
pub fn builds_json(r: &BuildsResponse) -> Value {
    json!({
        "window": window_value(r.window.as_ref()),
        "builds": r.builds.iter().map(|b| json!({
            "service": b.service, "build_id": b.build_id, "samples": b.samples,
            "joules_measured": b.joules_measured, "joules_estimated": b.joules_estimated,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(folded: &str, samples: u64, joules: f64) -> StackRow {
        StackRow {
            service: "api".into(),
            folded: folded.into(),
            samples,
            joules_measured: joules,
            joules_estimated: 0.0,
        }
    }

    /// Build B runs on a tenth of the hosts but spends twice the share in `hash`: the diff
    /// shows the share moving, not B's smaller absolute figures.
    #[test]
    fn shares_not_rates() {
        let a = [
            stack("main;serve;hash", 200, 20.0),
            stack("main;serve;parse", 800, 80.0),
        ];
        let b = [
            stack("main;serve;hash", 40, 4.0),
            stack("main;serve;parse", 60, 6.0),
        ];
        let d = build_diff(&a, &b, Weight::Energy, 10);
        assert_eq!(d.unit, "% of build");
        assert_eq!(d.rows.len(), 2);
        let hash = d.rows.iter().find(|r| r.function == "hash").unwrap();
        assert!((hash.before - 20.0).abs() < 1e-9 && (hash.after - 40.0).abs() < 1e-9);
        let parse = d.rows.iter().find(|r| r.function == "parse").unwrap();
        assert!((parse.before - 80.0).abs() < 1e-9 && (parse.after - 60.0).abs() < 1e-9);
        assert!(!hash.estimated);
    }

    /// A function only one build has is 0% in the other, and leaves are summed over stacks.
    #[test]
    fn new_functions_and_summed_leaves() {
        let a = [stack("main;a;leaf", 5, 0.0), stack("main;b;leaf", 5, 0.0)];
        let b = [stack("main;a;leaf", 5, 0.0), stack("main;fresh", 5, 0.0)];
        let d = build_diff(&a, &b, Weight::Samples, 10);
        let leaf = d.rows.iter().find(|r| r.function == "leaf").unwrap();
        assert_eq!((leaf.before, leaf.after), (100.0, 50.0));
        let fresh = d.rows.iter().find(|r| r.function == "fresh").unwrap();
        assert_eq!((fresh.before, fresh.after), (0.0, 50.0));
    }
}
