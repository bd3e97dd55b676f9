//! Shipping interval profiles to a collector: [`wire`] turns profiles into `wattson.v1`
//! batches, [`spool`] keeps every batch on disk until the collector acknowledged it,
//! [`client`] talks gRPC, [`retry`] paces retries, and [`Shipper`] is the loop that moves
//! batches from the spool to the collector, oldest first, one acknowledged batch at a time.
//!
//! Exactly-once delivery rests on three facts: a batch is durable in the spool before it is
//! sent; it leaves the spool only after the collector acknowledged it (which the collector does
//! only once it is durable there); and its (host id, agent instance, sequence) lets the
//! collector recognise a resend of a batch whose acknowledgement was lost. The instance is the
//! spool's random id, so an agent whose spool was wiped (sequence back at 1) is not mistaken
//! for a resend.

pub mod client;
pub mod retry;
pub mod spool;
pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use self::client::{Client, SendError};
use self::retry::Backoff;
use self::spool::{Spool, SpoolError};

/// Counters of what the shipper did, for logs and tests.
#[derive(Debug, Default)]
pub struct ShipStats {
    /// Batches the collector stored.
    pub sent: AtomicU64,
    /// Batches the collector already had (a resend after a lost acknowledgement).
    pub duplicates: AtomicU64,
    /// Batches refused as invalid (moved to `rejected/`, counted as lost).
    pub rejected: AtomicU64,
    /// Failed attempts that will be retried.
    pub retries: AtomicU64,
}

/// Moves spooled batches to the collector.
pub struct Shipper {
    /// The spool, shared with the producer of batches.
    pub spool: Arc<Mutex<Spool>>,
    /// The collector.
    pub client: Client,
    /// Woken when a batch is pushed.
    pub wake: Arc<Notify>,
    /// Pacing of retries.
    pub backoff: Backoff,
    /// Counters.
    pub stats: Arc<ShipStats>,
}

fn lock(spool: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    // A panic while holding the lock cannot leave the on-disk spool inconsistent (every change
    // is an atomic rename), so the in-memory view is still usable.
    spool.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shipper {
    /// Runs until `stop` carries a deadline: from then on it keeps sending while batches
    /// remain, the collector answers and the deadline has not passed; whatever is left stays in
    /// the spool for the next start.
    pub async fn run(mut self, mut stop: watch::Receiver<Option<Instant>>) {
        loop {
            let deadline = *stop.borrow();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let next = lock(&self.spool).take_oldest();
            let (entry, batch) = match next {
                Ok(Some(next)) => next,
                Ok(None) => {
                    if deadline.is_some() {
                        break;
                    }
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
                Err(SpoolError::BadBatch { path, why }) => {
                    tracing::error!(path = %path.display(), %why, "unreadable spooled batch: discarded and counted as lost");
                    let seq = parse_seq(&path);
                    if let Err(e) = seq.map_or(Ok(()), |s| lock(&self.spool).discard(s)) {
                        tracing::error!("{e}");
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!("{e}; retrying");
                    self.pause(&mut stop).await;
                    continue;
                }
            };
            let send = self.client.send(batch);
            let result = match deadline {
                Some(d) => match tokio::time::timeout_at(d.into(), send).await {
                    Ok(r) => r,
                    Err(_) => {
                        lock(&self.spool).release();
                        break;
                    }
                },
                None => send.await,
            };
            match result {
                Ok(ack) => {
                    if let Err(e) = lock(&self.spool).acknowledge(entry.sequence) {
                        tracing::error!("{e}");
                    }
                    self.backoff.reset();
                    if ack.duplicate {
                        self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            sequence = entry.sequence,
                            "collector already had this batch (resend after a lost acknowledgement)"
                        );
                    } else {
                        self.stats.sent.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(
                            sequence = entry.sequence,
                            samples = ack.samples_stored,
                            "batch acknowledged"
                        );
                    }
                }
                Err(SendError::Rejected { code, message }) => {
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(sequence = entry.sequence, ?code, %message, "collector rejected the batch: moved to rejected/ and counted as lost");
                    if let Err(e) = lock(&self.spool).reject(entry.sequence) {
                        tracing::error!("{e}");
                    }
                }
                Err(SendError::Retry { code, message }) => {
                    lock(&self.spool).release();
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    if deadline.is_some() {
                        tracing::info!(
                            ?code,
                            "collector unavailable while stopping: batches stay in the spool"
                        );
                        break;
                    }
                    let failures = self.backoff.failures();
                    // Log the first failure and then every tenth, not every attempt of an outage.
                    if failures.is_multiple_of(10) {
                        let waiting = lock(&self.spool).len();
                        tracing::warn!(?code, %message, waiting, failures, "collector unavailable; retrying with backoff");
                    }
                    self.pause(&mut stop).await;
                }
            }
        }
        let left = lock(&self.spool).len();
        tracing::info!(left_in_spool = left, "shipper stopped");
    }

    /// Waits out one backoff step, or less if told to stop.
    async fn pause(&mut self, stop: &mut watch::Receiver<Option<Instant>>) {
        let delay = self.backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {}
        }
    }
}

fn parse_seq(path: &std::path::Path) -> Option<u64> {
    path.file_name()?.to_str()?.split('-').next()?.parse().ok()
}

/// Default pacing: 500 ms doubling to `max`.
pub fn default_backoff(max: Duration) -> Backoff {
    Backoff::new(Duration::from_millis(500), max)
}
