//! `wattson mcp`: the collector's tool interface and skills as MCP tools, over stdio, for LLM
//! agents. It runs where the agent runs and is a client of the collector's gRPC (query,
//! detection and skills services), so it answers exactly what `wattson` answers: each tool
//! takes JSON arguments with a schema (the parameter structs below) and returns the wire type
//! of its gRPC answer serialized as it is (structured content, and the same JSON as text).
//!
//! Errors are MCP errors, never a crash: a bad argument (unreadable time, unknown service,
//! refused request) is "invalid params"; an unreachable or failing collector, or a service it
//! does not serve, is "internal error" with the collector's message. stdout carries only the
//! protocol; logs go to stderr.

use std::sync::Arc;

use anyhow::Context as _;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::{ErrorData, ServiceExt as _, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use tonic::Code;
use wattson_collector::skills::REGRESSION_SOLVER;
use wattson_proto::v1::{
    BuildsRequest, DiffRequest, ListChangesRequest, ListRegressionsRequest, ListSkillsRequest,
    PowerRequest, RankBy, RunSkillRequest, SeriesRequest, SourceRequest, StacksRequest,
    TimeWindow, TopRequest,
};

use crate::connect::Conn;
/// Stacks the `stacks` tool returns unless asked otherwise: an agent's context is small.
const DEFAULT_STACKS: usize = 100;

/// A time window; times are "now", "-2h" (ago), Unix seconds or RFC 3339.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct Window {
    /// Start of the window: "now", "-2h" (2 hours ago), Unix seconds, or RFC 3339
    /// ("2026-11-25T18:00:00Z"). Default: one hour ago (a day ago for regressions and changes).
    #[serde(default)]
    pub from: Option<String>,
    /// End of the window, same syntax. Default: "now".
    #[serde(default)]
    pub to: Option<String>,
}

impl Window {
    /// The window, `default_from` when `from` is not given; a bad time is invalid params.
    fn wire(&self, default_from: &str) -> Result<TimeWindow, ErrorData> {
        let now = wattson_collector::report::now();
        let parse = |name: &str, v: &str| {
            wattson_collector::report::parse_time(v, now)
                .map_err(|e| ErrorData::invalid_params(format!("{name}: {e}"), None))
        };
        Ok(TimeWindow {
            from_unix_seconds: parse("from", self.from.as_deref().unwrap_or(default_from))?,
            to_unix_seconds: parse("to", self.to.as_deref().unwrap_or("now"))?,
        })
    }
}

