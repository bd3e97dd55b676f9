//! Folded stacks (`comm;root;...;leaf count`), the input of inferno and flamegraph.pl.
//!
//! Like `stackcollapse-perf.pl --kernel --inline`: the first frame is the process name, kernel
//! frames end in `_[k]` and inlined ones in `_[i]` (flame graph tools color them). Counts are
//! integers under the chosen [`Weight`]; lines that weigh 0 are left out.

use std::collections::BTreeMap;

use crate::profile::{FrameKind, Profile, Weight};

/// Renders `profile` as folded lines, sorted, one per distinct stack.
pub fn render(profile: &Profile, weight: Weight) -> String {
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    for sample in &profile.samples {
        let value = profile.value(sample, weight);
        if value == 0 {
            continue;
        }
        let comm = profile
            .processes
            .get(&sample.tgid)
            .map(|p| p.comm.as_str())
            .filter(|c| !c.is_empty())
            .unwrap_or(if sample.tgid == 0 {
                "swapper"
            } else {
                "[unknown]"
            });
        let mut parts = vec![clean(comm)];
        let frames: Vec<_> = profile.stack_frames(sample.stack).collect();
        for frame in frames.iter().rev() {
            let mut name = clean(&frame.name());
            if frame.kind == FrameKind::Kernel {
                name.push_str("_[k]");
            } else if frame.inlined {
                name.push_str("_[i]");
            }
            parts.push(name);
        }
        *lines.entry(parts.join(";")).or_default() += value;
    }
    let mut out = String::new();
    for (stack, value) in lines {
        out.push_str(&stack);
        out.push(' ');
        out.push_str(&value.to_string());
        out.push('\n');
    }
    out
}

/// Frame names may not contain the separators of the format.
fn clean(name: &str) -> String {
    name.replace([';', '\n', '\r'], ":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Frame, ProfileBuilder, Stack};

    #[test]
    fn stacks_fold_root_first_with_kernel_and_inline_marks() {
        let mut b = ProfileBuilder::new(Profile {
            frequency: 99,
            ..Profile::default()
        });
        let f = |name: &str, kind, inlined| Frame {
            kind,
            function: Some(name.to_owned()),
            file: None,
            line: 0,
            inlined,
            module: "m".to_owned(),
            build_id: None,
            file_offset: None,
            address: 1,
        };
        let ids = vec![
            b.frame(f("do_syscall;64", FrameKind::Kernel, false)),
            b.frame(f("inl", FrameKind::User, true)),
            b.frame(f("main", FrameKind::User, false)),
        ];
        let s = b.stack(Stack {
            frames: ids,
            truncated: false,
        });
        b.sample(7, 7, 0, s, 3);
        b.sample(7, 8, 1, s, 2);
        let p = b.finish();
        assert_eq!(
            render(&p, Weight::Samples),
            "[unknown];main;inl_[i];do_syscall:64_[k] 5\n"
        );
        assert_eq!(render(&p, Weight::Microjoules), "");
    }
}
