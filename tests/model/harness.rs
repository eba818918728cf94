//! The harness: the engine under test, what the test sent it, and the reference model built from
//! its outputs; the helpers every step and check use.

use super::*;
use baton::store::records::{join_record, stored_record_is_split};

/// What a request was, to check its reply.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
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
pub(crate) struct Sent {
    pub(crate) conn: ConnId,
    pub(crate) r#ref: u64,
    pub(crate) kind: Kind,
}

pub(crate) struct Harness {
    pub(crate) engine: Engine,
    pub(crate) now: u64,
    pub(crate) next_conn: ConnId,
    pub(crate) next_ref: u64,
    /// The agent's desktop connection, while connected.
    pub(crate) desk: [Option<ConnId>; 4],
    /// That connection is logged in (from `LoggedIn` / `LoggedOut`).
    pub(crate) logged_in: [bool; 4],
    pub(crate) token: [Option<String>; 4],
    /// The agent a connection was last logged in as.
    pub(crate) conn_agent: HashMap<ConnId, usize>,
    /// Per agent, record -> access, as its desktop was told.
    pub(crate) view: [BTreeMap<String, Access>; 4],
    pub(crate) audit_last: u64,
    pub(crate) audit_log: Vec<AuditEntry>,
    /// Record -> (life open, finals in this life).
    pub(crate) life: HashMap<String, (bool, u32)>,
    /// Call -> live record attached to it (from `attached` / `finalized` audit entries).
    pub(crate) call_record: HashMap<String, String>,
    /// The test's own idea of the switch: call -> DNs on it (only to pick plausible parameters).
    /// Mirrors the engine's call parties (DN -> state) for calls never linked as consultations.
    pub(crate) parties: BTreeMap<String, BTreeMap<String, Party>>,
    /// Calls that may be linked as a consultation (Ringing with consult_of or ani while they had
    /// no record): the engine may merge them away, so their parties are not judged (rule 7).
    /// Never cleared: a call id once flagged stays unjudged for the rest of the sequence.
    pub(crate) maybe_consult: BTreeSet<String>,
    /// Consultation calls (Ringing with consult_of, or CallAlerting with consult_of).
    pub(crate) consult: BTreeSet<String>,
    /// Record -> agent -> access, for agents holding `full` or `read_only` (from the audit).
    pub(crate) holders: HashMap<String, BTreeMap<String, Access>>,
    /// Record -> when it lost its last holder (rule 9's orphan clock), while live and unheld.
    pub(crate) lost_at: HashMap<String, u64>,
    /// (record, agent) -> (consultation call, customer call) for read-only grants made by an
    /// `Established` of that consultation, while that access lasts.
    pub(crate) ro_via: HashMap<(String, String), (String, String)>,
    /// Record -> the context its holders left (accepted `UpdateRecord`s), for this life.
    pub(crate) context: HashMap<String, Context>,
    /// Per agent, the calls on its DN as its desktop was told (call -> answered).
    pub(crate) calls_view: [BTreeMap<String, bool>; 4],
    /// When each agent's desktop dropped (its resume grace runs from there).
    pub(crate) away_since: [u64; 4],
    /// Agents whose desktop got `LogoutPending` and no `LoggedOut` since.
    pub(crate) logout_pending: [bool; 4],
    /// (call, dn) of the `CallCleared` pushes of the current step.
    pub(crate) cleared: BTreeSet<(String, String)>,
    /// The current step's batch is refused by the store.
    pub(crate) refuse_writes: bool,
    /// The engine as it was before a refused step, and the facts (connection changes) the step
    /// fed it: after the rollback, the engine must equal that engine with those facts applied.
    pub(crate) pre_step: Option<Engine>,
    pub(crate) step_facts: Vec<Input>,
    /// The current step's batch was refused and rolled back.
    pub(crate) rolled_back: bool,
    /// The records as the store holds them (the writes of every kept batch): where the shell
    /// reads a final record back from once it has left the engine's memory.
    pub(crate) stored: HashMap<String, Vec<u8>>,
    /// The records' bodies as the store holds them (written once, with a record's first write).
    pub(crate) bodies: HashMap<String, Vec<u8>>,
    /// Record -> every agent granted access to it in its current life (from the audit).
    pub(crate) ever_held: HashMap<String, BTreeSet<String>>,
    /// Record -> (by, outcome) of its final, from the `finalized` audit entry.
    pub(crate) final_info: HashMap<String, (Option<String>, String)>,
}

