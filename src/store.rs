//! Durable state behind a small trait: sled on disk, or memory for tests.
//!
//! The engine decides; the store only keeps. What it keeps is opaque bytes under three key spaces
//! of one sled tree, so that a batch touching records, agents and the audit log is one atomic sled
//! batch followed by one flush (group commit):
//!
//! - `r/<record id>`: a record with its data, context, version, final outcome and holders;
//! - `a/<agent id>`: a logged-in agent's DN and resume token, so desktops can resume after a restart;
//! - `l/<seq as 8 big-endian bytes>`: one audit entry; big-endian keys iterate in `seq` order;
//! - `f/<final time in ms, 8 big-endian bytes><record id>`: empty; one per final record, in the
//!   order records became final, so that final-record retention deletes the oldest without
//!   scanning every record.

pub mod records;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

const RECORD: &[u8] = b"r/";
const AGENT: &[u8] = b"a/";
const AUDIT: &[u8] = b"l/";
const FINAL: &[u8] = b"f/";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage failed: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage failed: {0}")]
    Injected(String),
    /// Cluster mode: etcd did not commit the write (no quorum, a timeout), or this node is no
    /// longer the active one.
    #[error("{0}")]
    Cluster(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("another Baton process holds this data directory{owner}: the lock on {lock} is taken. Stop that server first, or give this one another data_dir")]
    InUse { lock: String, owner: String },
}

/// Everything written by one engine batch. `None` deletes the key.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    pub records: Vec<(String, Option<Vec<u8>>)>,
    pub agents: Vec<(String, Option<Vec<u8>>)>,
    pub audit: Vec<(u64, Vec<u8>)>,
    /// (final time in ms, record): records that became final, for retention to find.
    pub finals_add: Vec<(u64, String)>,
    /// Entries of that index to delete (the record was deleted, or the entry is stale).
    pub finals_remove: Vec<(u64, String)>,
}

/// One key of the store's layout written (`Some`) or deleted (`None`): what a [`WriteBatch`]
/// becomes on disk, and what cluster mode copies to etcd and back.
pub type RawOp = (Vec<u8>, Option<Vec<u8>>);

/// The key under which a node of a cluster keeps the etcd revision its copy has reached.
const MIRROR_REVISION: &[u8] = b"m/revision";

impl WriteBatch {
    /// The batch as keys of the store's layout, in the order they are applied.
    pub fn raw_ops(&self) -> Vec<RawOp> {
        let mut ops = Vec::with_capacity(self.op_count());
        for (id, value) in &self.records {
            ops.push((key(RECORD, id.as_bytes()), value.clone()));
        }
        for (id, value) in &self.agents {
            ops.push((key(AGENT, id.as_bytes()), value.clone()));
        }
        for (seq, v) in &self.audit {
            ops.push((audit_key(*seq), Some(v.clone())));
        }
        for (at, id) in &self.finals_add {
            ops.push((final_key(*at, id), Some(Vec::new())));
        }
        for (at, id) in &self.finals_remove {
            ops.push((final_key(*at, id), None));
        }
        ops
    }

    /// How many keys the batch writes or deletes.
    pub fn op_count(&self) -> usize {
        self.records.len()
            + self.agents.len()
            + self.audit.len()
            + self.finals_add.len()
            + self.finals_remove.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.agents.is_empty()
            && self.audit.is_empty()
            && self.finals_add.is_empty()
            && self.finals_remove.is_empty()
    }
}

/// A stored value as loaded: shares sled's buffer instead of copying it (a big store holds
/// gigabytes of records, and each copy is an allocation and a memcpy at start).
pub type Stored = sled::IVec;

/// What the server loads at start: the live records (a final record stays on disk until a
/// request names it, so that memory at start does not grow with the history of the store).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Records that are not final.
    pub records: Vec<(String, Stored)>,
    /// Final records on disk, counted, not loaded.
    pub records_final: u64,
    pub agents: Vec<(String, Stored)>,
    /// Highest audit `seq` on disk (0 for an empty log).
    pub audit_last_seq: u64,
    /// Lowest audit `seq` still kept (0 for an empty log).
    pub audit_first_seq: u64,
}

