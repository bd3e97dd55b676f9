//! Prometheus `/metrics` over a real socket on 127.0.0.1:0: ingest counters (stored,
//! duplicate, error), store size, and per-service watts labelled estimated or not; and the
//! requests a real gRPC ingest endpoint refuses, counted by reason.

use std::io::{Read as _, Write as _};
use std::sync::Arc;

use wattson_collector::attribute::FleetConfig;
use wattson_collector::metrics::{self, Counted};
use wattson_collector::query::QueryEngine;
use wattson_collector::store::synthetic::BatchBuilder;
use wattson_collector::store::{self, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_counters_size_and_service_watts() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let counted = Arc::new(Counted::new(Arc::from(store::open(&url).unwrap())));
    let store: Arc<dyn Store> = counted.clone();
    let now = wattson_collector::report::now();
    // One minute ago, 10 s intervals: 30 J measured on `api`, 30 J estimated on `vm`: 3 W each
    // over the 10 s each host reported (not diluted over the 5-minute window).
    let api = BatchBuilder::new("h1", 1)
        .interval(
            now - 60,
            10,
            false,
            0.0,
            &[("api", "", "main;hash", 7, 30e6)],
        )
        .build();
    let vm = BatchBuilder::new("h2", 1)
        .interval(now - 60, 10, true, 0.0, &[("vm", "", "main;spin", 3, 30e6)])
        .build();
    // Blocking ingest and the queue the gRPC server awaits are both counted.
    store.ingest(&api).unwrap();
    for b in [&api, &vm] {
        let bytes = bytes::Bytes::from(prost::Message::encode_to_vec(b));
        let view = wattson_proto::view::BatchView::parse(&bytes).expect("parses");
        store
            .queue(&view, bytes.clone())
            .expect("sqlite queues")
            .await
            .unwrap();
    }
    let mut bad = api.clone();
    bad.sequence = 2;
    bad.profiles[0].samples[0].stack_index = 9;
    assert!(store.ingest(&bad).is_err());

    let engine = Arc::new(QueryEngine::new(store.clone(), FleetConfig::default()));
    let listener = metrics::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let detector = Arc::new(
        wattson_collector::detection::Detector::new(
            store.clone(),
            FleetConfig::default(),
            wattson_collector::detect::DetectConfig::default(),
        )
        .unwrap(),
    );
    let d = detector.clone();
    assert!(
        tokio::task::spawn_blocking(move || d.refresh(now))
            .await
            .unwrap()
            .unwrap()
    );
    let task = tokio::spawn(metrics::serve(listener, counted, engine, detector));
    let body = tokio::task::spawn_blocking(move || {
        let get = |path: &str| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        (get("/metrics"), get("/other"))
    })
    .await
    .unwrap();
    task.abort();
    let (m, other) = body;
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    for line in [
        "wattson_collector_batches_total{result=\"stored\"} 2",
        "wattson_collector_batches_total{result=\"duplicate\"} 1",
        "wattson_collector_batches_total{result=\"error\"} 1",
        "wattson_collector_samples_total 10",
        "wattson_store_batches 2",
        "wattson_service_watts{service=\"api\",estimated=\"false\"} 3",
        "wattson_service_watts{service=\"vm\",estimated=\"true\"} 3",
        "wattson_service_hosts_reporting{service=\"api\"} 1",
        // A minute of history: detection reports nothing, and says so per service.
        "wattson_regressions_open{service=\"api\"} 0",
        "wattson_regressions_open{service=\"vm\"} 0",
    ] {
        assert!(m.contains(line), "missing {line:?} in\n{m}");
    }
    assert!(m.contains("# TYPE wattson_store_bytes gauge"));
}

/// A collector serving gRPC on 127.0.0.1:0 over a fresh SQLite store, counted as `serve`
/// counts it, and a client connected to it.
struct Serving {
    counted: Arc<Counted>,
    store: Arc<dyn Store>,
    client:
        wattson_proto::v1::ingest_service_client::IngestServiceClient<tonic::transport::Channel>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), wattson_collector::server::ServeError>>,
    _dir: tempfile::TempDir,
}

