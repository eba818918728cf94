//! The I/O shell around the engine: sockets, timers and shutdown.
//!
//! Each connection is a reader loop, a bounded outbound queue and a writer task. The reader does
//! the handshake (`Hello`, `Ping`, framing errors) itself and forwards decoded requests to the one
//! engine task; the engine task applies them in arrival order and hands each output frame to the
//! target connection's queue with `try_send`. A queue that is full means the client stopped reading:
//! that connection is dropped and logged, and nobody else ever waits for it.

use crate::codec::{FrameCodec, FrameError};
use crate::config::Config;
use crate::engine::{ConnId, Engine, EngineConfig, Input, Output};
use crate::messages::*;
use crate::store::{SledStore, Store, StoreError, WriteBatch};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

/// Inputs waiting for the engine; readers wait (each on its own) when it is full.
const ENGINE_QUEUE: usize = 8192;
/// Inputs the engine takes in one batch before it writes out what they produced.
const ENGINE_BATCH: usize = 512;
/// How often the engine's timers (resume grace, orphan timeout) are checked.
const TICK: Duration = Duration::from_millis(100);
/// Initial read and write buffer of a connection, in bytes.
const CONN_BUFFER: usize = 1024;
/// How long shutdown waits for connections to write their last frames.
const DRAIN: Duration = Duration::from_secs(3);
/// Audit entries of reads and refusals (no state change) are written and flushed together at
/// most this much later, instead of making the reply wait for the disk.
const LAZY_FLUSH: Duration = Duration::from_millis(20);
/// Audit entries an audit tail reads from the store at a time.
const TAIL_CHUNK: usize = 256;
/// An audit tail whose reader takes nothing for this long is dropped.
const TAIL_STALL: Duration = Duration::from_secs(30);
/// Batches of newly durable audit entries kept for following tails that fell behind; one that
/// falls further behind reads what it missed from the store.
const TAIL_LIVE_BATCHES: usize = 1024;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot open the data directory {dir}: {source}")]
    Store { dir: String, source: StoreError },
    #[error("cannot load the stored state: {0}")]
    Load(String),
}

/// Milliseconds since the Unix epoch, the engine's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a connection's writer is asked to do.
#[derive(Debug)]
enum Outbound {
    Frame(Bytes),
    /// Write everything queued before, then close.
    Close,
}

enum EngineMsg {
    Connected {
        conn: ConnId,
        role: Role,
        peer: SocketAddr,
        tx: mpsc::Sender<Outbound>,
        cancel: CancellationToken,
    },
    Request {
        conn: ConnId,
        r#ref: Option<u64>,
        request: Request,
    },
    Disconnected {
        conn: ConnId,
    },
    Shutdown,
}

struct ConnHandle {
    tx: mpsc::Sender<Outbound>,
    cancel: CancellationToken,
    peer: SocketAddr,
    role: Role,
}

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, tells every client, drains the queues and waits for the server to end.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            error!("server task failed: {e}");
        }
    }

    /// Waits until the server ends (after [`ServerHandle::stop_token`] is cancelled).
    pub async fn wait(self) {
        if let Err(e) = self.task.await {
            error!("server task failed: {e}");
        }
    }

    /// Cancelling this token stops the server as [`ServerHandle::shutdown`] does.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// Opens the sled store in `config.data_dir`, loads it, binds `config.listen` and serves until the
/// handle is shut down.
pub async fn start(config: Config) -> Result<ServerHandle, ServerError> {
    config.validate()?;
    let dir = config.data_dir.clone();
    let opening = std::time::Instant::now();
    let store = tokio::task::spawn_blocking(move || SledStore::open(&dir))
        .await
        .expect("store open does not panic")
        .map_err(|source| ServerError::Store {
            dir: config.data_dir.display().to_string(),
            source,
        })?;
    info!(
        dir = %config.data_dir.display(),
        open_ms = opening.elapsed().as_millis() as u64,
        "store opened"
    );
    start_with_store(config, Arc::new(store)).await
}

