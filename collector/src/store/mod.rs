//! Storage: the [`Store`] trait every backend implements, its error type, the query shapes it
//! answers, and [`open`] which picks a backend from a `--store` URL.
//!
//! A batch is rolled up once at ingest ([`rollup`]) into rows keyed by (kind, resolution,
//! minute, service, key) and written per minute *and* per hour, so a query over days reads hour
//! rows and only its ragged edges at minute resolution. Retention then "downsamples" by deleting
//! minute rows older than the raw period; hour rows live until the total retention ends.
//!
//! Measured and estimated microjoules are kept in separate columns all the way down, so a
//! figure built from model estimates is always known to be estimated.
//!
//! The trait is synchronous: the gRPC server calls it from `spawn_blocking`.

pub mod buckets;
pub mod clickhouse;
pub mod clickhouse_server;
mod intern;
pub mod journal;
mod pipeline;
pub mod query_plan;
pub mod rollup;
pub mod sqlite;
mod sqlite_detect5;
mod sqlite_detection;
mod sqlite_hours;
mod sqlite_ingest;
pub mod synthetic;

use std::time::Duration;

use wattson_proto::v1::{Batch, Change};
use wattson_proto::view::BatchView;

pub use buckets::{BucketSeries, Buckets, FirstSeen, Of};
pub use rollup::{Accumulator, Kind, Prepared, Rollup, Row};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The `--store` URL is not one we understand.
    #[error(
        "unsupported store URL {url:?}: {why} (expected sqlite://PATH or clickhouse://HOST:PORT/DB)"
    )]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The batch cannot be stored as given (indexes out of range, bad timestamps...).
    #[error("invalid batch from host {host:?} sequence {sequence}: {why}")]
    InvalidBatch {
        /// Host id of the batch.
        host: String,
        /// Sequence number of the batch.
        sequence: u64,
        /// What is wrong.
        why: String,
    },
    /// A query that cannot be answered as asked (reversed range, unknown service...).
    #[error("bad query: {0}")]
    BadQuery(String),
    /// SQLite failed.
    #[error("sqlite store {path}: {source}")]
    Sqlite {
        /// Database file.
        path: String,
        /// Underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// The ClickHouse server could not be reached or answered with an error.
    #[error("clickhouse store {url}: {message}")]
    ClickHouse {
        /// HTTP endpoint.
        url: String,
        /// Status and body of the server's answer, or the transport error.
        message: String,
    },
    /// The ingest journal could not be written or rolled up; the batch was not acknowledged.
    #[error("sqlite store {path}: ingest journal: {message}")]
    Journal {
        /// Database file.
        path: String,
        /// What failed.
        message: String,
    },
    /// The ingest queue is full (the disk or the roll-up is behind): nothing was stored, and
    /// the agent keeps the batch and retries (UNAVAILABLE).
    #[error("store busy: {0} (the batch was not stored; retry later)")]
    Busy(String),
    /// A local file or process operation failed (creating the database directory, starting a
    /// test server...).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Result of [`Store::ingest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Stored now (durably, when this is returned).
    New {
        /// Interval profiles stored.
        profiles: u32,
        /// Samples stored.
        samples: u64,
    },
    /// The (host id, agent instance, sequence) was stored before; nothing was written.
    Duplicate,
}

/// A half-open time window `[from, to)` in Unix seconds. Queries round `from` down and `to` up
/// to whole minutes, the finest resolution stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Start, Unix seconds (inclusive).
    pub from: i64,
    /// End, Unix seconds (exclusive).
    pub to: i64,
}

impl Window {
    /// Checks the window and aligns it to minutes; a reversed or empty window is a [`StoreError::BadQuery`].
    pub fn aligned(self) -> Result<Window, StoreError> {
        if self.to < self.from {
            return Err(StoreError::BadQuery(format!(
                "reversed time range: from {} is after to {}",
                self.from, self.to
            )));
        }
        if self.to == self.from {
            return Err(StoreError::BadQuery(format!(
                "empty time window: from == to == {}",
                self.from
            )));
        }
        Ok(Window {
            from: self.from.div_euclid(60) * 60,
            to: (self.to + 59).div_euclid(60) * 60,
        })
    }

