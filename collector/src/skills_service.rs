//! The gRPC `wattson.v1.SkillsService`: the skills [`Registry`] run over the collector's
//! [`Tools`] (`ListSkills`, `RunSkill`), plus the two tool reads the query service lacks
//! (`Diff`, `Source`), which `wattson mcp` exposes. Each call runs on a blocking thread (the
//! store is synchronous). A bad request (unknown skill or service, bad window, a source root
//! that is not a directory) is INVALID_ARGUMENT; a part this collector does not run
//! (detection) is UNIMPLEMENTED; anything else is INTERNAL. Every message says what to fix.

use std::path::Path;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use wattson_proto::v1::skills_service_server::{SkillsService, SkillsServiceServer};
use wattson_proto::v1::{
    self, DiffRequest, DiffResponse, ListSkillsRequest, ListSkillsResponse, RunSkillRequest,
    RunSkillResponse, SourceRequest, SourceResponse,
};

use crate::analysis::{self, ToolError, Tools, store_window};
use crate::skills::{Registry, SkillError};

/// The skills a collector runs: the built-in catalogue (the default) and a user file's.
#[derive(Clone)]
pub struct SkillSet(pub Arc<Registry>);

impl SkillSet {
    /// The built-in skills, plus those of the user TOML file `path` when given; a bad file is
    /// refused with its path, line and what is wrong.
    pub fn load(path: Option<&Path>) -> Result<SkillSet, SkillError> {
        let registry = match path {
            Some(p) => Registry::builtin().with_user_file(p)?,
            None => Registry::builtin(),
        };
        Ok(SkillSet(Arc::new(registry)))
    }
}

impl Default for SkillSet {
    fn default() -> Self {
        SkillSet(Arc::new(Registry::builtin()))
    }
}

impl std::fmt::Debug for SkillSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.list().into_iter().map(|s| s.name))
            .finish()
    }
}

/// The skills service over tools and a registry.
#[derive(Clone)]
pub struct Skills {
    tools: Arc<Tools>,
    registry: Arc<Registry>,
}

impl Skills {
    /// A tonic server running `registry`'s skills over `tools`.
    pub fn server(tools: Arc<Tools>, registry: Arc<Registry>) -> SkillsServiceServer<Skills> {
        SkillsServiceServer::new(Skills { tools, registry })
    }

    /// Runs `f` on the blocking pool; its error becomes the call's status.
    async fn run<Req, Resp, E>(
        &self,
        req: Request<Req>,
        name: &'static str,
        f: fn(&Skills, &Req) -> Result<Resp, E>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        E: Into<SkillError> + Send + 'static,
    {
        let this = self.clone();
        let req = req.into_inner();
        let out = tokio::task::spawn_blocking(move || f(&this, &req))
            .await
            .map_err(|e| Status::internal(format!("{name} task failed: {e}")))?;
        match out.map_err(Into::into) {
            Ok(r) => Ok(Response::new(r)),
            Err(e) => {
                tracing::debug!(call = name, error = %e, "skills call refused");
                Err(status(e))
            }
        }
    }

    fn list(&self, _: &ListSkillsRequest) -> Result<ListSkillsResponse, SkillError> {
        Ok(ListSkillsResponse {
            skills: self.registry.list(),
        })
    }

    fn run_skill(&self, r: &RunSkillRequest) -> Result<RunSkillResponse, SkillError> {
        self.registry.run(&self.tools, r)
    }

    fn diff(&self, r: &DiffRequest) -> Result<DiffResponse, ToolError> {
        let w = r
            .window
            .ok_or_else(|| ToolError::BadRequest("window is required".into()))?;
        let b = r.baseline.unwrap_or_default();
        let d = self.tools.diff(&analysis::DiffRequest {
            from: w.from_unix_seconds,
            to: w.to_unix_seconds,
            baseline_from: b.from_unix_seconds,
            baseline_to: b.to_unix_seconds,
            build_a: r.build_a.clone(),
            build_b: r.build_b.clone(),
            service: r.service.clone(),
            weight: r.weight.clone(),
            limit: r.limit,
        })?;
        Ok(DiffResponse {
            unit: d.unit,
            sides: d.sides.into(),
            functions: d
                .functions
                .into_iter()
                .map(|f| v1::FunctionDelta {
                    service: f.service,
                    function: f.function,
                    before: f.before,
                    after: f.after,
                    delta: f.delta,
                    estimated: f.estimated,
                })
                .collect(),
            stacks: d
                .stacks
                .into_iter()
                .map(|s| v1::StackDelta {
                    service: s.service,
                    folded: s.folded,
                    before_share: s.before_share,
                    after_share: s.after_share,
                })
                .collect(),
            estimated: d.estimated,
        })
    }

    fn source(&self, r: &SourceRequest) -> Result<SourceResponse, ToolError> {
        let window = store_window(r.window.as_ref())?;
        let lines = self.tools.source(&r.service, &r.function, window)?;
        Ok(SourceResponse {
            lines: lines
                .into_iter()
                .map(|l| v1::SourceLine {
                    function: l.function,
                    callee: l.callee,
                    file: l.file,
                    line: l.line,
                    samples: l.samples,
                    share: l.share,
                })
                .collect(),
        })
    }
}

/// The status of a refused or failed call.
fn status(e: SkillError) -> Status {
    match e {
        SkillError::BadRequest(m) => Status::invalid_argument(m),
        SkillError::Unavailable(m) => Status::unimplemented(m),
        e @ (SkillError::BadFile { .. } | SkillError::Internal(_)) => {
            Status::internal(e.to_string())
        }
    }
}

#[tonic::async_trait]
impl SkillsService for Skills {
    async fn list_skills(
        &self,
        r: Request<ListSkillsRequest>,
    ) -> Result<Response<ListSkillsResponse>, Status> {
        self.run(r, "ListSkills", Skills::list).await
    }

    async fn run_skill(
        &self,
        r: Request<RunSkillRequest>,
    ) -> Result<Response<RunSkillResponse>, Status> {
        self.run(r, "RunSkill", Skills::run_skill).await
    }

    async fn diff(&self, r: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        self.run(r, "Diff", Skills::diff).await
    }

    async fn source(&self, r: Request<SourceRequest>) -> Result<Response<SourceResponse>, Status> {
        self.run(r, "Source", Skills::source).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_codes_a_client_can_act_on() {
        let c = |e| status(e).code();
        assert_eq!(
            c(SkillError::BadRequest("x".into())),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            c(SkillError::Unavailable("x".into())),
            tonic::Code::Unimplemented
        );
        assert_eq!(c(SkillError::Internal("x".into())), tonic::Code::Internal);
        let s = status(SkillError::BadFile {
            path: "s.toml".into(),
            line: 3,
            why: "bad".into(),
        });
        assert_eq!(s.message(), "s.toml:3: bad");
    }
}
