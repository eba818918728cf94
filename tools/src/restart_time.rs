//! `baton restart-time`: start the real server binary on a store written by `baton fill`, time
//! how long it takes to serve, check a held, a final and a waiting record against what the fill
//! wrote, and ask the server for its own start-up breakdown (store open, load, restore: the
//! `startup` figures of its `Status`).

use crate::fill::{disk_usage, Manifest, RestartError, MANIFEST};
use crate::load::proc_status_kib;
use baton::client::{Client, ClientError};
use baton::config::Config;
use baton::messages::*;
use baton_kit::ServerProcess;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct MeasureOptions {
    /// The `baton` binary to start.
    pub binary: PathBuf,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub runs: usize,
    /// Give up on one start after this long.
    pub timeout: Duration,
}

/// One start of the server on the filled store.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// From spawning the process to the first answered `Status`.
    pub ready_ms: u64,
    /// The server's own figures, from `StatusReport.startup` (absent if `Status` failed).
    pub open_ms: Option<u64>,
    pub load_ms: Option<u64>,
    pub restore_ms: Option<u64>,
    /// Peak resident memory of the server, KiB.
    pub peak_rss_kib: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MeasureSummary {
    pub records: u64,
    pub audit_last_seq: u64,
    pub disk_bytes: u64,
    pub runs: Vec<Run>,
    pub median_ready_ms: u64,
}

impl MeasureSummary {
    pub fn render(&self) -> String {
        let mut s = format!(
            "store: {} records, audit up to seq {}, {:.2} GiB on disk\n",
            self.records,
            self.audit_last_seq,
            self.disk_bytes as f64 / (1u64 << 30) as f64
        );
        let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        s.push_str("run  ready_ms  open_ms  load_ms  restore_ms  other_ms  peak_rss_mib\n");
        for (i, r) in self.runs.iter().enumerate() {
            let known = r.open_ms.unwrap_or(0) + r.load_ms.unwrap_or(0) + r.restore_ms.unwrap_or(0);
            s.push_str(&format!(
                "{:<4} {:>8}  {:>7}  {:>7}  {:>10}  {:>8}  {:>12}\n",
                i + 1,
                r.ready_ms,
                ms(r.open_ms),
                ms(r.load_ms),
                ms(r.restore_ms),
                r.ready_ms.saturating_sub(known),
                r.peak_rss_kib
                    .map_or("-".to_owned(), |k| (k / 1024).to_string()),
            ));
        }
        s.push_str(&format!(
            "median time to serve: {} ms (other = process start, bind, first answer)\n",
            self.median_ready_ms
        ));
        s
    }
}

async fn ask(addr: SocketAddr, token: &str, request: Request) -> Result<ServerMsg, ClientError> {
    let mut c = Client::connect(addr, Role::Admin, token).await?;
    c.request(request).await
}

/// Checks what the restarted server says against what the fill wrote.
async fn check(addr: SocketAddr, token: &str, m: &Manifest) -> Result<(), RestartError> {
    let fail = |what: String| RestartError::Invalid(format!("after restart: {what}"));
    let status = ask(addr, token, Request::Status)
        .await
        .map_err(|e| fail(e.to_string()))?;
    match status {
        ServerMsg::StatusReport {
            records_live,
            records_final,
            audit_last_seq,
            agents,
            ..
        } => {
            if records_live + records_final != m.records
                || records_final != m.records_final
                || audit_last_seq != m.audit_last_seq
                || agents != m.agents
            {
                return Err(fail(format!(
                    "Status says {records_live} live + {records_final} final records, {agents} agents, audit at {audit_last_seq}; the fill wrote {} ({} final), {} agents, audit at {}",
                    m.records, m.records_final, m.agents, m.audit_last_seq
                )));
            }
        }
        other => return Err(fail(format!("Status answered {other:?}"))),
    }
    let info = |record: String| ask(addr, token, Request::RecordInfo(RecordRef { record }));
    if let Some((record, holder)) = &m.held_record {
        match info(record.clone())
            .await
            .map_err(|e| fail(e.to_string()))?
        {
            ServerMsg::RecordReport { state, holders, .. }
                if state == "held"
                    && holders
                        .iter()
                        .any(|h| &h.agent == holder && h.access == Access::Full) => {}
            other => {
                return Err(fail(format!(
                    "{record} should be held by {holder}: {other:?}"
                )))
            }
        }
    }
    if let Some(record) = &m.final_record {
        match info(record.clone())
            .await
            .map_err(|e| fail(e.to_string()))?
        {
            ServerMsg::RecordReport { state, .. } if state == "final" => {}
            other => return Err(fail(format!("{record} should be final: {other:?}"))),
        }
    }
    if let Some(record) = &m.waiting_record {
        match info(record.clone())
            .await
            .map_err(|e| fail(e.to_string()))?
        {
            ServerMsg::RecordReport { state, .. } if state == "waiting" => {}
            other => return Err(fail(format!("{record} should be waiting: {other:?}"))),
        }
    }
    Ok(())
}

