//! End-to-end checks of the funnel on synthetic services: each filter fires where it must and
//! stays quiet where it must not. Series are drawn with binomial noise of a million samples per
//! 5-minute bucket (a 1,000-host service at 19 Hz is 5.7 million), from fixed seeds.

use wattson_proto::v1::{Change, Regression};

use super::testdata::{DAY, Synth, with_fillers};
use super::{DetectConfig, NoStacks, Report, detect};

/// A service: 11% of it under `hash` (which calls sha256 and memcpy), the rest spread wide.
fn service(days: usize, hash: impl Fn(usize) -> f64 + Clone + 'static) -> Synth {
    let (h1, h2, h3) = (hash.clone(), hash.clone(), hash);
    Synth::new(days)
        .stack("main;serve;handle;parse", 0.20)
        .stack_fn("main;serve;handle;hash;sha256", move |b| 0.06 * h1(b))
        .stack_fn("main;serve;handle;hash;memcpy", move |b| 0.04 * h2(b))
        .stack_fn("main;serve;handle;hash", move |b| 0.01 * h3(b))
        .stack("main;serve;log;write", 0.05)
        .stack("main;serve;log;format", 0.05)
        .stack("main;gc", 0.10)
        .stack("main;serve;io", 0.49)
}

fn run(s: &Synth, seed: u64, changes: &[Change]) -> Report {
    let (series, stacks) = s.build(seed);
    let now = s.at(s.buckets);
    detect(&series, &stacks, changes, &DetectConfig::default(), now).unwrap()
}

fn with_status<'a>(r: &'a Report, status: &str) -> Vec<&'a Regression> {
    r.regressions
        .iter()
        .filter(|g| g.status == status)
        .collect()
}

/// The functions of the open regressions, sorted.
fn open_functions(r: &Report) -> Vec<&str> {
    let mut open: Vec<&str> = (with_status(r, "open").iter())
        .map(|g| g.function.as_str())
        .collect();
    open.sort_unstable();
    open
}

fn filtered_by<'a>(r: &'a Report, filter: &str, function: &str) -> Option<&'a Regression> {
    filtered_with(r, filter, function, "")
}

fn filtered_with<'a>(
    r: &'a Report,
    filter: &str,
    function: &str,
    detail: &str,
) -> Option<&'a Regression> {
    r.regressions.iter().find(|g| {
        g.function == function
            && g.filtered_by
                .as_ref()
                .is_some_and(|f| f.filter == filter && f.detail.contains(detail))
    })
}

fn assert_filtered(r: &Report, filter: &str, function: &str) {
    assert!(
        filtered_by(r, filter, function).is_some(),
        "{filter} {function}\n{}",
        summary(r)
    );
}

fn summary(r: &Report) -> String {
    let mut s = format!("note {:?}\n", r.note);
    for f in &r.funnel {
        s += &format!(
            "  {} in {} removed {}\n",
            f.stage, f.candidates_in, f.removed
        );
    }
    for g in &r.regressions {
        s += &format!(
            "  {} {} {} {} at {} {:+.5} {:?}\n",
            g.status,
            g.function,
            g.metric,
            g.kind,
            g.started_unix_seconds,
            g.delta_share,
            g.filtered_by.as_ref().map(|f| f.detail.as_str())
        );
    }
    s
}

const AT: usize = 5 * DAY;

#[test]
fn noise_alone_reports_nothing() {
    for seed in 1..=4 {
        let r = run(&service(7, |_| 1.0), seed, &[]);
        assert!(r.series > 0);
        let reported = r
            .regressions
            .iter()
            .filter(|g| g.status != "filtered")
            .count();
        assert_eq!(reported, 0, "seed {seed}:\n{}", summary(&r));
    }
}

#[test]
fn a_step_is_reported_once_at_the_function_that_changed() {
    let s = service(7, |b| if b >= AT { 1.05 } else { 1.0 });
    let r = run(&s, 1, &[]);
    let open = with_status(&r, "open");
    assert_eq!(open.len(), 1, "{}", summary(&r));
    let g = open[0];
    assert_eq!(
        (g.function.as_str(), g.kind.as_str()),
        ("hash", "step"),
        "{}",
        summary(&r)
    );
    assert!(
        (g.started_unix_seconds - s.at(AT)).abs() <= 2 * 300,
        "{}",
        summary(&r)
    );
    // 11% of the service grew 5%: +0.55% of the old total, a share of 0.1155 / 1.0055.
    let want = 0.1155 / 1.0055 - 0.11;
    assert!(
        (g.delta_share - want).abs() < 0.15 * want,
        "{} vs {want}",
        g.delta_share
    );
    assert!(
        (g.energy_delta_share - want).abs() < 0.15 * want,
        "{}",
        g.energy_delta_share
    );
    assert!(g.confidence > 0.99 && g.delta_watts > 0.0 && g.mwh_per_year > 0.0);
    assert!((g.fleet_delta_watts / g.delta_watts - 10.0).abs() < 1e-9);
    assert!(
        g.evidence
            .iter()
            .all(|e| e.folded.contains(";hash") && e.after_share > e.before_share)
    );
    assert!(!g.evidence.is_empty() && g.causes.is_empty());
    assert!(
        filtered_with(&r, "dedup", "handle", "caller of hash").is_some(),
        "{}",
        summary(&r)
    );
    for leaf in ["sha256", "memcpy"] {
        assert!(
            filtered_with(&r, "dedup", leaf, "below hash").is_some(),
            "{leaf}\n{}",
            summary(&r)
        );
    }
    // Same data, same ids.
    let again = run(&s, 1, &[]);
    assert_eq!(with_status(&again, "open")[0].id, g.id);
}

