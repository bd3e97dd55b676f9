//! CPU time the collector's ingest path spends, by stage, over the whole process: what
//! `/metrics` exports as `wattson_collector_ingest_cpu_seconds_total{stage}`, and what the
//! ingest bench divides by batches to show where a batch's cost goes. Each stage is measured
//! with the running thread's own CPU clock around its work, never across an `.await` (where a
//! task may move to another thread), so waiting and other threads' work never count. What is
//! in no stage (HTTP/2, the async runtime, the kernel's network stack) is the process's CPU
//! minus these. `receive` is sampled (one request in [`RECEIVE_SAMPLING`] per thread, counted
//! that many times), so it is an estimate; the other stages are timed in full, once per group
//! of batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A stage of ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Per request, on the network threads: unpacking its zstd frame, reading and validating
    /// the batch and resolving it for the store (or refusing it).
    Receive,
    /// Making batches durable: dedup lookups, and the journal append with its sync (SQLite)
    /// or the marker lookup and INSERT (ClickHouse).
    Durable,
    /// Summing resolved batches into the roll-up held in memory.
    Merge,
    /// Turning the sums into rows and writing them (SQLite's periodic roll-up; ClickHouse
    /// builds a group's rows, its INSERT is `durable`).
    Rollup,
}

impl Stage {
    /// Every stage, in the order of a batch's path.
    pub const ALL: [Stage; 4] = [Stage::Receive, Stage::Durable, Stage::Merge, Stage::Rollup];

    /// The `stage` label.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Receive => "receive",
            Stage::Durable => "durable",
            Stage::Merge => "merge",
            Stage::Rollup => "rollup",
        }
    }
}

/// One request in this many is timed for [`Stage::Receive`] (see [`Timer::sampled`]).
pub const RECEIVE_SAMPLING: u32 = 16;

static SPENT_NANOS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// CPU time the calling thread has used.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time (user + system) the whole process has used: what the stages are part of.
pub fn process_cpu() -> Duration {
    // SAFETY: an all-zero rusage is valid, and getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Counts the calling thread's CPU towards a stage from [`Timer::start`] until it is stopped
/// or dropped. Must not be held across an `.await`.
#[must_use = "a timer counts when stopped or dropped"]
pub struct Timer {
    stage: Stage,
    from: Duration,
    /// How many times what it measures counts (0: it measures nothing).
    weight: u32,
}

impl Timer {
    /// Starts counting towards `stage`.
    pub fn start(stage: Stage) -> Timer {
        Timer {
            stage,
            from: thread_cpu(),
            weight: 1,
        }
    }

    /// Times one in `every` calls on this thread and counts it `every` times; the others
    /// measure nothing. For per-request work: reading the thread clock is a syscall that
    /// also updates the scheduler's accounting, and twice per request cost about 5 us, 3% of
    /// a request (measured), where one in 16 costs a fraction of a microsecond.
    pub fn sampled(stage: Stage, every: u32) -> Timer {
        // From 1: a thread's first call is cold (its zstd context is made then), and counted
        // `every` times it would inflate the estimate at low rates.
        thread_local! {
            static CALLS: std::cell::Cell<u32> = const { std::cell::Cell::new(1) };
        }
        let n = CALLS.get();
        CALLS.set(n.wrapping_add(1));
        if every > 1 && !n.is_multiple_of(every) {
            return Timer {
                stage,
                from: Duration::ZERO,
                weight: 0,
            };
        }
        Timer {
            weight: every.max(1),
            ..Timer::start(stage)
        }
    }

    /// Stops counting (the same as dropping it; reads better before an `.await`).
    pub fn stop(self) {}
}

impl Drop for Timer {
    fn drop(&mut self) {
        if self.weight == 0 {
            return;
        }
        let spent = thread_cpu().saturating_sub(self.from) * self.weight;
        SPENT_NANOS[self.stage as usize].fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Runs `f`, counting its CPU towards `stage`.
pub fn time<T>(stage: Stage, f: impl FnOnce() -> T) -> T {
    let _timer = Timer::start(stage);
    f()
}

/// CPU spent so far in each stage, in [`Stage::ALL`] order.
pub fn spent() -> [(Stage, Duration); 4] {
    Stage::ALL.map(|s| {
        (
            s,
            Duration::from_nanos(SPENT_NANOS[s as usize].load(Ordering::Relaxed)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_counts_this_threads_cpu_and_not_its_sleep() {
        let slept = thread_cpu();
        std::thread::sleep(Duration::from_millis(50));
        assert!(thread_cpu() - slept < Duration::from_millis(10));
        let before = spent()[Stage::Rollup as usize].1;
        time(Stage::Rollup, || {
            let start = thread_cpu();
            let mut x = 0u64;
            while thread_cpu() - start < Duration::from_millis(20) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        });
        // At least the 20 ms spun (tests running alongside may add to the stage too).
        let counted = spent()[Stage::Rollup as usize].1 - before;
        assert!(counted >= Duration::from_millis(20), "{counted:?}");
    }

    #[test]
    fn a_sampled_timer_measures_one_call_in_n_and_counts_it_n_times() {
        // On a thread of its own, so its count of calls is fresh; its first call is skipped.
        std::thread::spawn(|| {
            let measured: Vec<u32> = (0..8)
                .map(|_| Timer::sampled(Stage::Durable, 4).weight)
                .collect();
            assert_eq!(measured, [0, 0, 0, 4, 0, 0, 0, 4]);
            assert_eq!(Timer::sampled(Stage::Durable, 1).weight, 1);
        })
        .join()
        .unwrap();
    }
}
