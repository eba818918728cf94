//! The state one load run shares between its workers: counters, the stop flag, outcome and
//! tail marks, and the helpers that time and check one request.

use super::*;

/// Shared run state: budget, deadline, open-loop pacing, progress.
pub(crate) struct Run {
    pub(crate) opts: LoadOptions,
    pub(crate) next: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) stop: AtomicBool,
    pub(crate) deadline: Option<Instant>,
    pub(crate) started: Instant,
    pub(crate) done_records: Mutex<Vec<String>>,
    /// The server's RSS as the completed count passed each power of ten.
    pub(crate) rss_marks: Mutex<Vec<RssMark>>,
    /// `--tail`: when each record's `RecordProcessed` was acknowledged and when its `finalized`
    /// audit entry reached the tail reader.
    pub(crate) tail: Option<Arc<TailMarks>>,
}

/// Per record: (acknowledged, seen on the tail). The two sides race, so either may come first.
pub(crate) type TailMarks = Mutex<HashMap<String, (Option<Instant>, Option<Instant>)>>;

pub(crate) fn mark(marks: &TailMarks, record: &str, side: usize, at: Instant) {
    let mut m = marks.lock().unwrap_or_else(|p| p.into_inner());
    let e = m.entry(record.to_owned()).or_default();
    if side == 0 {
        e.0 = Some(at);
    } else {
        e.1 = Some(at);
    }
}

impl Run {
    /// Takes the next unit of work (a record or a request), pacing it in open loop; `None` when
    /// the budget or the time is used up.
    pub(crate) async fn take(&self) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if self.opts.records.is_some_and(|n| i >= n) {
            return None;
        }
        if let Some(rate) = self.opts.rate {
            let due = self.started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        Some(i)
    }

    pub(crate) fn done(&self, record: Option<String>) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        if let Some(r) = record {
            self.done_records
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(r);
        }
    }
}

pub(crate) async fn timed(
    c: &mut Client,
    stats: &mut Stats,
    name: &'static str,
    req: Request,
) -> Result<ServerMsg, ClientError> {
    let t = Instant::now();
    let reply = c.request(req).await?;
    stats.record(name, t.elapsed());
    Ok(reply)
}

/// Checks a reply; anything unexpected counts as an error.
pub(crate) fn expect(
    stats: &mut Stats,
    what: &str,
    reply: &ServerMsg,
    ok: impl Fn(&ServerMsg) -> bool,
) -> bool {
    if ok(reply) {
        return true;
    }
    match reply {
        ServerMsg::Error { code, .. } => stats.error(format!("{what}: {}", code.as_str())),
        other => stats.error(format!("{what}: unexpected {}", other.type_name())),
    }
    false
}

impl Run {
    /// Notes the server's RSS for each power of ten (from 10,000) the completed count has
    /// reached since the last note.
    pub(crate) fn rss_mark_catch_up(&self) {
        let Some(pid) = self.opts.server_pid else {
            return;
        };
        let completed = self.completed.load(Ordering::Relaxed);
        let mut marks = self.rss_marks.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = marks
            .last()
            .map_or(10_000, |m| m.records.saturating_mul(10));
        while completed >= next {
            if let Some(rss_kib) = rss_kib(pid) {
                marks.push(RssMark {
                    records: next,
                    rss_kib,
                });
            }
            next = next.saturating_mul(10);
        }
    }

    pub(crate) fn new(opts: LoadOptions, started: Instant, deadline: Option<Instant>) -> Run {
        Run {
            opts,
            next: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            deadline,
            started,
            done_records: Mutex::new(Vec::new()),
            rss_marks: Mutex::new(Vec::new()),
            tail: None,
        }
    }
}

/// Waits for every worker, merging what each measured; a worker that failed or panicked counts as
/// an error of the run.
pub(crate) async fn join_workers(
    handles: Vec<tokio::task::JoinHandle<Result<Stats, ClientError>>>,
    stats: &mut Stats,
) {
    for h in handles {
        match h.await {
            Ok(Ok(s)) => stats.merge(s),
            Ok(Err(e)) => stats.error(format!("connection: {e}")),
            Err(e) => stats.error(format!("worker panicked: {e}")),
        }
    }
}
