//! What detection reads and keeps in the SQLite store: the `changes` table (change events,
//! recorded and automatic deploys) and the bulk per-step reads ([`Buckets`]) of a service's
//! functions and totals, plus the first minute each build was seen.
//!
//! A service's functions come from the `rollup_fn_series` index (res, service, key, minute):
//! one range per resolution, whatever the number of functions or other services.

use rusqlite::{Connection, params};
use wattson_proto::v1::Change;

use super::query_plan::ranges;
use super::rollup::{Kind, RES_MINUTE};
use super::{Buckets, FirstSeen, Window};

/// The changes table; `touched` holds the functions one per line (validation refuses line
/// breaks in a function name).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS changes (
    id TEXT PRIMARY KEY, service TEXT NOT NULL, at INTEGER NOT NULL, title TEXT NOT NULL,
    kind TEXT NOT NULL, build_id TEXT NOT NULL, touched TEXT NOT NULL, author TEXT NOT NULL,
    url TEXT NOT NULL, automatic INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS changes_at ON changes (at);
";

/// Which rows a bucket read sums: the kind, and its (samples, measured, estimated) columns.
#[derive(Debug, Clone, Copy)]
pub(super) enum Read {
    /// Every function of the service, inclusive sums, by function.
    Functions,
    /// The service's rows (one per host), all its samples, summed into one series "".
    Totals,
}

/// Fills `b` with the rows of `service` the read names, over `b`'s window. Whole hours come
/// from hour rows when the step is a multiple of an hour, as `series` does.
pub(super) fn buckets(
    conn: &Connection,
    read: Read,
    service: &str,
    mut b: Buckets,
    complete_before: i64,
) -> rusqlite::Result<Buckets> {
    let (kind, cols, index) = match read {
        Read::Functions => (
            Kind::Function,
            "key, minute, samples_incl, uj_incl, est_uj_incl",
            " INDEXED BY rollup_fn_series",
        ),
        Read::Totals => (
            Kind::Service,
            "'', minute, samples_self, uj_self, est_uj_self",
            "",
        ),
    };
    let parts: Vec<String> = ranges(b.window(), b.step % 3600 == 0, complete_before)
        .iter()
        .map(|r| {
            format!(
                "SELECT {cols} FROM rollup{index} WHERE kind = {} AND res = {} AND service = ?1 \
                 AND minute >= {} AND minute < {}",
                kind as u8, r.res, r.from, r.to
            )
        })
        .collect();
    if parts.is_empty() {
        return Ok(b.finish());
    }
    let mut st = conn.prepare_cached(&parts.join(" UNION ALL "))?;
    let mut rows = st.query(params![service])?;
    let n = |r: &rusqlite::Row<'_>, i| r.get::<_, i64>(i).map(|v| v as u64);
    while let Some(r) = rows.next()? {
        let key = r.get_ref(0)?.as_str()?;
        b.add(key, r.get(1)?, (n(r, 2)?, n(r, 3)?, n(r, 4)?));
    }
    Ok(b.finish())
}

/// Per (service, build id) with rows in the window, its first minute (an hour's start when
/// only hour rows are left).
pub(super) fn first_builds(conn: &Connection, w: Window) -> rusqlite::Result<Vec<FirstSeen>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT service, key, coalesce(min(CASE WHEN res = {RES_MINUTE} THEN minute END), \
         min(minute)) FROM rollup WHERE kind = {} AND minute >= ?1 AND minute < ?2 AND key != '' \
         GROUP BY service, key ORDER BY service, key",
        Kind::Build as u8
    ))?;
    let rows = st.query_map(params![w.from, w.to], |r| {
        Ok(FirstSeen {
            service: r.get(0)?,
            build_id: r.get(1)?,
            at: r.get(2)?,
        })
    })?;
    rows.collect()
}

/// Stores `c` (replacing the change of the same id) and deletes `replaces`, in one transaction.
pub(super) fn put_change(
    conn: &mut Connection,
    c: &Change,
    replaces: Option<&str>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    if let Some(old) = replaces {
        tx.execute("DELETE FROM changes WHERE id = ?1", params![old])?;
    }
    tx.execute(
        "INSERT OR REPLACE INTO changes VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            c.id,
            c.service,
            c.at_unix_seconds,
            c.title,
            c.kind,
            c.build_id,
            c.touched.join("\n"),
            c.author,
            c.url,
            c.automatic,
        ],
    )?;
    tx.commit()
}

/// Changes with `at` in the window, of one service when given, oldest first.
pub(super) fn changes(
    conn: &Connection,
    w: Window,
    service: Option<&str>,
) -> rusqlite::Result<Vec<Change>> {
    let mut st = conn.prepare_cached(
        "SELECT id, service, at, title, kind, build_id, touched, author, url, automatic \
         FROM changes WHERE at >= ?1 AND at < ?2 AND (?3 IS NULL OR service = ?3) \
         ORDER BY at, id",
    )?;
    let rows = st.query_map(params![w.from, w.to, service], |r| {
        let touched: String = r.get(6)?;
        Ok(Change {
            id: r.get(0)?,
            service: r.get(1)?,
            at_unix_seconds: r.get(2)?,
            title: r.get(3)?,
            kind: r.get(4)?,
            build_id: r.get(5)?,
            touched: split_touched(&touched),
            author: r.get(7)?,
            url: r.get(8)?,
            automatic: r.get(9)?,
        })
    })?;
    rows.collect()
}

/// The touched functions as stored (one per line).
pub(super) fn split_touched(s: &str) -> Vec<String> {
    s.split('\n')
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect()
}
