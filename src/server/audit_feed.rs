//! The audit feed: the [`Announcer`], which tells whoever follows the audit log which entries are
//! on disk, and the `AuditTail` request, served from the store by cursor and then from the live
//! feed.
//!
//! Never blocks the engine task (a tail that falls behind reads the store, never the engine) and
//! never takes the room its connection's answers need.

use super::outbox::Outbox;
use super::Shared;
use crate::messages::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

/// Audit entries an audit tail reads from the store at a time.
const TAIL_CHUNK: usize = 256;
/// Batches of newly durable audit entries kept for following tails that fell behind; one that
/// falls further behind reads what it missed from the store.
const TAIL_LIVE_BATCHES: usize = 1024;

/// Announces audit entries once they are on disk, in `seq` order: the highest durable `seq` (a
/// watch) and the entries themselves (a broadcast that following tails read, so that they need
/// not read back from the store what the engine just wrote). Entries wait here from the moment
/// they are written until a flush covers them.
pub(super) struct Announcer {
    written: std::sync::Mutex<VecDeque<Arc<AuditEntry>>>,
    pub(super) durable: watch::Sender<u64>,
    pub(super) live: broadcast::Sender<Arc<[Arc<AuditEntry>]>>,
}

impl Announcer {
    pub(super) fn new(durable: watch::Sender<u64>) -> Announcer {
        Announcer {
            written: std::sync::Mutex::new(VecDeque::new()),
            durable,
            live: broadcast::channel(TAIL_LIVE_BATCHES).0,
        }
    }

    /// Entries handed to the store (or deferred), not yet known to be flushed. Kept whether or not
    /// a tail follows now: a tail that starts after an entry was written and before it is flushed
    /// (a read's entry waits up to 20 ms) reads the store only up to what was durable when it
    /// started, and so learns of that entry from the feed alone.
    pub(super) fn written(&self, entries: impl IntoIterator<Item = AuditEntry>) {
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        w.extend(entries.into_iter().map(Arc::new));
    }

    /// Everything up to `seq` is on disk (never moving backwards). The watch moves before the
    /// entries are broadcast, so a tail that receives an entry finds the watch at or past it.
    pub(super) fn durable_up_to(&self, seq: u64) {
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        self.durable.send_if_modified(|v| {
            let newer = seq > *v;
            if newer {
                *v = seq;
            }
            newer
        });
        let n = w.iter().take_while(|e| e.seq <= seq).count();
        if n > 0 && self.live.receiver_count() == 0 {
            // Nobody following: the entries are on disk for later readers.
            w.drain(..n);
        } else if n > 0 {
            let batch: Arc<[Arc<AuditEntry>]> = w.drain(..n).collect();
            let _ = self.live.send(batch);
        }
    }
}

/// Where an audit tail's frames go: its connection's outbox, with the tail's `ref`.
pub(super) struct TailOut {
    pub(super) outbox: Arc<Outbox>,
    pub(super) r#ref: Option<u64>,
    pub(super) cancel: CancellationToken,
}

impl TailOut {
    /// Queues one frame once the connection's queue has room, waiting as long as its client
    /// pauses. False once the connection is closing: the tail ends.
    async fn send(&self, msg: ServerMsg) -> bool {
        let frame = Envelope::reply(self.r#ref, msg).to_bytes();
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            pushed = self.outbox.push_when_room(frame) => pushed.is_ok(),
        }
    }
}

