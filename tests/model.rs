//! Model-based property test of the pure engine (no sockets).
//!
//! A fixed small universe (agents A1..A4 on DNs D1..D4, an unmonitored DN D9, calls C1..C4,
//! records R1..R3, one switch, one dialer, one admin) is driven by random sequences of up to 60
//! steps: desktop logins, logouts, drops and resumes, switch events, dialer attaches and cancels,
//! desktop record requests, admin releases and time passing. After every step the test checks,
//! from the outputs alone plus what it sent, the sharing rules of `shared/SCENARIOS.md` and
//! `shared/CONTRACT.md`:
//!
//! 1. one `finalized` audit entry per record life, and one dialer `RecordOutcome` per final;
//! 2. record requests are answered in the contract's check order (section 9), a change is only
//!    ever accepted from a `full` holder, and a refused request changes nothing but the audit log;
//! 3. an `Established`/`Ringing`/`Released` of a call never grants `full` on a record that is not
//!    attached to that very call (so a consultee is never above `read_only` before completion);
//! 4. every `AccessChanged` push (but the resume replay) and every `RecordFinalized` push has its
//!    audit entry, and every access change of a connected desktop is pushed to it;
//! 5. what each connected desktop was told (pushes, final acks, resume replay) equals the
//!    engine's access table;
//! 6. audit `seq` numbers are 1, 2, 3... with no gap;
//! 7. every request gets exactly one reply with its `ref` (a stream for `ChainedRecords` and
//!    `AuditTail`), on its own connection, and no reply carries a `ref` nobody sent.
//!
//! Run (CI, a few seconds): `cargo test --release --test model`
//! (2000 sequences; `-- --nocapture` shows the step counts).
//! Long mode: `BATON_PROPTEST_CASES=100000 cargo test --release --test model -- --nocapture`.
//! The generator seed is fixed so that runs repeat; `BATON_PROPTEST_SEED=<u64>` picks another.

use baton::engine::{ConnId, Engine, EngineConfig, Input, Output};
use baton::messages::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed, TestCaseError, TestRunner};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

const AGENTS: [&str; 4] = ["A1", "A2", "A3", "A4"];
/// D9 is never logged in on: a transfer there has no recipient (rule 9).
const DNS: [&str; 5] = ["D1", "D2", "D3", "D4", "D9"];
const CALLS: [&str; 4] = ["C1", "C2", "C3", "C4"];
const RECORDS: [&str; 3] = ["R1", "R2", "R3"];
const ANIS: [&str; 2] = ["5550001", "5550002"];

const SWITCH: ConnId = 10;
const DIALER: ConnId = 11;
const ADMIN: ConnId = 12;

const T0: u64 = 1_790_000_000_000;
const GRACE_MS: u64 = 1000;
const ORPHAN_MS: u64 = 2000;
const DAY_MS: u64 = 86_400_000;

// ---------------------------------------------------------------------------------------------
// Steps and their generator
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum DeskOp {
    Get,
    Update,
    Processed,
    Reject,
    Cancel,
    DoNotCall { chain: bool },
    Reschedule { campaign: bool },
    Chained,
}

impl DeskOp {
    fn needs_full(self) -> bool {
        !matches!(self, DeskOp::Get | DeskOp::Chained)
    }
    fn is_final(self) -> bool {
        !matches!(self, DeskOp::Get | DeskOp::Chained | DeskOp::Update)
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Login on the agent's desktop (a new connection if it has none), without resume.
    Login(usize),
    Logout {
        agent: usize,
        force: bool,
    },
    /// The desktop connection drops (no Logout).
    Disconnect(usize),
    /// A new desktop connection logs in, with the last session token or without.
    Reconnect {
        agent: usize,
        resume: bool,
    },
    Ringing {
        call: usize,
        dn: usize,
        ani: Option<usize>,
        consult_of: Option<usize>,
        from_dn: Option<usize>,
    },
    Established {
        call: usize,
        dn: usize,
    },
    /// `dn: None`: a DN the call is on, as far as the test's switch knows.
    Released {
        call: usize,
        dn: Option<usize>,
        rona: bool,
    },
    Transferred {
        call: usize,
        from: Option<usize>,
        to: usize,
        kind: u8,
        consult_call: Option<usize>,
    },
    Conferenced {
        call: usize,
        dn: usize,
        consult_call: Option<usize>,
    },
    PhoneLogin {
        agent: usize,
        dn: usize,
    },
    /// `dn: None`: the agent's own DN.
    PhoneLogout {
        agent: usize,
        dn: Option<usize>,
    },
    Attach {
        call: usize,
        record: usize,
        phone: Option<usize>,
        chain: bool,
    },
    DialerCancel(usize),
    Desk {
        agent: usize,
        record: usize,
        op: DeskOp,
    },
    AdminRelease(usize),
    AuditTail(u64),
    /// Time passes by this many milliseconds, then `Tick`.
    Advance(u64),
}

fn agent_s() -> impl Strategy<Value = usize> {
    0..4usize
}
fn dn_s() -> BoxedStrategy<usize> {
    prop_oneof![5 => 0..4usize, 1 => Just(4usize)].boxed()
}
fn call_s() -> impl Strategy<Value = usize> {
    0..4usize
}
fn record_s() -> impl Strategy<Value = usize> {
    0..3usize
}

fn desk_op_s() -> BoxedStrategy<DeskOp> {
    prop_oneof![
        3 => Just(DeskOp::Get),
        3 => Just(DeskOp::Update),
        4 => Just(DeskOp::Processed),
        1 => Just(DeskOp::Reject),
        1 => Just(DeskOp::Cancel),
        1 => any::<bool>().prop_map(|chain| DeskOp::DoNotCall { chain }),
        1 => any::<bool>().prop_map(|campaign| DeskOp::Reschedule { campaign }),
        2 => Just(DeskOp::Chained),
    ]
    .boxed()
}

fn step_s() -> BoxedStrategy<Step> {
    prop_oneof![
        2 => agent_s().prop_map(Step::Login).boxed(),
        2 => (agent_s(), any::<bool>())
            .prop_map(|(agent, force)| Step::Logout { agent, force })
            .boxed(),
        2 => agent_s().prop_map(Step::Disconnect).boxed(),
        3 => (agent_s(), prop::bool::weighted(0.7))
            .prop_map(|(agent, resume)| Step::Reconnect { agent, resume })
            .boxed(),
        7 => (
            call_s(),
            dn_s(),
            prop::option::of(0..2usize),
            prop::option::weighted(0.4, call_s()),
            prop::option::weighted(0.3, dn_s()),
        )
            .prop_map(|(call, dn, ani, consult_of, from_dn)| Step::Ringing {
                call,
                dn,
                ani,
                consult_of,
                from_dn
            })
            .boxed(),
        10 => (call_s(), dn_s())
            .prop_map(|(call, dn)| Step::Established { call, dn })
            .boxed(),
        4 => (call_s(), prop::option::weighted(0.3, dn_s()), prop::bool::weighted(0.3))
            .prop_map(|(call, dn, rona)| Step::Released { call, dn, rona })
            .boxed(),
        5 => (
            call_s(),
            prop::option::weighted(0.2, dn_s()),
            dn_s(),
            0..3u8,
            prop::option::of(call_s()),
        )
            .prop_map(|(call, from, to, kind, consult_call)| Step::Transferred {
                call,
                from,
                to,
                kind,
                consult_call
            })
            .boxed(),
        3 => (call_s(), dn_s(), prop::option::of(call_s()))
            .prop_map(|(call, dn, consult_call)| Step::Conferenced {
                call,
                dn,
                consult_call
            })
            .boxed(),
        1 => (agent_s(), dn_s())
            .prop_map(|(agent, dn)| Step::PhoneLogin { agent, dn })
            .boxed(),
        1 => (agent_s(), prop::option::weighted(0.2, dn_s()))
            .prop_map(|(agent, dn)| Step::PhoneLogout { agent, dn })
            .boxed(),
        6 => (call_s(), record_s(), prop::option::of(0..2usize), any::<bool>())
            .prop_map(|(call, record, phone, chain)| Step::Attach {
                call,
                record,
                phone,
                chain
            })
            .boxed(),
        1 => record_s().prop_map(Step::DialerCancel).boxed(),
        14 => (agent_s(), record_s(), desk_op_s())
            .prop_map(|(agent, record, op)| Step::Desk { agent, record, op })
            .boxed(),
        1 => record_s().prop_map(Step::AdminRelease).boxed(),
        1 => (1..60u64).prop_map(Step::AuditTail).boxed(),
        4 => (0..=3000u64).prop_map(Step::Advance).boxed(),
    ]
    .boxed()
}

fn steps_s() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step_s(), 0..=60)
}

