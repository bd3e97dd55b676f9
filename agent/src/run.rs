//! `wattson-agent run`: the daemon. Every `--interval` it closes a profile window (sampler
//! drain -> symbolized profile), charges the interval's energy to it, adds it to a batch, and
//! every `--batch-intervals` windows writes the batch to the on-disk spool; a shipper task
//! sends spooled batches to the collector, oldest first, with backoff and jitter.
//!
//! With `--metrics-listen` it also serves Prometheus metrics on `GET /metrics` (see
//! [`wattson_agent::metrics`]).
//!
//! SIGINT/SIGTERM end the current window early and spool it, then give the shipper
//! `--shutdown-grace` to flush; whatever the collector has not acknowledged stays in the spool
//! for the next start.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::sync::{Notify, watch};
use wattson_agent::{
    energy::{EnergyArgs, Meter, SourceKind},
    interval::Recorder,
    metrics::{self, RunMetrics},
    privilege,
    process::{ProcessTable, ServiceRule},
    sampler::{Sampler, SamplerConfig},
    ship::{
        self, ShipStats, Shipper,
        client::{Client, ClientTls},
        spool::Spool,
        wire::{BatchBuilder, HostIdentity, Interval},
    },
    symbolize::Symbolizer,
};

/// How often new-process events are read (short-lived processes must be caught alive).
const POLL: Duration = Duration::from_millis(20);
/// How often the kernel maps are drained within an interval.
const DRAIN_EVERY: Duration = Duration::from_secs(1);

/// Options of `wattson-agent run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Collector to ship to: `http://HOST:7070`, or `https://HOST:7070` with the TLS flags.
    #[arg(long, env = "WATTSON_COLLECTOR")]
    pub collector: String,
    /// Samples per second per CPU (a prime, so sampling never locks step with periodic work).
    #[arg(long, short = 'F', default_value_t = 19)]
    pub frequency: u64,
    /// Length of one interval profile, e.g. `10s`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub interval: Duration,
    /// Intervals per batch (more means fewer, larger requests; the spool holds whole batches).
    #[arg(long, default_value_t = 1)]
    pub batch_intervals: usize,
    /// Directory of the on-disk spool (survives restarts; holds the sequence counter).
    #[arg(long, default_value = "/var/lib/wattson/spool")]
    pub spool_dir: PathBuf,
    /// Bound of the spool in bytes (compressed batches, refused ones in rejected/ included);
    /// when full, refused batches go first, then the oldest waiting ones, whose loss is
    /// counted and reported to the collector.
    #[arg(long, default_value_t = 256 << 20)]
    pub spool_max_bytes: u64,
    /// Stable identity of this host; default: /etc/machine-id.
    #[arg(long)]
    pub host_id: Option<String>,
    /// Client certificate (PEM) for mutual TLS; needs --tls-key and --tls-ca.
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) the collector's certificate must be signed by.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// Bearer token sent with every batch (the collector's --token).
    #[arg(long, env = "WATTSON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Longest wait between retries while the collector is unreachable.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub max_backoff: Duration,
    /// Deadline of one send.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub send_timeout: Duration,
    /// On SIGTERM, how long to keep sending spooled batches before exiting.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub shutdown_grace: Duration,
    /// Service label mapping, repeatable: FIELD:PATTERN=SERVICE with FIELD one of unit, exe,
    /// comm, cgroup, container; PATTERN exact or ending in `*`.
    #[arg(long = "service", value_name = "RULE")]
    pub services: Vec<ServiceRule>,
    /// Serve Prometheus metrics on http://ADDR/metrics (samples and drops, batches shipped,
    /// spool size and losses, energy source, measured and estimated energy), e.g.
    /// 127.0.0.1:9465; port 0 picks a free one (logged). Off unless given.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Sample with the software cpu-clock even if hardware cycles are available.
    #[arg(long)]
    pub cpu_clock: bool,
    #[command(flatten)]
    pub energy: EnergyArgs,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Reads the host identity: `--host-id` or /etc/machine-id, and the CPU model.
