//! Turning the simulated fleet into wire batches and sending them through the collector's real
//! gRPC ingest path, as agents do (one zstd frame per batch, each acknowledged before the
//! next), then recording the ground truth's change events through `RecordChange`.
//!
//! Each service ships as one virtual host standing for all of its hosts: its CPUs are the
//! hosts' CPUs together, so a step's sample count (hosts x busy CPUs x 19 Hz x step) passes
//! the collector's per-CPU check, and one batch holds `chunk` consecutive steps.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use wattson_proto::v1::detection_service_client::DetectionServiceClient;
use wattson_proto::v1::ingest_service_client::IngestServiceClient;
use wattson_proto::v1::{
    AgentLosses, Batch, Frame, FrameKind, Function, Host, IngestRequest, Process,
    RecordChangeRequest, Sample, Stack,
};

use super::model::{CPUS_PER_HOST, FREQUENCY_HZ, IDLE_WATTS_PER_HOST, Service};
use super::rng::Rng;
use super::scenario::{Change, Timeline};

/// One service with its scenario, as the sender needs it.
pub struct Simulated {
    pub service: Service,
    pub timeline: Timeline,
    pub rng: Rng,
}

/// Where and how the steps go.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// First step's start, Unix seconds.
    pub start: i64,
    /// Seconds per step.
    pub step: i64,
    /// Steps in the history.
    pub steps: usize,
    /// Steps per batch.
    pub chunk: usize,
}

/// The batch of `sim` holding steps `[first, first + chunk)`, with counts drawn at random
/// around the scenario's expected counts.
pub fn batch(sim: &Simulated, clock: &Clock, first: usize, sequence: u64, instance: &str) -> Batch {
    let svc = &sim.service;
    let mut rng = sim.rng.fork(first as u64);
    let mut strings = vec![String::new()];
    let mut intern = |s: &str| {
        strings.push(s.to_owned());
        (strings.len() - 1) as u32
    };
    let module = intern(&format!("/usr/bin/{}", svc.name));
    let functions: Vec<Function> = svc
        .functions
        .iter()
        .map(|f| Function {
            name_index: intern(&f.name),
            file_index: intern(&f.file),
        })
        .collect();
    let steps: Vec<usize> = (first..(first + clock.chunk).min(clock.steps)).collect();
    let at = |i: usize| clock.start + i as i64 * clock.step;
    // One process per build running during the chunk (two around a deploy).
    let mut builds: Vec<&str> = Vec::new();
    for &i in &steps {
        let b = sim.timeline.build_at(at(i));
        if !builds.contains(&b) {
            builds.push(b);
        }
    }
    let build_ix: Vec<u32> = builds.iter().map(|b| intern(b)).collect();
    let service = intern(&svc.name);
    let comm = intern(&svc.name);
    let unit = intern(&format!("{}.service", svc.name));
    let processes: Vec<Process> = build_ix
        .iter()
        .enumerate()
        .map(|(j, &b)| Process {
            pid: 1000 + j as u32,
            comm_index: comm,
            exe_index: module,
            cmdline_index: module,
            service_index: service,
            container_index: 0,
            unit_index: unit,
            build_id_indices: vec![b],
        })
        .collect();
    let frames: Vec<Frame> = (0..svc.functions.len())
        .map(|i| Frame {
            function_index: i as u32,
            line: 10 + i as u32,
            inlined: false,
            build_id_index: build_ix[0],
            file_offset: 0x1000 + 0x40 * i as u64,
            module_index: module,
            kind: FrameKind::User as i32,
        })
        .collect();
    let stacks: Vec<Stack> = svc
        .stacks
        .iter()
        .map(|s| Stack {
            frame_indices: s.path.iter().rev().map(|&f| f as u32).collect(),
        })
        .collect();
    let mut weights = Vec::new();
    let profiles = steps
        .iter()
        .map(|&i| {
            let t = at(i);
            sim.timeline.weights(svc, t, &mut weights);
            let build = sim.timeline.build_at(t);
            let proc = builds.iter().position(|b| *b == build).unwrap_or(0) as u32;
            let expected = svc.samples_per_step(clock.step) * svc.load.at(t);
            // The package's energy per sample wanders a little from interval to interval
            // (temperature, frequency); it moves every stack alike.
            let uj = svc.uj_per_sample * (1.0 + 0.01 * rng.normal());
            let samples: Vec<Sample> = weights
                .iter()
                .enumerate()
                .filter_map(|(k, &w)| {
                    let count = rng.poisson(expected * w);
                    (count > 0).then(|| Sample {
                        stack_index: k as u32,
                        process_index: proc,
                        tid: 1000 + proc,
                        count,
                        microjoules: count as f64 * uj * svc.stacks[k].energy_factor,
                    })
                })
                .collect();
            let idle = f64::from(svc.hosts) * IDLE_WATTS_PER_HOST * clock.step as f64 * 1e6;
            wattson_proto::synthetic::interval(
                t as u64 * 1_000_000_000,
                clock.step as u64 * 1_000_000_000,
                FREQUENCY_HZ,
                idle,
                samples,
            )
        })
        .collect();
    let host_id = format!("sim-{}", svc.name);
    Batch {
        host_id: host_id.clone(),
        sequence,
        host: Some(Host {
            host_id: host_id.clone(),
            hostname: host_id,
            kernel_release: "6.18.0".into(),
            cpu_model: format!("virtual host: {} hosts", svc.hosts),
            cpus: svc.hosts.saturating_mul(CPUS_PER_HOST),
            packages: svc.hosts,
            agent_version: env!("CARGO_PKG_VERSION").into(),
        }),
        created_unix_nanos: at(steps[0]) as u64 * 1_000_000_000,
        strings,
        functions,
        frames,
        stacks,
        processes,
        profiles,
        losses: Some(AgentLosses::default()),
        agent_instance: instance.into(),
    }
}

