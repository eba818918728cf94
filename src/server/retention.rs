//! Retention: trims the audit log to `audit_retention_entries` in the background, and deletes the
//! records that have been final for longer than `final_record_retention_ms`.
//!
//! Never decides which record may go: the engine spares a record attached again since it became
//! final (`Engine::purge_final`); audit entries are trimmed only once durable.

use super::commit::{commit, BatchInfo, Durability};
use super::metrics::Metrics;
use super::{now_ms, Shared};
use crate::engine::Engine;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

/// How often final-record retention looks for records to delete, and how many it deletes at
/// most each time (10,000 a second is far beyond any centre's rate of finishing records).
pub(super) const PURGE_EVERY: Duration = Duration::from_secs(1);
const PURGE_CHUNK: usize = 10_000;

/// Keeps the audit log within `keep` entries, trimming the oldest in the background as new ones
/// become durable (in steps of about 1% of `keep`, so trimming is not a write per entry).
pub(super) async fn retention_loop(shared: Shared, keep: u64, stop: CancellationToken) {
    let mut durable = shared.announcer.durable.subscribe();
    let store = shared.store.clone();
    let mut first = tokio::task::spawn_blocking(move || store.audit_first_seq())
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .unwrap_or(1);
    let slack = (keep / 100).max(1);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = durable.changed() => if changed.is_err() { return },
        }
        let last = *durable.borrow_and_update();
        if last < first || last - first + 1 < keep + slack {
            continue;
        }
        let below = last - keep + 1;
        let store = shared.store.clone();
        match tokio::task::spawn_blocking(move || store.trim_audit(below)).await {
            Ok(Ok(n)) => {
                first = below;
                debug!(removed = n, below, "audit retention trimmed old entries");
            }
            Ok(Err(e)) => error!("audit retention failed: {e}"),
            Err(e) => error!("audit retention task failed: {e}"),
        }
    }
}

/// Final-record retention: deletes, in one batch, up to `PURGE_CHUNK` of the records that became
/// final more than `retention_ms` ago (the store's index of finals gives them oldest first).
pub(super) async fn purge_old_finals(
    engine: &mut Engine,
    store: &Arc<dyn Store>,
    durable: &mut Durability,
    retention_ms: u64,
    metrics: &Metrics,
) {
    let now = now_ms();
    let expired = match store.finals_before(now.saturating_sub(retention_ms), PURGE_CHUNK) {
        Ok(expired) => expired,
        Err(e) => {
            error!("STORAGE FAILURE: cannot read the index of final records: {e}");
            return;
        }
    };
    if expired.is_empty() {
        return;
    }
    engine.begin();
    for (at_ms, id) in &expired {
        // A record not in memory is final if it is stored at all; its final time tells whether
        // the index entry is still its own (it may have been attached and finished again).
        let stored = if engine.is_in_memory(id) {
            None
        } else {
            match store.record(id) {
                Ok(Some(bytes)) => {
                    crate::store::records::stored_record_final_ms(&bytes).unwrap_or(None)
                }
                Ok(None) => None,
                Err(e) => {
                    error!("STORAGE FAILURE: cannot read record {id} for retention: {e}");
                    engine.rollback();
                    return;
                }
            }
        };
        engine.purge_final(*at_ms, id, stored);
    }
    let mut out = Vec::new();
    commit(
        engine,
        store,
        durable,
        &mut out,
        now,
        BatchInfo::default(),
        metrics,
    )
    .await;
    debug!(examined = expired.len(), "final-record retention ran");
}
