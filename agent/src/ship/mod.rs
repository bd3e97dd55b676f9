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
    /// Sends refused because the collector does not accept this agent's credentials (token,
    /// or host id vs client certificate); the batches stay spooled.
    pub refused: AtomicU64,
}

/// While the collector refuses this agent, how often the refusal is logged (at error level).
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(300);

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
        // When the current refusal of this agent was last logged (None: not refused).
        let mut refusal_logged: Option<Instant> = None;
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
                    if refusal_logged.take().is_some() {
                        tracing::info!("the collector accepts this agent again: shipping resumed");
                    }
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
                Err(e @ SendError::Refused { .. }) => {
                    // Not a fault of the batch: keep it (and every later one, up to the spool's
                    // bound) until an operator fixes the credentials on either side, which
                    // needs no agent restart when the fix is the collector's.
                    lock(&self.spool).release();
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    if deadline.is_some() {
                        break;
                    }
                    if refusal_logged.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
                        let waiting = lock(&self.spool).len();
                        tracing::error!(
                            waiting,
                            refused = self.stats.refused.load(Ordering::Relaxed),
                            "{e}. Batches stay in the spool and sampling goes on; retrying with \
                             backoff (logged again every {REFUSAL_LOG_EVERY:?} while refused)"
                        );
                        refusal_logged = Some(Instant::now());
                    }
                    self.pause(&mut stop).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    /// Issue 20: a collector that refuses this agent's identity keeps every batch in the
    /// spool (none rejected or lost), counts the refusals and backs off instead of spinning.
    #[tokio::test]
    async fn a_refused_agent_keeps_its_batches_and_backs_off() {
        let (collector, client) = client::tests::serve_code(
            "the batch's host_id \"h\" is not a name of the client certificate (agent-1)",
            Code::PermissionDenied,
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        for _ in 0..2 {
            spool
                .push(1, 1, |seq, _| client::tests::batch(seq))
                .unwrap();
        }
        let stats = Arc::new(ShipStats::default());
        let shipper = Shipper {
            spool: Arc::new(Mutex::new(spool)),
            client,
            wake: Arc::new(Notify::new()),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_millis(400)),
            stats: stats.clone(),
        };
        let spool = shipper.spool.clone();
        let (stop_tx, stop_rx) = watch::channel(None);
        let running = tokio::spawn(shipper.run(stop_rx));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop_tx.send(Some(Instant::now())).unwrap();
        running.await.unwrap();
        let refused = stats.refused.load(Ordering::Relaxed);
        // Backoff of 50..400 ms over 1.5 s: a few attempts, not a busy loop.
        assert!((2..=30).contains(&refused), "{refused} refusals");
        assert_eq!(*collector.refused.lock().unwrap() as u64, refused);
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 0);
        assert_eq!(stats.retries.load(Ordering::Relaxed), 0);
        let spool = lock(&spool);
        assert_eq!(spool.len(), 2, "both batches still spooled");
        assert_eq!(spool.losses().spool_dropped_batches, 0);
    }
}
