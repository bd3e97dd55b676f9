//! The built-in catalogue: efficiency patterns as their symbols really appear in Rust, C and
//! C++ profiles (std and common crates, glibc, the Linux kernel; kernel frames carry the
//! store's `_[k]` suffix). Each pattern states its evidence threshold and the savings model
//! behind its factor; none fires below its threshold.

use super::patch::Fix;
use super::pattern::{Matcher, Pattern};

fn exact(s: &str) -> Matcher {
    Matcher::Exact(s.into())
}
fn prefix(s: &str) -> Matcher {
    Matcher::Prefix(s.into())
}

/// The pieces of a pattern; [`build`] fills the rest with defaults.
struct Spec<'a> {
    name: &'a str,
    description: &'a str,
    frames: Vec<Matcher>,
    min_share: f64,
    savings_factor: f64,
    savings_why: &'a str,
    advice: &'a str,
}

fn build(s: Spec<'_>) -> Pattern {
    Pattern {
        name: s.name.into(),
        description: s.description.into(),
        frames: s.frames,
        callers: Vec::new(),
        unless: Vec::new(),
        leaf_only: false,
        services: Vec::new(),
        min_share: s.min_share,
        savings_factor: s.savings_factor,
        savings_why: s.savings_why.into(),
        advice: s.advice.into(),
        fix: None,
        origin: "builtin".into(),
    }
}

