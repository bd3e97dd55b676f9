//! `wattson-collector`: the command-line edge of the collector library.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use wattson_collector::server::{self, ServeConfig, TlsFiles};
use wattson_collector::validate::Limits;

// glibc malloc's arenas cost ~15% of ingest CPU when batches are decoded on one thread and
// freed on another (measured with perf under `cargo xtask bench --only ingest`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Wattson collector: receives interval profiles from agents and answers queries.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve gRPC ingest (plus grpc.health.v1 and reflection) in front of a store.
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is logged).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Where batches go: `sqlite://PATH` (embedded, default) or `clickhouse://HOST:PORT/DB`.
    #[arg(long, default_value = "sqlite://wattson.db")]
    store: String,
    /// Server certificate (PEM) for mutual TLS; needs --tls-key and --tls-ca.
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM) for mutual TLS.
    #[arg(long, requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must be signed by.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// Require `authorization: Bearer TOKEN` on every call but health; this token has every
    /// scope (ingest, read, admin).
    #[arg(long, env = "WATTSON_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Scoped tokens, one `SCOPE TOKEN` per line (SCOPE: ingest, read, admin or all; `#`
    /// comments): agents get ingest, dashboards and the CLI read.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Largest accepted request after decompression, bytes.
    #[arg(long, default_value_t = server::DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Longest one request may take (a stalled upload included) before it is cancelled.
    #[arg(long, default_value = "60s")]
    request_timeout: humantime::Duration,
    /// Concurrent HTTP/2 streams one connection may open.
    #[arg(long, default_value_t = 64)]
    max_concurrent_streams: u32,
    /// Fleet sizes per service and PUE / CO2 / price factors (TOML) for fleet power figures.
    #[arg(long)]
    fleet: Option<PathBuf>,
    /// Keep per-minute rows this long; older data is kept per hour.
    #[arg(long, default_value = "7d")]
    retain_raw: humantime::Duration,
    /// Delete everything older than this.
    #[arg(long, default_value = "395d")]
    retain_total: humantime::Duration,
    /// Serve Prometheus `GET /metrics` here (ingest counters, store size, per-service watts,
    /// open regressions).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// User skills (TOML) added to the built-in catalogue, served by the skills service
    /// (`wattson skills list`, `wattson suggest`); a bad file stops the start, naming its line.
    #[arg(long, value_name = "FILE")]
    skills: Option<PathBuf>,
    /// Collector config file (TOML): regression detection settings in `[detect]`, per-service
    /// overrides in `[detect.services."NAME"]` (see README). Defaults apply without it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// How often regression detection looks for newly stored data and runs a pass.
    #[arg(long, default_value = "5m")]
    detect_every: humantime::Duration,
}

fn main() -> std::process::ExitCode {
    wattson_proto::cli::exit(try_main())
}

fn try_main() -> anyhow::Result<()> {
    wattson_proto::cli::init_logging("info");
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let tls = TlsFiles::from_flags(args.tls_cert, args.tls_key, args.tls_ca)?;
    let skills = wattson_collector::skills_service::SkillSet::load(args.skills.as_deref())
        .context("--skills")?;
    if let Some(p) = &args.skills {
        tracing::info!(file = %p.display(), skills = ?skills, "skills loaded");
    }
    // Flags and files first: a mistake there must not wait for (or touch) the store.
    let detect = match &args.config {
        Some(p) => wattson_collector::detection::load_config(p)
            .with_context(|| format!("--config {}", p.display()))?,
        None => wattson_collector::detect::DetectConfig::default(),
    };
    if args.detect_every.is_zero() {
        anyhow::bail!("--detect-every must be longer than 0s (e.g. 1m)");
    }
    let store = wattson_collector::store::open(&args.store)
        .with_context(|| format!("opening --store {}", args.store))?;
    let counted = Arc::new(wattson_collector::metrics::Counted::new(Arc::from(store)));
    let store: Arc<dyn wattson_collector::store::Store> = counted.clone();
    let fleet = match &args.fleet {
        Some(p) => wattson_collector::attribute::FleetConfig::load(p)?,
        None => wattson_collector::attribute::FleetConfig::default(),
    };
    if args.retain_raw.as_secs() > args.retain_total.as_secs() {
        anyhow::bail!(
            "--retain-raw {} is longer than --retain-total {}",
            args.retain_raw,
            args.retain_total
        );
    }
    // Detection's five-minute rows are kept for its whole history (its longest, per service).
    let history = (detect.services.keys())
        .map(|s| detect.for_service(s).history)
        .fold(detect.history, i64::max);
    let retention = wattson_collector::store::Retention {
        raw: *args.retain_raw,
        total: *args.retain_total,
        detect: std::time::Duration::from_secs(history.max(0) as u64),
    };
    // Steps of whole five minutes read detection's own rows and steps of hours hour rows;
    // other steps under an hour read minute rows, which live --retain-raw only.
    if detect.step % 300 != 0 && detect.history > args.retain_raw.as_secs() as i64 {
        tracing::warn!(
            history_s = detect.history,
            retain_raw_s = args.retain_raw.as_secs(),
            "detection history is longer than --retain-raw: series start where minute rows \
             end; raise --retain-raw to the history (14d by default) to judge against all of it"
        );
    }
    let detector = Arc::new(wattson_collector::detection::Detector::new(
        store.clone(),
        fleet.clone(),
        detect,
    )?);
    let engine = Arc::new(wattson_collector::query::QueryEngine::new(
        store.clone(),
        fleet.clone(),
    ));
    let config = ServeConfig {
        fleet,
        tls,
        token: args.token,
        token_file: args.token_file,
        max_message_bytes: args.max_message_bytes,
        limits: Limits::default(),
        rejections: counted.rejections(),
        skills,
        detector: Some(detector.clone()),
        detect_every: *args.detect_every,
        transport: server::Transport {
            request_timeout: *args.request_timeout,
            max_concurrent_streams: args.max_concurrent_streams,
            ..server::Transport::default()
        },
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let listener = server::bind(args.listen).await?;
        let addr = listener.local_addr().context("reading the bound address")?;
        // Scripts and tests read this line to find a port picked with :0.
        tracing::info!(%addr, store = %args.store, "listening");
        let summaries = tokio::spawn(wattson_collector::ingest_summary::run(
            counted.clone(),
            std::time::Duration::from_secs(60),
        ));
        let housekeeping = tokio::spawn(wattson_collector::retention::run(
            store.clone(),
            retention,
            std::time::Duration::from_secs(3600),
        ));
        let metrics = match args.metrics_listen {
            Some(addr) => {
                let l = wattson_collector::metrics::bind(addr).await?;
                tracing::info!(addr = %l.local_addr()?, "serving Prometheus /metrics");
                Some(tokio::spawn(wattson_collector::metrics::serve(
                    l, counted, engine, detector,
                )))
            }
            None => None,
        };
        server::serve(listener, store, config, shutdown_signal()).await?;
        if let Some(m) = metrics {
            m.abort();
        }
        housekeeping.abort();
        summaries.abort();
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: finishing in-flight batches"),
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight batches"),
    }
}
