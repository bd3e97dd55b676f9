//! The analysis tool interface: [`Tools`], the one read interface that skills, the gRPC skills
//! service and the MCP server use (top, series, stacks, power, diff, regressions, changes and
//! source lookup). Queries go through [`QueryEngine`] so every consumer sees the same wire
//! types; regressions and changes come from a [`DetectionSource`] when one is wired in.

mod diff;
mod source;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use wattson_proto::v1;

use crate::attribute::FleetConfig;
use crate::query::{QueryEngine, QueryError};
use crate::store::{Store, StoreError, Window};

pub use diff::{DiffRequest, DiffResponse, FunctionDelta, StackDelta};
pub use source::{SourceLine, parse_line_key};

/// Why a tool refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The request is malformed or names something that does not exist (gRPC
    /// INVALID_ARGUMENT, MCP invalid params).
    #[error("{0}")]
    BadRequest(String),
    /// The tool needs a part of the collector that is not running here (detection).
    #[error("{0}")]
    Unavailable(String),
    /// The store or another internal part failed.
    #[error("{0}")]
    Internal(String),
}

impl From<QueryError> for ToolError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Store(e) => ToolError::Internal(e.to_string()),
            e => ToolError::BadRequest(e.to_string()),
        }
    }
}

impl From<StoreError> for ToolError {
    fn from(e: StoreError) -> Self {
        QueryError::from(e).into()
    }
}

/// What detection offers the tools; `detection::Detector` implements it.
pub trait DetectionSource: Send + Sync {
    /// Regressions in a window.
    fn regressions(
        &self,
        r: &v1::ListRegressionsRequest,
    ) -> Result<v1::ListRegressionsResponse, ToolError>;
    /// Change events in a window.
    fn changes(&self, r: &v1::ListChangesRequest) -> Result<v1::ListChangesResponse, ToolError>;
}

/// The read interface over a store, a fleet configuration and, optionally, detection.
#[derive(Clone)]
pub struct Tools {
    store: Arc<dyn Store>,
    query: Arc<QueryEngine>,
    detection: Option<Arc<dyn DetectionSource>>,
}

/// The message of every detection tool when no detection is wired in.
const NO_DETECTION: &str = "detection is not available in this collector \
    (regressions and changes need the detection service; top, stacks, series, power, diff \
    and source still work)";

impl Tools {
    /// Tools over `store` attributing power with `fleet`; without detection.
    pub fn new(store: Arc<dyn Store>, fleet: FleetConfig) -> Tools {
        Tools {
            query: Arc::new(QueryEngine::new(store.clone(), fleet)),
            store,
            detection: None,
        }
    }

    /// The same tools with regressions and changes answered by `d`.
    pub fn with_detection(mut self, d: Arc<dyn DetectionSource>) -> Tools {
        self.detection = Some(d);
        self
    }

    /// The fleet configuration in use.
    pub fn fleet(&self) -> &FleetConfig {
        self.query.fleet()
    }

    /// True when regressions and changes can be answered.
    pub fn has_detection(&self) -> bool {
        self.detection.is_some()
    }

    /// Functions ranked by energy or samples.
    pub fn top(&self, r: &v1::TopRequest) -> Result<v1::TopResponse, ToolError> {
        Ok(self.query.top(r)?)
    }

    /// One function over time.
    pub fn series(&self, r: &v1::SeriesRequest) -> Result<v1::SeriesResponse, ToolError> {
        Ok(self.query.series(r)?)
    }

    /// Folded stacks with samples and joules.
    pub fn stacks(&self, r: &v1::StacksRequest) -> Result<v1::StacksResponse, ToolError> {
        Ok(self.query.stacks(r)?)
    }

    /// Fleet power per service.
    pub fn power(&self, r: &v1::PowerRequest) -> Result<v1::PowerResponse, ToolError> {
        Ok(self.query.power(r)?)
    }

    /// Two windows, or two builds of a service over one window, function by function and
    /// stack by stack.
    pub fn diff(&self, r: &DiffRequest) -> Result<DiffResponse, ToolError> {
        diff::run(self, r)
    }

    /// Regressions detection found in a window.
    pub fn regressions(
        &self,
        r: &v1::ListRegressionsRequest,
    ) -> Result<v1::ListRegressionsResponse, ToolError> {
        self.detection()?.regressions(r)
    }

    /// Change events (deploys, config pushes...) in a window.
    pub fn changes(
        &self,
        r: &v1::ListChangesRequest,
    ) -> Result<v1::ListChangesResponse, ToolError> {
        self.detection()?.changes(r)
    }

    /// Source lines of `function` in `service` over `window`, from the frames' DWARF data:
    /// where it spent its samples itself (callee "") and the lines calling each callee, most
    /// samples first. Empty when the agents sent no file and line for it (no debug info).
    pub fn source(
        &self,
        service: &str,
        function: &str,
        window: Window,
    ) -> Result<Vec<SourceLine>, ToolError> {
        if service.is_empty() || function.is_empty() {
            return Err(ToolError::BadRequest(
                "source needs a service and a function".into(),
            ));
        }
        let window = window.aligned()?;
        let rows = self.store.lines(window, Some(service))?;
        Ok(source::lines_of(&rows, function))
    }

    /// Every source line of `service` in `window` (one store read; skills that look up many
    /// functions use this rather than [`Tools::source`] per function).
    pub fn source_lines(
        &self,
        service: &str,
        window: Window,
    ) -> Result<Vec<SourceLine>, ToolError> {
        let window = window.aligned()?;
        let rows = self.store.lines(window, Some(service))?;
        Ok(source::all_lines(&rows))
    }

    fn detection(&self) -> Result<&dyn DetectionSource, ToolError> {
        self.detection
            .as_deref()
            .ok_or_else(|| ToolError::Unavailable(NO_DETECTION.into()))
    }
}

/// A wire window from a store window.
pub fn wire_window(w: Window) -> v1::TimeWindow {
    v1::TimeWindow {
        from_unix_seconds: w.from,
        to_unix_seconds: w.to,
    }
}

/// A store window from a wire window; a missing one is a bad request.
pub fn store_window(w: Option<&v1::TimeWindow>) -> Result<Window, ToolError> {
    let w = w.ok_or_else(|| ToolError::BadRequest("window is required".into()))?;
    Ok(Window {
        from: w.from_unix_seconds,
        to: w.to_unix_seconds,
    }
    .aligned()?)
}
