//! Durable state behind a small trait: sled on disk, or memory for tests.
//!
//! The engine decides; the store only keeps. What it keeps is opaque bytes (see [`format`]) under
//! a few key spaces of one sled tree, so that a batch touching records, agents and the audit log is
//! one atomic sled batch followed by one flush (group commit):
//!
//! - `r/<record id>`: a live record's state: context, version, holders (see
//!   [`records::RECORD_SPLIT`]; a record written before the split holds its body here too);
//! - `d/<record id>`: a final record's state ("done"), with its final outcome. Final records are
//!   kept apart so that a start reads only the live ones, however long the history;
//! - `b/<record id>`: a record's body (call, campaign, phone, data, chain), written once, when it
//!   is attached, so that a change rewrites only the state;
//! - `m/finals`: how many final records there are (8 big-endian bytes), written with every batch
//!   that writes records, so that a start need not count them;
//! - `a/<agent id>`: a logged-in agent's DN and resume token, so desktops can resume after a restart;
//! - `l/<seq as 8 big-endian bytes>`: the audit entries a batch wrote, from that `seq` on, as one
//!   block (see [`audit_block`]; a store written before blocks holds one entry per key). One value
//!   per batch rather than one per entry: reads are audited too, and a key per entry made sled's
//!   inserts a fifth of the cost of a read. Big-endian keys iterate in `seq` order;
//! - `f/<final time in ms, 8 big-endian bytes><record id>`: empty; one per final record, in the
//!   order records became final, so that final-record retention deletes the oldest without
//!   scanning every record.

pub mod format;
pub mod records;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

const RECORD: &[u8] = b"r/";
const DONE: &[u8] = b"d/";
const FINALS_COUNT: &[u8] = b"m/finals";
const AGENT: &[u8] = b"a/";
const AUDIT: &[u8] = b"l/";
const FINAL: &[u8] = b"f/";
/// A record's body (what its attach gave it), apart from its state under `r/` or `d/`.
const BODY: &[u8] = b"b/";

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
    /// Records' states (`None`: the record is deleted, its body with it).
    pub records: Vec<(String, Option<Vec<u8>>)>,
    /// Records' bodies, written once, with the record's first change.
    pub bodies: Vec<(String, Vec<u8>)>,
    pub agents: Vec<(String, Option<Vec<u8>>)>,
    pub audit: Vec<(u64, Vec<u8>)>,
    /// (final time in ms, record): records that became final, for retention to find.
    pub finals_add: Vec<(u64, String)>,
    /// Entries of that index to delete (the record was deleted, or the entry is stale).
    pub finals_remove: Vec<(u64, String)>,
    /// How many final records there are once this batch is applied; set by every batch that
    /// writes records.
    pub finals_total: Option<u64>,
}

/// One key of the store's layout written (`Some`) or deleted (`None`): what a [`WriteBatch`]
/// becomes on disk, and what cluster mode copies to etcd and back.
pub type RawOp = (Vec<u8>, Option<Vec<u8>>);

/// The first byte of a block of audit entries (an entry on its own starts with its format byte,
/// `0x01`, or with `{` if written as JSON).
const AUDIT_BLOCK: u8 = 0xB1;

/// Entries in one block at most, so that reading from inside a block never decodes many.
const AUDIT_BLOCK_MAX: usize = 1024;

/// Where each block of these entries ends: runs of consecutive `seq`s of at most
/// [`AUDIT_BLOCK_MAX`] entries.
fn audit_runs(audit: &[(u64, Vec<u8>)]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at == audit.len() {
            return None;
        }
        let first = audit[at].0;
        let mut end = at + 1;
        while end < audit.len()
            && end - at < AUDIT_BLOCK_MAX
            && audit[end].0 == first + (end - at) as u64
        {
            end += 1;
        }
        let run = at..end;
        at = end;
        Some(run)
    })
}

