//! `baton fill`: build a large store the way a running centre would, for `baton restart-time` to
//! time the server's start on it.
//!
//! The fill drives a real [`Engine`] through calls (attach, ring, answer, reads, updates, finish,
//! hang up), so every record, agent and audit entry on disk is exactly what the server itself would
//! have written, and commits the engine's [`WriteBatch`]es through the [`Store`] trait in big
//! batches from a writer thread while the engine produces the next ones. Records end up in the
//! states a centre leaves behind: most final (processed, rescheduled, rejected, do-not-call,
//! cancelled by the dialer), some held in wrap-up by logged-in agents, some waiting on their call.
//! Reads (`GetRecord`) are added while a record is held until the audit log reaches its target.

use baton::config::Config;
use baton::engine::{ConnId, Engine, EngineConfig, Input, Output};
use baton::messages::*;
use baton::store::{SledStore, Store, StoreError, WriteBatch};
use baton_kit::*;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

/// Name of the file, next to sled's own files in the data directory, describing what was filled.
pub const MANIFEST: &str = "baton-fill.json";

const SWITCH: ConnId = 1;
const DIALER: ConnId = 2;
/// Records handed to the writer thread at once (each with its audit entries).
const RECORDS_PER_BATCH: u64 = 4096;
/// Keys written between two reopenings of the store during a fill.
const REOPEN_AFTER_WRITES: usize = 500_000;
/// Batches queued between the engine and the writer thread.
const QUEUED_BATCHES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("the engine refused a fill step: {0}")]
    Refused(String),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone)]
pub struct FillOptions {
    pub data_dir: PathBuf,
    pub records: u64,
    /// Audit entries to reach; the calls alone write about six per final record.
    pub audit: u64,
    pub agents: usize,
    pub progress: bool,
}

/// How one record's call goes; chosen from the record's number so that the measurement knows
/// which record ended in which state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Attached, the dialer is still dialing: live, no holder.
    Waiting,
    /// Answered, updated, hung up: the agent holds it `full` in wrap-up.
    Held,
    /// Rang but nobody answered; the dialer cancelled it.
    Unanswered,
    Rescheduled,
    Rejected,
    DoNotCall,
    /// Answered, transferred to the next agent, who finishes it.
    Transferred,
    Processed,
}

impl Flow {
    pub fn of(n: u64) -> Flow {
        match n % 200 {
            0 | 1 => Flow::Waiting,
            2 => Flow::Held,
            3..=5 => Flow::Unanswered,
            6..=15 => Flow::Rescheduled,
            16..=19 => Flow::Rejected,
            20 | 21 => Flow::DoNotCall,
            22..=41 => Flow::Transferred,
            _ => Flow::Processed,
        }
    }
}

pub fn record_id(n: u64) -> String {
    format!("R{n:08}")
}

fn call_id(n: u64) -> String {
    format!("C{n:08}")
}

fn agent_id(i: usize) -> String {
    format!("{:04}", 1000 + i)
}

fn dn_of(i: usize) -> String {
    format!("{:04}", 7000 + i)
}

fn desk(i: usize) -> ConnId {
    100 + i as ConnId
}

/// What a fill wrote, kept in the data directory for the measurement to check against.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub records: u64,
    pub records_final: u64,
    pub records_held: u64,
    pub records_waiting: u64,
    pub agents: u64,
    pub audit_last_seq: u64,
    /// A record held `full` in wrap-up, and its holder.
    pub held_record: Option<(String, String)>,
    pub final_record: Option<String>,
    pub waiting_record: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FillSummary {
    pub manifest: Manifest,
    pub elapsed_s: f64,
    pub disk_bytes: u64,
}

impl FillSummary {
    pub fn render(&self) -> String {
        let m = &self.manifest;
        format!(
            "filled {} records ({} final, {} held, {} waiting), {} agents, {} audit entries in {:.1} s; {:.2} GiB on disk\n",
            m.records,
            m.records_final,
            m.records_held,
            m.records_waiting,
            m.agents,
            m.audit_last_seq,
            self.elapsed_s,
            self.disk_bytes as f64 / (1u64 << 30) as f64
        )
    }
}

/// Drives an engine through the calls and checks every reply it gives to the fill's own requests.
struct Driver {
    engine: Engine,
    now: u64,
    step_ms: u64,
    out: Vec<Output>,
    audit_seq: u64,
    next_ref: u64,
}

