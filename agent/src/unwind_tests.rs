//! Tests of the leaf fix-up on real binaries: small C programs built here with `cc`, and this
//! machine's libc.

use std::{path::Path, process::Command};

use object::{Object, ObjectSegment, ObjectSymbol};

use super::{LeafRule, LeafUnwinder, caller};
use crate::process::ProcessTable;

const SOURCE: &str = r#"
#include <string.h>
__attribute__((noinline)) long sink(char *p) { return p[3]; }
__attribute__((noinline)) long work(int n) {
    char buf[40];
    memset(buf, n, sizeof buf);
    return sink(buf) + n;
}
int main(int argc, char **argv) { (void)argv; return (int)work(argc); }
"#;

/// Builds `SOURCE` with `flags` into `dir` and returns the executable's path.
fn build(dir: &Path, name: &str, flags: &[&str]) -> String {
    let src = dir.join("leaf.c");
    std::fs::write(&src, SOURCE).unwrap();
    let exe = dir.join(name);
    let out = Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe.to_str().unwrap().to_owned()
}

/// The rule at every byte of function `name` in the ELF file at `path`, in order.
fn rules_over(unwinder: &mut LeafUnwinder, path: &str, name: &str) -> Vec<LeafRule> {
    let data = std::fs::read(path).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let sym = obj
        .symbols()
        .chain(obj.dynamic_symbols())
        .find(|s| s.name() == Ok(name) && s.size() > 0)
        .unwrap_or_else(|| panic!("{name} in {path}"));
    let offset = |addr: u64| {
        obj.segments()
            .find_map(|s| {
                let (off, size) = s.file_range();
                let start = s.address();
                (addr >= start && addr < start + size).then(|| addr - start + off)
            })
            .unwrap()
    };
    (sym.address()..sym.address() + sym.size())
        .map(|a| unwinder.rule(path, offset(a)))
        .collect()
}

#[test]
fn a_framed_function_is_sp_based_until_its_frame_is_set_up() {
    let dir = tempfile::tempdir().unwrap();
    let exe = build(
        dir.path(),
        "framed",
        &["-g", "-O0", "-fno-omit-frame-pointer"],
    );
    let rules = rules_over(&mut LeafUnwinder::default(), &exe, "work");
    // Entry: the return address is at sp; after `push %rbp`, one word up; after
    // `mov %rsp,%rbp` the frame pointer walk is right.
    assert_eq!(rules[0], LeafRule::ReturnAt { slot: 0 }, "{rules:?}");
    let pushed = rules
        .iter()
        .position(|r| *r == LeafRule::ReturnAt { slot: 1 })
        .expect("a rule after push %rbp");
    let framed = rules
        .iter()
        .position(|r| *r == LeafRule::FramePointer)
        .expect("a bp-based rule");
    assert!(pushed < framed, "{rules:?}");
}

#[test]
fn a_frameless_function_returns_past_its_stack_space() {
    let dir = tempfile::tempdir().unwrap();
    let exe = build(
        dir.path(),
        "frameless",
        &["-g", "-O1", "-fomit-frame-pointer"],
    );
    let rules = rules_over(&mut LeafUnwinder::default(), &exe, "work");
    assert_eq!(rules[0], LeafRule::ReturnAt { slot: 0 }, "{rules:?}");
    assert!(!rules.contains(&LeafRule::FramePointer), "{rules:?}");
    // While `buf` (40 bytes) is on the stack, the return address lies above it.
    let deepest = rules
        .iter()
        .filter_map(|r| match r {
            LeafRule::ReturnAt { slot } => Some(*slot),
            _ => None,
        })
        .max()
        .unwrap();
    assert!(deepest * 8 >= 40, "{rules:?}");
}

/// The leaf of a sample in glibc's `write` (no frame pointer): its caller, captured at the
/// stack pointer, goes in right after it; words elsewhere or already in the chain do not.
#[test]
fn the_caller_of_libc_write_is_inserted_from_the_word_at_its_slot() {
    let me = std::process::id();
    let mut table = ProcessTable::new("/proc", Vec::new());
    table.observe(me, "");
    let write = libc::write as *const () as u64;
    let path = table.mapping(me, write, 1).and_then(|m| m.path.clone());
    assert!(
        path.as_deref().is_some_and(|p| p.contains("libc")),
        "{path:?}"
    );

    let mut u = LeafUnwinder::default();
    let mut stack = vec![write, 0x1111];
    u.fix(
        &mut table,
        me,
        1,
        &mut stack,
        &[(0, 0x2222), (3, 0x3333)],
        5,
    );
    assert_eq!(stack, [write, 0x2222, 0x1111]);
    // The caller is already the walk's next frame: nothing to do.
    let mut stack = vec![write, 0x2222];
    u.fix(&mut table, me, 1, &mut stack, &[(0, 0x2222)], 1);
    assert_eq!(stack, [write, 0x2222]);
    // Nothing was captured at the slot: counted as failed, the stack is left alone.
    let mut stack = vec![write, 0x1111];
    u.fix(&mut table, me, 1, &mut stack, &[(2, 0x2222)], 2);
    assert_eq!(stack, [write, 0x1111]);
    let counts = u.take_counts();
    assert_eq!((counts.made, counts.failed), (5, 2));
    assert_eq!(u.take_counts(), Default::default());
    let (cfi, rules) = u.cache_bytes();
    assert!(cfi > 1000 && rules > 0, "{cfi} {rules}");
}

/// A leaf whose frame is set up (this test's own function, built with frame pointers) is
/// left alone.
#[test]
fn a_framed_leaf_is_left_alone() {
    let me = std::process::id();
    let mut table = ProcessTable::new("/proc", Vec::new());
    table.observe(me, "");
    let f = a_framed_leaf_is_left_alone as *const () as u64;
    let mut u = LeafUnwinder::default();
    // Deep inside the function (past its prologue).
    let mut stack = vec![f + 64, 0x1111];
    u.fix(
        &mut table,
        me,
        1,
        &mut stack,
        &[(0, 0x2222), (1, 0x3333)],
        1,
    );
    assert_eq!(stack, [f + 64, 0x1111]);
    assert_eq!(u.take_counts(), Default::default());
}

#[test]
fn only_scanned_slots_name_a_caller() {
    assert_eq!(caller(1, &[(0, 7), (1, 9)]), Some(9));
    assert_eq!(caller(2, &[(0, 7), (1, 9)]), None);
    let beyond = wattson_agent_ebpf::LEAF_SCAN_WORDS as u32;
    assert_eq!(caller(beyond, &[(beyond, 9)]), None);
}
