//! Model-based property test of the pure engine (no sockets).
//!
//! A fixed small universe (agents A1..A4 on DNs D1..D4, an unmonitored DN D9, calls C1..C4,
//! records R1..R3, one switch, one dialer, one admin) is driven by random sequences of up to 60
//! steps: desktop logins, logouts, drops and resumes, switch events (consultations included),
//! dialer attaches and cancels, desktop record requests, admin releases, and time passing with
//! or without a timer tick. After every step the test checks, from the outputs plus what it
//! sent, the rules of `shared/SCENARIOS.md` and `shared/CONTRACT.md`:
//!
//! 1. one `finalized` audit entry per record life, and one dialer `RecordOutcome` per final;
//! 2. record requests are answered in the contract's check order (section 9), a change is only
//!    ever accepted from a `full` holder, and a refused request changes nothing but the audit log;
//! 3. an `Established`/`Ringing`/`Released` of a call never grants `full` on a record that is not
//!    attached to that very call (so a consultee is never above `read_only` before completion);
//! 4. every `AccessChanged` push (but the resume replay) and every `RecordFinalized` push has its
//!    audit entry, and every access change of a connected desktop is pushed to it;
//! 5. what each connected desktop was told (pushes, final acks, resume replay) equals the
//!    engine's access table, and its calls equal the calls on its DN (failover table);
//! 6. audit `seq` numbers are 1, 2, 3... with no gap;
//! 7. every request gets exactly one reply with its `ref` (a stream for `ChainedRecords`), on
//!    its own connection, and no reply carries a `ref` nobody sent.
//!
//! and, rule by rule: first grant and conference grant (1, 6), transfer revokes the initiator
//! and grants the recipient (2, 4, 9), released consultation revokes the consultee (5), leaving a
//! conference revokes unless last (7), `already_final` names the winner (8), orphan timeout and
//! `stale` (9), grants carry data and context (2), smart and forced logout (11), audit entries
//! tell the access before and record accepted requests (12), resume only within the grace time
//! (CONTRACT 7).
//!
//! Run (CI, about a second): `cargo test --release --test model`
//! (2000 sequences; `-- --nocapture` prints the step count, the longest sequence and coverage).
//! Long mode: `BATON_PROPTEST_CASES=100000 cargo test --release --test model -- --nocapture`
//! (about 3 million steps, half a minute). `BATON_PROPTEST_MAX_STEPS=200` makes longer
//! sequences. The generator seed is fixed so that runs repeat; `BATON_PROPTEST_SEED=<u64>` picks
//! another. A failure prints the shrunk, minimal failing sequence of steps.

use baton::engine::{ConnId, Engine, EngineConfig, Input, Output};
use baton::messages::*;
use baton_kit::*;
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
const HEARTBEAT_MS: u64 = 1000;
const DAY_MS: u64 = 86_400_000;
const FINAL_MEMORY_MS: u64 = 1500;

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
    /// `Ringing call dn consult_of of` (with `from_dn` the caller, if any), then (with
    /// `caller_answer`) `Established call caller`, then (if answered) `Established call dn`.
    Consult {
        call: usize,
        of: usize,
        dn: usize,
        answer: bool,
        /// `None`: no `from_dn`; `Some(None)`: a DN on the consulted call, as the test's switch
        /// knows it; `Some(Some(dn))`: that DN.
        caller: Option<Option<usize>>,
        caller_answer: bool,
    },
    /// The DN that placed `call` (its `from_dn`) hangs up: `Released` on the caller's DN, or on
    /// a DN the call is on if the test's switch knows no caller.
    CallerHangsUp(usize),
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
    /// Time passes by this many milliseconds, then `Tick`.
    Advance(u64),
    /// Time passes and an admin `Ping` arrives, without a timer tick yet (the server ticks every
    /// 100 ms, and later under load).
    Wait(u64),
    /// The step runs as one batch whose writes the store refuses (a full or failing disk): the
    /// shell rolls the engine back and applies again the connection changes the step contained.
    StorageFails(Box<Step>),
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
        12 => base_step_s(),
        1 => base_step_s().prop_map(|s| Step::StorageFails(Box::new(s))),
    ]
    .boxed()
}

fn base_step_s() -> BoxedStrategy<Step> {
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
        4 => (
            call_s(),
            call_s(),
            dn_s(),
            prop::bool::weighted(0.8),
            prop::option::weighted(0.7, prop::option::weighted(0.2, dn_s())),
            prop::bool::weighted(0.4),
        )
            .prop_map(|(call, of, dn, answer, caller, caller_answer)| Step::Consult {
                call,
                of,
                dn,
                answer,
                caller,
                caller_answer
            })
            .boxed(),
        2 => call_s().prop_map(Step::CallerHangsUp).boxed(),
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
        4 => (0..=3000u64).prop_map(Step::Advance).boxed(),
        1 => (0..=1500u64).prop_map(Step::Wait).boxed(),
    ]
    .boxed()
}

