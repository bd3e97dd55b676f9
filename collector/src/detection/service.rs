//! The gRPC `wattson.v1.DetectionService` over a [`Detector`]: each call runs on a blocking
//! thread (the store is synchronous, a pass may run) and refusals map to status codes:
//! INVALID_ARGUMENT naming the field for a bad change or window, NOT_FOUND for a service never
//! profiled, UNAVAILABLE when the store fails, INTERNAL when detection refuses its own input.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use wattson_proto::v1::detection_service_server::{DetectionService, DetectionServiceServer};
use wattson_proto::v1::{
    ListChangesRequest, ListChangesResponse, ListRegressionsRequest, ListRegressionsResponse,
    RecordChangeRequest, RecordChangeResponse,
};

use super::{DetectionError, Detector};
use crate::access::{Scope, Tokens};
use crate::changes::ChangeError;

/// The detection service.
#[derive(Clone)]
pub struct Detection {
    detector: Arc<Detector>,
    /// Recording a change writes: it needs the ingest scope on top of the service's read.
    tokens: Tokens,
}

impl Detection {
    /// A tonic server for `detector`; `tokens` decide who may record changes.
    pub fn server(detector: Arc<Detector>, tokens: Tokens) -> DetectionServiceServer<Detection> {
        DetectionServiceServer::new(Detection { detector, tokens })
    }

    async fn run<Req, Resp>(
        &self,
        req: Request<Req>,
        name: &'static str,
        f: fn(&Detector, Req, i64) -> Result<Resp, DetectionError>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        let d = self.detector.clone();
        let req = req.into_inner();
        let out = tokio::task::spawn_blocking(move || f(&d, req, crate::report::now()))
            .await
            .map_err(|e| Status::internal(format!("{name} task failed: {e}")))?;
        out.map(Response::new).map_err(|e| {
            tracing::debug!(call = name, error = %e, "detection call refused");
            status(e)
        })
    }
}

/// The status a refusal maps to.
pub fn status(e: DetectionError) -> Status {
    match e {
        DetectionError::Bad(m) => Status::invalid_argument(m),
        e @ DetectionError::UnknownService(_) => Status::not_found(e.to_string()),
        DetectionError::Changes(ChangeError::Invalid { .. }) => {
            Status::invalid_argument(e.to_string())
        }
        DetectionError::Store(_)
        | DetectionError::Changes(ChangeError::Store(_))
        | DetectionError::Cancelled => Status::unavailable(e.to_string()),
        DetectionError::Detect(_) | DetectionError::Config { .. } => {
            Status::internal(e.to_string())
        }
    }
}

#[tonic::async_trait]
impl DetectionService for Detection {
    async fn record_change(
        &self,
        r: Request<RecordChangeRequest>,
    ) -> Result<Response<RecordChangeResponse>, Status> {
        self.tokens.check(r.metadata(), Scope::Ingest)?;
        self.run(r, "RecordChange", |d, r, now| {
            Ok(d.change_log().record(r.change, now)?)
        })
        .await
    }

    async fn list_changes(
        &self,
        r: Request<ListChangesRequest>,
    ) -> Result<Response<ListChangesResponse>, Status> {
        self.run(r, "ListChanges", |d, r, _| d.changes(&r)).await
    }

    async fn list_regressions(
        &self,
        r: Request<ListRegressionsRequest>,
    ) -> Result<Response<ListRegressionsResponse>, Status> {
        self.run(r, "ListRegressions", |d, r, now| d.regressions_at(&r, now))
            .await
    }
}