// ---------------------------------------------------------------------------------------------
// Statistics, printed at the end
// ---------------------------------------------------------------------------------------------

static STEPS: AtomicU64 = AtomicU64::new(0);
static SEQUENCES: AtomicU64 = AtomicU64::new(0);
static LONGEST: AtomicU64 = AtomicU64::new(0);
static READ_ONLY_GRANTS: AtomicU64 = AtomicU64::new(0);
static TRANSFER_GRANTS: AtomicU64 = AtomicU64::new(0);
static CONFERENCE_GRANTS: AtomicU64 = AtomicU64::new(0);
static FINALS: AtomicU64 = AtomicU64::new(0);
static STALE: AtomicU64 = AtomicU64::new(0);
static RESUMED: AtomicU64 = AtomicU64::new(0);
static REFUSED_READ_ONLY: AtomicU64 = AtomicU64::new(0);
static ALREADY_FINAL: AtomicU64 = AtomicU64::new(0);
static LOGOUT_PENDING: AtomicU64 = AtomicU64::new(0);

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------------------
// The harness: engine, what the test sent, and the reference model built from the outputs
// ---------------------------------------------------------------------------------------------

/// What a request was, to check its reply.
#[derive(Debug, Clone)]
enum Kind {
    Login {
        conn_logged_in: bool,
        resume_sent: bool,
        /// `Some(alive)`: the agent was away with a token; it must resume iff still logged in.
        expect_resumed: Option<bool>,
    },
    Logout {
        logged_in: bool,
        force: bool,
        full_live: BTreeSet<String>,
    },
    Desk {
        agent: usize,
        record: String,
        op: DeskOp,
        expect: Result<Access, ErrorCode>,
    },
    Switch,
    Attach {
        busy_elsewhere: bool,
    },
    DialerCancel {
        expect: Result<(), ErrorCode>,
    },
    AdminRelease {
        expect: Result<(), ErrorCode>,
    },
    AuditTail {
        from: u64,
    },
}

#[derive(Debug, Clone)]
struct Sent {
    conn: ConnId,
    r#ref: u64,
    kind: Kind,
}

struct Harness {
    engine: Engine,
    now: u64,
    next_conn: ConnId,
    next_ref: u64,
    /// The agent's desktop connection, while connected.
    desk: [Option<ConnId>; 4],
    /// That connection is logged in (from `LoggedIn` / `LoggedOut`).
    logged_in: [bool; 4],
    token: [Option<String>; 4],
    /// The agent a connection was last logged in as.
    conn_agent: HashMap<ConnId, usize>,
    /// Per agent, record -> access, as its desktop was told.
    view: [BTreeMap<String, Access>; 4],
    audit_last: u64,
    audit_log: Vec<AuditEntry>,
    /// Record -> (life open, finals in this life).
    life: HashMap<String, (bool, u32)>,
    /// Call -> live record attached to it (from `attached` / `finalized` audit entries).
    call_record: HashMap<String, String>,
    /// The test's own idea of the switch: call -> DNs on it (only to pick plausible parameters).
    parties: BTreeMap<String, BTreeSet<String>>,
    /// Consultation calls (Ringing with consult_of, or CallAlerting with consult_of).
    consult: BTreeSet<String>,
}

fn agent_idx(name: &str) -> Option<usize> {
    AGENTS.iter().position(|a| *a == name)
}

