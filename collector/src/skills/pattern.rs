//! Pattern skills: an efficiency pattern recognised by the frames of a service's stacks (with,
//! where needed, a caller condition), an evidence threshold (the share of the service's
//! samples the matching stacks hold) it never fires below, advice, a savings factor and,
//! for mechanical fixes, a patch. The built-in catalogue and user TOML skills are both
//! [`Pattern`]s, so one engine runs them.

use std::fmt::Write as _;

use wattson_proto::v1::{Finding, SkillInfo, SourceLocation};

use super::patch::{self, Fix};
use super::profile::{Matched, ServiceProfile, best_line, confidence, match_stacks};
use super::{Context, Skill, SkillError};

/// A test on one frame name.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// The whole name.
    Exact(String),
    /// The start of the name.
    Prefix(String),
    /// Anywhere in the name.
    Contains(String),
    /// A regular expression (unanchored, as `regex::Regex::is_match`).
    Regex(regex::Regex),
}

impl Matcher {
    /// True when `frame` passes.
    pub fn is_match(&self, frame: &str) -> bool {
        match self {
            Matcher::Exact(s) => frame == s,
            Matcher::Prefix(s) => frame.starts_with(s.as_str()),
            Matcher::Contains(s) => frame.contains(s.as_str()),
            Matcher::Regex(r) => r.is_match(frame),
        }
    }

    fn any(list: &[Matcher], frame: &str) -> bool {
        list.iter().any(|m| m.is_match(frame))
    }
}

/// One efficiency pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// Skill name (`siphash-small-keys`).
    pub name: String,
    /// What it recognises, one sentence.
    pub description: String,
    /// A stack matches when one of its frames passes one of these (the outermost such frame
    /// is the match).
    pub frames: Vec<Matcher>,
    /// When set, a frame above the match must pass one of these.
    pub callers: Vec<Matcher>,
    /// A stack with a frame passing one of these anywhere does not count.
    pub unless: Vec<Matcher>,
    /// Only the leaf frame is tested (self time, e.g. unoptimised trivial functions).
    pub leaf_only: bool,
    /// Only these services (empty: every service).
    pub services: Vec<String>,
    /// Evidence threshold: least share of the service's samples, 0..1.
    pub min_share: f64,
    /// Part of the matched energy the fix is expected to save, 0..1.
    pub savings_factor: f64,
    /// Why that factor, in words (the savings model).
    pub savings_why: String,
    /// What to do.
    pub advice: String,
    /// The mechanical fix a patch can make, if any.
    pub fix: Option<Fix>,
    /// "builtin" or the user file's path.
    pub origin: String,
}

impl Pattern {
    /// Index of the frame where `frames` (root first) matches, if the stack matches.
    pub fn matches(&self, frames: &[String]) -> Option<usize> {
        if !self.unless.is_empty() && frames.iter().any(|f| Matcher::any(&self.unless, f)) {
            return None;
        }
        let at = if self.leaf_only {
            let last = frames.len().checked_sub(1)?;
            Matcher::any(&self.frames, &frames[last]).then_some(last)?
        } else {
            frames.iter().position(|f| Matcher::any(&self.frames, f))?
        };
        if !self.callers.is_empty() && !frames[..at].iter().any(|f| Matcher::any(&self.callers, f))
        {
            return None;
        }
        Some(at)
    }

    /// True when the pattern applies to `service`.
    pub fn applies_to(&self, service: &str) -> bool {
        self.services.is_empty() || self.services.iter().any(|s| s == service)
    }

    /// The pattern's evidence in one service, when it reaches the threshold.
    pub fn evidence(&self, sp: &ServiceProfile) -> Option<Matched> {
        if sp.samples == 0 || !self.applies_to(&sp.service) {
            return None;
        }
        let m = match_stacks(sp, |f| self.matches(f));
        (m.samples as f64 / sp.samples as f64 >= self.min_share && m.samples > 0).then_some(m)
    }

