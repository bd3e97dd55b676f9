//! What the collector's gRPC suites share: a real collector serving on 127.0.0.1:0 over a
//! SQLite store in a temporary directory, fed through the real ingest service, and the real
//! `wattson` CLI run against it. Each suite keeps only its own data and assertions.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::process::Command;
use std::sync::Arc;

use wattson_collector::server::{self, ServeConfig};
use wattson_collector::store::{self, Store};
use wattson_proto::v1::detection_service_client::DetectionServiceClient;
use wattson_proto::v1::ingest_service_client::IngestServiceClient;
use wattson_proto::v1::skills_service_client::SkillsServiceClient;
use wattson_proto::v1::{Batch, IngestRequest};

/// A collector running in this test's runtime until `stop`.
pub struct Collector {
    pub addr: String,
    /// Holds the SQLite file and anything the suite keeps beside it.
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Collector {
    /// Serves `config` over a fresh SQLite store.
    pub async fn serve(config: ServeConfig) -> Collector {
        Self::serve_in(tempfile::tempdir().unwrap(), config).await
    }

    /// Serves `config` over a SQLite store in `dir`, for suites that put files there first.
    pub async fn serve_in(dir: tempfile::TempDir, config: ServeConfig) -> Collector {
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let store: Arc<dyn Store> = Arc::from(store::open(&url).unwrap());
        let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            server::serve(listener, store, config, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Collector {
            addr,
            dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Serves the defaults, guarded by `token` when one is given.
    pub async fn with_token(token: Option<&str>) -> Collector {
        Self::serve(ServeConfig {
            token: token.map(str::to_string),
            ..ServeConfig::default()
        })
        .await
    }

    /// Sends `batches` through the ingest service, with `token` as the bearer when given.
    pub async fn ingest_as(&self, token: Option<&str>, batches: impl IntoIterator<Item = Batch>) {
        let mut c = IngestServiceClient::with_interceptor(self.channel().await, bearer(token));
        for b in batches {
            c.ingest(IngestRequest::plain(b)).await.unwrap();
        }
    }

    /// Sends `batches` through the ingest service without a token.
    pub async fn ingest(&self, batches: impl IntoIterator<Item = Batch>) {
        self.ingest_as(None, batches).await;
    }

    /// An unauthenticated client of the detection service.
    pub async fn detection(&self) -> DetectionServiceClient<tonic::transport::Channel> {
        DetectionServiceClient::connect(self.addr.clone())
            .await
            .unwrap()
    }

    /// An unauthenticated client of the skills service.
    pub async fn skills(&self) -> SkillsServiceClient<tonic::transport::Channel> {
        SkillsServiceClient::connect(self.addr.clone())
            .await
            .unwrap()
    }

    /// A connected channel, for clients that need an interceptor.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

/// An interceptor adding `authorization: Bearer TOKEN` when a token is given.
pub fn bearer(
    token: Option<&str>,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    let header = token.map(|t| {
        format!("Bearer {t}")
            .parse::<tonic::metadata::AsciiMetadataValue>()
            .unwrap()
    });
    move |mut r: tonic::Request<()>| {
        if let Some(h) = &header {
            r.metadata_mut().insert("authorization", h.clone());
        }
        Ok(r)
    }
}

/// Runs the real `wattson` CLI against `addr`: (success, stdout, stderr).
pub fn wattson(addr: &str, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_wattson"))
        .args(["--collector", addr])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}
