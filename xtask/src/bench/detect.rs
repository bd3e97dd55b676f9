//! Regression detection scored against the fleet generator's ground truth: for several seeds,
//! `fleet_sim` streams 14 days of a synthetic fleet into a `wattson-collector serve` it starts
//! (real gRPC, SQLite), records the changes, asks `ListRegressions` with `all` over gRPC, and
//! matches what came back to what was injected. Reported: precision, recall by regression size,
//! detection delay, culprit top-1 / top-3, false positives by kind, the funnel, and the time of
//! a full detection pass over 10,000 series of 14 days at a 5-minute step.
//!
//! A reported regression matches an injected one when service and function are the same and
//! it started within `TOLERANCE` of the injection (a creep: of its ramp). An unmatched one is a
//! false positive, classed by what it sits on: a caller or a leaf of a true regression at that
//! time, a spike, a cost shift, an improvement, a seasonal function, a second report of one
//! regression, or noise.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::Context as _;
use wattson_proto::v1::detection_service_client::DetectionServiceClient;
use wattson_proto::v1::{
    ListChangesRequest, ListRegressionsRequest, ListRegressionsResponse, Regression, TimeWindow,
};

use super::Row;
use crate::fleet_sim::{self, Collector, Event, Kind, Truth};

/// Options of the detect area (`cargo xtask bench --only detect --detect-seeds 11,12,13`).
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Seeds of the fleets scored (comma-separated); goals are judged on all of them together,
    /// never on one, and each seed's figures are printed too.
    #[arg(long = "detect-seeds", value_delimiter = ',', default_values_t = [1u64, 2, 3])]
    pub seeds: Vec<u64>,
    /// Services of each scored fleet.
    #[arg(long = "detect-services", default_value_t = 8)]
    pub services: usize,
    /// Functions per service of each scored fleet.
    #[arg(long = "detect-functions", default_value_t = 60)]
    pub functions: usize,
    /// Days of history of each scored fleet.
    #[arg(long = "detect-days", default_value_t = 14.0)]
    pub days: f64,
    /// Skip the speed run (10,000 series; minutes and gigabytes).
    #[arg(long = "detect-no-speed")]
    pub no_speed: bool,
    /// Write each seed's ground truth and answer here (seed-N-truth.json, seed-N-answer.json).
    #[arg(long = "detect-dump")]
    pub dump: Option<PathBuf>,
    /// Keep each seed's store in DIR/seed-N (the speed run's in DIR/speed/seed-N) and, when
    /// one is there already, score it again without streaming (a quick loop while changing
    /// detection; the figures to report come from a fresh run).
    #[arg(long = "detect-reuse")]
    pub reuse: Option<PathBuf>,
}

static OPTIONS: OnceLock<Options> = OnceLock::new();

/// Sets the options `run` uses (the first call wins).
pub fn configure(o: Options) {
    let _ = OPTIONS.set(o);
}

fn options() -> Options {
    OPTIONS
        .get()
        .cloned()
        .expect("bench::run configures the detect area first")
}

/// How far from the injection a report's start may be.
const TOLERANCE: i64 = 6 * 3600;
/// The speed run: 10 x 500 (service, function) pairs, each a CPU and an energy series (as
/// detection counts them): 10,000 series.
const SPEED_SERVICES: usize = 10;
const SPEED_FUNCTIONS: usize = 500;
/// Goals of the issue.
const GOAL_PRECISION: f64 = 0.95;
const GOAL_RECALL: f64 = 0.9;
const GOAL_TOP3: f64 = 0.9;
const GOAL_PASS_SECONDS: f64 = 10.0;

fn row(metric: impl Into<String>, value: String, goal: &str, met: Option<bool>) -> Row {
    Row {
        area: "detect",
        metric: metric.into(),
        value,
        goal: goal.into(),
        met,
    }
}

fn args(seed: u64, services: usize, functions: usize) -> fleet_sim::Args {
    fleet_sim::Args {
        seed,
        services,
        functions,
        days: 14.0,
        end: None,
        step: 300,
        hosts: 1000,
        collector: None,
        data_dir: std::path::PathBuf::new(),
        collector_args: Vec::new(),
        serve: false,
        truth: None,
        chunk: 12,
        concurrency: 4,
        scenario: fleet_sim::Scenario::Mixed,
    }
}

