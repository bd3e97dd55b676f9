//! `--only skills`: what the skills' patches save on their e2e workloads (`tests/workloads/`,
//! one known anti-pattern each). Per workload: build it (DWARF, frame pointers, -O0, as the
//! e2e tests do), profile it with the real agent through a real collector, ask
//! `wattson suggest --skill S --source-root REPO --json` for the finding and its patch, apply
//! it with `git apply`, rebuild, and run both builds on the same fixed amount of work (rounds
//! or records, not seconds), before and after in alternating order (ABBA) so the shared
//! machine's noise hits both sides alike; CPU time is the child's user + system time from
//! `wait4(2)`'s rusage, the median of the runs.
//!
//! Energy: this machine has no RAPL (no perf power PMU, powercap or MSR), so the joules are
//! *estimated* the way the agent's `model` source does for a fully busy CPU: CPU seconds times
//! its default busy-minus-idle watts per CPU (`--model-max-watts` 3.5 - `--model-idle-watts`
//! 0.74, agent/src/energy/args.rs; dynamic attribution charges no idle). Being CPU time
//! scaled, its ratio is the CPU ratio; it is never a measurement.
//!
//! The harness (repository, build, profile, suggest, apply) is `wattson_e2e::workloads`,
//! shared with `tests/tests/skills_e2e.rs`. A workload whose finding or patch does not come
//! (the C one while the agent cannot unwind through glibc) gets its row with the reason; the
//! bench goes on.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use wattson_e2e::workloads::{self, Found, Workload};

use super::Row;

/// Watts one fully busy CPU adds above idle under the agent's model defaults (estimated).
const MODEL_BUSY_WATTS: f64 = 3.5 - 0.74;
/// Before/after pairs per workload.
const PAIRS: usize = 5;

/// One workload and how to run it.
struct Case {
    file: &'static str,
    service: &'static str,
    skill: &'static str,
    /// Arguments while profiled (runs until stopped).
    profile_args: &'static [&'static str],
    /// Arguments for the fixed amount of work measured.
    work_args: &'static [&'static str],
    /// The work, for the table.
    work: &'static str,
}

const CASES: &[Case] = &[
    Case {
        file: "siphash_small_keys.rs",
        service: "wl-siphash",
        skill: "siphash-small-keys",
        profile_args: &["600"],
        work_args: &["3600", "1000"],
        work: "1,000 rounds x 4,096 lookups",
    },
    Case {
        file: "unbuffered_writes.rs",
        service: "wl-writes",
        skill: "unbuffered-writes",
        profile_args: &["600", "/dev/null"],
        work_args: &["3600", "/dev/null", "4000000"],
        work: "4M 8-byte records to /dev/null",
    },
    Case {
        file: "unbuffered_writes.c",
        service: "wl-cwrites",
        skill: "unbuffered-writes",
        profile_args: &["600"],
        work_args: &["3600", "4000000"],
        work: "4M 16-byte records to stdout (/dev/null)",
    },
];

/// What one workload gave.
#[derive(Default)]
struct Outcome {
    location: String,
    patched: String,
    /// Median CPU seconds before and after (after only when patched).
    cpu: Option<(f64, Option<f64>)>,
    note: String,
}

pub fn run(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let mut table = Vec::new();
    for case in CASES {
        eprintln!("bench: skills: {} ...", case.file);
        // A panic in the harness (a binary that did not build, a collector that did not
        // start) is this row's failure, not the bench's.
        let out = std::panic::catch_unwind(|| measure(case)).unwrap_or_else(|p| Outcome {
            note: format!(
                "harness panicked: {}",
                p.downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| p.downcast_ref::<&str>().copied())
                    .unwrap_or("?")
            ),
            ..Outcome::default()
        });
        rows.push(Row {
            area: "skills",
            metric: format!("{} ({}): CPU s before -> after", case.service, case.skill),
            value: match out.cpu {
                Some((b, Some(a))) => format!("{b:.3} -> {a:.3} ({:.2}x)", a / b),
                Some((b, None)) => format!("{b:.3} -> - (no patch)"),
                None => "-".into(),
            },
            goal: String::new(),
            met: None,
        });
        table.push((case, out));
    }
    print!("{}", render(&table));
    Ok(())
}

/// Builds, profiles, patches and measures one workload.
fn measure(case: &Case) -> Outcome {
    let mut out = Outcome::default();
    let w = match Workload::new(case.file) {
        Ok(w) => w,
        Err(e) => {
            out.note = e.to_string();
            return out;
        }
    };
    let before = match w.build(case.service) {
        Ok(exe) => exe,
        Err(e) => {
            out.note = format!("build: {e}");
            return out;
        }
    };
    let patched = match finding(case, &w, &before) {
        Ok((f, notes)) => {
            out.location = f
                .location
                .as_ref()
                .map(|(file, line)| format!("{}:{line}", short(file)))
                .unwrap_or_else(|| "-".into());
            apply(&w, &f, case).map_err(|e| format!("{} found, {e}: {notes}", f.function))
        }
        Err(e) => Err(e),
    };
    let after = match patched {
        Ok(exe) => {
            out.patched = "yes".into();
            Some(exe)
        }
        Err(e) => {
            out.patched = "no".into();
            out.note = e;
            None
        }
    };
    match runs(case, &before, after.as_deref()) {
        Ok(cpu) => out.cpu = Some(cpu),
        Err(e) => out.note = format!("{} {e}", out.note).trim().to_string(),
    }
    out
}

