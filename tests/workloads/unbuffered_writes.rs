//! Skills e2e workload: writes 8-byte records to a file one `write(2)` each (a `File` without
//! a buffer). Anti-pattern: `unbuffered-writes`; its patch wraps the `File` in a `BufWriter`.
//! Built by the test with `rustc -g -C force-frame-pointers=yes`.
//! Usage: `unbuffered_writes SECONDS PATH [RECORDS]`: runs for SECONDS, or stops after RECORDS
//! records when given (rounded up to a thousand: a fixed amount of work, for the bench).

use std::io::Write;
use std::time::{Duration, Instant};

fn dump(path: &str, secs: u64, records: u64) -> std::io::Result<u64> {
    let mut out = std::fs::File::create(path)?;
    let end = Instant::now() + Duration::from_secs(secs);
    let mut n = 0u64;
    while n < records && Instant::now() < end {
        for _ in 0..1000 {
            out.write_all(&n.to_le_bytes())?; // HOT: one system call per record
            n += 1;
        }
    }
    Ok(n)
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let path = args.next().unwrap_or_else(|| "/dev/null".into());
    let records: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
    let n = dump(&path, secs, records)?;
    println!("{n} records");
    Ok(())
}
