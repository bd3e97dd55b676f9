//! Query planning shared by the SQL backends: which resolution covers which part of a window,
//! the column list every sum uses, and how `top` ranks. Keeping this in one place is what makes
//! SQLite and ClickHouse return the same figures for the same query.

use super::rollup::{RES_HOUR, RES_MINUTE, split_hours, split_stack_key};
use super::{Keyed, Rank, StoreError, Totals, Window};

/// The summed columns, in [`super::Totals`] field order.
pub const TOTALS_COLUMNS: [&str; 10] = [
    "samples_self",
    "samples_incl",
    "uj_self",
    "uj_incl",
    "est_uj_self",
    "est_uj_incl",
    "idle_uj",
    "est_idle_uj",
    "duration_ms",
    "dropped",
];

/// A range of rows of one resolution: `minute` in `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Resolution code.
    pub res: u8,
    /// Start, Unix seconds (inclusive).
    pub from: i64,
    /// End, Unix seconds (exclusive).
    pub to: i64,
}

/// The non-empty ranges that together cover a minute-aligned window exactly once: whole hours
/// from hour rows (when `hours` allows, and only hours ending by `complete_before`, an hour
/// boundary) and the rest from minute rows.
pub fn ranges(w: Window, hours: bool, complete_before: i64) -> Vec<Range> {
    let (h0, h1) = if hours {
        split_hours(w.from, w.to.min(complete_before))
    } else {
        (w.to, w.to)
    };
    // Hours end where complete hour rows end; minute rows cover the rest of the window.
    let (h0, h1) = if h0 < h1 { (h0, h1) } else { (w.to, w.to) };
    [
        Range {
            res: RES_HOUR,
            from: h0,
            to: h1,
        },
        Range {
            res: RES_MINUTE,
            from: w.from,
            to: h0,
        },
        Range {
            res: RES_MINUTE,
            from: h1,
            to: w.to,
        },
    ]
    .into_iter()
    .filter(|r| r.from < r.to)
    .collect()
}

/// SQL expression `top` orders by (descending), over summed columns.
pub fn rank_expr(rank: Rank) -> &'static str {
    match rank {
        Rank::EnergySelf => "sum(uj_self) + sum(est_uj_self)",
        Rank::EnergyInclusive => "sum(uj_incl) + sum(est_uj_incl)",
        Rank::SamplesSelf => "sum(samples_self)",
        Rank::SamplesInclusive => "sum(samples_incl)",
    }
}

/// Sorts rows as `top` ranks them (descending, ties by service and key), like [`rank_expr`].
pub fn rank_sort(rows: &mut [Keyed], rank: Rank) {
    let value = |t: &Totals| match rank {
        Rank::EnergySelf => t.uj_self_all(),
        Rank::EnergyInclusive => t.uj_incl_all(),
        Rank::SamplesSelf => t.samples_self,
        Rank::SamplesInclusive => t.samples_incl,
    };
    rows.sort_by(|a, b| {
        value(&b.totals)
            .cmp(&value(&a.totals))
            .then_with(|| (&a.service, &a.key).cmp(&(&b.service, &b.key)))
    });
}

/// A series step must be a positive multiple of a minute.
pub fn check_step(step: i64) -> Result<i64, StoreError> {
    if step <= 0 || step % 60 != 0 {
        return Err(StoreError::BadQuery(format!(
            "series step {step}s is not a positive multiple of 60s"
        )));
    }
    Ok(step)
}

/// Stack rows as stored (key `BUILD \t FOLDED`, see [`super::rollup::stack_key`]) to stack
/// rows keyed by folded stack: only build `build` when given, else summed over builds; sorted
/// by (service, folded).
pub fn fold_builds(rows: Vec<Keyed>, build: Option<&str>) -> Vec<Keyed> {
    let mut out: foldhash::HashMap<(String, String), Keyed> = Default::default();
    for r in rows {
        let (b, folded) = split_stack_key(&r.key);
        if build.is_some_and(|want| want != b) {
            continue;
        }
        let k = (r.service.clone(), folded.to_string());
        match out.get_mut(&k) {
            Some(e) => e.totals.add(&r.totals),
            None => {
                let mut e = r.clone();
                e.key = folded.to_string();
                out.insert(k, e);
            }
        }
    }
    let mut v: Vec<Keyed> = out.into_values().collect();
    v.sort_by(|a, b| (&a.service, &a.key).cmp(&(&b.service, &b.key)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_window_once() {
        // 00:30 .. 03:10 -> minutes 00:30..01:00, hours 01:00..03:00, minutes 03:00..03:10.
        let w = Window {
            from: 1800,
            to: 3 * 3600 + 600,
        };
        let r = ranges(w, true, i64::MAX);
        assert_eq!(r.len(), 3);
        let covered: i64 = r.iter().map(|r| r.to - r.from).sum();
        assert_eq!(covered, w.to - w.from);
        assert!(r.contains(&Range {
            res: RES_HOUR,
            from: 3600,
            to: 3 * 3600
        }));
        // Inside one hour: minute rows only.
        let r = ranges(Window { from: 60, to: 600 }, true, i64::MAX);
        assert_eq!(
            r,
            vec![Range {
                res: RES_MINUTE,
                from: 60,
                to: 600
            }]
        );
        // Hour rows complete only before 2h: the third hour comes from minute rows.
        let r = ranges(w, true, 2 * 3600);
        assert_eq!(
            r,
            vec![
                Range {
                    res: RES_HOUR,
                    from: 3600,
                    to: 2 * 3600
                },
                Range {
                    res: RES_MINUTE,
                    from: 1800,
                    to: 3600
                },
                Range {
                    res: RES_MINUTE,
                    from: 2 * 3600,
                    to: 3 * 3600 + 600
                },
            ]
        );
        // None complete: minute rows only.
        let r = ranges(w, true, 3600);
        assert_eq!(
            r,
            vec![Range {
                res: RES_MINUTE,
                from: 1800,
                to: 3 * 3600 + 600
            }]
        );
    }
}