/// Each run of [`audit_runs`] as one value under its first `seq`: the block byte, how many
/// entries, then each entry with its length.
pub(crate) fn audit_block(audit: &[(u64, Vec<u8>)]) -> Vec<(u64, Vec<u8>)> {
    audit_runs(audit)
        .map(|range| {
            let run = &audit[range];
            let mut w = format::Writer(Vec::with_capacity(
                4 + run.iter().map(|(_, v)| v.len() + 2).sum::<usize>(),
            ));
            w.u8(AUDIT_BLOCK);
            w.varint(run.len() as u64);
            for (_, entry) in run {
                w.bytes(entry);
            }
            (run[0].0, w.0)
        })
        .collect()
}

/// The entries stored under the audit key of `first`: a block, or one entry on its own.
fn audit_entries(first: u64, value: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    if value.first() != Some(&AUDIT_BLOCK) {
        return Ok(vec![(first, value.to_vec())]);
    }
    let corrupt = |e: String| StoreError::Corrupt(format!("audit block at seq {first}: {e}"));
    let mut r = format::Reader::new(&value[1..]);
    let n = r.varint().map_err(corrupt)?;
    let mut out = Vec::with_capacity(n.min(65_536) as usize);
    for i in 0..n {
        out.push((first + i, r.bytes().map_err(corrupt)?.to_vec()));
    }
    if !r.is_empty() {
        return Err(corrupt("bytes left over".into()));
    }
    Ok(out)
}

/// The store's readers of what is on disk, for the fuzz targets (hidden from the docs; not an
/// API).
#[doc(hidden)]
pub mod fuzzing {
    /// The entries stored under the audit key of `first` (see [`super::audit_block`]).
    pub fn audit_entries(first: u64, value: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, String> {
        super::audit_entries(first, value).map_err(|e| e.to_string())
    }

    /// How many entries that value holds, read from its header alone.
    pub fn audit_count(first: u64, value: &[u8]) -> Result<u64, String> {
        super::audit_count(first, value).map_err(|e| e.to_string())
    }

    /// The blocks a batch's entries are stored as (see [`super::audit_block`]).
    pub fn audit_block(audit: &[(u64, Vec<u8>)]) -> Vec<(u64, Vec<u8>)> {
        super::audit_block(audit)
    }
}

/// How many entries, and so the last `seq`, a stored audit value holds, without copying them.
fn audit_count(first: u64, value: &[u8]) -> Result<u64, StoreError> {
    if value.first() != Some(&AUDIT_BLOCK) {
        return Ok(1);
    }
    format::Reader::new(&value[1..])
        .varint()
        .map_err(|e| StoreError::Corrupt(format!("audit block at seq {first}: {e}")))
}

/// The key under which a node of a cluster keeps the etcd revision its copy has reached.
const MIRROR_REVISION: &[u8] = b"m/revision";

impl WriteBatch {
    /// The batch as keys of the store's layout, in the order they are applied.
    pub fn raw_ops(&self) -> Vec<RawOp> {
        let mut ops = Vec::with_capacity(self.op_count());
        for (id, value) in &self.records {
            // A record lives under `r/` or `d/`, never both: writing it under one deletes it
            // from the other (it became final, or a final record was attached anew).
            let (live, done) = (key(RECORD, id.as_bytes()), key(DONE, id.as_bytes()));
            match value {
                Some(v) if records::stored_record_is_final(v).unwrap_or(false) => {
                    ops.push((done, Some(v.clone())));
                    ops.push((live, None));
                }
                Some(v) => {
                    ops.push((live, Some(v.clone())));
                    ops.push((done, None));
                }
                None => {
                    ops.push((live, None));
                    ops.push((done, None));
                    ops.push((key(BODY, id.as_bytes()), None));
                }
            }
        }
        for (id, body) in &self.bodies {
            ops.push((key(BODY, id.as_bytes()), Some(body.clone())));
        }
        for (id, value) in &self.agents {
            ops.push((key(AGENT, id.as_bytes()), value.clone()));
        }
        for (first, block) in audit_block(&self.audit) {
            ops.push((audit_key(first), Some(block)));
        }
        for (at, id) in &self.finals_add {
            ops.push((final_key(*at, id), Some(Vec::new())));
        }
        for (at, id) in &self.finals_remove {
            ops.push((final_key(*at, id), None));
        }
        if let Some(n) = self.finals_total {
            ops.push((FINALS_COUNT.to_vec(), Some(n.to_be_bytes().to_vec())));
        }
        ops
    }

