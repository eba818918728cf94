//! The active node's store: every batch is one etcd transaction, fenced on this node's election,
//! before anything of it is acknowledged; then the same keys go into the node's own sled copy,
//! which serves every read.

use super::keys::Keys;
use crate::store::{
    FlushObserver, RawOp, SledStore, Snapshot, Store, StoreError, Stored, WriteBatch,
};
use etcd_client::{Client, Compare, CompareOp, DeleteOptions, Txn, TxnOp, TxnOpResponse};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::error;

/// What fences this node's writes: its election key and the revision that created it.
#[derive(Debug, Clone)]
pub(crate) struct Fence {
    pub(crate) leader_key: Vec<u8>,
    pub(crate) leader_rev: i64,
}

pub(crate) struct ClusterStore {
    local: Arc<SledStore>,
    etcd: Client,
    rt: tokio::runtime::Handle,
    keys: Keys,
    fence: Fence,
    node_id: String,
    state: Mutex<Written>,
    /// Cancelled when this node learns it may no longer write: its supervisor steps down.
    lost: CancellationToken,
    timeout: Duration,
    max_ops: usize,
    observer: OnceLock<FlushObserver>,
}

/// What this node has written to etcd.
struct Written {
    /// The revision of the head key as this node last wrote it: a transaction also requires it
    /// unchanged, so that a write etcd did not confirm, and that landed after all, is noticed.
    head_rev: i64,
    /// Audit entries of reads handed over without a flush: written with the next flush.
    pending: Vec<RawOp>,
}

