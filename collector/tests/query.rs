//! Queries end to end over real gRPC on 127.0.0.1:0: batches go in through the ingest service
//! into SQLite, answers come out of the query service and the `wattson` CLI (tables, `--json`,
//! flame graph SVG). Energy here is synthetic (no RAPL on this host): one host reports measured
//! joules, another model estimates, and the figures must keep them apart.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::{Collector, wattson};
use tonic::Code;
use wattson_collector::attribute::FleetConfig;
use wattson_collector::server::ServeConfig;
use wattson_collector::store::synthetic::BatchBuilder;
use wattson_collector::store::{self, Store};
use wattson_proto::v1::query_service_client::QueryServiceClient;
use wattson_proto::v1::{
    PowerRequest, RankBy, SeriesRequest, StacksRequest, TimeWindow, TopRequest,
};

/// 2026-11-02 00:00:00 UTC.
const T0: i64 = 1_793_577_600;

/// A collector with `fleet` as its fleet configuration.
async fn start(fleet: FleetConfig) -> Collector {
    Collector::serve(ServeConfig {
        fleet,
        ..ServeConfig::default()
    })
    .await
}

fn window(from: i64, to: i64) -> Option<TimeWindow> {
    Some(TimeWindow {
        from_unix_seconds: from,
        to_unix_seconds: to,
    })
}

/// Ten minutes of a measured host and an estimated host running `api`, plus a `db` host.
fn batches() -> Vec<wattson_proto::v1::Batch> {
    let mut out = Vec::new();
    for m in 0..10i64 {
        let at = T0 + m * 60;
        for (host, est) in [("m1", false), ("vm1", true)] {
            out.push(
                BatchBuilder::new(host, m as u64 + 1)
                    .interval(
                        at,
                        60,
                        est,
                        6_000_000.0,
                        &[
                            // 6 J per minute in hash = 0.1 W; 3 J in parse = 0.05 W.
                            ("api", "b1", "main;serve;hash", 60, 6_000_000.0),
                            ("api", "b1", "main;serve;parse", 30, 3_000_000.0),
                        ],
                    )
                    .build(),
            );
        }
        out.push(
            BatchBuilder::new("d1", m as u64 + 1)
                .interval(
                    at,
                    60,
                    false,
                    0.0,
                    &[("db", "b9", "main;query", 10, 600_000.0)],
                )
                .build(),
        );
    }
    out
}

