//! The ingest journal: append-only segment files holding the bytes of acknowledged batches until
//! a roll-up has summed them into the store, as they arrived: an encoded batch, or the zstd
//! frame an agent sent it in (~20 KB for ~50 KB).
//!
//! Why files and not a table: a batch is tens of KB that is read back only after a crash. In a
//! SQLite table it was written twice (WAL, then checkpoint) and deleted again; appended to a
//! file it is written once, and a whole segment is unlinked when the roll-up covers it.
//!
//! Layout: a directory of segments named by a generation number (`00000000000000000042.seg`),
//! each starting with [`MAGIC`], then records `[u32 LE length][u32 LE CRC-32][payload]`. The
//! store records in its own transaction the last generation a roll-up covered; replay reads
//! only later generations. A record cut short by a crash (the batch was never acknowledged)
//! fails its length or CRC check and ends its segment's replay.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, IoSlice, Read, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// First bytes of every segment (format version 1).
pub const MAGIC: &[u8; 8] = b"WTSNJRN1";
/// Largest record replay accepts; bigger lengths are corruption (ingest caps messages far below).
pub const MAX_RECORD: u32 = 1 << 30;

/// Errors of the journal, naming the file at fault.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {what}: {source}")]
pub struct JournalError {
    /// File or directory.
    pub path: PathBuf,
    /// What was being done.
    pub what: &'static str,
    /// Underlying error.
    #[source]
    pub source: std::io::Error,
}

/// What replay found besides the records it handed over.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Records read back intact.
    pub records: u64,
    /// Segments that ended in a cut-short or corrupt record (bytes after it are skipped).
    pub torn: u64,
    /// Bytes skipped in those segments.
    pub skipped_bytes: u64,
    /// Highest generation found on disk (0 when none).
    pub last_generation: u64,
}

/// The open journal: appends go to the segment of the current generation, created on the first
/// append after [`Journal::open`] or [`Journal::seal`].
pub struct Journal {
    dir: PathBuf,
    generation: u64,
    /// The current segment and its length; `None` when sealed.
    file: Option<(File, u64)>,
}

/// Creates `dir` and its missing parents with mode 0700: journal and store hold every
/// profiled command line. (Directories that exist keep their mode.)
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn segment_name(generation: u64) -> String {
    format!("{generation:020}.seg")
}

/// Generations of the segments in `dir`, ascending.
fn generations(dir: &Path) -> Result<Vec<u64>, JournalError> {
    let err = |source| JournalError {
        path: dir.to_path_buf(),
        what: "listing segments",
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let name = entry.map_err(err)?.file_name();
        let name = name.to_string_lossy();
        if let Some(g) = name.strip_suffix(".seg").and_then(|g| g.parse().ok()) {
            found.push(g);
        }
    }
    found.sort_unstable();
    Ok(found)
}

impl Journal {
    /// Opens the journal in `dir` (created when missing) and hands every intact record of
    /// generations after `covered` to `replay`, in order. Appends go to a new segment after the
    /// highest generation on disk; replayed segments stay until [`Journal::remove_through`].
    pub fn open(
        dir: &Path,
        covered: u64,
        mut replay: impl FnMut(u64, &[u8]),
    ) -> Result<(Journal, Recovered), JournalError> {
        private_dir(dir).map_err(|source| JournalError {
            path: dir.to_path_buf(),
            what: "creating the directory",
            source,
        })?;
        let mut recovered = Recovered::default();
        for generation in generations(dir)? {
            recovered.last_generation = recovered.last_generation.max(generation);
            if generation > covered {
                read_segment(dir, generation, &mut recovered, &mut replay)?;
            }
        }
        let journal = Journal {
            dir: dir.to_path_buf(),
            generation: recovered.last_generation.max(covered),
            file: None,
        };
        Ok((journal, recovered))
    }

    /// The last generation appended to: every record appended so far is in it or before it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Ends the current segment: later appends go to the next generation, so a roll-up that
    /// covered [`Journal::generation`] never covers them.
    pub fn seal(&mut self) {
        self.file = None;
    }