async fn measure_once(
    opts: &MeasureOptions,
    config_path: &Path,
    m: &Manifest,
) -> Result<Run, RestartError> {
    let mut command = std::process::Command::new(&opts.binary);
    command.args(["serve", "--config"]).arg(config_path);
    let config =
        Config::load_or_default(config_path).map_err(|e| RestartError::Invalid(e.to_string()))?;
    let mut server = ServerProcess::spawn(command, opts.listen, &config.tokens.admin)?;
    let ready = server
        .wait_serving(opts.timeout)
        .await
        .map_err(RestartError::Invalid)?;
    let startup = match ask(opts.listen, &config.tokens.admin, Request::Status).await {
        Ok(ServerMsg::StatusReport { startup, .. }) => Some(startup),
        _ => None,
    };
    let checked = check(opts.listen, &config.tokens.admin, m).await;
    let peak = proc_status_kib(server.pid(), "VmHWM:");
    server.stop();
    checked?;
    Ok(Run {
        ready_ms: ready.as_millis() as u64,
        open_ms: startup.map(|s| s.open_ms),
        load_ms: startup.map(|s| s.load_ms),
        restore_ms: startup.map(|s| s.restore_ms),
        peak_rss_kib: peak,
    })
}

/// Starts the server `opts.runs` times on the filled store and times each start.
pub async fn measure(opts: &MeasureOptions) -> Result<MeasureSummary, RestartError> {
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(opts.data_dir.join(MANIFEST)).map_err(|e| {
            RestartError::Invalid(format!(
                "{}: {e} (fill the directory with `baton fill` first)",
                opts.data_dir.join(MANIFEST).display()
            ))
        })?)?;
    let config_path =
        std::env::temp_dir().join(format!("baton-restart-{}.toml", std::process::id()));
    let data_dir = opts.data_dir.canonicalize()?;
    let toml = format!(
        // No HTTP listener: only the start is timed, and a fixed HTTP port could be taken.
        "listen = \"{}\"\nhttp_listen = \"\"\ndata_dir = \"{}\"\n",
        opts.listen,
        data_dir.display().to_string().replace('\\', "\\\\")
    );
    std::fs::write(&config_path, toml)?;
    let mut runs = Vec::new();
    let mut result = Ok(());
    for _ in 0..opts.runs.max(1) {
        match measure_once(opts, &config_path, &manifest).await {
            Ok(run) => runs.push(run),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let _ = std::fs::remove_file(&config_path);
    result?;
    let mut ready: Vec<u64> = runs.iter().map(|r| r.ready_ms).collect();
    ready.sort_unstable();
    Ok(MeasureSummary {
        records: manifest.records,
        audit_last_seq: manifest.audit_last_seq,
        disk_bytes: disk_usage(&opts.data_dir),
        median_ready_ms: ready[ready.len() / 2],
        runs,
    })
}