/// The workload's finding for the case's skill, from a real profile, and the skill's notes.
fn finding(case: &Case, w: &Workload, exe: &Path) -> Result<(Found, String), String> {
    let p = workloads::profile(exe, case.profile_args, Stdio::null(), case.service)
        .map_err(|e| first_line(&e.to_string()))?;
    let r = p.suggest(case.service, case.skill, w.root());
    p.stop();
    let r = r.map_err(|e| first_line(&e.to_string()))?;
    let notes = if r.notes.is_empty() {
        "no notes".into()
    } else {
        r.notes.join("; ")
    };
    match r.of(case.service) {
        Some(f) => Ok((f.clone(), notes)),
        None => Err(format!("no finding ({notes})")),
    }
}

/// Applies the finding's patch and builds the patched workload.
fn apply(w: &Workload, f: &Found, case: &Case) -> Result<std::path::PathBuf, String> {
    if f.patch.is_empty() {
        return Err("no patch".into());
    }
    w.apply(&f.patch).map_err(|e| format!("git apply: {e}"))?;
    w.build(&format!("{}-fixed", case.service))
        .map_err(|e| format!("patched build: {}", first_line(&e.to_string())))
}

/// Alternating runs (ABBA); the median CPU seconds of each side.
fn runs(case: &Case, before: &Path, after: Option<&Path>) -> Result<(f64, Option<f64>), String> {
    let (mut b, mut a) = (Vec::new(), Vec::new());
    for pair in 0..PAIRS {
        let mut order = vec![(before, &mut b)];
        if let Some(after) = after {
            order.push((after, &mut a));
        }
        if pair % 2 == 1 {
            order.reverse();
        }
        for (exe, into) in order {
            into.push(cpu_seconds(exe, case.work_args)?);
        }
    }
    Ok((median(&mut b), after.map(|_| median(&mut a))))
}

/// User + system CPU seconds of one run of `exe args`, from `wait4(2)`.
fn cpu_seconds(exe: &Path, args: &[&str]) -> Result<f64, String> {
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid with valid out-pointers; std's Child is not waited
    // on afterwards (it only reaps in wait/try_wait, never on drop).
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if pid < 0 {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!(
            "{} {args:?} failed: status {status}",
            exe.display()
        ));
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(secs(usage.ru_utime) + secs(usage.ru_stime))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// `src/FILE` of a DWARF path (the temp repository's prefix says nothing).
fn short(file: &str) -> String {
    let p = Path::new(file);
    let n = p.components().count();
    p.components()
        .skip(n.saturating_sub(2))
        .collect::<std::path::PathBuf>()
        .display()
        .to_string()
}

fn render(table: &[(&Case, Outcome)]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nskills: each workload's fixed work, before and after its patch; CPU = user+sys from \
         wait4, median of {PAIRS} ABBA-interleaved runs each; energy ESTIMATED (no RAPL here): \
         CPU s x {MODEL_BUSY_WATTS:.2} W, the agent's model for a busy CPU"
    );
    let _ = writeln!(
        s,
        "{:<11} {:<19} {:<30} {:<7} {:>8} {:>8} {:>6} {:>9} {:>9}  work / note",
        "workload", "skill", "file:line", "patched", "CPU s", "CPU s", "after/", "est. J", "est. J"
    );
    let _ = writeln!(
        s,
        "{:<11} {:<19} {:<30} {:<7} {:>8} {:>8} {:>6} {:>9} {:>9}",
        "", "", "", "", "before", "after", "before", "before", "after"
    );
    for (case, o) in table {
        let (b, a) = match o.cpu {
            Some((b, a)) => (Some(b), a),
            None => (None, None),
        };
        let f = |v: Option<f64>, scale: f64| v.map_or("-".into(), |v| format!("{:.3}", v * scale));
        let ratio = match (b, a) {
            (Some(b), Some(a)) => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        let note = if o.note.is_empty() {
            case.work.to_string()
        } else {
            format!("{}; {}", case.work, o.note)
        };
        let _ = writeln!(
            s,
            "{:<11} {:<19} {:<30} {:<7} {:>8} {:>8} {:>6} {:>9} {:>9}  {note}",
            case.service,
            case.skill,
            if o.location.is_empty() {
                "-"
            } else {
                &o.location
            },
            if o.patched.is_empty() {
                "-"
            } else {
                &o.patched
            },
            f(b, 1.0),
            f(a, 1.0),
            ratio,
            f(b, MODEL_BUSY_WATTS),
            f(a, MODEL_BUSY_WATTS),
        );
    }
    s
}
