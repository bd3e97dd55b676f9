//! Ingest throughput: one realistic host batch (a 10 s interval at 19 Hz on 8 CPUs, from
//! `wattson_proto::synthetic`, stacks drawn from a fleet-wide pool because hosts run the same
//! code) measured side by side on the same payload: raw prost decode (what the ratio is taken
//! against), the collector's in-place read and validation, the roll-up's CPU, and the full
//! path: real gRPC over 127.0.0.1, zstd-compressed as agents send it, into a collector
//! (`server::serve`) writing durably to SQLite, from concurrent simulated agents that send as
//! 30,000 distinct hosts.
//! Reported: batches/s, samples/s, the ingest/raw-decode ratio, and how many hosts shipping
//! one batch per 10 s one collector on this machine sustains, counting the time the roll-up
//! needs to catch up (a figure that excluded it would only measure the journal). SQLite adds
//! a minute's rows to its hour rows once the minute is 2 minutes old, later than a run ends:
//! that is timed right after each run and reported on its own row. Also: the pace of one agent
//! that waits for each answer before sending its next batch (the round trip), and the hosts
//! sustained with every batch's stacks unique, the worst case.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use prost::Message as _;
use wattson_collector::ingest_cpu::{self, process_cpu, thread_cpu};
use wattson_collector::server::{self, ServeConfig};
use wattson_collector::store::sqlite::SqliteStore;
use wattson_collector::store::{Accumulator, Prepared, Rollup, Store};
use wattson_collector::validate::{self, Limits};
use wattson_proto::compressed::Decompressor;
use wattson_proto::synthetic::{self, Shape};
use wattson_proto::v1::ingest_request::Payload;
use wattson_proto::v1::ingest_service_client::IngestServiceClient;
use wattson_proto::v1::{Batch, IngestRequest};
use wattson_proto::view::BatchView;

use super::Row;
use super::discard::Discard;

/// How long each CPU-only phase runs.
const CPU_PHASE: Duration = Duration::from_secs(3);
/// How long each gRPC + store run lasts, and how many runs the main figure is the median of.
const INGEST_PHASE: Duration = Duration::from_secs(12);
const RUNS: usize = 3;
/// How long the floor, worst-case and ClickHouse runs last.
const SIDE_PHASE: Duration = Duration::from_secs(10);
/// How long the one-agent run lasts.
const DRAIN_PHASE: Duration = Duration::from_secs(4);
/// Concurrent simulated agents (each its own gRPC connection, sending as many hosts).
const CLIENTS: usize = 32;
/// Concurrent simulated agents of the second ClickHouse run.
const FLEET_CLIENTS: usize = 256;
/// Distinct hosts the simulated clients send as, in turn: a fleet's per-host rows (service,
/// build and host sums per minute) are as many as its hosts, not as the connections a bench
/// opens, and they cost the store a row each. More hosts than the collector sustains, so each
/// sends at most one batch per 10 s, as a real one does (with fewer, a host's batches would
/// share its rows within a roll-up, and the store would look cheaper than it is).
const HOST_POPULATION: usize = 30_000;
/// Distinct stacks in the simulated fleet (shared by every host).
const STACK_POOL: usize = 3_000;
/// Interval each simulated host ships at.
const HOST_INTERVAL_SECS: f64 = 10.0;
/// The goals.
const GOAL_HOSTS: f64 = 10_000.0;
const GOAL_RATIO: f64 = 0.5;

fn row(metric: impl Into<String>, value: String, goal: &str, met: Option<bool>) -> Row {
    Row {
        area: "ingest",
        metric: metric.into(),
        value,
        goal: goal.into(),
        met,
    }
}

/// Runs `f` repeatedly for `phase` (wall clock); returns calls per second of this thread's CPU
/// (rated by CPU time, so other load on the machine does not show up as a slower decoder).
fn rate(phase: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let cpu = thread_cpu();
    let mut n = 0u64;
    while start.elapsed() < phase {
        for _ in 0..16 {
            f();
        }
        n += 16;
    }
    n as f64 / (thread_cpu() - cpu).as_secs_f64().max(1e-9)
}

