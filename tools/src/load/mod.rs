//! `baton load`: a load generator that plays an outbound centre against a running server.
//!
//! Scenarios:
//! - `mix`: groups of three desktops with their own switch link and dialer play straight calls,
//!   single-step transfers, consultations completed as two-step transfers, and conferences where
//!   all three race to `RecordProcessed`; every record ends with exactly one outcome, checked at
//!   the end through a dialer listening to `RecordOutcome` and through admin `RecordInfo`;
//! - `processed`: each desktop first receives its share of records, then all desktops finish them
//!   with `RecordProcessed` as fast as they can (durable writes);
//! - `get` / `denied`: each desktop loops `GetRecord` on a record it holds, or `RecordProcessed` on
//!   a record another agent holds (refused with `access_denied`, which is expected);
//! - `attach`: dialers attach new records to new calls (the records stay attached: run it against
//!   a server whose data can be thrown away);
//! - `idle`: many logged-in desktops that only heartbeat; reports ping latency and server RSS.
//!
//! `processed`, `get`, `denied` and `attach` can pipeline (`--pipeline N`, like `redis-benchmark
//! -P`): each connection writes N requests back to back, then reads their N replies, and again.
//! A request's latency is then from the write of its burst to its reply.
//!
//! Latencies go into HDR histograms per request type (microseconds).
//!
//! The measured phase starts once the setup is done (desktops logged in, records handed out) and
//! ends when the last worker has its last reply; throughput and latency count its requests only.
//! Over that phase the run also reads the CPU time of the server (`--server-pid`) and its own, and
//! reports both per 1,000 requests.

use baton::client::{Client, ClientError, ClientTls};
use baton::config::Tokens;
use baton::messages::*;
use baton_kit::{
    attach, conferenced, established, log_in, log_in_with_password, processed, record_req,
    released, ringing, ringing_full, token, transferred, update,
};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod conn;
mod cpu;
mod idle;
mod mix;
mod report;
mod shared;
mod tail;
mod workers;

use conn::*;
use cpu::*;
use idle::*;
use mix::*;
pub use report::*;
use shared::*;
use tail::*;
use workers::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    Mix,
    Processed,
    Get,
    Denied,
    Attach,
    Idle,
}

impl Scenario {
    /// Whether a connection can keep several requests of this scenario in flight: the mix and
    /// idle play one step after another by nature.
    pub fn can_pipeline(self) -> bool {
        matches!(
            self,
            Scenario::Processed | Scenario::Get | Scenario::Denied | Scenario::Attach
        )
    }
}

/// Relative weights of the call flows of the `mix` scenario.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Mix {
    pub straight: u32,
    pub transfer: u32,
    pub consult: u32,
    pub conference: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            straight: 55,
            transfer: 15,
            consult: 15,
            conference: 15,
        }
    }
}

impl std::str::FromStr for Mix {
    type Err = String;
    /// `straight=55,transfer=15,consult=15,conference=15` (missing names weigh 0).
    fn from_str(s: &str) -> Result<Mix, String> {
        let mut mix = Mix {
            straight: 0,
            transfer: 0,
            consult: 0,
            conference: 0,
        };
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected name=weight"))?;
            let weight: u32 = weight
                .parse()
                .map_err(|_| format!("`{part}`: weight must be a whole number"))?;
            match name {
                "straight" => mix.straight = weight,
                "transfer" => mix.transfer = weight,
                "consult" => mix.consult = weight,
                "conference" => mix.conference = weight,
                other => return Err(format!("unknown flow `{other}`")),
            }
        }
        if mix.straight + mix.transfer + mix.consult + mix.conference == 0 {
            return Err("all weights are 0".into());
        }
        Ok(mix)
    }
}

