//! Skills over a real SQLite store filled with synthetic batches, through [`Tools`]: every
//! built-in pattern fires on its evidence, names the culprit's file:line, and stays silent
//! without its evidence (absent, or below its threshold).

use std::sync::Arc;

use wattson_proto::v1::{Finding, RunSkillRequest, TimeWindow};

use super::Registry;
use crate::analysis::Tools;
use crate::attribute::FleetConfig;
use crate::store::synthetic::BatchBuilder;
use crate::store::{self, Store};

/// 2026-11-02 00:00:00 UTC.
pub const T0: i64 = 1_793_577_600;

/// A store in a temp dir (kept alive by the guard).
pub fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.sqlite").display());
    let s: Arc<dyn Store> = Arc::from(store::open(&url).unwrap());
    (dir, s)
}

/// One batch: its start and its (service, folded stack, samples).
pub type TestBatch<'a> = (i64, Vec<(&'a str, String, u64)>);

/// Tools over a store holding one batch per `(at, samples)` list: (service, folded, count).
pub fn tools_with(batches: &[TestBatch<'_>]) -> (tempfile::TempDir, Tools) {
    let (dir, s) = sqlite();
    for (seq, (at, samples)) in batches.iter().enumerate() {
        let rows: Vec<(&str, &str, &str, u64, f64)> = samples
            .iter()
            .map(|(svc, folded, n)| (*svc, "b1", folded.as_str(), *n, *n as f64 * 10_000.0))
            .collect();
        let b = BatchBuilder::new("h1", seq as u64 + 1)
            .interval(*at, 10, false, 0.0, &rows)
            .build();
        s.ingest(&b).unwrap();
    }
    (dir, Tools::new(s, FleetConfig::default()))
}

pub fn request(skill: &str) -> RunSkillRequest {
    RunSkillRequest {
        skill: skill.into(),
        window: Some(TimeWindow {
            from_unix_seconds: T0,
            to_unix_seconds: T0 + 3600,
        }),
        ..RunSkillRequest::default()
    }
}

const FILLER: &str = "main@src/main.rs:1;app::compute@src/compute.rs:20;app::inner_loop";

/// Per built-in pattern: a stack with its evidence as real symbols appear (root first), the
/// culprit frame (which gets a file:line) and that file.
const CASES: &[(&str, &str, &str)] = &[
    (
        "siphash-small-keys",
        "main;app::count_keys;std::collections::hash::map::HashMap<K,V,S>::insert;core::hash::BuildHasher::hash_one;<std::hash::random::DefaultHasher as core::hash::Hasher>::write;core::hash::sip::Hasher<S>::write",
        "app::count_keys",
    ),
    (
        "allocator-churn",
        "main;app::build_records;alloc::raw_vec::RawVec<T,A>::grow_one;alloc::alloc::Global::alloc_impl;__rust_alloc;malloc;_int_malloc",
        "app::build_records",
    ),
    (
        "large-copies",
        "main;copy_frames;__memmove_avx_unaligned_erms",
        "copy_frames",
    ),
    (
        "regex-compile-per-call",
        "main;app::handle;regex::regex::string::Regex::new;regex::builders::string::RegexBuilder::build;regex_automata::meta::regex::Builder::build",
        "app::handle",
    ),
    (
        "json-hot-path",
        "main;app::parse_body;serde_json::de::from_str;serde_json::de::Deserializer<R>::parse_whitespace",
        "app::parse_body",
    ),
    (
        "formatting",
        "main;app::render;alloc::fmt::format::format_inner;core::fmt::write;core::fmt::num::imp::<impl core::fmt::Display for u64>::fmt",
        "app::render",
    ),
    (
        "logging",
        "main;app::serve;tracing_core::event::Event::dispatch;<tracing_subscriber::fmt::Layer<S,N,E,W> as tracing_subscriber::layer::Layer<S>>::on_event",
        "app::serve",
    ),
    (
        "lock-contention",
        "main;app::worker;std::sync::poison::mutex::Mutex<T>::lock;std::sys::sync::mutex::futex::Mutex::lock_contended;syscall;entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k];__x64_sys_futex_[k];do_futex_[k];futex_wait_[k]",
        "app::worker",
    ),
    (
        "unbuffered-writes",
        "main;app::dump;std::io::Write::write_all;<std::fs::File as std::io::Write>::write;write;entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k];__x64_sys_write_[k];ksys_write_[k];vfs_write_[k]",
        "app::dump",
    ),
    (
        "syscall-storm",
        "main;app::poll_input;std::io::Read::read;read;entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k];__x64_sys_read_[k];ksys_read_[k]",
        "app::poll_input",
    ),
    (
        "compression-level",
        "main;archive_chunk;ZSTD_compressStream2;ZSTD_compressBlock_btultra2;ZSTD_btGetAllMatches",
        "archive_chunk",
    ),
    (
        "busy-spin",
        "main;app::wait_ready;core::hint::spin_loop",
        "app::wait_ready",
    ),
    (
        "debug-build",
        "main;app::sum_all;<core::slice::iter::Iter<T> as core::iter::traits::iterator::Iterator>::next",
        "app::sum_all",
    ),
    (
        "backtrace-capture",
        "main;app::fail_fast;anyhow::error::<impl anyhow::Error>::msg;std::backtrace::Backtrace::capture;std::backtrace::Backtrace::create;_Unwind_Backtrace",
        "app::fail_fast",
    ),
    (
        "page-faults",
        "main;app::fill_buffer;asm_exc_page_fault_[k];exc_page_fault_[k];do_user_addr_fault_[k];handle_mm_fault_[k];do_anonymous_page_[k];clear_page_erms_[k]",
        "app::fill_buffer",
    ),
    (
        "exceptions-as-control-flow",
        "main;parse_int(std::string const&);__cxa_throw;_Unwind_RaiseException",
        "parse_int(std::string const&)",
    ),
];

/// The stack with the culprit frame located at `src/culprit.rs:77`.
fn located(stack: &str, culprit: &str) -> String {
    stack
        .split(';')
        .map(|f| {
            if f == culprit {
                format!("{f}@src/culprit.rs:77")
            } else {
                f.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

fn run(tools: &Tools, skill: &str) -> Vec<Finding> {
    Registry::builtin()
        .run(tools, &request(skill))
        .unwrap()
        .findings
}

#[test]
fn every_builtin_pattern_has_a_case() {
    let names: Vec<String> = super::catalogue::patterns()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert!(names.len() >= 12, "{names:?}");
    for n in &names {
        assert!(CASES.iter().any(|c| c.0 == n), "no test case for {n}");
    }
}

#[test]
fn each_pattern_fires_on_its_evidence_and_names_the_line() {
    for &(skill, stack, culprit) in CASES {
        let (_d, tools) = tools_with(&[(
            T0 + 60,
            vec![
                ("svc", located(stack, culprit), 40),
                ("svc", FILLER.to_string(), 60),
            ],
        )]);
        let f = run(&tools, skill);
        assert_eq!(f.len(), 1, "{skill}: {f:#?}");
        let f = &f[0];
        assert_eq!((f.skill.as_str(), f.service.as_str()), (skill, "svc"));
        assert_eq!(f.function, culprit, "{skill}");
        let loc = f
            .location
            .as_ref()
            .unwrap_or_else(|| panic!("{skill}: no location"));
        assert_eq!(
            (loc.file.as_str(), loc.line),
            ("src/culprit.rs", 77),
            "{skill}"
        );
        assert!((f.share - 0.4).abs() < 1e-9, "{skill}: {}", f.share);
        assert!(
            f.savings_watts > 0.0 && f.savings_fleet_watts > 0.0,
            "{skill}"
        );
        assert!(f.confidence > 0.9, "{skill}: {}", f.confidence);
        assert!(!f.estimated, "{skill}: measured joules are not estimated");
        assert!(!f.advice.is_empty() && !f.evidence.is_empty(), "{skill}");
        assert!(f.savings_model.contains("% of the pattern's"), "{skill}");
    }
}

#[test]
fn no_pattern_fires_without_its_evidence() {
    let (_d, tools) = tools_with(&[(T0 + 60, vec![("svc", FILLER.to_string(), 100)])]);
    for &(skill, ..) in CASES {
        assert!(
            run(&tools, skill).is_empty(),
            "{skill} fired on a clean profile"
        );
    }
    assert!(run(&tools, "").is_empty());
}

/// How a Rust program's main thread and a spawned thread really unwind: every frame between
/// the C runtime and the program's own code (`catch_unwind` on both).
const RUST_RUNTIME_STACKS: &[&str] = &[
    "_start;__libc_start_main;main;std::rt::lang_start_internal;std::panic::catch_unwind;std::panicking::try;std::panicking::try::do_call;std::rt::lang_start::{{closure}};std::sys::backtrace::__rust_begin_short_backtrace;app::main;app::compute@src/compute.rs:20;app::inner_loop",
    "clone3;start_thread;std::sys::pal::unix::thread::Thread::new::thread_start;<alloc::boxed::Box<F,A> as core::ops::function::FnOnce<Args>>::call_once;std::thread::Builder::spawn_unchecked_::{{closure}};std::panic::catch_unwind;std::panicking::try;app::worker_loop@src/worker.rs:9;app::step",
];

#[test]
fn no_pattern_fires_on_the_frames_every_rust_program_has() {
    // Found by hand: `exceptions-as-control-flow` matched `catch_unwind` and claimed 100% of
    // every Rust service.
    let (_d, tools) = tools_with(&[(
        T0 + 60,
        RUST_RUNTIME_STACKS
            .iter()
            .map(|s| ("svc", s.to_string(), 50))
            .collect(),
    )]);
    for &(skill, ..) in CASES {
        assert!(
            run(&tools, skill).is_empty(),
            "{skill} fired on a plain Rust program's runtime frames"
        );
    }
}

#[test]
fn no_pattern_fires_below_its_threshold() {
    for &(skill, stack, culprit) in CASES {
        // 1 sample in 1,000: below every threshold (the lowest is 2%).
        let (_d, tools) = tools_with(&[(
            T0 + 60,
            vec![
                ("svc", located(stack, culprit), 1),
                ("svc", FILLER.to_string(), 999),
            ],
        )]);
        assert!(run(&tools, skill).is_empty(), "{skill} fired at 0.1%");
    }
}

#[test]
fn buffered_writes_are_not_a_syscall_storm() {
    let stack = "main;app::dump;std::io::buffered::bufwriter::BufWriter<W>::flush_buf;write;entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k];__x64_sys_write_[k];ksys_write_[k]";
    let (_d, tools) = tools_with(&[(
        T0 + 60,
        vec![("svc", stack.into(), 50), ("svc", FILLER.into(), 50)],
    )]);
    assert!(run(&tools, "unbuffered-writes").is_empty());
}

#[test]
fn the_opportunity_finder_ranks_by_fleet_watts() {
    let (_d, tools) = tools_with(&[(
        T0 + 60,
        vec![
            ("svc", located(CASES[0].1, CASES[0].2), 30),
            ("svc", located(CASES[3].1, CASES[3].2), 10),
            ("svc", FILLER.into(), 60),
            ("other", located(CASES[11].1, CASES[11].2), 50),
            ("other", FILLER.into(), 50),
        ],
    )]);
    let r = Registry::builtin().run(&tools, &request("")).unwrap();
    let skills: Vec<&str> = r.findings.iter().map(|f| f.skill.as_str()).collect();
    assert_eq!(
        skills,
        ["busy-spin", "siphash-small-keys", "regex-compile-per-call"],
        "{:#?}",
        r.findings
    );
    let watts: Vec<f64> = r.findings.iter().map(|f| f.savings_fleet_watts).collect();
    assert!(watts.windows(2).all(|w| w[0] >= w[1]), "{watts:?}");
}

#[test]
fn a_finding_without_line_data_says_so() {
    let (_d, tools) = tools_with(&[(
        T0 + 60,
        vec![("svc", CASES[3].1.into(), 40), ("svc", FILLER.into(), 60)],
    )]);
    let r = Registry::builtin()
        .run(&tools, &request("regex-compile-per-call"))
        .unwrap();
    assert_eq!(r.findings.len(), 1);
    assert!(r.findings[0].location.is_none());
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("without DWARF line data")),
        "{:?}",
        r.notes
    );
}

#[test]
fn unknown_skills_and_missing_detection_are_clear_errors() {
    let (_d, tools) = tools_with(&[(T0 + 60, vec![("svc", FILLER.into(), 10)])]);
    let reg = Registry::builtin();
    let e = reg.run(&tools, &request("nope")).unwrap_err();
    assert!(matches!(e, super::SkillError::BadRequest(_)));
    assert!(e.to_string().contains("regression-solver"), "{e}");
    let e = reg.run(&tools, &request("regression-solver")).unwrap_err();
    assert!(matches!(e, super::SkillError::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("detection is not available"), "{e}");
}

#[test]
fn user_skills_run_like_builtins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("skills.toml");
    std::fs::write(
        &path,
        r#"
[[skill]]
name = "inner-loop"
frames = ["app::inner_loop"]
min_share = 0.5
savings_factor = 0.25
advice = "Unroll it"
"#,
    )
    .unwrap();
    let reg = Registry::builtin().with_user_file(&path).unwrap();
    let info = reg.list();
    let mine = info.iter().find(|s| s.name == "inner-loop").unwrap();
    assert_eq!(mine.origin, path.display().to_string());
    let (_d, tools) = tools_with(&[(T0 + 60, vec![("svc", FILLER.into(), 100)])]);
    let f = reg.run(&tools, &request("inner-loop")).unwrap().findings;
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].function, "app::compute");
    let (_d, tools) = tools_with(&[(
        T0 + 60,
        vec![("svc", FILLER.into(), 40), ("svc", "main;other".into(), 60)],
    )]);
    assert!(
        reg.run(&tools, &request("inner-loop"))
            .unwrap()
            .findings
            .is_empty()
    );
}
