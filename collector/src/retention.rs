//! The collector's retention loop: applies a [`Retention`] policy to the store once at start and
//! then periodically, on a blocking thread, logging what each pass deleted.

use std::sync::Arc;
use std::time::Duration;

use crate::store::{Retention, Store};

/// Runs retention now and then every `every` until the task is dropped.
pub async fn run(store: Arc<dyn Store>, policy: Retention, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let store = store.clone();
        let now = crate::report::now();
        match tokio::task::spawn_blocking(move || store.retain(&policy, now)).await {
            Ok(Ok(r)) => tracing::info!(
                minute_rows_deleted = r.minute_rows_deleted,
                detect_rows_deleted = r.detect_rows_deleted,
                expired_rows_deleted = r.expired_rows_deleted,
                raw = ?policy.raw,
                total = ?policy.total,
                "retention pass"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "retention pass failed; retrying next period"),
            Err(e) => tracing::warn!(error = %e, "retention task failed"),
        }
    }
}
