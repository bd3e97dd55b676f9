//! The SQLite store's hour rows: how far they are complete, and summing minute rows into them.
//!
//! Why: a host's rows (its services, its own sums) change with each of its batches, and the
//! roll-up used to upsert every hour row along with its minute row: each hour row was
//! rewritten at every roll-up, half of all row writes. Now an hour row sums the minute rows
//! before a watermark ([`Hours::before`]): a roll-up adds minute rows at or after it to no
//! hour (only late data, before it, goes to both), and once a minute is [`GRACE`] old it is
//! added to its hour once, by SQL, in the roll-up's transaction. Queries read hour rows only
//! for hours wholly before the watermark, and minute rows for the rest.
//!
//! Every minute row is in its hour row exactly once: either it was written before the
//! watermark (and went to both), or the watermark passed it and added the whole row (nothing
//! of it was in the hour row yet, and later writes to it land before the watermark).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use rusqlite::{Connection, OptionalExtension, params};

use super::rollup::{RES_HOUR, RES_MINUTE, hour_of};

/// How old a minute is before its rows are added to its hour: batches of a minute arrive
/// within seconds of it (later ones, from spools, go to both rows as they come).
pub const GRACE: i64 = 120;
/// Most minutes one roll-up adds to their hours (bounds a roll-up after a long pause).
const MOST_MINUTES: i64 = 5;
/// `meta` key of the watermark.
const META: &str = "hours_before";

/// The watermark: every minute row before it is in its hour row, none at or after it.
/// Shared by the ingest thread, retention and queries; it only grows.
#[derive(Debug, Clone)]
pub struct Hours(Arc<AtomicI64>);

fn minute_of(t: i64) -> i64 {
    t.div_euclid(60) * 60
}

impl Hours {
    /// Reads the watermark, or starts one: after every minute row already stored (a store
    /// from before the watermark has all of its hour rows) and `GRACE` before `now`.
    pub fn open(conn: &Connection, now: i64) -> rusqlite::Result<Hours> {
        let stored: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [META], |r| {
                r.get(0)
            })
            .optional()?;
        let before = match stored {
            Some(v) => v,
            None => {
                let latest: Option<i64> = conn.query_row(
                    &format!(
                        "SELECT max(minute) FROM rollup WHERE kind IN (1, 2, 3, 4, 5, 7) \
                         AND res = {RES_MINUTE}"
                    ),
                    [],
                    |r| r.get(0),
                )?;
                let v = minute_of(now - GRACE).max(latest.map_or(i64::MIN, |m| m + 60));
                conn.execute(
                    "INSERT INTO meta VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                    params![META, v],
                )?;
                v
            }
        };
        Ok(Hours(Arc::new(AtomicI64::new(before))))
    }

    /// Minute rows before this are in their hour rows.
    pub fn before(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }

    /// Queries may read hour rows of hours that end at or before this.
    pub fn complete_before(&self) -> i64 {
        hour_of(self.before())
    }

    /// Where a roll-up at `now` moves the watermark to: up to `GRACE` before now, a few
    /// minutes at a time.
    pub fn due(&self, now: i64) -> i64 {
        let from = self.before();
        minute_of(now - GRACE).clamp(from, from + MOST_MINUTES * 60)
    }

    /// Adds the minute rows from the watermark to `to` to their hours and records `to`,
    /// inside the caller's transaction; call [`Hours::moved`] once it commits.
    pub fn advance(&self, tx: &Connection, to: i64) -> rusqlite::Result<usize> {
        let from = self.before();
        if to <= from {
            return Ok(0);
        }
        let added = tx.prepare_cached(&format!(
            "INSERT INTO rollup SELECT kind, {RES_HOUR}, minute / 3600 * 3600 AS hour, service, \
             key, {} FROM rollup WHERE kind IN (1, 2, 3, 4, 5, 7) AND res = {RES_MINUTE} \
             AND minute >= ?1 AND minute < ?2 GROUP BY kind, hour, service, key \
             ON CONFLICT (kind, res, minute, service, key) DO UPDATE SET {}",
            super::sqlite::sums(),
            super::sqlite::add_excluded()
        ))?
        .execute(params![from, to])?;
        tx.execute(
            "INSERT INTO meta VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![META, to],
        )?;
        Ok(added)
    }

    /// The watermark [`Hours::advance`] recorded is durable.
    pub fn moved(&self, to: i64) {
        self.0.fetch_max(to, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_roll_up_moves_the_watermark_a_few_minutes_up_to_the_grace() {
        let h = Hours(Arc::new(AtomicI64::new(6000)));
        assert_eq!(h.due(6000), 6000, "never backwards");
        assert_eq!(h.due(6000 + GRACE + 59), 6000);
        assert_eq!(h.due(6000 + GRACE + 60), 6060);
        assert_eq!(h.due(100_000), 6000 + MOST_MINUTES * 60);
        assert_eq!(h.complete_before(), 3600);
        h.moved(7200);
        h.moved(7000);
        assert_eq!(h.before(), 7200);
        assert_eq!(h.complete_before(), 7200);
    }
}
