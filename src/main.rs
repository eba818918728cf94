//! The `baton` command line: parses arguments and calls into the library.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "baton", version, about = "Outbound record-sharing server")]
struct Cli {
    /// Log format: human-readable lines or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve {
        /// Configuration file; missing file means the built-in defaults.
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let config_path = match cli.command {
        Some(Command::Serve { config }) => config,
        None => PathBuf::from("config.toml"),
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(serve(config_path))
}

async fn serve(config_path: PathBuf) -> anyhow::Result<()> {
    let config = baton::config::Config::load_or_default(&config_path)?;
    if config_path.exists() {
        tracing::info!(config = %config_path.display(), "configuration loaded");
    } else {
        tracing::info!(config = %config_path.display(), "no configuration file; using the built-in defaults");
    }
    let server = baton::server::start(config).await?;
    let stop = server.stop_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stop signal received");
        stop.cancel();
    });
    server.wait().await;
    Ok(())
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
