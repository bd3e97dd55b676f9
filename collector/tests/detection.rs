//! Detection end to end over real gRPC on 127.0.0.1:0 with a real SQLite store: change events
//! recorded, validated and listed; automatic deploys of newly ingested build ids and their
//! merging with a recorded change; ListRegressions over synthetic batches with an injected
//! step; the note an empty history gives; the bearer token; and the `wattson` CLI's
//! `changes` and `regressions`. Energy is synthetic (no RAPL on this host).

mod common;

use common::{Collector, bearer, wattson};
use tonic::Code;
use wattson_collector::store::synthetic::BatchBuilder;
use wattson_proto::v1::detection_service_client::DetectionServiceClient;
use wattson_proto::v1::{
    Batch, Change, ListChangesRequest, ListRegressionsRequest, RecordChangeRequest, TimeWindow,
};

fn now() -> i64 {
    wattson_collector::report::now()
}

/// One minute of `api` on host `h1` running `build`, at `at`.
fn minute(seq: u64, at: i64, build: &str) -> Batch {
    BatchBuilder::new("h1", seq)
        .interval(
            at,
            60,
            false,
            0.0,
            &[
                ("api", build, "main;serve;hash", 60, 6e6),
                ("api", build, "main;serve;parse", 30, 3e6),
            ],
        )
        .build()
}

fn change(id: &str, at: i64, title: &str) -> Change {
    Change {
        id: id.into(),
        service: "api".into(),
        at_unix_seconds: at,
        title: title.into(),
        kind: "config".into(),
        ..Change::default()
    }
}

async fn record(
    d: &mut DetectionServiceClient<tonic::transport::Channel>,
    change: Change,
) -> Result<tonic::Response<wattson_proto::v1::RecordChangeResponse>, tonic::Status> {
    d.record_change(RecordChangeRequest {
        change: Some(change),
    })
    .await
}