#[test]
fn dedup_picks_the_leaf_when_the_leaf_carries_all_of_it() {
    let s = Synth::new(7)
        .stack("main;serve;handle;parse", 0.20)
        .stack_fn("main;serve;handle;hash;sha256", |b| {
            if b >= AT { 0.075 } else { 0.06 }
        })
        .stack("main;serve;handle;hash;memcpy", 0.04)
        .stack("main;serve;handle;hash", 0.01)
        .stack("main;gc", 0.10)
        .stack("main;serve;io", 0.59);
    let r = run(&s, 2, &[]);
    let open = with_status(&r, "open");
    assert_eq!(open.len(), 1, "{}", summary(&r));
    assert_eq!(open[0].function, "sha256", "{}", summary(&r));
    assert_filtered(&r, "dedup", "hash");
}

#[test]
fn an_energy_only_regression_is_reported_in_the_energy_view() {
    // hash's samples stay, its µJ per sample rise 30% (e.g. wider vector units).
    let s = service(7, |_| 1.0).energy_fn("main;serve;handle;hash;sha256", |b| {
        if b >= AT { 1.3 } else { 1.0 }
    });
    let r = run(&s, 11, &[]);
    let open = with_status(&r, "open");
    assert_eq!(open.len(), 1, "{}", summary(&r));
    let g = open[0];
    assert_eq!(
        (g.function.as_str(), g.metric.as_str()),
        ("sha256", "energy"),
        "{}",
        summary(&r)
    );
    assert!(
        g.energy_delta_share.abs() < 0.1 * g.delta_share,
        "cpu view {}",
        g.energy_delta_share
    );
}

#[test]
fn a_spike_that_ends_is_not_a_regression_a_lasting_step_is() {
    let s = service(7, |b| if (AT..AT + 36).contains(&b) { 1.3 } else { 1.0 });
    let r = run(&s, 3, &[]);
    assert!(with_status(&r, "open").is_empty(), "{}", summary(&r));
    let away = filtered_by(&r, "went_away", "hash").unwrap_or_else(|| panic!("{}", summary(&r)));
    assert!(
        away.filtered_by
            .as_ref()
            .unwrap()
            .detail
            .contains("went away")
    );

    let s = service(7, |b| if b >= AT { 1.3 } else { 1.0 });
    let r = run(&s, 3, &[]);
    assert_eq!(with_status(&r, "open").len(), 1, "{}", summary(&r));
}

#[test]
fn a_change_rolled_back_within_a_day_is_neither_regression_nor_improvement() {
    let s = service(7, |b| if (AT..AT + 96).contains(&b) { 1.2 } else { 1.0 });
    let r = run(&s, 12, &[]);
    let reported: Vec<_> = r
        .regressions
        .iter()
        .filter(|g| g.status != "filtered")
        .collect();
    assert!(reported.is_empty(), "{}", summary(&r));
    assert!(
        filtered_with(&r, "went_away", "hash", "ends a transient of 8h").is_some(),
        "{}",
        summary(&r)
    );
}

#[test]
fn a_slow_creep_is_reported_as_a_creep() {
    // hash grows 10% over two days, linearly.
    let s = service(7, |b| {
        1.0 + 0.1 * ((b as f64 - 4.0 * DAY as f64) / (2.0 * DAY as f64)).clamp(0.0, 1.0)
    });
    let r = run(&s, 4, &[]);
    let open = with_status(&r, "open");
    assert_eq!(open.len(), 1, "{}", summary(&r));
    assert_eq!(
        (open[0].function.as_str(), open[0].kind.as_str()),
        ("hash", "creep"),
        "{}",
        summary(&r)
    );
}

