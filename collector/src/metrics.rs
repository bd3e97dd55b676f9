//! Prometheus text exposition (format 0.0.4) on `GET /metrics`, as Kepler and Scaphandre users
//! expect: the collector's ingest counters (counted by [`Counted`], a [`Store`] wrapper, so
//! every write path is counted), the store's size, and per-service watts over the last five
//! minutes, labelled `estimated="true"` when any joule came from a model.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use wattson_proto::v1::{PowerRequest, TimeWindow};

use crate::query::QueryEngine;
use crate::store::{
    Ingested, Keyed, Point, Retention, RetentionReport, Rollup, Store, StoreError, StoreStats,
    TopQuery, Window,
};

/// Window of the per-service watts gauges.
const WATTS_WINDOW_SECONDS: i64 = 300;

/// A [`Store`] that counts what is written through it.
pub struct Counted {
    inner: Arc<dyn Store>,
    stored: AtomicU64,
    duplicates: AtomicU64,
    errors: AtomicU64,
    samples: AtomicU64,
    write_micros: AtomicU64,
}

impl Counted {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Counted {
        Counted {
            inner,
            stored: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            write_micros: AtomicU64::new(0),
        }
    }
}

impl Counted {
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
        self.count(&r, started);
        r
    }

    fn ingest(&self, batch: &wattson_proto::v1::Batch) -> Result<Ingested, StoreError> {
        // The backend's own ingest: SQLite journals and rolls up asynchronously.
        let started = Instant::now();
        let r = self.inner.ingest(batch);
        self.count(&r, started);
        r
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
    fn stacks(&self, w: Window, s: Option<&str>) -> Result<Vec<Keyed>, StoreError> {
        self.inner.stacks(w, s)
    }
    fn build_stacks(&self, w: Window, s: Option<&str>, b: &str) -> Result<Vec<Keyed>, StoreError> {
        self.inner.build_stacks(w, s, b)
    }
    fn known_services(&self) -> Result<Vec<String>, StoreError> {
        self.inner.known_services()
    }
    fn retain(&self, p: &Retention, now: i64) -> Result<RetentionReport, StoreError> {
        self.inner.retain(p, now)
    }
    fn stats(&self) -> Result<StoreStats, StoreError> {
        self.inner.stats()
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

/// Renders the exposition text.
pub fn render(counted: &Counted, engine: &QueryEngine, now: i64) -> String {
    let mut out = String::new();
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    metric(
        &mut out,
        "wattson_collector_batches_total",
        "counter",
        "Batches that reached the store, by result (validation rejections happen before).",
        &[
            ("{result=\"stored\"}".into(), c(&counted.stored)),
            ("{result=\"duplicate\"}".into(), c(&counted.duplicates)),
            ("{result=\"error\"}".into(), c(&counted.errors)),
        ],
    );
    metric(
        &mut out,
        "wattson_collector_samples_total",
        "counter",
        "Stack samples stored.",
        &[(String::new(), c(&counted.samples))],
    );
    metric(
        &mut out,
        "wattson_collector_store_write_seconds_total",
        "counter",
        "Time spent in durable store writes.",
        &[(String::new(), c(&counted.write_micros) / 1e6)],
    );
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
                metric(&mut out, name, "gauge", help, &[(String::new(), v as f64)]);
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
            let mut w = Vec::new();
            let mut fw = Vec::new();
            let mut hosts = Vec::new();
            for s in &p.services {
                let pw = s.power.unwrap_or_default();
                let l = format!(
                    "{{service=\"{}\",estimated=\"{}\"}}",
                    label(&s.service),
                    pw.estimated
                );
                w.push((l.clone(), pw.watts));
                fw.push((l, pw.fleet_watts));
                hosts.push((
                    format!("{{service=\"{}\"}}", label(&s.service)),
                    s.hosts_reporting as f64,
                ));
            }
            metric(
                &mut out,
                "wattson_service_watts",
                "gauge",
                "Average watts attributed to the service on profiled hosts over the last 5 minutes.",
                &w,
            );
            metric(
                &mut out,
                "wattson_service_fleet_watts",
                "gauge",
                "Service watts scaled to the whole fleet by the profiled fraction.",
                &fw,
            );
            metric(
                &mut out,
                "wattson_service_hosts_reporting",
                "gauge",
                "Hosts that reported the service over the last 5 minutes.",
                &hosts,
            );
        }
        Err(e) => tracing::warn!(error = %e, "metrics: power query failed"),
    }
    out
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, counted: Arc<Counted>, engine: Arc<QueryEngine>) {
    loop {
        let (mut sock, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let (counted, engine) = (counted.clone(), engine.clone());
        tokio::spawn(async move {
            // Read the request head (it may arrive in pieces), up to 8 KiB or 5 s.
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            let read_head = async {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), read_head).await;
            let head = String::from_utf8_lossy(&buf);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if head.starts_with("GET ") && path == "/metrics" {
                let now = crate::report::now();
                let body = tokio::task::spawn_blocking(move || render(&counted, &engine, now))
                    .await
                    .unwrap_or_default();
                ("200 OK", body)
            } else {
                ("404 Not Found", "try GET /metrics\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = sock.write_all(resp.as_bytes()).await {
                tracing::debug!(%peer, error = %e, "metrics write failed");
            }
        });
    }
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StoreError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StoreError::Io {
            what: format!("binding --metrics-listen {addr}"),
            source,
        })
}
