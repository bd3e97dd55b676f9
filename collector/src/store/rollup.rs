//! Rolling a wire [`Batch`] up into store rows: per minute and per hour, sums of samples and
//! microjoules per (service, function) self and inclusive, per (service, host), per host, per
//! (service, build id) and per (service, folded stack). Both backends write exactly these rows,
//! so what a query returns does not depend on the backend.

use std::collections::HashMap;

use wattson_proto::v1::{Batch, EnergySource, FrameKind};

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
            _ => return None,
        })
    }
}

/// Resolution code of minute rows.
pub const RES_MINUTE: u8 = 0;
/// Resolution code of hour rows.
pub const RES_HOUR: u8 = 1;

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
    /// Host id of the batch (dedup key, with `sequence`).
    pub host: String,
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

type RowKey = (Kind, i64, String, String);

impl Rollup {
    /// Rolls a batch up. Indexes out of range and non-finite or negative energy are
    /// [`StoreError::InvalidBatch`] (the ingest server validates first; this never panics).
    pub fn from_batch(batch: &Batch) -> Result<Rollup, StoreError> {
        let bad = |why: String| StoreError::InvalidBatch {
            host: batch.host_id.clone(),
            sequence: batch.sequence,
            why,
        };
        let string = |i: u32, what: &str| -> Result<&str, StoreError> {
            batch
                .strings
                .get(i as usize)
                .map(String::as_str)
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

        // Frame names once per batch: "function" or "function_[k]" for kernel frames.
        let mut frame_names = Vec::with_capacity(batch.frames.len());
        for (i, f) in batch.frames.iter().enumerate() {
            let func = batch
                .functions
                .get(f.function_index as usize)
                .ok_or_else(|| bad(format!("frames[{i}].function_index out of range")))?;
            let mut name = string(func.name_index, "function name")?.to_string();
            if name.is_empty() {
                let module = string(f.module_index, "frame module")?;
                name = if module.is_empty() {
                    "[unknown]".into()
                } else {
                    format!("[{module}+{:#x}]", f.file_offset)
                };
            }
            // `;` separates frames and a newline ends a line in folded stacks.
            if name.contains([';', '\n', '\r']) {
                name = name.replace(';', ":").replace(['\n', '\r'], " ");
            }
            if f.kind == FrameKind::Kernel as i32 {
                name.push_str("_[k]");
            }
            frame_names.push(name);
        }
        // Per stack: folded text (root first), leaf name, distinct names.
        let mut stacks = Vec::with_capacity(batch.stacks.len());
        for (i, s) in batch.stacks.iter().enumerate() {
            let mut names = Vec::with_capacity(s.frame_indices.len());
            for &fi in &s.frame_indices {
                names.push(
                    frame_names
                        .get(fi as usize)
                        .ok_or_else(|| bad(format!("stacks[{i}] frame index {fi} out of range")))?
                        .as_str(),
                );
            }
            let folded = if names.is_empty() {
                "[no frames]".to_string()
            } else {
                names.iter().rev().copied().collect::<Vec<_>>().join(";")
            };
            let leaf = names.first().map(|s| s.to_string()).unwrap_or_default();
            let mut distinct: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            distinct.sort();
            distinct.dedup();
            stacks.push((folded, leaf, distinct));
        }
        let mut procs = Vec::with_capacity(batch.processes.len());
        for p in &batch.processes {
            let mut service = string(p.service_index, "process service")?;
            if service.is_empty() {
                service = string(p.comm_index, "process comm")?;
            }
            let service = if service.is_empty() {
                "unknown"
            } else {
                service
            };
            let build = match p.build_id_indices.first() {
                Some(&b) => string(b, "process build id")?,
                None => "",
            };
            procs.push((service.to_string(), build.to_string()));
        }

        let mut minute_rows: HashMap<RowKey, Totals> = HashMap::new();
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
            for (si, s) in prof.samples.iter().enumerate() {
                let (folded, leaf, distinct) =
                    stacks.get(s.stack_index as usize).ok_or_else(|| {
                        bad(format!(
                            "profiles[{pi}].samples[{si}].stack_index out of range"
                        ))
                    })?;
                let (service, build) = procs.get(s.process_index as usize).ok_or_else(|| {
                    bad(format!(
                        "profiles[{pi}].samples[{si}].process_index out of range"
                    ))
                })?;
                let (m, e) = split(uj(s.microjoules, "sample")?);
                let flat = Totals {
                    samples_self: s.count,
                    uj_self: m,
                    est_uj_self: e,
                    ..Totals::default()
                };
                samples_total += s.count;
                host.add(&flat);
                let mut add = |kind: Kind, service: &str, key: &str, t: &Totals| {
                    minute_rows
                        .entry((kind, minute, service.to_string(), key.to_string()))
                        .or_default()
                        .add(t);
                };
                add(Kind::Service, service, &batch.host_id, &flat);
                add(Kind::Build, service, build, &flat);
                add(Kind::Stack, service, folded, &flat);
                for f in distinct {
                    let mut t = Totals {
                        samples_incl: s.count,
                        uj_incl: m,
                        est_uj_incl: e,
                        ..Totals::default()
                    };
                    if f == leaf {
                        t.samples_self = s.count;
                        t.uj_self = m;
                        t.est_uj_self = e;
                    }
                    add(Kind::Function, service, f, &t);
                }
            }
            minute_rows
                .entry((Kind::Host, minute, String::new(), batch.host_id.clone()))
                .or_default()
                .add(&host);
        }

        let mut hour_rows: HashMap<RowKey, Totals> = HashMap::new();
        for ((kind, minute, service, key), t) in &minute_rows {
            hour_rows
                .entry((*kind, minute / 3600 * 3600, service.clone(), key.clone()))
                .or_default()
                .add(t);
        }
        let mut rows = Vec::with_capacity(minute_rows.len() + hour_rows.len());
        for (res, map) in [(RES_MINUTE, minute_rows), (RES_HOUR, hour_rows)] {
            let mut part: Vec<Row> = map
                .into_iter()
                .map(|((kind, minute, service, key), totals)| Row {
                    kind,
                    res,
                    minute,
                    service,
                    key,
                    totals,
                })
                .collect();
            // Deterministic order: identical batches produce identical writes.
            part.sort_by(|a, b| {
                (a.kind, a.minute, &a.service, &a.key).cmp(&(b.kind, b.minute, &b.service, &b.key))
            });
            rows.extend(part);
        }
        Ok(Rollup {
            host: batch.host_id.clone(),
            sequence: batch.sequence,
            first_minute: if first_minute == i64::MAX {
                0
            } else {
                first_minute
            },
            profiles: batch.profiles.len() as u32,
            samples: samples_total,
            rows,
        })
    }
}

/// How a minute-aligned window splits into whole hours (read from hour rows) and ragged edges
/// (read from minute rows): `(hour_from, hour_to)`; minute rows cover `[from, hour_from)` and
/// `[hour_to, to)`. When no whole hour fits, `hour_from == hour_to == to`.
pub fn split_hours(from: i64, to: i64) -> (i64, i64) {
    let h0 = (from + 3599).div_euclid(3600) * 3600;
    let h1 = to.div_euclid(3600) * 3600;
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
            .map(|r| r.key.as_str())
            .collect();
        assert_eq!(stacks, ["[no frames]", "main;a:b c"]);
    }
}
