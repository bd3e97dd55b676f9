//! Storage bench: ingest throughput of each backend (real synthetic batches through
//! `Store::ingest`: rollup, dedup, durable commit; 4 and 64 concurrent callers) and `top` /
//! `series` latency over a synthetic fleet of 30 days x 1,000 hosts (10 services x 100 hosts,
//! 100 functions and 100 stacks per service).
//!
//! Scale-down, stated in the rows: the query dataset is loaded as rollup rows through
//! `Store::write` (the path `ingest` ends in) rather than as 43 M individual batches, and keeps
//! minute rows for the last day only (the collector default keeps 7 days); older days are hour
//! rows, as retention leaves them. ClickHouse runs on a private server the harness starts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wattson_collector::attribute::FleetConfig;
use wattson_collector::query::QueryEngine;
use wattson_collector::store::clickhouse_server::ClickHouseServer;
use wattson_collector::store::rollup::{Kind, RES_HOUR, RES_MINUTE};
use wattson_collector::store::synthetic::BatchBuilder;
use wattson_collector::store::{self, Rank, Rollup, Store, TopQuery, Totals, Window};

use wattson_proto::v1::{TimeWindow, TopRequest};

use super::Row;

const SERVICES: u64 = 10;
const HOSTS_PER_SERVICE: u64 = 100;
const FUNCTIONS: u64 = 100;
const DAYS: i64 = 30;
const RAW_DAYS: i64 = 1;
/// 2026-11-02 00:00 UTC: the end of the synthetic month.
const END: i64 = 1_793_577_600;

/// xorshift: deterministic weights without a dependency.
fn mix(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Rows of one minute (or one hour, with `res` = hour and weights x 60) of the whole fleet.
fn fleet_rows(minute: i64, res: u8, out: &mut Vec<wattson_collector::store::Row>) {
    let mult = if res == RES_HOUR { 60 } else { 1 };
    for s in 0..SERVICES {
        let service = format!("svc{s:02}");
        for f in 0..FUNCTIONS {
            // Zipf-like: a few hot functions, a long tail.
            let samples = (1 + mix(s * 1000 + f + 1) % 20) * 200 / (f + 1) * mult;
            let uj = samples * 52_000;
            out.push(wattson_collector::store::Row {
                kind: Kind::Function,
                res,
                minute,
                service: service.clone(),
                key: format!("fn_{f:03}"),
                totals: Totals {
                    samples_self: samples,
                    samples_incl: samples * 3,
                    uj_self: uj,
                    uj_incl: uj * 3,
                    ..Totals::default()
                },
            });
            out.push(wattson_collector::store::Row {
                kind: Kind::Stack,
                res,
                minute,
                service: service.clone(),
                key: format!("main;run;fn_{:03};fn_{f:03}", (f + 1) % FUNCTIONS),
                totals: Totals {
                    samples_self: samples,
                    uj_self: uj,
                    ..Totals::default()
                },
            });
        }
        for h in 0..HOSTS_PER_SERVICE {
            let host = format!("host{:04}", s * HOSTS_PER_SERVICE + h);
            let t = Totals {
                samples_self: 19 * 60 * mult,
                uj_self: 60_000_000 * mult,
                idle_uj: 30_000_000 * mult,
                duration_ms: 60_000 * mult,
                ..Totals::default()
            };
            for (kind, svc) in [(Kind::Service, service.as_str()), (Kind::Host, "")] {
                out.push(wattson_collector::store::Row {
                    kind,
                    res,
                    minute,
                    service: svc.into(),
                    key: host.clone(),
                    totals: t,
                });
            }
        }
        out.push(wattson_collector::store::Row {
            kind: Kind::Build,
            res,
            minute,
            service: service.clone(),
            key: format!("build{s:02}"),
            totals: Totals {
                samples_self: 19 * 60 * mult * HOSTS_PER_SERVICE,
                ..Totals::default()
            },
        });
    }
}

/// Loads 30 days: hour rows for every hour, minute rows for the last RAW_DAYS.
fn load(store: &dyn Store) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let (mut rows_total, mut seq) = (0u64, 0u64);
    let mut write = |first_minute: i64, rows: Vec<wattson_collector::store::Row>| {
        seq += 1;
        rows_total += rows.len() as u64;
        store.write(&Rollup {
            host: "bench-loader".into(),
            instance: String::new(),
            sequence: seq,
            first_minute,
            profiles: 0,
            samples: 0,
            rows,
        })
    };
    let start = END - DAYS * 86_400;
    for hour in (start..END).step_by(3600) {
        let mut rows = Vec::new();
        fleet_rows(hour, RES_HOUR, &mut rows);
        if hour >= END - RAW_DAYS * 86_400 {
            for m in (hour..hour + 3600).step_by(60) {
                fleet_rows(m, RES_MINUTE, &mut rows);
            }
        }
        write(hour, rows).context("loading synthetic rollups")?;
    }
    Ok((rows_total, started.elapsed()))
}

