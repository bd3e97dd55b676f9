//! Zone layouts, fed from fixture trees (no RAPL on these machines): every zone wrapping,
//! two packages, AMD's package-only layout, a package without DRAM, the MSR registers through
//! `--msr-root` files, and the model source, which must say its joules are estimated.

use std::{os::unix::fs::FileExt, time::Duration};

use wattson_agent::energy::{
    Domain, EnergyArgs, EnergySource, IntervalEnergy, Meter, SampleSlot, SourceChoice, SourceKind,
    Topology,
    model::{Curve, ModelSource},
    powercap::PowercapSource,
};

use crate::fixture::{DRAM_RANGE, PACKAGE_RANGE, Powercap, Sysfs};

fn slot(cpu: u32, count: u64) -> SampleSlot {
    SampleSlot {
        cpu,
        count,
        idle_task: false,
    }
}

fn args_with_idle(idle_watts: f64) -> EnergyArgs {
    let mut args = EnergyArgs::default();
    args.idle_watts = Some(idle_watts);
    args
}

fn powercap_meter(cap: &Powercap, topology: Topology, args: &EnergyArgs) -> Meter {
    let source = PowercapSource::open(&cap.root()).expect("open fixture powercap");
    Meter::with_source(Box::new(source), topology, args).unwrap()
}

fn domain(e: &IntervalEnergy, package: usize, d: Domain) -> Option<u64> {
    e.packages[package]
        .domains
        .iter()
        .find(|(x, _)| *x == d)
        .map(|&(_, uj)| uj)
}

fn assert_balanced(e: &IntervalEnergy) {
    for p in &e.packages {
        assert!(p.balanced(), "package {} does not add up: {p:?}", p.package);
    }
    assert_eq!(e.per_slot_uj.iter().sum::<u64>(), e.attributed_uj());
}

#[test]
fn fixture_powercap_every_zone_wraps_at_its_max_energy_range() {
    let mut cap = Powercap::new();
    cap.zone(
        "intel-rapl:0",
        "package-0",
        PACKAGE_RANGE - 3_000_000,
        PACKAGE_RANGE,
    )
    .zone(
        "intel-rapl:0:0",
        "core",
        PACKAGE_RANGE - 1_000,
        PACKAGE_RANGE,
    )
    .zone(
        "intel-rapl:0:1",
        "uncore",
        PACKAGE_RANGE - 10,
        PACKAGE_RANGE,
    )
    .zone("intel-rapl:0:2", "dram", DRAM_RANGE - 500_000, DRAM_RANGE)
    .zone("intel-rapl:1", "psys", PACKAGE_RANGE - 7, PACKAGE_RANGE);
    let mut meter = powercap_meter(&cap, Topology::single_package([0, 1]), &args_with_idle(1.0));
    for (zone, uj) in [
        ("intel-rapl:0", 20_000_000),
        ("intel-rapl:0:0", 12_000_000),
        ("intel-rapl:0:1", 3_000_000),
        ("intel-rapl:0:2", 4_000_000),
        ("intel-rapl:1", 30_000_000),
    ] {
        cap.advance(zone, uj);
        assert!(cap.value(zone) < uj, "{zone} should have wrapped");
    }
    let e = meter.interval(Duration::from_secs(2), 99, &[slot(0, 150), slot(1, 50)]);
    assert!(e.faults.is_empty(), "{:?}", e.faults);
    assert_eq!(domain(&e, 0, Domain::Package), Some(20_000_000));
    assert_eq!(domain(&e, 0, Domain::Core), Some(12_000_000));
    assert_eq!(domain(&e, 0, Domain::Uncore), Some(3_000_000));
    assert_eq!(domain(&e, 0, Domain::Dram), Some(4_000_000));
    assert_eq!(e.host_domains, vec![(Domain::Psys, 30_000_000)]);
    // Charged: package + dram = 24 J, 2 J idle (1 W x 2 s), 22 J split 3:1.
    assert_eq!(e.interval_uj(), 24_000_000);
    assert_eq!(e.idle_uj(), 2_000_000);
    assert_eq!(e.per_slot_uj, vec![16_500_000, 5_500_000]);
    assert!(!e.estimated);
    assert_eq!(e.source, SourceKind::Powercap);
    assert_balanced(&e);
}