/// What [`send`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    pub batches: u64,
    pub samples: u64,
    pub duplicates: u64,
    pub seconds: f64,
}

/// Streams every service's batches to the collector at `url`, `concurrency` services at a
/// time, each service in time order; logs progress about every 10%.
pub async fn send(
    url: &str,
    sims: Arc<Vec<Simulated>>,
    clock: Clock,
    instance: &str,
    concurrency: usize,
) -> anyhow::Result<Sent> {
    let chunks = clock.steps.div_ceil(clock.chunk);
    let total = (chunks * sims.len()) as u64;
    let done = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let duplicates = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (sims, done, samples, duplicates, next) = (
            sims.clone(),
            done.clone(),
            samples.clone(),
            duplicates.clone(),
            next.clone(),
        );
        let (url, instance) = (url.to_owned(), instance.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut client = IngestServiceClient::connect(url.clone())
                .await
                .with_context(|| format!("connecting to the collector at {url}"))?
                .max_decoding_message_size(64 << 20);
            loop {
                let s = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(sim) = sims.get(s) else { break };
                for c in 0..chunks {
                    let b = batch(sim, &clock, c * clock.chunk, c as u64 + 1, &instance);
                    let n = wattson_proto::synthetic::sample_count(&b);
                    let ack = client
                        .ingest(IngestRequest::zstd(&b)?)
                        .await
                        .with_context(|| {
                            format!(
                                "collector at {url} refused batch {} of host {}",
                                b.sequence, b.host_id
                            )
                        })?
                        .into_inner();
                    samples.fetch_add(n, Ordering::Relaxed);
                    duplicates.fetch_add(u64::from(ack.duplicate), Ordering::Relaxed);
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if d % (total / 10).max(1) == 0 || d == total {
                        eprintln!(
                            "fleet-sim: {d}/{total} batches sent ({:.0}%, {:.0} batches/s)",
                            100.0 * d as f64 / total as f64,
                            d as f64 / began.elapsed().as_secs_f64()
                        );
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(Sent {
        batches: done.load(Ordering::Relaxed),
        samples: samples.load(Ordering::Relaxed),
        duplicates: duplicates.load(Ordering::Relaxed),
        seconds: began.elapsed().as_secs_f64(),
    })
}

/// Records every change of the ground truth that a person or a deploy system would record
/// (deploys only agents show are left to the collector); returns how many were recorded.
pub async fn record_changes(url: &str, changes: &[&Change]) -> anyhow::Result<usize> {
    let mut client = DetectionServiceClient::connect(url.to_owned())
        .await
        .with_context(|| format!("connecting to the collector at {url}"))?;
    let mut n = 0;
    for c in changes.iter().filter(|c| c.recorded) {
        let change = wattson_proto::v1::Change {
            id: c.id.clone(),
            service: c.service.clone(),
            at_unix_seconds: c.at,
            title: c.title.clone(),
            kind: c.kind.clone(),
            build_id: c.build_id.clone(),
            touched: c.touched.clone(),
            author: "fleet-sim".into(),
            url: String::new(),
            automatic: false,
        };
        let r = client
            .record_change(RecordChangeRequest {
                change: Some(change),
            })
            .await;
        match r {
            Ok(_) => n += 1,
            Err(s) if s.code() == tonic::Code::Unimplemented => anyhow::bail!(
                "the collector at {url} does not serve DetectionService.RecordChange ({}): it \
                 was built without detection; the ground truth's {} recorded changes are \
                 missing from it",
                s.message(),
                changes.iter().filter(|c| c.recorded).count()
            ),
            Err(s) => anyhow::bail!(
                "collector at {url} refused change {} of {} at {}: {} ({:?})",
                c.id,
                c.service,
                c.at,
                s.message(),
                s.code()
            ),
        }
    }
    Ok(n)
}
