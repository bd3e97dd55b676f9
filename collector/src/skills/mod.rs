//! Skills: encoded efficiency expertise run over the collector's data through [`Tools`]. A
//! [`Skill`] reads a [`Context`] and returns findings (`wattson.v1.Finding`); the
//! [`Registry`] holds the built-in catalogue of patterns ([`catalogue`]), patterns from a
//! user's TOML file ([`user`]), the opportunity finder and the regression solver, and runs
//! them by name.

pub mod catalogue;
mod opportunities;
pub mod patch;
pub mod pattern;
pub mod profile;
mod small_key_hasher;
mod solver;
#[cfg(test)]
mod solver_tests;
#[cfg(test)]
mod tests;
pub mod user;

use std::cell::{Ref, RefCell};
use std::path::Path;
use std::sync::Arc;

use wattson_proto::v1;

use crate::analysis::{ToolError, Tools, store_window};
use crate::store::Window;

pub use opportunities::OPPORTUNITIES;
pub use pattern::{Matcher, Pattern};
pub use profile::Profile;
pub use solver::REGRESSION_SOLVER;

/// Why a skill run was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SkillError {
    /// The request is malformed (unknown skill, bad window...): gRPC INVALID_ARGUMENT, MCP
    /// invalid params.
    #[error("{0}")]
    BadRequest(String),
    /// The skill needs a part of the collector that is not running here (detection).
    #[error("{0}")]
    Unavailable(String),
    /// A user skills file cannot be used as written.
    #[error("{path}:{line}: {why}")]
    BadFile {
        /// The file.
        path: String,
        /// 1-based line of the fault (0 when the file could not be read at all).
        line: usize,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// The store or another internal part failed.
    #[error("{0}")]
    Internal(String),
}

impl From<ToolError> for SkillError {
    fn from(e: ToolError) -> Self {
        match e {
            ToolError::BadRequest(m) => SkillError::BadRequest(m),
            ToolError::Unavailable(m) => SkillError::Unavailable(m),
            ToolError::Internal(m) => SkillError::Internal(m),
        }
    }
}

/// A skill: a name, what it reads, and a run over a [`Context`].
pub trait Skill: Send + Sync {
    /// Name, description, needs and origin.
    fn info(&self) -> v1::SkillInfo;
    /// Findings for the context's request (best first is not required: the registry ranks).
    fn run(&self, ctx: &Context<'_>) -> Result<Vec<v1::Finding>, SkillError>;
}

/// What a skill sees: the tools, the request, its window, the registry's patterns (so skills
/// compose) and the profile of the window, read once however many skills use it.
pub struct Context<'a> {
    /// The read interface.
    pub tools: &'a Tools,
    /// The request being answered.
    pub request: &'a v1::RunSkillRequest,
    /// The request's window, aligned to minutes.
    pub window: Window,
    patterns: &'a [Arc<Pattern>],
    profile: RefCell<Option<Profile>>,
    notes: RefCell<Vec<String>>,
}

impl<'a> Context<'a> {
    /// A context answering `request` through `tools`, with `patterns` for composition.
    pub fn new(
        tools: &'a Tools,
        request: &'a v1::RunSkillRequest,
        window: Window,
        patterns: &'a [Arc<Pattern>],
    ) -> Context<'a> {
        Context {
            tools,
            request,
            window,
            patterns,
            profile: RefCell::new(None),
            notes: RefCell::new(Vec::new()),
        }
    }

    /// Every pattern skill of the registry (built-in and user).
    pub fn patterns(&self) -> &[Arc<Pattern>] {
        self.patterns
    }

    /// The profile of the request's window (and service, when set), read on first use.
    pub fn profile(&self) -> Result<Ref<'_, Profile>, SkillError> {
        if self.profile.borrow().is_none() {
            let p = Profile::load(self.tools, self.window, &self.request.service)?;
            *self.profile.borrow_mut() = Some(p);
        }
        Ok(Ref::map(self.profile.borrow(), |p| {
            p.as_ref().expect("loaded just above")
        }))
    }

    /// The source tree for patches, when the request names one.
    pub fn source_root(&self) -> Option<&Path> {
        let root = self.request.source_root.as_str();
        (!root.is_empty()).then(|| Path::new(root))
    }

    /// Records what a skill could not do and why (returned in the response's notes).
    pub fn note(&self, note: impl Into<String>) {
        let note = note.into();
        let mut notes = self.notes.borrow_mut();
        if !notes.contains(&note) {
            notes.push(note);
        }
    }

    fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut self.notes.borrow_mut())
    }
}

