//! Power end to end with the real binaries over 127.0.0.1: `wattson-collector serve` (SQLite
//! store), `wattson-agent run` (real BPF sampler, so run as root) and the `wattson-demo`
//! workload spinning in `hash_records`; then `wattson top --json` must put the demo's hot
//! function at the top with its watts labelled by where they came from.
//!
//! This host has no RAPL, so the measured case points the agent at a fixture powercap tree
//! (`--powercap-root`, `--sysfs-root`) whose `energy_uj` counters this test advances at a known
//! rate while the agent runs (the fixture code is the agent's own test fixture). The estimated
//! case uses the utilization model (`--energy-source model`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use wattson_e2e::procs::{self, Proc};

#[path = "../../agent/tests/energy/fixture.rs"]
#[allow(dead_code)] // shared with the agent's tests, which use more of it
mod fixture;

use fixture::{PACKAGE_RANGE, Powercap, Sysfs};

const DEMO: &str = env!("CARGO_BIN_EXE_wattson-demo");
/// The service label the agent gives the demo (`--service comm:wattson-demo=...`).
const SERVICE: &str = "e2e-demo";
/// Watts the fixture's package zone draws.
const FIXTURE_WATTS: u64 = 12;

/// One CPU-heavy test at a time: two would share the CPUs and each other's samples.
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Advances a fixture zone at [`FIXTURE_WATTS`] until dropped: every 10 ms the counter catches
/// up with wall time, so the rate holds over any window even when this thread is starved.
struct Meter {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Meter {
    fn start(cap: Powercap, zone: &'static str) -> (Meter, Arc<Mutex<Powercap>>) {
        let cap = Arc::new(Mutex::new(cap));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (cap.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let started = Instant::now();
            let mut written = 0u64; // microseconds covered so far
            while !s.load(Ordering::Relaxed) {
                let due = started.elapsed().as_micros() as u64;
                c.lock()
                    .unwrap()
                    .advance(zone, (due - written) * FIXTURE_WATTS);
                written = due;
                thread::sleep(Duration::from_millis(10));
            }
        });
        let meter = Meter {
            stop,
            thread: Some(thread),
        };
        (meter, cap)
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Kills the demo workload if the test panics.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What `wattson` answered about a run.
struct Answers {
    /// `wattson --json top`.
    top: Value,
    /// `wattson profile --format folded --service e2e-demo`: the demo's stacks by samples.
    folded: String,
}

/// Runs collector, agent (with `energy` flags) and demo for a few intervals, stops them, and
/// asks `wattson` about the run.
fn run_pipeline(dir: &Path, host: &str, energy: &[String]) -> Answers {
    let store = format!("sqlite://{}", dir.join("wattson.db").display());
    let (mut collector, addr) = procs::collector("127.0.0.1:0", &store, &[]);
    let url = format!("http://{addr}");
    let started = now();
    let demo = Demo(
        Command::new(DEMO)
            .args(["--workload", "hash", "--seconds", "30"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting wattson-demo"),
    );
    let mut args: Vec<String> = [
        "run",
        "--collector",
        &url,
        "--frequency",
        "49",
        "--interval",
        "1s",
        "--host-id",
        host,
        "--service",
        &format!("comm:wattson-demo={SERVICE}"),
        "--spool-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(dir.join("spool").display().to_string());
    args.extend_from_slice(energy);
    let mut agent = Proc::start(
        "agent",
        "wattson-agent",
        &args,
        "info,wattson_agent::ship=debug",
    );
    // Three one-second intervals keep the run short (CI's budget); the first interval is
    // the slowest, as the agent symbolizes every binary it meets for the first time.
    agent.wait_until("three acknowledged batches", Duration::from_secs(60), |p| {
        p.count("batch acknowledged") >= 3
    });
    agent.stop(libc::SIGTERM, Duration::from_secs(30));
    drop(demo);
    let (from, to) = ((started - 60).to_string(), (now() + 60).to_string());
    let wattson = |args: &[&str]| {
        let out = Command::new(procs::binary("wattson"))
            .args(["--collector", &url])
            .args(args)
            .args(["--from", &from, "--to", &to])
            .output()
            .expect("running wattson");
        assert!(
            out.status.success(),
            "wattson {args:?} failed: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            agent.dump(),
            collector.dump()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = wattson(&["--json", "top", "--limit", "10"]);
    let folded = wattson(&[
        "profile",
        "--service",
        SERVICE,
        "--format",
        "folded",
        "--output",
        "-",
    ]);
    collector.stop(libc::SIGTERM, Duration::from_secs(30));
    eprintln!("{text}\n{host}: pipeline ran {} s", now() - started);
    let top = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("top --json is not JSON ({e}):\n{text}"));
    Answers { top, folded }
}

/// Share of `leaf`'s samples in `folded` whose stack passes through `frame`.
fn share_under(folded: &str, leaf: &str, frame: &str) -> f64 {
    let (mut all, mut under) = (0u64, 0u64);
    for line in folded.lines() {
        let (stack, count) = line.rsplit_once(' ').expect("`stack count`");
        let count: u64 = count.parse().expect("integer sample count");
        let frames: Vec<&str> = stack.split(';').collect();
        if frames.last() == Some(&leaf) {
            all += count;
            if frames.contains(&frame) {
                under += count;
            }
        }
    }
    if all == 0 {
        0.0
    } else {
        under as f64 / all as f64
    }
}

/// The demo's hottest row: it must be `hash_records` or a function inlined into it (its
/// samples' stacks pass through `hash_records`), ranked within the first three functions of
/// the whole host by self energy.
fn demo_top_row(answers: &Answers) -> &Value {
    let top = &answers.top;
    let rows = top["rows"].as_array().expect("rows");
    let (rank, row) = rows
        .iter()
        .enumerate()
        .find(|(_, r)| r["service"] == SERVICE)
        .unwrap_or_else(|| panic!("no {SERVICE} row in top:\n{top:#}"));
    let function = row["function"].as_str().unwrap();
    let under = share_under(&answers.folded, function, "wattson_demo::hash_records");
    assert!(
        under >= 0.9,
        "the demo's hottest function is {function:?}, and only {:.0}% of its samples are under \
         wattson_demo::hash_records:\n{}",
        under * 100.0,
        answers.folded
    );
    assert!(
        rank < 3,
        "the busy workload ranks #{} on this host, not at the top:\n{top:#}",
        rank + 1
    );
    row
}

#[test]
fn agent_to_collector_to_top_with_fixture_powercap_reports_measured_watts() {
    let _alone = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let places: Vec<(u32, u32, u32)> = (0..cpus).map(|c| (c, 0, c)).collect();
    let sysfs = Sysfs::new(&places);
    let mut cap = Powercap::new();
    cap.zone("intel-rapl:0", "package-0", 1_000_000, PACKAGE_RANGE);
    let root = cap.root();
    let (meter, cap) = Meter::start(cap, "intel-rapl:0");
    let energy: Vec<String> = vec![
        "--energy-source".into(),
        "powercap".into(),
        "--powercap-root".into(),
        root.display().to_string(),
        "--sysfs-root".into(),
        sysfs.root().display().to_string(),
        // Charge everything above 1 W to functions (the fixture draws a flat 12 W).
        "--idle-watts".into(),
        "1".into(),
    ];
    let answers = run_pipeline(dir.path(), "e2e-power-measured", &energy);
    let top = &answers.top;
    drop(meter);
    let advanced = cap.lock().unwrap().value("intel-rapl:0") - 1_000_000;
    assert!(advanced > 0, "the fixture meter never advanced");

    let row = demo_top_row(&answers);
    let power = &row["self"];
    assert_eq!(
        power["estimated"], false,
        "powercap energy is measured:\n{row:#}"
    );
    let measured = power["joules_measured"].as_f64().unwrap();
    assert!(measured > 0.0, "no measured joules:\n{row:#}");
    assert_eq!(power["joules_estimated"].as_f64(), Some(0.0), "{row:#}");
    // The demo spins one CPU; it cannot draw more than everything above idle.
    let watts = power["watts"].as_f64().unwrap();
    assert!(
        watts > 0.0 && watts <= (FIXTURE_WATTS - 1) as f64 * 1.05,
        "{watts} W for one busy function with {FIXTURE_WATTS} W at the meter and 1 W idle:\n{row:#}"
    );
    // No row of the run is estimated.
    for r in top["rows"].as_array().unwrap() {
        assert_eq!(r["self"]["estimated"], false, "{r:#}");
    }
}

#[test]
fn agent_to_collector_to_top_with_the_model_reports_estimated_watts() {
    let _alone = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let energy: Vec<String> = vec!["--energy-source".into(), "model".into()];
    let answers = run_pipeline(dir.path(), "e2e-power-model", &energy);

    let row = demo_top_row(&answers);
    let power = &row["self"];
    assert_eq!(
        power["estimated"], true,
        "model energy is estimated:\n{row:#}"
    );
    assert!(
        power["joules_estimated"].as_f64().unwrap() > 0.0,
        "no estimated joules:\n{row:#}"
    );
    assert_eq!(power["joules_measured"].as_f64(), Some(0.0), "{row:#}");
    assert!(power["watts"].as_f64().unwrap() > 0.0, "{row:#}");
}
