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
use wattson_proto::view::{BatchView, ProcessView, ProfileView};

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
    /// Energy domains per profile.
    pub max_domains: usize,
    /// Longest interval, nanoseconds.
    pub max_duration_nanos: u64,
    /// Highest sampling frequency, Hz.
    pub max_frequency_hz: u32,
    /// Largest energy figure of one interval, microjoules (1 GJ: a 100 kW host for 10^4 s).
    pub max_microjoules: f64,
    /// How far in the future a timestamp may be (clock skew), nanoseconds.
    pub max_future_skew_nanos: u64,
    /// Oldest accepted timestamp, nanoseconds since the epoch.
    pub min_unix_nanos: u64,
}

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
            max_domains: 256,
            max_duration_nanos: 24 * 3600 * 1_000_000_000,
            max_frequency_hz: 100_000,
            max_microjoules: 1e15,
            max_future_skew_nanos: 24 * 3600 * 1_000_000_000,
            // 2000-01-01T00:00:00Z.
            min_unix_nanos: 946_684_800 * 1_000_000_000,
        }
    }
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
    for i in 0..batch.stacks.len() {
        check_stack(i, batch.stack(i), batch.frames.len(), limits)?;
    }

    check_count("processes", batch.processes.len(), limits.max_processes)?;
    for (i, p) in batch.processes.iter().enumerate() {
        check_process(i, p, batch.build_ids(p), strings, limits)?;
    }

    check_count("profiles", batch.profiles.len(), limits.max_profiles)?;
    let mut summary = Summary::default();
    for (i, p) in batch.profiles.iter().enumerate() {
        let samples = check_profile(i, p, batch, limits, latest)?;
        summary.profiles += 1;
        summary.samples = summary
            .samples
            .checked_add(samples)
            .ok_or_else(|| Invalid(format!("profiles[{i}]: total sample count overflows u64")))?;
    }
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
    if total > max_samples {
        bail!(
            "profiles[{i}].samples count {total} exceeds what {cpus} CPUs at {} Hz deliver in {} ns (at most {max_samples})",
            p.frequency_hz,
            p.duration_nanos
        );
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
