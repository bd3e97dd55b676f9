//! A store that keeps nothing, for the ingest bench's transport floor: the gRPC phase run into
//! it measures what the collector spends before a store sees a batch (HTTP/2, zstd, reading the
//! batch in place and validating it), which no store design can win back.

use std::sync::atomic::{AtomicU64, Ordering};

use wattson_collector::store::{
    Buckets, FirstSeen, IngestFuture, Ingested, Keyed, Point, Retention, RetentionReport, Rollup,
    Store, StoreError, StoreStats, TopQuery, Window,
};
use wattson_proto::v1::Change;
use wattson_proto::view::BatchView;

/// Acknowledges every batch at once and stores none; counts them for the bench's check.
#[derive(Debug, Default)]
pub struct Discard {
    batches: AtomicU64,
}

impl Discard {
    fn taken(&self, profiles: u32, samples: u64) -> Ingested {
        self.batches.fetch_add(1, Ordering::Relaxed);
        Ingested::New { profiles, samples }
    }
}

impl Store for Discard {
    fn write(&self, rollup: &Rollup) -> Result<Ingested, StoreError> {
        Ok(self.taken(rollup.profiles, rollup.samples))
    }

    fn queue(&self, batch: &BatchView<'_>, _encoded: bytes::Bytes) -> Option<IngestFuture> {
        let answer = self.taken(batch.profiles.len() as u32, 0);
        Some(Box::pin(async move { Ok(answer) }))
    }

    fn top(&self, _: &TopQuery) -> Result<Vec<Keyed>, StoreError> {
        Ok(Vec::new())
    }

    fn series(&self, _: Window, _: &str, _: &str, _: i64) -> Result<Vec<Point>, StoreError> {
        Ok(Vec::new())
    }

    fn services(&self, _: Window) -> Result<Vec<Keyed>, StoreError> {
        Ok(Vec::new())
    }

    fn service_hosts(&self, _: Window) -> Result<Vec<Keyed>, StoreError> {
        Ok(Vec::new())
    }

    fn hosts(&self, _: Window) -> Result<Vec<Keyed>, StoreError> {
        Ok(Vec::new())
    }

    fn builds(&self, _: Window, _: Option<&str>) -> Result<Vec<Keyed>, StoreError> {
        Ok(Vec::new())
    }

    fn stack_rows(&self, _: Window, _: Option<&str>) -> Result<Vec<Keyed>, StoreError> {
        Ok(Vec::new())
    }

    fn known_services(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    fn function_buckets(&self, w: Window, _: &str, step: i64) -> Result<Buckets, StoreError> {
        Buckets::new(w, step)
    }

    fn service_buckets(&self, w: Window, _: &str, step: i64) -> Result<Buckets, StoreError> {
        Buckets::new(w, step)
    }

    fn first_builds(&self, _: Window) -> Result<Vec<FirstSeen>, StoreError> {
        Ok(Vec::new())
    }

    fn put_change(&self, _: &Change, _: Option<&str>) -> Result<(), StoreError> {
        Ok(())
    }

    fn changes(&self, _: Window, _: Option<&str>) -> Result<Vec<Change>, StoreError> {
        Ok(Vec::new())
    }

    fn retain(&self, _: &Retention, _: i64) -> Result<RetentionReport, StoreError> {
        Ok(RetentionReport::default())
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        Ok(StoreStats {
            batches: self.batches.load(Ordering::Relaxed),
            ..StoreStats::default()
        })
    }
}
