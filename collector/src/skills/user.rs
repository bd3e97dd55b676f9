//! User skills: patterns declared in a TOML file and loaded without recompiling
//! ([`super::Registry::with_user_file`]). A file that cannot be used is refused whole, with
//! its path, the line at fault and what is wrong:
//!
//! ```toml
//! [[skill]]
//! name = "protobuf-decode"                      # unique, lowercase, digits and '-'
//! description = "prost decoding on the hot path"
//! frames = ["prost::encoding::"]                # substrings of a frame name
//! frame_regex = ['^<.* as prost::Message>::decode']
//! callers = []                                  # substrings one frame above must hold
//! caller_regex = []
//! unless = []                                   # a stack with such a frame does not count
//! services = ["api"]                            # empty or absent: every service
//! min_share = 0.05                              # evidence threshold, share of the service
//! savings_factor = 0.5                          # part of the matched energy a fix saves
//! savings_model = "decode once, pass the message along"
//! advice = "Decode once and pass the message; avoid re-encoding"
//! leaf_only = false                             # test only the leaf frame (self time)
//! ```

use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::SkillError;
use super::patch::Fix;
use super::pattern::{Matcher, Pattern};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    skill: Vec<Spanned<UserSkill>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserSkill {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    frames: Vec<String>,
    #[serde(default)]
    frame_regex: Vec<Spanned<String>>,
    #[serde(default)]
    callers: Vec<String>,
    #[serde(default)]
    caller_regex: Vec<Spanned<String>>,
    #[serde(default)]
    unless: Vec<String>,
    #[serde(default)]
    services: Vec<String>,
    min_share: Spanned<f64>,
    savings_factor: Spanned<f64>,
    #[serde(default)]
    savings_model: String,
    advice: Spanned<String>,
    #[serde(default)]
    leaf_only: bool,
    #[serde(default)]
    fix: Option<Fix>,
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The patterns of the file at `path`; `taken` names may not be reused.
pub fn load(path: &Path, taken: &[String]) -> Result<Vec<Pattern>, SkillError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SkillError::BadFile {
        path: shown.clone(),
        line: 0,
        why: format!("cannot read the skills file: {e}"),
    })?;
    parse(&text, &shown, taken)
}

