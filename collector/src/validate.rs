//! Validation of an incoming [`Batch`] before anything is stored: sizes and counts within
//! [`Limits`], every table index in range, finite non-negative energy, sane timestamps and
//! frequencies, a host id a person can read. The first problem found is returned as a
//! [`Invalid`] whose message names the field path (`profiles[3].samples[7].stack_index 912 out
//! of range (stacks: 40)`), which the ingest service maps to INVALID_ARGUMENT.
//!
//! The checks read a [`BatchView`], which is what the server parses a request into; an owned
//! [`Batch`] is checked through [`BatchView::of`]. UTF-8 is checked while parsing (invalid
//! UTF-8 in a string fails to parse, which the server also answers with INVALID_ARGUMENT).

use std::time::{SystemTime, UNIX_EPOCH};

use wattson_proto::v1::{Batch, EnergyDomain, Frame, Sample};
use wattson_proto::view::{BatchView, CountLimits, ParseError, ProcessView, ProfileView};

/// Limits a batch must respect. The defaults are generous for one host's batch of a few
/// intervals and tight enough that a hostile batch cannot make the collector allocate or
/// loop without bound.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Longest host id, bytes.
    pub max_host_id_bytes: usize,
    /// Entries of the string table.
    pub max_strings: usize,
    /// Longest string, bytes.
    pub max_string_bytes: usize,
    /// Entries of each of the function, frame and stack tables.
    pub max_table_entries: usize,
    /// Processes per batch.
    pub max_processes: usize,
    /// Build ids per process.
    pub max_build_ids_per_process: usize,
    /// Frames per stack.
    pub max_stack_depth: usize,
    /// Interval profiles per batch.
    pub max_profiles: usize,
    /// Samples (rows) per profile.
    pub max_samples_per_profile: usize,
    /// Samples (rows) over all profiles of the batch.
    pub max_samples_per_batch: usize,
    /// Frame indexes over all stacks of the batch.
    pub max_stack_frames: usize,
    /// Energy domains per profile.
    pub max_domains: usize,
    /// Longest interval, nanoseconds.
    pub max_duration_nanos: u64,
    /// Highest sampling frequency, Hz.
    pub max_frequency_hz: u32,
    /// Most CPUs (and packages) a host may report (Linux's NR_CPUS tops out at 8192 on x86).
    pub max_cpus: u32,
    /// Largest energy figure of one interval, microjoules (1 GJ: a 100 kW host for 10^4 s).
    pub max_microjoules: f64,
    /// How far in the future a timestamp may be (clock skew), nanoseconds.
    pub max_future_skew_nanos: u64,
    /// Oldest accepted timestamp, nanoseconds since the epoch.
    pub min_unix_nanos: u64,
    /// Most bytes the batch may expand to in the roll-up ([`check_expansion`]): frame names,
    /// folded stacks (`root;...;leaf`) and the row keys its samples make. A few KB of batch
    /// pointing deep stacks at one long name would otherwise fold to gigabytes.
    pub max_expanded_bytes: usize,
}

/// Default of [`Limits::max_expanded_bytes`], and the roll-up's own ceiling: kept well under
/// `u32::MAX` so the roll-up's 32-bit offsets into a batch's names cannot wrap.
pub const DEFAULT_MAX_EXPANDED_BYTES: usize = 256 << 20;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_host_id_bytes: 256,
            max_strings: 1 << 20,
            max_string_bytes: wattson_proto::MAX_STRING_BYTES,
            max_table_entries: 1 << 20,
            max_processes: 1 << 17,
            max_build_ids_per_process: 1024,
            max_stack_depth: 1024,
            max_profiles: 4096,
            max_samples_per_profile: 1 << 20,
            max_samples_per_batch: 1 << 21,
            max_stack_frames: 1 << 24,
            max_domains: 256,
            max_duration_nanos: 24 * 3600 * 1_000_000_000,
            max_frequency_hz: 100_000,
            max_cpus: 16_384,
            max_microjoules: 1e15,
            max_future_skew_nanos: 24 * 3600 * 1_000_000_000,
            // 2000-01-01T00:00:00Z.
            min_unix_nanos: 946_684_800 * 1_000_000_000,
            max_expanded_bytes: DEFAULT_MAX_EXPANDED_BYTES,
        }
    }
}

