//! What the SQLite and ClickHouse ingest pipelines share: their writer thread, and how a queued
//! batch is answered, to a thread blocked in [`super::Store::ingest`] or to a task awaiting
//! [`super::Store::queue`].

use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::{IngestFuture, Ingested, StoreError};

/// Where a queued batch's answer goes.
pub(super) enum Reply {
    Blocking(mpsc::Sender<Result<Ingested, StoreError>>),
    Async(oneshot::Sender<Result<Ingested, StoreError>>),
}

impl Reply {
    /// Answers; a caller that went away (its agent disconnected) needs no answer.
    pub(super) fn send(self, answer: Result<Ingested, StoreError>) {
        let _ = match self {
            Reply::Blocking(tx) => tx.send(answer).map_err(drop),
            Reply::Async(tx) => tx.send(answer).map_err(drop),
        };
    }
}

/// Queues through `enqueue` and blocks until the answer; `lost` when the pipeline dropped the
/// batch unanswered (its writer failed).
pub(super) fn blocking(
    enqueue: impl FnOnce(Reply) -> Result<(), StoreError>,
    lost: impl FnOnce() -> StoreError,
) -> Result<Ingested, StoreError> {
    let (tx, rx) = mpsc::channel();
    enqueue(Reply::Blocking(tx))?;
    rx.recv().unwrap_or_else(|_| Err(lost()))
}

/// Queues through `enqueue` now and returns the answer to await; `lost` as for [`blocking`].
pub(super) fn later(
    enqueue: impl FnOnce(Reply) -> Result<(), StoreError>,
    lost: StoreError,
) -> IngestFuture {
    let (tx, rx) = oneshot::channel();
    let queued = enqueue(Reply::Async(tx));
    Box::pin(async move {
        queued?;
        rx.await.unwrap_or(Err(lost))
    })
}

/// A pipeline's writer thread: dropping it asks the thread to stop and waits for it, so a
/// dropped store has finished its queued work.
pub(super) struct Writer {
    thread: Option<JoinHandle<()>>,
    stop: Box<dyn Fn() + Send + Sync>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        (self.stop)();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a pipeline's writer thread, named `name`; `stop` tells `run` to return.
pub(super) fn spawn_writer(
    name: &str,
    run: impl FnOnce() + Send + 'static,
    stop: impl Fn() + Send + Sync + 'static,
) -> Result<Writer, StoreError> {
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(run)
        .map_err(|source| StoreError::Io {
            what: format!("starting the {name} thread"),
            source,
        })?;
    Ok(Writer {
        thread: Some(thread),
        stop: Box::new(stop),
    })
}
