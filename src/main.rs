//! The `baton` command line: parses arguments and calls into the library.

use anyhow::Context;
use baton::admin::{self, TailOptions, Target};
use baton::config::Config;
use baton::load::{LoadOptions, Mix, Scenario};
use baton::server::StartOptions;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

// The server allocates and frees many small buffers per request (frames, JSON values, audit
// entries) on several threads, and the start-up restore of a big store allocates millions; mimalloc
// does both with less work and fragmentation than the system allocator (glibc grows each thread's
// arena in small protected steps, which at start cost more than the parsing itself).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Configuration file; a missing file means the built-in defaults.
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Show the server's counters.
    Status {
        #[command(flatten)]
        conn: AdminConn,
        /// One JSON object instead of aligned lines.
        #[arg(long)]
        json: bool,
    },
    /// Show one record: state, holders, call, final outcome, context.
    Record {
        /// The record handle.
        record: String,
        #[command(flatten)]
        conn: AdminConn,
        #[arg(long)]
        json: bool,
    },
    /// Play an outbound centre against a running server and report throughput and latency.
    Load {
        /// What to play.
        #[arg(long, value_enum, default_value_t = Scenario::Mix)]
        scenario: Scenario,
        /// Desktops to log in (the mix uses groups of three); dialers for `attach`.
        #[arg(long, default_value_t = 48)]
        agents: usize,
        /// Records to complete (mix, processed, attach) or requests to send (get, denied).
        #[arg(long)]
        records: Option<u64>,
        /// Run for this many seconds instead (idle: how long to heartbeat).
        #[arg(long)]
        duration: Option<f64>,
        /// Open loop: records or requests started per second. Default: as fast as possible.
        #[arg(long)]
        rate: Option<f64>,
        /// Mix weights, e.g. straight=55,transfer=15,consult=15,conference=15.
        #[arg(
            long,
            default_value = "straight=55,transfer=15,consult=15,conference=15"
        )]
        mix: Mix,
        /// PID of a local server, to report its resident memory.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Requests each connection keeps in flight (get, denied, processed, attach): it writes N
        /// back to back, then reads the N replies, and again. At most 1000, so that a burst's
        /// replies always fit the server's queue and the socket buffers while the burst is written.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
        pipeline: u16,
        /// Follow the audit log on an admin connection during the run and report how long after
        /// each acknowledgment its entry reaches the tail (scenario `processed`).
        #[arg(long)]
        tail: bool,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Write a large store as a busy centre would leave it (for `baton restart-time`).
    Fill {
        /// Directory of the new store; must be empty or missing.
        #[arg(long)]
        data_dir: PathBuf,
        /// Calling-list records to write.
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Audit entries to write.
        #[arg(long, default_value_t = 10_000_000)]
        audit: u64,
        /// Logged-in agents taking the calls.
        #[arg(long, default_value_t = 300)]
        agents: usize,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Start `baton serve` on a filled store several times and time each start until it answers.
    RestartTime {
        /// A directory written by `baton fill`.
        #[arg(long)]
        data_dir: PathBuf,
        /// Starts to time; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Address the measured server listens on.
        #[arg(long, default_value = "127.0.0.1:7399")]
        listen: SocketAddr,
        /// Give up on a start after this many seconds.
        #[arg(long, default_value_t = 300.0)]
        timeout: f64,
        #[arg(long)]
        json: bool,
    },
    /// Read the access-audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Print audit entries from a sequence number (default: only new ones), optionally filtered.
    Tail {
        /// First sequence number to print (default: the next new entry).
        #[arg(long = "from")]
        from_seq: Option<u64>,
        /// Keep printing new entries as they are written.
        #[arg(long)]
        follow: bool,
        /// Only entries about this record.
        #[arg(long)]
        record: Option<String>,
        /// Only entries about this agent.
        #[arg(long)]
        agent: Option<String>,
        /// One JSON object per line (for jq) instead of aligned lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: AdminConn,
    },
}