impl Limits {
    /// The counts [`BatchView::parse_limited`] holds each list to while it reads a request,
    /// so a batch over them is refused before it is parsed whole (32 B per sample row from 2
    /// bytes of message: 64 MiB of empty rows was over 1 GiB of parsed structs).
    pub fn counts(&self) -> CountLimits {
        let mut c = CountLimits::UNLIMITED;
        c.strings = self.max_strings;
        c.functions = self.max_table_entries;
        c.frames = self.max_table_entries;
        c.stacks = self.max_table_entries;
        c.stack_frames = self.max_stack_frames;
        c.processes = self.max_processes;
        c.build_ids = self.max_table_entries;
        c.profiles = self.max_profiles;
        c.domains = self
            .max_profiles
            .saturating_mul(self.max_domains)
            .min(1 << 16);
        c.samples = self.max_samples_per_batch;
        c
    }
}

/// Reads a request's encoded batch as the server does: in place, each list held to
/// [`Limits::counts`] as it is read.
pub fn parse<'a>(bytes: &'a [u8], limits: &Limits) -> Result<BatchView<'a>, ParseError> {
    BatchView::parse_limited(bytes, &limits.counts())
}

/// Why a batch was rejected: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// What a valid batch holds, for logs and acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Interval profiles.
    pub profiles: u32,
    /// Sum of sample counts over all profiles.
    pub samples: u64,
}

macro_rules! bail {
    ($($arg:tt)*) => { return Err(Invalid(format!($($arg)*))) };
}

/// Checks `batch` against `limits` with the current wall clock as "now".
pub fn validate(batch: &BatchView<'_>, limits: &Limits) -> Result<Summary, Invalid> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    validate_view_at(batch, limits, now)
}

/// Checks an owned `batch` against `limits`, with `now_unix_nanos` as the present (tests pin
/// it).
pub fn validate_at(
    batch: &Batch,
    limits: &Limits,
    now_unix_nanos: u64,
) -> Result<Summary, Invalid> {
    validate_view_at(&BatchView::of(batch), limits, now_unix_nanos)
}

