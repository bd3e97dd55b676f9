//! Where `wattson` puts its answers: stdout as a table fitted to the width (from `--width`,
//! `$COLUMNS` or the terminal) or as JSON (`--json`), and files named by `--output`.

use std::io::IsTerminal as _;
use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;

/// Table width when neither --width, $COLUMNS nor a terminal says otherwise.
const DEFAULT_WIDTH: usize = 100;

/// How answers print: the global `--json` and the table width.
pub struct Output {
    json: bool,
    width: usize,
}

impl Output {
    /// From `--json` and `--width`; the terminal is asked only when the width is not given.
    pub fn new(json: bool, width_flag: Option<usize>) -> Output {
        let width = table_width(width_flag, std::env::var("COLUMNS").ok(), terminal_columns);
        Output { json, width }
    }

    /// True with `--json`.
    pub fn json(&self) -> bool {
        self.json
    }

    /// Prints `value` as JSON, or the table `table` lays out in the width.
    pub fn emit(&self, value: Value, table: impl FnOnce(usize) -> String) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            print!("{}", table(self.width));
        }
        Ok(())
    }
}

/// Writes `data` to the file `--output` named, and says so on stderr.
pub fn write_file(path: &Path, data: impl AsRef<[u8]>) -> anyhow::Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing --output {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The table width: `--width` (0 = unlimited), else `$COLUMNS`, else the terminal's columns
/// (asked only when stdout is a terminal), else [`DEFAULT_WIDTH`].
fn table_width(
    flag: Option<usize>,
    columns_env: Option<String>,
    terminal: impl FnOnce() -> Option<usize>,
) -> usize {
    match flag {
        Some(0) => usize::MAX,
        Some(n) => n,
        None => columns_env
            .and_then(|c| c.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .or_else(terminal)
            .unwrap_or(DEFAULT_WIDTH),
    }
}

/// Columns of the terminal stdout writes to. This crate has no terminal-size dependency, so
/// `stty` (which reads the tty's window size) is asked; any failure means "unknown".
fn terminal_columns() -> Option<usize> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let tty = std::fs::File::open("/dev/tty").ok()?;
    let out = std::process::Command::new("stty")
        .arg("size")
        .stdin(tty)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    // `stty size` prints "ROWS COLUMNS".
    text.split_whitespace()
        .nth(1)?
        .parse()
        .ok()
        .filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn width_comes_from_the_flag_then_columns_then_the_terminal() {
        let tty = || Some(132);
        let cols = || Some("90".to_string());
        assert_eq!(table_width(Some(70), cols(), tty), 70);
        assert_eq!(table_width(Some(0), cols(), tty), usize::MAX);
        assert_eq!(table_width(None, cols(), tty), 90);
        assert_eq!(table_width(None, None, tty), 132);
        // Unusable $COLUMNS is ignored rather than fatal.
        assert_eq!(table_width(None, Some("wide".into()), tty), 132);
        assert_eq!(table_width(None, Some("0".into()), || None), DEFAULT_WIDTH);
        assert_eq!(table_width(None, None, || None), DEFAULT_WIDTH);
    }
}
