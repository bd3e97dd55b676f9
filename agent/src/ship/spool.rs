//! The on-disk spool: every batch is written here (zstd-compressed protobuf) before it is sent,
//! and removed only once the collector acknowledged it, so a collector outage or an agent
//! restart loses nothing. The spool is bounded (`--spool-max-bytes`): when full, the oldest
//! batches go first and what they held is counted in persistent loss counters that every later
//! batch reports to the collector.
//!
//! Layout of the directory:
//! - `NNNNNNNNNNNNNNNNNNNN-I-S.batch.zst`: batch with sequence N holding I intervals, S samples;
//! - `instance`: random id (32 hex digits) drawn when the directory has none; every batch
//!   carries it, so sequence numbers are scoped to this spool: a wiped spool starts again at 1
//!   under a new instance and the collector does not take its batches for duplicates;
//! - `next-sequence`: the next sequence number, always above every sequence ever used, so a
//!   restarted agent never reuses one (the collector would drop it as a duplicate);
//! - `losses`: cumulative `batches intervals samples` dropped from a full spool;
//! - `rejected/`: batches the collector refused as invalid, kept for inspection; they count
//!   towards `--spool-max-bytes` and are the first to go (oldest first) when it is reached.
//!
//! Every file is written to a temporary name, fsynced and renamed, then the directory is
//! fsynced: after a crash a file is either complete or absent. Batches hold every command
//! line, so files are created 0600 and directories 0700. A batch file that vanished or cannot
//! be read (EIO) is skipped and counted as lost, so shipping never stalls on it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use prost::Message as _;
use wattson_proto::v1::{AgentLosses, Batch};

/// zstd level for spooled batches: fast, and protobuf tables compress well at any level.
const ZSTD_LEVEL: i32 = 3;
const SUFFIX: &str = ".batch.zst";
/// Mode of every spool file: batches hold command lines.
const FILE_MODE: u32 = 0o600;
/// Mode of the spool directory and `rejected/`.
const DIR_MODE: u32 = 0o700;

/// Spool failures.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool {path}: {what}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A state file holds something that is not ours.
    #[error("spool {path}: {why} ({fix})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
        /// What removing the file would cost.
        fix: &'static str,
    },
    /// A batch file does not decode.
    #[error("spool {path}: not a valid batch ({why})")]
    BadBatch {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// One spooled batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number.
    pub sequence: u64,
    /// Intervals inside.
    pub intervals: u64,
    /// Samples inside.
    pub samples: u64,
    /// Size on disk, bytes.
    pub bytes: u64,
}

/// What [`Spool::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pushed {
    /// Sequence number given to the new batch.
    pub sequence: u64,
    /// Compressed size, bytes.
    pub bytes: u64,
    /// Older batches dropped to make room.
    pub dropped: u64,
}

/// A bounded on-disk queue of batches, oldest first.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    instance: String,
    entries: BTreeMap<u64, Entry>,
    next_sequence: u64,
    losses: AgentLosses,
    /// The batch being sent: never dropped from under the sender.
    in_flight: Option<u64>,
    /// Files in `rejected/`, by sequence: (path, bytes).
    rejected: BTreeMap<u64, (PathBuf, u64)>,
    /// Batch files skipped since start because they vanished or could not be read.
    unreadable: u64,
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> SpoolError {
    let path = path.to_path_buf();
    move |source| SpoolError::Io { path, what, source }
}

/// Length of an instance id in bytes (32 hex digits): collisions between spools are negligible.
const INSTANCE_BYTES: usize = 16;

/// Reads the spool's instance id, or draws and persists one when the directory has none.
fn instance(dir: &Path) -> Result<String, SpoolError> {
    let path = dir.join("instance");
    match fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim();
            if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(SpoolError::Corrupt {
                    path,
                    why: format!("expected 1 to 64 hex digits, found {id:?}"),
                    fix: "remove the file to draw a new instance id",
                });
            }
            Ok(id.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let urandom = Path::new("/dev/urandom");
            let mut bytes = [0u8; INSTANCE_BYTES];
            fs::File::open(urandom)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
                .map_err(io(urandom, "drawing an instance id"))?;
            let id = crate::process::hex(&bytes);
            write_atomic(dir, &path, format!("{id}\n").as_bytes())?;
            tracing::info!(instance = %id, dir = %dir.display(), "new spool instance");
            Ok(id)
        }
        Err(e) => Err(io(&path, "reading")(e)),
    }
}