#[derive(Clone)]
pub struct LoadOptions {
    pub addr: SocketAddr,
    /// How desktops connect: the TCP port (`addr`) or WebSocket on the HTTP port (`http_addr`).
    pub transport: baton::client::Transport,
    pub http_addr: Option<SocketAddr>,
    pub tokens: Tokens,
    /// Set when the server speaks TLS.
    pub tls: Option<ClientTls>,
    /// Desktops log in with this password (`directory` mode); none in `open` mode.
    pub password: Option<String>,
    pub scenario: Scenario,
    /// Desktops, or dialers for `attach`.
    pub agents: usize,
    /// Records to complete (`mix`, `processed`, `attach`) or requests to send (`get`, `denied`).
    pub records: Option<u64>,
    pub duration: Option<Duration>,
    /// Open loop: records (or requests) started per second across all desktops.
    pub rate: Option<f64>,
    pub mix: Mix,
    pub server_pid: Option<u32>,
    /// Follow the audit log during the run and measure how far it lags behind the
    /// acknowledgments (`processed` only).
    pub tail: bool,
    /// Requests each connection keeps in flight (see [`Scenario::can_pipeline`]); 1 waits for
    /// each reply before the next request.
    pub pipeline: usize,
    pub progress: bool,
    /// Prefix of every id this run creates, so runs against one server never collide.
    pub run_id: String,
}