fn seasonal(step: f64) -> Synth {
    // log's work follows the day (±40%), hash may step.
    let cycle =
        |b: usize| 1.0 + 0.4 * ((b % DAY) as f64 / DAY as f64 * std::f64::consts::TAU).sin();
    Synth::new(7)
        .stack("main;serve;handle;parse", 0.20)
        .stack_fn("main;serve;handle;hash", move |b| {
            if b >= AT { 0.11 * step } else { 0.11 }
        })
        .stack_fn("main;serve;log;write", move |b| 0.05 * cycle(b))
        .stack_fn("main;serve;log;format", move |b| 0.05 * cycle(b))
        .stack("main;gc", 0.10)
        .stack("main;serve;io", 0.49)
}

#[test]
fn a_seasonal_series_without_change_is_quiet_with_a_step_is_reported() {
    let r = run(&seasonal(1.0), 5, &[]);
    assert!(with_status(&r, "open").is_empty(), "{}", summary(&r));
    let seasonality = r.funnel.iter().find(|f| f.stage == "seasonality").unwrap();
    assert!(seasonality.removed > 0, "{}", summary(&r));

    let r = run(&seasonal(1.05), 5, &[]);
    let open = with_status(&r, "open");
    assert_eq!(open.len(), 1, "{}", summary(&r));
    assert_eq!(open[0].function, "hash", "{}", summary(&r));
}

#[test]
fn a_caller_holding_a_seasonal_subtree_is_still_a_caller() {
    // serve holds log, whose work follows the day (±40%); hash, under serve, steps +25% late
    // in the history, so the stacks around it compare different times of day.
    let cycle =
        |b: usize| 1.0 + 0.4 * ((b % DAY) as f64 / DAY as f64 * std::f64::consts::TAU).sin();
    let late = 6 * DAY + 20;
    let s = Synth::new(7)
        .stack("main;serve;handle;parse", 0.20)
        .stack_fn("main;serve;handle;hash", move |b| {
            if b >= late { 0.11 * 1.25 } else { 0.11 }
        })
        .stack_fn("main;serve;log;write", move |b| 0.10 * cycle(b))
        .stack_fn("main;serve;log;format", move |b| 0.10 * cycle(b))
        .stack("main;gc", 0.10)
        .stack("main;io", 0.39);
    let r = run(&s, 6, &[]);
    let open = with_status(&r, "open");
    assert_eq!(open.len(), 1, "{}", summary(&r));
    assert_eq!(open[0].function, "hash", "{}", summary(&r));
}

/// Work under handle either moves from parse to validate at bucket `at` (`amount` of the
/// service; handle's total is unchanged), which must be a cost shift, or is added to validate
/// there, which must be validate's regression. `parse` gives parse's weight per bucket.
fn assert_shift_then_growth(
    parse: impl Fn(usize) -> f64 + Copy + 'static,
    at: usize,
    amount: f64,
    seed: u64,
) {
    let shift = |moved: f64, grown: f64| {
        Synth::new(7)
            .stack_fn("main;serve;handle;parse", move |b| {
                parse(b) - if b >= at { moved } else { 0.0 }
            })
            .stack_fn("main;serve;handle;validate", move |b| {
                if b >= at { 0.05 + moved + grown } else { 0.05 }
            })
            .stack("main;serve;log", 0.10)
            .stack("main;gc", 0.10)
            .stack("main;serve;io", 0.55)
    };
    let r = run(&shift(amount, 0.0), seed, &[]);
    assert!(with_status(&r, "open").is_empty(), "{}", summary(&r));
    assert_filtered(&r, "cost_shift", "validate");

    let r = run(&shift(0.0, amount), seed, &[]);
    let open = with_status(&r, "open");
    assert_eq!(open.len(), 1, "{}", summary(&r));
    assert_eq!(open[0].function, "validate", "{}", summary(&r));
}

#[test]
fn a_cost_shift_is_not_a_regression_real_growth_is() {
    assert_shift_then_growth(|_| 0.20, AT, 0.02, 6);
}

#[test]
fn an_improvement_is_not_a_regression() {
    let r = run(&service(7, |b| if b >= AT { 0.8 } else { 1.0 }), 7, &[]);
    assert!(with_status(&r, "open").is_empty(), "{}", summary(&r));
    let better = with_status(&r, "improvement");
    assert_eq!(better.len(), 1, "{}", summary(&r));
    assert_eq!(better[0].function, "hash");
    assert!(better[0].delta_share < 0.0 && better[0].delta_watts < 0.0);
    // io's share rose 1% only because hash shrank: normalization removed it.
    assert_filtered(&r, "normalization", "io");
}

