//! Skills end to end: small workloads written for this test (`tests/workloads/`, each with one
//! known anti-pattern), built here with debug info and frame pointers inside a temp git
//! repository, profiled for real by `wattson-agent run` (real BPF, so run as root) through
//! `wattson-collector serve` (SQLite store); then the skill is run over that store through
//! `Tools`: it must fire, name the workload's file:line, and its patch, when the fix is
//! mechanical, must apply with `git apply` and the patched workload must build.
//!
//! Energy comes from the utilization model (`--energy-source model`): there is no RAPL here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wattson_collector::analysis::Tools;
use wattson_collector::attribute::FleetConfig;
use wattson_collector::skills::Registry;
use wattson_collector::store;
use wattson_e2e::procs::{self, Proc};
use wattson_proto::v1::{Finding, RunSkillRequest, RunSkillResponse, TimeWindow};

/// One CPU-heavy test at a time: two would share the CPUs and each other's samples.
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Kills the workload if the test panics.
struct Workload(Child);

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A git repository holding the workload `file` (from tests/workloads/) as `src/FILE`.
fn repo(file: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workloads")
        .join(file);
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    let dest = dir.path().join("src").join(file);
    std::fs::copy(&src, &dest).unwrap();
    let git = |args: &[&str]| {
        run(Command::new("git")
            .arg("-C")
            .arg(dir.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args))
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "workload"]);
    (dir, dest)
}

/// Builds `src` into `exe` with DWARF and frame pointers (unoptimised: no inlining hides
/// the call site).
fn build(src: &Path, exe: &Path) {
    if src.extension().is_some_and(|e| e == "c") {
        run(Command::new("cc")
            .args(["-g", "-O0", "-fno-omit-frame-pointer", "-o"])
            .arg(exe)
            .arg(src));
    } else {
        run(Command::new("rustc")
            .args([
                "-g",
                "-C",
                "force-frame-pointers=yes",
                "-C",
                "opt-level=0",
                "-o",
            ])
            .arg(exe)
            .arg(src));
    }
}

/// 1-based line of the `HOT` marker in `src`.
fn hot_line(src: &Path) -> u32 {
    let text = std::fs::read_to_string(src).unwrap();
    text.lines()
        .position(|l| l.contains("HOT:"))
        .expect("a HOT marker") as u32
        + 1
}

/// Profiles `exe args` with the real agent through a collector for a few one-second intervals
/// and runs `skill` over the store with the repo as source root.
fn profile_and_run(
    root: &Path,
    exe: &Path,
    args: &[&str],
    stdout: Stdio,
    service: &str,
    skill: &str,
) -> RunSkillResponse {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wattson.db");
    let store_url = format!("sqlite://{}", db.display());
    let (mut collector, addr) = procs::collector("127.0.0.1:0", &store_url, &[]);
    let started = now();
    let comm: String = exe
        .file_name()
        .unwrap()
        .to_string_lossy()
        .chars()
        .take(15)
        .collect();
    let workload = Workload(
        Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .spawn()
            .expect("starting the workload"),
    );
    let agent_args: Vec<String> = [
        "run",
        "--collector",
        &format!("http://{addr}"),
        "--frequency",
        "99",
        "--interval",
        "1s",
        "--host-id",
        &format!("e2e-skills-{service}"),
        "--service",
        &format!("comm:{comm}={service}"),
        "--energy-source",
        "model",
        "--spool-dir",
        &dir.path().join("spool").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut agent = Proc::start(
        "agent",
        "wattson-agent",
        &agent_args,
        "info,wattson_agent::ship=debug",
    );
    // Two batches: each carries every sample since the last, and on a loaded host the
    // agent's first (symbolizing every binary it meets) took two minutes here.
    agent.wait_until("two acknowledged batches", Duration::from_secs(600), |p| {
        p.count("batch acknowledged") >= 2
    });
    agent.stop(libc::SIGTERM, Duration::from_secs(30));
    drop(workload);
    collector.stop(libc::SIGTERM, Duration::from_secs(30));
    let store: Arc<dyn store::Store> = Arc::from(store::open(&store_url).unwrap());
    let tools = Tools::new(store, FleetConfig::default());
    let r = Registry::builtin()
        .run(
            &tools,
            &RunSkillRequest {
                skill: skill.into(),
                window: Some(TimeWindow {
                    from_unix_seconds: started - 60,
                    to_unix_seconds: now() + 60,
                }),
                service: service.into(),
                source_root: root.display().to_string(),
                ..RunSkillRequest::default()
            },
        )
        .unwrap();
    eprintln!("{service}: {skill}: {r:#?}");
    r
}

fn the_finding<'a>(r: &'a RunSkillResponse, service: &str) -> &'a Finding {
    r.findings
        .iter()
        .find(|f| f.service == service)
        .unwrap_or_else(|| panic!("no finding for {service}: {r:#?}"))
}

