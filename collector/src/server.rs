//! The collector's gRPC server: the `wattson.v1.IngestService` over a [`Store`], the query,
//! detection and skills services, plus `grpc.health.v1` and server reflection, with optional mutual
//! TLS and bearer token. Detection's periodic pass runs alongside while serving.
//!
//! Ingest reads a batch in place ([`BatchView`]), validates it ([`crate::validate`]), then
//! hands it to [`Store::queue`] (or [`Store::ingest`]), which
//! deduplicates by (host id, agent instance, sequence) atomically with the write and returns only
//! once the batch is durable; only then is the agent acknowledged. A pipelined store is awaited
//! through a channel; other store work runs on the blocking pool, so a slow disk never stalls
//! the network threads. Shutdown stops accepting connections and lets
//! every in-flight batch finish before [`serve`] returns.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prost::Message as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};
use wattson_proto::compressed::{Decompressor, FrameError, NO_BATCH};
use wattson_proto::v1::{Batch, IngestResponse};
use wattson_proto::view::{BatchView, ParseError, RequestBatch};

use crate::access::{Scope, Tokens};
use crate::detection::{Arrivals, Detector};
use crate::ingest_cpu;
use crate::metrics::Rejections;
use crate::store::{Ingested, Store, StoreError};
use crate::validate::{self, Limits};

/// Default maximum size of one decoded request, bytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A TLS file could not be read.
    #[error("cannot read {flag} file {path}: {source}")]
    TlsFile {
        /// The flag that named the file.
        flag: &'static str,
        /// The path given.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// TLS flags given only partly.
    #[error("{0}")]
    TlsFlags(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another collector running on this port?)")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The reflection service could not load the descriptor sets (a build problem).
    #[error("server reflection: {0}")]
    Reflection(String),
    /// The default detection settings were refused (a build problem).
    #[error("detection: {0}")]
    Detection(String),
    /// The token file could not be read.
    #[error(transparent)]
    Tokens(#[from] crate::access::TokenFileError),
    /// The transport failed (TLS configuration rejected, accept loop error).
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Mutual-TLS files (PEM): the server's certificate and key, and the CA that client
/// certificates must chain to.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Server certificate chain (`--tls-cert`).
    pub cert: PathBuf,
    /// Server private key (`--tls-key`).
    pub key: PathBuf,
    /// CA for client certificates (`--tls-ca`).
    pub ca: PathBuf,
}

impl TlsFiles {
    /// Builds from the three optional flags: all or none must be given.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> Result<Option<Self>, ServeError> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(Self { cert, key, ca })),
            _ => Err(ServeError::TlsFlags(
                "mutual TLS needs all of --tls-cert, --tls-key and --tls-ca (or none of them)"
                    .into(),
            )),
        }
    }

    fn read(flag: &'static str, path: &PathBuf) -> Result<Vec<u8>, ServeError> {
        std::fs::read(path).map_err(|source| ServeError::TlsFile {
            flag,
            path: path.clone(),
            source,
        })
    }

    /// Server-side TLS configuration requiring a client certificate signed by `ca`.
    pub fn server_config(&self) -> Result<ServerTlsConfig, ServeError> {
        let cert = Self::read("--tls-cert", &self.cert)?;
        let key = Self::read("--tls-key", &self.key)?;
        let ca = Self::read("--tls-ca", &self.ca)?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(false))
    }
}

/// Connection limits: how much one client can hold of the server. Without them a client could
/// open unbounded HTTP/2 streams, park requests that never finish, or keep dead connections.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    /// Concurrent HTTP/2 streams per connection (what a client may have in flight).
    pub max_concurrent_streams: u32,
    /// Requests served at once per connection; more wait (not refused: agents retry a
    /// refusal, and a queue is cheaper than a retry).
    pub concurrency_per_connection: usize,
    /// Longest a request may take, from its headers to the answer (a stalled upload included);
    /// past it the call is cancelled and the agent retries.
    pub request_timeout: std::time::Duration,
    /// HTTP/2 PING interval, and how long an answer may take before the connection is closed.
    pub keepalive: std::time::Duration,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            max_concurrent_streams: 64,
            concurrency_per_connection: 16,
            request_timeout: std::time::Duration::from_secs(60),
            keepalive: std::time::Duration::from_secs(30),
        }
    }
}

