//! Merged profiles in pprof's `profile.proto` (gzipped), readable by `go tool pprof`,
//! Pyroscope, Parca and speedscope: two sample types, `samples/count` and
//! `energy/microjoules`, one location per distinct function. Only the fields Wattson fills are
//! declared; field numbers follow github.com/google/pprof/proto/profile.proto.

use std::collections::HashMap;
use std::io::Write as _;

use prost::Message;
use wattson_proto::v1::StackRow;

#[derive(Clone, PartialEq, Message)]
struct Profile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    time_nanos: i64,
    #[prost(int64, tag = "10")]
    duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    period_type: Option<ValueType>,
    #[prost(int64, repeated, tag = "13")]
    comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct Location {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(message, repeated, tag = "4")]
    line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
struct Line {
    #[prost(uint64, tag = "1")]
    function_id: u64,
}

#[derive(Clone, PartialEq, Message)]
struct Function {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "2")]
    name: i64,
    #[prost(int64, tag = "3")]
    system_name: i64,
}

#[derive(Default)]
struct Builder {
    profile: Profile,
    strings: HashMap<String, i64>,
    locations: HashMap<String, u64>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    fn location(&mut self, name: &str) -> u64 {
        if let Some(&id) = self.locations.get(name) {
            return id;
        }
        let id = self.profile.location.len() as u64 + 1;
        let n = self.string(name);
        self.profile.function.push(Function {
            id,
            name: n,
            system_name: n,
        });
        self.profile.location.push(Location {
            id,
            line: vec![Line { function_id: id }],
        });
        self.locations.insert(name.to_string(), id);
        id
    }
}

/// Gzipped pprof of `stacks` over `[from, to)` (Unix seconds). With `prefix_service` each stack
/// gets its service as the root frame. A comment records whether energy is estimated.
pub fn encode(
    stacks: &[StackRow],
    from: i64,
    to: i64,
    prefix_service: bool,
) -> std::io::Result<Vec<u8>> {
    let mut b = Builder::default();
    b.string("");
    let st = |b: &mut Builder, t: &str, u: &str| ValueType {
        r#type: b.string(t),
        unit: b.string(u),
    };
    b.profile.sample_type = vec![
        st(&mut b, "samples", "count"),
        st(&mut b, "energy", "microjoules"),
    ];
    b.profile.period_type = Some(st(&mut b, "cpu", "nanoseconds"));
    b.profile.default_sample_type = 1;
    b.profile.time_nanos = from.saturating_mul(1_000_000_000);
    b.profile.duration_nanos = (to - from).max(0).saturating_mul(1_000_000_000);
    let estimated = stacks.iter().any(|s| s.joules_estimated > 0.0);
    let note = if estimated {
        "wattson: energy includes ESTIMATED joules (utilization model)"
    } else {
        "wattson: energy measured (RAPL)"
    };
    let c = b.string(note);
    b.profile.comment.push(c);
    for s in stacks {
        // pprof locations are leaf first; folded stacks are root first.
        let mut ids: Vec<u64> = s.folded.rsplit(';').map(|f| b.location(f)).collect();
        if prefix_service {
            ids.push(b.location(&s.service));
        }
        let uj = ((s.joules_measured + s.joules_estimated) * 1e6).round() as i64;
        b.profile.sample.push(Sample {
            location_id: ids,
            value: vec![s.samples as i64, uj],
        });
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&b.profile.encode_to_vec())?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn round_trips_through_prost() {
        let rows = [StackRow {
            service: "api".into(),
            folded: "main;work;hash".into(),
            samples: 5,
            joules_measured: 0.5,
            joules_estimated: 0.0,
        }];
        let gz = encode(&rows, 60, 120, true).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut raw)
            .unwrap();
        let p = Profile::decode(raw.as_slice()).unwrap();
        assert_eq!(p.sample.len(), 1);
        assert_eq!(p.sample[0].value, vec![5, 500_000]);
        // Leaf first, service last.
        let names: Vec<&str> = p.sample[0]
            .location_id
            .iter()
            .map(|id| {
                let f = &p.function[*id as usize - 1];
                p.string_table[f.name as usize].as_str()
            })
            .collect();
        assert_eq!(names, ["hash", "work", "main", "api"]);
        assert_eq!(p.duration_nanos, 60_000_000_000);
    }
}
