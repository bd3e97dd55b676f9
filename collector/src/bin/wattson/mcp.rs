//! `wattson mcp`: the collector's tool interface and skills as MCP tools, over stdio, for LLM
//! agents. It runs where the agent runs and is a client of the collector's gRPC (query,
//! detection and skills services), so it answers exactly what `wattson` answers: each tool
//! takes JSON arguments with a schema (the parameter structs below) and returns the wire type
//! of its gRPC answer serialized as it is (structured content, and the same JSON as text).
//!
//! A failed call is a tool error naming what to fix, never a crash (see [`Failure`]): a bad
//! argument (unreadable time, unknown service or skill) is "invalid params"; an unreachable
//! or failing collector, or a service it does not serve (detection), is "internal" with the
//! collector's message. stdout carries only the protocol; logs go to stderr.

use std::sync::Arc;

use anyhow::Context as _;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::{ServiceExt as _, tool, tool_handler, tool_router};
use tonic::Code;
use wattson_collector::skills::REGRESSION_SOLVER;
use wattson_proto::v1::{
    BuildsRequest, DiffRequest, ListChangesRequest, ListRegressionsRequest, ListSkillsRequest,
    PowerRequest, RankBy, RunSkillRequest, SeriesRequest, SourceRequest, StacksRequest, TopRequest,
};

use crate::connect::Conn;
use crate::mcp_params::{
    DiffParams, Failure, Rank, RegressionsParams, RunSkillParams, SeriesParams,
    ServiceWindowParams, SourceParams, StacksParams, SuggestParams, TopParams, Weight, Window,
    WindowParams, as_of,
};

/// Stacks the `stacks` tool returns unless asked otherwise: an agent's context is small.
const DEFAULT_STACKS: usize = 100;

/// The MCP server: clients of one collector connection.
#[derive(Clone)]
pub struct Wattson {
    conn: Conn,
    /// The collector's URL, for error messages.
    collector: Arc<str>,
    tool_router: ToolRouter<Self>,
}

/// A serialized wire answer as the tool's result.
fn answer<T: serde::Serialize>(r: &T) -> Result<CallToolResult, Failure> {
    let v = serde_json::to_value(r)
        .map_err(|e| Failure::internal(format!("serializing the answer: {e}")))?;
    Ok(CallToolResult::structured(v))
}

/// `Some("")` and `None` both mean "not given".
fn given(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

/// Checks a source root is absolute: the collector resolves it, not this process.
fn source_root(s: &Option<String>) -> Result<String, Failure> {
    let s = given(s);
    if !s.is_empty() && !std::path::Path::new(&s).is_absolute() {
        return Err(Failure::invalid(format!(
            "source_root {s:?} must be an absolute path on the collector's host \
             (the collector reads it)"
        )));
    }
    Ok(s)
}

impl Wattson {
    pub fn new(conn: Conn, collector: &str) -> Wattson {
        Wattson {
            conn,
            collector: collector.into(),
            tool_router: Self::tool_router(),
        }
    }

    /// A failed gRPC call: the caller's fault is invalid params, anything else internal,
    /// each with the collector's message and what to do.
    fn error(&self, what: &str, s: tonic::Status) -> Failure {
        let url = &self.collector;
        let message = s.message();
        match s.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::OutOfRange
            | Code::FailedPrecondition => Failure::invalid(format!("{what}: {message}")),
            // A part the collector does not run (detection), or an older collector without
            // the service at all (tonic then says nothing).
            Code::Unimplemented if message.is_empty() => Failure::internal(format!(
                "{what} is not available: the collector at {url} does not serve it \
                 (an older collector, or one without detection)"
            )),
            Code::Unimplemented => {
                Failure::internal(format!("{what} is not available at {url}: {message}"))
            }
            Code::Unauthenticated => Failure::internal(format!(
                "{what}: the collector at {url} refused the token ({message}): start \
                 `wattson mcp` with --token or WATTSON_TOKEN"
            )),
            code => Failure::internal(format!("{what}: collector {url}: {message} ({code:?})")),
        }
    }

    /// The answer of a gRPC call as the tool's result (its failure as [`Self::error`]).
    async fn reply<T: serde::Serialize>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<CallToolResult, Failure> {
        answer(&call.await.map_err(|s| self.error(what, s))?.into_inner())
    }

    /// Runs `skill` ("" for the opportunity finder) with `p`'s window, service, regression
    /// ("all" meaning every open one) and source root.
    async fn run_skill_request(
        &self,
        skill: String,
        p: SuggestParams,
    ) -> Result<CallToolResult, Failure> {
        let name = if skill.is_empty() {
            "suggest"
        } else {
            "run_skill"
        };
        let regression_id = match p.regression_id.as_deref() {
            None | Some("all") => String::new(),
            Some(id) => id.to_string(),
        };
        let r = RunSkillRequest {
            skill,
            window: Some(p.window.wire("-1h")?),
            service: given(&p.service),
            regression_id,
            source_root: source_root(&p.source_root)?,
            as_of_unix_seconds: as_of(p.as_of.as_deref())?,
        };
        self.reply(name, self.conn.skills().run_skill(r)).await
    }
}

