//! Agent overhead, side by side in one run: a CPU-bound workload's throughput with no
//! profiler, with `wattson-agent record` (release build) at 19 Hz and at 99 Hz, and with
//! `perf record -F 99 -a -g`; plus each profiler's own CPU time (from `wait4`) and peak RSS
//! (`VmHWM`, polled).
//!
//! The workload is one spinning hash loop per CPU, so sampling interrupts on every CPU and the
//! profiler's own CPU time both show up as lost throughput. Configurations are interleaved over
//! several rounds and the median throughput of each is kept, so drift from other work on this
//! shared machine hits all of them alike. Needs root and `/usr/bin/perf`.
//!
//! Then the agent at 99 Hz alone under two workloads that grow its tables: a fork storm (every
//! CPU starting `/bin/true` in a loop: thousands of short processes per second, each announced
//! and read from /proc), and 50 distinct binaries (copies of `sha256sum` under 50 paths, run in
//! turn, each a file blazesym parses); its peak RSS and CPU for each.

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::Row;

/// Length of one measured phase.
const PHASE: Duration = Duration::from_secs(6);
/// Rounds over all configurations.
const ROUNDS: usize = 3;
/// Time a profiler gets to load and attach before the workload is measured.
const SETTLE: Duration = Duration::from_millis(1500);
const PERF: &str = "/usr/bin/perf";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    None,
    Agent19,
    Agent99,
    Perf99,
}

impl Config {
    const ALL: [Config; 4] = [
        Config::None,
        Config::Agent19,
        Config::Agent99,
        Config::Perf99,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::None => "no profiler",
            Self::Agent19 => "wattson-agent 19 Hz",
            Self::Agent99 => "wattson-agent 99 Hz",
            Self::Perf99 => "perf record -F 99 -a -g",
        }
    }
}

/// What one phase measured.
#[derive(Default, Clone, Copy)]
struct Phase {
    /// Workload operations per second, all CPUs.
    throughput: f64,
    /// Profiler CPU seconds (user + system) over its whole life.
    cpu_secs: f64,
    /// Profiler peak RSS in MiB: `VmHWM` of its own image, polled. Not `ru_maxrss` from
    /// `wait4`: Linux carries the high-water mark across exec, so that counts the RSS of this
    /// bench (the parent it was forked from) too.
    rss_mib: f64,
    /// Peaks of the profiler's anonymous and file-backed RSS in MiB, polled from
    /// `/proc/PID/status` (file-backed: pages of mapped binaries, reclaimable page cache).
    anon_mib: f64,
    file_mib: f64,
    /// Wall seconds the profiler ran.
    wall_secs: f64,
    /// Profiler CPU seconds while the workload ran: its start-up (BPF load, the first
    /// parse of the workload's symbols) excluded, as a long-running daemon would see it.
    sampling_cpu_secs: f64,
}

fn row(metric: impl Into<String>, value: String, goal: &str, met: Option<bool>) -> Row {
    Row {
        area: "agent",
        metric: metric.into(),
        value,
        goal: goal.into(),
        met,
    }
}

