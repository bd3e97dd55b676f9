//! Hostile-input tests of ingest validation: malformed and adversarial batches go through the
//! same decode + validate path the server uses, and must produce a precise error naming the
//! field, never a panic. Property tests mutate a valid synthetic batch at random; the named
//! cases pin the exact messages agents and operators will see.

use proptest::prelude::*;
use prost::Message as _;
use wattson_collector::validate::{Invalid, Limits, validate_at, validate_view_at};
use wattson_proto::synthetic::{self, Shape};
use wattson_proto::v1::Batch;

const NOW: u64 = 1_780_000_000 * 1_000_000_000;

fn valid() -> Batch {
    let shape = Shape {
        profiles: 3,
        functions: 60,
        stacks: 40,
        depth: 12,
        processes: 6,
        samples_per_profile: 50,
        ..Shape::default()
    };
    synthetic::batch("host-a", 7, NOW - 60_000_000_000, &shape, 42)
}

/// What the server does with the bytes of a request: read them in place, then validate.
fn decode_and_validate(bytes: &[u8]) -> Result<u64, String> {
    let batch = wattson_collector::validate::parse(bytes, &Limits::default())
        .map_err(|e| format!("malformed message: {e}"))?;
    validate_view_at(&batch, &Limits::default(), NOW)
        .map(|s| s.samples)
        .map_err(|Invalid(m)| m)
}

fn err(batch: &Batch) -> String {
    validate_at(batch, &Limits::default(), NOW)
        .expect_err("batch should be rejected")
        .0
}

#[test]
fn valid_synthetic_batch_passes_and_counts_samples() {
    let b = valid();
    let summary = validate_at(&b, &Limits::default(), NOW).unwrap();
    assert_eq!(summary.profiles, 3);
    assert_eq!(summary.samples, synthetic::sample_count(&b));
}

#[test]
fn agent_instance_is_short_and_printable() {
    let mut b = valid();
    b.agent_instance = "0123456789abcdef0123456789abcdef".into();
    assert!(validate_at(&b, &Limits::default(), NOW).is_ok());
    b.agent_instance = "a".repeat(65);
    assert_eq!(err(&b), "agent_instance is 65 bytes (limit 64)");
    b.agent_instance = "ab\tcd".into();
    assert_eq!(
        err(&b),
        "agent_instance contains '\\t' (expected printable ASCII, e.g. hex)"
    );
}

#[test]
fn stack_index_out_of_range_names_the_sample() {
    let mut b = valid();
    b.profiles[2].samples[7].stack_index = 912;
    assert_eq!(
        err(&b),
        "profiles[2].samples[7].stack_index 912 out of range (stacks: 40)"
    );
}

#[test]
fn frame_and_string_indexes_are_checked() {
    let mut b = valid();
    b.stacks[5].frame_indices[3] = 60;
    assert_eq!(
        err(&b),
        "stacks[5].frame_indices[3] 60 out of range (frames: 60)"
    );
    let mut b = valid();
    let n = b.strings.len();
    b.processes[1].service_index = n as u32;
    assert_eq!(
        err(&b),
        format!("processes[1].service_index {n} out of range (strings: {n})")
    );
}

#[test]
fn nan_negative_and_infinite_energy_are_rejected() {
    let mut b = valid();
    b.profiles[0].samples[3].microjoules = f64::NAN;
    assert_eq!(
        err(&b),
        "profiles[0].samples[3].microjoules is NaN (energy must be finite)"
    );
    let mut b = valid();
    b.profiles[1].idle_microjoules = -1.0;
    assert_eq!(
        err(&b),
        "profiles[1].idle_microjoules is -1 (energy must not be negative)"
    );
    let mut b = valid();
    b.profiles[0].domains[0].microjoules = f64::INFINITY;
    assert_eq!(
        err(&b),
        "profiles[0].domains[0].microjoules is inf (energy must be finite)"
    );
}

#[test]
fn huge_sample_counts_are_rejected() {
    let mut b = valid();
    b.profiles[0].samples[0].count = u64::MAX;
    let m = err(&b);
    assert!(
        m.starts_with("profiles[0].samples count ") && m.contains("exceeds what 8 CPUs at 19 Hz"),
        "{m}"
    );
}

#[test]
fn deep_stacks_are_rejected() {
    let mut b = valid();
    b.stacks[0].frame_indices = vec![0; 5000];
    assert_eq!(err(&b), "stacks[0] has 5000 frames (depth limit 1024)");
}

