//! The SQLite store's ingest pipeline: group commit into a durable file journal, then roll-up
//! of many batches at once.
//!
//! Why: one batch rolls up to thousands of rows, but the hosts of a fleet run the same services'
//! functions and stacks, so summing many batches in memory before writing turns thousands of
//! upserts per batch into a few. Nothing acknowledged is lost: a batch is acknowledged only once
//! its bytes are appended to the [`Journal`] and synced (one `fdatasync` for every batch that
//! arrived during the previous append). A roll-up writes the summed rows, the batches'
//! (host, instance, sequence) records and the journal generation it covers in one transaction;
//! at open, the journal's later generations are replayed. Queries [`Pipeline::settle`] first,
//! so they see every acknowledged batch.
//!
//! Dedup: a batch is a duplicate when its key is in `received` (rolled up) or in the pending set
//! (journaled since the last roll-up). Replay rebuilds the pending set and applies each key
//! once, so a batch journaled twice around a crash counts once.
//!
//! One thread owns the writes: it alternates group commits and roll-ups, so they never contend.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, params};
use wattson_proto::compressed::{self, Decompressor};
use wattson_proto::v1::Batch;
use wattson_proto::view::BatchView;

use super::journal::{self, Journal};
use super::pipeline::{self, Reply};
use super::rollup::{Accumulator, Prepared};
use super::sqlite_hours::Hours;
use super::{IngestFuture, Ingested, StoreError};
use crate::ingest_cpu::{Stage, Timer};

/// Longest a merged batch waits before its rows are written. Queries do not wait for it (they
/// settle), and the journal keeps it durable meanwhile, so this only trades replay time after
/// a crash (at most this much ingest) against write work: a fleet repeats its stacks, so a
/// roll-up writes about as many rows after 10 s of batches as after 2 s, a fifth as often.
const ROLL_EVERY: Duration = Duration::from_secs(10);
/// Roll up early once this many minute cells are held, to bound memory.
const ROLL_MAX_CELLS: usize = 400_000;
/// Most batches queued for the next group commit: past it (the disk or a roll-up is behind),
/// batches are refused as [`StoreError::Busy`] rather than held in memory without bound.
pub(super) const MAX_QUEUED: usize = 4096;
/// Most bytes of queued batches (as they arrived).
const MAX_QUEUED_BYTES: usize = 512 << 20;
/// `meta` key of the last journal generation a roll-up covered.
const COVERED: &str = "journal_covered";

/// (host, agent instance, sequence): what makes a batch a duplicate.
type Key = (String, String, u64);

/// A journaled batch's `received` record, written by the next roll-up.
#[derive(Clone, Copy)]
struct Pending {
    at: i64,
    profiles: u32,
    samples: u64,
}

/// One batch waiting for the group commit.
struct Job {
    key: Key,
    payload: Bytes,
    prepared: Prepared,
    reply: Reply,
}

#[derive(Default)]
struct State {
    jobs: Vec<Job>,
    /// Bytes of the queued jobs' payloads.
    queued_bytes: usize,
    settles: Vec<mpsc::Sender<Result<(), String>>>,
    /// Something was queued or merged and is not rolled up yet.
    dirty: bool,
    stop: bool,
}

struct Shared {
    path: String,
    conn: Arc<Mutex<Connection>>,
    state: Mutex<State>,
    wake: Condvar,
    /// Journaled, not yet rolled up. Locked after `conn` when both are held.
    pending: Mutex<HashMap<Key, Pending>>,
    /// How far hour rows are complete; moved by roll-ups (and retention).
    hours: Hours,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The journal directory of the database at `path`.
pub(super) fn journal_dir(path: &str) -> PathBuf {
    PathBuf::from(format!("{path}.ingest"))
}

/// Whether the store holds `key` (rolled up).
fn received(conn: &Connection, key: &Key) -> rusqlite::Result<bool> {
    super::sqlite::is_received(conn, &key.0, &key.1, key.2)
}

/// The running pipeline; dropping it rolls up what is merged and stops the thread.
pub(super) struct Pipeline {
    shared: Arc<Shared>,
    _writer: pipeline::Writer,
}

impl Pipeline {
    /// Replays what the journal holds beyond the last roll-up, rolls it up, then starts the
    /// writer thread. `conn` is the store's write connection (shared with retention and direct
    /// writes).
    pub(super) fn start(
        path: &str,
        conn: Arc<Mutex<Connection>>,
        hours: Hours,
    ) -> Result<Pipeline, StoreError> {
        let shared = Arc::new(Shared {
            path: path.to_string(),
            conn,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            pending: Mutex::default(),
            hours,
        });
        let mut acc = Accumulator::default();
        let mut journal = replay(&shared, &mut acc)?;
        if acc.batches() > 0 {
            roll(&shared, &mut acc, &mut journal).map_err(|message| StoreError::Journal {
                path: path.to_string(),
                message,
            })?;
        }
        let worker = shared.clone();
        let stopping = shared.clone();
        let writer = pipeline::spawn_writer(
            "sqlite-ingest",
            move || run(&worker, acc, journal),
            move || {
                lock(&stopping.state).stop = true;
                stopping.wake.notify_one();
            },
        )?;
        Ok(Pipeline {
            shared,
            _writer: writer,
        })
    }

