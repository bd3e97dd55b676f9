//! Turns what the sampler drains into [`Profile`]s, one per window: polls new-process events
//! (so short-lived processes are captured while alive), drains the kernel maps periodically,
//! symbolizes stacks, and accounts every sample that was dropped, truncated or left unread.
//!
//! `record` uses one window; the shipping daemon calls [`Recorder::finish_window`] once per
//! interval and gets consecutive, non-overlapping profiles.

use std::{
    collections::BTreeMap,
    time::{Instant, SystemTime},
};

use crate::{
    process::ProcessTable,
    profile::{DropReason, FrameKind, Profile, ProfileBuilder, Stack},
    sampler::{Counters, Drained, RawSample, Sampler, SamplerError},
    symbolize::Symbolizer,
    unwind::LeafUnwinder,
};

/// Deepest stack the kernel records (`perf_event_max_stack` default); reaching it means the
/// stack was cut.
const MAX_STACK_DEPTH: usize = 127;

/// Functions that start a process or a thread: a user stack that ends in one is complete.
const ENTRY_FUNCTIONS: &[&str] = &[
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
    "__libc_start_main_impl",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "thread_start",
    "_dl_start_user",
    "runtime.goexit",
    "runtime.goexit.abi0",
    "runtime.rt0_go",
    "runtime.rt0_go.abi0",
    "runtime.mstart",
];

/// Drives a [`Sampler`] into profiles.
pub struct Recorder {
    sampler: Sampler,
    table: ProcessTable,
    symbolizer: Symbolizer,
    unwinder: LeafUnwinder,
    generation: u64,
    builder: ProfileBuilder,
    window_started: Instant,
    counters_at_start: Counters,
    drained: u64,
    missing_stacks: u64,
}

impl Recorder {
    /// Starts the first window on an attached sampler.
    pub fn new(
        sampler: Sampler,
        table: ProcessTable,
        symbolizer: Symbolizer,
    ) -> Result<Self, SamplerError> {
        let counters = sampler.counters()?;
        let mut recorder = Self {
            builder: ProfileBuilder::new(Profile::default()),
            sampler,
            table,
            symbolizer,
            unwinder: LeafUnwinder::default(),
            generation: 0,
            window_started: Instant::now(),
            counters_at_start: counters,
            drained: 0,
            missing_stacks: 0,
        };
        recorder.builder = recorder.new_builder();
        Ok(recorder)
    }

    /// The sampler, e.g. for its clock event.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// The sampler, e.g. to change which processes it follows.
    pub fn sampler_mut(&mut self) -> &mut Sampler {
        &mut self.sampler
    }

    /// Processes seen so far.
    pub fn processes(&self) -> &ProcessTable {
        &self.table
    }

    fn new_builder(&self) -> ProfileBuilder {
        let start_unix_nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        ProfileBuilder::new(Profile {
            start_unix_nanos,
            frequency: self.sampler.frequency(),
            clock_event: self.sampler.event().name().to_owned(),
            cpus: self.sampler.cpus().to_vec(),
            hostname: read_trimmed("/proc/sys/kernel/hostname"),
            kernel_release: read_trimmed("/proc/sys/kernel/osrelease"),
            ..Profile::default()
        })
    }

    /// Reads new-process announcements and snapshots those processes. Call often (every few
    /// tens of milliseconds) so short-lived processes are caught alive.
    pub fn poll(&mut self) -> usize {
        let mut fresh = 0;
        for p in self.sampler.new_processes() {
            let end = p.comm.iter().position(|&b| b == 0).unwrap_or(p.comm.len());
            let comm = String::from_utf8_lossy(&p.comm[..end]);
            fresh += usize::from(self.table.observe(p.tgid, &comm));
        }
        fresh
    }

    /// Drains the kernel maps into the current window and attaches CPUs that came online.
    pub fn drain(&mut self) -> Result<(), SamplerError> {
        let drained = self.drain_raw()?;
        for raw in &drained.samples {
            self.add(raw);
        }
        self.symbolizer.release_idle();
        self.symbolizer.release_file_pages();
        Ok(())
    }

    /// Flips and reads the kernel buffers without symbolizing (fast), so a window can be
    /// closed at a precise moment and symbolized afterwards.
    fn drain_raw(&mut self) -> Result<Drained, SamplerError> {
        self.poll();
        let drained = self.sampler.drain()?;
        self.generation += 1;
        self.missing_stacks += drained.missing_stacks;
        // Processes announced during the drain were sampled in it: catch them now.
        self.poll();
        // A process captured just after a fork may have exec'd since (or its tgid been
        // reused): its samples go to the program now running, which ran most of them.
        let mut tgids: Vec<u32> = drained.samples.iter().map(|s| s.key.tgid).collect();
        tgids.sort_unstable();
        tgids.dedup();
        for tgid in tgids {
            self.table.refresh_changed(tgid);
        }
        if let Err(e) = self.sampler.attach_new_cpus() {
            tracing::warn!(error = %e, "could not attach to a CPU that came online");
        }
        Ok(drained)
    }