pub fn run(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    if !Path::new(PERF).exists() {
        bail!("{PERF} is missing: install Debian's linux-perf (cargo xtask setup does)");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the agent bench samples system-wide: run it as root");
    }
    let root = crate::cmd::root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    crate::cmd::run(Command::new(cargo).current_dir(&root).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "wattson-agent",
    ]))?;
    let agent = root.join("target/release/wattson-agent");
    let dir = tempfile::tempdir()?;
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());

    let mut phases: Vec<(Config, Phase)> = Vec::new();
    for round in 0..ROUNDS {
        for config in Config::ALL {
            eprintln!(
                "bench agent: round {}/{ROUNDS}, {}",
                round + 1,
                config.name()
            );
            let phase = measure(config, &agent, dir.path(), &move |l| workload(cpus, l))?;
            phases.push((config, phase));
        }
    }
    let median = |c: Config, f: fn(&Phase) -> f64| {
        let mut v: Vec<f64> = phases
            .iter()
            .filter(|p| p.0 == c)
            .map(|p| f(&p.1))
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(Config::None, |p| p.throughput);
    rows.push(row(
        format!("workload throughput, no profiler ({cpus} threads)"),
        format!("{:.1} Mops/s", base / 1e6),
        "",
        None,
    ));
    let slowdown = |c: Config| 100.0 * (1.0 - median(c, |p| p.throughput) / base);
    for (c, goal) in [
        (Config::Agent19, ""),
        (Config::Agent99, "<= 1%"),
        (Config::Perf99, ""),
    ] {
        let s = slowdown(c);
        rows.push(row(
            format!("slowdown, {}", c.name()),
            format!("{s:.2}%"),
            goal,
            (!goal.is_empty()).then_some(s <= 1.0),
        ));
    }
    for c in [Config::Agent19, Config::Agent99, Config::Perf99] {
        let cpu = median(c, |p| p.cpu_secs);
        let wall = median(c, |p| p.wall_secs);
        rows.push(row(
            format!("own CPU time, {}", c.name()),
            format!(
                "{cpu:.3} s in {wall:.1} s ({:.2}% of one CPU), {:.3} s of it while the workload ran",
                100.0 * cpu / wall,
                median(c, |p| p.sampling_cpu_secs)
            ),
            "",
            None,
        ));
    }
    for c in [Config::Agent19, Config::Agent99, Config::Perf99] {
        let rss = median(c, |p| p.rss_mib);
        let goal = if c == Config::Agent99 {
            "<= 64 MiB"
        } else {
            ""
        };
        rows.push(row(
            format!("peak RSS, {}", c.name()),
            format!("{rss:.1} MiB"),
            goal,
            (!goal.is_empty()).then_some(rss <= 64.0),
        ));
        rows.push(rss_split(
            c.name(),
            median(c, |p| p.anon_mib),
            median(c, |p| p.file_mib),
        ));
    }
    // "Cheaper" = total cost: the profiler's own CPU time plus the workload time it took away.
    let cost = |c: Config| {
        let lost =
            (1.0 - median(c, |p| p.throughput) / base).max(0.0) * cpus as f64 * PHASE.as_secs_f64();
        median(c, |p| p.cpu_secs) + lost
    };
    let (ours, theirs) = (cost(Config::Agent99), cost(Config::Perf99));
    let ratio = theirs / ours.max(1e-3);
    rows.push(row(
        "cost ratio perf 99 Hz / agent 99 Hz (own CPU + lost workload CPU)",
        format!("{ratio:.1}x ({theirs:.2} s vs {ours:.2} s)"),
        ">= 5x",
        Some(ratio >= 5.0),
    ));
    let cpu_ratio =
        median(Config::Perf99, |p| p.cpu_secs) / median(Config::Agent99, |p| p.cpu_secs).max(1e-3);
    rows.push(row(
        "own CPU ratio perf / agent at 99 Hz",
        format!("{cpu_ratio:.1}x"),
        ">= 1x (aim 5x)",
        Some(cpu_ratio >= 1.0),
    ));

    eprintln!("bench agent: fork storm, wattson-agent 99 Hz");
    let storm = measure(Config::Agent99, &agent, dir.path(), &fork_storm(cpus))?;
    eprintln!("bench agent: 50 distinct binaries, wattson-agent 99 Hz");
    let binaries = distinct_binaries(dir.path(), 50)?;
    let many = measure(Config::Agent99, &agent, dir.path(), &binaries)?;
    for (what, p, unit) in [
        ("fork storm", storm, "processes/s"),
        ("50 distinct binaries", many, "runs/s"),
    ] {
        rows.push(row(
            format!(
                "peak RSS, wattson-agent 99 Hz, {what} ({:.0} {unit})",
                p.throughput
            ),
            format!("{:.1} MiB", p.rss_mib),
            "<= 64 MiB",
            Some(p.rss_mib <= 64.0),
        ));
        rows.push(rss_split(
            &format!("wattson-agent 99 Hz, {what}"),
            p.anon_mib,
            p.file_mib,
        ));
        rows.push(row(
            format!("own CPU time, wattson-agent 99 Hz, {what}"),
            format!(
                "{:.3} s in {:.1} s ({:.2}% of one CPU)",
                p.cpu_secs,
                p.wall_secs,
                100.0 * p.cpu_secs / p.wall_secs
            ),
            "",
            None,
        ));
    }
    Ok(())
}

