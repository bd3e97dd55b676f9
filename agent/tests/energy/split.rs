//! The end-to-end split: two real busy processes (one pinned busy loop, one pinned at
//! one-third duty on the other CPU) sampled by the real BPF sampler, while a thread advances a
//! fixture powercap tree (this host has no RAPL) at known rates, wrapping every zone. Each
//! process's attributed energy must follow its samples within 0.5% and its measured CPU time
//! within a timer sampler's skew on a loaded machine (15%), and attributed + idle must equal
//! the energy the fixture advanced within 0.1%.

use std::{
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use wattson_agent::{
    energy::{EnergyArgs, Meter, SampleSlot, Topology, powercap::PowercapSource},
    sampler::{RawSample, Sampler, SamplerConfig},
};

use crate::fixture::{DRAM_RANGE, PACKAGE_RANGE, Powercap};

const CHILD_ENV: &str = "WATTSON_ENERGY_TEST_CHILD";
/// Samples the lighter process needs before the split is compared.
const MIN_SAMPLES: u64 = 2_500;
/// Longest the split test waits for them.
const MAX_RUN: Duration = Duration::from_secs(45);

/// Not a test: the body of the busy processes the split test starts (re-running this test
/// binary with `CHILD_ENV=cpu:duty%`). It spins pinned to a CPU at the given duty cycle
/// (busy 30 ms of every 30 ms x 100 / duty: few wakeups, so little sampling skew at each)
/// until killed.
#[test]
#[ignore = "helper process of the split test, started by it"]
fn busy_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (cpu, duty) = spec.split_once(':').expect("cpu:duty");
    let (cpu, duty): (usize, u64) = (cpu.parse().unwrap(), duty.parse().unwrap());
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
    let busy = Duration::from_millis(30);
    let period = busy * 100 / duty as u32;
    let mut x = 0u64;
    loop {
        let start = Instant::now();
        while start.elapsed() < busy {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        if let Some(rest) = period.checked_sub(start.elapsed()) {
            thread::sleep(rest);
        }
    }
}

fn spawn_busy(cpu: u32, duty: u32) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["split::busy_child", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_ENV, format!("{cpu}:{duty}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start busy child")
}

/// CPU time of every thread of `pid`, nanoseconds (`/proc/PID/task/*/schedstat`).
fn cpu_nanos(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let stat = std::fs::read_to_string(task.unwrap().path().join("schedstat")).unwrap();
        total += stat
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap();
    }
    total
}

/// Zones and the rate (uJ per 10 ms tick) the writer advances them at; every zone starts
/// a little below its range so it wraps during the run.
const ZONES: [(&str, &str, u64, u64); 4] = [
    ("intel-rapl:0", "package-0", PACKAGE_RANGE, 120_000), // 12 W
    ("intel-rapl:0:0", "core", PACKAGE_RANGE, 80_000),
    ("intel-rapl:0:1", "dram", DRAM_RANGE, 30_000), // 3 W
    ("intel-rapl:1", "psys", PACKAGE_RANGE, 200_000),
];

