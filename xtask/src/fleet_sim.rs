//! `cargo xtask fleet-sim`: a synthetic fleet streamed through the collector's real gRPC ingest
//! path with backfilled timestamps, and its ground truth written as JSON, for scoring
//! regression detection (`cargo xtask bench --only detect`) and for trying `wattson
//! regressions` on weeks of data without a fleet.
//!
//! Services are call trees of named functions; counts are Poisson draws around the expected
//! samples of a fleet of `--hosts` hosts at 19 Hz, with a daily load cycle, functions whose
//! share follows the time of day, and the events of `scenario` (regressions of 0.005% to 1% of
//! a service, creeps, spikes, cost shifts, improvements, deploys, recorded changes).

mod collector;
mod model;
mod rng;
mod scenario;
pub mod solve;
mod stream;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Serialize;

pub use collector::Collector;
pub use scenario::{Event, Kind, Scenario};

/// Options of `cargo xtask fleet-sim`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Seed of the fleet and its events (the same seed gives the same data and truth).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Services in the fleet.
    #[arg(long, default_value_t = 8)]
    pub services: usize,
    /// Functions per service (one stack each; at least 4).
    #[arg(long, default_value_t = 60)]
    pub functions: usize,
    /// Days of history, ending now (or at `--end`).
    #[arg(long, default_value_t = 14.0)]
    pub days: f64,
    /// End of the history, Unix seconds (default now). The daily cycle follows UTC time of
    /// day, so the same seed gives the same fleet only at the same end time of day: the
    /// detect bench pins it to the last UTC midnight.
    #[arg(long)]
    pub end: Option<i64>,
    /// Seconds per step (one interval profile per service per step; a multiple of 60).
    #[arg(long, default_value_t = 300)]
    pub step: i64,
    /// Hosts each service's virtual host stands for (sets the sampling noise).
    #[arg(long, default_value_t = 1000)]
    pub hosts: u32,
    /// Send to this collector (e.g. http://127.0.0.1:7070) instead of starting one.
    #[arg(long)]
    pub collector: Option<String>,
    /// Directory of the collector this command starts: its SQLite store (replaced) and log.
    #[arg(long, default_value = "target/fleet-sim")]
    pub data_dir: PathBuf,
    /// Extra argument for the started `wattson-collector serve` (repeat; e.g. a config file).
    #[arg(long = "collector-arg", allow_hyphen_values = true)]
    pub collector_args: Vec<String>,
    /// Keep the started collector serving until Ctrl-C, to query it with `wattson`.
    #[arg(long)]
    pub serve: bool,
    /// Where the ground truth goes (default DATA_DIR/truth.json).
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Steps per batch.
    #[arg(long, default_value_t = 12)]
    pub chunk: usize,
    /// Services streamed at once (one gRPC connection each).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// What is injected: every kind of event (`mixed`), or one 1% step per service caused by a
    /// recorded deploy (`one-step`).
    #[arg(long, value_enum, default_value_t = Scenario::Mixed)]
    pub scenario: Scenario,
}

/// One service of the ground truth.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ServiceTruth {
    pub name: String,
    pub hosts: u32,
    /// Expected samples per step at average load.
    pub samples_per_step: f64,
    pub functions: Vec<FunctionTruth>,
    /// Functions whose share follows the time of day.
    pub seasonal: Vec<String>,
}

/// One function of the ground truth.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct FunctionTruth {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// Base inclusive share of the service.
    pub share: f64,
}

/// The ground truth of one simulated fleet.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Truth {
    pub seed: u64,
    pub start_unix_seconds: i64,
    pub end_unix_seconds: i64,
    pub step_seconds: i64,
    pub services: Vec<ServiceTruth>,
    pub events: Vec<Event>,
    pub changes: Vec<scenario::Change>,
}

impl Truth {
    /// The service and function named, if the fleet has them.
    pub fn function(&self, service: &str, function: &str) -> Option<&FunctionTruth> {
        self.services
            .iter()
            .find(|s| s.name == service)?
            .functions
            .iter()
            .find(|f| f.name == function)
    }

    /// Whether `a` is `b` or calls it (directly or not), in `service`.
    pub fn calls(&self, service: &str, a: &str, b: &str) -> bool {
        let mut cur = self.function(service, b);
        while let Some(f) = cur {
            if f.name == a {
                return true;
            }
            cur = f.caller.as_deref().and_then(|c| self.function(service, c));
        }
        false
    }
}

