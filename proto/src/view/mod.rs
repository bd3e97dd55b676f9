//! A [`Batch`] read in place: [`BatchView`] borrows its strings from the bytes it was parsed
//! from and keeps every nested list (stack frames, samples, energy domains, build ids) in one
//! flat vector per kind, so reading a batch is a few allocations however many strings and
//! stacks it holds. The collector validates and rolls up views; an owned [`Batch`] (tests,
//! the journal of earlier releases) is read through [`BatchView::of`], so both go through
//! one code path.
//!
//! [`BatchView::parse`] accepts exactly what `prost` accepts for `wattson.v1.Batch` (proto3
//! rules: unknown fields skipped, packed or unpacked repeated scalars, the last scalar wins,
//! a repeated singular message merges) and yields the same values; `tests/view.rs` checks that
//! against prost on random and corrupted batches.

mod parse;

use crate::v1::{AgentLosses, Batch, EnergyDomain, Frame, Function, Sample};

pub use parse::ParseError;

/// Most entries [`BatchView::parse_limited`] reads into each list, counted over the whole
/// batch (all profiles' samples together, all stacks' frames together). Checked as each entry
/// is read, so a few KB of zstd frame that decompresses to millions of empty submessages fails
/// at the first one past the limit instead of allocating a gigabyte of parsed structs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CountLimits {
    /// Entries of `strings`.
    pub strings: usize,
    /// Entries of `functions`.
    pub functions: usize,
    /// Entries of `frames`.
    pub frames: usize,
    /// Entries of `stacks`.
    pub stacks: usize,
    /// Frame indexes over all stacks.
    pub stack_frames: usize,
    /// Entries of `processes`.
    pub processes: usize,
    /// Build id indexes over all processes.
    pub build_ids: usize,
    /// Entries of `profiles`.
    pub profiles: usize,
    /// Energy domains over all profiles.
    pub domains: usize,
    /// Sample rows over all profiles.
    pub samples: usize,
}

impl CountLimits {
    /// No limit: what prost reads.
    pub const UNLIMITED: CountLimits = CountLimits {
        strings: usize::MAX,
        functions: usize::MAX,
        frames: usize::MAX,
        stacks: usize::MAX,
        stack_frames: usize::MAX,
        processes: usize::MAX,
        build_ids: usize::MAX,
        profiles: usize::MAX,
        domains: usize::MAX,
        samples: usize::MAX,
    };
}

/// The payload of an `IngestRequest`, undecoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBatch {
    /// An encoded `Batch` (field `batch`).
    Encoded(bytes::Bytes),
    /// A zstd frame of an encoded `Batch` (field `batch_zstd`); see [`crate::compressed`].
    Zstd(bytes::Bytes),
}

/// A half-open range of a flat vector of a [`BatchView`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    /// First element.
    pub start: u32,
    /// One past the last element.
    pub end: u32,
}

impl Span {
    /// Elements in the span.
    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }

    /// True when the span holds nothing.
    pub fn is_empty(self) -> bool {
        self.start == self.end
    }

    fn get<T>(self, v: &[T]) -> &[T] {
        &v[self.start as usize..self.end as usize]
    }
}

/// `wattson.v1.Host`, borrowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostView<'a> {
    pub host_id: &'a str,
    pub hostname: &'a str,
    pub kernel_release: &'a str,
    pub cpu_model: &'a str,
    pub cpus: u32,
    pub packages: u32,
    pub agent_version: &'a str,
}

/// `wattson.v1.Process`; its build ids are [`BatchView::build_ids`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessView {
    pub pid: u32,
    pub comm_index: u32,
    pub exe_index: u32,
    pub cmdline_index: u32,
    pub service_index: u32,
    pub container_index: u32,
    pub unit_index: u32,
    /// Into [`BatchView::process_build_ids`].
    pub build_id_indices: Span,
}

/// `wattson.v1.IntervalProfile`; its domains and samples are [`BatchView::domains`] and
/// [`BatchView::samples`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProfileView {
    pub start_unix_nanos: u64,
    pub duration_nanos: u64,
    pub frequency_hz: u32,
    pub clock_event: i32,
    pub energy_source: i32,
    pub energy_model_index: u32,
    /// Into [`BatchView::all_domains`].
    pub domains: Span,
    pub interval_microjoules: f64,
    pub idle_microjoules: f64,
    pub attributed_microjoules: f64,
    pub estimated: bool,
    pub dropped_samples: u64,
    /// Into [`BatchView::all_samples`].
    pub samples: Span,
}

