//! Text tables of the `wattson` CLI, fitted to a width. Columns are as wide as their widest
//! cell; when the table is wider than the width, the name columns (left-aligned) give way,
//! widest first, and a name longer than its column keeps its head and tail with the middle
//! elided ("…"), so a Rust path shows both its crate prefix and its function name. Numbers
//! (right-aligned) are never cut. Prose lines (footnotes) wrap at the same width.

/// Narrowest a name column is shrunk to: below this a name says too little.
const MIN_NAME: usize = 16;
/// Spaces between columns.
const GAP: usize = 2;
/// What replaces the middle of an elided name.
const ELLIPSIS: char = '…';

/// How a column lays out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// A name: left-aligned, shrunk (middle elided) when the table is too wide.
    Name,
    /// A figure: right-aligned, never cut.
    Number,
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// `s` in at most `width` characters: unchanged when it fits, else its head and tail around
/// "…". The tail gets the larger part, since a symbol's last segment is its function; the head
/// stretches to the end of the first `::` (the crate) when that takes at most half.
pub fn elide_middle(s: &str, width: usize) -> String {
    let n = chars(s);
    if n <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let keep = width - 1;
    let crate_end = s.find("::").map(|b| chars(&s[..b]) + 2);
    let head = match crate_end {
        Some(c) if c <= keep / 2 => c.max(keep * 2 / 5),
        _ => keep * 2 / 5,
    };
    let tail = keep - head;
    let mut out: String = s.chars().take(head).collect();
    out.push(ELLIPSIS);
    out.extend(s.chars().skip(n - tail));
    out
}

/// Column widths fitting `width` in total where possible: name columns are narrowed, widest
/// first, down to [`MIN_NAME`] (or their natural width, when smaller).
fn fit(natural: &[usize], align: &[Align], width: usize) -> Vec<usize> {
    let mut w = natural.to_vec();
    let total = |w: &[usize]| w.iter().sum::<usize>() + GAP * w.len().saturating_sub(1);
    let mut excess = total(&w).saturating_sub(width);
    while excess > 0 {
        // The widest name column still above its floor gives up one character at a time, so
        // long names share the cut instead of the first one losing everything.
        let Some(i) = (0..w.len())
            .filter(|&i| align[i] == Align::Name && w[i] > MIN_NAME.min(natural[i]))
            .max_by_key(|&i| (w[i], std::cmp::Reverse(i)))
        else {
            break;
        };
        w[i] -= 1;
        excess -= 1;
    }
    w
}

/// A table with a header row, laid out to `width` characters (`usize::MAX`: no limit). Cells
/// come from requests (comm, function names, labels): their control characters are escaped
/// ([`crate::display::clean`]), so a name cannot drive the terminal or break the layout.
pub fn render(head: &[&str], align: &[Align], rows: &[Vec<String>], width: usize) -> String {
    debug_assert_eq!(head.len(), align.len());
    let rows: Vec<Vec<std::borrow::Cow<'_, str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| crate::display::clean(c)).collect())
        .collect();
    let mut natural: Vec<usize> = head.iter().map(|h| chars(h)).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            natural[i] = natural[i].max(chars(c));
        }
    }
    let widths = fit(&natural, align, width);
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            let c = elide_middle(c, widths[i]);
            let pad = " ".repeat(widths[i] - chars(&c));
            match align[i] {
                Align::Name => l.push_str(&format!("{c}{pad}")),
                Align::Number => l.push_str(&format!("{pad}{c}")),
            }
            l.push_str(&" ".repeat(GAP));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut head.iter().copied());
    for r in &rows {
        line(&mut r.iter().map(|c| &**c));
    }
    out
}

