//! The I/O shell around the engine: sockets, timers and shutdown.
//!
//! Each connection is a reader loop, an outbox (its bounded queue of outbound frames, see
//! [`outbox`]) and a writer task. The reader does the handshake (`Hello`, `Ping`, framing errors)
//! itself and forwards decoded requests to the one engine task; the engine task applies them in
//! arrival order and pushes each output frame onto the target connection's outbox, never waiting.
//! The reader applies backpressure: it reads a client's next request only while that connection's
//! queued frames and unanswered requests leave room, so a client that pipelines is slowed down by
//! TCP flow control, not dropped. A client that stops reading altogether is dropped and logged,
//! and nobody else ever waits for it. The server watches its engine task: if that dies, it stops
//! accepting and reports the failure (and `baton serve` exits, for its supervisor to restart it).

mod outbox;
mod service;

pub use service::{log_panics, serve};

use crate::codec::{FrameCodec, FrameError};
use crate::config::Config;
use crate::engine::{ConnId, Engine, EngineConfig, Input, Output};
use crate::messages::*;
use crate::store::{SledStore, Store, StoreError, WriteBatch};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use outbox::{Outbox, PushError, RoomError};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch, OwnedSemaphorePermit, Semaphore};
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
/// Initial read buffer of a connection, in bytes.
const CONN_BUFFER: usize = 1024;
/// How long shutdown waits for connections to write their last frames.
const DRAIN: Duration = Duration::from_secs(3);
/// Audit entries of reads and refusals (no state change) are written and flushed together at
/// most this much later, instead of making the reply wait for the disk.
const LAZY_FLUSH: Duration = Duration::from_millis(20);
/// How often final-record retention looks for records to delete, and how many it deletes at
/// most each time (10,000 a second is far beyond any centre's rate of finishing records).
const PURGE_EVERY: Duration = Duration::from_secs(1);
const PURGE_CHUNK: usize = 10_000;
/// Audit entries an audit tail reads from the store at a time.
const TAIL_CHUNK: usize = 256;
/// Batches of newly durable audit entries kept for following tails that fell behind; one that
/// falls further behind reads what it missed from the store.
const TAIL_LIVE_BATCHES: usize = 1024;

/// Exit status of `baton serve` when its engine task dies (`EX_SOFTWARE` of sysexits.h): not 0,
/// so that systemd or any supervisor restarts it.
pub const ENGINE_FAILURE_EXIT_CODE: i32 = 70;

/// Why the server could not start, or stopped serving on its own.
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
    /// The engine task died (a panic): nothing would be answered any more, so the server stopped.
    #[error("ENGINE FAILURE: {0}")]
    EngineFailed(String),
    #[error("the server task failed: {0}")]
    Task(String),
}

/// A switch that makes the engine task panic at its next batch, as a bug in the engine would.
/// Only tests set it: there is no config key, flag or environment variable that reaches it. They
/// use it to prove that a dead engine stops the server rather than leaving it accepting
/// connections that nobody answers.
pub type EngineFault = Arc<AtomicBool>;

/// What the server does when its engine task dies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnEngineFailure {
    /// Stop accepting, close every connection, and end: [`ServerHandle::wait`] returns
    /// [`ServerError::EngineFailed`]. For a server inside another program, such as a test.
    #[default]
    Report,
    /// Log and exit the process at once with [`ENGINE_FAILURE_EXIT_CODE`], for the supervisor to
    /// restart it (the restart restores the store). What `baton serve` does.
    ExitProcess,
}

/// How to start a server, beyond its [`Config`].
#[derive(Clone, Default)]
pub struct StartOptions {
    /// The store to serve from; `None` opens sled in `config.data_dir`.
    pub store: Option<Arc<dyn Store>>,
    pub on_engine_failure: OnEngineFailure,
    /// See [`EngineFault`]; `None` outside tests.
    pub engine_fault: Option<EngineFault>,
}