/// How an admin command reaches the server: the config file, or explicit flags.
#[derive(Args)]
struct AdminConn {
    /// Configuration file to read the address and admin token from.
    #[arg(long, default_value = "config.toml")]
    config: PathBuf,
    /// Server address (overrides the config's `listen`).
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Admin token (overrides the config's `tokens.admin`).
    #[arg(long)]
    token: Option<String>,
}

impl AdminConn {
    fn target(&self) -> anyhow::Result<Target> {
        let config = Config::load_or_default(&self.config)?;
        let mut target = Target::from_config(&config);
        if let Some(addr) = self.addr {
            target.addr = addr;
        }
        if let Some(token) = &self.token {
            target.token = token.clone();
        }
        Ok(target)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        None => {
            init_logging(cli.log_format);
            baton::server::log_panics();
            runtime.block_on(serve(PathBuf::from("config.toml")))
        }
        Some(Command::Serve { config }) => {
            init_logging(cli.log_format);
            baton::server::log_panics();
            runtime.block_on(serve(config))
        }
        Some(Command::Status { conn, json }) => {
            let target = conn.target()?;
            runtime
                .block_on(admin::status(&target, json, &mut stdout))
                .with_context(|| format!("status from {}", target.addr))
        }
        Some(Command::Record { record, conn, json }) => {
            let target = conn.target()?;
            runtime
                .block_on(admin::record(&target, &record, json, &mut stdout))
                .with_context(|| format!("record {record} from {}", target.addr))
        }
        Some(Command::Load {
            scenario,
            agents,
            records,
            duration,
            rate,
            mix,
            server_pid,
            pipeline,
            tail,
            json,
            quiet,
            conn,
        }) => {
            if tail && scenario != Scenario::Processed {
                anyhow::bail!("--tail measures the durable load: use it with --scenario processed");
            }
            if pipeline > 1 && !scenario.can_pipeline() {
                anyhow::bail!(
                    "--pipeline applies to the get, denied, processed and attach scenarios"
                );
            }
            let target = conn.target()?;
            let config = Config::load_or_default(&conn.config)?;
            let opts = LoadOptions {
                addr: target.addr,
                tokens: config.tokens,
                scenario,
                agents,
                records: if records.is_none() && duration.is_none() && scenario != Scenario::Idle {
                    Some(10_000)
                } else {
                    records
                },
                duration: duration.map(std::time::Duration::from_secs_f64),
                rate,
                mix,
                server_pid,
                tail,
                pipeline: usize::from(pipeline),
                progress: !quiet && !json,
                run_id: format!("L{}", baton::server::now_ms() % 100_000_000),
            };
            let summary = runtime
                .block_on(baton::load::run(opts))
                .with_context(|| format!("load against {}", target.addr))?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print!("{}", summary.render());
            }
            if !summary.is_clean() {
                anyhow::bail!("the run was not clean (see errors above)");
            }
            Ok(())
        }
        Some(Command::Fill {
            data_dir,
            records,
            audit,
            agents,
            json,
        }) => {
            let opts = baton::restart::FillOptions {
                data_dir,
                records,
                audit,
                agents,
                progress: !json,
            };
            let summary = baton::restart::fill(&opts)
                .with_context(|| format!("fill {}", opts.data_dir.display()))?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print!("{}", summary.render());
            }
            Ok(())
        }
        Some(Command::RestartTime {
            data_dir,
            runs,
            listen,
            timeout,
            json,
        }) => {
            let opts = baton::restart::MeasureOptions {
                binary: std::env::current_exe().context("cannot find the baton binary")?,
                data_dir,
                listen,
                runs,
                timeout: std::time::Duration::from_secs_f64(timeout),
            };
            let summary = runtime
                .block_on(baton::restart::measure(&opts))
                .with_context(|| format!("restart on {}", opts.data_dir.display()))?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print!("{}", summary.render());
            }
            Ok(())
        }
        Some(Command::Audit {
            command:
                AuditCommand::Tail {
                    from_seq,
                    follow,
                    record,
                    agent,
                    json,
                    conn,
                },
        }) => {
            let target = conn.target()?;
            let opts = TailOptions {
                from_seq,
                follow,
                record,
                agent,
                json,
            };
            runtime
                .block_on(admin::audit_tail(&target, &opts, &mut stdout))
                .with_context(|| format!("audit tail from {}", target.addr))
        }
    }
}

async fn serve(config_path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load_or_default(&config_path)?;
    if config_path.exists() {
        tracing::info!(config = %config_path.display(), "configuration loaded");
    } else {
        tracing::info!(config = %config_path.display(), "no configuration file; using the built-in defaults");
    }
    baton::server::serve(config, StartOptions::service()).await?;
    Ok(())
}