    /// How many keys the batch writes or deletes.
    pub fn op_count(&self) -> usize {
        self.records
            .iter()
            .map(|(_, v)| if v.is_some() { 2 } else { 3 })
            .sum::<usize>()
            + self.bodies.len()
            + self.agents.len()
            + audit_runs(&self.audit).count()
            + self.finals_add.len()
            + self.finals_remove.len()
            + usize::from(self.finals_total.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.bodies.is_empty()
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
    /// Whether `commit` may be called from inside an async runtime (the engine's thread): true
    /// for a store that only blocks on its disk; false for one that drives async work of the
    /// server's runtime to commit (cluster mode), and must be called from a blocking thread.
    fn commits_in_place(&self) -> bool {
        true
    }
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

/// A record as the engine reads it, from its stored state: the state itself for a record written
/// whole, else the state with its body (read by `body`) appended. Either store reads records so.
fn whole_record(
    id: &str,
    state: Stored,
    body: impl FnOnce() -> Result<Option<Stored>, StoreError>,
) -> Result<Stored, StoreError> {
    if !records::stored_record_is_split(&state) {
        return Ok(state);
    }
    match body()? {
        Some(body) => Ok(records::join_record(&state, &body)),
        None => Err(StoreError::Corrupt(format!(
            "record {id}: its body is missing from the store"
        ))),
    }
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
        let open = || {
            sled::Config::new()
                .path(dir)
                .mode(sled::Mode::HighThroughput)
                .cache_capacity(cache_bytes)
                .open()
        };
        let locked = |e: &sled::Error| matches!(e, sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock"));
        let mut opened = open();
        // A store this process closed a moment ago may still be held by sled's background
        // writes finishing: give them a little time before calling the directory taken.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while opened.as_ref().is_err_and(locked) && std::time::Instant::now() < deadline {
            // No owner file: no Baton server claimed the directory (sled alone, perhaps in
            // this process); another server's pid: it is taken, say so at once.
            let ours = match std::fs::read_to_string(dir.join(OWNER_FILE)) {
                Ok(s) => s.split_whitespace().nth(1) == Some(&std::process::id().to_string()),
                Err(_) => true,
            };
            if !ours {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            opened = open();
        }
        let db = opened.map_err(|e| match e {
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
        let store = SledStore {
            db,
            flush_observer: std::sync::OnceLock::new(),
        };
        store.separate_finals()?;
        Ok(store)
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
    /// The first `seq` of the stored block that holds `seq` (`seq` itself if none does): where
    /// a range read from `seq` starts, and where trimming below `seq` stops.
    pub(crate) fn audit_block_start(&self, seq: u64) -> Result<u64, StoreError> {
        let Some(item) = self.db.range(audit_key(0)..=audit_key(seq)).next_back() else {
            return Ok(seq);
        };
        let (k, v) = item?;
        let first = seq_of(&k)?;
        Ok(if first + audit_count(first, &v)? > seq {
            first
        } else {
            seq
        })
    }

    /// A record as the engine reads it: its stored state, with its body appended if it is kept
    /// apart.
    fn with_body(&self, id: &str, state: Stored) -> Result<Stored, StoreError> {
        whole_record(id, state, || Ok(self.db.get(key(BODY, id.as_bytes()))?))
    }

    /// The batch that puts back what `batch` (as `ops`) is about to replace.
    fn undo_of(&self, ops: &[RawOp]) -> Result<sled::Batch, StoreError> {
        let mut undo = sled::Batch::default();
        for (k, _) in ops {
            // Audit entries are always new keys: nothing to read back.
            if k.starts_with(AUDIT) {
                undo.remove(k.as_slice());
                continue;
            }
            match self.db.get(k)? {
                Some(old) => undo.insert(k.as_slice(), old),
                None => undo.remove(k.as_slice()),
            }
        }
        Ok(undo)
    }

    /// Moves the final records of a store written before final records were kept apart (all
    /// under `r/`, no `m/finals`) to `d/`, and writes their count. Done once, at the first open
    /// by a server that keeps them apart; later starts then read only the live records. Values
    /// are moved as they are (JSON stays JSON until the record is written again).
    fn separate_finals(&self) -> Result<(), StoreError> {
        if self.db.contains_key(FINALS_COUNT)? || self.is_mirror()? {
            return Ok(());
        }
        if self.db.scan_prefix(RECORD).next().is_none() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        tracing::info!(
            "this store was written by an older Baton: moving its final records apart from the \
             live ones (once; later starts read only the live records)"
        );
        let mut finals: u64 = 0;
        let mut after: Option<sled::IVec> = None;
        loop {
            let from = match &after {
                Some(k) => std::ops::Bound::Excluded(k.to_vec()),
                None => std::ops::Bound::Included(RECORD.to_vec()),
            };
            let mut b = sled::Batch::default();
            let mut seen = 0;
            for item in self
                .db
                .range::<Vec<u8>, _>((from, std::ops::Bound::Unbounded))
                .take(4096)
            {
                let (k, v) = item?;
                if !k.starts_with(RECORD) {
                    break;
                }
                seen += 1;
                let id = id_of(RECORD, &k)?;
                if is_final(&id, &v)? {
                    b.insert(key(DONE, id.as_bytes()), v);
                    b.remove(k.clone());
                    finals += 1;
                }
                after = Some(k);
            }
            if seen == 0 {
                break;
            }
            self.db.apply_batch(b)?;
        }
        self.db.insert(FINALS_COUNT, &finals.to_be_bytes())?;
        self.flush_timed()?;
        tracing::info!(
            finals,
            ms = started.elapsed().as_millis() as u64,
            "final records moved apart"
        );
        Ok(())
    }
}

impl Store for SledStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let mut snap = Snapshot::default();
        // Only a store not yet separated (a cluster's copy of an older state) has final records
        // under `r/`; they are skipped, and counted if the count is not kept.
        let mut finals_seen = 0;
        for item in self.db.scan_prefix(RECORD) {
            let (k, v) = item?;
            let id = id_of(RECORD, &k)?;
            if is_final(&id, &v)? {
                finals_seen += 1;
            } else {
                let whole = self.with_body(&id, v)?;
                snap.records.push((id, whole));
            }
        }
        snap.records_final = match self.db.get(FINALS_COUNT)? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                StoreError::Corrupt("the count of final records is not 8 bytes".into())
            })?),
            None => finals_seen,
        };
        for item in self.db.scan_prefix(AGENT) {
            let (k, v) = item?;
            snap.agents.push((id_of(AGENT, &k)?, v));
        }
        if let Some(item) = self.db.scan_prefix(AUDIT).next_back() {
            let (k, v) = item?;
            let first = seq_of(&k)?;
            snap.audit_last_seq = first + audit_count(first, &v)? - 1;
        }
        snap.audit_first_seq = self.audit_first_seq()?.unwrap_or(0);
        Ok(snap)
    }

