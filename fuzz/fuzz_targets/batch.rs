//! Batch decode + validate + roll-up, as the collector's ingest does with a request's bytes:
//! read in place with the count limits, validate, then roll up and build the rows. Nothing
//! may panic, and a batch that passes validation must roll up (validation is the only gate
//! before a batch is journaled, so a batch it admits that the roll-up refuses would be
//! acknowledged and then lost).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wattson_collector::store::{Accumulator, Prepared};
use wattson_collector::validate::{self, Limits};

/// "Now" for timestamps: fixed, so a crash replays the same way (the seeds are near it).
const NOW: u64 = 1_780_000_000 * 1_000_000_000;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(batch) = validate::parse(data, &limits) else {
        return;
    };
    if validate::validate_view_at(&batch, &limits, NOW).is_err() {
        return;
    }
    let prepared = match Prepared::from_view(&batch) {
        Ok(p) => p,
        Err(e) => panic!("validation admitted a batch the roll-up refuses: {e}"),
    };
    let mut acc = Accumulator::default();
    acc.merge(&prepared);
    acc.merge(&prepared);
    let rows = acc.take_rows();
    assert!(prepared.profiles == 0 || !rows.is_empty());
});
