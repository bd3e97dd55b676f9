//! The gRPC `wattson.v1.QueryService`: each call runs the [`QueryEngine`] on a blocking thread
//! (the store is synchronous) and maps refusals to status codes a script can act on:
//! INVALID_ARGUMENT for a malformed request, NOT_FOUND for an unknown service or no data,
//! UNAVAILABLE when the store fails.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use wattson_proto::v1::query_service_server::{QueryService, QueryServiceServer};
use wattson_proto::v1::{
    BuildsRequest, BuildsResponse, PowerRequest, PowerResponse, SeriesRequest, SeriesResponse,
    StacksRequest, StacksResponse, TopRequest, TopResponse,
};

use crate::query::{QueryEngine, QueryError};

/// The query service over an engine.
#[derive(Clone)]
pub struct Query {
    engine: Arc<QueryEngine>,
}

impl Query {
    /// A tonic server for `engine`.
    pub fn server(engine: Arc<QueryEngine>) -> QueryServiceServer<Query> {
        QueryServiceServer::new(Query { engine })
    }

    async fn run<Req, Resp>(
        &self,
        req: Request<Req>,
        name: &'static str,
        f: fn(&QueryEngine, &Req) -> Result<Resp, QueryError>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        let engine = self.engine.clone();
        let req = req.into_inner();
        let out = tokio::task::spawn_blocking(move || f(&engine, &req))
            .await
            .map_err(|e| Status::internal(format!("{name} query task failed: {e}")))?;
        match out {
            Ok(r) => Ok(Response::new(r)),
            Err(e) => {
                tracing::debug!(query = name, error = %e, "query refused");
                Err(status(e))
            }
        }
    }
}

fn status(e: QueryError) -> Status {
    match e {
        QueryError::Bad(m) => Status::invalid_argument(m),
        e @ (QueryError::UnknownService { .. } | QueryError::NoData(_)) => {
            Status::not_found(e.to_string())
        }
        QueryError::Store(e) => Status::unavailable(format!("store: {e}")),
    }
}

#[tonic::async_trait]
impl QueryService for Query {
    async fn top(&self, r: Request<TopRequest>) -> Result<Response<TopResponse>, Status> {
        self.run(r, "top", QueryEngine::top).await
    }

    async fn series(&self, r: Request<SeriesRequest>) -> Result<Response<SeriesResponse>, Status> {
        self.run(r, "series", QueryEngine::series).await
    }

    async fn stacks(&self, r: Request<StacksRequest>) -> Result<Response<StacksResponse>, Status> {
        self.run(r, "stacks", QueryEngine::stacks).await
    }

    async fn builds(&self, r: Request<BuildsRequest>) -> Result<Response<BuildsResponse>, Status> {
        self.run(r, "builds", QueryEngine::builds).await
    }

    async fn power(&self, r: Request<PowerRequest>) -> Result<Response<PowerResponse>, Status> {
        self.run(r, "power", QueryEngine::power).await
    }
}
