//! The regression solver against a test double of detection (a fixed list of regressions and
//! changes, as `detection::Detector` would answer), and patches checked with `git apply` on a
//! temp git repository.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use wattson_proto::v1::{
    Cause, Change, ListChangesRequest, ListChangesResponse, ListRegressionsRequest,
    ListRegressionsResponse, Regression,
};

use super::Registry;
use super::tests::{T0, request, tools_with};
use crate::analysis::{DetectionSource, ToolError};

/// Test double: answers with what it was given.
struct FixedDetection {
    regressions: Vec<Regression>,
    changes: Vec<Change>,
}

impl DetectionSource for FixedDetection {
    fn regressions(
        &self,
        _: &ListRegressionsRequest,
    ) -> Result<ListRegressionsResponse, ToolError> {
        Ok(ListRegressionsResponse {
            regressions: self.regressions.clone(),
            series: 1,
            ..ListRegressionsResponse::default()
        })
    }
    fn changes(&self, _: &ListChangesRequest) -> Result<ListChangesResponse, ToolError> {
        Ok(ListChangesResponse {
            changes: self.changes.clone(),
        })
    }
}

const WORK: &str = "main@src/main.rs:3;app::handle@src/handle.rs:20;app::work";
const GROWN: &str = "main@src/main.rs:3;app::handle@src/handle.rs:14;regex::regex::string::Regex::new;regex_automata::meta::regex::Builder::build";

fn regression(id: &str) -> Regression {
    Regression {
        id: id.into(),
        service: "svc".into(),
        function: "app::handle".into(),
        metric: "cpu".into(),
        kind: "step".into(),
        started_unix_seconds: T0 + 1800,
        before_share: 0.5,
        after_share: 0.75,
        delta_share: 0.25,
        delta_watts: 2.0,
        fleet_delta_watts: 20.0,
        confidence: 0.9,
        status: "open".into(),
        causes: vec![
            Cause {
                change_id: "c-other".into(),
                score: 0.1,
                why: "little of the delta".into(),
            },
            Cause {
                change_id: "c-regex".into(),
                score: 0.8,
                why: "80% of the delta in stacks through functions it touched".into(),
            },
        ],
        ..Regression::default()
    }
}

/// Before the change point `app::handle` only works; after it, it also compiles a regex.
fn solver_tools() -> (tempfile::TempDir, crate::analysis::Tools) {
    let mut batches = Vec::new();
    for m in 0..30 {
        batches.push((T0 + m * 60, vec![("svc", WORK.to_string(), 10)]));
    }
    for m in 30..60 {
        batches.push((
            T0 + m * 60,
            vec![
                ("svc", WORK.to_string(), 10),
                ("svc", GROWN.to_string(), 10),
            ],
        ));
    }
    let (d, tools) = tools_with(&batches);
    let detection = FixedDetection {
        regressions: vec![regression("r-1"), {
            let mut f = regression("r-filtered");
            f.status = "filtered".into();
            f
        }],
        changes: vec![Change {
            id: "c-regex".into(),
            service: "svc".into(),
            at_unix_seconds: T0 + 1790,
            title: "validate ids with a regex".into(),
            kind: "deploy".into(),
            build_id: "b2".into(),
            ..Change::default()
        }],
    };
    (d, tools.with_detection(Arc::new(detection)))
}

#[test]
fn the_solver_names_the_grown_stacks_the_culprit_and_a_mitigation() {
    let (_d, tools) = solver_tools();
    let r = Registry::builtin()
        .run(&tools, &request("regression-solver"))
        .unwrap();
    assert_eq!(
        r.findings.len(),
        1,
        "only open regressions: {:#?}",
        r.findings
    );
    let f = &r.findings[0];
    assert_eq!(f.regression_id, "r-1");
    assert_eq!(f.change_id, "c-regex", "the best-scored cause");
    assert_eq!(f.function, "app::handle");
    let text = f.evidence.join("\n");
    assert!(text.contains("50.00% to 75.00%"), "{text}");
    assert!(
        text.contains("grew: main;app::handle;regex::regex::string::Regex::new"),
        "{text}"
    );
    // The grown stack went from 0% to half the service's samples.
    assert!(text.contains("0.00% -> 50.00%"), "{text}");
    assert!(text.contains("validate ids with a regex"), "{text}");
    assert!(
        text.contains("mitigation: regex-compile-per-call"),
        "{text}"
    );
    let loc = f.location.as_ref().unwrap();
    assert_eq!((loc.file.as_str(), loc.line), ("src/handle.rs", 14));
    assert!(f.advice.contains("c-regex") && f.advice.contains("compile it once"));
    assert_eq!((f.savings_watts, f.savings_fleet_watts), (2.0, 20.0));
}

