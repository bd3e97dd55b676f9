//! The embedded default backend: one SQLite file in WAL mode.
//!
//! Durability: `journal_mode=WAL` with `synchronous=FULL`, so every commit fsyncs the WAL
//! before a write returns; `NORMAL` would survive a process crash but could lose the last
//! acknowledged batches on power loss, and an acknowledged batch is never resent.
//! Dedup: the (host, instance, sequence) record in `received` is committed in the same
//! transaction as the batch's rows, so a batch is either fully stored and recorded or neither.
//! Ingest goes through [`super::sqlite_ingest`] (a durable file journal, `PATH.ingest/`, then
//! batched roll-up); batches journaled and not rolled up yet are duplicates too. After
//! `DEDUP_WINDOW` (a week) retention folds an agent instance's records into one floor row:
//! agents ship in sequence order, one batch at a time, so a resend is at or below it.
//!
//! One connection writes; a few others read (WAL lets readers run alongside the writer, and
//! each other: a `top` needs three scans, which the query engine issues at once).

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use wattson_proto::v1::{Batch, Change};

use super::query_plan::{Range, TOTALS_COLUMNS, ranges, rank_sort};
use super::rollup::{Kind, RES_DETECT, RES_HOUR, RES_MINUTE, Rollup, Row, hour_of, hour_rows};
use super::sqlite_detection as detection;
use super::sqlite_hours::Hours;
use super::sqlite_ingest::{Pipeline, now_secs};
use super::{
    Buckets, FirstSeen, Ingested, Keyed, Of, Point, Retention, RetentionReport, Store, StoreError,
    StoreStats, TopQuery, Totals, Window,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS received (
    host TEXT NOT NULL, instance TEXT NOT NULL, seq INTEGER NOT NULL, received INTEGER NOT NULL,
    profiles INTEGER NOT NULL, samples INTEGER NOT NULL,
    PRIMARY KEY (host, instance, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS received_at ON received (received);
-- Per (host, agent instance): the highest sequence of the dedup records folded away after
-- DEDUP_WINDOW, and how many were folded. Agents ship in sequence order, so a batch at or
-- below it is a resend.
CREATE TABLE IF NOT EXISTS received_floor (
    host TEXT NOT NULL, instance TEXT NOT NULL, seq INTEGER NOT NULL, folded INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    PRIMARY KEY (host, instance)) WITHOUT ROWID;
-- The first release's journal of acknowledged batches (encoded wattson.v1.Batch), replayed
-- and emptied at open; the journal is now files (`store::journal`).
CREATE TABLE IF NOT EXISTS journal (id INTEGER PRIMARY KEY, payload BLOB NOT NULL);
-- `journal_covered`: the last journal generation a roll-up stored.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup (
    kind INTEGER NOT NULL, res INTEGER NOT NULL, minute INTEGER NOT NULL,
    service TEXT NOT NULL, key TEXT NOT NULL,
    samples_self INTEGER NOT NULL, samples_incl INTEGER NOT NULL,
    uj_self INTEGER NOT NULL, uj_incl INTEGER NOT NULL,
    est_uj_self INTEGER NOT NULL, est_uj_incl INTEGER NOT NULL,
    idle_uj INTEGER NOT NULL, est_idle_uj INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL, dropped INTEGER NOT NULL,
    PRIMARY KEY (kind, res, minute, service, key)) WITHOUT ROWID;
-- Only series read by (service, function): a partial index keeps stack, host and build rows
-- (most of the writes) out of index maintenance. It covers the inclusive sums, so detection
-- reads every function of a service without a table lookup per row (19x faster: 447,552 rows
-- in 0.16 s instead of 3.0 s). It replaced rollup_fn_series (key columns only).
DROP INDEX IF EXISTS rollup_fn_series;
CREATE INDEX IF NOT EXISTS rollup_fn_incl ON rollup
    (res, service, key, minute, samples_incl, uj_incl, est_uj_incl) WHERE kind = 1;
CREATE TABLE IF NOT EXISTS services (service TEXT PRIMARY KEY) WITHOUT ROWID;
";

/// Every sum column through `f`, comma-separated.
fn each_total(f: impl Fn(&str) -> String) -> String {
    TOTALS_COLUMNS.map(f).join(", ")
}

/// `c = c + excluded.c` for every sum, saturating at `i64::MAX`: how an upsert adds summed rows
/// to stored ones. (SQLite's `+` turns an overflowing sum into a REAL, which reads back as an
/// error.)
pub(super) fn add_excluded() -> String {
    each_total(|c| {
        format!(
            "{c} = CASE WHEN {c} > {max} - excluded.{c} THEN {max} ELSE {c} + excluded.{c} END",
            max = i64::MAX
        )
    })
}

/// The sum of every sum column, saturating at `i64::MAX`: SQLite's `sum()` fails the whole
/// query with "integer overflow", `total()` adds in floating point (exact below 2^53) and the
/// cast clamps.
pub(super) fn sums() -> String {
    each_total(|c| format!("CAST(total({c}) AS INTEGER)"))
}

/// A u64 figure as SQLite's INTEGER, clamped (a plain `as` would store it negative).
pub(super) fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Stores of the first release recorded (host, seq) in `batches`: carried over with an empty
/// agent instance, which is what agents of that release send.
const MIGRATE_BATCHES: &str = "
INSERT OR IGNORE INTO received SELECT host, '', seq, received, profiles, samples FROM batches;
DROP TABLE batches;
";

use super::DEDUP_WINDOW;

/// Whether batch (host, instance, seq) is stored: its dedup record, or its instance's floor.
pub(super) fn is_received(
    conn: &Connection,
    host: &str,
    instance: &str,
    seq: u64,
) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM received WHERE host = ?1 AND instance = ?2 AND seq = ?3) \
         OR EXISTS (SELECT 1 FROM received_floor WHERE host = ?1 AND instance = ?2 AND seq >= ?3)",
    )?
    .query_row(params![host, instance, seq as i64], |r| r.get(0))
}