#[test]
fn too_short_or_empty_history_says_so_and_reports_nothing() {
    let mut s = service(1, |_| 1.0);
    s.buckets = 24;
    let r = run(&s, 8, &[]);
    assert_eq!(r.note, "history too short: 2h of the 24h needed");
    assert!(r.regressions.is_empty() && r.series == 0);
    let (mut series, _) = s.build(8);
    series.samples.iter_mut().for_each(|v| *v = 0.0);
    let r = detect(&series, &NoStacks, &[], &DetectConfig::default(), s.at(24)).unwrap();
    assert!(
        r.note.starts_with("history empty") && r.regressions.is_empty(),
        "{}",
        r.note
    );
}

fn change(id: &str, at: i64, kind: &str, touched: &[&str]) -> Change {
    Change {
        id: id.into(),
        service: "api".into(),
        at_unix_seconds: at,
        title: id.into(),
        kind: kind.into(),
        touched: touched.iter().map(|t| t.to_string()).collect(),
        ..Change::default()
    }
}

#[test]
fn root_cause_names_the_change_whose_touched_functions_carry_it() {
    let s = service(7, |b| if b >= AT { 1.05 } else { 1.0 });
    let t = s.at(AT);
    let changes = [
        change("touches-hash", t - 600, "commit", &["sha256", "memcpy"]),
        change("touches-gc", t - 300, "commit", &["gc"]),
        change("config-earlier", t - 3 * 3600, "config", &[]),
        change("after", t + 3600, "deploy", &["hash"]),
    ];
    let r = run(&s, 9, &changes);
    let open = with_status(&r, "open");
    assert_eq!(open.len(), 1, "{}", summary(&r));
    let ids: Vec<&str> = open[0]
        .causes
        .iter()
        .map(|c| c.change_id.as_str())
        .collect();
    assert_eq!(ids, ["touches-hash"], "{:?}", open[0].causes);
    let why = &open[0].causes[0].why;
    assert!(
        why.contains("touched sha256, memcpy") && why.contains("10m before"),
        "{why}"
    );

    let r = run(&s, 9, &changes[1..]);
    let open = with_status(&r, "open");
    assert!(open[0].causes.is_empty(), "{:?}", open[0].causes);
}

#[test]
fn a_deploy_with_no_touched_functions_is_named_on_timing_only_when_it_fits() {
    let s = service(7, |b| if b >= AT { 1.05 } else { 1.0 });
    let t = s.at(AT);
    let deploy = |id: &str, dt: i64| Change {
        build_id: format!("build-{id}"),
        ..change(id, t + dt, "deploy", &[])
    };
    let r = run(
        &s,
        13,
        &[
            deploy("at-the-step", -120),
            deploy("hours-before", -5 * 3600),
        ],
    );
    let open = with_status(&r, "open");
    assert_eq!(open.len(), 1, "{}", summary(&r));
    let ids: Vec<&str> = open[0]
        .causes
        .iter()
        .map(|c| c.change_id.as_str())
        .collect();
    assert_eq!(ids, ["at-the-step"], "{:?}", open[0].causes);
    assert!(
        open[0].causes[0].why.contains("timing only"),
        "{}",
        open[0].causes[0].why
    );
}

#[test]
fn without_stacks_the_series_stages_still_run_and_the_note_says_so() {
    let s = service(7, |b| if b >= AT { 1.05 } else { 1.0 });
    let (series, _) = s.build(10);
    let r = detect(
        &series,
        &NoStacks,
        &[],
        &DetectConfig::default(),
        s.at(s.buckets),
    )
    .unwrap();
    assert!(r.note.contains("no stacks"), "{}", summary(&r));
    assert!(
        with_status(&r, "open").iter().any(|g| g.function == "hash"),
        "{}",
        summary(&r)
    );
}

#[test]
fn a_spike_shorter_than_a_segment_is_not_a_regression() {
    // 30 minutes at +50%: shorter than the 1 h minimum segment, so no segment of its own; the
    // step it lifts into the long segment it sits in did not last.
    let s = service(7, |b| if (AT..AT + 6).contains(&b) { 1.5 } else { 1.0 });
    let r = run(&s, 21, &[]);
    assert!(with_status(&r, "open").is_empty(), "{}", summary(&r));
    assert!(
        filtered_with(&r, "went_away", "hash", "did not last").is_some(),
        "{}",
        summary(&r)
    );
}

#[test]
fn slow_wander_is_not_a_change_a_step_on_it_is() {
    // hash wanders ±2% over a 6-hour period (not daily: no profile removes it), well above the
    // point-to-point noise of its share.
    let wander = |b: usize| 1.0 + 0.02 * (b as f64 / 72.0 * std::f64::consts::TAU).sin();
    let r = run(&service(7, wander), 22, &[]);
    assert!(with_status(&r, "open").is_empty(), "{}", summary(&r));

    let r = run(
        &service(7, move |b| wander(b) * if b >= AT { 1.1 } else { 1.0 }),
        22,
        &[],
    );
    let open = with_status(&r, "open");
    assert_eq!(open.len(), 1, "{}", summary(&r));
    assert_eq!(open[0].function, "hash", "{}", summary(&r));
}

