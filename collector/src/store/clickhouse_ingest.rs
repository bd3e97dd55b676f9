//! The ClickHouse store's ingest: group commit. Concurrent [`Pipeline::ingest`] calls resolve
//! their batch ([`Prepared::from_view`]) in their own thread and queue it; one writer thread
//! takes everything queued, looks up all their dedup markers in one SELECT, sums the fresh
//! batches in an [`Accumulator`] and writes the summed rows plus every marker in one INSERT,
//! then answers each caller. So the cost of a round trip and of a new part is paid per group,
//! not per batch, and a busy collector writes bigger, fewer parts.
//!
//! Dedup: a marker is a row (kind 6, minute = the batch's first minute, key `SEQ@HOST[/INST]`)
//! written in the same INSERT as the batch's rows. Retention folds week-old markers into floors
//! (`HOST[/INST]`, highest sequence); a batch at or below its floor is a duplicate too. Groups are committed one at a time (and
//! [`Pipeline::write`] takes the same lock), so a retry racing its original within this process
//! is either in the same group (deduplicated there) or sees the original's marker. Two
//! collectors receiving the same retry at the same instant could still both insert.
//!
//! Atomicity: ClickHouse writes an INSERT block as one part per partition (month), each
//! committed on its own, in the order the partitions first appear in the block. Rows go first,
//! latest minute first, and markers last, so a batch's marker partition (its first minute's
//! month) is committed after every other partition holding its rows: a failure can leave rows
//! without their marker (the retry then counts them twice), never a marker without its rows.
//! That only matters for a group spanning a month boundary, or an INSERT past
//! `max_insert_block_size` rows, which [`MAX_GROUP`] keeps far away. (With a server time zone
//! whose offset is not whole hours, an hour row can fall in the month before its batch's
//! first minute; such a row would be committed after the marker.) Acknowledgement waits for
//! the INSERT to return: the data is in parts on the server's disk.

use std::cmp::Reverse;
use std::collections::HashSet;
use std::collections::hash_map::{Entry, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use wattson_proto::v1::Batch;
use wattson_proto::view::BatchView;

use super::{FLOORS, Http, MARKER, quote, unescape};
use crate::ingest_cpu::{Stage, Timer, time};
use crate::store::pipeline::{self, Reply};
use crate::store::query_plan::TOTALS_COLUMNS;
use crate::store::rollup::{Accumulator, Prepared, RES_MINUTE, Rollup, Row};
use crate::store::{IngestFuture, Ingested, StoreError, Totals};

/// Most batches one INSERT carries: bounds the writer's memory and the INSERT's size (a batch
/// rolls up to a few thousand rows before merging) when a backlog builds up.
const MAX_GROUP: usize = 256;
/// Most marker key bytes one group looks up: the lookup's SQL (keys quoted, so up to twice
/// this, plus the minutes) stays under the server's `max_query_size` (256 KiB by default)
/// however long the host ids an operator allows.
const MAX_LOOKUP_KEY_BYTES: usize = 64 * 1024;

/// The dedup record of one batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Marker {
    /// The batch's first minute, Unix seconds (0 without profiles).
    minute: i64,
    /// `SEQ@HOST` or `SEQ@HOST/INSTANCE`.
    key: String,
}

impl Marker {
    fn new(host: &str, instance: &str, sequence: u64, minute: i64) -> Marker {
        let key = if instance.is_empty() {
            format!("{sequence}@{host}")
        } else {
            format!("{sequence}@{host}/{instance}")
        };
        Marker { minute, key }
    }

    /// (sequence, `HOST[/INSTANCE]`): the floor a folded marker counts towards.
    fn floor_key(&self) -> (u64, &str) {
        let (seq, rest) = self.key.split_once('@').unwrap_or(("0", &self.key));
        (seq.parse().unwrap_or(0), rest)
    }
}

/// One batch waiting for the group commit.
struct Job {
    marker: Marker,
    prepared: Prepared,
    reply: Reply,
}