/// Durable storage for the engine's state.
pub trait Store: Send + Sync {
    /// Reads back what the server needs at start: live records, agents, the audit position.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Writes the batch atomically; with `flush`, returns only once it (and everything written
    /// before it) is on disk. All or nothing: when it fails, reads see none of the batch (the
    /// server takes the batch back and tells nobody about it).
    fn commit(&self, batch: &WriteBatch, flush: bool) -> Result<(), StoreError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Has `observer` told how long each flush to disk takes (for the metrics); the first
    /// observer set stays. A store that never touches a disk ignores it.
    fn observe_flushes(&self, _observer: FlushObserver) {}
    /// Up to `max` audit entries with `seq >= from`, in order.
    fn audit_range(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// Lowest `seq` still kept, `None` when the log is empty.
    fn audit_first_seq(&self) -> Result<Option<u64>, StoreError>;
    /// One record, as last written (a final record that left the engine's memory).
    fn record(&self, id: &str) -> Result<Option<Stored>, StoreError>;
    /// Deletes audit entries with `seq < below`; returns how many were deleted.
    fn trim_audit(&self, below: u64) -> Result<u64, StoreError>;
    /// Up to `max` entries of the final-record index older than `before_ms`, oldest first.
    fn finals_before(&self, before_ms: u64, max: usize) -> Result<Vec<(u64, String)>, StoreError>;
}

/// Whether a stored record is final, read without building it.
fn is_final(id: &str, bytes: &[u8]) -> Result<bool, StoreError> {
    records::stored_record_is_final(bytes)
        .map_err(|e| StoreError::Corrupt(format!("record {id}: {e}")))
}

fn key(prefix: &[u8], id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + id.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(id);
    k
}

pub(crate) fn audit_key(seq: u64) -> Vec<u8> {
    key(AUDIT, &seq.to_be_bytes())
}

fn final_key(at_ms: u64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(FINAL.len() + 8 + id.len());
    k.extend_from_slice(FINAL);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

fn final_of_key(k: &[u8]) -> Result<(u64, String), StoreError> {
    let rest = &k[FINAL.len()..];
    if rest.len() < 8 {
        return Err(StoreError::Corrupt("final index key too short".into()));
    }
    let at = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
    let id = String::from_utf8(rest[8..].to_vec())
        .map_err(|_| StoreError::Corrupt("final index key is not UTF-8".into()))?;
    Ok((at, id))
}

fn seq_of(k: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = k[AUDIT.len()..]
        .try_into()
        .map_err(|_| StoreError::Corrupt("audit key is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(bytes))
}

fn id_of(prefix: &[u8], k: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(k[prefix.len()..].to_vec())
        .map_err(|_| StoreError::Corrupt("key is not UTF-8".into()))
}

/// The embedded default: one sled tree in `data_dir`.
pub struct SledStore {
    db: sled::Db,
    /// Told how long each flush to disk took (see [`Store::observe_flushes`]).
    flush_observer: std::sync::OnceLock<FlushObserver>,
}

/// Receives the duration of each flush to disk.
pub type FlushObserver = Box<dyn Fn(std::time::Duration) + Send + Sync>;

/// The file in a data directory that says which process has it open (for the message a second
/// server gets); sled's own lock is on `db` beside it.
pub const OWNER_FILE: &str = "baton.owner";

impl SledStore {
    /// Opens (or creates) the store in `dir` with sled's default page cache.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with_cache(dir, crate::config::Config::default().store_cache_bytes)
    }

    /// Opens the store with a page cache of at most `cache_bytes` (`store_cache_bytes`).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|e| match e {
                // sled reports a lock held by another process as a bare I/O error on `db`.
                sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock") => {
                    let owner = std::fs::read_to_string(dir.join(OWNER_FILE))
                        .ok()
                        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
                        .filter(|s| !s.is_empty());
                    StoreError::InUse {
                        lock: dir.join("db").display().to_string(),
                        owner: owner.map_or_else(String::new, |o| format!(" ({o})")),
                    }
                }
                other => other.into(),
            })?;
        // Best effort: it only makes the message a second server gets more precise.
        let _ = std::fs::write(
            dir.join(OWNER_FILE),
            format!(
                "pid {} started {}\n",
                std::process::id(),
                crate::messages::rfc3339(crate::server::now_ms())
            ),
        );
        Ok(SledStore {
            db,
            flush_observer: std::sync::OnceLock::new(),
        })
    }

    /// Flushes sled, telling the observer how long it took.
    /// A flush that fails is timed too: a dying disk often takes seconds to say so.
    fn flush_timed(&self) -> Result<(), sled::Error> {
        let started = std::time::Instant::now();
        let flushed = self.db.flush();
        if let Some(observe) = self.flush_observer.get() {
            observe(started.elapsed());
        }
        flushed.map(drop)
    }
}