/// The row splitting a profiler's peak RSS into anonymous memory (its heap, stacks) and
/// file-backed pages (binaries it maps to symbolize them: page cache, shared and reclaimable).
fn rss_split(what: &str, anon: f64, file: f64) -> Row {
    row(
        format!("peak RSS anon / file-backed, {what}"),
        format!("{anon:.1} / {file:.1} MiB"),
        "",
        None,
    )
}

/// A workload run for a phase; returns its operations per second.
type Workload = dyn Fn(Duration) -> f64;

/// Every CPU starts `/bin/true` in a loop; returns processes started per second.
fn fork_storm(threads: usize) -> Box<Workload> {
    Box::new(move |length| {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (stop, started) = (Arc::clone(&stop), Arc::clone(&started));
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if Command::new("/bin/true").status().is_ok() {
                            started.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        let t0 = Instant::now();
        thread::sleep(length);
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let _ = h.join();
        }
        started.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
    })
}

/// `n` copies of `sha256sum` under distinct paths, run in turn on a 4 MiB file (two at a
/// time); returns runs per second.
fn distinct_binaries(dir: &Path, n: usize) -> anyhow::Result<Box<Workload>> {
    let data = dir.join("blob");
    std::fs::write(&data, vec![7u8; 4 << 20])?;
    let mut bins = Vec::with_capacity(n);
    for i in 0..n {
        let bin = dir.join(format!("hash-{i:02}"));
        std::fs::copy("/usr/bin/sha256sum", &bin).context("copying /usr/bin/sha256sum")?;
        bins.push(bin);
    }
    Ok(Box::new(move |length| {
        let t0 = Instant::now();
        let mut runs = 0u64;
        let mut i = 0;
        while t0.elapsed() < length {
            let pair: Vec<_> = (0..2)
                .filter_map(|k| {
                    Command::new(&bins[(i + k) % bins.len()])
                        .arg(&data)
                        .stdout(Stdio::null())
                        .spawn()
                        .ok()
                })
                .collect();
            for mut c in pair {
                if c.wait().is_ok_and(|s| s.success()) {
                    runs += 1;
                }
            }
            i += 2;
        }
        runs as f64 / t0.elapsed().as_secs_f64()
    }))
}

