//! The SQLite store's file journal (`PATH.ingest/`) as a restarted collector finds it: records
//! appended and synced but not rolled up (encoded batches or the zstd frames they arrived in)
//! are replayed once per batch, a record cut short by a
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

/// `batch` as agents send it and the journal keeps it: one zstd frame.
fn framed(host: &str, seq: u64) -> Vec<u8> {
    let b = wattson_proto::v1::Batch::decode(&batch(host, seq)[..]).unwrap();
    match wattson_proto::v1::IngestRequest::zstd(&b).unwrap().payload {
        Some(wattson_proto::v1::ingest_request::Payload::BatchZstd(f)) => f,
        other => panic!("{other:?}"),
    }
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
        // fourth batch whose append was cut short, so never acknowledged. Records are batches
        // or the zstd frames they arrived in.
        let (mut j, _) = Journal::open(&journal, 0, |_, _| {}).unwrap();
        j.append([&batch("h1", 1)[..], &batch("h1", 2)]).unwrap();
        j.seal();
        j.append([&framed("h1", 2)[..], &framed("h2", 1), &batch("h2", 2)])
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
    // Still pending (the roll-up runs every 10 s): a direct write of the same batch must not
    // count it again.
    let rollup = store::Rollup::from_batch(&b).unwrap();
    assert_eq!(s.write(&rollup).unwrap(), Ingested::Duplicate);
    assert_eq!(main_samples(&*s), 8);
}

fn decode(bytes: &[u8]) -> wattson_proto::v1::Batch {
    wattson_proto::v1::Batch::decode(bytes).unwrap()
}

/// Unmounts the test's tmpfs when dropped, also when the test panics.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A real full disk (a 2 MiB tmpfs this test mounts; the suite runs as root for BPF anyway):
/// batches are refused with an error naming the journal and the cause, nothing is half
/// stored, and once space is freed the agents' retries store every batch exactly once.
#[test]
fn a_full_disk_refuses_batches_and_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("tiny");
    std::fs::create_dir(&mnt).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("run mount");
    assert!(
        status.success(),
        "mount a tmpfs at {} (needs root)",
        mnt.display()
    );
    let _mounted = Mounted(mnt.clone());
    let s = store::open(&format!("sqlite://{}", mnt.join("w.sqlite").display())).unwrap();
    assert!(matches!(
        s.ingest(&decode(&batch("h1", 1))).unwrap(),
        Ingested::New { .. }
    ));
    // Fill what is left.
    let filler = mnt.join("filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[0u8; 16 << 10]).is_ok() {}
        let _ = f.sync_all();
    }
    // The last page of the journal may still take a batch or two; then every batch is refused.
    let (mut stored, mut refused) = (1u64, Vec::new());
    for seq in 2..=200 {
        match s.ingest(&decode(&batch("h1", seq))) {
            Ok(Ingested::New { .. }) if refused.is_empty() => stored += 1,
            Ok(other) => panic!("batch {seq} {other:?} after a refusal on a full disk"),
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains(".ingest/")
                        && e.contains("disk full")
                        && e.contains("No space left"),
                    "{e}"
                );
                refused.push(seq);
                if refused.len() == 3 {
                    break;
                }
            }
        }
    }
    assert_eq!(refused.len(), 3, "a full disk refused nothing");
    std::fs::remove_file(&filler).unwrap();
    for &seq in &refused {
        assert!(matches!(
            s.ingest(&decode(&batch("h1", seq))).unwrap(),
            Ingested::New { samples: 8, .. }
        ));
    }
    assert_eq!(
        s.ingest(&decode(&batch("h1", refused[0]))).unwrap(),
        Ingested::Duplicate
    );
    let total = stored + refused.len() as u64;
    assert_eq!(main_samples(&*s), total * 8);
    assert_eq!(s.stats().unwrap().batches, total);
}

/// Dedup records older than a week fold into one floor per agent instance, so the table does
/// not grow by one row per batch for the whole retention; resends are still duplicates and the
/// batch count survives.
#[test]
fn old_dedup_records_fold_into_a_floor_per_agent_instance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sqlite");
    let s = store::open(&format!("sqlite://{}", path.display())).unwrap();
    for seq in 1..=5 {
        s.ingest(&decode(&batch("h1", seq))).unwrap();
    }
    s.ingest(&decode(&batch("h2", 1))).unwrap();
    let now = wattson_collector::report::now();
    // A pass today folds nothing; eight days on, every record is past the week.
    s.retain(&store::Retention::default(), now).unwrap();
    let rows = |sql: &str| -> i64 {
        rusqlite::Connection::open(&path)
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(rows("SELECT count(*) FROM received"), 6);
    s.retain(&store::Retention::default(), now + 8 * 86_400)
        .unwrap();
    assert_eq!(rows("SELECT count(*) FROM received"), 0);
    assert_eq!(rows("SELECT count(*) FROM received_floor"), 2);
    assert_eq!(s.stats().unwrap().batches, 6);
    for seq in [1, 3, 5] {
        assert_eq!(
            s.ingest(&decode(&batch("h1", seq))).unwrap(),
            Ingested::Duplicate,
            "h1/{seq}"
        );
    }
    assert!(matches!(
        s.ingest(&decode(&batch("h1", 6))).unwrap(),
        Ingested::New { .. }
    ));
    assert!(matches!(
        s.ingest(&decode(&batch("h2", 2))).unwrap(),
        Ingested::New { .. }
    ));
    assert_eq!(s.stats().unwrap().batches, 8);
}