#[test]
fn fixture_powercap_two_packages_split_over_their_own_cpus() {
    let sysfs = Sysfs::new(&[(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)]);
    let mut cap = Powercap::new();
    cap.zone("intel-rapl:0", "package-0", 1_000, PACKAGE_RANGE)
        .zone("intel-rapl:0:0", "dram", DRAM_RANGE - 5, DRAM_RANGE)
        .zone(
            "intel-rapl:1",
            "package-1",
            PACKAGE_RANGE - 5,
            PACKAGE_RANGE,
        )
        .zone("intel-rapl:1:0", "dram", 0, DRAM_RANGE);
    let topology = Topology::read(sysfs.root()).unwrap();
    let mut meter = powercap_meter(&cap, topology, &args_with_idle(4.0));
    cap.advance("intel-rapl:0", 9_000_000);
    cap.advance("intel-rapl:0:0", 1_000_000);
    cap.advance("intel-rapl:1", 5_000_001);
    cap.advance("intel-rapl:1:0", 1_000_000);
    let slots = [slot(0, 10), slot(1, 30), slot(2, 7), slot(3, 0), slot(3, 2)];
    let e = meter.interval(Duration::from_secs(1), 99, &slots);
    // Idle 4 W for the host, 2 W per package over 1 s.
    // Package 0: 10 J - 2 J = 8 J over 40 samples; package 1: 6.000001 J - 2 J over 9.
    assert_eq!(e.packages.len(), 2);
    assert_eq!(e.packages[0].interval_uj, 10_000_000);
    assert_eq!(e.packages[1].interval_uj, 6_000_001);
    assert_eq!(&e.per_slot_uj[..2], &[2_000_000, 6_000_000]);
    assert_eq!(e.per_slot_uj[2] + e.per_slot_uj[4], 4_000_001);
    assert_eq!(e.per_slot_uj[3], 0);
    assert_eq!(e.per_slot_uj[2], 3_111_112);
    assert_balanced(&e);
}

#[test]
fn fixture_powercap_amd_style_package_only_layout() {
    let mut cap = Powercap::new();
    cap.zone("intel-rapl:0", "package-0", 5, PACKAGE_RANGE);
    let mut meter = powercap_meter(&cap, Topology::single_package([0, 1]), &args_with_idle(0.5));
    assert_eq!(
        meter.describe(),
        format!("powercap {} (1 zones)", cap.root().display())
    );
    cap.advance("intel-rapl:0", 3_000_000);
    let e = meter.interval(Duration::from_secs(2), 99, &[slot(0, 1), slot(1, 3)]);
    assert_eq!(e.packages[0].domains, vec![(Domain::Package, 3_000_000)]);
    assert_eq!(e.per_slot_uj, vec![500_000, 1_500_000]);
    assert_eq!(e.idle_uj(), 1_000_000);
    assert_balanced(&e);
}

#[test]
fn fixture_powercap_without_dram_charges_the_package_alone() {
    let mut cap = Powercap::new();
    cap.zone("intel-rapl:0", "package-0", 0, PACKAGE_RANGE)
        .zone("intel-rapl:0:0", "core", 0, PACKAGE_RANGE)
        .zone("intel-rapl:0:1", "uncore", 0, PACKAGE_RANGE);
    let mut meter = powercap_meter(&cap, Topology::single_package([0]), &args_with_idle(0.0));
    cap.advance("intel-rapl:0", 7_000_000);
    cap.advance("intel-rapl:0:0", 5_000_000);
    cap.advance("intel-rapl:0:1", 1_000_000);
    let e = meter.interval(Duration::from_secs(1), 99, &[slot(0, 5)]);
    assert_eq!(domain(&e, 0, Domain::Dram), None);
    assert_eq!(e.interval_uj(), 7_000_000);
    assert_eq!(e.per_slot_uj, vec![7_000_000]);
    let watts = e.watts_by_domain();
    assert!(watts.contains(&(Domain::Package, 7.0)) && watts.contains(&(Domain::Core, 5.0)));
    assert_balanced(&e);
}