fn host_identity(args: &RunArgs, meter: Option<&Meter>) -> anyhow::Result<HostIdentity> {
    let host_id = match &args.host_id {
        Some(id) => id.trim().to_owned(),
        None => std::fs::read_to_string("/etc/machine-id")
            .map(|s| s.trim().to_owned())
            .context("reading /etc/machine-id for the host id; pass --host-id to set one")?,
    };
    if host_id.is_empty() || host_id.chars().any(char::is_control) {
        bail!("host id {host_id:?} is empty or has control characters; pass --host-id");
    }
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let packages = meter.map_or(0, |m| m.topology().packages().len() as u32);
    Ok(HostIdentity {
        host_id,
        cpu_model,
        packages,
    })
}

/// Runs the daemon until SIGINT/SIGTERM.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    if args.frequency == 0 {
        bail!("--frequency must be at least 1 (samples per second per CPU)");
    }
    if args.interval < Duration::from_millis(100) {
        bail!("--interval must be at least 100ms");
    }
    if args.batch_intervals == 0 {
        bail!("--batch-intervals must be at least 1");
    }
    let tls = match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(ClientTls {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        }),
        _ => None,
    };
    let client = |runtime: &tokio::runtime::Runtime| {
        // The channel is created inside a runtime so its connection tasks have one to run on.
        runtime.block_on(async {
            Client::new(
                &args.collector,
                tls.as_ref(),
                args.token.as_deref(),
                args.send_timeout,
            )
        })
    };
    // Checked before the BPF work, so a bad URL or TLS file fails fast and names the flag;
    // on a runtime without threads: none may start before capabilities are dropped.
    let threadless = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    client(&threadless)?;
    drop(threadless);
    // Bound before the BPF work, so a busy port fails fast and names the flag.
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| metrics::BindError { addr, source })?,
        ),
        None => None,
    };
    let spool = Spool::open(&args.spool_dir, args.spool_max_bytes)?;
    let spool = Arc::new(Mutex::new(spool));

    privilege::check_can_sample().map_err(anyhow::Error::msg)?;
    let mut meter = Meter::open(&args.energy)?;
    let host = host_identity(args, meter.as_ref())?;
    let mut config = SamplerConfig::default();
    config.frequency = args.frequency;
    config.prefer_cycles = !args.cpu_clock;
    let mut sampler = Sampler::load(&config)?;
    sampler.attach(&config)?;
    // Capabilities are per thread: dropped before the runtime starts its threads.
    privilege::drop_after_attach_logged();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let client = client(&runtime)?;
    let metrics_listener = match metrics_listener {
        Some(l) => Some(
            runtime
                .block_on(async { tokio::net::TcpListener::from_std(l) })
                .context("registering the metrics listener")?,
        ),
        None => None,
    };
    let table = ProcessTable::new("/proc", args.services.clone());
    // This thread alone maps and unmaps files (it symbolizes): see `file_pages`.
    wattson_agent::file_pages::enable();
    let mut recorder = Recorder::new(sampler, table, Symbolizer::default())?;

    let wake = Arc::new(Notify::new());
    let stats = Arc::new(ShipStats::default());
    let (stop_tx, stop_rx) = watch::channel(None);
    let shipper = Shipper {
        spool: spool.clone(),
        client,
        wake: wake.clone(),
        backoff: ship::default_backoff(args.max_backoff),
        stats: stats.clone(),
    };
    let shipping = runtime.spawn(shipper.run(stop_rx));
    let run_metrics = Arc::new(match meter.as_ref().map(Meter::source) {
        Some(source) => RunMetrics::new(source.name(), source == SourceKind::Model),
        None => RunMetrics::new("none", false),
    });
    if let Some(listener) = metrics_listener {
        // Tests and scripts read this line to find a port picked with :0.
        tracing::info!(addr = %listener.local_addr()?, "serving Prometheus /metrics");
        let sources = metrics::Sources {
            run: run_metrics.clone(),
            ship: stats.clone(),
            spool: spool.clone(),
        };
        runtime.spawn(metrics::serve(listener, sources));
    }

    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    tracing::info!(
        collector = %args.collector,
        host_id = %host.host_id,
        frequency = args.frequency,
        interval = ?args.interval,
        energy = meter.as_ref().map_or("none".to_owned(), |m| m.describe()),
        "agent running"
    );

    let mut builder = BatchBuilder::new();
    let mut window_started = Instant::now();
    let mut last_drain = window_started;
    loop {
        let stopping = STOP.load(Ordering::Relaxed);
        if !stopping {
            std::thread::sleep(POLL);
            recorder.poll();
            if last_drain.elapsed() >= DRAIN_EVERY {
                recorder.drain()?;
                record_sampler(&recorder, &run_metrics);
                last_drain = Instant::now();
            }
            if window_started.elapsed() < args.interval {
                continue;
            }
        }
        window_started = Instant::now();
        last_drain = window_started;
        if let Some(m) = meter.as_mut() {
            m.end_window(); // energy of the window, not of the symbolizing that follows
        }
        let mut profile = recorder.finish_window()?;
        let energy = meter.as_mut().map(|m| m.attribute_profile(&mut profile));
        record_sampler(&recorder, &run_metrics);
        run_metrics.record_interval(&profile, energy.as_ref());
        builder.add(&Interval { profile, energy });
        if builder.intervals() >= args.batch_intervals || stopping {
            let full = std::mem::replace(&mut builder, BatchBuilder::new());
            spool_batch(&spool, &host, full, &run_metrics);
            wake.notify_one();
        }
        if stopping {
            break;
        }
    }

    tracing::info!(grace = ?args.shutdown_grace, "stopping: flushing the spool");
    let _ = stop_tx.send(Some(Instant::now() + args.shutdown_grace));
    runtime
        .block_on(shipping)
        .context("the shipper task failed")?;
    let spool = spool.lock().unwrap_or_else(|p| p.into_inner());
    let losses = spool.losses();
    tracing::info!(
        sent = stats.sent.load(Ordering::Relaxed),
        duplicates = stats.duplicates.load(Ordering::Relaxed),
        rejected = stats.rejected.load(Ordering::Relaxed),
        retries = stats.retries.load(Ordering::Relaxed),
        left_in_spool = spool.len(),
        spool_dropped_batches = losses.spool_dropped_batches,
        spool_dropped_samples = losses.spool_dropped_samples,
        "agent stopped"
    );
    Ok(())
}

