//! `wattson-agent doctor`: what this host supports for profiling, and why not. Each check
//! prints yes/no; every "no" says what it costs and how to fix it. The last part samples the
//! host briefly and inspects the hottest binaries for symbols and frame pointers.

use std::{collections::HashMap, path::Path, time::Duration};

use wattson_agent::{
    binary,
    energy::{self, EnergyArgs},
    interval::Recorder,
    privilege,
    process::ProcessTable,
    profile::FrameKind,
    sampler::{Sampler, SamplerConfig},
    symbolize::Symbolizer,
};

/// Options of `wattson-agent doctor`.
#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// How long to sample the host to find its hottest binaries (0s skips that part).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub sample: Duration,
    /// Hottest binaries to inspect.
    #[arg(long, default_value_t = 5)]
    pub binaries: usize,
    /// Energy sources to check (the same flags `record` and `run` take).
    #[command(flatten)]
    pub energy: EnergyArgs,
}

/// Outcome of one check.
#[derive(Debug)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Passed (`None` = informational).
    pub ok: Option<bool>,
    /// What was found.
    pub detail: String,
    /// When not ok: what it costs and how to fix it.
    pub fix: Option<String>,
}

impl Check {
    fn info(name: &str, detail: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            ok: None,
            detail: detail.into(),
            fix: None,
        }
    }

    fn yes(name: &str, detail: impl Into<String>) -> Self {
        Self {
            ok: Some(true),
            ..Self::info(name, detail)
        }
    }

    fn no(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            ok: Some(false),
            fix: Some(fix.into()),
            ..Self::info(name, detail)
        }
    }
}

/// One check per energy source, then the plain verdict: is there RAPL, what `auto` uses.
fn energy_checks(args: &EnergyArgs) -> Vec<Check> {
    let d = energy::diagnose(args);
    let mut out = Vec::new();
    if let Err(e) = &d.topology {
        out.push(Check::no(
            "CPU topology",
            e,
            "attribution assumes one package; check --sysfs-root",
        ));
    }
    for s in &d.sources {
        let name = format!("energy source {}", s.kind);
        out.push(match &s.fix {
            None => Check::yes(
                &name,
                format!("domains {}; {}", s.domains.join(", "), s.detail),
            ),
            Some(fix) => Check::no(&name, &s.detail, fix),
        });
    }
    out.push(Check::info("energy", d.verdict()));
    out
}

/// Runs every check and prints the report.
pub fn run(args: &DoctorArgs) -> anyhow::Result<()> {
    let checks = checks(args);
    print!("{}", render(&checks));
    Ok(())
}

/// Renders checks, one per line, with the cost and fix of each "no" on the next line.
pub fn render(checks: &[Check]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for c in checks {
        let mark = match c.ok {
            Some(true) => "yes",
            Some(false) => "NO ",
            None => " - ",
        };
        let _ = writeln!(s, "{mark} {}: {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            let _ = writeln!(s, "      cost and fix: {fix}");
        }
    }
    s
}

/// All checks, in order.
pub fn checks(args: &DoctorArgs) -> Vec<Check> {
    let mut out = vec![Check::info(
        "kernel",
        format!(
            "Linux {} ({})",
            read("/proc/sys/kernel/osrelease"),
            std::env::consts::ARCH
        ),
    )];
    out.push(privileges());
    out.push(btf());
    out.push(paranoid());
    out.push(kallsyms());
    out.push(perf_event(
        "perf events: software cpu-clock",
        perf_event::events::Software::CPU_CLOCK,
        "no sampling at all; needs CAP_PERFMON (or root) and perf_event_paranoid <= 2",
    ));
    out.push(perf_event(
        "perf events: hardware cycles",
        perf_event::events::Hardware::CPU_CYCLES,
        "falls back to the cpu-clock timer (fine for CPU profiles); no PMU in most VMs, \
         enable vPMU in the hypervisor if you want cycles",
    ));
    out.extend(energy_checks(&args.energy));
    let mut config = SamplerConfig::default();
    config.frequency = 49;
    let sampler = match Sampler::load(&config) {
        Ok(s) => {
            out.push(Check::yes(
                "BPF sampler loads",
                "perf_event program verified",
            ));
            Some(s)
        }
        Err(e) => {
            out.push(Check::no(
                "BPF sampler loads",
                e.to_string(),
                "nothing can be sampled; run as root or grant CAP_BPF + CAP_PERFMON; \
                 kernels need CONFIG_BPF_SYSCALL and CONFIG_BPF_EVENTS",
            ));
            None
        }
    };
    if let Some(sampler) = sampler
        && !args.sample.is_zero()
    {
        out.extend(hot_binaries(sampler, &config, args));
    }
    out
}

