//! The commands that write the window's merged stacks to a file: `profile` (pprof or folded)
//! and `flame` (SVG), and [`fetch`], which `diff` uses for its flame graph too.

use std::path::PathBuf;

use anyhow::bail;
use clap::ValueEnum;
use wattson_collector::flame::{self, Weight};
use wattson_collector::report;
use wattson_proto::v1::{StacksRequest, StacksResponse, TimeWindow};

use crate::args::{WeightArg, WindowArgs};
use crate::connect::{Client, status};
use crate::output::write_file;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileFormat {
    /// Gzipped pprof profile.proto.
    Pprof,
    /// Folded stacks.
    Folded,
}

#[derive(clap::Args, Debug)]
pub struct ProfileArgs {
    #[command(flatten)]
    window: WindowArgs,
    /// Only this service (otherwise every stack is rooted at its service).
    #[arg(long)]
    service: Option<String>,
    /// pprof (for `go tool pprof`, Pyroscope, speedscope) or folded (`frame;frame count`).
    #[arg(long, value_enum, default_value = "pprof")]
    format: ProfileFormat,
    /// What folded counts are (pprof carries both).
    #[arg(long, value_enum, default_value = "samples")]
    weight: WeightArg,
    /// Output file ("-" for stdout, folded only).
    #[arg(long, default_value = "wattson.pb.gz")]
    output: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct FlameArgs {
    #[command(flatten)]
    window: WindowArgs,
    /// Only this service (otherwise every stack is rooted at its service).
    #[arg(long)]
    service: Option<String>,
    /// What widths count.
    #[arg(long, value_enum, default_value = "energy")]
    weight: WeightArg,
    /// Output SVG file.
    #[arg(long, default_value = "wattson-flame.svg")]
    output: PathBuf,
}

/// Merged stacks of `service` (all when `None`) in `window`; of one build when `build` is
/// not empty.
pub async fn fetch(
    client: &mut Client,
    window: TimeWindow,
    service: &Option<String>,
    build: &str,
) -> anyhow::Result<StacksResponse> {
    Ok(client
        .stacks(StacksRequest {
            window: Some(window),
            service: service.clone().unwrap_or_default(),
            build_id: build.to_string(),
        })
        .await
        .map_err(status)?
        .into_inner())
}

pub async fn profile(client: &mut Client, a: ProfileArgs) -> anyhow::Result<()> {
    let r = fetch(client, a.window.window()?, &a.service, "").await?;
    if r.stacks.is_empty() {
        bail!("no stacks in the window");
    }
    let to_stdout = a.output.as_os_str() == "-";
    let data = match a.format {
        ProfileFormat::Folded => {
            flame::folded(&r.stacks, a.weight.into(), a.service.is_none()).into_bytes()
        }
        ProfileFormat::Pprof => {
            if to_stdout {
                bail!("pprof is binary: give --output FILE");
            }
            let w = r.window.unwrap_or_default();
            wattson_collector::pprof::encode(
                &r.stacks,
                w.from_unix_seconds,
                w.to_unix_seconds,
                a.service.is_none(),
            )?
        }
    };
    if to_stdout {
        use std::io::Write as _;
        std::io::stdout().write_all(&data)?;
        Ok(())
    } else {
        write_file(&a.output, data)
    }
}

pub async fn flame(client: &mut Client, a: FlameArgs) -> anyhow::Result<()> {
    let rows = fetch(client, a.window.window()?, &a.service, "")
        .await?
        .stacks;
    let weight = Weight::from(a.weight);
    let title = format!(
        "wattson {} ({})",
        a.service.as_deref().unwrap_or("fleet"),
        report::weight_label(weight)
    );
    let svg = flame::svg(
        &flame::folded(&rows, weight, a.service.is_none()),
        &title,
        weight,
        flame::any_estimated(&rows),
    )?;
    write_file(&a.output, svg)
}
