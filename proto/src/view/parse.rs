//! The protobuf wire reader behind [`super::BatchView::parse`] and
//! [`super::BatchView::request_batch`]. It owns the wire rules of `wattson.v1.Batch` as prost
//! 0.14 applies them (varints, keys, skipping unknown fields and groups under prost's recursion
//! limit, packed or unpacked repeated scalars, the last scalar winning, a repeated singular
//! message merging) and the field paths of [`ParseError`]. Each submessage is read completely
//! before the next, so its nested lists land contiguously in the view's flat vectors; nothing
//! is allocated per element.

use std::fmt;

use bytes::{Bytes, BytesMut};

use super::{BatchView, CountLimits, HostView, ProcessView, ProfileView, RequestBatch, Span};
use crate::v1::{AgentLosses, EnergyDomain, Frame, Function, Sample};

/// Why bytes are not a `wattson.v1` message, naming the field the reader stopped at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {why}")]
pub struct ParseError {
    /// Where, e.g. `Batch.profiles[2].samples[7].count`; an unknown field is `#` and its
    /// number, e.g. `Batch.host.#42`.
    pub path: String,
    /// What is wrong, e.g. `truncated input`.
    pub why: String,
    /// A list passed its [`CountLimits`] entry: the batch is too large, not malformed.
    pub over_limit: bool,
}

/// What went wrong, before the path is known (one byte, so results stay small).
#[derive(Debug, Clone, Copy)]
enum Why {
    Truncated,
    Varint,
    KeyOverflow,
    FieldZero,
    InvalidWireType(u8),
    WrongWireType(u8),
    EndGroup,
    RecursionLimit,
    Utf8,
    TooMany,
    /// A list passed its [`CountLimits`] entry (the limit).
    Limit(usize),
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Truncated => f.write_str("truncated input"),
            Why::Varint => f.write_str("invalid varint (over 10 bytes, or over 64 bits)"),
            Why::KeyOverflow => f.write_str("invalid key (over 32 bits)"),
            Why::FieldZero => f.write_str("invalid field number 0"),
            Why::InvalidWireType(w) => write!(f, "invalid wire type {w}"),
            Why::WrongWireType(w) => write!(f, "unexpected wire type {w}"),
            Why::EndGroup => f.write_str("unexpected end-group tag"),
            Why::RecursionLimit => f.write_str("recursion limit reached (groups nested too deep)"),
            Why::Utf8 => f.write_str("invalid string value: data is not UTF-8 encoded"),
            Why::TooMany => f.write_str("more than u32::MAX elements"),
            Why::Limit(max) => write!(
                f,
                "more than {max} of these in the batch (the collector's limit; split the batch)"
            ),
        }
    }
}

/// A failure on its way out: the path so far is built right to left as it unwinds. Boxed so
/// the hot `Result`s stay two words.
struct Fail(Box<(String, Why)>);

impl From<Why> for Fail {
    #[cold]
    fn from(why: Why) -> Self {
        Fail(Box::new((String::new(), why)))
    }
}

impl Fail {
    #[cold]
    fn within(mut self, segment: fmt::Arguments<'_>) -> Self {
        self.0.0.insert_str(0, &segment.to_string());
        self
    }

    #[cold]
    fn at(self, i: usize) -> Self {
        self.within(format_args!("[{i}]"))
    }

    fn into_error(self, message: &str) -> ParseError {
        let (path, why) = *self.0;
        ParseError {
            path: format!("{message}{path}"),
            why: why.to_string(),
            over_limit: matches!(why, Why::Limit(_)),
        }
    }
}

/// Unread input.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, Why> {
        // Most varints (keys, indexes, lengths) take one or two bytes: decode those inline.
        match *self.0 {
            [b, ..] if b < 0x80 => {
                self.0 = &self.0[1..];
                Ok(u64::from(b))
            }
            [b0, b1, ..] if b1 < 0x80 => {
                self.0 = &self.0[2..];
                Ok(u64::from(b0 & 0x7f) | u64::from(b1) << 7)
            }
            _ => {
                let (value, len) = varint_long(self.0)?;
                self.0 = &self.0[len..];
                Ok(value)
            }
        }
    }

    /// uint32 (and the index fields): prost keeps the low 32 bits of a longer varint.
    #[inline(always)]
    fn u32(&mut self) -> Result<u32, Why> {
        self.varint().map(|v| v as u32)
    }

    #[inline(always)]
    fn i32(&mut self) -> Result<i32, Why> {
        self.varint().map(|v| v as i32)
    }

    #[inline(always)]
    fn bool(&mut self) -> Result<bool, Why> {
        self.varint().map(|v| v != 0)
    }

    #[inline(always)]
    fn f64(&mut self) -> Result<f64, Why> {
        let (b, rest) = self.0.split_first_chunk::<8>().ok_or(Why::Truncated)?;
        self.0 = rest;
        Ok(f64::from_le_bytes(*b))
    }

    #[inline(always)]
    fn bytes(&mut self) -> Result<&'a [u8], Why> {
        let n = self.varint()?;
        if n > self.0.len() as u64 {
            return Err(Why::Truncated);
        }
        let (b, rest) = self.0.split_at(n as usize);
        self.0 = rest;
        Ok(b)
    }

    #[inline(always)]
    fn str(&mut self) -> Result<&'a str, Why> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Why::Utf8)
    }

    fn advance(&mut self, n: usize) -> Result<(), Why> {
        self.0 = self.0.get(n..).ok_or(Why::Truncated)?;
        Ok(())
    }
}