#[test]
fn bad_timestamps_and_identity_are_rejected() {
    let mut b = valid();
    b.profiles[1].start_unix_nanos = 5;
    assert!(err(&b).starts_with("profiles[1].start_unix_nanos 5 is before 2000-01-01"));
    let mut b = valid();
    b.profiles[0].start_unix_nanos = NOW + 3 * 86_400 * 1_000_000_000;
    assert!(err(&b).contains("more than a day in the future"));
    let mut b = valid();
    b.profiles[0].duration_nanos = 0;
    assert!(err(&b).starts_with("profiles[0].duration_nanos 0 is outside"));
    let mut b = valid();
    b.host_id.clear();
    assert!(err(&b).starts_with("host_id is empty"));
    let mut b = valid();
    b.sequence = 0;
    assert!(err(&b).starts_with("sequence 0"));
}

#[test]
fn invalid_utf8_fails_decoding_with_the_field_named() {
    let mut bytes = valid().encode_to_vec();
    // Find the encoding of a known string and corrupt it into invalid UTF-8.
    let needle = b"worker3";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    bytes[at] = 0xff;
    let m = decode_and_validate(&bytes).unwrap_err();
    assert!(m.contains("Batch.strings") && m.contains("UTF-8"), "{m}");
}

#[test]
fn oversized_tables_are_rejected_by_count() {
    let mut b = valid();
    b.strings.extend((0..10).map(|i| "x".repeat(70_000 + i)));
    let m = err(&b);
    assert!(m.contains("bytes (limit 65536)"), "{m}");
    let mut limits = Limits::default();
    limits.max_profiles = 2;
    let m = validate_at(&valid(), &limits, NOW).unwrap_err().0;
    assert_eq!(m, "profiles has 3 entries (limit 2)");
}

/// The batch of issue 20: one 64 KiB function name and 1024 stacks of depth 1..=1024 all made
/// of it; ~600 KB encoded, it folds to 34 GB of stack strings in the roll-up.
fn folds_to_gigabytes() -> Batch {
    let mut b = valid();
    b.strings.push("f".repeat(64 << 10));
    b.functions[0].name_index = b.strings.len() as u32 - 1;
    b.frames[0].function_index = 0;
    b.stacks = (1..=1024)
        .map(|depth| wattson_proto::v1::Stack {
            frame_indices: vec![0; depth],
        })
        .collect();
    for (i, s) in b.profiles[0].samples.iter_mut().enumerate() {
        s.stack_index = (i * 20) as u32;
    }
    b
}

#[test]
fn a_batch_folding_to_gigabytes_is_refused_with_the_limit_named() {
    let b = folds_to_gigabytes();
    let bytes = b.encode_to_vec();
    assert!(bytes.len() < 700 << 10, "{} bytes", bytes.len());
    let m = decode_and_validate(&bytes).unwrap_err();
    assert!(
        m.starts_with("batch expands to ") && m.contains("limit 268435456)"),
        "{m}"
    );
    // 1024 x (the name, `_[k]` of a kernel frame, `;`, a 4-byte id).
    assert!(
        m.contains("stacks[1023], folds to 67118080 bytes (1024 frames)"),
        "{m}"
    );
    // Replay reads journaled batches without validation: the roll-up refuses it itself.
    let e = wattson_collector::store::Prepared::from_batch(&b)
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch expands to"), "{e}");
}

#[test]
fn many_frames_of_one_long_name_cannot_wrap_the_rollup_offsets() {
    // 65,536 frames naming one 64 KiB function: 4 GiB of names, past u32 offsets.
    let mut b = valid();
    b.strings.push("g".repeat(64 << 10));
    let name_index = b.strings.len() as u32 - 1;
    b.functions.push(wattson_proto::v1::Function {
        name_index,
        file_index: 0,
    });
    let function_index = b.functions.len() as u32 - 1;
    let first = b.frames.len() as u32;
    b.frames
        .extend((0..65_536).map(|_| wattson_proto::v1::Frame {
            function_index,
            ..Default::default()
        }));
    b.stacks = (0..64)
        .map(|s| wattson_proto::v1::Stack {
            frame_indices: (first + s * 1024..first + (s + 1) * 1024).collect(),
        })
        .collect();
    for s in b.profiles.iter_mut().flat_map(|p| p.samples.iter_mut()) {
        s.stack_index %= 64;
    }
    let m = err(&b);
    assert!(m.starts_with("batch expands to "), "{m}");
    // A legitimate batch is far below the limit.
    let small = valid();
    let mut limits = Limits::default();
    limits.max_expanded_bytes = 1 << 20;
    validate_at(&small, &limits, NOW).unwrap();
}