/// Checks `batch` against `limits`, with `now_unix_nanos` as the present.
pub fn validate_view_at(
    batch: &BatchView<'_>,
    limits: &Limits,
    now_unix_nanos: u64,
) -> Result<Summary, Invalid> {
    let latest = now_unix_nanos.saturating_add(limits.max_future_skew_nanos);
    check_host_id(batch.host_id, limits)?;
    if batch.sequence == 0 {
        bail!("sequence 0 is not allowed (sequences start at 1)");
    }
    // Part of the dedup key: short and printable, like the hex id agents draw.
    if batch.agent_instance.len() > MAX_INSTANCE_BYTES {
        bail!(
            "agent_instance is {} bytes (limit {MAX_INSTANCE_BYTES})",
            batch.agent_instance.len()
        );
    }
    if let Some(c) = batch.agent_instance.chars().find(|c| !c.is_ascii_graphic()) {
        bail!("agent_instance contains {c:?} (expected printable ASCII, e.g. hex)");
    }
    if let Some(host) = batch.host {
        // `cpus` scales what a profile may count: unbounded, it lets one batch carry sums
        // that overflow every later roll-up.
        for (field, n) in [("cpus", host.cpus), ("packages", host.packages)] {
            if n > limits.max_cpus {
                bail!("host.{field} {n} is over the limit of {}", limits.max_cpus);
            }
        }
    }
    if let Some(host) = batch.host
        && !host.host_id.is_empty()
        && host.host_id != batch.host_id
    {
        bail!(
            "host.host_id {:?} differs from host_id {:?}",
            host.host_id,
            batch.host_id
        );
    }
    if batch.created_unix_nanos != 0 {
        check_time(
            "created_unix_nanos",
            batch.created_unix_nanos,
            limits,
            latest,
        )?;
    }

    let strings = batch.strings.len();
    check_count("strings", strings, limits.max_strings)?;
    if let Some(first) = batch.strings.first()
        && !first.is_empty()
    {
        bail!(
            "strings[0] must be the empty string, got {} bytes",
            first.len()
        );
    }
    for (i, s) in batch.strings.iter().enumerate() {
        if s.len() > limits.max_string_bytes {
            bail!(
                "strings[{i}] is {} bytes (limit {})",
                s.len(),
                limits.max_string_bytes
            );
        }
    }
    let str_ix = |path: &dyn Fn() -> String, ix: u32| index(path, ix, "strings", strings);

    check_count("functions", batch.functions.len(), limits.max_table_entries)?;
    for (i, f) in batch.functions.iter().enumerate() {
        str_ix(&|| format!("functions[{i}].name_index"), f.name_index)?;
        str_ix(&|| format!("functions[{i}].file_index"), f.file_index)?;
    }

    check_count("frames", batch.frames.len(), limits.max_table_entries)?;
    for (i, f) in batch.frames.iter().enumerate() {
        check_frame(i, f, batch.functions.len(), strings)?;
    }

    check_count("stacks", batch.stacks.len(), limits.max_table_entries)?;
    check_count(
        "stacks' frame_indices",
        batch.stack_frames.len(),
        limits.max_stack_frames,
    )?;
    for i in 0..batch.stacks.len() {
        check_stack(i, batch.stack(i), batch.frames.len(), limits)?;
    }

    check_count("processes", batch.processes.len(), limits.max_processes)?;
    for (i, p) in batch.processes.iter().enumerate() {
        check_process(i, p, batch.build_ids(p), strings, limits)?;
    }

    check_count("profiles", batch.profiles.len(), limits.max_profiles)?;
    check_count(
        "profiles' samples",
        batch.all_samples.len(),
        limits.max_samples_per_batch,
    )?;
    let mut summary = Summary::default();
    for (i, p) in batch.profiles.iter().enumerate() {
        let samples = check_profile(i, p, batch, limits, latest)?;
        summary.profiles += 1;
        summary.samples = summary
            .samples
            .checked_add(samples)
            .ok_or_else(|| Invalid(format!("profiles[{i}]: total sample count overflows u64")))?;
    }
    check_expansion(batch, limits.max_expanded_bytes)?;
    Ok(summary)
}

/// Longest agent instance id, bytes.
const MAX_INSTANCE_BYTES: usize = 64;

fn check_host_id(host_id: &str, limits: &Limits) -> Result<(), Invalid> {
    if host_id.is_empty() {
        bail!("host_id is empty (set it to a stable machine identity)");
    }
    if host_id.len() > limits.max_host_id_bytes {
        bail!(
            "host_id is {} bytes (limit {})",
            host_id.len(),
            limits.max_host_id_bytes
        );
    }
    if let Some(c) = host_id.chars().find(|c| c.is_control()) {
        bail!("host_id contains control character {c:?}");
    }
    Ok(())
}

fn check_count(field: &str, len: usize, max: usize) -> Result<(), Invalid> {
    if len > max {
        bail!("{field} has {len} entries (limit {max})");
    }
    Ok(())
}

fn index(path: &dyn Fn() -> String, ix: u32, table: &str, len: usize) -> Result<(), Invalid> {
    if ix as usize >= len {
        // An empty string table is fine as long as nothing but "unset" (0) refers to it.
        if table == "strings" && ix == 0 {
            return Ok(());
        }
        bail!("{} {ix} out of range ({table}: {len})", path());
    }
    Ok(())
}

