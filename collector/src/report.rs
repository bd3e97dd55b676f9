//! What the `wattson` CLI prints: tables for people and JSON for scripts, from query
//! responses; the time syntax of `--from`/`--to`; and the `diff` computation. Watts built from
//! model estimates carry "est" in tables and `"estimated": true` in JSON. Tables fit a width
//! ([`table`]: long names lose their middle); JSON always carries names whole.

mod builds;
mod regressions;
mod table;

pub use builds::{build_diff, builds_json, builds_table};
pub use regressions::{changes_json, changes_table, regressions_json, regressions_table};

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::{Value, json};
use wattson_proto::v1::{Power, PowerResponse, SeriesResponse, TimeWindow, TopResponse};

use crate::flame::Weight;
use table::Align::{Name, Number};

/// Errors parsing a time.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read time {0:?}: use now, -2h (ago), Unix seconds, or RFC 3339 like 2026-11-25T18:00:00Z"
)]
pub struct TimeError(String);

/// Now, Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Parses `now`, `-2h` or `2h` (ago), Unix seconds, or RFC 3339.
pub fn parse_time(s: &str, now: i64) -> Result<i64, TimeError> {
    let s = s.trim();
    if s == "now" {
        return Ok(now);
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| TimeError(s.into()));
    }
    let ago = s.strip_prefix('-').unwrap_or(s);
    if let Ok(d) = humantime::parse_duration(ago) {
        return Ok(now - d.as_secs() as i64);
    }
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .ok_or_else(|| TimeError(s.into()))
}

/// "samples" or "energy".
pub fn weight_label(w: Weight) -> &'static str {
    match w {
        Weight::Samples => "samples",
        Weight::Energy => "energy",
    }
}

fn time(t: i64) -> String {
    match u64::try_from(t) {
        Ok(t) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(t),
        )
        .to_string(),
        Err(_) => t.to_string(),
    }
}

fn window_line(w: Option<&TimeWindow>) -> String {
    w.map_or(String::new(), |w| {
        format!(
            "window {} .. {} ({} s)\n",
            time(w.from_unix_seconds),
            time(w.to_unix_seconds),
            w.to_unix_seconds - w.from_unix_seconds
        )
    })
}

/// Watts with an "est" mark when estimated, e.g. `12.3 W est`.
pub fn watts(w: f64, estimated: bool) -> String {
    let v = if w >= 1e6 {
        format!("{:.3} MW", w / 1e6)
    } else if w >= 1e3 {
        format!("{:.2} kW", w / 1e3)
    } else {
        format!("{w:.3} W")
    };
    if estimated { format!("{v} est") } else { v }
}

fn pw(p: Option<&Power>) -> Power {
    p.cloned().unwrap_or_default()
}

/// JSON of a [`Power`].
pub fn power_value(p: Option<&Power>) -> Value {
    let p = pw(p);
    json!({
        "watts": p.watts, "estimated": p.estimated,
        "joules_measured": p.joules_measured, "joules_estimated": p.joules_estimated,
        "fleet_watts": p.fleet_watts, "facility_watts": p.facility_watts,
        "kwh_per_year": p.kwh_per_year, "co2_kg_per_year": p.co2_kg_per_year,
        "cost_per_year": p.cost_per_year,
    })
}

/// A table whose first two columns are names and the rest figures, fitted to `width`.
fn fitted_table(head: &[&str], rows: &[Vec<String>], width: usize) -> String {
    let align: Vec<_> = (0..head.len())
        .map(|i| if i < 2 { Name } else { Number })
        .collect();
    table::render(head, &align, rows, width)
}

const FOOTNOTE: &str = "W: average on the profiled hosts over the time each reported in the \
window; fleet W: scaled by the profiled fraction of each service's hosts; est: estimated from a \
utilization model, not measured\n";

/// `top` as a table `width` characters wide at most (`usize::MAX`: never cut names). The
/// samples column is inclusive when the rows are ranked by inclusive figures.
pub fn top_table(r: &TopResponse, inclusive: bool, width: usize) -> String {
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|f| {
            let (s, i) = (pw(f.self_power.as_ref()), pw(f.inclusive_power.as_ref()));
            vec![
                f.service.clone(),
                f.function.clone(),
                watts(s.watts, s.estimated),
                watts(i.watts, i.estimated),
                watts(s.fleet_watts, s.estimated),
                format!("{:.1}%", f.cpu_share_self * 100.0),
                format!("{:.1}%", f.cpu_share_inclusive * 100.0),
                if inclusive {
                    f.samples_inclusive
                } else {
                    f.samples_self
                }
                .to_string(),
            ]
        })
        .collect();
    let mut out = window_line(r.window.as_ref());
    out.push_str(&fitted_table(
        &[
            "SERVICE",
            "FUNCTION",
            "SELF W",
            "INCL W",
            "FLEET SELF W",
            "SELF CPU",
            "INCL CPU",
            if inclusive { "INCL SAMPLES" } else { "SAMPLES" },
        ],
        &rows,
        width,
    ));
    out.push_str(&table::wrap(FOOTNOTE, width));
    out
}