/// Read connections: as many as the reads one query issues at once.
const READERS: usize = 3;

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    path: String,
    writer: Arc<Mutex<Connection>>,
    readers: Vec<Mutex<Connection>>,
    /// Where the next read starts looking for a free reader.
    next_reader: std::sync::atomic::AtomicUsize,
    /// How far hour rows are complete (shared with the pipeline).
    hours: Hours,
    /// Owns ingest; dropping it rolls up what is merged (it holds its own `writer` handle).
    pipeline: Pipeline,
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `path`, with its parent directory.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        // The store holds every profiled command line: private to the collector's user.
        // (Directories created here are 0700; SQLite gives -wal and -shm the database's mode.)
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            super::journal::private_dir(dir).map_err(|source| StoreError::Io {
                what: format!("creating directory {} for the sqlite store", dir.display()),
                source,
            })?;
        }
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| StoreError::Io {
                    what: format!("creating the sqlite store {}", path.display()),
                    source,
                })?;
        }
        let err = |source| StoreError::Sqlite {
            path: name.clone(),
            source,
        };
        let writer = Connection::open(path).map_err(err)?;
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        writer
            .pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        writer
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        // 64 MiB page cache instead of 2 MiB: day-long windows and index upserts stay in memory.
        writer
            .pragma_update(None, "cache_size", -65_536)
            .map_err(err)?;
        // Checkpoint every 32 MiB of WAL rather than 4: journal pages freed by a roll-up are
        // reused before they are copied into the database, so most are never copied.
        writer
            .pragma_update(None, "wal_autocheckpoint", 8_192)
            .map_err(err)?;
        writer.execute_batch(SCHEMA).map_err(err)?;
        writer
            .execute_batch(super::sqlite_detection::SCHEMA)
            .map_err(err)?;
        writer
            .execute_batch(super::sqlite_detect5::SCHEMA)
            .map_err(err)?;
        let old: i64 = writer
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'batches'",
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        if old > 0 {
            writer.execute_batch(MIGRATE_BATCHES).map_err(err)?;
            tracing::info!(path = %name, "migrated dedup records to (host, instance, sequence)");
        }
        let readers = (0..READERS)
            .map(|_| {
                let reader = Connection::open(path)?;
                reader.pragma_update(None, "cache_size", -65_536)?;
                reader.busy_timeout(std::time::Duration::from_secs(10))?;
                Ok(Mutex::new(reader))
            })
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err)?;
        let hours = Hours::open(&writer, now_secs()).map_err(err)?;
        let mut writer = writer;
        let filled = super::sqlite_detect5::fill_once(&mut writer).map_err(err)?;
        if filled > 0 {
            tracing::info!(path = %name, minute_rows = filled,
                "added stored minute rows to detection's five-minute rows");
        }
        let writer = Arc::new(Mutex::new(writer));
        let pipeline = Pipeline::start(&name, writer.clone(), hours.clone())?;
        tracing::info!(path = %name, "sqlite store open (WAL, synchronous=FULL)");
        Ok(SqliteStore {
            path: name,
            writer,
            readers,
            next_reader: Default::default(),
            hours,
            pipeline,
        })
    }

    /// Adds every minute row before `through` (Unix seconds) not yet in its hour row to it
    /// now, rather than once the minute is 2 minutes old (see `sqlite_hours`); returns how
    /// many hour rows that wrote. Retention does this before it deletes minute rows.
    pub fn add_minutes_to_hours(&self, through: i64) -> Result<usize, StoreError> {
        let through = through.div_euclid(60) * 60;
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if through <= self.hours.before() {
            return Ok(0);
        }
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let added = (self.hours.advance(&tx, through))
            .and_then(|added| tx.commit().map(|()| added))
            .map_err(|e| self.err(e))?;
        self.hours.moved(through);
        Ok(added)
    }

    /// Adds minute rows of functions and services to detection's five-minute rows only (what
    /// the roll-up does beside writing them as minute rows) and their services to the known
    /// services, in one transaction: for benches that build weeks of detection history
    /// without the minute, hour and stack rows a real roll-up also writes.
    pub fn add_detection_rows(&self, rows: &[Row]) -> Result<(), StoreError> {
        let services: std::collections::BTreeSet<&str> = (rows.iter())
            .filter(|r| r.kind == Kind::Service)
            .map(|r| r.service.as_str())
            .collect();
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        (|| {
            let tx = conn.transaction()?;
            {
                let mut svc = tx.prepare_cached("INSERT OR IGNORE INTO services VALUES (?1)")?;
                for s in services {
                    svc.execute(params![s])?;
                }
            }
            super::sqlite_detect5::add(&tx, rows)?;
            tx.commit()
        })()
        .map_err(|e| self.err(e))
    }

    /// Waits until every acknowledged batch is queryable.
    fn settle(&self) -> Result<(), StoreError> {
        self.pipeline.settle()
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        self.settle()?;
        let start = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = self.readers.len();
        // A free reader if there is one, else wait for the one this read was dealt.
        let conn = (0..n)
            .find_map(|i| self.readers[(start + i) % n].try_lock().ok())
            .unwrap_or_else(|| {
                self.readers[start % n]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
            });
        f(&conn).map_err(|e| self.err(e))
    }

    /// Sums of one kind over a window, per (service, key) or per service (`by_key` false,
    /// with distinct keys counted in `hosts`), sorted by (service, key). Rows are summed here
    /// rather than by SQL GROUP BY: streaming the primary-key ranges into a hash map avoids
    /// SQLite's temp-B-tree sort and is several times faster on day-long windows.
    fn keyed(
        &self,
        kind: Kind,
        window: Window,
        service: Option<&str>,
        by_key: bool,
    ) -> Result<Vec<Keyed>, StoreError> {
        let w = window.aligned()?;
        let src = source(
            kind,
            &ranges(w, true, self.hours.complete_before()),
            service.is_some(),
            None,
        );
        let sql = src.replace(
            "SELECT *",
            &format!("SELECT service, key, {}", TOTALS_COLUMNS.join(", ")),
        );
        let mut groups: foldhash::HashMap<String, (Keyed, HashSet<String>)> = Default::default();
        let mut id = String::new();
        self.read(|c| {
            let mut st = c.prepare_cached(&sql)?;
            let mut rows = st.query(rusqlite::params_from_iter(service))?;
            while let Some(r) = rows.next()? {
                let svc = r.get_ref(0)?.as_str()?;
                let key = r.get_ref(1)?.as_str()?;
                id.clear();
                id.push_str(svc);
                if by_key {
                    id.push('\0');
                    id.push_str(key);
                }
                let t = totals_at(r, 2)?;
                match groups.get_mut(id.as_str()) {
                    Some((k, keys)) => {
                        k.totals.add(&t);
                        if !by_key && !keys.contains(key) {
                            keys.insert(key.to_string());
                        }
                    }
                    None => {
                        let mut keys = HashSet::new();
                        if !by_key {
                            keys.insert(key.to_string());
                        }
                        let k = Keyed {
                            service: svc.to_string(),
                            key: if by_key {
                                key.to_string()
                            } else {
                                String::new()
                            },
                            totals: t,
                            hosts: 0,
                        };
                        groups.insert(id.clone(), (k, keys));
                    }
                }
            }
            Ok(())
        })?;
        let mut out: Vec<Keyed> = groups
            .into_values()
            .map(|(mut k, keys)| {
                k.hosts = if by_key { 1 } else { keys.len() as u64 };
                k
            })
            .collect();
        out.sort_by(|a, b| (&a.service, &a.key).cmp(&(&b.service, &b.key)));
        Ok(out)
    }
}