fn check_time(path: &str, t: u64, limits: &Limits, latest: u64) -> Result<(), Invalid> {
    if t < limits.min_unix_nanos {
        bail!("{path} {t} is before 2000-01-01 (nanoseconds since the Unix epoch expected)");
    }
    if t > latest {
        bail!("{path} {t} is more than a day in the future (check the host's clock)");
    }
    Ok(())
}

fn check_frame(i: usize, f: &Frame, functions: usize, strings: usize) -> Result<(), Invalid> {
    index(
        &|| format!("frames[{i}].function_index"),
        f.function_index,
        "functions",
        functions,
    )?;
    index(
        &|| format!("frames[{i}].build_id_index"),
        f.build_id_index,
        "strings",
        strings,
    )?;
    index(
        &|| format!("frames[{i}].module_index"),
        f.module_index,
        "strings",
        strings,
    )?;
    if wattson_proto::v1::FrameKind::try_from(f.kind).is_err() {
        bail!("frames[{i}].kind {} is not a known FrameKind", f.kind);
    }
    Ok(())
}

fn check_stack(
    i: usize,
    frame_indices: &[u32],
    frames: usize,
    limits: &Limits,
) -> Result<(), Invalid> {
    if frame_indices.len() > limits.max_stack_depth {
        bail!(
            "stacks[{i}] has {} frames (depth limit {})",
            frame_indices.len(),
            limits.max_stack_depth
        );
    }
    for (j, &f) in frame_indices.iter().enumerate() {
        index(
            &|| format!("stacks[{i}].frame_indices[{j}]"),
            f,
            "frames",
            frames,
        )?;
    }
    Ok(())
}

/// Upper bound of the bytes of frame `i`'s name as the roll-up builds it: the function's name,
/// else `[module+0xOFFSET]`, else `[unknown]`, plus `_[k]` for a kernel frame. A string
/// index out of range counts 0.
fn frame_name_bytes(batch: &BatchView<'_>, i: usize) -> u64 {
    let f = &batch.frames[i];
    let text = |ix: u32| batch.strings.get(ix as usize).map_or(0, |s| s.len());
    let name = batch
        .functions
        .get(f.function_index as usize)
        .map_or(0, |func| text(func.name_index));
    let base = match (name, text(f.module_index)) {
        (0, 0) => "[unknown]".len(),
        // `[` `+0x` 16 hex digits `]`.
        (0, module) => module + 21,
        (name, _) => name,
    };
    let kernel = if f.kind == wattson_proto::v1::FrameKind::Kernel as i32 {
        "_[k]".len()
    } else {
        0
    };
    (base + kernel) as u64
}

/// Checks what the batch expands to in the roll-up against `max` bytes (see
/// [`Limits::max_expanded_bytes`]): every frame's name, every stack folded with 4 bytes per
/// frame id, each process's service and build id, and per sample row the row keys it can make
/// (its stack folded, its service and build). Summed in u64 (saturating), so the sum cannot
/// wrap; an index out of range counts 0, so this is safe on a batch not checked otherwise.
pub fn check_expansion(batch: &BatchView<'_>, max: usize) -> Result<(), Invalid> {
    let text = |ix: u32| batch.strings.get(ix as usize).map_or(0, |s| s.len() as u64);
    let names: Vec<u64> = (0..batch.frames.len())
        .map(|i| frame_name_bytes(batch, i))
        .collect();
    // Each name, a `;` after it, and the frame's 4-byte id.
    let folded: Vec<u64> = (0..batch.stacks.len())
        .map(|i| {
            let frames = batch.stack(i);
            frames
                .iter()
                .map(|&f| names.get(f as usize).copied().unwrap_or(0) + 1 + 4)
                .sum()
        })
        .collect();
    let procs: Vec<u64> = batch
        .processes
        .iter()
        .map(|p| {
            let service = match text(p.service_index) {
                0 => text(p.comm_index),
                n => n,
            };
            service + batch.build_ids(p).first().map_or(0, |&b| text(b))
        })
        .collect();
    let mut total = [&names, &folded, &procs]
        .iter()
        .flat_map(|v| v.iter())
        .fold(0u64, |a, &b| a.saturating_add(b));
    for s in &batch.all_samples {
        let at = |v: &[u64], i: u32| v.get(i as usize).copied().unwrap_or(0);
        let row = at(&folded, s.stack_index) + at(&procs, s.process_index);
        total = total.saturating_add(row);
    }
    if total > max as u64 {
        let (largest_at, largest) = folded
            .iter()
            .copied()
            .enumerate()
            .max_by_key(|&(_, b)| b)
            .unwrap_or_default();
        bail!(
            "batch expands to {total} bytes in the roll-up (frame names, folded stacks and \
             their rows; limit {max}); the largest stack, stacks[{largest_at}], folds to \
             {largest} bytes ({} frames)",
            batch.stacks.get(largest_at).map_or(0, |s| s.len())
        );
    }
    Ok(())
}