/// `top` as JSON.
pub fn top_json(r: &TopResponse) -> Value {
    json!({
        "window": window_value(r.window.as_ref()),
        "currency": r.currency,
        "rows": r.rows.iter().map(|f| json!({
            "service": f.service, "function": f.function,
            "samples_self": f.samples_self, "samples_inclusive": f.samples_inclusive,
            "cpu_share_self": f.cpu_share_self, "cpu_share_inclusive": f.cpu_share_inclusive,
            "self": power_value(f.self_power.as_ref()),
            "inclusive": power_value(f.inclusive_power.as_ref()),
        })).collect::<Vec<_>>(),
    })
}

fn window_value(w: Option<&TimeWindow>) -> Value {
    w.map_or(
        Value::Null,
        |w| json!({"from": w.from_unix_seconds, "to": w.to_unix_seconds}),
    )
}

/// `series` as a table, fitted to `width` like [`top_table`].
pub fn series_table(r: &SeriesResponse, width: usize) -> String {
    let rows: Vec<Vec<String>> = r
        .points
        .iter()
        .map(|p| {
            let (s, i) = (pw(p.self_power.as_ref()), pw(p.inclusive_power.as_ref()));
            vec![
                time(p.at_unix_seconds),
                String::new(),
                watts(s.watts, s.estimated),
                watts(i.watts, i.estimated),
                p.samples_self.to_string(),
                p.samples_inclusive.to_string(),
            ]
        })
        .collect();
    let mut out = window_line(r.window.as_ref());
    let _ = writeln!(out, "step {} s", r.step_seconds);
    out.push_str(&fitted_table(
        &["AT", "", "SELF W", "INCL W", "SELF SAMPLES", "INCL SAMPLES"],
        &rows,
        width,
    ));
    out
}

/// `series` as JSON.
pub fn series_json(r: &SeriesResponse) -> Value {
    json!({
        "window": window_value(r.window.as_ref()),
        "step_seconds": r.step_seconds,
        "points": r.points.iter().map(|p| json!({
            "at": p.at_unix_seconds,
            "samples_self": p.samples_self, "samples_inclusive": p.samples_inclusive,
            "self": power_value(p.self_power.as_ref()),
            "inclusive": power_value(p.inclusive_power.as_ref()),
        })).collect::<Vec<_>>(),
    })
}

/// `power` as a table, fitted to `width` like [`top_table`].
pub fn power_table(r: &PowerResponse, width: usize) -> String {
    let mut rows: Vec<Vec<String>> = r
        .services
        .iter()
        .map(|s| {
            let p = pw(s.power.as_ref());
            vec![
                s.service.clone(),
                format!(
                    "{}/{}{}",
                    s.hosts_reporting,
                    s.fleet_hosts,
                    if s.fleet_configured { "" } else { " (assumed)" }
                ),
                watts(p.watts, p.estimated),
                watts(p.fleet_watts, p.estimated),
                watts(p.facility_watts, p.estimated),
                format!("{:.0}", p.kwh_per_year),
                format!("{:.0}", p.co2_kg_per_year),
                format!("{:.0}", p.cost_per_year),
            ]
        })
        .collect();
    let t = pw(r.total.as_ref());
    rows.push(vec![
        "TOTAL".into(),
        r.hosts_reporting.to_string(),
        watts(t.watts, t.estimated),
        watts(t.fleet_watts, t.estimated),
        watts(t.facility_watts, t.estimated),
        format!("{:.0}", t.kwh_per_year),
        format!("{:.0}", t.co2_kg_per_year),
        format!("{:.0}", t.cost_per_year),
    ]);
    let mut out = window_line(r.window.as_ref());
    let cost = format!("COST/YR {}", r.currency);
    out.push_str(&fitted_table(
        &[
            "SERVICE",
            "HOSTS",
            "W",
            "FLEET W",
            "FACILITY W",
            "KWH/YR",
            "CO2 KG/YR",
            cost.trim(),
        ],
        &rows,
        width,
    ));
    let notes = format!(
        "host idle (not charged to functions): {} on the profiled hosts; samples dropped by \
         agents: {}\nfactors: PUE {}, {} g CO2/kWh, {} {}/kWh (0 = not configured)\n{FOOTNOTE}",
        watts(r.idle_watts, r.idle_estimated),
        r.dropped_samples,
        r.pue,
        r.co2_g_per_kwh,
        r.price_per_kwh,
        r.currency
    );
    out.push_str(&table::wrap(&notes, width));
    out
}