/// A varint of three or more bytes at the start of `b` (or none): its value and length.
/// Takes the slice, not the reader, so callers keep their reader in registers.
#[inline(never)]
fn varint_long(b: &[u8]) -> Result<(u64, usize), Why> {
    // With 10 bytes in hand the loop needs no bounds checks and unrolls.
    if let Some(chunk) = b.first_chunk::<10>() {
        let mut value = 0;
        for (i, &b) in chunk.iter().enumerate() {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                // The 10th byte holds bit 63 only (prost rejects anything above 1).
                return if i == 9 && b > 1 {
                    Err(Why::Varint)
                } else {
                    Ok((value, i + 1))
                };
            }
        }
        return Err(Why::Varint);
    }
    let mut value = 0;
    for (i, &b) in b.iter().enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok((value, i + 1));
        }
    }
    Err(Why::Truncated)
}

/// Field number and wire type of a key, rejected as prost's `decode_key` rejects them.
fn split_key(key: u64) -> Result<(u32, u8), Why> {
    if key > u64::from(u32::MAX) {
        return Err(Why::KeyOverflow);
    }
    let wire_type = (key & 7) as u8;
    if wire_type > 5 {
        return Err(Why::InvalidWireType(wire_type));
    }
    match (key >> 3) as u32 {
        0 => Err(Why::FieldZero),
        field => Ok((field, wire_type)),
    }
}

/// Skips the value of an unknown field. `budget` is prost's remaining recursion depth there:
/// each nested group spends one, and a field met with none left is an error.
fn skip(r: &mut Reader<'_>, field: u32, wire_type: u8, budget: u32) -> Result<(), Why> {
    if budget == 0 {
        return Err(Why::RecursionLimit);
    }
    match wire_type {
        0 => r.varint().map(drop),
        1 => r.advance(8),
        2 => r.bytes().map(drop),
        3 => loop {
            let (inner, wire_type) = split_key(r.varint()?)?;
            if wire_type == 4 {
                return if inner == field {
                    Ok(())
                } else {
                    Err(Why::EndGroup)
                };
            }
            skip(r, inner, wire_type, budget - 1)?;
        },
        5 => r.advance(4),
        _ => Err(Why::EndGroup),
    }
}

/// Reads the fields of one message: `known` handles a key it recognises and returns false for
/// any other, which is then either a known field with the wrong wire type (an error) or an
/// unknown field (skipped with `budget`). `names` are the message's field names, in order.
#[inline(always)]
fn fields<'a>(
    body: &'a [u8],
    names: &'static str,
    budget: u32,
    mut known: impl FnMut(&mut Reader<'a>, u64) -> Result<bool, Fail>,
) -> Result<(), Fail> {
    let mut r = Reader(body);
    while !r.0.is_empty() {
        let key = r.varint()?;
        match known(&mut r, key) {
            Ok(true) => {}
            Ok(false) => r.0 = unknown(r.0, key, names, budget)?,
            Err(e) => return Err(e.within(format_args!(".{}", name(names, key >> 3)))),
        }
    }
    Ok(())
}

/// Handles a key `fields` did not recognise, before `rest`; what is left after it. (Takes
/// and returns slices so that `fields` keeps its reader in registers.)
#[cold]
#[inline(never)]
fn unknown<'a>(
    rest: &'a [u8],
    key: u64,
    names: &'static str,
    budget: u32,
) -> Result<&'a [u8], Fail> {
    let (field, wire_type) = split_key(key)?;
    if u64::from(field) <= names.split(' ').count() as u64 {
        let name = name(names, u64::from(field));
        return Err(Fail::from(Why::WrongWireType(wire_type)).within(format_args!(".{name}")));
    }
    let mut r = Reader(rest);
    skip(&mut r, field, wire_type, budget)
        .map_err(|why| Fail::from(why).within(format_args!(".#{field}")))?;
    Ok(r.0)
}