fn check_process(
    i: usize,
    p: &ProcessView,
    build_ids: &[u32],
    strings: usize,
    limits: &Limits,
) -> Result<(), Invalid> {
    for (name, ix) in [
        ("comm_index", p.comm_index),
        ("exe_index", p.exe_index),
        ("cmdline_index", p.cmdline_index),
        ("service_index", p.service_index),
        ("container_index", p.container_index),
        ("unit_index", p.unit_index),
    ] {
        index(&|| format!("processes[{i}].{name}"), ix, "strings", strings)?;
    }
    if build_ids.len() > limits.max_build_ids_per_process {
        bail!(
            "processes[{i}].build_id_indices has {} entries (limit {})",
            build_ids.len(),
            limits.max_build_ids_per_process
        );
    }
    for (j, &b) in build_ids.iter().enumerate() {
        index(
            &|| format!("processes[{i}].build_id_indices[{j}]"),
            b,
            "strings",
            strings,
        )?;
    }
    Ok(())
}

fn check_energy(path: &dyn Fn() -> String, uj: f64, limits: &Limits) -> Result<(), Invalid> {
    if !uj.is_finite() {
        bail!("{} is {uj} (energy must be finite)", path());
    }
    if uj < 0.0 {
        bail!("{} is {uj} (energy must not be negative)", path());
    }
    if uj > limits.max_microjoules {
        bail!(
            "{} is {uj} µJ (limit {} µJ per interval)",
            path(),
            limits.max_microjoules
        );
    }
    Ok(())
}

