//! `baton-tools`: the commands `baton load`, `baton fill` and `baton restart-time` run (the `baton`
//! command hands them over to this binary, so that the server carries none of their dependencies).

use anyhow::Context;
use baton::admin::AdminConn;
use baton::config::Config;
use baton_tools::load::{LoadOptions, Mix, Scenario};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

// The load generator allocates as much per request as the server does; the same allocator keeps
// its own cost per request low, so that it measures the server rather than itself.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Baton's load generator, store filler and restart timer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once per run: the size of the biggest variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Play the switch and the dialer, one step at a time, for a person watching the agent
    /// desktop (`baton demo call 7001`, then `consult`, `transfer`, `conference`, `hangup`).
    Demo {
        #[command(subcommand)]
        step: baton_tools::demo::DemoStep,
        /// Configuration file to read the server's address and the switch and dialer tokens from.
        #[arg(long, default_value = "config.toml", global = true)]
        config: PathBuf,
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
        /// PID of a local server, to report its resident memory and its CPU time over the measured
        /// phase.
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
        /// File whose first line is the password every load desktop logs in with (servers in
        /// `directory` mode; the agents must exist, see --run-id).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Prefix of every id the run creates (default: a fresh one). Fixed, it lets the agents
        /// file hold the run's agents: the idle scenario's are RUN_ID-idle0, RUN_ID-idle1, ...
        #[arg(long)]
        run_id: Option<String>,
        /// How the desktops connect: the TCP port, or WebSocket (`ws`) on the HTTP listener.
        #[arg(long, value_enum, default_value_t = baton::client::Transport::Tcp)]
        transport: baton::client::Transport,
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    match cli.command {
        Command::Load {
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
            password_file,
            run_id,
            transport,
            conn,
        } => {
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
            let password = match password_file {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    Some(text.lines().next().unwrap_or_default().to_owned())
                }
                None => None,
            };
            let http_addr = config.http_addr().map(|mut a| {
                if a.ip().is_unspecified() {
                    a.set_ip(target.addr.ip());
                }
                a
            });
            if transport == baton::client::Transport::WebSocket && http_addr.is_none() {
                anyhow::bail!("--transport ws needs the server's http_listen in the config");
            }
            // A cluster: run against the node that is active now (found through the list).
            let addr = if target.nodes.is_empty() {
                target.addr
            } else {
                if transport == baton::client::Transport::WebSocket {
                    anyhow::bail!("--nodes finds the active node's TCP port: use --transport tcp");
                }
                let (_, active) = runtime
                    .block_on(baton::client::Client::connect_active(
                        &target.nodes,
                        target.tls.as_ref(),
                        baton::messages::Role::Admin,
                        &target.token,
                        std::time::Duration::from_secs(30),
                    ))
                    .context("no node of --nodes is active")?;
                active
            };
            let opts = LoadOptions {
                addr,
                transport,
                http_addr,
                tokens: config.tokens,
                tls: target.tls.clone(),
                password,
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
                run_id: run_id
                    .unwrap_or_else(|| format!("L{}", baton::server::now_ms() % 100_000_000)),
            };
            let summary = runtime
                .block_on(baton_tools::load::run(opts))
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
        Command::Fill {
            data_dir,
            records,
            audit,
            agents,
            json,
        } => {
            let opts = baton_tools::fill::FillOptions {
                data_dir,
                records,
                audit,
                agents,
                progress: !json,
            };
            let summary = baton_tools::fill::fill(&opts)
                .with_context(|| format!("fill {}", opts.data_dir.display()))?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print!("{}", summary.render());
            }
            Ok(())
        }
        Command::Demo { step, config } => {
            let config = Config::load_or_default(&config)?;
            runtime.block_on(baton_tools::demo::run(
                &config,
                step,
                &mut std::io::stdout(),
            ))
        }
        Command::RestartTime {
            data_dir,
            runs,
            listen,
            timeout,
            json,
        } => {
            let opts = baton_tools::restart_time::MeasureOptions {
                binary: server_binary()?,
                data_dir,
                listen,
                runs,
                timeout: std::time::Duration::from_secs_f64(timeout),
            };
            let summary = runtime
                .block_on(baton_tools::restart_time::measure(&opts))
                .with_context(|| format!("restart on {}", opts.data_dir.display()))?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print!("{}", summary.render());
            }
            Ok(())
        }
    }
}

/// The `baton` server binary next to this one: the restart timer starts it.
fn server_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the baton-tools binary")?;
    let baton = exe.with_file_name(format!("baton{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        baton.exists(),
        "the restart timer starts {}, which is missing: build it with `cargo build --release`",
        baton.display()
    );
    Ok(baton)
}