fn cause_str(c: AccessCause) -> &'static str {
    c.as_str()
}

impl Harness {
    fn new() -> Harness {
        let cfg = EngineConfig {
            resume_grace_ms: GRACE_MS,
            orphan_timeout_ms: ORPHAN_MS,
            max_frame_bytes: 65536,
            audit_memory_entries: 1 << 20,
        };
        let mut h = Harness {
            engine: Engine::new(cfg, [7u8; 32], T0),
            now: T0,
            next_conn: 1,
            next_ref: 1,
            desk: [None; 4],
            logged_in: [false; 4],
            token: Default::default(),
            conn_agent: HashMap::new(),
            view: Default::default(),
            audit_last: 0,
            audit_log: Vec::new(),
            life: HashMap::new(),
            call_record: HashMap::new(),
            parties: BTreeMap::new(),
            consult: BTreeSet::new(),
        };
        let mut out = Vec::new();
        for (conn, role) in [
            (SWITCH, Role::Switch),
            (DIALER, Role::Dialer),
            (ADMIN, Role::Admin),
        ] {
            h.engine
                .handle(h.now, Input::Connected { conn, role }, &mut out);
        }
        h
    }

    fn new_conn(&mut self) -> ConnId {
        let c = self.next_conn;
        self.next_conn += 1;
        if self.next_conn == SWITCH {
            self.next_conn = 100;
        }
        c
    }

    fn input(&mut self, input: Input, out: &mut Vec<Output>) {
        self.engine.handle(self.now, input, out);
    }

    fn request(
        &mut self,
        conn: ConnId,
        request: Request,
        kind: Kind,
        out: &mut Vec<Output>,
        sent: &mut Vec<Sent>,
    ) {
        let r = self.next_ref;
        self.next_ref += 1;
        sent.push(Sent {
            conn,
            r#ref: r,
            kind,
        });
        self.input(
            Input::Request {
                conn,
                r#ref: Some(r),
                request,
            },
            out,
        );
    }

    fn alive(&self, agent: usize) -> bool {
        self.engine
            .monitored_dns()
            .iter()
            .any(|d| d == DNS[agent])
    }

    fn known(&self, record: &str) -> bool {
        self.life.contains_key(record)
    }

    fn login_req(&self, agent: usize, resume: Option<String>) -> Request {
        Request::Login(Login {
            agent: AGENTS[agent].into(),
            dn: DNS[agent].into(),
            password: None,
            resume,
        })
    }

    fn some_party(&self, call: &str) -> usize {
        self.parties
            .get(call)
            .and_then(|s| s.iter().next())
            .and_then(|d| DNS.iter().position(|x| x == d))
            .unwrap_or(0)
    }

    fn drop_party(&mut self, call: &str, dn: &str) {
        if let Some(s) = self.parties.get_mut(call) {
            s.remove(dn);
            if s.is_empty() {
                self.parties.remove(call);
                self.consult.remove(call);
            }
        }
    }

    fn drop_call(&mut self, call: &str) {
        self.parties.remove(call);
        self.consult.remove(call);
    }

    /// What the contract says a record request must get, from the state before it.
    fn expect_desk(&self, agent: usize, record: &str, op: DeskOp) -> Result<Access, ErrorCode> {
        if !self.logged_in[agent] {
            return Err(ErrorCode::NotLoggedIn);
        }
        if !self.known(record) {
            return Err(ErrorCode::NoSuchRecord);
        }
        let Some(access) = self.engine.access_of(record, AGENTS[agent]) else {
            return Err(ErrorCode::AccessDenied);
        };
        if self.engine.final_of(record).is_some() {
            return Err(ErrorCode::AlreadyFinal);
        }
        match access {
            Access::Revoked => Err(ErrorCode::AccessDenied),
            Access::ReadOnly if op.needs_full() => Err(ErrorCode::ReadOnly),
            a => Ok(a),
        }
    }

    fn full_live(&self, agent: usize) -> BTreeSet<String> {
        RECORDS
            .iter()
            .filter(|r| {
                self.engine.access_of(r, AGENTS[agent]) == Some(Access::Full)
                    && self.engine.final_of(r).is_none()
            })
            .map(|r| r.to_string())
            .collect()
    }

    // -----------------------------------------------------------------------------------------