/// Runs one phase: starts the profiler, lets it attach, measures the workload for `PHASE`,
/// stops the profiler with SIGINT and collects its rusage.
fn measure(config: Config, agent: &Path, dir: &Path, workload: &Workload) -> anyhow::Result<Phase> {
    let mut cmd = match config {
        Config::None => None,
        Config::Agent19 | Config::Agent99 => {
            let mut c = Command::new(agent);
            let freq = if config == Config::Agent19 {
                "19"
            } else {
                "99"
            };
            c.args([
                "record",
                "--duration",
                "1h",
                "--frequency",
                freq,
                "--output",
            ])
            .arg(dir.join("bench.pb.gz"));
            Some(c)
        }
        Config::Perf99 => {
            let mut c = Command::new(PERF);
            c.args(["record", "-F", "99", "-a", "-g", "-q", "-o"])
                .arg(dir.join("perf.data"));
            Some(c)
        }
    };
    let started = Instant::now();
    let child = match cmd.as_mut() {
        Some(c) => Some(
            c.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", config.name()))?,
        ),
        None => None,
    };
    let polling = child.as_ref().map(|c| RssPoller::start(c.id()));
    thread::sleep(SETTLE);
    let cpu_at_start = child.as_ref().map(|c| threads_cpu_secs(c.id()));
    let throughput = workload(PHASE);
    let mut phase = Phase {
        throughput,
        ..Phase::default()
    };
    if let (Some(child), Some(cpu_at_start)) = (child, cpu_at_start) {
        phase.sampling_cpu_secs = threads_cpu_secs(child.id()) - cpu_at_start;
        let pid = child.id() as libc::pid_t;
        // SAFETY: signalling our own child, then reaping it with wait4.
        let (status, usage) = unsafe {
            libc::kill(pid, libc::SIGINT);
            let mut status = 0;
            let mut usage: libc::rusage = std::mem::zeroed();
            if libc::wait4(pid, &mut status, 0, &mut usage) != pid {
                bail!(
                    "wait4 on {}: {}",
                    config.name(),
                    std::io::Error::last_os_error()
                );
            }
            (status, usage)
        };
        phase.wall_secs = started.elapsed().as_secs_f64();
        // perf record may report the SIGINT in its status; the agent must exit cleanly.
        if config != Config::Perf99 && (!libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0)
        {
            bail!(
                "{} did not exit cleanly (status {status:#x})",
                config.name()
            );
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        phase.cpu_secs = secs(usage.ru_utime) + secs(usage.ru_stime);
        if let Some(p) = polling {
            (phase.rss_mib, phase.anon_mib, phase.file_mib) = p.finish();
        }
        drop(child);
    }
    Ok(phase)
}

/// Polls a process's `VmHWM`, `RssAnon` and `RssFile` every 50 ms while it runs, keeping the
/// peaks.
struct RssPoller {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(u64, u64, u64)>,
}

impl RssPoller {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let path = format!("/proc/{pid}/status");
            let (mut hwm, mut anon, mut file) = (0, 0, 0);
            while !flag.load(Ordering::Relaxed) {
                let Ok(text) = std::fs::read_to_string(&path) else {
                    break;
                };
                hwm = hwm.max(status_kib(&text, "VmHWM:"));
                anon = anon.max(status_kib(&text, "RssAnon:"));
                file = file.max(status_kib(&text, "RssFile:"));
                thread::sleep(Duration::from_millis(50));
            }
            (hwm, anon, file)
        });
        Self { stop, handle }
    }

    /// Peak RSS, peak anonymous and peak file-backed RSS, MiB.
    fn finish(self) -> (f64, f64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let (hwm, anon, file) = self.handle.join().unwrap_or_default();
        let mib = |k: u64| k as f64 / 1024.0;
        (mib(hwm), mib(anon), mib(file))
    }
}

/// CPU seconds the live threads of `pid` have run (`/proc/PID/task/*/schedstat`, ns: the
/// tick-based `stat` fields are too coarse for the tens of milliseconds a phase costs).
fn threads_cpu_secs(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// A `KEY: N kB` field of `/proc/PID/status`, in KiB.
fn status_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One hashing thread per CPU for `length`; returns operations per second over all threads.
fn workload(threads: usize, length: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (stop, ops) = (Arc::clone(&stop), Arc::clone(&ops));
            thread::spawn(move || {
                let mut buf = vec![0u64; 4096];
                let mut h = 0xcbf2_9ce4_8422_2325u64 ^ t as u64;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for (i, slot) in buf.iter_mut().enumerate() {
                        h = (h ^ *slot ^ i as u64).wrapping_mul(0x0000_0100_0000_01b3);
                        *slot = h;
                    }
                    n += 1;
                }
                ops.fetch_add(n * 4096, Ordering::Relaxed);
                std::hint::black_box(h);
            })
        })
        .collect();
    let started = Instant::now();
    thread::sleep(length);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    ops.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
