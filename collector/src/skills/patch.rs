//! Patches for the mechanical fixes: a unified diff against the file:line a finding names,
//! made only when the line looks exactly as the fix expects and checked with
//! `git apply --check` in the source root. No patch is better than a wrong one: every refusal
//! says why, and the finding carries the advice alone.

use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use wattson_proto::v1::SourceLocation;

/// A fix a patch can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fix {
    /// `Regex::new(LITERAL)` in a function body becomes a clone of a `static LazyLock<Regex>`.
    HoistRegex,
    /// Rust: the writer `let mut w = File::create(..)?;` becomes `BufWriter::new(..)`; C:
    /// `write(1, buf, n);` becomes `fwrite(buf, 1, n, stdout);` (stdio buffers it).
    BufferWrites,
    /// Rust: the file's integer-keyed `HashMap`s get a small multiply-and-fold hasher in
    /// place of SipHash (see `small_key_hasher`).
    SmallKeyHasher,
}

/// Lines around the named one where the expected code may sit: a non-leaf frame's line comes
/// from its return address, which DWARF may put on the statement's last line or the next.
const SLACK: usize = 2;

/// The diff for `fix` at `loc` under `root`, checked by `git apply --check`; `Err` says why
/// there is none.
pub fn make(fix: Fix, root: &Path, loc: &SourceLocation) -> Result<String, String> {
    let rel = resolve(root, &loc.file)?;
    let text = std::fs::read_to_string(root.join(&rel))
        .map_err(|e| format!("reading {}: {e}", root.join(&rel).display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let at = loc.line as usize;
    if at == 0 || at > lines.len() {
        return Err(format!(
            "line {at} is past the end of {} ({} lines): the source tree is not the one profiled",
            rel.display(),
            lines.len()
        ));
    }
    let edits = match fix {
        Fix::HoistRegex => hoist_regex(&lines, at - 1)?,
        Fix::BufferWrites if is_c(&rel) => c_stdout_fwrite(&lines, at - 1)?,
        Fix::BufferWrites if rel.extension().is_some_and(|e| e == "rs") => {
            rust_bufwriter(&lines, at - 1)?
        }
        Fix::BufferWrites => {
            return Err(format!(
                "{} is neither Rust nor C; buffer the writer by hand",
                rel.display()
            ));
        }
        Fix::SmallKeyHasher if rel.extension().is_some_and(|e| e == "rs") => {
            super::small_key_hasher::edits(&lines, at - 1)?
        }
        Fix::SmallKeyHasher => {
            return Err(format!(
                "{} is not Rust; swap the hasher by hand",
                rel.display()
            ));
        }
    };
    let diff = unified(&rel.to_string_lossy(), &lines, edits, text.ends_with('\n'));
    check(root, &diff)?;
    Ok(diff)
}

fn is_c(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| ["c", "h", "cc", "cpp", "cxx"].iter().any(|x| e == *x))
}

/// The frame's file relative to `root`: an absolute path under it, or the longest tail of the
/// path that exists under it (DWARF names files as the compiler saw them).
fn resolve(root: &Path, file: &str) -> Result<PathBuf, String> {
    let path = Path::new(file);
    let root_abs = root
        .canonicalize()
        .map_err(|e| format!("{}: {e}", root.display()))?;
    if let Ok(abs) = path.canonicalize()
        && let Ok(rel) = abs.strip_prefix(&root_abs)
    {
        return Ok(rel.to_path_buf());
    }
    let parts: Vec<Component<'_>> = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    for start in 0..parts.len() {
        let tail: PathBuf = parts[start..].iter().collect();
        if root.join(&tail).is_file() {
            return Ok(tail);
        }
    }
    Err(format!(
        "{file} is not under the source root {}",
        root.display()
    ))
}

/// One change: replace `remove` lines at `at` (0-based) with `insert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// First old line (0-based).
    pub at: usize,
    /// Old lines removed.
    pub remove: usize,
    /// New lines put there.
    pub insert: Vec<String>,
}

/// The one line within [`SLACK`] of `at` that `want` accepts (two are ambiguous: none).
pub(super) fn find_line(
    lines: &[&str],
    at: usize,
    what: &str,
    want: impl Fn(&str) -> bool,
) -> Result<usize, String> {
    let lo = at.saturating_sub(SLACK);
    let hi = (at + SLACK).min(lines.len() - 1);
    let found: Vec<usize> = (lo..=hi).filter(|&i| want(lines[i])).collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "no {what} within {SLACK} lines of line {}: `{}`",
            at + 1,
            lines[at].trim()
        )),
        _ => Err(format!("more than one {what} near line {}", at + 1)),
    }
}