#[test]
fn work_moved_into_a_subtree_is_a_shift_down_to_its_leaves_in_both_views() {
    // Work moves from parse to validate's subtree (three levels below handle, whose total is
    // unchanged); validate's stacks draw 40% more power per sample, so the energy view of the
    // domain grows: still one shift, not an energy regression.
    let shift = |moved: f64| {
        Synth::new(7)
            .stack_fn("main;serve;handle;parse", move |b| {
                if b >= AT { 0.20 - moved } else { 0.20 }
            })
            .stack_fn("main;serve;handle;validate;decode;check", move |b| {
                if b >= AT { 0.04 + moved } else { 0.04 }
            })
            .stack("main;serve;handle;validate", 0.01)
            .energy_fn("main;serve;handle;validate;decode;check", |_| 1.4)
            .stack("main;serve;log", 0.10)
            .stack("main;gc", 0.10)
            .stack("main;serve;io", 0.55)
    };
    let r = run(&shift(0.02), 23, &[]);
    assert!(with_status(&r, "open").is_empty(), "{}", summary(&r));
    assert!(
        filtered_with(
            &r,
            "cost_shift",
            "check",
            "cost shift inside main;serve;handle"
        )
        .is_some()
            || filtered_with(&r, "cost_shift", "check", "cost shift inside handle").is_some(),
        "{}",
        summary(&r)
    );
    // Both views of both ends of the move are the shift (on their own figures, or as the
    // other view's twin).
    for f in ["parse", "check"] {
        for metric in ["cpu", "energy"] {
            assert!(
                r.regressions.iter().any(|g| g.function == f
                    && g.metric == metric
                    && g.filtered_by
                        .as_ref()
                        .is_some_and(|b| b.filter == "cost_shift")),
                "{f} {metric}\n{}",
                summary(&r)
            );
        }
    }
}

/// One-minute buckets of a single-process service sampled at 99 Hz (about 6,000 samples a
/// bucket), the last one partial (the agent stopped 6 s into it), as the end-to-end test sees
/// them; `rare` and `hot` give a function's samples per bucket.
fn small_service(rare: [f64; 8], hot: [f64; 8]) -> super::ServiceSeries {
    let samples = [
        6000.0, 6000.0, 6000.0, 6000.0, 6000.0, 6000.0, 6000.0, 600.0,
    ];
    let f = |name: &str, n: &[f64]| super::FunctionSeries {
        function: name.into(),
        samples_incl: n.to_vec(),
        energy_incl_uj: n.iter().map(|x| x * 1000.0).collect(),
    };
    super::ServiceSeries {
        service: "demo".into(),
        start: super::testdata::START,
        step: 60,
        samples: samples.to_vec(),
        energy_uj: samples.iter().map(|x| x * 1000.0).collect(),
        estimated: true,
        fleet_scale: 1.0,
        functions: vec![
            f("main", &samples),
            f("work_unit", &rare),
            f("hash_records", &hot),
        ],
    }
}

#[test]
fn a_function_seen_a_handful_of_times_is_judged_on_its_counts() {
    let cfg: DetectConfig = toml::from_str(
        "step = 60\nhistory = \"2h\"\nmin_history = \"2m\"\nanalysis_window = \"2h\"\n\
         min_segment = \"1m\"\nmin_lasting = \"1m\"\ncreep_gap = \"2m\"",
    )
    .unwrap();
    let now = super::testdata::START + 8 * 60;
    let steady = [
        2400.0, 2400.0, 2400.0, 2400.0, 2400.0, 2400.0, 2400.0, 240.0,
    ];
    // Two samples in all, one of them in the partial bucket: a share of 0.17% there, which a
    // normal test on shares (noise floor set by 6,000 samples a bucket) calls a change.
    let rare = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0];
    let r = detect(&small_service(rare, steady), &NoStacks, &[], &cfg, now).unwrap();
    assert!(with_status(&r, "open").is_empty(), "{}", summary(&r));
    assert!(
        filtered_with(&r, "significance", "work_unit", "").is_some(),
        "{}",
        summary(&r)
    );
    // Thirty samples a bucket where there were none: a change, whatever the test.
    let grown = [0.0, 0.0, 0.0, 0.0, 0.0, 30.0, 30.0, 3.0];
    let r = detect(&small_service(grown, steady), &NoStacks, &[], &cfg, now).unwrap();
    let open = with_status(&r, "open");
    assert!(
        open.iter().any(|g| g.function == "work_unit"),
        "{}",
        summary(&r)
    );
    // 40% to 60% of the service, the e2e's slowdown: reported.
    let slower = [
        2400.0, 2400.0, 2400.0, 2400.0, 3600.0, 3600.0, 3600.0, 360.0,
    ];
    let r = detect(
        &small_service(rare.map(|_| 0.0), slower),
        &NoStacks,
        &[],
        &cfg,
        now,
    )
    .unwrap();
    let open = with_status(&r, "open");
    assert!(
        open.iter().any(|g| g.function == "hash_records"),
        "{}",
        summary(&r)
    );
}

