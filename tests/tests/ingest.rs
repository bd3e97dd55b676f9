//! Ingest end to end with the real binaries over 127.0.0.1: an agent (real BPF sampler, so run
//! as root) ships to a collector (SQLite store); the collector is SIGKILLed mid-stream and
//! restarted, the agent is restarted too, and every sample the agent spooled is in the store
//! exactly once, and so is everything an agent ships after its spool was wiped. Plus: a resent batch is acknowledged as a duplicate and stored once; invalid
//! batches get INVALID_ARGUMENT naming the field, as do bytes that are no protobuf (an unknown
//! method is UNIMPLEMENTED) and zstd frames without their size or above the limit; mutual TLS works and clients without a valid
//! certificate (or without the bearer token) are refused, for ingest and for the `wattson`
//! query CLI alike. Energy here comes from the agent's
//! utilization model (this host has no RAPL), so it is labelled estimated.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use wattson_collector::store::{self, Window};
use wattson_e2e::procs::{self, Proc, field};
use wattson_proto::synthetic::{self, Shape};
use wattson_proto::v1::ingest_request::Payload;
use wattson_proto::v1::ingest_service_client::IngestServiceClient;
use wattson_proto::v1::{Batch, IngestRequest};

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn agent(collector: &str, spool: &Path, host: &str, extra: &[String]) -> Proc {
    let mut args: Vec<String> = [
        "run",
        "--collector",
        collector,
        "--frequency",
        "99",
        "--interval",
        "1s",
        "--max-backoff",
        "1s",
        "--host-id",
        host,
        "--spool-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(spool.display().to_string());
    args.extend_from_slice(extra);
    Proc::start(
        "agent",
        "wattson-agent",
        &args,
        "info,wattson_agent::ship=debug",
    )
}

/// Samples the store holds for `host` (host rows sum every sample of the host).
fn stored_samples(db: &Path, host: &str) -> u64 {
    let store = store::open(&format!("sqlite://{}", db.display())).unwrap();
    let now = (now_nanos() / 1_000_000_000) as i64;
    let rows = store
        .hosts(Window {
            from: now - 7200,
            to: now + 7200,
        })
        .unwrap();
    rows.iter()
        .filter(|r| r.key == host)
        .map(|r| r.totals.samples_self)
        .sum()
}

/// (sequence, samples) of every "batch spooled" line of an agent.
fn spooled(p: &Proc) -> Vec<(u64, u64)> {
    p.lines()
        .iter()
        .filter(|l| l.contains("batch spooled"))
        .map(|l| {
            (
                field(l, "sequence").unwrap().parse().unwrap(),
                field(l, "samples").unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// Keeps one CPU busy so every interval has samples.
struct Burner(Arc<AtomicBool>);

impl Burner {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            let mut x = 0u64;
            while !s.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        });
        Burner(stop)
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn collector_sigkill_and_agent_restart_deliver_every_interval_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wattson.db");
    let spool = dir.path().join("spool");
    let store_url = format!("sqlite://{}", db.display());
    let host = "e2e-exactly-once";
    let _burner = Burner::start();
    let long = Duration::from_secs(90);

    // 1. Agent ships to a running collector.
    let (mut collector, addr) = procs::collector("127.0.0.1:0", &store_url, &[]);
    let url = format!("http://{addr}");
    let mut first = agent(&url, &spool, host, &[]);
    first.wait_until("two acknowledged batches", long, |p| {
        p.count("batch acknowledged") >= 2
    });

    // 2. The collector crashes mid-stream; the agent keeps sampling into its spool.
    collector.stop(libc::SIGKILL, Duration::from_secs(10));
    let spooled_before_outage = spooled(&first).len();
    first.wait_until("two batches spooled during the outage", long, |p| {
        spooled(p).len() >= spooled_before_outage + 2 && p.count("collector unavailable") >= 1
    });

    // 3. The agent is restarted too (graceful stop: the last window is spooled, not lost).
    first.stop(libc::SIGTERM, Duration::from_secs(30));
    let mut produced = spooled(&first);
    assert!(
        first.count("left_in_spool=0") == 0,
        "the outage should leave batches in the spool\n{}",
        first.dump()
    );

    // 4. The collector comes back on the same port and store, then the agent.
    let (mut collector, addr2) = procs::collector(&addr, &store_url, &[]);
    assert_eq!(addr, addr2);
    let mut second = agent(&url, &spool, host, &[]);
    second.wait_until("the spool to drain and two new batches", long, |p| {
        spooled(p).len() >= 2 && p.count("batch acknowledged") >= spooled(p).len()
    });
    second.stop(libc::SIGTERM, Duration::from_secs(30));
    produced.extend(spooled(&second));
    assert!(
        second.count("left_in_spool=0") >= 1,
        "the restarted agent should flush its spool\n{}",
        second.dump()
    );

    // 5. The spool directory is wiped (a reimaged disk): the agent starts again at sequence 1
    // under a new instance id, and the collector stores those batches rather than taking them
    // for duplicates of the first run's.
    std::fs::remove_dir_all(&spool).unwrap();
    let mut third = agent(&url, &spool, host, &[]);
    third.wait_until("two batches of the new instance acknowledged", long, |p| {
        spooled(p).len() >= 2 && p.count("batch acknowledged") >= spooled(p).len()
    });
    third.stop(libc::SIGTERM, Duration::from_secs(30));
    let fresh = spooled(&third);
    assert_eq!(fresh.first().map(|(s, _)| *s), Some(1), "{}", third.dump());
    assert_eq!(
        third.count("collector already had this batch"),
        0,
        "a wiped spool's batches were dropped as duplicates\n{}",
        third.dump()
    );
    collector.stop(libc::SIGTERM, Duration::from_secs(30));

    // Sequences continue across the restart, with no gap and no reuse.
    let seqs: Vec<u64> = produced.iter().map(|(s, _)| *s).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "sequence numbers across both agent runs");
    assert_eq!(
        seqs.iter().collect::<BTreeSet<_>>().len(),
        seqs.len(),
        "no sequence reused"
    );
    // Every sample spooled, by all three agent runs, is stored exactly once.
    let total: u64 = produced.iter().chain(&fresh).map(|(_, n)| n).sum();
    assert!(total > 0, "the agent sampled nothing");
    let stored = stored_samples(&db, host);
    assert_eq!(
        stored,
        total,
        "samples spooled by the agent vs stored by the collector\n{}\n{}\n{}",
        first.dump(),
        second.dump(),
        third.dump()
    );
}

async fn ingest(
    client: &mut IngestServiceClient<Channel>,
    batch: Batch,
) -> Result<(bool, u64), tonic::Status> {
    let r = client
        .ingest(IngestRequest::plain(batch))
        .await?
        .into_inner();
    Ok((r.duplicate, r.samples_stored))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_batch_is_a_duplicate_and_invalid_batch_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wattson.db");
    let store_url = format!("sqlite://{}", db.display());
    let (mut collector, addr) = tokio::task::spawn_blocking(move || {
        procs::collector(
            "127.0.0.1:0",
            &store_url,
            &["--max-message-bytes".into(), "2000000".into()],
        )
    })
    .await
    .unwrap();
    let mut client = IngestServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    // grpc.health.v1 reports the ingest service as serving (what grpcurl / load balancers ask).
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "wattson.v1.IngestService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Server reflection lists the services, so `grpcurl list` works without .proto files.
    assert!(
        reflected_services(&addr)
            .await
            .iter()
            .any(|s| s == "wattson.v1.IngestService")
    );

    let now = now_nanos() - 30_000_000_000;
    let batch = synthetic::batch("e2e-dup", 1, now, &Shape::default(), 7);
    let samples = synthetic::sample_count(&batch);

    let (dup, stored) = ingest(&mut client, batch.clone()).await.unwrap();
    assert!(!dup);
    assert_eq!(stored, samples);
    let (dup, stored) = ingest(&mut client, batch.clone()).await.unwrap();
    assert!(dup, "a resend of (host, sequence) is recognised");
    assert_eq!(stored, 0);

    let mut bad = synthetic::batch("e2e-dup", 2, now, &Shape::default(), 8);
    bad.profiles[0].samples[7].stack_index = 912;
    let err = ingest(&mut client, bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "profiles[0].samples[7].stack_index 912 out of range (stacks: 300)"
    );

    let mut nan = synthetic::batch("e2e-dup", 3, now, &Shape::default(), 9);
    nan.profiles[0].idle_microjoules = f64::NAN;
    let err = ingest(&mut client, nan).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("profiles[0].idle_microjoules is NaN"),
        "{}",
        err.message()
    );

    // Above --max-message-bytes: refused before decoding.
    let big = Shape {
        samples_per_profile: 200_000,
        cpus: 4096,
        ..Shape::default()
    };
    let huge = synthetic::batch("e2e-dup", 4, now, &big, 10);
    let err = ingest(&mut client, huge.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());

    // As the agent sends: one zstd frame (`batch_zstd`). Stored like any batch; its declared
    // size counts against --max-message-bytes, and a frame without it is refused.
    let zipped = synthetic::batch("e2e-dup", 5, now, &Shape::default(), 11);
    let zipped_samples = synthetic::sample_count(&zipped);
    let r = client
        .ingest(IngestRequest::zstd(&zipped).unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.duplicate, r.samples_stored), (false, zipped_samples));
    let err = client
        .ingest(IngestRequest::zstd(&huge).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message()
            .ends_with("bytes decompressed, more than the maximum of 2000000"),
        "{}",
        err.message()
    );
    let streamed = zstd::encode_all(&zipped.encode_to_vec()[..], 3).unwrap();
    let err = client
        .ingest(IngestRequest {
            payload: Some(Payload::BatchZstd(streamed)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().contains("declares its decompressed size"),
        "{}",
        err.message()
    );

    // Bytes that are no protobuf at all, and a method the service does not have.
    let err = raw_call(
        &addr,
        "/wattson.v1.IngestService/Ingest",
        vec![0x0a, 0xff, 0xff],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().starts_with("malformed message"),
        "{}",
        err.message()
    );
    let err = raw_call(&addr, "/wattson.v1.IngestService/Nope", Vec::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{}", err.message());

    tokio::task::spawn_blocking(move || {
        collector.stop(libc::SIGTERM, Duration::from_secs(30));
    })
    .await
    .unwrap();
    assert_eq!(
        stored_samples(&db, "e2e-dup"),
        samples + zipped_samples,
        "stored exactly once"
    );
}

/// Service names the collector's reflection service lists.
async fn reflected_services(addr: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let mut names = Vec::new();
    while let Some(r) = responses.message().await.unwrap() {
        if let Some(MessageResponse::ListServicesResponse(list)) = r.message_response {
            names.extend(list.service.into_iter().map(|s| s.name));
        }
    }
    names
}

/// A CA and certificates signed by it, written as PEM files.
struct Pki {
    ca: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
}

fn pki(dir: &Path, name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |sans: Vec<String>, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()], "collector");
    // The collector binds a batch's host id to the certificate: the agent's is its host id.
    let (client_cert, client_key) = leaf(vec!["e2e-tls".into(), "e2e-tls-agent".into()], "agent");
    let write = |file: &str, pem: &str| {
        let p = dir.join(format!("{name}-{file}"));
        std::fs::write(&p, pem).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
    }
}

async fn tls_client(
    addr: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<IngestServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("127.0.0.1");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_lazy();
    Ok(IngestServiceClient::new(channel))
}

fn with_token(batch: Batch, token: Option<&str>) -> tonic::Request<IngestRequest> {
    let mut r = tonic::Request::new(IngestRequest::plain(batch));
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_token_admit_the_agent_and_refuse_clients_without_a_valid_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let good = pki(dir.path(), "good");
    let rogue = pki(dir.path(), "rogue");
    let db = dir.path().join("wattson.db");
    let store_url = format!("sqlite://{}", db.display());
    let p = |x: &Path| x.display().to_string();
    let tls_args = vec![
        "--tls-cert".into(),
        p(&good.server_cert),
        "--tls-key".into(),
        p(&good.server_key),
        "--tls-ca".into(),
        p(&good.ca),
        "--token".into(),
        "s3cret".into(),
    ];
    let (mut collector, addr) =
        tokio::task::spawn_blocking(move || procs::collector("127.0.0.1:0", &store_url, &tls_args))
            .await
            .unwrap();
    let now = now_nanos() - 30_000_000_000;
    let batch = |seq| synthetic::batch("e2e-tls", seq, now, &Shape::default(), seq);

    // Positive control: the right CA, certificate and token.
    let mut ok = tls_client(&addr, &good.ca, Some((&good.client_cert, &good.client_key)))
        .await
        .unwrap();
    let r = ok.ingest(with_token(batch(1), Some("s3cret"))).await;
    assert!(r.is_ok(), "valid client refused: {r:?}");

    // Valid certificate, no token / wrong token.
    let e = ok.ingest(with_token(batch(2), None)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = ok
        .ingest(with_token(batch(2), Some("guess")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // No client certificate: the handshake is refused.
    let mut anon = tls_client(&addr, &good.ca, None).await.unwrap();
    let e = anon
        .ingest(with_token(batch(3), Some("s3cret")))
        .await
        .unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    // A certificate from another CA: refused too.
    let mut stranger = tls_client(
        &addr,
        &good.ca,
        Some((&rogue.client_cert, &rogue.client_key)),
    )
    .await
    .unwrap();
    let e = stranger
        .ingest(with_token(batch(4), Some("s3cret")))
        .await
        .unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    // Plain HTTP/2 against the TLS port: refused.
    let mut plain = IngestServiceClient::new(
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy(),
    );
    assert!(
        plain
            .ingest(with_token(batch(5), Some("s3cret")))
            .await
            .is_err()
    );

    // The real `wattson` CLI queries the mTLS collector with a client certificate and the
    // token, and is refused without a valid certificate (or without the token).
    let wattson = {
        let url = format!("https://{addr}");
        let plain_url = format!("http://{addr}");
        let good_flags = vec![
            "--tls-ca".to_string(),
            p(&good.ca),
            "--tls-cert".into(),
            p(&good.client_cert),
            "--tls-key".into(),
            p(&good.client_key),
        ];
        let rogue_flags = vec![
            "--tls-ca".to_string(),
            p(&good.ca),
            "--tls-cert".into(),
            p(&rogue.client_cert),
            "--tls-key".into(),
            p(&rogue.client_key),
        ];
        tokio::task::spawn_blocking(move || {
            let run = |collector: &str, flags: &[String], token: Option<&str>| {
                let mut cmd = std::process::Command::new(procs::binary("wattson"));
                cmd.args(["--collector", collector])
                    .args(flags)
                    .args(["--json", "power"])
                    .env_remove("WATTSON_TOKEN");
                if let Some(t) = token {
                    cmd.args(["--token", t]);
                }
                let o = cmd.output().expect("running wattson");
                (
                    o.status.success(),
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                    String::from_utf8_lossy(&o.stderr).into_owned(),
                )
            };
            [
                run(&url, &good_flags, Some("s3cret")),
                run(&url, &good_flags, None),
                run(&url, &rogue_flags, Some("s3cret")),
                run(&url, &[], Some("s3cret")),
                run(&plain_url, &[], Some("s3cret")),
            ]
        })
        .await
        .unwrap()
    };
    let [ok, no_token, rogue_cert, no_flags, plain_cli] = wattson;
    assert!(ok.0, "wattson with a client certificate refused:\n{}", ok.2);
    let power: serde_json::Value = serde_json::from_str(&ok.1)
        .unwrap_or_else(|e| panic!("power --json is not JSON ({e}):\n{}", ok.1));
    assert_eq!(power["hosts_reporting"], 1, "{power:#}");
    assert!(
        !no_token.0 && no_token.2.contains("Unauthenticated"),
        "{}",
        no_token.2
    );
    assert!(!rogue_cert.0, "a certificate from another CA was accepted");
    assert!(
        !no_flags.0 && no_flags.2.contains("--tls-cert"),
        "https without the TLS flags should name them: {}",
        no_flags.2
    );
    assert!(
        !plain_cli.0,
        "plain HTTP/2 against the TLS port was answered"
    );

    // The real agent ships over mutual TLS with the token.
    let spool = dir.path().join("spool");
    let (url, agent_args) = (
        format!("https://127.0.0.1:{}", addr.rsplit(':').next().unwrap()),
        vec![
            "--tls-cert".to_string(),
            p(&good.client_cert),
            "--tls-key".into(),
            p(&good.client_key),
            "--tls-ca".into(),
            p(&good.ca),
            "--token".into(),
            "s3cret".into(),
        ],
    );
    let stored_by_agent = tokio::task::spawn_blocking(move || {
        let mut a = agent(&url, &spool, "e2e-tls-agent", &agent_args);
        a.wait_until(
            "an acknowledged batch over mTLS",
            Duration::from_secs(90),
            |p| p.count("batch acknowledged") >= 1,
        );
        a.stop(libc::SIGTERM, Duration::from_secs(30));
        let n: u64 = spooled(&a).iter().map(|(_, n)| n).sum();
        assert!(a.count("left_in_spool=0") >= 1, "{}", a.dump());
        collector.stop(libc::SIGTERM, Duration::from_secs(30));
        n
    })
    .await
    .unwrap();
    assert_eq!(
        stored_samples(&db, "e2e-tls"),
        synthetic::sample_count(&batch(1)),
        "only the authenticated batch was stored"
    );
    assert_eq!(stored_samples(&db, "e2e-tls-agent"), stored_by_agent);
}

/// Codec sending and receiving raw bytes, to put what no generated client would on the wire.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(buf);
        Ok(Some(bytes::Buf::copy_to_bytes(buf, n).to_vec()))
    }
}

/// One unary call of `path` with `body` as the request's bytes.
async fn raw_call(addr: &str, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}