#[derive(Default)]
struct State {
    jobs: Vec<Job>,
    stop: bool,
}

struct Shared {
    http: Arc<Http>,
    state: Mutex<State>,
    wake: Condvar,
    /// Held while a marker lookup and its INSERT are in flight.
    commit: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running writer; dropping it answers what is queued and stops the thread.
pub(super) struct Pipeline {
    shared: Arc<Shared>,
    _writer: pipeline::Writer,
}

impl Pipeline {
    /// Starts the writer thread.
    pub(super) fn start(http: Arc<Http>) -> Result<Pipeline, StoreError> {
        let shared = Arc::new(Shared {
            http,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            commit: Mutex::new(()),
        });
        let worker = shared.clone();
        let stopping = shared.clone();
        let writer = pipeline::spawn_writer(
            "clickhouse-ingest",
            move || run(&worker),
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

    /// Stores a batch: returns once the INSERT holding it returned (or it is a duplicate).
    pub(super) fn ingest(&self, batch: &Batch) -> Result<Ingested, StoreError> {
        pipeline::blocking(|r| self.enqueue(&BatchView::of(batch), r), || self.lost())
    }

    /// Resolves the batch on this thread and queues it; the future resolves once the INSERT
    /// holding it returned (or it is a duplicate).
    pub(super) fn queue(&self, batch: &BatchView<'_>) -> IngestFuture {
        pipeline::later(|r| self.enqueue(batch, r), self.lost())
    }

    fn enqueue(&self, batch: &BatchView<'_>, reply: Reply) -> Result<(), StoreError> {
        let prepared = Prepared::from_view(batch)?;
        let marker = Marker::new(
            batch.host_id,
            batch.agent_instance,
            batch.sequence,
            prepared.first_minute,
        );
        lock(&self.shared.state).jobs.push(Job {
            marker,
            prepared,
            reply,
        });
        self.shared.wake.notify_one();
        Ok(())
    }

    fn lost(&self) -> StoreError {
        self.shared.http.error(
            "the ingest thread failed on this batch's group (see the log); not stored".into(),
        )
    }

    /// Writes an already rolled-up batch on its own, serialized with the group commits.
    pub(super) fn write(&self, rollup: &Rollup) -> Result<Ingested, StoreError> {
        let marker = Marker::new(
            &rollup.host,
            &rollup.instance,
            rollup.sequence,
            rollup.first_minute,
        );
        let http = &*self.shared.http;
        let _commit = lock(&self.shared.commit);
        if !stored(http, &[&marker])?.is_empty() {
            return Ok(Ingested::Duplicate);
        }
        let counts = (rollup.profiles, rollup.samples);
        insert(http, &rollup.rows, &[(&marker, counts)])?;
        Ok(Ingested::New {
            profiles: rollup.profiles,
            samples: rollup.samples,
        })
    }
}

fn run(shared: &Shared) {
    let mut acc = Accumulator::default();
    loop {
        let jobs: Vec<Job> = {
            let mut st = lock(&shared.state);
            while st.jobs.is_empty() && !st.stop {
                st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.jobs.is_empty() {
                return;
            }
            let mut bytes = 0;
            let n = st
                .jobs
                .iter()
                .take(MAX_GROUP)
                .take_while(|j| {
                    bytes += j.marker.key.len();
                    bytes <= MAX_LOOKUP_KEY_BYTES
                })
                .count();
            st.jobs.drain(..n.max(1)).collect()
        };
        let _commit = lock(&shared.commit);
        // A panic drops the group's reply channels, so its callers get an error instead of
        // waiting forever, and the thread goes on with the next group.
        let group = std::panic::AssertUnwindSafe(|| commit(&shared.http, &mut acc, jobs));
        if std::panic::catch_unwind(group).is_err() {
            tracing::error!("clickhouse group commit panicked; its batches were not acknowledged");
            acc = Accumulator::default();
        }
    }
}

/// One marker lookup and (when any batch is fresh) one INSERT for the whole group; then every
/// job is answered.
fn commit(http: &Http, acc: &mut Accumulator, jobs: Vec<Job>) {
    let started = Instant::now();
    let durable = Timer::start(Stage::Durable);
    // Index of the first job with the same marker: a retry queued beside its original.
    let mut first: HashMap<&Marker, usize> = HashMap::with_capacity(jobs.len());
    let origin: Vec<usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| match first.entry(&j.marker) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => *e.insert(i),
        })
        .collect();
    let unique: Vec<&Marker> = first.keys().copied().collect();
    let before = match stored(http, &unique) {
        Ok(s) => s,
        Err(e) => return fail(http, jobs, &e, "marker lookup"),
    };
    let fresh: Vec<usize> = (0..jobs.len())
        .filter(|&i| origin[i] == i && !before.contains(&jobs[i].marker))
        .collect();
    let mut rows = 0;
    if !fresh.is_empty() {
        durable.stop();
        time(Stage::Merge, || {
            for &i in &fresh {
                acc.merge(&jobs[i].prepared);
            }
        });
        let summed = time(Stage::Rollup, || acc.take_rows());
        let _inserting = Timer::start(Stage::Durable);
        rows = summed.len();
        let markers: Vec<(&Marker, (u32, u64))> = fresh
            .iter()
            .map(|&i| {
                let p = &jobs[i].prepared;
                (&jobs[i].marker, (p.profiles, p.samples))
            })
            .collect();
        if let Err(e) = insert(http, &summed, &markers) {
            // Markers stored before this group stay duplicates; everything else is retried.
            let (old, new): (Vec<Job>, Vec<Job>) =
                jobs.into_iter().partition(|j| before.contains(&j.marker));
            for j in old {
                j.reply.send(Ok(Ingested::Duplicate));
            }
            return fail(http, new, &e, "insert");
        }
    }
    tracing::debug!(
        batches = jobs.len(),
        fresh = fresh.len(),
        rows,
        took_ms = started.elapsed().as_millis() as u64,
        "group committed"
    );
    for (i, j) in jobs.into_iter().enumerate() {
        let answer = if origin[i] == i && !before.contains(&j.marker) {
            j.prepared.stored()
        } else {
            Ingested::Duplicate
        };
        j.reply.send(Ok(answer));
    }
}

/// Answers every job with the error: nothing of theirs is acknowledged.
fn fail(http: &Http, jobs: Vec<Job>, e: &StoreError, what: &str) {
    tracing::warn!(error = %e, batches = jobs.len(),
        "clickhouse {what} failed; the agents keep their batches and retry");
    let why = match e {
        StoreError::ClickHouse { message, .. } => message.clone(),
        other => other.to_string(),
    };
    for j in jobs {
        j.reply
            .send(Err(http.error(format!("{what} failed: {why}"))));
    }
}

/// Which of `markers` are stored, in one query: their marker, or their agent instance's floor
/// (markers folded by retention, see [`super::DEDUP_WINDOW`]) at or above their sequence.
fn stored(http: &Http, markers: &[&Marker]) -> Result<HashSet<Marker>, StoreError> {
    if markers.is_empty() {
        return Ok(HashSet::new());
    }
    let minutes: HashSet<i64> = markers.iter().map(|m| m.minute).collect();
    let minutes: Vec<String> = minutes.iter().map(|m| format!("toDateTime({m})")).collect();
    let keys: Vec<String> = markers.iter().map(|m| quote(&m.key)).collect();
    let floors: HashSet<&str> = markers.iter().map(|m| m.floor_key().1).collect();
    let floors: Vec<String> = floors.into_iter().map(quote).collect();
    // Minute and key are filtered separately (both narrow the primary key range), then pairs
    // are matched here: a key stored under another minute is another batch.
    let answer = http.query(&format!(
        "SELECT 'm', toUInt64(minute), key FROM {db}.rollup WHERE kind = {MARKER} \
         AND res = {RES_MINUTE} AND minute IN ({}) AND key IN ({}) \
         UNION ALL SELECT 'f', max(seq), key FROM {db}.{FLOORS} WHERE key IN ({}) GROUP BY key",
        minutes.join(", "),
        keys.join(", "),
        floors.join(", "),
        db = http.db,
    ))?;
    let wanted: HashSet<&Marker> = markers.iter().copied().collect();
    let mut floor: HashMap<String, u64> = HashMap::new();
    let mut found = HashSet::new();
    for line in answer.lines() {
        let mut f = line.splitn(3, '\t');
        let (what, number, key) = (f.next(), f.next().and_then(|n| n.parse().ok()), f.next());
        let (Some(what), Some(number), Some(key)) = (what, number, key) else {
            return Err(http.error(format!("unexpected dedup row {line:?}")));
        };
        if what == "f" {
            floor.insert(unescape(key), number);
            continue;
        }
        let m = Marker {
            minute: number as i64,
            key: unescape(key),
        };
        if wanted.contains(&m) {
            found.insert(m);
        }
    }
    for m in markers {
        let (seq, rest) = m.floor_key();
        if floor.get(rest).is_some_and(|&f| seq <= f) {
            found.insert((*m).clone());
        }
    }
    Ok(found)
}

/// One INSERT: `rows` latest minute first, then the markers with their (profiles, samples).
/// The order decides which partition's part is committed first (see the module doc).
fn insert(http: &Http, rows: &[Row], markers: &[(&Marker, (u32, u64))]) -> Result<(), StoreError> {
    // Detection's five-minute rows go in the same INSERT, so they never lag the minute rows.
    let detect = crate::store::rollup::detect_rows(rows);
    let mut order: Vec<&Row> = rows.iter().chain(&detect).collect();
    order.sort_by_key(|r| Reverse(r.minute));
    let mut body = Vec::with_capacity(rows.len() * 160 + markers.len() * 120);
    for r in order {
        binary_row(
            &mut body,
            r.kind as u8,
            r.res,
            r.minute,
            &r.service,
            &r.key,
            &r.totals,
        );
    }
    for (m, (profiles, samples)) in markers {
        // samples_incl carries the profile count, as markers always have.
        let t = Totals {
            samples_self: *samples,
            samples_incl: u64::from(*profiles),
            ..Totals::default()
        };
        binary_row(&mut body, MARKER, RES_MINUTE, m.minute, "", &m.key, &t);
    }
    let mut cols = String::from("kind, res, minute, service, key");
    for c in TOTALS_COLUMNS {
        let _ = write!(cols, ", {c}");
    }
    http.exec(
        &format!("INSERT INTO {}.rollup ({cols}) FORMAT RowBinary", http.db),
        Some(body),
    )?;
    Ok(())
}

/// One row in ClickHouse's RowBinary format, columns in the INSERT's order: cheaper for the
/// server to parse than text formats (it shares the machine with the collector, often).
fn binary_row(
    out: &mut Vec<u8>,
    kind: u8,
    res: u8,
    minute: i64,
    service: &str,
    key: &str,
    t: &Totals,
) {
    out.push(kind);
    out.push(res);
    // DateTime is seconds as UInt32; rollup minutes are validated positive.
    out.extend_from_slice(&(minute.clamp(0, u32::MAX as i64) as u32).to_le_bytes());
    for s in [service, key] {
        let mut n = s.len() as u64;
        while n >= 0x80 {
            out.push(n as u8 | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(s.as_bytes());
    }
    for v in [
        t.samples_self,
        t.samples_incl,
        t.uj_self,
        t.uj_incl,
        t.est_uj_self,
        t.est_uj_incl,
        t.idle_uj,
        t.est_idle_uj,
        t.duration_ms,
        t.dropped,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}