#[test]
fn a_shift_inside_a_domain_that_follows_the_day_is_a_shift_growth_is_not() {
    // Parse follows the day (±5%) and the work moves late in the history: the stacks around
    // the change compare different times of day, so handle's total seems to move with the
    // cycle.
    let cycle =
        |b: usize| 1.0 + 0.05 * ((b % DAY) as f64 / DAY as f64 * std::f64::consts::TAU).sin();
    assert_shift_then_growth(move |b| 0.20 * cycle(b), 7 * DAY - 160, 0.03, 8);
}

#[test]
fn a_subtree_that_grows_as_a_whole_is_reported_once_at_its_heavy_callee() {
    // handle's whole subtree grows 26% at AT; flush carries 94% of it, so the change is
    // flush's; route and render, beside it, grew by the same factor and are part of it.
    // Growing route on its own too (x2) is a change of its own.
    let subtree = |route: f64| {
        let grow = move |w: f64| move |b: usize| if b >= AT { w * 1.26 } else { w };
        Synth::new(7)
            .stack_fn("main;serve;handle;validate;flush", grow(0.034))
            .stack_fn("main;serve;handle;validate;route", move |b| {
                grow(0.001)(b) * if b >= AT { route } else { 1.0 }
            })
            .stack_fn("main;serve;handle;render", grow(0.001))
            .stack("main;serve;log", 0.10)
            .stack("main;gc", 0.10)
            .stack("main;serve;io", 0.764)
    };
    let r = run(&subtree(1.0), 9, &[]);
    let open = with_status(&r, "open");
    assert_eq!(open.len(), 1, "{}", summary(&r));
    assert_eq!(open[0].function, "flush", "{}", summary(&r));
    for f in ["route", "render"] {
        assert!(
            filtered_with(&r, "dedup", f, "grew by the same factor").is_some(),
            "{f}\n{}",
            summary(&r)
        );
    }

    let r = run(&subtree(2.0), 9, &[]);
    let open = open_functions(&r);
    assert_eq!(open, ["flush", "route"], "{}", summary(&r));
}

#[test]
fn work_moved_elsewhere_does_not_explain_a_step() {
    // At AT 4.4% of the service moves from `a` to its sibling `b` (the total is unchanged),
    // and `x` grows by 0.2%: `a`'s fall alone would predict `x`'s new share, but nothing was
    // diluted.
    let s = with_fillers(
        Synth::new(7)
            .stack_fn("main;a", |b| if b >= AT { 0.256 } else { 0.30 })
            .stack_fn("main;b", |b| if b >= AT { 0.094 } else { 0.05 })
            .stack_fn("main;x", |b| if b >= AT { 0.032 } else { 0.03 })
            .stack("main;io", 0.45),
    );
    let r = run(&s, 11, &[]);
    let open = with_status(&r, "open");
    assert!(open.iter().any(|g| g.function == "x"), "{}", summary(&r));
    assert!(
        filtered_with(&r, "normalization", "x", "moved only as").is_none(),
        "{}",
        summary(&r)
    );
}

#[test]
fn of_two_parts_that_explain_each_other_the_cheaper_change_is_the_change() {
    // `small` (25%) improves by 0.5% of the service; `big` (62%) keeps its cost, so its share
    // rises by 0.4%. Each predicts the other's share; small's change costs less.
    let mut s = Synth::new(7)
        .stack_fn("main;small", |b| if b >= AT { 0.245 } else { 0.25 })
        .stack("main;gc", 0.05);
    for k in 0..8 {
        s = s.stack(&format!("main;big;part{k}"), 0.0775);
    }
    let r = run(&s, 12, &[]);
    assert!(with_status(&r, "open").is_empty(), "{}", summary(&r));
    let better = with_status(&r, "improvement");
    assert!(
        better.iter().any(|g| g.function == "small"),
        "{}",
        summary(&r)
    );
    assert!(
        filtered_with(&r, "normalization", "big", "moved only as small").is_some(),
        "{}",
        summary(&r)
    );
}

