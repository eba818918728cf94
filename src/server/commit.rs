//! The commit pipeline of an engine batch: group commit (one write and one flush before anything
//! the batch produced is sent), the lazy flush of the audit entries of reads, refusal and rollback
//! when the store fails, and the read-back of final records that left memory.
//!
//! Never decides access (the engine does) and never sends anything: it only leaves in the batch's
//! outputs what may be sent.

use super::audit_feed::{log_audit, Announcer};
use super::metrics::Metrics;
use crate::engine::{ConnId, Engine, Input, Output};
use crate::messages::*;
use crate::store::{Store, StoreError, WriteBatch};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info};

/// Audit entries of reads and refusals (no state change) are written and flushed together at
/// most this much later, instead of making the reply wait for the disk.
pub(super) const LAZY_FLUSH: Duration = Duration::from_millis(20);

/// What is on disk: the highest audit `seq` written, and since when written entries wait for a
/// flush (only ever entries of reads and refusals, which acknowledge no change).
pub(super) struct Durability {
    pub(super) announcer: Arc<Announcer>,
    /// Highest audit `seq` handed to the store.
    pub(super) written: u64,
    /// Deferred audit entries kept at most (`max_deferred_audit_entries`).
    pub(super) max_deferred: usize,
    /// Audit entries of reads and refusals not yet handed to the store: they are written together
    /// (one store batch per `LAZY_FLUSH`, not one per engine batch) or go first into the next
    /// batch that changes state.
    pub(super) deferred: Vec<(u64, Vec<u8>)>,
    pub(super) lazy_since: Option<tokio::time::Instant>,
    /// The lazy write under way, off the engine's thread (sled may take milliseconds to take a
    /// batch while it writes out the last one, and reads must not wait for that), with how many
    /// entries it carries. At most one at a time, and a batch that changes state waits for it
    /// ([`Durability::settle_lazy`]), so that the store takes the entries in `seq` order.
    pub(super) lazy_inflight: Option<(tokio::task::JoinHandle<LazyOutcome>, usize)>,
    /// The last write or flush failed: until one succeeds again, reads are written through
    /// (and refused with `unavailable` if that fails too) instead of deferred.
    pub(super) failing: Arc<AtomicBool>,
    /// When a failing store was last probed ([`Durability::probe_if_failing`]).
    pub(super) last_probe: Option<tokio::time::Instant>,
}

/// How a lazy write ended: the last `seq` it made durable (`None`: it only flushed), or the
/// error and the entries it could not write, to be tried again.
pub(super) type LazyOutcome = Result<Option<u64>, (String, Vec<(u64, Vec<u8>)>)>;

impl Durability {
    /// Hands the deferred entries to the store and flushes, on a blocking thread: the engine goes
    /// on while the disk works, and learns how it went from [`Durability::lazy_done`]. Does
    /// nothing while the previous lazy write is under way (the entries wait for the next one).
    pub(super) fn flush_lazy(&mut self, store: &Arc<dyn Store>) {
        if self.lazy_inflight.is_some() {
            return;
        }
        self.lazy_since = None;
        let audit = std::mem::take(&mut self.deferred);
        let carried = audit.len();
        let s = store.clone();
        let job = tokio::task::spawn_blocking(move || {
            let last = audit.last().map(|(seq, _)| *seq);
            let batch = WriteBatch {
                audit,
                ..WriteBatch::default()
            };
            if let Err(e) = s.commit(&batch, false) {
                return Err((
                    format!("writing audit entries of reads failed: {e}"),
                    batch.audit,
                ));
            }
            match s.flush() {
                Ok(()) => Ok(last),
                // Written but not flushed: the next flush that succeeds makes them durable.
                Err(e) => Err((format!("flushing the store failed: {e}"), Vec::new())),
            }
        });
        self.lazy_inflight = Some((job, carried));
    }

    /// Entries of reads waiting for the disk, deferred or being written.
    pub(super) fn waiting(&self) -> usize {
        self.deferred.len() + self.lazy_inflight.as_ref().map_or(0, |(_, n)| *n)
    }

