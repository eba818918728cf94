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
//!
//! This file owns the public API (`start*`, [`StartOptions`], [`ServerHandle`], [`ServerError`])
//! and the wiring: it opens and loads the store, builds the engine, binds the listener and hands
//! them to the rooms below. It never handles a frame or an engine output itself.
//!
//! - `accept`: the accept loop and the shutdown sequence;
//! - `connection`: a connection's handshake and read loop (its backpressure included);
//! - `outbox`: a connection's bounded outbound queue and its writer task;
//! - `engine_task`: the one task that owns the engine, its batches and the dispatch of outputs;
//! - `commit`: group commit, lazy flush, refusal and rollback, read-back of final records;
//! - `audit_feed`: the announcer of durable audit entries and the `AuditTail` request;
//! - `retention`: audit trimming and the purge of old final records;
//! - `service`: running as `baton serve` does (signals, panics to the log).

mod accept;
mod audit_feed;
mod commit;
mod connection;
mod engine_task;
mod http;
mod metrics;
mod ops;
mod outbox;
mod retention;
mod service;
mod tls;

pub use service::{log_panics, serve};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::engine::{Engine, EngineConfig};
use crate::messages::Startup;
use crate::store::{SledStore, Store, StoreError};
use audit_feed::Announcer;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Exit status of `baton serve` when its engine task dies (`EX_SOFTWARE` of sysexits.h): not 0,
/// so that systemd or any supervisor restarts it.
pub const ENGINE_FAILURE_EXIT_CODE: i32 = 70;

/// Why the server could not start, or stopped serving on its own.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    // The causes are named `error`, not `source`: their text is already in the message, and a
    // source would print it a second time under "Caused by".
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot open the data directory {dir}: {error}")]
    Store { dir: String, error: StoreError },
    #[error("cannot load the stored state: {0}")]
    Load(String),
    #[error("cannot set up agent authentication: {0}")]
    Auth(String),
    #[error("cannot set up TLS: {0}")]
    Tls(String),
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
    /// Serve as a standby node of a cluster: every `Hello` is answered `not_active` with the
    /// address of the active node, and `/readyz` answers 503.
    pub standby: Option<Arc<StandbyView>>,
}

/// Where the active node of a cluster is reached, as it announces itself in the election.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ActiveNode {
    pub node: String,
    /// `host:port` of its framed-JSON listener.
    pub advertise: String,
    /// `host:port` of its HTTP listener (WebSocket desktops), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_http: Option<String>,
}

/// What a standby node tells the clients that reach it: which node is active, kept current by
/// the node's supervisor.
#[derive(Debug, Default)]
pub struct StandbyView {
    active: std::sync::RwLock<Option<ActiveNode>>,
}

impl StandbyView {
    pub fn set_active(&self, active: Option<ActiveNode>) {
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = active;
    }

    pub fn active(&self) -> Option<ActiveNode> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
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

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
    reloadable: Reloadable,
    /// Cancelled once the server has ended, whatever ended it.
    ended: CancellationToken,
}

/// What SIGHUP reloads: the agents file or JWKS, and the TLS certificates.
#[derive(Clone)]
struct Reloadable {
    auth: Arc<Authenticator>,
    tls: Option<Arc<tls::Tls>>,
}

