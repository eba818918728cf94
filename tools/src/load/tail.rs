//! `--tail`: an admin connection following the audit log during the run, timing how long after
//! each acknowledgment its entry reaches the tail.

use super::*;

/// `--tail`: an admin connection following the audit log from now on.
pub(crate) struct TailReader {
    pub(crate) marks: Arc<TailMarks>,
    pub(crate) stop: Arc<tokio::sync::Notify>,
    pub(crate) task: tokio::task::JoinHandle<Result<Stats, ClientError>>,
}

impl TailReader {
    pub(crate) async fn start(opts: &LoadOptions) -> Result<TailReader, ClientError> {
        let mut admin = side_conn(opts, Role::Admin).await?;
        admin.set_timeout(Duration::from_secs(3600));
        let r = admin
            .send(&Request::AuditTail(AuditTail {
                from_seq: None,
                follow: true,
                record: None,
                agent: None,
            }))
            .await?;
        // Once a later request is answered, the tail is registered: nothing of the run is missed.
        admin.request(Request::Ping).await?;
        let marks: Arc<TailMarks> = Arc::default();
        let stop = Arc::new(tokio::sync::Notify::new());
        let (m, st) = (marks.clone(), stop.clone());
        let prefix = format!("{}-", opts.run_id);
        let task = tokio::spawn(async move {
            let mut stats = Stats::new();
            loop {
                let msg = tokio::select! {
                    msg = admin.reply_to(r) => msg?,
                    _ = st.notified() => return Ok(stats),
                };
                let ServerMsg::Audit(e) = msg else {
                    stats.error(format!("audit tail: unexpected {msg:?}"));
                    return Ok(stats);
                };
                let Some(record) = e.record.as_deref() else {
                    continue;
                };
                if e.kind != AuditKind::Finalized || !record.starts_with(&prefix) {
                    continue;
                }
                mark(&m, record, 1, Instant::now());
                // The entry's own time has millisecond resolution.
                if let Some(ts) = parse_rfc3339(&e.ts) {
                    let behind = baton::server::now_ms().saturating_sub(ts);
                    stats.record("audit tail lag (entry time)", Duration::from_millis(behind));
                }
            }
        });
        Ok(TailReader { marks, stop, task })
    }

    /// Waits (up to 5 s) until every acknowledged record was seen on the tail, stops the reader
    /// and measures, per record, how long after its acknowledgment its entry arrived.
    pub(crate) async fn finish(self, stats: &mut Stats) {
        for _ in 0..250 {
            let all_seen = self
                .marks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .all(|(ack, seen)| ack.is_none() || seen.is_some());
            if all_seen {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.notify_one();
        match self.task.await {
            Ok(Ok(s)) => stats.merge(s),
            Ok(Err(e)) => stats.error(format!("audit tail connection: {e}")),
            Err(e) => stats.error(format!("audit tail reader panicked: {e}")),
        }
        let marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        for (ack, seen) in marks.values() {
            match (ack, seen) {
                (Some(a), Some(t)) => stats.record(
                    "audit tail lag (after ack)",
                    t.saturating_duration_since(*a),
                ),
                (Some(_), None) => {
                    stats.error("audit tail: an acknowledged RecordProcessed never appeared")
                }
                // Finalized but not acknowledged to the load tool: the run stopped first.
                (None, _) => {}
            }
        }
    }
}
