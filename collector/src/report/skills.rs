//! Skills and their findings for people: `wattson skills list` (what each skill does and
//! reads) and `wattson suggest` (a table of findings, best first, then each finding's advice,
//! evidence and culprit, then what the skills could not do). Savings built from a utilization
//! model say "est", like every other figure. `--json` prints the wire types as they are.

use std::fmt::Write as _;

use wattson_proto::v1::{Finding, ListSkillsResponse, RunSkillResponse};

use super::table::{self, Align};
use super::watts;

/// `skills list` as a table, then each skill's description wrapped to `width`.
pub fn skills_table(r: &ListSkillsResponse, width: usize) -> String {
    if r.skills.is_empty() {
        return "no skills loaded\n".into();
    }
    let rows: Vec<Vec<String>> = r
        .skills
        .iter()
        .map(|s| vec![s.name.clone(), s.needs.join(","), s.origin.clone()])
        .collect();
    let mut out = table::render(
        &["SKILL", "NEEDS", "ORIGIN"],
        &[Align::Name, Align::Name, Align::Name],
        &rows,
        width,
    );
    out.push('\n');
    for s in &r.skills {
        out.push_str(&table::wrap(
            &format!("{}: {}", s.name, s.description),
            width,
        ));
    }
    out
}

/// `text` wrapped to `width` with every line indented by two spaces.
fn indented(text: &str, width: usize) -> String {
    table::wrap(text, width.saturating_sub(2).max(20))
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect()
}

/// `file:line` of a finding, or "-" when the frames carried no line.
pub fn location(f: &Finding) -> String {
    match &f.location {
        Some(l) if !l.file.is_empty() && l.line > 0 => format!("{}:{}", l.file, l.line),
        Some(l) if !l.file.is_empty() => l.file.clone(),
        _ => "-".into(),
    }
}

/// `suggest` as a table (`#`, function, skill, savings, confidence, file:line), then per
/// finding its advice, culprit and evidence, then the notes, all fitted to `width`.
pub fn findings_table(r: &RunSkillResponse, width: usize) -> String {
    let mut out = String::new();
    if r.findings.is_empty() {
        out.push_str("no findings: no skill found its evidence in the window\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .findings
            .iter()
            .enumerate()
            .map(|(i, f)| {
                vec![
                    format!("#{}", i + 1),
                    f.function.clone(),
                    f.skill.clone(),
                    watts(f.savings_watts, f.estimated),
                    watts(f.savings_fleet_watts, f.estimated),
                    format!("{:.0}%", f.confidence * 100.0),
                    location(f),
                ]
            })
            .collect();
        out.push_str(&table::render(
            &[
                "#",
                "FUNCTION",
                "SKILL",
                "SAVES W",
                "FLEET W",
                "CONF",
                "FILE:LINE",
            ],
            &[
                Align::Number,
                Align::Name,
                Align::Name,
                Align::Number,
                Align::Number,
                Align::Number,
                Align::Name,
            ],
            &rows,
            width,
        ));
        for (i, f) in r.findings.iter().enumerate() {
            out.push('\n');
            let mut head = format!("#{} {} in {} ({})", i + 1, f.skill, f.function, f.service);
            if !f.regression_id.is_empty() {
                let _ = write!(head, ", regression {}", f.regression_id);
            }
            if !f.change_id.is_empty() {
                let _ = write!(head, ", culprit change {}", f.change_id);
            }
            out.push_str(&table::wrap(&head, width));
            out.push_str(&indented(&format!("advice: {}", f.advice), width));
            if !f.savings_model.is_empty() {
                out.push_str(&indented(
                    &format!("savings model: {}", f.savings_model),
                    width,
                ));
            }
            for e in &f.evidence {
                out.push_str(&indented(&format!("- {e}"), width));
            }
            if !f.patch.is_empty() {
                out.push_str("  patch: yes (--patch-dir writes it, --json carries it)\n");
            }
        }
        if r.findings.iter().any(|f| f.estimated) {
            out.push('\n');
            out.push_str(&table::wrap(
                "est: savings from watts estimated by a utilization model, not measured",
                width,
            ));
        }
    }
    if !r.notes.is_empty() {
        out.push_str("\nnotes:\n");
        for n in &r.notes {
            out.push_str(&indented(n, width));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattson_proto::v1::{SkillInfo, SourceLocation};

    fn finding() -> Finding {
        Finding {
            skill: "regex-per-call".into(),
            service: "api".into(),
            function: "regex::regex::string::Regex::new".into(),
            evidence: vec!["31% of api's samples under Regex::new".into()],
            share: 0.31,
            savings_watts: 2.5,
            savings_fleet_watts: 2500.0,
            savings_model: "share x service watts x 0.9".into(),
            estimated: true,
            confidence: 0.8,
            location: Some(SourceLocation {
                file: "src/parse.rs".into(),
                line: 42,
                function: "api::parse".into(),
            }),
            advice: "compile the regex once".into(),
            ..Finding::default()
        }
    }

    #[test]
    fn findings_show_location_savings_and_advice() {
        let r = RunSkillResponse {
            findings: vec![finding()],
            notes: vec!["no source root: no patches".into()],
        };
        let t = findings_table(&r, 160);
        let row = t.lines().find(|l| l.starts_with("#1")).unwrap();
        assert!(row.contains("regex-per-call"), "{row}");
        assert!(
            row.contains("2.500 W est") && row.contains("2.50 kW est"),
            "{row}"
        );
        assert!(
            row.contains("80%") && row.ends_with("src/parse.rs:42"),
            "{row}"
        );
        assert!(t.contains("\n  advice: compile the regex once"), "{t}");
        assert!(t.contains("\n  - 31% of api's samples"), "{t}");
        assert!(t.contains("notes:\n  no source root: no patches"), "{t}");
        // The default width: names shrink, advice and evidence wrap, indented.
        let t = findings_table(&r, 100);
        for l in t.lines() {
            assert!(l.chars().count() <= 100, "{l:?}");
        }
        assert!(t.contains("\n  advice: compile the regex once"), "{t}");
    }

    #[test]
    fn empty_answers_say_so() {
        let t = findings_table(&RunSkillResponse::default(), 100);
        assert!(t.starts_with("no findings"), "{t}");
        let t = skills_table(&ListSkillsResponse::default(), 100);
        assert_eq!(t, "no skills loaded\n");
        let l = ListSkillsResponse {
            skills: vec![SkillInfo {
                name: "siphash".into(),
                description: "SipHash on small keys".into(),
                needs: vec!["stacks".into()],
                origin: "builtin".into(),
            }],
        };
        let t = skills_table(&l, 100);
        assert!(t.contains("siphash  stacks  builtin"), "{t}");
        assert!(t.contains("siphash: SipHash on small keys"), "{t}");
        let mut f = finding();
        f.location = None;
        assert_eq!(location(&f), "-");
    }
}