/// Every built-in pattern, in the order `skills list` shows them.
pub fn patterns() -> Vec<Pattern> {
    let mut out = vec![
        Pattern {
            fix: Some(Fix::SmallKeyHasher),
            ..build(Spec {
                name: "siphash-small-keys",
                description: "SipHash (Rust's default HashMap hasher) hashing small keys",
                frames: vec![
                    prefix("core::hash::sip::"),
                    prefix("<core::hash::sip::"),
                    prefix("<std::hash::random::DefaultHasher as core::hash::Hasher>"),
                    prefix("<std::collections::hash::map::DefaultHasher as core::hash::Hasher>"),
                    prefix("std::hash::random::DefaultHasher"),
                ],
                min_share: 0.03,
                savings_factor: 0.7,
                savings_why: "FxHash/foldhash hash an integer key in a few cycles where SipHash-1-3 \
                          runs its rounds and finalization, several times the cost",
                advice: "HashMap/HashSet with the default RandomState hash small keys with \
                     SipHash-1-3, built to resist HashDoS; for keys that are not attacker \
                     controlled, use a fast hasher: HashMap<K, V, foldhash::fast::RandomState> \
                     (or rustc_hash::FxHashMap)",
            })
        },
        build(Spec {
            name: "allocator-churn",
            description: "malloc/free churn: many short-lived heap allocations",
            frames: vec![
                exact("malloc"),
                exact("free"),
                exact("cfree"),
                exact("calloc"),
                exact("realloc"),
                prefix("__libc_malloc"),
                prefix("__libc_free"),
                prefix("__libc_realloc"),
                prefix("__libc_calloc"),
                prefix("_int_malloc"),
                prefix("_int_free"),
                prefix("_int_realloc"),
                prefix("malloc_consolidate"),
                prefix("tcache_"),
                exact("__rust_alloc"),
                exact("__rust_dealloc"),
                exact("__rust_realloc"),
                prefix("alloc::alloc::"),
                prefix("<alloc::alloc::Global as core::alloc::Allocator>"),
                prefix("mi_malloc"),
                prefix("mi_free"),
                prefix("_mi_"),
                prefix("je_"),
                prefix("operator new"),
                prefix("operator delete"),
            ],
            min_share: 0.08,
            savings_factor: 0.5,
            savings_why: "reusing buffers or pre-sizing collections removes most allocation \
                          calls; about half of the allocator's time is a usual outcome",
            advice: "Allocation churn: reuse buffers (clear() instead of new), pre-size with \
                     with_capacity/reserve, avoid cloning Strings/Vecs in loops, or use an \
                     arena; a faster allocator (mimalloc, jemalloc) also helps",
        }),
        build(Spec {
            name: "large-copies",
            description: "memcpy/memmove of large buffers",
            frames: vec![
                prefix("__memmove_"),
                prefix("__memcpy_"),
                prefix("__memcpy_chk"),
                exact("memcpy"),
                exact("memmove"),
                prefix("core::slice::<impl [T]>::copy_from_slice"),
                prefix("alloc::slice::<impl [T]>::to_vec"),
                prefix("<alloc::vec::Vec<T,A> as core::clone::Clone>::clone"),
                prefix("<alloc::string::String as core::clone::Clone>::clone"),
            ],
            min_share: 0.08,
            savings_factor: 0.6,
            savings_why: "borrowing or moving instead of copying removes the copy; some \
                          copies are needed, so a bit over half",
            advice: "Large copies: pass slices or references instead of cloned Vec/String, \
                     move instead of clone, use Bytes/Arc for shared buffers, and avoid \
                     growing a Vec by doubling in a loop (reserve up front)",
        }),
        Pattern {
            fix: Some(Fix::HoistRegex),
            ..build(Spec {
                name: "regex-compile-per-call",
                description: "A regular expression compiled on every call",
                frames: vec![
                    prefix("regex::regex::string::Regex::new"),
                    prefix("regex::regex::bytes::Regex::new"),
                    prefix("regex::builders::"),
                    prefix("regex_automata::meta::regex::Builder::build"),
                    exact("regcomp"),
                    prefix("re_compile_internal"),
                    prefix("std::__cxx11::basic_regex<"),
                    prefix("std::__detail::_Compiler<"),
                    prefix("pcre2_compile"),
                ],
                min_share: 0.02,
                savings_factor: 0.95,
                savings_why: "a regex compiled once serves every later call; only its \
                              matching remains",
                advice: "A regex is compiled on every call: compile it once (a static \
                         std::sync::LazyLock<Regex>, a field of a long-lived struct, or \
                         regcomp once in C) and reuse it",
            })
        },
        build(Spec {
            name: "json-hot-path",
            description: "JSON (de)serialization on the hot path",
            frames: vec![
                prefix("serde_json::"),
                prefix("<serde_json::"),
                prefix("<&mut serde_json::"),
                prefix("simd_json::"),
                prefix("cJSON_"),
                prefix("json_loads"),
                prefix("json_dumps"),
                prefix("nlohmann::"),
                prefix("rapidjson::"),
            ],
            min_share: 0.10,
            savings_factor: 0.4,
            savings_why: "typed structs, borrowed strings and avoiding re-parsing usually cut \
                          JSON cost by a third to a half",
            advice: "JSON on the hot path: deserialize into typed structs (not Value) with \
                     borrowed &str fields, parse once and pass the result along, use \
                     from_slice on bytes, or move internal traffic to a binary format \
                     (protobuf, bincode)",
        }),
        build(Spec {
            name: "formatting",
            description: "String formatting (format!, Display, printf) on the hot path",
            frames: vec![
                exact("core::fmt::write"),
                prefix("alloc::fmt::format"),
                prefix("core::fmt::Formatter::"),
                prefix("core::fmt::num::"),
                prefix("core::fmt::float::"),
                prefix("<alloc::string::String as core::fmt::Write>"),
                prefix("__vfprintf_internal"),
                prefix("__printf_fp"),
                prefix("__vsnprintf_internal"),
                exact("vfprintf"),
                exact("snprintf"),
                exact("sprintf"),
                prefix("std::__cxx11::basic_ostringstream"),
                prefix("std::basic_ostream<"),
                prefix("fmt::v"),
            ],
            min_share: 0.08,
            savings_factor: 0.5,
            savings_why: "writing into a reused buffer, or not formatting what is not kept, \
                          avoids about half of formatting's cost",
            advice: "Formatting is hot: avoid format!/to_string in loops (write! into a \
                     reused String), format numbers with itoa/ryu, and format log lines only \
                     when the level is enabled",
        }),
        build(Spec {
            name: "logging",
            description: "Logging and tracing machinery on the hot path",
            frames: vec![
                prefix("tracing_subscriber::"),
                prefix("<tracing_subscriber::"),
                prefix("tracing_core::event::Event::dispatch"),
                prefix("log::__private_api"),
                prefix("env_logger::"),
                prefix("<env_logger::"),
                prefix("__vsyslog_internal"),
                exact("syslog"),
                prefix("spdlog::"),
                prefix("google::LogMessage"),
            ],
            min_share: 0.05,
            savings_factor: 0.8,
            savings_why: "sampling or raising the level removes most log events and their cost",
            advice: "Logging is hot: log this path at debug level or sample it (one in N), \
                     move per-request logs to metrics, and check the level before building \
                     the message",
        }),
        Pattern {
            unless: vec![
                prefix("std::thread::park"),
                prefix("std::sys::sync::condvar::"),
            ],
            ..build(Spec {
                name: "lock-contention",
                description: "Contended locks: threads waiting in futex",
                frames: vec![
                    exact("futex_wait_[k]"),
                    exact("__futex_wait_[k]"),
                    exact("futex_wait_queue_[k]"),
                    exact("__x64_sys_futex_[k]"),
                    exact("do_futex_[k]"),
                    prefix("std::sys::sync::mutex::futex::Mutex::lock_contended"),
                    prefix("std::sys::sync::rwlock::futex::RwLock::"),
                    prefix("std::sys::pal::unix::futex::futex_wait"),
                    prefix("__lll_lock_wait"),
                    prefix("lll_lock_wait"),
                    prefix("parking_lot::raw_mutex::RawMutex::lock_slow"),
                    prefix("parking_lot::raw_rwlock::RawRwLock::"),
                    prefix("parking_lot_core::parking_lot::park"),
                ],
                min_share: 0.05,
                savings_factor: 0.5,
                savings_why: "sharding or shortening the critical section removes most \
                              contended waits and their wakeups",
                advice: "Lock contention: shorten the critical section (no I/O or allocation \
                         under the lock), shard the lock or the data, use atomics or \
                         per-thread state, or an RwLock when reads dominate",
            })
        },
        Pattern {
            unless: vec![
                prefix("std::io::buffered::bufwriter::BufWriter<W>::flush_buf"),
                prefix("<std::io::buffered::bufwriter::BufWriter<W> as core::ops::drop::Drop>"),
                prefix("_IO_new_do_write"),
                prefix("_IO_do_write"),
                prefix("new_do_write"),
                prefix("_IO_new_file_xsputn"),
                prefix("_IO_file_xsputn"),
            ],
            fix: Some(Fix::BufferWrites),
            ..build(Spec {
                name: "unbuffered-writes",
                description: "A write(2) system call per small record (syscall storm)",
                frames: vec![
                    // libc's wrapper: samples in its user half have no kernel frames.
                    exact("write"),
                    exact("__write"),
                    prefix("__GI___libc_write"),
                    prefix("__libc_write"),
                    exact("__x64_sys_write_[k]"),
                    exact("ksys_write_[k]"),
                    exact("__x64_sys_writev_[k]"),
                    exact("__x64_sys_pwrite64_[k]"),
                    exact("__x64_sys_sendto_[k]"),
                ],
                min_share: 0.10,
                savings_factor: 0.8,
                savings_why: "a 64 KiB buffer turns hundreds of small writes into one \
                              system call, removing most of the per-call entry and exit cost",
                advice: "Each small record is its own write(2): buffer the writer \
                         (std::io::BufWriter in Rust; stdio's buffered fwrite or setvbuf in C) \
                         and flush once at the end",
            })
        },
        build(Spec {
            name: "syscall-storm",
            description: "Many cheap system calls other than writes (reads, polls, clocks)",
            frames: vec![
                exact("__x64_sys_read_[k]"),
                exact("__x64_sys_recvfrom_[k]"),
                exact("__x64_sys_epoll_wait_[k]"),
                exact("__x64_sys_poll_[k]"),
                exact("__x64_sys_ppoll_[k]"),
                exact("__x64_sys_clock_gettime_[k]"),
                exact("__x64_sys_getpid_[k]"),
                exact("__x64_sys_fstat_[k]"),
                exact("__x64_sys_newfstat_[k]"),
                exact("__x64_sys_lseek_[k]"),
            ],
            min_share: 0.15,
            savings_factor: 0.6,
            savings_why: "batching or caching removes most calls and their entry cost",
            advice: "A system call storm: read with larger buffers (BufReader), cache \
                     metadata (fstat, getpid), batch polls, and avoid re-reading clocks in \
                     tight loops",
        }),
        build(Spec {
            name: "compression-level",
            description: "Compression at a high level (zstd btopt/btultra/lazy2, zlib level 9)",
            frames: vec![
                prefix("ZSTD_compressBlock_btultra"),
                prefix("ZSTD_compressBlock_btopt"),
                prefix("ZSTD_compressBlock_btlazy2"),
                prefix("ZSTD_compressBlock_lazy2"),
                prefix("ZSTD_btGetAllMatches"),
                prefix("ZSTD_insertBt1"),
                exact("deflate_slow"),
                exact("longest_match"),
                prefix("miniz_oxide::deflate::core::compress_lz"),
            ],
            min_share: 0.05,
            savings_factor: 0.6,
            savings_why: "zstd level 3 (fast strategies) or zlib level 6 compresses several \
                          times faster than the optimal parsers for a few percent of ratio",
            advice: "Compression runs at a high level: try zstd level 1-3 (or zlib level 1-6) \
                     and check the ratio; keep high levels for cold, archival data",
        }),
        build(Spec {
            name: "busy-spin",
            description: "Busy spinning or yielding instead of blocking",
            frames: vec![
                prefix("core::hint::spin_loop"),
                prefix("std::hint::spin_loop"),
                prefix("crossbeam_utils::backoff::Backoff::spin"),
                prefix("crossbeam_utils::backoff::Backoff::snooze"),
                prefix("std::thread::yield_now"),
                prefix("std::thread::functions::yield_now"),
                exact("pthread_spin_lock"),
                exact("sched_yield"),
                exact("__x64_sys_sched_yield_[k]"),
            ],
            min_share: 0.05,
            savings_factor: 0.8,
            savings_why: "a blocking wait uses no CPU while it waits",
            advice: "Threads spin or yield in a loop: block instead (a channel, Condvar, \
                     futex-based Mutex, or park/unpark), or bound the spin before parking",
        }),
        Pattern {
            leaf_only: true,
            ..build(Spec {
                name: "debug-build",
                description: "An unoptimised (debug) build: trivial std functions hold the CPU",
                frames: vec![
                    prefix("core::ops::function::"),
                    prefix(
                        "<core::slice::iter::Iter<T> as core::iter::traits::iterator::Iterator>::next",
                    ),
                    prefix(
                        "<core::slice::iter::IterMut<T> as core::iter::traits::iterator::Iterator>::next",
                    ),
                    prefix(
                        "core::iter::range::<impl core::iter::traits::iterator::Iterator for core::ops::range::Range<A>>::next",
                    ),
                    prefix(
                        "<core::ops::range::Range<T> as core::iter::range::RangeIteratorImpl>::spec_next",
                    ),
                    prefix("core::slice::index::"),
                    prefix("<usize as core::slice::index::SliceIndex<[T]>>::index"),
                    prefix("core::num::<impl "),
                    prefix("core::ptr::const_ptr::"),
                    prefix("core::ptr::mut_ptr::"),
                    prefix("core::ptr::non_null::"),
                    prefix("core::cmp::impls::"),
                    prefix("core::ptr::drop_in_place"),
                    prefix("<alloc::vec::Vec<T,A> as core::ops::index::Index<I>>::index"),
                    prefix("<alloc::vec::Vec<T,A> as core::ops::deref::Deref>::deref"),
                    prefix("core::panicking::"),
                    prefix("core::ub_checks::"),
                ],
                min_share: 0.15,
                savings_factor: 0.7,
                savings_why: "release builds inline these calls; an optimised build commonly \
                              runs 3-10x faster than a debug one",
                advice: "This looks like a debug build: trivial std functions (iterator next, \
                         indexing, integer ops) run as real calls. Ship a release build \
                         (cargo build --release, or opt-level = 2 or more for the profile in use)",
            })
        },
        build(Spec {
            name: "backtrace-capture",
            description: "Backtraces captured on a hot path (errors, panics, logging)",
            frames: vec![
                prefix("std::backtrace::Backtrace::capture"),
                prefix("std::backtrace::Backtrace::create"),
                prefix("std::backtrace::Backtrace::force_capture"),
                prefix("std::backtrace_rs::"),
                prefix("backtrace::backtrace::"),
                prefix("backtrace::capture::"),
                prefix("_Unwind_Backtrace"),
                prefix("_Unwind_Find_FDE"),
                exact("backtrace"),
                prefix("__GI___backtrace"),
            ],
            min_share: 0.03,
            savings_factor: 0.95,
            savings_why: "without capture, the unwinding and symbol lookup are gone",
            advice: "Backtraces are captured on a hot path: unset RUST_BACKTRACE / \
                     RUST_LIB_BACKTRACE in production (anyhow and std capture when set), and \
                     do not use errors with backtraces for expected, frequent failures",
        }),
        build(Spec {
            name: "page-faults",
            description: "Page-fault heavy memory use (fresh pages faulted and zeroed)",
            frames: vec![
                exact("asm_exc_page_fault_[k]"),
                exact("exc_page_fault_[k]"),
                exact("do_user_addr_fault_[k]"),
                exact("handle_mm_fault_[k]"),
                exact("__handle_mm_fault_[k]"),
                exact("do_anonymous_page_[k]"),
                exact("clear_page_erms_[k]"),
                exact("clear_page_rep_[k]"),
            ],
            min_share: 0.08,
            savings_factor: 0.6,
            savings_why: "memory that is reused is faulted and zeroed once, not every time",
            advice: "Page faults are hot: memory is mapped and faulted in repeatedly. Reuse \
                     large buffers instead of allocating them per request (glibc returns big \
                     blocks to the OS: raise M_MMAP_THRESHOLD / M_TRIM_THRESHOLD or use \
                     mimalloc/jemalloc), pre-fault long-lived buffers, consider huge pages",
        }),
        build(Spec {
            name: "exceptions-as-control-flow",
            description: "Exceptions or panics thrown and caught on a hot path",
            frames: vec![
                exact("__cxa_throw"),
                prefix("_Unwind_RaiseException"),
                prefix("__gxx_personality_v0"),
                prefix("std::panicking::begin_panic"),
                prefix("std::panicking::rust_panic_with_hook"),
                // Not `std::panic::catch_unwind`: every Rust main and spawned thread runs
                // under it, so it is on every stack without a panic being thrown.
            ],
            min_share: 0.02,
            savings_factor: 0.9,
            savings_why: "an error value costs a branch where an unwind walks the stack",
            advice: "Exceptions or panics are used for control flow: return an error value \
                     (Result, std::expected, error codes) for expected failures",
        }),
    ];
    for p in &mut out {
        debug_assert!(p.min_share > 0.0 && p.savings_factor > 0.0);
        p.origin = "builtin".into();
    }
    out
}
