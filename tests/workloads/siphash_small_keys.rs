//! Skills e2e workload: counts small integer keys in a std `HashMap`, whose default hasher is
//! SipHash-1-3 (built to resist HashDoS, slow for an 8-byte key). Anti-pattern:
//! `siphash-small-keys`. Built by the test with `rustc -g -C force-frame-pointers=yes`.
//! Usage: `siphash_small_keys SECONDS [ROUNDS]`: runs for SECONDS, or stops after ROUNDS
//! rounds of 4,096 lookups when given (a fixed amount of work, for `cargo xtask bench`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

fn count_keys(counts: &mut HashMap<u64, u64>, round: u64) {
    for k in 0..4096u64 {
        let key = k.wrapping_mul(2_654_435_761).wrapping_add(round) % 1024;
        *counts.entry(key).or_insert(0) += 1; // HOT: the hashing call site
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let rounds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut counts = HashMap::new();
    let mut round = 0;
    while round < rounds && Instant::now() < end {
        count_keys(&mut counts, round);
        round += 1;
    }
    let total: u64 = counts.values().sum();
    println!("{} keys, {total} counted, {round} rounds", counts.len());
}