pub fn run(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let start = now - 60_000_000_000;
    let shape = Shape {
        stack_pool: STACK_POOL,
        ..Shape::default()
    };
    let template = synthetic::batch("bench-host", 1, start, &shape, 1);
    let samples_per_batch = synthetic::sample_count(&template);
    let bytes = template.encode_to_vec();
    rows.push(row(
        "payload: one host, 10 s @ 19 Hz, 8 CPUs",
        format!(
            "{} B, {} samples, {} stacks of a {STACK_POOL}-stack fleet",
            bytes.len(),
            samples_per_batch,
            template.stacks.len()
        ),
        "",
        None,
    ));

    let limits = Limits::default();
    let decode = rate(CPU_PHASE, || {
        let b = Batch::decode(&bytes[..]).expect("decodes");
        std::hint::black_box(b);
    });
    // What the collector does instead of decoding: read the batch in place.
    let viewed = rate(CPU_PHASE, || {
        std::hint::black_box(BatchView::parse(&bytes).expect("parses"));
    });
    let checked = rate(CPU_PHASE, || {
        let b = BatchView::parse(&bytes).expect("parses");
        validate::validate(&b, &limits).expect("valid");
        std::hint::black_box(b);
    });
    rows.push(row(
        "raw prost decode (per core, CPU time)",
        format!("{decode:.0} batches/s"),
        "",
        None,
    ));
    // Agents send one zstd frame per batch (`IngestRequest.batch_zstd`), which the collector
    // decompresses with a context it reuses; gRPC's own zstd makes a new context per message.
    let compressed = zstd::encode_all(&bytes[..], 0)?;
    let per_message = rate(CPU_PHASE, || {
        std::hint::black_box(zstd::decode_all(&compressed[..]).expect("decompresses"));
    });
    let mut dctx = Decompressor::new()?;
    let IngestRequest {
        payload: Some(Payload::BatchZstd(frame)),
    } = IngestRequest::zstd(&template)?
    else {
        anyhow::bail!("IngestRequest::zstd made no frame");
    };
    let reused = rate(CPU_PHASE, || {
        std::hint::black_box(dctx.batch(&frame, bytes.len()).expect("decompresses"));
    });
    rows.push(row(
        "zstd decompress (per core): reused context, as agents' frames",
        format!(
            "{reused:.0} batches/s ({} B compressed; new context per message as gRPC: {per_message:.0}/s)",
            frame.len()
        ),
        "",
        None,
    ));
    rows.push(row(
        "read in place (BatchView::parse, per core)",
        format!("{viewed:.0} batches/s ({:.2}x raw)", viewed / decode),
        "",
        None,
    ));
    rows.push(row(
        "read in place + validate (per core)",
        format!("{checked:.0} batches/s ({:.2}x raw)", checked / decode),
        "",
        None,
    ));

    // Where the full path's time goes: the roll-up's CPU (per batch, then summed over many
    // hosts' batches and flushed as string rows every 1,000) and the durable write.
    let rollup = Rollup::from_batch(&template)?;
    let fleet: Vec<Batch> = (0..64)
        .map(|h| host_batches(start, &shape, h).swap_remove(h % 64))
        .collect();
    let with = rollup_rates(&template, &fleet)?;
    rows.push(row(
        "roll-up: resolve one batch (per core)",
        format!(
            "{:.0} batches/s ({} rows alone)",
            with.resolve,
            rollup.rows.len()
        ),
        "",
        None,
    ));
    rows.push(row(
        "roll-up: merge + flush every 1,000 batches (per core)",
        format!(
            "{:.0} batches/s, {:.0} rows/batch written",
            with.merge, with.rows_per_batch
        ),
        "",
        None,
    ));
    // What source-line rows (the file:line skills name) cost: the same batches with every
    // frame's line removed, so no line row is made.
    let strip = |b: &Batch| {
        let mut b = b.clone();
        b.frames.iter_mut().for_each(|f| f.line = 0);
        b
    };
    let fleet_bare: Vec<Batch> = fleet.iter().map(strip).collect();
    let bare = rollup_rates(&strip(&template), &fleet_bare)?;
    rows.push(row(
        "roll-up with line rows vs without (per core)",
        format!(
            "resolve {:.0} vs {:.0}/s ({:+.0}%), merge+flush {:.0} vs {:.0}/s ({:+.0}%), {:.0} vs {:.0} rows/batch",
            with.resolve,
            bare.resolve,
            (with.resolve / bare.resolve - 1.0) * 100.0,
            with.merge,
            bare.merge,
            (with.merge / bare.merge - 1.0) * 100.0,
            with.rows_per_batch,
            bare.rows_per_batch
        ),
        "",
        None,
    ));
    let written = store_rate(start, &shape)?;
    rows.push(row(
        "Store::ingest into SQLite, no gRPC (serial)",
        format!("{written:.1} batches/s"),
        "",
        None,
    ));

    // The machine is shared: the same run repeated, and its median by collector CPU per batch
    // reported with the range, so one disturbed run neither hides nor fakes a change.
    let mut runs = (0..RUNS)
        .map(|_| ingest_phase(start, &shape, INGEST_PHASE, Sink::Sqlite, CLIENTS))
        .collect::<anyhow::Result<Vec<Phase>>>()?;
    runs.sort_by(|a, b| a.ms_per_batch().total_cmp(&b.ms_per_batch()));
    let spread = format!(
        "median of {RUNS}, {:.3}-{:.3} ms",
        runs[0].ms_per_batch(),
        runs[RUNS - 1].ms_per_batch()
    );
    let run = runs.swap_remove(RUNS / 2);
    let per_sec = run.batches as f64 / run.elapsed.as_secs_f64();
    rows.push(row(
        format!("gRPC ingest (zstd frames) -> SQLite, {CLIENTS} in-process clients (wall)"),
        format!(
            "{per_sec:.0} batches/s, {:.0} samples/s ({:.2}x raw decode)",
            per_sec * samples_per_batch as f64,
            per_sec / decode
        ),
        "",
        None,
    ));
    // Raw decode is rated per core of CPU time; so is ingest here: every cost of the collector
    // (gRPC, decode, validation, journal, roll-up) per batch, the simulated agents' excluded.
    let per_core = run.batches as f64 / run.collector_cpu.as_secs_f64().max(1e-9);
    let ratio = per_core / decode;
    rows.push(row(
        "ingest / raw decode (per core of collector CPU)",
        format!(
            "{ratio:.3}x ({per_core:.0} batches/s, {:.3} ms CPU per batch; {spread})",
            1e3 / per_core
        ),
        ">= 0.5x",
        Some(ratio >= GOAL_RATIO),
    ));
    rows.push(row(
        "  collector CPU per batch, by stage (median run)",
        run.stage_row(),
        "",
        None,
    ));
    if let Some(hours) = run.hours {
        rows.push(row(
            "  + hour rows from the run's minutes, added after it",
            format!(
                "{:.3} ms CPU per batch (each host's minute holds one batch here; sending every 10 s, it holds six: a sixth of this)",
                1e3 * hours.as_secs_f64() / run.batches.max(1) as f64
            ),
            "",
            None,
        ));
    }
    // What the collector spends before any store sees a batch: no store design wins it back.
    let floor_ms = ingest_phase(start, &shape, SIDE_PHASE, Sink::Discard, CLIENTS)?.ms_per_batch();
    rows.push(row(
        "  of which before the store: gRPC, zstd, read + validate",
        format!(
            "{floor_ms:.3} ms CPU per batch ({:.2}x raw decode; nothing stored)",
            1e3 / floor_ms / decode
        ),
        "",
        None,
    ));
    let hosts = run.sustained() * HOST_INTERVAL_SECS;
    rows.push(row(
        "hosts sustained at a 10 s interval (incl. roll-up)",
        format!(
            "{hosts:.0} (roll-up caught up {:.1} s after the last ack)",
            run.settle.as_secs_f64()
        ),
        ">= 10000",
        Some(hosts >= GOAL_HOSTS),
    ));
    // The simulated agents above share this machine's cores with the collector; what the
    // collector alone would sustain on them is derived from its CPU per batch.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    rows.push(row(
        format!("  derived: {cores:.0} cores / collector CPU per batch, agents elsewhere"),
        format!("{:.0} hosts", cores * per_core * HOST_INTERVAL_SECS),
        "",
        None,
    ));
    // An agent sends one batch at a time, waiting for each answer (draining its spool after
    // an outage, too): its pace is the round trip, which a stalled answer shows here.
    let one = ingest_phase(start, &shape, DRAIN_PHASE, Sink::Sqlite, 1)?;
    let rate = one.batches as f64 / one.elapsed.as_secs_f64();
    rows.push(row(
        "  one agent, one batch at a time (a spool draining after an outage)",
        format!(
            "{rate:.0} batches/s ({:.2} ms per round trip, durable in SQLite)",
            1e3 / rate
        ),
        "",
        None,
    ));
    let worst = Shape {
        stack_pool: 0,
        ..shape
    };
    let run = ingest_phase(start, &worst, SIDE_PHASE, Sink::Sqlite, CLIENTS)?;
    rows.push(run.hosts_row("  same, every batch's stacks and build unique"));
    // The fleet-scale backend, its server started here on the same cores (its CPU is not in
    // the collector's, so only the wall-clock figure is given).
    let server = wattson_collector::store::clickhouse_server::ClickHouseServer::start()?;
    // ClickHouse answers a group in one round trip of tens of milliseconds, so what it
    // sustains grows with the batches in flight; a fleet of thousands has far more than 32.
    for clients in [CLIENTS, FLEET_CLIENTS] {
        let run = ingest_phase(
            start,
            &shape,
            SIDE_PHASE,
            Sink::Url(&server.store_url(&format!("wattson_bench_ingest_{clients}"))),
            clients,
        )?;
        rows.push(run.hosts_row(&format!(
            "  same, into ClickHouse (server on the same 2 cores), {clients} clients"
        )));
    }
    Ok(())
}

