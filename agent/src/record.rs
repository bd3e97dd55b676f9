//! `wattson-agent record`: a one-shot local profile, like `perf record`, written as pprof,
//! folded stacks or JSON, with a summary on stdout (samples, processes, dropped/truncated,
//! top functions, clock event).
//!
//! Everything that can be checked before sampling is (privileges, `--pid`, output path,
//! frequency), so a bad invocation fails in milliseconds instead of after `--duration`.

use std::{
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use wattson_agent::{
    energy::{EnergyArgs, IntervalEnergy, Meter},
    interval::Recorder,
    output::{self, Format},
    privilege,
    process::{ProcessTable, ServiceRule},
    profile::{Profile, Weight},
    sampler::{Sampler, SamplerConfig},
    symbolize::Symbolizer,
};

/// How often new-process events are read (short-lived processes must be caught alive).
const POLL: Duration = Duration::from_millis(20);
/// How often the kernel maps are drained during a recording.
const DRAIN_EVERY: Duration = Duration::from_secs(1);

/// What `--weight` counts in folded output and in the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightArg {
    /// Number of samples.
    Samples,
    /// CPU nanoseconds (samples x sampling period).
    Cpu,
    /// Attributed energy in microjoules (needs an energy source; estimated under `model`).
    Energy,
}

impl WeightArg {
    /// The profile weight this selects.
    pub fn weight(self) -> Weight {
        match self {
            Self::Samples => Weight::Samples,
            Self::Cpu => Weight::CpuNanos,
            Self::Energy => Weight::Microjoules,
        }
    }
}

/// Options of `wattson-agent record`.
#[derive(clap::Args, Debug)]
pub struct RecordArgs {
    /// How long to sample, e.g. `10s`, `1m30s`. Ctrl-C stops early and keeps the profile.
    #[arg(long, short, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Samples per second per CPU (odd primes avoid lock-step with periodic work).
    #[arg(long, short = 'F', default_value_t = 99)]
    pub frequency: u64,
    /// Only sample this process (thread-group id) and its descendants, so the pid of a shell
    /// or launcher that waits for the program it started profiles the program. If the
    /// process exits, the partial profile is kept.
    #[arg(long, short)]
    pub pid: Option<u32>,
    /// File to write. Checked for writability before sampling starts.
    #[arg(long, short)]
    pub output: PathBuf,
    /// Output format; default from the file extension (.folded/.txt, .json, else pprof).
    #[arg(long, short, value_enum)]
    pub format: Option<Format>,
    /// What folded lines and the summary count.
    #[arg(long, value_enum, default_value = "samples")]
    pub weight: WeightArg,
    /// Service label mapping, repeatable: FIELD:PATTERN=SERVICE with FIELD one of unit, exe,
    /// comm, cgroup, container; PATTERN exact or ending in `*`.
    #[arg(long = "service", value_name = "RULE")]
    pub services: Vec<ServiceRule>,
    /// Functions to list in the summary.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Sample with the software cpu-clock even if hardware cycles are available.
    #[arg(long)]
    pub cpu_clock: bool,
    /// Energy measurement and attribution.
    #[command(flatten)]
    pub energy: EnergyArgs,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Runs `record`.
pub fn run(args: &RecordArgs) -> anyhow::Result<()> {
    let format = args
        .format
        .unwrap_or_else(|| Format::from_path(&args.output));
    check_frequency(args.frequency)?;
    if let Some(pid) = args.pid
        && !Path::new(&format!("/proc/{pid}")).exists()
    {
        bail!("--pid {pid}: no such process (nothing in /proc/{pid}); check the id with `ps`");
    }
    let mut out = File::create(&args.output).with_context(|| {
        format!(
            "--output {}: cannot write there; pick a writable path",
            args.output.display()
        )
    })?;
    privilege::check_can_sample().map_err(anyhow::Error::msg)?;
    let mut meter = Meter::open(&args.energy)?;
    if meter.is_none() && args.weight == WeightArg::Energy {
        bail!("--weight energy needs an energy source; drop --energy-source none");
    }

    let mut config = SamplerConfig::default();
    config.frequency = args.frequency;
    config.tgid_filter = args.pid;
    config.prefer_cycles = !args.cpu_clock;
    let mut sampler = Sampler::load(&config)?;
    sampler.attach(&config)?;
    privilege::drop_after_attach_logged();
    let table = ProcessTable::new("/proc", args.services.clone());
    // This thread alone maps and unmaps files (it symbolizes): see `file_pages`.
    wattson_agent::file_pages::enable();
    let mut recorder = Recorder::new(sampler, table, Symbolizer::default())?;
    if let Some(m) = meter.as_mut() {
        if args.pid.is_some() {
            m.set_partial_sampling("/proc/stat".into());
        }
        m.restart(); // the energy interval starts with the sampling window
    }

    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    if let Some(pid) = args.pid {
        follow_tree(&mut recorder, pid)?;
    }
    tracing::info!(duration = ?args.duration, frequency = args.frequency, "recording");
    let started = Instant::now();
    let mut last_drain = started;
    let mut pid_exited = None;
    while started.elapsed() < args.duration && !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(POLL.min(args.duration.saturating_sub(started.elapsed())));
        recorder.poll();
        if let Some(pid) = args.pid {
            if !wattson_agent::process::is_running(Path::new("/proc"), pid) {
                pid_exited = Some(started.elapsed());
                break;
            }
            follow_tree(&mut recorder, pid)?;
        }
        // The final drain happens in finish_window; a periodic one this late would only
        // delay the end of the window by its symbolization time.
        let remaining = args.duration.saturating_sub(started.elapsed());
        if last_drain.elapsed() >= DRAIN_EVERY && remaining > DRAIN_EVERY {
            recorder.drain()?;
            last_drain = Instant::now();
        }
    }
    if let Some(m) = meter.as_mut() {
        m.end_window(); // read energy before symbolizing, which takes a while
    }
    let mut profile = recorder.finish_window()?;
    let energy = meter.as_mut().map(|m| m.attribute_profile(&mut profile));
    if let (Some(pid), Some(at)) = (args.pid, pid_exited) {
        eprintln!(
            "process {pid} exited after {:.1}s of the requested {:.1}s; keeping the partial profile",
            at.as_secs_f64(),
            args.duration.as_secs_f64()
        );
    }

