//! Rolling wire [`Batch`]es up into store rows: per minute and per hour, sums of samples and
//! microjoules per (service, function) self and inclusive, per (service, host), per host, per
//! (service, build id) and per (service, build id, folded stack). Both backends write exactly
//! these rows, so what a query returns does not depend on the backend.
//!
//! Two phases, so ingest can merge many batches cheaply: [`Prepared`] resolves one batch and
//! holds everything that can fail; [`Accumulator`] merges prepared batches with interned
//! integer keys and builds string rows once per flush. [`Rollup`] is one batch through both.

use foldhash::HashMap;

use std::borrow::Cow;

use wattson_proto::v1::{Batch, EnergySource, FrameKind};
use wattson_proto::view::BatchView;

use super::intern::{Names, Stacks};
use super::{StoreError, Totals};

/// What a row sums over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// key = function name; self and inclusive sums.
    Function = 1,
    /// key = host id; the service's samples and energy on that host.
    Service = 2,
    /// service = "", key = host id; attributed, idle, duration and drops of the host.
    Host = 3,
    /// key = build id of the executable ("" when unknown).
    Build = 4,
    /// key = folded stack, root first, `;`-separated.
    Stack = 5,
    /// key = [`line_key`]: a function, the function it called there ("" for its own
    /// samples), file and line; samples of the frames at that line. (6 is ClickHouse's dedup
    /// marker.)
    Line = 7,
}

impl Kind {
    /// The kind stored as `code`, if any.
    pub fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            1 => Kind::Function,
            2 => Kind::Service,
            3 => Kind::Host,
            4 => Kind::Build,
            5 => Kind::Stack,
            7 => Kind::Line,
            _ => return None,
        })
    }
}

/// Resolution code of minute rows.
pub const RES_MINUTE: u8 = 0;
/// Resolution code of hour rows.
pub const RES_HOUR: u8 = 1;
/// Resolution code of detection's five-minute rows of functions and service totals
/// ([`detect_rows`]): ClickHouse keeps them in `rollup`, SQLite packs them per hour
/// (`sqlite_detect5`). They live as long as detection's history ([`super::Retention::detect`]).
pub const RES_DETECT: u8 = 2;
/// Length of a detection row's bucket, seconds.
pub const DETECT_STEP: i64 = 300;

/// One row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// What it sums over.
    pub kind: Kind,
    /// [`RES_MINUTE`] or [`RES_HOUR`].
    pub res: u8,
    /// Start of the minute or hour, Unix seconds.
    pub minute: i64,
    /// Service label ("" for host rows).
    pub service: String,
    /// See [`Kind`].
    pub key: String,
    /// The sums.
    pub totals: Totals,
}

/// A batch rolled up and ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollup {
    /// Host id of the batch (dedup key, with `instance` and `sequence`).
    pub host: String,
    /// Agent instance the sequence belongs to ("" from agents that predate it).
    pub instance: String,
    /// Sequence number of the batch.
    pub sequence: u64,
    /// Earliest minute in the batch (Unix seconds), 0 for a batch without profiles.
    pub first_minute: i64,
    /// Interval profiles in the batch.
    pub profiles: u32,
    /// Samples in the batch.
    pub samples: u64,
    /// Minute rows followed by hour rows.
    pub rows: Vec<Row>,
}

impl Rollup {
    /// Rolls one batch up (see [`Prepared`] and [`Accumulator`], which do the work).
    pub fn from_batch(batch: &Batch) -> Result<Rollup, StoreError> {
        let prepared = Prepared::from_batch(batch)?;
        let mut acc = Accumulator::default();
        acc.merge(&prepared);
        Ok(Rollup {
            host: batch.host_id.clone(),
            instance: batch.agent_instance.clone(),
            sequence: batch.sequence,
            first_minute: prepared.first_minute,
            profiles: prepared.profiles,
            samples: prepared.samples,
            rows: acc.take_rows(),
        })
    }
}

/// The folded-stack key of a build: `BUILD \t FOLDED`. Build ids never hold a tab (they are
/// sanitized), so the first tab splits the two.
pub fn stack_key(build: &str, folded: &str) -> String {
    format!("{build}\t{folded}")
}

/// Splits a [`stack_key`] into (build id, folded stack).
pub fn split_stack_key(key: &str) -> (&str, &str) {
    key.split_once('\t').unwrap_or(("", key))
}

/// The key of a line row: `FUNCTION \t CALLEE \t FILE \t LINE` (frame names never hold a tab
/// once sanitized, and file names are sanitized the same way).
pub fn line_key(function: &str, callee: &str, file: &str, line: u32) -> String {
    let mut key = format!("{function}\t{callee}\t{file}\t{line}");
    if key.matches('\t').count() != 3 || key.contains(['\n', '\r']) {
        let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
        key = format!(
            "{}\t{}\t{}\t{line}",
            clean(function),
            clean(callee),
            clean(file)
        );
    }
    key
}

/// Splits a [`line_key`] into (function, callee, file, line); `None` for a malformed key.
pub fn split_line_key(key: &str) -> Option<(&str, &str, &str, u32)> {
    let mut parts = key.splitn(4, '\t');
    let (f, c, file, line) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some((f, c, file, line.parse().ok()?))
}