/// The finding names `src` at its HOT line (the agent's DWARF line of the call).
fn assert_names_hot_line(f: &Finding, src: &Path) {
    let loc = f
        .location
        .as_ref()
        .unwrap_or_else(|| panic!("no location: {f:#?}"));
    let tail = Path::new("src").join(src.file_name().unwrap());
    assert!(
        Path::new(&loc.file).ends_with(&tail),
        "{} is not {}: {f:#?}",
        loc.file,
        src.display()
    );
    assert_eq!(loc.line, hot_line(src), "{f:#?}");
}

/// Applies the finding's patch with git and rebuilds the workload from the patched source.
fn assert_patch_applies_and_builds(f: &Finding, root: &Path, src: &Path) {
    assert!(!f.patch.is_empty(), "no patch: {f:#?}");
    let patch = root.join("fix.patch");
    std::fs::write(&patch, &f.patch).unwrap();
    run(Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["apply", "fix.patch"]));
    build(src, &root.join("patched"));
}

#[test]
fn siphash_on_small_keys_is_found_at_its_call_site() {
    let _alone = exclusive();
    let (root, src) = repo("siphash_small_keys.rs");
    let exe = root.path().join("wl-siphash");
    build(&src, &exe);
    let r = profile_and_run(
        root.path(),
        &exe,
        &["600"],
        Stdio::null(),
        "wl-siphash",
        "siphash-small-keys",
    );
    let f = the_finding(&r, "wl-siphash");
    assert_eq!(f.function, "siphash_small_keys::count_keys", "{f:#?}");
    assert!(f.share >= 0.03 && f.estimated, "{f:#?}");
    assert_names_hot_line(f, &src);
    // Swapping the hasher is advice, not a mechanical patch.
    assert!(f.patch.is_empty());
}

#[test]
fn unbuffered_rust_writes_are_found_and_patched_with_a_bufwriter() {
    let _alone = exclusive();
    let (root, src) = repo("unbuffered_writes.rs");
    let exe = root.path().join("wl-writes");
    build(&src, &exe);
    let r = profile_and_run(
        root.path(),
        &exe,
        &["600", "/dev/null"],
        Stdio::null(),
        "wl-writes",
        "unbuffered-writes",
    );
    let f = the_finding(&r, "wl-writes");
    assert_eq!(f.function, "unbuffered_writes::dump", "{f:#?}");
    assert_names_hot_line(f, &src);
    assert_patch_applies_and_builds(f, root.path(), &src);
    let patched = std::fs::read_to_string(&src).unwrap();
    assert!(
        patched.contains("let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);"),
        "{patched}"
    );
}

/// glibc (Debian 12) keeps no frame pointer, so the frame-pointer walk from a sample in its
/// `write` wrapper skips the caller `emit_records`; the agent's leaf fix-up (`.eh_frame` of
/// libc and the return address BPF kept from the user stack) puts it back. Measured
/// (2026-12-04): the finding now names `emit_records` (95% of the service, stacks
/// `main;emit_records;__GI___libc_write`), but at line 11, not the HOT line 12, so no patch.
/// The agent's own profile has the call frame at line 12 (return address 0x11a8 looked up
/// one byte earlier) and 5 of 297 samples with leaf 0x11a8 itself (line 11): the same
/// address as leaf and as return address, which the collector's line data seems to merge.
#[test]
#[ignore = "finding names emit_records but at line 11 (leaf and return address share 0x11a8; see above)"]
fn unbuffered_c_writes_are_found_and_patched_with_fwrite() {
    let _alone = exclusive();
    let (root, src) = repo("unbuffered_writes.c");
    let exe = root.path().join("wl-cwrites");
    build(&src, &exe);
    let r = profile_and_run(
        root.path(),
        &exe,
        &["600"],
        Stdio::from(std::fs::File::create("/dev/null").unwrap()),
        "wl-cwrites",
        "unbuffered-writes",
    );
    let f = the_finding(&r, "wl-cwrites");
    assert_eq!(f.function, "emit_records", "{f:#?}");
    assert_names_hot_line(f, &src);
    assert_patch_applies_and_builds(f, root.path(), &src);
}
