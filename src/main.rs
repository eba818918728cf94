//! The `baton` command line: parses arguments and calls into the library.

use anyhow::Context;
use baton::admin::{self, AdminConn, TailOptions};
use baton::config::Config;
use baton::server::StartOptions;
use baton::timeline::{self, Subject, TimelineOptions, When, Window};
use clap::{ArgGroup, Parser, Subcommand, ValueEnum};
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
    /// Cluster mode: the etcd members, the active node, its lease, how far each node followed.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Play the switch and the dialer step by step for a demo at the agent desktop (`baton demo --help`).
    #[command(disable_help_flag = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Play an outbound centre against a running server (`baton load --help`).
    #[command(disable_help_flag = true)]
    Load {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Write a large store as a busy centre would leave it (`baton fill --help`).
    #[command(disable_help_flag = true)]
    Fill {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Time the server's start on a filled store (`baton restart-time --help`).
    #[command(disable_help_flag = true)]
    RestartTime {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Read the access-audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Manage the agents file of `[auth] agents = "directory"`.
    Agents {
        #[command(subcommand)]
        command: baton::agents::AgentsCommand,
        #[command(flatten)]
        file: baton::agents::AgentsFile,
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
    /// One record's life from the audit log, in order and in plain words.
    ///
    /// One row per attachment, grant, revocation, request accepted or denied, and the final
    /// outcome with who won. With --agent instead of a RECORD: every entry about that agent,
    /// usually within a --since/--until window. Times are UTC, as in the audit log; a clock time
    /// (HH:MM, HH:MM:SS) means today, UTC (yesterday for a --since still to come). Exits with status 1 when no entry matches.
    #[command(group(ArgGroup::new("subject").required(true).args(["record", "agent"])))]
    Timeline {
        /// The record whose life to print.
        record: Option<String>,
        /// Every entry about this agent instead (its logins, access changes, requests and wins).
        #[arg(long)]
        agent: Option<String>,
        /// Only entries at or after this time: HH:MM or HH:MM:SS (today, UTC) or an RFC 3339
        /// time. Also narrows a RECORD's timeline.
        #[arg(long, value_name = "TIME")]
        since: Option<When>,
        /// Only entries at or before this time (same forms as --since).
        #[arg(long, value_name = "TIME")]
        until: Option<When>,
        /// The audit entries themselves, one JSON object per line (for jq), instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: AdminConn,
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
    // Colour only for a person at a terminal: a log file or journald gets plain text.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Read the cluster's state from etcd (the `[cluster]` section of the config names it).
    Status {
        /// Configuration file with a `[cluster]` section.
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        /// One JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
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
        Some(Command::Agents { command, file }) => {
            let path = file.path()?;
            let mut stdin = std::io::stdin().lock();
            baton::agents::run(command, &path, &mut stdin, &mut stdout)
        }
        Some(Command::Cluster {
            command: ClusterCommand::Status { config, json },
        }) => runtime.block_on(cluster_status(&config, json, &mut stdout)),
        Some(Command::Demo { args }) => tool("demo", args),
        Some(Command::Load { args }) => tool("load", args),
        Some(Command::Fill { args }) => tool("fill", args),
        Some(Command::RestartTime { args }) => tool("restart-time", args),
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
        Some(Command::Audit {
            command:
                AuditCommand::Timeline {
                    record,
                    agent,
                    since,
                    until,
                    json,
                    conn,
                },
        }) => {
            let target = conn.target()?;
            let opts = TimelineOptions {
                subject: Subject::from_args(record, agent).map_err(anyhow::Error::msg)?,
                window: Window::today(since, until).map_err(anyhow::Error::msg)?,
                json,
            };
            let printed = runtime
                .block_on(timeline::timeline(
                    &target,
                    &opts,
                    &mut stdout,
                    &mut std::io::stderr(),
                ))
                .with_context(|| format!("audit timeline from {}", target.addr))?;
            if printed.entries == 0 {
                // As grep does: nothing found is a failure a script can test.
                std::process::exit(1);
            }
            Ok(())
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

#[cfg(feature = "cluster")]
async fn cluster_status(
    path: &std::path::Path,
    json: bool,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let Some(cluster) = &config.cluster else {
        anyhow::bail!("{} has no `[cluster]` section", path.display());
    };
    let status = baton::cluster::status::status(cluster)
        .await
        .map_err(anyhow::Error::msg)?;
    if json {
        writeln!(out, "{}", serde_json::to_string(&status)?)?;
    } else {
        write!(out, "{}", baton::cluster::status::render(&status))?;
    }
    Ok(())
}

#[cfg(not(feature = "cluster"))]
async fn cluster_status(
    _path: &std::path::Path,
    _json: bool,
    _out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    anyhow::bail!(
        "this baton was built without cluster mode: build it with `cargo build --release --features cluster`"
    )
}

/// Runs `baton-tools COMMAND ARGS` in place of this process: the tools live in their own binary,
/// next to this one, so that the server links none of their dependencies.
fn tool(command: &str, args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the baton binary")?;
    let tools = exe.with_file_name(format!("baton-tools{}", std::env::consts::EXE_SUFFIX));
    if !tools.exists() {
        anyhow::bail!(
            "`baton {command}` runs {}, which is missing: build it with `cargo build --release` \
             (it is the workspace's baton-tools package)",
            tools.display()
        );
    }
    let mut child = std::process::Command::new(&tools);
    child.arg(command).args(args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Named `baton` so that its usage lines read as the user typed them.
        let err = child.arg0("baton").exec();
        Err(err).with_context(|| format!("cannot run {}", tools.display()))
    }
    #[cfg(not(unix))]
    {
        let status = child
            .status()
            .with_context(|| format!("cannot run {}", tools.display()))?;
        std::process::exit(status.code().unwrap_or(1));
    }
}