/// Union of range scans (one per resolution range): SQLite plans each as a range, where one
/// OR'd condition would scan the whole kind. One function's rows come from the series index
/// (without statistics SQLite would walk every function's rows of the window instead).
fn source(kind: Kind, ranges: &[Range], by_service: bool, key: Option<()>) -> String {
    let index = if kind == Kind::Function && by_service && key.is_some() {
        " INDEXED BY rollup_fn_incl"
    } else {
        ""
    };
    let mut parts = Vec::new();
    for r in ranges {
        let mut s = format!(
            "SELECT * FROM rollup{index} WHERE kind = {} AND res = {} AND {}",
            kind as u8,
            r.res,
            minutes(r, by_service && key.is_none())
        );
        if by_service {
            s.push_str(" AND service = ?1");
        }
        if key.is_some() {
            s.push_str(" AND key = ?2");
        }
        parts.push(s);
    }
    if parts.is_empty() {
        // Keeps the SQL valid for a window with no range (cannot happen after `aligned`).
        parts.push("SELECT * FROM rollup WHERE 0".into());
    }
    parts.join(" UNION ALL ")
}

/// Deletes the rollup rows of resolutions `res` older than ?1. Naming every kind and
/// resolution lets the primary key (kind, res, minute, ...) seek the old rows of each; `minute
/// < ?1` alone scanned the whole table with the writer held (about 30 s on a 2.4 GB store,
/// stalling ingest every retention pass).
fn expire_sql(res: &[u8]) -> String {
    let kinds: Vec<String> = (0..=u8::MAX)
        .filter_map(Kind::from_code)
        .map(|k| (k as u8).to_string())
        .collect();
    let res: Vec<String> = res.iter().map(u8::to_string).collect();
    format!(
        "DELETE FROM rollup WHERE kind IN ({}) AND res IN ({}) AND minute < ?1",
        kinds.join(", "),
        res.join(", ")
    )
}

