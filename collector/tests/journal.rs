//! The SQLite store's file journal (`PATH.ingest/`) as a restarted collector finds it: records
//! appended and synced but not rolled up are replayed once per batch, a record cut short by a
//! crash is skipped, and a roll-up's covered segments are removed.

use prost::Message as _;
use wattson_collector::store::journal::Journal;
use wattson_collector::store::synthetic::BatchBuilder;
use wattson_collector::store::{self, Ingested, Rank, TopQuery, Window};

/// 2026-11-02 00:00:00 UTC.
const T0: i64 = 1_793_577_600;

fn batch(host: &str, seq: u64) -> Vec<u8> {
    BatchBuilder::new(host, seq)
        .interval(
            T0 + 60 * seq as i64,
            10,
            false,
            500.0,
            &[("api", "b1", "main;work", 8, 2_000.0)],
        )
        .build()
        .encode_to_vec()
}

fn main_samples(s: &dyn store::Store) -> u64 {
    let rows = s
        .top(&TopQuery {
            window: Window {
                from: T0,
                to: T0 + 86_400,
            },
            service: None,
            rank: Rank::SamplesInclusive,
            limit: 10,
        })
        .unwrap();
    rows.iter()
        .find(|r| r.key == "main")
        .map_or(0, |r| r.totals.samples_incl)
}

fn segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        })
        .count()
}

#[test]
fn a_restart_replays_journaled_batches_once_and_skips_a_cut_short_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sqlite");
    let url = format!("sqlite://{}", path.display());
    drop(store::open(&url).unwrap()); // creates the schema
    let journal = std::path::PathBuf::from(format!("{}.ingest", path.display()));
    {
        // As the pipeline leaves it when killed: three batches acknowledged, h1/2 journaled
        // twice (synced, then the process died before answering, and the agent retried), and a
        // fourth batch whose append was cut short, so never acknowledged.
        let (mut j, _) = Journal::open(&journal, 0, |_, _| {}).unwrap();
        j.append([&batch("h1", 1)[..], &batch("h1", 2)]).unwrap();
        j.seal();
        j.append([&batch("h1", 2)[..], &batch("h2", 1), &batch("h2", 2)])
            .unwrap();
        let seg = std::fs::read_dir(&journal)
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap();
        let len = std::fs::metadata(&seg).unwrap().len();
        let cut = batch("h2", 2).len() as u64 / 2;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - cut)
            .unwrap();
    }
    let s = store::open(&url).unwrap();
    assert_eq!(main_samples(&*s), 3 * 8, "h1/1, h1/2 once, h2/1");
    assert_eq!(s.stats().unwrap().batches, 3);
    assert_eq!(
        s.ingest(&decode(&batch("h1", 2))).unwrap(),
        Ingested::Duplicate
    );
    // The batch cut short was never acknowledged: its retry is new.
    assert!(matches!(
        s.ingest(&decode(&batch("h2", 2))).unwrap(),
        Ingested::New { samples: 8, .. }
    ));
    drop(s);
    assert_eq!(segments(&journal), 0, "rolled-up segments are removed");

    // Reopening replays nothing more: the roll-up recorded the generations it covered.
    let s = store::open(&url).unwrap();
    assert_eq!(main_samples(&*s), 4 * 8);
    assert_eq!(s.stats().unwrap().batches, 4);
}

#[test]
fn batches_journaled_before_a_roll_up_are_duplicates_of_direct_writes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.sqlite").display());
    let s = store::open(&url).unwrap();
    let b = decode(&batch("h1", 1));
    assert!(matches!(s.ingest(&b).unwrap(), Ingested::New { .. }));
    // Still pending (the roll-up runs every 2 s): a direct write of the same batch must not
    // count it again.
    let rollup = store::Rollup::from_batch(&b).unwrap();
    assert_eq!(s.write(&rollup).unwrap(), Ingested::Duplicate);
    assert_eq!(main_samples(&*s), 8);
}

fn decode(bytes: &[u8]) -> wattson_proto::v1::Batch {
    wattson_proto::v1::Batch::decode(bytes).unwrap()
}
