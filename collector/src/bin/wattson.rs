//! `wattson`: ask a collector where the fleet's power goes. Tables for people (fitted to the
//! terminal: long function names lose their middle), `--json` for scripts (names whole);
//! flame graphs as SVG files. Every energy figure built from a model says "est".
//!
//! This file parses the arguments, connects and hands each command to its module.
// Beside this file, not in src/bin/ itself, where cargo would take them for other binaries.
#[path = "wattson/args.rs"]
mod args;
#[path = "wattson/connect.rs"]
mod connect;
#[path = "wattson/detection.rs"]
mod detection;
#[path = "wattson/diff.rs"]
mod diff;
#[path = "wattson/output.rs"]
mod output;
#[path = "wattson/stacks.rs"]
mod stacks;
#[path = "wattson/tables.rs"]
mod tables;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Query a Wattson collector: power by function and service, over time, as flame graphs.
#[derive(Parser, Debug)]
#[command(name = "wattson", version)]
struct Cli {
    /// Collector gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "WATTSON_COLLECTOR",
        default_value = "http://127.0.0.1:7070"
    )]
    collector: String,
    /// CA (PEM) the collector's certificate must chain to, for mutual TLS (with --tls-cert and
    /// --tls-key; `http://` then means `https://`).
    #[arg(long, global = true, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, global = true, requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long, global = true, requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
    /// Bearer token, when the collector runs with --token.
    #[arg(long, global = true, env = "WATTSON_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Widest a table may be, in characters; longer names lose their middle ("…"). 0 never
    /// shortens. Default: $COLUMNS, else the terminal's width, else 100.
    #[arg(long, global = true, value_name = "N")]
    width: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Functions ranked by energy or CPU.
    Top(tables::TopArgs),
    /// One function's power and CPU over time.
    Series(tables::SeriesArgs),
    /// Merged profile of the window: gzipped pprof (samples and microjoules) or folded stacks.
    Profile(stacks::ProfileArgs),
    /// SVG flame graph of the window.
    Flame(stacks::FlameArgs),
    /// Compare a baseline window with the window (`--baseline`), or two builds of a service
    /// over the window (`--build-a OLD --build-b NEW`, by each function's share of its
    /// build): table of changes and a differential flame graph.
    Diff(diff::DiffArgs),
    /// Fleet power summary per service.
    Power(tables::PowerArgs),
    /// Builds (versions) each service ran in the window, for `diff --build-a/--build-b`.
    Builds(tables::BuildsArgs),
    /// Power regressions the collector detected (FBDetect-style), each at the function that
    /// changed, with the change most likely behind it.
    Regressions(detection::RegressionsArgs),
    /// Change events (deploys, config pushes, experiments, commits): record one, or list them.
    Changes(detection::ChangesArgs),
}

fn main() -> std::process::ExitCode {
    wattson_proto::cli::exit(try_main())
}

fn try_main() -> anyhow::Result<()> {
    wattson_proto::cli::init_logging("warn");
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = output::Output::new(cli.json, cli.width);
    let tls = connect::Tls::from_flags(cli.tls_ca, cli.tls_cert, cli.tls_key)?;
    let (mut client, mut detect) =
        connect::client(&cli.collector, tls.as_ref(), cli.token.as_deref()).await?;
    let c = &mut client;
    match cli.command {
        Command::Top(a) => tables::top(c, a, &out).await,
        Command::Series(a) => tables::series(c, a, &out).await,
        Command::Profile(a) => stacks::profile(c, a).await,
        Command::Flame(a) => stacks::flame(c, a).await,
        Command::Diff(a) => diff::diff(c, a, &out).await,
        Command::Power(a) => tables::power(c, a, &out).await,
        Command::Builds(a) => tables::builds(c, a, &out).await,
        Command::Regressions(a) => detection::regressions(&mut detect, a, &out).await,
        Command::Changes(a) => detection::changes(&mut detect, a, &out).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
