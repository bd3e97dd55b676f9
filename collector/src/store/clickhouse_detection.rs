//! What detection reads and keeps in the ClickHouse store: the `changes` table and the bulk
//! per-step reads ([`Buckets`]) of a service's functions and totals, plus the first minute each
//! build was seen. Checked against server 18.16.
//!
//! 18.16 has no UPDATE or DELETE but mutations, too heavy per change: `changes` is a
//! `ReplacingMergeTree` of versions, one row per write (a deletion is a row with
//! `deleted = 1`), and reads take each id's latest version with `argMax`, so an unmerged table
//! answers the same as a merged one.

use std::sync::atomic::{AtomicU64, Ordering};

use wattson_proto::v1::Change;

use super::{Http, condition, quote, unescape};
use crate::store::query_plan::ranges;
use crate::store::rollup::{Kind, RES_DETECT, RES_MINUTE};
use crate::store::{Buckets, FirstSeen, Of, StoreError, Window};

/// Creates the changes table when missing.
pub(super) fn create(http: &Http) -> Result<(), StoreError> {
    http.exec(
        &format!(
            "CREATE TABLE IF NOT EXISTS {}.changes (id String, service String, at Int64, \
             title String, kind String, build_id String, touched String, author String, \
             url String, automatic UInt8, deleted UInt8, version UInt64) \
             ENGINE = ReplacingMergeTree(version) ORDER BY id",
            http.db
        ),
        None,
    )?;
    Ok(())
}

/// Fills `b` with the rows of `service` that `of` names, summed per (key, bucket) by the server:
/// from detection's five-minute rows when the step allows ([`Buckets::five_minute`]), else from minute
/// and hour rows.
///
/// ClickHouse's `sum` of UInt64 wraps silently; each sum is also taken in Float64, and a sum
/// whose float passes `u64::MAX` is read as `u64::MAX` (saturating, like every other sum).
pub(super) fn buckets(
    http: &Http,
    of: Of,
    service: &str,
    mut b: Buckets,
) -> Result<Buckets, StoreError> {
    let (kind, key, cols) = match of {
        Of::Functions => (
            Kind::Function,
            "key",
            ["samples_incl", "uj_incl", "est_uj_incl"],
        ),
        Of::Totals => (
            Kind::Service,
            "''",
            ["samples_self", "uj_self", "est_uj_self"],
        ),
    };
    let filter = if b.five_minute() {
        let w = b.window();
        format!(
            "kind = {} AND res = {RES_DETECT} AND minute >= toDateTime({}) \
             AND minute < toDateTime({})",
            kind as u8,
            w.from.max(0),
            w.to.clamp(0, u32::MAX as i64)
        )
    } else {
        condition(
            kind as u8,
            &ranges(b.window(), b.step % 3600 == 0, i64::MAX),
        )
    };
    let sums: Vec<String> = (cols.iter())
        .map(|c| format!("sum({c}), sum(toFloat64({c}))"))
        .collect();
    let sql = format!(
        "SELECT {key} AS k, intDiv(toInt64(toUInt32(minute)) - {from}, {step}) * {step} + {from} \
         AS bucket, {cols} FROM {db}.rollup WHERE {filter} AND service = {s} \
         GROUP BY k, bucket ORDER BY k, bucket",
        from = b.start,
        step = b.step,
        cols = sums.join(", "),
        db = http.db,
        s = quote(service)
    );
    for line in http.query(&sql)?.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let bad = |i: usize| http.error(format!("unexpected answer row {f:?}: column {i}"));
        let num = |i: usize| -> Result<u64, StoreError> {
            f.get(i).and_then(|s| s.parse().ok()).ok_or_else(|| bad(i))
        };
        let sum = |i: usize| -> Result<u64, StoreError> {
            let wide: f64 = f
                .get(i + 1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(i + 1))?;
            Ok(unwrapped(num(i)?, wide))
        };
        let key = unescape(f.first().copied().unwrap_or(""));
        b.add(&key, num(1)? as i64, (sum(2)?, sum(4)?, sum(6)?));
    }
    Ok(b.finish())
}

/// A UInt64 sum as ClickHouse returned it (`exact`, wrapped past 2^64) and the same sum in
/// Float64: the exact one unless the float shows it wrapped, then `u64::MAX`.
pub(super) fn unwrapped(exact: u64, wide: f64) -> u64 {
    if wide >= u64::MAX as f64 {
        u64::MAX
    } else {
        exact
    }
}