impl Serving {
    /// Starts it; `config` sets what the test needs beside the store's rejection counts.
    async fn start(config: wattson_collector::server::ServeConfig) -> Serving {
        use wattson_collector::server;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let counted = Arc::new(Counted::new(Arc::from(store::open(&url).unwrap())));
        let store: Arc<dyn Store> = counted.clone();
        let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let config = server::ServeConfig {
            rejections: counted.rejections(),
            ..config
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, store.clone(), config, async {
            let _ = stopped.await;
        }));
        let client = wattson_proto::v1::ingest_service_client::IngestServiceClient::connect(addr)
            .await
            .unwrap();
        Serving {
            counted,
            store,
            client,
            stop,
            task,
            _dir: dir,
        }
    }

    /// Stops the server and waits until it has.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_before_the_store_are_counted_by_reason() {
    use wattson_collector::server::ServeConfig;
    use wattson_proto::v1::IngestRequest;
    use wattson_proto::v1::ingest_request::Payload;

    let mut s = Serving::start(ServeConfig {
        max_message_bytes: 4096,
        ..ServeConfig::default()
    })
    .await;
    let c = &mut s.client;
    let now = wattson_collector::report::now();
    let good = BatchBuilder::new("h1", 1)
        .interval(now - 60, 10, false, 0.0, &[("api", "", "main", 1, 1.0)])
        .build();
    let mut invalid = good.clone();
    invalid.sequence = 2;
    invalid.profiles[0].samples[0].stack_index = 9;
    let junk = IngestRequest {
        payload: Some(Payload::BatchZstd(b"not zstd".to_vec())),
    };
    // Above --max-message-bytes: as sent (tonic refuses it), or once decompressed.
    let mut big = good.clone();
    big.sequence = 3;
    big.strings.push("a".repeat(100_000));
    let big_frame = IngestRequest::zstd(&big).unwrap();
    assert!(prost::Message::encoded_len(&big_frame) < 4096);
    c.ingest(IngestRequest::zstd(&good).unwrap()).await.unwrap();
    // Small as sent, above the limit once gzip is undone: tonic answers RESOURCE_EXHAUSTED.
    let mut gzip = c
        .clone()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let e = gzip
        .ingest(IngestRequest::plain(big.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    for (request, code) in [
        (
            IngestRequest::zstd(&invalid).unwrap(),
            tonic::Code::InvalidArgument,
        ),
        (junk, tonic::Code::InvalidArgument),
        (IngestRequest::default(), tonic::Code::InvalidArgument),
        (IngestRequest::plain(big), tonic::Code::OutOfRange),
        (big_frame, tonic::Code::InvalidArgument),
    ] {
        let e = c.ingest(request).await.unwrap_err();
        assert_eq!(e.code(), code, "{e}");
    }
    let engine = QueryEngine::new(s.store.clone(), FleetConfig::default());
    let m = metrics::render(&s.counted, &engine, None, now);
    for line in [
        "wattson_collector_batches_rejected_total{reason=\"malformed\"} 2",
        "wattson_collector_batches_rejected_total{reason=\"too_large\"} 3",
        "wattson_collector_batches_rejected_total{reason=\"invalid\"} 1",
        "wattson_collector_batches_total{result=\"stored\"} 1",
    ] {
        assert!(m.contains(line), "missing {line:?} in\n{m}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_cpu_is_counted_by_stage_and_within_the_process_cpu() {
    use wattson_collector::ingest_cpu::{self, Stage, process_cpu};
    use wattson_collector::server::ServeConfig;
    use wattson_proto::v1::IngestRequest;

    let mut s = Serving::start(ServeConfig::default()).await;
    let c = &mut s.client;
    let now = wattson_collector::report::now();
    let spent = || ingest_cpu::spent().map(|(_, d)| d);
    let (before, cpu_before) = (spent(), process_cpu());
    for seq in 1..=50 {
        let b = BatchBuilder::new("h1", seq)
            .interval(
                now - 60,
                10,
                false,
                0.0,
                &[("api", "", "main;work", 3, 9.0)],
            )
            .build();
        c.ingest(IngestRequest::zstd(&b).unwrap()).await.unwrap();
    }
    // A query settles the store: the roll-up runs.
    assert_eq!(s.store.stats().unwrap().batches, 50);
    let (after, cpu_after) = (spent(), process_cpu());
    for (i, stage) in Stage::ALL.iter().enumerate() {
        assert!(after[i] > before[i], "{} counted nothing", stage.name());
    }
    // Thread CPU clocks around the work: never more than the process used meanwhile (a timer
    // held across an await, or counting twice, could exceed it). `receive` is sampled, an
    // estimate, so only the stages timed in full are held to this.
    let staged: std::time::Duration = (1..4).map(|i| after[i] - before[i]).sum();
    assert!(
        staged <= cpu_after - cpu_before,
        "{staged:?} > {:?}",
        cpu_after - cpu_before
    );
    let engine = QueryEngine::new(s.store.clone(), FleetConfig::default());
    let m = metrics::render(&s.counted, &engine, None, now);
    for stage in Stage::ALL {
        let line = format!(
            "wattson_collector_ingest_cpu_seconds_total{{stage=\"{}\"}} ",
            stage.name()
        );
        assert!(m.contains(&line), "missing {line:?} in\n{m}");
    }
    s.stop().await;
}

/// A batch with more distinct source lines than the roll-up keeps: the dropped line rows are
/// counted on /metrics (the samples stay in stacks and functions).
#[test]
fn dropped_line_rows_are_counted() {
    use wattson_collector::store::rollup::MAX_LINE_KEYS;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let counted = Arc::new(Counted::new(Arc::from(store::open(&url).unwrap())));
    let store: Arc<dyn Store> = counted.clone();
    let now = wattson_collector::report::now();
    let dropped = || {
        let engine = QueryEngine::new(store.clone(), FleetConfig::default());
        let m = metrics::render(&counted, &engine, None, now);
        let line = m
            .lines()
            .find(|l| l.starts_with("wattson_collector_line_keys_dropped_total "))
            .unwrap_or_else(|| panic!("no line-keys-dropped counter in\n{m}"));
        line.rsplit(' ').next().unwrap().parse::<f64>().unwrap()
    };
    let before = dropped();
    // MAX_LINE_KEYS + 7 leaves, each on its own line of the project's own file.
    let stacks: Vec<String> = (0..MAX_LINE_KEYS + 7)
        .map(|i| format!("main;f{i}@src/x.rs:{}", i + 1))
        .collect();
    let samples: Vec<(&str, &str, &str, u64, f64)> = stacks
        .iter()
        .map(|s| ("svc", "", s.as_str(), 1, 0.0))
        .collect();
    let b = BatchBuilder::new("h1", 1)
        .interval(now - 60, 10, false, 0.0, &samples)
        .build();
    store.ingest(&b).unwrap();
    // Other tests of this binary may drop rows meanwhile: at least ours are counted.
    assert!(dropped() >= before + 7.0, "{before} -> {}", dropped());
}
