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

use baton::client::{Client, ClientError};
use baton::config::Tokens;
use baton::messages::*;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub addr: SocketAddr,
    pub tokens: Tokens,
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

#[derive(Debug, Clone, Serialize)]
pub struct TypeStats {
    pub count: u64,
    pub per_second: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Verification {
    pub records_checked: u64,
    pub with_one_outcome: u64,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: Scenario,
    pub agents: usize,
    pub pipeline: usize,
    pub elapsed_s: f64,
    pub completed: u64,
    pub completed_per_second: f64,
    pub requests: BTreeMap<String, TypeStats>,
    /// Errors that mean something went wrong: must be empty for a clean run.
    pub errors: BTreeMap<String, u64>,
    /// Refusals the scenario provokes on purpose (losers of a race, `denied` requests).
    pub expected_refusals: BTreeMap<String, u64>,
    pub verification: Option<Verification>,
    pub server_rss_kib: Option<u64>,
    /// With `--server-pid`: the server's RSS when 10,000, 100,000, 1,000,000... were completed.
    pub server_rss_at: Vec<RssMark>,
}

/// The server's resident memory when `records` were completed.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RssMark {
    pub records: u64,
    pub rss_kib: u64,
}

impl Summary {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
            && self
                .verification
                .as_ref()
                .is_none_or(|v| v.problems.is_empty())
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let who = match self.scenario {
            Scenario::Attach => "dialers",
            _ => "desktops",
        };
        let depth = if self.pipeline > 1 {
            format!(", pipeline {}", self.pipeline)
        } else {
            String::new()
        };
        s.push_str(&format!(
            "scenario {:?}, {} {who}{depth}, {:.1} s: {} completed ({:.0}/s)\n",
            self.scenario, self.agents, self.elapsed_s, self.completed, self.completed_per_second
        ));
        s.push_str(&format!(
            "{:<28} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            "request", "count", "per sec", "p50 us", "p90 us", "p99 us", "p99.9", "max us"
        ));
        for (name, t) in &self.requests {
            s.push_str(&format!(
                "{:<28} {:>9} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
                name, t.count, t.per_second, t.p50_us, t.p90_us, t.p99_us, t.p999_us, t.max_us
            ));
        }
        if self.errors.is_empty() {
            s.push_str("errors: none\n");
        } else {
            s.push_str(&format!("errors: {:?}\n", self.errors));
        }
        if !self.expected_refusals.is_empty() {
            s.push_str(&format!(
                "expected refusals: {:?}\n",
                self.expected_refusals
            ));
        }
        if let Some(v) = &self.verification {
            s.push_str(&format!(
                "verified: {} of {} records have exactly one outcome\n",
                v.with_one_outcome, v.records_checked
            ));
            for p in v.problems.iter().take(20) {
                s.push_str(&format!("  problem: {p}\n"));
            }
        }
        for m in &self.server_rss_at {
            s.push_str(&format!(
                "server RSS after {} completed: {:.1} MiB\n",
                m.records,
                m.rss_kib as f64 / 1024.0
            ));
        }
        if let Some(rss) = self.server_rss_kib {
            s.push_str(&format!("server RSS: {:.1} MiB\n", rss as f64 / 1024.0));
        }
        s
    }
}