/// A node of a cluster keeps a copy of the cluster's state in its own sled, under the same keys,
/// with the etcd revision the copy has reached (see `cluster`).
impl SledStore {
    /// The etcd revision this copy has reached; 0 for a copy that never followed a cluster.
    pub fn mirror_revision(&self) -> Result<i64, StoreError> {
        match self.db.get(MIRROR_REVISION)? {
            Some(v) => {
                let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| {
                    StoreError::Corrupt("the copy's etcd revision is not 8 bytes".into())
                })?;
                Ok(i64::from_be_bytes(bytes))
            }
            None => Ok(0),
        }
    }

    /// Whether this store is a cluster node's copy (it has a copy revision, even 0).
    pub fn is_mirror(&self) -> Result<bool, StoreError> {
        Ok(self.db.contains_key(MIRROR_REVISION)?)
    }

    /// Applies keys copied from etcd, and the revision they bring the copy to, atomically.
    pub fn apply_mirror(&self, ops: &[RawOp], revision: i64) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (k, value) in ops {
            match value {
                Some(v) => b.insert(k.as_slice(), v.as_slice()),
                None => b.remove(k.as_slice()),
            }
        }
        b.insert(MIRROR_REVISION, &revision.to_be_bytes());
        self.db.apply_batch(b)?;
        Ok(())
    }

    /// Deletes everything, the copy's revision included (before copying a cluster's state anew).
    pub fn clear_mirror(&self) -> Result<(), StoreError> {
        self.db.clear()?;
        self.flush_timed()?;
        Ok(())
    }

    /// Keys of the store's layout with their values, in key order, from `after` (exclusive), at
    /// most `max` (a cluster node checks with it that its data directory is not a single node's
    /// store).
    pub fn raw_range(&self, after: &[u8], max: usize) -> Result<Vec<RawOp>, StoreError> {
        let mut out = Vec::new();
        let start = std::ops::Bound::Excluded(after.to_vec());
        for item in self
            .db
            .range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded))
            .take(max)
        {
            let (k, v) = item?;
            if k.as_ref() == MIRROR_REVISION {
                continue;
            }
            out.push((k.to_vec(), Some(v.to_vec())));
        }
        Ok(out)
    }
}

impl SledStore {
    /// The batch that puts back what `batch` is about to replace.
    fn undo_of(&self, batch: &WriteBatch) -> Result<sled::Batch, StoreError> {
        let mut undo = sled::Batch::default();
        let keys = batch
            .records
            .iter()
            .map(|(id, _)| key(RECORD, id.as_bytes()))
            .chain(batch.agents.iter().map(|(id, _)| key(AGENT, id.as_bytes())));
        for k in keys {
            match self.db.get(&k)? {
                Some(old) => undo.insert(k, old),
                None => undo.remove(k),
            }
        }
        for (seq, _) in &batch.audit {
            undo.remove(audit_key(*seq));
        }
        let index = batch.finals_add.iter().chain(&batch.finals_remove);
        for (at, id) in index {
            let k = final_key(*at, id);
            match self.db.get(&k)? {
                Some(old) => undo.insert(k, old),
                None => undo.remove(k),
            }
        }
        Ok(undo)
    }
}

