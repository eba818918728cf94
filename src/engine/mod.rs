//! The engine: who may do what to which record, as a pure state machine.
//!
//! Everything Baton knows about agents, DNs, calls, records and access lives here, and nothing here
//! does I/O: the shell ([`crate::server`]) feeds in decoded requests, connection changes and clock
//! ticks with the current time, and carries out the [`Output`]s (frames to send, connections to
//! close, audit entries to keep). Given the same inputs the engine produces the same outputs, which
//! is what lets the sharing rules be tested by the thousand and decided in one well-defined order:
//! when several desktops race, the first request the engine sees wins, never the fastest socket.
//!
//! Access only ever changes through [`Engine::set_access`], which pushes `AccessChanged`, writes the
//! audit entry and keeps the orphan clock, so no rule can forget one of the three.
//!
//! The engine lives in rooms, one file per concern, each an `impl Engine` block of its own (as
//! quinn-proto splits its `Connection`): `access` (the one place access changes, and the check
//! order), `session` (connections, login, resume, logout), `records`, `dialer` and `admin` (one
//! function per request), `telephony` (switch events) over `calls` (the call table), `timers`,
//! `persist` (the engine's side of the store), `outputs` (replies, pushes, audit entries),
//! `causes`, `ids` and `state` (the words, the names and the data). Inside the engine agents,
//! DNs, calls and records are named by the types of `ids`; they are the protocol's strings again
//! only in what leaves it. This file holds the engine itself, its inputs and outputs, the one
//! dispatch of requests, and the batch glue (begin, commit, rollback); it never implements a rule
//! itself.

mod access;
mod admin;
mod calls;
mod causes;
mod dialer;
mod ids;
mod journal;
mod outputs;
mod persist;
mod records;
mod session;
mod state;
mod stored;
mod telephony;
mod timers;

use crate::messages::*;
use crate::store::records::{decode, encode, parse_records};
use crate::store::{Snapshot, WriteBatch};
use access::FinalExtra;
use causes::{ClearCause, FinalBy, RecordState, SessionCause};
use ids::{AgentId, CallId, Dn, RecordId};
use journal::{FastMap, JMap, JSet};
use rand::{rngs::StdRng, RngCore, SeedableRng};
use records::json_len;
use serde::{Deserialize, Serialize};
use state::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Identifies one client connection; assigned by the shell, never reused while the server runs.
pub type ConnId = u64;

/// Limits and timers the engine needs (a subset of [`crate::config::Config`]).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub resume_grace_ms: u64,
    pub orphan_timeout_ms: u64,
    pub max_frame_bytes: usize,
    /// Heartbeat period: a dead connection may go unnoticed for three of them.
    pub heartbeat_ms: u64,
    /// A final record leaves memory this long after it became final (or was read back).
    pub final_record_memory_ms: u64,
    /// Final records kept in memory at most; the oldest leave first.
    pub max_final_records_in_memory: u64,
    /// A call with no telephony event for this long is dropped.
    pub call_idle_timeout_ms: u64,
    /// A final record is deleted from the store this long after it became final (0: never).
    pub final_record_retention_ms: u64,
    /// `open` mode: a `Login` names its agent and nothing proves it. Otherwise a login stands
    /// only with [`LoginProof::Verified`], or as a resume of the agent's live session.
    pub trust_agent_ids: bool,
}

impl EngineConfig {
    pub fn from_config(c: &crate::config::Config) -> EngineConfig {
        EngineConfig {
            resume_grace_ms: c.resume_grace_ms,
            orphan_timeout_ms: c.orphan_timeout_ms,
            max_frame_bytes: c.max_frame_bytes,
            heartbeat_ms: c.heartbeat_ms,
            final_record_memory_ms: c.final_record_memory_ms,
            max_final_records_in_memory: c.max_final_records_in_memory,
            call_idle_timeout_ms: c.call_idle_timeout_ms,
            final_record_retention_ms: c.final_record_retention_ms,
            trust_agent_ids: c.auth.agents == crate::config::AgentAuth::Open,
        }
    }
}