/// Copies the sampler's counters into the metrics.
fn record_sampler(recorder: &Recorder, metrics: &RunMetrics) {
    match recorder.sampler().counters() {
        Ok(c) => metrics.record_sampler(c),
        Err(e) => tracing::debug!(error = %e, "metrics: reading the sampler's counters failed"),
    }
}

/// Writes `builder`'s intervals to the spool as one batch; a batch that cannot be written is
/// counted as lost and sampling goes on.
fn spool_batch(
    spool: &Mutex<Spool>,
    host: &HostIdentity,
    builder: BatchBuilder,
    metrics: &RunMetrics,
) {
    let (intervals, samples) = (builder.intervals() as u64, builder.samples());
    let truncated = builder.truncated_strings();
    let mut spool = spool.lock().unwrap_or_else(|p| p.into_inner());
    let pushed = match spool.push(intervals, samples, |seq, losses| {
        builder.finish(host, seq, losses)
    }) {
        Ok(pushed) => pushed,
        Err(e) => {
            // A full disk must not stop profiling: count the loss, report it in later batches.
            tracing::error!(
                error = %e,
                intervals,
                samples,
                "could not spool a batch (disk full?): counted as lost, sampling goes on"
            );
            spool.count_unwritable(intervals, samples);
            return;
        }
    };
    metrics.record_spooled(truncated);
    // Tests and operators read this line: every sample the agent produced is counted here.
    tracing::info!(
        sequence = pushed.sequence,
        intervals,
        samples,
        bytes = pushed.bytes,
        dropped_oldest = pushed.dropped,
        strings_truncated = truncated,
        waiting = spool.len(),
        "batch spooled"
    );
}