/// Serves with the given store (tests use [`crate::store::MemoryStore`]).
pub async fn start_with_store(
    config: Config,
    store: Arc<dyn Store>,
) -> Result<ServerHandle, ServerError> {
    config.validate()?;
    let started = std::time::Instant::now();
    let loader = store.clone();
    let snapshot = tokio::task::spawn_blocking(move || loader.load())
        .await
        .expect("store load does not panic")
        .map_err(|e| ServerError::Load(e.to_string()))?;
    let loaded = started.elapsed();
    let mut engine = Engine::new(
        EngineConfig::from_config(&config),
        rand::random::<[u8; 32]>(),
        now_ms(),
    );
    let (records, agents, audit_last_seq) = (
        snapshot.records.len(),
        snapshot.agents.len(),
        snapshot.audit_last_seq,
    );
    engine
        .restore(snapshot, now_ms())
        .map_err(ServerError::Load)?;
    info!(
        records,
        agents,
        audit_last_seq,
        load_ms = loaded.as_millis() as u64,
        restore_ms = (started.elapsed() - loaded).as_millis() as u64,
        "state loaded"
    );
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    let stop = CancellationToken::new();
    let config = Arc::new(config);
    let announcer = Arc::new(Announcer::new(watch::channel(audit_last_seq).0));
    let shared = Shared { store, announcer };
    let task = tokio::spawn(run(listener, config, stop.clone(), engine, shared));
    info!(%addr, "baton listening");
    Ok(ServerHandle { addr, stop, task })
}

/// What connection tasks share besides the engine: the store (for audit tails) and the announcer
/// (the highest audit `seq` known to be on disk, and the live feed of newly durable entries).
#[derive(Clone)]
struct Shared {
    store: Arc<dyn Store>,
    announcer: Arc<Announcer>,
}

/// Announces audit entries once they are on disk, in `seq` order: the highest durable `seq` (a
/// watch) and the entries themselves (a broadcast that following tails read, so that they need
/// not read back from the store what the engine just wrote). Entries wait here from the moment
/// they are written until a flush covers them.
struct Announcer {
    written: std::sync::Mutex<VecDeque<Arc<AuditEntry>>>,
    durable: watch::Sender<u64>,
    live: broadcast::Sender<Arc<[Arc<AuditEntry>]>>,
}

impl Announcer {
    fn new(durable: watch::Sender<u64>) -> Announcer {
        Announcer {
            written: std::sync::Mutex::new(VecDeque::new()),
            durable,
            live: broadcast::channel(TAIL_LIVE_BATCHES).0,
        }
    }

    /// Entries handed to the store, not yet known to be flushed. Kept only while a tail follows:
    /// one that starts later reads them from the store (it finds the hole in the feed).
    fn written(&self, entries: impl IntoIterator<Item = AuditEntry>) {
        if self.live.receiver_count() == 0 {
            return;
        }
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        w.extend(entries.into_iter().map(Arc::new));
    }

    /// Everything up to `seq` is on disk (never moving backwards). The watch moves before the
    /// entries are broadcast, so a tail that receives an entry finds the watch at or past it.
    fn durable_up_to(&self, seq: u64) {
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        self.durable.send_if_modified(|v| {
            let newer = seq > *v;
            if newer {
                *v = seq;
            }
            newer
        });
        let n = w.iter().take_while(|e| e.seq <= seq).count();
        if n > 0 {
            let batch: Arc<[Arc<AuditEntry>]> = w.drain(..n).collect();
            // Nobody following is fine: the entries are on disk for later readers.
            let _ = self.live.send(batch);
        }
    }
}

