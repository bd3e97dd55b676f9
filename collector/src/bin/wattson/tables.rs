//! The commands that ask the collector one question and print its answer as a table (or
//! `--json`): `top`, `series`, `power` and `builds`. `diff` asks its windows' rates through
//! [`query_top`] too.

use anyhow::Context as _;
use clap::ValueEnum;
use wattson_collector::report;
use wattson_proto::v1::{
    BuildsRequest, PowerRequest, RankBy, SeriesRequest, TimeWindow, TopRequest, TopResponse,
};

use crate::args::WindowArgs;
use crate::connect::{Client, status};
use crate::output::Output;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// Attributed energy (watts).
    Energy,
    /// CPU samples.
    Cpu,
}

#[derive(clap::Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    window: WindowArgs,
    /// Only this service.
    #[arg(long)]
    service: Option<String>,
    /// Rank by energy or CPU.
    #[arg(long, value_enum, default_value = "energy")]
    by: By,
    /// Rank by inclusive (function and its callees) instead of self.
    #[arg(long)]
    inclusive: bool,
    /// Rows to show.
    #[arg(long, default_value_t = 20)]
    limit: u32,
}

#[derive(clap::Args, Debug)]
pub struct SeriesArgs {
    #[command(flatten)]
    window: WindowArgs,
    /// Service of the function.
    #[arg(long)]
    service: String,
    /// Function name (as `top` prints it).
    #[arg(long)]
    function: String,
    /// Bucket length (e.g. 5m, 1h); picked from the window when omitted.
    #[arg(long)]
    step: Option<humantime::Duration>,
}

#[derive(clap::Args, Debug)]
pub struct PowerArgs {
    #[command(flatten)]
    window: WindowArgs,
}

#[derive(clap::Args, Debug)]
pub struct BuildsArgs {
    #[command(flatten)]
    window: WindowArgs,
    /// Only this service.
    #[arg(long)]
    service: Option<String>,
}

/// Functions of `service` (all when `None`) in `window`, the first `limit` by `rank`.
pub async fn query_top(
    client: &mut Client,
    window: TimeWindow,
    service: Option<String>,
    rank: RankBy,
    limit: u32,
) -> anyhow::Result<TopResponse> {
    Ok(client
        .top(TopRequest {
            window: Some(window),
            service: service.unwrap_or_default(),
            rank: rank as i32,
            limit,
        })
        .await
        .map_err(status)?
        .into_inner())
}

pub async fn top(client: &mut Client, a: TopArgs, out: &Output) -> anyhow::Result<()> {
    let rank = match (a.by, a.inclusive) {
        (By::Energy, false) => RankBy::EnergySelf,
        (By::Energy, true) => RankBy::EnergyInclusive,
        (By::Cpu, false) => RankBy::SamplesSelf,
        (By::Cpu, true) => RankBy::SamplesInclusive,
    };
    let r = query_top(client, a.window.window()?, a.service, rank, a.limit).await?;
    out.emit(report::top_json(&r), |w| {
        report::top_table(&r, a.inclusive, w)
    })
}

pub async fn series(client: &mut Client, a: SeriesArgs, out: &Output) -> anyhow::Result<()> {
    let step_seconds = match a.step {
        Some(s) => u32::try_from(s.as_secs()).context("--step too large")?,
        None => 0,
    };
    let r = client
        .series(SeriesRequest {
            window: Some(a.window.window()?),
            service: a.service,
            function: a.function,
            step_seconds,
        })
        .await
        .map_err(status)?
        .into_inner();
    out.emit(report::series_json(&r), |w| report::series_table(&r, w))
}

pub async fn power(client: &mut Client, a: PowerArgs, out: &Output) -> anyhow::Result<()> {
    let r = client
        .power(PowerRequest {
            window: Some(a.window.window()?),
        })
        .await
        .map_err(status)?
        .into_inner();
    out.emit(report::power_json(&r), |w| report::power_table(&r, w))
}

pub async fn builds(client: &mut Client, a: BuildsArgs, out: &Output) -> anyhow::Result<()> {
    let r = client
        .builds(BuildsRequest {
            window: Some(a.window.window()?),
            service: a.service.unwrap_or_default(),
        })
        .await
        .map_err(status)?
        .into_inner();
    out.emit(report::builds_json(&r), |w| report::builds_table(&r, w))
}