/// Phase one of a rollup: everything that can fail, done without touching shared state. The
/// batch is summed into its own minute cells, keyed by indexes into its own string and stack
/// tables, so merging into an [`Accumulator`] cannot fail and is a few integer lookups per
/// cell. (The expansion of each sample into function rows happens here, in the caller's
/// thread, not in the accumulator that every batch goes through.)
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Frame names (function, `[module+offset]`, `_[k]` for kernel frames), services, build
    /// ids, the host id and "", one after another (one allocation, however many): name `i`
    /// ends at `name_ends[i]`. A name may repeat ([`Accumulator::merge`] interns them).
    names: String,
    name_ends: Vec<u32>,
    /// Stacks used by at least one sample: each the end of its frames in `stack_frames`.
    stack_ends: Vec<u32>,
    /// Every stack's frames, as indexes into `strings`, leaf first.
    stack_frames: Vec<u32>,
    /// Stack, service and build minute cells; a stack cell's key indexes the stacks, every
    /// other id indexes the names.
    cells: Vec<(CellKey, Flat)>,
    /// The host's sums per minute; the host id is name `host`.
    hosts: Vec<(i64, Totals)>,
    host: u32,
    /// Earliest minute, 0 for a batch without profiles.
    pub first_minute: i64,
    /// Interval profiles in the batch.
    pub profiles: u32,
    /// Samples in the batch.
    pub samples: u64,
}

/// Most bytes of frame names one batch may make up (`[module+offset]` for each distinct frame
/// without a symbol): a legitimate batch comes nowhere near, but a hostile one pointing a million
/// frames at one 64 KiB module name would otherwise make the collector build 64 GB of names.
const MAX_BUILT_NAME_BYTES: usize = 64 << 20;

/// Sanitized frame name: `;` separates frames and a newline ends a line in folded stacks.
/// Borrowed from the batch unless it had to be built (no symbol, sanitized, kernel frame).
fn frame_name<'a>(
    batch: &BatchView<'a>,
    i: usize,
    bad: &dyn Fn(String) -> StoreError,
) -> Result<Cow<'a, str>, StoreError> {
    let string = |idx: u32, what: &str| -> Result<&'a str, StoreError> {
        batch
            .strings
            .get(idx as usize)
            .copied()
            .ok_or_else(|| bad(format!("{what} string index {idx} out of range")))
    };
    let f = &batch.frames[i];
    let func = batch
        .functions
        .get(f.function_index as usize)
        .ok_or_else(|| bad(format!("frames[{i}].function_index out of range")))?;
    let mut name = Cow::Borrowed(string(func.name_index, "function name")?);
    if name.is_empty() {
        let module = string(f.module_index, "frame module")?;
        name = if module.is_empty() {
            Cow::Borrowed("[unknown]")
        } else {
            Cow::Owned(format!("[{module}+{:#x}]", f.file_offset))
        };
    }
    if name.contains([';', '\n', '\r']) {
        name = Cow::Owned(name.replace(';', ":").replace(['\n', '\r'], " "));
    }
    if f.kind == FrameKind::Kernel as i32 {
        name.to_mut().push_str("_[k]");
    }
    Ok(name)
}

impl Prepared {
    /// What storing this batch reports: [`super::Ingested::New`] with its counts.
    pub fn stored(&self) -> super::Ingested {
        super::Ingested::New {
            profiles: self.profiles,
            samples: self.samples,
        }
    }

    /// [`Prepared::from_view`] of an owned batch.
    pub fn from_batch(batch: &Batch) -> Result<Prepared, StoreError> {
        Prepared::from_view(&BatchView::of(batch))
    }