/// Everything [`serve`] needs besides the store.
#[derive(Debug, Clone, Default)]
pub struct ServeConfig {
    /// Mutual TLS; plain TCP when `None`.
    pub tls: Option<TlsFiles>,
    /// Bearer token with every scope (`--token`; `authorization: Bearer TOKEN`).
    pub token: Option<String>,
    /// Scoped tokens, lines `SCOPE TOKEN` (`--token-file`; see [`crate::access`]).
    pub token_file: Option<PathBuf>,
    /// Largest accepted request, bytes (0 = [`DEFAULT_MAX_MESSAGE_BYTES`]).
    pub max_message_bytes: usize,
    /// Batch validation limits.
    pub limits: Limits,
    /// Fleet size and factors the query service attributes power with.
    pub fleet: crate::attribute::FleetConfig,
    /// Where ingest counts the requests it refuses (shared with `/metrics`).
    pub rejections: Arc<Rejections>,
    /// The skills the skills service runs (default: the built-in catalogue).
    pub skills: crate::skills_service::SkillSet,
    /// The detection runner (shared with `/metrics`); `None`: one with default settings.
    pub detector: Option<Arc<Detector>>,
    /// How often detection looks for new data and runs a pass (0: every 5 minutes).
    pub detect_every: std::time::Duration,
    /// Per-connection limits and timeouts.
    pub transport: Transport,
}

/// Detection's pass interval when [`ServeConfig::detect_every`] is 0.
pub const DEFAULT_DETECT_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// The ingest service over a store.
pub struct Ingest {
    store: Arc<dyn Store>,
    limits: Arc<Limits>,
    /// Largest batch a `batch_zstd` frame may declare, bytes (the maximum message size).
    max_batch_bytes: usize,
    /// Counts of refused requests (shared with `/metrics`).
    rejections: Arc<Rejections>,
    /// Per host, the agent's cumulative spool losses last reported, so a new loss is logged
    /// once when it first shows up rather than with every batch.
    losses: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Bumped per stored batch, so detection knows its last pass is stale.
    arrivals: Arrivals,
}

impl Ingest {
    /// A service writing to `store`, validating with `limits`, taking batches of at most
    /// `max_batch_bytes` once decompressed, counting what it refuses in `rejections` and
    /// what it stores in `arrivals`.
    pub fn new(
        store: Arc<dyn Store>,
        limits: Limits,
        max_batch_bytes: usize,
        rejections: Arc<Rejections>,
        arrivals: Arrivals,
    ) -> Self {
        Self {
            store,
            limits: Arc::new(limits),
            rejections,
            max_batch_bytes,
            losses: Default::default(),
            arrivals,
        }
    }

    /// Counts a request tonic refused above the maximum message size (OUT_OF_RANGE, or
    /// RESOURCE_EXHAUSTED once decompressed).
    pub(crate) fn refused_too_large(&self) {
        self.rejections.too_large();
        tracing::warn!("request refused: above the maximum message size (--max-message-bytes)");
    }

    /// Logs data an agent reports it dropped from a full spool since its last batch.
    fn note_losses(&self, batch: &BatchView<'_>) {
        let Some(l) = &batch.losses else { return };
        if l.spool_dropped_batches == 0 || batch.host_id.len() > self.limits.max_host_id_bytes {
            return;
        }
        let mut seen = self.losses.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a flood of made-up host ids must not grow this without limit.
        if seen.len() >= 1 << 20 {
            seen.clear();
        }
        let before = seen.insert(batch.host_id.to_string(), l.spool_dropped_batches);
        if before.is_none_or(|b| b < l.spool_dropped_batches) {
            tracing::warn!(
                host = %crate::display::Clean(batch.host_id),
                dropped_batches = l.spool_dropped_batches,
                dropped_intervals = l.spool_dropped_intervals,
                dropped_samples = l.spool_dropped_samples,
                "agent reports profiles lost to a full spool (cumulative; raise --spool-max-bytes or fix the outage)"
            );
        }
    }
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::InvalidBatch { .. } => Status::invalid_argument(e.to_string()),
        // Retryable: the agent keeps the batch (RESOURCE_EXHAUSTED would make it drop it).
        StoreError::Busy(_) => Status::unavailable(e.to_string()),
        // Anything else is the collector's problem; the agent keeps the batch and retries.
        _ => Status::unavailable(format!("store: {e}")),
    }
}