fn all_time() -> ListChangesRequest {
    ListChangesRequest::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_recorded_validated_listed_and_merged_with_deploys() {
    let col = Collector::with_token(None).await;
    let t = now() - 7200;
    col.ingest(vec![minute(1, t, "b1aaaaaaaaaaaaaaaaaa")]).await;
    let mut d = col.detection().await;

    // Each bad field is refused as INVALID_ARGUMENT naming it.
    let long = "x".repeat(5000);
    for (bad, field) in [
        (
            Change {
                service: "nope".into(),
                ..change("", t, "x")
            },
            "change.service",
        ),
        (change("", t, ""), "change.title"),
        (change("", now() + 3600, "x"), "change.at_unix_seconds"),
        (change("", t, &long), "change.title"),
        (
            Change {
                kind: "rollback".into(),
                ..change("", t, "x")
            },
            "change.kind",
        ),
        (
            Change {
                touched: vec!["f".into(); 1000],
                ..change("", t, "x")
            },
            "change.touched",
        ),
    ] {
        let e = record(&mut d, bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    let e = d
        .record_change(RecordChangeRequest { change: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // A valid change gets the id given, or a drawn one.
    let r = record(&mut d, change("PR-1", t + 60, "bigger cache"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.id.as_str(), r.merged), ("PR-1", false));
    let drawn = record(&mut d, change("", t + 120, "flag on"))
        .await
        .unwrap()
        .into_inner();
    assert!(drawn.id.starts_with("chg-"), "{drawn:?}");

    // The build first seen in ingested data is a deploy once a pass (here, on demand) ran.
    col.ingest(vec![minute(2, t + 600, "b2bbbbbbbbbbbbbbbbbb")])
        .await;
    d.list_regressions(ListRegressionsRequest::default())
        .await
        .unwrap();
    let listed = d
        .list_changes(all_time())
        .await
        .unwrap()
        .into_inner()
        .changes;
    let ids: Vec<&str> = listed.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "deploy-api-b1aaaaaaaaaa",
            "PR-1",
            &drawn.id,
            "deploy-api-b2bbbbbbbbbb"
        ],
        "{listed:#?}"
    );
    assert!(listed[3].automatic && listed[3].kind == "deploy");
    assert_eq!(listed[3].at_unix_seconds, (t + 600) / 60 * 60);

    // Recording the change that shipped b2 merges with its deploy: listed once, its id wins.
    let shipped = Change {
        build_id: "b2bbbbbbbbbbbbbbbbbb".into(),
        kind: "deploy".into(),
        touched: vec!["hash".into()],
        ..change("PR-2", t + 590, "faster hash")
    };
    let r = record(&mut d, shipped.clone()).await.unwrap().into_inner();
    assert_eq!((r.id.as_str(), r.merged), ("PR-2", true));
    let listed = d
        .list_changes(all_time())
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert_eq!(listed.len(), 4, "{listed:#?}");
    assert!(listed.contains(&shipped));
    assert!(!listed.iter().any(|c| c.id == "deploy-api-b2bbbbbbbbbb"));
    // Windows and services filter.
    let only = d
        .list_changes(ListChangesRequest {
            window: Some(TimeWindow {
                from_unix_seconds: t + 60,
                to_unix_seconds: t + 121,
            }),
            service: "api".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert_eq!(only.len(), 2, "{only:#?}");

    // The CLI records and lists, and names the flag of a refused field.
    let (ok, out, err) = wattson(
        &col.addr,
        &[
            "changes",
            "record",
            "--service",
            "api",
            "--at",
            "-1h",
            "--title",
            "cli change",
            "--id",
            "PR-3",
            "--kind",
            "experiment",
            "--touched",
            "parse",
            "--touched",
            "hash",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "PR-3");
    let (ok, _, err) = wattson(
        &col.addr,
        &[
            "changes",
            "record",
            "--service",
            "api",
            "--at",
            "2099-01-01T00:00:00Z",
            "--title",
            "x",
        ],
    );
    assert!(
        !ok && err.contains("--at") && err.contains("future"),
        "{err}"
    );
    let (ok, out, err) = wattson(
        &col.addr,
        &["--json", "changes", "list", "--service", "api"],
    );
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pr3 = j
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "PR-3")
        .unwrap();
    assert_eq!(pr3["touched"], serde_json::json!(["parse", "hash"]));
    assert_eq!(pr3["kind"], "experiment");
    let (ok, out, _) = wattson(&col.addr, &["--width", "0", "changes", "list"]);
    assert!(
        ok && out.contains("PR-2") && out.contains("faster hash"),
        "{out}"
    );
    col.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_short_history_gives_the_note_not_regressions() {
    let col = Collector::with_token(None).await;
    // Health answers for the detection service, as for the others.
    let channel = tonic::transport::Endpoint::from_shared(col.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "wattson.v1.DetectionService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let mut d = col.detection().await;
    let r = d
        .list_regressions(ListRegressionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(r.regressions.is_empty() && r.series == 0);
    assert!(r.note.contains("no profiles"), "{r:?}");
    // Two hours of data: too short for the one day of history detection needs.
    let t = now() - 7200;
    let batches: Vec<Batch> = (0..120)
        .map(|m| minute(m + 1, t + m as i64 * 60, "b1"))
        .collect();
    col.ingest(batches).await;
    let r = d
        .list_regressions(ListRegressionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(r.regressions.is_empty(), "{r:?}");
    assert!(r.note.starts_with("api: "), "{r:?}");
    let (ok, out, err) = wattson(&col.addr, &["regressions"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("no regressions: api: "), "{out}");
    let (ok, out, _) = wattson(&col.addr, &["--json", "regressions"]);
    assert!(ok);
    assert_eq!(out.trim(), "[]");
    let (ok, _, err) = wattson(&col.addr, &["regressions", "--service", "nope"]);
    assert!(
        !ok && err.contains("unknown service") && err.contains("NotFound"),
        "{err}"
    );
    col.stop().await;
}

/// Pseudo-random noise in [-1, 1), deterministic.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// Three days of `api` at one batch per 5 minutes, `hash` doing half as much work again from
/// `step_at` (20% of the service's samples, then 300 of 1,100: +7.3 points), shipped by build
/// b2; everything else unchanged.
fn three_days(end: i64, step_at: i64) -> Vec<Batch> {
    let mut noise = Noise(7);
    let mut out = Vec::new();
    let start = end - 3 * 86_400;
    for (i, at) in (start..end).step_by(300).enumerate() {
        let after = at >= step_at;
        let build = if after { "b2" } else { "b1" };
        let mut n = |base: f64| (base * (1.0 + 0.03 * noise.next())).round() as u64;
        let hash = if after { n(300.0) } else { n(200.0) };
        let (parse, rest) = (n(200.0), n(600.0));
        let uj = |c: u64| c as f64 * 1e5;
        out.push(
            BatchBuilder::new("h1", i as u64 + 1)
                .interval(
                    at,
                    300,
                    false,
                    0.0,
                    &[
                        ("api", build, "main;serve;hash", hash, uj(hash)),
                        ("api", build, "main;serve;parse", parse, uj(parse)),
                        ("api", build, "main;idle_loop", rest, uj(rest)),
                        ("db", "d1", "main;query", n(100.0), uj(100)),
                    ],
                )
                .build(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_step_is_found_at_its_function_with_its_change() {
    let col = Collector::with_token(Some("s3cret")).await;
    let end = now() / 300 * 300;
    let step_at = end - 86_400;
    // Ingest with the token; without it, detection refuses too.
    col.ingest_as(Some("s3cret"), three_days(end, step_at))
        .await;
    let mut anon = col.detection().await;
    let e = anon
        .list_regressions(ListRegressionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut d =
        DetectionServiceClient::with_interceptor(col.channel().await, bearer(Some("s3cret")));
    d.record_change(RecordChangeRequest {
        change: Some(Change {
            build_id: "b2".into(),
            kind: "deploy".into(),
            touched: vec!["hash".into()],
            ..change("PR-7", step_at, "hash every field twice")
        }),
    })
    .await
    .unwrap();
    let r = d
        .list_regressions(ListRegressionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(r.series > 0, "{r:?}");
    let open: Vec<_> = r
        .regressions
        .iter()
        .filter(|g| g.status == "open")
        .collect();
    assert_eq!(
        open.len(),
        1,
        "one regression, at the function that changed: {r:#?}"
    );
    let g = open[0];
    assert_eq!(
        (g.service.as_str(), g.function.as_str()),
        ("api", "hash"),
        "{g:#?}"
    );
    assert!((g.started_unix_seconds - step_at).abs() <= 600, "{g:#?}");
    assert!((g.delta_share - 0.0727).abs() < 0.01, "{g:#?}");
    assert_eq!(
        g.causes.first().map(|c| c.change_id.as_str()),
        Some("PR-7"),
        "{g:#?}"
    );
    // The CLI shows it; --json is the array of messages; --all adds the funnel.
    let (ok, out, err) = wattson(
        &col.addr,
        &["--token", "s3cret", "--width", "0", "regressions"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("hash") && out.contains("PR-7"), "{out}");
    let (ok, out, _) = wattson(&col.addr, &["--token", "s3cret", "--json", "regressions"]);
    assert!(ok);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j[0]["function"], "hash");
    assert_eq!(j[0]["causes"][0]["change_id"], "PR-7");
    for key in [
        "id",
        "metric",
        "kind",
        "started_unix_seconds",
        "before_share",
        "after_share",
        "delta_watts",
        "fleet_delta_watts",
        "mwh_per_year",
        "confidence",
        "status",
        "evidence",
    ] {
        assert!(j[0].get(key).is_some(), "{key} missing in {}", j[0]);
    }
    let (ok, out, _) = wattson(&col.addr, &["--token", "s3cret", "regressions", "--all"]);
    assert!(ok && out.contains("funnel"), "{out}");
    // A window before the step holds none of it.
    let before = d
        .list_regressions(ListRegressionsRequest {
            window: Some(TimeWindow {
                from_unix_seconds: end - 3 * 86_400,
                to_unix_seconds: step_at - 3600,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        before.regressions.iter().all(|g| g.status != "open"),
        "{before:#?}"
    );
    // As of an hour before the step, on the same stored data, nothing had regressed; as of the
    // end, the same regression as the live pass; a future as-of is refused, naming the flag.
    let as_of = |t: String| {
        let args = ["--token", "s3cret", "--json", "regressions", "--as-of", &t];
        let (ok, out, err) = wattson(&col.addr, &args);
        assert!(ok, "{err}");
        let j: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        let open = j.into_iter().filter(|g| g["status"] == "open");
        open.map(|g| (g["function"].clone(), g["id"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(as_of((step_at - 3600).to_string()), []);
    assert_eq!(
        as_of(end.to_string()),
        [(g.function.clone().into(), g.id.clone().into())]
    );
    let (ok, _, err) = wattson(
        &col.addr,
        &[
            "--token",
            "s3cret",
            "regressions",
            "--as-of",
            "2999-01-01T00:00:00Z",
        ],
    );
    assert!(
        !ok && err.contains("--as-of") && err.contains("not a time up to now"),
        "{err}"
    );
    col.stop().await;
}

/// Regression: `ListRegressions` naming a service ran a pass over every profiled service first
/// (hundreds of rustc processes on a build host: the regression e2e did not answer in 10
/// minutes). It now detects that service alone; and a cancelled detector (the collector is
/// stopping) abandons its passes between services instead of holding the shutdown.
#[test]
fn one_service_is_detected_alone_and_a_cancelled_pass_stops() {
    use std::sync::Arc;
    use wattson_collector::attribute::FleetConfig;
    use wattson_collector::detect::DetectConfig;
    use wattson_collector::detection::{DetectionError, Detector};
    use wattson_collector::store::{self, Store};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let store: Arc<dyn Store> = Arc::from(store::open(&url).unwrap());
    let t = now() / 60 * 60 - 3600;
    for (i, service) in ["api", "db", "web"].into_iter().enumerate() {
        let b = BatchBuilder::new("h1", i as u64 + 1)
            .interval(t, 60, false, 0.0, &[(service, "", "main;work", 60, 6e6)])
            .build();
        store.ingest(&b).unwrap();
    }
    let d = Detector::new(
        store.clone(),
        FleetConfig::default(),
        DetectConfig::default(),
    )
    .unwrap();
    let at = now();
    let one = ListRegressionsRequest {
        service: "db".into(),
        ..ListRegressionsRequest::default()
    };
    let r = d.regressions_at(&one, at).unwrap();
    assert!(r.note.starts_with("db:"), "{}", r.note);
    let detected: Vec<String> = d.open_by_service().into_iter().map(|(s, _)| s).collect();
    assert_eq!(detected, ["db"], "only the service asked for was detected");
    let nope = ListRegressionsRequest {
        service: "nope".into(),
        ..ListRegressionsRequest::default()
    };
    assert!(matches!(
        d.regressions_at(&nope, at),
        Err(DetectionError::UnknownService(_))
    ));
    // Without a service, every service is detected.
    d.regressions_at(&ListRegressionsRequest::default(), at)
        .unwrap();
    let detected: Vec<String> = d.open_by_service().into_iter().map(|(s, _)| s).collect();
    assert_eq!(detected, ["api", "db", "web"]);
    // Once cancelled, a pass that has work to do stops and says why.
    d.arrivals().stored();
    d.cancel();
    assert!(matches!(d.refresh(at), Err(DetectionError::Cancelled)));
    assert!(matches!(
        d.regressions_at(&one, at),
        Err(DetectionError::Cancelled)
    ));
}

#[test]
fn passes_within_a_day_read_the_series_from_the_same_start() {
    use wattson_collector::detect::{DetectConfig, day_start};
    use wattson_collector::detection::series;
    use wattson_collector::store::{self, Store};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let store: Box<dyn Store> = store::open(&url).unwrap();
    let cfg = DetectConfig::default();
    // Data from half an hour after the midnight that opens the history of a pass made
    // yesterday, and an hour after yesterday's midnight.
    let midnight = day_start(now()) - 86_400;
    let first = day_start(midnight - cfg.history) + 1800;
    for (i, at) in [first, midnight + 3600].into_iter().enumerate() {
        let b = BatchBuilder::new("h1", i as u64 + 1)
            .interval(at, 60, false, 0.0, &[("api", "", "main;work", 60, 6e6)])
            .build();
        store.ingest(&b).unwrap();
    }
    // Passes at 02:00, 05:00 and 23:00 all start at the first data; a window sliding with
    // the pass would have dropped it.
    let starts: Vec<i64> = [2, 5, 23]
        .iter()
        .map(|h| {
            let s = series::read(&*store, "api", &cfg, 1.0, midnight + h * 3600).unwrap();
            s.start
        })
        .collect();
    assert_eq!(starts, [first, first, first]);
}