/// A DN on a call, as the test's switch knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Party {
    Alerting,
    /// Placed the call (`from_dn`) and has not been reported answered.
    Dialing,
    Answered,
}

pub(crate) fn agent_idx(name: &str) -> Option<usize> {
    AGENTS.iter().position(|a| *a == name)
}

pub(crate) fn cause_str(c: AccessCause) -> &'static str {
    c.as_str()
}

impl Harness {
    pub(crate) fn new() -> Harness {
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
            bodies: HashMap::new(),
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

    pub(crate) fn new_conn(&mut self) -> ConnId {
        let c = self.next_conn;
        self.next_conn += 1;
        if self.next_conn == SWITCH {
            self.next_conn = 100;
        }
        c
    }

    pub(crate) fn input(&mut self, input: Input, out: &mut Vec<Output>) {
        if Engine::is_fact(&input) {
            self.step_facts.push(input.clone());
        }
        if let Some(id) = self.engine.record_to_load(&input) {
            self.load(id);
        }
        self.engine.handle(self.now, input, out);
    }

    pub(crate) fn request(
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
    pub(crate) fn load(&mut self, record: &str) {
        if let Some(state) = self.stored.get(record) {
            // As the store hands a record back: its state, then its body if it is kept apart.
            let bytes = match self.bodies.get(record) {
                Some(body) if stored_record_is_split(state) => join_record(state, body).to_vec(),
                _ => state.clone(),
            };
            self.engine
                .admit(record, &bytes)
                .expect("a stored record not in memory is final and readable");
            bump(&READ_BACK);
        }
    }

    pub(crate) fn alive(&self, agent: usize) -> bool {
        self.engine.monitored_dns().iter().any(|d| d == DNS[agent])
    }

    pub(crate) fn known(&self, record: &str) -> bool {
        self.life.contains_key(record)
    }

    pub(crate) fn login_req(&self, agent: usize, resume: Option<String>) -> Request {
        login(AGENTS[agent], DNS[agent], resume.as_deref())
    }

    pub(crate) fn some_party(&self, call: &str) -> usize {
        self.parties
            .get(call)
            .and_then(|s| s.keys().next())
            .and_then(|d| DNS.iter().position(|x| x == d))
            .unwrap_or(0)
    }

    pub(crate) fn drop_party(&mut self, call: &str, dn: &str) {
        if let Some(s) = self.parties.get_mut(call) {
            s.remove(dn);
            if s.is_empty() {
                self.drop_call(call);
            }
        }
    }

    pub(crate) fn drop_call(&mut self, call: &str) {
        self.parties.remove(call);
        self.consult.remove(call);
    }

    /// Adds `dn` to `call` as `state` if it is not on it; answering upgrades a ringing or dialing
    /// party, nothing else changes one.
    pub(crate) fn add_party(&mut self, call: &str, dn: &str, state: Party) {
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
    pub(crate) fn is_final(&self, record: &str) -> bool {
        self.life.get(record).is_some_and(|(open, _)| !*open)
    }

    /// What the contract says a record request must get, from the state before it. Whether the
    /// agent ever held the record and whether it is final come from the audit trail, so that a
    /// final record that left memory must still be answered as if it had stayed.
    pub(crate) fn expect_desk(
        &self,
        agent: usize,
        record: &str,
        op: DeskOp,
    ) -> Result<Access, ErrorCode> {
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

    pub(crate) fn full_live(&self, agent: usize) -> BTreeSet<String> {
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
    pub(crate) fn resolve(&self, step: &Step) -> Step {
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
    pub(crate) fn step(&mut self, step: &Step) -> Result<(), String> {
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
        let writes = self.engine.take_writes();
        for (id, value) in writes.records {
            self.stored
                .insert(id, value.expect("records are never deleted"));
        }
        self.bodies.extend(writes.bodies);
        self.engine.commit();
        result?;
        if self.rolled_back {
            // The disk is back and the server's timer ticks again: deadlines the refused batch
            // had applied (and which were rolled back with it) take effect now.
            self.step(&Step::Advance(0))?;
        }
        Ok(())
    }
}