async fn run(
    listener: TcpListener,
    config: Arc<Config>,
    stop: CancellationToken,
    engine: Engine,
    shared: Shared,
) {
    let (engine_tx, engine_rx) = mpsc::channel(ENGINE_QUEUE);
    let engine_task = tokio::spawn(engine_loop(
        engine,
        engine_rx,
        shared.store.clone(),
        shared.announcer.clone(),
    ));
    let retention = (config.audit_retention_entries > 0).then(|| {
        tokio::spawn(retention_loop(
            shared.clone(),
            config.audit_retention_entries,
            stop.clone(),
        ))
    });
    let tracker = TaskTracker::new();
    // Cancelled only when draining took too long: connections then stop at once.
    let hard_stop = CancellationToken::new();
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let next_id = AtomicU64::new(1);

    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let conn = next_id.fetch_add(1, Ordering::Relaxed);
                    let permit = slots.clone().try_acquire_owned().ok();
                    let span = tracing::info_span!("conn", id = conn, %peer, role = tracing::field::Empty, agent = tracing::field::Empty);
                    let ctx = ConnCtx {
                        conn,
                        peer,
                        config: config.clone(),
                        engine: engine_tx.clone(),
                        cancel: hard_stop.child_token(),
                        shared: shared.clone(),
                    };
                    tracker.spawn(async move {
                        match permit {
                            Some(_permit) => serve_connection(socket, ctx).await,
                            None => refuse_overloaded(socket, &ctx).await,
                        }
                    }.instrument(span));
                }
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    info!("shutting down: no longer accepting, telling clients");
    let _ = engine_tx.send(EngineMsg::Shutdown).await;
    drop(engine_tx);
    tracker.close();
    if tokio::time::timeout(DRAIN, tracker.wait()).await.is_err() {
        warn!("connections did not finish within {DRAIN:?}; closing them");
        hard_stop.cancel();
        tracker.wait().await;
    }
    if let Err(e) = engine_task.await {
        error!("engine task failed: {e}");
    }
    if let Some(task) = retention {
        let _ = task.await;
    }
    info!("shutdown complete");
}

