//! Faults, driven through fixture powercap trees (no RAPL here): an unreadable `energy_uj`, a
//! zone that vanishes, a counter that goes backwards, a package with no samples and a
//! zero-length interval. Each must give no panic, no negative or NaN joules, a counted reason,
//! and the model's estimate where a package's measurement is lost.

use std::time::Duration;

use wattson_agent::energy::{
    Domain, EnergyArgs, Fault, IntervalEnergy, Meter, SampleSlot, Topology,
    powercap::PowercapSource,
};

use crate::fixture::{DRAM_RANGE, PACKAGE_RANGE, Powercap};

fn slots() -> [SampleSlot; 2] {
    [
        SampleSlot {
            cpu: 0,
            count: 10,
            idle_task: false,
        },
        SampleSlot {
            cpu: 1,
            count: 10,
            idle_task: false,
        },
    ]
}

fn setup() -> (Powercap, Meter) {
    let mut cap = Powercap::new();
    cap.zone("intel-rapl:0", "package-0", 1_000_000, PACKAGE_RANGE)
        .zone("intel-rapl:0:0", "dram", 1_000_000, DRAM_RANGE)
        .zone("intel-rapl:1", "package-1", 1_000_000, PACKAGE_RANGE);
    let topology = Topology::from_places([
        (
            0,
            wattson_agent::energy::topology::CpuPlace {
                package: 0,
                core: 0,
            },
        ),
        (
            1,
            wattson_agent::energy::topology::CpuPlace {
                package: 1,
                core: 0,
            },
        ),
    ]);
    let mut args = EnergyArgs::default();
    args.idle_watts = Some(0.0);
    args.model_idle_watts = 1.0;
    args.model_max_watts = 3.0;
    args.model_curve = "0:0,100:1".into();
    let source = PowercapSource::open(&cap.root()).unwrap();
    let meter = Meter::with_source(Box::new(source), topology, &args).unwrap();
    (cap, meter)
}

fn sane(e: &IntervalEnergy) {
    for p in &e.packages {
        assert!(p.balanced(), "{p:?}");
        assert!(p.busy.is_finite() && p.busy >= 0.0);
    }
    for (_, w) in e.watts_by_domain() {
        assert!(w.is_finite() && w >= 0.0);
    }
}

#[test]
fn fixture_unreadable_energy_file_is_counted_and_the_model_stands_in() {
    let (cap, mut meter) = setup();
    cap.corrupt("intel-rapl:1", "not a number");
    let e = meter.interval(Duration::from_secs(1), 10, &slots());
    assert!(e.faults.contains(&Fault::Unreadable), "{:?}", e.faults);
    assert!(e.faults.contains(&Fault::ModelFallback));
    assert!(!e.packages[0].estimated && e.packages[1].estimated);
    assert!(e.estimated, "a profile with any model figure says so");
    // Model: CPU 1 fully busy (10 samples at 10 Hz for 1 s) = 3 W for 1 s.
    assert_eq!(e.packages[1].interval_uj, 3_000_000);
    assert_eq!(meter.faults().get(&Fault::Unreadable), Some(&1));
    sane(&e);
}

#[test]
fn fixture_vanished_zone_falls_back_then_dram_loss_keeps_the_package() {
    let (mut cap, mut meter) = setup();
    cap.advance("intel-rapl:0", 2_000_000);
    cap.remove("intel-rapl:0:0");
    let e = meter.interval(Duration::from_secs(1), 10, &slots());
    assert_eq!(e.faults, vec![Fault::Vanished]);
    // The package still reads: it is charged alone, measured, not estimated.
    assert_eq!(e.packages[0].domains, vec![(Domain::Package, 2_000_000)]);
    assert!(!e.packages[0].estimated);
    cap.remove("intel-rapl:0");
    let e = meter.interval(Duration::from_secs(1), 10, &slots());
    assert!(e.faults.contains(&Fault::Vanished) && e.faults.contains(&Fault::ModelFallback));
    assert!(e.packages[0].estimated);
    assert_eq!(meter.faults().get(&Fault::Vanished), Some(&3));
    sane(&e);
}

#[test]
fn fixture_counter_going_backwards_is_a_fault_not_negative_energy() {
    let (mut cap, mut meter) = setup();
    cap.set("intel-rapl:0", 10);
    let e = meter.interval(Duration::from_secs(1), 10, &slots());
    assert!(e.faults.contains(&Fault::Backwards), "{:?}", e.faults);
    assert!(e.packages[0].estimated);
    sane(&e);
    // Measurement resumes from the new value.
    cap.advance("intel-rapl:0", 500_000);
    let e = meter.interval(Duration::from_secs(1), 10, &slots());
    assert!(!e.packages[0].estimated);
    assert_eq!(e.packages[0].interval_uj, 500_000);
}

#[test]
fn fixture_package_with_no_samples_reports_unattributed_energy() {
    let (mut cap, mut meter) = setup();
    cap.advance("intel-rapl:1", 4_000_000);
    let only_cpu0 = &slots()[..1];
    let e = meter.interval(Duration::from_secs(1), 10, only_cpu0);
    assert_eq!(e.faults, vec![Fault::NoSamples]);
    assert_eq!(e.packages[1].unattributed_uj, 4_000_000);
    assert_eq!(e.unattributed_uj(), 4_000_000);
    sane(&e);
}

#[test]
fn fixture_zero_length_interval_divides_nothing() {
    let (mut cap, mut meter) = setup();
    cap.advance("intel-rapl:0", 1);
    let e = meter.interval(Duration::ZERO, 10, &slots());
    assert!(e.faults.contains(&Fault::ZeroInterval));
    assert_eq!(e.packages[0].idle_uj, 0);
    assert_eq!(e.per_slot_uj, vec![1, 0]);
    sane(&e);
}

#[test]
fn fixture_without_readable_package_zone_explains_the_root_only_rule() {
    let mut cap = Powercap::new();
    cap.zone("intel-rapl:0", "package-0", 0, PACKAGE_RANGE);
    std::fs::remove_file(cap.root().join("intel-rapl:0/energy_uj")).unwrap();
    std::fs::create_dir(cap.root().join("intel-rapl:0/energy_uj")).unwrap();
    let err = match PowercapSource::open(&cap.root()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened without a readable package zone"),
    };
    assert!(
        err.contains("no readable package zone") && err.contains("root"),
        "{err}"
    );
}