    /// Length in seconds.
    pub fn seconds(&self) -> i64 {
        self.to - self.from
    }
}

/// What `top` ranks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rank {
    /// Self energy (measured + estimated).
    #[default]
    EnergySelf,
    /// Inclusive energy.
    EnergyInclusive,
    /// Self samples (CPU).
    SamplesSelf,
    /// Inclusive samples.
    SamplesInclusive,
}

/// Sums of samples and energy; every figure the store returns is one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Samples whose leaf was the key (or all samples, for service/host/build rows).
    pub samples_self: u64,
    /// Samples with the key anywhere on the stack.
    pub samples_incl: u64,
    /// Measured self microjoules.
    pub uj_self: u64,
    /// Measured inclusive microjoules.
    pub uj_incl: u64,
    /// Estimated (model) self microjoules.
    pub est_uj_self: u64,
    /// Estimated inclusive microjoules.
    pub est_uj_incl: u64,
    /// Measured idle microjoules (host rows only).
    pub idle_uj: u64,
    /// Estimated idle microjoules (host rows only).
    pub est_idle_uj: u64,
    /// Milliseconds of profile covered (host rows only).
    pub duration_ms: u64,
    /// Samples the agent's sampler dropped (host rows only).
    pub dropped: u64,
}

impl Totals {
    /// Reads the ten sums from consecutive answer columns, in the order both backends'
    /// queries select them; `get(i)` reads the i-th of them.
    pub fn from_columns<E>(mut get: impl FnMut(usize) -> Result<u64, E>) -> Result<Self, E> {
        Ok(Totals {
            samples_self: get(0)?,
            samples_incl: get(1)?,
            uj_self: get(2)?,
            uj_incl: get(3)?,
            est_uj_self: get(4)?,
            est_uj_incl: get(5)?,
            idle_uj: get(6)?,
            est_idle_uj: get(7)?,
            duration_ms: get(8)?,
            dropped: get(9)?,
        })
    }

    /// Adds another set of sums to this one, saturating: figures come from requests, and one
    /// absurd batch must not make every later roll-up or query fail (or wrap).
    pub fn add(&mut self, o: &Totals) {
        for (a, b) in [
            (&mut self.samples_self, o.samples_self),
            (&mut self.samples_incl, o.samples_incl),
            (&mut self.uj_self, o.uj_self),
            (&mut self.uj_incl, o.uj_incl),
            (&mut self.est_uj_self, o.est_uj_self),
            (&mut self.est_uj_incl, o.est_uj_incl),
            (&mut self.idle_uj, o.idle_uj),
            (&mut self.est_idle_uj, o.est_idle_uj),
            (&mut self.duration_ms, o.duration_ms),
            (&mut self.dropped, o.dropped),
        ] {
            *a = a.saturating_add(b);
        }
    }

    /// Self microjoules, measured and estimated (saturating).
    pub fn uj_self_all(&self) -> u64 {
        self.uj_self.saturating_add(self.est_uj_self)
    }

    /// Inclusive microjoules, measured and estimated (saturating).
    pub fn uj_incl_all(&self) -> u64 {
        self.uj_incl.saturating_add(self.est_uj_incl)
    }

    /// Idle microjoules, measured and estimated (saturating).
    pub fn idle_uj_all(&self) -> u64 {
        self.idle_uj.saturating_add(self.est_idle_uj)
    }
}

/// One keyed sum from a query: `service` and `key` depend on the row kind (function name, host
/// id, build id, folded stack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed {
    /// Service label ("" for host rows).
    pub service: String,
    /// Function, host id, build id or folded stack.
    pub key: String,
    /// The sums.
    pub totals: Totals,
    /// Distinct hosts (only filled by [`Store::services`]).
    pub hosts: u64,
}

/// A `top` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopQuery {
    /// Time window.
    pub window: Window,
    /// Only this service, when set.
    pub service: Option<String>,
    /// What to rank by.
    pub rank: Rank,
    /// How many rows.
    pub limit: u32,
}

/// One point of a `series`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// Start of the bucket, Unix seconds.
    pub at: i64,
    /// Sums over the bucket.
    pub totals: Totals,
}

