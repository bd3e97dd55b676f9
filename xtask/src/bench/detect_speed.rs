//! Speed of a full detection pass from a real SQLite store: 20 services x 500 functions
//! (10,000 function series of samples and as many of energy; the 10,000 series),
//! 14 days at a 5-minute step (4,032 points each), against the goal of 10 s.
//!
//! Path: the history is written with `SqliteStore::add_detection_rows`, the function the
//! roll-up calls with every group of minute rows to add them to detection's five-minute rows
//! (one minute row per function per five minutes is given). Minute, hour and stack rows are
//! not written: 14 days of them for 10,000 functions are about 200 million rows, which the
//! pass does not read (its series come from the five-minute rows). Without stack rows the
//! stack-based stages of the funnel (dedup by stacks, evidence) have nothing to read. The pass
//! is `Detector::refresh` as `wattson-collector serve` runs it (deploys, every service's
//! series, the funnel, the cache), timed once on a store just written (warm page cache).
//!
//! Data: a daily cycle of 20% around 100,000 samples per bucket per service, functions with
//! Zipf shares of it, 2% noise, and one step regression per service (a function's share grows
//! by half two days before the end), so the funnel has real candidates to judge.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use wattson_collector::attribute::FleetConfig;
use wattson_collector::detect::DetectConfig;
use wattson_collector::detection::Detector;
use wattson_collector::store::rollup::RES_MINUTE;
use wattson_collector::store::sqlite::SqliteStore;
use wattson_collector::store::{Kind, Of, Row, Store, Totals, Window};
use wattson_proto::v1::ListRegressionsRequest;

use super::Row as BenchRow;

const SERVICES: usize = 20;
const FUNCTIONS: usize = 500;
const DAYS: i64 = 14;
const STEP: i64 = 300;
const GOAL_SECONDS: f64 = 10.0;
/// 2026-11-02 00:00:00 UTC: the history starts here.
const T0: i64 = 1_793_577_600;

fn row(metric: impl Into<String>, value: String, goal: &str, met: Option<bool>) -> BenchRow {
    BenchRow {
        area: "detect-speed",
        metric: metric.into(),
        value,
        goal: goal.into(),
        met,
    }
}

/// splitmix64: deterministic noise without a dependency.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    }

    /// About normal, mean 1, standard deviation `sd`.
    fn around_one(&mut self, sd: f64) -> f64 {
        let u = self.next() + self.next() + self.next() - 1.5;
        1.0 + u * 2.0 * sd
    }
}

fn minute_row(kind: Kind, minute: i64, service: &str, key: &str, samples: u64) -> Row {
    let uj = samples * 1_000;
    Row {
        kind,
        res: RES_MINUTE,
        minute,
        service: service.to_string(),
        key: key.to_string(),
        totals: Totals {
            samples_self: samples,
            samples_incl: samples,
            uj_self: uj,
            uj_incl: uj,
            ..Totals::default()
        },
    }
}

/// One service's day of rows: its total (one host) and every function's inclusive samples.
fn day_rows(service: usize, day: i64, names: &[String], noise: &mut Noise) -> Vec<Row> {
    let svc = format!("svc-{service:02}");
    let zipf: f64 = (1..=FUNCTIONS).map(|i| 1.0 / i as f64).sum();
    let regressed = 3 + service;
    let change = T0 + (DAYS - 2) * 86_400 + 3600 * service as i64;
    let mut rows = Vec::with_capacity(FUNCTIONS * 288 + 288);
    for b in 0..86_400 / STEP {
        let at = T0 + day * 86_400 + b * STEP;
        let phase = (at % 86_400) as f64 / 86_400.0 * std::f64::consts::TAU;
        let total = 100_000.0 * (1.0 + 0.2 * phase.sin()) * noise.around_one(0.02);
        rows.push(minute_row(Kind::Service, at, &svc, "host-1", total as u64));
        for (i, name) in names.iter().enumerate() {
            let mut share = 0.9 / zipf / (i + 1) as f64;
            if i == 0 {
                share = 1.0;
            } else if i == regressed && at >= change {
                share *= 1.5;
            }
            let n = (total * share * noise.around_one(0.02)).max(0.0) as u64;
            if n > 0 {
                rows.push(minute_row(Kind::Function, at, &svc, name, n));
            }
        }
    }
    rows
}

pub fn run(rows: &mut Vec<BenchRow>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("temporary directory for the bench store")?;
    let path = dir.path().join("detect-speed.db");
    let store = Arc::new(SqliteStore::open(&path)?);
    let names: Vec<String> = (0..FUNCTIONS)
        .map(|i| match i {
            0 => "main".to_string(),
            i => format!("app::module_{:02}::function_{i:03}", i % 37),
        })
        .collect();
    let mut noise = Noise(42);
    let written = Instant::now();
    let mut minute_rows = 0usize;
    for day in 0..DAYS {
        for service in 0..SERVICES {
            let day = day_rows(service, day, &names, &mut noise);
            minute_rows += day.len();
            store.add_detection_rows(&day)?;
        }
    }
    let write_s = written.elapsed().as_secs_f64();
    let now = T0 + DAYS * 86_400 - 1;
    eprintln!(
        "bench: detect-speed: wrote {minute_rows} rows of {SERVICES} services x {FUNCTIONS} \
         functions in {write_s:.1} s"
    );
    // The reads alone (both of every service), then the whole pass.
    let window = Window {
        from: now + 1 - DAYS * 86_400,
        to: now + 1,
    };
    let read = Instant::now();
    let mut points = 0usize;
    for service in store.known_services()? {
        for of in [Of::Totals, Of::Functions] {
            let b = store.buckets(of, window, &service, STEP)?;
            points += b.series.len() * b.len;
        }
    }
    let read_s = read.elapsed().as_secs_f64();
    let shared: Arc<dyn Store> = store.clone();
    let detector = Detector::new(shared, FleetConfig::default(), DetectConfig::default())?;
    let pass = Instant::now();
    detector.refresh(now)?;
    let pass_s = pass.elapsed().as_secs_f64();
    let answer = detector.regressions_at(&ListRegressionsRequest::default(), now)?;
    let functions = SERVICES * FUNCTIONS;
    rows.push(row(
        format!(
            "history written via add_detection_rows ({minute_rows} rows, {} MB)",
            std::fs::metadata(&path).map_or(0, |m| m.len()) / 1_000_000
        ),
        format!("{write_s:.1} s"),
        "",
        None,
    ));
    rows.push(row(
        format!("read every series of every service ({points} points)"),
        format!("{read_s:.2} s"),
        "",
        None,
    ));
    rows.push(row(
        format!(
            "full pass, SQLite, {functions} functions x 14 d x 5 min ({} series)",
            answer.series
        ),
        format!("{pass_s:.2} s"),
        "< 10 s",
        Some(pass_s < GOAL_SECONDS),
    ));
    let open = answer.regressions.len();
    rows.push(row(
        format!("open regressions found (one injected per service, {SERVICES})"),
        open.to_string(),
        "",
        None,
    ));
    Ok(())
}