/// What a run produced.
pub struct Outcome {
    pub truth: Truth,
    pub batches: u64,
    pub samples: u64,
    pub changes_recorded: usize,
    pub seconds: f64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let (url, collector) = match &args.collector {
        Some(url) => (url.clone(), None),
        None => {
            let c = Collector::start(&args.data_dir, args.days, &args.collector_args)?;
            (c.url(), Some(c))
        }
    };
    let truth_path = args
        .truth
        .clone()
        .unwrap_or_else(|| args.data_dir.join("truth.json"));
    let out = simulate(args, &url, Some(&truth_path))?;
    let t = &out.truth;
    eprintln!(
        "fleet-sim: sent {} batches ({} samples) in {:.1} s, recorded {} changes; {} events ({} regressions), truth in {}",
        out.batches,
        out.samples,
        out.seconds,
        out.changes_recorded,
        t.events.len(),
        t.events.iter().filter(|e| e.regression).count(),
        truth_path.display()
    );
    if let Some(c) = collector
        && args.serve
    {
        eprintln!(
            "fleet-sim: collector serving at {} (try `wattson --collector {} regressions --from {} --all`); Ctrl-C stops it",
            c.url(),
            c.url(),
            t.start_unix_seconds
        );
        c.wait()?;
    }
    Ok(())
}

fn write_truth(path: &Path, truth: &Truth) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(truth)?;
    std::fs::write(path, json).with_context(|| format!("writing --truth {}", path.display()))
}

/// Builds the fleet of `args` and streams it to the collector at `url`; returns the truth,
/// written first to `truth_to` when given (so a failed send still leaves it to look at).
pub fn simulate(args: &Args, url: &str, truth_to: Option<&Path>) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        args.step >= 60 && args.step % 60 == 0,
        "--step {}: must be a multiple of 60 seconds (the store's finest resolution is a minute)",
        args.step
    );
    anyhow::ensure!(
        args.days >= 4.0,
        "--days {}: at least 4 days are needed (2.5 days of history before the first event, 12 h after the last)",
        args.days
    );
    anyhow::ensure!(args.services >= 1, "--services must be at least 1");
    anyhow::ensure!(args.hosts >= 1, "--hosts must be at least 1");
    anyhow::ensure!(args.chunk >= 1, "--chunk must be at least 1");
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let end = args.end.unwrap_or(now);
    anyhow::ensure!(
        end <= now,
        "--end {end} is in the future (now is {now}): the collector refuses future samples"
    );
    // The last step ends on a whole step.
    let end = end - end.rem_euclid(args.step);
    let steps = (args.days * 86_400.0) as usize / args.step as usize;
    let start = end - steps as i64 * args.step;
    let clock = stream::Clock {
        start,
        step: args.step,
        steps,
        chunk: args.chunk,
    };
    let root = rng::Rng::new(args.seed);
    let mut cycle = scenario::Cycle::new(args.scenario);
    let sims: Vec<stream::Simulated> = (0..args.services)
        .map(|i| {
            let mut r = root.fork(i as u64 + 1);
            let service = model::Service::generate(&mut r, i, args.functions, args.hosts);
            let timeline = scenario::plan(
                &mut r, &service, args.seed, start, end, args.step, &mut cycle,
            );
            stream::Simulated {
                service,
                timeline,
                rng: r.fork(0xba7c),
            }
        })
        .collect();
    let truth = truth_of(args.seed, &clock, end, &sims);
    if let Some(path) = truth_to {
        write_truth(path, &truth)?;
    }
    eprintln!(
        "fleet-sim: seed {}, {} services x {} functions, {} steps of {} s from {start} to {end}, {} events, sending to {url}",
        args.seed,
        args.services,
        args.functions.max(4),
        steps,
        args.step,
        truth.events.len()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("fleet-sim runtime")?;
    let sims = Arc::new(sims);
    let instance = format!("sim{}", args.seed);
    let sent = rt.block_on(stream::send(url, sims, clock, &instance, args.concurrency))?;
    anyhow::ensure!(
        sent.duplicates == 0,
        "the collector at {url} already held {} of these batches (same seed into the same store): start from an empty store",
        sent.duplicates
    );
    let changes: Vec<&scenario::Change> = truth.changes.iter().collect();
    let recorded = rt.block_on(stream::record_changes(url, &changes))?;
    Ok(Outcome {
        truth,
        batches: sent.batches,
        samples: sent.samples,
        changes_recorded: recorded,
        seconds: sent.seconds,
    })
}

fn truth_of(seed: u64, clock: &stream::Clock, end: i64, sims: &[stream::Simulated]) -> Truth {
    let services = sims
        .iter()
        .map(|s| {
            let svc = &s.service;
            ServiceTruth {
                name: svc.name.clone(),
                hosts: svc.hosts,
                samples_per_step: svc.samples_per_step(clock.step),
                functions: svc
                    .functions
                    .iter()
                    .enumerate()
                    .map(|(i, f)| FunctionTruth {
                        name: f.name.clone(),
                        caller: f.parent.map(|p| svc.functions[p].name.clone()),
                        share: svc.share(i),
                    })
                    .collect(),
                seasonal: svc
                    .seasonal
                    .iter()
                    .map(|(f, _)| svc.functions[*f].name.clone())
                    .collect(),
            }
        })
        .collect();
    Truth {
        seed,
        start_unix_seconds: clock.start,
        end_unix_seconds: end,
        step_seconds: clock.step,
        services,
        events: sims
            .iter()
            .flat_map(|s| s.timeline.events.iter().cloned())
            .collect(),
        changes: sims
            .iter()
            .flat_map(|s| s.timeline.changes.iter().cloned())
            .collect(),
    }
}