fn indent(line: &str) -> &str {
    &line[..line.len() - line.trim_start().len()]
}

/// `PATH::new(LITERAL).unwrap()` (or `.expect(..)`, `?`) becomes `RE_N.clone()` with a
/// `static RE_N: LazyLock<PATH>` declared on the line before.
fn hoist_regex(lines: &[&str], at: usize) -> Result<Vec<Edit>, String> {
    let call = regex::Regex::new(
        r##"(?P<path>(?:[A-Za-z_][A-Za-z0-9_]*::)*Regex)::new\((?P<lit>r#*"[^"]*"#*|"(?:[^"\\]|\\.)*")\)(?P<tail>\.unwrap\(\)|\.expect\("(?:[^"\\]|\\.)*"\)|\?)"##,
    )
    .expect("a valid regex");
    let i = find_line(lines, at, "`Regex::new(\"literal\")` call", |l| {
        call.is_match(l) && call.find_iter(l).count() == 1
    })
    .map_err(|e| {
        format!(
            "{e} (a pattern built at run time cannot be hoisted: cache compiled regexes by pattern)"
        )
    })?;
    let line = lines[i];
    let caps = call.captures(line).expect("matched above");
    let (path, lit) = (&caps["path"], &caps["lit"]);
    let name = format!("RE_{}", i + 1);
    let whole = caps.get(0).expect("group 0");
    let new_line = format!(
        "{}{name}.clone(){}",
        &line[..whole.start()],
        &line[whole.end()..]
    );
    let decl = format!(
        "{}static {name}: std::sync::LazyLock<{path}> = std::sync::LazyLock::new(|| {path}::new({lit}).expect(\"a valid regex\"));",
        indent(line)
    );
    Ok(vec![Edit {
        at: i,
        remove: 1,
        insert: vec![decl, new_line],
    }])
}

/// The writer the line writes to (`w.write_all(..)`, `write!(w, ..)`), and its binding
/// `let mut w = EXPR;` above it in the same function, wrapped in a `BufWriter`.
fn rust_bufwriter(lines: &[&str], at: usize) -> Result<Vec<Edit>, String> {
    let use_re = regex::Regex::new(
        r"(?:\b(?P<a>[a-z_][a-z0-9_]*)\s*\.\s*write(?:_all)?\s*\(|\bwrite(?:ln)?!\s*\(\s*(?:&mut\s+)?(?P<b>[a-z_][a-z0-9_]*)\s*,)",
    )
    .expect("a valid regex");
    let i = find_line(lines, at, "write to a named writer", |l| use_re.is_match(l))?;
    let caps = use_re.captures(lines[i]).expect("matched above");
    let var = caps
        .name("a")
        .or_else(|| caps.name("b"))
        .expect("one of the two")
        .as_str();
    let bind = regex::Regex::new(&format!(
        r"^(?P<head>\s*let\s+mut\s+{var}\s*(?::\s*[A-Za-z:<>]+\s*)?=\s*)(?P<expr>.+?);\s*$"
    ))
    .expect("a valid regex");
    for j in (0..i).rev() {
        let l = lines[j];
        if l.trim_start().starts_with("fn ") || l.contains(" fn ") {
            break;
        }
        let Some(c) = bind.captures(l) else {
            continue;
        };
        let expr = &c["expr"];
        let opens = [
            "File::create(",
            "OpenOptions::new()",
            "File::open(",
            "stdout()",
            "stderr()",
            "TcpStream::connect(",
        ];
        if expr.contains("BufWriter") || !opens.iter().any(|o| expr.contains(o)) {
            return Err(format!(
                "`{var}` at line {} is not a file, socket or stdout opened there: `{}`",
                j + 1,
                l.trim()
            ));
        }
        let head = &c["head"];
        if head.contains(':') {
            return Err(format!(
                "`{var}` at line {} has a type annotation; wrap it in a BufWriter by hand",
                j + 1
            ));
        }
        return Ok(vec![Edit {
            at: j,
            remove: 1,
            insert: vec![format!("{head}std::io::BufWriter::new({expr});")],
        }]);
    }
    Err(format!(
        "`{var}` written at line {} is not bound with `let mut {var} = ...;` in the same \
         function (a parameter or field): buffer it where it is created",
        i + 1
    ))
}