    /// Stores a batch: returns once it is durable in the journal (or known as a duplicate).
    pub(super) fn ingest(&self, batch: &Batch) -> Result<Ingested, StoreError> {
        let encoded = batch.encode_to_vec().into();
        pipeline::blocking(
            |r| self.enqueue(&BatchView::of(batch), encoded, r),
            || self.stopped(),
        )
    }

    /// Resolves the batch on this thread and queues it for the next group commit; the future
    /// resolves once it is durable. `arrived`: the bytes `batch` arrived as (encoded, or a zstd
    /// frame of that), which the journal keeps.
    pub(super) fn queue(&self, batch: &BatchView<'_>, arrived: Bytes) -> IngestFuture {
        pipeline::later(|r| self.enqueue(batch, arrived, r), self.stopped())
    }

    fn enqueue(
        &self,
        batch: &BatchView<'_>,
        arrived: Bytes,
        reply: Reply,
    ) -> Result<(), StoreError> {
        let prepared = Prepared::from_view(batch)?;
        let job = Job {
            key: (
                batch.host_id.to_string(),
                batch.agent_instance.to_string(),
                batch.sequence,
            ),
            payload: arrived,
            prepared,
            reply,
        };
        {
            let mut st = lock(&self.shared.state);
            if st.stop {
                return Err(self.stopped());
            }
            if st.jobs.len() >= MAX_QUEUED || st.queued_bytes + job.payload.len() > MAX_QUEUED_BYTES
            {
                return Err(StoreError::Busy(format!(
                    "{} batches ({} bytes) already wait for the sqlite journal at {}",
                    st.jobs.len(),
                    st.queued_bytes,
                    self.shared.path
                )));
            }
            st.queued_bytes += job.payload.len();
            st.jobs.push(job);
            st.dirty = true;
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Whether `key` is journaled and not rolled up yet. Callers hold the write connection, so
    /// a key cannot move from here to `received` unseen.
    pub(super) fn is_pending(&self, host: &str, instance: &str, sequence: u64) -> bool {
        lock(&self.shared.pending).contains_key(&(host.to_string(), instance.to_string(), sequence))
    }

    /// Waits until every acknowledged batch is rolled up into queryable rows.
    pub(super) fn settle(&self) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel();
        {
            let mut st = lock(&self.shared.state);
            if !st.dirty {
                return Ok(());
            }
            if st.stop {
                return Err(self.stopped());
            }
            st.settles.push(tx);
        }
        self.shared.wake.notify_one();
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(StoreError::Journal {
                path: self.shared.path.clone(),
                message,
            }),
            Err(_) => Err(self.stopped()),
        }
    }