#[test]
fn absurd_cpus_and_dropped_samples_are_refused() {
    // Both flowed unchecked into sums that overflowed later roll-ups (issue 20).
    let mut b = valid();
    b.host.as_mut().unwrap().cpus = u32::MAX;
    assert_eq!(err(&b), "host.cpus 4294967295 is over the limit of 16384");
    let mut b = valid();
    b.host.as_mut().unwrap().packages = 1 << 20;
    assert_eq!(err(&b), "host.packages 1048576 is over the limit of 16384");
    let mut b = valid();
    b.profiles[1].dropped_samples = u64::MAX;
    let m = err(&b);
    assert!(
        m.starts_with("profiles[1].dropped_samples 18446744073709551615 exceeds what 8 CPUs"),
        "{m}"
    );
    // What the CPUs can deliver is fine.
    let mut b = valid();
    b.profiles[1].dropped_samples = 100;
    validate_at(&b, &Limits::default(), NOW).unwrap();
}

/// Issue 20: a few KB of zstd frame decompressing to millions of empty sample rows (2 bytes of
/// message, 32 bytes parsed each) was parsed whole (>1 GiB for 64 MiB) before any count limit
/// ran. The limit now applies while parsing, at the first row past it.
#[test]
fn empty_submessages_are_counted_while_parsing() {
    let mut bytes = valid().encode_to_vec();
    let rows = 3 << 20;
    let profile = [0x6a, 0x00].repeat(rows);
    bytes.push(0x52); // Batch.profiles, length-delimited
    let mut n = profile.len();
    while n >= 0x80 {
        bytes.push(n as u8 | 0x80);
        n >>= 7;
    }
    bytes.push(n as u8);
    bytes.extend_from_slice(&profile);
    let frame = zstd::bulk::compress(&bytes, 3).unwrap();
    assert!(frame.len() < 16 << 10, "{} bytes of zstd", frame.len());
    let raw = wattson_proto::compressed::Decompressor::new()
        .unwrap()
        .batch(&frame, 64 << 20)
        .unwrap();
    // (Not `unwrap_err`: its message would print three million rows.)
    let Err(e) = wattson_collector::validate::parse(&raw, &Limits::default()) else {
        panic!("3 Mi empty sample rows parsed whole");
    };
    // valid() has 150 rows in profiles 0..=2; the limit is 2,097,152 rows per batch.
    assert_eq!(e.path, "Batch.profiles[3].samples[2097002]");
    assert!(
        e.why.contains("more than 2097152 of these in the batch"),
        "{e}"
    );
    assert!(e.over_limit);
    // The owned-batch path holds the same total.
    let mut b = valid();
    let mut limits = Limits::default();
    limits.max_samples_per_batch = 100;
    assert_eq!(
        validate_at(&b, &limits, NOW).unwrap_err().0,
        "profiles' samples has 150 entries (limit 100)"
    );
    b.profiles.truncate(1);
    validate_at(&b, &limits, NOW).unwrap();
}

/// A random hostile edit of a valid batch, described for the failure message.
#[derive(Debug, Clone)]
enum Edit {
    StackIndex(usize, usize, u32),
    ProcessIndex(usize, usize, u32),
    FrameIndex(usize, usize, u32),
    FunctionIndex(usize, u32),
    StringIndex(usize, u32),
    Energy(usize, usize, f64),
    Count(usize, usize, u64),
    Depth(usize, usize),
    Start(usize, u64),
    Frequency(usize, u32),
    Kind(usize, i32),
}

fn edit() -> impl Strategy<Value = Edit> {
    let energy = prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.5),
        Just(1e300),
        0.0f64..1e20,
    ];
    prop_oneof![
        (0..5usize, 0..60usize, any::<u32>()).prop_map(|(p, s, v)| Edit::StackIndex(p, s, v)),
        (0..5usize, 0..60usize, any::<u32>()).prop_map(|(p, s, v)| Edit::ProcessIndex(p, s, v)),
        (0..50usize, 0..20usize, any::<u32>()).prop_map(|(s, f, v)| Edit::FrameIndex(s, f, v)),
        (0..70usize, any::<u32>()).prop_map(|(f, v)| Edit::FunctionIndex(f, v)),
        (0..10usize, any::<u32>()).prop_map(|(p, v)| Edit::StringIndex(p, v)),
        (0..5usize, 0..60usize, energy).prop_map(|(p, s, v)| Edit::Energy(p, s, v)),
        (0..5usize, 0..60usize, any::<u64>()).prop_map(|(p, s, v)| Edit::Count(p, s, v)),
        (0..50usize, 0..20_000usize).prop_map(|(s, d)| Edit::Depth(s, d)),
        (0..5usize, any::<u64>()).prop_map(|(p, v)| Edit::Start(p, v)),
        (0..5usize, any::<u32>()).prop_map(|(p, v)| Edit::Frequency(p, v)),
        (0..5usize, any::<i32>()).prop_map(|(f, v)| Edit::Kind(f, v)),
    ]
}

