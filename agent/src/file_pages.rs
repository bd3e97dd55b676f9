//! Gives back the page-table entries of the files the symbolizer maps read-only and shared
//! (blazesym maps every ELF and debug file it reads that way). Looking up a few addresses in a
//! large binary's DWARF touches tens of MiB of it; those pages stay in the page cache, shared
//! with every other reader, but count in the agent's RSS for as long as they stay mapped.
//! Dropping the mapping's pages with `MADV_DONTNEED` keeps the mapping (blazesym's slices stay
//! valid): the next read of a page is a minor fault served from the page cache.
//!
//! The first lookup in a large binary parses much of its DWARF in one call, so a [`Pager`]
//! thread also has the pages released every [`TICK`] while such a call runs. It does not call
//! madvise itself: a mapping it listed could be unmapped by the reading thread and its
//! addresses reused by the allocator before the madvise, which would then zero live memory.
//! It signals the reading thread, whose handler lists and releases the mappings while that
//! thread, the only one that maps or unmaps files, is stopped in it. That "only one" is a
//! property of the process, so nothing is released until the binary says so ([`enable`]).

use std::{
    cell::UnsafeCell,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

/// How often pages are released while a read runs.
pub const TICK: Duration = Duration::from_millis(2);

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns releasing on for this process. Call it only where one thread maps and unmaps files
/// (the agent's sampling loop, which also symbolizes); with several (a test harness running
/// symbolizers in parallel) a release could race another thread's unmap.
pub fn enable() {
    ENABLED.store(true, Ordering::Release);
}

fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// Calls `f(start, end)` for each read-only shared file mapping (`r--s`, a path) in the text
/// of a `/proc/PID/maps`. Pages of such a mapping are the file's own page-cache pages: they
/// hold no private data to lose. Allocates nothing (it runs in a signal handler).
fn each_shared_read_only(text: &[u8], mut f: impl FnMut(usize, usize)) {
    for line in text.split(|b| *b == b'\n') {
        let mut fields = line.split(|b| *b == b' ').filter(|field| !field.is_empty());
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let path = fields.nth(3);
        if perms != b"r--s" || !path.is_some_and(|p| p.starts_with(b"/")) {
            continue;
        }
        let mut ends = range.split(|b| *b == b'-').map(hex);
        if let (Some(Some(start)), Some(Some(end))) = (ends.next(), ends.next())
            && end > start
        {
            f(start, end);
        }
    }
}

fn hex(digits: &[u8]) -> Option<usize> {
    digits.iter().try_fold(0usize, |n, d| {
        let v = (*d as char).to_digit(16)?;
        n.checked_mul(16)?.checked_add(v as usize)
    })
}

/// Drops the resident pages of [start, end) from this process (not from the page cache).
///
/// Callers guarantee that [start, end) is, at the time of the call, a read-only shared file
/// mapping: listed from /proc/self/maps by the only thread that maps or unmaps files, with no
/// unmap in between.
fn dontneed(start: usize, end: usize) -> bool {
    // SAFETY: per the above, the pages are the file's: MADV_DONTNEED discards no data, and
    // the mapping stays valid for every slice into it.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) == 0 }
}

/// Releases the pages of this process's read-only shared file mappings. Called on the thread
/// that maps and unmaps files (the symbolizer's). Returns the mappings it released.
pub fn release() -> usize {
    if !enabled() {
        return 0;
    }
    let Ok(text) = std::fs::read("/proc/self/maps") else {
        return 0;
    };
    let mut n = 0;
    each_shared_read_only(&text, |start, end| n += usize::from(dontneed(start, end)));
    n
}

/// Room for /proc/self/maps in the signal handler (a few hundred lines; what does not fit
/// waits for the next release).
const HANDLER_BUF: usize = 256 << 10;

struct HandlerBuf(UnsafeCell<[u8; HANDLER_BUF]>);
// SAFETY: only the signal handler touches the buffer, and it does not run twice at once: the
// signal is masked while its handler runs, and only the pager sends it, one thread at a time
// (under `Pager::target`'s lock).
unsafe impl Sync for HandlerBuf {}
static BUF: HandlerBuf = HandlerBuf(UnsafeCell::new([0; HANDLER_BUF]));

extern "C" fn on_signal(_: libc::c_int) {
    // SAFETY: errno is thread-local; saved and restored so the interrupted code sees its own.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: open, read, close and madvise are async-signal-safe; BUF is ours alone (above).
    unsafe {
        let buf = &mut *BUF.0.get();
        let fd = libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            let mut len = 0;
            while len < buf.len() {
                let n = libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len);
                if n <= 0 {
                    break;
                }
                len += n as usize;
            }
            libc::close(fd);
            // Only whole lines: a cut one could name a shorter range.
            let whole = buf[..len]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            each_shared_read_only(&buf[..whole], |start, end| {
                dontneed(start, end);
            });
        }
        *libc::__errno_location() = errno;
    }
}

/// The signal that asks a reading thread to release its file pages.
fn signal() -> libc::c_int {
    libc::SIGRTMIN() + 7
}

/// Installs the handler once; false when it cannot be.
fn install() -> bool {
    static DONE: OnceLock<bool> = OnceLock::new();
    *DONE.get_or_init(|| {
        // SAFETY: a zeroed sigaction with a handler that only makes async-signal-safe calls;
        // SA_RESTART so that reads the signal interrupts are resumed, not failed.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal(), &action, std::ptr::null_mut()) == 0
        }
    })
}

