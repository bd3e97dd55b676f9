//! The profile skills read: each service's folded stacks over the window with its power (W on
//! the profiled hosts and fleet-wide), read once per run through [`Tools`], and the share of
//! a service a pattern's frames account for.

use std::collections::{BTreeMap, HashMap};

use wattson_proto::v1::{PowerRequest, StackRow, StacksRequest};

use super::SkillError;
use crate::analysis::{SourceLine, Tools, wire_window};
use crate::store::Window;

/// One folded stack of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Stack {
    /// Frames, root first.
    pub frames: Vec<String>,
    /// Samples of the stack.
    pub samples: u64,
    /// Joules (measured + estimated) attributed to it.
    pub joules: f64,
}

impl Stack {
    /// A stack from a wire row.
    pub fn from_row(r: &StackRow) -> Stack {
        Stack {
            frames: r.folded.split(';').map(str::to_string).collect(),
            samples: r.samples,
            joules: r.joules_measured + r.joules_estimated,
        }
    }
}

/// One service's profile.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceProfile {
    /// Service label.
    pub service: String,
    /// Its stacks, most samples first.
    pub stacks: Vec<Stack>,
    /// Samples of every stack.
    pub samples: u64,
    /// Joules of every stack.
    pub joules: f64,
    /// Average watts on the profiled hosts over the window.
    pub watts: f64,
    /// The same scaled to the fleet.
    pub fleet_watts: f64,
    /// True when any of its joules are model estimates.
    pub estimated: bool,
}

/// Every service's profile over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// The window, aligned.
    pub window: Option<Window>,
    /// By service name.
    pub services: BTreeMap<String, ServiceProfile>,
}

impl Profile {
    /// Reads the stacks of `service` ("" for every service) and the services' power.
    pub fn load(tools: &Tools, window: Window, service: &str) -> Result<Profile, SkillError> {
        let stacks = tools.stacks(&StacksRequest {
            window: Some(wire_window(window)),
            service: service.into(),
            build_id: String::new(),
        })?;
        let power = tools.power(&PowerRequest {
            window: Some(wire_window(window)),
        })?;
        let mut p = Profile::from_rows(&stacks.stacks);
        p.window = Some(window);
        for s in power.services {
            if let (Some(sp), Some(pw)) = (p.services.get_mut(&s.service), s.power) {
                sp.watts = pw.watts;
                sp.fleet_watts = pw.fleet_watts;
                sp.estimated |= pw.estimated;
            }
        }
        Ok(p)
    }

    /// A profile of stack rows alone (no power: watts 0).
    pub fn from_rows(rows: &[StackRow]) -> Profile {
        let mut services: BTreeMap<String, ServiceProfile> = BTreeMap::new();
        for r in rows {
            let sp = services
                .entry(r.service.clone())
                .or_insert_with(|| ServiceProfile {
                    service: r.service.clone(),
                    ..ServiceProfile::default()
                });
            sp.samples += r.samples;
            sp.joules += r.joules_measured + r.joules_estimated;
            sp.estimated |= r.joules_estimated > 0.0;
            sp.stacks.push(Stack::from_row(r));
        }
        for sp in services.values_mut() {
            sp.stacks.sort_by(|a, b| {
                b.samples
                    .cmp(&a.samples)
                    .then_with(|| a.frames.cmp(&b.frames))
            });
        }
        Profile {
            window: None,
            services,
        }
    }
}

/// Where a pattern matched in one service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matched {
    /// Samples of the matching stacks.
    pub samples: u64,
    /// Joules of the matching stacks.
    pub joules: f64,
    /// (culprit function, the frame it called, the frame that matched) -> samples.
    pub culprits: HashMap<(String, String, String), u64>,
    /// Indexes of the matching stacks in the service's stacks (most samples first).
    pub stacks: Vec<usize>,
}

impl Matched {
    /// The culprit with most samples: (function, callee, matched frame, samples).
    pub fn top_culprit(&self) -> Option<(&str, &str, &str, u64)> {
        self.culprits
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|((f, c, m), &n)| (f.as_str(), c.as_str(), m.as_str(), n))
    }
}

/// Frame prefixes of language runtimes and common libraries: a finding names the first frame
/// above the pattern that is none of these (the code that can change), not `std` plumbing.
const LIBRARY_PREFIXES: &[&str] = &[
    "std::",
    "core::",
    "alloc::",
    "hashbrown::",
    "regex::",
    "regex_automata::",
    "regex_syntax::",
    "serde::",
    "serde_json::",
    "tracing::",
    "tracing_core::",
    "tracing_subscriber::",
    "log::",
    "parking_lot",
    "lock_api::",
    "crossbeam",
    "zstd",
    "flate2::",
    "miniz_oxide::",
    "backtrace::",
    "gimli::",
    "addr2line::",
    "anyhow::",
    "__",
    "_IO_",
    "_int_",
    "_dl_",
    "_Unwind_",
    "ZSTD_",
    "std::__",
];

