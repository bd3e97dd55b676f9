//! `cargo xtask vm-test`: the VM lab. Fetches Debian kernel packages with apt (a private
//! sources list and state dir under the cache, never the machine's own apt config), builds a
//! busybox initramfs holding the in-VM test binaries and the shared libraries they need, boots
//! each kernel under QEMU (TCG), and reads pass/fail from a marker on the serial console.
//! QEMU is killed on timeout, and a failing kernel shows its console tail.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cmd, initramfs::Initramfs};

/// A kernel of the lab: Debian's generic amd64 image from one release.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// Short name users pass to `--kernel`.
    pub name: &'static str,
    /// Debian suite that ships it.
    pub suite: &'static str,
}

/// Every kernel of the lab.
pub const KERNELS: [Kernel; 3] = [
    Kernel {
        name: "5.10",
        suite: "bullseye",
    },
    Kernel {
        name: "6.1",
        suite: "bookworm",
    },
    Kernel {
        name: "6.12",
        suite: "trixie",
    },
];

const PASS: &str = "WATTSON-VM-RESULT: PASS";
const FAIL: &str = "WATTSON-VM-RESULT: FAIL";
const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Options of `cargo xtask vm-test`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Kernel to boot: 5.10, 6.1, 6.12 or all.
    #[arg(long, default_value = "all")]
    pub kernel: String,
    /// Seconds one kernel may take to boot and run its tests before QEMU is killed.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

