//! The skills workloads (`tests/workloads/`, each with one known anti-pattern) as the skills
//! e2e tests and `cargo xtask bench --only skills` both use them: copy one into a temp git
//! repository, build it with DWARF and frame pointers, profile it with the real agent through
//! a real collector, ask for fixes with `wattson suggest --source-root --json`, and apply a
//! finding's patch with `git apply`. Failures come back as [`Error`]s so the bench can print a
//! row for a workload whose step failed and go on with the next.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::procs::{self, Proc};

/// What failed, with the command's output.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command could not start or exited with an error.
    #[error("{0}")]
    Command(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The agent or collector did not get as far as needed.
    #[error("profiling: {0}")]
    Profile(String),
    /// `wattson suggest --json` printed something that is not its response.
    #[error("wattson suggest printed no response: {0}")]
    Suggest(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs `cmd`; its stdout when it succeeds.
pub fn run(cmd: &mut Command) -> Result<String, Error> {
    let out = cmd
        .output()
        .map_err(|e| Error::Command(format!("{cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Command(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A workload copied into its own git repository (`src/FILE`), removed on drop.
pub struct Workload {
    dir: tempfile::TempDir,
    src: PathBuf,
}

impl Workload {
    /// A repository holding `file` from tests/workloads/, committed.
    pub fn new(file: &str) -> Result<Workload, Error> {
        let dir = tempfile::tempdir().map_err(io(Path::new("temp dir")))?;
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("workloads")
            .join(file);
        let src_dir = dir.path().join("src");
        std::fs::create_dir_all(&src_dir).map_err(io(&src_dir))?;
        let src = src_dir.join(file);
        std::fs::copy(&from, &src).map_err(io(&from))?;
        let w = Workload { dir, src };
        w.git(&["init", "-q"])?;
        w.git(&["add", "-A"])?;
        w.git(&["commit", "-qm", "workload"])?;
        Ok(w)
    }

    fn git(&self, args: &[&str]) -> Result<String, Error> {
        run(Command::new("git")
            .arg("-C")
            .arg(self.root())
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args))
    }

    /// The repository (the source root patches are made against).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The workload's source file in the repository.
    pub fn src(&self) -> &Path {
        &self.src
    }

    /// Builds the source as it is now into `ROOT/name` with DWARF and frame pointers,
    /// unoptimised (no inlining hides the call site); returns the executable.
    pub fn build(&self, name: &str) -> Result<PathBuf, Error> {
        let exe = self.root().join(name);
        build(&self.src, &exe)?;
        Ok(exe)
    }

    /// 1-based line of the `HOT:` marker: where the finding must point.
    pub fn hot_line(&self) -> Result<u32, Error> {
        hot_line(&self.src)
    }

    /// Applies `patch` (a unified diff against the repository) with `git apply`.
    pub fn apply(&self, patch: &str) -> Result<(), Error> {
        apply(self.root(), patch)
    }
}

/// 1-based line of the `HOT:` marker in `src`.
pub fn hot_line(src: &Path) -> Result<u32, Error> {
    let text = std::fs::read_to_string(src).map_err(io(src))?;
    text.lines()
        .position(|l| l.contains("HOT:"))
        .map(|i| i as u32 + 1)
        .ok_or_else(|| Error::Command(format!("{}: no HOT: marker", src.display())))
}

/// Applies `patch` in the git repository `root` with `git apply`.
pub fn apply(root: &Path, patch: &str) -> Result<(), Error> {
    let file = root.join("fix.patch");
    std::fs::write(&file, patch).map_err(io(&file))?;
    run(Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["apply", "fix.patch"]))
    .map(drop)
}

/// Builds `src` (C or Rust) into `exe` as [`Workload::build`] does.
pub fn build(src: &Path, exe: &Path) -> Result<(), Error> {
    if src.extension().is_some_and(|e| e == "c") {
        run(Command::new("cc")
            .args(["-g", "-O0", "-fno-omit-frame-pointer", "-o"])
            .arg(exe)
            .arg(src))?;
    } else {
        run(Command::new("rustc")
            .args(["-g", "-C", "force-frame-pointers=yes", "-C", "opt-level=0"])
            .arg("-o")
            .arg(exe)
            .arg(src))?;
    }
    Ok(())
}

/// Kills a started workload when dropped (a failed step must not leave it spinning).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A collector holding a profile of one workload, still serving so `wattson suggest` can ask.
pub struct Profiled {
    collector: Proc,
    addr: String,
    started: i64,
    _dir: tempfile::TempDir,
}

/// Profiles `exe args` (stdout to `stdout`) as `service`: a `wattson-collector serve` on a
/// SQLite store and `wattson-agent run` at 99 Hz, one-second intervals, energy from the model
/// (no RAPL here), until the collector acknowledged two batches; the workload and agent are
/// stopped, the collector keeps serving.
pub fn profile(exe: &Path, args: &[&str], stdout: Stdio, service: &str) -> Result<Profiled, Error> {
    let dir = tempfile::tempdir().map_err(io(Path::new("temp dir")))?;
    let store = format!("sqlite://{}", dir.path().join("wattson.db").display());
    let (collector, addr) = procs::collector("127.0.0.1:0", &store, &[]);
    let started = now();
    let comm: String = exe
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(15).collect())
        .unwrap_or_default();
    let workload = Running(
        Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .spawn()
            .map_err(|e| Error::Command(format!("starting {}: {e}", exe.display())))?,
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
    agent
        .try_wait_until("two acknowledged batches", Duration::from_secs(600), |p| {
            p.count("batch acknowledged") >= 2
        })
        .map_err(Error::Profile)?;
    agent.stop(libc::SIGTERM, Duration::from_secs(30));
    drop(workload);
    Ok(Profiled {
        collector,
        addr,
        started,
        _dir: dir,
    })
}

/// One finding of `wattson suggest --json`, the fields the tests and the bench read.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Skill that fired.
    pub skill: String,
    /// Service it fired in.
    pub service: String,
    /// Culprit function.
    pub function: String,
    /// Share of the service's samples matched.
    pub share: f64,
    /// Whether its energy figures are estimated.
    pub estimated: bool,
    /// `(file, line)` of the call site, when located.
    pub location: Option<(String, u32)>,
    /// Unified diff, empty when there is none.
    pub patch: String,
}

/// What `wattson suggest` answered: findings, and notes (why a patch is missing).
#[derive(Debug, Clone, Default)]
pub struct Suggestions {
    /// The findings, best first.
    pub findings: Vec<Found>,
    /// The skills' notes.
    pub notes: Vec<String>,
}

impl Suggestions {
    /// The finding for `service`, if any.
    pub fn of(&self, service: &str) -> Option<&Found> {
        self.findings.iter().find(|f| f.service == service)
    }
}

impl Profiled {
    /// `wattson suggest --service SERVICE --skill SKILL --source-root ROOT --json` over the
    /// time since profiling began.
    pub fn suggest(&self, service: &str, skill: &str, root: &Path) -> Result<Suggestions, Error> {
        let out = run(Command::new(procs::binary("wattson"))
            .env("NO_COLOR", "1")
            .args(["--collector", &format!("http://{}", self.addr), "--json"])
            .args(["suggest", "--service", service, "--skill", skill])
            .args(["--from", &(self.started - 60).to_string(), "--to", "now"])
            .arg("--source-root")
            .arg(root))?;
        parse(&out)
    }

    /// Stops the collector (SIGTERM).
    pub fn stop(mut self) {
        self.collector.stop(libc::SIGTERM, Duration::from_secs(30));
    }
}

/// Reads `wattson suggest --json`'s output (the `RunSkillResponse` as JSON).
pub fn parse(json: &str) -> Result<Suggestions, Error> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| Error::Suggest(format!("{e}: {json}")))?;
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let findings = v["findings"]
        .as_array()
        .ok_or_else(|| Error::Suggest(format!("no findings array: {json}")))?
        .iter()
        .map(|f| Found {
            skill: text(f, "skill"),
            service: text(f, "service"),
            function: text(f, "function"),
            share: f["share"].as_f64().unwrap_or_default(),
            estimated: f["estimated"].as_bool().unwrap_or_default(),
            location: f["location"].as_object().map(|l| {
                (
                    text(&f["location"], "file"),
                    l["line"].as_u64().unwrap_or(0) as u32,
                )
            }),
            patch: text(f, "patch"),
        })
        .collect();
    let notes = v["notes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok(Suggestions { findings, notes })
}
