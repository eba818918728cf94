//! The sled store alone: what one engine batch of decisions costs to write.
//!
//! A store holding 20,000 live records takes batches of 50 `RecordProcessed` decisions, as the
//! engine hands them over: each decision turns a live record final (its state under `d/`, gone
//! from `r/`; its body, written at the attach, stays), files it in the index of final records,
//! and adds two audit entries. The batch is
//! committed with its flush, as an acknowledged batch is. Run on tmpfs when it exists (the flush
//! is then nearly free), so that the figure is the CPU of the write path, not the disk's.
//!
//! Two record sizes: the small customer data of `baton load`, and 2 KiB of data, closer to a
//! calling list with many fields.

use baton::store::format::{Writer, VERSION_1};
use baton::store::records::{RECORD_FINAL, RECORD_SPLIT};
use baton::store::{SledStore, Store, WriteBatch};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::path::PathBuf;

const LIVE: usize = 20_000;
const DECISIONS: usize = 50;
const START_MS: u64 = 1_700_000_000_000;

/// A record's state in the store's format 1 (split: the body is under its own key): flags, the
/// final outcome if final, then context, version, holders; the store itself only ever reads the
/// flags and the final outcome.
fn state(final_at: Option<&str>) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(VERSION_1);
    match final_at {
        Some(at) => {
            w.u8(RECORD_SPLIT | RECORD_FINAL);
            w.u8(0);
            w.opt_str(Some("1042"));
            w.str(at);
        }
        None => w.u8(RECORD_SPLIT),
    }
    w.opt_str(Some("answered"));
    w.varint(0);
    w.varint(2);
    w.varint(1);
    w.str("1042");
    w.u8(2);
    w.opt_varint(None);
    w.into_bytes()
}

/// A record's body: call, campaign, phone, then `data_bytes` of customer data.
fn body(id: &str, data_bytes: usize) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(VERSION_1);
    w.str(&format!("call-{id}"));
    w.str("spring");
    w.varint(0);
    w.opt_str(Some("5550100"));
    w.str(&"x".repeat(data_bytes));
    w.into_bytes()
}

fn audit_entry(seq: u64) -> Vec<u8> {
    // About the size of a real entry (an `accepted` or `finalized` one).
    let mut w = Writer::new();
    w.u8(VERSION_1);
    w.varint(seq);
    w.str(&"e".repeat(130));
    w.into_bytes()
}

fn dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

struct Centre {
    store: SledStore,
    _dir: tempfile::TempDir,
    data_bytes: usize,
    next: usize,
    seq: u64,
    finals: u64,
}

impl Centre {
    fn new(data_bytes: usize) -> Centre {
        let dir = tempfile::tempdir_in(dir()).expect("a temporary directory");
        let store = SledStore::open(dir.path()).expect("the store opens");
        let c = Centre {
            store,
            _dir: dir,
            data_bytes,
            next: 0,
            seq: 0,
            finals: 0,
        };
        for part in (0..LIVE).collect::<Vec<_>>().chunks(1000) {
            let batch = WriteBatch {
                records: part
                    .iter()
                    .map(|i| (format!("R{i}"), Some(state(None))))
                    .collect(),
                bodies: part
                    .iter()
                    .map(|i| (format!("R{i}"), body(&format!("R{i}"), data_bytes)))
                    .collect(),
                finals_total: Some(0),
                ..WriteBatch::default()
            };
            c.store
                .commit(&batch, true)
                .expect("the store takes the records");
        }
        c
    }

    /// Attaches `DECISIONS` new live records (untimed) and returns the batch that decides them.
    fn decisions(&mut self) -> WriteBatch {
        let ids: Vec<String> = (0..DECISIONS)
            .map(|i| format!("N{}", self.next + i))
            .collect();
        self.next += DECISIONS;
        let attach = WriteBatch {
            records: ids
                .iter()
                .map(|id| (id.clone(), Some(state(None))))
                .collect(),
            bodies: ids
                .iter()
                .map(|id| (id.clone(), body(id, self.data_bytes)))
                .collect(),
            finals_total: Some(self.finals),
            ..WriteBatch::default()
        };
        self.store
            .commit(&attach, true)
            .expect("the store takes the records");
        let at_ms = START_MS + self.next as u64;
        let at = baton::messages::rfc3339(at_ms);
        let mut batch = WriteBatch::default();
        for id in ids {
            batch.records.push((id.clone(), Some(state(Some(&at)))));
            batch.finals_add.push((at_ms, id));
            for _ in 0..2 {
                self.seq += 1;
                batch.audit.push((self.seq, audit_entry(self.seq)));
            }
        }
        self.finals += DECISIONS as u64;
        batch.finals_total = Some(self.finals);
        batch
    }
}

fn bench_store(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(DECISIONS as u64));
    for (name, data_bytes) in [("small_data", 40), ("data_2k", 2048)] {
        let centre = std::cell::RefCell::new(Centre::new(data_bytes));
        group.bench_function(format!("commit_50_decisions_{name}"), |b| {
            b.iter_batched(
                || centre.borrow_mut().decisions(),
                |batch| {
                    centre
                        .borrow()
                        .store
                        .commit(&batch, true)
                        .expect("committed")
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_store);
criterion_main!(benches);