#[test]
fn fixture_msr_files_decode_intel_registers_through_msr_root() {
    // Sparse files stand in for /dev/cpu/N/msr: the register number is the file offset.
    let sysfs = Sysfs::new(&[(0, 0, 0), (1, 1, 0)]);
    let msr = tempfile::tempdir().unwrap();
    let set = |cpu: u32, register: u64, value: u64| {
        std::fs::create_dir_all(msr.path().join(cpu.to_string())).unwrap();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(msr.path().join(format!("{cpu}/msr")))
            .unwrap();
        file.write_all_at(&value.to_le_bytes(), register).unwrap();
    };
    for cpu in [0, 1] {
        set(cpu, 0x606, 0xA0E03); // ESU 14: 61.03515625 uJ per count
        set(cpu, 0x611, 0xFFFF_FFF0);
        set(cpu, 0x639, 0);
        set(cpu, 0x619, 0);
        set(cpu, 0x64d, 0);
    }
    let mut args = args_with_idle(0.0);
    args.energy_source = SourceChoice::Msr;
    args.sysfs_root = sysfs.root().to_owned();
    args.msr_root = msr.path().to_owned();
    let mut meter = Meter::open(&args).unwrap().expect("msr meter");
    assert_eq!(meter.source(), SourceKind::Msr);
    set(0, 0x611, 0x0000_3FF0); // wrapped: 0x4000 counts = 1 J
    set(1, 0x611, 0x0000_7FF0); // 0x8000 counts = 2 J
    set(0, 0x619, 16_384 / 4); // 0.25 J
    set(0, 0x64d, 16_384 * 5); // 5 J platform
    let e = meter.interval(Duration::from_secs(1), 99, &[slot(0, 1), slot(1, 1)]);
    assert_eq!(domain(&e, 0, Domain::Package), Some(1_000_000));
    assert_eq!(domain(&e, 1, Domain::Package), Some(2_000_000));
    assert_eq!(domain(&e, 0, Domain::Dram), Some(250_000));
    assert_eq!(e.host_domains, vec![(Domain::Psys, 5_000_000)]);
    assert_eq!(e.per_slot_uj, vec![1_250_000, 2_000_000]);
    assert_balanced(&e);
}

#[test]
fn model_source_is_labelled_estimated_everywhere() {
    let sysfs = Sysfs::new(&[(0, 0, 0), (1, 0, 1)]);
    let mut args = EnergyArgs::default();
    args.energy_source = SourceChoice::Model;
    args.sysfs_root = sysfs.root().to_owned();
    args.model_idle_watts = 1.0;
    args.model_max_watts = 5.0;
    args.model_curve = "0:0,100:1".into();
    let mut meter = Meter::open(&args).unwrap().expect("model meter");
    // 100 Hz for 2 s: CPU 0 fully busy (200 samples), CPU 1 a quarter (50).
    let e = meter.interval(Duration::from_secs(2), 100, &[slot(0, 200), slot(1, 50)]);
    assert_eq!(e.source, SourceKind::Model);
    assert!(e.estimated && e.packages.iter().all(|p| p.estimated));
    assert!(e.method.starts_with("estimated"), "{}", e.method);
    // (5 W + 2 W) x 2 s = 14 J; idle from the model: 2 CPUs x 1 W x 2 s = 4 J.
    assert_eq!(e.interval_uj(), 14_000_000);
    assert_eq!(
        (e.idle_uj(), e.packages[0].idle_basis),
        (4_000_000, "model")
    );
    assert_eq!(e.per_slot_uj, vec![8_000_000, 2_000_000]);
    assert_balanced(&e);

    let curve = Curve::new(1.0, 5.0, "0:0,100:1").unwrap();
    let model = ModelSource::new(curve, Topology::single_package([0]));
    assert!(model.estimated());
}

#[test]
fn fixture_powercap_energy_lands_in_profile_samples_and_meta() {
    use wattson_agent::profile::{Profile, Sample};
    let mut cap = Powercap::new();
    cap.zone("intel-rapl:0", "package-0", 0, PACKAGE_RANGE)
        .zone("intel-rapl:0:0", "dram", 0, DRAM_RANGE)
        .zone("intel-rapl:1", "psys", 0, PACKAGE_RANGE);
    let mut meter = powercap_meter(&cap, Topology::single_package([0, 1]), &args_with_idle(1.0));
    cap.advance("intel-rapl:0", 8_000_000);
    cap.advance("intel-rapl:0:0", 2_000_000);
    cap.advance("intel-rapl:1", 11_000_000);
    let sample = |tgid: u32, cpu: u32, count: u64| Sample {
        tgid,
        pid: tgid,
        cpu,
        stack: 0,
        count,
        microjoules: None,
    };
    let mut profile = Profile {
        duration_nanos: 2_000_000_000,
        frequency: 99,
        samples: vec![sample(10, 0, 60), sample(11, 1, 20), sample(0, 1, 50)],
        ..Profile::default()
    };
    meter.end_window_with(Duration::from_secs(2));
    let e = meter.attribute_profile(&mut profile);
    let uj: Vec<Option<u64>> = profile.samples.iter().map(|s| s.microjoules).collect();
    // 10 J - 2 J idle = 8 J over the 80 non-idle samples; the idle task gets none.
    assert_eq!(uj, vec![Some(6_000_000), Some(2_000_000), Some(0)]);
    let meta = profile.energy.as_ref().expect("energy meta");
    assert_eq!(meta.source, "powercap");
    assert!(!meta.estimated);
    assert_eq!(
        (
            meta.total_microjoules,
            meta.attributed_microjoules,
            meta.idle_microjoules
        ),
        (10_000_000, 8_000_000, 2_000_000)
    );
    assert_eq!(meta.attribution, "dynamic");
    assert_eq!(meta.domains.get("psys"), Some(&11_000_000));
    assert_eq!(meta.domains.get("dram-0"), Some(&2_000_000));
    let text = e.to_string();
    assert!(
        text.contains("package 4.00 W") && text.contains("dram 1.00 W"),
        "{text}"
    );
    assert!(text.contains("(measured)"), "{text}");
}

