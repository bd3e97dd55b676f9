//! `cargo xtask bench`: measurements taken side by side in one run, printed as one table.
//! Ratios, not absolute times, are the figures to read: this machine is shared and noisy.
//! Each area (agent overhead, ingest, storage and queries, detection, the skills' patches)
//! lives in its own submodule and appends rows; this module only selects areas and prints.

use std::fmt::Write as _;

mod agent;
mod detect;
mod detect_speed;
mod discard;
mod ingest;
mod skills;
mod store;

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only run the area of this name (`agent`, `ingest`, `store`, `detect`, `detect-speed`,
    /// `skills`), or the areas whose name contains it.
    #[arg(long)]
    pub only: Option<String>,
    #[command(flatten)]
    pub detect: detect::Options,
}

/// One line of the result table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Area, e.g. `agent`.
    pub area: &'static str,
    /// What was measured, e.g. `throughput, agent 99 Hz vs none`.
    pub metric: String,
    /// Measured value with its unit.
    pub value: String,
    /// The goal, when the issue sets one.
    pub goal: String,
    /// Whether the goal was met (None when there is no goal).
    pub met: Option<bool>,
}

/// An area: its name, its run, and whether it measures this process's own (Rust) code and
/// so needs an optimized xtask (`skills` measures workloads it builds itself).
type Area = (&'static str, fn(&mut Vec<Row>) -> anyhow::Result<()>, bool);

/// Registered areas, in the order they run.
const AREAS: &[Area] = &[
    ("agent", agent::run, true),
    ("ingest", ingest::run, true),
    ("store", store::run, true),
    ("detect", detect::run, true),
    ("detect-speed", detect_speed::run, true),
    ("skills", skills::run, false),
];

/// The area `--only` names exactly, or else every area whose name contains it (`detect`
/// alone, not `detect-speed` too).
fn selected(args: &Args) -> impl Iterator<Item = &'static Area> + '_ {
    let only = args.only.as_deref();
    let exact = only.is_some_and(|o| AREAS.iter().any(|(name, _, _)| *name == o));
    AREAS.iter().filter(move |(name, _, _)| {
        only.is_none_or(|o| if exact { *name == o } else { name.contains(o) })
    })
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if cfg!(debug_assertions) && selected(args).any(|(_, _, optimized)| *optimized) {
        return rerun_optimized();
    }
    detect::configure(args.detect.clone());
    let mut rows = Vec::new();
    let mut ran = 0;
    for (name, area, _) in selected(args) {
        eprintln!("bench: {name} ...");
        area(&mut rows)?;
        ran += 1;
    }
    if ran == 0 {
        anyhow::bail!("no benchmark area matched (known: {:?})", names());
    }
    print!("{}", table(&rows));
    Ok(())
}

/// `cargo xtask` builds in the dev profile, where figures would measure -O0 code (SQLite's C
/// included): run the same bench from an optimized xtask instead.
fn rerun_optimized() -> anyhow::Result<()> {
    eprintln!("bench: rebuilding xtask with --release so figures measure optimized code ...");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["run", "--release", "--quiet", "--package", "xtask", "--"]);
    // The same arguments, whatever the areas' options are.
    cmd.args(std::env::args_os().skip(1));
    let status = cmd.status()?;
    anyhow::ensure!(status.success(), "optimized bench run failed: {status}");
    Ok(())
}

fn names() -> Vec<&'static str> {
    AREAS.iter().map(|(n, _, _)| *n).collect()
}

fn table(rows: &[Row]) -> String {
    let w_metric = rows
        .iter()
        .map(|r| r.metric.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let w_value = rows.iter().map(|r| r.value.len()).max().unwrap_or(5).max(5);
    let w_goal = rows.iter().map(|r| r.goal.len()).max().unwrap_or(4).max(4);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<w_metric$} {:>w_value$} {:<w_goal$} met",
        "area", "metric", "value", "goal"
    );
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        let _ = writeln!(
            out,
            "{:<8} {:<w_metric$} {:>w_value$} {:<w_goal$} {met}",
            r.area, r.metric, r.value, r.goal
        );
    }
    out
}