/// What one simulated fleet gave.
struct Detected {
    truth: Truth,
    answer: ListRegressionsResponse,
    /// Build id of every change the collector lists, by change id: the collector names the
    /// deploys it records by itself, so a deploy is matched by its build.
    builds: BTreeMap<String, String>,
    /// Seconds the first `ListRegressions` took (the collector's first pass after a restart,
    /// reading what the page cache lacks).
    seconds: f64,
    /// Seconds the scored pass (as of the fleet's end) took after it, on a warm cache.
    again: f64,
    /// Per open regression that is an injected one with a change, the change the regression
    /// solver's report names (None: it names none).
    solved: BTreeMap<String, Option<String>>,
}

/// Simulates `a` into a fresh collector (or, under `reuse`, reopens the store a past run
/// kept) and asks it for every regression and change.
fn detect(a: &fleet_sim::Args, reuse: Option<&std::path::Path>) -> anyhow::Result<Detected> {
    let temp = tempfile::tempdir()?;
    let dir = match reuse {
        Some(r) => r.join(format!("seed-{}", a.seed)),
        None => temp.path().to_path_buf(),
    };
    let kept = dir.join("truth.json");
    let old = reuse.is_some() && kept.exists();
    let mut collector = Collector::start_on(&dir, a.days, &a.collector_args, !old)?;
    let truth: Truth = if old {
        let text = std::fs::read_to_string(&kept)
            .with_context(|| format!("reading {}", kept.display()))?;
        eprintln!("bench: detect seed {}: reusing {}", a.seed, dir.display());
        serde_json::from_str(&text).with_context(|| format!("parsing {}", kept.display()))?
    } else {
        let out = fleet_sim::simulate(a, &collector.url(), None)?;
        eprintln!(
            "bench: detect seed {}: {} batches in {:.0} s; asking for regressions ...",
            a.seed, out.batches, out.seconds
        );
        if reuse.is_some() {
            std::fs::write(&kept, serde_json::to_string(&out.truth)?)
                .with_context(|| format!("writing {}", kept.display()))?;
        }
        // A fresh collector on the stored data: the passes that ran during ingest have
        // cached some services, and the figure is that of a whole pass.
        drop(collector);
        collector = Collector::start_on(&dir, a.days, &a.collector_args, false)?;
        out.truth
    };
    let url = collector.url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let window = TimeWindow {
        from_unix_seconds: truth.start_unix_seconds,
        to_unix_seconds: truth.end_unix_seconds,
    };
    // Scored as of the simulated fleet's end, not the wall clock: a reused store then answers
    // the same on any later day, instead of losing its first hours to the history window.
    let as_of = truth.end_unix_seconds;
    let began = Instant::now();
    let (answer, (seconds, again), changes) = rt.block_on(async {
        let mut client = DetectionServiceClient::connect(url.clone())
            .await?
            .max_decoding_message_size(256 << 20);
        let mut list = async |as_of_unix_seconds, all| {
            let r = client
                .list_regressions(ListRegressionsRequest {
                    window: Some(window),
                    service: String::new(),
                    all,
                    as_of_unix_seconds,
                })
                .await
                .with_context(|| format!("ListRegressions at {url}"))?;
            anyhow::Ok((r.into_inner(), began.elapsed().as_secs_f64()))
        };
        // The collector's own first pass (what a fresh collector costs), then the same
        // services again as of the fleet's end, on a warm page cache.
        let (_, first) = list(0, false).await?;
        let (answer, both) = list(as_of, true).await?;
        let seconds = (first, both - first);
        let changes = client
            .list_changes(ListChangesRequest {
                window: Some(window),
                service: String::new(),
            })
            .await
            .with_context(|| format!("ListChanges at {url}"))?;
        anyhow::Ok((answer, seconds, changes.into_inner().changes))
    })?;
    // The solver on every report of an injected regression with a change.
    let solved = rt.block_on(async {
        let mut skills = fleet_sim::solve::connect(&url).await?;
        let mut solved = BTreeMap::new();
        for r in answer.regressions.iter().filter(|r| r.status == "open") {
            if injected(&truth, r).is_some_and(|(_, e)| e.change_id.is_some()) {
                let c = fleet_sim::solve::culprit(&mut skills, window, as_of, &r.service, &r.id)
                    .await?;
                solved.insert(r.id.clone(), c);
            }
        }
        anyhow::Ok(solved)
    })?;
    Ok(Detected {
        truth,
        answer,
        builds: changes.into_iter().map(|c| (c.id, c.build_id)).collect(),
        seconds,
        again,
        solved,
    })
}