#[tool_router]
impl Wattson {
    /// Functions ranked by power (watts) or CPU, self or inclusive, with fleet-scaled watts.
    #[tool(
        description = "Functions ranked by power (watts on the profiled hosts and scaled to the \
        fleet) or CPU samples, self or inclusive. Returns wattson.v1.TopResponse as JSON; \
        `estimated: true` marks watts from a utilization model rather than RAPL."
    )]
    async fn top(&self, Parameters(p): Parameters<TopParams>) -> Result<CallToolResult, Failure> {
        let rank = match p.rank {
            Rank::EnergySelf => RankBy::EnergySelf,
            Rank::EnergyInclusive => RankBy::EnergyInclusive,
            Rank::SamplesSelf => RankBy::SamplesSelf,
            Rank::SamplesInclusive => RankBy::SamplesInclusive,
        };
        let r = TopRequest {
            window: Some(p.window.wire("-1h")?),
            service: given(&p.service),
            rank: rank as i32,
            limit: p.limit.unwrap_or(0),
        };
        self.reply("top", self.conn.query().top(r)).await
    }

    #[tool(
        description = "One function's power and CPU over time, in buckets. Returns \
        wattson.v1.SeriesResponse as JSON."
    )]
    async fn series(
        &self,
        Parameters(p): Parameters<SeriesParams>,
    ) -> Result<CallToolResult, Failure> {
        let r = SeriesRequest {
            window: Some(p.window.wire("-1h")?),
            service: p.service,
            function: p.function,
            step_seconds: p.step_seconds.unwrap_or(0),
        };
        self.reply("series", self.conn.query().series(r)).await
    }

    #[tool(
        description = "Folded call stacks (root first, `;`-separated, kernel frames end in \
        `_[k]`) with samples and joules, most samples first. Returns \
        wattson.v1.StacksResponse as JSON, cut to `limit` stacks."
    )]
    async fn stacks(
        &self,
        Parameters(p): Parameters<StacksParams>,
    ) -> Result<CallToolResult, Failure> {
        let r = StacksRequest {
            window: Some(p.window.wire("-1h")?),
            service: given(&p.service),
            build_id: given(&p.build_id),
        };
        let resp = self.conn.query().stacks(r).await;
        let mut resp = resp.map_err(|s| self.error("stacks", s))?.into_inner();
        resp.stacks.sort_by(|a, b| {
            b.samples
                .cmp(&a.samples)
                .then_with(|| a.folded.cmp(&b.folded))
        });
        resp.stacks.truncate(p.limit.unwrap_or(DEFAULT_STACKS));
        answer(&resp)
    }

    #[tool(
        description = "Builds (versions) each service ran in the window, most samples first: \
        what `diff` compares with build_a/build_b. Returns wattson.v1.BuildsResponse as JSON."
    )]
    async fn builds(
        &self,
        Parameters(p): Parameters<ServiceWindowParams>,
    ) -> Result<CallToolResult, Failure> {
        let r = BuildsRequest {
            window: Some(p.window.wire("-1h")?),
            service: given(&p.service),
        };
        self.reply("builds", self.conn.query().builds(r)).await
    }

    #[tool(
        description = "Fleet power summary per service: watts on the profiled hosts, fleet \
        watts, kWh/year, CO2 and cost when configured, idle power, dropped samples. Returns \
        wattson.v1.PowerResponse as JSON."
    )]
    async fn power(
        &self,
        Parameters(p): Parameters<WindowParams>,
    ) -> Result<CallToolResult, Failure> {
        let r = PowerRequest {
            window: Some(p.window.wire("-1h")?),
        };
        self.reply("power", self.conn.query().power(r)).await
    }

    #[tool(
        description = "Compares two windows (baseline_from/baseline_to against from/to, by \
        rate) or two builds of a service (build_a against build_b over from/to, by share of \
        each build): the functions and the stacks that changed most. Returns \
        wattson.v1.DiffResponse as JSON."
    )]
    async fn diff(&self, Parameters(p): Parameters<DiffParams>) -> Result<CallToolResult, Failure> {
        let baseline = match (&p.baseline_from, &p.baseline_to) {
            (None, None) => None,
            (from, to) => Some(
                Window {
                    from: from.clone(),
                    to: to.clone(),
                }
                .wire("-2h")?,
            ),
        };
        let r = DiffRequest {
            window: Some(p.window.wire("-1h")?),
            baseline,
            build_a: given(&p.build_a),
            build_b: given(&p.build_b),
            service: given(&p.service),
            weight: match p.weight {
                Weight::Energy => "energy",
                Weight::Samples => "samples",
            }
            .into(),
            limit: p.limit.unwrap_or(0),
        };
        self.reply("diff", self.conn.skills().diff(r)).await
    }

    #[tool(
        description = "Where a function spends its samples in its source: file:line of its own \
        samples and of the calls to each callee, from the frames' DWARF data, most samples \
        first. Returns wattson.v1.SourceResponse as JSON (empty without debug info)."
    )]
    async fn source(
        &self,
        Parameters(p): Parameters<SourceParams>,
    ) -> Result<CallToolResult, Failure> {
        let r = SourceRequest {
            window: Some(p.window.wire("-1h")?),
            service: p.service,
            function: p.function,
        };
        self.reply("source", self.conn.skills().source(r)).await
    }

    #[tool(
        description = "Power regressions the collector detected (FBDetect-style change points \
        per function), each with its size in % and watts, evidence stacks and ranked likely \
        causes (changes). Returns wattson.v1.ListRegressionsResponse as JSON; `note` says why \
        nothing could be reported. Window default: the last 24 hours."
    )]
    async fn regressions(
        &self,
        Parameters(p): Parameters<RegressionsParams>,
    ) -> Result<CallToolResult, Failure> {
        let r = ListRegressionsRequest {
            window: Some(p.window.wire("-24h")?),
            service: given(&p.service),
            all: p.all,
            as_of_unix_seconds: as_of(p.as_of.as_deref())?,
        };
        let what = "detection (regressions)";
        self.reply(what, self.conn.detection().list_regressions(r))
            .await
    }

    #[tool(
        description = "Changes (deploys, config pushes, experiments, commits) recorded or seen \
        by the collector, oldest first: the candidate causes of regressions. Returns \
        wattson.v1.ListChangesResponse as JSON. Window default: the last 24 hours."
    )]
    async fn changes(
        &self,
        Parameters(p): Parameters<ServiceWindowParams>,
    ) -> Result<CallToolResult, Failure> {
        let r = ListChangesRequest {
            window: Some(p.window.wire("-24h")?),
            service: given(&p.service),
        };
        let what = "detection (changes)";
        self.reply(what, self.conn.detection().list_changes(r))
            .await
    }

    #[tool(
        description = "The collector's skills (encoded efficiency expertise): name, what it \
        does, what it reads, and whether built in or from the collector's skills file. Returns \
        wattson.v1.ListSkillsResponse as JSON."
    )]
    async fn list_skills(&self) -> Result<CallToolResult, Failure> {
        self.reply(
            "list_skills",
            self.conn.skills().list_skills(ListSkillsRequest {}),
        )
        .await
    }

    #[tool(
        description = "What to fix to save power: runs every pattern skill over the window \
        (the opportunity finder, findings ranked by fleet watts saved), or with regression_id \
        the regression solver (what changed, which stacks grew, the culprit change, a \
        mitigation). Each finding has evidence, savings in W and fleet W (estimated when the \
        watts are), confidence, file:line and advice, and with source_root a patch. Returns \
        wattson.v1.RunSkillResponse as JSON; `notes` say what could not be done."
    )]
    async fn suggest(
        &self,
        Parameters(p): Parameters<SuggestParams>,
    ) -> Result<CallToolResult, Failure> {
        let skill = match p.regression_id.as_deref() {
            None | Some("") => String::new(),
            Some(_) => REGRESSION_SOLVER.to_string(),
        };
        self.run_skill_request(skill, p).await
    }

    #[tool(
        description = "Runs one skill by name (`list_skills` names them) over the window. \
        Returns wattson.v1.RunSkillResponse as JSON."
    )]
    async fn run_skill(
        &self,
        Parameters(p): Parameters<RunSkillParams>,
    ) -> Result<CallToolResult, Failure> {
        if p.skill.is_empty() {
            return Err(Failure::invalid(
                "skill is empty: give a name from list_skills, or call suggest",
            ));
        }
        self.run_skill_request(p.skill, p.run).await
    }
}

#[tool_handler(
    router = self.tool_router,
    name = "wattson",
    instructions = "Wattson: where a fleet's power goes, down to the function. Start with \
    `power` (per service) and `top` (per function), look for `regressions`, then `suggest` \
    for what to fix and where. Watts marked estimated come from a utilization model."
)]
impl rmcp::ServerHandler for Wattson {}

/// Serves MCP on stdin/stdout until the client closes stdin.
pub async fn serve(conn: &Conn, collector: &str) -> anyhow::Result<()> {
    tracing::info!(collector, "wattson mcp: serving MCP on stdio");
    let running = Wattson::new(conn.clone(), collector)
        .serve(rmcp::transport::stdio())
        .await
        .context("MCP initialization on stdin/stdout")?;
    let reason = running.waiting().await.context("MCP session")?;
    tracing::info!(?reason, "wattson mcp: client closed the session");
    Ok(())
}