    fn stopped(&self) -> StoreError {
        StoreError::Journal {
            path: self.shared.path.clone(),
            message: "the ingest thread stopped (see the log for its error)".into(),
        }
    }
}

/// Merges into `acc` every batch acknowledged but not rolled up when the collector last
/// stopped: entries of the first release's `journal` table (already in `received`), then the
/// journal's generations after the last roll-up (each key once, into the pending set).
fn replay(shared: &Shared, acc: &mut Accumulator) -> Result<Journal, StoreError> {
    let conn = lock(&shared.conn);
    let err = |source| StoreError::Sqlite {
        path: shared.path.clone(),
        source,
    };
    let (mut replayed, mut unreadable, mut duplicates) = (0u64, 0u64, 0u64);
    let mut unzstd: Option<Decompressor> = None;
    let mut apply = |payload: &[u8], pending: Option<&mut HashMap<Key, Pending>>| {
        // Read as the server reads a request, so replay resolves exactly what ingest did.
        let raw = if compressed::is_frame(payload) {
            let d = match &mut unzstd {
                Some(d) => Ok(d),
                None => Decompressor::new().map(|d| unzstd.insert(d)),
            };
            d.map_err(|e| e.to_string())
                .and_then(|d| {
                    d.batch(payload, journal::MAX_RECORD as usize)
                        .map_err(|e| e.to_string())
                })
                .map(Cow::Owned)
        } else {
            Ok(Cow::Borrowed(payload))
        };
        let p = raw.and_then(|raw| {
            let b = BatchView::parse(&raw).map_err(|e| e.to_string())?;
            let key: Key = (b.host_id.into(), b.agent_instance.into(), b.sequence);
            Ok((Prepared::from_view(&b).map_err(|e| e.to_string())?, key))
        });
        match p {
            Ok((p, key)) => {
                if let Some(pending) = pending {
                    if pending.contains_key(&key) || received(&conn, &key).unwrap_or(false) {
                        duplicates += 1;
                        return;
                    }
                    let at = now_secs();
                    let (profiles, samples) = (p.profiles, p.samples);
                    pending.insert(
                        key,
                        Pending {
                            at,
                            profiles,
                            samples,
                        },
                    );
                }
                acc.merge(&p);
                replayed += 1;
            }
            Err(e) => {
                unreadable += 1;
                tracing::error!(path = %shared.path, error = %e,
                    "journal record unreadable (disk corruption?); its batch is lost");
            }
        }
    };
    {
        let mut st = conn
            .prepare("SELECT payload FROM journal ORDER BY id")
            .map_err(err)?;
        let mut rows = st.query([]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            apply(
                r.get_ref(0).map_err(err)?.as_blob().unwrap_or_default(),
                None,
            );
        }
    }
    let covered: u64 = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [COVERED], |r| {
            r.get::<_, i64>(0)
        })
        .optional()
        .map_err(err)?
        .unwrap_or(0) as u64;
    let dir = journal_dir(&shared.path);
    let mut pending = lock(&shared.pending);
    let (journal, recovered) = Journal::open(&dir, covered, |_, payload| {
        apply(payload, Some(&mut pending));
    })
    .map_err(|e| StoreError::Journal {
        path: shared.path.clone(),
        message: e.to_string(),
    })?;
    if recovered.torn > 0 {
        tracing::warn!(dir = %dir.display(), segments = recovered.torn,
            bytes = recovered.skipped_bytes,
            "journal segments end in a cut-short record (a crash mid-append: never acknowledged)");
    }
    if replayed + unreadable + duplicates > 0 {
        tracing::info!(path = %shared.path, replayed, unreadable, duplicates,
            "replayed acknowledged batches not yet rolled up when the collector stopped");
    }
    Ok(journal)
}

/// Ends the pipeline when the writer thread exits, also by a panic: later batches are refused
/// and the ones still queued are answered (their senders dropped) instead of waiting forever.
struct Closing<'a>(&'a Shared);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        st.stop = true;
        st.jobs.clear();
        st.settles.clear();
        if std::thread::panicking() {
            tracing::error!(path = %self.0.path,
                "the sqlite ingest thread panicked; ingest stops (acknowledged batches are in the journal and replay at the next start)");
        }
    }
}

