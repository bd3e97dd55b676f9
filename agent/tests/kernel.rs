//! Tests against the running kernel's real BPF and perf events. They need root.
//!
//! This binary also runs inside the VM lab (`cargo xtask vm-test`) on Debian's 5.10, 6.1 and
//! 6.12 kernels, where the userland is busybox only: tests here must not need other tools,
//! the network, or files outside /proc and /sys.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use wattson_agent::sampler::{ClockEvent, Sampler, SamplerConfig};

fn spin_until(stop: &AtomicBool) -> u64 {
    let mut x = 0u64;
    while !stop.load(Ordering::Relaxed) {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    x
}

/// A sampler at 99 Hz with `config`'s other settings, loaded and attached on every CPU, and
/// the event it samples on.
fn attached_at_99_hz(mut config: SamplerConfig) -> (Sampler, ClockEvent) {
    config.frequency = 99;
    let mut sampler = Sampler::load(&config).expect("load sampler (are you root?)");
    let event = sampler.attach(&config).expect("attach sampler");
    (sampler, event)
}

/// A thread of this process running `work` until stopped.
struct Busy {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
    /// Its thread id, as samples carry it.
    tid: u32,
}

impl Busy {
    /// Starts `work`, which must return once its flag is set.
    fn start(work: impl FnOnce(&AtomicBool) + Send + 'static) -> Busy {
        let stop = Arc::new(AtomicBool::new(false));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
            work(&flag)
        });
        let tid = tid_rx.recv().unwrap();
        Busy { stop, thread, tid }
    }

    /// Stops it and waits for it.
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}

/// The smoke test of the VM lab: load, attach on every CPU at 99 Hz, spin, and find the
/// spinning thread among the samples.
#[test]
fn sampler_sees_a_busy_thread_on_every_kernel() {
    let (mut sampler, event) = attached_at_99_hz(SamplerConfig::default());
    eprintln!(
        "sampling with {} on {} cpus",
        event.name(),
        sampler.cpus().len()
    );

    let busy = Busy::start(|stop| {
        spin_until(stop);
    });
    let busy_tid = busy.tid;
    let started = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let drained = sampler.drain().expect("drain");
    busy.stop();
    let elapsed = started.elapsed().as_secs_f64();

    let me = std::process::id();
    let busy_samples: u64 = drained
        .samples
        .iter()
        .filter(|s| s.key.tgid == me && s.key.pid == busy_tid)
        .map(|s| s.count)
        .sum();
    let total: u64 = drained.samples.iter().map(|s| s.count).sum();
    let counters = sampler.counters().expect("counters");
    eprintln!(
        "busy tid {busy_tid}: {busy_samples} of {total} samples in {elapsed:.2}s; {counters:?}"
    );
    // 99 Hz for ~2 s on one CPU is ~200 samples; allow for a slow emulated clock.
    assert!(
        busy_samples >= 20,
        "busy thread got {busy_samples} samples, expected about {}",
        (99.0 * elapsed) as u64
    );
    assert!(
        counters.samples >= total,
        "counter {counters:?} < drained {total}"
    );
    let with_user_stack = drained
        .samples
        .iter()
        .filter(|s| s.key.pid == busy_tid && !s.user_stack.is_empty())
        .count();
    assert!(with_user_stack > 0, "no user stack for the busy thread");
}