impl Reloadable {
    fn reload(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Err(e) = self.auth.reload() {
            errors.push(e);
        }
        if let Some(tls) = &self.tls {
            if let Err(e) = tls.reload() {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl ServerHandle {
    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the HTTP listener (WebSocket desktops, pages) is bound to, if there is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
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

    /// Reads the agents file (or JWKS) and the TLS certificate, key and client CA again, as
    /// SIGHUP does. Sessions stay open; what fails to load is reported and the old one kept.
    pub fn reload(&self) -> Result<(), String> {
        self.reloadable.reload()
    }

    /// [`ServerHandle::reload`] as a function that outlives the handle (for a signal task).
    pub fn reloader(&self) -> impl Fn() -> Result<(), String> + Send + 'static {
        let reloadable = self.reloadable.clone();
        move || reloadable.reload()
    }

    /// Cancelled once the server has ended (stopped, or its engine died): for waiting on it
    /// without giving up the handle.
    pub fn ended(&self) -> CancellationToken {
        self.ended.clone()
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
    let (store, open_ms) = match opts.store.clone() {
        Some(store) => (store, 0),
        None => open_sled(&config).await?,
    };
    serve_store(config, store, open_ms, opts).await
}

/// Opens sled in `config.data_dir`; returns it and how long the open took (ms).
async fn open_sled(config: &Config) -> Result<(Arc<dyn Store>, u64), ServerError> {
    let (dir, cache) = (config.data_dir.clone(), config.store_cache_bytes);
    let opening = std::time::Instant::now();
    let store = tokio::task::spawn_blocking(move || SledStore::open_with_cache(&dir, cache))
        .await
        .expect("store open does not panic")
        .map_err(|error| ServerError::Store {
            dir: config.data_dir.display().to_string(),
            error,
        })?;
    let open_ms = opening.elapsed().as_millis() as u64;
    info!(dir = %config.data_dir.display(), open_ms, "store opened");
    Ok((Arc::new(store), open_ms))
}

async fn serve_store(
    config: Config,
    store: Arc<dyn Store>,
    open_ms: u64,
    opts: StartOptions,
) -> Result<ServerHandle, ServerError> {
    let auth =
        Arc::new(Authenticator::new(&config.auth).map_err(|e| ServerError::Auth(e.to_string()))?);
    let tls = match &config.tls {
        Some(t) => Some(Arc::new(tls::Tls::new(t).map_err(ServerError::Tls)?)),
        None => None,
    };
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
    let startup = Startup {
        open_ms,
        load_ms: loaded.as_millis() as u64,
        restore_ms: (started.elapsed() - loaded).as_millis() as u64,
    };
    engine.set_startup(startup);
    info!(
        records,
        agents,
        audit_last_seq,
        load_ms = startup.load_ms,
        restore_ms = startup.restore_ms,
        "state loaded"
    );
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|error| ServerError::Bind {
            addr: config.listen,
            error,
        })?;
    let addr = listener.local_addr().map_err(|error| ServerError::Bind {
        addr: config.listen,
        error,
    })?;
    let http = match config.http_addr() {
        Some(http_addr) => {
            Some(
                TcpListener::bind(http_addr)
                    .await
                    .map_err(|error| ServerError::Bind {
                        addr: http_addr,
                        error,
                    })?,
            )
        }
        None => None,
    };
    let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    let stop = CancellationToken::new();
    let config = Arc::new(config);
    let announcer = Arc::new(Announcer::new(watch::channel(audit_last_seq).0));
    let reloadable = Reloadable {
        auth: auth.clone(),
        tls: tls.clone(),
    };
    let metrics = Arc::new(metrics::Metrics::new(now_ms() / 1000));
    let observer = metrics.clone();
    store.observe_flushes(Box::new(move |took| observer.flush(took)));
    let shared = Shared {
        store,
        announcer,
        auth,
        tls,
        metrics,
        standby: opts.standby.clone(),
    };
    let ended = CancellationToken::new();
    let ending = ended.clone();
    let serving = accept::run(listener, http, config, stop.clone(), engine, shared, opts);
    let task = tokio::spawn(async move {
        let result = serving.await;
        ending.cancel();
        result
    });
    info!(%addr, tls = reloadable.tls.is_some(), agents = reloadable.auth.mode().as_str(), "baton listening");
    if let Some(http_addr) = http_addr {
        let (ws, http) = match reloadable.tls {
            Some(_) => ("wss", "https"),
            None => ("ws", "http"),
        };
        info!(
            %http_addr,
            "HTTP listening: WebSocket desktops at {ws}://{http_addr}/ws, the agent desktop at {http}://{http_addr}/desk/"
        );
    }
    Ok(ServerHandle {
        addr,
        http_addr,
        stop,
        task,
        reloadable,
        ended,
    })
}

/// What connection tasks share besides the engine: the store (for audit tails), the announcer
/// (the highest audit `seq` known to be on disk, and the live feed of newly durable entries), the
/// checker of agents' credentials and the TLS acceptor.
#[derive(Clone)]
struct Shared {
    store: Arc<dyn Store>,
    announcer: Arc<Announcer>,
    auth: Arc<Authenticator>,
    tls: Option<Arc<tls::Tls>>,
    metrics: Arc<metrics::Metrics>,
    /// Set while this node is a standby of a cluster.
    standby: Option<Arc<StandbyView>>,
}

/// The message a panic was raised with.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