    fn step(&mut self, step: &Step) -> Result<(), String> {
        let connected_at_start: [bool; 4] =
            std::array::from_fn(|a| self.desk[a].is_some() && self.logged_in[a]);
        let call_record_before = self.call_record.clone();
        let audit_log_len_before = self.audit_log.len();
        let mut out = Vec::new();
        let mut sent = Vec::new();
        match step.clone() {
            Step::Login(a) => {
                let conn = match self.desk[a] {
                    Some(c) => c,
                    None => {
                        let c = self.new_conn();
                        self.input(
                            Input::Connected {
                                conn: c,
                                role: Role::Desktop,
                            },
                            &mut out,
                        );
                        self.desk[a] = Some(c);
                        c
                    }
                };
                let kind = Kind::Login {
                    conn_logged_in: self.logged_in[a],
                    resume_sent: false,
                    expect_resumed: None,
                };
                let req = self.login_req(a, None);
                self.request(conn, req, kind, &mut out, &mut sent);
            }
            Step::Reconnect { agent: a, resume } => {
                let was_away = self.desk[a].is_none();
                let alive = self.alive(a);
                let c = self.new_conn();
                self.input(
                    Input::Connected {
                        conn: c,
                        role: Role::Desktop,
                    },
                    &mut out,
                );
                self.desk[a] = Some(c);
                self.logged_in[a] = false;
                let token = if resume { self.token[a].clone() } else { None };
                let expect_resumed = if token.is_none() {
                    Some(false)
                } else if was_away {
                    Some(alive)
                } else {
                    None
                };
                let kind = Kind::Login {
                    conn_logged_in: false,
                    resume_sent: token.is_some(),
                    expect_resumed,
                };
                let req = self.login_req(a, token);
                self.request(c, req, kind, &mut out, &mut sent);
            }
            Step::Logout { agent: a, force } => {
                let Some(conn) = self.desk[a] else {
                    return Ok(());
                };
                let kind = Kind::Logout {
                    logged_in: self.logged_in[a],
                    force,
                    full_live: self.full_live(a),
                };
                self.request(
                    conn,
                    Request::Logout(Logout { force }),
                    kind,
                    &mut out,
                    &mut sent,
                );
            }
            Step::Disconnect(a) => {
                let Some(conn) = self.desk[a].take() else {
                    return Ok(());
                };
                self.logged_in[a] = false;
                self.input(Input::Disconnected { conn }, &mut out);
            }
            Step::Ringing {
                call,
                dn,
                ani,
                consult_of,
                from_dn,
            } => {
                let call_s = CALLS[call];
                if let Some(c1) = consult_of {
                    if c1 != call
                        && !self.parties.contains_key(call_s)
                        && !self.call_record.contains_key(call_s)
                    {
                        self.consult.insert(call_s.into());
                    }
                }
                self.parties
                    .entry(call_s.into())
                    .or_default()
                    .insert(DNS[dn].into());
                let req = Request::Ringing(Ringing {
                    call: call_s.into(),
                    dn: DNS[dn].into(),
                    ani: ani.map(|i| ANIS[i].into()),
                    from_dn: from_dn.map(|d| DNS[d].into()),
                    consult_of: consult_of.map(|c| CALLS[c].into()),
                });
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::Established { call, dn } => {
                self.parties
                    .entry(CALLS[call].into())
                    .or_default()
                    .insert(DNS[dn].into());
                let req = Request::Established(CallDn {
                    call: CALLS[call].into(),
                    dn: DNS[dn].into(),
                });
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::Released { call, dn, rona } => {
                let dn = dn.unwrap_or_else(|| self.some_party(CALLS[call]));
                self.drop_party(CALLS[call], DNS[dn]);
                let req = Request::Released(Released {
                    call: CALLS[call].into(),
                    dn: DNS[dn].into(),
                    cause: Some(if rona { "rona" } else { "hangup" }.into()),
                });
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::Transferred {
                call,
                from,
                to,
                kind,
                consult_call,
            } => {
                let from = from.unwrap_or_else(|| self.some_party(CALLS[call]));
                let kind = match kind {
                    0 => TransferKind::SingleStep,
                    1 => TransferKind::Mute,
                    _ => TransferKind::TwoStep,
                };
                let consult_call = consult_call.filter(|c| *c != call);
                self.drop_party(CALLS[call], DNS[from]);
                self.parties
                    .entry(CALLS[call].into())
                    .or_default()
                    .insert(DNS[to].into());
                if let (TransferKind::TwoStep, Some(c2)) = (kind, consult_call) {
                    self.drop_call(CALLS[c2]);
                }
                let req = Request::Transferred(Transferred {
                    call: CALLS[call].into(),
                    from_dn: DNS[from].into(),
                    to_dn: DNS[to].into(),
                    kind,
                    consult_call: consult_call.map(|c| CALLS[c].into()),
                });
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::Conferenced {
                call,
                dn,
                consult_call,
            } => {
                let consult_call = consult_call.filter(|c| *c != call);
                self.parties
                    .entry(CALLS[call].into())
                    .or_default()
                    .insert(DNS[dn].into());
                if let Some(c2) = consult_call {
                    self.drop_call(CALLS[c2]);
                }
                let req = Request::Conferenced(Conferenced {
                    call: CALLS[call].into(),
                    dn: DNS[dn].into(),
                    consult_call: consult_call.map(|c| CALLS[c].into()),
                });
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::PhoneLogin { agent, dn } => {
                let req = Request::AgentLogin(DnAgent {
                    dn: DNS[dn].into(),
                    agent: AGENTS[agent].into(),
                });
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::PhoneLogout { agent, dn } => {
                let dn = dn.unwrap_or(agent);
                let req = Request::AgentLogout(DnAgent {
                    dn: DNS[dn].into(),
                    agent: AGENTS[agent].into(),
                });
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::Attach {
                call,
                record,
                phone,
                chain,
            } => {
                let r = RECORDS[record];
                let busy_elsewhere = self
                    .call_record
                    .iter()
                    .any(|(c, rr)| rr == r && c != CALLS[call]);
                let chain = if chain {
                    vec![
                        ChainEntry {
                            record: r.into(),
                            chain_n: 1,
                            phone: None,
                            data: Object::new(),
                        },
                        ChainEntry {
                            record: format!("{r}-2"),
                            chain_n: 2,
                            phone: Some("5559999".into()),
                            data: json!({"name": "other"}).as_object().unwrap().clone(),
                        },
                    ]
                } else {
                    Vec::new()
                };
                let req = Request::AttachRecord(AttachRecord {
                    call: CALLS[call].into(),
                    record: r.into(),
                    campaign: "camp".into(),
                    list: None,
                    chain_id: None,
                    chain_n: Some(1),
                    phone: phone.map(|i| ANIS[i].into()),
                    data: json!({"name": r}).as_object().unwrap().clone(),
                    chain,
                });
                self.request(
                    DIALER,
                    req,
                    Kind::Attach { busy_elsewhere },
                    &mut out,
                    &mut sent,
                );
            }
            Step::DialerCancel(record) => {
                let r = RECORDS[record];
                let expect = if !self.known(r) {
                    Err(ErrorCode::NoSuchRecord)
                } else if self.engine.final_of(r).is_some() {
                    Err(ErrorCode::AlreadyFinal)
                } else {
                    Ok(())
                };
                let req = Request::CancelRecord(RecordRef { record: r.into() });
                self.request(
                    DIALER,
                    req,
                    Kind::DialerCancel { expect },
                    &mut out,
                    &mut sent,
                );
            }
            Step::AdminRelease(record) => {
                let r = RECORDS[record];
                let expect = if !self.known(r) {
                    Err(ErrorCode::NoSuchRecord)
                } else if self.engine.final_of(r).is_some() {
                    Err(ErrorCode::AlreadyFinal)
                } else {
                    Ok(())
                };
                let req = Request::ReleaseRecord(ReleaseRecord {
                    record: r.into(),
                    reason: "stuck".into(),
                });
                self.request(
                    ADMIN,
                    req,
                    Kind::AdminRelease { expect },
                    &mut out,
                    &mut sent,
                );
            }
            Step::AuditTail(from) => {
                let req = Request::AuditTail(AuditTail {
                    from_seq: Some(from),
                    follow: false,
                    record: None,
                    agent: None,
                });
                self.request(ADMIN, req, Kind::AuditTail { from }, &mut out, &mut sent);
            }
            Step::Desk { agent, record, op } => {
                let Some(conn) = self.desk[agent] else {
                    return Ok(());
                };
                let r = RECORDS[record].to_string();
                let expect = self.expect_desk(agent, &r, op);
                let rr = RecordRef { record: r.clone() };
                let req = match op {
                    DeskOp::Get => Request::GetRecord(rr),
                    DeskOp::Chained => Request::ChainedRecords(rr),
                    DeskOp::Update => Request::UpdateRecord(RecordChange {
                        record: r.clone(),
                        call_result: Some("busy".into()),
                        fields: Some(
                            json!({"note": format!("by {}", AGENTS[agent])})
                                .as_object()
                                .unwrap()
                                .clone(),
                        ),
                    }),
                    DeskOp::Processed => Request::RecordProcessed(RecordChange {
                        record: r.clone(),
                        call_result: Some("sale".into()),
                        fields: None,
                    }),
                    DeskOp::Reject => Request::RecordReject(rr),
                    DeskOp::Cancel => Request::RecordCancel(rr),
                    DeskOp::DoNotCall { chain } => Request::DoNotCall(DoNotCall {
                        record: r.clone(),
                        scope: if chain {
                            DncScope::Chain
                        } else {
                            DncScope::Record
                        },
                    }),
                    DeskOp::Reschedule { campaign } => Request::Reschedule(Reschedule {
                        record: r.clone(),
                        at: rfc3339(self.now + DAY_MS),
                        callback: if campaign {
                            Callback::Campaign
                        } else {
                            Callback::Personal
                        },
                    }),
                };
                let kind = Kind::Desk {
                    agent,
                    record: r,
                    op,
                    expect,
                };
                self.request(conn, req, kind, &mut out, &mut sent);
            }
            Step::Advance(ms) => {
                self.now += ms;
                self.input(Input::Tick, &mut out);
            }
        }
        self.check(
            step,
            &connected_at_start,
            &call_record_before,
            audit_log_len_before,
            &out,
            &sent,
        )
    }

    // -----------------------------------------------------------------------------------------
    // The invariants
    // -----------------------------------------------------------------------------------------

    fn check(
        &mut self,
        step: &Step,
        connected_at_start: &[bool; 4],
        call_record_before: &HashMap<String, String>,
        audit_log_len_before: usize,
        out: &[Output],
        sent: &[Sent],
    ) -> Result<(), String> {
        let mut replies: BTreeMap<u64, Vec<(ConnId, ServerMsg)>> = BTreeMap::new();
        // (record, agent, access, cause) of AccessChanged pushes other than the resume replay.
        let mut ac_pushes: Vec<(String, usize, Access, String)> = Vec::new();
        let mut step_audits: Vec<AuditEntry> = Vec::new();
        let mut finalized: Vec<String> = Vec::new();
        let mut outcomes: Vec<String> = Vec::new();

        for o in out {
            match o {
                Output::Audit(e) => {
                    // Invariant 6: gap-free, increasing from 1.
                    if e.seq != self.audit_last + 1 {
                        return Err(format!(
                            "inv 6: audit seq {} after {}: {e:?}",
                            e.seq, self.audit_last
                        ));
                    }
                    self.audit_last = e.seq;
                    self.audit_log.push(e.clone());
                    step_audits.push(e.clone());
                    let rec = e.record.clone().unwrap_or_default();
                    match e.kind {
                        AuditKind::Attached => {
                            let life = self.life.entry(rec.clone()).or_insert((false, 0));
                            if life.0 {
                                return Err(format!(
                                    "inv 1: {rec} attached again while its life is not final: {e:?}"
                                ));
                            }
                            *life = (true, 0);
                            let call = e.call.clone().unwrap_or_default();
                            self.call_record.insert(call, rec);
                        }
                        AuditKind::Finalized => {
                            let Some(life) = self.life.get_mut(&rec) else {
                                return Err(format!(
                                    "inv 1: finalized a record never attached: {e:?}"
                                ));
                            };
                            life.1 += 1;
                            if life.1 > 1 {
                                return Err(format!(
                                    "inv 1: second `finalized` in one life of {rec}: {e:?}"
                                ));
                            }
                            life.0 = false;
                            self.call_record.retain(|_, r| *r != rec);
                            finalized.push(rec.clone());
                            bump(&FINALS);
                            if e.cause.as_deref() == Some("stale") {
                                bump(&STALE);
                            }
                        }
                        AuditKind::Granted => match e.cause.as_deref() {
                            Some("consultation") => bump(&READ_ONLY_GRANTS),
                            Some("transfer") => bump(&TRANSFER_GRANTS),
                            Some("conference") => bump(&CONFERENCE_GRANTS),
                            _ => {}
                        },
                        _ => {}
                    }
                }
                Output::Send { conn, env } => {
                    let conn = *conn;
                    if let Some(r) = env.r#ref {
                        replies.entry(r).or_default().push((conn, env.msg.clone()));
                    }
                    let desktop = ![SWITCH, DIALER, ADMIN].contains(&conn);
                    match &env.msg {
                        ServerMsg::LoggedIn {
                            agent,
                            session,
                            resumed,
                            ..
                        } => {
                            let a = agent_idx(agent)
                                .ok_or_else(|| format!("LoggedIn for unknown agent {agent}"))?;
                            self.conn_agent.insert(conn, a);
                            self.desk[a] = Some(conn);
                            self.logged_in[a] = true;
                            self.token[a] = Some(session.clone());
                            if *resumed {
                                bump(&RESUMED);
                            } else {
                                self.view[a].clear();
                            }
                        }
                        ServerMsg::LoggedOut { .. } if desktop => {
                            if let Some(&a) = self.conn_agent.get(&conn) {
                                if self.desk[a] == Some(conn) {
                                    self.logged_in[a] = false;
                                }
                            }
                        }
                        ServerMsg::AccessChanged {
                            record,
                            access,
                            cause,
                            ..
                        } => {
                            let &a = self.conn_agent.get(&conn).ok_or_else(|| {
                                format!("AccessChanged to conn {conn} that never logged in")
                            })?;
                            self.view[a].insert(record.clone(), *access);
                            if *cause != AccessCause::Resume {
                                ac_pushes.push((
                                    record.clone(),
                                    a,
                                    *access,
                                    cause_str(*cause).to_owned(),
                                ));
                            }
                        }
                        ServerMsg::RecordFinalized {
                            record, outcome, ..
                        } => {
                            let &a = self.conn_agent.get(&conn).ok_or_else(|| {
                                format!("RecordFinalized to conn {conn} that never logged in")
                            })?;
                            self.view[a].insert(record.clone(), Access::Revoked);
                            ac_pushes.push((
                                record.clone(),
                                a,
                                Access::Revoked,
                                outcome.as_str().to_owned(),
                            ));
                        }
                        ServerMsg::RecordProcessedAck { record }
                        | ServerMsg::RecordRejected { record }
                        | ServerMsg::RecordCancelled { record }
                        | ServerMsg::DoNotCallAck { record, .. }
                        | ServerMsg::Rescheduled { record, .. }
                            if desktop =>
                        {
                            // The winner learns the final from its ack: it holds `revoked` now.
                            if let Some(&a) = self.conn_agent.get(&conn) {
                                self.view[a].insert(record.clone(), Access::Revoked);
                            }
                        }
                        ServerMsg::CallAlerting {
                            call,
                            consult_of: Some(_),
                            ..
                        } => {
                            self.consult.insert(call.clone());
                        }
                        ServerMsg::RecordOutcome { record, .. } if conn == DIALER => {
                            outcomes.push(record.clone());
                        }
                        _ => {}
                    }
                }
                Output::Close { .. } => {}
            }
        }

        // Invariant 6, against the engine's own counter.
        if self.engine.counts().audit_last_seq != self.audit_last {
            return Err(format!(
                "inv 6: engine audit_last_seq {} but the outputs reached {}",
                self.engine.counts().audit_last_seq,
                self.audit_last
            ));
        }

        // Invariant 1: one dialer outcome per final.
        finalized.sort();
        outcomes.sort();
        if finalized != outcomes {
            return Err(format!(
                "inv 1: finalized {finalized:?} but dialer outcomes {outcomes:?}"
            ));
        }

        // Invariant 4: every push has its audit entry (same record, agent, access and cause).
        let mut access_audits: Vec<&AuditEntry> = step_audits
            .iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    AuditKind::Granted | AuditKind::Downgraded | AuditKind::Revoked
                )
            })
            .collect();
        for (record, a, access, cause) in &ac_pushes {
            let pos = access_audits.iter().position(|e| {
                e.record.as_deref() == Some(record.as_str())
                    && e.agent.as_deref() == Some(AGENTS[*a])
                    && e.access == Some(*access)
                    && e.cause.as_deref() == Some(cause.as_str())
                    && ((*access == Access::Revoked) == (e.kind == AuditKind::Revoked))
            });
            match pos {
                Some(p) => {
                    access_audits.remove(p);
                }
                None => {
                    return Err(format!(
                        "inv 4: push to {} on {record}: {access:?} ({cause}) has no audit entry; \
                         audits of the step: {step_audits:?}",
                        AGENTS[*a]
                    ))
                }
            }
        }
        // ... and every access change of a desktop connected through the step is pushed to it
        // (the winner of a final learns it from its ack instead).
        for e in access_audits {
            let Some(a) = e.agent.as_deref().and_then(agent_idx) else {
                continue;
            };
            if !connected_at_start[a] || matches!(step, Step::Disconnect(x) if *x == a) {
                continue;
            }
            let own_request = matches!(step,
                Step::Desk { agent, .. } | Step::Logout { agent, .. } if *agent == a);
            let is_final_revoke = e
                .cause
                .as_deref()
                .is_some_and(|c| AccessCause::ALL.iter().all(|x| x.as_str() != c));
            if own_request && is_final_revoke {
                continue;
            }
            return Err(format!(
                "inv 4: access change of connected agent {} was not pushed: {e:?}",
                AGENTS[a]
            ));
        }

        // Invariant 3: a call's own events grant `full` only on the record attached to it.
        let event_call = match step {
            Step::Ringing { call, .. }
            | Step::Established { call, .. }
            | Step::Released { call, .. } => Some(CALLS[*call]),
            _ => None,
        };
        if let Some(call) = event_call {
            let own = call_record_before.get(call);
            for e in &step_audits {
                if e.kind == AuditKind::Granted
                    && e.access == Some(Access::Full)
                    && e.record.as_ref() != own
                {
                    return Err(format!(
                        "inv 3: {step:?} on {} call {call} granted full on {:?} to {:?} \
                         (call's own record: {own:?})",
                        if self.consult.contains(call) {
                            "consultation"
                        } else {
                            "a"
                        },
                        e.record,
                        e.agent
                    ));
                }
            }
        }

        // Invariants 7 and 2: replies.
        let sent_refs: BTreeSet<u64> = sent.iter().map(|s| s.r#ref).collect();
        for r in replies.keys() {
            if !sent_refs.contains(r) {
                return Err(format!("inv 7: reply with ref {r} nobody sent in this step"));
            }
        }
        for s in sent {
            let got = replies.get(&s.r#ref).cloned().unwrap_or_default();
            if got.is_empty() {
                return Err(format!("inv 7: no reply to {:?}", s.kind));
            }
            if let Some((c, m)) = got.iter().find(|(c, _)| *c != s.conn) {
                return Err(format!(
                    "inv 7: reply {m:?} went to conn {c}, not {}",
                    s.conn
                ));
            }
            let msgs: Vec<ServerMsg> = got.into_iter().map(|(_, m)| m).collect();
            self.check_reply(s, &msgs, out, audit_log_len_before)?;
        }

        // Invariant 5: what each connected desktop was told equals the access table.
        let dns = self.engine.monitored_dns();
        for a in 0..4 {
            if self.desk[a].is_none() || !self.logged_in[a] {
                continue;
            }
            if !dns.iter().any(|d| d == DNS[a]) {
                return Err(format!(
                    "inv 5: {} is logged in on its desktop but {} is not monitored",
                    AGENTS[a], DNS[a]
                ));
            }
            for r in RECORDS {
                let told = self.view[a].get(r).copied().unwrap_or(Access::Revoked);
                let actual = self
                    .engine
                    .access_of(r, AGENTS[a])
                    .unwrap_or(Access::Revoked);
                if told != actual {
                    return Err(format!(
                        "inv 5: {}'s desktop was told {told:?} on {r}, the engine says {actual:?}",
                        AGENTS[a]
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_reply(
        &self,
        s: &Sent,
        msgs: &[ServerMsg],
        out: &[Output],
        audit_log_len_before: usize,
    ) -> Result<(), String> {
        let single = |what: &str| -> Result<&ServerMsg, String> {
            if msgs.len() != 1 {
                return Err(format!(
                    "inv 7: {what} got {} replies: {msgs:?}",
                    msgs.len()
                ));
            }
            Ok(&msgs[0])
        };
        let code_of = |m: &ServerMsg| match m {
            ServerMsg::Error { code, .. } => Some(*code),
            _ => None,
        };
        match &s.kind {
            Kind::Switch => {
                let m = single("switch event")?;
                if *m != ServerMsg::Ack {
                    return Err(format!("switch event answered {m:?}"));
                }
            }
            Kind::Login {
                conn_logged_in,
                resume_sent,
                expect_resumed,
            } => {
                let m = single("Login")?;
                match m {
                    ServerMsg::LoggedIn { resumed, .. } => {
                        if *conn_logged_in {
                            return Err(format!(
                                "Login on an already logged-in connection got {m:?}"
                            ));
                        }
                        if *resumed && !resume_sent {
                            return Err("LoggedIn{resumed:true} without a resume token".into());
                        }
                        if let Some(e) = expect_resumed {
                            if e != resumed {
                                return Err(format!(
                                    "resume: expected resumed:{e}, got {m:?}"
                                ));
                            }
                        }
                    }
                    ServerMsg::Error {
                        code: ErrorCode::BadRequest,
                        ..
                    } if *conn_logged_in => {}
                    other => return Err(format!("Login answered {other:?}")),
                }
            }
            Kind::Logout {
                logged_in,
                force,
                full_live,
            } => {
                let m = single("Logout")?;
                match m {
                    ServerMsg::Error {
                        code: ErrorCode::NotLoggedIn,
                        ..
                    } if !logged_in => {}
                    ServerMsg::LoggedOut {
                        cause: LogoutCause::Desktop,
                    } if *logged_in && (*force || full_live.is_empty()) => {}
                    ServerMsg::LogoutPending { records } if *logged_in && !force => {
                        bump(&LOGOUT_PENDING);
                        let got: BTreeSet<String> = records.iter().cloned().collect();
                        if got != *full_live {
                            return Err(format!(
                                "rule 11: LogoutPending {got:?}, full live records {full_live:?}"
                            ));
                        }
                    }
                    other => {
                        return Err(format!(
                            "rule 11: Logout(force {force}, logged in {logged_in}, \
                             full {full_live:?}) answered {other:?}"
                        ))
                    }
                }
            }
            Kind::Attach { busy_elsewhere } => {
                let m = single("AttachRecord")?;
                match m {
                    ServerMsg::RecordAttached { .. } if !busy_elsewhere => {}
                    ServerMsg::Error {
                        code: ErrorCode::RecordBusy,
                        ..
                    } => {}
                    other => {
                        return Err(format!(
                            "AttachRecord (live elsewhere: {busy_elsewhere}) answered {other:?}"
                        ))
                    }
                }
            }
            Kind::DialerCancel { expect } | Kind::AdminRelease { expect } => {
                let m = single("CancelRecord/ReleaseRecord")?;
                let ok = matches!(
                    m,
                    ServerMsg::RecordCancelled { .. } | ServerMsg::RecordReleased { .. }
                );
                let got = if ok { Ok(()) } else { Err(code_of(m)) };
                if got != expect.map_err(Some) {
                    return Err(format!("expected {expect:?}, got {m:?}"));
                }
            }
            Kind::AuditTail { from } => {
                let Some((last, entries)) = msgs.split_last() else {
                    unreachable!()
                };
                let ServerMsg::AuditEnd { last_seq } = last else {
                    return Err(format!("inv 7: AuditTail stream ends with {last:?}"));
                };
                if *last_seq != self.audit_last {
                    return Err(format!(
                        "inv 6: AuditEnd last_seq {last_seq}, log at {}",
                        self.audit_last
                    ));
                }
                let expected: Vec<ServerMsg> = self
                    .audit_log
                    .iter()
                    .filter(|e| e.seq >= *from)
                    .map(|e| ServerMsg::Audit(e.clone()))
                    .collect();
                if entries != expected.as_slice() {
                    return Err(format!(
                        "inv 6: AuditTail from {from} returned {} entries, the log has {}",
                        entries.len(),
                        expected.len()
                    ));
                }
            }
            Kind::Desk {
                agent,
                record,
                op,
                expect,
            } => {
                let op = *op;
                let last = msgs.last().expect("non-empty");
                if op == DeskOp::Chained && code_of(last).is_none() {
                    let (end, items) = msgs.split_last().expect("non-empty");
                    let ServerMsg::ChainedRecordsEnd { count, .. } = end else {
                        return Err(format!("inv 7: ChainedRecords stream ends with {end:?}"));
                    };
                    if *count as usize != items.len() {
                        return Err(format!(
                            "ChainedRecordsEnd count {count} after {} records",
                            items.len()
                        ));
                    }
                    for i in items {
                        match i {
                            ServerMsg::ChainedRecord { record: r, access, .. } => {
                                if r == record {
                                    return Err(format!(
                                        "ChainedRecords returned the record asked about: {i:?}"
                                    ));
                                }
                                if Ok(*access) != *expect {
                                    return Err(format!(
                                        "rule 3: chained record with access {access:?}, \
                                         holder has {expect:?}"
                                    ));
                                }
                            }
                            other => {
                                return Err(format!(
                                    "inv 7: {other:?} inside a ChainedRecords stream"
                                ))
                            }
                        }
                    }
                } else {
                    single("record request")?;
                }
                match (code_of(last), expect) {
                    (Some(code), Err(want)) if code == *want => {
                        match code {
                            ErrorCode::ReadOnly => bump(&REFUSED_READ_ONLY),
                            ErrorCode::AlreadyFinal => bump(&ALREADY_FINAL),
                            _ => {}
                        }
                        // A refused request changes nothing but the audit log.
                        let denied_audits = out
                            .iter()
                            .filter(|o| matches!(o, Output::Audit(e) if e.kind == AuditKind::Denied))
                            .count();
                        let want_audits = usize::from(code != ErrorCode::NotLoggedIn);
                        if denied_audits != want_audits || out.len() != 1 + want_audits {
                            return Err(format!(
                                "inv 2: refused {op:?} ({code:?}) produced more than its \
                                 denial: {out:?}"
                            ));
                        }
                    }
                    (None, Ok(access)) => {
                        // Invariant 2: nobody without `full` ever changed a record.
                        if op.needs_full() && *access != Access::Full {
                            return Err(format!(
                                "inv 2: {op:?} accepted from {} holding {access:?}",
                                AGENTS[*agent]
                            ));
                        }
                        let shape_ok = match (op, last) {
                            (DeskOp::Get, ServerMsg::Record { access: a, final_, .. }) => {
                                a == access && final_.is_none()
                            }
                            (DeskOp::Chained, ServerMsg::ChainedRecordsEnd { .. }) => true,
                            (DeskOp::Update, ServerMsg::RecordUpdated { .. }) => true,
                            (DeskOp::Processed, ServerMsg::RecordProcessedAck { .. }) => true,
                            (DeskOp::Reject, ServerMsg::RecordRejected { .. }) => true,
                            (DeskOp::Cancel, ServerMsg::RecordCancelled { .. }) => true,
                            (DeskOp::DoNotCall { .. }, ServerMsg::DoNotCallAck { .. }) => true,
                            (DeskOp::Reschedule { .. }, ServerMsg::Rescheduled { .. }) => true,
                            _ => false,
                        };
                        if !shape_ok {
                            return Err(format!("{op:?} answered {last:?}"));
                        }
                        if op.is_final() {
                            let f = self.engine.final_of(record);
                            if f.as_ref().and_then(|f| f.by.as_deref()) != Some(AGENTS[*agent]) {
                                return Err(format!(
                                    "rule 8: {op:?} acked but the final is {f:?}"
                                ));
                            }
                            let finals = self.audit_log[audit_log_len_before..]
                                .iter()
                                .filter(|e| e.kind == AuditKind::Finalized)
                                .count();
                            if finals != 1 {
                                return Err(format!("rule 8: {op:?} acked with {finals} finals"));
                            }
                        }
                    }
                    _ => {
                        return Err(format!(
                            "inv 2: {} {op:?} {record}: contract says {expect:?}, got {last:?}",
                            AGENTS[*agent]
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

trait AllCauses {
    const ALL: [AccessCause; 9];
}
impl AllCauses for AccessCause {
    const ALL: [AccessCause; 9] = [
        AccessCause::Established,
        AccessCause::Transfer,
        AccessCause::Consultation,
        AccessCause::Conference,
        AccessCause::Left,
        AccessCause::Released,
        AccessCause::Logout,
        AccessCause::Admin,
        AccessCause::Resume,
    ];
}

/// Runs one sequence: every agent logs in first (checked like any step), then the steps.
fn run_sequence(steps: &[Step]) -> Result<(), String> {
    bump(&SEQUENCES);
    LONGEST.fetch_max(steps.len() as u64, Ordering::Relaxed);
    let mut h = Harness::new();
    for a in 0..4 {
        h.step(&Step::Login(a))
            .map_err(|e| format!("setup login of {}: {e}", AGENTS[a]))?;
    }
    h.next_conn = h.next_conn.max(100);
    for (i, s) in steps.iter().enumerate() {
        bump(&STEPS);
        h.step(s).map_err(|e| format!("step {i} {s:?}: {e}"))?;
    }
    Ok(())
}

#[test]
fn sharing_rules_hold_for_random_sequences() {
    let cases: u32 = std::env::var("BATON_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let seed: u64 = std::env::var("BATON_PROPTEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x0ba7_0001);
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&steps_s(), |steps| {
        run_sequence(&steps).map_err(TestCaseError::fail)
    });
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "model: {} sequences ({cases} cases, seed {seed}), {} steps, longest sequence {} steps; \
         coverage: {} read-only grants, {} transfer grants, {} conference grants, {} finals \
         ({} stale), {} already_final, {} read_only refusals, {} resumes, {} logout pending",
        n(&SEQUENCES),
        n(&STEPS),
        n(&LONGEST),
        n(&READ_ONLY_GRANTS),
        n(&TRANSFER_GRANTS),
        n(&CONFERENCE_GRANTS),
        n(&FINALS),
        n(&STALE),
        n(&ALREADY_FINAL),
        n(&REFUSED_READ_ONLY),
        n(&RESUMED),
        n(&LOGOUT_PENDING),
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