/// A process the agent forgets is announced again at its next sample (its tgid may hold a
/// new process by then, whose metadata must be read while it runs); until then, only once.
#[test]
fn a_forgotten_process_is_announced_again() {
    let (mut sampler, _) = attached_at_99_hz(SamplerConfig::default());
    let me = std::process::id();
    let announced = |sampler: &mut Sampler, within: Duration| {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if sampler.new_processes().iter().any(|p| p.tgid == me) {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    };
    let busy = Busy::start(|stop| {
        spin_until(stop);
    });
    // Generous: the VM lab's emulated clock is slow.
    assert!(
        announced(&mut sampler, Duration::from_secs(30)),
        "never announced"
    );
    assert!(
        !announced(&mut sampler, Duration::from_millis(500)),
        "announced again without being forgotten"
    );
    sampler.forget_processes(&[me]).expect("forget");
    let again = announced(&mut sampler, Duration::from_secs(30));
    busy.stop();
    assert!(again, "not announced again after being forgotten");
}

/// Recurses `depth` frames, then spins a little: every depth is a different call stack.
#[inline(never)]
fn descend(depth: u32) -> u64 {
    if depth == 0 {
        let mut x = 0u64;
        for _ in 0..20_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        return x;
    }
    std::hint::black_box(descend(std::hint::black_box(depth - 1))).wrapping_add(1)
}

/// Like perf, the sampler keeps the stack of every sample, however many different stacks
/// arrive between drains: only a full stack map may refuse one, and it is counted. (With a
/// `BPF_MAP_TYPE_STACK_TRACE` map, a new stack whose bucket another stack held was lost:
/// with 512 buckets and a couple of hundred distinct stacks, dozens of samples lost theirs.)
#[test]
fn many_distinct_stacks_all_keep_their_user_stack() {
    let mut config = SamplerConfig::default();
    config.tgid_filter = Some(std::process::id());
    config.map_entries = 512;
    let (mut sampler, _) = attached_at_99_hz(config);
    let busy = Busy::start(|stop| {
        let mut depth = 0u32;
        while !stop.load(Ordering::Relaxed) {
            descend(depth % 48);
            depth = depth.wrapping_add(7);
        }
    });
    let busy_tid = busy.tid;
    thread::sleep(Duration::from_secs(2));
    let drained = sampler.drain().expect("drain");
    busy.stop();
    let counters = sampler.counters().expect("counters");

    let busy: Vec<_> = drained
        .samples
        .iter()
        .filter(|s| s.key.pid == busy_tid)
        .collect();
    let samples: u64 = busy.iter().map(|s| s.count).sum();
    let without: u64 = busy
        .iter()
        .filter(|s| s.user_stack.is_empty())
        .map(|s| s.count)
        .sum();
    let distinct: std::collections::HashSet<&[u64]> =
        busy.iter().map(|s| s.user_stack.as_slice()).collect();
    eprintln!(
        "busy thread: {samples} samples, {} distinct user stacks, {without} without one; \
         missing {}; {counters:?}",
        distinct.len(),
        drained.missing_stacks
    );
    assert!(samples >= 20, "busy thread got only {samples} samples");
    assert!(
        distinct.len() >= 20,
        "only {} distinct stacks: the test does not exercise the stack map",
        distinct.len()
    );
    assert_eq!(without, 0, "samples lost their user stack: {counters:?}");
    assert_eq!(counters.user_stack_errors, 0);
    assert_eq!(drained.missing_stacks, 0);
}

/// Samples arriving while user space drains land in the other buffer and are not lost:
/// every sample counted before a point in time is in some drain after it, and no drain
/// holds a sample that was never counted.
#[test]
fn drains_lose_nothing_between_them() {
    lose_nothing(SamplerConfig::default());
}

/// The same with the per-entry reads kernels before 5.6 get.
#[test]
fn drains_entry_by_entry_lose_nothing_between_them() {
    let mut config = SamplerConfig::default();
    config.batched_drain = false;
    lose_nothing(config);
}

fn lose_nothing(config: SamplerConfig) {
    let batched = config.batched_drain;
    let (mut sampler, _) = attached_at_99_hz(config);
    let busy = Busy::start(|stop| {
        spin_until(stop);
    });
    let accepted = |c: &wattson_agent::sampler::Counters| c.samples - c.filtered - c.map_full;
    let mut drained = 0;
    for _ in 0..10 {
        thread::sleep(Duration::from_millis(150));
        drained += sampler
            .drain()
            .unwrap()
            .samples
            .iter()
            .map(|s| s.count)
            .sum::<u64>();
    }
    busy.stop();
    let at_t0 = accepted(&sampler.counters().unwrap());
    // Two more drains read both buffers, so everything accepted before t0 has been drained.
    for _ in 0..2 {
        drained += sampler
            .drain()
            .unwrap()
            .samples
            .iter()
            .map(|s| s.count)
            .sum::<u64>();
    }
    let at_t1 = accepted(&sampler.counters().unwrap());
    eprintln!("accepted {at_t0}..{at_t1}, drained {drained}");
    // Every kernel this runs on (5.10 and later) has batched map reads.
    assert_eq!(sampler.batched(), batched, "batched drains fell back");
    assert!(at_t0 > 0, "no samples at all");
    assert!(
        drained >= at_t0,
        "lost samples: drained {drained} < accepted {at_t0}"
    );
    assert!(
        drained <= at_t1,
        "counted twice: drained {drained} > accepted {at_t1}"
    );
}

/// Spins for a moment when launched as the short-lived child of
/// `short_lived_process_is_captured_before_it_exits`; a no-op otherwise.
#[test]
fn short_lived_child_body() {
    if std::env::var_os("WATTSON_SHORT_LIVED_CHILD").is_none() {
        return;
    }
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_millis(400);
    while Instant::now() < deadline {
        short_lived_child_spin(&stop);
    }
}

#[inline(never)]
fn short_lived_child_spin(stop: &AtomicBool) -> u64 {
    let mut x = 0u64;
    for _ in 0..100_000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    x
}

/// A process that lives 0.4 s and is gone when the window closes still has its metadata
/// (read from /proc on the BPF new-process event) and symbolized stacks (from maps captured
/// then), and the whole pipeline (drain, symbolize, profile) runs on this kernel.
#[test]
fn short_lived_process_is_captured_before_it_exits() {
    use wattson_agent::{interval::Recorder, process::ProcessTable, symbolize::Symbolizer};

    let (sampler, _) = attached_at_99_hz(SamplerConfig::default());
    let mut recorder = Recorder::new(
        sampler,
        ProcessTable::new("/proc", Vec::new()),
        Symbolizer::default(),
    )
    .expect("recorder");

    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "short_lived_child_body",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WATTSON_SHORT_LIVED_CHILD", "1")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn child");
    let child_pid = child.id();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        recorder.poll();
        thread::sleep(Duration::from_millis(10));
        assert!(started.elapsed() < Duration::from_secs(60), "child hangs");
    }
    thread::sleep(Duration::from_millis(200));
    let profile = recorder.finish_window().expect("finish window");

    let process = profile.processes.get(&child_pid).unwrap_or_else(|| {
        panic!(
            "child {child_pid} missing; {} processes",
            profile.processes.len()
        )
    });
    eprintln!("child: {process:?}");
    assert!(
        !process.exited,
        "metadata was read only after the child exited"
    );
    let exe = process.exe.as_deref().unwrap_or_default();
    assert!(exe.contains("kernel"), "exe {exe:?}");
    let named = profile
        .samples
        .iter()
        .filter(|s| s.tgid == child_pid)
        .flat_map(|s| profile.stack_frames(s.stack))
        .any(|f| f.name().ends_with("short_lived_child_spin"));
    let child_samples: u64 = profile
        .samples
        .iter()
        .filter(|s| s.tgid == child_pid)
        .map(|s| s.count)
        .sum();
    eprintln!(
        "child samples {child_samples}; stats {:?}; event {}",
        profile.stats, profile.clock_event
    );
    assert!(child_samples > 0, "no samples of the child");
    assert!(named, "child frames not symbolized after it exited");
    assert!(profile.stats.samples > 0 && profile.duration_nanos > 0);
}

