//! The gRPC client of the collector's `wattson.v1.IngestService`: one lazily connected channel
//! (plain, or mutual TLS with `--tls-cert/--tls-key/--tls-ca`), batches sent as zstd frames
//! (`IngestRequest.batch_zstd`, which the collector decompresses more cheaply than gRPC's), an
//! optional bearer token, and a classification of failures into "retry later" and "this batch
//! will never be accepted".

use std::path::PathBuf;
use std::time::Duration;

use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};
use wattson_proto::compressed::NO_BATCH;
use wattson_proto::v1::ingest_service_client::IngestServiceClient;
use wattson_proto::v1::{Batch, IngestRequest, IngestResponse};

/// Client configuration errors (bad URL, unreadable TLS files).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The `--collector` URL is not usable.
    #[error("--collector {url}: {why}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// A TLS file could not be read.
    #[error("cannot read {flag} file {path}: {source}")]
    TlsFile {
        /// The flag naming the file.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The bearer token cannot be sent as a header.
    #[error("--token contains characters not allowed in an HTTP header")]
    BadToken,
}

/// Mutual-TLS files of the agent (PEM).
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// Client certificate (`--tls-cert`).
    pub cert: PathBuf,
    /// Client private key (`--tls-key`).
    pub key: PathBuf,
    /// CA the collector's certificate must chain to (`--tls-ca`).
    pub ca: PathBuf,
}

/// Outcome of a failed send.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Transient (collector down, overloaded, network): keep the batch and retry.
    #[error("collector unavailable ({code:?}): {message}")]
    Retry {
        /// gRPC status code.
        code: Code,
        /// Status message.
        message: String,
    },
    /// The collector refuses this batch as it is (invalid, too large): retrying cannot help.
    #[error("collector rejected the batch ({code:?}): {message}")]
    Rejected {
        /// gRPC status code.
        code: Code,
        /// Status message naming the field at fault.
        message: String,
    },
    /// The collector refuses this agent, not the batch (bad or missing token, a token without
    /// the ingest scope, a host id that is not a name of the client certificate): no batch
    /// will be accepted until an operator fixes the configuration.
    #[error("the collector refuses this agent ({code:?}): {message}. Fix: {fix}")]
    Refused {
        /// gRPC status code (UNAUTHENTICATED or PERMISSION_DENIED).
        code: Code,
        /// Status message, naming the cause.
        message: String,
        /// What to change, naming the flag.
        fix: &'static str,
    },
}

/// What to change when the collector refuses this agent with `code` and `message`.
fn refusal_fix(code: Code, message: &str) -> &'static str {
    if code == Code::Unauthenticated {
        "pass a token the collector accepts (one of its --token / --token-file entries) with \
         --token or WATTSON_TOKEN"
    } else if message.contains("host_id") {
        "the host id (--host-id, default /etc/machine-id) must be the CN or a SAN of the \
         --tls-cert certificate: issue the agent a certificate for its host id, or pass the \
         --host-id its certificate names"
    } else if message.contains("scope") {
        "give the agent a token with the ingest scope (--token or WATTSON_TOKEN)"
    } else {
        "check --token, --tls-cert and --host-id against the collector's configuration"
    }
}

impl From<Status> for SendError {
    fn from(s: Status) -> Self {
        let message = s.message().to_owned();
        match s.code() {
            // OUT_OF_RANGE is tonic's answer to a message above the collector's size limit,
            // RESOURCE_EXHAUSTED to one above it once decompressed (and other gRPC servers'
            // to any message too large): the same batch would be refused forever.
            Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted => {
                SendError::Rejected {
                    code: s.code(),
                    message,
                }
            }
            // Configuration an operator fixes on either side: the batch is fine and stays
            // spooled, but retrying quietly would hide the cause.
            Code::Unauthenticated | Code::PermissionDenied => SendError::Refused {
                code: s.code(),
                fix: refusal_fix(s.code(), &message),
                message,
            },
            code => SendError::Retry { code, message },
        }
    }
}

#[derive(Clone)]
struct Token(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A connection to one collector.
#[derive(Clone)]
pub struct Client {
    inner: IngestServiceClient<InterceptedService<Channel, Token>>,
    timeout: Duration,
    /// The collector predates `batch_zstd` (it answered "batch is missing"): send batches as
    /// messages, compressed by gRPC.
    plain: bool,
}

fn read(flag: &'static str, path: &PathBuf) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::TlsFile {
        flag,
        path: path.clone(),
        source,
    })
}