/// Per (service, build id) with rows in the window, its first minute.
pub(super) fn first_builds(http: &Http, w: Window) -> Result<Vec<FirstSeen>, StoreError> {
    let sql = format!(
        "SELECT service, key, toInt64(toUInt32(if(countIf(res = {RES_MINUTE}) > 0, \
         minIf(minute, res = {RES_MINUTE}), min(minute)))) FROM {db}.rollup \
         WHERE kind = {kind} AND minute >= toDateTime({from}) AND minute < toDateTime({to}) \
         AND key != '' GROUP BY service, key ORDER BY service, key",
        db = http.db,
        kind = Kind::Build as u8,
        from = w.from.max(0),
        to = w.to.clamp(0, u32::MAX as i64),
    );
    http.query(&sql)?
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            Ok(FirstSeen {
                service: unescape(f.first().copied().unwrap_or("")),
                build_id: unescape(f.get(1).copied().unwrap_or("")),
                at: f
                    .get(2)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| http.error(format!("unexpected answer row {f:?}: column 2")))?,
            })
        })
        .collect()
}

/// Versions of change rows: strictly increasing in this process (nanoseconds since the epoch,
/// bumped past the last one), so the latest write of an id wins.
fn next_version() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// Writes `c` and the deletion of `replaces` in one INSERT (one part: both or neither).
pub(super) fn put_change(
    http: &Http,
    c: &Change,
    replaces: Option<&str>,
) -> Result<(), StoreError> {
    let row = |c: &Change, deleted: u8| {
        format!(
            "({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {deleted}, {})",
            quote(&c.id),
            quote(&c.service),
            c.at_unix_seconds,
            quote(&c.title),
            quote(&c.kind),
            quote(&c.build_id),
            quote(&c.touched.join("\n")),
            quote(&c.author),
            quote(&c.url),
            u8::from(c.automatic),
            next_version()
        )
    };
    let mut rows = Vec::new();
    if let Some(old) = replaces.filter(|o| *o != c.id) {
        // Dated last, so retention (which goes by each id's latest date) never drops the
        // deletion before what it deletes.
        let gone = Change {
            id: old.to_string(),
            at_unix_seconds: i64::MAX,
            ..Change::default()
        };
        rows.push(row(&gone, 1));
    }
    rows.push(row(c, 0));
    http.exec(
        &format!("INSERT INTO {}.changes VALUES {}", http.db, rows.join(", ")),
        None,
    )?;
    Ok(())
}

/// Changes with `at` in the window (each id's latest version, unless deleted), oldest first.
pub(super) fn changes(
    http: &Http,
    w: Window,
    service: Option<&str>,
) -> Result<Vec<Change>, StoreError> {
    let only = service.map_or(String::new(), |s| format!(" AND s = {}", quote(s)));
    let sql = format!(
        "SELECT id, argMax(service, version) AS s, argMax(at, version) AS t, \
         argMax(title, version), argMax(kind, version), argMax(build_id, version), \
         argMax(touched, version), argMax(author, version), argMax(url, version), \
         argMax(automatic, version), argMax(deleted, version) AS d FROM {}.changes GROUP BY id \
         HAVING d = 0 AND t >= {} AND t < {}{only} ORDER BY t, id",
        http.db, w.from, w.to
    );
    http.query(&sql)?
        .lines()
        .map(|line| {
            let f: Vec<String> = line.split('\t').map(unescape).collect();
            let get = |i: usize| f.get(i).cloned().unwrap_or_default();
            Ok(Change {
                id: get(0),
                service: get(1),
                at_unix_seconds: get(2)
                    .parse()
                    .map_err(|_| http.error(format!("unexpected answer row {f:?}: column 2")))?,
                title: get(3),
                kind: get(4),
                build_id: get(5),
                touched: crate::store::sqlite_detection::split_touched(&get(6)),
                author: get(7),
                url: get(8),
                automatic: get(9) == "1",
            })
        })
        .collect()
}

/// Deletes changes dated before `cut` (retention), when there are any; true when it started a
/// mutation to wait for.
pub(super) fn expire_changes(http: &Http, cut: i64) -> Result<bool, StoreError> {
    // Every version of an id whose latest is old: deleting old versions alone could bring an
    // earlier version of a change moved in time back.
    let old = format!(
        "id IN (SELECT id FROM {}.changes GROUP BY id HAVING argMax(at, version) < {cut})",
        http.db
    );
    let n = http.query(&format!(
        "SELECT count() FROM {}.changes WHERE {old}",
        http.db
    ))?;
    if n.trim() != "0" {
        http.exec(
            &format!("ALTER TABLE {}.changes DELETE WHERE {old}", http.db),
            None,
        )?;
        return Ok(true);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::unwrapped;

    #[test]
    fn a_wrapped_clickhouse_sum_reads_as_the_most_it_can_hold() {
        assert_eq!(unwrapped(42, 42.0), 42);
        assert_eq!(unwrapped(1 << 62, (1u64 << 62) as f64), 1 << 62);
        // u64::MAX / 3 * 4 wrapped around to about a third.
        let wrapped = (u64::MAX / 3).wrapping_mul(4);
        assert_eq!(unwrapped(wrapped, (u64::MAX / 3) as f64 * 4.0), u64::MAX);
    }
}
