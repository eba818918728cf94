//! A standby's copy of the cluster's state: its own sled, kept current by watching etcd from the
//! revision it has reached. A copy that never followed (or fell behind etcd's compaction) is first
//! read whole, at one revision, then watched from the next.

use super::keys::Keys;
use crate::store::{RawOp, SledStore, StoreError};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Keys read per request while copying the whole state.
const PAGE: i64 = 1000;

/// Follows etcd into `local` until `stop`; `applied` tells the revision the copy has reached.
pub(crate) async fn follow(
    etcd: Client,
    keys: Keys,
    local: Arc<SledStore>,
    applied: watch::Sender<i64>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        match follow_once(&etcd, &keys, &local, &applied, &stop).await {
            Ok(()) => return,
            Err(e) => {
                warn!("following the cluster's state: {e}; trying again");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
            }
        }
    }
}

async fn follow_once(
    etcd: &Client,
    keys: &Keys,
    local: &Arc<SledStore>,
    applied: &watch::Sender<i64>,
    stop: &CancellationToken,
) -> Result<(), String> {
    let mut client = etcd.clone();
    let mut revision = blocking(local, |l| l.mirror_revision()).await?;
    if revision == 0 {
        revision = copy_whole(&mut client, keys, local).await?;
    }
    applied.send_replace(revision);
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1)
        .with_progress_notify();
    let mut stream = client
        .watch(keys.all(), Some(options))
        .await
        .map_err(|e| format!("cannot watch etcd: {e}"))?;
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            m = stream.message() => m,
        };
        let response = match message {
            Ok(Some(r)) => r,
            Ok(None) => return Err("etcd ended the watch".into()),
            Err(e) => return Err(format!("the watch broke: {e}")),
        };
        if response.canceled() {
            if response.compact_revision() > 0 {
                // etcd no longer has the changes this copy needs: read the state whole again.
                warn!(
                    copy_revision = revision,
                    compacted_to = response.compact_revision(),
                    "this node's copy fell behind etcd's compaction; copying the state anew"
                );
                blocking(local, |l| l.apply_mirror(&[], 0)).await?;
            }
            return Err(format!(
                "etcd cancelled the watch: {}",
                response.cancel_reason()
            ));
        }
        let mut ops: Vec<RawOp> = Vec::new();
        let mut reached = revision;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            reached = reached.max(kv.mod_revision());
            if kv.key() == keys.fold().as_bytes() {
                // A batch too big for one transaction, whole: its keys, atomically. The writes
                // that fold it into the state keys afterwards write the same values again.
                if event.event_type() == EventType::Put {
                    ops.extend(super::fold::decode(kv.value())?);
                }
                continue;
            }
            let Some(key) = keys.store_key(kv.key()) else {
                continue;
            };
            ops.push(match event.event_type() {
                EventType::Put => (key.to_vec(), Some(kv.value().to_vec())),
                EventType::Delete => (key.to_vec(), None),
            });
        }
        if response.events().is_empty() && !response.created() {
            // A progress report: every change up to the header's revision was sent. (The answer
            // that creates the watch also has no events, but its header is etcd's revision now,
            // before the changes since the copy's revision have been sent.)
            if let Some(h) = response.header() {
                reached = reached.max(h.revision());
            }
        }
        if reached > revision {
            if ops.is_empty() {
                // Nothing of the state changed (a node's report, the head of an empty trim):
                // the copy need not be written for it.
                applied.send_replace(reached);
                revision = reached;
                continue;
            }
            blocking(local, move |l| l.apply_mirror(&ops, reached)).await?;
            revision = reached;
            applied.send_replace(revision);
        }
    }
}

/// Replaces the local copy with the whole state as etcd holds it at one revision; returns it.
async fn copy_whole(
    client: &mut Client,
    keys: &Keys,
    local: &Arc<SledStore>,
) -> Result<i64, String> {
    blocking(local, |l| l.clear_mirror()).await?;
    let prefix = keys.state_prefix().into_bytes();
    let mut end = prefix.clone();
    *end.last_mut().expect("non-empty prefix") += 1;
    let mut from = prefix.clone();
    let mut at = 0i64;
    let mut copied = 0u64;
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if at > 0 {
            options = options.with_revision(at);
        }
        let response = client
            .get(from.clone(), Some(options))
            .await
            .map_err(|e| format!("cannot read the cluster's state: {e}"))?;
        if at == 0 {
            at = response.header().map_or(0, |h| h.revision());
        }
        let ops: Vec<RawOp> = response
            .kvs()
            .iter()
            .filter_map(|kv| {
                keys.store_key(kv.key())
                    .map(|k| (k.to_vec(), Some(kv.value().to_vec())))
            })
            .collect();
        copied += ops.len() as u64;
        if let Some(last) = response.kvs().last() {
            from = last.key().to_vec();
            from.push(0);
        }
        let more = response.more();
        // Revision 0 until the copy is whole: a node stopped half-way starts the copy again.
        blocking(local, move |l| l.apply_mirror(&ops, 0)).await?;
        if !more {
            break;
        }
    }
    // A big batch committed but not yet folded into the state keys goes over them.
    let fold = client
        .get(keys.fold(), Some(GetOptions::new().with_revision(at)))
        .await
        .map_err(|e| format!("cannot read the cluster's state: {e}"))?;
    let ops = match fold.kvs().first() {
        Some(kv) => super::fold::decode(kv.value())?,
        None => Vec::new(),
    };
    blocking(local, move |l| l.apply_mirror(&ops, at)).await?;
    info!(keys = copied, revision = at, "copied the cluster's state");
    Ok(at)
}

async fn blocking<T: Send + 'static>(
    local: &Arc<SledStore>,
    f: impl FnOnce(&SledStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, String> {
    let local = local.clone();
    tokio::task::spawn_blocking(move || f(&local))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the local copy failed: {e}"))
}