/// Name of known field number `field`.
#[cold]
fn name(names: &'static str, field: u64) -> &'static str {
    names.split(' ').nth(field as usize - 1).unwrap_or("?")
}

/// Reads the length-delimited submessage `i` of a repeated field with `read`.
#[inline(always)]
fn nested<'a, T>(
    r: &mut Reader<'a>,
    i: usize,
    read: impl FnOnce(&'a [u8]) -> Result<T, Fail>,
) -> Result<T, Fail> {
    r.bytes()
        .map_err(Fail::from)
        .and_then(read)
        .map_err(|e| e.at(i))
}

/// Fails with [`Why::Limit`] when a list already holding `len` entries may not take another.
#[inline(always)]
fn room(len: usize, max: usize) -> Result<(), Why> {
    if len >= max {
        return Err(Why::Limit(max));
    }
    Ok(())
}

/// Appends a packed run (wire type 2) or one unpacked value (wire type 0) of a repeated uint32,
/// `out` holding at most `max`.
#[inline(always)]
fn repeated_u32(
    r: &mut Reader<'_>,
    packed: bool,
    out: &mut Vec<u32>,
    max: usize,
) -> Result<(), Why> {
    if packed {
        let mut run = Reader(r.bytes()?);
        // At most one value per byte.
        out.reserve(run.0.len().min(max.saturating_sub(out.len())));
        while !run.0.is_empty() {
            room(out.len(), max)?;
            out.push(run.u32()?);
        }
    } else {
        room(out.len(), max)?;
        out.push(r.u32()?);
    }
    Ok(())
}

/// The span of a flat vector that grew from `start` to `end`.
fn span(start: usize, end: usize) -> Result<Span, Why> {
    let end = u32::try_from(end).map_err(|_| Why::TooMany)?;
    Ok(Span {
        start: start as u32,
        end,
    })
}

// Field names for error paths, field n at word n - 1.
const BATCH: &str = "host_id sequence host created_unix_nanos strings functions frames stacks \
    processes profiles losses agent_instance";
const HOST: &str = "host_id hostname kernel_release cpu_model cpus packages agent_version";
const FUNCTION: &str = "name_index file_index";
const FRAME: &str = "function_index line inlined build_id_index file_offset module_index kind";
const STACK: &str = "frame_indices";
const PROCESS: &str = "pid comm_index exe_index cmdline_index service_index container_index \
    unit_index build_id_indices";
const PROFILE: &str = "start_unix_nanos duration_nanos frequency_hz clock_event energy_source \
    energy_model_index domains interval_microjoules idle_microjoules attributed_microjoules \
    estimated dropped_samples samples";
const DOMAIN: &str = "kind package microjoules estimated";
const SAMPLE: &str = "stack_index process_index tid count microjoules";
const LOSSES: &str = "spool_dropped_batches spool_dropped_intervals spool_dropped_samples";

// Keys below are `field << 3 | wire type` (0 varint, 1 fixed64, 2 length-delimited).
// Messages nested in Batch skip unknown groups with budget 99, those nested twice with 98.

/// Reads an encoded `wattson.v1.Batch` into a view borrowing from `bytes`, each list held to
/// `lim` as it is read.
pub(super) fn batch<'a>(bytes: &'a [u8], lim: &CountLimits) -> Result<BatchView<'a>, ParseError> {
    let mut v = BatchView::default();
    // The entry past a limit fails at its own path, before it (or anything after) is read.
    let full = |len: usize, max: usize| room(len, max).map_err(|w| Fail::from(w).at(len));
    fields(bytes, BATCH, 100, |r, key| {
        match key {
            0x0a => v.host_id = r.str()?,
            0x10 => v.sequence = r.varint()?,
            0x1a => host(r.bytes()?, v.host.get_or_insert_default())?,
            0x20 => v.created_unix_nanos = r.varint()?,
            0x2a => {
                full(v.strings.len(), lim.strings)?;
                let s = r.str().map_err(|w| Fail::from(w).at(v.strings.len()))?;
                v.strings.push(s);
            }
            0x32 => {
                full(v.functions.len(), lim.functions)?;
                v.functions.push(nested(r, v.functions.len(), function)?);
            }
            0x3a => {
                full(v.frames.len(), lim.frames)?;
                v.frames.push(nested(r, v.frames.len(), frame)?);
            }
            0x42 => {
                full(v.stacks.len(), lim.stacks)?;
                let flat = &mut v.stack_frames;
                v.stacks.push(nested(r, v.stacks.len(), |b| {
                    stack(b, flat, lim.stack_frames)
                })?);
            }
            0x4a => {
                full(v.processes.len(), lim.processes)?;
                let flat = &mut v.process_build_ids;
                v.processes.push(nested(r, v.processes.len(), |b| {
                    process(b, flat, lim.build_ids)
                })?);
            }
            0x52 => {
                full(v.profiles.len(), lim.profiles)?;
                let (domains, samples) = (&mut v.all_domains, &mut v.all_samples);
                let i = v.profiles.len();
                v.profiles
                    .push(nested(r, i, |b| profile(b, domains, samples, lim))?);
            }
            0x5a => losses(r.bytes()?, v.losses.get_or_insert_default())?,
            0x62 => v.agent_instance = r.str()?,
            _ => return Ok(false),
        }
        Ok(true)
    })
    .map_err(|e| e.into_error("Batch"))?;
    Ok(v)
}

