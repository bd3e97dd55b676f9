//! pprof output: `profile.proto` (github.com/google/pprof/proto/profile.proto) encoded with
//! prost messages defined here, then gzipped, as `go tool pprof`, Pyroscope and Parca read it.
//!
//! Sample types: `samples/count` and `cpu/nanoseconds`, plus `energy/microjoules` when energy
//! was attributed. Inlined frames share one Location with several Lines (innermost first), as
//! pprof expects. User locations carry their file offset as address with mappings based at 0,
//! so a symbolizer holding the binary (matched by build id) can resolve them remotely.
//! Labels: `pid`, `tid`, `cpu` (numbers), `comm` and `service` (strings).

use std::{collections::HashMap, io::Write as _};

use flate2::{Compression, write::GzEncoder};
use prost::Message as _;

use crate::profile::{Frame, FrameKind, Profile, Weight};

/// `perftools.profiles.Profile`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PprofProfile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

/// `ValueType`: type and unit, as string table indexes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// `Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

/// `Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

/// `Mapping`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

/// `Location`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

/// `Line`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
    #[prost(int64, tag = "3")]
    pub column: i64,
}

/// `Function`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Self::default();
        s.get(""); // index 0 must be the empty string
        s
    }

    fn get(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

/// Builds the pprof message for `profile`.
pub fn to_pprof(profile: &Profile) -> PprofProfile {
    let mut strings = Strings::new();
    let mut out = PprofProfile::default();
    let value_type = |s: &mut Strings, t: &str, u: &str| ValueType {
        r#type: s.get(t),
        unit: s.get(u),
    };
    out.sample_type = vec![
        value_type(&mut strings, "samples", "count"),
        value_type(&mut strings, "cpu", "nanoseconds"),
    ];
    let energy = profile.energy.is_some();
    if energy {
        out.sample_type
            .push(value_type(&mut strings, "energy", "microjoules"));
    }
    out.period_type = Some(value_type(&mut strings, "cpu", "nanoseconds"));
    out.period = profile.period_nanos() as i64;
    out.time_nanos = profile.start_unix_nanos as i64;
    out.duration_nanos = profile.duration_nanos as i64;
    out.default_sample_type = if energy { 2 } else { 1 };
    let comment = format!(
        "wattson-agent: {} at {} Hz on {}, {} samples",
        profile.clock_event, profile.frequency, profile.hostname, profile.stats.samples
    );
    out.comment.push(strings.get(&comment));
    if let Some(e) = &profile.energy {
        let label = if e.estimated { " (estimated)" } else { "" };
        out.comment
            .push(strings.get(&format!("energy source: {}{label}", e.source)));
    }

    let mut mappings: HashMap<(String, Option<String>), u64> = HashMap::new();
    let mut functions: HashMap<(String, Option<String>), u64> = HashMap::new();
    let mut locations: HashMap<Vec<u32>, u64> = HashMap::new();

    for sample in &profile.samples {
        let stack = &profile.stacks[sample.stack as usize].frames;
        let mut location_ids = Vec::new();
        let mut group: Vec<u32> = Vec::new();
        for &fid in stack {
            group.push(fid);
            let frame = &profile.frames[fid as usize];
            if frame.inlined {
                continue; // inlined frames join the next (containing) frame's location
            }
            let id = match locations.get(&group) {
                Some(&id) => id,
                None => {
                    let frames: Vec<&Frame> =
                        group.iter().map(|&f| &profile.frames[f as usize]).collect();
                    let id = out.location.len() as u64 + 1;
                    let location = location(
                        id,
                        &frames,
                        &mut strings,
                        &mut mappings,
                        &mut functions,
                        &mut out,
                    );
                    out.location.push(location);
                    locations.insert(group.clone(), id);
                    id
                }
            };
            location_ids.push(id);
            group.clear();
        }
        let mut value = vec![
            profile.value(sample, Weight::Samples) as i64,
            profile.value(sample, Weight::CpuNanos) as i64,
        ];
        if energy {
            value.push(profile.value(sample, Weight::Microjoules) as i64);
        }
        let num = |s: &mut Strings, k: &str, n: u32| Label {
            key: s.get(k),
            num: i64::from(n),
            ..Label::default()
        };
        let mut label = vec![
            num(&mut strings, "pid", sample.tgid),
            num(&mut strings, "tid", sample.pid),
            num(&mut strings, "cpu", sample.cpu),
        ];
        if let Some(p) = profile.processes.get(&sample.tgid) {
            for (k, v) in [("comm", &p.comm), ("service", &p.service)] {
                label.push(Label {
                    key: strings.get(k),
                    str: strings.get(v),
                    ..Label::default()
                });
            }
        }
        out.sample.push(Sample {
            location_id: location_ids,
            value,
            label,
        });
    }
    out.string_table = strings.table;
    out
}

/// One location for a non-inlined frame and the inlined frames before it (innermost first).
fn location(
    id: u64,
    frames: &[&Frame],
    strings: &mut Strings,
    mappings: &mut HashMap<(String, Option<String>), u64>,
    functions: &mut HashMap<(String, Option<String>), u64>,
    out: &mut PprofProfile,
) -> Location {
    let outer = frames[frames.len() - 1];
    let key = (outer.module.clone(), outer.build_id.clone());
    let mapping_id = *mappings.entry(key).or_insert_with(|| {
        let id = out.mapping.len() as u64 + 1;
        out.mapping.push(Mapping {
            id,
            memory_start: 0,
            memory_limit: u64::MAX,
            file_offset: 0,
            filename: strings.get(&outer.module),
            build_id: strings.get(outer.build_id.as_deref().unwrap_or("")),
            has_functions: outer.function.is_some(),
            has_filenames: outer.file.is_some(),
            has_line_numbers: outer.line > 0,
            has_inline_frames: frames.len() > 1,
        });
        id
    });
    let address = match outer.kind {
        FrameKind::Kernel => outer.address,
        FrameKind::User => outer.file_offset.unwrap_or(outer.address),
    };
    let line = frames
        .iter()
        .map(|f| {
            let name = f.name();
            let function_id = *functions
                .entry((name.clone(), f.file.clone()))
                .or_insert_with(|| {
                    let id = out.function.len() as u64 + 1;
                    let name = strings.get(&name);
                    out.function.push(Function {
                        id,
                        name,
                        system_name: name,
                        filename: strings.get(f.file.as_deref().unwrap_or("")),
                        start_line: 0,
                    });
                    id
                });
            Line {
                function_id,
                line: i64::from(f.line),
                column: 0,
            }
        })
        .collect();
    Location {
        id,
        mapping_id,
        address,
        line,
        is_folded: false,
    }
}

/// Encodes and gzips the pprof message for `profile`.
pub fn encode_gzip(profile: &Profile) -> std::io::Result<Vec<u8>> {
    let bytes = to_pprof(profile).encode_to_vec();
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&bytes)?;
    gz.finish()
}