/// Creates `dir` (and its parents) and makes it private (0700), whatever its mode was.
fn private_dir(dir: &Path) -> Result<(), SpoolError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io(dir, "creating the directory"))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
        .map_err(io(dir, "making the directory private (0700)"))
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, fsync dir).
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp); // a crash's leftover, possibly with a wider mode
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(io(&tmp, "creating"))?;
    f.write_all(bytes).map_err(io(&tmp, "writing"))?;
    f.sync_all().map_err(io(&tmp, "syncing"))?;
    fs::rename(&tmp, path).map_err(io(path, "renaming into place"))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "syncing the directory"))
}

fn parse_name(name: &str) -> Option<(u64, u64, u64)> {
    let stem = name.strip_suffix(SUFFIX)?;
    let mut parts = stem.split('-');
    let seq = parts.next()?.parse().ok()?;
    let intervals = parts.next()?.parse().ok()?;
    let samples = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((seq, intervals, samples))
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, bounded to `max_bytes`.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> Result<Self, SpoolError> {
        let dir = dir.into();
        private_dir(&dir)?;
        let mut entries = BTreeMap::new();
        for item in fs::read_dir(&dir).map_err(io(&dir, "listing"))? {
            let item = item.map_err(io(&dir, "listing"))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // Left by a crash mid-write: never acknowledged, never complete.
                let _ = fs::remove_file(item.path());
                continue;
            }
            let Some((sequence, intervals, samples)) = parse_name(&name) else {
                continue;
            };
            let bytes = item.metadata().map_err(io(&item.path(), "stat"))?.len();
            entries.insert(
                sequence,
                Entry {
                    sequence,
                    intervals,
                    samples,
                    bytes,
                },
            );
        }
        let next_path = dir.join("next-sequence");
        let stored_next = match fs::read_to_string(&next_path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|e| SpoolError::Corrupt {
                path: next_path.clone(),
                why: format!("expected a number: {e}"),
                fix: "remove the file only if you accept reusing sequence numbers",
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(io(&next_path, "reading")(e)),
        };
        let after_files = entries.keys().next_back().map_or(1, |s| s + 1);
        let instance = instance(&dir)?;
        let losses_path = dir.join("losses");
        let losses = match fs::read_to_string(&losses_path) {
            Ok(s) => {
                let n: Vec<u64> = s
                    .split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect();
                match n[..] {
                    [b, i, s] => AgentLosses {
                        spool_dropped_batches: b,
                        spool_dropped_intervals: i,
                        spool_dropped_samples: s,
                    },
                    _ => {
                        return Err(SpoolError::Corrupt {
                            path: losses_path,
                            why: "expected `batches intervals samples`".into(),
                            fix: "removing the file resets the loss counters",
                        });
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AgentLosses::default(),
            Err(e) => return Err(io(&losses_path, "reading")(e)),
        };
        let mut rejected = BTreeMap::new();
        if let Ok(items) = fs::read_dir(dir.join("rejected")) {
            for item in items.flatten() {
                let name = item.file_name().to_string_lossy().into_owned();
                if let (Some((sequence, _, _)), Ok(meta)) = (parse_name(&name), item.metadata()) {
                    rejected.insert(sequence, (item.path(), meta.len()));
                }
            }
        }
        let mut spool = Self {
            dir,
            max_bytes,
            instance,
            entries,
            next_sequence: stored_next.max(after_files),
            losses,
            in_flight: None,
            rejected,
            unreadable: 0,
        };
        // A spool from before rejected/ counted may be over its bound: prune what was refused.
        spool.prune_rejected(0)?;
        tracing::info!(
            dir = %spool.dir.display(),
            instance = %spool.instance,
            batches = spool.entries.len(),
            bytes = spool.bytes(),
            next_sequence = spool.next_sequence,
            dropped_batches = spool.losses.spool_dropped_batches,
            "spool open"
        );
        Ok(spool)
    }

    /// Bytes of the batches waiting to be sent.
    pub fn bytes(&self) -> u64 {
        self.entries.values().map(|e| e.bytes).sum()
    }

    /// Bytes of the refused batches kept in `rejected/` (within `--spool-max-bytes`).
    pub fn rejected_bytes(&self) -> u64 {
        self.rejected.values().map(|r| r.1).sum()
    }

    /// Batch files skipped since start because they vanished or could not be read (their
    /// batches are counted in [`Self::losses`]).
    pub fn unreadable(&self) -> u64 {
        self.unreadable
    }

    /// Removes refused batches, oldest first, until `incoming` more bytes fit in the bound.
    /// They were counted as lost when refused; this only frees their room.
    fn prune_rejected(&mut self, incoming: u64) -> Result<(), SpoolError> {
        while self.bytes() + self.rejected_bytes() + incoming > self.max_bytes {
            let Some((sequence, (path, bytes))) = self.rejected.pop_first() else {
                break;
            };
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path, "removing a rejected batch")(e)),
            }
            tracing::info!(
                sequence,
                bytes,
                "spool full: removed the oldest rejected batch"
            );
        }
        Ok(())
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Cumulative losses from a full spool.
    pub fn losses(&self) -> AgentLosses {
        self.losses
    }

    /// The random id that scopes this spool's sequence numbers (`Batch.agent_instance`).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The next sequence number to be used.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    fn path_of(&self, e: &Entry) -> PathBuf {
        self.dir.join(format!(
            "{:020}-{}-{}{SUFFIX}",
            e.sequence, e.intervals, e.samples
        ))
    }

    /// Stores a batch built by `build(sequence, losses)` durably, stamped with the spool's
    /// instance, dropping the oldest batches if the spool would exceed its bound. Returns what
    /// happened.
    pub fn push(
        &mut self,
        intervals: u64,
        samples: u64,
        build: impl FnOnce(u64, AgentLosses) -> Batch,
    ) -> Result<Pushed, SpoolError> {
        let sequence = self.next_sequence;
        // Persist the counter first: a crash after this line skips a sequence, never reuses one.
        self.next_sequence += 1;
        write_atomic(
            &self.dir,
            &self.dir.join("next-sequence"),
            self.next_sequence.to_string().as_bytes(),
        )?;
        let mut batch = build(sequence, self.losses);
        // Stamped here, before encoding: a spooled batch keeps the instance it was written
        // under even if the directory's instance changes later.
        batch.agent_instance.clone_from(&self.instance);
        let bytes = zstd::encode_all(&batch.encode_to_vec()[..], ZSTD_LEVEL)
            .map_err(io(&self.dir, "compressing a batch"))?;
        let entry = Entry {
            sequence,
            intervals,
            samples,
            bytes: bytes.len() as u64,
        };
        let mut dropped = 0;
        if entry.bytes > self.max_bytes {
            tracing::error!(
                sequence,
                bytes = entry.bytes,
                max = self.max_bytes,
                "batch larger than --spool-max-bytes: dropped (raise the limit)"
            );
            self.count_loss(&entry)?;
            return Ok(Pushed {
                sequence,
                bytes: entry.bytes,
                dropped: 1,
            });
        }
        self.prune_rejected(entry.bytes)?;
        while self.bytes() + entry.bytes > self.max_bytes {
            let Some(victim) = self
                .entries
                .values()
                .find(|e| Some(e.sequence) != self.in_flight)
                .copied()
            else {
                break;
            };
            self.remove(victim.sequence)?;
            self.count_loss(&victim)?;
            dropped += 1;
            tracing::warn!(
                sequence = victim.sequence,
                intervals = victim.intervals,
                samples = victim.samples,
                total_dropped_batches = self.losses.spool_dropped_batches,
                "spool full: dropped the oldest batch"
            );
        }
        write_atomic(&self.dir, &self.path_of(&entry), &bytes)?;
        self.entries.insert(sequence, entry);
        Ok(Pushed {
            sequence,
            bytes: entry.bytes,
            dropped,
        })
    }

    /// Counts a batch that could not be written at all (disk full, I/O error) as lost, so
    /// later batches report it. Persisting the count is best effort: the disk may be full.
    pub fn count_unwritable(&mut self, intervals: u64, samples: u64) {
        let entry = Entry {
            sequence: 0,
            intervals,
            samples,
            bytes: 0,
        };
        if let Err(e) = self.count_loss(&entry) {
            tracing::warn!(error = %e, "could not persist the loss count; it is kept in memory");
        }
    }

    fn count_loss(&mut self, e: &Entry) -> Result<(), SpoolError> {
        self.losses.spool_dropped_batches += 1;
        self.losses.spool_dropped_intervals += e.intervals;
        self.losses.spool_dropped_samples += e.samples;
        let l = self.losses;
        write_atomic(
            &self.dir,
            &self.dir.join("losses"),
            format!(
                "{} {} {}\n",
                l.spool_dropped_batches, l.spool_dropped_intervals, l.spool_dropped_samples
            )
            .as_bytes(),
        )
    }

    /// The oldest batch, marked in flight (so a full spool does not drop it while it is sent).
    /// A batch file that vanished or cannot be read (EIO) is skipped, counted as lost and
    /// logged once: retrying it would stall every batch behind it.
    pub fn take_oldest(&mut self) -> Result<Option<(Entry, Batch)>, SpoolError> {
        let (entry, compressed) = loop {
            let Some(entry) = self.entries.values().next().copied() else {
                return Ok(None);
            };
            let path = self.path_of(&entry);
            match fs::read(&path) {
                Ok(bytes) => break (entry, bytes),
                Err(e) => {
                    tracing::error!(
                        path = %path.display(),
                        error = %e,
                        samples = entry.samples,
                        "spooled batch vanished or unreadable: skipped and counted as lost"
                    );
                    self.entries.remove(&entry.sequence);
                    // Best effort: an unreadable file may still be removable.
                    let _ = fs::remove_file(&path);
                    self.unreadable += 1;
                    self.count_loss(&entry)?;
                }
            }
        };
        let path = self.path_of(&entry);
        let raw = zstd::decode_all(&compressed[..]).map_err(|e| SpoolError::BadBatch {
            path: path.clone(),
            why: format!("zstd: {e}"),
        })?;
        let batch = Batch::decode(&raw[..]).map_err(|e| SpoolError::BadBatch {
            path: path.clone(),
            why: e.to_string(),
        })?;
        self.in_flight = Some(entry.sequence);
        Ok(Some((entry, batch)))
    }

    /// Forgets a batch the collector acknowledged.
    pub fn acknowledge(&mut self, sequence: u64) -> Result<(), SpoolError> {
        self.in_flight = None;
        self.remove(sequence)
    }

    /// Ends the in-flight mark without removing (the send failed; it will be retried).
    pub fn release(&mut self) {
        self.in_flight = None;
    }

    /// Moves a batch the collector refused as invalid to `rejected/` and counts it as lost.
    pub fn reject(&mut self, sequence: u64) -> Result<(), SpoolError> {
        self.in_flight = None;
        let Some(entry) = self.entries.remove(&sequence) else {
            return Ok(());
        };
        let from = self.path_of(&entry);
        let dir = self.dir.join("rejected");
        private_dir(&dir)?;
        let to = dir.join(from.file_name().unwrap_or_default());
        fs::rename(&from, &to).map_err(io(&from, "moving to rejected/"))?;
        self.rejected.insert(sequence, (to, entry.bytes));
        self.count_loss(&entry)
    }

    /// Removes a batch that is unreadable (counted as lost).
    pub fn discard(&mut self, sequence: u64) -> Result<(), SpoolError> {
        self.in_flight = None;
        if let Some(entry) = self.entries.get(&sequence).copied() {
            self.remove(sequence)?;
            self.count_loss(&entry)?;
        }
        Ok(())
    }

    fn remove(&mut self, sequence: u64) -> Result<(), SpoolError> {
        if let Some(entry) = self.entries.remove(&sequence) {
            let path = self.path_of(&entry);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path, "removing")(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64, losses: AgentLosses, filler: usize) -> Batch {
        Batch {
            host_id: "h".into(),
            sequence: seq,
            // Incompressible filler so sizes are predictable.
            strings: (0..filler)
                .map(|i| format!("{:x}", (i as u64 + seq).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
                .collect(),
            losses: Some(losses),
            ..Batch::default()
        }
    }

    /// Regression: a spool write failing (disk full) used to stop the agent; now the batch is
    /// counted as lost and reported by the next batch that can be written.
    #[test]
    fn an_unwritable_spool_counts_the_batch_as_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let mut s = Spool::open(&path, 1 << 20).unwrap();
        // Replace the directory with a file: every write now fails, as on a full disk.
        std::fs::remove_dir_all(&path).unwrap();
        std::fs::write(&path, b"not a directory").unwrap();
        assert!(s.push(2, 30, |seq, l| batch(seq, l, 10)).is_err());
        s.count_unwritable(2, 30);
        assert_eq!(s.losses().spool_dropped_batches, 1);
        assert_eq!(s.losses().spool_dropped_samples, 30);
        // Once the disk is back, the next batch carries the loss and a fresh sequence.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let pushed = s.push(1, 10, |seq, l| batch(seq, l, 10)).unwrap();
        assert_eq!(pushed.sequence, 2);
        let (_, b) = s.take_oldest().unwrap().unwrap();
        assert_eq!(b.losses.unwrap().spool_dropped_samples, 30);
    }

    #[test]
    fn sequence_survives_reopen_and_acknowledged_batches_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for _ in 0..3 {
            s.push(1, 10, |seq, l| batch(seq, l, 10)).unwrap();
        }
        let (e, b) = s.take_oldest().unwrap().unwrap();
        assert_eq!((e.sequence, b.sequence), (1, 1));
        s.acknowledge(1).unwrap();
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.next_sequence(), 4);
        assert_eq!(s.take_oldest().unwrap().unwrap().0.sequence, 2);
    }

    #[test]
    fn restart_keeps_the_instance_and_continues_the_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        let first = s.instance().to_owned();
        assert_eq!(first.len(), 2 * INSTANCE_BYTES);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
        s.push(1, 10, |seq, l| batch(seq, l, 10)).unwrap();
        s.push(1, 10, |seq, l| batch(seq, l, 10)).unwrap();
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.instance(), first);
        assert_eq!(
            s.push(1, 10, |seq, l| batch(seq, l, 10)).unwrap().sequence,
            3
        );
        for seq in 1..=3 {
            let (e, b) = s.take_oldest().unwrap().unwrap();
            assert_eq!((e.sequence, b.sequence), (seq, seq));
            assert_eq!(b.agent_instance, first, "batch {seq}");
            s.acknowledge(seq).unwrap();
        }
    }

    #[test]
    fn a_wiped_spool_gets_a_new_instance_and_restarts_at_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let mut s = Spool::open(&path, 1 << 20).unwrap();
        s.push(1, 10, |seq, l| batch(seq, l, 10)).unwrap();
        s.push(1, 10, |seq, l| batch(seq, l, 10)).unwrap();
        let old = s.instance().to_owned();
        drop(s);
        fs::remove_dir_all(&path).unwrap();
        let mut s = Spool::open(&path, 1 << 20).unwrap();
        assert_ne!(s.instance(), old);
        assert_eq!(
            s.push(1, 10, |seq, l| batch(seq, l, 10)).unwrap().sequence,
            1
        );
        let (_, b) = s.take_oldest().unwrap().unwrap();
        assert_eq!((b.sequence, b.agent_instance.as_str()), (1, s.instance()));
    }

    /// Batches written before the instance file changed (an upgrade from an agent without
    /// instances, or a hand-removed file) are sent as they were written.
    #[test]
    fn spooled_batches_keep_the_instance_they_were_written_with() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.push(1, 10, |seq, l| batch(seq, l, 10)).unwrap();
        let old = s.instance().to_owned();
        drop(s);
        fs::remove_file(dir.path().join("instance")).unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_ne!(s.instance(), old);
        s.push(1, 10, |seq, l| batch(seq, l, 10)).unwrap();
        let (_, b) = s.take_oldest().unwrap().unwrap();
        assert_eq!((b.sequence, b.agent_instance.as_str()), (1, old.as_str()));
        s.acknowledge(1).unwrap();
        let (_, b) = s.take_oldest().unwrap().unwrap();
        assert_eq!((b.sequence, b.agent_instance.as_str()), (2, s.instance()));
    }

    #[test]
    fn a_corrupt_instance_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("instance"), "not hex!\n").unwrap();
        let e = Spool::open(dir.path(), 1 << 20).unwrap_err().to_string();
        assert!(
            e.contains("instance") && e.contains("remove the file"),
            "{e}"
        );
    }

    #[test]
    fn full_spool_drops_oldest_and_counts_the_loss_persistently() {
        let dir = tempfile::tempdir().unwrap();
        let one = {
            let mut s = Spool::open(dir.path().join("probe"), 1 << 20).unwrap();
            s.push(1, 5, |seq, l| batch(seq, l, 200)).unwrap().bytes
        };
        let mut s = Spool::open(dir.path().join("s"), one * 3 + one / 2).unwrap();
        for _ in 0..5 {
            s.push(2, 7, |seq, l| batch(seq, l, 200)).unwrap();
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.losses().spool_dropped_batches, 2);
        assert_eq!(s.losses().spool_dropped_intervals, 4);
        assert_eq!(s.losses().spool_dropped_samples, 14);
        let (e, b) = s.take_oldest().unwrap().unwrap();
        assert_eq!(e.sequence, 3, "the two oldest went first");
        // Batch 3 was built before any drop; each batch reports the losses known when built.
        assert_eq!(b.losses.unwrap().spool_dropped_batches, 0);
        drop(s);
        let s = Spool::open(dir.path().join("s"), 1 << 20).unwrap();
        assert_eq!(s.losses().spool_dropped_batches, 2);
    }

    #[test]
    fn in_flight_batch_is_not_dropped_and_temp_files_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let one = {
            let mut s = Spool::open(dir.path().join("probe"), 1 << 20).unwrap();
            s.push(1, 1, |seq, l| batch(seq, l, 200)).unwrap().bytes
        };
        let mut s = Spool::open(dir.path().join("s"), one * 2 + one / 2).unwrap();
        s.push(1, 1, |seq, l| batch(seq, l, 200)).unwrap();
        s.push(1, 1, |seq, l| batch(seq, l, 200)).unwrap();
        let (e, _) = s.take_oldest().unwrap().unwrap();
        s.push(1, 1, |seq, l| batch(seq, l, 200)).unwrap();
        assert!(s.entries.contains_key(&e.sequence), "in-flight kept");
        assert!(!s.entries.contains_key(&2), "next oldest dropped");
        fs::write(dir.path().join("s").join("x.tmp"), b"partial").unwrap();
        drop(s);
        Spool::open(dir.path().join("s"), 1 << 20).unwrap();
        assert!(!dir.path().join("s").join("x.tmp").exists());
    }

    /// Bytes of every file under `dir`, subdirectories included.
    fn disk_bytes(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                let meta = e.metadata().unwrap();
                if meta.is_dir() {
                    disk_bytes(&e.path())
                } else {
                    meta.len()
                }
            })
            .sum()
    }

    /// Size of one compressed test batch with `filler` strings.
    fn one_batch_bytes(dir: &Path, filler: usize) -> u64 {
        let mut s = Spool::open(dir.join("probe"), 1 << 20).unwrap();
        s.push(1, 1, |seq, l| batch(seq, l, filler)).unwrap().bytes
    }

    /// Regression: `rejected/` was never pruned nor counted in `--spool-max-bytes`, so refused
    /// batches filled the disk. They now count, and go first (oldest first) when it is full,
    /// before any batch still to be sent; their loss was counted once, when refused.
    #[test]
    fn rejected_batches_count_towards_the_bound_and_are_pruned_first() {
        let dir = tempfile::tempdir().unwrap();
        let one = one_batch_bytes(dir.path(), 200);
        let max = one * 4 + one / 2;
        let path = dir.path().join("s");
        let mut s = Spool::open(&path, max).unwrap();
        for _ in 0..3 {
            s.push(1, 1, |seq, l| batch(seq, l, 200)).unwrap();
        }
        for _ in 0..2 {
            let (e, _) = s.take_oldest().unwrap().unwrap();
            s.reject(e.sequence).unwrap();
        }
        for _ in 0..3 {
            s.push(1, 1, |seq, l| batch(seq, l, 200)).unwrap();
        }
        // 4 waiting fit; of the 2 refused only what fits beside them stays.
        assert_eq!(s.len(), 4, "no batch to send was dropped");
        assert_eq!(s.losses().spool_dropped_batches, 2, "only the refusals");
        let rejected: Vec<String> = fs::read_dir(path.join("rejected"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            rejected.len(),
            0,
            "both refused batches pruned: {rejected:?}"
        );
        let on_disk = disk_bytes(&path);
        // State files (instance, next-sequence, losses) are a few dozen bytes.
        assert!(on_disk <= max + 200, "{on_disk} bytes on disk, bound {max}");
        // Reopened with a smaller bound, the refused batches go first.
        let (e, _) = s.take_oldest().unwrap().unwrap();
        s.reject(e.sequence).unwrap();
        drop(s);
        let s = Spool::open(&path, one * 3 + one / 2).unwrap();
        assert_eq!(s.rejected_bytes(), 0);
        assert_eq!(s.len(), 3);
    }

    /// Regression: a spooled file that vanished or could not be read (EIO) made `take_oldest`
    /// fail every time, and the shipper retried it forever: nothing behind it was ever sent.
    #[test]
    fn vanished_and_unreadable_batch_files_are_skipped_and_counted_as_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for _ in 0..3 {
            s.push(1, 7, |seq, l| batch(seq, l, 10)).unwrap();
        }
        let file = |seq: u64| {
            let name = format!("{seq:020}-1-7{SUFFIX}");
            dir.path().join(name)
        };
        fs::remove_file(file(1)).unwrap();
        // A directory in its place: reading it fails with an I/O error, as a bad disk would.
        fs::remove_file(file(2)).unwrap();
        fs::create_dir(file(2)).unwrap();
        let (e, b) = s.take_oldest().unwrap().expect("the readable batch");
        assert_eq!((e.sequence, b.sequence), (3, 3));
        assert_eq!(s.unreadable(), 2);
        assert_eq!(s.losses().spool_dropped_batches, 2);
        assert_eq!(s.losses().spool_dropped_samples, 14);
        s.acknowledge(3).unwrap();
        assert!(s.take_oldest().unwrap().is_none());
    }

    /// Regression: spool files hold every command line and were created with the umask's
    /// mode (0644 here), readable by every user.
    #[test]
    fn spool_files_are_0600_and_directories_0700() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let mut s = Spool::open(&path, 1 << 20).unwrap();
        s.push(1, 1, |seq, l| batch(seq, l, 10)).unwrap();
        s.push(1, 1, |seq, l| batch(seq, l, 10)).unwrap();
        let (e, _) = s.take_oldest().unwrap().unwrap();
        s.reject(e.sequence).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o700, "spool directory");
        assert_eq!(mode(&path.join("rejected")), 0o700, "rejected/");
        let mut files = 0;
        for d in [path.clone(), path.join("rejected")] {
            for item in fs::read_dir(&d).unwrap().flatten() {
                if item.metadata().unwrap().is_file() {
                    assert_eq!(mode(&item.path()), 0o600, "{}", item.path().display());
                    files += 1;
                }
            }
        }
        assert!(
            files >= 5,
            "instance, next-sequence, losses and two batches: {files}"
        );
    }
}
