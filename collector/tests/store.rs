//! The shared storage suite: every test is one generic function over `&dyn Store`, instantiated
//! once against SQLite (a temp file) and once against a real `clickhouse-server` 18.16 that the
//! harness starts on 127.0.0.1 with a private data dir and stops afterwards.

use std::time::Duration;

use wattson_collector::store::clickhouse_server::ClickHouseServer;
use wattson_collector::store::synthetic::BatchBuilder;
use wattson_collector::store::{
    self, Ingested, Keyed, Of, Rank, Retention, Store, StoreError, TopQuery, Window,
};
use wattson_proto::v1::Change;
use wattson_proto::view::BatchView;

/// 2026-11-02 00:00:00 UTC: a Monday at an hour (and day) boundary.
const T0: i64 = 1_793_577_600;

enum Guard {
    Sqlite(#[expect(dead_code, reason = "kept alive for the test's duration")] tempfile::TempDir),
    ClickHouse(
        #[expect(dead_code, reason = "kept alive for the test's duration")] ClickHouseServer,
    ),
}

fn sqlite() -> (Guard, Box<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}",
        dir.path().join("db/wattson.sqlite").display()
    );
    let s = store::open(&url).unwrap();
    (Guard::Sqlite(dir), s)
}

fn clickhouse() -> (Guard, Box<dyn Store>) {
    let server = ClickHouseServer::start().expect("start clickhouse-server (cargo xtask setup)");
    let s = store::open(&server.store_url("wattson_test")).unwrap();
    (Guard::ClickHouse(server), s)
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend { $( #[test] fn $name() { let (_g, s) = super::sqlite(); super::$name(&*s); } )* }
        mod clickhouse_backend { $( #[test] fn $name() { let (_g, s) = super::clickhouse(); super::$name(&*s); } )* }
    };
}

suite!(
    duplicate_batch_is_stored_once,
    self_and_inclusive_rollup,
    recursion_counts_inclusive_once,
    estimated_energy_stays_separate,
    window_mixes_hours_and_minutes,
    series_buckets,
    services_hosts_builds_stacks,
    bad_queries_are_errors,
    invalid_batch_is_rejected_and_not_marked_seen,
    retention_drops_minutes_then_everything,
    concurrent_retries_store_once,
    sequence_is_scoped_by_agent_instance,
    stacks_of_one_build,
    queued_ingest_stores_each_batch_once,
    old_dedup_records_fold_and_resends_stay_duplicates,
    source_lines_per_call_site,
    every_function_of_a_service_per_bucket_in_one_read,
    detection_rows_sum_minutes_and_live_as_long_as_detection,
    first_minute_of_each_build,
    changes_are_stored_replaced_and_listed_by_window,
);

fn day() -> Window {
    Window {
        from: T0,
        to: T0 + 86_400,
    }
}

fn top(s: &dyn Store, w: Window, rank: Rank) -> Vec<Keyed> {
    s.top(&TopQuery {
        window: w,
        service: None,
        rank,
        limit: 100,
    })
    .unwrap()
}

fn find<'a>(rows: &'a [Keyed], service: &str, key: &str) -> &'a Keyed {
    rows.iter()
        .find(|r| r.service == service && r.key == key)
        .unwrap_or_else(|| panic!("no row {service}/{key} in {rows:#?}"))
}

fn simple(host: &str, seq: u64, at: i64) -> wattson_proto::v1::Batch {
    BatchBuilder::new(host, seq)
        .interval(
            at,
            10,
            false,
            500.0,
            &[
                ("api", "b1", "main;work;hash", 5, 2_000.0),
                ("api", "b1", "main;work", 3, 1_000.0),
            ],
        )
        .build()
}

fn duplicate_batch_is_stored_once(s: &dyn Store) {
    let b = simple("h1", 1, T0 + 5);
    assert_eq!(
        s.ingest(&b).unwrap(),
        Ingested::New {
            profiles: 1,
            samples: 8
        }
    );
    assert_eq!(s.ingest(&b).unwrap(), Ingested::Duplicate);
    // Same sequence from another host is a different batch.
    assert!(matches!(
        s.ingest(&simple("h2", 1, T0 + 5)).unwrap(),
        Ingested::New { .. }
    ));
    let rows = top(s, day(), Rank::SamplesInclusive);
    assert_eq!(find(&rows, "api", "main").totals.samples_incl, 16);
    assert_eq!(s.stats().unwrap().batches, 2);
}

fn self_and_inclusive_rollup(s: &dyn Store) {
    s.ingest(&simple("h1", 1, T0 + 5)).unwrap();
    let rows = top(s, day(), Rank::EnergySelf);
    let hash = find(&rows, "api", "hash").totals;
    let work = find(&rows, "api", "work").totals;
    let main = find(&rows, "api", "main").totals;
    assert_eq!((hash.samples_self, hash.samples_incl), (5, 5));
    assert_eq!((work.samples_self, work.samples_incl), (3, 8));
    assert_eq!((main.samples_self, main.samples_incl), (0, 8));
    assert_eq!(
        (hash.uj_self, work.uj_self, work.uj_incl),
        (2_000, 1_000, 3_000)
    );
    // Ranked by self energy: hash (2 mJ) before work (1 mJ) before main (0).
    let order: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(order, ["hash", "work", "main"]);
    let by_incl = top(s, day(), Rank::EnergyInclusive);
    assert_eq!(by_incl[2].key, "hash");
}

fn recursion_counts_inclusive_once(s: &dyn Store) {
    let b = BatchBuilder::new("h1", 1)
        .interval(
            T0,
            10,
            false,
            0.0,
            &[("api", "", "main;fib;fib;fib", 4, 40.0)],
        )
        .build();
    s.ingest(&b).unwrap();
    let rows = top(s, day(), Rank::SamplesInclusive);
    let fib = find(&rows, "api", "fib").totals;
    assert_eq!(
        (fib.samples_self, fib.samples_incl, fib.uj_incl),
        (4, 4, 40)
    );
}

fn estimated_energy_stays_separate(s: &dyn Store) {
    s.ingest(&simple("measured", 1, T0)).unwrap();
    let est = BatchBuilder::new("vm", 1)
        .interval(
            T0 + 60,
            10,
            true,
            100.0,
            &[("api", "b1", "main;work;hash", 5, 7_000.0)],
        )
        .build();
    s.ingest(&est).unwrap();
    let hash = find(&top(s, day(), Rank::EnergySelf), "api", "hash").totals;
    assert_eq!((hash.uj_self, hash.est_uj_self), (2_000, 7_000));
    assert_eq!((hash.uj_incl, hash.est_uj_incl), (2_000, 7_000));
    let hosts = s.hosts(day()).unwrap();
    let vm = find(&hosts, "", "vm").totals;
    assert_eq!(
        (vm.uj_self, vm.est_uj_self, vm.idle_uj, vm.est_idle_uj),
        (0, 7_000, 0, 100)
    );
    let m = find(&hosts, "", "measured").totals;
    assert_eq!((m.uj_self, m.est_uj_self, m.idle_uj), (3_000, 0, 500));
    // Hour rows carry the split too: a window of whole hours reads only hour rows.
    let hour = Window {
        from: T0,
        to: T0 + 3600,
    };
    let hash = find(&top(s, hour, Rank::EnergySelf), "api", "hash").totals;
    assert_eq!((hash.uj_self, hash.est_uj_self), (2_000, 7_000));
}

/// One batch per minute over 3 hours 30 minutes; each minute m has m+1 samples of `leaf`.
fn spread(s: &dyn Store) {
    for m in 0..210i64 {
        let b = BatchBuilder::new("h1", m as u64 + 1)
            .interval(
                T0 + m * 60 + 7,
                10,
                false,
                0.0,
                &[("api", "", "main;leaf", m as u64 + 1, 10.0)],
            )
            .build();
        s.ingest(&b).unwrap();
    }
}

fn expected(from_min: i64, to_min: i64) -> u64 {
    (from_min..to_min.min(210)).map(|m| m as u64 + 1).sum()
}

fn window_mixes_hours_and_minutes(s: &dyn Store) {
    spread(s);
    // (from, to) in minutes after T0: ragged both ends, inside one hour, whole hours, and an
    // unaligned start that rounds down to its minute.
    for (a, b) in [
        (17, 197),
        (5, 40),
        (60, 180),
        (0, 210),
        (61, 62),
        (119, 121),
    ] {
        let w = Window {
            from: T0 + a * 60,
            to: T0 + b * 60,
        };
        let leaf = find(&top(s, w, Rank::SamplesSelf), "api", "leaf").totals;
        assert_eq!(leaf.samples_self, expected(a, b), "window {a}..{b} min");
        assert_eq!(
            leaf.uj_self,
            10 * (b.min(210) - a) as u64,
            "energy {a}..{b}"
        );
    }
    let w = Window {
        from: T0 + 30 * 60 + 59,
        to: T0 + 31 * 60,
    };
    let leaf = find(&top(s, w, Rank::SamplesSelf), "api", "leaf").totals;
    assert_eq!(leaf.samples_self, expected(30, 31));
}

fn series_buckets(s: &dyn Store) {
    spread(s);
    let w = Window {
        from: T0,
        to: T0 + 4 * 3600,
    };
    let hourly = s.series(w, "api", "leaf", 3600).unwrap();
    let got: Vec<(i64, u64)> = hourly
        .iter()
        .map(|p| (p.at, p.totals.samples_self))
        .collect();
    let want: Vec<(i64, u64)> = (0..4)
        .map(|h| (T0 + h * 3600, expected(h * 60, h * 60 + 60)))
        .collect();
    assert_eq!(got, want);
    let five = s.series(w, "api", "leaf", 300).unwrap();
    assert_eq!(five.len(), 42); // 210 minutes / 5
    assert_eq!(five[3].at, T0 + 900);
    assert_eq!(five[3].totals.samples_self, expected(15, 20));
    assert!(s.series(w, "api", "nope", 60).unwrap().is_empty());
}

fn services_hosts_builds_stacks(s: &dyn Store) {
    s.ingest(&simple("h1", 1, T0)).unwrap();
    s.ingest(&simple("h2", 1, T0 + 600)).unwrap();
    let db = BatchBuilder::new("h3", 1)
        .interval(
            T0,
            10,
            false,
            0.0,
            &[("db", "b9", "main;query;read_[k]", 2, 50.0)],
        )
        .build();
    s.ingest(&db).unwrap();
    let svc = s.services(day()).unwrap();
    assert_eq!(svc.len(), 2);
    assert_eq!((svc[0].service.as_str(), svc[0].hosts), ("api", 2));
    assert_eq!(svc[0].totals.samples_self, 16);
    assert_eq!((svc[1].service.as_str(), svc[1].hosts), ("db", 1));
    assert_eq!(s.hosts(day()).unwrap().len(), 3);
    let builds = s.builds(day(), Some("db")).unwrap();
    assert_eq!(builds.len(), 1);
    assert_eq!(
        (builds[0].key.as_str(), builds[0].totals.uj_self),
        ("b9", 50)
    );
    let stacks = s.stacks(day(), None).unwrap();
    let k = find(&stacks, "db", "main;query;read_[k]").totals;
    assert_eq!(k.samples_self, 2);
    assert_eq!(
        find(&stacks, "api", "main;work;hash").totals.samples_self,
        10
    );
    assert_eq!(s.known_services().unwrap(), ["api", "db"]);
}

fn bad_queries_are_errors(s: &dyn Store) {
    s.ingest(&simple("h1", 1, T0)).unwrap();
    let reversed = Window {
        from: T0 + 10,
        to: T0,
    };
    let empty = Window { from: T0, to: T0 };
    for w in [reversed, empty] {
        let e = s
            .top(&TopQuery {
                window: w,
                service: None,
                rank: Rank::EnergySelf,
                limit: 10,
            })
            .unwrap_err();
        assert!(matches!(e, StoreError::BadQuery(_)), "{e}");
        assert!(matches!(
            s.series(w, "api", "hash", 60),
            Err(StoreError::BadQuery(_))
        ));
    }
    let e = s.series(day(), "api", "hash", 90).unwrap_err();
    assert!(e.to_string().contains("multiple of 60"), "{e}");
}

fn invalid_batch_is_rejected_and_not_marked_seen(s: &dyn Store) {
    let mut b = simple("h1", 7, T0);
    b.profiles[0].samples[0].stack_index = 99;
    let e = s.ingest(&b).unwrap_err();
    assert!(e.to_string().contains("stack_index"), "{e}");
    let mut nan = simple("h1", 7, T0);
    nan.profiles[0].samples[0].microjoules = f64::NAN;
    assert!(matches!(
        s.ingest(&nan),
        Err(StoreError::InvalidBatch { .. })
    ));
    // The corrected batch with the same sequence is stored, not taken for a duplicate.
    assert!(matches!(
        s.ingest(&simple("h1", 7, T0)).unwrap(),
        Ingested::New { .. }
    ));
}

fn retention_drops_minutes_then_everything(s: &dyn Store) {
    let old = T0 - 40 * 86_400;
    let mid = T0 - 10 * 86_400;
    s.ingest(&simple("h1", 1, old + 90)).unwrap();
    s.ingest(&simple("h1", 2, mid + 90)).unwrap();
    s.ingest(&simple("h1", 3, T0 + 90)).unwrap();
    let policy = Retention {
        raw: Duration::from_secs(7 * 86_400),
        total: Duration::from_secs(30 * 86_400),
        ..Retention::default()
    };
    let report = s.retain(&policy, T0 + 3600).unwrap();
    assert!(
        report.minute_rows_deleted > 0 && report.expired_rows_deleted > 0,
        "{report:?}"
    );
    let hours = |at: i64| Window {
        from: at,
        to: at + 3600,
    };
    let minutes = |at: i64| Window {
        from: at + 60,
        to: at + 120,
    };
    let samples = |w: Window| {
        s.top(&TopQuery {
            window: w,
            service: None,
            rank: Rank::SamplesSelf,
            limit: 10,
        })
        .unwrap()
        .iter()
        .map(|r| r.totals.samples_self)
        .sum::<u64>()
    };
    assert_eq!(samples(hours(old)), 0, "expired data is gone");
    assert_eq!(samples(hours(mid)), 8, "hour rows outlive the raw period");
    assert_eq!(
        samples(minutes(mid)),
        0,
        "minute rows past the raw period are gone"
    );
    assert_eq!(samples(minutes(T0)), 8, "recent minute rows stay");
    // A second pass has nothing left to do.
    assert_eq!(s.retain(&policy, T0 + 3600).unwrap(), Default::default());
}

fn concurrent_retries_store_once(s: &dyn Store) {
    let b = simple("h1", 42, T0);
    let results: Vec<Ingested> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..6).map(|_| sc.spawn(|| s.ingest(&b).unwrap())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let new = results
        .iter()
        .filter(|r| matches!(r, Ingested::New { .. }))
        .count();
    assert_eq!(new, 1, "{results:?}");
    let rows = top(s, day(), Rank::SamplesInclusive);
    assert_eq!(find(&rows, "api", "main").totals.samples_incl, 8);
}

/// An agent whose spool was wiped starts again at sequence 1 under a new instance: that is new
/// data, not a duplicate; the same instance resending is still a duplicate.
fn sequence_is_scoped_by_agent_instance(s: &dyn Store) {
    let mut first = simple("h1", 1, T0);
    first.agent_instance = "aaaa".into();
    let mut again = simple("h1", 1, T0 + 60);
    again.agent_instance = "bbbb".into();
    assert!(matches!(s.ingest(&first).unwrap(), Ingested::New { .. }));
    assert!(matches!(s.ingest(&again).unwrap(), Ingested::New { .. }));
    assert_eq!(s.ingest(&again).unwrap(), Ingested::Duplicate);
    let rows = top(s, day(), Rank::SamplesInclusive);
    assert_eq!(find(&rows, "api", "main").totals.samples_incl, 16);
    assert_eq!(s.stats().unwrap().batches, 2);
}

/// Stacks are kept per build id, so two versions of a service running side by side can be
/// compared; `stacks` sums over builds.
fn stacks_of_one_build(s: &dyn Store) {
    let b = BatchBuilder::new("h1", 1)
        .interval(
            T0,
            10,
            false,
            0.0,
            &[
                ("api", "v1", "main;work;hash", 5, 500.0),
                ("api", "v2", "main;work;hash", 2, 200.0),
                ("api", "v2", "main;work;fast", 7, 700.0),
            ],
        )
        .build();
    s.ingest(&b).unwrap();
    let v1 = s.build_stacks(day(), Some("api"), "v1").unwrap();
    assert_eq!(v1.len(), 1, "{v1:#?}");
    assert_eq!(find(&v1, "api", "main;work;hash").totals.samples_self, 5);
    let v2 = s.build_stacks(day(), None, "v2").unwrap();
    assert_eq!(v2.len(), 2, "{v2:#?}");
    assert_eq!(find(&v2, "api", "main;work;hash").totals.uj_self, 200);
    assert_eq!(find(&v2, "api", "main;work;fast").totals.samples_self, 7);
    let all = s.stacks(day(), None).unwrap();
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(find(&all, "api", "main;work;hash").totals.samples_self, 7);
    assert!(s.build_stacks(day(), None, "v3").unwrap().is_empty());
}

/// Frames with DWARF file:line become line rows where the project's own code calls into a
/// library (the call site) or runs itself (a leaf): per (function, callee, file, line) the
/// samples there; a line repeated by recursion counts once per sample; hour and minute rows
/// sum alike.
fn source_lines_per_call_site(s: &dyn Store) {
    let regex = "main@src/main.rs:10;handle@src/lib.rs:42;\
                 regex::Regex::new@/home/u/.cargo/registry/src/index/regex-1.12.2/src/lib.rs:100";
    let batch = |seq: u64, at: i64| {
        BatchBuilder::new("h1", seq)
            .interval(
                at,
                10,
                false,
                0.0,
                &[
                    ("api", "v1", regex, 5, 50.0),
                    (
                        "api",
                        "v1",
                        "main@src/main.rs:10;handle@src/lib.rs:44",
                        3,
                        30.0,
                    ),
                    (
                        "api",
                        "v1",
                        "main@m.rs:1;f@f.rs:5;write;f@f.rs:5;write",
                        2,
                        20.0,
                    ),
                    (
                        "db",
                        "v1",
                        "main@src/main.rs:10;handle@src/lib.rs:42",
                        4,
                        40.0,
                    ),
                    ("db", "v1", "main;nolines", 4, 40.0),
                ],
            )
            .build()
    };
    s.ingest(&batch(1, T0 + 5)).unwrap();
    s.ingest(&batch(2, T0 + 2 * 3600 + 5)).unwrap();
    let rows = s.lines(day(), Some("api")).unwrap();
    let n = |key: &str| find(&rows, "api", key).totals.samples_self;
    assert_eq!(n("handle\tregex::Regex::new\tsrc/lib.rs\t42"), 10);
    assert_eq!(n("handle\t\tsrc/lib.rs\t44"), 6);
    assert_eq!(n("f\twrite\tf.rs\t5"), 4, "recursion counts once");
    // Own code calling own code, and library frames, make no rows.
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let db = s.lines(day(), Some("db")).unwrap();
    assert_eq!(db.len(), 1, "{db:#?}");
    assert_eq!(
        find(&db, "db", "handle\t\tsrc/lib.rs\t42")
            .totals
            .samples_self,
        8
    );
    assert_eq!(s.lines(day(), None).unwrap().len(), 4);
    // Functions and stacks are unchanged by locations.
    let stacks = s.stacks(day(), Some("api")).unwrap();
    assert_eq!(
        find(&stacks, "api", "main;handle;regex::Regex::new")
            .totals
            .samples_self,
        10
    );
}

/// The first releases journaled acknowledged batches in a `journal` table (now files: see
/// tests/journal.rs); a store left with entries there by a killed collector replays them at
/// the next open. The entries are written here the way those releases committed them.
#[test]
fn sqlite_replays_a_first_release_journal_table_at_open() {
    use prost::Message as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sqlite");
    let url = format!("sqlite://{}", path.display());
    drop(store::open(&url).unwrap()); // creates the schema
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        for seq in 1..=3u64 {
            let b = simple("h1", seq, T0 + 60 * seq as i64);
            c.execute(
                "INSERT INTO received VALUES (?1, '', ?2, 0, 1, 8)",
                rusqlite::params!["h1", seq as i64],
            )
            .unwrap();
            c.execute(
                "INSERT INTO journal (payload) VALUES (?1)",
                rusqlite::params![b.encode_to_vec()],
            )
            .unwrap();
        }
    }
    let s = store::open(&url).unwrap();
    let rows = top(&*s, day(), Rank::SamplesInclusive);
    assert_eq!(find(&rows, "api", "main").totals.samples_incl, 24);
    // Replayed batches are still recognised as stored.
    assert_eq!(
        s.ingest(&simple("h1", 2, T0 + 120)).unwrap(),
        Ingested::Duplicate
    );
    drop(s);
    let c = rusqlite::Connection::open(&path).unwrap();
    let left: i64 = c
        .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "rolled-up entries leave the journal");
}

