//! The engine task: the one task that owns the [`Engine`]. It takes the connections' messages in
//! arrival order, runs them in batches through the commit pipeline, and pushes each output onto
//! its connection's outbox. The registry of connections the engine knows lives here.
//!
//! It runs on a thread of its own, with a single-threaded runtime for its timers and channels
//! (see `accept::spawn_engine`), and waits for the disk there: it never queues behind connection
//! tasks for a worker, and a commit costs no hand-off to a blocking thread and back.
//!
//! Never waits for a client: an output is queued on its outbox at once, or the connection is
//! dropped.

use super::audit_feed::log_audit;
use super::commit::{commit, read_back, BatchInfo, Durability, LAZY_FLUSH};
use super::metrics::{Metrics, Snapshot};
use super::now_ms;
use super::outbox::{Outbox, PushError};
use super::retention::{purge_old_finals, PURGE_EVERY};
use super::{EngineFault, Shared};
use crate::engine::{ConnId, Engine, Input, Output};
use crate::messages::*;
use crate::store::{Store, WriteBatch};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

/// Inputs waiting for the engine; readers wait (each on its own) when it is full.
pub(super) const ENGINE_QUEUE: usize = 8192;
/// Inputs the engine takes in one batch before it writes out what they produced.
pub(super) const ENGINE_BATCH: usize = 512;
/// How often the engine's timers (resume grace, orphan timeout) are checked.
const TICK: Duration = Duration::from_millis(100);

pub(super) enum EngineMsg {
    Connected {
        conn: ConnId,
        role: Role,
        peer: SocketAddr,
        outbox: Arc<Outbox>,
        cancel: CancellationToken,
    },
    Request {
        conn: ConnId,
        r#ref: Option<u64>,
        request: Request,
        /// Told once the request's outputs are pushed, even if the connection is gone by then:
        /// its reader counts the request as room taken until that.
        outbox: Arc<Outbox>,
    },
    Disconnected {
        conn: ConnId,
    },
    Shutdown,
    /// A metrics scrape (or a readiness check) asks what only the engine knows.
    Observe(oneshot::Sender<Snapshot>),
}

/// What the engine task holds of a connection: where its frames go, how to drop it, and what to
/// log when it does.
struct ConnHandle {
    outbox: Arc<Outbox>,
    cancel: CancellationToken,
    peer: SocketAddr,
    role: Role,
}

/// The connections the engine knows: each one from the `Connected` the engine task took until its
/// `Disconnected`, its `Close`, or its drop for not reading. The engine task alone reads and
/// changes it, in the engine's own order, so what is here is exactly what the engine was told;
/// listeners reach it only through [`EngineMsg`]. Bounded by `max_connections`: an entry belongs
/// to a connection task that holds one of the slots until its `Disconnected` is sent.
///
/// A plain map, not a concurrent one: the only look-up is one per output, on this task; a map
/// shared with the listeners would let a connection be found before the engine took its
/// `Connected` or after it let go of it, and would put a lock on every push.
#[derive(Default)]
struct Registry(HashMap<ConnId, ConnHandle>);

impl Registry {
    /// Registers a connection the engine is told of now. Connection ids are never reused (one
    /// counter for every listener, see `accept`), so the id cannot be taken.
    fn open(&mut self, conn: ConnId, handle: ConnHandle) {
        let before = self.0.insert(conn, handle);
        debug_assert!(before.is_none(), "connection id {conn} registered twice");
    }

    fn knows(&self, conn: ConnId) -> bool {
        self.0.contains_key(&conn)
    }

    /// The connection, if the engine still knows it (an output may name one that left meanwhile).
    fn get(&self, conn: ConnId) -> Option<&ConnHandle> {
        self.0.get(&conn)
    }

