//! Builds the BPF sampler (`agent-ebpf`) for `bpfel-unknown-none` with nightly and bpf-linker,
//! so the agent binary embeds the object it loads. Missing prerequisites get a message that
//! names them and the command that installs them.
use std::process::Command;

fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output();
    match sysroot {
        Ok(out) if out.status.success() => {
            let root = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let src = std::path::Path::new(&root).join("lib/rustlib/src/rust/library/core");
            if !src.exists() {
                missing.push("rust-src for the nightly toolchain".to_owned());
            }
        }
        _ => missing.push("the nightly toolchain (rustup)".to_owned()),
    }
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !matches!(linker, Ok(out) if out.status.success()) {
        missing.push("bpf-linker".to_owned());
    }
    missing
}

fn main() -> anyhow::Result<()> {
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        anyhow::bail!(
            "cannot build the BPF sampler: missing {}. Run `cargo xtask setup` to install them.",
            missing.join(", ")
        );
    }
    let package = aya_build::Package {
        name: "wattson-agent-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