    /// Resolves and sums a batch. Indexes out of range and non-finite or negative energy are
    /// [`StoreError::InvalidBatch`] (the ingest server validates first; this never panics).
    pub fn from_view<'a>(batch: &BatchView<'a>) -> Result<Prepared, StoreError> {
        let bad = |why: String| StoreError::InvalidBatch {
            host: batch.host_id.to_string(),
            sequence: batch.sequence,
            why,
        };
        let string = |i: u32, what: &str| -> Result<&'a str, StoreError> {
            batch
                .strings
                .get(i as usize)
                .copied()
                .ok_or_else(|| bad(format!("{what} string index {i} out of range")))
        };
        let uj = |v: f64, what: &str| -> Result<u64, StoreError> {
            if v.is_finite() && v >= 0.0 {
                Ok(v.round() as u64)
            } else {
                Err(bad(format!("{what} microjoules {v} not finite and >= 0")))
            }
        };
        if batch.host_id.is_empty() {
            return Err(bad("empty host_id".into()));
        }
        // Ingest checks this at validation; replay of a journal written before it did must
        // not fold gigabytes either.
        crate::validate::check_expansion(batch, crate::validate::DEFAULT_MAX_EXPANDED_BYTES)
            .map_err(|e| bad(e.0))?;
        const UNSEEN: u32 = u32::MAX;
        // Batch index -> local index, filled on first use.
        let mut frame_at = vec![UNSEEN; batch.frames.len()];
        let mut stack_at = vec![UNSEEN; batch.stacks.len()];
        let mut proc_at = vec![UNSEEN; batch.processes.len()];
        // Not deduplicated here: the accumulator interns every name anyway.
        // Sized for the whole batch up front: growing them showed in profiles.
        let mut names: Vec<Cow<'a, str>> =
            Vec::with_capacity(batch.frames.len() + 2 * batch.processes.len() + 2);
        let mut stack_ends = Vec::with_capacity(batch.stacks.len());
        let mut stack_frames = Vec::with_capacity(batch.stack_frames.len());
        // Per stack, its located frames (name, callee name or NO_CALLEE, file, line), ending at
        // `line_ends`: empty, and free, for batches without debug info.
        let mut stack_lines: Vec<(u32, u32, u32, u32)> = Vec::new();
        let mut line_ends: Vec<u32> = Vec::with_capacity(batch.stacks.len());
        // Per string index: is that file, or that module, a library's; filled on first use.
        let mut file_class: Vec<u8> = Vec::new();
        let mut module_class: Vec<u8> = Vec::new();
        let mut built = 0usize;
        let mut procs = Vec::with_capacity(batch.processes.len());
        // (minute, process) per stack and minute per process: dense chains, not hash maps,
        // because the keys are already small local indexes.
        let mut cells = Chains::with_capacity(batch.stacks.len());
        let mut by_proc = Chains::with_capacity(batch.processes.len());
        let mut hosts: Vec<(i64, Totals)> = Vec::new();
        let mut first_minute = i64::MAX;
        let mut samples_total = 0u64;
        for (pi, prof) in batch.profiles.iter().enumerate() {
            let minute = (prof.start_unix_nanos / 1_000_000_000) as i64 / 60 * 60;
            if minute <= 0 {
                return Err(bad(format!("profiles[{pi}].start_unix_nanos is 0")));
            }
            first_minute = first_minute.min(minute);
            let estimated = prof.estimated || prof.energy_source == EnergySource::Model as i32;
            let split = |v: u64| if estimated { (0, v) } else { (v, 0) };
            let mut host = Totals {
                duration_ms: prof.duration_nanos / 1_000_000,
                dropped: prof.dropped_samples,
                ..Totals::default()
            };
            (host.idle_uj, host.est_idle_uj) = split(uj(prof.idle_microjoules, "idle")?);
            for (si, s) in batch.samples(prof).iter().enumerate() {
                let at =
                    |what: &str| bad(format!("profiles[{pi}].samples[{si}].{what} out of range"));
                let stack_slot = stack_at
                    .get_mut(s.stack_index as usize)
                    .ok_or_else(|| at("stack_index"))?;
                if *stack_slot == UNSEEN {
                    let st = batch.stack(s.stack_index as usize);
                    let first_line = stack_lines.len();
                    // The frame below (the one called), and whether it is the project's own
                    // code (located in a file that is not a library's).
                    let mut callee = NO_CALLEE;
                    let mut callee_own = false;
                    for &fi in st {
                        let slot = frame_at.get_mut(fi as usize).ok_or_else(|| {
                            bad(format!(
                                "stacks[{}] frame index {fi} out of range",
                                s.stack_index
                            ))
                        })?;
                        if *slot == UNSEEN {
                            let name = frame_name(batch, fi as usize, &bad)?;
                            if let Cow::Owned(n) = &name {
                                built += n.len();
                                if built > MAX_BUILT_NAME_BYTES {
                                    return Err(bad(format!(
                                        "frame names built from module and offset exceed {MAX_BUILT_NAME_BYTES} bytes"
                                    )));
                                }
                            }
                            *slot = names.len() as u32;
                            names.push(name);
                        }
                        stack_frames.push(*slot);
                        // Where this frame was, kept only at the boundary where the project's
                        // own code calls a library, libc or the kernel (the call site a patch
                        // edits) or runs itself (a leaf): a few per stack, not one per frame.
                        let f = &batch.frames[fi as usize];
                        let mut own = false;
                        if f.line > 0 {
                            let file = batch.functions[f.function_index as usize].file_index;
                            // Own: a file that is not a library's, in a module that is not
                            // a system library (distributions' libc has DWARF data whose
                            // paths are relative, `./io/../sysdeps/...`).
                            own = file != 0
                                && !classify(&mut file_class, file, batch.strings.len(), || {
                                    string(file, "function file").map(is_library_path)
                                })?
                                && !classify(
                                    &mut module_class,
                                    f.module_index,
                                    batch.strings.len(),
                                    || {
                                        string(f.module_index, "frame module")
                                            .map(is_library_module)
                                    },
                                )?;
                            let at = (*slot, callee, file, f.line);
                            if own && !callee_own && !stack_lines[first_line..].contains(&at) {
                                stack_lines.push(at);
                            }
                        }
                        callee = *slot;
                        callee_own = own;
                    }
                    *stack_slot = stack_ends.len() as u32;
                    stack_ends.push(stack_frames.len() as u32);
                    line_ends.push(stack_lines.len() as u32);
                }
                let stack = *stack_slot;
                let proc_slot = proc_at
                    .get_mut(s.process_index as usize)
                    .ok_or_else(|| at("process_index"))?;
                if *proc_slot == UNSEEN {
                    let p = &batch.processes[s.process_index as usize];
                    let mut service = string(p.service_index, "process service")?;
                    if service.is_empty() {
                        service = string(p.comm_index, "process comm")?;
                    }
                    if service.is_empty() {
                        service = "unknown";
                    }
                    let build = match batch.build_ids(p).first() {
                        Some(&b) => string(b, "process build id")?,
                        None => "",
                    };
                    *proc_slot = procs.len() as u32;
                    // A tab would split a stack key in the wrong place.
                    let build = if build.contains('\t') {
                        Cow::Owned(build.replace('\t', " "))
                    } else {
                        Cow::Borrowed(build)
                    };
                    procs.push((service, build));
                }
                let (m, e) = split(uj(s.microjoules, "sample")?);
                let flat = Flat {
                    samples: s.count,
                    uj: m,
                    est_uj: e,
                };
                samples_total = samples_total.saturating_add(s.count);
                host.add(&flat.totals());
                cells.add(stack, minute, *proc_slot, &flat);
                by_proc.add(*proc_slot, minute, 0, &flat);
            }
            match hosts.iter_mut().find(|(m, _)| *m == minute) {
                Some((_, t)) => t.add(&host),
                None => hosts.push((minute, host)),
            }
        }
        let mut intern = |s: Cow<'a, str>| -> u32 {
            names.push(s);
            names.len() as u32 - 1
        };
        let empty = intern(Cow::Borrowed(""));
        let host_id = intern(Cow::Borrowed(batch.host_id));
        let procs: Vec<(u32, u32)> = procs
            .into_iter()
            .map(|(s, b)| (intern(Cow::Borrowed(s)), intern(b)))
            .collect();
        // Stack, service and build keys are distinct without a map: every process has its own
        // service and build name ids (names are not deduplicated here), and each chain holds
        // a (minute, id) once. Line keys repeat across stacks; the accumulator sums them.
        let mut local: Vec<(CellKey, Flat)> =
            Vec::with_capacity(cells.cells.len() + 2 * by_proc.cells.len());
        // Function rows are not expanded here: the accumulator derives them from its summed
        // stack rows, once per distinct stack rather than once per sample of every batch.
        for &(stack_i, minute, proc_i, flat) in &cells.cells {
            let (svc, build) = procs[proc_i as usize];
            local.push(((Kind::Stack, minute, svc, stack_i, build), flat));
        }
        for &(proc_i, minute, _, flat) in &by_proc.cells {
            let (svc, build) = procs[proc_i as usize];
            local.push(((Kind::Service, minute, svc, host_id, empty), flat));
            local.push(((Kind::Build, minute, svc, build, empty), flat));
        }
        if !stack_lines.is_empty() {
            let keys = line_keys(batch, &names, &stack_lines, &line_ends, &cells.cells);
            let first = names.len() as u32;
            for key in keys.names {
                built += key.len();
                names.push(Cow::Owned(key));
            }
            if built > MAX_BUILT_NAME_BYTES {
                return Err(bad(format!(
                    "frame and line names built exceed {MAX_BUILT_NAME_BYTES} bytes"
                )));
            }
            for &(stack_i, minute, proc_i, flat) in &cells.cells {
                let svc = procs[proc_i as usize].0;
                let r = range_at(&line_ends, stack_i as usize);
                for &id in &keys.of_line[r] {
                    if id != NO_KEY {
                        local.push(((Kind::Line, minute, svc, first + id, empty), flat));
                    }
                }
            }
        }
        Ok(Prepared {
            name_ends: names
                .iter()
                .scan(0, |end, n| {
                    *end += n.len() as u32;
                    Some(*end)
                })
                .collect(),
            names: names.concat(),
            stack_ends,
            stack_frames,
            cells: local,
            hosts,
            host: host_id,
            first_minute: if first_minute == i64::MAX {
                0
            } else {
                first_minute
            },
            profiles: batch.profiles.len() as u32,
            samples: samples_total,
        })
    }
}

