//! Synthetic wire batches for the storage test suite and `cargo xtask bench`: a small builder
//! that fills the string/function/frame/stack/process tables the way an agent does, so tests
//! state what ran ("service a, stack main;work;hash, 5 samples, 2 J") and nothing more.

use std::collections::HashMap;

use wattson_proto::v1::{
    Batch, EnergySource, Frame, FrameKind, Function, Host, IntervalProfile, Process, Sample, Stack,
};

/// Builds one [`Batch`].
#[derive(Debug, Default)]
pub struct BatchBuilder {
    batch: Batch,
    strings: HashMap<String, u32>,
    frames: HashMap<String, u32>,
    stacks: HashMap<Vec<u32>, u32>,
    processes: HashMap<(String, String), u32>,
}

impl BatchBuilder {
    /// A batch of `host` with sequence number `sequence`.
    pub fn new(host: &str, sequence: u64) -> BatchBuilder {
        let mut b = BatchBuilder::default();
        b.batch.host_id = host.into();
        b.batch.sequence = sequence;
        b.batch.strings.push(String::new());
        b.batch.host = Some(Host {
            host_id: host.into(),
            hostname: host.into(),
            cpus: 4,
            packages: 1,
            ..Host::default()
        });
        b
    }

    fn string(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.batch.strings.len() as u32;
        self.batch.strings.push(s.into());
        self.strings.insert(s.into(), i);
        i
    }

    /// A frame `name`, or `name@file:line` for one with a source location (as an agent
    /// sends it from DWARF data).
    fn frame(&mut self, spec: &str) -> u32 {
        if let Some(&i) = self.frames.get(spec) {
            return i;
        }
        let (name, file, line) = match spec.rsplit_once('@').and_then(|(n, at)| {
            let (file, line) = at.rsplit_once(':')?;
            Some((n, file, line.parse::<u32>().ok()?))
        }) {
            Some(located) => located,
            None => (spec, "", 0),
        };
        let (func, kind) = match name.strip_suffix("_[k]") {
            Some(k) => (k, FrameKind::Kernel),
            None => (name, FrameKind::User),
        };
        let name_index = self.string(func);
        let file_index = self.string(file);
        let fi = self.batch.functions.len() as u32;
        self.batch.functions.push(Function {
            name_index,
            file_index,
        });
        let i = self.batch.frames.len() as u32;
        self.batch.frames.push(Frame {
            function_index: fi,
            line,
            kind: kind as i32,
            ..Frame::default()
        });
        self.frames.insert(spec.into(), i);
        i
    }

    /// Index of the stack `folded` (root first, `;`-separated; `_[k]` marks kernel frames;
    /// `name@file:line` gives a frame its source location).
    fn stack(&mut self, folded: &str) -> u32 {
        let mut ids: Vec<u32> = folded.split(';').map(|f| self.frame(f)).collect();
        ids.reverse(); // wire stacks are leaf first
        if let Some(&i) = self.stacks.get(&ids) {
            return i;
        }
        let i = self.batch.stacks.len() as u32;
        self.batch.stacks.push(Stack {
            frame_indices: ids.clone(),
        });
        self.stacks.insert(ids, i);
        i
    }

    fn process(&mut self, service: &str, build_id: &str) -> u32 {
        let k = (service.to_string(), build_id.to_string());
        if let Some(&i) = self.processes.get(&k) {
            return i;
        }
        let service_index = self.string(service);
        let build = self.string(build_id);
        let i = self.batch.processes.len() as u32;
        self.batch.processes.push(Process {
            pid: 1000 + i,
            comm_index: service_index,
            service_index,
            build_id_indices: vec![build],
            ..Process::default()
        });
        self.processes.insert(k, i);
        i
    }

    /// Adds an interval starting at `start` (Unix seconds) lasting `seconds`, with `idle_uj`
    /// of idle energy and the given samples: (service, build id, folded stack, count, µJ).
    /// `estimated` marks it as a `model` source profile.
    pub fn interval(
        mut self,
        start: i64,
        seconds: u64,
        estimated: bool,
        idle_uj: f64,
        samples: &[(&str, &str, &str, u64, f64)],
    ) -> BatchBuilder {
        let mut out = Vec::with_capacity(samples.len());
        let mut attributed = 0.0;
        for &(service, build, folded, count, uj) in samples {
            let stack_index = self.stack(folded);
            let process_index = self.process(service, build);
            attributed += uj;
            out.push(Sample {
                stack_index,
                process_index,
                tid: 1000 + process_index,
                count,
                microjoules: uj,
            });
        }
        let source = if estimated {
            EnergySource::Model
        } else {
            EnergySource::Powercap
        };
        self.batch.profiles.push(IntervalProfile {
            start_unix_nanos: start as u64 * 1_000_000_000,
            duration_nanos: seconds * 1_000_000_000,
            frequency_hz: 19,
            energy_source: source as i32,
            interval_microjoules: attributed + idle_uj,
            idle_microjoules: idle_uj,
            attributed_microjoules: attributed,
            estimated,
            samples: out,
            ..IntervalProfile::default()
        });
        self
    }

    /// The finished batch.
    pub fn build(self) -> Batch {
        self.batch
    }
}
