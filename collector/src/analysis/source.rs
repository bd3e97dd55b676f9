//! Source lookup: the store's line rows ([`crate::store::Kind::Line`]) turned into
//! [`SourceLine`]s, the file:line a finding names and a patch edits.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::store::Keyed;
use crate::store::rollup::split_line_key;

/// One source line of a function and the samples that ran there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceLine {
    /// The function the line belongs to.
    pub function: String,
    /// The function called from this line ("" when the samples ran in the line itself).
    pub callee: String,
    /// Source file as the agent's DWARF data named it.
    pub file: String,
    /// Line number (1-based).
    pub line: u32,
    /// Samples on this line (through `callee` when set).
    pub samples: u64,
    /// Part of the function's located samples this line carries, 0..1.
    pub share: f64,
}

/// A line row's key split into (function, callee, file, line); `None` for a malformed key.
pub fn parse_line_key(key: &str) -> Option<(&str, &str, &str, u32)> {
    split_line_key(key)
}

/// Every line of the rows, summed over services, most samples first.
pub fn all_lines(rows: &[Keyed]) -> Vec<SourceLine> {
    lines(rows, |_| true)
}

/// The lines of `function`, most samples first.
pub fn lines_of(rows: &[Keyed], function: &str) -> Vec<SourceLine> {
    lines(rows, |f| f == function)
}

fn lines(rows: &[Keyed], keep: impl Fn(&str) -> bool) -> Vec<SourceLine> {
    let mut sums: HashMap<(&str, &str, &str, u32), u64> = HashMap::new();
    for r in rows {
        if let Some(k) = split_line_key(&r.key).filter(|k| keep(k.0)) {
            *sums.entry(k).or_default() += r.totals.samples_self;
        }
    }
    let mut per_function: HashMap<&str, u64> = HashMap::new();
    for (&(f, ..), &n) in &sums {
        *per_function.entry(f).or_default() += n;
    }
    let mut out: Vec<SourceLine> = sums
        .into_iter()
        .map(|((function, callee, file, line), samples)| SourceLine {
            share: samples as f64 / per_function[function].max(1) as f64,
            function: function.into(),
            callee: callee.into(),
            file: file.into(),
            line,
            samples,
        })
        .collect();
    out.sort_by(|a, b| {
        b.samples
            .cmp(&a.samples)
            .then_with(|| (&a.function, &a.file, a.line).cmp(&(&b.function, &b.file, b.line)))
    });
    out
}