/// Outcome of one kernel.
#[derive(Debug)]
pub struct Outcome {
    /// Kernel short name.
    pub kernel: &'static str,
    /// Whether the in-VM tests passed.
    pub passed: bool,
    /// One-line explanation.
    pub summary: String,
    /// libtest counts read from the console: (passed, failed).
    pub tests: (u64, u64),
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let outcomes = run_lab(args)?;
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed).collect();
    if !failed.is_empty() {
        bail!(
            "VM lab failed on {}",
            failed
                .iter()
                .map(|o| o.kernel)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Boots the selected kernels one after another and reports each.
pub fn run_lab(args: &Args) -> anyhow::Result<Vec<Outcome>> {
    let kernels = select(&args.kernel)?;
    fetch_kernels(&kernels)?;
    let tests = build_test_binaries()?;
    let initrd = cache_dir().join("initramfs.cpio");
    build_initramfs(&tests, &initrd)?;
    let mut outcomes = Vec::new();
    for k in kernels {
        let outcome = boot(k, &initrd, Duration::from_secs(args.timeout))?;
        eprintln!(
            "vm-test {}: {} ({})",
            k.name,
            if outcome.passed { "PASS" } else { "FAIL" },
            outcome.summary
        );
        outcomes.push(outcome);
    }
    eprintln!("\nVM lab:");
    for o in &outcomes {
        let verdict = if o.passed { "pass" } else { "FAIL" };
        eprintln!("  {:<5} {verdict:<4} {}", o.kernel, o.summary);
    }
    Ok(outcomes)
}

fn select(name: &str) -> anyhow::Result<Vec<Kernel>> {
    if name == "all" {
        return Ok(KERNELS.to_vec());
    }
    match KERNELS.iter().find(|k| k.name == name) {
        Some(k) => Ok(vec![*k]),
        None => bail!(
            "--kernel {name}: unknown kernel; choose one of {} or all",
            KERNELS.map(|k| k.name).join(", ")
        ),
    }
}

/// Where kernels, apt state and the initramfs live; `WATTSON_VM_CACHE` overrides it.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("WATTSON_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| cmd::root().join("target/vm-lab"))
}

fn vmlinuz(k: Kernel) -> PathBuf {
    cache_dir().join("kernels").join(k.name).join("vmlinuz")
}

/// Kernels of the lab not yet in the cache, for `setup --check`.
pub fn missing_kernels() -> Vec<String> {
    KERNELS
        .iter()
        .filter(|k| !vmlinuz(**k).exists())
        .map(|k| format!("VM lab kernel {} (Debian {})", k.name, k.suite))
        .collect()
}

/// Downloads and extracts the kernels that are not cached yet.
pub fn fetch_kernels(kernels: &[Kernel]) -> anyhow::Result<()> {
    let todo: Vec<Kernel> = kernels
        .iter()
        .copied()
        .filter(|k| !vmlinuz(*k).exists())
        .collect();
    if todo.is_empty() {
        eprintln!("setup: VM lab kernels present in {}", cache_dir().display());
        return Ok(());
    }
    let apt = PrivateApt::new(&cache_dir().join("apt"))?;
    apt.update()?;
    for k in todo {
        eprintln!("setup: fetching Debian {} kernel ({})", k.suite, k.name);
        let package = apt.kernel_package(k.suite)?;
        let deb = apt.download(&package, k.suite)?;
        let unpacked = cache_dir().join("unpack").join(k.name);
        let _ = fs::remove_dir_all(&unpacked);
        fs::create_dir_all(&unpacked)?;
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        let boot = unpacked.join("boot");
        let image = fs::read_dir(&boot)
            .with_context(|| format!("{} has no boot/ directory", deb.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
            })
            .with_context(|| format!("no vmlinuz in {}", deb.display()))?;
        let dest = vmlinuz(k);
        fs::create_dir_all(dest.parent().expect("has parent"))?;
        fs::copy(&image, &dest)?;
        fs::write(dest.with_file_name("package"), &package)?;
        fs::remove_dir_all(&unpacked)?;
        eprintln!("setup: kernel {} is {package}", k.name);
    }
    Ok(())
}

/// apt with its own sources list, state and cache, so the machine's apt setup is untouched.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        for sub in [
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/sources.list.d",
        ] {
            fs::create_dir_all(dir.join(sub))?;
        }
        for sub in ["state/lists/partial", "cache/archives/partial", "debs"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let status = dir.join("status");
        if !status.exists() {
            fs::write(&status, "")?;
        }
        if !Path::new(KEYRING).exists() {
            bail!("{KEYRING} is missing: apt-get install debian-archive-keyring");
        }
        let sources: String = KERNELS
            .iter()
            .map(|k| format!("deb [signed-by={KEYRING}] {MIRROR} {} main\n", k.suite))
            .collect();
        fs::write(dir.join("etc/apt/sources.list"), sources)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn command(&self, program: &str) -> Command {
        let d = &self.dir;
        let mut c = Command::new(program);
        for (k, v) in [
            ("Dir::Etc", d.join("etc/apt")),
            ("Dir::Etc::SourceParts", d.join("etc/apt/sources.list.d")),
            ("Dir::Etc::Parts", d.join("etc/apt/apt.conf.d")),
            ("Dir::Etc::Preferences", d.join("etc/apt/preferences")),
            (
                "Dir::Etc::PreferencesParts",
                d.join("etc/apt/preferences.d"),
            ),
            ("Dir::State", d.join("state")),
            ("Dir::State::status", d.join("status")),
            ("Dir::Cache", d.join("cache")),
        ] {
            c.arg("-o").arg(format!("{k}={}", v.display()));
        }
        c.args(["-o", "Debug::NoLocking=1", "-o", "APT::Architecture=amd64"])
            // Files land in our own cache dir, which apt's `_apt` user cannot write.
            .args(["-o", "APT::Sandbox::User=root"])
            .args(["-o", "Acquire::Languages=none"])
            .args([
                "-o",
                "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
            ])
            .args([
                "-o",
                "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false",
            ])
            .args([
                "-o",
                "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false",
            ]);
        c
    }

    fn update(&self) -> anyhow::Result<()> {
        cmd::run(self.command("apt-get").args(["-q", "update"]))
            .context("fetching Debian package lists for the VM lab kernels failed")
    }

    /// The versioned image package `linux-image-amd64` depends on in `suite`.
    fn kernel_package(&self, suite: &str) -> anyhow::Result<String> {
        let text = cmd::output(
            self.command("apt-cache")
                .args(["show", &format!("linux-image-amd64/{suite}")]),
        )?;
        text.lines()
            .find_map(|l| l.strip_prefix("Depends: "))
            .and_then(|d| d.split([',', ' ']).find(|p| p.starts_with("linux-image-")))
            .map(str::to_owned)
            .with_context(|| format!("linux-image-amd64/{suite} names no image package"))
    }

    fn download(&self, package: &str, suite: &str) -> anyhow::Result<PathBuf> {
        let debs = self.dir.join("debs");
        let existing = |debs: &Path| -> Option<PathBuf> {
            fs::read_dir(debs)
                .ok()?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
                })
        };
        if let Some(deb) = existing(&debs) {
            return Ok(deb);
        }
        cmd::run(
            self.command("apt-get")
                .args(["-q", "download", &format!("{package}/{suite}")])
                .current_dir(&debs),
        )?;
        existing(&debs).with_context(|| {
            format!(
                "apt-get download left no {package} .deb in {}",
                debs.display()
            )
        })
    }
}

/// Builds the in-VM test binaries and returns their paths.
fn build_test_binaries() -> anyhow::Result<Vec<PathBuf>> {
    eprintln!("vm-test: building the in-VM tests (agent/tests/kernel.rs)");
    let out = cmd::output(
        cmd::cargo()
            .args([
                "test",
                "-p",
                "wattson-agent",
                "--test",
                "kernel",
                "--no-run",
            ])
            .args(["--message-format=json-render-diagnostics"]),
    )?;
    let mut bins = Vec::new();
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["profile"]["test"] == true
            && let Some(exe) = msg["executable"].as_str()
        {
            bins.push(PathBuf::from(exe));
        }
    }
    if bins.is_empty() {
        bail!("cargo built no test executable for agent/tests/kernel.rs");
    }
    Ok(bins)
}