/// Keeps the audit log within `keep` entries, trimming the oldest in the background as new ones
/// become durable (in steps of about 1% of `keep`, so trimming is not a write per entry).
async fn retention_loop(shared: Shared, keep: u64, stop: CancellationToken) {
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

/// What is on disk: the highest audit `seq` written, and since when written entries wait for a
/// flush (only ever entries of reads and refusals, which acknowledge no change).
struct Durability {
    announcer: Arc<Announcer>,
    /// Highest audit `seq` handed to the store.
    written: u64,
    /// Audit entries of reads and refusals not yet handed to the store: they are written together
    /// (one store batch per `LAZY_FLUSH`, not one per engine batch) or go first into the next
    /// batch that changes state.
    deferred: Vec<(u64, Vec<u8>)>,
    lazy_since: Option<tokio::time::Instant>,
    /// The last write or flush failed: until one succeeds again, reads are written through
    /// (and refused with `unavailable` if that fails too) instead of deferred.
    failing: Arc<AtomicBool>,
}

impl Durability {
    /// Hands the deferred entries to the store and flushes in the background: the engine goes on
    /// while the disk works. If the store refuses them they stay deferred and are tried again.
    fn flush_lazy(&mut self, store: &Arc<dyn Store>) {
        self.lazy_since = None;
        if !self.deferred.is_empty() {
            let batch = WriteBatch {
                audit: std::mem::take(&mut self.deferred),
                ..WriteBatch::default()
            };
            // Without a flush, sled only appends to its in-memory log: cheap enough to do inline,
            // and done here so that store batches keep `seq` order.
            match store.commit(&batch, false) {
                Ok(()) => {
                    if let Some((seq, _)) = batch.audit.last() {
                        self.written = *seq;
                    }
                }
                Err(e) => {
                    error!(
                        "STORAGE FAILURE: writing audit entries of reads failed, will retry: {e}"
                    );
                    self.failing.store(true, Ordering::Relaxed);
                    self.deferred = batch.audit;
                    self.lazy_since = Some(tokio::time::Instant::now());
                    return;
                }
            }
        }
        let (s, announcer, written) = (store.clone(), self.announcer.clone(), self.written);
        let failing = self.failing.clone();
        tokio::spawn(async move {
            match tokio::task::spawn_blocking(move || s.flush()).await {
                Ok(Ok(())) => announcer.durable_up_to(written),
                Ok(Err(e)) => {
                    failing.store(true, Ordering::Relaxed);
                    error!("STORAGE FAILURE: flushing audit entries of reads failed: {e}")
                }
                Err(e) => {
                    failing.store(true, Ordering::Relaxed);
                    error!("STORAGE FAILURE: flush task failed: {e}")
                }
            }
        });
    }
}

async fn engine_loop(
    mut engine: Engine,
    mut rx: mpsc::Receiver<EngineMsg>,
    store: Arc<dyn Store>,
    announcer: Arc<Announcer>,
) {
    let written = *announcer.durable.borrow();
    let mut durable = Durability {
        announcer,
        written,
        deferred: Vec::new(),
        lazy_since: None,
        failing: Arc::new(AtomicBool::new(false)),
    };
    let mut conns: HashMap<ConnId, ConnHandle> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<EngineMsg> = Vec::with_capacity(ENGINE_BATCH);
    let mut inputs: Vec<Input> = Vec::new();
    let mut out: Vec<Output> = Vec::new();
    let mut shutting_down = false;
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, ENGINE_BATCH) => {
                if n == 0 {
                    break;
                }
            }
            _ = tick.tick() => inputs.push(Input::Tick),
            _ = tokio::time::sleep_until(durable.lazy_since.map_or_else(tokio::time::Instant::now, |t| t + LAZY_FLUSH)), if durable.lazy_since.is_some() => {
                durable.flush_lazy(&store);
            }
        }
        for msg in batch.drain(..) {
            match msg {
                EngineMsg::Connected {
                    conn,
                    role,
                    peer,
                    tx,
                    cancel,
                } => {
                    if shutting_down {
                        let _ = tx.try_send(Outbound::Close);
                        continue;
                    }
                    conns.insert(
                        conn,
                        ConnHandle {
                            tx,
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
                } => {
                    if conns.contains_key(&conn) {
                        inputs.push(Input::Request {
                            conn,
                            r#ref,
                            request,
                        });
                    }
                }
                EngineMsg::Disconnected { conn } => {
                    if conns.remove(&conn).is_some() {
                        inputs.push(Input::Disconnected { conn });
                    }
                }
                EngineMsg::Shutdown => {
                    shutting_down = true;
                    inputs.push(Input::Shutdown);
                }
            }
        }
        let now = now_ms();
        for input in inputs.drain(..) {
            engine.handle(now, input, &mut out);
        }
        // Group commit: everything this batch changed goes to disk in one write and one flush,
        // and nothing of it is sent before that returns.
        commit(&mut engine, &store, &mut durable, &mut out, now).await;
        dispatch(&mut engine, &mut conns, &mut out, now, &store, &mut durable).await;
        if shutting_down && conns.is_empty() {
            // Everyone was told and closed; readers that still report in are ignored.
            rx.close();
        }
    }
    // The last entries of reads go to disk before the store is closed.
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

/// Writes what the engine changed and flushes it. If the store fails, nothing of the batch is
/// acknowledged: every reply becomes `unavailable`, pushes are dropped, and the engine goes back to
/// the last durable state, so that a refused request changed nothing.
async fn commit(
    engine: &mut Engine,
    store: &Arc<dyn Store>,
    durable: &mut Durability,
    out: &mut Vec<Output>,
    now: u64,
) {
    let mut batch = engine.take_writes();
    if batch.is_empty() {
        return;
    }
    // The batch's audit entries go to the log (at debug level) and, once flushed, to the tails
    // that follow; the rest of the outputs are replies and pushes.
    let mut entries: Vec<AuditEntry> = Vec::with_capacity(batch.audit.len());
    // A batch that changed records or agents acknowledges changes: it is written and flushed
    // before anything is sent. One that only adds audit entries (reads, refusals) acknowledges
    // nothing: its entries wait to be written with others and flushed soon after, so reads
    // never wait for the disk (unless the disk is known to be failing).
    let read_only = batch.records.is_empty() && batch.agents.is_empty();
    if read_only && !durable.failing.load(Ordering::Relaxed) {
        take_audit(out, &mut entries);
        durable.announcer.written(entries);
        durable.deferred.append(&mut batch.audit);
        match durable.lazy_since {
            None => durable.lazy_since = Some(tokio::time::Instant::now()),
            Some(t) if t.elapsed() >= LAZY_FLUSH => durable.flush_lazy(store),
            Some(_) => {}
        }
        return;
    }
    let deferred = durable.deferred.len();
    if deferred > 0 {
        let mut audit = std::mem::take(&mut durable.deferred);
        audit.append(&mut batch.audit);
        batch.audit = audit;
    }
    let last_seq = batch.audit.last().map(|(seq, _)| *seq);
    let writer = store.clone();
    let (result, batch) = tokio::task::spawn_blocking(move || (writer.commit(&batch, true), batch))
        .await
        .unwrap_or_else(|e| {
            (
                Err(StoreError::Injected(format!("store task failed: {e}"))),
                WriteBatch::default(),
            )
        });
    match result {
        Ok(()) => {
            if let Some(seq) = last_seq {
                durable.written = seq;
            }
            take_audit(out, &mut entries);
            durable.announcer.written(entries);
            durable.announcer.durable_up_to(durable.written);
            durable.lazy_since = None;
            if durable.failing.swap(false, Ordering::Relaxed) {
                info!("storage works again");
            }
        }
        Err(e) => {
            error!(
                "STORAGE FAILURE: {e}; refusing this batch's requests with `unavailable` and returning to the last durable state"
            );
            durable.failing.store(true, Ordering::Relaxed);
            let mut answered = std::collections::HashSet::new();
            let refused: Vec<Output> = out
                .drain(..)
                .filter_map(|o| match o {
                    Output::Send { conn, env } => {
                        let r = env.r#ref?;
                        answered.insert((conn, r)).then(|| Output::Send {
                            conn,
                            env: Envelope::reply(
                                Some(r),
                                ServerMsg::error(
                                    ErrorCode::Unavailable,
                                    format!("storage failed, nothing was changed: {e}"),
                                ),
                            ),
                        })
                    }
                    Output::Close { .. } => Some(o),
                    Output::Audit(_) => None,
                })
                .collect();
            *out = refused;
            // Entries of earlier reads went out with this batch: they stay deferred, and the
            // engine's audit `seq` does not go back below them.
            let mut batch = batch;
            batch.audit.truncate(deferred);
            let kept_last = batch.audit.last().map(|(seq, _)| *seq);
            durable.deferred = batch.audit;
            if !durable.deferred.is_empty() && durable.lazy_since.is_none() {
                durable.lazy_since = Some(tokio::time::Instant::now());
            }
            let loader = store.clone();
            match tokio::task::spawn_blocking(move || loader.load()).await {
                Ok(Ok(mut snapshot)) => {
                    if let Some(seq) = kept_last {
                        snapshot.audit_last_seq = snapshot.audit_last_seq.max(seq);
                    }
                    if let Err(e) = engine.restore(snapshot, now) {
                        error!("STORAGE FAILURE: cannot return to the durable state: {e}");
                    }
                }
                Ok(Err(e)) => error!("STORAGE FAILURE: cannot reload the durable state: {e}"),
                Err(e) => error!("STORAGE FAILURE: reload task failed: {e}"),
            }
        }
    }
}

/// Moves the audit entries out of `out` into `entries`, logging each at debug level.
fn take_audit(out: &mut Vec<Output>, entries: &mut Vec<AuditEntry>) {
    for o in out.extract_if(.., |o| matches!(o, Output::Audit(_))) {
        if let Output::Audit(entry) = o {
            log_audit(&entry);
            entries.push(entry);
        }
    }
}

/// Carries out the engine's outputs. A connection whose queue is full is dropped here, and its
/// disconnection is fed straight back into the engine so that its state moves on at once.
async fn dispatch(
    engine: &mut Engine,
    conns: &mut HashMap<ConnId, ConnHandle>,
    out: &mut Vec<Output>,
    now: u64,
    store: &Arc<dyn Store>,
    durable: &mut Durability,
) {
    let mut dropped: Vec<ConnId> = Vec::new();
    while !out.is_empty() {
        for output in out.drain(..) {
            match output {
                Output::Send { conn, env } => {
                    let Some(handle) = conns.get(&conn) else {
                        continue;
                    };
                    match handle.tx.try_send(Outbound::Frame(env.to_bytes())) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            warn!(
                                conn,
                                peer = %handle.peer,
                                role = %handle.role,
                                "dropping connection: its outbound queue is full (the client is not reading)"
                            );
                            handle.cancel.cancel();
                            conns.remove(&conn);
                            dropped.push(conn);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
                Output::Close { conn } => {
                    if let Some(handle) = conns.remove(&conn) {
                        if handle.tx.try_send(Outbound::Close).is_err() {
                            handle.cancel.cancel();
                        }
                    }
                }
                // Handed to the announcer by `commit`; only a batch that wrote nothing has none.
                Output::Audit(entry) => log_audit(&entry),
            }
        }
        let mut more = Vec::new();
        for conn in dropped.drain(..) {
            engine.handle(now, Input::Disconnected { conn }, &mut more);
        }
        if !more.is_empty() {
            commit(engine, store, durable, &mut more, now).await;
        }
        out.append(&mut more);
    }
}

fn log_audit(entry: &AuditEntry) {
    debug!(target: "baton::audit", seq = entry.seq, kind = entry.kind.as_str(),
        record = entry.record.as_deref(), agent = entry.agent.as_deref(),
        access = entry.access.map(Access::as_str), code = entry.code.map(ErrorCode::as_str),
        cause = entry.cause.as_deref(), "audit");
}

struct ConnCtx {
    conn: ConnId,
    peer: SocketAddr,
    config: Arc<Config>,
    engine: mpsc::Sender<EngineMsg>,
    cancel: CancellationToken,
    shared: Shared,
}

fn error_frame(r#ref: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Bytes {
    Envelope::reply(r#ref, ServerMsg::error(code, message)).to_bytes()
}

async fn refuse_overloaded(socket: TcpStream, ctx: &ConnCtx) {
    warn!(
        max_connections = ctx.config.max_connections,
        "refusing connection: server is at max_connections"
    );
    let mut writer = FramedWrite::new(socket, FrameCodec::new(ctx.config.max_frame_bytes));
    let frame = error_frame(
        None,
        ErrorCode::Overloaded,
        format!(
            "the server is serving its limit of {} connections; try again later",
            ctx.config.max_connections
        ),
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.send(frame)).await;
}

async fn serve_connection(socket: TcpStream, ctx: ConnCtx) {
    let _ = socket.set_nodelay(true);
    let (read_half, write_half) = socket.into_split();
    // Small initial buffers: most connections send and receive small frames, and an idle desktop
    // should cost little memory. Both grow on demand for bigger frames.
    let mut reader = FramedRead::with_capacity(
        read_half,
        FrameCodec::new(ctx.config.max_frame_bytes),
        CONN_BUFFER,
    );
    let mut writer = FramedWrite::with_capacity(
        write_half,
        FrameCodec::new(ctx.config.max_frame_bytes),
        CONN_BUFFER,
    );
    writer.set_backpressure_boundary(64 * 1024);
    let (tx, rx) = mpsc::channel(ctx.config.outbound_queue_frames);
    let writer_task = tokio::spawn(write_loop(writer, rx, ctx.cancel.clone()).in_current_span());

    let registered = match handshake(&mut reader, &tx, &ctx).await {
        Some(role) => {
            tracing::Span::current().record("role", role.as_str());
            let msg = EngineMsg::Connected {
                conn: ctx.conn,
                role,
                peer: ctx.peer,
                tx: tx.clone(),
                cancel: ctx.cancel.clone(),
            };
            if ctx.engine.send(msg).await.is_ok() {
                debug!("session open");
                read_loop(&mut reader, &tx, &ctx, role).await;
                true
            } else {
                false
            }
        }
        None => false,
    };
    if registered {
        let _ = ctx
            .engine
            .send(EngineMsg::Disconnected { conn: ctx.conn })
            .await;
    }
    // Let the writer send what is queued (an error, a last reply), then close.
    if tx.try_send(Outbound::Close).is_err() {
        ctx.cancel.cancel();
    }
    drop(tx);
    if tokio::time::timeout(Duration::from_secs(2), writer_task)
        .await
        .is_err()
    {
        ctx.cancel.cancel();
    }
    debug!("connection closed");
}

/// Queues a frame on this connection's own queue; false when the queue is full or closed.
fn queue(tx: &mpsc::Sender<Outbound>, frame: Bytes) -> bool {
    tx.try_send(Outbound::Frame(frame)).is_ok()
}

/// Waits for `Hello` and answers it. Returns the role, or `None` after sending the error.
async fn handshake(
    reader: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
    tx: &mpsc::Sender<Outbound>,
    ctx: &ConnCtx,
) -> Option<Role> {
    let first = tokio::select! {
        _ = ctx.cancel.cancelled() => return None,
        r = tokio::time::timeout(ctx.config.handshake_timeout(), reader.next()) => r,
    };
    let frame = match first {
        Err(_) => {
            info!(
                "closing: no Hello within {} ms",
                ctx.config.handshake_timeout_ms
            );
            queue(
                tx,
                error_frame(
                    None,
                    ErrorCode::HelloRequired,
                    format!(
                        "no Hello within handshake_timeout_ms ({} ms)",
                        ctx.config.handshake_timeout_ms
                    ),
                ),
            );
            return None;
        }
        Ok(None) => return None,
        Ok(Some(Err(e))) => {
            report_frame_error(tx, &e);
            return None;
        }
        Ok(Some(Ok(frame))) => frame,
    };
    let incoming = match parse_request(&frame, None) {
        Ok(i) => i,
        Err(e) => {
            // A broken Hello is a bad_request; anything that is not a Hello is hello_required.
            let is_hello = e.type_name.as_deref() == Some("Hello");
            let code = match e.code {
                ErrorCode::BadFrame => e.code,
                ErrorCode::BadRequest if is_hello => e.code,
                _ => ErrorCode::HelloRequired,
            };
            let message = if code == ErrorCode::HelloRequired && e.code != code {
                match e.type_name {
                    Some(t) => format!("the first frame must be Hello, not `{t}`"),
                    None => "the first frame must be Hello".to_owned(),
                }
            } else {
                e.message
            };
            info!(code = code.as_str(), "closing: {message}");
            queue(tx, error_frame(e.r#ref, code, message));
            return None;
        }
    };
    let Request::Hello(hello) = incoming.request else {
        unreachable!("parse_request without a role only accepts Hello");
    };
    let r#ref = incoming.r#ref;
    let refuse = |code: ErrorCode, message: String| {
        info!(code = code.as_str(), "closing: {message}");
        queue(tx, error_frame(r#ref, code, message));
        None
    };
    if hello.protocol != PROTOCOL_VERSION {
        return refuse(
            ErrorCode::ProtocolMismatch,
            format!(
                "protocol {} is not supported; this server speaks protocol {PROTOCOL_VERSION}",
                hello.protocol
            ),
        );
    }
    let Some(role) = Role::parse(&hello.role) else {
        return refuse(
            ErrorCode::BadRequest,
            format!(
                "Hello: field `role`: unknown role `{}` (expected desktop, dialer, switch or admin)",
                hello.role
            ),
        );
    };
    let tokens = &ctx.config.tokens;
    let expected = match role {
        Role::Desktop => &tokens.desktop,
        Role::Dialer => &tokens.dialer,
        Role::Switch => &tokens.switch,
        Role::Admin => &tokens.admin,
    };
    if !constant_time_eq(hello.token.as_bytes(), expected.as_bytes()) {
        return refuse(
            ErrorCode::AuthFailed,
            format!("wrong token for role {role}"),
        );
    }
    let welcome = Envelope::reply(
        r#ref,
        ServerMsg::Welcome {
            protocol: PROTOCOL_VERSION,
            server: format!("baton/{}", env!("CARGO_PKG_VERSION")),
            heartbeat_ms: ctx.config.heartbeat_ms,
        },
    );
    queue(tx, welcome.to_bytes()).then_some(role)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn report_frame_error(tx: &mpsc::Sender<Outbound>, e: &FrameError) {
    if e.is_violation() {
        info!("closing: framing violation: {e}");
        queue(tx, error_frame(None, ErrorCode::BadFrame, e.to_string()));
    } else {
        debug!("read failed: {e}");
    }
}

async fn read_loop(
    reader: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
    tx: &mpsc::Sender<Outbound>,
    ctx: &ConnCtx,
    role: Role,
) {
    let idle = ctx.config.idle_timeout();
    loop {
        let next = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            r = tokio::time::timeout(idle, reader.next()) => r,
        };
        let frame = match next {
            Err(_) => {
                info!(
                    "closing: nothing received for {} ms (3 heartbeats)",
                    idle.as_millis()
                );
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                report_frame_error(tx, &e);
                return;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        match parse_request(&frame, Some(role)) {
            Ok(Incoming {
                r#ref,
                request: Request::Ping,
            }) => {
                if !queue(tx, Envelope::reply(r#ref, ServerMsg::Pong).to_bytes()) {
                    warn!("dropping connection: its outbound queue is full (the client is not reading)");
                    return;
                }
            }
            Ok(Incoming {
                request: Request::Pong,
                ..
            }) => {}
            Ok(Incoming {
                r#ref,
                request: Request::AuditTail(t),
            }) => {
                tokio::spawn(
                    audit_tail(ctx.shared.clone(), tx.clone(), r#ref, t, ctx.cancel.clone())
                        .in_current_span(),
                );
            }
            Ok(Incoming {
                r#ref,
                request: Request::Hello(_),
            }) => {
                queue(
                    tx,
                    error_frame(r#ref, ErrorCode::BadRequest, "Hello was already received"),
                );
            }
            Ok(Incoming { r#ref, request }) => {
                if let Request::Login(l) = &request {
                    tracing::Span::current().record("agent", l.agent.as_str());
                }
                let msg = EngineMsg::Request {
                    conn: ctx.conn,
                    r#ref,
                    request,
                };
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return,
                    sent = ctx.engine.send(msg) => if sent.is_err() { return },
                }
            }
            Err(e) if e.code == ErrorCode::BadFrame => {
                info!("closing: framing violation: {}", e.message);
                queue(tx, error_frame(e.r#ref, e.code, e.message));
                return;
            }
            Err(e) => {
                debug!(code = e.code.as_str(), "refused frame: {}", e.message);
                queue(tx, error_frame(e.r#ref, e.code, e.message));
            }
        }
    }
}

async fn write_loop(
    mut writer: FramedWrite<tokio::net::tcp::OwnedWriteHalf, FrameCodec>,
    mut rx: mpsc::Receiver<Outbound>,
    cancel: CancellationToken,
) {
    let result: Result<(), FrameError> = async {
        loop {
            let item = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                item = rx.recv() => item,
            };
            match item {
                Some(Outbound::Frame(bytes)) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        r = writer.feed(bytes) => r?,
                    }
                    // Flush when nothing else is waiting, so bursts go out in few syscalls.
                    if rx.is_empty() {
                        tokio::select! {
                            _ = cancel.cancelled() => return Ok(()),
                            r = writer.flush() => r?,
                        }
                    }
                }
                Some(Outbound::Close) | None => {
                    writer.flush().await?;
                    return Ok(());
                }
            }
        }
    }
    .await;
    if let Err(e) = result {
        debug!("write failed: {e}");
    }
    // Dropping the write half sends FIN; make the reader stop too.
    drop(writer);
    cancel.cancel();
}

/// Serves one `AuditTail`: reads the store by cursor, so a reader that falls behind costs the
/// engine nothing; with `follow`, waits for newly durable entries and sends them as they come.
async fn audit_tail(
    shared: Shared,
    tx: mpsc::Sender<Outbound>,
    r#ref: Option<u64>,
    t: AuditTail,
    cancel: CancellationToken,
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
    let send = |msg: ServerMsg| {
        let tx = tx.clone();
        let frame = Envelope::reply(r#ref, msg).to_bytes();
        async move {
            match tokio::time::timeout(TAIL_STALL, tx.send(Outbound::Frame(frame))).await {
                Ok(Ok(())) => true,
                Ok(Err(_)) => false,
                Err(_) => {
                    warn!(
                        "dropping connection: its audit tail reader took nothing for {} s",
                        TAIL_STALL.as_secs()
                    );
                    false
                }
            }
        }
    };
    let mut last = start_last;
    loop {
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
                    send(ServerMsg::error(
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
                        if !send(ServerMsg::AuditTrimmed {
                            from_seq: cursor,
                            to_seq: last,
                        })
                        .await
                        {
                            cancel.cancel();
                            return;
                        }
                        cursor = last + 1;
                    }
                    break;
                }
                if seq > cursor
                    && !send(ServerMsg::AuditTrimmed {
                        from_seq: cursor,
                        to_seq: seq - 1,
                    })
                    .await
                {
                    cancel.cancel();
                    return;
                }
                cursor = seq + 1;
                let entry: AuditEntry = match serde_json::from_slice(&bytes) {
                    Ok(e) => e,
                    Err(e) => {
                        error!(seq, "audit entry cannot be read back: {e}");
                        continue;
                    }
                };
                if wanted(&entry) && !send(ServerMsg::Audit(entry)).await {
                    cancel.cancel();
                    return;
                }
            }
        }
        if !t.follow {
            send(ServerMsg::AuditEnd { last_seq: last }).await;
            return;
        }
        // Caught up: from here on, entries come from the live feed as they become durable. A
        // reader that falls behind the feed, or finds a hole in it, reads from the store again.
        'live: loop {
            let batch = tokio::select! {
                _ = cancel.cancelled() => return,
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
                        if wanted(entry) && !send(ServerMsg::Audit(AuditEntry::clone(entry))).await
                        {
                            cancel.cancel();
                            return;
                        }
                    }
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