/// C library and runtime entry points that are not the user's code.
const LIBRARY_NAMES: &[&str] = &[
    "malloc",
    "free",
    "cfree",
    "calloc",
    "realloc",
    "memcpy",
    "memmove",
    "memset",
    "write",
    "writev",
    "read",
    "syscall",
    "fwrite",
    "fputs",
    "fprintf",
    "printf",
    "sprintf",
    "snprintf",
    "vfprintf",
    "fflush",
    "new_do_write",
    "regcomp",
    "regexec",
    "deflate",
    "deflate_slow",
    "longest_match",
    "pthread_mutex_lock",
    "pthread_mutex_unlock",
    "pthread_spin_lock",
    "sched_yield",
    "backtrace",
    "_start",
    "main",
    "__libc_start_main",
    "__libc_start_call_main",
    "[unknown]",
];

/// True for frames of the runtime, libraries or the kernel. A trait method `<T as Trait>::f`
/// belongs to its self type `T` (primitives and generics count as library code).
pub fn is_library(frame: &str) -> bool {
    if frame.ends_with("_[k]") || (frame.starts_with('[') && frame.contains('+')) {
        return true;
    }
    if LIBRARY_NAMES.contains(&frame) {
        return true;
    }
    if let Some(rest) = frame.strip_prefix('<') {
        let self_ty = rest.split(" as ").next().unwrap_or(rest);
        return !self_ty.contains("::") || is_library(self_ty.trim_start_matches('&'));
    }
    LIBRARY_PREFIXES.iter().any(|p| frame.starts_with(p))
}

/// The samples of one service's stacks that `matches` (a frame test, outermost frame first)
/// finds, with the culprit of each: the nearest frame above the match that is not library
/// code (or, if none is, the frame right above it).
pub fn match_stacks(sp: &ServiceProfile, matches: impl Fn(&[String]) -> Option<usize>) -> Matched {
    let mut m = Matched::default();
    for (i, s) in sp.stacks.iter().enumerate() {
        let Some(at) = matches(&s.frames) else {
            continue;
        };
        m.samples += s.samples;
        m.joules += s.joules;
        m.stacks.push(i);
        let culprit = (0..at)
            .rev()
            .find(|&j| !is_library(&s.frames[j]))
            .or(at.checked_sub(1));
        let key = match culprit {
            Some(j) => (
                s.frames[j].clone(),
                s.frames[j + 1].clone(),
                s.frames[at].clone(),
            ),
            None => (s.frames[at].clone(), String::new(), s.frames[at].clone()),
        };
        *m.culprits.entry(key).or_default() += s.samples;
    }
    m
}

/// The line of `function` that calls `callee` with most samples, else its hottest line.
pub fn best_line<'l>(
    lines: &'l [SourceLine],
    function: &str,
    callee: &str,
) -> Option<&'l SourceLine> {
    let of = |want_callee: bool| {
        lines
            .iter()
            .filter(|l| l.function == function && (!want_callee || l.callee == callee))
            .max_by(|a, b| a.samples.cmp(&b.samples).then_with(|| b.line.cmp(&a.line)))
    };
    of(true).or_else(|| of(false))
}

/// Probability that the true share exceeds `threshold` given `hits` of `n` samples (normal
/// approximation of the binomial): how sure a finding is that its evidence is not noise.
pub fn confidence(hits: u64, n: u64, threshold: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let p = hits as f64 / n as f64;
    let se = (p * (1.0 - p) / n as f64).sqrt().max(1e-12);
    normal_cdf((p - threshold) / se).clamp(0.0, 0.999)
}

/// Standard normal CDF (Abramowitz and Stegun 7.1.26 for erf; error below 1.5e-7).
fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_frames() {
        assert!(is_library("core::hash::sip::Hasher<S>::write"));
        assert!(is_library(
            "<std::hash::random::DefaultHasher as core::hash::Hasher>::write"
        ));
        assert!(is_library("__memmove_avx_unaligned_erms"));
        assert!(is_library("ksys_write_[k]"));
        assert!(is_library("malloc"));
        assert!(!is_library("myapp::handle_request"));
        assert!(!is_library("<myapp::Record as core::hash::Hash>::hash"));
        assert!(!is_library("write_records"));
    }

    #[test]
    fn confidence_grows_with_evidence() {
        assert!(confidence(50, 100, 0.1) > 0.99);
        assert!(confidence(11, 100, 0.1) < 0.7);
        assert!(confidence(5, 100, 0.1) < 0.1);
        assert_eq!(confidence(0, 0, 0.1), 0.0);
    }
}