/// The initramfs: busybox, an /init that runs every test binary and prints the marker.
fn build_initramfs(tests: &[PathBuf], dest: &Path) -> anyhow::Result<()> {
    let mut fs = Initramfs::default();
    for dir in ["proc", "sys", "dev", "tmp", "run"] {
        fs.add_dir(dir);
    }
    fs.add_file("bin/busybox", Path::new("/bin/busybox"), 0o755)
        .context("busybox-static is needed for the VM lab: apt-get install busybox-static")?;
    for t in tests {
        let name = t
            .file_name()
            .expect("test binaries have names")
            .to_string_lossy();
        // Strip cargo's hash so the console shows `kernel`.
        let short = name
            .rsplit_once('-')
            .map_or(name.as_ref(), |(a, _)| a)
            .to_owned();
        fs.add_file(&format!("tests/{short}"), t, 0o755)?;
        fs.add_libraries_of(t)?;
    }
    fs.add_bytes("init", INIT.as_bytes(), 0o755);
    fs.write(dest)?;
    eprintln!(
        "vm-test: initramfs {} ({} entries)",
        dest.display(),
        fs.len()
    );
    Ok(())
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/lib64:/usr/lib/x86_64-linux-gnu
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
echo "WATTSON-VM: kernel $(uname -r), $(nproc) cpus"
status=0
for t in /tests/*; do
    echo "WATTSON-VM: running $t"
    RUST_BACKTRACE=1 "$t" --test-threads=1 --nocapture || status=1
done
if [ "$status" = 0 ]; then echo "WATTSON-VM-RESULT: PASS"; else echo "WATTSON-VM-RESULT: FAIL"; fi
poweroff -f
"#;

/// Boots one kernel and waits for the marker, a panic, QEMU's exit or the timeout.
fn boot(k: Kernel, initrd: &Path, timeout: Duration) -> anyhow::Result<Outcome> {
    let log_path = cache_dir().join(format!("console-{}.log", k.name));
    eprintln!(
        "vm-test {}: booting under QEMU/TCG (console: {})",
        k.name,
        log_path.display()
    );
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "1536"])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(vmlinuz(k))
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 oops=panic loglevel=4 rdinit=/init",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("could not start qemu-system-x86_64: apt-get install qemu-system-x86")?;
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);

    let started = Instant::now();
    let mut console = Vec::new();
    let mut verdict: Option<(bool, String)> = None;
    while verdict.is_none() {
        let left = timeout.saturating_sub(started.elapsed());
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                let line = line.replace('\r', "");
                if line.contains(PASS) {
                    verdict = Some((true, "in-VM tests passed".into()));
                } else if line.contains(FAIL) {
                    verdict = Some((false, "in-VM tests failed".into()));
                } else if line.contains("Kernel panic") {
                    verdict = Some((false, format!("kernel panic: {}", line.trim())));
                }
                console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) if started.elapsed() >= timeout => {
                verdict = Some((
                    false,
                    format!("timed out after {}s; QEMU killed", timeout.as_secs()),
                ));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                verdict = Some((false, "QEMU exited before the tests reported".into()));
            }
        }
    }
    let (passed, mut summary) = verdict.expect("loop ends with a verdict");
    // After a marker, give poweroff a moment; after a timeout or panic, kill at once.
    let grace = if passed || summary.starts_with("in-VM") {
        5
    } else {
        0
    };
    let deadline = Instant::now() + Duration::from_secs(grace);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            console.push(line.replace('\r', ""));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    fs::write(&log_path, console.join("\n"))?;

    let tests = libtest_counts(&console);
    summary = format!(
        "{summary}; {} passed, {} failed; {:.0}s",
        tests.0,
        tests.1,
        started.elapsed().as_secs_f64()
    );
    for line in console
        .iter()
        .filter(|l| l.starts_with("WATTSON-VM: kernel"))
    {
        summary.push_str(&format!("; {}", line.trim_start_matches("WATTSON-VM: ")));
    }
    if !passed {
        eprintln!("---- console tail of {} ----", k.name);
        for line in console
            .iter()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            eprintln!("{line}");
        }
        eprintln!("---- end of console ({}) ----", log_path.display());
    }
    Ok(Outcome {
        kernel: k.name,
        passed,
        summary,
        tests,
    })
}

/// Sums libtest's `test result:` lines: (passed, failed).
pub fn libtest_counts(lines: &[String]) -> (u64, u64) {
    let mut total = (0, 0);
    for line in lines {
        let Some(rest) = line.split("test result: ").nth(1) else {
            continue;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let n: u64 = n
                .trim_start_matches("ok.")
                .trim_start_matches("FAILED.")
                .trim()
                .parse()
                .unwrap_or(0);
            match what {
                "passed" => total.0 += n,
                "failed" => total.1 += n,
                _ => {}
            }
        }
    }
    total
}