/// What one gRPC ingest phase measured.
struct Phase {
    /// Batches acknowledged.
    batches: u64,
    /// From the first request to the last acknowledgement.
    elapsed: Duration,
    /// From the last acknowledgement until a query saw every batch (roll-up catching up).
    settle: Duration,
    /// CPU the collector used for all of it (the clients' excluded).
    collector_cpu: Duration,
    /// Of that, what each ingest stage used ([`ingest_cpu::Stage::ALL`] order).
    stages: [Duration; 4],
    /// SQLite adds a minute's rows to its hour rows once the minute is 2 minutes old, after
    /// a run this short: the CPU of doing it for all of the run's minutes right after it.
    hours: Option<Duration>,
}

impl Phase {
    /// Collector CPU per acknowledged batch, milliseconds.
    fn ms_per_batch(&self) -> f64 {
        1e3 * self.collector_cpu.as_secs_f64() / self.batches.max(1) as f64
    }

    /// Collector CPU per batch by stage, and the rest (HTTP/2, the runtime, the kernel's
    /// network stack), milliseconds.
    fn stage_row(&self) -> String {
        let ms = |d: Duration| 1e3 * d.as_secs_f64() / self.batches.max(1) as f64;
        let mut parts: Vec<String> = ingest_cpu::Stage::ALL
            .iter()
            .zip(self.stages)
            .map(|(s, d)| format!("{} {:.3}", s.name(), ms(d)))
            .collect();
        let staged: Duration = self.stages.iter().sum();
        parts.push(format!(
            "rest {:.3} (HTTP/2, runtime, network)",
            ms(self.collector_cpu.saturating_sub(staged))
        ));
        format!("{} ms", parts.join(", "))
    }