fn privileges() -> Check {
    let missing = privilege::missing(privilege::effective());
    if missing.is_empty() {
        return Check::yes("privileges", "every capability the agent uses is effective");
    }
    let names: Vec<_> = missing.iter().map(|c| c.name).collect();
    let costs: Vec<String> = missing
        .iter()
        .map(|c| format!("without {} the agent cannot {}", c.name, c.why))
        .collect();
    Check::no(
        "privileges",
        format!("missing {}", names.join(", ")),
        format!("{}; run as root or `setcap` them", costs.join("; ")),
    )
}

fn btf() -> Check {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Check::yes("BTF", "/sys/kernel/btf/vmlinux present")
    } else {
        Check::no(
            "BTF",
            "/sys/kernel/btf/vmlinux missing",
            "the sampler does not need it today; CO-RE programs (e.g. future off-CPU or \
             .eh_frame unwinding) would; use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    }
}

fn paranoid() -> Check {
    let v = read("/proc/sys/kernel/perf_event_paranoid");
    Check::info(
        "perf_event_paranoid",
        format!("{v} (root/CAP_PERFMON ignore it; others need <= 0 for system-wide sampling)"),
    )
}

fn kallsyms() -> Check {
    let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let visible = text
        .lines()
        .take(50)
        .any(|l| !l.starts_with("0000000000000000"));
    if visible {
        Check::yes("kernel symbols", "/proc/kallsyms shows addresses")
    } else {
        Check::no(
            "kernel symbols",
            format!(
                "/proc/kallsyms addresses hidden (kptr_restrict={})",
                read("/proc/sys/kernel/kptr_restrict")
            ),
            "kernel frames stay unnamed; run as root or with CAP_SYSLOG, or set \
             kernel.kptr_restrict=0",
        )
    }
}

fn perf_event<E: perf_event::events::Event + Clone + 'static>(
    name: &str,
    event: E,
    cost: &str,
) -> Check {
    let result = perf_event::Builder::new(event).one_cpu(0).any_pid().build();
    match result {
        Ok(_) => Check::yes(name, "opened on CPU 0"),
        Err(e) => Check::no(name, format!("perf_event_open: {e}"), cost),
    }
}