/// Checks one profile; returns its sample count.
fn check_profile(
    i: usize,
    p: &ProfileView,
    batch: &BatchView<'_>,
    limits: &Limits,
    latest: u64,
) -> Result<u64, Invalid> {
    check_time(
        &format!("profiles[{i}].start_unix_nanos"),
        p.start_unix_nanos,
        limits,
        latest,
    )?;
    if p.duration_nanos == 0 || p.duration_nanos > limits.max_duration_nanos {
        bail!(
            "profiles[{i}].duration_nanos {} is outside 1..={}",
            p.duration_nanos,
            limits.max_duration_nanos
        );
    }
    if p.start_unix_nanos.saturating_add(p.duration_nanos) > latest {
        bail!("profiles[{i}] ends more than a day in the future (check the host's clock)");
    }
    if p.frequency_hz == 0 || p.frequency_hz > limits.max_frequency_hz {
        bail!(
            "profiles[{i}].frequency_hz {} is outside 1..={}",
            p.frequency_hz,
            limits.max_frequency_hz
        );
    }
    if wattson_proto::v1::ClockEvent::try_from(p.clock_event).is_err() {
        bail!(
            "profiles[{i}].clock_event {} is not a known ClockEvent",
            p.clock_event
        );
    }
    if wattson_proto::v1::EnergySource::try_from(p.energy_source).is_err() {
        bail!(
            "profiles[{i}].energy_source {} is not a known EnergySource",
            p.energy_source
        );
    }
    index(
        &|| format!("profiles[{i}].energy_model_index"),
        p.energy_model_index,
        "strings",
        batch.strings.len(),
    )?;
    check_count(
        &format!("profiles[{i}].domains"),
        p.domains.len(),
        limits.max_domains,
    )?;
    for (j, d) in batch.domains(p).iter().enumerate() {
        check_domain(i, j, d, limits)?;
    }
    check_energy(
        &|| format!("profiles[{i}].interval_microjoules"),
        p.interval_microjoules,
        limits,
    )?;
    check_energy(
        &|| format!("profiles[{i}].idle_microjoules"),
        p.idle_microjoules,
        limits,
    )?;
    check_energy(
        &|| format!("profiles[{i}].attributed_microjoules"),
        p.attributed_microjoules,
        limits,
    )?;
    // A little slack: the agent rounds per-sample shares.
    let slack = 1.0 + p.interval_microjoules * 1e-6;
    if p.idle_microjoules + p.attributed_microjoules > p.interval_microjoules + slack {
        bail!(
            "profiles[{i}]: idle_microjoules {} + attributed_microjoules {} exceed interval_microjoules {}",
            p.idle_microjoules,
            p.attributed_microjoules,
            p.interval_microjoules
        );
    }
    check_count(
        &format!("profiles[{i}].samples"),
        p.samples.len(),
        limits.max_samples_per_profile,
    )?;
    // No CPU can deliver more samples than frequency x duration; allow 2x for timer slack.
    let per_cpu =
        (u128::from(p.frequency_hz) * u128::from(p.duration_nanos)).div_ceil(1_000_000_000);
    let cpus = batch.host.map_or(0, |h| h.cpus).max(1);
    let max_samples = per_cpu.saturating_mul(2 * u128::from(cpus)).max(2);
    let mut total: u128 = 0;
    let mut uj_total = 0.0;
    for (j, s) in batch.samples(p).iter().enumerate() {
        check_sample(i, j, s, batch, limits)?;
        total += u128::from(s.count);
        uj_total += s.microjoules;
    }
    for (what, n) in [
        ("samples count", total),
        ("dropped_samples", p.dropped_samples.into()),
    ] {
        if n > max_samples {
            bail!(
                "profiles[{i}].{what} {n} exceeds what {cpus} CPUs at {} Hz deliver in {} ns (at most {max_samples})",
                p.frequency_hz,
                p.duration_nanos
            );
        }
    }
    if uj_total > p.attributed_microjoules + slack + p.samples.len() as f64 {
        bail!(
            "profiles[{i}].samples carry {uj_total} µJ, more than attributed_microjoules {}",
            p.attributed_microjoules
        );
    }
    // total <= max_samples <= 2 * cpus * frequency * duration, which fits u64 for sane limits.
    Ok(u64::try_from(total).unwrap_or(u64::MAX))
}

fn check_domain(i: usize, j: usize, d: &EnergyDomain, limits: &Limits) -> Result<(), Invalid> {
    if wattson_proto::v1::DomainKind::try_from(d.kind).is_err() {
        bail!(
            "profiles[{i}].domains[{j}].kind {} is not a known DomainKind",
            d.kind
        );
    }
    check_energy(
        &|| format!("profiles[{i}].domains[{j}].microjoules"),
        d.microjoules,
        limits,
    )
}

fn check_sample(
    i: usize,
    j: usize,
    s: &Sample,
    batch: &BatchView<'_>,
    limits: &Limits,
) -> Result<(), Invalid> {
    index(
        &|| format!("profiles[{i}].samples[{j}].stack_index"),
        s.stack_index,
        "stacks",
        batch.stacks.len(),
    )?;
    index(
        &|| format!("profiles[{i}].samples[{j}].process_index"),
        s.process_index,
        "processes",
        batch.processes.len(),
    )?;
    if s.count == 0 {
        bail!("profiles[{i}].samples[{j}].count is 0 (omit empty rows)");
    }
    check_energy(
        &|| format!("profiles[{i}].samples[{j}].microjoules"),
        s.microjoules,
        limits,
    )
}