/// `power` as JSON.
pub fn power_json(r: &PowerResponse) -> Value {
    json!({
        "window": window_value(r.window.as_ref()),
        "hosts_reporting": r.hosts_reporting,
        "idle_watts": r.idle_watts, "idle_estimated": r.idle_estimated,
        "dropped_samples": r.dropped_samples,
        "pue": r.pue, "co2_g_per_kwh": r.co2_g_per_kwh, "price_per_kwh": r.price_per_kwh,
        "currency": r.currency,
        "total": power_value(r.total.as_ref()),
        "services": r.services.iter().map(|s| json!({
            "service": s.service, "hosts_reporting": s.hosts_reporting,
            "fleet_hosts": s.fleet_hosts, "fleet_configured": s.fleet_configured,
            "samples": s.samples, "power": power_value(s.power.as_ref()),
        })).collect::<Vec<_>>(),
    })
}

/// One function's change between two windows, as a rate (W or samples/s) of its self weight.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffRow {
    /// Service.
    pub service: String,
    /// Leaf function.
    pub function: String,
    /// Rate in the baseline window.
    pub before: f64,
    /// Rate in the window.
    pub after: f64,
    /// Whether either side is estimated energy.
    pub estimated: bool,
}

/// A diff: rows by largest absolute change.
#[derive(Debug, Clone, PartialEq)]
pub struct Diff {
    /// Unit of `before`/`after`: "W", "samples/s" or "% of build".
    pub unit: &'static str,
    /// What the two sides are, as JSON keys: `["baseline", "window"]` or
    /// `["build_a", "build_b"]`.
    pub sides: [&'static str; 2],
    /// Largest changes first.
    pub rows: Vec<DiffRow>,
}

fn seconds(r: &TopResponse) -> f64 {
    r.window.as_ref().map_or(1.0, |w| {
        (w.to_unix_seconds - w.from_unix_seconds).max(1) as f64
    })
}

/// Per (service, function): self rate in each window from `top` answers (ranked by the same
/// weight), largest absolute changes first. Watts are `top`'s own: each host's joules over the
/// time it reported, so `diff` and `top` agree on a window; samples are per window second.
pub fn diff(before: &TopResponse, after: &TopResponse, w: Weight, limit: usize) -> Diff {
    let mut map: HashMap<(String, String), DiffRow> = HashMap::new();
    for (side, resp) in [(0, before), (1, after)] {
        let secs = seconds(resp);
        for f in &resp.rows {
            let e = map
                .entry((f.service.clone(), f.function.clone()))
                .or_insert_with(|| DiffRow {
                    service: f.service.clone(),
                    function: f.function.clone(),
                    before: 0.0,
                    after: 0.0,
                    estimated: false,
                });
            let power = pw(f.self_power.as_ref());
            let v = match w {
                Weight::Energy => power.watts,
                Weight::Samples => f.samples_self as f64 / secs,
            };
            if side == 0 {
                e.before += v;
            } else {
                e.after += v;
            }
            e.estimated |= w == Weight::Energy && power.estimated;
        }
    }
    Diff {
        unit: match w {
            Weight::Energy => "W",
            Weight::Samples => "samples/s",
        },
        sides: ["baseline", "window"],
        rows: largest_changes(map.into_values().collect(), limit),
    }
}

/// The `limit` rows that changed most, largest absolute change first.
fn largest_changes(mut rows: Vec<DiffRow>, limit: usize) -> Vec<DiffRow> {
    rows.sort_by(|a, b| {
        (b.after - b.before)
            .abs()
            .total_cmp(&(a.after - a.before).abs())
            .then_with(|| (&a.service, &a.function).cmp(&(&b.service, &b.function)))
    });
    rows.truncate(limit);
    rows
}

/// `diff` as a table, fitted to `width` like [`top_table`].
pub fn diff_table(d: &Diff, width: usize) -> String {
    let rows: Vec<Vec<String>> = d
        .rows
        .iter()
        .map(|r| {
            let est = if r.estimated { " est" } else { "" };
            let pct = if r.before > 0.0 {
                format!("{:+.1}%", (r.after - r.before) / r.before * 100.0)
            } else {
                "new".into()
            };
            vec![
                r.service.clone(),
                r.function.clone(),
                format!("{:.3}{est}", r.before),
                format!("{:.3}{est}", r.after),
                format!("{:+.3}{est}", r.after - r.before),
                pct,
            ]
        })
        .collect();
    let [a, b] = d.sides;
    let mut out = format!("self {} per function, {a} vs {b}\n", d.unit);
    let (a, b) = (a.to_uppercase(), b.to_uppercase());
    out.push_str(&fitted_table(
        &["SERVICE", "FUNCTION", &a, &b, "DELTA", "CHANGE"],
        &rows,
        width,
    ));
    out
}

/// `diff` as JSON.
pub fn diff_json(d: &Diff) -> Value {
    let [a, b] = d.sides;
    json!({
        "unit": d.unit,
        "rows": d.rows.iter().map(|r| {
            let mut row = json!({
                "service": r.service, "function": r.function,
                "delta": r.after - r.before, "estimated": r.estimated,
            });
            row[a] = json!(r.before);
            row[b] = json!(r.after);
            row
        }).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let now = 1_000_000;
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(parse_time("-2h", now).unwrap(), now - 7200);
        assert_eq!(parse_time("90s", now).unwrap(), now - 90);
        assert_eq!(parse_time("1700000000", now).unwrap(), 1_700_000_000);
        assert_eq!(
            parse_time("2026-11-02T00:00:00Z", now).unwrap(),
            1_793_577_600
        );
        assert!(parse_time("yesterday-ish", now).is_err());
        assert_eq!(watts(1500.0, true), "1.50 kW est");
    }

    /// Regression: a Rust generic hundreds of characters long made every `top` row wrap.
    #[test]
    fn top_table_fits_the_width_and_json_keeps_names_whole() {
        let long = format!(
            "<hashbrown::map::HashMap<K,V,S,A> as core::iter::traits::collect::Extend<(K,V)>>\
             ::extend::{{{{closure}}}}<{}>::fold_impl",
            "alloc::string::String,".repeat(12)
        );
        let r = TopResponse {
            window: Some(TimeWindow {
                from_unix_seconds: 0,
                to_unix_seconds: 600,
            }),
            rows: vec![wattson_proto::v1::FunctionRow {
                service: "api".into(),
                function: long.clone(),
                samples_self: 123_456,
                self_power: Some(Power {
                    watts: 42.5,
                    estimated: true,
                    ..Power::default()
                }),
                ..Default::default()
            }],
            currency: String::new(),
        };
        // The figures alone take 75 columns; 100 leaves the name 25.
        for width in [100, 132] {
            let t = top_table(&r, false, width);
            for l in t.lines() {
                assert!(l.chars().count() <= width, "{width}: {l:?}");
            }
            let row = t.lines().find(|l| l.starts_with("api")).unwrap();
            assert!(
                row.contains("<hashbrown::") && row.contains("::fold_impl"),
                "{row}"
            );
            assert!(
                row.contains("42.500 W est") && row.ends_with("123456"),
                "{row}"
            );
        }
        assert!(top_table(&r, false, usize::MAX).contains(&long));
        // Ranked by inclusive samples, the table shows them.
        let mut incl = r.clone();
        incl.rows[0].samples_inclusive = 654_321;
        let t = top_table(&incl, true, 200);
        assert!(t.contains("INCL SAMPLES"), "{t}");
        let row = t.lines().find(|l| l.starts_with("api")).unwrap();
        assert!(row.ends_with("654321"), "{row}");
        assert_eq!(top_json(&r)["rows"][0]["function"], long.as_str());
    }

    #[test]
    fn diff_ranks_by_rate_change() {
        let w = |f, t| {
            Some(TimeWindow {
                from_unix_seconds: f,
                to_unix_seconds: t,
            })
        };
        let row = |f: &str, watts: f64, samples: u64| wattson_proto::v1::FunctionRow {
            service: "api".into(),
            function: f.into(),
            samples_self: samples,
            self_power: Some(Power {
                watts,
                ..Power::default()
            }),
            ..Default::default()
        };
        let before = TopResponse {
            window: w(0, 10),
            rows: vec![row("a", 1.0, 10), row("b", 1.0, 10)],
            currency: String::new(),
        };
        // Twice as long a window: b's rate stays 1 W, a's doubles to 2 W.
        let after = TopResponse {
            window: w(0, 20),
            rows: vec![row("a", 2.0, 40), row("b", 1.0, 20)],
            currency: String::new(),
        };
        let d = diff(&before, &after, Weight::Energy, 10);
        assert_eq!(d.rows[0].function, "a");
        assert_eq!((d.rows[0].before, d.rows[0].after), (1.0, 2.0));
        assert_eq!(d.rows[1].after - d.rows[1].before, 0.0);
        let d = diff(&before, &after, Weight::Samples, 10);
        assert_eq!((d.rows[0].before, d.rows[0].after), (1.0, 2.0));
    }
}