/// `text` wrapped at spaces to lines of at most `width` characters (a word longer than the
/// width gets a line of its own); every line ends with a newline.
pub fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    for para in text.lines() {
        let para = crate::display::clean(para);
        let mut len = 0;
        for word in para.split(' ').filter(|w| !w.is_empty()) {
            let n = chars(word);
            if len > 0 && len + 1 + n > width {
                out.push('\n');
                len = 0;
            }
            if len > 0 {
                out.push(' ');
                len += 1;
            }
            out.push_str(word);
            len += n;
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERIC: &str = "<alloc::vec::Vec<T> as alloc::vec::spec_from_iter::SpecFromIter<T,\
        core::iter::adapters::map::Map<core::slice::iter::Iter<u8>,F>>>::from_iter";

    /// Issue 20: control characters in comm, function names and labels reached terminals.
    #[test]
    fn control_characters_in_names_are_escaped() {
        let rows = vec![vec!["evil\u{1b}[2J\rname\n".to_string(), "1".to_string()]];
        let t = render(&["FUNCTION", "N"], &[Align::Name, Align::Number], &rows, 80);
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert_eq!(t.lines().count(), 2, "{t:?}");
        assert!(t.contains("evil\\u{1b}[2J\\rname\\n"), "{t:?}");
        assert_eq!(
            wrap("a \u{1b}]0;title\u{7} b", 80),
            "a \\u{1b}]0;title\\u{7} b\n"
        );
    }

    #[test]
    fn elision_keeps_head_and_tail_in_exactly_the_width() {
        for w in [2, 5, 16, 30, 41] {
            let e = elide_middle(GENERIC, w);
            assert_eq!(chars(&e), w, "{e}");
            assert!(e.contains(ELLIPSIS), "{e}");
            let (head, tail) = e.split_once(ELLIPSIS).unwrap();
            assert!(GENERIC.starts_with(head) && GENERIC.ends_with(tail), "{e}");
            assert!(chars(tail) >= chars(head), "{e}");
        }
        let e = elide_middle(GENERIC, 40);
        assert!(
            e.starts_with("<alloc::vec") && e.ends_with(">>>::from_iter"),
            "{e}"
        );
        // A tight budget still shows the whole crate: "<alloc::" rather than "<alloc:".
        let e = elide_middle(GENERIC, 20);
        assert!(
            e.starts_with("<alloc::…") && e.ends_with("from_iter"),
            "{e}"
        );
        let e = elide_middle("wattson_demo::records::hash_records", 24);
        // ... but not at the cost of the function name.
        assert_eq!(e, "wattson_d…::hash_records");
        assert_eq!(elide_middle("short", 5), "short");
        assert_eq!(elide_middle("short", 4), "s…rt");
        assert_eq!(elide_middle("short", 1), "…");
        assert_eq!(elide_middle("short", 0), "");
        // Characters, not bytes: a multi-byte name is cut on character boundaries.
        assert_eq!(elide_middle("ééééééé", 6), "éé…ééé");
    }

    fn rows() -> Vec<Vec<String>> {
        vec![
            vec!["api".into(), GENERIC.into(), "12.345 W est".into()],
            vec!["db".into(), "main".into(), "1.000 W".into()],
        ]
    }

    const HEAD: [&str; 3] = ["SERVICE", "FUNCTION", "SELF W"];
    const ALIGN: [Align; 3] = [Align::Name, Align::Name, Align::Number];

    #[test]
    fn long_names_shrink_to_the_width_and_numbers_stay_whole() {
        for width in [40, 60, 80] {
            let t = render(&HEAD, &ALIGN, &rows(), width);
            for l in t.lines() {
                assert!(chars(l) <= width, "{width}: {l:?} is {} wide", chars(l));
            }
            let first = t.lines().nth(1).unwrap();
            assert!(first.starts_with("api "), "{first}");
            assert!(first.ends_with("12.345 W est"), "{first}");
            let name = first
                .split("  ")
                .find(|c| c.contains(ELLIPSIS))
                .unwrap()
                .trim();
            let (head, tail) = name.split_once(ELLIPSIS).unwrap();
            assert!(
                head.starts_with("<alloc::") && GENERIC.starts_with(head),
                "{first}"
            );
            assert!(
                tail.ends_with("_iter") && GENERIC.ends_with(tail),
                "{first}"
            );
            // Columns stay aligned: the number column ends at the same place on every line.
            let ends: Vec<usize> = t.lines().map(chars).collect();
            assert!(ends.iter().all(|&e| e == ends[0]), "{t}");
        }
    }

    #[test]
    fn unlimited_or_wide_enough_tables_are_not_cut() {
        for width in [usize::MAX, 200] {
            let t = render(&HEAD, &ALIGN, &rows(), width);
            assert!(t.contains(GENERIC) && !t.contains(ELLIPSIS), "{t}");
        }
    }

    #[test]
    fn the_widest_name_gives_way_first_and_short_names_are_kept() {
        let long_service = "s".repeat(30);
        let rows = vec![vec![long_service.clone(), GENERIC.into(), "1 W".into()]];
        let t = render(&HEAD, &ALIGN, &rows, 80);
        assert!(t.contains(&long_service), "{t}");
        let t = render(&HEAD, &ALIGN, &rows, 40);
        // Both shrunk, neither below the floor.
        let cells: Vec<&str> = t.lines().nth(1).unwrap().split("  ").collect();
        assert_eq!(chars(cells[0]), MIN_NAME, "{t}");
        assert_eq!(chars(cells[1]), MIN_NAME, "{t}");
    }

    #[test]
    fn prose_wraps_at_spaces() {
        let text = "W: average on the profiled hosts over the time each reported in the window";
        let w = wrap(text, 20);
        assert!(w.lines().all(|l| chars(l) <= 20), "{w}");
        assert_eq!(w.split_whitespace().collect::<Vec<_>>().join(" "), text);
        assert_eq!(wrap(text, usize::MAX), format!("{text}\n"));
        assert_eq!(wrap("averylongword x", 4), "averylongword\nx\n");
    }
}