/// Most row times a one-service read names one by one.
const SEEK_TIMES: i64 = 1500;

/// The `minute` condition of one range. A one-service read names each row time (`minute IN
/// (...)`), so the primary key (kind, res, minute, service) seeks to that service's rows at each
/// time instead of walking every service's rows of the range (with N services, 1/N of them).
fn minutes(r: &Range, seek: bool) -> String {
    let step = if r.res == RES_HOUR { 3600 } else { 60 };
    let first = (r.from + step - 1).div_euclid(step) * step;
    let n = (r.to - first + step - 1).div_euclid(step);
    if !seek || n <= 0 || n > SEEK_TIMES {
        return format!("minute >= {} AND minute < {}", r.from, r.to);
    }
    let times: Vec<String> = (0..n).map(|i| (first + i * step).to_string()).collect();
    format!("minute IN ({})", times.join(", "))
}

fn totals_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Totals> {
    Totals::from_columns(|i| Ok(r.get::<_, Option<i64>>(at + i)?.unwrap_or(0).max(0) as u64))
}

/// Adds `rows` to the rollup table (and new services to `services`) inside `tx`.
pub(super) fn upsert_rows(tx: &rusqlite::Transaction<'_>, rows: &[Row]) -> rusqlite::Result<()> {
    let mut up = tx.prepare_cached(&format!(
        "INSERT INTO rollup VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
         ON CONFLICT (kind, res, minute, service, key) DO UPDATE SET {}",
        add_excluded()
    ))?;
    let mut svc = tx.prepare_cached("INSERT OR IGNORE INTO services VALUES (?1)")?;
    for row in rows {
        let t = &row.totals;
        up.execute(params![
            row.kind as u8,
            row.res,
            row.minute,
            row.service,
            row.key,
            to_sql(t.samples_self),
            to_sql(t.samples_incl),
            to_sql(t.uj_self),
            to_sql(t.uj_incl),
            to_sql(t.est_uj_self),
            to_sql(t.est_uj_incl),
            to_sql(t.idle_uj),
            to_sql(t.est_idle_uj),
            to_sql(t.duration_ms),
            to_sql(t.dropped),
        ])?;
        if row.kind == Kind::Service && row.res == RES_MINUTE {
            svc.execute(params![row.service])?;
        }
    }
    super::sqlite_detect5::add(tx, rows)
}

