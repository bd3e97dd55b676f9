//! `cargo xtask test`: the one test command, and the one CI runs. Setup first, then the cheap
//! checks (fmt, clippy), unit and integration tests as root on this kernel, then the VM lab on
//! every kernel. It prints a summary of every step and the test counts it read.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cmd, setup, vm};

/// Options of `cargo xtask test`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Skip the VM lab (quick local iterations only; CI always runs it).
    #[arg(long)]
    pub no_vm: bool,
    /// Seconds one VM kernel may take before QEMU is killed.
    #[arg(long, default_value_t = 600)]
    pub vm_timeout: u64,
    /// Seconds `cargo test --workspace` may take before it is killed (a hung test fails the
    /// step instead of hanging CI).
    #[arg(long, default_value_t = 2400)]
    pub test_timeout: u64,
    /// Seconds the `cargo fuzz` step fuzzes batch decode + validate + roll-up.
    #[arg(long, default_value_t = 60)]
    pub fuzz_seconds: u64,
}

struct Step {
    name: String,
    ok: bool,
    secs: f64,
    note: String,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut steps: Vec<Step> = Vec::new();
    let mut counts = (0u64, 0u64);

    let mut step = |name: &str, f: &mut dyn FnMut() -> anyhow::Result<String>| -> bool {
        eprintln!("\n==> {name}");
        let t = Instant::now();
        let result = f();
        let (ok, note) = match result {
            Ok(note) => (true, note),
            Err(e) => (false, format!("{e:#}")),
        };
        if !ok {
            eprintln!("{name} failed: {note}");
        }
        steps.push(Step {
            name: name.into(),
            ok,
            secs: t.elapsed().as_secs_f64(),
            note,
        });
        ok
    };

    // Each later step needs the earlier ones, so stop at the first failure.
    let _ = step("setup", &mut || {
        setup::ensure(false, !args.no_vm).map(|()| String::new())
    }) && step("fmt", &mut || {
        cargo(&["fmt", "--all", "--check"]).map(|()| String::new())
    }) && step("clippy", &mut || {
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .map(|()| String::new())
    }) && step("cargo test", &mut || {
        let (p, f) = cargo_test(Duration::from_secs(args.test_timeout))?;
        counts.0 += p;
        counts.1 += f;
        Ok(format!("{p} passed, {f} failed"))
    }) && step("fuzz", &mut || fuzz(args.fuzz_seconds))
        && (args.no_vm
            || step("vm lab", &mut || {
                let outcomes = vm::run_lab(&vm::Args {
                    kernel: "all".into(),
                    timeout: args.vm_timeout,
                })?;
                let mut notes = Vec::new();
                for o in &outcomes {
                    counts.0 += o.tests.0;
                    counts.1 += o.tests.1;
                    notes.push(format!(
                        "{} {}",
                        o.kernel,
                        if o.passed { "pass" } else { "FAIL" }
                    ));
                }
                if outcomes.iter().any(|o| !o.passed) {
                    bail!("{}", notes.join(", "));
                }
                Ok(notes.join(", "))
            }));

    eprintln!("\nsummary ({:.0}s):", started.elapsed().as_secs_f64());
    for s in &steps {
        let verdict = if s.ok { "ok" } else { "FAILED" };
        let mut note = s.note.lines();
        eprintln!(
            "  {:<11} {verdict:<6} {:>6.0}s  {}",
            s.name,
            s.secs,
            note.next().unwrap_or("")
        );
        // A failed step's detail (each failing test and its panic) ends the log.
        if !s.ok {
            for l in note {
                eprintln!("  {l}");
            }
        }
    }
    let failed_step = steps.iter().find(|s| !s.ok).map(|s| s.name.clone());
    println!("{} passed, {} failed", counts.0, counts.1);
    match failed_step {
        Some(name) => bail!("step `{name}` failed"),
        None if counts.0 == 0 => bail!("no test ran"),
        None => Ok(()),
    }
}

/// Runs the `batch` fuzz target (fuzz/) for `seconds` from its committed seed corpus; new
/// inputs go to a scratch directory, so the committed corpus stays as reviewed.
fn fuzz(seconds: u64) -> anyhow::Result<String> {
    let scratch = tempfile::tempdir().context("creating a scratch corpus directory")?;
    let seeds = cmd::root().join("fuzz/corpus/batch");
    cmd::run(
        Command::new("cargo")
            .current_dir(cmd::root())
            .args(["+nightly", "fuzz", "run", "batch"])
            .arg(scratch.path())
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}")),
    )
    .context("the batch fuzz target failed (its crash input is under fuzz/artifacts/batch/)")?;
    Ok(format!("batch: {seconds} s, no crash"))
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    cmd::run(cmd::cargo().args(args))
}

