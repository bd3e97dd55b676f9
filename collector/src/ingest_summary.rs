//! One log line a minute of what ingest did: batches stored, duplicates, store errors and
//! refused requests, samples, and the collector's CPU per stored batch by stage, so an operator
//! sees the load and its cost without scraping `/metrics`. Silent while nothing arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ingest_cpu;
use crate::metrics::{Counted, IngestCounts};

/// Ingest's counters and stage CPU at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    counts: IngestCounts,
    cpu: [Duration; 4],
    at: Instant,
}

impl Snapshot {
    /// Reads them now.
    pub fn take(counted: &Counted) -> Snapshot {
        Snapshot {
            counts: counted.ingest_counts(),
            cpu: ingest_cpu::spent().map(|(_, d)| d),
            at: Instant::now(),
        }
    }
}

/// What happened between two snapshots, or `None` when nothing did.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Counter increases.
    pub counts: IngestCounts,
    /// Stored batches per second.
    pub per_second: f64,
    /// CPU per stored batch by stage, e.g. `receive=0.171 durable=0.038 merge=0.084
    /// rollup=0.067` (milliseconds); empty when nothing was stored.
    pub cpu_ms_per_batch: String,
}

impl Summary {
    /// The change from `before` to `after`.
    pub fn between(before: &Snapshot, after: &Snapshot) -> Option<Summary> {
        let (a, b) = (&before.counts, &after.counts);
        let counts = IngestCounts {
            stored: b.stored - a.stored,
            duplicates: b.duplicates - a.duplicates,
            errors: b.errors - a.errors,
            rejected: b.rejected - a.rejected,
            samples: b.samples - a.samples,
        };
        if counts == IngestCounts::default() {
            return None;
        }
        let secs = after.at.duration_since(before.at).as_secs_f64().max(1e-3);
        let cpu_ms_per_batch = if counts.stored == 0 {
            String::new()
        } else {
            ingest_cpu::Stage::ALL
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let spent = after.cpu[i].saturating_sub(before.cpu[i]);
                    let ms = 1e3 * spent.as_secs_f64() / counts.stored as f64;
                    format!("{}={ms:.3}", s.name())
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        Some(Summary {
            counts,
            per_second: counts.stored as f64 / secs,
            cpu_ms_per_batch,
        })
    }
}

/// Logs a [`Summary`] every `every` until the task is dropped.
pub async fn run(counted: Arc<Counted>, every: Duration) {
    let mut before = Snapshot::take(&counted);
    loop {
        tokio::time::sleep(every).await;
        let after = Snapshot::take(&counted);
        if let Some(s) = Summary::between(&before, &after) {
            let c = s.counts;
            tracing::info!(
                stored = c.stored,
                duplicates = c.duplicates,
                store_errors = c.errors,
                refused = c.rejected,
                samples = c.samples,
                batches_per_sec = format_args!("{:.1}", s.per_second),
                cpu_ms_per_batch = %s.cpu_ms_per_batch,
                "ingest in the last {}s",
                every.as_secs()
            );
        }
        before = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(stored: u64, rejected: u64, cpu_ms: [u64; 4], at: Instant) -> Snapshot {
        Snapshot {
            counts: IngestCounts {
                stored,
                rejected,
                samples: stored * 10,
                ..IngestCounts::default()
            },
            cpu: cpu_ms.map(Duration::from_millis),
            at,
        }
    }

    #[test]
    fn a_summary_gives_the_increase_and_cpu_per_stored_batch() {
        let t = Instant::now();
        let a = snapshot(100, 1, [10, 5, 5, 5], t);
        let b = snapshot(300, 3, [50, 15, 25, 45], t + Duration::from_secs(60));
        let s = Summary::between(&a, &b).unwrap();
        assert_eq!(
            (s.counts.stored, s.counts.rejected, s.counts.samples),
            (200, 2, 2000)
        );
        assert!((s.per_second - 200.0 / 60.0).abs() < 1e-9);
        assert_eq!(
            s.cpu_ms_per_batch,
            "receive=0.200 durable=0.050 merge=0.100 rollup=0.200"
        );
        // Nothing happened: no line. Only refusals: a line without CPU per batch.
        assert_eq!(Summary::between(&b, &b), None);
        let refused = snapshot(300, 9, [50, 15, 25, 45], t + Duration::from_secs(120));
        let s = Summary::between(&b, &refused).unwrap();
        assert_eq!((s.counts.stored, s.counts.rejected), (0, 6));
        assert_eq!(s.cpu_ms_per_batch, "");
    }
}
