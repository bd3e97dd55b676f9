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
}

impl From<Status> for SendError {
    fn from(s: Status) -> Self {
        let message = s.message().to_owned();
        match s.code() {
            // OUT_OF_RANGE is tonic's answer to a message above the collector's size limit.
            Code::InvalidArgument | Code::OutOfRange => SendError::Rejected {
                code: s.code(),
                message,
            },
            // Unauthenticated / PermissionDenied are configuration problems an operator fixes
            // on either side; keeping the data until then is what they want.
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
        Ok(Self { inner, timeout })
    }

    /// Sends one batch and waits for the collector's acknowledgement (durable or duplicate).
    pub async fn send(&mut self, batch: Batch) -> Result<IngestResponse, SendError> {
        // Compressed by us, not by gRPC (see the module doc); a failure here is local memory
        // trouble, so the batch stays spooled and is retried.
        let request = IngestRequest::zstd(&batch).map_err(|e| SendError::Retry {
            code: Code::ResourceExhausted,
            message: format!("compressing the batch: {e}"),
        })?;
        let mut request = Request::new(request);
        request.set_timeout(self.timeout);
        Ok(self.inner.ingest(request).await?.into_inner())
    }
}