#[test]
fn fixture_proc_stat_charges_cpu_time_a_pid_filter_hid() {
    // A `record --pid` sees only its process: the other busy time on the package, read from
    // a fixture /proc/stat, takes its share instead of the filtered process getting it all.
    let mut cap = Powercap::new();
    cap.zone("intel-rapl:0", "package-0", 0, PACKAGE_RANGE);
    let mut meter = powercap_meter(&cap, Topology::single_package([0, 1]), &args_with_idle(0.0));
    let dir = tempfile::tempdir().unwrap();
    let stat = dir.path().join("stat");
    std::fs::write(&stat, "cpu0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0\n").unwrap();
    meter.set_partial_sampling(stat.clone());
    meter.restart();
    // Over 1 s (100 ticks per CPU): CPU 0 fully busy, CPU 1 half busy.
    std::fs::write(&stat, "cpu0 90 0 10 0 0 0 0 0\ncpu1 40 0 10 50 0 0 0 0\n").unwrap();
    cap.advance("intel-rapl:0", 6_000_000);
    meter.end_window_with(Duration::from_secs(1));
    // The filtered process ran 50 of the 100 samples CPU 0 would have had at 100 Hz.
    let e = meter.window(100, &[slot(0, 50)]);
    // Busy samples: CPU 0 100, CPU 1 50; the process has 50 of 150 -> 2 J of 6 J.
    assert_eq!(e.per_slot_uj, vec![2_000_000]);
    assert_eq!(e.unsampled_uj, 4_000_000);
    assert_eq!(e.attributed_uj(), 6_000_000);
    assert!(e.to_string().contains("outside the profile"), "{e}");
    let meta = wattson_agent::energy::meta(&e);
    assert_eq!(
        (meta.attributed_microjoules, meta.unsampled_microjoules),
        (2_000_000, 4_000_000)
    );
}

#[test]
fn fixture_powercap_idle_is_learned_from_quiet_intervals() {
    let mut cap = Powercap::new();
    cap.zone("intel-rapl:0", "package-0", 0, PACKAGE_RANGE);
    // No --idle-watts: the meter learns idle from intervals at <= 10% utilization.
    let mut meter = powercap_meter(
        &cap,
        Topology::single_package([0, 1]),
        &EnergyArgs::default(),
    );
    let second = Duration::from_secs(1);
    // Busy first (100 of 200 possible samples): nothing learned, nothing held back.
    cap.advance("intel-rapl:0", 20_000_000);
    let e = meter.interval(second, 100, &[slot(0, 100)]);
    assert_eq!(
        (e.idle_uj(), e.packages[0].idle_basis),
        (0, "not learned yet")
    );
    assert_eq!(e.attributed_uj(), 20_000_000);
    // Two quiet intervals (5% busy) at 6 W then 5 W: the lowest is the idle power.
    cap.advance("intel-rapl:0", 6_000_000);
    meter.interval(second, 100, &[slot(0, 10)]);
    cap.advance("intel-rapl:0", 5_000_000);
    meter.interval(second, 100, &[slot(1, 10)]);
    // Busy again at 20 W: 5 W is idle, 15 W is charged to the samples.
    cap.advance("intel-rapl:0", 20_000_000);
    let e = meter.interval(second, 100, &[slot(0, 100), slot(1, 50)]);
    assert_eq!(
        (e.idle_uj(), e.packages[0].idle_basis),
        (5_000_000, "learned")
    );
    assert_eq!(e.per_slot_uj, vec![10_000_000, 5_000_000]);
    assert_balanced(&e);
}
