//! The SQLite store's detection roll-up: five-minute sums of every function (inclusive) and of
//! every service's total, packed per (service, kind, key, hour) into one blob of twelve slots
//! in the `detect5` table, kept as long as detection's history.
//!
//! Why: a detection pass reads every series of every service over its whole history (14 days
//! by default). Read from minute rows that is 20,160 rows per series, and SQLite costs about
//! 0.36 µs per row before anything else is done: 10,000 series took minutes. Packed, the same
//! history is 336 rows per series, read in one range scan per service. Rows are added in the
//! roll-up's transaction from the same minute rows ([`add`]), so the table never lags them.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::rollup::{DETECT_STEP, Kind, RES_MINUTE, Row, detect_rows, detect_sums, hour_of};
use super::{Buckets, Of};

/// The table: `sums` holds [`SLOTS`] slots of (samples, measured µJ, estimated µJ), each a
/// little-endian u64, slot `i` the five minutes starting at `hour + i * 300`.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS detect5 (
    service TEXT NOT NULL, kind INTEGER NOT NULL, key TEXT NOT NULL, hour INTEGER NOT NULL,
    sums BLOB NOT NULL,
    PRIMARY KEY (service, kind, key, hour)) WITHOUT ROWID;
";

/// Five-minute slots per hour.
const SLOTS: usize = (3600 / DETECT_STEP) as usize;
/// Bytes of a packed hour.
const BYTES: usize = SLOTS * 3 * 8;
/// `meta` key set once minute rows stored before the table existed were added to it.
const FILLED: &str = "detect5_filled";

/// An hour's slots.
type Hour = [[u64; 3]; SLOTS];

fn unpack(blob: &[u8]) -> Hour {
    let mut h = [[0u64; 3]; SLOTS];
    for (i, chunk) in blob.chunks_exact(8).take(SLOTS * 3).enumerate() {
        let v = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        h[i / 3][i % 3] = v;
    }
    h
}

fn pack(h: &Hour) -> Vec<u8> {
    let mut out = Vec::with_capacity(BYTES);
    for v in h.iter().flatten() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Adds `b` to `a`, saturating (figures come from requests; one absurd batch must not wrap).
fn add_to(a: &mut [u64; 3], b: [u64; 3]) {
    for (v, w) in a.iter_mut().zip(b) {
        *v = v.saturating_add(w);
    }
}

/// Adds the minute rows of functions and services in `rows` to their hours (saturating), in
/// the caller's transaction.
pub(super) fn add(tx: &Connection, rows: &[Row]) -> rusqlite::Result<()> {
    let mut hours: BTreeMap<(&str, u8, &str, i64), Hour> = BTreeMap::new();
    let folded = detect_rows(rows);
    for r in &folded {
        // A service's rows (one per host) are one series: summed here, not at every read.
        let key = if r.kind == Kind::Service { "" } else { &r.key };
        let h = hours
            .entry((&r.service, r.kind as u8, key, hour_of(r.minute)))
            .or_insert([[0; 3]; SLOTS]);
        let slot = ((r.minute - hour_of(r.minute)) / DETECT_STEP) as usize;
        add_to(&mut h[slot], detect_sums(r.kind, &r.totals));
    }
    if hours.is_empty() {
        return Ok(());
    }
    let mut get = tx.prepare_cached(
        "SELECT sums FROM detect5 WHERE service = ?1 AND kind = ?2 AND key = ?3 AND hour = ?4",
    )?;
    let mut put =
        tx.prepare_cached("INSERT OR REPLACE INTO detect5 VALUES (?1, ?2, ?3, ?4, ?5)")?;
    for ((service, kind, key, hour), mut h) in hours {
        let stored: Option<Vec<u8>> = get
            .query_row(params![service, kind, key, hour], |r| r.get(0))
            .optional()?;
        if let Some(old) = stored {
            for (slot, was) in h.iter_mut().zip(unpack(&old)) {
                add_to(slot, was);
            }
        }
        put.execute(params![service, kind, key, hour, pack(&h)])?;
    }
    Ok(())
}

/// Fills `b` with the packed hours of `service` that `of` names (see [`Buckets::five_minute`]).
pub(super) fn read(
    conn: &Connection,
    of: Of,
    service: &str,
    mut b: Buckets,
) -> rusqlite::Result<Buckets> {
    let kind = match of {
        Of::Functions => Kind::Function,
        Of::Totals => Kind::Service,
    };
    let w = b.window();
    let mut st = conn.prepare_cached(
        "SELECT key, hour, sums FROM detect5 WHERE service = ?1 AND kind = ?2 \
         AND hour >= ?3 AND hour < ?4",
    )?;
    let mut rows = st.query(params![service, kind as u8, hour_of(w.from), w.to])?;
    while let Some(r) = rows.next()? {
        let key = r.get_ref(0)?.as_str()?;
        let hour: i64 = r.get(1)?;
        let h = unpack(r.get_ref(2)?.as_blob()?);
        for (i, s) in h
            .iter()
            .enumerate()
            .filter(|(_, s)| s.iter().any(|&v| v > 0))
        {
            b.add(key, hour + i as i64 * DETECT_STEP, (s[0], s[1], s[2]));
        }
    }
    Ok(b.finish())
}

/// Deletes the hours that ended before `cut`; returns how many.
pub(super) fn retain(conn: &Connection, cut: i64) -> rusqlite::Result<usize> {
    conn.execute("DELETE FROM detect5 WHERE hour < ?1", params![cut - 3599])
}

/// Once per store: adds the minute rows stored before this table existed (a store of an
/// earlier release), so detection keeps the history it had. Returns the minute rows read.
pub(super) fn fill_once(conn: &mut Connection) -> rusqlite::Result<usize> {
    let done: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [FILLED], |r| {
            r.get(0)
        })
        .optional()?;
    if done.is_some() {
        return Ok(0);
    }
    let tx = conn.transaction()?;
    let mut read = 0;
    {
        let mut st = tx.prepare(&format!(
            "SELECT kind, minute, service, key, samples_self, samples_incl, uj_self, uj_incl, \
             est_uj_self, est_uj_incl FROM rollup WHERE kind IN ({}, {}) AND res = {RES_MINUTE} \
             ORDER BY service, kind, key",
            Kind::Function as u8,
            Kind::Service as u8
        ))?;
        let mut rows = st.query([])?;
        let mut chunk: Vec<Row> = Vec::new();
        while let Some(r) = rows.next()? {
            let n = |i| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
            let kind = Kind::from_code(r.get(0)?).unwrap_or(Kind::Function);
            chunk.push(Row {
                kind,
                res: RES_MINUTE,
                minute: r.get(1)?,
                service: r.get(2)?,
                key: r.get(3)?,
                totals: super::Totals {
                    samples_self: n(4)?,
                    samples_incl: n(5)?,
                    uj_self: n(6)?,
                    uj_incl: n(7)?,
                    est_uj_self: n(8)?,
                    est_uj_incl: n(9)?,
                    ..Default::default()
                },
            });
            read += 1;
            if chunk.len() >= 100_000 {
                add(&tx, &chunk)?;
                chunk.clear();
            }
        }
        add(&tx, &chunk)?;
        tx.execute("INSERT INTO meta VALUES (?1, 1)", [FILLED])?;
    }
    tx.commit()?;
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_pack_and_unpack_slot_by_slot() {
        let mut h = [[0u64; 3]; SLOTS];
        h[0] = [1, 2, 3];
        h[11] = [u64::MAX, 5, 0];
        let blob = pack(&h);
        assert_eq!(blob.len(), BYTES);
        assert_eq!(unpack(&blob), h);
    }
}