    /// Appends one record per payload and makes them durable (one `fdatasync`). On failure the
    /// segment is cut back to where it was, or a new segment is started, so a later append never
    /// follows a half-written record. Segments are open in append mode: after the cut, the next
    /// write lands at the new end, not at the failed write's file position (which left a hole
    /// of zeros that replay read as empty records, then lost the records after it).
    pub fn append<'a>(
        &mut self,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), JournalError> {
        // Written from where the payloads are, headers beside them: copying a group of
        // batches into one buffer first was a tenth of the writer thread's time.
        let payloads: Vec<&[u8]> = payloads.into_iter().collect();
        let headers: Vec<[u8; 8]> = payloads
            .iter()
            .map(|p| {
                let mut h = [0u8; 8];
                h[..4].copy_from_slice(&(p.len() as u32).to_le_bytes());
                h[4..].copy_from_slice(&crc32fast::hash(p).to_le_bytes());
                h
            })
            .collect();
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * payloads.len());
        for (h, p) in headers.iter().zip(&payloads) {
            slices.push(IoSlice::new(h));
            slices.push(IoSlice::new(p));
        }
        let total: u64 = slices.iter().map(|s| s.len() as u64).sum();
        if self.file.is_none() {
            self.file = Some(create_segment(&self.dir, self.generation + 1)?);
            self.generation += 1;
        }
        let (file, len) = self.file.as_mut().expect("just created");
        match write_all_vectored(file, &mut slices).and_then(|()| file.sync_data()) {
            Ok(()) => {
                *len += total;
                Ok(())
            }
            Err(source) => {
                if file.set_len(*len).is_err() {
                    // Cannot cut it back: leave the torn tail behind and write elsewhere.
                    self.seal();
                }
                Err(JournalError {
                    path: self.dir.join(segment_name(self.generation)),
                    what: "appending batches (is the disk full?)",
                    source,
                })
            }
        }
    }

    /// Deletes the segments of generations up to `covered` (a roll-up has stored them).
    pub fn remove_through(&self, covered: u64) -> Result<(), JournalError> {
        for g in generations(&self.dir)?
            .into_iter()
            .filter(|&g| g <= covered)
        {
            let path = self.dir.join(segment_name(g));
            std::fs::remove_file(&path).map_err(|source| JournalError {
                path,
                what: "removing a rolled-up segment",
                source,
            })?;
        }
        Ok(())
    }

    /// Bytes held in the directory's segments.
    pub fn disk_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
    }
}

