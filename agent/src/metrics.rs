//! Prometheus text exposition (format 0.0.4) of `wattson-agent run` on `GET /metrics`
//! (`--metrics-listen`), as Kepler and Scaphandre users expect: what the sampler took and
//! dropped, intervals and batches built, what the shipper did, the spool's size and losses, the
//! energy source, and the energy read, with measured and estimated joules in separate counters
//! so no query can add one to the other.
//!
//! [`RunMetrics`] holds what only the daemon's loop knows (it records into it); the shipper's
//! [`ShipStats`] and the [`Spool`] are read as they are at scrape time. The text format and
//! the HTTP responder are [`wattson_proto::exposition`], shared with the collector.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use wattson_proto::exposition::{self, Kind, Text};

use crate::energy::IntervalEnergy;
use crate::profile::{DropReason, Profile};
use crate::sampler::Counters;
use crate::ship::ShipStats;
use crate::ship::spool::Spool;

pub use wattson_proto::exposition::{BindError, bind};

/// Counters only the daemon's loop can keep.
#[derive(Debug)]
pub struct RunMetrics {
    source: &'static str,
    source_estimated: bool,
    /// The sampler's totals since it was loaded, as last read.
    sampler: Mutex<Counters>,
    stack_missing: AtomicU64,
    unread: AtomicU64,
    leaf_fixups: AtomicU64,
    leaf_fixups_failed: AtomicU64,
    intervals: AtomicU64,
    batches_spooled: AtomicU64,
    strings_truncated: AtomicU64,
    measured_uj: AtomicU64,
    estimated_uj: AtomicU64,
}

impl RunMetrics {
    /// Metrics of a daemon reading energy from `source` (`perf`, `powercap`, `msr`, `model`,
    /// or `none`); `estimated` when that source estimates rather than measures.
    pub fn new(source: &'static str, estimated: bool) -> Self {
        Self {
            source,
            source_estimated: estimated,
            sampler: Mutex::new(Counters::default()),
            stack_missing: AtomicU64::new(0),
            unread: AtomicU64::new(0),
            leaf_fixups: AtomicU64::new(0),
            leaf_fixups_failed: AtomicU64::new(0),
            intervals: AtomicU64::new(0),
            batches_spooled: AtomicU64::new(0),
            strings_truncated: AtomicU64::new(0),
            measured_uj: AtomicU64::new(0),
            estimated_uj: AtomicU64::new(0),
        }
    }

    /// Records the sampler's counters (totals since load, summed over CPUs).
    pub fn record_sampler(&self, counters: Counters) {
        *self.sampler.lock().unwrap_or_else(|p| p.into_inner()) = counters;
    }

    /// Records one closed interval: its losses that the sampler's counters do not hold, and
    /// its energy, per package into the measured or the estimated total (a package whose
    /// counters failed is estimated by the model for that interval).
    pub fn record_interval(&self, profile: &Profile, energy: Option<&IntervalEnergy>) {
        self.intervals.fetch_add(1, Ordering::Relaxed);
        let dropped = |r| profile.stats.dropped.get(&r).copied().unwrap_or(0);
        self.stack_missing
            .fetch_add(dropped(DropReason::StackMissing), Ordering::Relaxed);
        self.unread
            .fetch_add(dropped(DropReason::Unread), Ordering::Relaxed);
        self.leaf_fixups
            .fetch_add(profile.stats.leaf_fixups, Ordering::Relaxed);
        self.leaf_fixups_failed
            .fetch_add(profile.stats.leaf_fixups_failed, Ordering::Relaxed);
        for p in energy.iter().flat_map(|e| &e.packages) {
            let total = if p.estimated {
                &self.estimated_uj
            } else {
                &self.measured_uj
            };
            total.fetch_add(p.interval_uj, Ordering::Relaxed);
        }
    }

    /// Records a batch written to the spool, and the strings cut to fit in it.
    pub fn record_spooled(&self, strings_truncated: u64) {
        self.batches_spooled.fetch_add(1, Ordering::Relaxed);
        self.strings_truncated
            .fetch_add(strings_truncated, Ordering::Relaxed);
    }
}

/// Everything one scrape reads.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The daemon's own counters.
    pub run: Arc<RunMetrics>,
    /// The shipper's counters.
    pub ship: Arc<ShipStats>,
    /// The spool, for its size and persisted losses.
    pub spool: Arc<Mutex<Spool>>,
}