/// What [`Store::retain`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Minute rows are kept this long, then only hour rows remain.
    pub raw: Duration,
    /// Everything (hour rows, dedup records) is deleted after this long. (SQLite folds
    /// per-batch dedup records into one row per agent instance after a week.)
    pub total: Duration,
    /// Detection's five-minute rows ([`rollup::RES_DETECT`]) are kept this long (at most
    /// `total`): the collector sets it to detection's history.
    pub detect: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            raw: Duration::from_secs(7 * 86_400),
            total: Duration::from_secs(395 * 86_400),
            detect: Duration::from_secs(14 * 86_400),
        }
    }
}

impl Retention {
    /// Detection rows before this go at `now`: the UTC midnight before `detect` ago, where
    /// detection's series start ([`crate::detect::day_start`]). Cutting at `now - detect`
    /// would move every series' start hour by hour and with it the change points found.
    pub fn detect_cut(&self, now: i64) -> i64 {
        crate::detect::day_start(now - self.detect.min(self.total).as_secs() as i64).max(0)
    }
}

/// What [`Store::retain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionReport {
    /// Minute rows deleted (already summed into hour rows). ClickHouse deletes
    /// asynchronously and reports rows counted before the delete.
    pub minute_rows_deleted: u64,
    /// Detection rows deleted because they passed [`Retention::detect`] (SQLite counts packed
    /// hours).
    pub detect_rows_deleted: u64,
    /// Rows deleted because they passed the total retention.
    pub expired_rows_deleted: u64,
}

/// Size of the store, for `/metrics` and `power`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Batches stored (dedup records).
    pub batches: u64,
    /// Rollup rows.
    pub rows: u64,
    /// Bytes on disk, when the backend can tell.
    pub bytes: u64,
}

/// What [`Store::queue`] returns: resolves once the batch is durable (or found a duplicate).
pub type IngestFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Ingested, StoreError>> + Send>>;

/// Dedup records older than this (seconds) are folded by retention into one floor per agent
/// instance, the highest sequence seen, instead of one record per batch (a fleet of 10,000
/// hosts at 10 s sends 86 million batches a day). Agents ship each instance's batches in
/// sequence order, so a resend at or below the floor is a duplicate. A week covers any outage
/// an agent's spool rides out.
pub(crate) const DEDUP_WINDOW: i64 = 7 * 86_400;

/// A storage backend. Implementations are internally synchronized.
pub trait Store: Send + Sync {
    /// Stores a batch, deduplicating by (host id, agent instance, sequence) atomically with the
    /// write; returns only once the batch is durable.
    fn ingest(&self, batch: &Batch) -> Result<Ingested, StoreError> {
        let rollup = Rollup::from_batch(batch)?;
        self.write(&rollup)
    }

    /// Writes an already rolled-up batch (what [`Store::ingest`] does after [`Rollup::from_batch`]).
    fn write(&self, rollup: &Rollup) -> Result<Ingested, StoreError>;

    /// [`Store::ingest`] without blocking the caller: backends with an ingest pipeline resolve
    /// the batch on the calling thread, queue it and return the answer to await, so an async
    /// server does not park a thread per batch. `arrived`: the bytes `batch` arrived as, the
    /// encoded batch or a zstd frame of it ([`wattson_proto::compressed`]); a journal stores
    /// them as they are. `None`: no pipeline; call [`Store::ingest`] from a blocking thread.
    fn queue(&self, batch: &BatchView<'_>, arrived: bytes::Bytes) -> Option<IngestFuture> {
        let _ = (batch, arrived);
        None
    }

    /// Functions ranked by `q.rank`, summed over the window (per service and function).
    fn top(&self, q: &TopQuery) -> Result<Vec<Keyed>, StoreError>;

    /// One function's sums over time, in buckets of `step` seconds (a multiple of 60).
    fn series(
        &self,
        window: Window,
        service: &str,
        function: &str,
        step: i64,
    ) -> Result<Vec<Point>, StoreError>;

    /// Per-service totals over the window with the number of distinct hosts reporting.
    fn services(&self, window: Window) -> Result<Vec<Keyed>, StoreError>;

    /// Per (service, host) totals over the window: `key` is the host id.
    fn service_hosts(&self, window: Window) -> Result<Vec<Keyed>, StoreError>;

