//! `wattson-demo`: a CPU workload with known, named hot functions, for the lab, the
//! end-to-end tests and the energy split tests. Each kernel below is `#[inline(never)]` so it
//! shows up as its own frame, and the workspace builds with frame pointers so its callers do too.
//!
//! `--duty` sets the busy fraction of every 30 ms period (1.0 = spin all the time), so tests
//! can run processes with a known CPU split.

use std::{
    hint::black_box,
    thread,
    time::{Duration, Instant},
};

const USAGE: &str = "usage: wattson-demo [--workload hash|compress|parse|mixed] [--duty 0..1] \
[--seconds N]\n\nRuns named CPU-bound functions in a loop (for Wattson's lab and tests).\n\
  --workload  which hot function(s) to run (default mixed: hash 50%, compress 30%, parse 20%)\n\
  --duty      busy fraction of each 30 ms period (default 1.0)\n\
  --seconds   stop after N seconds (default: run until killed)";

#[derive(Clone, Copy)]
enum Workload {
    Hash,
    Compress,
    Parse,
    Mixed,
}

struct Options {
    workload: Workload,
    duty: f64,
    seconds: Option<f64>,
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        workload: Workload::Mixed,
        duty: 1.0,
        seconds: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--workload" => {
                opts.workload = match value("--workload")?.as_str() {
                    "hash" => Workload::Hash,
                    "compress" => Workload::Compress,
                    "parse" => Workload::Parse,
                    "mixed" => Workload::Mixed,
                    other => return Err(format!("--workload {other}: unknown workload")),
                }
            }
            "--duty" => {
                let d: f64 = value("--duty")?
                    .parse()
                    .map_err(|e| format!("--duty: {e}"))?;
                if !(d > 0.0 && d <= 1.0) {
                    return Err(format!("--duty {d}: must be in (0, 1]"));
                }
                opts.duty = d;
            }
            "--seconds" => {
                let s: f64 = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?;
                opts.seconds = Some(s);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(opts)
}

/// FNV-1a over a buffer, many times: the "hashing" hot spot.
#[inline(never)]
fn hash_records(data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Run-length encoding of a buffer: the "compression" hot spot.
#[inline(never)]
fn compress_blocks(data: &[u8], out: &mut Vec<u8>) -> usize {
    out.clear();
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        let mut run = 1;
        while i + run < data.len() && data[i + run] == b && run < 255 {
            run += 1;
        }
        out.push(run as u8);
        out.push(b);
        i += run;
    }
    out.len()
}

/// Decimal parsing of a text buffer: the "parsing" hot spot.
#[inline(never)]
fn parse_numbers(text: &str) -> u64 {
    text.split(',')
        .filter_map(|t| t.trim().parse::<u64>().ok())
        .fold(0, u64::wrapping_add)
}

/// One unit of work of about the same cost whatever the workload.
#[inline(never)]
fn work_unit(workload: Workload, round: u64, data: &[u8], text: &str, out: &mut Vec<u8>) -> u64 {
    let pick = match workload {
        Workload::Mixed => match round % 10 {
            0..=4 => Workload::Hash,
            5..=7 => Workload::Compress,
            _ => Workload::Parse,
        },
        w => w,
    };
    match pick {
        Workload::Hash => hash_records(data),
        Workload::Compress => compress_blocks(data, out) as u64,
        Workload::Parse | Workload::Mixed => parse_numbers(text),
    }
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("wattson-demo: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let data: Vec<u8> = (0..64 * 1024u32).map(|i| ((i / 7) % 251) as u8).collect();
    let text: String = (0..4096u32).map(|i| format!("{},", i * 7919)).collect();
    let mut out = Vec::with_capacity(data.len() * 2);
    let period = Duration::from_millis(30);
    let started = Instant::now();
    let mut round = 0u64;
    let mut acc = 0u64;
    loop {
        let period_start = Instant::now();
        let busy = period.mul_f64(opts.duty);
        while period_start.elapsed() < busy {
            acc = acc.wrapping_add(work_unit(opts.workload, round, &data, &text, &mut out));
            round += 1;
        }
        if opts.duty < 1.0 {
            thread::sleep(period.saturating_sub(period_start.elapsed()));
        }
        if opts
            .seconds
            .is_some_and(|s| started.elapsed().as_secs_f64() >= s)
        {
            break;
        }
    }
    black_box(acc);
}
