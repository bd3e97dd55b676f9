//! The SQLite store's ingest pipeline: group commit into a durable journal, then roll-up of many
//! batches at once.
//!
//! Why: one batch rolls up to thousands of rows, but the hosts of a fleet run the same services'
//! functions and stacks, so summing many batches in memory before writing turns thousands of
//! upserts per batch into a few. Nothing acknowledged is lost: a batch is acknowledged only once
//! its (host, instance, sequence) record and its encoded bytes are committed to the `journal`
//! table (one fsync for every batch that arrived during the previous commit). A roll-up writes
//! the summed rows and deletes the journal entries it covers in one transaction; at open, what
//! is left in the journal is replayed. Queries [`Pipeline::settle`] first, so they see every
//! acknowledged batch.
//!
//! One thread owns the writes: it alternates group commits and roll-ups, so they never contend
//! for SQLite's write lock.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prost::Message as _;
use rusqlite::{Connection, params};
use wattson_proto::v1::Batch;

use super::rollup::{Accumulator, Prepared};
use super::{Ingested, StoreError};

/// Longest a merged batch waits before its rows are written (queries do not wait for it: they
/// settle).
const ROLL_EVERY: Duration = Duration::from_secs(2);
/// Roll up early once this many minute cells are held, to bound memory.
const ROLL_MAX_CELLS: usize = 400_000;

/// One batch waiting for the group commit.
struct Job {
    host: String,
    instance: String,
    sequence: u64,
    payload: Vec<u8>,
    prepared: Prepared,
    reply: mpsc::Sender<Result<Ingested, StoreError>>,
}