/// Serves one `AuditTail`: reads the store by cursor, so a reader that falls behind costs the
/// engine nothing; with `follow`, waits for newly durable entries and sends them as they come.
/// It queues a frame only while its connection's queue has room and otherwise waits where it is,
/// however long its client pauses: a tail never takes the room the connection's answers need, so
/// it cannot get its connection dropped. `slot` is its place among the connection's tails.
pub(super) async fn audit_tail(
    shared: Shared,
    out: TailOut,
    t: AuditTail,
    slot: OwnedSemaphorePermit,
) {
    // Subscribed before the durable seq is read: every entry past it arrives on the live feed.
    let mut live = shared.announcer.live.subscribe();
    let mut durable = shared.announcer.durable.subscribe();
    let start_last = *durable.borrow_and_update();
    let mut cursor = t.from_seq.unwrap_or(start_last + 1).max(1);
    let wanted = |entry: &AuditEntry| {
        t.record
            .as_ref()
            .is_none_or(|r| entry.record.as_ref() == Some(r))
            && t.agent
                .as_ref()
                .is_none_or(|a| entry.agent.as_ref() == Some(a))
    };
    let mut last = start_last;
    // For `baton_audit_tail_lag_entries`: the last seq this tail has been through.
    let position = t.follow.then(|| {
        let p = Arc::new(AtomicU64::new(cursor - 1));
        shared.metrics.follow_tail(&p);
        p
    });
    let moved = |cursor: u64| {
        if let Some(p) = &position {
            p.store(cursor - 1, Ordering::Relaxed);
        }
    };
    loop {
        moved(cursor);
        while cursor <= last {
            let store = shared.store.clone();
            let from = cursor;
            let chunk = match tokio::task::spawn_blocking(move || {
                store.audit_range(from, TAIL_CHUNK)
            })
            .await
            {
                Ok(Ok(chunk)) => chunk,
                Ok(Err(e)) => {
                    error!("audit tail cannot read the store: {e}");
                    drop(slot);
                    out.send(ServerMsg::error(
                        ErrorCode::Unavailable,
                        format!("cannot read the audit log: {e}"),
                    ))
                    .await;
                    return;
                }
                Err(_) => return,
            };
            if chunk.is_empty() {
                // Everything from the cursor on was trimmed (or was never written).
                break;
            }
            for (seq, bytes) in chunk {
                if seq > last {
                    // Written but not yet durable: left for a later round. If the cursor had not
                    // reached `last`, the entries in between were trimmed meanwhile.
                    if cursor <= last {
                        if !out
                            .send(ServerMsg::AuditTrimmed {
                                from_seq: cursor,
                                to_seq: last,
                            })
                            .await
                        {
                            return;
                        }
                        cursor = last + 1;
                    }
                    break;
                }
                if seq > cursor
                    && !out
                        .send(ServerMsg::AuditTrimmed {
                            from_seq: cursor,
                            to_seq: seq - 1,
                        })
                        .await
                {
                    return;
                }
                cursor = seq + 1;
                let entry: AuditEntry = match crate::store::format::decode(&bytes) {
                    Ok(e) => e,
                    Err(e) => {
                        error!(seq, "audit entry cannot be read back: {e}");
                        continue;
                    }
                };
                if wanted(&entry) && !out.send(ServerMsg::Audit(entry)).await {
                    return;
                }
            }
            moved(cursor);
        }
        if !t.follow {
            // The slot is free before the client can see the end: a tail it asks for next is
            // never refused because of this one.
            drop(slot);
            out.send(ServerMsg::AuditEnd { last_seq: last }).await;
            return;
        }
        // Caught up: from here on, entries come from the live feed as they become durable. A
        // reader that falls behind the feed, or finds a hole in it, reads from the store again.
        'live: loop {
            let batch = tokio::select! {
                _ = out.cancel.cancelled() => return,
                b = live.recv() => b,
            };
            match batch {
                Ok(entries) => {
                    for entry in entries.iter() {
                        if entry.seq < cursor {
                            continue;
                        }
                        if entry.seq > cursor {
                            break 'live;
                        }
                        cursor += 1;
                        if wanted(entry)
                            && !out.send(ServerMsg::Audit(AuditEntry::clone(entry))).await
                        {
                            return;
                        }
                    }
                    moved(cursor);
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    debug!(
                        missed,
                        cursor, "audit tail fell behind the live feed; reading from the store"
                    );
                    break 'live;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
        last = *durable.borrow_and_update();
    }
}

pub(super) fn log_audit(entry: &AuditEntry) {
    debug!(target: "baton::audit", seq = entry.seq, kind = entry.kind.as_str(),
        record = entry.record.as_deref(), agent = entry.agent.as_deref(),
        access = entry.access.map(Access::as_str), code = entry.code.map(ErrorCode::as_str),
        cause = entry.cause.as_deref(), "audit");
}