/// Something that happened, for the engine to apply.
// Requests dominate the traffic, so boxing them would cost an allocation on the common path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Input {
    /// A connection finished its `Hello` as `role`.
    Connected { conn: ConnId, role: Role },
    /// A decoded request from a connection that said `Hello`.
    Request {
        conn: ConnId,
        r#ref: Option<u64>,
        request: Request,
    },
    /// The connection is gone (closed, reset, silent or dropped for not reading).
    Disconnected { conn: ConnId },
    /// Time passed: run the timers (resume grace, orphan timeout).
    Tick,
    /// The server is stopping: tell desktops and close every connection.
    Shutdown,
}

/// What the engine wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Send {
        conn: ConnId,
        env: Envelope,
    },
    /// Close the connection once what was sent before is written.
    Close {
        conn: ConnId,
    },
    /// A new access-audit entry, to be kept.
    Audit(AuditEntry),
}

/// Counters for `Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub agents: u64,
    pub dns: u64,
    pub calls: u64,
    pub records_live: u64,
    pub records_final: u64,
    pub records_final_in_memory: u64,
    pub connections: u64,
    pub ignored_events: u64,
    pub audit_last_seq: u64,
}

/// The state machine. See the module documentation.
#[derive(Clone)]
pub struct Engine {
    cfg: EngineConfig,
    rng: StdRng,
    started_ms: u64,
    /// How the last start went, for `Status`.
    startup: Startup,
    conns: JMap<ConnId, ConnState>,
    switches: JSet<ConnId>,
    dialers: JSet<ConnId>,
    agents: JMap<AgentId, Agent>,
    /// DN -> agent logged in on it. Exactly the monitored DNs.
    dn_agent: JMap<Dn, AgentId>,
    /// The keys of `dn_agent`, sorted: the `Monitor` list, kept ready since every login and
    /// logout sends it.
    monitored: Vec<Dn>,
    calls: JMap<CallId, Call>,
    /// (DN, call) for each live call with a party on the DN, sorted by DN so that one DN's calls
    /// are one range ([`Engine::calls_on`]); pairs, so that the undo journal notes only the pair
    /// a change adds or removes, however many calls the DN is on.
    dn_calls: JSet<(Dn, CallId)>,
    /// Effective ANI (the call's, or its record's phone) -> calls, for linking consultations.
    ani_calls: JMap<String, BTreeSet<CallId>>,
    records: JMap<RecordId, Record>,
    /// Call -> the live record attached to it.
    call_record: JMap<CallId, RecordId>,
    /// (agent, record) for each record an agent holds with `full` or `read_only`, sorted by agent
    /// so that one agent's records are one range ([`Engine::held_by`]). Pairs rather than a set
    /// per agent, so that the undo journal notes the one pair a change adds or removes, not the
    /// whole set of an agent who holds many.
    agent_records: JSet<(AgentId, RecordId)>,
    /// Revocations an agent's desktop may not have heard of (frames sent just before a drop may
    /// never have arrived), replayed as `revoked` on resume: by (agent, record), and by (agent,
    /// when, record) so that one agent's are found, oldest first, without looking at the
    /// others'. Kept apart from the agent so that the undo journal notes the one entry a change
    /// adds or removes, not every recent revocation of a busy agent.
    lost: JMap<(AgentId, RecordId), Lost>,
    lost_order: JSet<(AgentId, u64, RecordId)>,
    grace_deadlines: JSet<(u64, AgentId)>,
    orphan_deadlines: JSet<(u64, RecordId)>,
    audit_seq: u64,
    ignored_events: u64,
    /// Records with a final outcome, kept as they change so that `Status` need not walk them all.
    finals: u64,
    /// What changed since the last [`Engine::take_writes`], for the store.
    dirty_records: BTreeSet<RecordId>,
    dirty_agents: BTreeSet<AgentId>,
    pending_audit: Vec<AuditEntry>,
    /// Entries of the store's final-record index to delete, with whether the record goes too
    /// (see [`Engine::purge_final`]).
    purged: Vec<(u64, RecordId, bool)>,
    /// Agents waiting for a smart logout to complete.
    pending_logouts: JSet<AgentId>,
    /// The final records in memory, oldest first: they leave memory from the front, by age
    /// (`final_record_memory_ms`) and by number (`max_final_records_in_memory`). A request that
    /// names one that left has it read back by the shell first ([`Engine::record_to_load`]).
    final_queue: JSet<(u64, RecordId)>,
    /// (deadline, call): when each call is next checked for silence (`call_idle_timeout_ms`).
    call_deadlines: JSet<(u64, CallId)>,
    call_order: u64,
    /// While `Some`, `Monitor` broadcasts are held back (and whether one is due): see
    /// [`Engine::with_one_monitor`].
    monitor_held: Option<bool>,
    now_ms: u64,
    /// `now_ms` formatted as RFC 3339, for the audit entries and outcomes of inputs at the same
    /// millisecond (formatting costs more than the rest of an audit entry).
    stamp: (u64, String),
    /// Counters as they were when the open batch began (see [`Engine::begin`]).
    batch_start: Option<Counters>,
}

