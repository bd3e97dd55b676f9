//! `wattson`: ask a collector where the fleet's power goes. Tables for people (fitted to the
//! terminal: long function names lose their middle), `--json` for scripts (names whole);
//! flame graphs as SVG files. Every energy figure built from a model says "est".
// Beside this file, not in src/bin/ itself, where cargo would take it for another binary.
#[path = "wattson/connect.rs"]
mod connect;

use std::io::IsTerminal as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;
use wattson_collector::flame::{self, Weight};
use wattson_collector::report;
use wattson_proto::v1::query_service_client::QueryServiceClient;
use wattson_proto::v1::{
    BuildsRequest, PowerRequest, RankBy, SeriesRequest, StacksRequest, StacksResponse, TimeWindow,
    TopRequest, TopResponse,
};

/// Largest answer accepted from the collector.
const MAX_RESPONSE_BYTES: usize = 512 << 20;
/// Functions `diff` compares per window (the collector's largest `top`).
const DIFF_FUNCTIONS: u32 = 10_000;
/// Table width when neither --width, $COLUMNS nor a terminal says otherwise.
const DEFAULT_WIDTH: usize = 100;

/// Query a Wattson collector: power by function and service, over time, as flame graphs.
#[derive(Parser, Debug)]
#[command(name = "wattson", version, about)]
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