/// True for source files of the Rust standard library (`/rustc/HASH/library/...`), of crates
/// from a registry or git checkout (std's vendored ones under `/rust/deps/`), and of system
/// headers: code a project calls, not its own.
pub fn is_library_path(path: &str) -> bool {
    path.starts_with("/rustc/")
        || path.contains("/.cargo/registry/")
        || path.contains("/.cargo/git/")
        || path.starts_with("/rust/deps/")
        || path.contains("/rustlib/src/")
        || path.starts_with("/usr/include/")
        || path.starts_with("/usr/lib/")
        || path.starts_with("/usr/src/")
}

/// True for modules installed as system libraries (libc, libstdc++, ...), the vDSO and the
/// kernel: code a project calls, whatever paths its DWARF data names.
pub fn is_library_module(module: &str) -> bool {
    [
        "/usr/lib/",
        "/usr/lib64/",
        "/lib/",
        "/lib64/",
        "/usr/libexec/",
    ]
    .iter()
    .any(|dir| module.starts_with(dir))
        || module.starts_with('[')
}

/// Whether the string at `idx` is library code by `test` (run once per string index:
/// `cache`, of `len` entries, is allocated at the first call).
fn classify(
    cache: &mut Vec<u8>,
    idx: u32,
    len: usize,
    test: impl FnOnce() -> Result<bool, StoreError>,
) -> Result<bool, StoreError> {
    const UNCLASSIFIED: u8 = 2;
    if let Some(&c) = cache.get(idx as usize).filter(|&&c| c != UNCLASSIFIED) {
        return Ok(c == 1);
    }
    let library = test()?;
    if cache.is_empty() {
        *cache = vec![UNCLASSIFIED; len];
    }
    if let Some(c) = cache.get_mut(idx as usize) {
        *c = u8::from(library);
    }
    Ok(library)
}

/// No callee: the frame is the leaf, its samples ran on the line itself.
const NO_CALLEE: u32 = u32::MAX;
/// A located frame whose line row was dropped (past [`MAX_LINE_KEYS`]).
const NO_KEY: u32 = u32::MAX;
/// Most distinct line rows one batch keeps, those with most samples: a source location is
/// for naming a file:line, and a batch's hottest few thousand lines are where that is.
pub const MAX_LINE_KEYS: usize = 512;
/// Line rows (distinct (function, callee, file, line) of a batch) dropped past
/// [`MAX_LINE_KEYS`], since start.
pub static LINE_KEYS_DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The line keys of a batch: one name per distinct located frame kept, and for each entry
/// of the stacks' lines the index of its name (or [`NO_KEY`]).
struct LineKeys {
    names: Vec<String>,
    of_line: Vec<u32>,
}

/// The `[start, end)` entries of part `i` of a vector whose parts end at `ends`.
fn range_at(ends: &[u32], i: usize) -> std::ops::Range<usize> {
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    start..ends[i] as usize
}