impl Store for SqliteStore {
    fn ingest(&self, batch: &Batch) -> Result<Ingested, StoreError> {
        self.pipeline.ingest(batch)
    }

    fn queue(
        &self,
        batch: &wattson_proto::view::BatchView<'_>,
        encoded: bytes::Bytes,
    ) -> Option<super::IngestFuture> {
        Some(self.pipeline.queue(batch, encoded))
    }

    fn write(&self, rollup: &Rollup) -> Result<Ingested, StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let seen = is_received(&tx, &rollup.host, &rollup.instance, rollup.sequence)
            .map_err(|e| self.err(e))?;
        let fresh = if seen {
            0
        } else {
            tx.execute(
                "INSERT OR IGNORE INTO received VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    rollup.host,
                    rollup.instance,
                    rollup.sequence as i64,
                    now,
                    rollup.profiles,
                    to_sql(rollup.samples)
                ],
            )
            .map_err(|e| self.err(e))?
        };
        if fresh == 0
            || self
                .pipeline
                .is_pending(&rollup.host, &rollup.instance, rollup.sequence)
        {
            // Dropping the transaction rolls back; nothing was written.
            return Ok(Ingested::Duplicate);
        }
        // Hour rows as the pipeline writes them: only of minutes before the watermark.
        let before = self.hours.before();
        let minutes: Vec<Row> = (rollup.rows.iter())
            .filter(|r| r.res == RES_MINUTE)
            .cloned()
            .collect();
        upsert_rows(&tx, &minutes).map_err(|e| self.err(e))?;
        upsert_rows(&tx, &hour_rows(&rollup.rows, before)).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(Ingested::New {
            profiles: rollup.profiles,
            samples: rollup.samples,
        })
    }

    fn top(&self, q: &TopQuery) -> Result<Vec<Keyed>, StoreError> {
        let mut rows = self.keyed(Kind::Function, q.window, q.service.as_deref(), true)?;
        rank_sort(&mut rows, q.rank);
        rows.truncate(q.limit as usize);
        Ok(rows)
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
        let hours = ranges(w, step % 3600 == 0, self.hours.complete_before());
        let src = source(Kind::Function, &hours, true, Some(()));
        let sql = format!(
            "SELECT (minute - {from}) / {step} * {step} + {from} AS bucket, {sums} FROM ({src}) \
             GROUP BY bucket ORDER BY bucket",
            from = w.from,
            sums = sums()
        );
        self.read(|c| {
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(params![service, function], |r| {
                Ok(Point {
                    at: r.get(0)?,
                    totals: totals_at(r, 1)?,
                })
            })?;
            rows.collect()
        })
    }

    fn services(&self, window: Window) -> Result<Vec<Keyed>, StoreError> {
        // Grouped by service only: `key` (the host) is what count(DISTINCT key) counts.
        self.keyed(Kind::Service, window, None, false)
    }

    fn service_hosts(&self, window: Window) -> Result<Vec<Keyed>, StoreError> {
        self.keyed(Kind::Service, window, None, true)
    }

    fn hosts(&self, window: Window) -> Result<Vec<Keyed>, StoreError> {
        self.keyed(Kind::Host, window, None, true)
    }

    fn builds(&self, window: Window, service: Option<&str>) -> Result<Vec<Keyed>, StoreError> {
        self.keyed(Kind::Build, window, service, true)
    }

    fn stack_rows(&self, window: Window, service: Option<&str>) -> Result<Vec<Keyed>, StoreError> {
        self.keyed(Kind::Stack, window, service, true)
    }

    fn lines(&self, window: Window, service: Option<&str>) -> Result<Vec<Keyed>, StoreError> {
        self.keyed(Kind::Line, window, service, true)
    }

    fn known_services(&self) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached("SELECT service FROM services ORDER BY service")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    fn buckets(
        &self,
        of: Of,
        window: Window,
        service: &str,
        step: i64,
    ) -> Result<Buckets, StoreError> {
        let b = Buckets::new(window, step)?;
        if b.five_minute() {
            return self.read(|c| super::sqlite_detect5::read(c, of, service, b));
        }
        let complete = self.hours.complete_before();
        self.read(|c| detection::buckets(c, of, service, b, complete))
    }

    fn first_builds(&self, window: Window) -> Result<Vec<FirstSeen>, StoreError> {
        let w = window.aligned()?;
        self.read(|c| detection::first_builds(c, w))
    }

    fn put_change(&self, change: &Change, replaces: Option<&str>) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        detection::put_change(&mut conn, change, replaces).map_err(|e| self.err(e))
    }

    fn changes(&self, window: Window, service: Option<&str>) -> Result<Vec<Change>, StoreError> {
        // Changes are written outside the ingest pipeline: no need to wait for it.
        let conn = self.readers[0].lock().unwrap_or_else(|p| p.into_inner());
        detection::changes(&conn, window, service).map_err(|e| self.err(e))
    }

    fn retain(&self, policy: &Retention, now: i64) -> Result<RetentionReport, StoreError> {
        let raw_cut = now - policy.raw.as_secs() as i64;
        let total_cut = now - policy.total.as_secs() as i64;
        // Rows still held for roll-up would otherwise land after the cut.
        self.settle()?;
        // Minute rows about to go are added to their hours first, up to a whole hour so
        // queries of whole hours read them from hour rows.
        self.add_minutes_to_hours(hour_of(raw_cut + 3599))?;
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let run = |sql: &str, a: i64| conn.execute(sql, params![a]).map_err(|e| self.err(e));
        let expired = run(&expire_sql(&[RES_MINUTE, RES_HOUR, RES_DETECT]), total_cut)?;
        let minutes = run(&expire_sql(&[RES_MINUTE]), raw_cut)?;
        let detect_cut = policy.detect_cut(now);
        let detect = super::sqlite_detect5::retain(&conn, detect_cut).map_err(|e| self.err(e))?;
        // Old dedup records fold into one floor row per agent instance; floors of instances
        // silent for the whole retention go.
        run(
            "INSERT INTO received_floor (host, instance, seq, folded, updated) \
             SELECT host, instance, max(seq), count(*), max(received) FROM received \
             WHERE received < ?1 GROUP BY host, instance \
             ON CONFLICT (host, instance) DO UPDATE SET seq = max(seq, excluded.seq), \
             folded = folded + excluded.folded, updated = max(updated, excluded.updated)",
            now - DEDUP_WINDOW,
        )?;
        run(
            "DELETE FROM received WHERE received < ?1",
            now - DEDUP_WINDOW,
        )?;
        run("DELETE FROM received_floor WHERE updated < ?1", total_cut)?;
        run("DELETE FROM changes WHERE at < ?1", total_cut)?;
        // Forget services with no rows left, so `known_services` stays truthful.
        conn.execute(
            &format!(
                "DELETE FROM services WHERE service NOT IN \
                 (SELECT DISTINCT service FROM rollup WHERE kind = {})",
                Kind::Service as u8
            ),
            [],
        )
        .map_err(|e| self.err(e))?;
        Ok(RetentionReport {
            minute_rows_deleted: minutes as u64,
            expired_rows_deleted: expired as u64,
            detect_rows_deleted: detect as u64,
        })
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let (batches, rows, pages, page_size) = self.read(|c| {
            let batches: i64 = c.query_row(
                "SELECT (SELECT count(*) FROM received) \
                 + (SELECT coalesce(sum(folded), 0) FROM received_floor)",
                [],
                |r| r.get(0),
            )?;
            let rows: i64 = c.query_row("SELECT count(*) FROM rollup", [], |r| r.get(0))?;
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let size: Option<i64> = c
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .optional()?;
            Ok((batches, rows, pages, size.unwrap_or(4096)))
        })?;
        let wal = std::fs::metadata(format!("{}-wal", self.path)).map_or(0, |m| m.len())
            + super::journal::Journal::disk_bytes(&super::sqlite_ingest::journal_dir(&self.path));
        Ok(StoreStats {
            batches: batches as u64,
            rows: rows as u64,
            bytes: (pages * page_size) as u64 + wal,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::synthetic::BatchBuilder;
    use prost::Message as _;
    use wattson_proto::view::BatchView;

    /// Retention's deletes seek the primary key instead of scanning the whole rollup table.
    #[test]
    fn retention_deletes_seek_old_rows_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("w.sqlite")).unwrap();
        let conn = store.writer.lock().unwrap();
        for sql in [
            expire_sql(&[RES_MINUTE, RES_HOUR, RES_DETECT]),
            expire_sql(&[RES_MINUTE]),
        ] {
            let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let plan: Vec<String> = (st.query_map([0], |r| r.get::<_, String>(3)).unwrap())
                .map(Result::unwrap)
                .collect();
            assert!(
                plan.iter().any(|p| p
                    .contains("SEARCH rollup USING PRIMARY KEY (kind=? AND res=? AND minute<?)")),
                "{sql}: {plan:?}"
            );
        }
    }

    /// Issue 20: the ingest queue was unbounded; with the disk (here: the write connection)
    /// stalled, every arriving batch was held in memory. Past the bound it is refused as
    /// `Busy` (UNAVAILABLE: the agent retries), and the queue drains once the stall ends.
    #[test]
    fn a_full_ingest_queue_refuses_batches_as_busy() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("w.sqlite")).unwrap();
        let one = |seq| {
            BatchBuilder::new("h1", seq)
                .interval(
                    1_793_577_600,
                    10,
                    false,
                    0.0,
                    &[("api", "", "main;f", 1, 1.0)],
                )
                .build()
        };
        let batches: Vec<Batch> = (1..=2 * super::super::sqlite_ingest::MAX_QUEUED as u64)
            .map(one)
            .collect();
        let stall = store.writer.lock().unwrap();
        let futures: Vec<_> = batches
            .iter()
            .map(|b| {
                let bytes = bytes::Bytes::from(b.encode_to_vec());
                store.queue(&BatchView::of(b), bytes).unwrap()
            })
            .collect();
        drop(stall);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (mut stored, mut busy) = (0, 0);
        for f in futures {
            match rt.block_on(f) {
                Ok(Ingested::New { .. }) => stored += 1,
                Err(StoreError::Busy(m)) => {
                    assert!(m.contains("already wait for the sqlite journal"), "{m}");
                    busy += 1
                }
                other => panic!("{other:?}"),
            }
        }
        // The writer may have taken a first group before it blocked; the rest wait or go.
        assert!(busy > 0, "{busy} refused, {stored} stored");
        assert_eq!(stored + busy, batches.len());
        // Nothing is left stuck: a later batch stores.
        assert!(matches!(
            store.ingest(&one(1 << 20)),
            Ok(Ingested::New { .. })
        ));
    }
}
