//! `cargo xtask setup`: installs every prerequisite of the build, the tests and the VM lab,
//! idempotently. Each step prints what it found and skips what is present; anything that
//! cannot be installed stops setup with a message naming it and the fix.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cmd, vm};

/// Options of `cargo xtask setup`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only report what is missing; install nothing.
    #[arg(long)]
    pub check: bool,
    /// Do not download the VM lab's kernels.
    #[arg(long)]
    pub skip_kernels: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure(args.check, !args.skip_kernels)
}

/// Checks every prerequisite and installs what is missing (or only reports it with `check`).
pub fn ensure(check: bool, kernels: bool) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    let llvm = nightly_llvm_major(check, &mut missing)?;
    if let Some(llvm) = llvm {
        apt_packages(llvm, check, &mut missing)?;
        rust_src(check, &mut missing)?;
        bpf_linker(llvm, check, &mut missing)?;
        cargo_fuzz(check, &mut missing)?;
    }
    if kernels {
        if check {
            missing.extend(vm::missing_kernels());
        } else {
            vm::fetch_kernels(&vm::KERNELS)?;
        }
    }
    if !missing.is_empty() {
        bail!(
            "missing prerequisites:\n  - {}\nrun `cargo xtask setup` to install them",
            missing.join("\n  - ")
        );
    }
    eprintln!("setup: everything is in place");
    Ok(())
}

/// The LLVM major version of nightly rustc; bpf-linker must be built against the same one.
fn nightly_llvm_major(check: bool, missing: &mut Vec<String>) -> anyhow::Result<Option<u32>> {
    let version = || cmd::output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]));
    let text = match version() {
        Ok(text) => text,
        Err(_) if check => {
            missing.push("the nightly Rust toolchain (rustup toolchain install nightly)".into());
            return Ok(None);
        }
        Err(_) => {
            eprintln!("setup: nightly toolchain missing; installing");
            cmd::run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]))
            .context(
                "the BPF sampler needs a nightly toolchain; install it with \
                 `rustup toolchain install nightly --profile minimal`",
            )?;
            version()?
        }
    };
    let major = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
        .with_context(|| format!("no LLVM version in `rustc +nightly -vV`:\n{text}"))?;
    eprintln!("setup: nightly rustc uses LLVM {major}");
    Ok(Some(major))
}

/// Debian packages, by what needs them.
fn packages(llvm: u32) -> Vec<String> {
    let mut p: Vec<String> = [
        // bpf-linker links against LLVM.
        format!("llvm-{llvm}-dev"),
        format!("libpolly-{llvm}-dev"),
        "libzstd-dev".into(),
        "zlib1g-dev".into(),
        // The VM lab.
        "qemu-system-x86".into(),
        "busybox-static".into(),
        // The ClickHouse storage backend's tests start a real server.
        "clickhouse-server".into(),
        "clickhouse-client".into(),
        // Accuracy tests and benchmarks compare against perf record.
        "linux-perf".into(),
        // Workloads for the accuracy tests.
        "gzip".into(),
        "xz-utils".into(),
        // The record test profiles a real interpreter started from a shell.
        "python3".into(),
        // The flame graph test screenshots the SVG in headless Chromium to prove it renders.
        "chromium".into(),
        // Skills check their patches with `git apply --check`; the skills e2e test builds its
        // C workload with cc.
        "git".into(),
        "gcc".into(),
    ]
    .into();
    p.sort();
    p
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt_packages(llvm: u32, check: bool, missing: &mut Vec<String>) -> anyhow::Result<()> {
    let wanted = packages(llvm);
    let absent: Vec<&String> = wanted.iter().filter(|p| !is_installed(p)).collect();
    if absent.is_empty() {
        eprintln!("setup: apt packages present ({})", wanted.len());
        return Ok(());
    }
    let list: Vec<&str> = absent.iter().map(|s| s.as_str()).collect();
    if check {
        missing.push(format!("apt packages: {}", list.join(" ")));
        return Ok(());
    }
    eprintln!("setup: installing apt packages: {}", list.join(" "));
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        c
    };
    cmd::run(&mut apt(&["update", "-q"]))
        .context("`apt-get update` failed: check that Debian's package mirrors are reachable")?;
    let mut install = apt(&["install", "-y", "-q", "--no-install-recommends"]);
    install.args(&list);
    cmd::run(&mut install).with_context(|| {
        format!(
            "could not install {}: run `apt-get install {}` as root and read its error",
            list.join(" "),
            list.join(" ")
        )
    })
}

fn rust_src(check: bool, missing: &mut Vec<String>) -> anyhow::Result<()> {
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if installed.lines().any(|l| l.trim().starts_with("rust-src")) {
        eprintln!("setup: rust-src for nightly present");
        return Ok(());
    }
    if check {
        missing.push(
            "rust-src for nightly (rustup component add rust-src --toolchain nightly)".into(),
        );
        return Ok(());
    }
    eprintln!("setup: installing rust-src for nightly (BPF builds need core's source)");
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// `cargo fuzz` (libFuzzer on nightly) for the fuzz step of `cargo xtask test`.
fn cargo_fuzz(check: bool, missing: &mut Vec<String>) -> anyhow::Result<()> {
    if cargo_home().join("bin/cargo-fuzz").exists() {
        eprintln!("setup: cargo-fuzz present");
        return Ok(());
    }
    if check {
        missing.push("cargo-fuzz (cargo install cargo-fuzz --locked)".into());
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz");
    cmd::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz failed (cargo install cargo-fuzz --locked)")
}

/// The `llvm-N` feature bpf-linker was installed with, from cargo's install records.
fn installed_bpf_linker_llvm() -> Option<String> {
    let home = cargo_home();
    if !home.join("bin/bpf-linker").exists() {
        return None;
    }
    let text = std::fs::read_to_string(home.join(".crates2.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let installs = json.get("installs")?.as_object()?;
    let (_, info) = installs
        .iter()
        .find(|(k, _)| k.starts_with("bpf-linker "))?;
    info.get("features")?
        .as_array()?
        .iter()
        .filter_map(|f| f.as_str())
        .find(|f| f.starts_with("llvm-"))
        .map(str::to_owned)
}

fn bpf_linker(llvm: u32, check: bool, missing: &mut Vec<String>) -> anyhow::Result<()> {
    let feature = format!("llvm-{llvm}");
    match installed_bpf_linker_llvm() {
        Some(f) if f == feature => {
            eprintln!("setup: bpf-linker ({feature}) present");
            return Ok(());
        }
        Some(f) => eprintln!("setup: bpf-linker was built with {f}, nightly needs {feature}"),
        None => eprintln!("setup: bpf-linker missing"),
    }
    if check {
        missing.push(format!("bpf-linker built with {feature}"));
        return Ok(());
    }
    let prefix = format!("/usr/lib/llvm-{llvm}");
    if !Path::new(&prefix).join("bin/llvm-config").exists() {
        bail!(
            "{prefix}/bin/llvm-config is missing: install llvm-{llvm}-dev (apt-get install llvm-{llvm}-dev)"
        );
    }
    eprintln!("setup: building bpf-linker against {prefix} (a few minutes)");
    cmd::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", "^0.13", "--force"])
            .args(["--no-default-features", "--features", &feature])
            .env("LLVM_PREFIX", &prefix)
            .env(format!("LLVM_SYS_{llvm}1_PREFIX"), &prefix),
    )
    .with_context(|| {
        format!("building bpf-linker failed; it needs llvm-{llvm}-dev, libpolly-{llvm}-dev, libzstd-dev and zlib1g-dev")
    })
}