impl Ingest {
    /// Validates and stores one batch read in place from `encoded`; `arrived` is what the
    /// request carried (`encoded`, or the zstd frame it came in), which a journal keeps.
    /// `receiving` counts this thread's CPU until the batch is handed to the store.
    async fn store_batch(
        &self,
        batch: &BatchView<'_>,
        encoded: Bytes,
        arrived: Bytes,
        receiving: ingest_cpu::Timer,
    ) -> Result<Ingested, Status> {
        self.note_losses(batch);
        // Validation and resolving the batch are CPU work of a fraction of a millisecond: done
        // on this worker. A pipelined store answers through a channel; other backends write
        // on the blocking pool so a slow disk or network never stalls the network threads.
        validate::validate(batch, &self.limits)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let queued = self.store.queue(batch, arrived);
        receiving.stop();
        match queued {
            Some(stored) => stored.await.map_err(store_status),
            None => {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || {
                    // Only backends without a pipeline need the batch as owned messages.
                    let batch = Batch::decode(&encoded[..])
                        .map_err(|e| Status::invalid_argument(format!("malformed message: {e}")))?;
                    store.ingest(&batch).map_err(store_status)
                })
                .await
                .map_err(|e| Status::internal(format!("ingest task failed: {e}")))?
            }
        }
    }

    /// The encoded batch in a `batch_zstd` frame, decompressed with this thread's context (a
    /// new one per message, as gRPC's own zstd makes, costs more than decompressing). The
    /// outer error: no context could be made (a retry may succeed).
    fn decompress(&self, frame: &[u8]) -> Result<Result<Bytes, FrameError>, Status> {
        thread_local! {
            static CONTEXT: std::cell::RefCell<Option<Decompressor>> =
                const { std::cell::RefCell::new(None) };
        }
        CONTEXT.with_borrow_mut(|ctx| {
            let ctx = match ctx {
                Some(c) => c,
                None => ctx.insert(
                    Decompressor::new()
                        // UNAVAILABLE, not RESOURCE_EXHAUSTED: agents drop a batch refused so.
                        .map_err(|e| Status::unavailable(format!("zstd context: {e}")))?,
                ),
            };
            Ok(ctx.batch(frame, self.max_batch_bytes).map(Bytes::from))
        })
    }

    /// Answers one `Ingest` call, given the request's bytes.
    pub(crate) async fn handle(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<IngestResponse>, Status> {
        // Stopped before the first `.await`, or dropped at a refusal before it.
        let receiving =
            ingest_cpu::Timer::sampled(ingest_cpu::Stage::Receive, ingest_cpu::RECEIVE_SAMPLING);
        let peer = request.remote_addr();
        let certs = request.peer_certs();
        let request = request.into_inner();
        // Counted as too large or malformed when refused as invalid; logged either way.
        let refuse = |too_large: bool, status: Status| {
            if status.code() == tonic::Code::InvalidArgument {
                match too_large {
                    true => self.rejections.too_large(),
                    false => self.rejections.malformed(),
                }
            }
            tracing::warn!(?peer, code = ?status.code(), "request refused: {}", status.message());
            status
        };
        let malformed = |e: ParseError| {
            let what = if e.over_limit {
                "batch too large"
            } else {
                "malformed message"
            };
            refuse(
                e.over_limit,
                Status::invalid_argument(format!("{what}: {e}")),
            )
        };
        let (encoded, arrived) = match BatchView::request_batch(&request).map_err(malformed)? {
            Some(RequestBatch::Encoded(b)) => (b.clone(), b),
            Some(RequestBatch::Zstd(frame)) => {
                match self.decompress(&frame).map_err(|s| refuse(false, s))? {
                    Ok(b) => (b, frame),
                    Err(e) => {
                        let too_large = matches!(e, FrameError::TooLarge { .. });
                        return Err(refuse(too_large, Status::invalid_argument(e.to_string())));
                    }
                }
            }
            None => return Err(refuse(false, Status::invalid_argument(NO_BATCH))),
        };
        let batch = validate::parse(&encoded, &self.limits).map_err(malformed)?;
        if let Err(status) =
            crate::access::check_host(certs.as_deref().map(Vec::as_slice), batch.host_id)
        {
            tracing::warn!(?peer, host = %crate::display::Clean(batch.host_id), "batch refused: {}", status.message());
            return Err(status);
        }
        let started = Instant::now();
        match self
            .store_batch(&batch, encoded.clone(), arrived, receiving)
            .await
        {
            Ok(Ingested::Duplicate) => {
                tracing::info!(host = %batch.host_id, sequence = batch.sequence,
                    "duplicate batch acknowledged, nothing stored");
                Ok(Response::new(IngestResponse {
                    sequence: batch.sequence,
                    duplicate: true,
                    profiles_stored: 0,
                    samples_stored: 0,
                }))
            }
            Ok(Ingested::New { profiles, samples }) => {
                self.arrivals.stored();
                tracing::debug!(
                    host = %batch.host_id,
                    sequence = batch.sequence,
                    profiles,
                    samples,
                    ms = started.elapsed().as_millis() as u64,
                    "batch stored"
                );
                Ok(Response::new(IngestResponse {
                    sequence: batch.sequence,
                    duplicate: false,
                    profiles_stored: profiles,
                    samples_stored: samples,
                }))
            }
            Err(status) => {
                if status.code() == tonic::Code::InvalidArgument {
                    self.rejections.invalid();
                }
                tracing::warn!(?peer, code = ?status.code(), "batch rejected: {}", status.message());
                Err(status)
            }
        }
    }
}

