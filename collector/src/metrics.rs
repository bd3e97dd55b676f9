//! Prometheus text exposition (format 0.0.4) on `GET /metrics`, as Kepler and Scaphandre users
//! expect: the collector's ingest counters (counted by [`Counted`], a [`Store`] wrapper, so
//! every write path is counted), what ingest refused before the store ([`Rejections`]), the
//! store's size, and per-service watts over the last five minutes, labelled
//! `estimated="true"` when any joule came from a model. The text format and the HTTP responder
//! are [`wattson_proto::exposition`], shared with the agent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::net::TcpListener;
use wattson_proto::exposition::{self, Kind, Text};
use wattson_proto::v1::{Change, PowerRequest, TimeWindow};

use crate::detection::Detector;
use crate::ingest_cpu;
use crate::query::QueryEngine;
use crate::store::{
    Buckets, FirstSeen, IngestFuture, Ingested, Keyed, Of, Point, Retention, RetentionReport,
    Rollup, Store, StoreError, StoreStats, TopQuery, Window,
};

pub use wattson_proto::exposition::{BindError, bind};

/// Window of the per-service watts gauges.
const WATTS_WINDOW_SECONDS: i64 = 300;

/// A [`Store`] that counts what is written through it, and holds the count of what the ingest
/// endpoint refused before the store ([`Counted::rejections`]).
pub struct Counted {
    inner: Arc<dyn Store>,
    /// Shared with the futures of queued batches, which count when they resolve.
    counts: Arc<Counts>,
    rejections: Arc<Rejections>,
}

/// Requests the ingest endpoint refused as INVALID_ARGUMENT or OUT_OF_RANGE before any store
/// saw them: agents move those batches to `rejected/` and count them as lost, so the collector
/// counts them too.
#[derive(Debug, Default)]
pub struct Rejections {
    malformed: AtomicU64,
    too_large: AtomicU64,
    invalid: AtomicU64,
}

impl Rejections {
    /// A request whose bytes hold no readable batch (protobuf, or its zstd frame).
    pub fn malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }

    /// A request or zstd frame above the maximum message size.
    pub fn too_large(&self) {
        self.too_large.fetch_add(1, Ordering::Relaxed);
    }

    /// A batch that failed validation.
    pub fn invalid(&self) {
        self.invalid.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Counts {
    stored: AtomicU64,
    duplicates: AtomicU64,
    errors: AtomicU64,
    /// Refused with the ingest queue full ([`StoreError::Busy`]); the agents retry them.
    busy: AtomicU64,
    samples: AtomicU64,
    write_micros: AtomicU64,
}

impl Counted {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Counted {
        Counted {
            inner,
            counts: Arc::default(),
            rejections: Arc::default(),
        }
    }

    /// The rejection counts to hand the ingest endpoint (`ServeConfig::rejections`).
    pub fn rejections(&self) -> Arc<Rejections> {
        self.rejections.clone()
    }
}

/// What ingest has counted since the collector started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestCounts {
    /// Batches stored.
    pub stored: u64,
    /// Batches acknowledged as duplicates, storing nothing.
    pub duplicates: u64,
    /// Batches the store failed to take (the agents retry them).
    pub errors: u64,
    /// Requests refused before the store (malformed, too large, invalid).
    pub rejected: u64,
    /// Samples stored.
    pub samples: u64,
}

impl Counted {
    /// What ingest has counted so far.
    pub fn ingest_counts(&self) -> IngestCounts {
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let r = &self.rejections;
        IngestCounts {
            stored: c(&self.counts.stored),
            duplicates: c(&self.counts.duplicates),
            errors: c(&self.counts.errors),
            rejected: c(&r.malformed) + c(&r.too_large) + c(&r.invalid),
            samples: c(&self.counts.samples),
        }
    }
}