#[test]
fn the_solver_explains_one_named_regression_or_refuses_an_unknown_one() {
    let (_d, tools) = solver_tools();
    let mut req = request("regression-solver");
    req.regression_id = "r-1".into();
    assert_eq!(
        Registry::builtin()
            .run(&tools, &req)
            .unwrap()
            .findings
            .len(),
        1
    );
    req.regression_id = "r-404".into();
    let e = Registry::builtin().run(&tools, &req).unwrap_err();
    assert!(e.to_string().contains("open ones: r-1"), "{e}");
}

#[test]
fn no_mitigation_without_a_pattern_in_the_growth() {
    // The grown stack is plain work: no pattern explains it.
    let mut batches = Vec::new();
    for m in 0..60 {
        let n = if m < 30 { 10 } else { 30 };
        batches.push((T0 + m * 60, vec![("svc", WORK.to_string(), n)]));
    }
    let (_d, tools) = tools_with(&batches);
    let tools = tools.with_detection(Arc::new(FixedDetection {
        regressions: vec![regression("r-1")],
        changes: vec![],
    }));
    let r = Registry::builtin()
        .run(&tools, &request("regression-solver"))
        .unwrap();
    let f = &r.findings[0];
    assert!(
        !f.evidence.join("\n").contains("mitigation"),
        "{:?}",
        f.evidence
    );
    assert_eq!(f.change_id, "c-regex");
    assert!(f.patch.is_empty());
}

/// A git repository with `files` committed.
fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let git = |args: &[&str]| {
        let ok = Command::new("git")
            .arg("-C")
            .arg(dir.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "init"]);
    dir
}

/// Applies `patch` for real in `root` and returns the patched `file`.
fn applied(root: &Path, patch: &str, file: &str) -> String {
    let p = root.join("fix.patch");
    std::fs::write(&p, patch).unwrap();
    let ok = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["apply", "fix.patch"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "git apply refused:\n{patch}");
    std::fs::read_to_string(root.join(file)).unwrap()
}

const HANDLE_RS: &str = "use regex::Regex;\n\npub fn handle(ids: &[String]) -> usize {\n    let mut n = 0;\n    for id in ids {\n        let re = Regex::new(r\"^[a-z]+-\\d+$\").unwrap();\n        if re.is_match(id) {\n            n += 1;\n        }\n    }\n    n\n}\n";

fn regex_finding(root: &Path, line: u32) -> (Vec<wattson_proto::v1::Finding>, Vec<String>) {
    let stack = format!(
        "main@src/main.rs:3;app::handle@src/handle.rs:{line};regex::regex::string::Regex::new"
    );
    let (_d, tools) = tools_with(&[(
        T0 + 60,
        vec![("svc", stack, 40), ("svc", WORK.to_string(), 60)],
    )]);
    let mut req = request("regex-compile-per-call");
    req.source_root = root.display().to_string();
    let r = Registry::builtin().run(&tools, &req).unwrap();
    (r.findings, r.notes)
}

#[test]
fn a_regex_compiled_per_call_is_hoisted_into_a_static() {
    let root = repo(&[("src/handle.rs", HANDLE_RS)]);
    let (f, notes) = regex_finding(root.path(), 6);
    assert_eq!(f.len(), 1);
    assert!(!f[0].patch.is_empty(), "no patch: {notes:?}");
    let after = applied(root.path(), &f[0].patch, "src/handle.rs");
    assert!(
        after.contains(
            "        static RE_6: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| Regex::new(r\"^[a-z]+-\\d+$\").expect(\"a valid regex\"));\n        let re = RE_6.clone();\n"
        ),
        "{after}"
    );
}