/// What the scoring of one or more seeds counted.
#[derive(Debug, Default)]
struct Score {
    reported: usize,
    matched: usize,
    /// Per injected size (fraction of the service): (found, injected).
    recall: BTreeMap<u64, (usize, usize)>,
    /// Hours from injection to the reported detection, per match.
    delays: Vec<f64>,
    /// Matches whose injection has a change: (top-1, top-3, of).
    culprit: (usize, usize, usize),
    /// Matches with a change: (the solver's report names it, of).
    solver: (usize, usize),
    /// Matches without any change that still named one.
    blamed_without_change: usize,
    no_change: usize,
    false_positives: BTreeMap<&'static str, usize>,
    /// Injected improvements reported as improvements: (tracked, injected).
    improvements: (usize, usize),
    funnel: BTreeMap<String, (u64, u64)>,
    series: u64,
    pass_seconds: Vec<f64>,
    notes: Vec<String>,
}

/// Sizes are keyed in millionths of the service so they sort and compare exactly.
fn size_key(d: f64) -> u64 {
    (d.abs() * 1e6).round() as u64
}

fn near(e: &Event, t: i64) -> bool {
    t >= e.at - TOLERANCE && t <= e.until.unwrap_or(e.at) + TOLERANCE
}

/// The injected regression report `r` is, if any: same service and function, started near it.
fn injected<'a>(truth: &'a Truth, r: &Regression) -> Option<(usize, &'a Event)> {
    truth.events.iter().enumerate().find(|(_, e)| {
        e.regression
            && e.service == r.service
            && e.function == r.function
            && near(e, r.started_unix_seconds)
    })
}

impl Score {
    fn add(&mut self, d: &Detected) {
        let (truth, answer) = (&d.truth, &d.answer);
        self.series += answer.series;
        self.pass_seconds.push(d.seconds);
        if !answer.note.is_empty() {
            self.notes
                .push(format!("seed {}: {}", truth.seed, answer.note));
        }
        for s in &answer.funnel {
            let f = self.funnel.entry(s.stage.clone()).or_default();
            f.0 += s.candidates_in;
            f.1 += s.removed;
        }
        let mut claimed = vec![false; truth.events.len()];
        for r in answer.regressions.iter().filter(|r| r.status == "open") {
            self.reported += 1;
            match injected(truth, r).map(|(i, _)| i) {
                Some(i) if !claimed[i] => {
                    claimed[i] = true;
                    self.matched += 1;
                    let e = &truth.events[i];
                    self.delays
                        .push((r.detected_unix_seconds - e.at) as f64 / 3600.0);
                    self.culprit_of(truth, &d.builds, e, r, d.solved.get(&r.id));
                }
                Some(_) => *self.false_positives.entry("duplicate").or_default() += 1,
                None => *self.false_positives.entry(fp_kind(truth, r)).or_default() += 1,
            }
        }
        for (i, e) in truth.events.iter().enumerate() {
            if e.regression {
                let c = self.recall.entry(size_key(e.delta_share)).or_default();
                c.0 += usize::from(claimed[i]);
                c.1 += 1;
            }
            if e.kind == Kind::Improvement {
                self.improvements.1 += 1;
                let tracked = answer.regressions.iter().any(|r| {
                    r.status == "improvement"
                        && r.service == e.service
                        && r.function == e.function
                        && near(e, r.started_unix_seconds)
                });
                self.improvements.0 += usize::from(tracked);
            }
        }
    }

    fn culprit_of(
        &mut self,
        truth: &Truth,
        builds: &BTreeMap<String, String>,
        e: &Event,
        r: &Regression,
        solved: Option<&Option<String>>,
    ) {
        match &e.change_id {
            Some(id) => {
                // The same change: its id, or a deploy of the same build under the collector's id.
                let build = truth
                    .changes
                    .iter()
                    .find(|c| &c.id == id)
                    .map_or("", |c| c.build_id.as_str());
                let same = |cause: &str| {
                    cause == id
                        || (!build.is_empty()
                            && builds.get(cause).is_some_and(|b| b.as_str() == build))
                };
                let rank = r.causes.iter().position(|c| same(&c.change_id));
                self.culprit.0 += usize::from(rank == Some(0));
                self.culprit.1 += usize::from(rank.is_some_and(|k| k < 3));
                self.culprit.2 += 1;
                self.solver.0 += usize::from(solved.and_then(Option::as_deref).is_some_and(same));
                self.solver.1 += 1;
            }
            None => {
                self.no_change += 1;
                self.blamed_without_change += usize::from(!r.causes.is_empty());
            }
        }
    }
}

