//! The SQLite store's hour rows against its watermark (`sqlite_hours`): however a minute's
//! batches arrive (before the watermark passes it, after, or around a restart), every hour
//! row equals the sum of its hour's minute rows before the watermark, and queries of whole
//! hours count every sample once, before and after retention deletes the minute rows.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use wattson_collector::store::synthetic::BatchBuilder;
use wattson_collector::store::{self, Retention, Store, Window};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn batch(host: &str, seq: u64, at: i64, count: u64) -> wattson_proto::v1::Batch {
    BatchBuilder::new(host, seq)
        .interval(
            at,
            10,
            false,
            100.0,
            &[
                ("api", "b1", "main;work;hash", count, 10.0 * count as f64),
                ("db", "b2", "main;scan", 1, 5.0),
            ],
        )
        .build()
}

fn watermark(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT value FROM meta WHERE key = 'hours_before'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// Every hour row equals the sums of its hour's minute rows before the watermark, and no
/// such minute rows lack an hour row. Returns how many hour rows there are.
fn check_hours(path: &Path) -> usize {
    let before = watermark(path);
    let conn = Connection::open(path).unwrap();
    type Key = (i64, i64, String, String);
    let read = |res: i64| -> Vec<(Key, i64, [i64; 3])> {
        let mut st = conn
            .prepare(
                "SELECT kind, minute, service, key, samples_self, samples_incl, uj_self, \
                 duration_ms FROM rollup WHERE res = ?1",
            )
            .unwrap();
        st.query_map([res], |r| {
            Ok((
                (
                    r.get(0)?,
                    r.get::<_, i64>(1)? / 3600 * 3600,
                    r.get(2)?,
                    r.get(3)?,
                ),
                r.get(1)?,
                [
                    r.get(4)?,
                    r.get::<_, i64>(5)? + r.get::<_, i64>(6)?,
                    r.get(7)?,
                ],
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    let mut want: HashMap<Key, [i64; 3]> = HashMap::new();
    for (key, minute, sums) in read(0) {
        if minute < before {
            let w = want.entry(key).or_default();
            (0..3).for_each(|i| w[i] += sums[i]);
        }
    }
    let got: HashMap<Key, [i64; 3]> = read(1).into_iter().map(|(k, _, s)| (k, s)).collect();
    assert_eq!(got, want, "hour rows against minute rows before {before}");
    got.len()
}

fn samples(s: &dyn Store, w: Window) -> u64 {
    s.hosts(w)
        .unwrap()
        .iter()
        .map(|k| k.totals.samples_self)
        .sum()
}

#[test]
fn minutes_reach_their_hours_once_however_their_batches_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sqlite");
    let url = format!("sqlite://{}", path.display());
    let t = now();
    let fresh = store::open(&url).unwrap();
    drop(fresh);
    let w = watermark(&path);
    assert!(
        (t - 180..=t - 60).contains(&w),
        "a new store starts its watermark 2 minutes back: {w} at {t}"
    );
    // As if the collector had paused two hours: its watermark lags.
    let w0 = (t / 60 - 120) * 60;
    Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE meta SET value = ?1 WHERE key = 'hours_before'",
            [w0],
        )
        .unwrap();
    let s = store::open(&url).unwrap();
    let sent = std::cell::Cell::new(0);
    let send = |s: &dyn Store, host: &str, seq: u64, at: i64, count: u64| {
        s.ingest(&batch(host, seq, at, count)).unwrap();
        sent.set(sent.get() + count + 1);
    };
    send(&*s, "h1", 1, w0 - 1800, 2); // late: straight to its hour
    send(&*s, "h1", 2, w0 + 60, 3);
    send(&*s, "h2", 1, w0 + 240, 4);
    send(&*s, "h2", 2, w0 + 420, 5);
    send(&*s, "h1", 3, t - 60, 6);
    let all = Window {
        from: (w0 - 1800) / 3600 * 3600,
        to: (t / 3600 + 1) * 3600,
    };
    // The query settles: a roll-up, which moves the watermark five minutes.
    assert_eq!(samples(&*s, all), sent.get());
    assert_eq!(watermark(&path), w0 + 300);
    assert!(check_hours(&path) > 0);
    // One batch of a minute the watermark passed, one of a minute it has not.
    send(&*s, "h2", 3, w0 + 120, 7);
    send(&*s, "h2", 4, w0 + 480, 8);
    assert_eq!(samples(&*s, all), sent.get());
    assert_eq!(watermark(&path), w0 + 600);
    check_hours(&path);
    // Rolled-up batches written directly keep the same rule.
    for (seq, at) in [(1, w0 + 540), (2, t - 45)] {
        let r = store::Rollup::from_batch(&batch("h4", seq, at, 2)).unwrap();
        s.write(&r).unwrap();
        sent.set(sent.get() + 3);
    }
    assert_eq!(samples(&*s, all), sent.get());
    check_hours(&path);
    // A restart keeps the watermark and the sums.
    drop(s);
    let s = store::open(&url).unwrap();
    assert_eq!(samples(&*s, all), sent.get());
    check_hours(&path);
    // Retention adds every minute it deletes to its hour first, up to a whole hour.
    let policy = Retention {
        raw: Duration::ZERO,
        total: Duration::from_secs(30 * 86_400),
        ..Retention::default()
    };
    let report = s.retain(&policy, t).unwrap();
    assert!(report.minute_rows_deleted > 0, "{report:?}");
    assert_eq!(watermark(&path), (t + 3599) / 3600 * 3600);
    assert_eq!(
        samples(&*s, all),
        sent.get(),
        "whole hours from hour rows alone"
    );
    // A batch after that goes to both rows, as late data does.
    send(&*s, "h3", 1, t - 30, 9);
    assert_eq!(samples(&*s, all), sent.get());
}