impl StartOptions {
    /// What `baton serve` runs with: sled in the data directory, and a dead engine exits the
    /// process.
    pub fn service() -> StartOptions {
        StartOptions {
            on_engine_failure: OnEngineFailure::ExitProcess,
            ..StartOptions::default()
        }
    }
}

/// Milliseconds since the Unix epoch, the engine's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

enum EngineMsg {
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
}

struct ConnHandle {
    outbox: Arc<Outbox>,
    cancel: CancellationToken,
    peer: SocketAddr,
    role: Role,
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

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

impl ServerHandle {
    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, tells every client, drains the queues and waits for the server to end.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(e) = self.wait().await {
            error!("{e}");
        }
    }

    /// Waits until the server ends: after [`ServerHandle::stop_token`] is cancelled (`Ok`), or on
    /// its own because its engine task died ([`ServerError::EngineFailed`]; the listener is then
    /// closed and every connection with it).
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task
            .await
            .unwrap_or_else(|e| Err(ServerError::Task(e.to_string())))
    }

    /// Cancelling this token stops the server as [`ServerHandle::shutdown`] does.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// Opens the sled store in `config.data_dir`, loads it, binds `config.listen` and serves until the
/// handle is shut down.
pub async fn start(config: Config) -> Result<ServerHandle, ServerError> {
    start_with_options(config, StartOptions::default()).await
}

/// Serves with the given store (tests use [`crate::store::MemoryStore`]).
pub async fn start_with_store(
    config: Config,
    store: Arc<dyn Store>,
) -> Result<ServerHandle, ServerError> {
    let opts = StartOptions {
        store: Some(store),
        ..StartOptions::default()
    };
    start_with_options(config, opts).await
}

/// Loads the store (`opts.store`, or sled in `config.data_dir`), binds `config.listen` and serves
/// until the handle is shut down or the engine dies (see [`OnEngineFailure`]).
pub async fn start_with_options(
    config: Config,
    opts: StartOptions,
) -> Result<ServerHandle, ServerError> {
    config.validate()?;
    let store = match opts.store.clone() {
        Some(store) => store,
        None => open_sled(&config).await?,
    };
    serve_store(config, store, opts).await
}

async fn open_sled(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    let (dir, cache) = (config.data_dir.clone(), config.store_cache_bytes);
    let opening = std::time::Instant::now();
    let store = tokio::task::spawn_blocking(move || SledStore::open_with_cache(&dir, cache))
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
    Ok(Arc::new(store))
}

