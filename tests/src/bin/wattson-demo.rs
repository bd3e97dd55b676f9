//! `wattson-demo`: a CPU workload with known, named hot functions, for the lab, the
//! end-to-end tests and the energy split tests. Each kernel below is `#[inline(never)]` so it
//! shows up as its own frame, and the workspace builds with frame pointers so its callers do too.
//!
//! `--duty` sets the busy fraction of every 30 ms period (1.0 = spin all the time), so tests
//! can run processes with a known CPU split. `--slowdown FUNCTION=FACTOR` makes one named hot
//! function do FACTOR times its work per call, inside its own frame (a regression to detect).

use std::{
    hint::black_box,
    thread,
    time::{Duration, Instant},
};

const USAGE: &str = "usage: wattson-demo [--workload hash|compress|parse|mixed] [--duty 0..1] \
[--seconds N] [--slowdown FUNCTION=FACTOR]\n\nRuns named CPU-bound functions in a loop (for Wattson's lab and tests).\n\
  --workload  which hot function(s) to run (default mixed: hash 50%, compress 30%, parse 20%)\n\
  --duty      busy fraction of each 30 ms period (default 1.0)\n\
  --seconds   stop after N seconds (default: run until killed)\n\
  --slowdown  FUNCTION=FACTOR: one hot function (hash_records, compress_blocks, parse_numbers) \
does FACTOR times its work per call, e.g. hash_records=3 (default: none)";

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
    slowdown: Slowdown,
}

/// Times each hot function repeats its work per call (1 = normal).
#[derive(Clone, Copy)]
struct Slowdown {
    hash: u32,
    compress: u32,
    parse: u32,
}

impl Slowdown {
    const NONE: Slowdown = Slowdown {
        hash: 1,
        compress: 1,
        parse: 1,
    };

    /// `FUNCTION=FACTOR`, FUNCTION one of the hot functions' names.
    fn parse(arg: &str) -> Result<Slowdown, String> {
        let (name, factor) = arg
            .split_once('=')
            .ok_or(format!("--slowdown {arg}: expected FUNCTION=FACTOR"))?;
        let factor: u32 = factor
            .parse()
            .ok()
            .filter(|f| (1..=1000).contains(f))
            .ok_or(format!(
                "--slowdown {arg}: FACTOR must be an integer in 1..=1000"
            ))?;
        let mut s = Slowdown::NONE;
        match name {
            "hash_records" => s.hash = factor,
            "compress_blocks" => s.compress = factor,
            "parse_numbers" => s.parse = factor,
            other => {
                return Err(format!(
                    "--slowdown {other}: unknown function (hash_records, compress_blocks or parse_numbers)"
                ));
            }
        }
        Ok(s)
    }
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        workload: Workload::Mixed,
        duty: 1.0,
        seconds: None,
        slowdown: Slowdown::NONE,
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
            "--slowdown" => opts.slowdown = Slowdown::parse(&value("--slowdown")?)?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(opts)
}

/// FNV-1a over a buffer, `times` times: the "hashing" hot spot.
#[inline(never)]
fn hash_records(data: &[u8], times: u32) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for _ in 0..times {
        for &b in black_box(data) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Run-length encoding of a buffer, `times` times: the "compression" hot spot.
#[inline(never)]
fn compress_blocks(data: &[u8], out: &mut Vec<u8>, times: u32) -> usize {
    for _ in 1..times {
        rle(black_box(data), out);
    }
    rle(data, out)
}

/// Inlined so the work stays in `compress_blocks`' own frame, as before `--slowdown`.
#[inline(always)]
fn rle(data: &[u8], out: &mut Vec<u8>) -> usize {
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

/// Decimal parsing of a text buffer, `times` times: the "parsing" hot spot.
#[inline(never)]
fn parse_numbers(text: &str, times: u32) -> u64 {
    (0..times).fold(0, |acc, _| {
        black_box(text)
            .split(',')
            .filter_map(|t| t.trim().parse::<u64>().ok())
            .fold(acc, u64::wrapping_add)
    })
}

/// One unit of work of about the same cost whatever the workload.
#[inline(never)]
fn work_unit(
    workload: Workload,
    slow: Slowdown,
    round: u64,
    data: &[u8],
    text: &str,
    out: &mut Vec<u8>,
) -> u64 {
    let pick = match workload {
        Workload::Mixed => match round % 10 {
            0..=4 => Workload::Hash,
            5..=7 => Workload::Compress,
            _ => Workload::Parse,
        },
        w => w,
    };
    match pick {
        Workload::Hash => hash_records(data, slow.hash),
        Workload::Compress => compress_blocks(data, out, slow.compress) as u64,
        Workload::Parse | Workload::Mixed => parse_numbers(text, slow.parse),
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
            acc = acc.wrapping_add(work_unit(
                opts.workload,
                opts.slowdown,
                round,
                &data,
                &text,
                &mut out,
            ));
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