    let bytes = output::encode(&profile, format, args.weight.weight())?;
    out.write_all(&bytes)
        .and_then(|()| out.flush())
        .with_context(|| format!("writing {}", args.output.display()))?;
    print!(
        "{}",
        summary(
            &profile,
            args.weight.weight(),
            args.top,
            &args.output,
            format,
            bytes.len(),
            energy.as_ref()
        )
    );
    Ok(())
}

/// Keeps the sampler's tgid filter on `pid`'s process tree (forks since the last poll).
fn follow_tree(recorder: &mut Recorder, pid: u32) -> anyhow::Result<()> {
    let limit = wattson_agent_ebpf::TGID_FILTER_ENTRIES as usize;
    let tree = wattson_agent::process::tree(Path::new("/proc"), pid, std::process::id(), limit);
    for tgid in recorder.sampler_mut().follow(&tree)? {
        if tgid != pid {
            tracing::info!(tgid, parent_tree = pid, "following a descendant of --pid");
        }
    }
    Ok(())
}

/// Rejects frequencies the kernel would refuse, naming the limit's file.
fn check_frequency(frequency: u64) -> anyhow::Result<()> {
    const MAX: &str = "/proc/sys/kernel/perf_event_max_sample_rate";
    if frequency == 0 {
        bail!("--frequency must be at least 1 (samples per second per CPU)");
    }
    let max = std::fs::read_to_string(MAX)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(max) = max
        && frequency > max
    {
        bail!("--frequency {frequency} is above the kernel's limit {max} ({MAX})");
    }
    Ok(())
}

/// The text printed after recording.
pub fn summary(
    p: &Profile,
    weight: Weight,
    top: usize,
    path: &Path,
    format: Format,
    bytes: usize,
    energy: Option<&IntervalEnergy>,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let secs = p.duration_nanos as f64 / 1e9;
    let why = if p.clock_event == "cycles" {
        "hardware PMU"
    } else {
        "software timer; no hardware PMU available or --cpu-clock"
    };
    let _ = writeln!(
        s,
        "recorded {secs:.1}s at {} Hz on {} CPUs, clock event {} ({why})",
        p.frequency,
        p.cpus.len(),
        p.clock_event
    );
    let st = &p.stats;
    let pct = |n: u64| 100.0 * n as f64 / st.samples.max(1) as f64;
    let dropped: Vec<String> = st
        .dropped
        .iter()
        .map(|(r, n)| format!("{} {n}", r.name()))
        .collect();
    let _ = writeln!(
        s,
        "samples: {} in {} processes; dropped {}{}; truncated stacks {} ({:.1}%); \
         without user stack {}; unsymbolized frames {}",
        st.samples,
        p.processes.len(),
        st.dropped_total(),
        if dropped.is_empty() {
            String::new()
        } else {
            format!(" ({})", dropped.join(", "))
        },
        st.truncated_stacks,
        pct(st.truncated_stacks),
        st.user_stack_errors,
        st.unsymbolized_frames,
    );
    if st.processes_missed > 0 {
        let _ = writeln!(
            s,
            "warning: {} new-process events lost (ring buffer full); their metadata may be missing",
            st.processes_missed
        );
    }
    let format_name = match format {
        Format::Pprof => "pprof",
        Format::Folded => "folded",
        Format::Json => "json",
    };
    let _ = writeln!(s, "wrote {} ({format_name}, {bytes} bytes)", path.display());
    let _ = writeln!(s, "top functions by self {}:", weight.unit());
    for f in p.top_self(weight).iter().take(top) {
        let _ = writeln!(
            s,
            "  {:>6.2}%  {:<50} {}",
            100.0 * f.share,
            f.function,
            f.module
        );
    }
    if let Some(e) = energy {
        let _ = write!(s, "{e}");
        let estimated = if e.estimated { ", ESTIMATED" } else { "" };
        let _ = writeln!(s, "top functions by self energy (J{estimated}):");
        for f in p.top_self(Weight::Microjoules).iter().take(top) {
            let _ = writeln!(
                s,
                "  {:>10.4} J {:>6.2}%  {:<50} {}",
                f.value as f64 / 1e6,
                100.0 * f.share,
                f.function,
                f.module
            );
        }
    }
    s
}