    /// The finding for one service's evidence: culprit, location, savings, advice and, with a
    /// source root, a patch.
    pub fn finding(&self, ctx: &Context<'_>, sp: &ServiceProfile, m: &Matched) -> Finding {
        let share = m.samples as f64 / sp.samples as f64;
        let energy_share = if sp.joules > 0.0 {
            m.joules / sp.joules
        } else {
            share
        };
        let (function, callee, matched, _) = m.top_culprit().unwrap_or(("", "", "", 0));
        let mut evidence = vec![format!(
            "{:.1}% of {}'s samples ({} of {}) are in stacks through {} (threshold {:.1}%)",
            share * 100.0,
            sp.service,
            m.samples,
            sp.samples,
            matched,
            self.min_share * 100.0
        )];
        let mut culprits: Vec<_> = m.culprits.iter().collect();
        culprits.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        for ((f, _, hit), n) in culprits.iter().take(3) {
            evidence.push(format!(
                "{f} -> {hit}: {:.1}% of the service",
                **n as f64 / sp.samples as f64 * 100.0
            ));
        }
        for &i in m.stacks.iter().take(3) {
            let s = &sp.stacks[i];
            evidence.push(format!(
                "stack {}: {:.1}%",
                short_stack(&s.frames),
                s.samples as f64 / sp.samples as f64 * 100.0
            ));
        }
        let location = self.locate(ctx, &sp.service, function, callee);
        let mut advice = self.advice.clone();
        let patch = match (&self.fix, &location, ctx.source_root()) {
            (Some(fix), Some(loc), Some(root)) => match patch::make(*fix, root, loc) {
                Ok(p) => p,
                Err(why) => {
                    ctx.note(format!(
                        "{}: no patch for {}:{}: {why}",
                        self.name, loc.file, loc.line
                    ));
                    String::new()
                }
            },
            (Some(_), None, Some(_)) => {
                ctx.note(format!(
                    "{}: no patch for {function} in {}: no source line for it",
                    self.name, sp.service
                ));
                String::new()
            }
            _ => String::new(),
        };
        if let Some(loc) = &location {
            let _ = write!(
                advice,
                " (at {}:{} in {})",
                loc.file, loc.line, loc.function
            );
        }
        let est = if sp.estimated { " estimated" } else { "" };
        Finding {
            skill: self.name.clone(),
            service: sp.service.clone(),
            function: function.into(),
            evidence,
            share,
            savings_watts: energy_share * sp.watts * self.savings_factor,
            savings_fleet_watts: energy_share * sp.fleet_watts * self.savings_factor,
            savings_model: format!(
                "{:.0}% of the pattern's {:.1}% of {}'s {:.3}{est} W ({:.3}{est} W fleet-wide): {}",
                self.savings_factor * 100.0,
                energy_share * 100.0,
                sp.service,
                sp.watts,
                sp.fleet_watts,
                self.savings_why
            ),
            estimated: sp.estimated,
            confidence: confidence(m.samples, sp.samples, self.min_share),
            location,
            advice,
            patch,
            regression_id: String::new(),
            change_id: String::new(),
        }
    }

    /// The file:line of `function` calling `callee`, from the agents' DWARF line data.
    fn locate(
        &self,
        ctx: &Context<'_>,
        service: &str,
        function: &str,
        callee: &str,
    ) -> Option<SourceLocation> {
        if function.is_empty() {
            return None;
        }
        let lines = match ctx.tools.source(service, function, ctx.window) {
            Ok(l) => l,
            Err(e) => {
                ctx.note(format!("{}: source lookup of {function}: {e}", self.name));
                return None;
            }
        };
        match best_line(&lines, function, callee) {
            Some(l) => Some(SourceLocation {
                file: l.file.clone(),
                line: l.line,
                function: function.into(),
            }),
            None => {
                ctx.note(format!(
                    "{}: no file:line for {function} in {service}: its frames came without \
                     DWARF line data (build with debug info, e.g. -g or debug = 1)",
                    self.name
                ));
                None
            }
        }
    }
}

/// The last frames of a stack, enough to read (`…;a;b;c`).
pub fn short_stack(frames: &[String]) -> String {
    const KEEP: usize = 6;
    if frames.len() <= KEEP {
        frames.join(";")
    } else {
        format!("…;{}", frames[frames.len() - KEEP..].join(";"))
    }
}

impl Skill for Pattern {
    fn info(&self) -> SkillInfo {
        SkillInfo {
            name: self.name.clone(),
            description: self.description.clone(),
            needs: vec!["stacks".into(), "power".into(), "source".into()],
            origin: self.origin.clone(),
        }
    }

    fn run(&self, ctx: &Context<'_>) -> Result<Vec<Finding>, SkillError> {
        let profile = ctx.profile()?;
        Ok(profile
            .services
            .values()
            .filter_map(|sp| self.evidence(sp).map(|m| self.finding(ctx, sp, &m)))
            .collect())
    }
}