/// [`load`] of a file's text; `path` names it in errors.
pub fn parse(text: &str, path: &str, taken: &[String]) -> Result<Vec<Pattern>, SkillError> {
    let bad = |span: Range<usize>, why: String| SkillError::BadFile {
        path: path.into(),
        line: line_of(text, span.start),
        why,
    };
    let file: File = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(text, s.start));
        SkillError::BadFile {
            path: path.into(),
            line,
            why: e.message().trim().to_string(),
        }
    })?;
    if file.skill.is_empty() {
        return Err(bad(
            0..0,
            "no [[skill]] tables: a skills file declares one or more [[skill]]".into(),
        ));
    }
    let mut names: Vec<String> = taken.to_vec();
    let mut out = Vec::new();
    for s in file.skill {
        let span = s.span();
        let s = s.into_inner();
        let name = s.name.get_ref();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(bad(
                s.name.span(),
                format!("skill name {name:?} must be lowercase letters, digits and '-'"),
            ));
        }
        if names.contains(name) {
            return Err(bad(
                s.name.span(),
                format!("skill name {name:?} is already taken (built-in or earlier in the file)"),
            ));
        }
        names.push(name.clone());
        let unit = |v: &Spanned<f64>, what: &str, zero_ok: bool| {
            let x = *v.get_ref();
            if x.is_finite() && (x > 0.0 || zero_ok && x == 0.0) && x <= 1.0 {
                Ok(x)
            } else {
                Err(bad(
                    v.span(),
                    format!("{what} = {x} must be a fraction in (0, 1], e.g. 0.05 for 5%"),
                ))
            }
        };
        let min_share = unit(&s.min_share, "min_share", false)?;
        let savings_factor = unit(&s.savings_factor, "savings_factor", true)?;
        let regexes = |list: &[Spanned<String>], what: &str| {
            list.iter()
                .map(|r| {
                    regex::Regex::new(r.get_ref())
                        .map(Matcher::Regex)
                        .map_err(|e| {
                            bad(
                                r.span(),
                                format!("{what} {:?} is not a valid regex: {e}", r.get_ref()),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let substrings = |list: &[String]| {
            list.iter()
                .map(|f| Matcher::Contains(f.clone()))
                .collect::<Vec<_>>()
        };
        let mut frames = substrings(&s.frames);
        frames.extend(regexes(&s.frame_regex, "frame_regex")?);
        if frames.is_empty() {
            return Err(bad(
                span,
                format!("skill {name:?} matches no frame: give frames or frame_regex"),
            ));
        }
        if frames
            .iter()
            .any(|m| matches!(m, Matcher::Contains(f) if f.is_empty()))
        {
            return Err(bad(
                span,
                format!("skill {name:?} has an empty frames entry, which matches every stack"),
            ));
        }
        let mut callers = substrings(&s.callers);
        callers.extend(regexes(&s.caller_regex, "caller_regex")?);
        if s.advice.get_ref().trim().is_empty() {
            return Err(bad(
                s.advice.span(),
                format!("skill {name:?} has empty advice"),
            ));
        }
        out.push(Pattern {
            name: name.clone(),
            description: if s.description.is_empty() {
                format!("user skill from {path}")
            } else {
                s.description
            },
            frames,
            callers,
            unless: substrings(&s.unless),
            leaf_only: s.leaf_only,
            services: s.services,
            min_share,
            savings_factor,
            savings_why: if s.savings_model.is_empty() {
                "factor set by the skills file".into()
            } else {
                s.savings_model
            },
            advice: s.advice.into_inner(),
            fix: s.fix,
            origin: path.into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[skill]]
name = "protobuf-decode"
frames = ["prost::encoding::"]
min_share = 0.05
savings_factor = 0.5
advice = "Decode once"
"#;

    fn err(text: &str) -> (usize, String) {
        match parse(text, "skills.toml", &["opportunities".into()]) {
            Err(SkillError::BadFile { line, why, path }) => {
                assert_eq!(path, "skills.toml");
                (line, why)
            }
            other => panic!("expected a bad file, got {other:?}"),
        }
    }

    #[test]
    fn a_good_file_loads() {
        let p = parse(GOOD, "skills.toml", &[]).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name, "protobuf-decode");
        assert_eq!(p[0].origin, "skills.toml");
        assert!(
            p[0].matches(&["main".into(), "prost::encoding::decode_varint".into()])
                .is_some()
        );
        assert!(p[0].matches(&["main".into(), "other".into()]).is_none());
    }

    #[test]
    fn syntax_errors_name_their_line() {
        let (line, why) = err("[[skill]]\nname = \"x\"\nmin_share = \n");
        assert_eq!(line, 3, "{why}");
    }

    #[test]
    fn unknown_fields_name_their_line() {
        let text = GOOD.replace(
            "advice = \"Decode once\"",
            "advice = \"Decode once\"\nmin_shar = 0.1",
        );
        let (line, why) = err(&text);
        assert_eq!(line, 8, "{why}");
        assert!(why.contains("min_shar"), "{why}");
    }

    #[test]
    fn out_of_range_thresholds_name_their_line() {
        let (line, why) = err(&GOOD.replace("min_share = 0.05", "min_share = 5"));
        assert_eq!(line, 5);
        assert!(why.contains("min_share = 5"), "{why}");
    }

    #[test]
    fn bad_regexes_name_their_line() {
        let text = GOOD.replace(
            "frames = [\"prost::encoding::\"]",
            "frame_regex = [\"(unclosed\"]",
        );
        let (line, why) = err(&text);
        assert_eq!(line, 4);
        assert!(why.contains("not a valid regex"), "{why}");
    }

    #[test]
    fn taken_names_are_refused() {
        let (line, why) = err(&GOOD.replace("protobuf-decode", "opportunities"));
        assert_eq!(line, 3);
        assert!(why.contains("already taken"), "{why}");
    }

    #[test]
    fn a_skill_without_frames_is_refused() {
        let (_, why) = err(&GOOD.replace("frames = [\"prost::encoding::\"]\n", ""));
        assert!(why.contains("matches no frame"), "{why}");
    }
}