#[test]
fn the_return_address_line_after_the_call_still_finds_it() {
    let root = repo(&[("src/handle.rs", HANDLE_RS)]);
    let (f, notes) = regex_finding(root.path(), 7);
    assert!(!f[0].patch.is_empty(), "no patch: {notes:?}");
}

#[test]
fn no_patch_when_the_line_does_not_look_as_expected() {
    let text = HANDLE_RS.replace("Regex::new(r\"^[a-z]+-\\d+$\")", "Regex::new(&pattern)");
    let root = repo(&[("src/handle.rs", &text)]);
    let (f, notes) = regex_finding(root.path(), 6);
    assert!(f[0].patch.is_empty(), "{}", f[0].patch);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("no patch for src/handle.rs:6")),
        "{notes:?}"
    );
    // A file that is not there: no patch either, and the note says so.
    let empty = repo(&[("README", "x\n")]);
    let (f, notes) = regex_finding(empty.path(), 6);
    assert!(f[0].patch.is_empty());
    assert!(
        notes
            .iter()
            .any(|n| n.contains("not under the source root")),
        "{notes:?}"
    );
}

fn write_finding(root: &Path, file: &str, line: u32, culprit: &str) -> Vec<String> {
    let stack = format!(
        "main;{culprit}@{file}:{line};write;entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k];__x64_sys_write_[k];ksys_write_[k]"
    );
    let (_d, tools) = tools_with(&[(
        T0 + 60,
        vec![("svc", stack, 40), ("svc", WORK.to_string(), 60)],
    )]);
    let mut req = request("unbuffered-writes");
    req.source_root = root.display().to_string();
    let r = Registry::builtin().run(&tools, &req).unwrap();
    assert_eq!(r.findings.len(), 1);
    let mut out = vec![r.findings[0].patch.clone()];
    out.extend(r.notes);
    out
}

#[test]
fn a_rust_writer_is_wrapped_in_a_bufwriter() {
    let text = "use std::io::Write;\n\nfn dump(path: &str, recs: &[u64]) -> std::io::Result<()> {\n    let mut out = std::fs::File::create(path)?;\n    for r in recs {\n        out.write_all(&r.to_le_bytes())?;\n    }\n    Ok(())\n}\n";
    let root = repo(&[("src/dump.rs", text)]);
    let got = write_finding(root.path(), "src/dump.rs", 6, "app::dump");
    assert!(!got[0].is_empty(), "{got:?}");
    let after = applied(root.path(), &got[0], "src/dump.rs");
    assert!(
        after
            .contains("    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);\n"),
        "{after}"
    );
}

#[test]
fn a_c_write_to_stdout_becomes_a_buffered_fwrite() {
    let text = "#include <string.h>\n#include <unistd.h>\n\nvoid emit(const char *rec) {\n    write(1, rec, strlen(rec));\n}\n";
    let root = repo(&[("emit.c", text)]);
    let got = write_finding(root.path(), "/build/dir/emit.c", 5, "emit");
    assert!(!got[0].is_empty(), "{got:?}");
    let after = applied(root.path(), &got[0], "emit.c");
    assert!(after.contains("#include <stdio.h>\n"), "{after}");
    assert!(
        after.contains("    fwrite(rec, 1, strlen(rec), stdout);\n"),
        "{after}"
    );
    // A trailing comment stays on the line.
    let commented = text.replace("strlen(rec));", "strlen(rec)); /* HOT */");
    let root = repo(&[("emit.c", &commented)]);
    let got = write_finding(root.path(), "emit.c", 5, "emit");
    let after = applied(root.path(), &got[0], "emit.c");
    assert!(
        after.contains("    fwrite(rec, 1, strlen(rec), stdout); /* HOT */\n"),
        "{after}"
    );
    // A write to another descriptor is left alone, with the reason.
    let other = text.replace("write(1,", "write(fd,");
    let root = repo(&[("emit.c", &other)]);
    let got = write_finding(root.path(), "emit.c", 5, "emit");
    assert!(got[0].is_empty());
    assert!(got.iter().any(|n| n.contains("fdopen")), "{got:?}");
}
