//! The opportunity finder: every pattern skill over the window's profile, findings ranked by
//! fleet watts saved (the registry ranks every answer that way).

use wattson_proto::v1::{Finding, SkillInfo};

use super::{Context, Skill, SkillError};

/// Its skill name; `RunSkillRequest.skill == ""` runs it too.
pub const OPPORTUNITIES: &str = "opportunities";

/// Runs every pattern (built-in and user) over every service of the window.
pub struct Opportunities;

impl Skill for Opportunities {
    fn info(&self) -> SkillInfo {
        SkillInfo {
            name: OPPORTUNITIES.into(),
            description: "Every efficiency pattern over the fleet's profile, findings ranked \
                          by fleet watts saved (the default skill)"
                .into(),
            needs: vec!["stacks".into(), "power".into(), "source".into()],
            origin: "builtin".into(),
        }
    }

    fn run(&self, ctx: &Context<'_>) -> Result<Vec<Finding>, SkillError> {
        let mut out = Vec::new();
        for p in ctx.patterns() {
            out.extend(p.run(ctx)?);
        }
        if out.is_empty() {
            let profile = ctx.profile()?;
            if profile.services.is_empty() {
                ctx.note("no samples in the window: nothing to look at");
            } else {
                ctx.note(format!(
                    "no pattern reached its evidence threshold in {} service(s)",
                    profile.services.len()
                ));
            }
        }
        Ok(out)
    }
}