/// Writes to /dev/null in a loop, one `write(2)` per byte, until stopped: nearly all its
/// samples land in the kernel under glibc's `write`, which sets up no frame pointer.
#[inline(never)]
fn write_in_a_loop(stop: &AtomicBool) -> u64 {
    // SAFETY: opening a constant path; the descriptor is closed below.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY) };
    assert!(fd >= 0, "open /dev/null");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: writes one byte from a live local to an open descriptor.
        n += unsafe { libc::write(fd, c"x".as_ptr().cast(), 1) } as u64;
    }
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    n
}

/// glibc's `write` wrapper keeps no frame pointer, so the frame-pointer walk from a sample in
/// it (here in the system call, with the user registers saved at its entry) skips its caller.
/// The leaf fix-up puts the caller back from the stack words BPF kept. Kernels before 5.15
/// have no `bpf_task_pt_regs`: there the words are missing, and that is counted.
#[test]
fn the_caller_of_a_frameless_libc_write_is_recovered() {
    use wattson_agent::{interval::Recorder, process::ProcessTable, symbolize::Symbolizer};

    let (sampler, _) = attached_at_99_hz(SamplerConfig::default());
    let program = sampler.program();
    let mut recorder = Recorder::new(
        sampler,
        ProcessTable::new("/proc", Vec::new()),
        Symbolizer::default(),
    )
    .expect("recorder");
    let busy = Busy::start(|stop| {
        write_in_a_loop(stop);
    });
    let tid = busy.tid;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        recorder.poll();
        thread::sleep(Duration::from_millis(50));
    }
    busy.stop();
    let profile = recorder.finish_window().expect("finish window");

    // User frames of the writer's samples whose user leaf is libc's write, leaf first.
    let mut in_write = 0u64;
    let mut caller_found = 0u64;
    for s in profile.samples.iter().filter(|s| s.pid == tid) {
        let user: Vec<_> = profile
            .stack_frames(s.stack)
            .filter(|f| f.kind == wattson_agent::profile::FrameKind::User)
            .collect();
        let Some(leaf) = user.first() else { continue };
        if !(leaf.module.contains("libc") && leaf.name().contains("write")) {
            continue;
        }
        in_write += s.count;
        // The first frame past libc (DWARF may name inlined frames in libc's write too).
        if user
            .iter()
            .find(|f| !f.module.contains("libc"))
            .is_some_and(|f| f.name().ends_with("write_in_a_loop"))
        {
            caller_found += s.count;
        }
    }
    let stats = &profile.stats;
    eprintln!(
        "program {program}: {in_write} samples in libc's write, {caller_found} with their \
         caller; fix-ups {} made, {} failed, {} without words",
        stats.leaf_fixups, stats.leaf_fixups_failed, stats.leaf_words_missing
    );
    assert!(in_write >= 20, "too few samples in write: {in_write}");
    if program == wattson_agent_ebpf::COMPAT_PROGRAM_NAME {
        assert!(stats.leaf_words_missing > 0, "{stats:?}");
    } else {
        assert!(
            caller_found * 10 >= in_write * 9,
            "caller recovered in {caller_found} of {in_write} samples: {stats:?}"
        );
        assert!(stats.leaf_fixups >= caller_found, "{stats:?}");
    }
}