/// The skills a collector offers, by name.
pub struct Registry {
    patterns: Vec<Arc<Pattern>>,
    others: Vec<Arc<dyn Skill>>,
}

/// The window a request without one gets: the last hour.
const DEFAULT_WINDOW: i64 = 3600;

impl Registry {
    /// The built-in catalogue, the opportunity finder and the regression solver.
    pub fn builtin() -> Registry {
        Registry {
            patterns: catalogue::patterns().into_iter().map(Arc::new).collect(),
            others: vec![
                Arc::new(opportunities::Opportunities),
                Arc::new(solver::RegressionSolver),
            ],
        }
    }

    /// Adds the pattern skills of a user TOML file; a bad file is refused with its path,
    /// line and what is wrong, and a name that is taken is refused the same way.
    pub fn with_user_file(mut self, path: &Path) -> Result<Registry, SkillError> {
        let taken: Vec<String> = self.list().into_iter().map(|s| s.name).collect();
        for p in user::load(path, &taken)? {
            self.patterns.push(Arc::new(p));
        }
        Ok(self)
    }

    /// Every skill: the finders first, then the patterns in catalogue order.
    pub fn list(&self) -> Vec<v1::SkillInfo> {
        self.others
            .iter()
            .map(|s| s.info())
            .chain(self.patterns.iter().map(|p| p.info()))
            .collect()
    }

    /// Runs the skill the request names ("" runs the opportunity finder); findings best
    /// first (fleet watts saved).
    pub fn run(
        &self,
        tools: &Tools,
        r: &v1::RunSkillRequest,
    ) -> Result<v1::RunSkillResponse, SkillError> {
        let name = if r.skill.is_empty() {
            OPPORTUNITIES
        } else {
            r.skill.as_str()
        };
        let skill: &dyn Skill = match self.others.iter().find(|s| s.info().name == name) {
            Some(s) => s.as_ref(),
            None => match self.patterns.iter().find(|p| p.name == name) {
                Some(p) => p.as_ref(),
                None => {
                    let names: Vec<String> = self.list().into_iter().map(|s| s.name).collect();
                    return Err(SkillError::BadRequest(format!(
                        "unknown skill {name:?}; skills: {}",
                        names.join(", ")
                    )));
                }
            },
        };
        let mut notes = Vec::new();
        let window = match &r.window {
            Some(w) => store_window(Some(w))?,
            None => {
                let now = crate::report::now();
                notes.push("no window given: the last hour".to_string());
                Window {
                    from: now - DEFAULT_WINDOW,
                    to: now,
                }
                .aligned()
                .map_err(|e| SkillError::Internal(e.to_string()))?
            }
        };
        if !r.source_root.is_empty() && !Path::new(&r.source_root).is_dir() {
            return Err(SkillError::BadRequest(format!(
                "source_root {:?} is not a directory on the collector's host",
                r.source_root
            )));
        }
        let ctx = Context::new(tools, r, window, &self.patterns);
        let mut findings = skill.run(&ctx)?;
        rank(&mut findings);
        notes.extend(ctx.take_notes());
        tracing::debug!(skill = name, findings = findings.len(), "skill ran");
        Ok(v1::RunSkillResponse { findings, notes })
    }
}

/// Best first: fleet watts saved, then share, then names (deterministic).
pub fn rank(findings: &mut [v1::Finding]) {
    findings.sort_by(|a, b| {
        b.savings_fleet_watts
            .total_cmp(&a.savings_fleet_watts)
            .then_with(|| b.share.total_cmp(&a.share))
            .then_with(|| {
                (&a.skill, &a.service, &a.function).cmp(&(&b.skill, &b.service, &b.function))
            })
    });
}