/// Stores of the first release keyed dedup records by (host, sequence) in `batches`; opening
/// one carries them over, so batches already stored stay duplicates.
#[test]
fn sqlite_migrates_first_release_dedup_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE batches (host TEXT NOT NULL, seq INTEGER NOT NULL, \
             received INTEGER NOT NULL, profiles INTEGER NOT NULL, samples INTEGER NOT NULL, \
             PRIMARY KEY (host, seq)) WITHOUT ROWID;
             INSERT INTO batches VALUES ('h1', 7, 0, 1, 8);",
        )
        .unwrap();
    }
    let s = store::open(&format!("sqlite://{}", path.display())).unwrap();
    assert_eq!(s.ingest(&simple("h1", 7, T0)).unwrap(), Ingested::Duplicate);
    assert!(matches!(
        s.ingest(&simple("h1", 8, T0)).unwrap(),
        Ingested::New { .. }
    ));
    assert_eq!(s.stats().unwrap().batches, 2);
}

/// ClickHouse commits concurrent ingests as groups (one marker lookup and one INSERT each).
/// Many threads each send every batch of a set spanning a month boundary (a group then writes
/// two partitions), in different orders, so originals and their duplicates land in the same
/// group and in later ones: each batch must be stored exactly once, and the sums be exact.
#[test]
fn clickhouse_concurrent_ingests_store_each_batch_once() {
    let (_g, s) = clickhouse();
    let s = &*s;
    // October 31st 23:55 to November 1st 00:05: ten minutes across a month boundary.
    let start = T0 - 86_400 - 300;
    let batch = |host: u64, seq: u64| {
        BatchBuilder::new(&format!("h{host}"), seq)
            .interval(
                start + (seq as i64 - 1) * 60 + 7,
                10,
                false,
                0.0,
                &[("api", "", "main;leaf", host * 100 + seq, 10.0)],
            )
            .build()
    };
    let (hosts, seqs, threads) = (8u64, 10u64, 12usize);
    let all: Vec<_> = (0..hosts)
        .flat_map(|h| (1..=seqs).map(move |q| (h, q)))
        .map(|(h, q)| batch(h, q))
        .collect();
    let barrier = std::sync::Barrier::new(threads);
    let answers: Vec<Ingested> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (all, barrier) = (&all, &barrier);
                sc.spawn(move || {
                    barrier.wait();
                    let n = all.len();
                    // Rotated, and reversed for odd threads: every thread sends every batch.
                    (0..n)
                        .map(|i| if t % 2 == 0 { i } else { n - 1 - i })
                        .map(|i| s.ingest(&all[(i + t * 7) % n]).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let new: Vec<u64> = answers
        .iter()
        .filter_map(|a| match a {
            Ingested::New { samples, .. } => Some(*samples),
            Ingested::Duplicate => None,
        })
        .collect();
    let want: u64 = (0..hosts)
        .flat_map(|h| (1..=seqs).map(move |q| h * 100 + q))
        .sum();
    assert_eq!(new.len() as u64, hosts * seqs, "one New per distinct batch");
    assert_eq!(new.iter().sum::<u64>(), want);
    assert_eq!(s.stats().unwrap().batches, hosts * seqs);
    let w = Window {
        from: start,
        to: T0 + 3600,
    };
    let leaf = find(&top(s, w, Rank::SamplesSelf), "api", "leaf").totals;
    assert_eq!((leaf.samples_self, leaf.uj_self), (want, 10 * hosts * seqs));
    for h in 0..hosts {
        let host = find(&s.hosts(w).unwrap(), "", &format!("h{h}")).totals;
        assert_eq!(
            host.samples_self,
            (1..=seqs).map(|q| h * 100 + q).sum::<u64>()
        );
    }
    // Hour rows (a window of whole hours reads only those) hold the same sums.
    let hours = Window {
        from: T0 - 86_400 - 3600,
        to: T0 - 86_400 + 3600,
    };
    let leaf = find(&top(s, hours, Rank::SamplesSelf), "api", "leaf").totals;
    assert_eq!(leaf.samples_self, want);
}

/// When the INSERT of a group fails, every fresh batch of it gets an error and nothing is
/// marked stored: once the server accepts writes again, the retries are New, not Duplicate.
/// The failure is a column the INSERT names going missing (the marker lookup still works).
#[test]
fn clickhouse_failed_insert_acknowledges_nothing() {
    let server = ClickHouseServer::start().expect("start clickhouse-server (cargo xtask setup)");
    let s = store::open(&server.store_url("wattson_test")).unwrap();
    let alter = |sql: &str| clickhouse_sql(&server, sql);
    let stored = simple("h0", 1, T0);
    assert!(matches!(s.ingest(&stored).unwrap(), Ingested::New { .. }));
    alter("ALTER TABLE wattson_test.rollup DROP COLUMN dropped");
    let batches: Vec<_> = (1..=6).map(|h| simple(&format!("h{h}"), 1, T0)).collect();
    let failed: Vec<Result<Ingested, StoreError>> = std::thread::scope(|sc| {
        let hs: Vec<_> = batches
            .iter()
            .chain([&stored])
            .map(|b| sc.spawn(|| s.ingest(b)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, r) in failed[..6].iter().enumerate() {
        let e = r.as_ref().expect_err("the INSERT cannot succeed");
        assert!(e.to_string().contains("insert failed"), "batch {i}: {e}");
    }
    assert_eq!(
        failed[6].as_ref().unwrap(),
        &Ingested::Duplicate,
        "stored before the failure"
    );
    alter("ALTER TABLE wattson_test.rollup ADD COLUMN dropped UInt64");
    for b in &batches {
        assert!(matches!(s.ingest(b).unwrap(), Ingested::New { .. }));
    }
    let rows = top(&*s, day(), Rank::SamplesInclusive);
    assert_eq!(find(&rows, "api", "main").totals.samples_incl, 7 * 8);
    assert_eq!(s.stats().unwrap().batches, 7);
}

/// Runs one statement on a test server, outside the store; its answer.
fn clickhouse_sql(server: &ClickHouseServer, sql: &str) -> String {
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/", server.http_url()))
        .body(sql.to_string())
        .send()
        .unwrap();
    let ok = r.status().is_success();
    let text = r.text().unwrap();
    assert!(ok, "{sql}: {text}");
    text
}

/// Dedup records past the week fold into one floor per agent instance (a fleet at 10 s writes
/// 86 million a day): resends stay duplicates, each instance keeps its own floor, later batches
/// are new, and the batch count survives two passes.
fn old_dedup_records_fold_and_resends_stay_duplicates(s: &dyn Store) {
    let instance = |seq: u64| {
        let mut b = simple("h1", seq, T0 + 90);
        b.agent_instance = "bbbb".into();
        b
    };
    for seq in 1..=5 {
        s.ingest(&simple("h1", seq, T0 + 90)).unwrap();
    }
    s.ingest(&instance(1)).unwrap();
    s.ingest(&simple("h2", 1, T0 + 90)).unwrap();
    // Eight days on, every dedup record is past the week and nothing past the total retention.
    let now = wattson_collector::report::now();
    s.retain(&Retention::default(), now + 8 * 86_400).unwrap();
    assert_eq!(s.stats().unwrap().batches, 7);
    for seq in [1, 3, 5] {
        let again = s.ingest(&simple("h1", seq, T0 + 90)).unwrap();
        assert_eq!(again, Ingested::Duplicate, "h1/{seq}");
    }
    assert_eq!(s.ingest(&instance(1)).unwrap(), Ingested::Duplicate);
    for b in [
        simple("h1", 6, T0 + 90),
        instance(2),
        simple("h2", 2, T0 + 90),
    ] {
        let first = s.ingest(&b).unwrap();
        assert!(
            matches!(first, Ingested::New { .. }),
            "{} {}",
            b.host_id,
            b.sequence
        );
    }
    assert_eq!(s.stats().unwrap().batches, 10);
    s.retain(&Retention::default(), now + 9 * 86_400).unwrap();
    assert_eq!(s.stats().unwrap().batches, 10);
    assert_eq!(
        s.ingest(&simple("h1", 6, T0 + 90)).unwrap(),
        Ingested::Duplicate
    );
    assert_eq!(s.ingest(&instance(2)).unwrap(), Ingested::Duplicate);
}

/// Folded ClickHouse markers are deleted: what is left is one floor row per fold and instance.
#[test]
fn clickhouse_markers_fold_into_floors() {
    let server = ClickHouseServer::start().expect("start clickhouse-server (cargo xtask setup)");
    let s = store::open(&server.store_url("wattson_test")).unwrap();
    for seq in 1..=4 {
        s.ingest(&simple("h1", seq, T0 + 90)).unwrap();
    }
    let markers = "SELECT count() FROM wattson_test.rollup WHERE kind = 6";
    assert_eq!(clickhouse_sql(&server, markers).trim(), "4");
    s.retain(
        &Retention::default(),
        wattson_collector::report::now() + 8 * 86_400,
    )
    .unwrap();
    assert_eq!(clickhouse_sql(&server, markers).trim(), "0");
    let floors = "SELECT key, seq, folded FROM wattson_test.dedup_floor";
    assert_eq!(clickhouse_sql(&server, floors).trim(), "h1\t4\t4");
    assert_eq!(s.stats().unwrap().batches, 4);
    // As if that delete had failed: two of the markers are back, with one marker past the
    // floor. The next pass counts only the new one, and deletes all three.
    let marker = |seq: u64| {
        format!(
            "{{\"kind\":6,\"res\":0,\"minute\":{T0},\"service\":\"\",\"key\":\"{seq}@h1\",\
             \"samples_self\":8,\"samples_incl\":1}}"
        )
    };
    clickhouse_sql(
        &server,
        &format!(
            "INSERT INTO wattson_test.rollup FORMAT JSONEachRow {} {} {}",
            marker(3),
            marker(4),
            marker(5)
        ),
    );
    assert_eq!(
        s.stats().unwrap().batches,
        7,
        "before the pass: 3 markers + 4 folded"
    );
    s.retain(
        &Retention::default(),
        wattson_collector::report::now() + 9 * 86_400,
    )
    .unwrap();
    assert_eq!(clickhouse_sql(&server, markers).trim(), "0");
    assert_eq!(
        s.stats().unwrap().batches,
        5,
        "leftover markers are not counted again"
    );
    assert_eq!(
        s.ingest(&simple("h1", 5, T0 + 90)).unwrap(),
        Ingested::Duplicate
    );
}

/// Markers written before group commit (one JSONEachRow INSERT per batch: kind 6, the first
/// minute, key `SEQ@HOST[/INSTANCE]`, samples and profiles) still mark their batches stored.
#[test]
fn clickhouse_markers_of_earlier_releases_stay_duplicates() {
    let server = ClickHouseServer::start().expect("start clickhouse-server (cargo xtask setup)");
    let s = store::open(&server.store_url("wattson_test")).unwrap();
    let mut b = simple("h1", 9, T0 + 5);
    b.agent_instance = "aaaa".into();
    clickhouse_sql(
        &server,
        &format!(
            "INSERT INTO wattson_test.rollup FORMAT JSONEachRow \
             {{\"kind\":6,\"res\":0,\"minute\":{T0},\"service\":\"\",\"key\":\"9@h1/aaaa\",\
             \"samples_self\":8,\"samples_incl\":1}} \
             {{\"kind\":6,\"res\":0,\"minute\":{T0},\"service\":\"\",\"key\":\"3@h2\",\
             \"samples_self\":8,\"samples_incl\":1}}"
        ),
    );
    assert_eq!(s.ingest(&b).unwrap(), Ingested::Duplicate);
    assert_eq!(s.ingest(&simple("h2", 3, T0)).unwrap(), Ingested::Duplicate);
    // The same key at another first minute is another batch, as before.
    assert!(matches!(
        s.ingest(&simple("h2", 3, T0 + 60)).unwrap(),
        Ingested::New { .. }
    ));
    assert_eq!(s.stats().unwrap().batches, 3);
}

/// The path the gRPC server takes: batches queued without blocking and awaited, resends among
/// them, each stored once.
fn queued_ingest_stores_each_batch_once(s: &dyn Store) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let batches: Vec<_> = (1..=4).map(|seq| simple("h1", seq, T0 + 60)).collect();
    let pending: Vec<_> = batches
        .iter()
        .chain(&batches)
        .map(|b| {
            // As the server reads a request: in place, from its bytes.
            let bytes = bytes::Bytes::from(prost::Message::encode_to_vec(b));
            let view = BatchView::parse(&bytes).expect("parses");
            s.queue(&view, bytes.clone())
                .expect("the backend has an ingest pipeline")
        })
        .collect();
    let answers: Vec<Ingested> = rt.block_on(async {
        let mut out = Vec::new();
        for p in pending {
            out.push(p.await.unwrap());
        }
        out
    });
    let new = answers
        .iter()
        .filter(|a| matches!(a, Ingested::New { .. }))
        .count();
    assert_eq!(new, 4, "{answers:?}");
    let rows = top(s, day(), Rank::SamplesInclusive);
    assert_eq!(find(&rows, "api", "main").totals.samples_incl, 4 * 8);
    assert_eq!(s.stats().unwrap().batches, 4);
}

fn every_function_of_a_service_per_bucket_in_one_read(s: &dyn Store) {
    spread(s);
    // Another service and a second host of api: neither leaks into api's functions, the
    // second host adds to api's totals.
    let other = BatchBuilder::new("h2", 1)
        .interval(
            T0 + 60,
            10,
            true,
            0.0,
            &[
                ("db", "", "main;query", 7, 70.0),
                ("api", "", "main;other", 2, 20.0),
            ],
        )
        .build();
    s.ingest(&other).unwrap();
    let w = Window {
        from: T0,
        to: T0 + 4 * 3600,
    };
    let b = s.buckets(Of::Functions, w, "api", 300).unwrap();
    assert_eq!((b.start, b.step, b.len), (T0, 300, 48));
    let keys: Vec<&str> = b.series.iter().map(|x| x.key.as_str()).collect();
    assert_eq!(keys, ["leaf", "main", "other"]);
    let leaf = &b.series[0];
    for i in [0usize, 3, 41] {
        let m = i as i64 * 5;
        assert_eq!(leaf.samples[i], expected(m, m + 5), "bucket {i}");
        assert_eq!(leaf.uj[i], 10 * (m + 5).min(210).saturating_sub(m) as u64);
    }
    assert_eq!(leaf.samples[42..], [0; 6]); // no data after 210 minutes
    assert!(!leaf.estimated());
    // Inclusive: main carries leaf's samples, and other's in bucket 0 (estimated energy).
    assert_eq!(b.series[1].samples[0], expected(0, 5) + 2);
    assert_eq!(b.series[2].est_uj[0], 20);
    assert!(b.series[2].estimated());
    // Hour steps read hour rows and give the same sums.
    let hourly = s.buckets(Of::Functions, w, "api", 3600).unwrap();
    assert_eq!(hourly.series[0].samples[1], expected(60, 120));
    // Totals: every sample of the service, all hosts, one series "".
    let t = s.buckets(Of::Totals, w, "api", 300).unwrap();
    assert_eq!(t.series.len(), 1);
    assert_eq!(t.series[0].key, "");
    assert_eq!(t.series[0].samples[0], expected(0, 5) + 2);
    assert_eq!(t.series[0].samples[3], expected(15, 20));
    assert!(
        s.buckets(Of::Functions, w, "nope", 300)
            .unwrap()
            .series
            .is_empty()
    );
    assert!(matches!(
        s.buckets(Of::Functions, w, "api", 90),
        Err(StoreError::BadQuery(_))
    ));
}

fn detection_rows_sum_minutes_and_live_as_long_as_detection(s: &dyn Store) {
    spread(s);
    let other = BatchBuilder::new("h2", 1)
        .interval(
            T0 + 62,
            10,
            true,
            0.0,
            &[("api", "", "main;other", 2, 20.0)],
        )
        .build();
    s.ingest(&other).unwrap();
    let w = Window {
        from: T0,
        to: T0 + 4 * 3600,
    };
    let five = |of| s.buckets(of, w, "api", 300).unwrap();
    let by_five = |v: &[u64]| -> Vec<u64> { v.chunks(5).map(|c| c.iter().sum()).collect() };
    // Five-minute steps read detection's rows; one-minute steps read minute rows: the same sums.
    for of in [Of::Functions, Of::Totals] {
        let minutes = s.buckets(of, w, "api", 60).unwrap();
        let got = five(of);
        let keys = |b: &store::Buckets| -> Vec<String> {
            b.series.iter().map(|x| x.key.clone()).collect()
        };
        assert_eq!(keys(&minutes), keys(&got), "{of:?}");
        assert!(got.series.iter().any(|x| x.samples.iter().sum::<u64>() > 0));
        for (m, f) in minutes.series.iter().zip(&got.series) {
            assert_eq!(by_five(&m.samples), f.samples, "{of:?} {}", f.key);
            assert_eq!(by_five(&m.uj), f.uj, "{of:?} {}", f.key);
            assert_eq!(by_five(&m.est_uj), f.est_uj, "{of:?} {}", f.key);
        }
    }
    // Minute rows go after the raw retention; detection's rows stay for its history.
    let before = five(Of::Functions);
    let now = T0 + 5 * 86_400;
    let policy = Retention {
        raw: Duration::ZERO,
        total: Duration::from_secs(30 * 86_400),
        detect: Duration::from_secs(14 * 86_400),
    };
    let report = s.retain(&policy, now).unwrap();
    assert!(report.minute_rows_deleted > 0, "{report:?}");
    assert_eq!(report.detect_rows_deleted, 0, "{report:?}");
    assert!(
        (s.buckets(Of::Functions, w, "api", 60)
            .unwrap()
            .series
            .iter())
        .all(|x| x.samples.iter().all(|&n| n == 0)),
        "minute rows are gone"
    );
    assert_eq!(five(Of::Functions), before);
    // A day's history three hours into the next day still starts at T0 (a midnight), as the
    // series detection reads do: nothing of that day goes.
    let day = Retention {
        detect: Duration::from_secs(86_400),
        ..policy
    };
    let report = s.retain(&day, T0 + 86_400 + 3 * 3600).unwrap();
    assert_eq!(report.detect_rows_deleted, 0, "{report:?}");
    assert_eq!(five(Of::Functions), before);
    // Past detection's history they go too.
    let report = s.retain(&day, now).unwrap();
    assert!(report.detect_rows_deleted > 0, "{report:?}");
    assert!(five(Of::Functions).series.is_empty());
    assert!(five(Of::Totals).series.is_empty());
}

fn first_minute_of_each_build(s: &dyn Store) {
    let batch = |host: &str, seq: u64, at: i64, build: &str| {
        BatchBuilder::new(host, seq)
            .interval(at, 10, false, 0.0, &[("api", build, "main;work", 3, 30.0)])
            .build()
    };
    s.ingest(&batch("h1", 1, T0 + 600, "b1")).unwrap();
    s.ingest(&batch("h1", 2, T0 + 7200 + 125, "b2")).unwrap();
    s.ingest(&batch("h2", 1, T0 + 7200 + 65, "b2")).unwrap();
    s.ingest(&batch("h2", 2, T0 + 9000, "b1")).unwrap();
    // Unknown builds ("") are never a deploy.
    s.ingest(&batch("h3", 1, T0, "")).unwrap();
    let got: Vec<(String, String, i64)> = s
        .first_builds(day())
        .unwrap()
        .into_iter()
        .map(|f| (f.service, f.build_id, f.at))
        .collect();
    assert_eq!(
        got,
        [
            ("api".to_string(), "b1".to_string(), T0 + 600),
            ("api".to_string(), "b2".to_string(), T0 + 7260),
        ]
    );
    // Within a later window, b1's first minute there.
    let later = Window {
        from: T0 + 3600,
        to: T0 + 86_400,
    };
    let b1 = s.first_builds(later).unwrap();
    assert_eq!((b1[0].build_id.as_str(), b1[0].at), ("b1", T0 + 9000));
}

fn changes_are_stored_replaced_and_listed_by_window(s: &dyn Store) {
    let change = |id: &str, service: &str, at: i64| Change {
        id: id.into(),
        service: service.into(),
        at_unix_seconds: at,
        title: format!("title of {id}"),
        kind: "deploy".into(),
        build_id: String::new(),
        touched: vec!["main".into(), "work it's".into()],
        author: "ana".into(),
        url: "https://example.invalid/1".into(),
        automatic: false,
    };
    assert!(s.changes(day(), None).unwrap().is_empty());
    let auto = Change {
        automatic: true,
        build_id: "b2".into(),
        touched: vec![],
        ..change("deploy-api-b2", "api", T0 + 300)
    };
    s.put_change(&auto, None).unwrap();
    s.put_change(&change("c2", "db", T0 + 100), None).unwrap();
    s.put_change(&change("c3", "api", T0 + 86_400), None)
        .unwrap();
    let all = s.changes(day(), None).unwrap();
    let ids: Vec<&str> = all.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["c2", "deploy-api-b2"]); // oldest first; c3 is past the window's end
    assert_eq!(all[0], change("c2", "db", T0 + 100)); // every field round-trips
    assert_eq!(all[1], auto);
    // A recorded change replaces the automatic deploy it merges with, in one write.
    let merged = Change {
        build_id: "b2".into(),
        ..change("c1", "api", T0 + 200)
    };
    s.put_change(&merged, Some("deploy-api-b2")).unwrap();
    let api = s.changes(day(), Some("api")).unwrap();
    assert_eq!(api, std::slice::from_ref(&merged));
    // Writing an id again replaces it.
    let retitled = Change {
        title: "better title".into(),
        ..merged
    };
    s.put_change(&retitled, None).unwrap();
    assert_eq!(
        s.changes(day(), Some("api")).unwrap(),
        std::slice::from_ref(&retitled)
    );
    assert_eq!(s.changes(day(), Some("nope")).unwrap(), []);
    // Retention forgets changes older than the total retention.
    let policy = Retention {
        raw: Duration::from_secs(86_400),
        total: Duration::from_secs(86_400),
        ..Retention::default()
    };
    s.retain(&policy, T0 + 86_400 + 150).unwrap();
    let left: Vec<String> = s
        .changes(
            Window {
                from: 0,
                to: i64::MAX,
            },
            None,
        )
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(left, ["c1", "c3"]);
}

/// Issue 20: sums of request figures overflowed. A batch that got past validation (or was
/// journaled by a collector before it checked) with absurd counts made SQLite turn a sum into
/// a REAL or fail `sum()` with "integer overflow", and every later roll-up and query failed.
/// Now every sum saturates at `i64::MAX` and the store keeps working.
#[test]
fn sqlite_sums_saturate_so_one_absurd_batch_breaks_no_later_query() {
    let (_g, s) = sqlite();
    let huge = |seq: u64| {
        BatchBuilder::new("h1", seq)
            .interval(
                T0 + 5,
                10,
                false,
                1e15,
                &[("api", "b1", "main;hash", u64::MAX / 3, 1e15)],
            )
            .build()
    };
    // Four in one roll-up overflow u64 in memory; a second roll-up adds to the stored rows.
    for seq in 1..=4 {
        s.ingest(&huge(seq)).unwrap();
    }
    let rows = top(&*s, day(), Rank::SamplesInclusive);
    assert_eq!(
        find(&rows, "api", "hash").totals.samples_self,
        i64::MAX as u64
    );
    s.ingest(&huge(5)).unwrap();
    s.ingest(&simple("h1", 6, T0 + 65)).unwrap();
    let rows = top(&*s, day(), Rank::EnergySelf);
    assert_eq!(
        find(&rows, "api", "hash").totals.samples_self,
        i64::MAX as u64
    );
    assert_eq!(find(&rows, "api", "work").totals.samples_self, 3);
    let series = s.series(day(), "api", "hash", 3600).unwrap();
    assert_eq!(series[0].totals.samples_incl, i64::MAX as u64);
    let hosts = s.hosts(day()).unwrap();
    assert_eq!(find(&hosts, "", "h1").totals.samples_self, i64::MAX as u64);
    assert!(!s.services(day()).unwrap().is_empty());
    assert!(!s.stacks(day(), None).unwrap().is_empty());
    // Hour rows (a window of whole hours reads them) saturate too.
    let hours = Window {
        from: T0,
        to: T0 + 7200,
    };
    let rows = top(&*s, hours, Rank::SamplesSelf);
    assert_eq!(
        find(&rows, "api", "hash").totals.samples_self,
        i64::MAX as u64
    );
}