fn steps_s(max_steps: usize) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step_s(), 0..=max_steps)
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
static RULE5_JUDGED: AtomicU64 = AtomicU64::new(0);
static RULE5_CALLER_JUDGED: AtomicU64 = AtomicU64::new(0);
static REFUSED_BATCHES: AtomicU64 = AtomicU64::new(0);
static READ_BACK: AtomicU64 = AtomicU64::new(0);
static RULE7_JUDGED: AtomicU64 = AtomicU64::new(0);

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
    Ping,
    Attach {
        busy_elsewhere: bool,
    },
    DialerCancel {
        expect: Result<(), ErrorCode>,
    },
    AdminRelease {
        expect: Result<(), ErrorCode>,
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
    /// Mirrors the engine's call parties (DN -> state) for calls never linked as consultations.
    parties: BTreeMap<String, BTreeMap<String, Party>>,
    /// Calls that may be linked as a consultation (Ringing with consult_of or ani while they had
    /// no record): the engine may merge them away, so their parties are not judged (rule 7).
    /// Never cleared: a call id once flagged stays unjudged for the rest of the sequence.
    maybe_consult: BTreeSet<String>,
    /// Consultation calls (Ringing with consult_of, or CallAlerting with consult_of).
    consult: BTreeSet<String>,
    /// Record -> agent -> access, for agents holding `full` or `read_only` (from the audit).
    holders: HashMap<String, BTreeMap<String, Access>>,
    /// Record -> when it lost its last holder (rule 9's orphan clock), while live and unheld.
    lost_at: HashMap<String, u64>,
    /// (record, agent) -> (consultation call, customer call) for read-only grants made by an
    /// `Established` of that consultation, while that access lasts.
    ro_via: HashMap<(String, String), (String, String)>,
    /// Record -> the context its holders left (accepted `UpdateRecord`s), for this life.
    context: HashMap<String, Context>,
    /// Per agent, the calls on its DN as its desktop was told (call -> answered).
    calls_view: [BTreeMap<String, bool>; 4],
    /// When each agent's desktop dropped (its resume grace runs from there).
    away_since: [u64; 4],
    /// Agents whose desktop got `LogoutPending` and no `LoggedOut` since.
    logout_pending: [bool; 4],
    /// (call, dn) of the `CallCleared` pushes of the current step.
    cleared: BTreeSet<(String, String)>,
    /// The current step's batch is refused by the store.
    refuse_writes: bool,
    /// The engine as it was before a refused step, and the facts (connection changes) the step
    /// fed it: after the rollback, the engine must equal that engine with those facts applied.
    pre_step: Option<Engine>,
    step_facts: Vec<Input>,
    /// The current step's batch was refused and rolled back.
    rolled_back: bool,
    /// The records as the store holds them (the writes of every kept batch): where the shell
    /// reads a final record back from once it has left the engine's memory.
    stored: HashMap<String, Vec<u8>>,
    /// Record -> every agent granted access to it in its current life (from the audit).
    ever_held: HashMap<String, BTreeSet<String>>,
    /// Record -> (by, outcome) of its final, from the `finalized` audit entry.
    final_info: HashMap<String, (Option<String>, String)>,
}

/// A DN on a call, as the test's switch knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Party {
    Alerting,
    /// Placed the call (`from_dn`) and has not been reported answered.
    Dialing,
    Answered,
}

fn agent_idx(name: &str) -> Option<usize> {
    AGENTS.iter().position(|a| *a == name)
}

fn cause_str(c: AccessCause) -> &'static str {
    c.as_str()
}