impl Driver {
    fn feed(&mut self, input: Input) -> Result<(), RestartError> {
        self.now += self.step_ms;
        let asked = match &input {
            Input::Request { r#ref, .. } => *r#ref,
            _ => None,
        };
        self.engine.handle(self.now, input, &mut self.out);
        for o in self.out.drain(..) {
            match o {
                Output::Audit(e) => self.audit_seq = e.seq,
                Output::Send { env, .. } if env.r#ref.is_some() && env.r#ref == asked => {
                    if let ServerMsg::Error { code, message, .. } = &env.msg {
                        return Err(RestartError::Refused(format!("{code:?}: {message}")));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn request(&mut self, conn: ConnId, request: Request) -> Result<(), RestartError> {
        self.next_ref += 1;
        let r#ref = Some(self.next_ref);
        self.feed(Input::Request {
            conn,
            r#ref,
            request,
        })
    }

    fn switch(&mut self, request: Request) -> Result<(), RestartError> {
        self.request(SWITCH, request)
    }
}

fn object(v: serde_json::Value) -> Object {
    match v {
        serde_json::Value::Object(m) => m,
        _ => Object::new(),
    }
}

/// Record `n`'s `AttachRecord`: varied data, about what a calling list carries, and a chained
/// mobile number for every fourth record.
fn attach_nth(n: u64) -> Request {
    let record = record_id(n);
    let mut a = attach_record(&call_id(n), &record);
    if n.is_multiple_of(4) {
        a.chain = vec![ChainEntry {
            record: format!("{record}-m"),
            chain_n: 1,
            phone: Some(format!("+3366{:07}", n % 10_000_000)),
            data: object(json!({"kind": "mobile"})),
        }];
        a.chain_id = Some(format!("K{n:08}"));
    } else {
        a.chain_id = None;
    }
    let segment = ["gold", "silver", "bronze"][(n % 3) as usize];
    let city = ["Lyon", "Lille", "Nantes", "Metz"][(n % 4) as usize];
    a.campaign = format!("campaign-{}", n % 12);
    a.list = Some(format!("list-{}", n % 40));
    a.phone = Some(format!("+3319{:07}", n % 10_000_000));
    a.data = object(json!({
        "customer": format!("Customer {n}"),
        "account": format!("AC-{:09}", n * 7919 % 1_000_000_000),
        "balance": (n % 5000) as f64 + 0.25,
        "segment": segment,
        "city": city,
        "last_contact": "2026-10-02",
    }));
    Request::AttachRecord(a)
}

/// Plays record `n`'s call; `audit_goal` is the audit position to reach by the end of this record.
fn play(d: &mut Driver, n: u64, agents: usize, audit_goal: u64) -> Result<Flow, RestartError> {
    let flow = Flow::of(n);
    let (call, record) = (call_id(n), record_id(n));
    let a = (n % agents as u64) as usize;
    let b = (a + 1) % agents;
    d.request(DIALER, attach_nth(n))?;
    match flow {
        Flow::Waiting => return Ok(flow),
        Flow::Unanswered => {
            d.switch(ringing(&call, &dn_of(a)))?;
            d.switch(released(&call, &dn_of(a), None))?;
            d.request(
                DIALER,
                Request::CancelRecord(RecordRef {
                    record: record.clone(),
                }),
            )?;
            return Ok(flow);
        }
        _ => {}
    }
    d.switch(ringing(&call, &dn_of(a)))?;
    d.switch(established(&call, &dn_of(a)))?;
    let mut finisher = a;
    if flow == Flow::Transferred {
        d.switch(transferred(
            &call,
            &dn_of(a),
            &dn_of(b),
            TransferKind::SingleStep,
            None,
        ))?;
        d.switch(established(&call, &dn_of(b)))?;
        finisher = b;
    }
    // The entries still to come for this record once the reads are done: the update, the final
    // request's decision, the final outcome and the revocation.
    let tail = if flow == Flow::Held { 1 } else { 4 };
    while d.audit_seq + tail < audit_goal {
        d.request(desk(finisher), record_req("GetRecord", &record))?;
    }
    d.request(
        desk(finisher),
        update_with_result(
            &record,
            "contacted",
            json!({
                "note": "asked for the new rate card",
                "amount": (n % 900) as f64 + 0.5,
            }),
        ),
    )?;
    let record_ref = RecordRef {
        record: record.clone(),
    };
    match flow {
        Flow::Held => {}
        Flow::Rescheduled => {
            let at = rfc3339(d.now + 86_400_000);
            d.request(
                desk(finisher),
                Request::Reschedule(Reschedule {
                    record: record.clone(),
                    at,
                    callback: if n.is_multiple_of(2) {
                        Callback::Personal
                    } else {
                        Callback::Campaign
                    },
                }),
            )?;
        }
        Flow::Rejected => d.request(desk(finisher), Request::RecordReject(record_ref))?,
        Flow::DoNotCall => d.request(
            desk(finisher),
            Request::DoNotCall(DoNotCall {
                record: record.clone(),
                scope: DncScope::Record,
            }),
        )?,
        _ => d.request(desk(finisher), processed(&record, "sale"))?,
    }
    d.switch(released(&call, &dn_of(finisher), None))?;
    Ok(flow)
}

/// Total size of the files under `dir`.
pub fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        match entry.metadata() {
            Ok(m) if m.is_dir() => total += disk_usage(&entry.path()),
            Ok(m) => total += m.len(),
            Err(_) => {}
        }
    }
    total
}

/// Writes a store of `records` records and about `audit` audit entries into an empty `data_dir`.
pub fn fill(opts: &FillOptions) -> Result<FillSummary, RestartError> {
    if opts.agents < 2 {
        return Err(RestartError::Invalid("--agents must be at least 2".into()));
    }
    if opts.data_dir.exists() && std::fs::read_dir(&opts.data_dir)?.next().is_some() {
        return Err(RestartError::Invalid(format!(
            "{} is not empty; fill writes a new store",
            opts.data_dir.display()
        )));
    }
    let started = Instant::now();
    // Bulk inserts make sled's cache grow well past its nominal size; a small one keeps the fill
    // within memory without slowing it (nothing written is read back).
    let dir = opts.data_dir.clone();
    let (tx, rx) = mpsc::sync_channel::<WriteBatch>(QUEUED_BATCHES);
    let writer = std::thread::spawn(move || -> Result<(), StoreError> {
        // sled keeps much of what a long stream of inserts wrote in memory, well past its cache
        // size, until the database is closed; reopening now and then keeps the fill's memory flat.
        let mut store = SledStore::open(&dir)?;
        let mut written = 0usize;
        for batch in rx {
            store.commit(&batch, false)?;
            written += batch.audit.len() + batch.records.len();
            if written >= REOPEN_AFTER_WRITES {
                store.flush()?;
                drop(store);
                store = SledStore::open(&dir)?;
                written = 0;
            }
        }
        store.flush()
    });

    let bar = if opts.progress {
        let bar = ProgressBar::new(opts.records);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} records, {per_sec}, eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    // The calls are spread over up to a month before now, so that times on disk look like a
    // history; never more than a second between two inputs, so that an unanswered call's record
    // is cancelled well before its orphan timeout.
    let inputs_per_record = 12;
    let inputs = opts.records.max(1) * inputs_per_record;
    let step_ms = (30 * 86_400_000 / inputs).clamp(1, 1000);
    let start_ms = baton::server::now_ms().saturating_sub(step_ms * inputs);
    let mut d = Driver {
        engine: Engine::new(
            EngineConfig::from_config(&Config::default()),
            rand::random::<[u8; 32]>(),
            start_ms,
        ),
        now: start_ms,
        step_ms,
        out: Vec::new(),
        audit_seq: 0,
        next_ref: 0,
    };
    d.feed(Input::Connected {
        conn: SWITCH,
        role: Role::Switch,
    })?;
    d.feed(Input::Connected {
        conn: DIALER,
        role: Role::Dialer,
    })?;
    for i in 0..opts.agents {
        d.feed(Input::Connected {
            conn: desk(i),
            role: Role::Desktop,
        })?;
        d.request(desk(i), login(&agent_id(i), &dn_of(i), None))?;
    }

    let mut m = Manifest {
        records: opts.records,
        records_final: 0,
        records_held: 0,
        records_waiting: 0,
        agents: opts.agents as u64,
        audit_last_seq: 0,
        held_record: None,
        final_record: None,
        waiting_record: None,
    };
    let send = |batch: WriteBatch| {
        tx.send(batch)
            .map_err(|_| RestartError::Invalid("the store writer stopped".into()))
    };
    for n in 0..opts.records {
        let goal = (opts.audit as u128 * (n + 1) as u128 / opts.records as u128) as u64;
        match play(&mut d, n, opts.agents, goal)? {
            Flow::Waiting => {
                m.records_waiting += 1;
                m.waiting_record.get_or_insert_with(|| record_id(n));
            }
            Flow::Held => {
                m.records_held += 1;
                let holder = agent_id((n % opts.agents as u64) as usize);
                m.held_record.get_or_insert_with(|| (record_id(n), holder));
            }
            _ => {
                m.records_final += 1;
                m.final_record.get_or_insert_with(|| record_id(n));
            }
        }
        if (n + 1).is_multiple_of(RECORDS_PER_BATCH) {
            send(d.engine.take_writes())?;
            bar.set_position(n + 1);
        }
    }
    // Too few calls for the audit target: the rest are refused reads of a final record.
    if let Some(record) = m.final_record.clone() {
        let mut pending = 0;
        while d.audit_seq < opts.audit {
            d.next_ref += 1;
            let r#ref = Some(d.next_ref);
            d.now += d.step_ms;
            d.engine.handle(
                d.now,
                Input::Request {
                    conn: desk(0),
                    r#ref,
                    request: Request::GetRecord(RecordRef {
                        record: record.clone(),
                    }),
                },
                &mut d.out,
            );
            for o in d.out.drain(..) {
                if let Output::Audit(e) = o {
                    d.audit_seq = e.seq;
                }
            }
            pending += 1;
            if pending == 50_000 {
                send(d.engine.take_writes())?;
                pending = 0;
            }
        }
    }
    send(d.engine.take_writes())?;
    drop(tx);
    bar.finish_and_clear();
    writer
        .join()
        .map_err(|_| RestartError::Invalid("the store writer panicked".into()))??;
    m.audit_last_seq = d.audit_seq;
    std::fs::write(opts.data_dir.join(MANIFEST), serde_json::to_vec_pretty(&m)?)?;
    Ok(FillSummary {
        manifest: m,
        elapsed_s: started.elapsed().as_secs_f64(),
        disk_bytes: disk_usage(&opts.data_dir),
    })
}
