//! The `wattson.v1.IngestService` endpoint, routed by hand rather than generated so a request
//! reaches the handler as the bytes it arrived in ([`RawRequest`]): the handler reads the batch
//! in place ([`wattson_proto::view`]) rather than decoding it into owned messages, and the
//! store's journal keeps those bytes rather than encoding the batch again. Clients still use
//! the generated client.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codec::{CompressionEncoding, EnabledCompressionEncodings};
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};
use wattson_proto::codec::RawRequest;
use wattson_proto::v1::{IngestResponse, ingest_service_server};

use crate::server::Ingest;

const INGEST_PATH: &str = "/wattson.v1.IngestService/Ingest";

/// The ingest service as a tower service for tonic's router.
#[derive(Clone)]
pub struct IngestEndpoint {
    inner: Arc<Ingest>,
    accept: EnabledCompressionEncodings,
    max_decoding: usize,
}

impl IngestEndpoint {
    /// Serves `inner`, accepting zstd and gzip requests up to `max_decoding` bytes decoded.
    pub fn new(inner: Ingest, max_decoding: usize) -> Self {
        let mut accept = EnabledCompressionEncodings::default();
        accept.enable(CompressionEncoding::Zstd);
        accept.enable(CompressionEncoding::Gzip);
        Self {
            inner: Arc::new(inner),
            accept,
            max_decoding,
        }
    }
}

impl NamedService for IngestEndpoint {
    const NAME: &'static str = ingest_service_server::SERVICE_NAME;
}

struct Unary(Arc<Ingest>);

impl UnaryService<bytes::Bytes> for Unary {
    type Response = IngestResponse;
    type Future = BoxFuture<Response<IngestResponse>, Status>;

    fn call(&mut self, request: Request<bytes::Bytes>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.handle(request).await })
    }
}

impl<B> Service<http::Request<B>> for IngestEndpoint
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != INGEST_PATH {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let (inner, accept, max) = (self.inner.clone(), self.accept, self.max_decoding);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawRequest::<IngestResponse>::default())
                .apply_compression_config(accept, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(max), None);
            let response = grpc.unary(Unary(inner.clone()), req).await;
            // tonic refuses a request above the size limit before the handler sees it: as sent
            // (OUT_OF_RANGE, 11) or once gzip is undone (RESOURCE_EXHAUSTED, 8).
            let status = response.headers().get("grpc-status").map(|v| v.as_bytes());
            if matches!(status, Some(b"11" | b"8")) {
                inner.refused_too_large();
            }
            Ok(response)
        })
    }
}