#[derive(Default)]
struct State {
    jobs: Vec<Job>,
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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running pipeline; dropping it rolls up what is merged and stops the thread.
pub(super) struct Pipeline {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Pipeline {
    /// Replays the journal left by a previous run, then starts the writer thread. `conn` is the
    /// store's write connection (shared with retention and direct writes).
    pub(super) fn start(path: &str, conn: Arc<Mutex<Connection>>) -> Result<Pipeline, StoreError> {
        let shared = Arc::new(Shared {
            path: path.to_string(),
            conn,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let mut acc = Accumulator::default();
        let last = replay(&shared, &mut acc)?;
        if !acc.is_empty() {
            roll(&shared, &mut acc, last).map_err(|message| StoreError::Journal {
                path: path.to_string(),
                message,
            })?;
        }
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-ingest".into())
            .spawn(move || run(&worker, acc, last))
            .map_err(|source| StoreError::Io {
                what: "starting the sqlite ingest thread".into(),
                source,
            })?;
        Ok(Pipeline {
            shared,
            thread: Some(thread),
        })
    }

    /// Stores a batch: returns once it is durable in the journal (or known as a duplicate).
    pub(super) fn ingest(&self, batch: &Batch) -> Result<Ingested, StoreError> {
        let prepared = Prepared::from_batch(batch)?;
        let (reply, answer) = mpsc::channel();
        let job = Job {
            host: batch.host_id.clone(),
            instance: batch.agent_instance.clone(),
            sequence: batch.sequence,
            payload: batch.encode_to_vec(),
            prepared,
            reply,
        };
        {
            let mut st = lock(&self.shared.state);
            st.jobs.push(job);
            st.dirty = true;
        }
        self.shared.wake.notify_one();
        answer.recv().unwrap_or_else(|_| Err(self.stopped()))
    }

    /// Waits until every acknowledged batch is rolled up into queryable rows.
    pub(super) fn settle(&self) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel();
        {
            let mut st = lock(&self.shared.state);
            if !st.dirty {
                return Ok(());
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

impl Drop for Pipeline {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Merges every journal entry into `acc`; returns the last journal id.
fn replay(shared: &Shared, acc: &mut Accumulator) -> Result<i64, StoreError> {
    let conn = lock(&shared.conn);
    let err = |source| StoreError::Sqlite {
        path: shared.path.clone(),
        source,
    };
    let mut st = conn
        .prepare("SELECT id, payload FROM journal ORDER BY id")
        .map_err(err)?;
    let mut rows = st.query([]).map_err(err)?;
    let (mut last, mut replayed, mut unreadable) = (0i64, 0u64, 0u64);
    while let Some(r) = rows.next().map_err(err)? {
        last = r.get(0).map_err(err)?;
        let payload = r.get_ref(1).map_err(err)?.as_blob().unwrap_or_default();
        match Batch::decode(payload)
            .map_err(|e| e.to_string())
            .and_then(|b| Prepared::from_batch(&b).map_err(|e| e.to_string()))
        {
            Ok(p) => {
                acc.merge(&p);
                replayed += 1;
            }
            Err(e) => {
                unreadable += 1;
                tracing::error!(path = %shared.path, id = last, error = %e,
                    "journal entry unreadable (disk corruption?); its batch is lost");
            }
        }
    }
    if replayed + unreadable > 0 {
        tracing::info!(path = %shared.path, replayed, unreadable,
            "replayed acknowledged batches not yet rolled up when the collector stopped");
    }
    Ok(last)
}

fn run(shared: &Shared, mut acc: Accumulator, mut last: i64) {
    let mut rolled_at = Instant::now();
    loop {
        let (jobs, settles, stop) = {
            let mut st = lock(&shared.state);
            loop {
                let due = !acc.is_empty() && rolled_at.elapsed() >= ROLL_EVERY;
                if st.stop || !st.jobs.is_empty() || !st.settles.is_empty() || due {
                    break;
                }
                let wait = if acc.is_empty() {
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
            (
                std::mem::take(&mut st.jobs),
                std::mem::take(&mut st.settles),
                st.stop,
            )
        };
        if !jobs.is_empty() {
            commit(shared, &mut acc, &mut last, jobs);
        }
        let mut outcome = Ok(());
        let must = !settles.is_empty()
            || stop
            || acc.len() >= ROLL_MAX_CELLS
            || rolled_at.elapsed() >= ROLL_EVERY;
        if must && !acc.is_empty() {
            outcome = roll(shared, &mut acc, last);
            rolled_at = Instant::now();
            if let Err(e) = &outcome {
                tracing::error!(path = %shared.path, error = %e,
                    "roll-up failed; the batches stay in the journal and are retried");
            }
        }
        {
            let mut st = lock(&shared.state);
            if acc.is_empty() && st.jobs.is_empty() {
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

/// One transaction for the whole group: dedup records and journal entries; then the fresh
/// batches are merged and every job is answered.
fn commit(shared: &Shared, acc: &mut Accumulator, last: &mut i64, jobs: Vec<Job>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let written = (|| -> rusqlite::Result<(Vec<bool>, i64)> {
        let mut conn = lock(&shared.conn);
        let tx = conn.transaction()?;
        let mut fresh = Vec::with_capacity(jobs.len());
        let mut id = *last;
        {
            let mut dedup = tx
                .prepare_cached("INSERT OR IGNORE INTO received VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
            let mut journal = tx.prepare_cached("INSERT INTO journal (payload) VALUES (?1)")?;
            for j in &jobs {
                let new = dedup.execute(params![
                    j.host,
                    j.instance,
                    j.sequence as i64,
                    now,
                    j.prepared.profiles,
                    j.prepared.samples as i64
                ])? == 1;
                if new {
                    journal.execute(params![j.payload])?;
                    id = tx.last_insert_rowid();
                }
                fresh.push(new);
            }
        }
        tx.commit()?;
        Ok((fresh, id))
    })();
    match written {
        Ok((fresh, id)) => {
            *last = id;
            for (j, new) in jobs.into_iter().zip(fresh) {
                let answer = if new {
                    acc.merge(&j.prepared);
                    Ingested::New {
                        profiles: j.prepared.profiles,
                        samples: j.prepared.samples,
                    }
                } else {
                    Ingested::Duplicate
                };
                let _ = j.reply.send(Ok(answer));
            }
        }
        Err(e) => {
            tracing::warn!(path = %shared.path, error = %e, batches = jobs.len(),
                "journal commit failed; the agents keep their batches and retry");
            for j in jobs {
                let _ = j.reply.send(Err(StoreError::Journal {
                    path: shared.path.clone(),
                    message: format!("commit failed: {e} (is the disk full?)"),
                }));
            }
        }
    }
}

/// Writes the merged rows and drops the journal entries up to `last` in one transaction; the
/// accumulator is cleared only once that is durable.
fn roll(shared: &Shared, acc: &mut Accumulator, last: i64) -> Result<(), String> {
    let started = Instant::now();
    let rows = acc.rows();
    let batches = acc.batches();
    let mut conn = lock(&shared.conn);
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    super::sqlite::upsert_rows(&tx, &rows).map_err(|e| e.to_string())?;
    tx.execute("DELETE FROM journal WHERE id <= ?1", params![last])
        .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;
    acc.clear();
    tracing::debug!(
        batches,
        rows = rows.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "rolled up"
    );
    Ok(())
}