#[test]
fn work_moved_to_stacks_of_other_power_does_not_raise_the_rest_in_energy() {
    // At AT a quarter of the service moves from `a` to `b` (a cost shift inside main), and
    // `b` draws half the power per sample: the service's energy per sample falls 13%, so
    // every other function's energy share rises 15%, with its CPU share and its own energy
    // per sample unchanged. `a` held most of the service, so the rest's scale is a's, and
    // a's fall predicts no such rise.
    let s = with_fillers(
        Synth::new(7)
            .stack_fn("main;a", |b| if b >= AT { 0.35 } else { 0.60 })
            .stack_fn("main;b", |b| if b >= AT { 0.30 } else { 0.05 })
            .energy_fn("main;b", |_| 0.5)
            .stack("main;x", 0.03)
            .stack("main;io", 0.16),
    );
    let r = run(&s, 13, &[]);
    let open = with_status(&r, "open");
    assert!(open.iter().all(|g| g.function != "x"), "{}", summary(&r));
    assert!(
        filtered_with(&r, "normalization", "x", "energy per sample unchanged").is_some(),
        "{}",
        summary(&r)
    );
}

#[test]
fn two_changes_under_one_caller_are_reported_each_at_its_function() {
    // `p` grows 4% and `q` 16% of their cost at AT; their caller `h` (mostly its own time)
    // grows 1.7%. Neither callee carries most of h's change, together they carry all of it.
    let s = with_fillers(
        Synth::new(7)
            .stack("main;h", 0.30)
            .stack_fn("main;h;p", |b| if b >= AT { 0.104 } else { 0.10 })
            .stack_fn("main;h;q", |b| if b >= AT { 0.0232 } else { 0.02 })
            .stack("main;io", 0.42),
    );
    let r = run(&s, 14, &[]);
    let open = open_functions(&r);
    assert_eq!(open, ["p", "q"], "{}", summary(&r));
    assert!(
        filtered_with(&r, "dedup", "h", "caller of p and q").is_some(),
        "{}",
        summary(&r)
    );
}

#[test]
fn an_energy_view_alone_needs_the_function_to_draw_more_per_sample() {
    // sha256's µJ per sample rise 1% at AT, its samples stay: its energy share moves clearly,
    // but an attributed energy per sample moving 1% is no change of its own (30% is: see
    // `an_energy_only_regression_is_reported_in_the_energy_view`).
    let s = service(7, |_| 1.0).energy_fn("main;serve;handle;hash;sha256", |b| {
        if b >= AT { 1.01 } else { 1.0 }
    });
    let r = run(&s, 11, &[]);
    assert!(with_status(&r, "open").is_empty(), "{}", summary(&r));
    assert!(
        filtered_with(&r, "dedup", "sha256", "energy view alone").is_some(),
        "{}",
        summary(&r)
    );
}

#[test]
fn work_moved_between_two_functions_under_the_root_is_a_shift() {
    // At AT 2% of the service moves from `a` to `b`, siblings with no caller but main (whose
    // share is always all of the service): a shift, neither a regression nor an improvement.
    let s = with_fillers(
        Synth::new(7)
            .stack_fn("main;a", |b| if b >= AT { 0.08 } else { 0.10 })
            .stack_fn("main;b", |b| if b >= AT { 0.07 } else { 0.05 })
            .stack("main;io", 0.69),
    );
    let r = run(&s, 15, &[]);
    let reported: Vec<&Regression> = (r.regressions.iter())
        .filter(|g| g.status != "filtered")
        .collect();
    assert!(reported.is_empty(), "{}", summary(&r));
    assert!(
        filtered_with(&r, "cost_shift", "b", "work moved between a and b").is_some(),
        "{}",
        summary(&r)
    );
    // `x` grows 2% of the service as `y` falls 1%: sizes that do not match are two changes.
    let s = with_fillers(
        Synth::new(7)
            .stack_fn("main;y", |b| if b >= AT { 0.09 } else { 0.10 })
            .stack_fn("main;x", |b| if b >= AT { 0.07 } else { 0.05 })
            .stack("main;io", 0.69),
    );
    let r = run(&s, 15, &[]);
    let open = with_status(&r, "open");
    assert!(open.iter().any(|g| g.function == "x"), "{}", summary(&r));
}