/// Runs the scenario and returns the summary.
pub async fn run(opts: LoadOptions) -> Result<Summary, ClientError> {
    if opts.scenario == Scenario::Idle {
        return run_idle(opts).await;
    }
    let deadline_from = |start: Instant| opts.duration.map(|d| start + d);
    let bar = progress_bar(&opts);
    let mut stats = Stats::new();
    let mut verification = None;
    let run;
    let elapsed;
    let phase_cpu;
    match opts.scenario {
        Scenario::Mix => {
            let groups = opts.agents.div_ceil(3).max(1);
            let mut opened = Vec::new();
            for g in 0..groups {
                opened.push(open_group(&opts, g, 3).await?);
            }
            // A dialer that only listens: it counts the outcomes of every record.
            let mut listener = side_conn(&opts, Role::Dialer).await?;
            listener.set_discard_pushes(false);
            let outcomes: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
            let counter = outcomes.clone();
            let prefix = format!("{}-r", opts.run_id);
            let listen = tokio::spawn(async move {
                let mut last_ping = Instant::now();
                loop {
                    // It only listens: a ping every second keeps it from counting as dead (the
                    // server closes a connection it has heard nothing from for 3 heartbeats,
                    // however much it sends to it).
                    if last_ping.elapsed() >= Duration::from_secs(1) {
                        if listener.send(&Request::Ping).await.is_err() {
                            break;
                        }
                        listener.clear_replies();
                        last_ping = Instant::now();
                    }
                    let m = match listener.try_next_push(Duration::from_secs(1)).await {
                        Ok(Some(m)) => m,
                        Ok(None) => continue,
                        Err(_) => break,
                    };
                    if let ServerMsg::RecordOutcome { record, .. } = m {
                        if record.starts_with(&prefix) {
                            *counter
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .entry(record)
                                .or_default() += 1;
                        }
                    }
                }
            });
            let cpu = CpuMark::take(opts.server_pid);
            let start = Instant::now();
            run = Arc::new(Run::new(opts.clone(), start, deadline_from(start)));
            let ticker = spawn_progress(run.clone(), bar.clone());
            let handles: Vec<_> = opened
                .into_iter()
                .map(|grp| tokio::spawn(mix_worker(run.clone(), grp)))
                .collect();
            join_workers(handles, &mut stats).await;
            elapsed = start.elapsed();
            phase_cpu = cpu.used(stats.requests());
            ticker.abort();
            run.rss_mark_catch_up();
            let done = run
                .done_records
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            verification = Some(verify(&opts, &done, &outcomes).await?);
            listen.abort();
        }
        Scenario::Processed | Scenario::Get | Scenario::Denied => {
            let n = opts.agents.max(1);
            let per_desk = match opts.scenario {
                Scenario::Processed => opts.records.unwrap_or(10_000).div_ceil(n as u64),
                _ => 1,
            };
            if let Some(b) = &bar {
                b.set_message("handing out records");
            }
            let mut setups = Vec::new();
            for k in 0..n {
                let o = opts.clone();
                setups.push(tokio::spawn(async move {
                    let agent = format!("{}-a{k}", o.run_id);
                    let dn = format!("{}-d{k}", o.run_id);
                    let mut desk =
                        desktop(&o, &agent, &dn, IpAddr::V4(Ipv4Addr::LOCALHOST)).await?;
                    let mut sw = side_conn(&o, Role::Switch).await?;
                    let mut dialer = side_conn(&o, Role::Dialer).await?;
                    let records = hand_out(
                        &o,
                        &mut desk,
                        &mut sw,
                        &mut dialer,
                        &dn,
                        &format!("k{k}"),
                        per_desk,
                    )
                    .await?;
                    Ok::<_, ClientError>((desk, records))
                }));
            }
            let mut desks = Vec::new();
            for s in setups {
                desks.push(s.await.map_err(|e| ClientError::Refused {
                    code: ErrorCode::BadRequest,
                    message: e.to_string(),
                })??);
            }
            // `denied`: each desktop asks for the record its neighbour holds.
            let targets: Vec<Vec<String>> = (0..n)
                .map(|k| match opts.scenario {
                    Scenario::Denied => desks[(k + 1) % n].1.clone(),
                    _ => desks[k].1.clone(),
                })
                .collect();
            let tail = if opts.tail && opts.scenario == Scenario::Processed {
                Some(TailReader::start(&opts).await?)
            } else {
                None
            };
            let cpu = CpuMark::take(opts.server_pid);
            let start = Instant::now();
            let mut o = opts.clone();
            if o.scenario == Scenario::Processed {
                o.records = Some(per_desk * n as u64);
            } else if o.records.is_none() && o.duration.is_none() {
                o.records = Some(100_000);
            }
            let mut r = Run::new(o, start, deadline_from(start));
            r.tail = tail.as_ref().map(|t| t.marks.clone());
            run = Arc::new(r);
            let ticker = spawn_progress(run.clone(), bar.clone());
            let handles: Vec<_> = desks
                .into_iter()
                .zip(targets)
                .map(|((desk, _), target)| tokio::spawn(request_worker(run.clone(), desk, target)))
                .collect();
            join_workers(handles, &mut stats).await;
            elapsed = start.elapsed();
            phase_cpu = cpu.used(stats.requests());
            ticker.abort();
            run.rss_mark_catch_up();
            if let Some(t) = tail {
                t.finish(&mut stats).await;
            }
        }
        Scenario::Attach => {
            let mut dialers = Vec::new();
            for _ in 0..opts.agents.max(1) {
                dialers.push(side_conn(&opts, Role::Dialer).await?);
            }
            let cpu = CpuMark::take(opts.server_pid);
            let start = Instant::now();
            run = Arc::new(Run::new(opts.clone(), start, deadline_from(start)));
            let ticker = spawn_progress(run.clone(), bar.clone());
            let handles: Vec<_> = dialers
                .into_iter()
                .map(|dialer| tokio::spawn(attach_worker(run.clone(), dialer)))
                .collect();
            join_workers(handles, &mut stats).await;
            elapsed = start.elapsed();
            phase_cpu = cpu.used(stats.requests());
            ticker.abort();
            run.rss_mark_catch_up();
        }
        Scenario::Idle => unreachable!(),
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let completed = run.completed.load(Ordering::Relaxed);
    let mut summary = summarize(&opts, &stats, elapsed, completed, verification, phase_cpu);
    summary.server_rss_at =
        std::mem::take(&mut *run.rss_marks.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(summary)
}