impl Store for SledStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let mut snap = Snapshot::default();
        for item in self.db.scan_prefix(RECORD) {
            let (k, v) = item?;
            let id = id_of(RECORD, &k)?;
            if is_final(&id, &v)? {
                snap.records_final += 1;
            } else {
                snap.records.push((id, v));
            }
        }
        for item in self.db.scan_prefix(AGENT) {
            let (k, v) = item?;
            snap.agents.push((id_of(AGENT, &k)?, v));
        }
        if let Some(item) = self.db.scan_prefix(AUDIT).next_back() {
            snap.audit_last_seq = seq_of(&item?.0)?;
        }
        snap.audit_first_seq = self.audit_first_seq()?.unwrap_or(0);
        Ok(snap)
    }

    fn commit(&self, batch: &WriteBatch, flush: bool) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut b = sled::Batch::default();
        for (k, value) in batch.raw_ops() {
            match value {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        // If the flush fails, the batch is already in sled's tree: put back what it replaced, so
        // that reads (a final record read back) never see a batch nobody was told about.
        let undo = if flush {
            Some(self.undo_of(batch)?)
        } else {
            None
        };
        self.db.apply_batch(b)?;
        if let Some(undo) = undo {
            if let Err(e) = self.flush_timed() {
                if let Err(again) = self.db.apply_batch(undo) {
                    return Err(StoreError::Corrupt(format!(
                        "flush failed ({e}) and the refused batch could not be taken back ({again})"
                    )));
                }
                return Err(e.into());
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.flush_timed()?;
        Ok(())
    }

    fn observe_flushes(&self, observer: FlushObserver) {
        let _ = self.flush_observer.set(observer);
    }

    fn audit_range(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        let end = key(b"l0", b""); // the first key after every "l/..." key
        for item in self.db.range(audit_key(from)..end).take(max) {
            let (k, v) = item?;
            out.push((seq_of(&k)?, v.to_vec()));
        }
        Ok(out)
    }

    fn record(&self, id: &str) -> Result<Option<Stored>, StoreError> {
        Ok(self.db.get(key(RECORD, id.as_bytes()))?)
    }

    fn finals_before(&self, before_ms: u64, max: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let mut out = Vec::new();
        let end = final_key(before_ms, "");
        for k in self.db.range(FINAL.to_vec()..end).keys().take(max) {
            out.push(final_of_key(&k?)?);
        }
        Ok(out)
    }

    fn audit_first_seq(&self) -> Result<Option<u64>, StoreError> {
        match self.db.scan_prefix(AUDIT).next() {
            Some(item) => Ok(Some(seq_of(&item?.0)?)),
            None => Ok(None),
        }
    }

    fn trim_audit(&self, below: u64) -> Result<u64, StoreError> {
        let mut removed = 0;
        loop {
            let keys: Vec<sled::IVec> = self
                .db
                .range(audit_key(0)..audit_key(below))
                .keys()
                .take(4096)
                .collect::<Result<_, _>>()?;
            if keys.is_empty() {
                break;
            }
            let mut b = sled::Batch::default();
            for k in &keys {
                b.remove(k.clone());
            }
            self.db.apply_batch(b)?;
            removed += keys.len() as u64;
        }
        if removed > 0 {
            self.flush_timed()?;
        }
        Ok(removed)
    }
}

#[derive(Default)]
struct MemoryInner {
    records: BTreeMap<String, Vec<u8>>,
    agents: BTreeMap<String, Vec<u8>>,
    audit: BTreeMap<u64, Vec<u8>>,
    finals: std::collections::BTreeSet<(u64, String)>,
}

/// An in-memory store for tests, with a fault switch that makes every commit fail.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
    failing: AtomicBool,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// While set, every `commit` fails as a full disk would, and writes nothing; reading a
    /// record back fails too.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let inner = self.lock();
        let mut records = Vec::new();
        let mut records_final = 0;
        for (k, v) in &inner.records {
            if is_final(k, v)? {
                records_final += 1;
            } else {
                records.push((k.clone(), Stored::from(v.as_slice())));
            }
        }
        Ok(Snapshot {
            records,
            records_final,
            agents: inner
                .agents
                .iter()
                .map(|(k, v)| (k.clone(), Stored::from(v.as_slice())))
                .collect(),
            audit_last_seq: inner.audit.keys().next_back().copied().unwrap_or(0),
            audit_first_seq: inner.audit.keys().next().copied().unwrap_or(0),
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Injected("flush failed (injected)".into()));
        }
        Ok(())
    }

    fn commit(&self, batch: &WriteBatch, _flush: bool) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Injected(
                "no space left on device (injected)".into(),
            ));
        }
        let mut inner = self.lock();
        for (id, value) in &batch.records {
            match value {
                Some(v) => inner.records.insert(id.clone(), v.clone()),
                None => inner.records.remove(id),
            };
        }
        for (id, value) in &batch.agents {
            match value {
                Some(v) => inner.agents.insert(id.clone(), v.clone()),
                None => inner.agents.remove(id),
            };
        }
        for (seq, v) in &batch.audit {
            inner.audit.insert(*seq, v.clone());
        }
        for entry in &batch.finals_add {
            inner.finals.insert(entry.clone());
        }
        for entry in &batch.finals_remove {
            inner.finals.remove(entry);
        }
        Ok(())
    }

    fn audit_range(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .audit
            .range(from..)
            .take(max)
            .map(|(k, v)| (*k, v.clone()))
            .collect())
    }

    fn audit_first_seq(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.lock().audit.keys().next().copied())
    }

    fn record(&self, id: &str) -> Result<Option<Stored>, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Injected("I/O error reading (injected)".into()));
        }
        Ok(self
            .lock()
            .records
            .get(id)
            .map(|v| Stored::from(v.as_slice())))
    }

    fn finals_before(&self, before_ms: u64, max: usize) -> Result<Vec<(u64, String)>, StoreError> {
        Ok(self
            .lock()
            .finals
            .iter()
            .take_while(|(at, _)| *at < before_ms)
            .take(max)
            .cloned()
            .collect())
    }

    fn trim_audit(&self, below: u64) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let keep = inner.audit.split_off(&below);
        let removed = inner.audit.len() as u64;
        inner.audit = keep;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(store: &dyn Store) {
        let batch = WriteBatch {
            records: vec![
                ("R1".into(), Some(LIVE.to_vec())),
                ("R2".into(), Some(b"{}".to_vec())),
                ("R3".into(), Some(FINAL.to_vec())),
            ],
            agents: vec![("A".into(), Some(b"a".to_vec()))],
            audit: (1..=300)
                .map(|s| (s, format!("e{s}").into_bytes()))
                .collect(),
            finals_add: vec![
                (2000, "R3".into()),
                (1000, "R0".into()),
                (3000, "R9".into()),
            ],
            finals_remove: vec![],
        };
        store.commit(&batch, true).unwrap();
        store
            .commit(
                &WriteBatch {
                    records: vec![("R2".into(), None)],
                    agents: vec![("A".into(), None)],
                    audit: vec![],
                    finals_add: vec![],
                    finals_remove: vec![(1000, "R0".into())],
                },
                true,
            )
            .unwrap();
        let snap = store.load().unwrap();
        // Live records are loaded; final ones are only counted, and read back one by one.
        assert_eq!(snap.records, vec![("R1".to_string(), Stored::from(LIVE))]);
        assert_eq!(snap.records_final, 1);
        assert_eq!(store.record("R3").unwrap(), Some(Stored::from(FINAL)));
        assert_eq!(store.record("R2").unwrap(), None);
        // The index of finals, oldest first, up to a time.
        assert_eq!(
            store.finals_before(3000, 10).unwrap(),
            vec![(2000, "R3".to_string())]
        );
        assert_eq!(store.finals_before(3001, 1).unwrap().len(), 1);
        assert!(snap.agents.is_empty());
        assert_eq!((snap.audit_first_seq, snap.audit_last_seq), (1, 300));
        // Big-endian keys keep numeric order across byte boundaries (255 -> 256).
        let range = store.audit_range(250, 10).unwrap();
        let seqs: Vec<u64> = range.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (250..260).collect::<Vec<_>>());
        assert_eq!(store.trim_audit(101).unwrap(), 100);
        assert_eq!(store.audit_first_seq().unwrap(), Some(101));
        assert_eq!(store.audit_range(1, 1).unwrap()[0].0, 101);
    }

    const LIVE: &[u8] = br#"{"call":"C1","final_":null}"#;
    const FINAL: &[u8] = br#"{"call":"C3","final_":{"outcome":"processed","by":"A","at":"x"}}"#;

    #[test]
    fn memory_store_keeps_and_trims() {
        exercise(&MemoryStore::new());
    }

    #[test]
    fn sled_store_keeps_and_trims_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            exercise(&store);
        }
        let store = SledStore::open(dir.path()).unwrap();
        let snap = store.load().unwrap();
        assert_eq!(snap.records.len(), 1);
        assert_eq!((snap.audit_first_seq, snap.audit_last_seq), (101, 300));
    }

    #[test]
    fn failing_memory_store_writes_nothing() {
        let store = MemoryStore::new();
        store.set_failing(true);
        let batch = WriteBatch {
            records: vec![("R1".into(), Some(b"x".to_vec()))],
            ..WriteBatch::default()
        };
        assert!(store.commit(&batch, true).is_err());
        store.set_failing(false);
        assert!(store.load().unwrap().records.is_empty());
    }
}