/// Merges a `Host` occurrence into `h`: fields it carries overwrite.
fn host<'a>(body: &'a [u8], h: &mut HostView<'a>) -> Result<(), Fail> {
    fields(body, HOST, 99, |r, key| {
        match key {
            0x0a => h.host_id = r.str()?,
            0x12 => h.hostname = r.str()?,
            0x1a => h.kernel_release = r.str()?,
            0x22 => h.cpu_model = r.str()?,
            0x28 => h.cpus = r.u32()?,
            0x30 => h.packages = r.u32()?,
            0x3a => h.agent_version = r.str()?,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

fn losses(body: &[u8], l: &mut AgentLosses) -> Result<(), Fail> {
    fields(body, LOSSES, 99, |r, key| {
        match key {
            0x08 => l.spool_dropped_batches = r.varint()?,
            0x10 => l.spool_dropped_intervals = r.varint()?,
            0x18 => l.spool_dropped_samples = r.varint()?,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

fn function(body: &[u8]) -> Result<Function, Fail> {
    let mut f = Function::default();
    fields(body, FUNCTION, 99, |r, key| {
        match key {
            0x08 => f.name_index = r.u32()?,
            0x10 => f.file_index = r.u32()?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(f)
}

fn frame(body: &[u8]) -> Result<Frame, Fail> {
    let mut f = Frame::default();
    fields(body, FRAME, 99, |r, key| {
        match key {
            0x08 => f.function_index = r.u32()?,
            0x10 => f.line = r.u32()?,
            0x18 => f.inlined = r.bool()?,
            0x20 => f.build_id_index = r.u32()?,
            0x28 => f.file_offset = r.varint()?,
            0x30 => f.module_index = r.u32()?,
            0x38 => f.kind = r.i32()?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(f)
}

fn stack(body: &[u8], flat: &mut Vec<u32>, max: usize) -> Result<Span, Fail> {
    let start = flat.len();
    fields(body, STACK, 99, |r, key| {
        match key {
            0x08 | 0x0a => repeated_u32(r, key == 0x0a, flat, max)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(span(start, flat.len())?)
}

fn process(body: &[u8], flat: &mut Vec<u32>, max: usize) -> Result<ProcessView, Fail> {
    let mut p = ProcessView::default();
    let start = flat.len();
    fields(body, PROCESS, 99, |r, key| {
        match key {
            0x08 => p.pid = r.u32()?,
            0x10 => p.comm_index = r.u32()?,
            0x18 => p.exe_index = r.u32()?,
            0x20 => p.cmdline_index = r.u32()?,
            0x28 => p.service_index = r.u32()?,
            0x30 => p.container_index = r.u32()?,
            0x38 => p.unit_index = r.u32()?,
            0x40 | 0x42 => repeated_u32(r, key == 0x42, flat, max)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    p.build_id_indices = span(start, flat.len())?;
    Ok(p)
}

fn profile(
    body: &[u8],
    domains: &mut Vec<EnergyDomain>,
    samples: &mut Vec<Sample>,
    lim: &CountLimits,
) -> Result<ProfileView, Fail> {
    let mut p = ProfileView::default();
    let (d0, s0) = (domains.len(), samples.len());
    fields(body, PROFILE, 99, |r, key| {
        match key {
            0x08 => p.start_unix_nanos = r.varint()?,
            0x10 => p.duration_nanos = r.varint()?,
            0x18 => p.frequency_hz = r.u32()?,
            0x20 => p.clock_event = r.i32()?,
            0x28 => p.energy_source = r.i32()?,
            0x30 => p.energy_model_index = r.u32()?,
            0x3a => {
                room(domains.len(), lim.domains)
                    .map_err(|w| Fail::from(w).at(domains.len() - d0))?;
                domains.push(nested(r, domains.len() - d0, domain)?);
            }
            0x41 => p.interval_microjoules = r.f64()?,
            0x49 => p.idle_microjoules = r.f64()?,
            0x51 => p.attributed_microjoules = r.f64()?,
            0x58 => p.estimated = r.bool()?,
            0x60 => p.dropped_samples = r.varint()?,
            0x6a => {
                room(samples.len(), lim.samples)
                    .map_err(|w| Fail::from(w).at(samples.len() - s0))?;
                samples.push(nested(r, samples.len() - s0, sample)?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    p.domains = span(d0, domains.len())?;
    p.samples = span(s0, samples.len())?;
    Ok(p)
}

fn domain(body: &[u8]) -> Result<EnergyDomain, Fail> {
    let mut d = EnergyDomain::default();
    fields(body, DOMAIN, 98, |r, key| {
        match key {
            0x08 => d.kind = r.i32()?,
            0x10 => d.package = r.u32()?,
            0x19 => d.microjoules = r.f64()?,
            0x20 => d.estimated = r.bool()?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(d)
}

fn sample(body: &[u8]) -> Result<Sample, Fail> {
    let mut s = Sample::default();
    fields(body, SAMPLE, 98, |r, key| {
        match key {
            0x08 => s.stack_index = r.u32()?,
            0x10 => s.process_index = r.u32()?,
            0x18 => s.tid = r.u32()?,
            0x20 => s.count = r.varint()?,
            0x29 => s.microjoules = r.f64()?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(s)
}

/// The payload of a `wattson.v1.IngestRequest`, without reading it: `batch` (field 1) or
/// `batch_zstd` (field 2), whichever came last, as prost reads a oneof. (Not checked: prost
/// reads a batch inside a request with one level less for nested unknown groups than a batch
/// on its own, so a batch with unknown groups nested exactly 100 deep parses here but fails in
/// `IngestRequest::decode`.)
pub(super) fn request_batch(request: &Bytes) -> Result<Option<RequestBatch>, ParseError> {
    // Offsets of the first occurrence of the current `batch`; later ones are copied onto it
    // (protobuf merges them).
    let mut first: Option<std::ops::Range<usize>> = None;
    let mut joined: Option<BytesMut> = None;
    let mut zstd = None;
    // prost decodes every occurrence of `batch` on its own, merging it into the one before,
    // even when `batch_zstd` replaces them later: a malformed one fails the request, though
    // the bytes joined may read well (a varint cut at the end of one completed by the next).
    // So each is read here too, except a lone `batch` that is kept: the caller reads that.
    let mut malformed: Result<(), ParseError> = Ok(());
    let mut check = |bytes: &[u8]| {
        if malformed.is_ok() {
            malformed = batch(bytes, &CountLimits::UNLIMITED).map(|_| ());
        }
    };
    fields(request, "batch batch_zstd", 100, |r, key| {
        if key != 0x0a && key != 0x12 {
            return Ok(false);
        }
        let b = r.bytes()?;
        let end = request.len() - r.0.len();
        if key == 0x12 {
            // A joined batch's parts were read as they were joined.
            if let (None, Some(range)) = (&joined, &first) {
                check(&request[range.clone()]);
            }
            (first, joined, zstd) = (None, None, Some(end - b.len()..end));
            return Ok(true);
        }
        zstd = None;
        match (&first, &mut joined) {
            (None, _) => first = Some(end - b.len()..end),
            (Some(range), None) => {
                check(&request[range.clone()]);
                check(b);
                let mut j = BytesMut::from(&request[range.clone()]);
                j.extend_from_slice(b);
                joined = Some(j);
            }
            (Some(_), Some(j)) => {
                check(b);
                j.extend_from_slice(b);
            }
        }
        Ok(true)
    })
    .map_err(|e| e.into_error("IngestRequest"))?;
    malformed?;
    Ok(match (joined, first, zstd) {
        (Some(j), _, _) => Some(RequestBatch::Encoded(j.freeze())),
        (None, Some(range), _) => Some(RequestBatch::Encoded(request.slice(range))),
        (None, None, Some(range)) => Some(RequestBatch::Zstd(request.slice(range))),
        (None, None, None) => None,
    })
}
