//! The arguments of `wattson mcp`'s tools (each struct's JSON schema is what MCP clients see,
//! its doc comments the descriptions) and how a tool call fails.
//!
//! A failed call is a tool error result (`isError: true`), as the MCP specification asks for
//! input validation and API failures, so the model reads what to fix and can retry: the text
//! says it in words, the structured content is `{"error": {"code", "kind", "message"}}` with
//! the JSON-RPC code of the failure (-32602 invalid params: the caller's arguments;
//! -32603 internal: the collector). rmcp reports arguments that do not fit the schema the same
//! way. Protocol errors are left for what is not a tool call at all (an unknown tool).

use rmcp::handler::server::tool::IntoCallToolResult;
use rmcp::model::{CallToolResponse, CallToolResult, ContentBlock, ErrorCode};
use schemars::JsonSchema;
use serde::Deserialize;
use wattson_proto::v1::TimeWindow;

/// Why a tool call failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// `INVALID_PARAMS` (the caller's fault) or `INTERNAL_ERROR`.
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    /// The caller's arguments are wrong: `message` says how.
    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure {
            code: ErrorCode::INVALID_PARAMS,
            message: message.into(),
        }
    }

    /// The collector (or this process) failed.
    pub fn internal(message: impl Into<String>) -> Failure {
        Failure {
            code: ErrorCode::INTERNAL_ERROR,
            message: message.into(),
        }
    }

    fn kind(&self) -> &'static str {
        if self.code == ErrorCode::INVALID_PARAMS {
            "invalid_params"
        } else {
            "internal"
        }
    }
}

impl IntoCallToolResult for Failure {
    fn into_call_tool_result(self) -> Result<CallToolResponse, rmcp::ErrorData> {
        let mut r = CallToolResult::structured_error(serde_json::json!({
            "error": {"code": self.code.0, "kind": self.kind(), "message": self.message},
        }));
        r.content = vec![ContentBlock::text(format!(
            "{}: {}",
            self.kind().replace('_', " "),
            self.message
        ))];
        Ok(r.into())
    }
}

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
    pub fn wire(&self, default_from: &str) -> Result<TimeWindow, Failure> {
        let now = wattson_collector::report::now();
        let parse = |name: &str, v: &str| {
            wattson_collector::report::parse_time(v, now)
                .map_err(|e| Failure::invalid(format!("{name}: {e}")))
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
    /// Detect as of this past time (same syntax as `from`) over everything stored now,
    /// late data included (default: the collector's latest pass).
    #[serde(default)]
    pub as_of: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SuggestParams {
    #[serde(flatten)]
    pub window: Window,
    /// Only this service (default: every service).
    #[serde(default)]
    pub service: Option<String>,
    /// A regression to explain (an id from `regressions`; "all": every open one). With
    /// `suggest` it runs the regression solver instead of the opportunity finder.
    #[serde(default)]
    pub regression_id: Option<String>,
    /// Source tree ON THE COLLECTOR'S HOST (absolute path) to write patches against.
    #[serde(default)]
    pub source_root: Option<String>,
    /// The regression as detected at this past time (same syntax as `from`; default: the
    /// latest pass). Give the `as_of` its id came from.
    #[serde(default)]
    pub as_of: Option<String>,
}

/// `as_of` as Unix seconds for the wire (0: now); a bad time is invalid params.
pub fn as_of(t: Option<&str>) -> Result<i64, Failure> {
    t.map_or(Ok(0), |t| {
        wattson_collector::report::parse_time(t, wattson_collector::report::now())
            .map_err(|e| Failure::invalid(format!("as_of: {e}")))
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunSkillParams {
    /// Skill name, as `list_skills` returns it.
    pub skill: String,
    #[serde(flatten)]
    pub run: SuggestParams,
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
        assert_eq!(e.code, ErrorCode::INVALID_PARAMS);
        assert!(
            e.message.starts_with("from: cannot read time"),
            "{}",
            e.message
        );
    }

    #[test]
    fn as_of_is_now_by_default_and_a_bad_time_names_it() {
        assert_eq!(as_of(None).unwrap(), 0);
        assert_eq!(as_of(Some("1796600000")).unwrap(), 1_796_600_000);
        let e = as_of(Some("last tuesday")).unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_PARAMS);
        assert!(e.message.starts_with("as_of: "), "{}", e.message);
    }

    #[test]
    fn failures_are_tool_errors_with_their_code() {
        let r = Failure::invalid("from: bad")
            .into_call_tool_result()
            .unwrap();
        let CallToolResponse::Complete(r) = r else {
            panic!("{r:?}")
        };
        assert_eq!(r.is_error, Some(true));
        let e = &r.structured_content.unwrap()["error"];
        assert_eq!(
            (e["code"].as_i64(), e["kind"].as_str()),
            (Some(-32602), Some("invalid_params"))
        );
        assert_eq!(e["message"], "from: bad");
    }
}