fn run(shared: &Shared, mut acc: Accumulator, mut journal: Journal) {
    let _closing = Closing(shared);
    let mut rolled_at = Instant::now();
    loop {
        let (jobs, settles, stop) = {
            let mut st = lock(&shared.state);
            loop {
                let due = acc.batches() > 0 && rolled_at.elapsed() >= ROLL_EVERY;
                if st.stop || !st.jobs.is_empty() || !st.settles.is_empty() || due {
                    break;
                }
                let wait = if acc.batches() == 0 {
                    Duration::from_secs(3600)
                } else {
                    ROLL_EVERY.saturating_sub(rolled_at.elapsed())
                };
                st = shared
                    .wake
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            st.queued_bytes = 0;
            (
                std::mem::take(&mut st.jobs),
                std::mem::take(&mut st.settles),
                st.stop,
            )
        };
        if !jobs.is_empty() {
            commit(shared, &mut acc, &mut journal, jobs);
        }
        let mut outcome = Ok(());
        let must = !settles.is_empty()
            || stop
            || acc.len() >= ROLL_MAX_CELLS
            || rolled_at.elapsed() >= ROLL_EVERY;
        if must && acc.batches() > 0 {
            outcome = roll(shared, &mut acc, &mut journal);
            rolled_at = Instant::now();
            if let Err(e) = &outcome {
                tracing::error!(path = %shared.path, error = %e,
                    "roll-up failed; the batches stay in the journal and are retried");
            }
        }
        {
            let mut st = lock(&shared.state);
            if acc.batches() == 0 && st.jobs.is_empty() {
                st.dirty = false;
            }
        }
        for s in settles {
            let _ = s.send(outcome.clone());
        }
        if stop {
            return;
        }
    }
}

/// Sorts the group into duplicates and fresh batches, journals the fresh ones with one sync,
/// then merges them and answers every job.
fn commit(shared: &Shared, acc: &mut Accumulator, journal: &mut Journal, jobs: Vec<Job>) {
    let durable = Timer::start(Stage::Durable);
    let now = now_secs();
    let checked = (|| -> rusqlite::Result<Vec<bool>> {
        let conn = lock(&shared.conn);
        let mut pending = lock(&shared.pending);
        let mut fresh = Vec::with_capacity(jobs.len());
        for j in &jobs {
            let new = !pending.contains_key(&j.key) && !received(&conn, &j.key)?;
            if new {
                let (profiles, samples) = (j.prepared.profiles, j.prepared.samples);
                pending.insert(
                    j.key.clone(),
                    Pending {
                        at: now,
                        profiles,
                        samples,
                    },
                );
            }
            fresh.push(new);
        }
        Ok(fresh)
    })();
    let fresh = match checked {
        Ok(fresh) => fresh,
        Err(e) => {
            let message = format!("dedup lookup failed: {e}");
            return fail(shared, jobs, &message);
        }
    };
    let appended = journal.append(
        jobs.iter()
            .zip(&fresh)
            .filter(|(_, new)| **new)
            .map(|(j, _)| &j.payload[..]),
    );
    if let Err(e) = appended {
        let mut pending = lock(&shared.pending);
        for (j, new) in jobs.iter().zip(&fresh) {
            if *new {
                pending.remove(&j.key);
            }
        }
        drop(pending);
        return fail(shared, jobs, &e.to_string());
    }
    durable.stop();
    let _merging = Timer::start(Stage::Merge);
    for (j, new) in jobs.into_iter().zip(fresh) {
        let answer = if new {
            acc.merge(&j.prepared);
            j.prepared.stored()
        } else {
            Ingested::Duplicate
        };
        j.reply.send(Ok(answer));
    }
}

/// Answers every job of a group with the same error: the agents keep their batches and retry.
fn fail(shared: &Shared, jobs: Vec<Job>, message: &str) {
    tracing::warn!(path = %shared.path, error = %message, batches = jobs.len(),
        "journal commit failed; the agents keep their batches and retry");
    for j in jobs {
        j.reply.send(Err(StoreError::Journal {
            path: shared.path.clone(),
            message: message.to_string(),
        }));
    }
}

/// Writes the merged rows, the pending batches' `received` records and the journal generation
/// they came from in one transaction; the accumulator is cleared and the covered segments are
/// removed only once that is durable.
fn roll(shared: &Shared, acc: &mut Accumulator, journal: &mut Journal) -> Result<(), String> {
    let _rolling = Timer::start(Stage::Rollup);
    let started = Instant::now();
    let batches = acc.batches();
    let covered = journal.generation();
    // The watermark is read under the write lock: retention moves it too.
    let mut conn = lock(&shared.conn);
    let rows = acc.rows(shared.hours.before());
    let hours_to = shared.hours.due(now_secs());
    let written = (|| -> rusqlite::Result<usize> {
        let tx = conn.transaction()?;
        super::sqlite::upsert_rows(&tx, &rows)?;
        {
            let pending = lock(&shared.pending);
            let mut rec = tx
                .prepare_cached("INSERT OR IGNORE INTO received VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
            for ((host, instance, seq), p) in pending.iter() {
                rec.execute(params![
                    host,
                    instance,
                    *seq as i64,
                    p.at,
                    p.profiles,
                    super::sqlite::to_sql(p.samples)
                ])?;
            }
        }
        tx.execute(
            "INSERT INTO meta VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![COVERED, covered as i64],
        )?;
        // Minute rows that are old enough, these included, go to their hours.
        let hour_rows = shared.hours.advance(&tx, hours_to)?;
        // Entries of the first release's journal table, replayed at open.
        tx.execute("DELETE FROM journal", [])?;
        tx.commit()?;
        Ok(hour_rows)
    })();
    let hour_rows = written.map_err(|e| e.to_string())?;
    shared.hours.moved(hours_to);
    lock(&shared.pending).clear();
    drop(conn);
    acc.clear();
    journal.seal();
    if let Err(e) = journal.remove_through(covered) {
        // Harmless: replay skips covered generations; the next roll-up retries the removal.
        tracing::warn!(error = %e, "could not remove rolled-up journal segments");
    }
    tracing::debug!(
        batches,
        rows = rows.len(),
        hour_rows,
        took_ms = started.elapsed().as_millis() as u64,
        "rolled up"
    );
    Ok(())
}