/// Deduplicates the batch's located frames, keeps the [`MAX_LINE_KEYS`] with most samples
/// and builds their [`line_key`]s.
fn line_keys(
    batch: &BatchView<'_>,
    names: &[Cow<'_, str>],
    stack_lines: &[(u32, u32, u32, u32)],
    line_ends: &[u32],
    cells: &[(u32, i64, u32, Flat)],
) -> LineKeys {
    let mut ids: HashMap<(u32, u32, u32, u32), u32> = HashMap::default();
    let mut distinct: Vec<(u32, u32, u32, u32)> = Vec::new();
    let of_line: Vec<u32> = stack_lines
        .iter()
        .map(|&at| {
            *ids.entry(at).or_insert_with(|| {
                distinct.push(at);
                distinct.len() as u32 - 1
            })
        })
        .collect();
    let mut keep: Vec<u32> = (0..distinct.len() as u32).collect();
    if distinct.len() > MAX_LINE_KEYS {
        let mut samples = vec![0u64; distinct.len()];
        for &(stack_i, _, _, flat) in cells {
            for &id in &of_line[range_at(line_ends, stack_i as usize)] {
                samples[id as usize] += flat.samples;
            }
        }
        keep.select_nth_unstable_by(MAX_LINE_KEYS - 1, |a, b| {
            samples[*b as usize]
                .cmp(&samples[*a as usize])
                .then(a.cmp(b))
        });
        keep.truncate(MAX_LINE_KEYS);
        LINE_KEYS_DROPPED.fetch_add(
            (distinct.len() - MAX_LINE_KEYS) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    // Old id -> index of its name among the kept.
    let mut new_id = vec![NO_KEY; distinct.len()];
    let mut out = Vec::with_capacity(keep.len());
    for &id in &keep {
        let (name, callee, file, line) = distinct[id as usize];
        new_id[id as usize] = out.len() as u32;
        let callee = if callee == NO_CALLEE {
            ""
        } else {
            &names[callee as usize]
        };
        let file = batch.strings[file as usize];
        out.push(line_key(&names[name as usize], callee, file, line));
    }
    LineKeys {
        names: out,
        of_line: of_line.into_iter().map(|id| new_id[id as usize]).collect(),
    }
}

/// Self sums: all that stack, service and build cells hold. A third of [`Totals`]' size keeps
/// the prepared batches and the accumulator's map (hundreds of thousands of cells) in cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Flat {
    samples: u64,
    uj: u64,
    est_uj: u64,
}

impl Flat {
    /// Saturating, as [`Totals::add`].
    fn add(&mut self, o: &Flat) {
        self.samples = self.samples.saturating_add(o.samples);
        self.uj = self.uj.saturating_add(o.uj);
        self.est_uj = self.est_uj.saturating_add(o.est_uj);
    }

    fn totals(&self) -> Totals {
        Totals {
            samples_self: self.samples,
            uj_self: self.uj,
            est_uj_self: self.est_uj,
            ..Totals::default()
        }
    }
}

/// Sums keyed by (dense local index, minute, id): each index heads a chain of its cells,
/// almost always one long (a stack runs in one process, a batch spans one minute).
struct Chains {
    /// Per dense index, its first cell + 1 (0: none yet).
    heads: Vec<u32>,
    /// (index, minute, id, sums), and the next cell of the same index + 1.
    cells: Vec<(u32, i64, u32, Flat)>,
    next: Vec<u32>,
}

impl Chains {
    /// Room for `n` indexes with one cell each.
    fn with_capacity(n: usize) -> Chains {
        Chains {
            heads: vec![0; n],
            cells: Vec::with_capacity(n),
            next: Vec::with_capacity(n),
        }
    }

    fn add(&mut self, index: u32, minute: i64, id: u32, t: &Flat) {
        let i = index as usize;
        if i >= self.heads.len() {
            self.heads.resize(i + 1, 0);
        }
        let mut at = self.heads[i];
        while at != 0 {
            let cell = &mut self.cells[at as usize - 1];
            if cell.1 == minute && cell.2 == id {
                cell.3.add(t);
                return;
            }
            at = self.next[at as usize - 1];
        }
        self.cells.push((index, minute, id, *t));
        self.next.push(self.heads[i]);
        self.heads[i] = self.cells.len() as u32;
    }
}

/// The ranges of a flat vector whose parts end at `ends`.
fn ranges(ends: &[u32]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    ends.iter().scan(0, |start, &end| {
        let r = *start..end as usize;
        *start = end as usize;
        Some(r)
    })
}

/// Interned key of a minute row: (kind, minute, service, key, build for stack rows). The key
/// of a stack row is a stack id of [`Accumulator`]'s stacks, of other rows a name id.
type CellKey = (Kind, i64, u32, u32, u32);

/// Sums of many batches, keyed by interned strings and stacks so merging a batch is integer
/// work; rows with string keys are only built once, by [`Accumulator::rows`], however many
/// batches were merged. Function rows (self and inclusive) and hour rows are derived there
/// too, from the summed stack and minute cells: a fleet repeats the same stacks, so that is
/// far less work than expanding every sample of every batch.
#[derive(Debug, Default)]
pub struct Accumulator {
    names: Names,
    stacks: Stacks,
    cells: HashMap<CellKey, Flat>,
    /// (minute, host name id) -> the host's sums.
    hosts: HashMap<(i64, u32), Totals>,
    batches: u64,
    /// Scratch of [`Accumulator::rows`], kept between roll-ups so each reuses its memory
    /// rather than faulting in fresh pages (seen in profiles of the roll-up).
    functions: HashMap<CellKey, Totals>,
    hours: HashMap<CellKey, Totals>,
    ids: Vec<u32>,
    frames: Vec<u32>,
}

impl Accumulator {
    /// Adds a prepared batch; cannot fail.
    pub fn merge(&mut self, p: &Prepared) {
        self.batches += 1;
        let mut ids = std::mem::take(&mut self.ids);
        ids.clear();
        ids.extend(ranges(&p.name_ends).map(|r| self.names.id(&p.names[r])));
        let mut frames = std::mem::take(&mut self.frames);
        // Local stack index -> interned stack id, reusing the frame buffer's tail.
        let mut stacks = Vec::with_capacity(p.stack_ends.len());
        for r in ranges(&p.stack_ends) {
            frames.clear();
            frames.extend(p.stack_frames[r].iter().map(|&f| ids[f as usize]));
            stacks.push(self.stacks.id(&frames));
        }
        for &((kind, minute, s, k, b), ref t) in &p.cells {
            let key = if kind == Kind::Stack {
                stacks[k as usize]
            } else {
                ids[k as usize]
            };
            self.cells
                .entry((kind, minute, ids[s as usize], key, ids[b as usize]))
                .or_default()
                .add(t);
        }
        let host = ids[p.host as usize];
        for &(minute, ref t) in &p.hosts {
            self.hosts.entry((minute, host)).or_default().add(t);
        }
        self.ids = ids;
        self.frames = frames;
    }

    /// Batches merged since the last [`Accumulator::take_rows`].
    pub fn batches(&self) -> u64 {
        self.batches
    }

    /// Minute rows held (hour rows are derived from them).
    pub fn len(&self) -> usize {
        self.cells.len() + self.hosts.len()
    }

    /// True when nothing was merged.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty() && self.hosts.is_empty()
    }

    /// The rows to write, minute rows then hour rows, each sorted by (kind, minute, service,
    /// key) so identical input produces identical writes. Hour rows sum the minute rows
    /// before `hours_before` only (a store that adds later minutes to their hours itself
    /// passes its watermark; see `sqlite_hours`). What was merged is unchanged:
    /// [`Accumulator::clear`] it once the rows are durable.
    pub fn rows(&mut self, hours_before: i64) -> Vec<Row> {
        let empty = self.names.find("").unwrap_or(0);
        let (functions, hours) = (&mut self.functions, &mut self.hours);
        functions.clear();
        hours.clear();
        // Merged cells are minute rows as they are; function rows are derived from stack
        // cells. Every minute row before `hours_before` also adds to its hour.
        let hour = |(kind, minute, s, k, b): CellKey| (kind, hour_of(minute), s, k, b);
        let host_key = |(minute, host): (i64, u32)| (Kind::Host, minute, empty, host, empty);
        let to_hours = |(_, minute, ..): CellKey| minute < hours_before;
        for (&key, flat) in &self.cells {
            if to_hours(key) {
                hours.entry(hour(key)).or_default().add(&flat.totals());
            }
            let (kind, minute, svc, k, _) = key;
            if kind != Kind::Stack {
                continue;
            }
            let leaf = self.stacks.frames(k).first().copied();
            for &f in self.stacks.distinct(k) {
                let mut ft = Totals {
                    samples_incl: flat.samples,
                    uj_incl: flat.uj,
                    est_uj_incl: flat.est_uj,
                    ..Totals::default()
                };
                if leaf == Some(f) {
                    ft.samples_self = flat.samples;
                    ft.uj_self = flat.uj;
                    ft.est_uj_self = flat.est_uj;
                }
                functions
                    .entry((Kind::Function, minute, svc, f, empty))
                    .or_default()
                    .add(&ft);
            }
        }
        for (&key, t) in functions.iter().filter(|(k, _)| to_hours(**k)) {
            hours.entry(hour(key)).or_default().add(t);
        }
        for (&at, t) in &self.hosts {
            if to_hours(host_key(at)) {
                hours.entry(hour(host_key(at))).or_default().add(t);
            }
        }
        let folded: Vec<String> = (0..self.stacks.len() as u32)
            .map(|id| {
                let frames = self.stacks.frames(id);
                if frames.is_empty() {
                    return "[no frames]".to_string();
                }
                let parts: Vec<&str> = frames.iter().rev().map(|&i| self.names.get(i)).collect();
                parts.join(";")
            })
            .collect();
        let names = &self.names;
        let row = |res: u8, (kind, minute, s, k, b): CellKey, totals: Totals| Row {
            kind,
            res,
            minute,
            service: names.get(s).to_string(),
            key: if kind == Kind::Stack {
                stack_key(names.get(b), &folded[k as usize])
            } else {
                names.get(k).to_string()
            },
            totals,
        };
        let sorted = |mut part: Vec<Row>| {
            part.sort_by(|a, b| {
                (a.kind, a.minute, &a.service, &a.key).cmp(&(b.kind, b.minute, &b.service, &b.key))
            });
            part
        };
        let minutes = self
            .cells
            .iter()
            .map(|(&k, f)| row(RES_MINUTE, k, f.totals()))
            .chain(functions.iter().map(|(&k, &t)| row(RES_MINUTE, k, t)))
            .chain(
                self.hosts
                    .iter()
                    .map(|(&at, &t)| row(RES_MINUTE, host_key(at), t)),
            );
        let mut rows = sorted(minutes.collect());
        rows.extend(sorted(
            hours.iter().map(|(&k, &t)| row(RES_HOUR, k, t)).collect(),
        ));
        rows
    }

    /// Forgets everything merged, keeping the memory for the next window.
    pub fn clear(&mut self) {
        self.cells.clear();
        self.hosts.clear();
        self.names.clear();
        self.stacks.clear();
        self.functions.clear();
        self.hours.clear();
        self.batches = 0;
    }

    /// [`Accumulator::rows`] with every hour row, then [`Accumulator::clear`].
    pub fn take_rows(&mut self) -> Vec<Row> {
        let rows = self.rows(i64::MAX);
        self.clear();
        rows
    }
}

/// Start of the hour of `minute` (Unix seconds).
pub fn hour_of(minute: i64) -> i64 {
    minute.div_euclid(3600) * 3600
}

/// Hour rows summing the minute rows of `rows` before `before` (for a store that adds later
/// minutes to their hours itself, given rows from [`Rollup::from_batch`]).
pub fn hour_rows(rows: &[Row], before: i64) -> Vec<Row> {
    let mut hours: std::collections::BTreeMap<(Kind, i64, &str, &str), Totals> = Default::default();
    for r in rows
        .iter()
        .filter(|r| r.res == RES_MINUTE && r.minute < before)
    {
        hours
            .entry((r.kind, hour_of(r.minute), &r.service, &r.key))
            .or_default()
            .add(&r.totals);
    }
    hours
        .into_iter()
        .map(|((kind, minute, service, key), totals)| Row {
            kind,
            res: RES_HOUR,
            minute,
            service: service.to_string(),
            key: key.to_string(),
            totals,
        })
        .collect()
}

/// Detection's five-minute rows summing the minute rows of functions and services in `rows`
/// (other kinds and resolutions are left out), sorted by (kind, bucket, service, key).
pub fn detect_rows(rows: &[Row]) -> Vec<Row> {
    let mut buckets: std::collections::BTreeMap<(Kind, i64, &str, &str), Totals> =
        Default::default();
    for r in rows
        .iter()
        .filter(|r| r.res == RES_MINUTE && matches!(r.kind, Kind::Function | Kind::Service))
    {
        buckets
            .entry((
                r.kind,
                r.minute.div_euclid(DETECT_STEP) * DETECT_STEP,
                &r.service,
                &r.key,
            ))
            .or_default()
            .add(&r.totals);
    }
    buckets
        .into_iter()
        .map(|((kind, minute, service, key), totals)| Row {
            kind,
            res: RES_DETECT,
            minute,
            service: service.to_string(),
            key: key.to_string(),
            totals,
        })
        .collect()
}

/// What detection reads of a row: (samples, measured µJ, estimated µJ), inclusive for a
/// function, all of the service's for a service row.
pub fn detect_sums(kind: Kind, t: &Totals) -> [u64; 3] {
    match kind {
        Kind::Function => [t.samples_incl, t.uj_incl, t.est_uj_incl],
        _ => [t.samples_self, t.uj_self, t.est_uj_self],
    }
}

/// How a minute-aligned window splits into whole hours (read from hour rows) and ragged edges
/// (read from minute rows): `(hour_from, hour_to)`; minute rows cover `[from, hour_from)` and
/// `[hour_to, to)`. When no whole hour fits, `hour_from == hour_to == to`.
pub fn split_hours(from: i64, to: i64) -> (i64, i64) {
    let h0 = (from + 3599).div_euclid(3600) * 3600;
    let h1 = hour_of(to);
    if h0 < h1 { (h0, h1) } else { (to, to) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::synthetic::BatchBuilder;

    #[test]
    fn frame_names_cannot_break_folded_lines() {
        let mut b = BatchBuilder::new("h", 1)
            .interval(600, 10, false, 0.0, &[("svc", "", "main;evil", 2, 0.0)])
            .build();
        let i = b.strings.iter().position(|s| s == "evil").unwrap();
        b.strings[i] = "a;b\nc".into();
        b.stacks.push(wattson_proto::v1::Stack::default());
        let mut s = b.profiles[0].samples[0];
        s.stack_index = 1;
        b.profiles[0].samples.push(s);
        let r = Rollup::from_batch(&b).unwrap();
        let stacks: Vec<&str> = r
            .rows
            .iter()
            .filter(|r| r.kind == Kind::Stack && r.res == RES_MINUTE)
            .map(|r| split_stack_key(&r.key).1)
            .collect();
        assert_eq!(stacks, ["[no frames]", "main;a:b c"]);
    }

    #[test]
    fn a_stack_in_two_processes_and_two_minutes_sums_per_cell() {
        // One stack in two services over two minutes (chains longer than one), and a
        // second stack: every (minute, service) cell has its own sums.
        let b = BatchBuilder::new("h", 1)
            .interval(
                600,
                10,
                false,
                0.0,
                &[
                    ("a", "", "main;f", 2, 20.0),
                    ("b", "", "main;f", 3, 30.0),
                    ("a", "", "main;f", 1, 10.0),
                ],
            )
            .interval(
                660,
                10,
                false,
                0.0,
                &[("b", "", "main;f", 5, 50.0), ("a", "", "main;g", 7, 70.0)],
            )
            .build();
        let r = Rollup::from_batch(&b).unwrap();
        let got = |kind: Kind, minute: i64, service: &str, key: &str| {
            r.rows
                .iter()
                .find(|r| {
                    r.kind == kind
                        && r.res == RES_MINUTE
                        && r.minute == minute
                        && r.service == service
                        && split_stack_key(&r.key).1 == key
                })
                .map(|r| (r.totals.samples_self, r.totals.uj_self))
        };
        assert_eq!(got(Kind::Stack, 600, "a", "main;f"), Some((3, 30)));
        assert_eq!(got(Kind::Stack, 600, "b", "main;f"), Some((3, 30)));
        assert_eq!(got(Kind::Stack, 660, "b", "main;f"), Some((5, 50)));
        assert_eq!(got(Kind::Stack, 660, "a", "main;g"), Some((7, 70)));
        assert_eq!(got(Kind::Stack, 660, "a", "main;f"), None);
        assert_eq!(got(Kind::Service, 600, "a", "h"), Some((3, 30)));
        assert_eq!(got(Kind::Service, 660, "a", "h"), Some((7, 70)));
        assert_eq!(got(Kind::Service, 660, "b", "h"), Some((5, 50)));
        assert_eq!(got(Kind::Build, 600, "b", ""), Some((3, 30)));
        assert_eq!(got(Kind::Host, 600, "", "h"), Some((6, 60)));
        assert_eq!(got(Kind::Host, 660, "", "h"), Some((12, 120)));
        assert_eq!(r.samples, 18);
    }

    #[test]
    fn line_rows_keep_the_hottest_of_a_batch() {
        // MAX_LINE_KEYS + 10 located leaves, leaf i with i + 1 samples: the 10 coldest go.
        let stacks: Vec<String> = (0..MAX_LINE_KEYS + 10)
            .map(|i| format!("main;f{i}@x.rs:{}", i + 1))
            .collect();
        let samples: Vec<(&str, &str, &str, u64, f64)> = stacks
            .iter()
            .enumerate()
            .map(|(i, s)| ("svc", "", s.as_str(), i as u64 + 1, 0.0))
            .collect();
        let b = BatchBuilder::new("h", 1)
            .interval(600, 10, false, 0.0, &samples)
            .build();
        let dropped = LINE_KEYS_DROPPED.load(std::sync::atomic::Ordering::Relaxed);
        let r = Rollup::from_batch(&b).unwrap();
        let lines: Vec<(&str, u64)> = r
            .rows
            .iter()
            .filter(|r| r.kind == Kind::Line && r.res == RES_MINUTE)
            .map(|r| (split_line_key(&r.key).unwrap().0, r.totals.samples_self))
            .collect();
        assert_eq!(lines.len(), MAX_LINE_KEYS);
        assert!(
            lines.iter().all(|&(_, n)| n > 10),
            "the coldest were dropped"
        );
        assert!(lines.contains(&("f10", 11)));
        assert!(
            LINE_KEYS_DROPPED.load(std::sync::atomic::Ordering::Relaxed) >= dropped + 10,
            "drops are counted"
        );
        // Functions and stacks keep every sample.
        let stacks = r
            .rows
            .iter()
            .filter(|r| r.kind == Kind::Stack && r.res == RES_MINUTE);
        assert_eq!(stacks.count(), MAX_LINE_KEYS + 10);
    }

    #[test]
    fn a_call_into_a_system_library_with_debug_info_is_the_call_site() {
        // Debian's libc carries DWARF lines with relative paths: its module says it is not
        // the project's own, so the row is the project's call into it.
        let stack = "main@/src/app.c:23;emit@/src/app.c:14;__GI___libc_write@./io/write.c:26";
        let mut b = BatchBuilder::new("h", 1)
            .interval(600, 10, false, 0.0, &[("svc", "", stack, 5, 0.0)])
            .build();
        b.strings.push("/usr/lib/x86_64-linux-gnu/libc.so.6".into());
        let libc = b.strings.len() as u32 - 1;
        let leaf = b.stacks[0].frame_indices[0] as usize;
        b.frames[leaf].module_index = libc;
        let r = Rollup::from_batch(&b).unwrap();
        let lines: Vec<(&str, &str, u32)> = r
            .rows
            .iter()
            .filter(|r| r.kind == Kind::Line && r.res == RES_MINUTE)
            .map(|r| {
                let (f, callee, _, line) = split_line_key(&r.key).unwrap();
                (f, callee, line)
            })
            .collect();
        assert_eq!(lines, [("emit", "__GI___libc_write", 14)]);
    }

    #[test]
    fn made_up_frame_names_are_bounded() {
        // 1,100 symbol-less frames of one 64 KiB module: 70 MB of `[module+offset]` names.
        let mut b = BatchBuilder::new("h", 1)
            .interval(600, 10, false, 0.0, &[("svc", "", "main", 1, 0.0)])
            .build();
        b.strings.push("m".repeat(64 << 10));
        let module_index = b.strings.len() as u32 - 1;
        b.functions.push(wattson_proto::v1::Function::default());
        let function_index = b.functions.len() as u32 - 1;
        let first = b.frames.len() as u32;
        for offset in 0..1100 {
            b.frames.push(wattson_proto::v1::Frame {
                function_index,
                module_index,
                file_offset: offset,
                ..Default::default()
            });
        }
        b.stacks[0].frame_indices = (first..first + 1100).collect();
        let err = Prepared::from_batch(&b).unwrap_err().to_string();
        assert!(
            err.contains("frame names built from module and offset exceed"),
            "{err}"
        );
        // A few such frames are fine.
        b.stacks[0].frame_indices.truncate(10);
        let p = Prepared::from_batch(&b).unwrap();
        assert_eq!(p.samples, 1);
    }
}

#[cfg(test)]
mod cost {
    use super::*;
    use wattson_proto::synthetic::{self, Shape};

    /// Rough cost of line rows: the bench's batches rolled up with and without their lines.
    /// `cargo test -p wattson-collector --release --lib line_row_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn line_row_cost() {
        let shape = Shape {
            stack_pool: 3000,
            ..Shape::default()
        };
        let with: Vec<Batch> = (0..64)
            .map(|i| {
                synthetic::batch(
                    &format!("h{i}"),
                    1,
                    1_800_000_000_000_000_000,
                    &shape,
                    i + 1,
                )
            })
            .collect();
        let without: Vec<Batch> = with
            .iter()
            .cloned()
            .map(|mut b| {
                b.frames.iter_mut().for_each(|f| f.line = 0);
                b
            })
            .collect();
        for (name, batches) in [
            ("without lines", &without),
            ("with lines", &with),
            ("without lines", &without),
            ("with lines", &with),
        ] {
            let t = std::time::Instant::now();
            let mut prepare = std::time::Duration::ZERO;
            let mut rows = 0;
            for _ in 0..5 {
                let mut acc = Accumulator::default();
                let p0 = std::time::Instant::now();
                let prepared: Vec<Prepared> = batches
                    .iter()
                    .map(|b| Prepared::from_batch(b).unwrap())
                    .collect();
                prepare += p0.elapsed();
                for p in &prepared {
                    acc.merge(p);
                }
                rows = acc.take_rows().len();
            }
            eprintln!(
                "{name}: {:?} total, {:?} preparing, {rows} rows",
                t.elapsed(),
                prepare
            );
        }
    }
}
