//! The accept loop and shutdown: takes TCP connections (or refuses them past `max_connections`),
//! starts the engine task and retention beside it, watches the engine task, and stops in order
//! (stop accepting, tell clients, drain, flush).
//!
//! Never reads a frame or decides anything about a client: an accepted socket goes straight to
//! [`super::connection`].

use super::connection::{refuse_overloaded, serve_connection, stream_frames, ConnCtx, Transport};
use super::engine_task::{engine_loop, EngineMsg, ENGINE_QUEUE};
use super::outbox::StreamWriter;
use super::retention::retention_loop;
use super::{
    panic_message, OnEngineFailure, ServerError, Shared, StartOptions, ENGINE_FAILURE_EXIT_CODE,
};
use crate::config::Config;
use crate::engine::Engine;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn, Instrument};

/// How long shutdown waits for connections to write their last frames.
const DRAIN: Duration = Duration::from_secs(3);

/// What every listener shares to admit a connection: one counter of connection ids (the engine
/// task's registry relies on an id never coming twice), one pool of `max_connections` slots, the
/// engine's queue, and the tracker and token with which shutdown drains and closes connections.
/// The TCP listener and the HTTP listener (WebSocket desktops) admit through the same one.
pub(super) struct Admission {
    next_id: AtomicU64,
    pub(super) slots: Arc<Semaphore>,
    pub(super) config: Arc<Config>,
    pub(super) engine: mpsc::Sender<EngineMsg>,
    pub(super) shared: Shared,
    pub(super) tracker: TaskTracker,
    /// Cancelled only when draining took too long: connections then stop at once.
    hard_stop: CancellationToken,
}

impl Admission {
    /// A new connection's id and context, and the span its log lines carry.
    pub(super) fn context(
        &self,
        peer: SocketAddr,
        transport: Transport,
    ) -> (ConnCtx, tracing::Span) {
        let conn = self.next_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!(
            "conn",
            id = conn,
            %peer,
            transport = if transport == Transport::Tcp { "tcp" } else { "ws" },
            role = tracing::field::Empty,
            agent = tracing::field::Empty
        );
        let ctx = ConnCtx {
            conn,
            peer,
            config: self.config.clone(),
            engine: self.engine.clone(),
            cancel: self.hard_stop.child_token(),
            shared: self.shared.clone(),
            client_cert: false,
            transport,
        };
        (ctx, span)
    }

