//! `diff`: a baseline window against the window (rates from `top`), or two builds of a service
//! over the window (each function's share of its build), as a table of the largest changes
//! and, with `--output`, a differential flame graph.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use wattson_collector::flame::{self, Weight};
use wattson_collector::report;
use wattson_proto::v1::{RankBy, StacksResponse};

use crate::args::{self, WeightArg, WindowArgs};
use crate::connect::Client;
use crate::output::{Output, write_file};
use crate::stacks::fetch;
use crate::tables::query_top;

/// Functions `diff` compares per window (the collector's largest `top`).
const DIFF_FUNCTIONS: u32 = 10_000;

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// Baseline window as FROM..TO (same time syntax as --from).
    #[arg(long, required_unless_present = "build_a", conflicts_with = "build_a")]
    baseline: Option<String>,
    /// Build id of the old version (`wattson builds` lists them).
    #[arg(long, requires = "build_b")]
    build_a: Option<String>,
    /// Build id of the new version.
    #[arg(long, requires = "build_a")]
    build_b: Option<String>,
    #[command(flatten)]
    window: WindowArgs,
    /// Only this service.
    #[arg(long)]
    service: Option<String>,
    /// What to compare.
    #[arg(long, value_enum, default_value = "energy")]
    weight: WeightArg,
    /// Rows to show.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Also write a differential flame graph here.
    #[arg(long)]
    output: Option<PathBuf>,
}

pub async fn diff(client: &mut Client, a: DiffArgs, out: &Output) -> anyhow::Result<()> {
    let d = match (&a.baseline, &a.build_a, &a.build_b) {
        (None, Some(old), Some(new)) => by_builds(client, &a, old, new).await?,
        _ => by_windows(client, &a).await?,
    };
    out.emit(report::diff_json(&d), |w| report::diff_table(&d, w))
}

/// Build `old` against build `new` over the window, by each function's share of its build.
async fn by_builds(
    client: &mut Client,
    a: &DiffArgs,
    old: &str,
    new: &str,
) -> anyhow::Result<report::Diff> {
    let weight = Weight::from(a.weight);
    let w = a.window.window()?;
    let before = fetch(client, w, &a.service, old).await?;
    let after = fetch(client, w, &a.service, new).await?;
    let d = report::build_diff(&before.stacks, &after.stacks, weight, a.limit);
    if let Some(path) = &a.output {
        let title = format!("wattson diff {old} -> {new} (red grew, blue shrank)");
        write_flame(&before, &after, &a.service, weight, &title, path)?;
    }
    Ok(d)
}

/// The `--baseline` window against the window, by rate.
async fn by_windows(client: &mut Client, a: &DiffArgs) -> anyhow::Result<report::Diff> {
    let weight = Weight::from(a.weight);
    let baseline = a.baseline.as_deref();
    let baseline = baseline.context("give --baseline FROM..TO, or --build-a and --build-b")?;
    let (from, to) = baseline
        .split_once("..")
        .context("--baseline must be FROM..TO, e.g. -2h..-1h")?;
    let base_w = args::time_window(from, to, "--baseline start", "--baseline end")?;
    let after_w = a.window.window()?;
    // Rates come from `top` so both commands give a window the same watts.
    let rank = match a.weight {
        WeightArg::Energy => RankBy::EnergySelf,
        WeightArg::Samples => RankBy::SamplesSelf,
    };
    let before = query_top(client, base_w, a.service.clone(), rank, DIFF_FUNCTIONS).await?;
    let after = query_top(client, after_w, a.service.clone(), rank, DIFF_FUNCTIONS).await?;
    let d = report::diff(&before, &after, weight, a.limit);
    if let Some(path) = &a.output {
        let before = fetch(client, base_w, &a.service, "").await?;
        let after = fetch(client, after_w, &a.service, "").await?;
        let title = "wattson diff (red grew, blue shrank)";
        write_flame(&before, &after, &a.service, weight, title, path)?;
    }
    Ok(d)
}

/// Writes the differential flame graph of `diff --output` (both sides normalized).
fn write_flame(
    before: &StacksResponse,
    after: &StacksResponse,
    service: &Option<String>,
    weight: Weight,
    title: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let prefix = service.is_none();
    let svg = flame::diff_svg(
        &flame::folded(&before.stacks, weight, prefix),
        &flame::folded(&after.stacks, weight, prefix),
        title,
        weight,
        flame::any_estimated(&before.stacks) || flame::any_estimated(&after.stacks),
    )?;
    write_file(path, svg)
}