/// Creates (truncating) the segment of `generation` with its header, durable with its directory
/// entry.
/// `Write::write_all_vectored`, which is not stable yet: writes every slice, in as few calls as
/// the kernel allows (at most `IOV_MAX` slices each).
fn write_all_vectored(file: &mut File, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    const IOV_MAX: usize = 1024;
    while !slices.is_empty() {
        let n = slices.len().min(IOV_MAX);
        match file.write_vectored(&slices[..n]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn create_segment(dir: &Path, generation: u64) -> Result<(File, u64), JournalError> {
    let path = dir.join(segment_name(generation));
    let err = |what, source| JournalError {
        path: path.clone(),
        what,
        source,
    };
    // Append mode (see `Journal::append`); `truncate` does not combine with it, `set_len` does.
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .and_then(|f| f.set_len(0).map(|()| f))
        .map_err(|e| err("creating a segment", e))?;
    file.write_all(MAGIC)
        .and_then(|()| file.sync_all())
        .map_err(|e| err("writing a segment header", e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err("syncing the directory", e))?;
    Ok((file, MAGIC.len() as u64))
}

/// Hands each intact record of one segment to `replay`; stops at the first bad one.
fn read_segment(
    dir: &Path,
    generation: u64,
    recovered: &mut Recovered,
    replay: &mut impl FnMut(u64, &[u8]),
) -> Result<(), JournalError> {
    let path = dir.join(segment_name(generation));
    let file = File::open(&path).map_err(|source| JournalError {
        path: path.clone(),
        what: "opening a segment",
        source,
    })?;
    let size = file.metadata().map_or(0, |m| m.len());
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    if r.read_exact(&mut magic).is_err() || &magic != MAGIC {
        // A segment created by a crash before its header was durable holds nothing acknowledged.
        if size > 0 {
            recovered.torn += 1;
            recovered.skipped_bytes += size;
        }
        return Ok(());
    }
    let mut at = MAGIC.len() as u64;
    let mut payload = Vec::new();
    loop {
        let mut head = [0u8; 8];
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                if at + 8 > size && at < size {
                    recovered.torn += 1;
                    recovered.skipped_bytes += size - at;
                }
                return Ok(());
            }
            Err(source) => {
                return Err(JournalError {
                    path,
                    what: "reading a segment",
                    source,
                });
            }
        }
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        let fits = len <= MAX_RECORD && at + 8 + u64::from(len) <= size;
        payload.resize(if fits { len as usize } else { 0 }, 0);
        if !fits || r.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            recovered.torn += 1;
            recovered.skipped_bytes += size - at;
            return Ok(());
        }
        at += 8 + u64::from(len);
        recovered.records += 1;
        replay(generation, &payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(dir: &Path, covered: u64) -> (Vec<(u64, Vec<u8>)>, Recovered, Journal) {
        let mut got = Vec::new();
        let (j, rec) = Journal::open(dir, covered, |g, p| got.push((g, p.to_vec()))).unwrap();
        (got, rec, j)
    }

    #[test]
    fn appended_records_replay_in_order_after_the_covered_generation() {
        let dir = tempfile::tempdir().unwrap();
        let (got, _, mut j) = records(dir.path(), 0);
        assert!(got.is_empty());
        assert_eq!(j.generation(), 0);
        j.append([&b"one"[..], b"two"]).unwrap();
        assert_eq!(j.generation(), 1);
        j.seal();
        j.append([&b"three"[..]]).unwrap();
        drop(j);
        let (got, rec, j) = records(dir.path(), 0);
        assert_eq!(
            got,
            vec![
                (1, b"one".to_vec()),
                (1, b"two".to_vec()),
                (2, b"three".to_vec())
            ]
        );
        assert_eq!((rec.records, rec.torn, rec.last_generation), (3, 0, 2));
        assert_eq!(j.generation(), 2);
        // Generation 1 covered by a roll-up: only generation 2 replays; appends go to 3.
        drop(j);
        let (got, _, mut j) = records(dir.path(), 1);
        assert_eq!(got, vec![(2, b"three".to_vec())]);
        j.append([&b"four"[..]]).unwrap();
        j.remove_through(2).unwrap();
        assert_eq!(generations(dir.path()).unwrap(), vec![3]);
    }

    #[test]
    fn a_cut_short_or_corrupt_record_ends_its_segment_only() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, mut j) = records(dir.path(), 0);
        j.append([&b"kept"[..], b"cut short"]).unwrap();
        j.seal();
        j.append([&b"next segment"[..]]).unwrap();
        drop(j);
        let seg1 = dir.path().join(segment_name(1));
        let size = std::fs::metadata(&seg1).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg1)
            .unwrap()
            .set_len(size - 3)
            .unwrap();
        let (got, rec, _) = records(dir.path(), 0);
        assert_eq!(
            got,
            vec![(1, b"kept".to_vec()), (2, b"next segment".to_vec())]
        );
        assert_eq!((rec.torn, rec.skipped_bytes), (1, 8 + 9 - 3));

        // A flipped payload byte fails the CRC.
        let seg2 = dir.path().join(segment_name(2));
        let mut bytes = std::fs::read(&seg2).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&seg2, bytes).unwrap();
        let (got, rec, _) = records(dir.path(), 0);
        assert_eq!(got, vec![(1, b"kept".to_vec())]);
        assert_eq!(rec.torn, 2);
    }

    /// Issue 20: a failed append (disk full) cut the segment back but left the file position
    /// after the partial write, so the next append left a hole of zeros. A child process
    /// appends under `RLIMIT_FSIZE` (a real EFBIG from the kernel, as on a full disk), then
    /// lifts it and appends again; the parent reopens the journal as a restart does.
    #[test]
    fn an_append_after_a_full_disk_replays_without_a_hole() {
        const CHILD: &str = "WATTSON_JOURNAL_FULL_DISK_DIR";
        if let Some(dir) = std::env::var_os(CHILD) {
            return full_disk_child(Path::new(&dir));
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::journal::tests::an_append_after_a_full_disk_replays_without_a_hole",
                "--test-threads=1",
            ])
            .env(CHILD, dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "child: {status}");
        let (got, rec, _) = records(dir.path(), 0);
        let got: Vec<Vec<u8>> = got.into_iter().map(|(_, p)| p).collect();
        assert_eq!(
            got,
            vec![b"before".to_vec(), b"after the disk filled".to_vec()]
        );
        assert_eq!((rec.records, rec.torn), (2, 0));
    }

    fn full_disk_child(dir: &Path) {
        let limit = |bytes: u64| {
            let r = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: libc::RLIM_INFINITY,
            };
            // SAFETY: plain syscall on a valid struct.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &r) }, 0);
        };
        // SAFETY: ignoring SIGXFSZ makes a write past the limit fail with EFBIG instead.
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        let (_, _, mut j) = records(dir, 0);
        j.append([&b"before"[..]]).unwrap();
        let size = std::fs::metadata(dir.join(segment_name(1))).unwrap().len();
        // Room for part of the next record only.
        limit(size + 20);
        let e = j.append([&[7u8; 100][..]]).unwrap_err();
        assert_eq!(e.source.raw_os_error(), Some(libc::EFBIG), "{e}");
        limit(libc::RLIM_INFINITY);
        j.append([&b"after the disk filled"[..]]).unwrap();
    }

    #[test]
    fn a_huge_length_is_corruption_not_an_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, mut j) = records(dir.path(), 0);
        j.append([]).unwrap();
        drop(j);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(segment_name(1)))
            .unwrap();
        f.write_all(&u32::MAX.to_le_bytes()).unwrap();
        f.write_all(&[0; 4]).unwrap();
        drop(f);
        let (got, rec, _) = records(dir.path(), 0);
        assert!(got.is_empty());
        assert_eq!((rec.torn, rec.skipped_bytes), (1, 8));
    }
}