/// A time window. Times are `now`, `-2h` / `2h` (ago), Unix seconds, or RFC 3339.
#[derive(clap::Args, Debug, Clone)]
struct WindowArgs {
    /// Start of the window.
    #[arg(long, default_value = "-1h", allow_hyphen_values = true)]
    from: String,
    /// End of the window.
    #[arg(long, default_value = "now", allow_hyphen_values = true)]
    to: String,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    /// Attributed energy (watts).
    Energy,
    /// CPU samples.
    Cpu,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum WeightArg {
    /// Widths by samples (CPU time).
    Samples,
    /// Widths by attributed microjoules.
    Energy,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum ProfileFormat {
    /// Gzipped pprof profile.proto.
    Pprof,
    /// Folded stacks.
    Folded,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Functions ranked by energy or CPU.
    Top {
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
    },
    /// One function's power and CPU over time.
    Series {
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
    },
    /// Merged profile of the window: gzipped pprof (samples and microjoules) or folded stacks.
    Profile {
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
    },
    /// SVG flame graph of the window.
    Flame {
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
    },
    /// Compare a baseline window with the window (`--baseline`), or two builds of a service
    /// over the window (`--build-a OLD --build-b NEW`, by each function's share of its
    /// build): table of changes and a differential flame graph.
    Diff {
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
    },
    /// Fleet power summary per service.
    Power {
        #[command(flatten)]
        window: WindowArgs,
    },
    /// Builds (versions) each service ran in the window, for `diff --build-a/--build-b`.
    Builds {
        #[command(flatten)]
        window: WindowArgs,
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
    },
}

/// Errors print as one line with their causes (`a: b: c`), never as a backtrace: they are
/// meant for the operator, and a `RUST_BACKTRACE` left set in the environment would bury them.
fn main() -> std::process::ExitCode {
    match try_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn try_main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(cli))
}

fn window(w: &WindowArgs) -> anyhow::Result<TimeWindow> {
    let now = report::now();
    Ok(TimeWindow {
        from_unix_seconds: report::parse_time(&w.from, now).context("--from")?,
        to_unix_seconds: report::parse_time(&w.to, now).context("--to")?,
    })
}

fn weight(w: WeightArg) -> Weight {
    match w {
        WeightArg::Samples => Weight::Samples,
        WeightArg::Energy => Weight::Energy,
    }
}

/// The table width: `--width` (0 = unlimited), else `$COLUMNS`, else the terminal's columns
/// (asked only when stdout is a terminal), else [`DEFAULT_WIDTH`].
fn table_width(
    flag: Option<usize>,
    columns_env: Option<String>,
    terminal: impl FnOnce() -> Option<usize>,
) -> usize {
    match flag {
        Some(0) => usize::MAX,
        Some(n) => n,
        None => columns_env
            .and_then(|c| c.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .or_else(terminal)
            .unwrap_or(DEFAULT_WIDTH),
    }
}

/// Columns of the terminal stdout writes to. This crate has no terminal-size dependency, so
/// `stty` (which reads the tty's window size) is asked; any failure means "unknown".
fn terminal_columns() -> Option<usize> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let tty = std::fs::File::open("/dev/tty").ok()?;
    let out = std::process::Command::new("stty")
        .arg("size")
        .stdin(tty)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    // `stty size` prints "ROWS COLUMNS".
    text.split_whitespace()
        .nth(1)?
        .parse()
        .ok()
        .filter(|&n| n > 0)
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", e.message(), e.code())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let width = table_width(cli.width, std::env::var("COLUMNS").ok(), terminal_columns);
    let tls = connect::Tls::from_flags(cli.tls_ca, cli.tls_cert, cli.tls_key)?;
    let channel = connect::channel(&cli.collector, tls.as_ref()).await?;
    let header: Option<tonic::metadata::MetadataValue<_>> = match &cli.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .context("--token has characters not allowed in a header")?,
        ),
        None => None,
    };
    let auth = move |mut req: tonic::Request<()>| {
        if let Some(h) = &header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    };
    // Merged stacks of a busy fleet run to tens of MB; tonic's default cap is 4 MB.
    let mut client = QueryServiceClient::with_interceptor(channel, auth)
        .max_decoding_message_size(MAX_RESPONSE_BYTES);
    let mut client2 = client.clone();
    let mut stacks = async |w: TimeWindow,
                            service: &Option<String>,
                            build: &str|
           -> anyhow::Result<StacksResponse> {
        Ok(client2
            .stacks(StacksRequest {
                window: Some(w),
                service: service.clone().unwrap_or_default(),
                build_id: build.to_string(),
            })
            .await
            .map_err(status)?
            .into_inner())
    };
    match cli.command {
        Command::Top {
            window: w,
            service,
            by,
            inclusive,
            limit,
        } => {
            let rank = match (by, inclusive) {
                (By::Energy, false) => RankBy::EnergySelf,
                (By::Energy, true) => RankBy::EnergyInclusive,
                (By::Cpu, false) => RankBy::SamplesSelf,
                (By::Cpu, true) => RankBy::SamplesInclusive,
            };
            let r = client
                .top(TopRequest {
                    window: Some(window(&w)?),
                    service: service.unwrap_or_default(),
                    rank: rank as i32,
                    limit,
                })
                .await
                .map_err(status)?
                .into_inner();
            emit(cli.json, report::top_json(&r), || {
                report::top_table(&r, width)
            })
        }
        Command::Series {
            window: w,
            service,
            function,
            step,
        } => {
            let step_seconds = match step {
                Some(s) => u32::try_from(s.as_secs()).context("--step too large")?,
                None => 0,
            };
            let r = client
                .series(SeriesRequest {
                    window: Some(window(&w)?),
                    service,
                    function,
                    step_seconds,
                })
                .await
                .map_err(status)?
                .into_inner();
            emit(cli.json, report::series_json(&r), || {
                report::series_table(&r, width)
            })
        }
        Command::Profile {
            window: w,
            service,
            format,
            weight: wt,
            output,
        } => {
            let r = stacks(window(&w)?, &service, "").await?;
            if r.stacks.is_empty() {
                bail!("no stacks in the window");
            }
            let data = match format {
                ProfileFormat::Folded => {
                    flame::folded(&r.stacks, weight(wt), service.is_none()).into_bytes()
                }
                ProfileFormat::Pprof => {
                    if output.as_os_str() == "-" {
                        bail!("pprof is binary: give --output FILE");
                    }
                    let w = r.window.unwrap_or_default();
                    wattson_collector::pprof::encode(
                        &r.stacks,
                        w.from_unix_seconds,
                        w.to_unix_seconds,
                        service.is_none(),
                    )?
                }
            };
            if output.as_os_str() == "-" {
                use std::io::Write as _;
                std::io::stdout().write_all(&data)?;
            } else {
                std::fs::write(&output, data)
                    .with_context(|| format!("writing --output {}", output.display()))?;
                eprintln!("wrote {}", output.display());
            }
            Ok(())
        }
        Command::Flame {
            window: w,
            service,
            weight: wt,
            output,
        } => {
            let rows = stacks(window(&w)?, &service, "").await?.stacks;
            let title = format!(
                "wattson {} ({})",
                service.as_deref().unwrap_or("fleet"),
                report::weight_label(weight(wt))
            );
            let svg = flame::svg(
                &flame::folded(&rows, weight(wt), service.is_none()),
                &title,
                weight(wt),
                flame::any_estimated(&rows),
            )?;
            std::fs::write(&output, svg)
                .with_context(|| format!("writing --output {}", output.display()))?;
            eprintln!("wrote {}", output.display());
            Ok(())
        }
        Command::Diff {
            baseline: None,
            build_a: Some(a),
            build_b: Some(b),
            window: w,
            service,
            weight: wt,
            limit,
            output,
        } => {
            let w = window(&w)?;
            let before = stacks(w, &service, &a).await?;
            let after = stacks(w, &service, &b).await?;
            let d = report::build_diff(&before.stacks, &after.stacks, weight(wt), limit);
            if let Some(out) = output {
                let title = format!("wattson diff {a} -> {b} (red grew, blue shrank)");
                write_diff_flame(&before, &after, &service, wt, &title, &out)?;
            }
            emit(cli.json, report::diff_json(&d), || {
                report::diff_table(&d, width)
            })
        }
        Command::Diff {
            baseline,
            window: w,
            service,
            weight: wt,
            limit,
            output,
            ..
        } => {
            let baseline =
                baseline.context("give --baseline FROM..TO, or --build-a and --build-b")?;
            let (bf, bt) = baseline
                .split_once("..")
                .context("--baseline must be FROM..TO, e.g. -2h..-1h")?;
            let now = report::now();
            let base_w = TimeWindow {
                from_unix_seconds: report::parse_time(bf, now).context("--baseline start")?,
                to_unix_seconds: report::parse_time(bt, now).context("--baseline end")?,
            };
            let after_w = window(&w)?;
            // Rates come from `top` so both commands give a window the same watts.
            let rank = match wt {
                WeightArg::Energy => RankBy::EnergySelf,
                WeightArg::Samples => RankBy::SamplesSelf,
            };
            let mut top = async |w: TimeWindow| -> anyhow::Result<TopResponse> {
                Ok(client
                    .top(TopRequest {
                        window: Some(w),
                        service: service.clone().unwrap_or_default(),
                        rank: rank as i32,
                        limit: DIFF_FUNCTIONS,
                    })
                    .await
                    .map_err(status)?
                    .into_inner())
            };
            let d = report::diff(&top(base_w).await?, &top(after_w).await?, weight(wt), limit);
            if let Some(out) = output {
                let before = stacks(base_w, &service, "").await?;
                let after = stacks(after_w, &service, "").await?;
                let title = "wattson diff (red grew, blue shrank)";
                write_diff_flame(&before, &after, &service, wt, title, &out)?;
            }
            emit(cli.json, report::diff_json(&d), || {
                report::diff_table(&d, width)
            })
        }
        Command::Power { window: w } => {
            let r = client
                .power(PowerRequest {
                    window: Some(window(&w)?),
                })
                .await
                .map_err(status)?
                .into_inner();
            emit(cli.json, report::power_json(&r), || {
                report::power_table(&r, width)
            })
        }
        Command::Builds { window: w, service } => {
            let r = client
                .builds(BuildsRequest {
                    window: Some(window(&w)?),
                    service: service.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            emit(cli.json, report::builds_json(&r), || {
                report::builds_table(&r, width)
            })
        }
    }
}

fn emit(json: bool, value: Value, table: impl FnOnce() -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", table());
    }
    Ok(())
}

