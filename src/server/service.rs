//! Running the server as a service, the way `baton serve` does: until a stop signal, with panics
//! sent to the log.
//!
//! Lives in the library, not the binary, so that a test can run a child process through exactly
//! the code path of `baton serve` (the exit on engine failure included). It never serves anything
//! itself: it only starts the server as [`super::start_with_options`] does and stops it on a signal.

use super::{start_with_options, ServerError, StartOptions};
use crate::config::Config;
use tracing::{error, info};

/// Starts the server with `opts` and serves until SIGTERM or Ctrl-C, then stops cleanly (stop
/// accepting, tell clients, drain, flush). With [`StartOptions::service`], a dead engine exits the
/// process with [`super::ENGINE_FAILURE_EXIT_CODE`] instead of returning.
pub async fn serve(config: Config, opts: StartOptions) -> Result<(), ServerError> {
    if config.cluster.is_some() {
        return serve_cluster_node(config, opts).await;
    }
    let exit = opts.on_engine_failure == super::OnEngineFailure::ExitProcess;
    let server = start_with_options(config, opts).await?;
    reload_on_hangup(&server);
    let stop = server.stop_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("stop signal received");
        stop.cancel();
    });
    match server.wait().await {
        // The engine died while the server was stopping: still a failure for the supervisor.
        Err(ServerError::EngineFailed(why)) if exit => {
            error!(
                "ENGINE FAILURE: {why}; exiting with status {}",
                super::ENGINE_FAILURE_EXIT_CODE
            );
            std::process::exit(super::ENGINE_FAILURE_EXIT_CODE);
        }
        other => other,
    }
}

/// Serves as one node of a cluster (`[cluster]` in the config) until SIGTERM or Ctrl-C.
#[cfg(feature = "cluster")]
async fn serve_cluster_node(config: Config, opts: StartOptions) -> Result<(), ServerError> {
    let stop = tokio_util::sync::CancellationToken::new();
    let reloader = std::sync::Arc::new(std::sync::Mutex::new(None));
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut hangups) = signal(SignalKind::hangup()) {
            let current = reloader.clone();
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    info!("SIGHUP received: reloading credentials and certificates");
                    let guard = current.lock().unwrap_or_else(|p| p.into_inner());
                    let reload: Option<&crate::cluster::ServerHandleReload> = guard.as_ref();
                    match reload.map(|r| r()) {
                        Some(Ok(())) | None => info!("reload complete"),
                        Some(Err(e)) => {
                            error!("reload failed, keeping what was loaded before: {e}")
                        }
                    }
                }
            });
        }
    }
    let stopping = stop.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("stop signal received");
        stopping.cancel();
    });
    crate::cluster::run(config, opts, stop, reloader).await
}

#[cfg(not(feature = "cluster"))]
async fn serve_cluster_node(_config: Config, _opts: StartOptions) -> Result<(), ServerError> {
    Err(ServerError::Config(crate::config::ConfigError::Invalid(
        "the config has a `[cluster]` section, but this baton was built without cluster mode: \
         build it with `cargo build --release --features cluster` (which needs protoc), or remove \
         `[cluster]` to run one node on sled"
            .into(),
    )))
}

/// Sends every panic to the log as an `error` event (message, location, thread, and the backtrace
/// when `RUST_BACKTRACE` asks for one) instead of bare text on stderr, so that a panic also
/// reaches JSON logs. For binaries, once their logging is set up.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = super::panic_message(info.payload());
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        let thread = std::thread::current();
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            error!(target: "baton::panic", thread = thread.name().unwrap_or("unnamed"),
                location, %backtrace, "panic: {message}");
        } else {
            error!(target: "baton::panic", thread = thread.name().unwrap_or("unnamed"),
                location, "panic: {message}");
        }
    }));
}

/// SIGHUP reloads the agents file (or JWKS) and the TLS certificates; open sessions stay.
fn reload_on_hangup(server: &super::ServerHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: reload by restarting");
            return;
        };
        let reload = server.reloader();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                info!("SIGHUP received: reloading credentials and certificates");
                match reload() {
                    Ok(()) => info!("reload complete"),
                    Err(e) => error!("reload failed, keeping what was loaded before: {e}"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = server;
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