    /// Batches per second, end to end: acknowledged and rolled up.
    fn sustained(&self) -> f64 {
        self.batches as f64 / (self.elapsed + self.settle).as_secs_f64()
    }

    /// A row of the hosts sustained at `HOST_INTERVAL_SECS` and the acknowledgement rate.
    fn hosts_row(&self, metric: &str) -> Row {
        row(
            metric,
            format!(
                "{:.0} hosts ({:.0} batches/s acknowledged)",
                self.sustained() * HOST_INTERVAL_SECS,
                self.batches as f64 / self.elapsed.as_secs_f64()
            ),
            "",
            None,
        )
    }
}

/// Serial `Store::ingest` calls on a fresh SQLite store for `CPU_PHASE`, over the same mix
/// of hosts and stacks the gRPC phase sends; batches per second.
fn store_rate(start: u64, shape: &Shape) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let store = wattson_collector::store::open(&format!(
        "sqlite://{}",
        dir.path().join("direct.db").display()
    ))?;
    let batches = host_batches(start, shape, 0);
    let begin = Instant::now();
    let mut seq = 0u64;
    while begin.elapsed() < CPU_PHASE {
        let mut b = batches[seq as usize % batches.len()].clone();
        seq += 1;
        b.host_id = format!("bench-host-{}", seq as usize % CLIENTS);
        if let Some(h) = &mut b.host {
            h.host_id.clone_from(&b.host_id);
        }
        b.sequence = seq;
        store.ingest(&b)?;
    }
    Ok(seq as f64 / begin.elapsed().as_secs_f64())
}

