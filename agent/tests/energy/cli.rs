//! The `wattson-agent` binary with energy: `record --weight energy` against a fixture powercap
//! tree (no RAPL here) that a thread advances at a known rate while the recording runs, and
//! `doctor` pointed at the same fixture. Needs root (record loads the BPF sampler).

use std::{
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::fixture::{DRAM_RANGE, PACKAGE_RANGE, Powercap};

const AGENT: &str = env!("CARGO_BIN_EXE_wattson-agent");

/// A number after `key` in `text` (e.g. "attributed " -> 12.345).
fn number_after(text: &str, key: &str) -> f64 {
    let at = text
        .find(key)
        .unwrap_or_else(|| panic!("{key:?} not in:\n{text}"))
        + key.len();
    text[at..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn fixture_powercap_record_weight_energy_writes_microjoule_folded_stacks() {
    let _alone = crate::fixture::exclusive();
    let mut cap = Powercap::new();
    cap.zone(
        "intel-rapl:0",
        "package-0",
        PACKAGE_RANGE - 50_000,
        PACKAGE_RANGE,
    )
    .zone("intel-rapl:0:0", "dram", 0, DRAM_RANGE);
    let root = cap.root();
    let cap = Arc::new(Mutex::new(cap));
    let stop = Arc::new(AtomicBool::new(false));
    // 10 W package + 1 W dram while `record` runs: every 10 ms the counters catch up with
    // wall time, so the rate holds over any window even when this thread is starved.
    let writer = {
        let (cap, stop) = (Arc::clone(&cap), Arc::clone(&stop));
        thread::spawn(move || {
            let started = Instant::now();
            let mut written = 0u64; // microseconds of 11 W written so far = uJ / 11
            while !stop.load(Ordering::Relaxed) {
                let due = started.elapsed().as_micros() as u64;
                let mut cap = cap.lock().unwrap();
                cap.advance("intel-rapl:0", (due - written) * 10);
                cap.advance("intel-rapl:0:0", due - written);
                drop(cap);
                written = due;
                thread::sleep(Duration::from_millis(10));
            }
            written as f64 * 11.0 / 1e6 / started.elapsed().as_secs_f64()
        })
    };
    let busy_stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let stop = Arc::clone(&busy_stop);
        thread::spawn(move || {
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        })
    };
    let out_dir = tempfile::tempdir().unwrap();
    let folded = out_dir.path().join("energy.folded");
    let output = Command::new(AGENT)
        .args(["record", "--duration", "2s", "--weight", "energy"])
        .args(["--energy-source", "powercap", "--idle-watts", "1"])
        .arg("--powercap-root")
        .arg(&root)
        .arg("--output")
        .arg(&folded)
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    busy_stop.store(true, Ordering::Relaxed);
    let fixture_watts = writer.join().unwrap();
    busy.join().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "{stdout}\nfixture advanced at {fixture_watts:.2} W\n{}",
        String::from_utf8_lossy(&output.stderr)
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(output.status.success(), "record failed");
    assert!(stdout.contains("energy: powercap (measured)"), "{stdout}");

    // Every folded line is `stack count` with an integer count; they sum to the attributed J.
    let text = std::fs::read_to_string(&folded).unwrap();
    let mut total_uj = 0u64;
    for line in text.lines() {
        let (_, count) = line.rsplit_once(' ').expect("stack count");
        total_uj += count.parse::<u64>().expect("integer microjoules");
    }
    let attributed_j = number_after(&stdout, "attributed ");
    assert!(
        (total_uj as f64 / 1e6 - attributed_j).abs() < 0.001,
        "folded {total_uj} uJ vs summary {attributed_j} J"
    );
    let host_watts = number_after(&stdout, "host power: ");
    assert!(
        (host_watts / 11.0 - 1.0).abs() < 0.02,
        "summary {host_watts} W vs the fixture's 11 W"
    );
    let idle_j = number_after(&stdout, "+ idle ");
    let energy_j = number_after(&stdout, "\nenergy ");
    assert!((attributed_j + idle_j - energy_j).abs() < 0.002, "{stdout}");
}

#[test]
fn fixture_powercap_doctor_binary_lists_zones_and_auto_choice() {
    let mut cap = Powercap::new();
    cap.zone("intel-rapl:0", "package-0", 0, PACKAGE_RANGE);
    let output = Command::new(AGENT)
        .args(["doctor", "--sample", "0s", "--powercap-root"])
        .arg(cap.root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(output.status.success());
    assert!(
        stdout.contains("yes energy source powercap: domains package-0"),
        "{stdout}"
    );
    assert!(stdout.contains("auto uses powercap (measured)"), "{stdout}");
}