/// Samples the host for `args.sample`, then inspects the binaries most samples landed in.
fn hot_binaries(mut sampler: Sampler, config: &SamplerConfig, args: &DoctorArgs) -> Vec<Check> {
    let mut out = Vec::new();
    if let Err(e) = sampler.attach(config) {
        out.push(Check::no(
            "sampler attaches",
            e.to_string(),
            "no samples; check perf_event_paranoid and CAP_PERFMON",
        ));
        return out;
    }
    out.push(Check::yes(
        "sampler attaches",
        format!(
            "{} on {} CPUs",
            sampler.event().name(),
            sampler.cpus().len()
        ),
    ));
    let table = ProcessTable::new("/proc", Vec::new());
    let profile = Recorder::new(sampler, table, Symbolizer::default()).and_then(|mut r| {
        let started = std::time::Instant::now();
        while started.elapsed() < args.sample {
            std::thread::sleep(Duration::from_millis(20));
            r.poll();
        }
        r.finish_window()
    });
    let profile = match profile {
        Ok(p) => p,
        Err(e) => {
            out.push(Check::no("sampling", e.to_string(), "see the errors above"));
            return out;
        }
    };
    let st = &profile.stats;
    let truncated_pct = 100.0 * st.truncated_stacks as f64 / st.samples.max(1) as f64;
    out.push(Check::info(
        "sampled",
        format!(
            "{} samples in {:.1}s, {} dropped, {:.1}% of stacks truncated",
            st.samples,
            profile.duration_nanos as f64 / 1e9,
            st.dropped_total(),
            truncated_pct
        ),
    ));

    // Samples per binary of the leaf user frame, and how many of those stacks were truncated.
    let mut per_binary: HashMap<String, (u64, u64)> = HashMap::new();
    for s in &profile.samples {
        let Some(leaf) = profile
            .stack_frames(s.stack)
            .find(|f| f.kind == FrameKind::User && f.module.starts_with('/'))
        else {
            continue;
        };
        let e = per_binary.entry(leaf.module.clone()).or_default();
        e.0 += s.count;
        if profile.stacks[s.stack as usize].truncated {
            e.1 += s.count;
        }
    }
    let mut hot: Vec<_> = per_binary.into_iter().collect();
    hot.sort_by_key(|h| std::cmp::Reverse(h.1.0));
    if hot.is_empty() {
        out.push(Check::info(
            "hot binaries",
            "no user-space samples: the host was idle",
        ));
    }
    for (path, (samples, truncated)) in hot.into_iter().take(args.binaries) {
        let share = 100.0 * samples as f64 / st.samples.max(1) as f64;
        let truncated_pct = 100.0 * truncated as f64 / samples.max(1) as f64;
        let name = format!("{path} ({share:.0}% of samples)");
        match binary::inspect(Path::new(&path)) {
            Err(e) => out.push(Check::info(&name, e)),
            Ok(info) => {
                out.push(symbols_check(&name, &info));
                out.push(frame_pointer_check(&name, &info, truncated_pct));
            }
        }
    }
    out
}

fn symbols_check(name: &str, info: &binary::BinaryInfo) -> Check {
    let name = format!("{name}: symbols");
    if info.has_symbols() {
        let mut what = Vec::new();
        if info.symtab {
            what.push("symtab");
        }
        if info.debug_info {
            what.push("DWARF");
        }
        if info.debug_file {
            what.push("debug file");
        }
        Check::yes(&name, what.join(" + "))
    } else {
        Check::no(
            &name,
            "stripped: only dynamic symbols",
            "internal functions show as [binary+0xoffset] and no file:line; install its \
             debug symbols (Debian: the -dbgsym package) or keep .symtab when building; \
             the collector can still symbolize later from build id + offset",
        )
    }
}

fn frame_pointer_check(name: &str, info: &binary::BinaryInfo, truncated_pct: f64) -> Check {
    let name = format!("{name}: frame pointers");
    let observed = format!("{truncated_pct:.0}% of its stacks truncated");
    match info.frame_pointers() {
        Some(true) if truncated_pct < 50.0 => Check::yes(
            &name,
            format!(
                "{}/{} functions set up %rbp; {observed}",
                info.functions_with_fp, info.functions_examined
            ),
        ),
        fp => Check::no(
            &name,
            match fp {
                Some(_) => format!(
                    "{}/{} functions set up %rbp; {observed}",
                    info.functions_with_fp, info.functions_examined
                ),
                None => format!("no function symbols to examine; {observed}"),
            },
            "callers of its functions are lost (flame graphs show flat stacks, inclusive \
             time is wrong); rebuild with -fno-omit-frame-pointer (C/C++) or \
             -C force-frame-pointers=yes (Rust)",
        ),
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unreadable: {e}"))
}
