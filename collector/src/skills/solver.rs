//! The regression solver: for each open regression detection reports (or the one the request
//! names), a report finding: what changed, which stacks grew and by how much, the culprit
//! change, and a mitigation from the catalogue when one explains the growth.

use wattson_proto::v1::{Finding, SkillInfo};

use super::{Context, Skill, SkillError};

/// Its skill name.
pub const REGRESSION_SOLVER: &str = "regression-solver";

/// Explains regressions through diff, changes and the pattern skills.
pub struct RegressionSolver;

impl Skill for RegressionSolver {
    fn info(&self) -> SkillInfo {
        SkillInfo {
            name: REGRESSION_SOLVER.into(),
            description: "For each open regression: what changed, the stacks that grew, the \
                          culprit change and a mitigation from the catalogue"
                .into(),
            needs: vec![
                "regressions".into(),
                "changes".into(),
                "diff".into(),
                "stacks".into(),
                "source".into(),
            ],
            origin: "builtin".into(),
        }
    }

    fn run(&self, ctx: &Context<'_>) -> Result<Vec<Finding>, SkillError> {
        let _ = ctx;
        Err(SkillError::Unavailable(
            "regression solver: not built yet".into(),
        ))
    }
}