    /// Serves an accepted TCP connection on a task of its own (after the TLS handshake on a TLS
    /// port), or refuses it (`overloaded`) when every slot is taken.
    fn admit_tcp(&self, socket: TcpStream, peer: SocketAddr) {
        let permit = self.slots.clone().try_acquire_owned().ok();
        let (mut ctx, span) = self.context(peer, Transport::Tcp);
        let tls = self.shared.tls.as_ref().map(|t| t.acceptor());
        self.tracker.spawn(
            async move {
                let _ = socket.set_nodelay(true);
                match (permit, tls) {
                    (Some(_permit), None) => {
                        let (read, write) = socket.into_split();
                        let frames = stream_frames(Box::new(read), ctx.config.max_frame_bytes);
                        serve_connection(frames, StreamWriter::new(write), ctx).await
                    }
                    (Some(_permit), Some(acceptor)) => {
                        let handshake = acceptor.accept(socket);
                        let stream = tokio::select! {
                            _ = ctx.cancel.cancelled() => return,
                            r = tokio::time::timeout(ctx.config.handshake_timeout(), handshake) => r,
                        };
                        match stream {
                            Ok(Ok(stream)) => {
                                ctx.client_cert = stream.get_ref().1.peer_certificates().is_some();
                                let (read, write) = tokio::io::split(stream);
                                let frames =
                                    stream_frames(Box::new(read), ctx.config.max_frame_bytes);
                                serve_connection(frames, StreamWriter::new(write), ctx).await
                            }
                            Ok(Err(e)) => info!("closing: TLS handshake failed: {e}"),
                            Err(_) => info!(
                                "closing: no TLS handshake within handshake_timeout_ms ({} ms)",
                                ctx.config.handshake_timeout_ms
                            ),
                        }
                    }
                    // A refusal in clear text could not be read on a TLS port: just close.
                    (None, Some(_)) => {
                        ctx.shared.metrics.connection_refused();
                        warn!(
                        max_connections = ctx.config.max_connections,
                        "refusing connection: server is at max_connections"
                        )
                    }
                    (None, None) => {
                        ctx.shared.metrics.connection_refused();
                        refuse_overloaded(socket, &ctx).await
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// How often the agents file (or JWKS) is checked for a change.
const CREDENTIALS_POLL: Duration = Duration::from_secs(2);

/// Reloads the agents file or JWKS when it changes on disk, so that `baton agents` takes effect
/// without a signal.
async fn watch_credentials(shared: Shared, stop: CancellationToken) {
    let mut every = tokio::time::interval(CREDENTIALS_POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let auth = shared.auth.clone();
        let _ = tokio::task::spawn_blocking(move || auth.reload_if_changed()).await;
    }
}

/// Runs the engine loop on a thread of its own, with a single-threaded runtime for its timers
/// and channels: the engine then never waits behind connection tasks for a worker, and commits
/// in place. The answer says how it ended: `Err` with the panic's message if it died.
fn spawn_engine(
    engine: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
    let (done, ended) = tokio::sync::oneshot::channel();
    let span = tracing::Span::current();
    let spawned = std::thread::Builder::new()
        .name("baton-engine".into())
        .spawn(move || {
            let _entered = span.enter();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = done.send(Err(format!("cannot start the engine's runtime: {e}")));
                    return;
                }
            };
            let run =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(engine)));
            // Its lazy writes finish before the runtime goes.
            drop(runtime);
            let _ = done.send(run.map_err(|p| panic_message(p.as_ref())));
        });
    if let Err(e) = spawned {
        let (failed, ended) = tokio::sync::oneshot::channel();
        let _ = failed.send(Err(format!("cannot start the engine's thread: {e}")));
        return ended;
    }
    ended
}

pub(super) async fn run(
    listener: TcpListener,
    http: Option<TcpListener>,
    config: Arc<Config>,
    stop: CancellationToken,
    engine: Engine,
    shared: Shared,
    opts: StartOptions,
) -> Result<(), ServerError> {
    let (engine_tx, engine_rx) = mpsc::channel(ENGINE_QUEUE);
    let mut engine_task = spawn_engine(engine_loop(
        engine,
        engine_rx,
        shared.clone(),
        opts.engine_fault.clone(),
        config.max_deferred_audit_entries as usize,
        config.final_record_retention_ms,
        engine_batch_limit(&config),
    ));
    let retention = (config.audit_retention_entries > 0).then(|| {
        tokio::spawn(retention_loop(
            shared.clone(),
            config.audit_retention_entries,
            stop.clone(),
        ))
    });
    let credentials = tokio::spawn(watch_credentials(shared.clone(), stop.clone()));
    let tracker = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    let admission = Arc::new(Admission {
        next_id: AtomicU64::new(1),
        slots: Arc::new(Semaphore::new(config.max_connections)),
        config,
        engine: engine_tx,
        shared,
        tracker: tracker.clone(),
        hard_stop: hard_stop.clone(),
    });
    let http = http.map(|listener| {
        tokio::spawn(super::http::http_loop(
            listener,
            admission.clone(),
            stop.clone(),
        ))
    });

    let mut engine_failure = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            // The engine only ends after the server stops: ending before means it died, and a
            // server that accepts connections nobody answers would look alive to everyone.
            ended = &mut engine_task => {
                engine_failure = Some(match ended {
                    Ok(Ok(())) => "the engine task ended on its own".to_owned(),
                    Ok(Err(why)) => why,
                    Err(_) => "the engine thread ended without a word".to_owned(),
                });
                break;
            }
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => admission.admit_tcp(socket, peer),
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    credentials.abort();
    stop.cancel();
    if let Some(http) = http {
        let _ = http.await;
    }
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
    let _ = admission.engine.send(EngineMsg::Shutdown).await;
    drop(admission);
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
    let failed = match ended {
        Ok(Ok(())) => None,
        Ok(Err(why)) => Some(why),
        Err(_) => Some("the engine thread ended without a word".to_owned()),
    };
    if let Some(why) = failed {
        // What it had not yet written (audit entries of the last reads) may be lost.
        error!("ENGINE FAILURE during shutdown: {why}");
        return Err(ServerError::EngineFailed(why));
    }
    info!("shutdown complete");
    Ok(())
}

/// Requests the engine takes into one batch at most. On a node of a cluster one batch is one etcd
/// transaction: it must stay within etcd's `--max-txn-ops` (a request writes about four keys, some
/// up to eight) and its `--max-request-bytes` (records carry up to a frame of data each).
fn engine_batch_limit(config: &Config) -> usize {
    match &config.cluster {
        Some(c) => (c.max_txn_ops as usize / 8).clamp(1, 64),
        None => super::engine_task::ENGINE_BATCH,
    }
}