/// What `top` ranks by.
#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rank {
    /// Watts spent in the function itself.
    #[default]
    EnergySelf,
    /// Watts spent in the function and its callees.
    EnergyInclusive,
    /// CPU samples in the function itself.
    SamplesSelf,
    /// CPU samples in the function and its callees.
    SamplesInclusive,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct TopParams {
    #[serde(flatten)]
    pub window: Window,
    /// Only this service (default: every service).
    #[serde(default)]
    pub service: Option<String>,
    /// What to rank by (default energy_self).
    #[serde(default)]
    pub rank: Rank,
    /// Rows to return (default 20).
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SeriesParams {
    #[serde(flatten)]
    pub window: Window,
    /// Service of the function.
    pub service: String,
    /// Function name, as `top` returns it.
    pub function: String,
    /// Bucket length in seconds, a multiple of 60 (default: picked from the window).
    #[serde(default)]
    pub step_seconds: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct StacksParams {
    #[serde(flatten)]
    pub window: Window,
    /// Only this service (default: every service).
    #[serde(default)]
    pub service: Option<String>,
    /// Only processes running this build id (`builds` lists them).
    #[serde(default)]
    pub build_id: Option<String>,
    /// Stacks to return, most samples first (default 100).
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ServiceWindowParams {
    #[serde(flatten)]
    pub window: Window,
    /// Only this service (default: every service).
    #[serde(default)]
    pub service: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WindowParams {
    #[serde(flatten)]
    pub window: Window,
}

/// What `diff` compares.
#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Weight {
    /// Watts (attributed energy).
    #[default]
    Energy,
    /// CPU samples.
    Samples,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DiffParams {
    /// The window: the "after" side of a window diff, or where both builds are compared.
    #[serde(flatten)]
    pub window: Window,
    /// Start of the baseline window (a window diff), same syntax as `from`.
    #[serde(default)]
    pub baseline_from: Option<String>,
    /// End of the baseline window (a window diff).
    #[serde(default)]
    pub baseline_to: Option<String>,
    /// Old build id (a build diff, with build_b; `builds` lists them).
    #[serde(default)]
    pub build_a: Option<String>,
    /// New build id (a build diff).
    #[serde(default)]
    pub build_b: Option<String>,
    /// Only this service (default: every service).
    #[serde(default)]
    pub service: Option<String>,
    /// What to compare (default energy).
    #[serde(default)]
    pub weight: Weight,
    /// Rows of each table (default 20).
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SourceParams {
    #[serde(flatten)]
    pub window: Window,
    /// Service of the function.
    pub service: String,
    /// Function name, as `top` returns it.
    pub function: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RegressionsParams {
    #[serde(flatten)]
    pub window: Window,
    /// Only this service (default: every service).
    #[serde(default)]
    pub service: Option<String>,
    /// Also improvements and the candidates a filter removed, with the funnel.
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SuggestParams {
    #[serde(flatten)]
    pub window: Window,
    /// Only this service (default: every service).
    #[serde(default)]
    pub service: Option<String>,
    /// Explain this regression (an id from `regressions`) with the regression solver; "all"
    /// explains every open one. Default: find opportunities (every pattern skill, ranked by
    /// fleet watts saved).
    #[serde(default)]
    pub regression_id: Option<String>,
    /// Source tree ON THE COLLECTOR'S HOST (absolute path) to write patches against.
    #[serde(default)]
    pub source_root: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunSkillParams {
    #[serde(flatten)]
    pub window: Window,
    /// Skill name, as `list_skills` returns it.
    pub skill: String,
    /// Only this service (default: every service).
    #[serde(default)]
    pub service: Option<String>,
    /// For the regression solver: the regression to explain (default: every open one).
    #[serde(default)]
    pub regression_id: Option<String>,
    /// Source tree ON THE COLLECTOR'S HOST (absolute path) to write patches against.
    #[serde(default)]
    pub source_root: Option<String>,
}

/// The MCP server: clients of one collector connection.
#[derive(Clone)]
pub struct Wattson {
    conn: Conn,
    /// The collector's URL, for error messages.
    collector: Arc<str>,
    tool_router: ToolRouter<Self>,
}

/// A serialized wire answer as the tool's result.
fn answer<T: serde::Serialize>(r: &T) -> Result<CallToolResult, ErrorData> {
    let v = serde_json::to_value(r)
        .map_err(|e| ErrorData::internal_error(format!("serializing the answer: {e}"), None))?;
    Ok(CallToolResult::structured(v))
}

/// `Some("")` and `None` both mean "not given".
fn given(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

/// Checks a source root is absolute: the collector resolves it, not this process.
fn source_root(s: &Option<String>) -> Result<String, ErrorData> {
    let s = given(s);
    if !s.is_empty() && !std::path::Path::new(&s).is_absolute() {
        return Err(ErrorData::invalid_params(
            format!(
                "source_root {s:?} must be an absolute path on the collector's host \
                 (the collector reads it)"
            ),
            None,
        ));
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

    /// A failed gRPC call as an MCP error: the caller's fault is invalid params, anything
    /// else internal, each with the collector's message and what to do.
    fn error(&self, what: &str, s: tonic::Status) -> ErrorData {
        let url = &self.collector;
        match s.code() {
            Code::InvalidArgument | Code::NotFound | Code::OutOfRange | Code::FailedPrecondition => {
                ErrorData::invalid_params(format!("{what}: {}", s.message()), None)
            }
            // An older collector without the service, or a part (detection) not running there.
            Code::Unimplemented => ErrorData::internal_error(
                format!("{what} is not available at {url}: {}", s.message()),
                None,
            ),
            Code::Unauthenticated => ErrorData::internal_error(
                format!(
                    "{what}: the collector at {url} refused the token ({}): start \
                     `wattson mcp` with --token or WATTSON_TOKEN",
                    s.message()
                ),
                None,
            ),
            code => ErrorData::internal_error(
                format!("{what}: collector {url}: {} ({code:?})", s.message()),
                None,
            ),
        }
    }

    async fn run_skill_request(&self, r: RunSkillRequest) -> Result<CallToolResult, ErrorData> {
        let name = if r.skill.is_empty() { "suggest" } else { "run_skill" };
        let resp = self.conn.skills().run_skill(r).await;
        answer(&resp.map_err(|s| self.error(name, s))?.into_inner())
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
    async fn top(&self, Parameters(p): Parameters<TopParams>) -> Result<CallToolResult, ErrorData> {
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
        let resp = self.conn.query().top(r).await;
        answer(&resp.map_err(|s| self.error("top", s))?.into_inner())
    }

    #[tool(
        description = "One function's power and CPU over time, in buckets. Returns \
        wattson.v1.SeriesResponse as JSON."
    )]
    async fn series(
        &self,
        Parameters(p): Parameters<SeriesParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let r = SeriesRequest {
            window: Some(p.window.wire("-1h")?),
            service: p.service,
            function: p.function,
            step_seconds: p.step_seconds.unwrap_or(0),
        };
        let resp = self.conn.query().series(r).await;
        answer(&resp.map_err(|s| self.error("series", s))?.into_inner())
    }

    #[tool(
        description = "Folded call stacks (root first, `;`-separated, kernel frames end in \
        `_[k]`) with samples and joules, most samples first. Returns \
        wattson.v1.StacksResponse as JSON, cut to `limit` stacks."
    )]
    async fn stacks(
        &self,
        Parameters(p): Parameters<StacksParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let r = StacksRequest {
            window: Some(p.window.wire("-1h")?),
            service: given(&p.service),
            build_id: given(&p.build_id),
        };
        let resp = self.conn.query().stacks(r).await;
        let mut resp = resp.map_err(|s| self.error("stacks", s))?.into_inner();
        resp.stacks
            .sort_by(|a, b| b.samples.cmp(&a.samples).then_with(|| a.folded.cmp(&b.folded)));
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
    ) -> Result<CallToolResult, ErrorData> {
        let r = BuildsRequest {
            window: Some(p.window.wire("-1h")?),
            service: given(&p.service),
        };
        let resp = self.conn.query().builds(r).await;
        answer(&resp.map_err(|s| self.error("builds", s))?.into_inner())
    }

    #[tool(
        description = "Fleet power summary per service: watts on the profiled hosts, fleet \
        watts, kWh/year, CO2 and cost when configured, idle power, dropped samples. Returns \
        wattson.v1.PowerResponse as JSON."
    )]
    async fn power(
        &self,
        Parameters(p): Parameters<WindowParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let r = PowerRequest {
            window: Some(p.window.wire("-1h")?),
        };
        let resp = self.conn.query().power(r).await;
        answer(&resp.map_err(|s| self.error("power", s))?.into_inner())
    }

    #[tool(
        description = "Compares two windows (baseline_from/baseline_to against from/to, by \
        rate) or two builds of a service (build_a against build_b over from/to, by share of \
        each build): the functions and the stacks that changed most. Returns \
        wattson.v1.DiffResponse as JSON."
    )]
    async fn diff(&self, Parameters(p): Parameters<DiffParams>) -> Result<CallToolResult, ErrorData> {
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
        let resp = self.conn.skills().diff(r).await;
        answer(&resp.map_err(|s| self.error("diff", s))?.into_inner())
    }

    #[tool(
        description = "Where a function spends its samples in its source: file:line of its own \
        samples and of the calls to each callee, from the frames' DWARF data, most samples \
        first. Returns wattson.v1.SourceResponse as JSON (empty without debug info)."
    )]
    async fn source(
        &self,
        Parameters(p): Parameters<SourceParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let r = SourceRequest {
            window: Some(p.window.wire("-1h")?),
            service: p.service,
            function: p.function,
        };
        let resp = self.conn.skills().source(r).await;
        answer(&resp.map_err(|s| self.error("source", s))?.into_inner())
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
    ) -> Result<CallToolResult, ErrorData> {
        let r = ListRegressionsRequest {
            window: Some(p.window.wire("-24h")?),
            service: given(&p.service),
            all: p.all,
        };
        let resp = self.conn.detection().list_regressions(r).await;
        answer(&resp.map_err(|s| self.error("detection (regressions)", s))?.into_inner())
    }

    #[tool(
        description = "Changes (deploys, config pushes, experiments, commits) recorded or seen \
        by the collector, oldest first: the candidate causes of regressions. Returns \
        wattson.v1.ListChangesResponse as JSON. Window default: the last 24 hours."
    )]
    async fn changes(
        &self,
        Parameters(p): Parameters<ServiceWindowParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let r = ListChangesRequest {
            window: Some(p.window.wire("-24h")?),
            service: given(&p.service),
        };
        let resp = self.conn.detection().list_changes(r).await;
        answer(&resp.map_err(|s| self.error("detection (changes)", s))?.into_inner())
    }

    #[tool(
        description = "The collector's skills (encoded efficiency expertise): name, what it \
        does, what it reads, and whether built in or from the collector's skills file. Returns \
        wattson.v1.ListSkillsResponse as JSON."
    )]
    async fn list_skills(&self) -> Result<CallToolResult, ErrorData> {
        let resp = self.conn.skills().list_skills(ListSkillsRequest {}).await;
        answer(&resp.map_err(|s| self.error("list_skills", s))?.into_inner())
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
    ) -> Result<CallToolResult, ErrorData> {
        let (skill, regression_id) = match p.regression_id.as_deref() {
            None | Some("") => (String::new(), String::new()),
            Some("all") => (REGRESSION_SOLVER.to_string(), String::new()),
            Some(id) => (REGRESSION_SOLVER.to_string(), id.to_string()),
        };
        self.run_skill_request(RunSkillRequest {
            skill,
            window: Some(p.window.wire("-1h")?),
            service: given(&p.service),
            regression_id,
            source_root: source_root(&p.source_root)?,
        })
        .await
    }

    #[tool(
        description = "Runs one skill by name (`list_skills` names them) over the window. \
        Returns wattson.v1.RunSkillResponse as JSON."
    )]
    async fn run_skill(
        &self,
        Parameters(p): Parameters<RunSkillParams>,
    ) -> Result<CallToolResult, ErrorData> {
        if p.skill.is_empty() {
            return Err(ErrorData::invalid_params(
                "skill is empty: give a name from list_skills, or call suggest",
                None,
            ));
        }
        self.run_skill_request(RunSkillRequest {
            skill: p.skill,
            window: Some(p.window.wire("-1h")?),
            service: given(&p.service),
            regression_id: given(&p.regression_id),
            source_root: source_root(&p.source_root)?,
        })
        .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_default_and_bad_times_are_invalid_params() {
        let w = Window::default().wire("-24h").unwrap();
        assert_eq!(w.to_unix_seconds - w.from_unix_seconds, 86_400);
        let bad = Window {
            from: Some("yesterday-ish".into()),
            to: None,
        };
        let e = bad.wire("-1h").unwrap_err();
        assert_eq!(e.code, rmcp::model::ErrorCode::INVALID_PARAMS);
        assert!(e.message.starts_with("from: cannot read time"), "{}", e.message);
        assert!(source_root(&Some("rel/dir".into())).is_err());
        assert_eq!(source_root(&Some("/src".into())).unwrap(), "/src");
    }
}