    /// Takes the outcome of the lazy write that just ended (see the engine loop).
    pub(super) fn lazy_done(&mut self, outcome: Result<LazyOutcome, tokio::task::JoinError>) {
        self.lazy_inflight = None;
        let outcome =
            outcome.unwrap_or_else(|e| Err((format!("store task failed: {e}"), Vec::new())));
        match outcome {
            Ok(last) => {
                if let Some(seq) = last {
                    self.written = self.written.max(seq);
                }
                self.announcer.durable_up_to(self.written);
                if self.failing.swap(false, Ordering::Relaxed) {
                    info!("storage works again");
                }
            }
            Err((why, mut unwritten)) => {
                self.failing.store(true, Ordering::Relaxed);
                if unwritten.is_empty() {
                    error!("STORAGE FAILURE: {why}");
                } else {
                    error!("STORAGE FAILURE: {why}, will retry");
                    // Older than anything deferred since: they go first.
                    unwritten.append(&mut self.deferred);
                    self.deferred = unwritten;
                }
                if !self.deferred.is_empty() && self.lazy_since.is_none() {
                    self.lazy_since = Some(tokio::time::Instant::now());
                }
            }
        }
    }

    /// Waits for the lazy write under way, if any, and takes its outcome: a batch that writes
    /// goes to the store only after it, so that entries reach the store in `seq` order and a
    /// refused lazy write's entries can go first into the batch.
    pub(super) async fn settle_lazy(&mut self) {
        if let Some((job, _)) = self.lazy_inflight.as_mut() {
            let outcome = job.await;
            self.lazy_done(outcome);
        }
    }

    /// While the store is failing and nothing else writes, tries a flush now and then (see
    /// [`PROBE_EVERY`]), so that readiness comes back once the disk does, without waiting for a
    /// client to write.
    pub(super) fn probe_if_failing(&mut self, store: &Arc<dyn Store>) {
        if !self.failing.load(Ordering::Relaxed)
            || self.lazy_since.is_some()
            || self.last_probe.is_some_and(|t| t.elapsed() < PROBE_EVERY)
        {
            return;
        }
        self.last_probe = Some(tokio::time::Instant::now());
        self.flush_lazy(store);
    }
}

/// How often a failing store is probed with a flush while nothing else is written.
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What the shell must know of a batch to refuse it: the requests to answer `unavailable`, and
/// the facts (connections opened or closed, shutdown) to apply again after the rollback.
#[derive(Default)]
pub(super) struct BatchInfo {
    requests: Vec<(ConnId, Option<u64>)>,
    facts: Vec<Input>,
}