    fn add(&mut self, raw: &RawSample) {
        let key = raw.key;
        self.drained += raw.count;
        if self.table.get(key.tgid).is_none() {
            // Announcement lost or not yet read: snapshot now (marked exited if already gone).
            self.table.observe(key.tgid, "");
        }
        let mut frames = self.symbolizer.kernel_frames(&raw.kernel_stack);
        let mut user_stack = raw.user_stack.clone();
        self.unwinder.fix(
            &mut self.table,
            key.tgid,
            self.generation,
            &mut user_stack,
            &raw.leaf_candidates,
            raw.count,
        );
        let user =
            self.symbolizer
                .user_frames(&mut self.table, key.tgid, &user_stack, self.generation);
        let truncated = !user_stack.is_empty()
            && (raw.user_stack.len() >= MAX_STACK_DEPTH || !ends_at_entry(&user));
        frames.extend(user);
        let frames = frames.into_iter().map(|f| self.builder.frame(f)).collect();
        let stack = self.builder.stack(Stack { frames, truncated });
        self.builder
            .sample(key.tgid, key.pid, key.cpu, stack, raw.count);
    }

    /// Drains both buffers, closes the window and starts the next one. Samples accepted by the
    /// kernel before this call but never read back are reported as `unread`.
    pub fn finish_window(&mut self) -> Result<Profile, SamplerError> {
        let counters = self.sampler.counters()?;
        let duration = self.window_started.elapsed();
        // Two drains read both buffers: everything counted above is now in user space. Both
        // are read before symbolizing, so the window closes within milliseconds of `duration`.
        let first = self.drain_raw()?;
        let second = self.drain_raw()?;
        for raw in first.samples.iter().chain(&second.samples) {
            self.add(raw);
        }
        let before = self.counters_at_start;
        let delta = |f: fn(&Counters) -> u64| f(&counters).saturating_sub(f(&before));
        let accepted = delta(|c| c.samples) - delta(|c| c.filtered) - delta(|c| c.map_full);

        let next = self.new_builder();
        let mut builder = std::mem::replace(&mut self.builder, next);
        let profile = builder.profile_mut();
        profile.duration_nanos = duration.as_nanos() as u64;
        let mut dropped = BTreeMap::new();
        for (reason, n) in [
            (DropReason::MapFull, delta(|c| c.map_full)),
            (DropReason::StackMissing, self.missing_stacks),
            (DropReason::Unread, accepted.saturating_sub(self.drained)),
        ] {
            if n > 0 {
                dropped.insert(reason, n);
            }
        }
        profile.stats.dropped = dropped;
        profile.stats.user_stack_errors = delta(|c| c.user_stack_errors);
        profile.stats.kernel_stack_errors = delta(|c| c.kernel_stack_errors);
        profile.stats.filtered = delta(|c| c.filtered);
        profile.stats.processes_missed = delta(|c| c.ringbuf_full);
        profile.stats.leaf_words_missing = delta(|c| c.leaf_words_missing);
        let fixups = self.unwinder.take_counts();
        profile.stats.leaf_fixups = fixups.made;
        profile.stats.leaf_fixups_failed = fixups.failed;
        let tgids: Vec<u32> = profile.samples.iter().map(|s| s.tgid).collect();
        for tgid in tgids {
            if let Some(p) = self.table.get(tgid) {
                profile.processes.entry(tgid).or_insert_with(|| p.clone());
            }
        }
        profile.stats.unsymbolized_frames = profile
            .frames
            .iter()
            .filter(|f| f.function.is_none())
            .count() as u64;

        profile.stats.perf_maps_cut = self.symbolizer.take_perf_maps_cut();

        // Samples drained after `counters` was read belong to the next window's accounting.
        let extra = self.drained.saturating_sub(accepted);
        self.counters_at_start = counters;
        self.drained = extra;
        self.missing_stacks = 0;
        self.window_started += duration;
        let gone = self.table.forget_exited();
        if let Err(e) = self.sampler.forget_processes(&gone) {
            // Only timeliness is lost: a reused tgid is then read at drain time.
            tracing::warn!(error = %e, "could not clear forgotten processes from the BPF map");
        }
        self.symbolizer.trim();
        Ok(builder.finish())
    }
}

/// Whether the outermost user frame is a process/thread entry point, or the glibc code that
/// calls `main` (glibc has no frame pointers, so frame-pointer walks end inside it).
fn ends_at_entry(user: &[crate::profile::Frame]) -> bool {
    let Some(last) = user.iter().rev().find(|f| f.kind == FrameKind::User) else {
        return false;
    };
    if let Some(name) = last.function.as_deref()
        && ENTRY_FUNCTIONS.contains(&name)
    {
        return true;
    }
    let file = crate::profile::module_file_name(&last.module);
    let in_libc =
        file.starts_with("libc.so") || file.starts_with("libc-") || file.starts_with("ld-linux");
    in_libc && last.function.is_none()
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