    fn commit(&self, batch: &WriteBatch, flush: bool) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let ops = batch.raw_ops();
        // If the flush fails, the batch is already in sled's tree: put back what it replaced, so
        // that reads (a final record read back) never see a batch nobody was told about.
        let undo = if flush {
            Some(self.undo_of(&ops)?)
        } else {
            None
        };
        let mut b = sled::Batch::default();
        for (k, value) in ops {
            match value {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
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
                                   // `from` may be inside the block that starts before it.
        let start = self.audit_block_start(from)?;
        for item in self.db.range(audit_key(start)..end) {
            if out.len() >= max {
                break;
            }
            let (k, v) = item?;
            for (seq, entry) in audit_entries(seq_of(&k)?, &v)? {
                if seq >= from && out.len() < max {
                    out.push((seq, entry));
                }
            }
        }
        Ok(out)
    }

    fn record(&self, id: &str) -> Result<Option<Stored>, StoreError> {
        // Asked for records that left memory: final ones, under `d/` (or `r/` in a store not
        // yet separated).
        let state = match self.db.get(key(DONE, id.as_bytes()))? {
            Some(v) => v,
            None => match self.db.get(key(RECORD, id.as_bytes()))? {
                Some(v) => v,
                None => return Ok(None),
            },
        };
        self.with_body(id, state).map(Some)
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
        // Whole blocks only: the one that holds `below` stays, with the entries before it.
        let below = self.audit_block_start(below)?;
        let mut removed = 0;
        loop {
            let items: Vec<(sled::IVec, sled::IVec)> = self
                .db
                .range(audit_key(0)..audit_key(below))
                .take(4096)
                .collect::<Result<_, _>>()?;
            if items.is_empty() {
                break;
            }
            let mut keys = Vec::with_capacity(items.len());
            for (k, v) in items {
                removed += audit_count(seq_of(&k)?, &v)? - 1;
                keys.push(k);
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
    bodies: BTreeMap<String, Vec<u8>>,
    agents: BTreeMap<String, Vec<u8>>,
    audit: BTreeMap<u64, Vec<u8>>,
    finals: std::collections::BTreeSet<(u64, String)>,
}

impl MemoryInner {
    fn with_body(&self, id: &str, state: &[u8]) -> Result<Stored, StoreError> {
        whole_record(id, Stored::from(state), || {
            Ok(self.bodies.get(id).map(|b| Stored::from(b.as_slice())))
        })
    }
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
                records.push((k.clone(), inner.with_body(k, v)?));
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
                None => {
                    inner.bodies.remove(id);
                    inner.records.remove(id)
                }
            };
        }
        for (id, body) in &batch.bodies {
            inner.bodies.insert(id.clone(), body.clone());
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
        let inner = self.lock();
        match inner.records.get(id) {
            Some(v) => inner.with_body(id, v).map(Some),
            None => Ok(None),
        }
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
            bodies: vec![],
            agents: vec![("A".into(), Some(b"a".to_vec()))],
            audit: (1..=100)
                .map(|s| (s, format!("e{s}").into_bytes()))
                .collect(),
            finals_add: vec![
                (2000, "R3".into()),
                (1000, "R0".into()),
                (3000, "R9".into()),
            ],
            finals_remove: vec![],
            finals_total: Some(1),
        };
        store.commit(&batch, true).unwrap();
        store
            .commit(
                &WriteBatch {
                    records: vec![("R2".into(), None)],
                    bodies: vec![],
                    agents: vec![("A".into(), None)],
                    audit: (101..=300)
                        .map(|s| (s, format!("e{s}").into_bytes()))
                        .collect(),
                    finals_add: vec![],
                    finals_remove: vec![(1000, "R0".into())],
                    finals_total: Some(1),
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

    /// The batch that takes a refused one back puts every key as it was, whatever the batch did
    /// to it: a new record, a live record made final, a final record written again at the same
    /// or another final time, an agent changed and one added, audit blocks, the index and count.
    #[test]
    fn the_undo_of_a_batch_puts_every_key_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let live = |call: &str| format!(r#"{{"call":"{call}","final_":null}}"#).into_bytes();
        let fin = |call: &str, at: &str| {
            format!(
                r#"{{"call":"{call}","final_":{{"outcome":"processed","by":"A","at":"{at}"}}}}"#
            )
            .into_bytes()
        };
        let (t1, t2) = ("2026-01-01T00:00:01.000Z", "2026-01-01T00:00:02.000Z");
        let ms = |t: &str| crate::messages::parse_rfc3339(t).unwrap();
        store
            .commit(
                &WriteBatch {
                    records: vec![
                        ("LIVE".into(), Some(live("C1"))),
                        ("SAME".into(), Some(fin("C2", t1))),
                        ("MOVED".into(), Some(fin("C3", t1))),
                    ],
                    bodies: vec![],
                    agents: vec![("A".into(), Some(b"a".to_vec()))],
                    audit: vec![(1, b"e1".to_vec())],
                    finals_add: vec![(ms(t1), "SAME".into()), (ms(t1), "MOVED".into())],
                    finals_remove: vec![],
                    finals_total: Some(2),
                },
                true,
            )
            .unwrap();
        let before = store.raw_range(b"", 100).unwrap();
        let batch = WriteBatch {
            records: vec![
                ("LIVE".into(), Some(fin("C1", t2))),
                ("SAME".into(), Some(fin("C2x", t1))),
                ("MOVED".into(), Some(fin("C3", t2))),
                ("NEW".into(), Some(live("C4"))),
            ],
            bodies: vec![("NEW".into(), b"body".to_vec())],
            agents: vec![("A".into(), None), ("B".into(), Some(b"b".to_vec()))],
            audit: vec![(2, b"e2".to_vec()), (3, b"e3".to_vec())],
            finals_add: vec![
                (ms(t2), "LIVE".into()),
                (ms(t1), "SAME".into()),
                (ms(t2), "MOVED".into()),
            ],
            finals_remove: vec![(ms(t1), "MOVED".into())],
            finals_total: Some(3),
        };
        let undo = store.undo_of(&batch.raw_ops()).unwrap();
        store.commit(&batch, false).unwrap();
        assert_ne!(store.raw_range(b"", 100).unwrap(), before);
        store.db.apply_batch(undo).unwrap();
        assert_eq!(store.raw_range(b"", 100).unwrap(), before);
    }

    /// A record's state and its body are kept under their own keys and read back as one; a state
    /// whose body is missing is reported, and deleting a record deletes its body.
    #[test]
    fn a_record_is_read_back_as_its_state_and_its_body() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let state = |flags: u8| vec![format::VERSION_1, flags, 7];
        let body = vec![format::VERSION_1, 9, 9];
        let write = |records, bodies| WriteBatch {
            records,
            bodies,
            finals_total: Some(0),
            ..WriteBatch::default()
        };
        store
            .commit(
                &write(
                    vec![
                        ("L".into(), Some(state(records::RECORD_SPLIT))),
                        ("W".into(), Some(state(0))),
                        ("X".into(), Some(state(records::RECORD_SPLIT))),
                    ],
                    vec![("L".into(), body.clone())],
                ),
                true,
            )
            .unwrap();
        let joined = records::join_record(&state(records::RECORD_SPLIT), &body);
        assert_eq!(store.record("L").unwrap(), Some(joined.clone()));
        assert_eq!(store.record("W").unwrap(), Some(Stored::from(state(0))));
        let missing = store.record("X").unwrap_err().to_string();
        assert!(
            missing.contains("record X: its body is missing"),
            "{missing}"
        );
        assert!(
            store.load().is_err(),
            "a start refuses a record without its body"
        );
        store
            .commit(&write(vec![("X".into(), None)], vec![]), true)
            .unwrap();
        assert_eq!(store.load().unwrap().records[0], ("L".to_string(), joined));
        store
            .commit(&write(vec![("L".into(), None)], vec![]), true)
            .unwrap();
        let keys: Vec<Vec<u8>> = store
            .raw_range(b"", 100)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(!keys.iter().any(|k| k.starts_with(BODY)), "{keys:?}");
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

    /// Each batch's audit entries are one value; ranges start inside blocks, and trimming keeps
    /// the block that holds its bound. Entries written one per key by an older server are read
    /// alongside.
    #[test]
    fn audit_blocks_are_read_by_entry_and_trimmed_whole() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            for seq in 1..=5u64 {
                db.insert(audit_key(seq), format!("{{\"seq\":{seq}}}").as_bytes())
                    .unwrap();
            }
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let entries = |from: u64, to: u64| -> Vec<(u64, Vec<u8>)> {
            (from..=to)
                .map(|s| (s, format!("e{s}").into_bytes()))
                .collect()
        };
        for (from, to) in [(6, 9), (10, 10), (11, 40)] {
            let batch = WriteBatch {
                audit: entries(from, to),
                ..WriteBatch::default()
            };
            assert_eq!(batch.op_count(), 1);
            store.commit(&batch, true).unwrap();
        }
        assert_eq!(store.db.scan_prefix(AUDIT).count(), 5 + 3);
        let snap = store.load().unwrap();
        assert_eq!((snap.audit_first_seq, snap.audit_last_seq), (1, 40));
        let all = store.audit_range(1, 100).unwrap();
        assert_eq!(
            all.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (1..=40).collect::<Vec<_>>()
        );
        assert_eq!(all[4].1, br#"{"seq":5}"#.to_vec());
        assert_eq!(all[20], (21, b"e21".to_vec()));
        let mid = store.audit_range(8, 3).unwrap();
        assert_eq!(
            mid.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        // 20 is inside the block 11..=40: it stays whole, everything before it goes.
        assert_eq!(store.trim_audit(20).unwrap(), 10);
        assert_eq!(store.audit_first_seq().unwrap(), Some(11));
        assert_eq!(store.audit_range(1, 1).unwrap()[0].0, 11);
        // A batch whose entries are not one run (never made by the engine) still keeps them all.
        let gaps = WriteBatch {
            audit: vec![
                (41, b"a".to_vec()),
                (42, b"b".to_vec()),
                (50, b"c".to_vec()),
            ],
            ..WriteBatch::default()
        };
        assert_eq!(gaps.op_count(), 2);
        let long = WriteBatch {
            audit: entries(1000, 1000 + 2 * AUDIT_BLOCK_MAX as u64),
            ..WriteBatch::default()
        };
        assert_eq!(long.op_count(), 3);
        assert_eq!(audit_block(&long.audit).len(), 3);
        store.commit(&gaps, true).unwrap();
        assert_eq!(store.load().unwrap().audit_last_seq, 50);
        assert_eq!(store.audit_range(42, 10).unwrap().len(), 2);
    }

    #[test]
    fn final_records_are_kept_apart_from_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        exercise(&store);
        assert!(store.db.contains_key(b"d/R3").unwrap());
        assert!(!store.db.contains_key(b"r/R3").unwrap());
        // Attached anew: back under `r/`, and gone from `d/`.
        let again = WriteBatch {
            records: vec![("R3".into(), Some(LIVE.to_vec()))],
            finals_total: Some(0),
            ..WriteBatch::default()
        };
        store.commit(&again, true).unwrap();
        assert!(!store.db.contains_key(b"d/R3").unwrap());
        let snap = store.load().unwrap();
        assert_eq!(snap.records.len(), 2);
        assert_eq!(snap.records_final, 0);
    }

    /// A store written before final records were kept apart: every record under `r/`, no count.
    #[test]
    fn an_older_store_has_its_final_records_moved_apart_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            for i in 0..5000 {
                let value = if i % 10 == 0 { LIVE } else { FINAL };
                db.insert(format!("r/R{i:05}"), value).unwrap();
            }
            db.insert(b"a/A", b"{}".as_slice()).unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let snap = store.load().unwrap();
        assert_eq!(snap.records.len(), 500);
        assert!(snap.records.iter().all(|(_, v)| v.as_ref() == LIVE));
        assert_eq!(snap.records_final, 4500);
        assert_eq!(store.db.scan_prefix(b"d/").count(), 4500);
        assert_eq!(store.db.scan_prefix(b"r/").count(), 500);
        assert_eq!(store.record("R00001").unwrap(), Some(Stored::from(FINAL)));
        assert_eq!(store.record("R00010").unwrap(), Some(Stored::from(LIVE)));
        drop(store);
        // Once only: the count is kept from now on.
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap().records_final, 4500);
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