impl BatchInfo {
    pub(super) fn note(&mut self, input: &Input) {
        match input {
            Input::Request { conn, r#ref, .. } => self.requests.push((*conn, *r#ref)),
            fact if Engine::is_fact(fact) => self.facts.push(fact.clone()),
            _ => {}
        }
    }
}

/// Reads a final record that left the engine's memory back from the store (nothing to do if the
/// store does not have it: the request names a record that never existed).
pub(super) fn read_back(
    engine: &mut Engine,
    store: &Arc<dyn Store>,
    id: &str,
) -> Result<(), String> {
    match store.record(id) {
        Ok(Some(bytes)) => engine.admit(id, &bytes),
        Ok(None) => Ok(()),
        Err(e) => Err(format!("cannot read record {id} back from the store: {e}")),
    }
}

/// Writes what the engine changed in this batch and flushes it, then keeps the batch
/// ([`Engine::commit`]). If the store fails, nothing of the batch is acknowledged: every request
/// of it gets `unavailable`, nothing else it produced is sent, the engine goes back to exactly
/// where it was before the batch ([`Engine::rollback`]: records, agents, calls, parties,
/// connection bindings, deadlines, pending logouts), and the connections that opened or closed
/// meanwhile are applied again. A refused request changed nothing.
pub(super) async fn commit(
    engine: &mut Engine,
    store: &Arc<dyn Store>,
    durable: &mut Durability,
    out: &mut Vec<Output>,
    now: u64,
    info: BatchInfo,
    metrics: &Metrics,
) -> bool {
    let mut batch = engine.take_writes();
    if batch.is_empty() {
        engine.commit();
        return true;
    }
    // The batch's audit entries go to the log (at debug level) and, once flushed, to the tails
    // that follow; the rest of the outputs are replies and pushes.
    let mut entries: Vec<AuditEntry> = Vec::with_capacity(batch.audit.len());
    // A batch that changed records or agents acknowledges changes: it is written and flushed
    // before anything is sent. One that only adds audit entries (reads, refusals) acknowledges
    // nothing: its entries wait to be written with others and flushed soon after, so reads
    // never wait for the disk (unless the disk is known to be failing).
    let read_only = batch.records.is_empty()
        && batch.agents.is_empty()
        && batch.finals_add.is_empty()
        && batch.finals_remove.is_empty();
    if read_only && !durable.failing.load(Ordering::Relaxed) {
        if durable.waiting() + batch.audit.len() > durable.max_deferred {
            // The disk has not taken the entries of earlier reads: answering more reads would
            // only grow memory. Refuse them until it catches up.
            let why = format!(
                "{} audit entries of reads are waiting for the disk (max_deferred_audit_entries)",
                durable.waiting()
            );
            error!("STORAGE FAILURE: {why}; refusing this batch's requests with `unavailable`");
            metrics.commit_failed();
            refuse(
                engine,
                out,
                now,
                info,
                &format!("storage failed, nothing was changed: {why}"),
            );
            return false;
        }
        engine.commit();
        take_audit(out, &mut entries, metrics);
        durable.announcer.written(entries);
        durable.deferred.append(&mut batch.audit);
        match durable.lazy_since {
            None => durable.lazy_since = Some(tokio::time::Instant::now()),
            Some(t) if t.elapsed() >= LAZY_FLUSH => durable.flush_lazy(store),
            Some(_) => {}
        }
        return true;
    }
    durable.settle_lazy().await;
    let deferred = durable.deferred.len();
    if deferred > 0 {
        let mut audit = std::mem::take(&mut durable.deferred);
        audit.append(&mut batch.audit);
        batch.audit = audit;
    }
    let last_seq = batch.audit.last().map(|(seq, _)| *seq);
    let started = std::time::Instant::now();
    // The engine has a thread of its own: it waits for the disk in place, unless the store must
    // be driven from a blocking thread.
    let (result, batch) = if store.commits_in_place() {
        (store.commit(&batch, true), batch)
    } else {
        let writer = store.clone();
        tokio::task::spawn_blocking(move || (writer.commit(&batch, true), batch))
            .await
            .unwrap_or_else(|e| {
                (
                    Err(StoreError::Injected(format!("store task failed: {e}"))),
                    WriteBatch::default(),
                )
            })
    };
    metrics.commit(info.requests.len(), started.elapsed());
    match result {
        Ok(()) => {
            engine.commit();
            if let Some(seq) = last_seq {
                durable.written = seq;
            }
            take_audit(out, &mut entries, metrics);
            durable.announcer.written(entries);
            durable.announcer.durable_up_to(durable.written);
            durable.lazy_since = None;
            if durable.failing.swap(false, Ordering::Relaxed) {
                info!("storage works again");
            }
            true
        }
        Err(e) => {
            error!(
                "STORAGE FAILURE: {e}; refusing this batch's requests with `unavailable` and returning to the state before it"
            );
            durable.failing.store(true, Ordering::Relaxed);
            metrics.commit_failed();
            // Entries of earlier reads went out with this batch: they stay deferred (the
            // engine's audit `seq` only goes back to where this batch started, past them).
            let mut batch = batch;
            batch.audit.truncate(deferred);
            durable.deferred = batch.audit;
            if !durable.deferred.is_empty() && durable.lazy_since.is_none() {
                durable.lazy_since = Some(tokio::time::Instant::now());
            }
            // A cluster's etcd may still commit a write it did not confirm in time: the reply
            // says the change was not acknowledged, not that it was not made.
            let answer = match &e {
                StoreError::Cluster(_) => format!("not acknowledged: {e}"),
                _ => format!("storage failed, nothing was changed: {e}"),
            };
            refuse(engine, out, now, info, &answer);
            false
        }
    }
}

/// Takes the batch back: its requests are answered `unavailable`, nothing else it produced is
/// sent, and the connection changes in it are applied again (their outputs, a `Monitor` to a new
/// switch link or the shutdown's goodbyes, are sent).
fn refuse(engine: &mut Engine, out: &mut Vec<Output>, now: u64, info: BatchInfo, answer: &str) {
    engine.rollback();
    out.clear();
    let mut seen = std::collections::HashSet::new();
    for (conn, r#ref) in info.requests {
        // A request sent without `ref` gets no answer (there is nothing to match it by).
        let Some(r#ref) = r#ref else {
            continue;
        };
        if !seen.insert((conn, r#ref)) {
            continue;
        }
        out.push(Output::Send {
            conn,
            env: Envelope::reply(
                Some(r#ref),
                ServerMsg::error(ErrorCode::Unavailable, answer),
            ),
        });
    }
    for fact in info.facts {
        engine.reapply_fact(now, fact, out);
    }
}

/// Moves the audit entries out of `out` into `entries`, logging each at debug level.
fn take_audit(out: &mut Vec<Output>, entries: &mut Vec<AuditEntry>, metrics: &Metrics) {
    for o in out.extract_if(.., |o| matches!(o, Output::Audit(_))) {
        if let Output::Audit(entry) = o {
            log_audit(&entry);
            metrics.audit_entry(&entry);
            entries.push(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::engine::EngineConfig;
    use crate::store::MemoryStore;
    use tokio::sync::watch;

    fn get(conn: ConnId, r#ref: u64, record: &str) -> Input {
        Input::Request {
            conn,
            r#ref: Some(r#ref),
            request: Request::GetRecord(RecordRef {
                record: record.into(),
            }),
        }
    }

    /// Reads' audit entries wait in memory for the disk; past `max_deferred_audit_entries` more
    /// reads are refused with `unavailable` (and leave no entry) instead of growing memory.
    #[tokio::test(start_paused = true)]
    async fn reads_are_refused_once_the_deferred_audit_entries_reach_their_bound() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let config = Config::default();
        let mut engine = Engine::new(EngineConfig::from_config(&config), [3; 32], 1_000);
        let desk: ConnId = 1;
        let mut out = Vec::new();
        engine.begin();
        engine.handle(
            1_000,
            Input::Connected {
                conn: desk,
                role: Role::Desktop,
            },
            &mut out,
        );
        let login = Request::Login(Login::new("A", "7001"));
        engine.handle(
            1_000,
            Input::Request {
                conn: desk,
                r#ref: Some(1),
                request: login,
            },
            &mut out,
        );
        let _ = engine.take_writes();
        engine.commit();
        let mut durable = Durability {
            last_probe: None,
            announcer: Arc::new(Announcer::new(watch::channel(0).0)),
            written: 0,
            deferred: Vec::new(),
            max_deferred: 3,
            lazy_since: None,
            lazy_inflight: None,
            failing: Arc::new(AtomicBool::new(false)),
        };
        let batch = |engine: &mut Engine, refs: std::ops::Range<u64>| {
            let mut info = BatchInfo::default();
            engine.begin();
            let mut out = Vec::new();
            for r in refs {
                let input = get(desk, r, "R-unknown");
                info.note(&input);
                engine.handle(1_000, input, &mut out);
            }
            (out, info)
        };
        // Two reads: answered, their entries deferred.
        let (mut out, info) = batch(&mut engine, 10..12);
        commit(
            &mut engine,
            &store,
            &mut durable,
            &mut out,
            1_000,
            info,
            &Metrics::new(0),
        )
        .await;
        let codes = |out: &[Output]| -> Vec<ErrorCode> {
            out.iter()
                .filter_map(|o| match o {
                    Output::Send { env, .. } => match &env.msg {
                        ServerMsg::Error { code, .. } => Some(*code),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        };
        assert_eq!(codes(&out), vec![ErrorCode::NoSuchRecord; 2]);
        assert_eq!(durable.deferred.len(), 2);
        let seq = engine.counts().audit_last_seq;
        // Two more would make four waiting, over the bound of three: refused, nothing kept.
        let (mut out, info) = batch(&mut engine, 12..14);
        commit(
            &mut engine,
            &store,
            &mut durable,
            &mut out,
            1_000,
            info,
            &Metrics::new(0),
        )
        .await;
        assert_eq!(codes(&out), vec![ErrorCode::Unavailable; 2]);
        assert_eq!(durable.deferred.len(), 2);
        assert_eq!(engine.counts().audit_last_seq, seq);
        // Once the disk has taken the waiting entries, reads are answered again.
        durable.flush_lazy(&store);
        let (mut out, info) = batch(&mut engine, 14..15);
        commit(
            &mut engine,
            &store,
            &mut durable,
            &mut out,
            1_000,
            info,
            &Metrics::new(0),
        )
        .await;
        assert_eq!(codes(&out), vec![ErrorCode::NoSuchRecord]);
    }
}
