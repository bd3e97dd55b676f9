//! What `wattson regressions` and `wattson changes list` print: tables for people (the
//! function that changed, by how much of its service, in watts and fleet watts, how sure, and
//! the change most likely behind it), and the wire messages as JSON arrays for scripts.
//! An answer with nothing to show prints detection's note, never an empty table.

use serde_json::Value;
use wattson_proto::v1::{Change, ListChangesResponse, ListRegressionsResponse, Regression};

use super::table::{self, Align};
use super::{fitted_table, time, watts};

const REGRESSIONS_FOOTNOTE: &str = "DELTA: change of the function's inclusive share of its \
service (CPU samples or energy, METRIC), in percentage points; W: added watts on the profiled \
hosts; fleet W: scaled to the whole fleet; est: estimated from a utilization model, not \
measured; CAUSE: the change that best explains it, with its score (none when no change is \
supported by the evidence)\n";

/// `regressions` as a table; with `all`, also the status and filter of each candidate and the
/// funnel (how many candidates each stage removed).
pub fn regressions_table(r: &ListRegressionsResponse, all: bool, width: usize) -> String {
    let mut out = String::new();
    if r.regressions.is_empty() {
        out.push_str(&match (r.note.is_empty(), r.series) {
            (false, _) => table::wrap(&format!("no regressions: {}", r.note), width),
            (true, n) => format!(
                "no {}regressions in the window ({n} series examined)\n",
                if all { "" } else { "open " }
            ),
        });
    } else {
        let rows: Vec<Vec<String>> = r.regressions.iter().map(|g| row(g, all)).collect();
        let mut head = vec![
            "SERVICE", "FUNCTION", "KIND", "METRIC", "STARTED", "DELTA", "W", "FLEET W", "CONF",
            "CAUSE",
        ];
        if all {
            head.extend(["STATUS", "FILTER"]);
        }
        out.push_str(&fitted_table(&head, &rows, width));
        out.push_str(&table::wrap(REGRESSIONS_FOOTNOTE, width));
        if !r.note.is_empty() {
            out.push_str(&table::wrap(&format!("note: {}", r.note), width));
        }
    }
    if all && !r.funnel.is_empty() {
        out.push_str("\nfunnel (candidates each stage removed):\n");
        let rows: Vec<Vec<String>> = (r.funnel.iter())
            .map(|f| {
                vec![
                    f.stage.clone(),
                    f.candidates_in.to_string(),
                    f.removed.to_string(),
                ]
            })
            .collect();
        out.push_str(&table::render(
            &["STAGE", "IN", "REMOVED"],
            &[Align::Name, Align::Number, Align::Number],
            &rows,
            width,
        ));
    }
    out
}

fn row(g: &Regression, all: bool) -> Vec<String> {
    let function = if g.function.is_empty() {
        "(service total)".to_string()
    } else {
        g.function.clone()
    };
    let cause = g.causes.first().map_or("-".to_string(), |c| {
        format!("{} ({:.2})", c.change_id, c.score)
    });
    let mut r = vec![
        g.service.clone(),
        function,
        g.kind.clone(),
        g.metric.clone(),
        time(g.started_unix_seconds),
        format!("{:+.4}%", g.delta_share * 100.0),
        watts(g.delta_watts, g.estimated),
        watts(g.fleet_delta_watts, g.estimated),
        format!("{:.2}", g.confidence),
        cause,
    ];
    if all {
        r.push(g.status.clone());
        r.push(g.filtered_by.as_ref().map_or(String::new(), |f| {
            if f.detail.is_empty() {
                f.filter.clone()
            } else {
                format!("{}: {}", f.filter, f.detail)
            }
        }));
    }
    r
}

/// `regressions` as JSON: the array of the wire messages as they are.
pub fn regressions_json(r: &ListRegressionsResponse) -> Value {
    serde_json::to_value(&r.regressions).unwrap_or(Value::Null)
}

/// `changes list` as a table, oldest first.
pub fn changes_table(r: &ListChangesResponse, width: usize) -> String {
    if r.changes.is_empty() {
        return "no changes in the window\n".into();
    }
    let rows: Vec<Vec<String>> = r.changes.iter().map(change_row).collect();
    fitted_table(
        &[
            "SERVICE", "ID", "AT", "KIND", "TITLE", "BUILD", "TOUCHED", "AUTHOR",
        ],
        &rows,
        width,
    )
}

fn change_row(c: &Change) -> Vec<String> {
    let kind = if c.automatic {
        format!("{} (auto)", c.kind)
    } else {
        c.kind.clone()
    };
    vec![
        c.service.clone(),
        c.id.clone(),
        time(c.at_unix_seconds),
        kind,
        c.title.clone(),
        c.build_id.clone(),
        c.touched.join(", "),
        c.author.clone(),
    ]
}

/// `changes list` as JSON: the array of the wire messages.
pub fn changes_json(r: &ListChangesResponse) -> Value {
    serde_json::to_value(&r.changes).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattson_proto::v1::{Cause, FilterVerdict, FunnelStage};

    fn regression() -> Regression {
        Regression {
            id: "r1".into(),
            service: "api".into(),
            function: "hash".into(),
            metric: "cpu".into(),
            kind: "step".into(),
            started_unix_seconds: 1_793_577_600,
            delta_share: 0.0123,
            delta_watts: 2.5,
            fleet_delta_watts: 2500.0,
            confidence: 0.97,
            status: "open".into(),
            causes: vec![Cause {
                change_id: "PR-42".into(),
                score: 0.9,
                why: String::new(),
            }],
            ..Regression::default()
        }
    }

    #[test]
    fn a_regression_row_names_function_delta_watts_and_cause() {
        let r = ListRegressionsResponse {
            regressions: vec![regression()],
            series: 10,
            ..Default::default()
        };
        let t = regressions_table(&r, false, usize::MAX);
        for want in [
            "hash",
            "+1.2300%",
            "2.500 W",
            "2.50 kW",
            "0.97",
            "PR-42 (0.90)",
        ] {
            assert!(t.contains(want), "{want:?} missing in\n{t}");
        }
        assert!(!t.contains("funnel"));
        let j = regressions_json(&r);
        assert_eq!(j[0]["function"], "hash");
        assert_eq!(j[0]["causes"][0]["change_id"], "PR-42");
    }

    #[test]
    fn all_shows_filters_and_the_funnel_and_nothing_prints_the_note() {
        let filtered = Regression {
            status: "filtered".into(),
            filtered_by: Some(FilterVerdict {
                filter: "went_away".into(),
                detail: "back to 0.1% after 2 h".into(),
            }),
            causes: vec![],
            ..regression()
        };
        let r = ListRegressionsResponse {
            regressions: vec![filtered],
            funnel: vec![FunnelStage {
                stage: "went_away".into(),
                candidates_in: 7,
                removed: 3,
            }],
            ..Default::default()
        };
        let t = regressions_table(&r, true, usize::MAX);
        assert!(t.contains("went_away: back to 0.1% after 2 h"), "{t}");
        assert!(
            t.contains("funnel") && t.contains("7") && t.contains("3"),
            "{t}"
        );
        let empty = ListRegressionsResponse {
            note: "history too short: 2h of the 24h needed".into(),
            ..Default::default()
        };
        let t = regressions_table(&empty, false, 100);
        assert_eq!(
            t,
            "no regressions: history too short: 2h of the 24h needed\n"
        );
    }
}