async fn serve_store(
    config: Config,
    store: Arc<dyn Store>,
    opts: StartOptions,
) -> Result<ServerHandle, ServerError> {
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
    let task = tokio::spawn(run(listener, config, stop.clone(), engine, shared, opts));
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
    opts: StartOptions,
) -> Result<(), ServerError> {
    let (engine_tx, engine_rx) = mpsc::channel(ENGINE_QUEUE);
    let mut engine_task = tokio::spawn(engine_loop(
        engine,
        engine_rx,
        shared.store.clone(),
        shared.announcer.clone(),
        opts.engine_fault.clone(),
        config.max_deferred_audit_entries as usize,
        config.final_record_retention_ms,
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

    let mut engine_failure = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            // The engine only ends after the server stops: ending before means it died, and a
            // server that accepts connections nobody answers would look alive to everyone.
            ended = &mut engine_task => {
                engine_failure = Some(match ended {
                    Ok(()) => "the engine task ended on its own".to_owned(),
                    Err(e) if e.is_panic() => panic_message(e.into_panic().as_ref()),
                    Err(e) => e.to_string(),
                });
                break;
            }
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
    if let Some(why) = engine_failure {
        if opts.on_engine_failure == OnEngineFailure::ExitProcess {
            error!(
                "ENGINE FAILURE: {why}; no longer accepting; exiting with status \
                 {ENGINE_FAILURE_EXIT_CODE} for the supervisor to restart the server"
            );
            std::process::exit(ENGINE_FAILURE_EXIT_CODE);
        }
        error!("ENGINE FAILURE: {why}; no longer accepting, closing every connection");
        // Nobody would answer them any more: close them at once rather than drain.
        stop.cancel();
        hard_stop.cancel();
        tracker.close();
        tracker.wait().await;
        if let Some(task) = retention {
            let _ = task.await;
        }
        return Err(ServerError::EngineFailed(why));
    }
    info!("shutting down: no longer accepting, telling clients");
    let _ = engine_tx.send(EngineMsg::Shutdown).await;
    drop(engine_tx);
    tracker.close();
    if tokio::time::timeout(DRAIN, tracker.wait()).await.is_err() {
        warn!("connections did not finish within {DRAIN:?}; closing them");
        hard_stop.cancel();
        tracker.wait().await;
    }
    let ended = engine_task.await;
    if let Some(task) = retention {
        let _ = task.await;
    }
    if let Err(e) = ended {
        // What it had not yet written (audit entries of the last reads) may be lost.
        let why = match e.try_into_panic() {
            Ok(payload) => panic_message(payload.as_ref()),
            Err(e) => e.to_string(),
        };
        error!("ENGINE FAILURE during shutdown: {why}");
        return Err(ServerError::EngineFailed(why));
    }
    info!("shutdown complete");
    Ok(())
}

/// The message a panic was raised with.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
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
    /// Deferred audit entries kept at most (`max_deferred_audit_entries`).
    max_deferred: usize,
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
    fault: Option<EngineFault>,
    max_deferred: usize,
    final_retention_ms: u64,
) {
    let written = *announcer.durable.borrow();
    let mut durable = Durability {
        announcer,
        written,
        deferred: Vec::new(),
        max_deferred,
        lazy_since: None,
        failing: Arc::new(AtomicBool::new(false)),
    };
    let mut conns: HashMap<ConnId, ConnHandle> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<EngineMsg> = Vec::with_capacity(ENGINE_BATCH);
    let mut inputs: Vec<Input> = Vec::new();
    let mut out: Vec<Output> = Vec::new();
    let mut answered = Answered::default();
    let mut shutting_down = false;
    let mut purge = tokio::time::interval(PURGE_EVERY);
    purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut purge_due = false;
        tokio::select! {
            n = rx.recv_many(&mut batch, ENGINE_BATCH) => {
                if n == 0 {
                    break;
                }
            }
            _ = tick.tick() => inputs.push(Input::Tick),
            _ = purge.tick(), if final_retention_ms > 0 && !shutting_down => purge_due = true,
            _ = tokio::time::sleep_until(durable.lazy_since.map_or_else(tokio::time::Instant::now, |t| t + LAZY_FLUSH)), if durable.lazy_since.is_some() => {
                durable.flush_lazy(&store);
            }
        }
        if fault.as_ref().is_some_and(|f| f.load(Ordering::Relaxed)) {
            panic!("engine fault injected through StartOptions::engine_fault");
        }
        if purge_due {
            // Its own batch, before any request: a request that names a purged record then
            // finds it gone from the store too.
            purge_old_finals(&mut engine, &store, &mut durable, final_retention_ms).await;
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
                    conns.insert(
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
        // One batch, all or nothing: if the store refuses its writes, the engine goes back to
        // exactly where it was before it (see `commit`).
        engine.begin();
        let mut info = BatchInfo::default();
        // Requests refused before the engine saw them; answered whatever becomes of the batch.
        let mut unread: Vec<Output> = Vec::new();
        for input in inputs.drain(..) {
            if let Some(id) = engine.record_to_load(&input) {
                // A final record that left memory: read it back first, so that the answer is
                // the one it would have had in memory.
                if let Err(e) = read_back(&mut engine, &store, id) {
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
            engine.handle(now, input, &mut out);
        }
        // Group commit: everything this batch changed goes to disk in one write and one flush,
        // and nothing of it is sent before that returns.
        commit(&mut engine, &store, &mut durable, &mut out, now, info).await;
        out.append(&mut unread);
        dispatch(&mut engine, &mut conns, &mut out, now, &store, &mut durable).await;
        // Only now, with their answers queued, do the requests stop counting as in flight.
        answered.settle();
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

/// What the shell must know of a batch to refuse it: the requests to answer `unavailable`, and
/// the facts (connections opened or closed, shutdown) to apply again after the rollback.
#[derive(Default)]
struct BatchInfo {
    requests: Vec<(ConnId, Option<u64>)>,
    facts: Vec<Input>,
}

impl BatchInfo {
    fn note(&mut self, input: &Input) {
        match input {
            Input::Request { conn, r#ref, .. } => self.requests.push((*conn, *r#ref)),
            fact if Engine::is_fact(fact) => self.facts.push(fact.clone()),
            _ => {}
        }
    }
}

/// Final-record retention: deletes, in one batch, up to `PURGE_CHUNK` of the records that became
/// final more than `retention_ms` ago (the store's index of finals gives them oldest first).
async fn purge_old_finals(
    engine: &mut Engine,
    store: &Arc<dyn Store>,
    durable: &mut Durability,
    retention_ms: u64,
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
                Ok(Some(bytes)) => crate::engine::stored_record_final_ms(&bytes).unwrap_or(None),
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
    commit(engine, store, durable, &mut out, now, BatchInfo::default()).await;
    debug!(examined = expired.len(), "final-record retention ran");
}

/// Reads a final record that left the engine's memory back from the store (nothing to do if the
/// store does not have it: the request names a record that never existed).
fn read_back(engine: &mut Engine, store: &Arc<dyn Store>, id: &str) -> Result<(), String> {
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
async fn commit(
    engine: &mut Engine,
    store: &Arc<dyn Store>,
    durable: &mut Durability,
    out: &mut Vec<Output>,
    now: u64,
    info: BatchInfo,
) {
    let mut batch = engine.take_writes();
    if batch.is_empty() {
        engine.commit();
        return;
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
        if durable.deferred.len() + batch.audit.len() > durable.max_deferred {
            // The disk has not taken the entries of earlier reads: answering more reads would
            // only grow memory. Refuse them until it catches up.
            let why = format!(
                "{} audit entries of reads are waiting for the disk (max_deferred_audit_entries)",
                durable.deferred.len()
            );
            error!("STORAGE FAILURE: {why}; refusing this batch's requests with `unavailable`");
            refuse(engine, out, now, info, &why);
            return;
        }
        engine.commit();
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
            engine.commit();
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
                "STORAGE FAILURE: {e}; refusing this batch's requests with `unavailable` and returning to the state before it"
            );
            durable.failing.store(true, Ordering::Relaxed);
            // Entries of earlier reads went out with this batch: they stay deferred (the
            // engine's audit `seq` only goes back to where this batch started, past them).
            let mut batch = batch;
            batch.audit.truncate(deferred);
            durable.deferred = batch.audit;
            if !durable.deferred.is_empty() && durable.lazy_since.is_none() {
                durable.lazy_since = Some(tokio::time::Instant::now());
            }
            refuse(engine, out, now, info, &e.to_string());
        }
    }
}

/// Takes the batch back: its requests are answered `unavailable`, nothing else it produced is
/// sent, and the connection changes in it are applied again (their outputs, a `Monitor` to a new
/// switch link or the shutdown's goodbyes, are sent).
fn refuse(engine: &mut Engine, out: &mut Vec<Output>, now: u64, info: BatchInfo, why: &str) {
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
                ServerMsg::error(
                    ErrorCode::Unavailable,
                    format!("storage failed, nothing was changed: {why}"),
                ),
            ),
        });
    }
    for fact in info.facts {
        engine.reapply_fact(now, fact, out);
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

/// Carries out the engine's outputs. A connection whose queue is at its hard cap has stopped
/// reading: it is dropped here, and its disconnection is fed straight back into the engine so that
/// its state moves on at once.
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
                            handle.cancel.cancel();
                            conns.remove(&conn);
                            dropped.push(conn);
                        }
                        Err(PushError::Closed) => {}
                    }
                }
                Output::Close { conn } => {
                    if let Some(handle) = conns.remove(&conn) {
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
        Box::pin(commit(engine, store, durable, &mut more, now, info)).await;
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
    // A small initial read buffer: most connections send small frames, and an idle desktop should
    // cost little memory. It grows on demand for bigger frames.
    let mut reader = FramedRead::with_capacity(
        read_half,
        FrameCodec::new(ctx.config.max_frame_bytes),
        CONN_BUFFER,
    );
    let outbox = Arc::new(Outbox::new(
        ctx.config.outbound_queue_frames,
        ctx.config.idle_timeout(),
    ));
    let writer_task = tokio::spawn(
        outbox::write_loop(write_half, outbox.clone(), ctx.cancel.clone()).in_current_span(),
    );

    let registered = match handshake(&mut reader, &outbox, &ctx).await {
        Some(role) => {
            tracing::Span::current().record("role", role.as_str());
            let msg = EngineMsg::Connected {
                conn: ctx.conn,
                role,
                peer: ctx.peer,
                outbox: outbox.clone(),
                cancel: ctx.cancel.clone(),
            };
            if ctx.engine.send(msg).await.is_ok() {
                debug!("session open");
                read_loop(&mut reader, &outbox, &ctx, role).await;
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
    outbox.close();
    if tokio::time::timeout(Duration::from_secs(2), writer_task)
        .await
        .is_err()
    {
        ctx.cancel.cancel();
    }
    debug!("connection closed");
}

/// Waits for `Hello` and answers it. Returns the role, or `None` after sending the error.
async fn handshake(
    reader: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
    outbox: &Outbox,
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
            let _ = outbox.push(error_frame(
                None,
                ErrorCode::HelloRequired,
                format!(
                    "no Hello within handshake_timeout_ms ({} ms)",
                    ctx.config.handshake_timeout_ms
                ),
            ));
            return None;
        }
        Ok(None) => return None,
        Ok(Some(Err(e))) => {
            report_frame_error(outbox, &e);
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
            let _ = outbox.push(error_frame(e.r#ref, code, message));
            return None;
        }
    };
    let Request::Hello(hello) = incoming.request else {
        unreachable!("parse_request without a role only accepts Hello");
    };
    let r#ref = incoming.r#ref;
    let refuse = |code: ErrorCode, message: String| {
        info!(code = code.as_str(), "closing: {message}");
        let _ = outbox.push(error_frame(r#ref, code, message));
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
    outbox.push(welcome.to_bytes()).is_ok().then_some(role)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn report_frame_error(outbox: &Outbox, e: &FrameError) {
    if e.is_violation() {
        info!("closing: framing violation: {e}");
        let _ = outbox.push(error_frame(None, ErrorCode::BadFrame, e.to_string()));
    } else {
        debug!("read failed: {e}");
    }
}

/// Drops a connection whose client has stopped reading.
fn drop_not_reading(ctx: &ConnCtx, role: Role, outbox: &Outbox, why: &str) {
    warn!(
        conn = ctx.conn,
        peer = %ctx.peer,
        role = %role,
        queued = outbox.pending(),
        "dropping connection: the client is not reading ({why})"
    );
    ctx.cancel.cancel();
}

/// Queues an answer the reader produces itself; false when the connection must end.
fn answer(outbox: &Outbox, frame: Bytes) -> bool {
    outbox.push_reply(frame).is_ok()
}

async fn read_loop(
    reader: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
    outbox: &Arc<Outbox>,
    ctx: &ConnCtx,
    role: Role,
) {
    let idle = ctx.config.idle_timeout();
    // Created with the first AuditTail: most connections never ask for one.
    let mut tail_slots: Option<Arc<Semaphore>> = None;
    loop {
        // Backpressure: the next request is read only once its answer has room. Meanwhile the
        // socket is not read, so TCP flow control slows a client that writes faster than it
        // reads; and the idle timer does not run, since such a client is not silent.
        let room = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            r = outbox.room_for_request(idle) => r,
        };
        match room {
            Ok(()) => {}
            Err(RoomError::Closed) => return,
            Err(RoomError::NotReading) => {
                let why = format!(
                    "it took nothing of its queued answers for {} ms, 3 heartbeats",
                    idle.as_millis()
                );
                drop_not_reading(ctx, role, outbox, &why);
                return;
            }
        }
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
                report_frame_error(outbox, &e);
                return;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        match parse_request(&frame, Some(role)) {
            Ok(Incoming {
                r#ref,
                request: Request::Ping,
            }) => {
                let pong = Envelope::reply(r#ref, ServerMsg::Pong).to_bytes();
                if !answer(outbox, pong) {
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
                let limit = ctx.config.max_audit_tails_per_connection;
                let slots = tail_slots.get_or_insert_with(|| Arc::new(Semaphore::new(limit)));
                match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let tail = TailOut {
                            outbox: outbox.clone(),
                            r#ref,
                            cancel: ctx.cancel.clone(),
                        };
                        tokio::spawn(
                            audit_tail(ctx.shared.clone(), tail, t, slot).in_current_span(),
                        );
                    }
                    Err(_) => {
                        let refusal = error_frame(
                            r#ref,
                            ErrorCode::Overloaded,
                            format!(
                                "this connection already runs {limit} audit tails, the limit \
                                 (max_audit_tails_per_connection = {limit}); use another connection"
                            ),
                        );
                        if !answer(outbox, refusal) {
                            return;
                        }
                    }
                }
            }
            Ok(Incoming {
                r#ref,
                request: Request::Hello(_),
            }) => {
                let refusal =
                    error_frame(r#ref, ErrorCode::BadRequest, "Hello was already received");
                if !answer(outbox, refusal) {
                    return;
                }
            }
            Ok(Incoming { r#ref, request }) => {
                if let Request::Login(l) = &request {
                    tracing::Span::current().record("agent", l.agent.as_str());
                }
                outbox.request_sent();
                let msg = EngineMsg::Request {
                    conn: ctx.conn,
                    r#ref,
                    request,
                    outbox: outbox.clone(),
                };
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return,
                    sent = ctx.engine.send(msg) => if sent.is_err() { return },
                }
            }
            Err(e) if e.code == ErrorCode::BadFrame => {
                info!("closing: framing violation: {}", e.message);
                let _ = outbox.push(error_frame(e.r#ref, e.code, e.message));
                return;
            }
            Err(e) => {
                debug!(code = e.code.as_str(), "refused frame: {}", e.message);
                if !answer(outbox, error_frame(e.r#ref, e.code, e.message)) {
                    return;
                }
            }
        }
    }
}

/// Where an audit tail's frames go: its connection's outbox, with the tail's `ref`.
struct TailOut {
    outbox: Arc<Outbox>,
    r#ref: Option<u64>,
    cancel: CancellationToken,
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
async fn audit_tail(shared: Shared, out: TailOut, t: AuditTail, slot: OwnedSemaphorePermit) {
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
                let entry: AuditEntry = match serde_json::from_slice(&bytes) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

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
        let login = Request::Login(Login {
            agent: "A".into(),
            dn: "7001".into(),
            password: None,
            resume: None,
        });
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
            announcer: Arc::new(Announcer::new(watch::channel(0).0)),
            written: 0,
            deferred: Vec::new(),
            max_deferred: 3,
            lazy_since: None,
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
        commit(&mut engine, &store, &mut durable, &mut out, 1_000, info).await;
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
        commit(&mut engine, &store, &mut durable, &mut out, 1_000, info).await;
        assert_eq!(codes(&out), vec![ErrorCode::Unavailable; 2]);
        assert_eq!(durable.deferred.len(), 2);
        assert_eq!(engine.counts().audit_last_seq, seq);
        // Once the disk has taken the waiting entries, reads are answered again.
        durable.flush_lazy(&store);
        let (mut out, info) = batch(&mut engine, 14..15);
        commit(&mut engine, &store, &mut durable, &mut out, 1_000, info).await;
        assert_eq!(codes(&out), vec![ErrorCode::NoSuchRecord]);
    }
}