impl Client {
    /// A client for `url` (`http://HOST:PORT`, or `https://` with `tls`). Connects lazily:
    /// a collector that is down now is not an error here, only a retry later.
    pub fn new(
        url: &str,
        tls: Option<&ClientTls>,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let bad = |why: String| ClientError::BadUrl {
            url: url.into(),
            why,
        };
        let uri: tonic::transport::Uri = url
            .parse()
            .map_err(|e| bad(format!("not a URL ({e}); expected http://HOST:PORT")))?;
        let scheme = uri.scheme_str().unwrap_or("");
        let url = match (scheme, tls.is_some()) {
            ("http", false) | ("https", true) => url.to_owned(),
            ("http", true) => url.replacen("http://", "https://", 1),
            ("https", false) => {
                return Err(bad(
                    "https needs --tls-cert, --tls-key and --tls-ca (mutual TLS)".into(),
                ));
            }
            _ => return Err(bad("scheme must be http:// or https://".into())),
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .timeout(timeout);
        if let Some(t) = tls {
            let host = uri.host().unwrap_or("localhost").to_owned();
            let config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read("--tls-ca", &t.ca)?))
                .identity(Identity::from_pem(
                    read("--tls-cert", &t.cert)?,
                    read("--tls-key", &t.key)?,
                ))
                .domain_name(host);
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| bad(format!("TLS configuration: {e}")))?;
        }
        if let Some(warning) = token.and_then(|_| wattson_proto::cli::token_in_clear(&url)) {
            tracing::warn!("{warning}");
        }
        let token = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<MetadataValue<_>>()
                    .map_err(|_| ClientError::BadToken)
            })
            .transpose()?;
        let inner = IngestServiceClient::with_interceptor(endpoint.connect_lazy(), Token(token))
            .accept_compressed(CompressionEncoding::Zstd)
            .max_encoding_message_size(usize::MAX);
        Ok(Self {
            inner,
            timeout,
            plain: false,
        })
    }

    /// Sends one batch and waits for the collector's acknowledgement (durable or duplicate).
    pub async fn send(&mut self, batch: Batch) -> Result<IngestResponse, SendError> {
        if !self.plain {
            // Compressed by us, not by gRPC (see the module doc); a failure here is local
            // memory trouble, so the batch stays spooled and is retried.
            let request = IngestRequest::zstd(&batch).map_err(|e| SendError::Retry {
                code: Code::ResourceExhausted,
                message: format!("compressing the batch: {e}"),
            })?;
            match self.call(request, None).await {
                // A collector older than `batch_zstd` saw no batch: nothing was stored, so
                // the same batch goes again the old way, and so does every later one.
                Err(s) if s.code() == Code::InvalidArgument && s.message() == NO_BATCH => {
                    tracing::warn!(
                        "the collector predates zstd-framed batches (IngestRequest.batch_zstd); \
                         sending batches as messages with gRPC compression (upgrade it to \
                         save its CPU)"
                    );
                    self.plain = true;
                }
                r => return Ok(r?),
            }
        }
        Ok(self
            .call(IngestRequest::plain(batch), Some(CompressionEncoding::Zstd))
            .await?)
    }

    async fn call(
        &self,
        request: IngestRequest,
        compress: Option<CompressionEncoding>,
    ) -> Result<IngestResponse, Status> {
        let mut request = Request::new(request);
        request.set_timeout(self.timeout);
        let mut inner = self.inner.clone();
        if let Some(c) = compress {
            inner = inner.send_compressed(c);
        }
        Ok(inner.ingest(request).await?.into_inner())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::{Arc, Mutex};

    use tonic::{Response, Status};
    use wattson_proto::synthetic::{self, Shape};
    use wattson_proto::v1::ingest_request::Payload;
    use wattson_proto::v1::ingest_service_server::{IngestService, IngestServiceServer};

    use super::*;

    /// A collector that stores batches sent as messages and refuses zstd frames with
    /// `answer` (as `code`): "batch is missing" is what one from before `batch_zstd` says.
    pub(in crate::ship) struct Collector {
        pub(in crate::ship) answer: &'static str,
        pub(in crate::ship) code: Code,
        pub(in crate::ship) stored: Mutex<Vec<u64>>,
        pub(in crate::ship) refused: Mutex<u32>,
    }

    #[tonic::async_trait]
    impl IngestService for Collector {
        async fn ingest(
            &self,
            r: Request<IngestRequest>,
        ) -> Result<Response<IngestResponse>, Status> {
            match r.into_inner().payload {
                Some(Payload::Batch(b)) => {
                    self.stored.lock().unwrap().push(b.sequence);
                    Ok(Response::new(IngestResponse {
                        sequence: b.sequence,
                        ..Default::default()
                    }))
                }
                _ => {
                    *self.refused.lock().unwrap() += 1;
                    Err(Status::new(self.code, self.answer))
                }
            }
        }
    }

    /// Serves a [`Collector`] answering `answer` on 127.0.0.1; a client of it.
    async fn serve(answer: &'static str) -> (Arc<Collector>, Client) {
        serve_code(answer, Code::InvalidArgument).await
    }

    pub(in crate::ship) async fn serve_code(
        answer: &'static str,
        code: Code,
    ) -> (Arc<Collector>, Client) {
        let c = Arc::new(Collector {
            answer,
            code,
            stored: Mutex::default(),
            refused: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service =
            IngestServiceServer::from_arc(c.clone()).accept_compressed(CompressionEncoding::Zstd);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let url = format!("http://{addr}");
        (
            c,
            Client::new(&url, None, None, Duration::from_secs(10)).unwrap(),
        )
    }

    pub(in crate::ship) fn batch(seq: u64) -> Batch {
        synthetic::batch("h", seq, 1 << 60, &Shape::default(), seq)
    }

    #[tokio::test]
    async fn a_collector_that_predates_zstd_frames_gets_every_batch_as_a_message() {
        let (old, mut client) = serve(NO_BATCH).await;
        for seq in 1..=3 {
            assert_eq!(client.send(batch(seq)).await.unwrap().sequence, seq);
        }
        // Refused once as a frame, then every batch (the first again) as a message.
        assert_eq!(*old.stored.lock().unwrap(), [1, 2, 3]);
        assert_eq!(*old.refused.lock().unwrap(), 1);
    }

    /// Issue 20: a batch above the collector's limit once decompressed was retried forever.
    #[tokio::test]
    async fn resource_exhausted_is_a_rejection_not_a_retry() {
        let (c, mut client) = serve_code(
            "size limit exceeded while decompressing",
            Code::ResourceExhausted,
        )
        .await;
        let e = client.send(batch(1)).await.unwrap_err();
        assert!(
            matches!(
                &e,
                SendError::Rejected {
                    code: Code::ResourceExhausted,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(*c.refused.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn any_other_refusal_of_a_frame_is_a_rejection_not_a_resend() {
        let (c, mut client) = serve("batch_zstd declares 99 bytes").await;
        let e = client.send(batch(1)).await.unwrap_err();
        assert!(
            matches!(&e, SendError::Rejected { code: Code::InvalidArgument, message } if message == "batch_zstd declares 99 bytes"),
            "{e}"
        );
        assert!(c.stored.lock().unwrap().is_empty());
        assert_eq!(*c.refused.lock().unwrap(), 1);
    }

    /// Issue 20: a host id / certificate mismatch or a bad token was retried forever with a
    /// warning about an unavailable collector; it is a refusal that names the fix.
    #[tokio::test]
    async fn permission_denied_and_unauthenticated_are_refusals_that_name_the_fix() {
        let (_, mut client) = serve_code(
            "the batch's host_id \"h\" is not a name of the client certificate (agent-1)",
            Code::PermissionDenied,
        )
        .await;
        let e = client.send(batch(1)).await.unwrap_err();
        assert!(
            matches!(
                &e,
                SendError::Refused {
                    code: Code::PermissionDenied,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("--host-id"), "{e}");
        let (_, mut client) =
            serve_code("bearer token does not match", Code::Unauthenticated).await;
        let e = client.send(batch(1)).await.unwrap_err();
        assert!(
            matches!(
                &e,
                SendError::Refused {
                    code: Code::Unauthenticated,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("--token"), "{e}");
    }
}