/// Why an unmatched report is wrong, from what it sits on.
fn fp_kind(truth: &Truth, r: &Regression) -> &'static str {
    let on = |e: &Event| e.service == r.service && near(e, r.started_unix_seconds);
    let related = |a: &str, b: &str| truth.calls(&r.service, a, b) || truth.calls(&r.service, b, a);
    for e in truth.events.iter().filter(|e| on(e)) {
        match e.kind {
            Kind::Step | Kind::Creep if truth.calls(&r.service, &r.function, &e.function) => {
                return "caller";
            }
            Kind::Step | Kind::Creep if truth.calls(&r.service, &e.function, &r.function) => {
                return "leaf";
            }
            Kind::Spike if related(&r.function, &e.function) => return "spike",
            Kind::Shift
                if related(&r.function, &e.function)
                    || e.from_function
                        .as_deref()
                        .is_some_and(|f| related(&r.function, f)) =>
            {
                return "shift";
            }
            Kind::Improvement if related(&r.function, &e.function) => return "improvement",
            _ => {}
        }
    }
    let seasonal = truth
        .services
        .iter()
        .find(|s| s.name == r.service)
        .is_some_and(|s| s.seasonal.iter().any(|f| related(&r.function, f)));
    if seasonal { "seasonality" } else { "noise" }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        f64::NAN
    } else {
        a as f64 / b as f64
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub fn run(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let o = options();
    anyhow::ensure!(
        !o.seeds.is_empty(),
        "--detect-seeds: give at least one seed"
    );
    let mut score = Score::default();
    let mut per_seed = Vec::new();
    // Pinned to the last UTC midnight: the simulated daily cycle follows the time of day, so
    // a seed streamed at another hour would be another fleet and score differently.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let quality = fleet_sim::Args {
        days: o.days,
        end: Some(now - now.rem_euclid(86_400)),
        ..args(0, o.services, o.functions)
    };
    for &seed in &o.seeds {
        let a = fleet_sim::Args {
            seed,
            ..quality.clone()
        };
        let d = detect(&a, o.reuse.as_deref())?;
        if let Some(dir) = &o.dump {
            dump(dir, &d)?;
        }
        let mut one = Score::default();
        one.add(&d);
        per_seed.push((seed, one));
        score.add(&d);
    }
    report(rows, &score, &quality, &o.seeds);
    for (seed, s) in &per_seed {
        rows.push(seed_row(*seed, s));
    }
    // The speed run takes minutes and gigabytes: what was scored is shown before it starts.
    eprint!("{}", super::table(rows));
    if o.no_speed {
        return Ok(());
    }
    // Speed: one seed at 10,000 (service, function) series.
    let mut a = args(o.seeds[0], SPEED_SERVICES, SPEED_FUNCTIONS);
    a.end = quality.end;
    // The pass is timed whatever it takes: the collector's default 60 s request timeout
    // would turn a slow pass into an error instead of a figure.
    a.collector_args = vec!["--request-timeout".into(), "30m".into()];
    let reuse = o.reuse.as_ref().map(|r| r.join("speed"));
    let Detected {
        answer,
        seconds,
        again,
        ..
    } = detect(&a, reuse.as_deref())?;
    rows.push(row(
        format!(
            "full detection pass, {SPEED_SERVICES} x {SPEED_FUNCTIONS} functions (cpu + energy), 14 d at 5 min, SQLite"
        ),
        format!(
            "{seconds:.2} s first (after restart), {again:.2} s again ({} series examined)",
            answer.series
        ),
        "< 10 s",
        Some(seconds < GOAL_PASS_SECONDS),
    ));
    Ok(())
}