    /// Forgets the connection; `None` if it was already forgotten (dropped or closed before its
    /// reader reported it gone).
    fn remove(&mut self, conn: ConnId) -> Option<ConnHandle> {
        self.0.remove(&conn)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Requests of one engine batch, per connection, to be counted as answered once the batch's
/// outputs are pushed. Requests of a pipelining client come in runs, so runs are merged.
#[derive(Default)]
struct Answered(Vec<(Arc<Outbox>, usize)>);

impl Answered {
    fn add(&mut self, outbox: Arc<Outbox>) {
        match self.0.last_mut() {
            Some((last, n)) if Arc::ptr_eq(last, &outbox) => *n += 1,
            _ => self.0.push((outbox, 1)),
        }
    }

    fn settle(&mut self) {
        for (outbox, n) in self.0.drain(..) {
            outbox.requests_answered(n);
        }
    }
}

pub(super) async fn engine_loop(
    mut engine: Engine,
    mut rx: mpsc::Receiver<EngineMsg>,
    shared: Shared,
    fault: Option<EngineFault>,
    max_deferred: usize,
    final_retention_ms: u64,
    max_batch: usize,
) {
    let Shared {
        store,
        announcer,
        metrics,
        ..
    } = shared;
    let written = *announcer.durable.borrow();
    let mut durable = Durability {
        announcer,
        written,
        deferred: Vec::new(),
        max_deferred,
        lazy_since: None,
        lazy_inflight: None,
        failing: Arc::new(AtomicBool::new(false)),
        last_probe: None,
    };
    let mut conns = Registry::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<EngineMsg> = Vec::with_capacity(max_batch);
    let mut inputs: Vec<Input> = Vec::new();
    let mut out: Vec<Output> = Vec::new();
    let mut answered = Answered::default();
    // The batch's requests (type, and the error code that answered it), for the metrics once the
    // batch is committed or refused.
    let mut asked: Vec<(&'static str, Option<ErrorCode>)> = Vec::new();
    let mut shutting_down = false;
    let mut purge = tokio::time::interval(PURGE_EVERY);
    purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut purge_due = false;
        tokio::select! {
            n = rx.recv_many(&mut batch, max_batch) => {
                if n == 0 {
                    break;
                }
            }
            _ = tick.tick() => {
                inputs.push(Input::Tick);
                durable.probe_if_failing(&store);
            }
            _ = purge.tick(), if final_retention_ms > 0 && !shutting_down => purge_due = true,
            _ = tokio::time::sleep_until(durable.lazy_since.map_or_else(tokio::time::Instant::now, |t| t + LAZY_FLUSH)), if durable.lazy_since.is_some() && durable.lazy_inflight.is_none() => {
                durable.flush_lazy(&store);
            }
            outcome = async { (&mut durable.lazy_inflight.as_mut().expect("guarded").0).await }, if durable.lazy_inflight.is_some() => {
                durable.lazy_done(outcome);
            }
        }
        if fault.as_ref().is_some_and(|f| f.load(Ordering::Relaxed)) {
            panic!("engine fault injected through StartOptions::engine_fault");
        }
        if purge_due {
            // Its own batch, before any request: a request that names a purged record then
            // finds it gone from the store too.
            purge_old_finals(
                &mut engine,
                &store,
                &mut durable,
                final_retention_ms,
                &metrics,
            )
            .await;
        }
        for msg in batch.drain(..) {
            match msg {
                EngineMsg::Connected {
                    conn,
                    role,
                    peer,
                    outbox,
                    cancel,
                } => {
                    if shutting_down {
                        outbox.close();
                        continue;
                    }
                    conns.open(
                        conn,
                        ConnHandle {
                            outbox,
                            cancel,
                            peer,
                            role,
                        },
                    );
                    inputs.push(Input::Connected { conn, role });
                }
                EngineMsg::Request {
                    conn,
                    r#ref,
                    request,
                    outbox,
                } => {
                    answered.add(outbox);
                    if conns.knows(conn) {
                        inputs.push(Input::Request {
                            conn,
                            r#ref,
                            request,
                        });
                    }
                }
                EngineMsg::Disconnected { conn } => {
                    if conns.remove(conn).is_some() {
                        inputs.push(Input::Disconnected { conn });
                    }
                }
                EngineMsg::Shutdown => {
                    shutting_down = true;
                    inputs.push(Input::Shutdown);
                }
                EngineMsg::Observe(reply) => {
                    let failing = durable.failing.load(Ordering::Relaxed);
                    let _ = reply.send(observe(&engine, failing));
                }
            }
        }
        let now = now_ms();
        // One batch, all or nothing: if the store refuses its writes, the engine goes back to
        // exactly where it was before it (see `commit`).
        engine.begin();
        let mut info = BatchInfo::default();
        // Requests refused before the engine saw them; answered whatever becomes of the batch.
        let mut unread: Vec<Output> = Vec::new();
        for input in inputs.drain(..) {
            let request = match &input {
                Input::Request { conn, request, .. } => Some((*conn, request.type_name())),
                _ => None,
            };
            if let Some(id) = engine.record_to_load(&input) {
                // A final record that left memory: read it back first, so that the answer is
                // the one it would have had in memory.
                if let Err(e) = read_back(&mut engine, &store, id) {
                    if let Some((_, type_name)) = request {
                        metrics.request(type_name, Some(ErrorCode::Unavailable));
                    }
                    if let Input::Request { conn, r#ref, .. } = input {
                        error!("STORAGE FAILURE: {e}; refusing the request with `unavailable`");
                        unread.push(Output::Send {
                            conn,
                            env: Envelope::reply(
                                r#ref,
                                ServerMsg::error(
                                    ErrorCode::Unavailable,
                                    format!("storage failed, nothing was changed: {e}"),
                                ),
                            ),
                        });
                    }
                    continue;
                }
            }
            info.note(&input);
            let first = out.len();
            engine.handle(now, input, &mut out);
            if let Some((conn, type_name)) = request {
                asked.push((type_name, answered_with(&out[first..], conn)));
            }
        }
        // Group commit: everything this batch changed goes to disk in one write and one flush,
        // and nothing of it is sent before that returns.
        let kept = commit(
            &mut engine,
            &store,
            &mut durable,
            &mut out,
            now,
            info,
            &metrics,
        )
        .await;
        out.append(&mut unread);
        for (type_name, error) in asked.drain(..) {
            metrics.request(
                type_name,
                if kept {
                    error
                } else {
                    Some(ErrorCode::Unavailable)
                },
            );
        }
        dispatch(
            &mut engine,
            &mut conns,
            &mut out,
            now,
            &store,
            &mut durable,
            &metrics,
        )
        .await;
        // Only now, with their answers queued, do the requests stop counting as in flight.
        answered.settle();
        if shutting_down && conns.is_empty() {
            // Everyone was told and closed; readers that still report in are ignored.
            rx.close();
        }
    }
    // The last entries of reads go to disk before the store is closed.
    durable.settle_lazy().await;
    if !durable.deferred.is_empty() {
        let batch = WriteBatch {
            audit: std::mem::take(&mut durable.deferred),
            ..WriteBatch::default()
        };
        let writer = store.clone();
        match tokio::task::spawn_blocking(move || writer.commit(&batch, true)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!("STORAGE FAILURE: writing the last audit entries failed: {e}"),
            Err(e) => error!("STORAGE FAILURE: store task failed: {e}"),
        }
    }
    debug!("engine stopped");
}

/// Carries out the engine's outputs. A connection whose queue is at its hard cap has stopped
/// reading: it is dropped here, and its disconnection is fed straight back into the engine so that
/// its state moves on at once.
async fn dispatch(
    engine: &mut Engine,
    conns: &mut Registry,
    out: &mut Vec<Output>,
    now: u64,
    store: &Arc<dyn Store>,
    durable: &mut Durability,
    metrics: &Metrics,
) {
    let mut dropped: Vec<ConnId> = Vec::new();
    while !out.is_empty() {
        for output in out.drain(..) {
            match output {
                Output::Send { conn, env } => {
                    let Some(handle) = conns.get(conn) else {
                        continue;
                    };
                    // An answer to the connection's own request is always taken (the reader's
                    // backpressure bounds them); a push is refused if the client stopped reading.
                    let pushed = if env.r#ref.is_some() {
                        handle.outbox.push_reply(env.to_bytes())
                    } else {
                        handle.outbox.push(env.to_bytes())
                    };
                    match pushed {
                        Ok(()) => {}
                        Err(PushError::NotReading) => {
                            warn!(
                                conn,
                                peer = %handle.peer,
                                role = %handle.role,
                                queued = handle.outbox.pending(),
                                "dropping connection: the client is not reading (pushes piled up past twice outbound_queue_frames while it took nothing for 3 heartbeats, or past eight times it)"
                            );
                            metrics.outbound_queue_drop();
                            handle.cancel.cancel();
                            conns.remove(conn);
                            dropped.push(conn);
                        }
                        Err(PushError::Closed) => {}
                    }
                }
                Output::Close { conn } => {
                    if let Some(handle) = conns.remove(conn) {
                        handle.outbox.close();
                    }
                }
                // Handed to the announcer by `commit`; only a batch that wrote nothing has none.
                Output::Audit(entry) => log_audit(&entry),
            }
        }
        if dropped.is_empty() {
            break;
        }
        let mut more = Vec::new();
        let mut info = BatchInfo::default();
        engine.begin();
        for conn in dropped.drain(..) {
            let input = Input::Disconnected { conn };
            info.note(&input);
            engine.handle(now, input, &mut more);
        }
        Box::pin(commit(
            engine, store, durable, &mut more, now, info, metrics,
        ))
        .await;
        out.append(&mut more);
    }
}

/// What a scrape asks of the engine: the state gauges.
fn observe(engine: &Engine, storage_failing: bool) -> Snapshot {
    let c = engine.counts();
    let (agents_logged_in, agents_away, agents_logout_pending) = engine.agent_presence();
    Snapshot {
        agents_logged_in,
        agents_away,
        agents_logout_pending,
        dns_monitored: c.dns,
        records_live: c.records_live,
        records_final: c.records_final,
        calls: c.calls,
        ignored_events: c.ignored_events,
        storage_failing,
    }
}

/// The error a request was answered with, `None` if it succeeded: among the outputs its input
/// produced, an error to its own connection is its answer (the engine sends a requester no error
/// but the answer to its request, and a refused request produces nothing else).
fn answered_with(outputs: &[Output], conn: ConnId) -> Option<ErrorCode> {
    outputs.iter().find_map(|o| match o {
        Output::Send { conn: to, env } if *to == conn => match &env.msg {
            ServerMsg::Error { code, .. } => Some(*code),
            _ => None,
        },
        _ => None,
    })
}
