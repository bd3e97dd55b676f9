//! Energy integration tests. These machines have no RAPL, so measured energy comes from
//! fixture sysfs/powercap trees whose counters the tests advance (see `energy/fixture.rs`);
//! the split test runs two real busy processes under the real BPF sampler (needs root).

#[path = "energy/cli.rs"]
mod cli;
#[path = "energy/faults.rs"]
mod faults;
#[path = "energy/fixture.rs"]
mod fixture;
#[path = "energy/layouts.rs"]
mod layouts;
#[path = "energy/split.rs"]
mod split;

use wattson_agent::energy::{EnergyArgs, SourceKind, diagnose};

/// `doctor` on this host: whatever it finds, `auto` must fall back to the model exactly when
/// no RAPL interface works, and say so plainly.
#[test]
fn doctor_on_this_host_names_the_auto_fallback() {
    let d = diagnose(&EnergyArgs::default());
    let text = d.to_string();
    eprintln!("{text}");
    assert_eq!(d.sources.len(), 4);
    if d.rapl {
        assert_ne!(d.auto, Some(SourceKind::Model), "{text}");
    } else {
        assert_eq!(d.auto, Some(SourceKind::Model), "{text}");
        assert!(text.contains("no RAPL"), "{text}");
        assert!(
            text.contains("auto falls back to the model") && text.contains("ESTIMATED"),
            "{text}"
        );
        for s in d.sources.iter().filter(|s| s.kind != SourceKind::Model) {
            assert!(!s.usable && !s.detail.is_empty(), "{s:?}");
        }
    }
}

/// `doctor` against fixture trees: powercap works (perf has no PMU in the fixture sysfs).
#[test]
fn doctor_with_fixture_powercap_picks_powercap_and_lists_domains() {
    let sysfs = fixture::Sysfs::new(&[(0, 0, 0)]);
    let mut cap = fixture::Powercap::new();
    cap.zone("intel-rapl:0", "package-0", 0, fixture::PACKAGE_RANGE)
        .zone("intel-rapl:0:0", "dram", 0, fixture::DRAM_RANGE)
        .zone("intel-rapl:0:1", "core", 0, fixture::PACKAGE_RANGE);
    cap.corrupt("intel-rapl:0:1", "garbage");
    let mut args = EnergyArgs::default();
    args.sysfs_root = sysfs.root().to_owned();
    args.powercap_root = cap.root();
    args.msr_root = sysfs.root().join("no-msr");
    let d = diagnose(&args);
    let text = d.to_string();
    eprintln!("{text}");
    assert_eq!(d.auto, Some(SourceKind::Powercap), "{text}");
    assert!(d.rapl);
    let powercap = &d.sources[1];
    assert_eq!(powercap.domains, vec!["package-0", "dram-0"]);
    assert!(text.contains("no perf `power` PMU"), "{text}");
    assert!(
        powercap.detail.contains("intel-rapl:0:1 (core) unreadable"),
        "{text}"
    );
}
