//! Access over real gRPC on 127.0.0.1 (issue 20): scoped tokens checked per service (ingest
//! needs `ingest`, queries and reflection `read`, health is open), `--token` still admits
//! everything, and with mutual TLS a batch's host id must be a name of the client certificate.

use std::path::Path;
use std::sync::Arc;

use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use wattson_collector::server::{self, ServeConfig, TlsFiles};
use wattson_collector::store::{self, Store};
use wattson_proto::synthetic::{self, Shape};
use wattson_proto::v1::ingest_service_client::IngestServiceClient;
use wattson_proto::v1::query_service_client::QueryServiceClient;
use wattson_proto::v1::{IngestRequest, PowerRequest, TimeWindow};

struct Serving {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn serve(config: ServeConfig) -> Serving {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let store: Arc<dyn Store> = Arc::from(store::open(&url).unwrap());
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server::serve(listener, store, config, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Serving {
        addr,
        stop,
        task,
        _dir: dir,
    }
}

impl Serving {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn batch(host: &str, seq: u64) -> IngestRequest {
    let b = synthetic::batch(host, seq, now() - 60_000_000_000, &Shape::default(), seq);
    IngestRequest::plain(b)
}

fn power() -> PowerRequest {
    let to = (now() / 1_000_000_000) as i64;
    PowerRequest {
        window: Some(TimeWindow {
            from_unix_seconds: to - 3600,
            to_unix_seconds: to,
        }),
    }
}

/// The code and message of a refusal.
fn code<T>(r: Result<T, tonic::Status>) -> Result<(), (Code, String)> {
    r.map(drop).map_err(|s| (s.code(), s.message().to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_tokens_are_checked_per_service() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(
        &file,
        "# agents\ningest agent-token\nread dash-token # dashboards\n",
    )
    .unwrap();
    let s = serve(ServeConfig {
        token: Some("old-all-scopes".into()),
        token_file: Some(file),
        ..ServeConfig::default()
    })
    .await;
    let channel = Endpoint::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut ingest = IngestServiceClient::new(channel.clone());
    let mut query = QueryServiceClient::new(channel.clone());

    assert_eq!(
        code(
            ingest
                .ingest(with_token(batch("h", 1), Some("agent-token")))
                .await
        ),
        Ok(())
    );
    let denied = code(
        ingest
            .ingest(with_token(batch("h", 2), Some("dash-token")))
            .await,
    )
    .unwrap_err();
    assert_eq!(denied.0, Code::PermissionDenied, "{denied:?}");
    assert!(
        denied
            .1
            .contains("needs a token with scope ingest (this token has read)"),
        "{denied:?}"
    );
    assert_eq!(
        code(query.power(with_token(power(), Some("dash-token"))).await),
        Ok(())
    );
    let denied = code(query.power(with_token(power(), Some("agent-token"))).await).unwrap_err();
    assert_eq!(denied.0, Code::PermissionDenied, "{denied:?}");
    // --token keeps every scope.
    assert_eq!(
        code(
            ingest
                .ingest(with_token(batch("h", 3), Some("old-all-scopes")))
                .await
        ),
        Ok(())
    );
    assert_eq!(
        code(
            query
                .power(with_token(power(), Some("old-all-scopes")))
                .await
        ),
        Ok(())
    );
    // A wrong token, a prefix of a right one, a longer one, or none.
    for t in [
        Some("guess"),
        Some("agent-toke"),
        Some("agent-token-and-more"),
        None,
    ] {
        let e = code(query.power(with_token(power(), t)).await).unwrap_err();
        assert_eq!(e.0, Code::Unauthenticated, "{t:?}: {e:?}");
    }
    // Health is open; reflection lists every method, so it needs read.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(h.into_inner().status, 1);
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let ask = || {
        tokio_stream::iter([tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                    String::new(),
                ),
            ),
        }])
    };
    let e = reflection.server_reflection_info(ask()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    reflection
        .server_reflection_info(with_token(ask(), Some("dash-token")))
        .await
        .unwrap();
    s.stop().await;
}

#[test]
fn a_bad_token_file_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "ingest a\nwrite b\n").unwrap();
    let e = wattson_collector::access::Tokens::new(None, Some(&file)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "--token-file {} line 2: unknown scope \"write\" (expected `SCOPE TOKEN`, SCOPE one of ingest, read, admin, all)",
            file.display()
        )
    );
}

struct Pki {
    ca: std::path::PathBuf,
    server: (std::path::PathBuf, std::path::PathBuf),
    client: (std::path::PathBuf, std::path::PathBuf),
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate naming `client_host`.
fn pki(dir: &Path, client_host: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "access test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let write = |file: &str, pem: &str| {
        let p = dir.join(file);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let leaf = |name: &str, sans: Vec<String>, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &ca).unwrap();
        (
            write(&format!("{name}.pem"), &cert.pem()),
            write(&format!("{name}.key"), &key.serialize_pem()),
        )
    };
    let server = leaf("server", vec!["127.0.0.1".into()], "collector");
    let client = leaf("client", vec![client_host.into()], "agent");
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server,
        client,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_a_batch_must_come_from_its_hosts_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path(), "host-a.example");
    let s = serve(ServeConfig {
        tls: Some(TlsFiles {
            cert: p.server.0.clone(),
            key: p.server.1.clone(),
            ca: p.ca.clone(),
        }),
        ..ServeConfig::default()
    })
    .await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&p.ca).unwrap()))
        .identity(Identity::from_pem(
            std::fs::read(&p.client.0).unwrap(),
            std::fs::read(&p.client.1).unwrap(),
        ))
        .domain_name("127.0.0.1");
    let channel: Channel = Endpoint::from_shared(format!("https://{}", s.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut ingest = IngestServiceClient::new(channel);
    ingest.ingest(batch("host-a.example", 1)).await.unwrap();
    let e = ingest.ingest(batch("host-b.example", 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(
        e.message().contains("\"host-b.example\"") && e.message().contains("agent, host-a.example"),
        "{e}"
    );
    s.stop().await;
}

/// Issue 20: the SQLite store and its ingest journal hold every profiled command line; they
/// were created with the umask's modes (0644 files, 0755 directories here).
#[test]
fn store_and_journal_files_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state/w.db");
    let s = store::open(&format!("sqlite://{}", db.display())).unwrap();
    s.ingest(&synthetic::batch(
        "h",
        1,
        now() - 60_000_000_000,
        &Shape::default(),
        1,
    ))
    .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let journal = dir.path().join("state/w.db.ingest");
    let segment = std::fs::read_dir(&journal)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for (path, want) in [
        (dir.path().join("state"), 0o700),
        (db.clone(), 0o600),
        (dir.path().join("state/w.db-wal"), 0o600),
        (journal, 0o700),
        (segment, 0o600),
    ] {
        assert_eq!(mode(&path), want, "{} is {:o}", path.display(), mode(&path));
    }
    drop(s);
}