/// C: `write(1, buf, n);` (or `STDOUT_FILENO`; a trailing comment is kept) becomes
/// `fwrite(buf, 1, n, stdout);`, buffered by stdio; only when no other line writes to descriptor 1 directly (their output would
/// overtake the buffer), adding `#include <stdio.h>` if missing.
fn c_stdout_fwrite(lines: &[&str], at: usize) -> Result<Vec<Edit>, String> {
    let stmt = regex::Regex::new(
        r"^(?P<ind>\s*)(?:\(void\)\s*)?write\(\s*(?:1|STDOUT_FILENO)\s*,\s*(?P<buf>[^,]+?)\s*,\s*(?P<len>[^;]+?)\s*\)\s*;(?P<tail>\s*(?:/\*.*\*/|//.*)?)\s*$",
    )
    .expect("a valid regex");
    let raw = regex::Regex::new(r"\bwrite\(\s*(?:1|STDOUT_FILENO)\s*,").expect("a valid regex");
    let i = find_line(lines, at, "statement `write(1, buf, len);`", |l| {
        stmt.is_match(l)
    })
    .map_err(|e| {
        format!("{e} (writes to another descriptor: wrap it with fdopen() and setvbuf() by hand)")
    })?;
    if let Some(j) = (0..lines.len()).find(|&j| j != i && raw.is_match(lines[j])) {
        return Err(format!(
            "line {} also writes to stdout with write(2); buffered output would reorder them",
            j + 1
        ));
    }
    let c = stmt.captures(lines[i]).expect("matched above");
    let mut edits = Vec::new();
    if !lines
        .iter()
        .any(|l| l.trim_start().starts_with("#include <stdio.h>"))
    {
        let after = lines
            .iter()
            .rposition(|l| l.trim_start().starts_with("#include"))
            .map_or(0, |k| k + 1);
        edits.push(Edit {
            at: after,
            remove: 0,
            insert: vec!["#include <stdio.h>".into()],
        });
    }
    edits.push(Edit {
        at: i,
        remove: 1,
        insert: vec![format!(
            "{}fwrite({}, 1, {}, stdout);{}",
            &c["ind"], &c["buf"], &c["len"], &c["tail"]
        )],
    });
    Ok(edits)
}

/// Context lines around each change.
const CONTEXT: usize = 3;

/// A unified diff (git style, `a/` and `b/` prefixes) of `edits` (sorted, not overlapping)
/// applied to `lines`.
pub fn unified(path: &str, lines: &[&str], mut edits: Vec<Edit>, final_newline: bool) -> String {
    edits.sort_by_key(|e| e.at);
    let mut out = format!("--- a/{path}\n+++ b/{path}\n");
    // Group edits whose contexts touch into one hunk.
    let mut groups: Vec<Vec<Edit>> = Vec::new();
    for e in edits {
        match groups.last_mut() {
            Some(g)
                if {
                    let last = g.last().expect("groups are never empty");
                    e.at <= last.at + last.remove + 2 * CONTEXT
                } =>
            {
                g.push(e)
            }
            _ => groups.push(vec![e]),
        }
    }
    let mut shift: isize = 0;
    for g in groups {
        let first = g[0].at;
        let last = g.last().expect("non-empty");
        let start = first.saturating_sub(CONTEXT);
        let end = (last.at + last.remove + CONTEXT).min(lines.len());
        let mut body = String::new();
        let (mut old_n, mut new_n) = (0usize, 0usize);
        let mut k = start;
        for e in &g {
            for l in &lines[k..e.at] {
                body.push_str(&format!(" {l}\n"));
                old_n += 1;
                new_n += 1;
            }
            for l in &lines[e.at..e.at + e.remove] {
                body.push_str(&format!("-{l}\n"));
                old_n += 1;
            }
            for l in &e.insert {
                body.push_str(&format!("+{l}\n"));
                new_n += 1;
            }
            k = e.at + e.remove;
        }
        for l in &lines[k..end] {
            body.push_str(&format!(" {l}\n"));
            old_n += 1;
            new_n += 1;
        }
        if end == lines.len() && !final_newline {
            body.push_str("\\ No newline at end of file\n");
        }
        let old_start = if old_n == 0 { start } else { start + 1 };
        let new_start = (old_start as isize + shift) as usize;
        out.push_str(&format!(
            "@@ -{old_start},{old_n} +{new_start},{new_n} @@\n{body}"
        ));
        shift += new_n as isize - old_n as isize;
    }
    out
}

/// `git apply --check` of `diff` in `root`.
fn check(root: &Path, diff: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["apply", "--check", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running git apply --check: {e} (is git installed?)"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(diff.as_bytes())
        .map_err(|e| format!("feeding git apply: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for git apply: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "git apply --check refused the patch: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
