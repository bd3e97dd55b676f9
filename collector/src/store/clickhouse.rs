//! The fleet-scale backend: ClickHouse over its HTTP interface, written for the 18.16 server
//! Debian ships (no query parameters, no TTL, no `LowCardinality` by default, no
//! `mutations_sync`; everything used here exists in 18.16 and is exercised by the shared suite).
//!
//! One `SummingMergeTree` table holds every rollup row, ordered by (kind, res, minute, service,
//! key): rows from many hosts for the same key collapse during merges, and every query sums
//! anyway, so unmerged parts read the same. This module owns the table and the queries; ingest
//! (group commit, dedup markers, what an INSERT guarantees) lives in `clickhouse_ingest.rs`.
//! Durability is "the HTTP insert returned": the data is in a part on the server's disk (18.16
//! has no fsync-after-insert setting).

#[path = "clickhouse_detection.rs"]
mod detection;
#[path = "clickhouse_ingest.rs"]
mod ingest;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wattson_proto::v1::{Batch, Change};

use super::query_plan::{Range, TOTALS_COLUMNS, ranges, rank_expr};
use super::rollup::{Kind, RES_DETECT, RES_MINUTE, Rollup};
use super::{
    Buckets, FirstSeen, IngestFuture, Ingested, Keyed, Of, Point, Retention, RetentionReport,
    Store, StoreError, StoreStats, TopQuery, Totals, Window,
};

/// Kind code of batch marker rows (dedup records); never returned by queries.
const MARKER: u8 = 6;
/// Table of folded markers: per `HOST[/INSTANCE]`, the highest sequence of a fold (`seq`), how
/// many markers it replaced (`folded`) and when (`updated`). Append-only: a lookup takes the
/// highest `seq` of a key, `stats` sums `folded`.
const FLOORS: &str = "dedup_floor";

/// The HTTP interface of one server and database, shared by queries and the ingest thread.
struct Http {
    url: String,
    db: String,
    client: reqwest::blocking::Client,
}

/// ClickHouse-backed [`Store`].
pub struct ClickHouseStore {
    http: Arc<Http>,
    /// Owns ingest; dropping it answers what is queued and stops its thread.
    pipeline: ingest::Pipeline,
}

impl Http {
    fn error(&self, message: String) -> StoreError {
        StoreError::ClickHouse {
            url: self.url.clone(),
            message,
        }
    }

    /// Runs a statement; `body`, when given, is the INSERT's data.
    fn exec(&self, sql: &str, body: Option<Vec<u8>>) -> Result<String, StoreError> {
        let post = self.client.post(format!("{}/", self.url));
        let req = match body {
            Some(b) => post.query(&[("query", sql)]).body(b),
            None => post.body(sql.to_string()),
        };
        let resp = req
            .send()
            .map_err(|e| self.error(format!("{e} (is clickhouse-server running?)")))?;
        let status = resp.status();
        let text = resp.text().map_err(|e| self.error(e.to_string()))?;
        if !status.is_success() {
            return Err(self.error(format!("HTTP {status}: {}", text.trim())));
        }
        Ok(text)
    }

    fn query(&self, sql: &str) -> Result<String, StoreError> {
        self.exec(&format!("{sql} FORMAT TabSeparated"), None)
    }
}