/// The roll-up's CPU rates for one kind of batch.
struct RollupRates {
    /// `Prepared::from_view` of `template`, batches/s per core.
    resolve: f64,
    /// Merging `fleet`'s prepared batches, flushing every 1,000, batches/s per core.
    merge: f64,
    /// Rows written per merged batch.
    rows_per_batch: f64,
}

fn rollup_rates(template: &Batch, fleet: &[Batch]) -> anyhow::Result<RollupRates> {
    let bytes = template.encode_to_vec();
    let view = BatchView::parse(&bytes)?;
    let resolve = rate(CPU_PHASE, || {
        std::hint::black_box(Prepared::from_view(&view).expect("rolls up"));
    });
    let fleet: Vec<Prepared> = fleet
        .iter()
        .map(Prepared::from_batch)
        .collect::<Result<_, _>>()?;
    let mut acc = Accumulator::default();
    let mut merged = 0usize;
    let (mut flushed_rows, mut flushes) = (0usize, 0usize);
    let merge = rate(CPU_PHASE, || {
        acc.merge(&fleet[merged % fleet.len()]);
        merged += 1;
        if merged.is_multiple_of(1000) {
            flushed_rows += acc.take_rows().len();
            flushes += 1;
        }
    });
    Ok(RollupRates {
        resolve,
        merge,
        rows_per_batch: flushed_rows as f64 / (flushes.max(1) * 1000) as f64,
    })
}

/// 64 batches of one simulated host: different stacks each, intervals within one minute.
fn host_batches(start: u64, shape: &Shape, h: usize) -> Vec<Batch> {
    let host = format!("bench-host-{h}");
    (0..64usize)
        .map(|i| {
            let t = start + (i as u64 % 6) * 10_000_000_000;
            synthetic::batch(&host, i as u64 + 1, t, shape, (h * 1000 + i) as u64 + 1)
        })
        .collect()
}

/// Where a gRPC phase stores its batches.
enum Sink<'a> {
    /// A fresh SQLite store.
    Sqlite,
    /// The store at this URL.
    Url(&'a str),
    /// Nowhere ([`Discard`]): the transport floor.
    Discard,
}

