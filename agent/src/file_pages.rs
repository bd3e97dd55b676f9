//! Gives back the page-table entries of the files the symbolizer maps read-only and shared
//! (blazesym maps every ELF and debug file it reads that way). Looking up a few addresses in a
//! large binary's DWARF touches tens of MiB of it; those pages stay in the page cache, shared
//! with every other reader, but count in the agent's RSS for as long as they stay mapped.
//! Dropping the mapping's pages with `MADV_DONTNEED` keeps the mapping (blazesym's slices stay
//! valid): the next read of a page is a minor fault served from the page cache.
//! The first lookup in a large binary parses much of its DWARF in one call, so a [`Pager`]
//! thread also releases them every [`TICK`] while such a call runs.

use std::{
    fs,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

/// How often pages are released while a read runs.
pub const TICK: Duration = Duration::from_millis(2);

/// A read-only shared file mapping of this process: [start, end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    start: usize,
    end: usize,
}

/// The read-only shared file mappings of this process (`r--s` in `/proc/self/maps`). Pages of
/// such a mapping are the file's own page-cache pages: it can hold no private data to lose.
pub fn shared_read_only() -> Vec<Mapping> {
    fs::read_to_string("/proc/self/maps")
        .map(|text| parse_maps(&text))
        .unwrap_or_default()
}

fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let path = fields.nth(3)?;
            if perms != "r--s" || !path.starts_with('/') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: usize::from_str_radix(start, 16).ok()?,
                end: usize::from_str_radix(end, 16).ok()?,
            })
        })
        .filter(|m| m.end > m.start)
        .collect()
}

/// Drops the resident pages of `maps` from this process (not from the page cache). Returns the
/// mappings it could not advise (normally none).
pub fn release(maps: &[Mapping]) -> usize {
    maps.iter()
        .filter(|m| {
            // SAFETY: the range is a whole mapping of this process that is read-only and
            // shared, so its pages are the file's: MADV_DONTNEED discards no data, and the
            // mapping stays valid for every slice into it. It may have been unmapped since
            // /proc/self/maps was read; madvise then fails with ENOMEM and nothing happens.
            let rc = unsafe {
                libc::madvise(
                    m.start as *mut libc::c_void,
                    m.end - m.start,
                    libc::MADV_DONTNEED,
                )
            };
            rc != 0
        })
        .count()
}

/// Releases the pages of the read-only shared file mappings every [`TICK`] while a read that
/// [`Pager::busy`] marks runs. Idle, its thread is parked.
pub struct Pager {
    shared: Arc<Flags>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Flags {
    busy: AtomicBool,
    stop: AtomicBool,
}

/// Marks a read as running for as long as it lives.
pub struct Busy<'a>(&'a Pager);

impl Pager {
    /// Starts the thread; None (and pages are only released between reads) if it cannot.
    pub fn start() -> Option<Pager> {
        let shared = Arc::new(Flags::default());
        let flags = shared.clone();
        let thread = thread::Builder::new()
            .name("file-pages".into())
            .spawn(move || {
                while !flags.stop.load(Ordering::Acquire) {
                    if !flags.busy.load(Ordering::Acquire) {
                        thread::park();
                        continue;
                    }
                    thread::sleep(TICK);
                    if flags.busy.load(Ordering::Acquire) {
                        release(&shared_read_only());
                    }
                }
            })
            .map_err(|e| tracing::debug!(error = %e, "no thread to release file pages"))
            .ok()?;
        Some(Pager {
            shared,
            thread: Some(thread),
        })
    }

    /// Pages are released while the returned guard lives.
    pub fn busy(&self) -> Busy<'_> {
        self.shared.busy.store(true, Ordering::Release);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
        Busy(self)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.shared.busy.store(false, Ordering::Release);
    }
}

impl Drop for Pager {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_shared_file_mappings_are_taken() {
        let maps = "\
5600-5700 r--p 00000000 08:01 1 /usr/bin/x
5700-5800 r-xp 00001000 08:01 1 /usr/bin/x
7f00-7f80 r--s 00000000 08:01 2 /usr/lib/debug/.build-id/ab/cd.debug
7f80-7f90 rw-s 00000000 00:0e 3 anon_inode:bpf-map
7f90-7fa0 r--s 00000000 00:01 4 /memfd:x (deleted)
7fa0-7fb0 rw-p 00000000 00:00 0 [heap]
";
        let got = parse_maps(maps);
        assert_eq!(
            got,
            vec![
                Mapping {
                    start: 0x7f00,
                    end: 0x7f80
                },
                Mapping {
                    start: 0x7f90,
                    end: 0x7fa0
                }
            ]
        );
    }

    /// A file mapped read-only and shared, read through, is resident; after release it is
    /// not, and reading it again gives the same bytes.
    #[test]
    fn released_pages_leave_the_rss_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        fs::write(&path, &data).unwrap();
        let file = fs::File::open(&path).unwrap();
        // SAFETY: the file is private to this test and not modified while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let sum = |m: &[u8]| m.iter().step_by(4096).map(|b| u64::from(*b)).sum::<u64>();
        let expected = sum(&data);
        assert_eq!(sum(&map), expected);
        let start = map.as_ptr() as usize;
        let ours: Vec<Mapping> = shared_read_only()
            .into_iter()
            .filter(|m| m.start == start)
            .collect();
        assert_eq!(ours.len(), 1, "the test's mapping is listed");
        let before = resident_kib(start);
        assert!(before >= 8 << 10, "read through: {before} KiB resident");
        assert_eq!(release(&ours), 0);
        let after = resident_kib(start);
        assert!(after < 1024, "after release: {after} KiB resident");
        assert_eq!(sum(&map), expected);
    }

    /// While a read is marked busy the pager drops what it reads; once it is done it leaves
    /// the mapping alone (between reads pages are released by the caller).
    #[test]
    fn the_pager_releases_pages_only_during_a_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        fs::write(&path, vec![7u8; 16 << 20]).unwrap();
        let file = fs::File::open(&path).unwrap();
        // SAFETY: the file is private to this test and not modified while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let start = map.as_ptr() as usize;
        let touch = |m: &[u8]| m.iter().step_by(4096).map(|b| u64::from(*b)).sum::<u64>();
        let pager = Pager::start().expect("a thread");
        {
            let _busy = pager.busy();
            assert_eq!(touch(&map), 7 * 4096);
            thread::sleep(TICK * 10);
            let during = resident_kib(start);
            assert!(during < 1024, "busy: {during} KiB still resident");
        }
        assert_eq!(touch(&map), 7 * 4096);
        thread::sleep(TICK * 10);
        let idle = resident_kib(start);
        assert!(idle >= 16 << 10, "idle: only {idle} KiB resident");
        drop(pager);
    }

    /// Rss of the mapping starting at `start`, from /proc/self/smaps.
    fn resident_kib(start: usize) -> u64 {
        let smaps = fs::read_to_string("/proc/self/smaps").unwrap();
        let head = format!("{start:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
        lines.next().expect("mapping in smaps");
        lines
            .find_map(|l| l.strip_prefix("Rss:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }
}
