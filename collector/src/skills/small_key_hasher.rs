//! The `siphash-small-keys` patch: the file's `HashMap`s with integer keys get a small,
//! fast hasher instead of SipHash-1-3, with no crate to add. `use std::collections::HashMap;`
//! becomes a `SmallKeyHasher` (a multiply-and-fold hasher written out in the file) and a
//! private `type HashMap<K, V>` alias with it, so every type and constructor in the file
//! follows; `HashMap::new()` (defined only for SipHash's `RandomState`) becomes
//! `HashMap::default()`.
//!
//! Refused, with the reason, whenever the whole file cannot be seen to be safe for it: a key
//! that is not an integer, a `pub` item naming `HashMap` (its users in other files would not
//! follow), a map named another way (`collections::HashMap`, a grouped `use`), a constructor
//! only `RandomState` has (`HashMap::from`). The hasher gives up HashDoS resistance, so the
//! patch says so where it adds it: it is for keys an attacker cannot choose, a reviewer's call.

use super::patch::{Edit, find_line};

/// Integer key types the hasher is for.
const INT_KEYS: &[&str] = &[
    "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
];

/// Name of the hasher the patch adds; a file that has one already is left alone.
const HASHER: &str = "SmallKeyHasher";

/// The hasher and alias that replace the `use` line.
fn replacement() -> Vec<String> {
    [
        "// SipHash-1-3 (std's default) resists HashDoS; this hasher does not: it is for keys an",
        "// attacker cannot choose. Integer keys hash in one multiply instead of SipHash's rounds.",
        "#[derive(Default)]",
        "struct SmallKeyHasher(u64);",
        "",
        "impl std::hash::Hasher for SmallKeyHasher {",
        "    fn finish(&self) -> u64 {",
        "        // Fold the well-mixed high half into the low bits that pick the bucket.",
        "        self.0 ^ (self.0 >> 29)",
        "    }",
        "    fn write(&mut self, bytes: &[u8]) {",
        "        for chunk in bytes.chunks(8) {",
        "            let mut word = [0u8; 8];",
        "            word[..chunk.len()].copy_from_slice(chunk);",
        "            self.write_u64(u64::from_le_bytes(word));",
        "        }",
        "    }",
        "    fn write_u64(&mut self, n: u64) {",
        "        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);",
        "    }",
        "    fn write_u8(&mut self, n: u8) {",
        "        self.write_u64(n.into());",
        "    }",
        "    fn write_u16(&mut self, n: u16) {",
        "        self.write_u64(n.into());",
        "    }",
        "    fn write_u32(&mut self, n: u32) {",
        "        self.write_u64(n.into());",
        "    }",
        "    fn write_usize(&mut self, n: usize) {",
        "        self.write_u64(n as u64);",
        "    }",
        "}",
        "",
        "type HashMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<SmallKeyHasher>>;",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The code of a line, without a trailing `//` comment (naive about `//` inside strings,
/// which only makes it refuse more).
fn code(line: &str) -> &str {
    line.find("//").map_or(line, |i| &line[..i])
}

/// The edits, or why there are none. `at` is the finding's line (0-based).
pub fn edits(lines: &[&str], at: usize) -> Result<Vec<Edit>, String> {
    let call = regex::Regex::new(
        r"\b[a-z_][a-z0-9_]*\s*\.\s*(?:entry|insert|get|get_mut|contains_key|remove)\s*\(",
    )
    .expect("a valid regex");
    find_line(
        lines,
        at,
        "map lookup (`.entry(`, `.get(`, `.insert(`...)",
        |l| call.is_match(code(l)),
    )?;
    if lines.iter().any(|l| code(l).contains(HASHER)) {
        return Err(format!("the file already has a {HASHER}"));
    }
    let mention = regex::Regex::new(r"\bHashMap\b").expect("a valid regex");
    let typed = regex::Regex::new(r"^HashMap\s*<\s*(?P<key>[A-Za-z0-9_]+)\s*,").expect("valid");
    // `args` only when they hold no parentheses (with the closing one).
    let ctor = regex::Regex::new(
        r"^HashMap\s*::\s*(?:<[^>]*>\s*::\s*)?(?P<f>[a-z_]+)\s*\((?P<args>[^()]*\))?",
    )
    .expect("a valid regex");
    let public = regex::Regex::new(r"\bpub\b").expect("a valid regex");
    let mut import = None;
    let mut edits = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = code(line);
        if !mention.is_match(code) || code.trim_start().starts_with("//") {
            continue;
        }
        let refuse = |why: &str| Err(format!("line {}: {why}: `{}`", i + 1, line.trim()));
        if code.trim() == "use std::collections::HashMap;" {
            if import.replace(i).is_some() || !line.starts_with("use ") {
                return refuse("HashMap is imported more than once or inside a block");
            }
            continue;
        }
        if code.trim_start().starts_with("use ") {
            return refuse("import HashMap on its own line (`use std::collections::HashMap;`)");
        }
        if public.is_match(code) {
            return refuse("a public item names HashMap; its users elsewhere would not follow");
        }
        let mut fixed = code.to_string();
        for m in mention.find_iter(code) {
            let rest = &code[m.start()..];
            if code[..m.start()].ends_with("::") {
                return refuse("HashMap named by its path; import it with `use` to patch");
            }
            if let Some(c) = typed.captures(rest) {
                if !INT_KEYS.contains(&&c["key"]) {
                    return refuse(&format!(
                        "a {} key is not an integer; SipHash may be there for a reason",
                        &c["key"]
                    ));
                }
            } else if let Some(c) = ctor.captures(rest) {
                let whole = &c[0];
                let args = c.name("args").map(|a| a.as_str().trim_end_matches(')'));
                let new = match (&c["f"], args) {
                    ("default", _) => continue,
                    ("new", Some("")) => format!("{}default()", &whole[..whole.len() - 5]),
                    ("with_capacity", Some(n)) => format!(
                        "{}with_capacity_and_hasher({n}, Default::default())",
                        &whole[..whole.find("with_capacity").expect("matched")]
                    ),
                    ("with_capacity", None) => {
                        return refuse("a capacity computed by a call; swap the hasher by hand");
                    }
                    (f, _) => {
                        return refuse(&format!(
                            "HashMap::{f} exists only for SipHash's RandomState"
                        ));
                    }
                };
                fixed = fixed.replacen(whole, &new, 1);
            } else {
                return refuse(
                    "a HashMap this patch cannot follow (no `<KEY, ` type, no constructor)",
                );
            }
        }
        if fixed != code {
            edits.push(Edit {
                at: i,
                remove: 1,
                insert: vec![format!("{fixed}{}", &line[code.len()..])],
            });
        }
    }
    let Some(import) = import else {
        return Err(
            "no `use std::collections::HashMap;` line of its own to replace (a grouped \
                    import or another map type)"
                .into(),
        );
    };
    edits.push(Edit {
        at: import,
        remove: 1,
        insert: replacement(),
    });
    Ok(edits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<&str> {
        s.lines().collect()
    }

    const WORKLOAD: &str = "use std::collections::HashMap;\n\nfn count(m: &mut HashMap<u64, u64>, k: u64) {\n    *m.entry(k).or_insert(0) += 1; // HOT\n}\n\nfn main() {\n    let mut m = HashMap::new();\n    let _n: HashMap<u32, String> = HashMap::with_capacity(8 * 2);\n    count(&mut m, 3);\n}\n";

    #[test]
    fn integer_keyed_maps_get_the_small_key_hasher() {
        let l = lines(WORKLOAD);
        let e = edits(&l, 3).unwrap();
        let new: Vec<&str> = e
            .iter()
            .flat_map(|e| e.insert.iter().map(String::as_str))
            .collect();
        assert!(
            new.contains(&"    let mut m = HashMap::default();"),
            "{new:#?}"
        );
        assert!(
            new.contains(&"    let _n: HashMap<u32, String> = HashMap::with_capacity_and_hasher(8 * 2, Default::default());"),
            "{new:#?}"
        );
        assert!(new.iter().any(|l| l.starts_with("type HashMap<K, V> =")));
        assert_eq!(
            e.iter().filter(|e| e.at == 0).count(),
            1,
            "the import is replaced"
        );
    }

    #[test]
    fn refuses_what_it_cannot_see_is_safe() {
        for (from, to, why) in [
            ("HashMap<u64, u64>", "HashMap<String, u64>", "String key"),
            ("fn count(", "pub fn count(", "public item"),
            ("HashMap::new()", "HashMap::from([(1, 1)])", "RandomState"),
            (
                "use std::collections::HashMap;",
                "use std::collections::{HashMap, HashSet};",
                "own line",
            ),
            (
                "let mut m = HashMap::new();",
                "let mut m = std::collections::HashMap::new();",
                "path",
            ),
            (
                "*m.entry(k)",
                "*m.iter().next().unwrap().0 + k",
                "map lookup",
            ),
        ] {
            let src = WORKLOAD.replace(from, to);
            let e = edits(&lines(&src), 3).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    /// The e2e workload, patched through `patch::make` (with `git apply --check`), builds and
    /// counts the same keys as before.
    #[test]
    fn the_siphash_workload_patched_builds_and_gives_the_same_answer() {
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("siphash_small_keys.rs");
        let from = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/workloads/siphash_small_keys.rs"
        );
        std::fs::copy(from, &src).unwrap();
        let text = std::fs::read_to_string(&src).unwrap();
        let hot = text.lines().position(|l| l.contains("HOT:")).unwrap() as u32 + 1;
        let loc = wattson_proto::v1::SourceLocation {
            file: "/build/siphash_small_keys.rs".into(),
            line: hot,
            ..Default::default()
        };
        let diff =
            super::super::patch::make(super::super::patch::Fix::SmallKeyHasher, dir.path(), &loc)
                .unwrap();
        eprintln!("{diff}");
        let run = |exe: &str| {
            let st = Command::new("rustc")
                .args(["-O", "-o"])
                .arg(dir.path().join(exe))
                .arg(&src)
                .status()
                .unwrap();
            assert!(st.success(), "rustc {exe}:\n{diff}");
            let out = Command::new(dir.path().join(exe))
                .args(["60", "20"])
                .output()
                .unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap()
        };
        let before = run("before");
        let st = Command::new("git")
            .arg("-C")
            .arg(dir.path())
            .args(["apply", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().unwrap().write_all(diff.as_bytes())?;
                c.wait()
            })
            .unwrap();
        assert!(st.success(), "{diff}");
        assert!(
            std::fs::read_to_string(&src)
                .unwrap()
                .contains("BuildHasherDefault<SmallKeyHasher>")
        );
        assert_eq!(before, run("after"));
        assert_eq!(before, "1024 keys, 81920 counted, 20 rounds\n");
    }
}