/// Writes the truth and the answer of one seed as JSON, to look at misses and false positives.
fn dump(dir: &std::path::Path, d: &Detected) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating --detect-dump {}", dir.display()))?;
    let seed = d.truth.seed;
    for (name, json) in [
        ("truth", serde_json::to_string(&d.truth)?),
        ("answer", serde_json::to_string(&d.answer)?),
    ] {
        let p = dir.join(format!("seed-{seed}-{name}.json"));
        std::fs::write(&p, json).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// Recall of the regressions of at least 0.05% of a service: (found, injected).
fn big_recall(s: &Score) -> (usize, usize) {
    s.recall
        .iter()
        .filter(|(size, _)| **size as f64 / 1e4 >= 0.05)
        .fold((0, 0), |(f, a), (_, (found, all))| (f + found, a + all))
}

/// One seed's headline figures on one line.
fn seed_row(seed: u64, s: &Score) -> Row {
    let (bf, ba) = big_recall(s);
    let fp: usize = s.false_positives.values().sum();
    let mut pass = s.pass_seconds.clone();
    row(
        format!("  seed {seed}"),
        format!(
            "precision {:.3} ({} of {}), recall >= 0.05% {:.2} ({bf} of {ba}), top-3 {} of {}, {fp} FPs, pass {:.1} s",
            ratio(s.matched, s.reported),
            s.matched,
            s.reported,
            ratio(bf, ba),
            s.culprit.1,
            s.culprit.2,
            percentile(&mut pass, 0.5)
        ),
        "",
        None,
    )
}

fn report(rows: &mut Vec<Row>, s: &Score, a: &fleet_sim::Args, seeds: &[u64]) {
    rows.push(row(
        "fleet",
        format!(
            "seeds {seeds:?}, {} services x {} functions each, {} days at {} s, {} hosts per service at 19 Hz",
            a.services, a.functions, a.days, a.step, a.hosts
        ),
        "",
        None,
    ));
    let fp: usize = s.false_positives.values().sum();
    let precision = ratio(s.matched, s.reported);
    rows.push(row(
        "precision (open regressions that are injected ones)",
        format!("{precision:.3} ({} of {} reported)", s.matched, s.reported),
        ">= 0.95",
        Some(precision >= GOAL_PRECISION),
    ));
    for (&size, &(found, all)) in &s.recall {
        rows.push(row(
            format!("  recall at {}% of a service", size as f64 / 1e4),
            format!("{:.2} ({found} of {all})", ratio(found, all)),
            "",
            None,
        ));
    }
    let (big_found, big_all) = big_recall(s);
    let recall = ratio(big_found, big_all);
    rows.push(row(
        "recall, regressions >= 0.05% of a service",
        format!("{recall:.3} ({big_found} of {big_all})"),
        ">= 0.9",
        Some(recall >= GOAL_RECALL),
    ));
    let mut delays = s.delays.clone();
    rows.push(row(
        "detection delay (detected - injected), median / p90",
        format!(
            "{:.1} h / {:.1} h",
            percentile(&mut delays, 0.5),
            percentile(&mut delays, 0.9)
        ),
        "",
        None,
    ));
    let (top1, top3, of) = s.culprit;
    let t3 = ratio(top3, of);
    rows.push(row(
        "culprit top-1 / top-3 (found regressions with a change)",
        format!("{:.2} / {t3:.2} ({top1}, {top3} of {of})", ratio(top1, of)),
        "top-3 >= 90%",
        Some(t3 >= GOAL_TOP3),
    ));
    rows.push(row(
        "solver report names the injected change (found regressions with a change)",
        format!(
            "{:.2} ({} of {})",
            ratio(s.solver.0, s.solver.1),
            s.solver.0,
            s.solver.1
        ),
        "",
        None,
    ));
    rows.push(row(
        "  culprit named where no change was made",
        format!("{} of {}", s.blamed_without_change, s.no_change),
        "",
        None,
    ));
    let kinds = [
        "noise",
        "caller",
        "leaf",
        "spike",
        "shift",
        "seasonality",
        "improvement",
        "duplicate",
    ];
    rows.push(row(
        "false positives by kind",
        format!(
            "{fp} total: {}",
            kinds
                .iter()
                .map(|k| format!("{k} {}", s.false_positives.get(k).copied().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "",
        None,
    ));
    rows.push(row(
        "improvements tracked (status improvement)",
        format!("{} of {}", s.improvements.0, s.improvements.1),
        "",
        None,
    ));
    rows.push(row(
        "funnel: removed / candidates in, per stage",
        s.funnel
            .iter()
            .map(|(k, (i, r))| format!("{k} {r}/{i}"))
            .collect::<Vec<_>>()
            .join(", "),
        "",
        None,
    ));
    let mut pass = s.pass_seconds.clone();
    rows.push(row(
        "detection pass per seed (ListRegressions, first call), median",
        format!(
            "{:.2} s ({} series examined over all seeds)",
            percentile(&mut pass, 0.5),
            s.series
        ),
        "",
        None,
    ));
    for n in &s.notes {
        rows.push(row("  note", n.clone(), "", None));
    }
}