/// Renders the exposition text.
pub fn render(s: &Sources) -> String {
    let run = &s.run;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let c = *run.sampler.lock().unwrap_or_else(|p| p.into_inner());
    let (spool_bytes, spool_batches, lost) = {
        let spool = s.spool.lock().unwrap_or_else(|p| p.into_inner());
        (spool.bytes(), spool.len() as u64, spool.losses())
    };
    let (rejected_bytes, unreadable) = {
        let spool = s.spool.lock().unwrap_or_else(|p| p.into_inner());
        (spool.rejected_bytes(), spool.unreadable())
    };
    let mut t = Text::new();
    t.family(
        "wattson_agent_samples_total",
        Kind::Counter,
        "Stack samples the BPF sampler took on all CPUs since the agent started, dropped ones included.",
    )
    .sample(&[], c.samples);
    let mut dropped = t.family(
        "wattson_agent_samples_dropped_total",
        Kind::Counter,
        "Samples lost or degraded, by reason: map_full, stack_missing and unread are lost; \
         user_stack_error and kernel_stack_error are kept without that stack; ringbuf_full lost \
         a new-process announcement (metadata read late or not at all); filtered were skipped on purpose.",
    );
    for (reason, value) in [
        ("map_full", c.map_full),
        ("stack_missing", get(&run.stack_missing)),
        ("unread", get(&run.unread)),
        ("user_stack_error", c.user_stack_errors),
        ("kernel_stack_error", c.kernel_stack_errors),
        ("ringbuf_full", c.ringbuf_full),
        ("filtered", c.filtered),
    ] {
        dropped.sample(&[("reason", &reason)], value);
    }
    t.family(
        "wattson_agent_leaf_fixups_total",
        Kind::Counter,
        "Samples whose leaf function had no frame pointer set up (the frame-pointer walk skips its \
         caller), by result: made (caller recovered with the leaf's .eh_frame rule), failed (not \
         recovered), no_words (stack words not captured: kernel-mode samples before Linux 5.15).",
    )
    .sample(&[("result", &"made")], get(&run.leaf_fixups))
    .sample(&[("result", &"failed")], get(&run.leaf_fixups_failed))
    .sample(&[("result", &"no_words")], c.leaf_words_missing);
    t.family(
        "wattson_agent_intervals_total",
        Kind::Counter,
        "Interval profiles built (symbolized and charged their energy).",
    )
    .sample(&[], get(&run.intervals));
    t.family(
        "wattson_agent_batches_spooled_total",
        Kind::Counter,
        "Batches written to the on-disk spool.",
    )
    .sample(&[], get(&run.batches_spooled));
    t.family(
        "wattson_agent_strings_truncated_total",
        Kind::Counter,
        "Strings (command lines, symbols, paths) cut to 8 KiB with a \"…[truncated]\" marker so \
         the collector accepts the batch.",
    )
    .sample(&[], get(&run.strings_truncated));
    t.family(
        "wattson_agent_batches_shipped_total",
        Kind::Counter,
        "Batches that left the spool after a send, by the collector's answer: stored, \
         duplicate (it had the batch already), rejected (invalid; moved to rejected/ and counted as lost).",
    )
    .sample(&[("result", &"stored")], get(&s.ship.sent))
    .sample(&[("result", &"duplicate")], get(&s.ship.duplicates))
    .sample(&[("result", &"rejected")], get(&s.ship.rejected));
    t.family(
        "wattson_agent_ship_retries_total",
        Kind::Counter,
        "Sends that failed and will be retried (collector unreachable, overloaded or timed out).",
    )
    .sample(&[], get(&s.ship.retries));
    t.family(
        "wattson_agent_ship_refused_total",
        Kind::Counter,
        "Sends the collector refused because it does not accept this agent (bad token, or a \
         host id the client certificate does not name); the batches stay spooled. Alert on it.",
    )
    .sample(&[], get(&s.ship.refused));
    t.family(
        "wattson_agent_spool_bytes",
        Kind::Gauge,
        "Bytes of the batches waiting in the spool (compressed, as on disk).",
    )
    .sample(&[], spool_bytes);
    t.family(
        "wattson_agent_spool_batches",
        Kind::Gauge,
        "Batches waiting in the spool.",
    )
    .sample(&[], spool_batches);
    t.family(
        "wattson_agent_spool_rejected_bytes",
        Kind::Gauge,
        "Bytes of refused batches kept in rejected/ for inspection (within --spool-max-bytes; \
         the first to go when it is reached).",
    )
    .sample(&[], rejected_bytes);
    t.family(
        "wattson_agent_spool_unreadable_total",
        Kind::Counter,
        "Spooled batch files skipped because they vanished or could not be read (EIO); their \
         batches are counted in wattson_agent_spool_lost_*.",
    )
    .sample(&[], unreadable);
    for (what, help, value) in [
        ("batches", "Batches", lost.spool_dropped_batches),
        ("intervals", "Intervals", lost.spool_dropped_intervals),
        ("samples", "Samples", lost.spool_dropped_samples),
    ] {
        t.family(
            &format!("wattson_agent_spool_lost_{what}_total"),
            Kind::Counter,
            &format!(
                "{help} lost from the spool since it was created (dropped when full or when the \
                 disk refused them, or rejected by the collector); persisted across restarts."
            ),
        )
        .sample(&[], value);
    }
    t.family(
        "wattson_agent_energy_source",
        Kind::Gauge,
        "The energy source the agent reads (always 1); estimated=\"true\" when it is the model.",
    )
    .sample(
        &[
            ("source", &run.source),
            ("estimated", &run.source_estimated),
        ],
        1u64,
    );
    t.family(
        "wattson_agent_measured_energy_microjoules_total",
        Kind::Counter,
        "Energy of the CPU packages and DRAM read from hardware counters (RAPL), microjoules.",
    )
    .sample(&[], get(&run.measured_uj));
    t.family(
        "wattson_agent_estimated_energy_microjoules_total",
        Kind::Counter,
        "Energy of the CPU packages and DRAM estimated by the utilization model (no counters, or \
         a counter fault), microjoules. Never add it to the measured total.",
    )
    .sample(&[], get(&run.estimated_uj));
    t.finish()
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, sources: Sources) {
    // Rendered off the async workers: the spool lock can be held through a batch's fsync.
    exposition::serve(listener, move || render(&sources)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energy::{AttributionMode, Domain, PackageEnergy, SourceKind};
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// `name{labels}` -> value of every sample line; panics on a sample without HELP and TYPE.
    fn parse(text: &str) -> BTreeMap<String, u64> {
        let mut typed = Vec::new();
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.push(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let (key, value) = line.rsplit_once(' ').unwrap();
                let name = key.split('{').next().unwrap();
                assert!(typed.iter().any(|t| t == name), "no TYPE for {name}");
                assert!(
                    text.contains(&format!("# HELP {name} ")),
                    "no HELP for {name}"
                );
                samples.insert(key.to_owned(), value.parse().unwrap());
            }
        }
        samples
    }

    fn package(package: u32, estimated: bool, interval_uj: u64) -> PackageEnergy {
        PackageEnergy {
            package,
            domains: vec![(Domain::Package, interval_uj)],
            estimated,
            interval_uj,
            idle_uj: 0,
            idle_basis: "configured",
            idle_charged: false,
            attributed_uj: interval_uj,
            unattributed_uj: 0,
            samples: 1,
            busy: 1.0,
        }
    }

    #[test]
    fn measured_and_estimated_energy_are_kept_apart_and_every_sample_is_typed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Mutex::new(Spool::open(dir.path(), 1 << 20).unwrap()));
        let run = Arc::new(RunMetrics::new("powercap", false));
        let sources = Sources {
            run: run.clone(),
            ship: Arc::new(ShipStats::default()),
            spool,
        };
        run.record_sampler(Counters {
            samples: 500,
            map_full: 3,
            ..Counters::default()
        });
        let mut profile = Profile::default();
        profile.stats.dropped.insert(DropReason::Unread, 2);
        // Package 1's counter failed this interval: the model stood in for it.
        let energy = IntervalEnergy {
            source: SourceKind::Powercap,
            estimated: true,
            method: "fixture".into(),
            attribution: AttributionMode::Dynamic,
            elapsed: Duration::from_secs(1),
            packages: vec![package(0, false, 7_000), package(1, true, 4_000)],
            host_domains: vec![(Domain::Psys, 99_000)],
            per_slot_uj: Vec::new(),
            faults: Vec::new(),
            unsampled_uj: 0,
        };
        run.record_interval(&profile, Some(&energy));
        run.record_interval(&profile, Some(&energy));
        run.record_spooled(0);
        let m = parse(&render(&sources));
        assert_eq!(m["wattson_agent_samples_total"], 500);
        assert_eq!(
            m["wattson_agent_samples_dropped_total{reason=\"map_full\"}"],
            3
        );
        assert_eq!(
            m["wattson_agent_samples_dropped_total{reason=\"unread\"}"],
            4
        );
        assert_eq!(m["wattson_agent_intervals_total"], 2);
        assert_eq!(m["wattson_agent_batches_spooled_total"], 1);
        assert_eq!(m["wattson_agent_measured_energy_microjoules_total"], 14_000);
        assert_eq!(m["wattson_agent_estimated_energy_microjoules_total"], 8_000);
        assert_eq!(
            m["wattson_agent_energy_source{source=\"powercap\",estimated=\"false\"}"],
            1
        );
        assert_eq!(m["wattson_agent_spool_bytes"], 0);
        assert_eq!(m["wattson_agent_spool_lost_samples_total"], 0);
    }
}