/// Applies `e`; returns the field path the error must name if the edit made the batch invalid
/// (None when the edit hit nothing or happened to stay valid).
fn apply(b: &mut Batch, e: &Edit) -> Option<String> {
    match *e {
        Edit::StackIndex(p, s, v) => {
            let n = b.stacks.len();
            let sample = b.profiles.get_mut(p)?.samples.get_mut(s)?;
            sample.stack_index = v;
            (v as usize >= n).then(|| format!("profiles[{p}].samples[{s}].stack_index {v}"))
        }
        Edit::ProcessIndex(p, s, v) => {
            let n = b.processes.len();
            let sample = b.profiles.get_mut(p)?.samples.get_mut(s)?;
            sample.process_index = v;
            (v as usize >= n).then(|| format!("profiles[{p}].samples[{s}].process_index {v}"))
        }
        Edit::FrameIndex(s, f, v) => {
            let n = b.frames.len();
            *b.stacks.get_mut(s)?.frame_indices.get_mut(f)? = v;
            (v as usize >= n).then(|| format!("stacks[{s}].frame_indices[{f}] {v}"))
        }
        Edit::FunctionIndex(f, v) => {
            let n = b.functions.len();
            b.frames.get_mut(f)?.function_index = v;
            (v as usize >= n).then(|| format!("frames[{f}].function_index {v}"))
        }
        Edit::StringIndex(p, v) => {
            let n = b.strings.len();
            b.processes.get_mut(p)?.exe_index = v;
            (v as usize >= n).then(|| format!("processes[{p}].exe_index {v}"))
        }
        Edit::Energy(p, s, v) => {
            let profile = b.profiles.get_mut(p)?;
            profile.samples.get_mut(s)?.microjoules = v;
            if !v.is_finite() || !(0.0..=1e15).contains(&v) {
                return Some(format!("profiles[{p}].samples[{s}].microjoules"));
            }
            let total: f64 = profile.samples.iter().map(|s| s.microjoules).sum();
            let a = profile.attributed_microjoules;
            let slack = 1.0 + profile.interval_microjoules * 1e-6 + profile.samples.len() as f64;
            (total > a + slack).then(|| format!("profiles[{p}].samples carry"))
        }
        Edit::Count(p, s, v) => {
            let profile = b.profiles.get_mut(p)?;
            profile.samples.get_mut(s)?.count = v;
            // 8 CPUs x 19 Hz x 10 s, twice over for timer slack.
            let total: u128 = profile.samples.iter().map(|s| u128::from(s.count)).sum();
            if v == 0 {
                return Some(format!("profiles[{p}].samples[{s}].count is 0"));
            }
            (total > 2 * 8 * 19 * 10).then(|| format!("profiles[{p}].samples count {total}"))
        }
        Edit::Depth(s, d) => {
            b.stacks.get_mut(s)?.frame_indices = vec![1; d];
            (d > 1024).then(|| format!("stacks[{s}] has {d} frames"))
        }
        Edit::Start(p, v) => {
            b.profiles.get_mut(p)?.start_unix_nanos = v;
            let day = 86_400 * 1_000_000_000;
            let bad =
                v < 946_684_800 * 1_000_000_000 || v.saturating_add(10_000_000_000) > NOW + day;
            bad.then(|| format!("profiles[{p}]"))
        }
        Edit::Frequency(p, v) => {
            b.profiles.get_mut(p)?.frequency_hz = v;
            // Lower frequencies can make the existing counts impossible; any profiles[p] error.
            (v != 19).then(|| format!("profiles[{p}]"))
        }
        Edit::Kind(f, v) => {
            b.frames.get_mut(f)?.kind = v;
            (!(0..=2).contains(&v)).then(|| format!("frames[{f}].kind {v}"))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Each single hostile edit is either harmless or reported at the field it touched.
    #[test]
    fn hostile_edit_is_named(e in edit()) {
        let mut b = valid();
        let expected = apply(&mut b, &e);
        let result = validate_at(&b, &Limits::default(), NOW);
        match (expected, result) {
            (Some(field), Err(Invalid(m))) => prop_assert!(m.contains(&field), "edit {e:?}: {m}"),
            (Some(field), Ok(_)) if field.starts_with("profiles[") && matches!(e, Edit::Frequency(..)) => {}
            (Some(field), Ok(_)) => prop_assert!(false, "edit {e:?} accepted, expected error at {field}"),
            (None, Err(Invalid(m))) => prop_assert!(false, "harmless edit {e:?} rejected: {m}"),
            (None, Ok(_)) => {}
        }
    }

    /// Random byte corruption of an encoded batch: decode + validate never panics, and a
    /// failure is a non-empty message.
    #[test]
    fn corrupted_bytes_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = valid().encode_to_vec();
        for (at, v) in &flips {
            let i = at.index(bytes.len());
            bytes[i] = *v;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Err(m) = decode_and_validate(&bytes) {
            prop_assert!(!m.is_empty());
        }
    }

    /// Arbitrary bytes (not derived from a valid batch) never panic either.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = decode_and_validate(&bytes);
    }
}
