//! Flame graphs from stored stacks: folded text (`frame;frame count`, Brendan Gregg's format,
//! weighted by samples or by microjoules) and SVG rendered with inferno, including the
//! differential flame graph `diff` draws (red grew, blue shrank).

use std::collections::BTreeMap;

use inferno::flamegraph;
use wattson_proto::v1::StackRow;

/// What a flame graph's widths count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weight {
    /// Samples (CPU time).
    Samples,
    /// Attributed microjoules (measured + estimated).
    Energy,
}

impl Weight {
    fn count_name(self) -> &'static str {
        match self {
            Weight::Samples => "samples",
            Weight::Energy => "µJ",
        }
    }
}

/// Errors drawing a flame graph.
#[derive(Debug, thiserror::Error)]
pub enum FlameError {
    /// No stacks in the window (inferno refuses empty input).
    #[error("no stacks to draw in the window{0}")]
    Empty(String),
    /// inferno failed.
    #[error("rendering flame graph: {0}")]
    Render(#[from] std::io::Error),
}

/// Folded lines, one per stack (services merged), with integer weights; zero-weight stacks
/// are left out. With `prefix_service`, each stack is rooted at its service name.
pub fn folded(stacks: &[StackRow], weight: Weight, prefix_service: bool) -> String {
    let mut merged: BTreeMap<String, u64> = BTreeMap::new();
    for s in stacks {
        let w = match weight {
            Weight::Samples => s.samples,
            Weight::Energy => ((s.joules_measured + s.joules_estimated) * 1e6).round() as u64,
        };
        if w == 0 {
            continue;
        }
        let key = if prefix_service {
            format!("{};{}", s.service, s.folded)
        } else {
            s.folded.clone()
        };
        let sum = merged.entry(key).or_default();
        *sum = sum.saturating_add(w);
    }
    let mut out = String::new();
    for (k, v) in merged {
        out.push_str(&k);
        out.push(' ');
        out.push_str(&v.to_string());
        out.push('\n');
    }
    out
}

/// True when any stack's energy is estimated.
pub fn any_estimated(stacks: &[StackRow]) -> bool {
    stacks.iter().any(|s| s.joules_estimated > 0.0)
}

fn options(title: &str, weight: Weight, estimated: bool) -> flamegraph::Options<'static> {
    let mut opt = flamegraph::Options::default();
    opt.title = title.to_string();
    opt.count_name = weight.count_name().to_string();
    if weight == Weight::Energy && estimated {
        opt.subtitle = Some("energy is estimated (utilization model), not measured".into());
    }
    opt
}

/// An SVG flame graph of folded lines.
pub fn svg(
    folded: &str,
    title: &str,
    weight: Weight,
    estimated: bool,
) -> Result<Vec<u8>, FlameError> {
    if folded.trim().is_empty() {
        return Err(FlameError::Empty(String::new()));
    }
    let mut out = Vec::new();
    flamegraph::from_reader(
        &mut options(title, weight, estimated),
        folded.as_bytes(),
        &mut out,
    )?;
    Ok(out)
}

/// A differential SVG flame graph: shape of `after`, colored by the change from `before`
/// (counts normalized so the totals compare).
pub fn diff_svg(
    before: &str,
    after: &str,
    title: &str,
    weight: Weight,
    estimated: bool,
) -> Result<Vec<u8>, FlameError> {
    if before.trim().is_empty() || after.trim().is_empty() {
        return Err(FlameError::Empty(" (one side of the diff is empty)".into()));
    }
    let mut diff = Vec::new();
    let opt = inferno::differential::Options {
        normalize: true,
        ..Default::default()
    };
    inferno::differential::from_readers(opt, before.as_bytes(), after.as_bytes(), &mut diff)?;
    let mut out = Vec::new();
    flamegraph::from_reader(
        &mut options(title, weight, estimated),
        diff.as_slice(),
        &mut out,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(service: &str, folded: &str, samples: u64, jm: f64, je: f64) -> StackRow {
        StackRow {
            service: service.into(),
            folded: folded.into(),
            samples,
            joules_measured: jm,
            joules_estimated: je,
        }
    }

    #[test]
    fn folded_merges_and_weights() {
        let rows = [
            row("a", "main;hash", 3, 0.5, 0.0),
            row("b", "main;hash", 2, 0.0, 0.25),
            row("a", "main", 0, 0.0, 0.0),
        ];
        assert_eq!(folded(&rows, Weight::Samples, false), "main;hash 5\n");
        assert_eq!(folded(&rows, Weight::Energy, false), "main;hash 750000\n");
        assert_eq!(
            folded(&rows, Weight::Samples, true),
            "a;main;hash 3\nb;main;hash 2\n"
        );
        assert!(any_estimated(&rows));
        let svg =
            String::from_utf8(svg("main;hash 5\n", "t", Weight::Samples, false).unwrap()).unwrap();
        assert!(svg.contains("<svg") && svg.contains("hash"));
        assert!(matches!(
            super::svg("", "t", Weight::Samples, false),
            Err(FlameError::Empty(_))
        ));
        let d = diff_svg(
            "main;a 5\n",
            "main;a 5\nmain;b 5\n",
            "d",
            Weight::Energy,
            true,
        )
        .unwrap();
        assert!(String::from_utf8(d).unwrap().contains("estimated"));
    }
}