/// The engine's counters, saved when a batch begins so that a rollback can put them back.
#[derive(Debug, Clone, Copy)]
struct Counters {
    audit_seq: u64,
    ignored_events: u64,
    finals: u64,
    call_order: u64,
}

impl Engine {
    /// A new, empty engine. `seed` feeds the generator of session tokens; the shell passes OS
    /// randomness, tests a fixed seed to stay deterministic.
    pub fn new(cfg: EngineConfig, seed: [u8; 32], now_ms: u64) -> Engine {
        Engine {
            cfg,
            rng: StdRng::from_seed(seed),
            started_ms: now_ms,
            startup: Startup::default(),
            conns: JMap::default(),
            switches: JSet::default(),
            dialers: JSet::default(),
            agents: JMap::default(),
            lost: JMap::default(),
            lost_order: JSet::default(),
            dn_agent: JMap::default(),
            monitored: Vec::new(),
            calls: JMap::default(),
            dn_calls: JSet::default(),
            ani_calls: JMap::default(),
            records: JMap::default(),
            call_record: JMap::default(),
            agent_records: JSet::default(),
            grace_deadlines: JSet::default(),
            orphan_deadlines: JSet::default(),
            audit_seq: 0,
            ignored_events: 0,
            finals: 0,
            dirty_records: BTreeSet::new(),
            dirty_agents: BTreeSet::new(),
            pending_audit: Vec::new(),
            purged: Vec::new(),
            pending_logouts: JSet::default(),
            final_queue: JSet::default(),
            call_deadlines: JSet::default(),
            call_order: 0,
            monitor_held: None,
            now_ms,
            stamp: (now_ms, rfc3339(now_ms)),
            batch_start: None,
        }
    }