impl Counts {
    /// Counts the outcome of one write or ingest that took `micros`.
    fn count(&self, r: &Result<Ingested, StoreError>, started: Instant) {
        self.write_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match r {
            Ok(Ingested::New { samples, .. }) => {
                self.stored.fetch_add(1, Ordering::Relaxed);
                self.samples.fetch_add(*samples, Ordering::Relaxed);
            }
            Ok(Ingested::Duplicate) => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Err(StoreError::Busy(_)) => {
                self.busy.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Store for Counted {
    fn write(&self, rollup: &Rollup) -> Result<Ingested, StoreError> {
        let started = Instant::now();
        let r = self.inner.write(rollup);
        self.counts.count(&r, started);
        r
    }

    fn ingest(&self, batch: &wattson_proto::v1::Batch) -> Result<Ingested, StoreError> {
        // The backend's own ingest: SQLite journals and rolls up asynchronously.
        let started = Instant::now();
        let r = self.inner.ingest(batch);
        self.counts.count(&r, started);
        r
    }

    fn queue(
        &self,
        batch: &wattson_proto::view::BatchView<'_>,
        encoded: bytes::Bytes,
    ) -> Option<IngestFuture> {
        let started = Instant::now();
        let stored = self.inner.queue(batch, encoded)?;
        let counts = self.counts.clone();
        Some(Box::pin(async move {
            let r = stored.await;
            counts.count(&r, started);
            r
        }))
    }

    fn top(&self, q: &TopQuery) -> Result<Vec<Keyed>, StoreError> {
        self.inner.top(q)
    }
    fn series(&self, w: Window, s: &str, f: &str, step: i64) -> Result<Vec<Point>, StoreError> {
        self.inner.series(w, s, f, step)
    }
    fn services(&self, w: Window) -> Result<Vec<Keyed>, StoreError> {
        self.inner.services(w)
    }
    fn service_hosts(&self, w: Window) -> Result<Vec<Keyed>, StoreError> {
        self.inner.service_hosts(w)
    }
    fn hosts(&self, w: Window) -> Result<Vec<Keyed>, StoreError> {
        self.inner.hosts(w)
    }
    fn builds(&self, w: Window, s: Option<&str>) -> Result<Vec<Keyed>, StoreError> {
        self.inner.builds(w, s)
    }
    fn stack_rows(&self, w: Window, s: Option<&str>) -> Result<Vec<Keyed>, StoreError> {
        self.inner.stack_rows(w, s)
    }
    fn lines(&self, w: Window, s: Option<&str>) -> Result<Vec<Keyed>, StoreError> {
        self.inner.lines(w, s)
    }
    fn known_services(&self) -> Result<Vec<String>, StoreError> {
        self.inner.known_services()
    }
    fn buckets(&self, of: Of, w: Window, s: &str, step: i64) -> Result<Buckets, StoreError> {
        self.inner.buckets(of, w, s, step)
    }
    fn first_builds(&self, w: Window) -> Result<Vec<FirstSeen>, StoreError> {
        self.inner.first_builds(w)
    }
    fn put_change(&self, c: &Change, replaces: Option<&str>) -> Result<(), StoreError> {
        self.inner.put_change(c, replaces)
    }
    fn changes(&self, w: Window, s: Option<&str>) -> Result<Vec<Change>, StoreError> {
        self.inner.changes(w, s)
    }
    fn retain(&self, p: &Retention, now: i64) -> Result<RetentionReport, StoreError> {
        self.inner.retain(p, now)
    }
    fn stats(&self) -> Result<StoreStats, StoreError> {
        self.inner.stats()
    }
}

/// Renders the exposition text.
pub fn render(
    counted: &Counted,
    engine: &QueryEngine,
    detector: Option<&Detector>,
    now: i64,
) -> String {
    let mut t = Text::new();
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    t.family(
        "wattson_collector_batches_total",
        Kind::Counter,
        "Batches that reached the store, by result (validation rejections happen before); busy: \
         refused UNAVAILABLE with the ingest queue full, retried by the agents.",
    )
    .sample(&[("result", &"stored")], c(&counted.counts.stored))
    .sample(&[("result", &"duplicate")], c(&counted.counts.duplicates))
    .sample(&[("result", &"error")], c(&counted.counts.errors))
    .sample(&[("result", &"busy")], c(&counted.counts.busy));
    let r = &counted.rejections;
    t.family(
        "wattson_collector_batches_rejected_total",
        Kind::Counter,
        "Requests refused before the store, by reason: no readable batch (malformed), above the \
         maximum message size (too_large), a batch that failed validation (invalid). Agents \
         count them as lost.",
    )
    .sample(&[("reason", &"malformed")], c(&r.malformed))
    .sample(&[("reason", &"too_large")], c(&r.too_large))
    .sample(&[("reason", &"invalid")], c(&r.invalid));
    t.family(
        "wattson_collector_samples_total",
        Kind::Counter,
        "Stack samples stored.",
    )
    .sample(&[], c(&counted.counts.samples));
    t.family(
        "wattson_collector_line_keys_dropped_total",
        Kind::Counter,
        "Source-line rows (function, callee, file, line) not stored because a batch had more \
         than the roll-up keeps (the hottest 512 per batch); their samples still count in \
         stacks and functions.",
    )
    .sample(&[], c(&crate::store::rollup::LINE_KEYS_DROPPED));
    t.family(
        "wattson_collector_store_write_seconds_total",
        Kind::Counter,
        "Time spent in durable store writes.",
    )
    .sample(&[], c(&counted.counts.write_micros) / 1e6);
    let mut cpu = t.family(
        "wattson_collector_ingest_cpu_seconds_total",
        Kind::Counter,
        "CPU the ingest path used, by stage: receive (zstd, reading, validating and resolving \
         each request; estimated from one request in 16), durable (dedup and the journal or \
         INSERT), merge (summing batches in memory), rollup (writing the summed rows). HTTP/2 \
         and the runtime are in no stage.",
    );
    for (stage, spent) in ingest_cpu::spent() {
        cpu.sample(&[("stage", &stage.name())], spent.as_secs_f64());
    }
    match counted.stats() {
        Ok(s) => {
            for (name, help, v) in [
                ("wattson_store_bytes", "Size of the store on disk.", s.bytes),
                ("wattson_store_rows", "Rollup rows in the store.", s.rows),
                (
                    "wattson_store_batches",
                    "Batches recorded for dedup.",
                    s.batches,
                ),
            ] {
                t.family(name, Kind::Gauge, help).sample(&[], v as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: store stats failed"),
    }
    // Whole minutes ending with the current one, so the window is exactly 5 minutes long.
    let to = (now.div_euclid(60) + 1) * 60;
    let req = PowerRequest {
        window: Some(TimeWindow {
            from_unix_seconds: to - WATTS_WINDOW_SECONDS,
            to_unix_seconds: to,
        }),
    };
    match engine.power(&req) {
        Ok(p) => {
            let power: Vec<_> = p
                .services
                .iter()
                .map(|s| (s, s.power.unwrap_or_default()))
                .collect();
            let mut watts = t.family(
                "wattson_service_watts",
                Kind::Gauge,
                "Average watts attributed to the service on profiled hosts over the last 5 minutes.",
            );
            for (s, pw) in &power {
                watts.sample(
                    &[("service", &s.service), ("estimated", &pw.estimated)],
                    pw.watts,
                );
            }
            let mut fleet = t.family(
                "wattson_service_fleet_watts",
                Kind::Gauge,
                "Service watts scaled to the whole fleet by the profiled fraction.",
            );
            for (s, pw) in &power {
                fleet.sample(
                    &[("service", &s.service), ("estimated", &pw.estimated)],
                    pw.fleet_watts,
                );
            }
            let mut hosts = t.family(
                "wattson_service_hosts_reporting",
                Kind::Gauge,
                "Hosts that reported the service over the last 5 minutes.",
            );
            for (s, _) in &power {
                hosts.sample(&[("service", &s.service)], s.hosts_reporting as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: power query failed"),
    }
    if let Some(d) = detector {
        let mut open = t.family(
            "wattson_regressions_open",
            Kind::Gauge,
            "Open power regressions per service found by the last detection pass.",
        );
        for (service, n) in d.open_by_service() {
            open.sample(&[("service", &service)], n as f64);
        }
    }
    t.finish()
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    counted: Arc<Counted>,
    engine: Arc<QueryEngine>,
    detector: Arc<Detector>,
) {
    // Rendered off the async workers: the store stats and the power query read SQLite.
    exposition::serve(listener, move || {
        render(&counted, &engine, Some(&detector), crate::report::now())
    })
    .await;
}