    /// Per-host totals (attributed, idle, covered duration) over the window.
    fn hosts(&self, window: Window) -> Result<Vec<Keyed>, StoreError>;

    /// Per (service, build id) totals over the window.
    fn builds(&self, window: Window, service: Option<&str>) -> Result<Vec<Keyed>, StoreError>;

    /// Folded stacks (root first, `;`-separated) with their sums over every build, for flame
    /// graphs and pprof.
    fn stacks(&self, window: Window, service: Option<&str>) -> Result<Vec<Keyed>, StoreError> {
        Ok(query_plan::fold_builds(
            self.stack_rows(window, service)?,
            None,
        ))
    }

    /// Like [`Store::stacks`], for the processes of one build id only (a version diff).
    fn build_stacks(
        &self,
        window: Window,
        service: Option<&str>,
        build: &str,
    ) -> Result<Vec<Keyed>, StoreError> {
        Ok(query_plan::fold_builds(
            self.stack_rows(window, service)?,
            Some(build),
        ))
    }

    /// Stack rows as stored, keyed `BUILD \t FOLDED` ([`rollup::stack_key`]), which
    /// [`Store::stacks`] and [`Store::build_stacks`] fold.
    fn stack_rows(&self, window: Window, service: Option<&str>) -> Result<Vec<Keyed>, StoreError>;

    /// Source line rows ([`Kind::Line`], keyed by [`rollup::line_key`]) per service over the
    /// window; `samples_self` counts the samples at the line. Empty from a store that keeps
    /// none (a benchmark sink).
    fn lines(&self, window: Window, service: Option<&str>) -> Result<Vec<Keyed>, StoreError> {
        let _ = (window, service);
        Ok(Vec::new())
    }

    /// Every service the store has ever seen, sorted.
    fn known_services(&self) -> Result<Vec<String>, StoreError>;

    /// Detection's input, in one read per service: on a fixed `step` (a multiple of 60 s)
    /// over the window, every function's inclusive samples, measured and estimated µJ per
    /// bucket ([`Of::Functions`]), or the service's totals over every host as one series keyed
    /// "" ([`Of::Totals`]).
    fn buckets(
        &self,
        of: Of,
        window: Window,
        service: &str,
        step: i64,
    ) -> Result<Buckets, StoreError>;

    /// Per (service, build id) with samples in the window, the first minute it was seen there,
    /// sorted by (service, build id).
    fn first_builds(&self, window: Window) -> Result<Vec<FirstSeen>, StoreError>;

    /// Stores a change event, replacing a stored change of the same id and deleting the change
    /// `replaces` (an automatic deploy it merged with), atomically.
    fn put_change(&self, change: &Change, replaces: Option<&str>) -> Result<(), StoreError>;

    /// Changes whose time is in `[window.from, window.to)` (not aligned), of one service when
    /// given, oldest first (ties by id).
    fn changes(&self, window: Window, service: Option<&str>) -> Result<Vec<Change>, StoreError>;

    /// Applies a retention policy relative to `now` (Unix seconds).
    fn retain(&self, policy: &Retention, now: i64) -> Result<RetentionReport, StoreError>;

    /// Size of the store.
    fn stats(&self) -> Result<StoreStats, StoreError>;
}

/// Opens the store named by a `--store` URL: `sqlite://PATH` or `clickhouse://HOST:PORT/DB`.
pub fn open(url: &str) -> Result<Box<dyn Store>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(StoreError::BadUrl {
                url: url.into(),
                why: "missing database path".into(),
            });
        }
        return Ok(Box::new(sqlite::SqliteStore::open(path)?));
    }
    if let Some(rest) = url.strip_prefix("clickhouse://") {
        let (addr, db) = rest.split_once('/').unwrap_or((rest, "wattson"));
        let db = if db.is_empty() { "wattson" } else { db };
        if addr.is_empty() {
            return Err(StoreError::BadUrl {
                url: url.into(),
                why: "missing HOST:PORT".into(),
            });
        }
        return Ok(Box::new(clickhouse::ClickHouseStore::open(
            &format!("http://{addr}"),
            db,
        )?));
    }
    Err(StoreError::BadUrl {
        url: url.into(),
        why: "unknown scheme".into(),
    })
}