/// Per-worker measurements, merged at the end.
struct Stats {
    hists: HashMap<&'static str, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    expected: BTreeMap<String, u64>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            hists: HashMap::new(),
            errors: BTreeMap::new(),
            expected: BTreeMap::new(),
        }
    }

    fn record(&mut self, name: &'static str, elapsed: Duration) {
        let h = self
            .hists
            .entry(name)
            .or_insert_with(|| Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"));
        let _ = h.record((elapsed.as_micros() as u64).clamp(1, 60_000_000));
    }

    fn error(&mut self, what: impl Into<String>) {
        *self.errors.entry(what.into()).or_default() += 1;
    }

    fn expected(&mut self, what: impl Into<String>) {
        *self.expected.entry(what.into()).or_default() += 1;
    }

    fn merge(&mut self, other: Stats) {
        for (k, h) in other.hists {
            match self.hists.get_mut(k) {
                Some(mine) => {
                    let _ = mine.add(&h);
                }
                None => {
                    self.hists.insert(k, h);
                }
            }
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.expected {
            *self.expected.entry(k).or_default() += v;
        }
    }
}

/// Shared run state: budget, deadline, open-loop pacing, progress.
struct Run {
    opts: LoadOptions,
    next: AtomicU64,
    completed: AtomicU64,
    stop: AtomicBool,
    deadline: Option<Instant>,
    started: Instant,
    done_records: Mutex<Vec<String>>,
    /// The server's RSS as the completed count passed each power of ten.
    rss_marks: Mutex<Vec<RssMark>>,
    /// `--tail`: when each record's `RecordProcessed` was acknowledged and when its `finalized`
    /// audit entry reached the tail reader.
    tail: Option<Arc<TailMarks>>,
}

/// Per record: (acknowledged, seen on the tail). The two sides race, so either may come first.
type TailMarks = Mutex<HashMap<String, (Option<Instant>, Option<Instant>)>>;

fn mark(marks: &TailMarks, record: &str, side: usize, at: Instant) {
    let mut m = marks.lock().unwrap_or_else(|p| p.into_inner());
    let e = m.entry(record.to_owned()).or_default();
    if side == 0 {
        e.0 = Some(at);
    } else {
        e.1 = Some(at);
    }
}

impl Run {
    /// Takes the next unit of work (a record or a request), pacing it in open loop; `None` when
    /// the budget or the time is used up.
    async fn take(&self) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if self.opts.records.is_some_and(|n| i >= n) {
            return None;
        }
        if let Some(rate) = self.opts.rate {
            let due = self.started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        Some(i)
    }

    fn done(&self, record: Option<String>) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        if let Some(r) = record {
            self.done_records
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(r);
        }
    }
}

async fn timed(
    c: &mut Client,
    stats: &mut Stats,
    name: &'static str,
    req: Request,
) -> Result<ServerMsg, ClientError> {
    let t = Instant::now();
    let reply = c.request(req).await?;
    stats.record(name, t.elapsed());
    Ok(reply)
}

/// Checks a reply; anything unexpected counts as an error.
fn expect(
    stats: &mut Stats,
    what: &str,
    reply: &ServerMsg,
    ok: impl Fn(&ServerMsg) -> bool,
) -> bool {
    if ok(reply) {
        return true;
    }
    match reply {
        ServerMsg::Error { code, .. } => stats.error(format!("{what}: {}", code.as_str())),
        other => stats.error(format!("{what}: unexpected {}", other.type_name())),
    }
    false
}

async fn desktop(
    opts: &LoadOptions,
    agent: &str,
    dn: &str,
    local: IpAddr,
) -> Result<Client, ClientError> {
    let mut c = Client::connect_from(opts.addr, local, Role::Desktop, &opts.tokens.desktop).await?;
    match c.request(login_req(agent, dn)).await? {
        ServerMsg::LoggedIn { .. } => Ok(c),
        ServerMsg::Error { code, message, .. } => Err(ClientError::Refused { code, message }),
        other => Err(ClientError::Refused {
            code: ErrorCode::BadRequest,
            message: format!("unexpected answer to Login: {other:?}"),
        }),
    }
}

fn login_req(agent: &str, dn: &str) -> Request {
    Request::Login(Login {
        agent: agent.into(),
        dn: dn.into(),
        password: None,
        resume: None,
    })
}

async fn side_conn(opts: &LoadOptions, role: Role) -> Result<Client, ClientError> {
    let token = match role {
        Role::Switch => &opts.tokens.switch,
        Role::Dialer => &opts.tokens.dialer,
        Role::Admin => &opts.tokens.admin,
        Role::Desktop => &opts.tokens.desktop,
    };
    let mut c = Client::connect(opts.addr, role, token).await?;
    c.set_discard_pushes(true);
    Ok(c)
}

fn attach_req(call: &str, record: &str) -> Request {
    let data = serde_json::json!({"customer": record, "balance": 120, "segment": "gold"});
    Request::AttachRecord(AttachRecord {
        call: call.into(),
        record: record.into(),
        campaign: "load".into(),
        list: Some("load-list".into()),
        chain_id: None,
        chain_n: Some(0),
        phone: None,
        data: data.as_object().cloned().unwrap_or_default(),
        chain: vec![],
    })
}

pub(crate) fn ev_ring(
    call: &str,
    dn: &str,
    consult_of: Option<&str>,
    from: Option<&str>,
) -> Request {
    Request::Ringing(Ringing {
        call: call.into(),
        dn: dn.into(),
        ani: None,
        from_dn: from.map(Into::into),
        consult_of: consult_of.map(Into::into),
    })
}

