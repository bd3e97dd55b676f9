//! `skills list` and `suggest`: the collector's skills service for people. `suggest` runs the
//! opportunity finder (every pattern skill over the window, ranked by fleet watts saved), one
//! skill (`--skill`), or the regression solver (`--regression ID`), and prints the findings as
//! a table, or `--json` (the `RunSkillResponse` as it comes). Patches are made by the
//! collector, from a source tree on the collector's host (`--source-root`): the CLI prints
//! them or writes them to `--patch-dir`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use wattson_collector::report;
use wattson_collector::skills::REGRESSION_SOLVER;
use wattson_proto::v1::{Finding, ListSkillsRequest, RunSkillRequest};

use crate::args::{WindowArgs, as_of};
use crate::connect::{Skills, status};
use crate::output::Output;

#[derive(clap::Subcommand, Debug)]
pub enum SkillsCommand {
    /// Skills the collector has: built in and from its `--skills` file.
    List,
}

#[derive(clap::Args, Debug)]
pub struct SkillsArgs {
    #[command(subcommand)]
    command: SkillsCommand,
}

#[derive(clap::Args, Debug)]
pub struct SuggestArgs {
    #[command(flatten)]
    window: WindowArgs,
    /// Only this service.
    #[arg(long)]
    service: Option<String>,
    /// Explain this regression (id from `wattson regressions`) with the regression solver;
    /// `--regression all` explains every open one.
    #[arg(long, conflicts_with = "skill")]
    regression: Option<String>,
    /// With `--regression`: the regressions as `wattson regressions --as-of` detected them.
    #[arg(long, requires = "regression", allow_hyphen_values = true)]
    as_of: Option<String>,
    /// Run only this skill (`wattson skills list` names them); default: every pattern skill,
    /// ranked by fleet watts saved.
    #[arg(long)]
    skill: Option<String>,
    /// Source tree to write patches against. It is read by the COLLECTOR process, on the
    /// collector's host: give the path as the collector sees it (a relative path is made
    /// absolute from this shell's directory).
    #[arg(long, value_name = "DIR")]
    source_root: Option<PathBuf>,
    /// Write each finding's patch to DIR as NN-SKILL.patch instead of printing it.
    #[arg(long, value_name = "DIR", requires = "source_root")]
    patch_dir: Option<PathBuf>,
}

pub async fn skills(client: &mut Skills, a: SkillsArgs, out: &Output) -> anyhow::Result<()> {
    match a.command {
        SkillsCommand::List => {
            let r = client
                .list_skills(ListSkillsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            out.emit(serde_json::to_value(&r)?, |w| report::skills_table(&r, w))
        }
    }
}

/// The request `suggest` sends for its arguments.
fn request(a: &SuggestArgs) -> anyhow::Result<RunSkillRequest> {
    let source_root = match &a.source_root {
        Some(p) => std::path::absolute(p)
            .with_context(|| format!("--source-root {}", p.display()))?
            .to_str()
            .with_context(|| format!("--source-root {}: not UTF-8", p.display()))?
            .to_string(),
        None => String::new(),
    };
    let (skill, regression_id) = match (&a.regression, &a.skill) {
        (Some(r), _) if r == "all" => (REGRESSION_SOLVER.to_string(), String::new()),
        (Some(r), _) => (REGRESSION_SOLVER.to_string(), r.clone()),
        (None, s) => (s.clone().unwrap_or_default(), String::new()),
    };
    Ok(RunSkillRequest {
        skill,
        window: Some(a.window.window()?),
        service: a.service.clone().unwrap_or_default(),
        regression_id,
        source_root,
        as_of_unix_seconds: as_of(a.as_of.as_deref())?,
    })
}

pub async fn suggest(client: &mut Skills, a: SuggestArgs, out: &Output) -> anyhow::Result<()> {
    let r = client
        .run_skill(request(&a)?)
        .await
        .map_err(status)?
        .into_inner();
    out.emit(serde_json::to_value(&r)?, |w| report::findings_table(&r, w))?;
    let patched: Vec<(usize, &Finding)> = r
        .findings
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.patch.is_empty())
        .collect();
    match (&a.patch_dir, &a.source_root) {
        (Some(dir), _) => write_patches(dir, &patched)?,
        // JSON carries the patches already; a table reader gets them after the table.
        (None, Some(_)) if !out.json() => {
            for (i, f) in &patched {
                println!(
                    "\n# patch for #{} ({}, {})",
                    i + 1,
                    f.skill,
                    report::location(f)
                );
                print!("{}", f.patch);
            }
            if patched.is_empty() {
                eprintln!("no patches: see the notes for why");
            }
        }
        _ => {}
    }
    Ok(())
}

/// Writes each patch to `dir/NN-SKILL.patch` (NN the finding's rank), saying so on stderr.
fn write_patches(dir: &Path, patched: &[(usize, &Finding)]) -> anyhow::Result<()> {
    if patched.is_empty() {
        eprintln!("no patches to write to --patch-dir: see the notes for why");
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating --patch-dir {}", dir.display()))?;
    for (i, f) in patched {
        let name: String = f
            .skill
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{:02}-{name}.patch", i + 1));
        if path.exists() {
            bail!(
                "--patch-dir {}: {} exists; give an empty directory",
                dir.display(),
                path.display()
            );
        }
        std::fs::write(&path, &f.patch).with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "wrote {} (apply with `git apply {}`)",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser, Debug)]
    struct T {
        #[command(flatten)]
        a: SuggestArgs,
    }

    fn parse(args: &[&str]) -> SuggestArgs {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .unwrap()
            .a
    }

    #[test]
    fn regression_runs_the_solver_and_roots_are_absolute() {
        let r = request(&parse(&["--regression", "r-1", "--source-root", "src"])).unwrap();
        assert_eq!(
            (r.skill.as_str(), r.regression_id.as_str()),
            (REGRESSION_SOLVER, "r-1")
        );
        assert!(Path::new(&r.source_root).is_absolute(), "{}", r.source_root);
        let r = request(&parse(&["--regression", "all"])).unwrap();
        assert_eq!(
            (r.skill.as_str(), r.regression_id.as_str()),
            (REGRESSION_SOLVER, "")
        );
        let r = request(&parse(&["--service", "api"])).unwrap();
        assert_eq!((r.skill.as_str(), r.service.as_str()), ("", "api"));
        assert!(r.source_root.is_empty());
        assert!(T::try_parse_from(["t", "--patch-dir", "p"]).is_err());
    }
}