    /// Applies one input at time `now_ms` (milliseconds since the Unix epoch), appending what must
    /// be done to `out`.
    pub fn handle(&mut self, now_ms: u64, input: Input, out: &mut Vec<Output>) {
        // Time never goes backwards inside the engine, even if the wall clock does.
        self.now_ms = self.now_ms.max(now_ms);
        // Deadlines that passed since the last tick take effect before anything else is decided:
        // an expired session must not resume, an orphan past its time must not be taken.
        if !matches!(input, Input::Tick) {
            self.on_tick(out);
        }
        match input {
            Input::Connected { conn, role } => self.on_connected(conn, role, out),
            Input::Request {
                conn,
                r#ref,
                request,
            } => self.on_request(conn, r#ref, request, out),
            Input::Disconnected { conn } => self.on_disconnected(conn),
            Input::Tick => {
                self.on_tick(out);
                self.evict_finals();
            }
            Input::Shutdown => self.on_shutdown(out),
        }
        self.finish_pending_logouts(out);
    }

    /// Counts for `Status` (and for tests).
    /// The calls `dn` is on, in order.
    fn calls_on<'a>(&'a self, dn: &'a Dn) -> impl Iterator<Item = &'a CallId> {
        let from = (dn.clone(), CallId::from(""));
        self.dn_calls
            .range(from..)
            .take_while(move |(d, _)| d == dn)
            .map(|(_, c)| c)
    }

    /// The records `agent` holds with `full` or `read_only`, in order.
    fn held_by<'a>(&'a self, agent: &'a AgentId) -> impl Iterator<Item = &'a RecordId> {
        let from = (agent.clone(), RecordId::from(""));
        self.agent_records
            .range(from..)
            .take_while(move |(a, _)| a == agent)
            .map(|(_, r)| r)
    }

    /// Records how the server's start went, for `Status` to report.
    pub fn set_startup(&mut self, startup: Startup) {
        self.startup = startup;
    }

    pub fn counts(&self) -> Counts {
        let resident_finals = self.final_queue.len() as u64;
        Counts {
            agents: self.agents.len() as u64,
            dns: self.dn_agent.len() as u64,
            calls: self.calls.len() as u64,
            records_live: self.records.len() as u64 - resident_finals,
            records_final: self.finals,
            records_final_in_memory: resident_finals,
            connections: self.conns.len() as u64,
            ignored_events: self.ignored_events,
            audit_last_seq: self.audit_seq,
        }
    }

    /// Logged-in agents by presence: desktop connected, away (within the resume grace), and of
    /// either those who asked to log out while holding records. Walks every agent: for a metrics
    /// scrape, not for each request.
    pub fn agent_presence(&self) -> (u64, u64, u64) {
        let (mut connected, mut away, mut pending) = (0, 0, 0);
        for a in self.agents.values() {
            match a.away_since_ms {
                Some(_) => away += 1,
                None => connected += 1,
            }
            pending += u64::from(a.logout_pending);
        }
        (connected, away, pending)
    }

    /// The DNs the telephony link must monitor, sorted.
    pub fn monitored_dns(&self) -> Vec<String> {
        assert_eq!(self.monitored.len(), self.dn_agent.len());
        self.monitored.iter().map(String::from).collect()
    }

    /// Whether the server tracks `call` (for tests: the model test keeps its own picture of the
    /// switch's calls and forgets those the engine merged or dropped).
    pub fn tracks_call(&self, call: &str) -> bool {
        self.calls.contains_key(call)
    }

    /// Whether `record` is in memory (every live record is; a final one for a while).
    pub fn is_in_memory(&self, record: &str) -> bool {
        self.records.contains_key(record)
    }

    /// The access `agent` has to `record`, if it ever held it (for a record in memory).
    pub fn access_of(&self, record: &str, agent: &str) -> Option<Access> {
        self.records.get(record)?.holders.get(agent).copied()
    }

    /// The final outcome of `record`, if it has one (for a record in memory).
    pub fn final_of(&self, record: &str) -> Option<FinalInfo> {
        self.records.get(record)?.final_.clone()
    }

    /// Opens a batch: from here until [`Engine::commit`] or [`Engine::rollback`], every change is
    /// journaled so that it can be undone. The shell opens one per group commit; without one
    /// (tools, benchmarks) nothing is journaled.
    pub fn begin(&mut self) {
        assert!(self.batch_start.is_none(), "a batch is already open");
        self.batch_start = Some(Counters {
            audit_seq: self.audit_seq,
            ignored_events: self.ignored_events,
            finals: self.finals,
            call_order: self.call_order,
        });
        self.conns.begin();
        self.switches.begin();
        self.dialers.begin();
        self.agents.begin();
        self.dn_agent.begin();
        self.calls.begin();
        self.dn_calls.begin();
        self.ani_calls.begin();
        self.records.begin();
        self.call_record.begin();
        self.agent_records.begin();
        self.lost.begin();
        self.lost_order.begin();
        self.grace_deadlines.begin();
        self.orphan_deadlines.begin();
        self.pending_logouts.begin();
        self.final_queue.begin();
        self.call_deadlines.begin();
    }

    /// The batch's writes are durable: keep everything it did.
    pub fn commit(&mut self) {
        assert!(self.batch_start.take().is_some(), "no batch is open");
        self.conns.commit();
        self.switches.commit();
        self.dialers.commit();
        self.agents.commit();
        self.dn_agent.commit();
        self.calls.commit();
        self.dn_calls.commit();
        self.ani_calls.commit();
        self.records.commit();
        self.call_record.commit();
        self.agent_records.commit();
        self.lost.commit();
        self.lost_order.commit();
        self.grace_deadlines.commit();
        self.orphan_deadlines.commit();
        self.pending_logouts.commit();
        self.final_queue.commit();
        self.call_deadlines.commit();
    }

    /// The batch's writes were refused (the disk failed): undo everything it did, so that the
    /// engine is exactly as before [`Engine::begin`] (time, which only moves forward, and the
    /// session-token generator, whose tokens nobody received, excepted). Nothing the batch
    /// produced may be sent; connection changes it contained are facts and must be applied again
    /// with [`Engine::reapply_fact`].
    pub fn rollback(&mut self) {
        let saved = self.batch_start.take().expect("no batch is open");
        self.audit_seq = saved.audit_seq;
        self.ignored_events = saved.ignored_events;
        self.finals = saved.finals;
        self.call_order = saved.call_order;
        self.conns.rollback();
        self.switches.rollback();
        self.dialers.rollback();
        self.agents.rollback();
        if self.dn_agent.rollback() {
            self.monitored = self.dn_agent.keys().cloned().collect();
            self.monitored.sort();
        }
        self.calls.rollback();
        self.dn_calls.rollback();
        self.ani_calls.rollback();
        self.records.rollback();
        self.call_record.rollback();
        self.agent_records.rollback();
        self.lost.rollback();
        self.lost_order.rollback();
        self.grace_deadlines.rollback();
        self.orphan_deadlines.rollback();
        self.pending_logouts.rollback();
        self.final_queue.rollback();
        self.call_deadlines.rollback();
        self.dirty_records.clear();
        self.dirty_agents.clear();
        self.pending_audit.clear();
        self.purged.clear();
    }

    /// Applies again, after a rollback, an input that is a fact rather than a request: a
    /// connection that opened or closed, or the server stopping. These happened whatever the
    /// disk did, write nothing, and must not be undone (a closed connection cannot be reopened).
    /// Requests and ticks are not facts: a request was refused, a tick comes again.
    pub fn reapply_fact(&mut self, now_ms: u64, input: Input, out: &mut Vec<Output>) {
        self.now_ms = self.now_ms.max(now_ms);
        match input {
            Input::Connected { conn, role } => self.on_connected(conn, role, out),
            Input::Disconnected { conn } => self.on_disconnected(conn),
            Input::Shutdown => self.on_shutdown(out),
            Input::Request { .. } | Input::Tick => {}
        }
        assert!(
            self.dirty_records.is_empty()
                && self.dirty_agents.is_empty()
                && self.pending_audit.is_empty(),
            "a fact writes nothing"
        );
    }

    /// Whether `input` is a fact (see [`Engine::reapply_fact`]).
    pub fn is_fact(input: &Input) -> bool {
        matches!(
            input,
            Input::Connected { .. } | Input::Disconnected { .. } | Input::Shutdown
        )
    }

    /// Everything the engine holds, as sorted text: two engines with the same dump are in the
    /// same state. For tests (the model test compares the state before a refused batch with
    /// the state after its rollback).
    pub fn dump(&self) -> String {
        use std::fmt::Write;
        fn sorted<K: Ord + std::fmt::Debug, V: std::fmt::Debug>(
            m: &FastMap<K, V>,
        ) -> BTreeMap<&K, &V> {
            m.iter().collect()
        }
        let mut d = String::new();
        let _ = writeln!(d, "conns {:?}", sorted(&self.conns));
        let _ = writeln!(
            d,
            "switches {:?} dialers {:?}",
            *self.switches, *self.dialers
        );
        let _ = writeln!(d, "agents {:?}", sorted(&self.agents));
        let _ = writeln!(
            d,
            "dn_agent {:?} monitored {:?}",
            sorted(&self.dn_agent),
            self.monitored
        );
        let _ = writeln!(d, "calls {:?}", sorted(&self.calls));
        let _ = writeln!(d, "dn_calls {:?}", *self.dn_calls);
        let _ = writeln!(d, "ani_calls {:?}", sorted(&self.ani_calls));
        let _ = writeln!(d, "records {:?}", sorted(&self.records));
        let _ = writeln!(d, "call_record {:?}", sorted(&self.call_record));
        let _ = writeln!(d, "agent_records {:?}", *self.agent_records);
        let _ = writeln!(
            d,
            "grace {:?} orphan {:?} pending_logouts {:?}",
            *self.grace_deadlines, *self.orphan_deadlines, *self.pending_logouts
        );
        let _ = writeln!(
            d,
            "final_queue {:?} call_deadlines {:?} purged {:?}",
            *self.final_queue, *self.call_deadlines, self.purged
        );
        let _ = writeln!(
            d,
            "audit_seq {} ignored {} finals {} call_order {} dirty {:?} {:?} pending_audit {}",
            self.audit_seq,
            self.ignored_events,
            self.finals,
            self.call_order,
            self.dirty_records,
            self.dirty_agents,
            self.pending_audit.len()
        );
        d
    }

    fn on_request(
        &mut self,
        conn: ConnId,
        r#ref: Option<u64>,
        request: Request,
        out: &mut Vec<Output>,
    ) {
        let Some(state) = self.conns.get(&conn) else {
            return;
        };
        if let Some(role) = request.role() {
            // The shell checks roles too; this keeps the engine safe on its own.
            if role != state.role {
                Self::send(
                    out,
                    conn,
                    r#ref,
                    ServerMsg::error(
                        ErrorCode::WrongRole,
                        format!("`{}` is for role `{role}`", request.type_name()),
                    ),
                );
                return;
            }
        }
        match request {
            Request::Hello(_) => Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(ErrorCode::BadRequest, "Hello was already received"),
            ),
            Request::Ping => Self::send(out, conn, r#ref, ServerMsg::Pong),
            Request::Pong => {}
            Request::Login(l) => self.login(out, conn, r#ref, l),
            Request::Logout(l) => self.logout_request(out, conn, r#ref, l),
            Request::GetRecord(r) => self.get_record(out, conn, r#ref, r),
            Request::ChainedRecords(r) => self.chained_records(out, conn, r#ref, r),
            Request::UpdateRecord(c) => self.update_record(out, conn, r#ref, c),
            Request::RecordProcessed(c) => self.record_processed(out, conn, r#ref, c),
            Request::RecordReject(r) => self.record_reject(out, conn, r#ref, r),
            Request::RecordCancel(r) => self.record_cancel(out, conn, r#ref, r),
            Request::DoNotCall(d) => self.do_not_call(out, conn, r#ref, d),
            Request::Reschedule(s) => self.reschedule(out, conn, r#ref, s),
            Request::AttachRecord(a) => self.attach(out, conn, r#ref, a),
            Request::CancelRecord(c) => self.dialer_cancel(out, conn, r#ref, c),
            Request::Ringing(e) => {
                self.ringing(out, e);
                Self::send(out, conn, r#ref, ServerMsg::Ack);
            }
            Request::Established(e) => {
                self.established(out, e);
                Self::send(out, conn, r#ref, ServerMsg::Ack);
            }
            Request::Released(e) => {
                self.released(out, e);
                Self::send(out, conn, r#ref, ServerMsg::Ack);
            }
            Request::Transferred(e) => {
                self.transferred(out, e);
                Self::send(out, conn, r#ref, ServerMsg::Ack);
            }
            Request::Conferenced(e) => {
                self.conferenced(out, e);
                Self::send(out, conn, r#ref, ServerMsg::Ack);
            }
            Request::AgentLogin(e) => {
                self.phone_login(out, e);
                Self::send(out, conn, r#ref, ServerMsg::Ack);
            }
            Request::AgentLogout(e) => {
                self.phone_logout(out, e);
                Self::send(out, conn, r#ref, ServerMsg::Ack);
            }
            // Served by the shell from the store, so that a slow reader never slows the engine.
            Request::AuditTail(_) => Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(
                    ErrorCode::BadRequest,
                    "AuditTail is served by the server shell, not the engine",
                ),
            ),
            Request::Status => {
                let c = self.counts();
                Self::send(
                    out,
                    conn,
                    r#ref,
                    ServerMsg::StatusReport {
                        agents: c.agents,
                        dns: c.dns,
                        calls: c.calls,
                        records_live: c.records_live,
                        records_final: c.records_final,
                        records_final_in_memory: c.records_final_in_memory,
                        connections: c.connections,
                        ignored_events: c.ignored_events,
                        audit_last_seq: c.audit_last_seq,
                        uptime_s: self.now_ms.saturating_sub(self.started_ms) / 1000,
                        startup: self.startup,
                    },
                );
            }
            Request::RecordInfo(r) => self.record_info(out, conn, r#ref, r),
            Request::ReleaseRecord(r) => self.release_record(out, conn, r#ref, r),
            Request::Agents(p) => self.list_agents(out, conn, r#ref, p),
            Request::Calls(p) => self.list_calls(out, conn, r#ref, p),
        }
    }
}