/// Regression: `--token` guarded ingest only; the query service answered anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_need_the_collectors_token() {
    let col = Collector::with_token(Some("s3cret")).await;
    col.ingest_as(Some("s3cret"), batches()).await;
    let addr = col.addr.clone();
    let (none, wrong, right) = tokio::task::spawn_blocking(move || {
        let run = |token: &[&str]| {
            let o = Command::new(env!("CARGO_BIN_EXE_wattson"))
                .env_remove("WATTSON_TOKEN")
                .args(["--collector", &addr])
                .args(token)
                .args([
                    "power",
                    "--from",
                    &T0.to_string(),
                    "--to",
                    &(T0 + 600).to_string(),
                ])
                .output()
                .unwrap();
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).to_string(),
            )
        };
        (
            run(&[]),
            run(&["--token", "wrong"]),
            run(&["--token", "s3cret"]),
        )
    })
    .await
    .unwrap();
    assert!(
        !none.0 && none.1.contains("missing `authorization"),
        "{none:?}"
    );
    assert!(!wrong.0 && wrong.1.contains("does not match"), "{wrong:?}");
    assert!(right.0, "{right:?}");
    col.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_series_power_over_grpc() {
    let fleet = FleetConfig::default()
        .with_fleet_hosts("api", 20)
        .with_pue(1.5);
    let col = start(fleet).await;
    col.ingest(batches()).await;
    let mut q = QueryServiceClient::connect(col.addr.clone()).await.unwrap();
    let w = window(T0, T0 + 600);

    let top = q
        .top(TopRequest {
            window: w,
            service: "api".into(),
            rank: RankBy::EnergySelf as i32,
            limit: 5,
        })
        .await
        .unwrap()
        .into_inner();
    let hash = &top.rows[0];
    assert_eq!(
        (hash.service.as_str(), hash.function.as_str()),
        ("api", "hash")
    );
    let p = hash.self_power.unwrap();
    // Two hosts x 60 J over 600 s = 0.2 W, half measured and half estimated.
    assert!((p.watts - 0.2).abs() < 1e-9, "{p:?}");
    assert!(p.estimated);
    assert!((p.joules_measured - 60.0).abs() < 1e-9 && (p.joules_estimated - 60.0).abs() < 1e-9);
    // 2 of 20 api hosts profiled: fleet 2 W, facility (PUE 1.5) 3 W.
    assert!((p.fleet_watts - 2.0).abs() < 1e-9 && (p.facility_watts - 3.0).abs() < 1e-9);
    assert!((hash.cpu_share_self - 60.0 / 90.0).abs() < 1e-9);
    assert_eq!(top.rows[1].function, "parse");

    let series = q
        .series(SeriesRequest {
            window: w,
            service: "api".into(),
            function: "serve".into(),
            step_seconds: 300,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(series.points.len(), 2);
    let inc = series.points[0].inclusive_power.unwrap();
    // serve inclusive: 2 hosts x 9 J per minute = 18 J/60 s = 0.3 W in every bucket.
    assert!((inc.watts - 0.3).abs() < 1e-9, "{inc:?}");
    assert_eq!(series.points[0].samples_self, 0);

    let power = q
        .power(PowerRequest { window: w })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(power.hosts_reporting, 3);
    let api = power.services.iter().find(|s| s.service == "api").unwrap();
    assert_eq!(
        (api.hosts_reporting, api.fleet_hosts, api.fleet_configured),
        (2, 20, true)
    );
    let db = power.services.iter().find(|s| s.service == "db").unwrap();
    let dbp = db.power.unwrap();
    assert!(!dbp.estimated && (dbp.watts - 0.01).abs() < 1e-9, "{dbp:?}");
    assert!(power.idle_estimated && (power.idle_watts - 0.2).abs() < 1e-9);

    // Bad queries are errors that say what is wrong.
    let e = q
        .top(TopRequest {
            window: w,
            service: "nope".into(),
            ..TopRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("api, db"), "{}", e.message());
    let e = q
        .top(TopRequest {
            window: window(T0 + 600, T0),
            ..TopRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("reversed"), "{}", e.message());
    let e = q
        .stacks(StacksRequest {
            window: window(T0, T0),
            service: String::new(),
            build_id: String::new(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("empty"), "{}", e.message());
    let e = q.power(PowerRequest { window: None }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = q
        .series(SeriesRequest {
            window: w,
            service: "api".into(),
            function: "nonexistent".into(),
            step_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    col.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wattson_cli_tables_json_and_flame() {
    let col = start(FleetConfig::default()).await;
    col.ingest(batches()).await;
    let addr = col.addr.clone();
    let out = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| wattson(&addr, args);
        let (from, to) = (T0.to_string(), (T0 + 600).to_string());
        let win = ["--from", from.as_str(), "--to", to.as_str()];
        let top = run(&[&["top"][..], &win].concat());
        let json = run(&[&["--json", "top", "--limit", "2"][..], &win].concat());
        let svg = dir.path().join("f.svg");
        let flame = run(&[&["flame", "--output", svg.to_str().unwrap()][..], &win].concat());
        let svg_text = std::fs::read_to_string(&svg).unwrap_or_default();
        let pb = dir.path().join("p.pb.gz");
        let pprof = run(&[&["profile", "--output", pb.to_str().unwrap()][..], &win].concat());
        let pprof_bytes = std::fs::read(&pb).unwrap_or_default();
        let folded = run(&[
            &["profile", "--format", "folded", "--output", "-"][..],
            &win,
        ]
        .concat());
        let bad = run(&[&["top", "--service", "nope"][..], &win].concat());
        let power = run(&[&["power"][..], &win].concat());
        (
            top,
            json,
            flame,
            svg_text,
            bad,
            power,
            (pprof, pprof_bytes, folded),
        )
    })
    .await
    .unwrap();
    let (top, json, flame, svg, bad, power, (pprof, pprof_bytes, folded)) = out;
    assert!(pprof.0, "{}", pprof.2);
    assert_eq!(&pprof_bytes[..2], &[0x1f, 0x8b], "pprof output is gzipped");
    // 10 minutes x 2 api hosts x 60 samples of hash, rooted at the service.
    assert!(
        folded.1.contains("api;main;serve;hash 1200\n"),
        "{}",
        folded.1
    );
    assert!(top.0, "{}", top.2);
    let first = top.1.lines().nth(2).unwrap();
    assert!(
        first.starts_with("api") && first.contains("hash"),
        "{}",
        top.1
    );
    assert!(first.contains("W est"), "estimated label missing: {first}");
    let v: serde_json::Value = serde_json::from_str(&json.1).unwrap();
    assert_eq!(v["rows"].as_array().unwrap().len(), 2);
    assert_eq!(v["rows"][0]["function"], "hash");
    assert_eq!(v["rows"][0]["self"]["estimated"], true);
    assert!(flame.0, "{}", flame.2);
    assert!(svg.contains("<svg") && svg.contains("hash") && svg.contains("estimated"));
    assert!(!bad.0 && bad.2.contains("unknown service"), "{}", bad.2);
    assert!(power.0 && power.1.contains("TOTAL"), "{}", power.1);
    col.stop().await;
}

/// A host that reported for the last 10 minutes of an hour is averaged over those 10 minutes,
/// not diluted over the hour; a host reporting the whole hour adds its own average.
#[test]
fn late_joining_host_is_not_diluted_over_the_window() {
    use wattson_collector::query::QueryEngine;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let store: Arc<dyn Store> = Arc::from(store::open(&url).unwrap());
    let mut seq = 0;
    for m in 0..60i64 {
        // Whole hour: 60 J per minute = 1 W.
        seq += 1;
        let b = BatchBuilder::new("steady", seq)
            .interval(
                T0 + m * 60,
                60,
                false,
                0.0,
                &[("api", "", "main;hash", 6, 60e6)],
            )
            .build();
        store.ingest(&b).unwrap();
        if m >= 50 {
            // Last 10 minutes only: 120 J per minute = 2 W while it reported.
            let b = BatchBuilder::new("late", m as u64)
                .interval(
                    T0 + m * 60,
                    60,
                    false,
                    0.0,
                    &[("api", "", "main;hash", 6, 120e6)],
                )
                .build();
            store.ingest(&b).unwrap();
        }
    }
    let q = QueryEngine::new(store, FleetConfig::default());
    let p = q
        .power(&PowerRequest {
            window: window(T0, T0 + 3600),
        })
        .unwrap();
    let api = p.services[0].power.unwrap();
    assert!((api.watts - 3.0).abs() < 1e-9, "{api:?}");
    let top = q
        .top(&TopRequest {
            window: window(T0, T0 + 3600),
            ..TopRequest::default()
        })
        .unwrap();
    let hash = top.rows[0].self_power.unwrap();
    assert!((hash.watts - 3.0).abs() < 1e-9, "{hash:?}");
}

/// Regression: `diff` divided a function's joules by the window length while `top` divides
/// each host's joules by the time that host reported, so a host that joined late showed a
/// tenth of its `top` watts in `diff`. Both now give the window the same watts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_watts_match_top_for_a_host_that_reported_part_of_the_window() {
    let col = start(FleetConfig::default()).await;
    // One minute of a ten-minute window: 6 J in hash = 0.1 W while the host reported.
    let batch = BatchBuilder::new("late", 1)
        .interval(
            T0 + 540,
            60,
            false,
            0.0,
            &[("api", "b1", "main;serve;hash", 60, 6_000_000.0)],
        )
        .build();
    col.ingest([batch]).await;
    let addr = col.addr.clone();
    let (top, diff) = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| {
            let o = Command::new(env!("CARGO_BIN_EXE_wattson"))
                .args(["--collector", &addr, "--json"])
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
        };
        let (from, to) = (T0.to_string(), (T0 + 600).to_string());
        let baseline = format!("{}..{}", T0 - 600, T0);
        let top = run(&["top", "--from", &from, "--to", &to]);
        let diff = run(&[
            "diff",
            "--baseline",
            &baseline,
            "--from",
            &from,
            "--to",
            &to,
        ]);
        (top, diff)
    })
    .await
    .unwrap();
    let top_w = top["rows"][0]["self"]["watts"].as_f64().unwrap();
    assert_eq!(top["rows"][0]["function"], "hash", "{top:#}");
    assert!((top_w - 0.1).abs() < 1e-9, "top: {top_w} W\n{top:#}");
    let row = &diff["rows"][0];
    assert_eq!(row["function"], "hash", "{diff:#}");
    assert_eq!(row["baseline"].as_f64(), Some(0.0), "{diff:#}");
    let diff_w = row["window"].as_f64().unwrap();
    assert!(
        (diff_w - top_w).abs() < 1e-9,
        "diff says {diff_w} W, top says {top_w} W for the same window\n{diff:#}"
    );
    col.stop().await;
}

/// Regression: a Rust generic hundreds of characters long widened every row of `wattson top`
/// past the terminal. Tables now fit `--width` (or `$COLUMNS`), eliding the middle of names;
/// `--json` keeps them whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wattson_tables_fit_the_width_and_json_keeps_long_names() {
    let long = format!(
        "<hashbrown::map::HashMap<K,V,S> as core::iter::traits::collect::Extend<(K,V)>>::extend\
         ::<{}>::fold_impl",
        "alloc::vec::Vec<alloc::string::String>, ".repeat(8)
    );
    let col = start(FleetConfig::default()).await;
    let stack = format!("main;serve;{long}");
    let batch = BatchBuilder::new("h1", 1)
        .interval(
            T0,
            60,
            false,
            0.0,
            &[("api", "b1", stack.as_str(), 60, 6_000_000.0)],
        )
        .build();
    col.ingest([batch]).await;
    let addr = col.addr.clone();
    let (from, to) = (T0.to_string(), (T0 + 600).to_string());
    let run = move |args: &[&str], columns: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wattson"));
        cmd.args(["--collector", &addr])
            .args(args)
            .args(["--from", &from, "--to", &to])
            .env_remove("COLUMNS");
        if let Some(c) = columns {
            cmd.env("COLUMNS", c);
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let (by_flag, by_env, unlimited, json) = tokio::task::spawn_blocking(move || {
        (
            run(&["top", "--width", "110"], Some("300")),
            run(&["top"], Some("120")),
            run(&["top", "--width", "0"], None),
            run(&["--json", "top"], Some("120")),
        )
    })
    .await
    .unwrap();
    for (width, table) in [(110, &by_flag), (120, &by_env)] {
        for l in table.lines() {
            assert!(l.chars().count() <= width, "{width}: {l:?}\n{table}");
        }
        let row = table.lines().find(|l| l.starts_with("api")).unwrap();
        assert!(
            row.contains("<hashbrown::") && row.contains("…") && row.contains("::fold_impl"),
            "{row}"
        );
    }
    assert!(unlimited.contains(&long), "{unlimited}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let names: Vec<&str> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["function"].as_str().unwrap())
        .collect();
    assert!(names.contains(&long.as_str()), "{names:?}");
    col.stop().await;
}

/// Regression: `power` listed services by name and `top` ranked by joules, so the table's
/// watts were out of order whenever a service's hosts reported for part of the window. Both
/// now rank by watts, biggest first.
#[test]
fn power_and_top_rank_by_watts_not_by_name_or_joules() {
    use wattson_collector::query::QueryEngine;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let store: Arc<dyn Store> = Arc::from(store::open(&url).unwrap());
    let mut seq = 0;
    let mut minute = |host: &str, m: i64, service: &str, stack: &str, uj_per_minute: f64| {
        seq += 1;
        let b = BatchBuilder::new(host, seq)
            .interval(
                T0 + m * 60,
                60,
                false,
                0.0,
                &[(service, "", stack, 6, uj_per_minute)],
            )
            .build();
        store.ingest(&b).unwrap();
    };
    for m in 0..60i64 {
        // A whole hour each: alpha 1 W, zulu 5 W, mid 3 W.
        minute("a1", m, "alpha", "main;alpha_work", 60e6);
        minute("z1", m, "zulu", "main;zulu_work", 300e6);
        minute("m1", m, "mid", "main;mid_work", 180e6);
        if m >= 50 {
            // The last 10 minutes only, at 4 W: fewer joules than zulu_work, more than
            // alpha_work; 4 W while it reported.
            minute("late", m, "batch", "main;burst", 240e6);
        }
    }
    let q = QueryEngine::new(store, FleetConfig::default());
    let w = window(T0, T0 + 3600);
    let p = q.power(&PowerRequest { window: w }).unwrap();
    let order: Vec<&str> = p.services.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(order, ["zulu", "batch", "mid", "alpha"], "{p:#?}");
    let watts: Vec<f64> = p.services.iter().map(|s| s.power.unwrap().watts).collect();
    assert!(watts.windows(2).all(|w| w[0] >= w[1]), "{watts:?}");

    let top = |rank: RankBy, limit: u32| {
        let r = q
            .top(&TopRequest {
                window: w,
                rank: rank as i32,
                limit,
                ..TopRequest::default()
            })
            .unwrap();
        r.rows
            .iter()
            .map(|f| (f.function.clone(), f.self_power.unwrap().watts))
            .collect::<Vec<_>>()
    };
    let all = top(RankBy::EnergySelf, 10);
    let names: Vec<&str> = all.iter().map(|(f, _)| f.as_str()).collect();
    // (Then `main`, with no self energy, once per service.)
    assert_eq!(
        names[..4],
        ["zulu_work", "burst", "mid_work", "alpha_work"],
        "{all:?}"
    );
    assert!((all[1].1 - 4.0).abs() < 1e-9, "{all:?}");
    // Fewer rows than functions: burst has less energy than zulu_work and mid_work, so the
    // store's first two by joules leave it out; it still comes second by watts.
    let two = top(RankBy::EnergySelf, 2);
    assert_eq!(two[0].0, "zulu_work", "{two:?}");
    assert_eq!(two[1].0, "burst", "{two:?}");
    // Samples rank by samples: burst has the fewest leaf samples (10 minutes of 6).
    let by_samples = top(RankBy::SamplesSelf, 10);
    assert_eq!(by_samples[3].0, "burst", "{by_samples:?}");
}

/// A store that counts the window reads it forwards (the cost of a query).
struct Counting {
    inner: Box<dyn Store>,
    reads: std::sync::Mutex<std::collections::BTreeMap<&'static str, u32>>,
}

impl Counting {
    fn count(&self, what: &'static str) {
        *self.reads.lock().unwrap().entry(what).or_default() += 1;
    }

    /// Reads since the last call, by kind.
    fn take(&self) -> std::collections::BTreeMap<&'static str, u32> {
        std::mem::take(&mut *self.reads.lock().unwrap())
    }
}

impl Store for Counting {
    fn ingest(
        &self,
        batch: &wattson_proto::v1::Batch,
    ) -> Result<store::Ingested, store::StoreError> {
        self.inner.ingest(batch)
    }
    fn write(&self, rollup: &store::Rollup) -> Result<store::Ingested, store::StoreError> {
        self.inner.write(rollup)
    }
    fn top(&self, q: &store::TopQuery) -> Result<Vec<store::Keyed>, store::StoreError> {
        self.count("top");
        self.inner.top(q)
    }
    fn series(
        &self,
        w: store::Window,
        service: &str,
        function: &str,
        step: i64,
    ) -> Result<Vec<store::Point>, store::StoreError> {
        self.count("series");
        self.inner.series(w, service, function, step)
    }
    fn services(&self, w: store::Window) -> Result<Vec<store::Keyed>, store::StoreError> {
        self.count("services");
        self.inner.services(w)
    }
    fn service_hosts(&self, w: store::Window) -> Result<Vec<store::Keyed>, store::StoreError> {
        self.count("service_hosts");
        self.inner.service_hosts(w)
    }
    fn hosts(&self, w: store::Window) -> Result<Vec<store::Keyed>, store::StoreError> {
        self.count("hosts");
        self.inner.hosts(w)
    }
    fn builds(
        &self,
        w: store::Window,
        service: Option<&str>,
    ) -> Result<Vec<store::Keyed>, store::StoreError> {
        self.count("builds");
        self.inner.builds(w, service)
    }
    fn stack_rows(
        &self,
        w: store::Window,
        service: Option<&str>,
    ) -> Result<Vec<store::Keyed>, store::StoreError> {
        self.count("stacks");
        self.inner.stack_rows(w, service)
    }
    fn known_services(&self) -> Result<Vec<String>, store::StoreError> {
        self.inner.known_services()
    }
    fn buckets(
        &self,
        of: store::Of,
        w: store::Window,
        service: &str,
        step: i64,
    ) -> Result<store::Buckets, store::StoreError> {
        self.count("buckets");
        self.inner.buckets(of, w, service, step)
    }
    fn first_builds(&self, w: store::Window) -> Result<Vec<store::FirstSeen>, store::StoreError> {
        self.inner.first_builds(w)
    }
    fn put_change(
        &self,
        c: &wattson_proto::v1::Change,
        replaces: Option<&str>,
    ) -> Result<(), store::StoreError> {
        self.inner.put_change(c, replaces)
    }
    fn changes(
        &self,
        w: store::Window,
        service: Option<&str>,
    ) -> Result<Vec<wattson_proto::v1::Change>, store::StoreError> {
        self.inner.changes(w, service)
    }
    fn retain(
        &self,
        policy: &store::Retention,
        now: i64,
    ) -> Result<store::RetentionReport, store::StoreError> {
        self.inner.retain(policy, now)
    }
    fn stats(&self) -> Result<store::StoreStats, store::StoreError> {
        self.inner.stats()
    }
}

/// Regression: `power` read the per-host rows twice plus per-service rows it could sum from
/// the per-(service, host) rows it had already read (four window scans where two do), and
/// `series` read both coverage tables for a scale that is 1 unless a fleet size is configured.
/// Each window scan costs tens of ms over a day of a 1,000-host fleet.
#[test]
fn queries_read_only_what_they_attribute_with_once() {
    use std::collections::BTreeMap;
    use wattson_collector::query::QueryEngine;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let counting = Arc::new(Counting {
        inner: store::open(&url).unwrap(),
        reads: Default::default(),
    });
    for b in batches() {
        counting.ingest(&b).unwrap();
    }
    let w = window(T0, T0 + 600);
    let reads = |pairs: &[(&'static str, u32)]| pairs.iter().copied().collect::<BTreeMap<_, _>>();
    for fleet in [
        FleetConfig::default(),
        FleetConfig::default().with_fleet_hosts("api", 20),
    ] {
        let configured = !fleet.fleet_hosts.is_empty();
        let q = QueryEngine::new(counting.clone(), fleet);
        let p = q.power(&PowerRequest { window: w }).unwrap();
        assert_eq!(p.services.len(), 2);
        assert_eq!(
            counting.take(),
            reads(&[("hosts", 1), ("service_hosts", 1)])
        );
        let top = q
            .top(&TopRequest {
                window: w,
                limit: 3,
                ..TopRequest::default()
            })
            .unwrap();
        assert_eq!(top.rows[0].function, "hash");
        assert_eq!(
            counting.take(),
            reads(&[("hosts", 1), ("service_hosts", 1), ("top", 1)])
        );
        let s = q
            .series(&SeriesRequest {
                window: w,
                service: "api".into(),
                function: "hash".into(),
                step_seconds: 300,
            })
            .unwrap();
        // 2 api hosts x 6 J a minute over 5-minute buckets = 0.2 W, x 10 with 20 fleet hosts.
        let fleet_w = s.points[0].self_power.unwrap().fleet_watts;
        let want = if configured { 2.0 } else { 0.2 };
        assert!((fleet_w - want).abs() < 1e-9, "{fleet_w} W");
        let mut want_reads = vec![("series", 1)];
        if configured {
            want_reads.push(("service_hosts", 1));
        }
        assert_eq!(counting.take(), reads(&want_reads));
    }
}

/// `wattson diff --build-a/--build-b`: build v1 runs on two hosts and v2 (a canary) on one;
/// v2 spends twice the share of its energy in `hash`. The diff compares shares, so `hash` tops
/// the table going from 25% to 50% whatever the host counts; the differential flame graph is
/// written; a build with no samples is an error naming the builds seen; `wattson builds` lists
/// both, most samples first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wattson_diff_compares_two_builds_by_share() {
    let col = start(FleetConfig::default()).await;
    for (host, build, hash, parse) in [
        ("old1", "v1", 10, 30),
        ("old2", "v1", 10, 30),
        ("canary", "v2", 10, 10),
    ] {
        let b = BatchBuilder::new(host, 1)
            .interval(
                T0,
                60,
                false,
                0.0,
                &[
                    ("api", build, "main;serve;hash", hash, hash as f64 * 1e5),
                    ("api", build, "main;serve;parse", parse, parse as f64 * 1e5),
                ],
            )
            .build();
        col.ingest([b]).await;
    }
    let addr = col.addr.clone();
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("d.svg");
    let svg_arg = svg.display().to_string();
    let (json, table, missing, builds) = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| wattson(&addr, args);
        let (from, to) = (T0.to_string(), (T0 + 60).to_string());
        let base = [
            "diff",
            "--build-a",
            "v1",
            "--build-b",
            "v2",
            "--from",
            &from,
            "--to",
            &to,
        ];
        let json = run(&[&["--json"][..], &base].concat());
        let table = run(&[&base[..], &["--output", &svg_arg]].concat());
        let mut missing_args = base.to_vec();
        missing_args[4] = "v3";
        let missing = run(&missing_args);
        let builds = run(&["--json", "builds", "--from", &from, "--to", &to]);
        (json, table, missing, builds)
    })
    .await
    .unwrap();
    assert!(json.0, "{}", json.2);
    let v: serde_json::Value = serde_json::from_str(&json.1).unwrap();
    assert_eq!(v["unit"], "% of build");
    let top = &v["rows"][0];
    assert_eq!(top["function"], "hash", "{v:#}");
    assert!(
        (top["build_a"].as_f64().unwrap() - 25.0).abs() < 1e-6,
        "{v:#}"
    );
    assert!(
        (top["build_b"].as_f64().unwrap() - 50.0).abs() < 1e-6,
        "{v:#}"
    );
    assert!(table.0, "{}", table.2);
    assert!(
        table.1.contains("BUILD_A") && table.1.contains("hash"),
        "{}",
        table.1
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("<svg") && svg.contains("hash"));
    assert!(!missing.0, "a build without samples must fail");
    assert!(
        missing.2.contains("no samples of build \"v3\"") && missing.2.contains("v1 (api)"),
        "{}",
        missing.2
    );
    assert!(builds.0, "{}", builds.2);
    let b: serde_json::Value = serde_json::from_str(&builds.1).unwrap();
    let listed: Vec<(&str, u64)> = b["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["build_id"].as_str().unwrap(),
                r["samples"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, [("v1", 80), ("v2", 20)], "{b:#}");
    col.stop().await;
}