/// A realistic 10 s batch: 40 stacks of depth 12 over 4 processes.
fn batch(host: &str, seq: u64, at: i64) -> wattson_proto::v1::Batch {
    let mut samples = Vec::new();
    let names: Vec<String> = (0..40)
        .map(|i| {
            (0..12)
                .map(|d| format!("f{}_{}", d, (i * 7 + d) % 30))
                .collect::<Vec<_>>()
                .join(";")
        })
        .collect();
    for (i, n) in names.iter().enumerate() {
        samples.push((
            ["api", "db", "web", "cache"][i % 4],
            "b1",
            n.as_str(),
            3u64,
            1_500.0,
        ));
    }
    BatchBuilder::new(host, seq)
        .interval(at, 10, false, 1_000.0, &samples)
        .build()
}

/// Ingests `n` batches from `threads` threads at once, one host each (named `PREFIX<thread>`),
/// as the gRPC server calls `Store::ingest` for agents sending at the same time; returns
/// (batches/s, rollup rows/s).
fn ingest(store: &dyn Store, n: u64, threads: u64, prefix: &str) -> anyhow::Result<(f64, f64)> {
    let batches: Vec<_> = (0..n)
        .map(|i| {
            batch(
                &format!("{prefix}{}", i % threads),
                i / threads + 1,
                END + (i as i64) * 10,
            )
        })
        .collect();
    let rows_per_batch = Rollup::from_batch(&batches[0])?.rows.len() as f64;
    let started = Instant::now();
    std::thread::scope(|sc| -> anyhow::Result<()> {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let mine: Vec<_> = batches
                    .iter()
                    .skip(t as usize)
                    .step_by(threads as usize)
                    .collect();
                sc.spawn(move || -> anyhow::Result<()> {
                    for b in mine {
                        anyhow::ensure!(
                            matches!(store.ingest(b)?, store::Ingested::New { .. }),
                            "batch counted as duplicate"
                        );
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join()
                .map_err(|_| anyhow::anyhow!("ingest thread panicked"))??;
        }
        Ok(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    Ok((n as f64 / secs, n as f64 * rows_per_batch / secs))
}

/// Median of `runs` timings of `f`, milliseconds.
fn median_ms(
    runs: usize,
    mut f: impl FnMut() -> anyhow::Result<usize>,
) -> anyhow::Result<(f64, usize)> {
    let mut t = Vec::with_capacity(runs);
    let mut n = 0;
    for _ in 0..runs {
        let s = Instant::now();
        n = f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok((t[runs / 2], n))
}

fn backend(name: &'static str, shared: Arc<dyn Store>, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let store = &*shared;
    let area = "store";
    // A fleet collector has many ingests in flight at once (one per agent sending); both
    // backends group concurrent batches into one commit, so concurrency is part of the figure.
    for (n, threads, prefix) in [(1_000, 4, "h"), (2_000, 64, "c")] {
        let (bps, rps) = ingest(store, n, threads, prefix)?;
        rows.push(Row {
            area,
            metric: format!(
                "{name}: ingest, 10 s batches (40 stacks x 12 frames), {threads} concurrent callers"
            ),
            value: format!("{bps:.0} batches/s ({rps:.0} rollup rows/s before merging)"),
            goal: String::new(),
            met: None,
        });
    }

    let (loaded, took) = load(store)?;
    rows.push(Row {
        area,
        metric: format!(
            "{name}: load 30 d x 1,000 hosts as rollups (minute rows for last {RAW_DAYS} d only)"
        ),
        value: format!(
            "{loaded} rows, {:.0} rows/s",
            loaded as f64 / took.as_secs_f64()
        ),
        goal: String::new(),
        met: None,
    });

    // Windows end 17 minutes before the hour so both edges read minute rows.
    let end = END - 17 * 60;
    let day = Window {
        from: end - 86_400,
        to: end,
    };
    let month = Window {
        from: END - DAYS * 86_400,
        to: END,
    };
    let top = |w: Window| {
        move || -> anyhow::Result<usize> {
            Ok(store
                .top(&TopQuery {
                    window: w,
                    service: None,
                    rank: Rank::EnergySelf,
                    limit: 20,
                })?
                .len())
        }
    };
    let (ms, n) = median_ms(5, top(day))?;
    anyhow::ensure!(n == 20, "top returned {n} rows");
    let sqlite = name == "sqlite";
    rows.push(Row {
        area,
        metric: format!("{name}: top 20 over 1 day (median of 5)"),
        value: format!("{ms:.1} ms"),
        goal: if sqlite {
            "< 100 ms".into()
        } else {
            String::new()
        },
        met: sqlite.then_some(ms < 100.0),
    });
    // The same question through the query engine, as `wattson top` asks it: adds fleet
    // attribution (per-host coverage of every service in the window) to the store query.
    let engine = QueryEngine::new(shared.clone(), FleetConfig::default());
    let (ms, n) = median_ms(5, || {
        Ok(engine
            .top(&TopRequest {
                window: Some(TimeWindow {
                    from_unix_seconds: day.from,
                    to_unix_seconds: day.to,
                }),
                limit: 20,
                ..TopRequest::default()
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .rows
            .len())
    })?;
    anyhow::ensure!(n == 20, "engine top returned {n} rows");
    rows.push(Row {
        area,
        metric: format!("{name}: wattson top over 1 day incl. fleet attribution (median of 5)"),
        value: format!("{ms:.1} ms"),
        goal: if sqlite {
            "< 100 ms".into()
        } else {
            String::new()
        },
        met: sqlite.then_some(ms < 100.0),
    });
    let (ms, _) = median_ms(3, top(month))?;
    rows.push(Row {
        area,
        metric: format!("{name}: top 20 over 30 days (median of 3)"),
        value: format!("{ms:.1} ms"),
        goal: String::new(),
        met: None,
    });
    let (ms, n) = median_ms(5, || {
        Ok(store.series(month, "svc03", "fn_007", 3600)?.len())
    })?;
    anyhow::ensure!(n == 720, "series returned {n} points");
    rows.push(Row {
        area,
        metric: format!("{name}: series of one function, 30 days, 1 h step (median of 5)"),
        value: format!("{ms:.1} ms"),
        goal: String::new(),
        met: None,
    });
    let (ms, _) = median_ms(5, || Ok(store.series(day, "svc03", "fn_007", 60)?.len()))?;
    rows.push(Row {
        area,
        metric: format!("{name}: series of one function, 1 day, 1 min step (median of 5)"),
        value: format!("{ms:.1} ms"),
        goal: String::new(),
        met: None,
    });
    Ok(())
}

/// Runs the storage bench against SQLite and a private ClickHouse.
pub fn run(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("temp dir for the sqlite bench")?;
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let sqlite = store::open(&url)?;
    let sqlite: Arc<dyn Store> = Arc::from(sqlite);
    backend("sqlite", sqlite.clone(), rows)?;
    let size = sqlite.stats()?.bytes;
    drop(sqlite);
    rows.push(Row {
        area: "store",
        metric: "sqlite: file size after the bench".into(),
        value: format!("{:.0} MiB", size as f64 / (1 << 20) as f64),
        goal: String::new(),
        met: None,
    });

    let server = ClickHouseServer::start()?;
    let ch = store::open(&server.store_url("wattson_bench"))?;
    backend("clickhouse", Arc::from(ch), rows)?;
    Ok(())
}
