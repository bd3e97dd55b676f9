//! Issue 19's check end to end: a one-service `one-step` fleet (a 1% step caused by a recorded
//! deploy, with a decoy experiment before it) streamed through a real collector (real gRPC on
//! 127.0.0.1, real SQLite, in this process) is detected at the injected function, and the
//! regression solver's report on it (`RunSkill`, as `wattson suggest --regression ID`) names
//! the injected change.

use std::sync::Arc;

use wattson_collector::server::{self, ServeConfig};
use wattson_collector::store::{self, Store};
use wattson_proto::v1::detection_service_client::DetectionServiceClient;
use wattson_proto::v1::{ListRegressionsRequest, TimeWindow};

use super::{Args, Kind, Scenario, simulate, solve};

#[test]
fn an_injected_step_gets_a_solver_report_naming_its_change() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let store: Arc<dyn Store> = Arc::from(store::open(&url).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(server::bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = rt.spawn(server::serve(
        listener,
        store,
        ServeConfig::default(),
        async {
            let _ = stopped.await;
        },
    ));

    // Four days (the shortest fleet-sim allows), one service of 20 functions.
    let args = Args {
        seed: 5,
        services: 1,
        functions: 20,
        days: 4.0,
        end: None,
        step: 300,
        hosts: 1000,
        collector: Some(addr.clone()),
        data_dir: dir.path().to_path_buf(),
        collector_args: Vec::new(),
        serve: false,
        truth: None,
        chunk: 12,
        concurrency: 1,
        scenario: Scenario::OneStep,
    };
    let out = simulate(&args, &addr, None).unwrap();
    let truth = &out.truth;
    let steps: Vec<_> = truth
        .events
        .iter()
        .filter(|e| e.kind == Kind::Step)
        .collect();
    assert_eq!(
        steps.len(),
        1,
        "one-step injects one step: {:?}",
        truth.events
    );
    let e = steps[0];
    let change = e.change_id.clone().expect("the step has a recorded deploy");
    assert!(
        truth.changes.iter().any(|c| c.id == change && c.recorded),
        "{change} is recorded"
    );
    let window = TimeWindow {
        from_unix_seconds: truth.start_unix_seconds,
        to_unix_seconds: truth.end_unix_seconds,
    };

    let (found, culprit) = rt.block_on(async {
        let mut detection = DetectionServiceClient::connect(addr.clone()).await.unwrap();
        let list = detection
            .list_regressions(ListRegressionsRequest {
                window: Some(window),
                service: e.service.clone(),
                all: false,
                as_of_unix_seconds: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let open: Vec<_> = list
            .regressions
            .iter()
            .filter(|r| r.status == "open")
            .collect();
        let found = open
            .iter()
            .find(|r| r.function == e.function && (r.started_unix_seconds - e.at).abs() <= 3600)
            .map(|r| (*r).clone())
            .unwrap_or_else(|| {
                panic!(
                    "no open regression at {} near {} (note {:?}); open: {:?}",
                    e.function,
                    e.at,
                    list.note,
                    open.iter()
                        .map(|r| (
                            &r.function,
                            r.started_unix_seconds,
                            &r.kind,
                            r.before_share,
                            r.after_share,
                            r.confidence
                        ))
                        .collect::<Vec<_>>()
                )
            });
        let mut skills = solve::connect(&addr).await.unwrap();
        let culprit = solve::culprit(&mut skills, window, 0, &found.service, &found.id)
            .await
            .unwrap();
        (found, culprit)
    });
    assert_eq!(
        culprit.as_deref(),
        Some(change.as_str()),
        "the solver's report on {} ({} at {}) names {culprit:?}, not the injected {change}; \
         detection's causes: {:?}",
        found.id,
        found.function,
        found.started_unix_seconds,
        found.causes
    );
    stop.send(()).unwrap();
    rt.block_on(served).unwrap().unwrap();
}