/// `wattson.v1.Batch`, borrowed from the bytes it was parsed from (or from an owned batch).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchView<'a> {
    pub host_id: &'a str,
    pub sequence: u64,
    pub host: Option<HostView<'a>>,
    pub created_unix_nanos: u64,
    pub strings: Vec<&'a str>,
    pub functions: Vec<Function>,
    pub frames: Vec<Frame>,
    /// Per stack, its frame indexes (leaf first) in [`BatchView::stack_frames`].
    pub stacks: Vec<Span>,
    pub stack_frames: Vec<u32>,
    pub processes: Vec<ProcessView>,
    pub process_build_ids: Vec<u32>,
    pub profiles: Vec<ProfileView>,
    pub all_domains: Vec<EnergyDomain>,
    pub all_samples: Vec<Sample>,
    pub losses: Option<AgentLosses>,
    pub agent_instance: &'a str,
}

impl<'a> BatchView<'a> {
    /// Reads an encoded `wattson.v1.Batch` in place.
    pub fn parse(bytes: &'a [u8]) -> Result<BatchView<'a>, ParseError> {
        parse::batch(bytes, &CountLimits::UNLIMITED)
    }

    /// [`BatchView::parse`], failing at the first entry of a list past `limits`.
    pub fn parse_limited(
        bytes: &'a [u8],
        limits: &CountLimits,
    ) -> Result<BatchView<'a>, ParseError> {
        parse::batch(bytes, limits)
    }

    /// The payload of an encoded `wattson.v1.IngestRequest`, whichever of `batch` and
    /// `batch_zstd` came last (a oneof): slices of `request`, except that a `batch` that
    /// repeats is returned joined (protobuf merges it); `None` when neither is set.
    pub fn request_batch(request: &bytes::Bytes) -> Result<Option<RequestBatch>, ParseError> {
        parse::request_batch(request)
    }

    /// Frame indexes of stack `i` (leaf first); panics if `i` is out of range.
    pub fn stack(&self, i: usize) -> &[u32] {
        self.stacks[i].get(&self.stack_frames)
    }

    /// Build id string indexes of `p`.
    pub fn build_ids(&self, p: &ProcessView) -> &[u32] {
        p.build_id_indices.get(&self.process_build_ids)
    }

    /// Energy domains of `p`.
    pub fn domains(&self, p: &ProfileView) -> &[EnergyDomain] {
        p.domains.get(&self.all_domains)
    }

    /// Samples of `p`.
    pub fn samples(&self, p: &ProfileView) -> &[Sample] {
        p.samples.get(&self.all_samples)
    }

    /// A view of an owned batch: copies its scalar tables, borrows its strings.
    pub fn of(b: &'a Batch) -> BatchView<'a> {
        let mut v = BatchView {
            host_id: &b.host_id,
            sequence: b.sequence,
            host: b.host.as_ref().map(|h| HostView {
                host_id: &h.host_id,
                hostname: &h.hostname,
                kernel_release: &h.kernel_release,
                cpu_model: &h.cpu_model,
                cpus: h.cpus,
                packages: h.packages,
                agent_version: &h.agent_version,
            }),
            created_unix_nanos: b.created_unix_nanos,
            strings: b.strings.iter().map(String::as_str).collect(),
            functions: b.functions.clone(),
            frames: b.frames.clone(),
            losses: b.losses,
            agent_instance: &b.agent_instance,
            ..BatchView::default()
        };
        for s in &b.stacks {
            let span = push_all(&mut v.stack_frames, &s.frame_indices);
            v.stacks.push(span);
        }
        for p in &b.processes {
            let build_id_indices = push_all(&mut v.process_build_ids, &p.build_id_indices);
            v.processes.push(ProcessView {
                pid: p.pid,
                comm_index: p.comm_index,
                exe_index: p.exe_index,
                cmdline_index: p.cmdline_index,
                service_index: p.service_index,
                container_index: p.container_index,
                unit_index: p.unit_index,
                build_id_indices,
            });
        }
        for p in &b.profiles {
            let domains = push_all(&mut v.all_domains, &p.domains);
            let samples = push_all(&mut v.all_samples, &p.samples);
            v.profiles.push(ProfileView {
                start_unix_nanos: p.start_unix_nanos,
                duration_nanos: p.duration_nanos,
                frequency_hz: p.frequency_hz,
                clock_event: p.clock_event,
                energy_source: p.energy_source,
                energy_model_index: p.energy_model_index,
                domains,
                interval_microjoules: p.interval_microjoules,
                idle_microjoules: p.idle_microjoules,
                attributed_microjoules: p.attributed_microjoules,
                estimated: p.estimated,
                dropped_samples: p.dropped_samples,
                samples,
            });
        }
        v
    }
}

/// Appends `items` to `flat`; their span in it.
fn push_all<T: Copy>(flat: &mut Vec<T>, items: &[T]) -> Span {
    let start = flat.len() as u32;
    flat.extend_from_slice(items);
    Span {
        start,
        end: flat.len() as u32,
    }
}