/// Has the pages of the read-only shared file mappings released every [`TICK`] while a read
/// that [`Pager::busy`] marks runs. Idle, its thread is parked.
pub struct Pager {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    /// The thread inside a marked read, if any. Signalled only under this lock, so only while
    /// that thread is still inside the read (it clears this under the lock on the way out).
    target: Mutex<Option<libc::pthread_t>>,
    stop: AtomicBool,
}

/// Marks a read as running on this thread for as long as it lives.
pub struct Busy<'a>(&'a Pager);

impl Pager {
    /// Starts the thread; None (pages are then only released between reads) if it cannot.
    pub fn start() -> Option<Pager> {
        if !enabled() {
            return None;
        }
        if !install() {
            tracing::debug!("no signal handler to release file pages during reads");
            return None;
        }
        let shared = Arc::new(Shared::default());
        let flags = shared.clone();
        let thread = thread::Builder::new()
            .name("file-pages".into())
            .spawn(move || {
                while !flags.stop.load(Ordering::Acquire) {
                    if lock(&flags.target).is_none() {
                        thread::park();
                        continue;
                    }
                    thread::sleep(TICK);
                    if let Some(t) = *lock(&flags.target) {
                        // SAFETY: `t` is inside a marked read, so alive (see `target`).
                        unsafe { libc::pthread_kill(t, signal()) };
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

    /// Pages are released while the returned guard lives; drop it on this thread.
    pub fn busy(&self) -> Busy<'_> {
        // SAFETY: pthread_self has no preconditions.
        *lock(&self.shared.target) = Some(unsafe { libc::pthread_self() });
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
        Busy(self)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        *lock(&self.0.shared.target) = None;
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
    use std::{fs, process::Command};

    use super::*;

    #[test]
    fn only_read_only_shared_file_mappings_are_taken() {
        let maps = b"\
5600-5700 r--p 00000000 08:01 1 /usr/bin/x
5700-5800 r-xp 00001000 08:01 1 /usr/bin/x
7f00-7f80 r--s 00000000 08:01 2 /usr/lib/debug/.build-id/ab/cd.debug
7f80-7f90 rw-s 00000000 00:0e 3 anon_inode:bpf-map
7f90-7fa0 r--s 00000000 00:01 4 /memfd:x (deleted)
7fa0-7fb0 rw-p 00000000 00:00 0 [heap]
zz-7fc0 r--s 00000000 08:01 5 /bad
";
        let mut got = Vec::new();
        each_shared_read_only(maps, |start, end| got.push((start, end)));
        assert_eq!(got, vec![(0x7f00, 0x7f80), (0x7f90, 0x7fa0)]);
    }

    /// Runs test `name` alone in a child process, where releasing may be enabled: in this
    /// harness other tests map and unmap files on other threads.
    fn in_child(name: &str) -> bool {
        if std::env::var_os("WATTSON_FILE_PAGES_CHILD").is_some() {
            enable();
            return true;
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads", "1"])
            .env("WATTSON_FILE_PAGES_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "child {name}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        false
    }

    /// A 16 MiB file mapped read-only and shared: (its mapping, its first address).
    fn mapped(dir: &std::path::Path) -> (memmap2::Mmap, usize) {
        let path = dir.join("data");
        fs::write(&path, vec![7u8; 16 << 20]).unwrap();
        let file = fs::File::open(&path).unwrap();
        // SAFETY: the file is private to this test and not modified while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let start = map.as_ptr() as usize;
        (map, start)
    }

    fn touch(m: &[u8]) -> u64 {
        m.iter().step_by(4096).map(|b| u64::from(*b)).sum()
    }

    /// Read through, the file is resident; after release it is not, and reads back the same.
    #[test]
    fn released_pages_leave_the_rss_and_read_back_the_same() {
        if !in_child("file_pages::tests::released_pages_leave_the_rss_and_read_back_the_same") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (map, start) = mapped(dir.path());
        assert_eq!(touch(&map), 7 * 4096);
        let before = resident_kib(start);
        assert!(before >= 16 << 10, "read through: {before} KiB resident");
        assert!(release() >= 1);
        let after = resident_kib(start);
        assert!(after < 1024, "after release: {after} KiB resident");
        assert_eq!(touch(&map), 7 * 4096);
    }

    /// While a read is marked busy the pager has what it reads dropped; once it is done it
    /// leaves the mapping alone (between reads pages are released by the caller).
    #[test]
    fn the_pager_releases_pages_only_during_a_read() {
        if !in_child("file_pages::tests::the_pager_releases_pages_only_during_a_read") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (map, start) = mapped(dir.path());
        let pager = Pager::start().expect("a pager");
        {
            let _busy = pager.busy();
            assert_eq!(touch(&map), 7 * 4096);
            // Busy-wait: a sleep would be interrupted by the signal each tick.
            let until = std::time::Instant::now() + TICK * 20;
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
            let during = resident_kib(start);
            assert!(during < 1024, "busy: {during} KiB still resident");
        }
        assert_eq!(touch(&map), 7 * 4096);
        thread::sleep(TICK * 20);
        let idle = resident_kib(start);
        assert!(idle >= 16 << 10, "idle: only {idle} KiB resident");
        drop(pager);
    }

    /// Nothing is released where the binary did not enable it (this harness).
    #[test]
    fn nothing_is_released_unless_enabled() {
        if std::env::var_os("WATTSON_FILE_PAGES_CHILD").is_some() {
            return;
        }
        assert_eq!(release(), 0);
        assert!(Pager::start().is_none());
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