/// Runs `cargo test --workspace`, echoing its output and summing libtest's counts. After
/// `timeout` the whole process group (cargo and the test binaries) is killed.
fn cargo_test(timeout: Duration) -> anyhow::Result<(u64, u64)> {
    let mut c = cmd::cargo();
    c.args(["test", "--workspace", "--no-fail-fast"])
        .stdout(Stdio::piped())
        .process_group(0);
    eprintln!("$ {}", cmd::display(&c));
    let mut child = c.spawn().context("could not start cargo test")?;
    let done = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (done, timed_out, pgid) = (Arc::clone(&done), Arc::clone(&timed_out), child.id());
        thread::spawn(move || {
            let start = Instant::now();
            while !done.load(Ordering::Relaxed) {
                if start.elapsed() >= timeout {
                    timed_out.store(true, Ordering::Relaxed);
                    eprintln!("cargo test ran past {}s: killing it", timeout.as_secs());
                    let _ = Command::new("kill")
                        .args(["-KILL", &format!("-{pgid}")])
                        .status();
                    return;
                }
                thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let stdout = child.stdout.take().expect("piped");
    let mut lines = Vec::new();
    let mut digest = Digest::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        digest.read(&line);
        if line.contains("test result:") {
            lines.push(line);
        }
    }
    let status = child.wait()?;
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    let counts = vm::libtest_counts(&lines);
    if timed_out.load(Ordering::Relaxed) {
        bail!(
            "cargo test was killed after {}s ({} passed so far)",
            timeout.as_secs(),
            counts.0
        );
    }
    if !status.success() {
        bail!(
            "cargo test failed ({} passed, {} failed)\n{}",
            counts.0,
            counts.1,
            digest.text()
        );
    }
    Ok(counts)
}

/// Lines of a failing test's panic kept for the summary (its context can run to pages).
const DIGEST_LINES: usize = 6;
/// Characters of one digest line.
const DIGEST_WIDTH: usize = 400;

/// Each failing test's name and the start of its panic, read from libtest's output: the
/// summary repeats them at the end, where a log cut to its tail still shows every failure.
#[derive(Default)]
struct Digest {
    failures: Vec<(String, Vec<String>)>,
    /// Lines still to keep of the current panic.
    keep: usize,
}

impl Digest {
    fn read(&mut self, line: &str) {
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            self.failures.push((name.to_owned(), Vec::new()));
            self.keep = 0;
        } else if (line.starts_with("thread '") && line.contains("panicked at"))
            || line.starts_with("Error: ")
        {
            self.keep = DIGEST_LINES;
        } else if line.starts_with("failures:") || line.starts_with("stack backtrace:") {
            self.keep = 0;
            return;
        }
        if self.keep > 0
            && let Some((_, kept)) = self.failures.last_mut()
        {
            self.keep -= 1;
            kept.push(line.chars().take(DIGEST_WIDTH).collect());
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (name, kept) in &self.failures {
            out.push_str(&format!("  {name}\n"));
            for l in kept {
                out.push_str(&format!("      {l}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_keeps_each_failing_tests_name_and_panic() {
        let mut d = Digest::default();
        let out = "running 2 tests\n\
            ---- a::one stdout ----\n\
            setup noise\n\
            thread 'a::one' (7) panicked at src/a.rs:3:5:\n\
            off by 7.12%\n\
            stack backtrace:\n\
               0: frames\n\
            ---- a::two stdout ----\n\
            thread 'a::two' (8) panicked at src/a.rs:9:5:\n\
            no regression at hash_records\n\
            \n\
            failures:\n\
                a::one\n";
        for l in out.lines() {
            d.read(l);
        }
        assert_eq!(
            d.text(),
            "  a::one\n      thread 'a::one' (7) panicked at src/a.rs:3:5:\n      off by 7.12%\n\
             \x20 a::two\n      thread 'a::two' (8) panicked at src/a.rs:9:5:\n      no \
             regression at hash_records\n      \n"
        );
    }
}