/// Serves a collector on 127.0.0.1:0 over `into` and has `clients` simulated hosts push
/// batches for `phase`, each waiting for its acknowledgement before the next (as an agent
/// does), then waits for a query to see them all. The clients run on their own runtime whose
/// threads report their CPU time when they stop, so the collector's CPU is the process's
/// minus theirs.
fn ingest_phase(
    start: u64,
    shape: &Shape,
    phase: Duration,
    into: Sink<'_>,
    clients: usize,
) -> anyhow::Result<Phase> {
    let dir = tempfile::tempdir()?;
    // Kept to add the run's minute rows to their hours afterwards (see `Phase::hours`).
    let mut sqlite = None;
    let store: Arc<dyn Store> = match into {
        Sink::Sqlite => {
            let s = Arc::new(SqliteStore::open(dir.path().join("bench.db"))?);
            sqlite = Some(s.clone());
            s
        }
        Sink::Url(url) => Arc::from(wattson_collector::store::open(url)?),
        Sink::Discard => Arc::new(Discard::default()),
    };
    // Wrapped as `wattson-collector serve` wraps it, so its counters' cost is measured too.
    let store: Arc<dyn Store> = Arc::new(wattson_collector::metrics::Counted::new(store));
    let reader = store.clone();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("collector runtime")?;
    let listener = server_rt.block_on(server::bind("127.0.0.1:0".parse()?))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = server_rt.spawn(server::serve(
        listener,
        store,
        ServeConfig::default(),
        async move {
            let _ = stop_rx.await;
        },
    ));

    // Batches are built up front so the clients measure the collector only; beyond `CLIENTS`
    // hosts they are reused under each client's own host id.
    let all: Arc<Vec<Vec<Batch>>> = Arc::new(
        (0..CLIENTS.min(clients))
            .map(|h| host_batches(start, shape, h))
            .collect(),
    );
    let client_cpu = Arc::new(AtomicU64::new(0));
    let on_stop = client_cpu.clone();
    let clients_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-client")
        .on_thread_stop(move || {
            on_stop.fetch_add(thread_cpu().as_nanos() as u64, Ordering::Relaxed);
        })
        .build()
        .context("client runtime")?;
    let cpu_before = process_cpu();
    let stages_before = ingest_cpu::spent();
    let acked = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + phase;
    let began = Instant::now();
    clients_rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..clients {
            let (acked, all) = (acked.clone(), all.clone());
            let url = format!("http://{addr}");
            // Client i speaks for hosts i, i + clients, i + 2 * clients, ... in turn; its
            // counter keeps every (host, sequence) distinct.
            let hosts: Vec<String> = (i..HOST_POPULATION.max(clients))
                .step_by(clients)
                .map(|h| format!("bench-host-{h}"))
                .collect();
            tasks.push(tokio::spawn(async move {
                let batches = &all[i % all.len()];
                let mut client = IngestServiceClient::connect(url).await?;
                let mut seq = 0u64;
                while Instant::now() < deadline {
                    let mut b = batches[seq as usize % batches.len()].clone();
                    let host = &hosts[seq as usize % hosts.len()];
                    seq += 1;
                    b.sequence = seq;
                    b.host_id.clone_from(host);
                    if let Some(h) = &mut b.host {
                        h.host_id.clone_from(host);
                    }
                    // Compressed as the agent compresses.
                    client.ingest(IngestRequest::zstd(&b)?).await?;
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(())
    })?;
    let elapsed = began.elapsed();
    drop(clients_rt); // joins its threads, which add their CPU time
    let settled = Instant::now();
    let stats = reader.stats()?;
    let settle = settled.elapsed();
    let collector_cpu = process_cpu()
        .saturating_sub(cpu_before)
        .saturating_sub(Duration::from_nanos(client_cpu.load(Ordering::Relaxed)));
    let stages = std::array::from_fn(|i| ingest_cpu::spent()[i].1 - stages_before[i].1);
    let hours = match &sqlite {
        Some(s) => {
            let cpu = process_cpu();
            let far = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64 + 7200;
            s.add_minutes_to_hours(far)?;
            Some(process_cpu().saturating_sub(cpu))
        }
        None => None,
    };
    let batches = acked.load(Ordering::Relaxed);
    anyhow::ensure!(
        stats.batches == batches,
        "store holds {} batches, {batches} were acknowledged",
        stats.batches
    );
    let _ = stop_tx.send(());
    server_rt.block_on(serving)??;
    Ok(Phase {
        batches,
        elapsed,
        settle,
        collector_cpu,
        stages,
        hours,
    })
}