pub(crate) fn ev_est(call: &str, dn: &str) -> Request {
    Request::Established(CallDn {
        call: call.into(),
        dn: dn.into(),
    })
}

pub(crate) fn ev_rel(call: &str, dn: &str) -> Request {
    Request::Released(Released {
        call: call.into(),
        dn: dn.into(),
        cause: None,
    })
}

fn processed_req(record: &str) -> Request {
    Request::RecordProcessed(RecordChange {
        record: record.into(),
        call_result: Some("answered".into()),
        fields: None,
    })
}

fn update_req(record: &str, i: u64) -> Request {
    Request::UpdateRecord(RecordChange {
        record: record.into(),
        call_result: None,
        fields: serde_json::json!({"note": "load", "i": i})
            .as_object()
            .cloned(),
    })
}

/// Sends telephony events in order, each acknowledged.
async fn events(
    sw: &mut Client,
    stats: &mut Stats,
    evs: Vec<Request>,
) -> Result<bool, ClientError> {
    for ev in evs {
        let name = match &ev {
            Request::Ringing(_) => "Ringing",
            Request::Established(_) => "Established",
            Request::Released(_) => "Released",
            Request::Transferred(_) => "Transferred",
            Request::Conferenced(_) => "Conferenced",
            _ => "event",
        };
        let reply = timed(sw, stats, name, ev).await?;
        if !expect(stats, name, &reply, |m| *m == ServerMsg::Ack) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Waits for the push granting `access` on `record` (other pushes are skipped).
async fn wait_access(c: &mut Client, record: &str, access: Access) -> Result<(), ClientError> {
    loop {
        if let ServerMsg::AccessChanged {
            record: r,
            access: a,
            ..
        } = c.next_push().await?
        {
            if r == record && a == access {
                return Ok(());
            }
        }
    }
}

struct Group {
    desks: Vec<Client>,
    dns: Vec<String>,
    switch: Client,
    dialer: Client,
}

async fn open_group(opts: &LoadOptions, g: usize, size: usize) -> Result<Group, ClientError> {
    let mut desks = Vec::new();
    let mut dns = Vec::new();
    for k in 0..size {
        let agent = format!("{}-a{g}-{k}", opts.run_id);
        let dn = format!("{}-d{g}-{k}", opts.run_id);
        desks.push(desktop(opts, &agent, &dn, IpAddr::V4(Ipv4Addr::LOCALHOST)).await?);
        dns.push(dn);
    }
    Ok(Group {
        desks,
        dns,
        switch: side_conn(opts, Role::Switch).await?,
        dialer: side_conn(opts, Role::Dialer).await?,
    })
}

/// One group of three desktops playing the mix.
async fn mix_worker(run: Arc<Run>, mut grp: Group) -> Result<Stats, ClientError> {
    let mut stats = Stats::new();
    let m = run.opts.mix;
    let total = m.straight + m.transfer + m.consult + m.conference;
    let mut last_ping = Instant::now();
    while let Some(i) = run.take().await {
        // Some flows leave a desktop of the group idle for long: keep all three alive.
        if last_ping.elapsed() >= Duration::from_secs(1) {
            for desk in &mut grp.desks {
                desk.request(Request::Ping).await?;
            }
            last_ping = Instant::now();
        }
        let record = format!("{}-r{i}", run.opts.run_id);
        let call = format!("{}-c{i}", run.opts.run_id);
        let pick = (i.wrapping_mul(2_654_435_761) % total as u64) as u32;
        let reply = timed(
            &mut grp.dialer,
            &mut stats,
            "AttachRecord",
            attach_req(&call, &record),
        )
        .await?;
        if !expect(&mut stats, "AttachRecord", &reply, |m| {
            matches!(m, ServerMsg::RecordAttached { .. })
        }) {
            continue;
        }
        let (a, b, c) = (grp.dns[0].clone(), grp.dns[1].clone(), grp.dns[2].clone());
        if !events(
            &mut grp.switch,
            &mut stats,
            vec![ev_ring(&call, &a, None, None), ev_est(&call, &a)],
        )
        .await?
        {
            continue;
        }
        wait_access(&mut grp.desks[0], &record, Access::Full).await?;
        let r = timed(
            &mut grp.desks[0],
            &mut stats,
            "UpdateRecord",
            update_req(&record, i),
        )
        .await?;
        expect(&mut stats, "UpdateRecord", &r, |m| {
            matches!(m, ServerMsg::RecordUpdated { .. })
        });
        let finisher;
        let mut last_dns = vec![a.clone()];
        if pick < m.straight {
            finisher = 0;
        } else if pick < m.straight + m.transfer {
            let t = Request::Transferred(Transferred {
                call: call.clone(),
                from_dn: a.clone(),
                to_dn: b.clone(),
                kind: TransferKind::SingleStep,
                consult_call: None,
            });
            events(&mut grp.switch, &mut stats, vec![t, ev_est(&call, &b)]).await?;
            wait_access(&mut grp.desks[1], &record, Access::Full).await?;
            finisher = 1;
            last_dns = vec![b.clone()];
        } else if pick < m.straight + m.transfer + m.consult {
            let c2 = format!("{call}-consult");
            events(
                &mut grp.switch,
                &mut stats,
                vec![
                    ev_ring(&c2, &b, Some(&call), Some(&a)),
                    ev_est(&c2, &a),
                    ev_est(&c2, &b),
                ],
            )
            .await?;
            wait_access(&mut grp.desks[1], &record, Access::ReadOnly).await?;
            let r = timed(
                &mut grp.desks[1],
                &mut stats,
                "GetRecord",
                Request::GetRecord(RecordRef {
                    record: record.clone(),
                }),
            )
            .await?;
            expect(&mut stats, "GetRecord", &r, |m| {
                matches!(
                    m,
                    ServerMsg::Record {
                        access: Access::ReadOnly,
                        ..
                    }
                )
            });
            let t = Request::Transferred(Transferred {
                call: call.clone(),
                from_dn: a.clone(),
                to_dn: b.clone(),
                kind: TransferKind::TwoStep,
                consult_call: Some(c2),
            });
            events(&mut grp.switch, &mut stats, vec![t]).await?;
            wait_access(&mut grp.desks[1], &record, Access::Full).await?;
            finisher = 1;
            last_dns = vec![b.clone()];
        } else {
            let conf = |dn: &str| {
                Request::Conferenced(Conferenced {
                    call: call.clone(),
                    dn: dn.into(),
                    consult_call: None,
                })
            };
            events(&mut grp.switch, &mut stats, vec![conf(&b), conf(&c)]).await?;
            wait_access(&mut grp.desks[1], &record, Access::Full).await?;
            wait_access(&mut grp.desks[2], &record, Access::Full).await?;
            // The race: all three send before anyone reads.
            let started = Instant::now();
            let mut refs = Vec::new();
            for d in grp.desks.iter_mut() {
                refs.push(d.send(&processed_req(&record)).await?);
            }
            let mut acks = 0;
            for (d, r) in grp.desks.iter_mut().zip(refs) {
                let reply = d.reply_to(r).await?;
                stats.record("RecordProcessed", started.elapsed());
                match reply {
                    ServerMsg::RecordProcessedAck { .. } => acks += 1,
                    ServerMsg::Error {
                        code: ErrorCode::AlreadyFinal,
                        ..
                    } => stats.expected("RecordProcessed: already_final (race loser)"),
                    other => {
                        expect(&mut stats, "RecordProcessed", &other, |_| false);
                    }
                }
            }
            if acks != 1 {
                stats.error(format!("conference race: {acks} acks instead of 1"));
            }
            events(
                &mut grp.switch,
                &mut stats,
                vec![ev_rel(&call, &a), ev_rel(&call, &b), ev_rel(&call, &c)],
            )
            .await?;
            for d in grp.desks.iter_mut() {
                d.clear_pushes();
            }
            run.done(Some(record));
            continue;
        }
        let r = timed(
            &mut grp.desks[finisher],
            &mut stats,
            "RecordProcessed",
            processed_req(&record),
        )
        .await?;
        if expect(&mut stats, "RecordProcessed", &r, |m| {
            matches!(m, ServerMsg::RecordProcessedAck { .. })
        }) {
            run.done(Some(record));
        }
        let rel: Vec<Request> = last_dns.iter().map(|dn| ev_rel(&call, dn)).collect();
        events(&mut grp.switch, &mut stats, rel).await?;
        for d in grp.desks.iter_mut() {
            d.clear_pushes();
        }
    }
    Ok(stats)
}

/// Gives a desktop `count` records on calls established on its DN (setup, not measured).
async fn hand_out(
    opts: &LoadOptions,
    desk: &mut Client,
    sw: &mut Client,
    dialer: &mut Client,
    dn: &str,
    tag: &str,
    count: u64,
) -> Result<Vec<String>, ClientError> {
    let mut records = Vec::new();
    let mut scratch = Stats::new();
    // Handing out thousands of records takes longer than the server's silence limit (3
    // heartbeats): the desktop, which only listens meanwhile, pings now and then to stay alive.
    let mut last_ping = Instant::now();
    for j in 0..count {
        if last_ping.elapsed() >= Duration::from_secs(1) {
            desk.request(Request::Ping).await?;
            last_ping = Instant::now();
        }
        let record = format!("{}-{tag}-r{j}", opts.run_id);
        let call = format!("{}-{tag}-c{j}", opts.run_id);
        dialer.request(attach_req(&call, &record)).await?;
        events(
            sw,
            &mut scratch,
            vec![ev_ring(&call, dn, None, None), ev_est(&call, dn)],
        )
        .await?;
        wait_access(desk, &record, Access::Full).await?;
        records.push(record);
    }
    desk.clear_pushes();
    Ok(records)
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
            let start = Instant::now();
            run = Arc::new(Run::new(opts.clone(), start, deadline_from(start)));
            let ticker = spawn_progress(run.clone(), bar.clone());
            let handles: Vec<_> = opened
                .into_iter()
                .map(|grp| tokio::spawn(mix_worker(run.clone(), grp)))
                .collect();
            for h in handles {
                match h.await {
                    Ok(Ok(s)) => stats.merge(s),
                    Ok(Err(e)) => stats.error(format!("connection: {e}")),
                    Err(e) => stats.error(format!("worker panicked: {e}")),
                }
            }
            elapsed = start.elapsed();
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
            for h in handles {
                match h.await {
                    Ok(Ok(s)) => stats.merge(s),
                    Ok(Err(e)) => stats.error(format!("connection: {e}")),
                    Err(e) => stats.error(format!("worker panicked: {e}")),
                }
            }
            elapsed = start.elapsed();
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
            let start = Instant::now();
            run = Arc::new(Run::new(opts.clone(), start, deadline_from(start)));
            let ticker = spawn_progress(run.clone(), bar.clone());
            let handles: Vec<_> = dialers
                .into_iter()
                .map(|dialer| tokio::spawn(attach_worker(run.clone(), dialer)))
                .collect();
            for h in handles {
                match h.await {
                    Ok(Ok(s)) => stats.merge(s),
                    Ok(Err(e)) => stats.error(format!("connection: {e}")),
                    Err(e) => stats.error(format!("worker panicked: {e}")),
                }
            }
            elapsed = start.elapsed();
            ticker.abort();
            run.rss_mark_catch_up();
        }
        Scenario::Idle => unreachable!(),
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let completed = run.completed.load(Ordering::Relaxed);
    let mut summary = summarize(&opts, &stats, elapsed, completed, verification);
    summary.server_rss_at =
        std::mem::take(&mut *run.rss_marks.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(summary)
}

/// `processed` / `get` / `denied`: requests on the desktop's records, `pipeline` at a time.
async fn request_worker(
    run: Arc<Run>,
    mut desk: Client,
    records: Vec<String>,
) -> Result<Stats, ClientError> {
    let mut stats = Stats::new();
    let depth = run.opts.pipeline.max(1);
    let mut j = 0usize;
    let mut burst: Vec<Request> = Vec::with_capacity(depth);
    let mut burst_records: Vec<String> = Vec::with_capacity(depth);
    loop {
        burst.clear();
        burst_records.clear();
        while burst.len() < depth {
            // Each desktop finishes each of its records once.
            if run.opts.scenario == Scenario::Processed && j >= records.len() {
                break;
            }
            if run.take().await.is_none() {
                break;
            }
            let record = records[j % records.len()].clone();
            j += 1;
            let request = match run.opts.scenario {
                Scenario::Processed | Scenario::Denied => processed_req(&record),
                Scenario::Get => Request::GetRecord(RecordRef {
                    record: record.clone(),
                }),
                _ => unreachable!(),
            };
            burst.push(request);
            burst_records.push(record);
        }
        if burst.is_empty() {
            break;
        }
        let started = Instant::now();
        let refs = desk.send_many(burst.iter()).await?;
        for (record, r) in burst_records.iter().zip(refs) {
            let reply = desk.reply_to(r).await?;
            let elapsed = started.elapsed();
            match run.opts.scenario {
                Scenario::Processed => {
                    stats.record("RecordProcessed", elapsed);
                    if expect(&mut stats, "RecordProcessed", &reply, |m| {
                        matches!(m, ServerMsg::RecordProcessedAck { .. })
                    }) {
                        if let Some(marks) = &run.tail {
                            mark(marks, record, 0, Instant::now());
                        }
                        run.done(None);
                    }
                }
                Scenario::Get => {
                    stats.record("GetRecord", elapsed);
                    if expect(&mut stats, "GetRecord", &reply, |m| {
                        matches!(m, ServerMsg::Record { .. })
                    }) {
                        run.done(None);
                    }
                }
                Scenario::Denied => {
                    stats.record("RecordProcessed (denied)", elapsed);
                    if matches!(
                        reply,
                        ServerMsg::Error {
                            code: ErrorCode::AccessDenied,
                            ..
                        }
                    ) {
                        stats.expected("RecordProcessed: access_denied");
                        run.done(None);
                    } else {
                        expect(&mut stats, "RecordProcessed (denied)", &reply, |_| false);
                    }
                }
                _ => unreachable!(),
            }
        }
        desk.clear_pushes();
    }
    Ok(stats)
}

/// `attach`: a dialer attaching new records to new calls, `pipeline` at a time.
async fn attach_worker(run: Arc<Run>, mut dialer: Client) -> Result<Stats, ClientError> {
    let mut stats = Stats::new();
    let depth = run.opts.pipeline.max(1);
    let mut burst: Vec<Request> = Vec::with_capacity(depth);
    loop {
        burst.clear();
        while burst.len() < depth {
            let Some(i) = run.take().await else {
                break;
            };
            let record = format!("{}-at-r{i}", run.opts.run_id);
            let call = format!("{}-at-c{i}", run.opts.run_id);
            burst.push(attach_req(&call, &record));
        }
        if burst.is_empty() {
            break;
        }
        let started = Instant::now();
        let refs = dialer.send_many(burst.iter()).await?;
        for r in refs {
            let reply = dialer.reply_to(r).await?;
            stats.record("AttachRecord", started.elapsed());
            if expect(&mut stats, "AttachRecord", &reply, |m| {
                matches!(m, ServerMsg::RecordAttached { .. })
            }) {
                run.done(None);
            }
        }
    }
    Ok(stats)
}

/// Every completed record must have exactly one outcome, both as the dialer saw it and as the
/// server reports it.
async fn verify(
    opts: &LoadOptions,
    done: &[String],
    outcomes: &Arc<Mutex<HashMap<String, u32>>>,
) -> Result<Verification, ClientError> {
    let mut v = Verification {
        records_checked: done.len() as u64,
        ..Verification::default()
    };
    // Outcomes are pushed after the ack; give the last ones a moment to arrive.
    for _ in 0..100 {
        let seen = outcomes.lock().unwrap_or_else(|p| p.into_inner()).len();
        if seen >= done.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counts = outcomes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut admin = side_conn(opts, Role::Admin).await?;
    for record in done {
        let n = counts.get(record).copied().unwrap_or(0);
        let report = admin
            .request(Request::RecordInfo(RecordRef {
                record: record.clone(),
            }))
            .await?;
        let final_ok = matches!(&report, ServerMsg::RecordReport { final_: Some(f), .. } if f.outcome == Outcome::Processed);
        if n == 1 && final_ok {
            v.with_one_outcome += 1;
        } else {
            v.problems
                .push(format!("{record}: {n} dialer outcomes, report {report:?}"));
        }
    }
    Ok(v)
}

impl Run {
    /// Notes the server's RSS for each power of ten (from 10,000) the completed count has
    /// reached since the last note.
    fn rss_mark_catch_up(&self) {
        let Some(pid) = self.opts.server_pid else {
            return;
        };
        let completed = self.completed.load(Ordering::Relaxed);
        let mut marks = self.rss_marks.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = marks
            .last()
            .map_or(10_000, |m| m.records.saturating_mul(10));
        while completed >= next {
            if let Some(rss_kib) = rss_kib(pid) {
                marks.push(RssMark {
                    records: next,
                    rss_kib,
                });
            }
            next = next.saturating_mul(10);
        }
    }

    fn new(opts: LoadOptions, started: Instant, deadline: Option<Instant>) -> Run {
        Run {
            opts,
            next: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            deadline,
            started,
            done_records: Mutex::new(Vec::new()),
            rss_marks: Mutex::new(Vec::new()),
            tail: None,
        }
    }
}

/// `--tail`: an admin connection following the audit log from now on.
struct TailReader {
    marks: Arc<TailMarks>,
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<Result<Stats, ClientError>>,
}

impl TailReader {
    async fn start(opts: &LoadOptions) -> Result<TailReader, ClientError> {
        let mut admin = side_conn(opts, Role::Admin).await?;
        admin.set_timeout(Duration::from_secs(3600));
        let r = admin
            .send(&Request::AuditTail(AuditTail {
                from_seq: None,
                follow: true,
                record: None,
                agent: None,
            }))
            .await?;
        // Once a later request is answered, the tail is registered: nothing of the run is missed.
        admin.request(Request::Ping).await?;
        let marks: Arc<TailMarks> = Arc::default();
        let stop = Arc::new(tokio::sync::Notify::new());
        let (m, st) = (marks.clone(), stop.clone());
        let prefix = format!("{}-", opts.run_id);
        let task = tokio::spawn(async move {
            let mut stats = Stats::new();
            loop {
                let msg = tokio::select! {
                    msg = admin.reply_to(r) => msg?,
                    _ = st.notified() => return Ok(stats),
                };
                let ServerMsg::Audit(e) = msg else {
                    stats.error(format!("audit tail: unexpected {msg:?}"));
                    return Ok(stats);
                };
                let Some(record) = e.record.as_deref() else {
                    continue;
                };
                if e.kind != AuditKind::Finalized || !record.starts_with(&prefix) {
                    continue;
                }
                mark(&m, record, 1, Instant::now());
                // The entry's own time has millisecond resolution.
                if let Some(ts) = parse_rfc3339(&e.ts) {
                    let behind = baton::server::now_ms().saturating_sub(ts);
                    stats.record("audit tail lag (entry time)", Duration::from_millis(behind));
                }
            }
        });
        Ok(TailReader { marks, stop, task })
    }

    /// Waits (up to 5 s) until every acknowledged record was seen on the tail, stops the reader
    /// and measures, per record, how long after its acknowledgment its entry arrived.
    async fn finish(self, stats: &mut Stats) {
        for _ in 0..250 {
            let all_seen = self
                .marks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .all(|(ack, seen)| ack.is_none() || seen.is_some());
            if all_seen {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.notify_one();
        match self.task.await {
            Ok(Ok(s)) => stats.merge(s),
            Ok(Err(e)) => stats.error(format!("audit tail connection: {e}")),
            Err(e) => stats.error(format!("audit tail reader panicked: {e}")),
        }
        let marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        for (ack, seen) in marks.values() {
            match (ack, seen) {
                (Some(a), Some(t)) => stats.record(
                    "audit tail lag (after ack)",
                    t.saturating_duration_since(*a),
                ),
                (Some(_), None) => {
                    stats.error("audit tail: an acknowledged RecordProcessed never appeared")
                }
                // Finalized but not acknowledged to the load tool: the run stopped first.
                (None, _) => {}
            }
        }
    }
}

fn progress_bar(opts: &LoadOptions) -> Option<ProgressBar> {
    if !opts.progress {
        return None;
    }
    let bar = match opts.records {
        Some(n) if opts.scenario != Scenario::Idle => ProgressBar::new(n),
        _ => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Some(bar)
}

/// Follows the run: moves the progress bar and, with `--server-pid`, notes the server's resident
/// memory each time the completed count reaches a power of ten from 10,000 on (how memory grows
/// with the work done: it should not).
fn spawn_progress(run: Arc<Run>, bar: Option<ProgressBar>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Some(bar) = &bar {
            bar.set_message("");
        }
        loop {
            if let Some(bar) = &bar {
                bar.set_position(run.completed.load(Ordering::Relaxed));
            }
            run.rss_mark_catch_up();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

fn summarize(
    opts: &LoadOptions,
    stats: &Stats,
    elapsed: Duration,
    completed: u64,
    verification: Option<Verification>,
) -> Summary {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let requests = stats
        .hists
        .iter()
        .map(|(name, h)| {
            (
                name.to_string(),
                TypeStats {
                    count: h.len(),
                    per_second: h.len() as f64 / secs,
                    p50_us: h.value_at_quantile(0.5),
                    p90_us: h.value_at_quantile(0.9),
                    p99_us: h.value_at_quantile(0.99),
                    p999_us: h.value_at_quantile(0.999),
                    max_us: h.max(),
                },
            )
        })
        .collect();
    Summary {
        scenario: opts.scenario,
        agents: opts.agents,
        pipeline: opts.pipeline.max(1),
        elapsed_s: secs,
        completed,
        completed_per_second: completed as f64 / secs,
        requests,
        errors: stats.errors.clone(),
        expected_refusals: stats.expected.clone(),
        verification,
        server_rss_kib: opts.server_pid.and_then(rss_kib),
        server_rss_at: Vec::new(),
    }
}

/// Resident set size of a local process, from /proc (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS:")
}

/// One memory figure (`VmRSS:`, `VmHWM:`, ...) of a local process, in KiB, from /proc.
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `idle`: log in many desktops and keep them heart-beating; measure ping latency and RSS.
async fn run_idle(opts: LoadOptions) -> Result<Summary, ClientError> {
    let n = opts.agents;
    let bar = progress_bar(&opts);
    if let Some(b) = &bar {
        b.set_length(n as u64);
        b.set_message("logging in");
    }
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
    ));
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let logged_in = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(n);
    // At most this many logins in flight, so the server's accept queue is not flooded.
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    for i in 0..n {
        let o = opts.clone();
        let (hist, errors, logged_in, stop, gate) = (
            hist.clone(),
            errors.clone(),
            logged_in.clone(),
            stop.clone(),
            gate.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // 20,000 connections per loopback source address keeps clear of the ephemeral port limit.
            let local = IpAddr::V4(Ipv4Addr::new(127, 0, 1 + (i / 20_000) as u8, 1));
            let permit = gate.acquire_owned().await;
            let agent = format!("{}-idle{i}", o.run_id);
            let dn = format!("{}-i{i}", o.run_id);
            let mut desk = match desktop(&o, &agent, &dn, local).await {
                Ok(d) => d,
                Err(e) => {
                    *errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(format!("login: {e}"))
                        .or_default() += 1;
                    return;
                }
            };
            drop(permit);
            desk.set_discard_pushes(true);
            logged_in.fetch_add(1, Ordering::Relaxed);
            let period = Duration::from_millis(desk.heartbeat_ms.max(100));
            // Spread the pings over the period.
            tokio::time::sleep(period.mul_f64((i % 1000) as f64 / 1000.0)).await;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match desk.request(Request::Ping).await {
                    Ok(ServerMsg::Pong) => {
                        let _ = hist
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .record((t.elapsed().as_micros() as u64).max(1));
                    }
                    Ok(other) => {
                        *errors
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(format!("ping: {}", other.type_name()))
                            .or_default() += 1;
                    }
                    Err(e) => {
                        *errors
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(format!("ping: {e}"))
                            .or_default() += 1;
                        return;
                    }
                }
                tokio::time::sleep(period).await;
            }
            let _ = desk.request(Request::Logout(Logout { force: true })).await;
        }));
    }
    while (logged_in.load(Ordering::Relaxed) as usize) < n {
        if let Some(b) = &bar {
            b.set_position(logged_in.load(Ordering::Relaxed));
        }
        let failed: u64 = errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum();
        if logged_in.load(Ordering::Relaxed) + failed >= n as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(b) = &bar {
        b.set_message("heart-beating");
    }
    // Measure the steady state only.
    hist.lock().unwrap_or_else(|p| p.into_inner()).reset();
    let start = Instant::now();
    tokio::time::sleep(opts.duration.unwrap_or(Duration::from_secs(30))).await;
    let elapsed = start.elapsed();
    let rss = opts.server_pid.and_then(rss_kib);
    stop.store(true, Ordering::Relaxed);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut stats = Stats::new();
    stats.hists.insert(
        "Ping",
        hist.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    );
    stats.errors = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut summary = summarize(
        &opts,
        &stats,
        elapsed,
        logged_in.load(Ordering::Relaxed),
        None,
    );
    summary.server_rss_kib = rss;
    for t in tasks {
        t.abort();
    }
    Ok(summary)
}