impl ClickHouseStore {
    /// Connects to the HTTP interface at `url` (`http://HOST:PORT`), creates database `db`
    /// and the table when missing, and starts the ingest thread.
    pub fn open(url: &str, db: &str) -> Result<ClickHouseStore, StoreError> {
        if db.is_empty() || !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(StoreError::BadUrl {
                url: format!("{url}/{db}"),
                why: "database name must be [A-Za-z0-9_]+".into(),
            });
        }
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| StoreError::ClickHouse {
                url: url.into(),
                message: format!("building HTTP client: {e}"),
            })?;
        let http = Arc::new(Http {
            url: url.trim_end_matches('/').to_string(),
            db: db.to_string(),
            client,
        });
        http.exec(&format!("CREATE DATABASE IF NOT EXISTS {db}"), None)?;
        let cols: String = TOTALS_COLUMNS
            .iter()
            .map(|c| format!(", {c} UInt64"))
            .collect();
        http.exec(
            &format!(
                "CREATE TABLE IF NOT EXISTS {db}.rollup (kind UInt8, res UInt8, minute DateTime, \
                 service String, key String{cols}) ENGINE = SummingMergeTree() \
                 PARTITION BY toYYYYMM(minute) ORDER BY (kind, res, minute, service, key)"
            ),
            None,
        )?;
        http.exec(
            &format!(
                "CREATE TABLE IF NOT EXISTS {db}.{FLOORS} (key String, seq UInt64, \
                 folded UInt64, updated DateTime) ENGINE = MergeTree() ORDER BY key"
            ),
            None,
        )?;
        detection::create(&http)?;
        let version = http.query("SELECT version()")?;
        tracing::info!(url, db, version = version.trim(), "clickhouse store open");
        Ok(ClickHouseStore {
            pipeline: ingest::Pipeline::start(http.clone())?,
            http,
        })
    }

    fn query(&self, sql: &str) -> Result<String, StoreError> {
        self.http.query(sql)
    }

    fn keyed(
        &self,
        kind: Kind,
        window: Window,
        service: Option<&str>,
        by_key: bool,
        tail: &str,
    ) -> Result<Vec<Keyed>, StoreError> {
        let w = window.aligned()?;
        let mut filter = condition(kind as u8, &ranges(w, true, i64::MAX));
        if let Some(s) = service {
            let _ = write!(filter, " AND service = {}", quote(s));
        }
        let (key, group) = if by_key {
            ("key", "service, key")
        } else {
            ("''", "service")
        };
        let sql = format!(
            "SELECT service, {key}, {sums}, uniqExact(key) FROM {db}.rollup WHERE {filter} \
             GROUP BY {group} {tail}",
            sums = sums(),
            db = self.http.db
        );
        self.query(&sql)?
            .lines()
            .map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                Ok(Keyed {
                    service: unescape(f.first().copied().unwrap_or("")),
                    key: unescape(f.get(1).copied().unwrap_or("")),
                    totals: self.totals(&f, 2)?,
                    hosts: self.num(&f, 12)?,
                })
            })
            .collect()
    }

    fn num(&self, f: &[&str], i: usize) -> Result<u64, StoreError> {
        f.get(i).and_then(|s| s.parse().ok()).ok_or_else(|| {
            self.http.error(format!(
                "unexpected answer row {f:?}: column {i} is not a number"
            ))
        })
    }

    fn totals(&self, f: &[&str], at: usize) -> Result<Totals, StoreError> {
        Totals::from_columns(|i| self.num(f, at + i))
    }

    /// Waits until no mutation of the table is pending (18.16 has no `mutations_sync`).
    /// Folds the markers older than [`super::DEDUP_WINDOW`] into one floor row per agent
    /// instance, once some are a day past it (so an instance gains a floor row a day, not one
    /// per hourly pass); returns the condition of the folded markers, for the caller to delete
    /// them. Markers at or below their instance's floor are not counted again: they are left
    /// over from a pass whose delete failed, and `stats` would count their batches twice.
    fn fold_markers(&self, now: i64) -> Result<Option<String>, StoreError> {
        let db = &self.http.db;
        let markers = |cut: i64| {
            let cut = cut.max(0);
            format!("kind = {MARKER} AND res = {RES_MINUTE} AND minute < toDateTime({cut})")
        };
        let due = markers(now - super::DEDUP_WINDOW - 86_400);
        if self
            .query(&format!("SELECT count() FROM {db}.rollup WHERE {due}"))?
            .trim()
            == "0"
        {
            return Ok(None);
        }
        let cond = markers(now - super::DEDUP_WINDOW);
        let n = self.query(&format!("SELECT count() FROM {db}.rollup WHERE {cond}"))?;
        // Keys are `SEQ@HOST[/INSTANCE]`: the floor is keyed by what follows the first `@`.
        self.http.exec(
            &format!(
                "INSERT INTO {db}.{FLOORS} SELECT k, max(s), count(), toDateTime({now}) FROM \
                 (SELECT substring(key, position(key, '@') + 1) AS k, \
                 toUInt64OrZero(substring(key, 1, position(key, '@') - 1)) AS s \
                 FROM {db}.rollup WHERE {cond}) \
                 ANY LEFT JOIN (SELECT key AS k, max(seq) AS floor, 1 AS known \
                 FROM {db}.{FLOORS} GROUP BY key) USING k \
                 WHERE known = 0 OR s > floor GROUP BY k"
            ),
            None,
        )?;
        tracing::info!(db = %db, markers = n.trim(), "folded week-old dedup markers into floors");
        Ok(Some(cond))
    }

    fn wait_mutations(&self) -> Result<(), StoreError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let pending = self.query(&format!(
                "SELECT count() FROM system.mutations WHERE database = {} AND is_done = 0",
                quote(&self.http.db)
            ))?;
            if pending.trim() == "0" {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self
                    .http
                    .error("retention delete still running after 120 s".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn sums() -> String {
    TOTALS_COLUMNS
        .iter()
        .map(|c| format!("sum({c})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `kind = K AND (<range> OR <range>...)`; ClickHouse's key analysis handles the OR.
fn condition(kind: u8, ranges: &[Range]) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .map(|r| {
            format!(
                "(res = {} AND minute >= toDateTime({}) AND minute < toDateTime({}))",
                r.res, r.from, r.to
            )
        })
        .collect();
    let any = if parts.is_empty() {
        "0".to_string()
    } else {
        parts.join(" OR ")
    };
    format!("kind = {kind} AND ({any})")
}

/// A ClickHouse string literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Reverses TabSeparated escaping of one field.
fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('0') => out.push('\0'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    out
}

impl Store for ClickHouseStore {
    fn ingest(&self, batch: &Batch) -> Result<Ingested, StoreError> {
        self.pipeline.ingest(batch)
    }

    fn queue(
        &self,
        batch: &wattson_proto::view::BatchView<'_>,
        _encoded: bytes::Bytes,
    ) -> Option<IngestFuture> {
        Some(self.pipeline.queue(batch))
    }

    fn write(&self, rollup: &Rollup) -> Result<Ingested, StoreError> {
        self.pipeline.write(rollup)
    }

    fn top(&self, q: &TopQuery) -> Result<Vec<Keyed>, StoreError> {
        let tail = format!(
            "ORDER BY {} DESC, service, key LIMIT {}",
            rank_expr(q.rank),
            q.limit
        );
        self.keyed(Kind::Function, q.window, q.service.as_deref(), true, &tail)
    }

    fn series(
        &self,
        window: Window,
        service: &str,
        function: &str,
        step: i64,
    ) -> Result<Vec<Point>, StoreError> {
        let w = window.aligned()?;
        let step = super::query_plan::check_step(step)?;
        let filter = condition(Kind::Function as u8, &ranges(w, step % 3600 == 0, i64::MAX));
        let sql = format!(
            "SELECT intDiv(toInt64(toUInt32(minute)) - {from}, {step}) * {step} + {from} AS bucket, \
             {sums} FROM {db}.rollup WHERE {filter} AND service = {s} AND key = {k} \
             GROUP BY bucket ORDER BY bucket",
            from = w.from,
            sums = sums(),
            db = self.http.db,
            s = quote(service),
            k = quote(function)
        );
        self.query(&sql)?
            .lines()
            .map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                Ok(Point {
                    at: self.num(&f, 0)? as i64,
                    totals: self.totals(&f, 1)?,
                })
            })
            .collect()
    }

    fn services(&self, window: Window) -> Result<Vec<Keyed>, StoreError> {
        self.keyed(Kind::Service, window, None, false, "ORDER BY service")
    }

    fn service_hosts(&self, window: Window) -> Result<Vec<Keyed>, StoreError> {
        self.keyed(Kind::Service, window, None, true, "ORDER BY service, key")
    }

    fn hosts(&self, window: Window) -> Result<Vec<Keyed>, StoreError> {
        self.keyed(Kind::Host, window, None, true, "ORDER BY key")
    }

    fn builds(&self, window: Window, service: Option<&str>) -> Result<Vec<Keyed>, StoreError> {
        self.keyed(Kind::Build, window, service, true, "ORDER BY service, key")
    }

    fn stack_rows(&self, window: Window, service: Option<&str>) -> Result<Vec<Keyed>, StoreError> {
        self.keyed(Kind::Stack, window, service, true, "")
    }

    fn lines(&self, window: Window, service: Option<&str>) -> Result<Vec<Keyed>, StoreError> {
        self.keyed(Kind::Line, window, service, true, "")
    }

    fn known_services(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .query(&format!(
                "SELECT DISTINCT service FROM {}.rollup WHERE kind = {} ORDER BY service",
                self.http.db,
                Kind::Service as u8
            ))?
            .lines()
            .map(unescape)
            .collect())
    }

    fn buckets(
        &self,
        of: Of,
        window: Window,
        service: &str,
        step: i64,
    ) -> Result<Buckets, StoreError> {
        detection::buckets(&self.http, of, service, Buckets::new(window, step)?)
    }

    fn first_builds(&self, window: Window) -> Result<Vec<FirstSeen>, StoreError> {
        detection::first_builds(&self.http, window.aligned()?)
    }

    fn put_change(&self, change: &Change, replaces: Option<&str>) -> Result<(), StoreError> {
        detection::put_change(&self.http, change, replaces)
    }

    fn changes(&self, window: Window, service: Option<&str>) -> Result<Vec<Change>, StoreError> {
        detection::changes(&self.http, window, service)
    }

    fn retain(&self, policy: &Retention, now: i64) -> Result<RetentionReport, StoreError> {
        let raw_cut = (now - policy.raw.as_secs() as i64).max(0);
        let total_cut = (now - policy.total.as_secs() as i64).max(0);
        let expired_cond = format!("minute < toDateTime({total_cut})");
        let minute_cond = format!(
            "res = {RES_MINUTE} AND kind != {MARKER} AND minute < toDateTime({raw_cut}) \
             AND minute >= toDateTime({total_cut})"
        );
        let count = |cond: &str| -> Result<u64, StoreError> {
            let n = self.query(&format!(
                "SELECT count() FROM {}.rollup WHERE {cond} AND kind != {MARKER}",
                self.http.db
            ))?;
            Ok(n.trim().parse().unwrap_or(0))
        };
        let detect_cut = policy.detect_cut(now);
        let detect_cond = format!(
            "res = {RES_DETECT} AND minute < toDateTime({detect_cut}) \
             AND minute >= toDateTime({total_cut})"
        );
        let report = RetentionReport {
            minute_rows_deleted: count(&minute_cond)?,
            expired_rows_deleted: count(&expired_cond)?,
            detect_rows_deleted: count(&detect_cond)?,
        };
        let folded = self.fold_markers(now)?;
        let deleted =
            report.minute_rows_deleted + report.expired_rows_deleted + report.detect_rows_deleted;
        if deleted > 0 || folded.is_some() {
            let db = &self.http.db;
            let markers = folded.as_deref().unwrap_or("0");
            self.http.exec(
                &format!(
                    "ALTER TABLE {db}.rollup DELETE WHERE ({minute_cond}) OR ({expired_cond}) \
                     OR ({detect_cond}) OR ({markers})"
                ),
                None,
            )?;
            self.wait_mutations()?;
        }
        if detection::expire_changes(&self.http, total_cut)? {
            self.wait_mutations()?;
        }
        let db = &self.http.db;
        let old = format!("updated < toDateTime({total_cut})");
        if self
            .query(&format!("SELECT count() FROM {db}.{FLOORS} WHERE {old}"))?
            .trim()
            != "0"
        {
            self.http.exec(
                &format!("ALTER TABLE {db}.{FLOORS} DELETE WHERE {old}"),
                None,
            )?;
            self.wait_mutations()?;
        }
        Ok(report)
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let counts = self.query(&format!(
            "SELECT countIf(kind = {MARKER}), countIf(kind != {MARKER}) FROM {}.rollup",
            self.http.db
        ))?;
        let bytes = self.query(&format!(
            "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = {} \
             AND table = 'rollup' AND active",
            quote(&self.http.db)
        ))?;
        let folded = self.query(&format!(
            "SELECT sum(folded) FROM {}.{FLOORS}",
            self.http.db
        ))?;
        let f: Vec<&str> = counts.trim().split('\t').collect();
        Ok(StoreStats {
            batches: self.num(&f, 0)? + self.num(&[folded.trim()], 0)?,
            rows: self.num(&f, 1)?,
            bytes: bytes.trim().parse().unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_and_unescape_round_trip() {
        for s in ["plain", "it's", "a\\b", "tab\there", "nl\nx"] {
            let q = quote(s);
            assert_eq!(unescape(&q[1..q.len() - 1]), s);
        }
    }
}