impl Harness {
    fn new() -> Harness {
        let cfg = EngineConfig::from_config(&baton::config::Config {
            resume_grace_ms: GRACE_MS,
            orphan_timeout_ms: ORPHAN_MS,
            heartbeat_ms: HEARTBEAT_MS,
            // Final records leave memory at almost every tick, so that requests naming them are
            // answered from what the store gives back far more often than from memory.
            final_record_memory_ms: FINAL_MEMORY_MS,
            max_final_records_in_memory: 1,
            ..baton::config::Config::default()
        });
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
            maybe_consult: BTreeSet::new(),
            consult: BTreeSet::new(),
            holders: HashMap::new(),
            lost_at: HashMap::new(),
            ro_via: HashMap::new(),
            cleared: BTreeSet::new(),
            logout_pending: [false; 4],
            away_since: [0; 4],
            calls_view: Default::default(),
            context: HashMap::new(),
            refuse_writes: false,
            pre_step: None,
            step_facts: Vec::new(),
            rolled_back: false,
            stored: HashMap::new(),
            ever_held: HashMap::new(),
            final_info: HashMap::new(),
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
        if Engine::is_fact(&input) {
            self.step_facts.push(input.clone());
        }
        if let Some(id) = self.engine.record_to_load(&input) {
            self.load(id);
        }
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

    /// What the shell does before an input that names a record not in memory: read it back from
    /// the store, if it is there.
    fn load(&mut self, record: &str) {
        if let Some(bytes) = self.stored.get(record) {
            self.engine
                .admit(record, bytes)
                .expect("a stored record not in memory is final and readable");
            bump(&READ_BACK);
        }
    }

    fn alive(&self, agent: usize) -> bool {
        self.engine.monitored_dns().iter().any(|d| d == DNS[agent])
    }

    fn known(&self, record: &str) -> bool {
        self.life.contains_key(record)
    }

    fn login_req(&self, agent: usize, resume: Option<String>) -> Request {
        login(AGENTS[agent], DNS[agent], resume.as_deref())
    }

    fn some_party(&self, call: &str) -> usize {
        self.parties
            .get(call)
            .and_then(|s| s.keys().next())
            .and_then(|d| DNS.iter().position(|x| x == d))
            .unwrap_or(0)
    }

    fn drop_party(&mut self, call: &str, dn: &str) {
        if let Some(s) = self.parties.get_mut(call) {
            s.remove(dn);
            if s.is_empty() {
                self.drop_call(call);
            }
        }
    }

    fn drop_call(&mut self, call: &str) {
        self.parties.remove(call);
        self.consult.remove(call);
    }

    /// Adds `dn` to `call` as `state` if it is not on it; answering upgrades a ringing or dialing
    /// party, nothing else changes one.
    fn add_party(&mut self, call: &str, dn: &str, state: Party) {
        let held = self
            .parties
            .entry(call.to_owned())
            .or_default()
            .entry(dn.to_owned())
            .or_insert(state);
        if state == Party::Answered {
            *held = Party::Answered;
        }
    }

    /// Whether `record`'s current life is over (from the audit trail, not the engine: a final
    /// record may have left the engine's memory).
    fn is_final(&self, record: &str) -> bool {
        self.life.get(record).is_some_and(|(open, _)| !*open)
    }

    /// What the contract says a record request must get, from the state before it. Whether the
    /// agent ever held the record and whether it is final come from the audit trail, so that a
    /// final record that left memory must still be answered as if it had stayed.
    fn expect_desk(&self, agent: usize, record: &str, op: DeskOp) -> Result<Access, ErrorCode> {
        if !self.logged_in[agent] {
            return Err(ErrorCode::NotLoggedIn);
        }
        if !self.known(record) {
            return Err(ErrorCode::NoSuchRecord);
        }
        if !self
            .ever_held
            .get(record)
            .is_some_and(|h| h.contains(AGENTS[agent]))
        {
            return Err(ErrorCode::AccessDenied);
        }
        if self.is_final(record) {
            return Err(ErrorCode::AlreadyFinal);
        }
        // A live record is always in memory.
        let access = self
            .engine
            .access_of(record, AGENTS[agent])
            .unwrap_or(Access::Revoked);
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

    /// Fills in the DNs a step leaves to the test's switch model, so checks see what was sent.
    fn resolve(&self, step: &Step) -> Step {
        match step.clone() {
            Step::CallerHangsUp(call) => {
                let caller = self.parties.get(CALLS[call]).and_then(|p| {
                    p.iter()
                        .find(|(_, s)| **s == Party::Dialing)
                        .and_then(|(d, _)| DNS.iter().position(|x| x == d))
                });
                Step::Released {
                    call,
                    dn: Some(caller.unwrap_or_else(|| self.some_party(CALLS[call]))),
                    rona: false,
                }
            }
            Step::Released {
                call,
                dn: None,
                rona,
            } => Step::Released {
                call,
                dn: Some(self.some_party(CALLS[call])),
                rona,
            },
            Step::Transferred {
                call,
                from: None,
                to,
                kind,
                consult_call,
            } => Step::Transferred {
                call,
                from: Some(self.some_party(CALLS[call])),
                to,
                kind,
                consult_call,
            },
            Step::Consult {
                call,
                of,
                dn,
                answer,
                caller: Some(None),
                caller_answer,
            } => Step::Consult {
                call,
                of,
                dn,
                answer,
                caller: Some(Some(self.some_party(CALLS[of]))),
                caller_answer,
            },
            Step::PhoneLogout { agent, dn: None } => Step::PhoneLogout {
                agent,
                dn: Some(agent),
            },
            other => other,
        }
    }

    /// Runs one step as the shell runs one group commit: a batch that is kept, or (for
    /// `StorageFails`) refused and rolled back.
    fn step(&mut self, step: &Step) -> Result<(), String> {
        let (inner, refuse) = match step {
            Step::StorageFails(s) => (&**s, true),
            s => (s, false),
        };
        self.refuse_writes = refuse;
        self.pre_step = refuse.then(|| self.engine.clone());
        self.step_facts.clear();
        self.engine.begin();
        self.rolled_back = false;
        let result = self.apply_step(inner);
        for (id, value) in self.engine.take_writes().records {
            self.stored
                .insert(id, value.expect("records are never deleted"));
        }
        self.engine.commit();
        result?;
        if self.rolled_back {
            // The disk is back and the server's timer ticks again: deadlines the refused batch
            // had applied (and which were rolled back with it) take effect now.
            self.step(&Step::Advance(0))?;
        }
        Ok(())
    }

    fn apply_step(&mut self, step: &Step) -> Result<(), String> {
        let step = &self.resolve(step);
        // The record the step's request will name is read back before the test decides what
        // the answer must be, as the shell reads it back before the engine decides.
        if let Step::Desk { record, .. }
        | Step::DialerCancel(record)
        | Step::AdminRelease(record)
        | Step::Attach { record, .. } = *step
        {
            if !self.engine.is_in_memory(RECORDS[record]) {
                self.load(RECORDS[record]);
            }
        }
        let connected_at_start: [bool; 4] =
            std::array::from_fn(|a| self.desk[a].is_some() && self.logged_in[a]);
        let (desk_before, logged_in_before) = (self.desk, self.logged_in);
        let call_record_before = self.call_record.clone();
        let parties_before = self.parties.clone();
        let consult_before = self.consult.clone();
        let maybe_consult_before = self.maybe_consult.clone();
        let ro_via_before = self.ro_via.clone();
        let holders_before = self.holders.clone();
        let ignored_before = self.engine.counts().ignored_events;
        let audit_log_len_before = self.audit_log.len();
        let mut out = Vec::new();
        let mut sent = Vec::new();
        match step.clone() {
            Step::CallerHangsUp(_) => unreachable!("resolved into a Released"),
            Step::StorageFails(_) => unreachable!("a refused step is not nested"),
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
                // CONTRACT 7: the token resumes within resume_grace_ms of the drop; past it, it
                // has expired (exactly at the limit either answer is accepted).
                let away_for = self.now - self.away_since[a];
                let expect_resumed = if token.is_none() {
                    Some(false)
                } else if !was_away || (alive && away_for == GRACE_MS) {
                    None
                } else {
                    Some(alive && away_for < GRACE_MS)
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
                self.request(conn, logout(force), kind, &mut out, &mut sent);
            }
            Step::Disconnect(a) => {
                let Some(conn) = self.desk[a].take() else {
                    return Ok(());
                };
                self.logged_in[a] = false;
                self.away_since[a] = self.now;
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
                if (consult_of.is_some() || ani.is_some()) && !self.call_record.contains_key(call_s)
                {
                    self.maybe_consult.insert(call_s.into());
                }
                self.add_party(call_s, DNS[dn], Party::Alerting);
                // CONTRACT 5: the caller is on the call from the Ringing on, dialing.
                if let Some(from) = from_dn.filter(|f| *f != dn) {
                    self.add_party(call_s, DNS[from], Party::Dialing);
                }
                let req = ringing_full(
                    call_s,
                    DNS[dn],
                    ani.map(|i| ANIS[i]),
                    from_dn.map(|d| DNS[d]),
                    consult_of.map(|c| CALLS[c]),
                );
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::Consult {
                call,
                of,
                dn,
                answer,
                caller,
                caller_answer,
            } => {
                let call_s = CALLS[call];
                if of != call
                    && !self.parties.contains_key(call_s)
                    && !self.call_record.contains_key(call_s)
                {
                    self.consult.insert(call_s.into());
                }
                if !self.call_record.contains_key(call_s) {
                    self.maybe_consult.insert(call_s.into());
                }
                let state = if answer {
                    Party::Answered
                } else {
                    Party::Alerting
                };
                self.add_party(call_s, DNS[dn], state);
                let caller = caller.flatten().filter(|c| *c != dn);
                if let Some(from) = caller {
                    self.add_party(call_s, DNS[from], Party::Dialing);
                }
                let req = ringing_full(
                    call_s,
                    DNS[dn],
                    None,
                    caller.map(|c| DNS[c]),
                    Some(CALLS[of]),
                );
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
                // Some switches also report the caller's side answered, most do not.
                if let (Some(from), true) = (caller, caller_answer) {
                    self.add_party(call_s, DNS[from], Party::Answered);
                    let req = established(call_s, DNS[from]);
                    self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
                }
                if answer {
                    let req = established(call_s, DNS[dn]);
                    self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
                }
            }
            Step::Established { call, dn } => {
                self.add_party(CALLS[call], DNS[dn], Party::Answered);
                let req = established(CALLS[call], DNS[dn]);
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::Released { call, dn, rona } => {
                let dn = dn.unwrap_or_else(|| self.some_party(CALLS[call]));
                let c = CALLS[call];
                let was_party = self.parties.get(c).is_some_and(|p| p.contains_key(DNS[dn]));
                self.drop_party(c, DNS[dn]);
                // A call without a record of its own on which only unwatched DNs are left,
                // ringing, is forgotten once a party leaves it: no event about them can come.
                let monitored = self.engine.monitored_dns();
                let nobody = was_party
                    && self.parties.get(c).is_some_and(|p| {
                        p.iter()
                            .all(|(d, s)| *s == Party::Alerting && !monitored.contains(d))
                    });
                if nobody && !self.call_record.contains_key(c) {
                    self.drop_call(c);
                }
                let cause = if rona { "rona" } else { "hangup" };
                let req = released(CALLS[call], DNS[dn], Some(cause));
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
                if from != to {
                    // The engine ignores a transfer to the DN it comes from.
                    if let Some(p) = self.parties.get_mut(CALLS[call]) {
                        p.remove(DNS[from]);
                    }
                    let state = if kind == TransferKind::TwoStep {
                        Party::Answered
                    } else {
                        Party::Alerting
                    };
                    self.add_party(CALLS[call], DNS[to], state);
                }
                let req = transferred(
                    CALLS[call],
                    DNS[from],
                    DNS[to],
                    kind,
                    consult_call.map(|c| CALLS[c]),
                );
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::Conferenced {
                call,
                dn,
                consult_call,
            } => {
                let consult_call = consult_call.filter(|c| *c != call);
                // A merged consultation is dropped by the engine; its parties stay here, but it is
                // in `maybe_consult` and never judged by them.
                self.add_party(CALLS[call], DNS[dn], Party::Answered);
                let req = conferenced(CALLS[call], DNS[dn], consult_call.map(|c| CALLS[c]));
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::PhoneLogin { agent, dn } => {
                let req = agent_login(DNS[dn], AGENTS[agent]);
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::PhoneLogout { agent, dn } => {
                let dn = dn.unwrap_or(agent);
                let req = agent_logout(DNS[dn], AGENTS[agent]);
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
                let mut attach = attach_record(CALLS[call], r);
                attach.phone = phone.map(|i| ANIS[i].into());
                attach.chain_id = None;
                attach.chain_n = Some(1);
                attach.chain = chain;
                let req = Request::AttachRecord(attach);
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
                } else if self.is_final(r) {
                    Err(ErrorCode::AlreadyFinal)
                } else {
                    Ok(())
                };
                let req = record_req("CancelRecord", r);
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
                } else if self.is_final(r) {
                    Err(ErrorCode::AlreadyFinal)
                } else {
                    Ok(())
                };
                let req = release(r, "stuck");
                self.request(
                    ADMIN,
                    req,
                    Kind::AdminRelease { expect },
                    &mut out,
                    &mut sent,
                );
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
                    DeskOp::Update => update_with_result(
                        &r,
                        "busy",
                        json!({"note": format!("by {}", AGENTS[agent])}),
                    ),
                    DeskOp::Processed => processed(&r, "sale"),
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
            Step::Wait(ms) => {
                // Something arrives (a Ping) but the timer has not ticked yet.
                self.now += ms;
                self.request(ADMIN, Request::Ping, Kind::Ping, &mut out, &mut sent);
            }
        }
        if self.refuse_writes {
            let writes = self.engine.take_writes();
            if !writes.is_empty() {
                // What the shell does when the store refuses a batch: nothing of it is sent,
                // requests get `unavailable`, the engine goes back to before the batch, and the
                // connection changes in it are applied again.
                self.engine.rollback();
                let mut expected = self.pre_step.take().expect("cloned before the step");
                let (mut fact_out, mut expected_out) = (Vec::new(), Vec::new());
                for input in std::mem::take(&mut self.step_facts) {
                    expected.reapply_fact(self.now, input.clone(), &mut expected_out);
                    self.engine.reapply_fact(self.now, input, &mut fact_out);
                }
                // The wrapper closes the step's batch; this one only stands in for it.
                self.engine.begin();
                let (got, want) = (self.engine.dump(), expected.dump());
                if got != want {
                    let diff: Vec<String> = got
                        .lines()
                        .zip(want.lines())
                        .filter(|(g, w)| g != w)
                        .map(|(g, w)| format!("after rollback: {g}\nbefore the batch: {w}"))
                        .collect();
                    return Err(format!(
                        "inv 8: a refused batch left the engine changed:\n{}",
                        diff.join("\n")
                    ));
                }
                if fact_out != expected_out {
                    return Err(format!(
                        "inv 8: connection changes applied again said {fact_out:?}, expected {expected_out:?}"
                    ));
                }
                if self.engine.counts().audit_last_seq != self.audit_last {
                    return Err("inv 8: a refused batch moved the audit seq".into());
                }
                // A refused login leaves the agent on the connection it had (its new connection
                // stays open, logged in as nobody).
                if let Step::Login(a) | Step::Reconnect { agent: a, .. } = *step {
                    self.desk[a] = desk_before[a];
                    self.logged_in[a] = logged_in_before[a];
                }
                // The switch's events were refused too: its calls are as before.
                self.parties = parties_before;
                self.consult = consult_before;
                self.maybe_consult = maybe_consult_before;
                bump(&REFUSED_BATCHES);
                self.rolled_back = true;
                return Ok(());
            }
            // Nothing to write: the store was never asked, and the step stands.
        }
        if self.engine.counts().ignored_events != ignored_before {
            // The engine ignored the event (unknown call, unmonitored DNs): so does the test's switch.
            self.parties = parties_before.clone();
            self.consult = consult_before;
            self.maybe_consult = maybe_consult_before.clone();
        }
        // A consultation merged into its customer call, a call forgotten: the switch's next event
        // about that id starts a new call. (A call dropped without telling its desktops would
        // still show: the failover check compares what the desktops were told.)
        let gone: Vec<String> = self
            .parties
            .keys()
            .filter(|c| !self.engine.tracks_call(c))
            .cloned()
            .collect();
        for c in gone {
            self.drop_call(&c);
        }
        self.check(
            step,
            &connected_at_start,
            &call_record_before,
            audit_log_len_before,
            &out,
            &sent,
        )?;
        let before = Before {
            call_record: call_record_before,
            parties: parties_before,
            maybe_consult: maybe_consult_before,
            ro_via: ro_via_before,
            holders: holders_before,
            audit_log_len: audit_log_len_before,
        };
        self.check_rules(step, &before)
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
        self.cleared.clear();

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
                    self.track_holders(step, e)?;
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
                            // The replay that follows tells the calls present now.
                            self.calls_view[a].clear();
                            if *resumed {
                                bump(&RESUMED);
                            } else {
                                self.view[a].clear();
                                self.logout_pending[a] = false;
                            }
                        }
                        ServerMsg::LoggedOut { .. } if desktop => {
                            if let Some(&a) = self.conn_agent.get(&conn) {
                                if self.desk[a] == Some(conn) {
                                    self.logged_in[a] = false;
                                    self.logout_pending[a] = false;
                                }
                            }
                        }
                        ServerMsg::LogoutPending { .. } => {
                            if let Some(&a) = self.conn_agent.get(&conn) {
                                self.logout_pending[a] = true;
                            }
                        }
                        ServerMsg::AccessChanged {
                            record,
                            access,
                            cause,
                            data,
                            context,
                            ..
                        } => {
                            let &a = self.conn_agent.get(&conn).ok_or_else(|| {
                                format!("AccessChanged to conn {conn} that never logged in")
                            })?;
                            // Rule 2 / CONTRACT 3: a grant carries the data and the context the
                            // earlier holders left; the receiver never polls.
                            if access.is_granted() {
                                let want = self.context.get(record).cloned().unwrap_or_default();
                                if data.as_ref() != Some(&customer(record))
                                    || context.as_ref() != Some(&want)
                                {
                                    return Err(format!(
                                        "rule 2: grant of {record} to {} carries data {data:?} \
                                         context {context:?}, expected context {want:?}",
                                        AGENTS[a]
                                    ));
                                }
                            }
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
                        ServerMsg::RecordUpdated { record, .. } if desktop => {
                            if let Some(&a) = self.conn_agent.get(&conn) {
                                let ctx = self.context.entry(record.clone()).or_default();
                                ctx.call_result = Some("busy".into());
                                ctx.fields
                                    .insert("note".into(), json!(format!("by {}", AGENTS[a])));
                            }
                        }
                        ServerMsg::CallCleared { call, dn, .. } => {
                            self.cleared.insert((call.clone(), dn.clone()));
                            if let Some(&a) = self.conn_agent.get(&conn) {
                                self.calls_view[a].remove(call);
                            }
                        }
                        ServerMsg::CallEstablished { call, .. } => {
                            if let Some(&a) = self.conn_agent.get(&conn) {
                                self.calls_view[a].insert(call.clone(), true);
                            }
                        }
                        ServerMsg::CallAlerting {
                            call, consult_of, ..
                        } => {
                            if consult_of.is_some() {
                                self.consult.insert(call.clone());
                            }
                            if let Some(&a) = self.conn_agent.get(&conn) {
                                self.calls_view[a].insert(call.clone(), false);
                            }
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

        // Status counts: records with a final outcome and live ones, as the audit told them.
        let counts = self.engine.counts();
        let model_finals = self.life.values().filter(|(open, _)| !*open).count() as u64;
        let model_live = self.life.len() as u64 - model_finals;
        if (counts.records_final, counts.records_live) != (model_finals, model_live) {
            return Err(format!(
                "status counts: engine reports {} final and {} live records, the audit {} and {}",
                counts.records_final, counts.records_live, model_finals, model_live
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
            | Step::Consult { call, .. }
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
                return Err(format!(
                    "inv 7: reply with ref {r} nobody sent in this step"
                ));
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
            // Rule 11: a smart logout completes once the agent holds no live `full` record.
            if self.logout_pending[a] && self.full_live(a).is_empty() {
                return Err(format!(
                    "rule 11: {} is still logged in after LogoutPending with no full record left",
                    AGENTS[a]
                ));
            }
            if !dns.iter().any(|d| d == DNS[a]) {
                return Err(format!(
                    "inv 5: {} is logged in on its desktop but {} is not monitored",
                    AGENTS[a], DNS[a]
                ));
            }
            // Failover table of SCENARIOS.md: the desktop's calls (pushes and resume replay) are
            // the calls on its DN (consultations the engine may merge alone are left out).
            let judged = |c: &String| !self.maybe_consult.contains(c);
            let told: BTreeMap<&String, bool> = self.calls_view[a]
                .iter()
                .filter(|(c, _)| judged(c))
                .map(|(c, s)| (c, *s))
                .collect();
            let actual: BTreeMap<&String, bool> = self
                .parties
                .iter()
                .filter(|(c, _)| judged(c))
                .filter_map(|(c, p)| p.get(DNS[a]).map(|s| (c, *s != Party::Alerting)))
                .collect();
            if told != actual {
                return Err(format!(
                    "failover: {}'s desktop shows calls {told:?} (call -> answered), \
                     {} has {actual:?}",
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
            Kind::Ping => {
                let m = single("Ping")?;
                if *m != ServerMsg::Pong {
                    return Err(format!("Ping answered {m:?}"));
                }
            }
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
                                return Err(format!("resume: expected resumed:{e}, got {m:?}"));
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
                    } if *logged_in && (*force || full_live.is_empty()) => {
                        // Rule 11: a forced logout returns its `full` records to the dialer.
                        for r in full_live {
                            let f = self.engine.final_of(r);
                            if f.as_ref().map(|f| f.outcome) != Some(Outcome::Returned) {
                                return Err(format!(
                                    "rule 11: forced logout left {r} with final {f:?}"
                                ));
                            }
                        }
                    }
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
                            ServerMsg::ChainedRecord {
                                record: r, access, ..
                            } => {
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
                        // Rule 8: `already_final` names the winner and the outcome.
                        if let (
                            ServerMsg::Error {
                                code: ErrorCode::AlreadyFinal,
                                outcome,
                                by,
                                ..
                            },
                            Some((f_by, f_outcome)),
                        ) = (last, self.final_info.get(record.as_str()))
                        {
                            let winner = f_by.clone().unwrap_or_else(|| "server".into());
                            if outcome.map(Outcome::as_str) != Some(f_outcome.as_str())
                                || by.as_deref() != Some(&winner)
                            {
                                return Err(format!(
                                    "rule 8: already_final says {outcome:?} by {by:?}, the final \
                                     is {f_outcome} by {winner}"
                                ));
                            }
                        }
                        // A refused request changes nothing but the audit log.
                        let denied_audits = out
                            .iter()
                            .filter(
                                |o| matches!(o, Output::Audit(e) if e.kind == AuditKind::Denied),
                            )
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
                            (
                                DeskOp::Get,
                                ServerMsg::Record {
                                    access: a,
                                    final_,
                                    data,
                                    context,
                                    ..
                                },
                            ) => {
                                a == access
                                    && final_.is_none()
                                    && *data == customer(record)
                                    && *context
                                        == self.context.get(record).cloned().unwrap_or_default()
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
                        // Rule 12: an accepted request is audited as such.
                        let accepted = self.audit_log[audit_log_len_before..]
                            .iter()
                            .filter(|e| {
                                e.kind == AuditKind::Accepted
                                    && e.agent.as_deref() == Some(AGENTS[*agent])
                                    && e.record.as_deref() == Some(record.as_str())
                            })
                            .count();
                        if accepted != 1 {
                            return Err(format!(
                                "rule 12: accepted {op:?} has {accepted} `accepted` entries"
                            ));
                        }
                        if op.is_final() {
                            let f = self.engine.final_of(record);
                            if f.as_ref().and_then(|f| f.by.as_deref()) != Some(AGENTS[*agent]) {
                                return Err(format!("rule 8: {op:?} acked but the final is {f:?}"));
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

impl Harness {
    /// Keeps the holder table and the orphan clock from the audit entries (rules 5 and 9).
    fn track_holders(&mut self, step: &Step, e: &AuditEntry) -> Result<(), String> {
        let Some(rec) = e.record.clone() else {
            return Ok(());
        };
        let agent = e.agent.clone().unwrap_or_default();
        match e.kind {
            AuditKind::Attached => {
                self.holders.insert(rec.clone(), BTreeMap::new());
                self.ever_held.remove(&rec);
                self.final_info.remove(&rec);
                self.context.remove(&rec);
                self.lost_at.remove(&rec);
                self.ro_via.retain(|(r, _), _| *r != rec);
                // A consultation that gets a record of its own is no longer judged as one.
                let call = e.call.clone().unwrap_or_default();
                self.ro_via.retain(|_, (x, _)| *x != call);
            }
            AuditKind::Granted | AuditKind::Downgraded | AuditKind::Revoked => {
                // Rule 12: the entry tells the access before, as the trail itself had it.
                let before = self
                    .holders
                    .get(&rec)
                    .and_then(|h| h.get(&agent))
                    .copied()
                    .unwrap_or(Access::Revoked);
                if e.previous != Some(before) || e.access.is_none() {
                    return Err(format!(
                        "rule 12: audit entry says previous {:?}, the trail had {before:?}: {e:?}",
                        e.previous
                    ));
                }
            }
            _ => {}
        }
        match e.kind {
            AuditKind::Granted | AuditKind::Downgraded => {
                // Rule 9: past orphan_timeout_ms without a holder the record is the dialer's
                // again (stale); nobody can take it any more.
                if let Some(t) = self.lost_at.get(&rec) {
                    if self.now > t + ORPHAN_MS {
                        return Err(format!(
                            "rule 9: {rec} taken by {agent} {} ms after losing its last holder \
                             (orphan_timeout_ms {ORPHAN_MS})",
                            self.now - t
                        ));
                    }
                }
                let access = e.access.unwrap_or(Access::Revoked);
                self.holders
                    .entry(rec.clone())
                    .or_default()
                    .insert(agent.clone(), access);
                self.ever_held
                    .entry(rec.clone())
                    .or_default()
                    .insert(agent.clone());
                self.lost_at.remove(&rec);
                self.ro_via.remove(&(rec.clone(), agent.clone()));
                if e.kind == AuditKind::Granted
                    && access == Access::ReadOnly
                    && e.cause.as_deref() == Some("consultation")
                {
                    if let Step::Established { call, .. } | Step::Consult { call, .. } = step {
                        let customer = e.call.clone().unwrap_or_default();
                        self.ro_via
                            .insert((rec, agent), (CALLS[*call].to_owned(), customer));
                    }
                }
            }
            AuditKind::Revoked => {
                self.ro_via.remove(&(rec.clone(), agent.clone()));
                let set = self.holders.entry(rec.clone()).or_default();
                set.remove(&agent);
                let live = self.life.get(&rec).is_some_and(|l| l.0);
                if set.is_empty() && live {
                    self.lost_at.insert(rec, self.now);
                }
            }
            AuditKind::Finalized => {
                self.final_info.insert(
                    rec.clone(),
                    (e.agent.clone(), e.cause.clone().unwrap_or_default()),
                );
                if e.cause.as_deref() == Some("stale") {
                    if self.holders.get(&rec).is_some_and(|h| !h.is_empty()) {
                        return Err(format!(
                            "rule 9: {rec} returned stale while held by {:?}",
                            self.holders[&rec]
                        ));
                    }
                    if let Some(t) = self.lost_at.get(&rec) {
                        if self.now < t + ORPHAN_MS {
                            return Err(format!(
                                "rule 9: {rec} returned stale {} ms after losing its last holder",
                                self.now - t
                            ));
                        }
                    }
                }
                self.lost_at.remove(&rec);
            }
            _ => {}
        }
        Ok(())
    }

    /// Rule-level checks of SCENARIOS.md that need only the step, the state before and the engine.
    fn check_rules(&mut self, step: &Step, before: &Before) -> Result<(), String> {
        let Before {
            call_record: call_record_before,
            parties: parties_before,
            maybe_consult: maybe_consult_before,
            ro_via: ro_via_before,
            holders: holders_before,
            audit_log_len: audit_log_len_before,
        } = before;
        let audit_log_len_before = *audit_log_len_before;
        let acc = |r: &str, a: &str| self.engine.access_of(r, a).unwrap_or(Access::Revoked);
        let agent_on = |d: usize| (d < 4 && self.alive(d)).then(|| AGENTS[d]);
        let live_record = |call: usize| {
            call_record_before
                .get(CALLS[call])
                .filter(|r| self.engine.final_of(r).is_none())
                .cloned()
        };
        match *step {
            // Rule 1: Established on a DN with a logged-in agent gives it `full`.
            // Rule 6: so does joining the call as a conference party.
            Step::Established { call, dn }
            | Step::Conferenced { call, dn, .. }
            | Step::Consult {
                call,
                dn,
                answer: true,
                ..
            } => {
                if let (Some(r), Some(a)) = (live_record(call), agent_on(dn)) {
                    if acc(&r, a) != Access::Full {
                        return Err(format!(
                            "rules 1/6: {a} on {} is on {} carrying {r} but holds {:?}",
                            DNS[dn],
                            CALLS[call],
                            acc(&r, a)
                        ));
                    }
                }
            }
            // Rules 2, 4, 9: after a transfer the initiator is revoked and the recipient is `full`.
            Step::Transferred {
                call,
                from: Some(from),
                to,
                ..
            } if from != to => {
                if let Some(r) = live_record(call) {
                    if let Some(b) = agent_on(to) {
                        if acc(&r, b) != Access::Full {
                            return Err(format!(
                                "rules 2/4: recipient {b} holds {:?} on {r}",
                                acc(&r, b)
                            ));
                        }
                    }
                    if from < 4 && acc(&r, AGENTS[from]) != Access::Revoked {
                        return Err(format!(
                            "rules 2/4/9: initiator {} still holds {:?} on {r}",
                            AGENTS[from],
                            acc(&r, AGENTS[from])
                        ));
                    }
                }
            }
            Step::Released {
                call, dn: Some(dn), ..
            } => {
                // Rules 5 and 7: a DN leaving a call takes `full` from nobody but its own agent.
                for e in &self.audit_log[audit_log_len_before..] {
                    if e.kind == AuditKind::Revoked
                        && e.previous == Some(Access::Full)
                        && e.agent.as_deref() != Some(DNS_AGENT[dn])
                    {
                        return Err(format!(
                            "rules 5/7: Released on {} revoked someone else's full: {e:?}",
                            DNS[dn]
                        ));
                    }
                }
                // Rule 5: the consultation released on B's DN (or A's) ends B's read-only access.
                // Rule 7: leaving while another answered agent remains on the call revokes; the
                // last agent to leave keeps `full`.
                let c = CALLS[call];
                let x = DNS_AGENT[dn];
                let was_full = |r: &String| {
                    holders_before.get(r).and_then(|h| h.get(x)) == Some(&Access::Full)
                };
                if let (false, Some(r), Some(_), Some(&state)) = (
                    maybe_consult_before.contains(c),
                    live_record(call).filter(was_full),
                    agent_on(dn),
                    parties_before.get(c).and_then(|p| p.get(DNS[dn])),
                ) {
                    let others: Vec<&str> = self
                        .parties
                        .get(c)
                        .map(|p| {
                            p.iter()
                                .filter(|(d, s)| **s == Party::Answered && d.as_str() != DNS[dn])
                                .filter_map(|(d, _)| DNS.iter().position(|x| x == d))
                                .filter_map(agent_on)
                                .collect()
                        })
                        .unwrap_or_default();
                    let now = acc(&r, x);
                    bump(&RULE7_JUDGED);
                    if !others.is_empty() && now != Access::Revoked {
                        return Err(format!(
                            "rule 7: {x} left {c} while {others:?} remain, but still holds {now:?} on {r}"
                        ));
                    }
                    // A caller that leaves while dialing is on the call as much as one that answered.
                    if others.is_empty() && state != Party::Alerting && now != Access::Full {
                        return Err(format!(
                            "rule 7: {x} was the last agent to leave {c} but holds {now:?} on {r}"
                        ));
                    }
                }
                // Judged when the engine showed (by `CallCleared`) that the DN left the call, or
                // the DN was the consultation's caller (CONTRACT 5: on the call from its Ringing,
                // with or without an Established), and B is still a party of the consultation.
                let c2 = CALLS[call];
                let on =
                    |c: &str, d: &str| parties_before.get(c).is_some_and(|p| p.contains_key(d));
                let caller = parties_before
                    .get(c2)
                    .and_then(|p| p.get(DNS[dn]))
                    .is_some_and(|s| *s == Party::Dialing);
                let left = caller || self.cleared.contains(&(c2.to_owned(), DNS[dn].to_owned()));
                for ((r, b), (x, _customer)) in ro_via_before {
                    let Some(bi) = agent_idx(b) else { continue };
                    if x != c2 || !left || !on(x, DNS[bi]) {
                        continue;
                    }
                    let a_full = holders_before.get(r).and_then(|h| h.get(DNS_AGENT[dn]))
                        == Some(&Access::Full);
                    if bi == dn || a_full {
                        bump(&RULE5_JUDGED);
                        if caller {
                            bump(&RULE5_CALLER_JUDGED);
                        }
                    }
                    if (bi == dn || a_full) && acc(r, b) != Access::Revoked {
                        return Err(format!(
                            "rule 5: consultation {c2} released on {} but {b} still holds {:?} on {r}",
                            DNS[dn],
                            acc(r, b)
                        ));
                    }
                }
            }
            _ => {}
        }
        // A consultation merged into its customer call by a transfer or conference is over
        // without a Released; forget the read-only grants it gave (the engine may find it alone).
        match *step {
            Step::Transferred {
                call,
                to: dn,
                consult_call,
                ..
            }
            | Step::Conferenced {
                call,
                dn,
                consult_call,
            } => {
                let on =
                    |c: &str, d: &str| parties_before.get(c).is_some_and(|p| p.contains_key(d));
                self.ro_via.retain(|_, (x, customer)| {
                    // A consultation transferred itself is not judged by rule 5 either.
                    let itself = x.as_str() == CALLS[call];
                    let explicit = consult_call.is_some_and(|c| CALLS[c] == x.as_str());
                    let found = customer == CALLS[call] && on(x, DNS[dn]);
                    !(itself || explicit || found)
                });
            }
            _ => {}
        }
        // Rule 9: a record nobody took within orphan_timeout_ms of losing its last holder is stale.
        if let Step::Advance(_) = step {
            for (r, t) in &self.lost_at {
                if self.now >= t + ORPHAN_MS && self.engine.final_of(r).is_none() {
                    return Err(format!(
                        "rule 9: {r} unheld since {} ms ago is still live after a tick",
                        self.now - t
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The agent that logs in on each DN (none on D9).
const DNS_AGENT: [&str; 5] = ["A1", "A2", "A3", "A4", "-"];

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

/// The test's model as it was before a step, for the rule checks.
struct Before {
    call_record: HashMap<String, String>,
    parties: BTreeMap<String, BTreeMap<String, Party>>,
    maybe_consult: BTreeSet<String>,
    ro_via: HashMap<(String, String), (String, String)>,
    holders: HashMap<String, BTreeMap<String, Access>>,
    audit_log_len: usize,
}

/// Runs one sequence: every agent logs in first (checked like any step), then the steps.
fn run_sequence(steps: &[Step]) -> Result<(), String> {
    bump(&SEQUENCES);
    LONGEST.fetch_max(steps.len() as u64, Ordering::Relaxed);
    let mut h = Harness::new();
    for (a, name) in AGENTS.iter().enumerate() {
        h.step(&Step::Login(a))
            .map_err(|e| format!("setup login of {name}: {e}"))?;
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
    let max_steps: usize = std::env::var("BATON_PROPTEST_MAX_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&steps_s(max_steps), |steps| {
        run_sequence(&steps).map_err(TestCaseError::fail)
    });
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "model: {} sequences ({cases} cases, seed {seed}), {} steps, longest sequence {} steps; \
         coverage: {} read-only grants, {} transfer grants, {} conference grants, {} finals \
         ({} stale), {} already_final, {} read_only refusals, {} resumes, {} logout pending, \
         {} consultation releases ({} by the caller) and {} conference leaves judged, \
         {} refused batches rolled back, {} final records read back from the store",
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
        n(&RULE5_JUDGED),
        n(&RULE5_CALLER_JUDGED),
        n(&RULE7_JUDGED),
        n(&REFUSED_BATCHES),
        n(&READ_BACK),
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
