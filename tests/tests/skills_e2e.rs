//! Skills end to end: small workloads written for this test (`tests/workloads/`, each with one
//! known anti-pattern), built here with debug info and frame pointers inside a temp git
//! repository, profiled for real by `wattson-agent run` (real BPF, so run as root) through
//! `wattson-collector serve` (SQLite store); then `wattson suggest --skill S --source-root
//! REPO --json` asks that collector: the skill must fire, name the workload's file:line, and
//! its patch, when the fix is mechanical, must apply with `git apply` and the patched workload
//! must build. The harness is `wattson_e2e::workloads`, shared with `cargo xtask bench --only
//! skills`.
//!
//! Energy comes from the utilization model (`--energy-source model`): there is no RAPL here.

use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;

use wattson_e2e::workloads::{self, Found, Suggestions, Workload};

/// One CPU-heavy test at a time: two would share the CPUs and each other's samples.
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The workload's repository, removed on drop.
struct Repo(Workload);

impl Repo {
    fn path(&self) -> &Path {
        self.0.root()
    }
}

/// A git repository holding the workload `file` (from tests/workloads/) as `src/FILE`.
fn repo(file: &str) -> (Repo, std::path::PathBuf) {
    let w = Workload::new(file).unwrap();
    let src = w.src().to_path_buf();
    (Repo(w), src)
}

fn build(src: &Path, exe: &Path) {
    workloads::build(src, exe).unwrap();
}

/// Profiles `exe args` with the real agent through a collector and asks it for `skill`'s
/// findings with the repo as source root.
fn profile_and_run(
    root: &Path,
    exe: &Path,
    args: &[&str],
    stdout: Stdio,
    service: &str,
    skill: &str,
) -> Suggestions {
    let p = workloads::profile(exe, args, stdout, service).unwrap();
    let r = p.suggest(service, skill, root).unwrap();
    p.stop();
    eprintln!("{service}: {skill}: {r:#?}");
    r
}

fn the_finding<'a>(r: &'a Suggestions, service: &str) -> &'a Found {
    r.of(service)
        .unwrap_or_else(|| panic!("no finding for {service}: {r:#?}"))
}

/// The finding names `src` at its HOT line (the agent's DWARF line of the call).
fn assert_names_hot_line(f: &Found, src: &Path) {
    let (file, line) = f
        .location
        .as_ref()
        .unwrap_or_else(|| panic!("no location: {f:#?}"));
    let tail = Path::new("src").join(src.file_name().unwrap());
    assert!(
        Path::new(file).ends_with(&tail),
        "{file} is not {}: {f:#?}",
        src.display()
    );
    assert_eq!(*line, workloads::hot_line(src).unwrap(), "{f:#?}");
}

/// Applies the finding's patch with git and rebuilds the workload from the patched source.
fn assert_patch_applies_and_builds(f: &Found, root: &Path, src: &Path) {
    assert!(!f.patch.is_empty(), "no patch: {f:#?}");
    workloads::apply(root, &f.patch).unwrap();
    build(src, &root.join("patched"));
}

#[test]
fn siphash_on_small_keys_is_found_and_patched_with_a_small_key_hasher() {
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
    assert_patch_applies_and_builds(f, root.path(), &src);
    let patched = std::fs::read_to_string(&src).unwrap();
    assert!(
        patched.contains("BuildHasherDefault<SmallKeyHasher>"),
        "{patched}"
    );
    // Same work, same answer: the hasher changes speed, not what the map holds.
    let before = workloads::run(std::process::Command::new(&exe).args(["600", "50"])).unwrap();
    let after =
        workloads::run(std::process::Command::new(root.path().join("patched")).args(["600", "50"]))
            .unwrap();
    assert_eq!(before, after);
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
/// libc and the return address BPF kept from the user stack) puts it back. libc's own DWARF
/// lines (relative paths, `./io/../sysdeps/...`) must not pass for the project's code: its
/// module (`/usr/lib/...`) says it is a library, so the call site is `emit_records`' HOT line.
#[test]
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