#[test]
fn fixture_powercap_two_real_busy_processes_split_energy_by_cpu_time() {
    let _alone = crate::fixture::exclusive();
    let cpus = wattson_agent::sampler::online_cpus().unwrap();
    assert!(cpus.len() >= 2, "needs two CPUs, found {cpus:?}");
    let mut cap = Powercap::new();
    for (file, name, max, _) in ZONES {
        cap.zone(file, name, max - 1_000_000, max);
    }
    let cap = Arc::new(Mutex::new(cap));

    let mut config = SamplerConfig::default();
    config.frequency = 997;
    let mut sampler = Sampler::load(&config).expect("load sampler (are you root?)");
    sampler.attach(&config).expect("attach sampler");

    let mut full = spawn_busy(cpus[0], 100);
    let mut third = spawn_busy(cpus[1], 33);
    thread::sleep(Duration::from_millis(300)); // let both pin themselves and settle

    let mut args = EnergyArgs::default();
    args.idle_watts = Some(2.0);
    let root = cap.lock().unwrap().root();
    let source = PowercapSource::open(&root).expect("open fixture powercap");
    let topology = Topology::read(std::path::Path::new("/sys")).unwrap();
    let mut meter = Meter::with_source(Box::new(source), topology, &args).unwrap();
    let _ = sampler.drain().unwrap(); // start the interval clean
    let started = Instant::now();
    let cpu_before = (cpu_nanos(full.id()), cpu_nanos(third.id()));

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (cap, stop) = (Arc::clone(&cap), Arc::clone(&stop));
        thread::spawn(move || {
            let mut charged = 0u64; // package + dram advanced
            while !stop.load(Ordering::Relaxed) {
                let mut cap = cap.lock().unwrap();
                for (file, _, _, step) in ZONES {
                    cap.advance(file, step);
                }
                charged += ZONES[0].3 + ZONES[2].3;
                drop(cap);
                thread::sleep(Duration::from_millis(10));
            }
            charged
        })
    };
    // Run until the lighter process has enough samples for the comparison (sampling noise
    // is about 1/sqrt(n)), however loaded the machine is, within MAX_RUN.
    let (full_pid, third_pid) = (full.id(), third.id());
    let mut samples: Vec<RawSample> = Vec::new();
    let samples_of = |samples: &[RawSample], pid: u32| -> u64 {
        samples
            .iter()
            .filter(|s| s.key.tgid == pid)
            .map(|s| s.count)
            .sum()
    };
    loop {
        thread::sleep(Duration::from_secs(1));
        samples.extend(sampler.drain().unwrap().samples);
        let least = samples_of(&samples, full_pid).min(samples_of(&samples, third_pid));
        if least >= MIN_SAMPLES || started.elapsed() >= MAX_RUN {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let fixture_delta = writer.join().unwrap();
    samples.extend(sampler.drain().unwrap().samples);
    let elapsed = started.elapsed();
    let cpu_full = cpu_nanos(full_pid) - cpu_before.0;
    let cpu_third = cpu_nanos(third_pid) - cpu_before.1;
    full.kill().unwrap();
    third.kill().unwrap();
    let _ = (full.wait(), third.wait());

    let slots: Vec<SampleSlot> = samples
        .iter()
        .map(|s| SampleSlot {
            cpu: s.key.cpu,
            count: s.count,
            idle_task: s.key.pid == 0,
        })
        .collect();
    let e = meter.interval(elapsed, config.frequency, &slots);
    let energy_of = |pid: u32| -> u64 {
        samples
            .iter()
            .zip(&e.per_slot_uj)
            .filter(|(s, _)| s.key.tgid == pid)
            .map(|(_, uj)| uj)
            .sum()
    };
    let (e_full, e_third) = (energy_of(full_pid), energy_of(third_pid));
    let energy_ratio = e_full as f64 / e_third as f64;
    let cpu_ratio = cpu_full as f64 / cpu_third as f64;
    eprintln!(
        "elapsed {elapsed:?}; samples full {} third {} all {}; cpu ms full {} third {}; \
         energy uJ full {e_full} third {e_third}; energy ratio {energy_ratio:.4}, cpu ratio \
         {cpu_ratio:.4} (nominal 3.03); fixture delta {fixture_delta} uJ, interval {}, idle {}, \
         attributed {}, unattributed {}; faults {:?}",
        samples_of(&samples, full_pid),
        samples_of(&samples, third_pid),
        slots.iter().map(|s| s.count).sum::<u64>(),
        cpu_full / 1_000_000,
        cpu_third / 1_000_000,
        e.interval_uj(),
        e.idle_uj(),
        e.attributed_uj(),
        e.unattributed_uj(),
        e.faults,
    );
    assert!(e.faults.is_empty(), "{:?}", e.faults);
    assert!(e_full > 0 && e_third > 0, "both processes must get energy");
    // Energy follows the samples exactly (the meter's job); the samples follow CPU time only
    // as well as a timer sampler can on a shared machine: in CI, loaded by a parallel build,
    // the one-third-duty process drew 10% more samples than its schedstat time (ratio 3.94 vs
    // 4.24), so that leg gets a sampler's tolerance, not the meter's.
    let sample_ratio =
        samples_of(&samples, full_pid) as f64 / samples_of(&samples, third_pid) as f64;
    let meter_error = (energy_ratio / sample_ratio - 1.0).abs();
    assert!(
        meter_error <= 0.005,
        "energy split {energy_ratio:.4} vs sample split {sample_ratio:.4}: off by {:.2}%",
        meter_error * 100.0
    );
    let sampler_error = (sample_ratio / cpu_ratio - 1.0).abs();
    assert!(
        sampler_error <= 0.15,
        "sample split {sample_ratio:.4} vs CPU-time split {cpu_ratio:.4}: off by {:.2}%",
        sampler_error * 100.0
    );
    let accounted = e.attributed_uj() + e.idle_uj() + e.unattributed_uj();
    let delta_error = (accounted as f64 / fixture_delta as f64 - 1.0).abs();
    assert!(
        delta_error <= 0.001,
        "attributed + idle {accounted} vs fixture delta {fixture_delta}"
    );
    assert_eq!(e.unattributed_uj(), 0);
}