#[test]
fn a_creep_whose_caller_lost_other_work_at_another_time_is_no_shift() {
    // Under `h`, `p` creeps from 10% to 12% of the service over days 4 to 6 while `q` falls
    // from 10% to 8% in one step on day 5: h's total ends where it began, but the work `p`
    // gained did not come from `q`, which fell at another time. Two changes, not a shift.
    let ramp = |b: usize| ((b as f64 - 4.0 * DAY as f64) / (2.0 * DAY as f64)).clamp(0.0, 1.0);
    let s = with_fillers(
        Synth::new(7)
            .stack("main;h", 0.20)
            .stack_fn("main;h;p", move |b| 0.10 + 0.02 * ramp(b))
            .stack_fn("main;h;q", |b| if b >= AT { 0.08 } else { 0.10 })
            .stack("main;io", 0.44),
    );
    let r = run(&s, 16, &[]);
    let open = with_status(&r, "open");
    assert!(
        open.iter().any(|g| g.function == "p" && g.kind == "creep"),
        "{}",
        summary(&r)
    );
    let better = with_status(&r, "improvement");
    assert!(better.iter().any(|g| g.function == "q"), "{}", summary(&r));
}

#[test]
fn an_improvement_elsewhere_explains_a_daily_functions_rise_in_a_part_day_window() {
    // `a` improves by 0.5% of the service at noon of the last day, so the stacks around it
    // span half a day each side. `x` (8%) follows the day: over those half days its share
    // grows by a half, shrinking every other stack's share, while its rise at the change
    // point is only the dilution `a`'s fall gives it.
    let cycle =
        |b: usize| 1.0 - 0.4 * ((b % DAY) as f64 / DAY as f64 * std::f64::consts::TAU).sin();
    let at = 6 * DAY + DAY / 2 - 24;
    let s = with_fillers(
        Synth::new(7)
            .stack_fn("main;a", move |b| if b >= at { 0.055 } else { 0.06 })
            .stack_fn("main;serve;x", move |b| 0.08 * cycle(b))
            .stack("main;serve;io", 0.30)
            .stack("main;gc", 0.40),
    );
    let r = run(&s, 13, &[]);
    assert!(with_status(&r, "open").is_empty(), "{}", summary(&r));
    assert!(
        filtered_with(&r, "normalization", "x", "moved only as a").is_some(),
        "{}",
        summary(&r)
    );
}

#[test]
fn a_step_beside_other_work_that_follows_the_day_is_its_own_in_a_part_day_window() {
    // `x` grows by 0.1% of the service at 11:00 on the last day, so the stacks around it span
    // about half a day each side; over those half days `y` (15%, following the day) grows by
    // a half and every other share shrinks. `x`'s own growth is a third of its step in its
    // series, though not of its share's move between the windows.
    let cycle =
        |b: usize| 1.0 - 0.4 * ((b % DAY) as f64 / DAY as f64 * std::f64::consts::TAU).sin();
    let at = 6 * DAY + DAY / 2 - 12;
    let s = with_fillers(
        Synth::new(7)
            .stack_fn("main;x", move |b| if b >= at { 0.101 } else { 0.10 })
            .stack_fn("main;y", move |b| 0.15 * cycle(b))
            .stack("main;io", 0.30)
            .stack("main;gc", 0.29),
    );
    let r = run(&s, 14, &[]);
    let open = open_functions(&r);
    assert_eq!(open, ["x"], "{}", summary(&r));
}

#[test]
fn two_changes_under_one_caller_are_each_their_own_when_one_grew_by_the_callers_factor() {
    // `q` grows 40% and `p` 11.4% of their cost at AT; their caller `h` grows 11.4% as a
    // whole, `p`'s factor, though the rest of `h` (its own time) keeps its cost: with `q`'s
    // change taken out, `h` grew 7.6%.
    let s = with_fillers(
        Synth::new(7)
            .stack("main;h", 0.05)
            .stack_fn("main;h;p", |b| if b >= AT { 0.1114 } else { 0.10 })
            .stack_fn("main;h;q", |b| if b >= AT { 0.028 } else { 0.02 })
            .stack("main;io", 0.67),
    );
    let r = run(&s, 15, &[]);
    let open = open_functions(&r);
    assert_eq!(open, ["p", "q"], "{}", summary(&r));
}

#[test]
fn a_subtree_that_grows_as_a_whole_is_reported_where_nearly_all_of_it_flows_not_below() {
    // h's whole subtree grows 26% at AT. v carries 88% of it and leaf 86% of v's part, but
    // only 76% of the whole: the change is reported at v, not at leaf.
    let grow = |w: f64| move |b: usize| if b >= AT { w * 1.26 } else { w };
    let s = with_fillers(
        Synth::new(7)
            .stack_fn("main;serve;h", grow(0.012))
            .stack_fn("main;serve;h;v", grow(0.012))
            .stack_fn("main;serve;h;v;leaf", grow(0.076))
            .stack("main;serve;io", 0.40)
            .stack("main;gc", 0.34),
    );
    let r = run(&s, 16, &[]);
    let open = open_functions(&r);
    assert_eq!(open, ["v"], "{}", summary(&r));
    assert!(
        filtered_with(&r, "dedup", "leaf", "of the change at").is_some(),
        "{}",
        summary(&r)
    );
}
