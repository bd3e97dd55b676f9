//! Names from requests (comm, function names, labels, host ids) shown to people: in tables,
//! flame graph text and logs. [`Clean`] escapes control characters, so a name cannot move a
//! terminal's cursor, change its colours, forge log lines or hide what follows it.

use std::fmt;

/// Displays a string with every control character escaped as Rust does (`\n`, `\u{1b}`),
/// everything else as it is.
#[derive(Debug, Clone, Copy)]
pub struct Clean<'a>(pub &'a str);

impl fmt::Display for Clean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if !s.chars().any(char::is_control) {
            return f.pad(s);
        }
        f.pad(&clean(s))
    }
}

/// `s` with its control characters escaped (borrowed when it has none).
pub fn clean(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(clean("main"), "main");
        assert_eq!(clean("héllo wörld"), "héllo wörld");
        assert_eq!(
            clean("evil\u{1b}[2J\r\nFAKE LOG\t\u{7f}"),
            "evil\\u{1b}[2J\\r\\nFAKE LOG\\t\\u{7f}"
        );
        assert_eq!(format!("[{:<6}]", Clean("a\nb")), "[a\\nb  ]");
    }
}