/// Binds `addr` (port 0 picks a free one); the bound address is `listener.local_addr()`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// The connections `listener` accepts, with `TCP_NODELAY` set. tonic sets it only on
/// listeners it binds itself; without it, Nagle's algorithm holds the end of an answer for the
/// client's delayed ACK (`wattson power` took 44 ms, not 2.5).
fn accepted(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        let socket = accepted?;
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on an accepted connection");
        }
        Ok(socket)
    })
}

/// Serves ingest, health and reflection on `listener` until `shutdown` resolves, then stops
/// accepting and returns once in-flight calls have finished.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let max = match config.max_message_bytes {
        0 => DEFAULT_MAX_MESSAGE_BYTES,
        n => n,
    };
    let detector = match config.detector {
        Some(d) => d,
        None => Arc::new(
            Detector::new(
                store.clone(),
                config.fleet.clone(),
                crate::detect::DetectConfig::default(),
            )
            .map_err(|e| ServeError::Detection(e.to_string()))?,
        ),
    };
    let query = crate::query_service::Query::server(Arc::new(crate::query::QueryEngine::new(
        store.clone(),
        config.fleet.clone(),
    )));
    // Skills read through the same tool interface MCP and gRPC expose.
    let tools = Arc::new(
        crate::analysis::Tools::new(store.clone(), config.fleet).with_detection(detector.clone()),
    );
    let skills = crate::skills_service::Skills::server(tools, config.skills.0);
    let ingest = crate::ingest_endpoint::IngestEndpoint::new(
        Ingest::new(
            store,
            config.limits,
            max,
            config.rejections,
            detector.arrivals(),
        ),
        max,
    );
    let every = match config.detect_every {
        d if d.is_zero() => DEFAULT_DETECT_EVERY,
        d => d,
    };
    let passes = tokio::spawn(crate::detection::run(detector.clone(), every));
    // A detection pass (periodic, or a ListRegressions in flight) stops between services
    // once stopping starts, rather than holding the shutdown until it ends.
    let stopping = detector.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.cancel();
    };
    // Ingest needs the ingest scope; queries and reflection (it lists every method) read.
    // Health stays open, for load balancers.
    let tokens = Tokens::new(config.token.as_deref(), config.token_file.as_deref())?;
    let ingest = InterceptedService::new(ingest, tokens.require(Scope::Ingest));
    let query = InterceptedService::new(query, tokens.require(Scope::Read));
    let skills = InterceptedService::new(skills, tokens.require(Scope::Read));
    // Detection reads need read; RecordChange also needs ingest, checked in the call.
    let detection = InterceptedService::new(
        crate::detection::service::Detection::server(detector, tokens.clone()),
        tokens.require(Scope::Read),
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<crate::ingest_endpoint::IngestEndpoint>()
        .await;
    health
        .set_serving::<wattson_proto::v1::query_service_server::QueryServiceServer<crate::query_service::Query>>()
        .await;
    health
        .set_serving::<wattson_proto::v1::skills_service_server::SkillsServiceServer<crate::skills_service::Skills>>()
        .await;
    health
        .set_serving::<wattson_proto::v1::detection_service_server::DetectionServiceServer<
            crate::detection::service::Detection,
        >>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(wattson_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection = InterceptedService::new(reflection, tokens.require(Scope::Read));

    let t = config.transport;
    let mut builder = Server::builder()
        .max_concurrent_streams(t.max_concurrent_streams)
        .concurrency_limit_per_connection(t.concurrency_per_connection)
        .timeout(t.request_timeout)
        .http2_keepalive_interval(Some(t.keepalive))
        .http2_keepalive_timeout(Some(t.keepalive))
        .tcp_keepalive(Some(t.keepalive));
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls.server_config()?)?;
    }
    let local = listener.local_addr().ok();
    tracing::info!(
        listen = ?local,
        tls = config.tls.is_some(),
        max_message_bytes = max,
        max_concurrent_streams = t.max_concurrent_streams,
        request_timeout = ?t.request_timeout,
        "collector serving wattson.v1.IngestService, QueryService, DetectionService, SkillsService, grpc.health.v1, reflection"
    );
    let served = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ingest)
        .add_service(query)
        .add_service(skills)
        .add_service(detection)
        .serve_with_incoming_shutdown(accepted(listener), shutdown)
        .await;
    passes.abort();
    served?;
    tracing::info!("collector stopped; in-flight batches finished");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_without_delay() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = std::pin::pin!(accepted(listener));
        let _client = TcpStream::connect(addr).await.unwrap();
        let socket = incoming.next().await.unwrap().unwrap();
        assert!(
            socket.nodelay().unwrap(),
            "an accepted connection still runs Nagle"
        );
    }
}