impl ClusterStore {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        local: Arc<SledStore>,
        etcd: Client,
        keys: Keys,
        fence: Fence,
        head_rev: i64,
        node_id: String,
        lost: CancellationToken,
        timeout: Duration,
        max_ops: usize,
    ) -> ClusterStore {
        ClusterStore {
            local,
            etcd,
            rt: tokio::runtime::Handle::current(),
            keys,
            fence,
            node_id,
            state: Mutex::new(Written {
                head_rev,
                pending: Vec::new(),
            }),
            lost,
            timeout,
            max_ops,
            observer: OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Written> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One batch, atomically: its keys (and `extra`, already in etcd's terms) in one fenced
    /// transaction, then into the local copy. A batch too big for one transaction is committed
    /// whole as the fold key (still one transaction, so still atomic), then folded into the state
    /// keys ([`ClusterStore::fold`]).
    fn write(
        &self,
        written: &mut Written,
        ops: &[RawOp],
        extra: Vec<TxnOp>,
    ) -> Result<i64, StoreError> {
        if ops.len() + extra.len() < self.max_ops {
            let mut txn_ops = self.state_ops(ops);
            txn_ops.extend(extra);
            let revision = self.txn(written, txn_ops)?;
            self.apply_locally(ops, revision)?;
            return Ok(revision);
        }
        let fold = TxnOp::put(self.keys.fold(), super::fold::encode(ops), None);
        let revision = self.txn(written, vec![fold])?;
        self.apply_locally(ops, revision)?;
        if let Err(e) = self.fold(written, ops) {
            // Committed, but not yet in the state keys: the next active node folds it.
            error!("STEPPING DOWN: a big batch is committed but could not be folded: {e}");
            self.lost.cancel();
            return Err(e);
        }
        tracing::info!(
            keys = ops.len(),
            max_txn_ops = self.max_ops,
            "a batch too big for one etcd transaction was committed whole and folded"
        );
        Ok(revision)
    }

    /// Writes the keys of a batch committed as the fold key into the state keys, in transactions
    /// that fit, the last one deleting the fold key.
    fn fold(&self, written: &mut Written, ops: &[RawOp]) -> Result<(), StoreError> {
        let per_txn = self.max_ops.saturating_sub(2).max(1);
        let chunks: Vec<&[RawOp]> = ops.chunks(per_txn).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut txn_ops = self.state_ops(chunk);
            if i + 1 == chunks.len() {
                txn_ops.push(TxnOp::delete(self.keys.fold(), None));
            }
            let revision = self.txn(written, txn_ops)?;
            self.apply_locally(&[], revision)?;
        }
        Ok(())
    }

    /// Folds a batch that the node active before this one committed but did not fold (it died
    /// in between); called once, before this node serves.
    pub(crate) fn finish_fold(&self) -> Result<(), StoreError> {
        let mut client = self.etcd.clone();
        let got = self
            .rt
            .block_on(async {
                tokio::time::timeout(self.timeout, client.get(self.keys.fold(), None)).await
            })
            .map_err(|_| StoreError::Cluster("etcd did not answer in time".into()))?
            .map_err(|e| StoreError::Cluster(format!("cannot read the fold key: {e}")))?;
        let Some(kv) = got.kvs().first() else {
            return Ok(());
        };
        let ops = super::fold::decode(kv.value()).map_err(StoreError::Corrupt)?;
        tracing::info!(
            keys = ops.len(),
            "folding a big batch the previous active node left"
        );
        let mut written = self.lock();
        self.fold(&mut written, &ops)
    }

    fn state_ops(&self, ops: &[RawOp]) -> Vec<TxnOp> {
        ops.iter()
            .map(|(k, v)| match v {
                Some(v) => TxnOp::put(self.keys.state(k), v.clone(), None),
                None => TxnOp::delete(self.keys.state(k), None),
            })
            .collect()
    }

    fn apply_locally(&self, ops: &[RawOp], revision: i64) -> Result<(), StoreError> {
        if let Err(e) = self.local.apply_mirror(ops, revision) {
            // etcd has the batch and this copy does not: only a reload can make them agree.
            error!("STEPPING DOWN: the local copy refused a batch etcd committed: {e}");
            self.lost.cancel();
            return Err(e);
        }
        Ok(())
    }

    /// One transaction of `txn_ops` and the head key, only if this node still holds the election
    /// and nobody wrote since its last write. Returns its revision.
    fn txn(&self, written: &mut Written, mut txn_ops: Vec<TxnOp>) -> Result<i64, StoreError> {
        if self.lost.is_cancelled() {
            return Err(StoreError::Cluster(
                "this node is no longer the active one; nothing was written".into(),
            ));
        }
        let head = serde_json::json!({ "node": self.node_id, "at_ms": crate::server::now_ms() });
        txn_ops.push(TxnOp::put(self.keys.head(), head.to_string(), None));
        let txn = Txn::new()
            .when(vec![
                Compare::create_revision(
                    self.fence.leader_key.clone(),
                    CompareOp::Equal,
                    self.fence.leader_rev,
                ),
                Compare::mod_revision(self.keys.head(), CompareOp::Equal, written.head_rev),
            ])
            .and_then(txn_ops)
            .or_else(vec![
                TxnOp::get(self.fence.leader_key.clone(), None),
                TxnOp::get(self.keys.head(), None),
            ]);
        let mut client = self.etcd.clone();
        let started = Instant::now();
        let result = self
            .rt
            .block_on(async { tokio::time::timeout(self.timeout, client.txn(txn)).await });
        if let Some(observe) = self.observer.get() {
            observe(started.elapsed());
        }
        let response = match result {
            Err(_) => {
                return Err(StoreError::Cluster(format!(
                    "etcd did not confirm the write within {} ms (commit_timeout_ms); it may still be applied: read the record back before trying again",
                    self.timeout.as_millis()
                )))
            }
            Ok(Err(e)) => {
                return Err(StoreError::Cluster(format!(
                    "etcd did not commit the write: {e}"
                )))
            }
            Ok(Ok(r)) => r,
        };
        if !response.succeeded() {
            let mut leader_now = None;
            let mut head_now = None;
            for (i, r) in response.op_responses().into_iter().enumerate() {
                if let TxnOpResponse::Get(g) = r {
                    let kv = g
                        .kvs()
                        .first()
                        .map(|kv| (kv.create_revision(), kv.mod_revision()));
                    if i == 0 {
                        leader_now = kv;
                    } else {
                        head_now = kv;
                    }
                }
            }
            let why = match leader_now {
                Some((rev, _)) if rev == self.fence.leader_rev => format!(
                    "the cluster's state moved on without this node (head at revision {}, expected {}): an earlier write etcd did not confirm landed after all",
                    head_now.map_or(0, |(_, m)| m),
                    written.head_rev
                ),
                _ => "this node's election lease ended and another node may be active".into(),
            };
            error!("STEPPING DOWN: {why}");
            self.lost.cancel();
            return Err(StoreError::Cluster(format!(
                "this node is no longer the active one ({why}); nothing was written"
            )));
        }
        let revision = response.header().map_or(0, |h| h.revision());
        written.head_rev = revision;
        Ok(revision)
    }

    /// Writes the pending audit entries of reads, in transactions of at most `max_ops` keys (they
    /// are independent entries in `seq` order: a prefix of them landing is fine).
    fn write_pending(&self, written: &mut Written) -> Result<(), StoreError> {
        while !written.pending.is_empty() {
            let n = written
                .pending
                .len()
                .min(self.max_ops.saturating_sub(1).max(1));
            let chunk: Vec<RawOp> = written.pending[..n].to_vec();
            self.write(written, &chunk, Vec::new())?;
            written.pending.drain(..n);
        }
        Ok(())
    }
}

impl Store for ClusterStore {
    /// A commit waits on etcd through the server's runtime: it must not run inside one.
    fn commits_in_place(&self) -> bool {
        false
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        self.local.load()
    }

    fn commit(&self, batch: &WriteBatch, flush: bool) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut written = self.lock();
        if !flush {
            written.pending.extend(batch.raw_ops());
            return Ok(());
        }
        let ops = batch.raw_ops();
        if written.pending.len() + ops.len() + 1 > self.max_ops {
            self.write_pending(&mut written)?;
        }
        let mut all = std::mem::take(&mut written.pending);
        let pending = all.len();
        all.extend(ops);
        match self.write(&mut written, &all, Vec::new()) {
            Ok(_) => Ok(()),
            Err(e) => {
                all.truncate(pending);
                written.pending = all;
                Err(e)
            }
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut written = self.lock();
        self.write_pending(&mut written)
    }

    fn observe_flushes(&self, observer: FlushObserver) {
        let _ = self.observer.set(observer);
    }

    fn audit_range(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.local.audit_range(from, max)
    }

    fn audit_first_seq(&self) -> Result<Option<u64>, StoreError> {
        self.local.audit_first_seq()
    }

    fn record(&self, id: &str) -> Result<Option<Stored>, StoreError> {
        self.local.record(id)
    }

    fn trim_audit(&self, below: u64) -> Result<u64, StoreError> {
        // Whole blocks only, as the local copy trims them.
        let below = self.local.audit_block_start(below)?;
        let first = self.local.audit_first_seq()?;
        if first.is_none_or(|f| f >= below) {
            return Ok(0);
        }
        let mut written = self.lock();
        let (from, to) = (
            self.keys.state(&crate::store::audit_key(0)),
            self.keys.state(&crate::store::audit_key(below)),
        );
        let range = TxnOp::delete(from, Some(DeleteOptions::new().with_range(to)));
        self.write(&mut written, &[], vec![range])?;
        self.local.trim_audit(below)
    }

    fn finals_before(&self, before_ms: u64, max: usize) -> Result<Vec<(u64, String)>, StoreError> {
        self.local.finals_before(before_ms, max)
    }
}
