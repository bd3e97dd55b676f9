//! The tools over a real SQLite store: diff of two windows and of two builds (functions and
//! stacks), source lookup, and the errors consumers map to INVALID_ARGUMENT / UNAVAILABLE.

use std::sync::Arc;

use wattson_proto::v1::{ListChangesRequest, ListRegressionsRequest};

use super::{DiffRequest, ToolError, Tools};
use crate::attribute::FleetConfig;
use crate::store::synthetic::BatchBuilder;
use crate::store::{self, Store, Window};

const T0: i64 = 1_793_577_600;

fn tools() -> (tempfile::TempDir, Tools) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.sqlite").display());
    let s: Arc<dyn Store> = Arc::from(store::open(&url).unwrap());
    // First half hour: build v1 hashes 20%; second: build v2 hashes 60%.
    for m in 0..60i64 {
        let (build, hash) = if m < 30 { ("v1", 2) } else { ("v2", 6) };
        let b = BatchBuilder::new("h1", m as u64 + 1)
            .interval(
                T0 + m * 60,
                60,
                false,
                0.0,
                &[
                    (
                        "api",
                        build,
                        "main@src/main.rs:4;work@src/work.rs:9;hash@/rustc/abc/library/core/src/hash/sip.rs:30",
                        hash,
                        hash as f64 * 1e6,
                    ),
                    (
                        "api",
                        build,
                        "main@src/main.rs:4;work@src/work.rs:12",
                        10 - hash,
                        (10 - hash) as f64 * 1e6,
                    ),
                ],
            )
            .build();
        s.ingest(&b).unwrap();
    }
    (dir, Tools::new(s, FleetConfig::default()))
}

#[test]
fn diff_of_two_windows_shows_functions_and_stacks() {
    let (_d, t) = tools();
    let d = t
        .diff(&DiffRequest {
            baseline_from: T0,
            baseline_to: T0 + 1800,
            from: T0 + 1800,
            to: T0 + 3600,
            weight: "samples".into(),
            ..DiffRequest::default()
        })
        .unwrap();
    assert_eq!(d.unit, "samples/s");
    assert_eq!(d.sides, ["baseline".to_string(), "window".to_string()]);
    let hash = d.functions.iter().find(|f| f.function == "hash").unwrap();
    assert!(hash.delta > 0.0, "{hash:?}");
    // Both stacks moved 40 points, so they tie and come by name; one grew, one shrank.
    assert_eq!(d.stacks.len(), 2);
    let grown = d
        .stacks
        .iter()
        .find(|s| s.folded == "main;work;hash")
        .unwrap();
    let shrank = d.stacks.iter().find(|s| s.folded == "main;work").unwrap();
    assert!((shrank.before_share - 0.8).abs() < 1e-9 && (shrank.after_share - 0.4).abs() < 1e-9);
    assert!((grown.before_share - 0.2).abs() < 1e-9 && (grown.after_share - 0.6).abs() < 1e-9);
}

#[test]
fn diff_of_two_builds() {
    let (_d, t) = tools();
    let d = t
        .diff(&DiffRequest {
            from: T0,
            to: T0 + 3600,
            build_a: "v1".into(),
            build_b: "v2".into(),
            service: "api".into(),
            ..DiffRequest::default()
        })
        .unwrap();
    assert_eq!(d.unit, "% of build");
    let hash = d.functions.iter().find(|f| f.function == "hash").unwrap();
    assert!(
        (hash.before - 20.0).abs() < 1e-6 && (hash.after - 60.0).abs() < 1e-6,
        "{hash:?}"
    );
    assert!(!d.estimated);
}

#[test]
fn bad_diffs_are_bad_requests() {
    let (_d, t) = tools();
    let base = DiffRequest {
        from: T0,
        to: T0 + 3600,
        ..DiffRequest::default()
    };
    for r in [
        base.clone(),
        DiffRequest {
            build_a: "v1".into(),
            ..base.clone()
        },
        DiffRequest {
            weight: "joules".into(),
            ..base.clone()
        },
        DiffRequest {
            build_a: "v1".into(),
            build_b: "v9".into(),
            ..base.clone()
        },
    ] {
        assert!(matches!(t.diff(&r), Err(ToolError::BadRequest(_))), "{r:?}");
    }
}

#[test]
fn source_names_lines_and_call_sites() {
    let (_d, t) = tools();
    let w = Window {
        from: T0,
        to: T0 + 3600,
    };
    let lines = t.source("api", "work", w).unwrap();
    // work calls hash at line 9 (240 samples) and runs itself at line 12 (360).
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(
        (
            lines[0].file.as_str(),
            lines[0].line,
            lines[0].callee.as_str()
        ),
        ("src/work.rs", 12, "")
    );
    assert_eq!(
        (lines[1].line, lines[1].callee.as_str(), lines[1].samples),
        (9, "hash", 240)
    );
    assert!((lines[0].share + lines[1].share - 1.0).abs() < 1e-9);
    assert!(t.source("api", "nothing", w).unwrap().is_empty());
    assert!(matches!(
        t.source("", "work", w),
        Err(ToolError::BadRequest(_))
    ));
}

#[test]
fn detection_tools_say_detection_is_not_available() {
    let (_d, t) = tools();
    assert!(!t.has_detection());
    let e = t
        .regressions(&ListRegressionsRequest::default())
        .unwrap_err();
    assert!(matches!(e, ToolError::Unavailable(_)));
    assert!(e.to_string().contains("detection is not available"), "{e}");
    assert!(matches!(
        t.changes(&ListChangesRequest::default()),
        Err(ToolError::Unavailable(_))
    ));
}