/// Writes the differential flame graph of `diff --output` (both sides normalized).
fn write_diff_flame(
    before: &StacksResponse,
    after: &StacksResponse,
    service: &Option<String>,
    wt: WeightArg,
    title: &str,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let prefix = service.is_none();
    let svg = flame::diff_svg(
        &flame::folded(&before.stacks, weight(wt), prefix),
        &flame::folded(&after.stacks, weight(wt), prefix),
        title,
        weight(wt),
        flame::any_estimated(&before.stacks) || flame::any_estimated(&after.stacks),
    )?;
    std::fs::write(out, svg).with_context(|| format!("writing --output {}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn width_comes_from_the_flag_then_columns_then_the_terminal() {
        let tty = || Some(132);
        let cols = || Some("90".to_string());
        assert_eq!(table_width(Some(70), cols(), tty), 70);
        assert_eq!(table_width(Some(0), cols(), tty), usize::MAX);
        assert_eq!(table_width(None, cols(), tty), 90);
        assert_eq!(table_width(None, None, tty), 132);
        // Unusable $COLUMNS is ignored rather than fatal.
        assert_eq!(table_width(None, Some("wide".into()), tty), 132);
        assert_eq!(table_width(None, Some("0".into()), || None), DEFAULT_WIDTH);
        assert_eq!(table_width(None, None, || None), DEFAULT_WIDTH);
    }
}
