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

mod journal;

use crate::messages::*;
use crate::store::{Snapshot, Stored, WriteBatch};
use journal::{FastMap, JMap, JSet};
use rand::{rngs::StdRng, RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartyState {
    /// Ringing on this DN; it may never answer.
    Alerting,
    /// This DN placed the call (`Ringing.from_dn`) and is on it, dialing. It is on the call as
    /// far as leaving it goes (its `Released` ends a consultation, rule 5), and its desktop sees
    /// the call as established; but it answered nothing, so it gains no access by being here.
    Dialing,
    /// Answered (or joined by transfer or conference).
    Established,
}

impl PartyState {
    /// What the DN's desktop has been told: a dialing caller sees its call as established.
    fn shown_established(state: Option<PartyState>) -> bool {
        matches!(state, Some(PartyState::Established | PartyState::Dialing))
    }
}

/// The DNs on a call and their state, sorted by DN. A call has a handful, so a sorted vector
/// beats a tree: one small allocation, and lookups that stay within a cache line or two.
#[derive(Debug, Clone, Default)]
struct Parties(Vec<(String, PartyState)>);

impl Parties {
    fn position(&self, dn: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(d, _)| d.as_str().cmp(dn))
    }
    fn get(&self, dn: &str) -> Option<PartyState> {
        self.position(dn).ok().map(|i| self.0[i].1)
    }
    fn contains_key(&self, dn: &str) -> bool {
        self.position(dn).is_ok()
    }
    /// Adds `dn` as `state` if it is not a party yet; `Established` also upgrades one alerting
    /// or dialing.
    fn add(&mut self, dn: &str, state: PartyState) {
        match self.position(dn) {
            Ok(i) => {
                if state == PartyState::Established {
                    self.0[i].1 = PartyState::Established;
                }
            }
            Err(i) => self.0.insert(i, (dn.to_owned(), state)),
        }
    }
    fn remove(&mut self, dn: &str) -> Option<PartyState> {
        self.position(dn).ok().map(|i| self.0.remove(i).1)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The DNs, in order.
    fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(d, _)| d)
    }
    /// The DNs that answered, in order.
    fn established(&self) -> impl Iterator<Item = &String> {
        self.0
            .iter()
            .filter(|(_, p)| *p == PartyState::Established)
            .map(|(d, _)| d)
    }
}

/// A sorted set of call ids: the calls on one DN, rarely more than two or three. Unlike a tree
/// set it keeps its buffer when emptied, so a DN's next call needs no allocation for it.
#[derive(Debug, Clone, Default)]
struct CallSet(Vec<String>);

impl CallSet {
    fn position(&self, call: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|c| c.as_str().cmp(call))
    }
    fn insert(&mut self, call: &str) {
        if let Err(i) = self.position(call) {
            self.0.insert(i, call.to_owned());
        }
    }
    fn remove(&mut self, call: &str) {
        if let Ok(i) = self.position(call) {
            self.0.remove(i);
        }
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The calls, in order.
    fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }
}

#[derive(Debug, Clone)]
struct Call {
    parties: Parties,
    ani: Option<String>,
    /// The keys of `ani_calls` this call is filed under, so that ending it touches only those.
    ani_keys: Vec<String>,
    /// The call this one is a consultation of.
    consult_of: Option<String>,
    /// The DN that placed the call (`Ringing.from_dn`), if the switch said.
    caller: Option<String>,
    /// Set once a consultation has ended (released, transferred or conferenced): it grants nothing more.
    consult_over: bool,
    /// Creation order, to prefer the most recent call when linking by ANI.
    order: u64,
    /// When the switch last sent an event about this call.
    last_event_ms: u64,
    /// The entry of `call_deadlines` filed for this call.
    idle_deadline_ms: u64,
}

#[derive(Debug, Clone)]
struct Agent {
    dn: String,
    conn: Option<ConnId>,
    session: String,
    /// When the desktop dropped; `None` while connected.
    away_since: Option<u64>,
    logout_pending: bool,
    /// Records revoked recently (record -> access before, when, the record's call), replayed as
    /// `revoked` on resume. Kept while connected too: frames sent just before a drop may never
    /// have arrived. The call is kept here because the record may have left memory by then.
    lost_while_away: BTreeMap<String, Lost>,
}

/// A revocation the desktop may not have heard of: the access it had, when, the record's call.
#[derive(Debug, Clone)]
struct Lost {
    previous: Access,
    at_ms: u64,
    call: String,
}

impl Agent {
    /// Remembers a revocation for a possible resume, forgetting ones too old to matter.
    fn note_lost(&mut self, record: &str, previous: Access, call: &str, now: u64, window: u64) {
        self.lost_while_away.insert(
            record.to_owned(),
            Lost {
                previous,
                at_ms: now,
                call: call.to_owned(),
            },
        );
        if self.conn.is_some() && self.lost_while_away.len() > 64 {
            let cutoff = now.saturating_sub(window);
            self.lost_while_away.retain(|_, lost| lost.at_ms >= cutoff);
        }
    }
}

/// A record as it is kept, in memory and on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    call: String,
    campaign: String,
    chain_n: u32,
    phone: Option<String>,
    data: Object,
    chain: Vec<ChainEntry>,
    context: Context,
    version: u64,
    final_: Option<FinalInfo>,
    holders: BTreeMap<String, Access>,
    orphaned_since: Option<u64>,
    /// For a final record in memory: since when, its key in `final_queue` (not stored).
    #[serde(skip)]
    resident_since_ms: u64,
}

impl Record {
    fn has_live_holder(&self) -> bool {
        self.holders.values().any(|a| a.is_granted())
    }
    fn live_holders(&self) -> Vec<Holder> {
        self.holders
            .iter()
            .filter(|(_, a)| a.is_granted())
            .map(|(agent, access)| Holder {
                agent: agent.clone(),
                access: *access,
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
struct ConnState {
    role: Role,
    agent: Option<String>,
}

/// A logged-in agent as it is kept on disk, so that its desktop can resume after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AgentState {
    dn: String,
    session: String,
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
    conns: JMap<ConnId, ConnState>,
    switches: JSet<ConnId>,
    dialers: JSet<ConnId>,
    agents: JMap<String, Agent>,
    /// DN -> agent logged in on it. Exactly the monitored DNs.
    dn_agent: JMap<String, String>,
    /// The keys of `dn_agent`, sorted: the `Monitor` list, kept ready since every login and
    /// logout sends it.
    monitored: Vec<String>,
    calls: JMap<String, Call>,
    /// DN -> live calls with a party on it. A monitored DN keeps its entry while it has no call,
    /// so that calls coming and going do not allocate the key over and over; other DNs lose it.
    dn_calls: JMap<String, CallSet>,
    /// Effective ANI (the call's, or its record's phone) -> calls, for linking consultations.
    ani_calls: JMap<String, BTreeSet<String>>,
    records: JMap<String, Record>,
    /// Call -> the live record attached to it.
    call_record: JMap<String, String>,
    /// Agent -> records it holds with `full` or `read_only`.
    agent_records: JMap<String, BTreeSet<String>>,
    grace_deadlines: JSet<(u64, String)>,
    orphan_deadlines: JSet<(u64, String)>,
    audit_seq: u64,
    ignored_events: u64,
    /// Records with a final outcome, kept as they change so that `Status` need not walk them all.
    finals: u64,
    /// What changed since the last [`Engine::take_writes`], for the store.
    dirty_records: BTreeSet<String>,
    dirty_agents: BTreeSet<String>,
    pending_audit: Vec<AuditEntry>,
    /// Entries of the store's final-record index to delete, with whether the record goes too
    /// (see [`Engine::purge_final`]).
    purged: Vec<(u64, String, bool)>,
    /// Agents waiting for a smart logout to complete.
    pending_logouts: JSet<String>,
    /// The final records in memory, oldest first: they leave memory from the front, by age
    /// (`final_record_memory_ms`) and by number (`max_final_records_in_memory`). A request that
    /// names one that left has it read back by the shell first ([`Engine::record_to_load`]).
    final_queue: JSet<(u64, String)>,
    /// (deadline, call): when each call is next checked for silence (`call_idle_timeout_ms`).
    call_deadlines: JSet<(u64, String)>,
    call_order: u64,
    now: u64,
    /// `now` formatted as RFC 3339, for the audit entries and outcomes of inputs at the same
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
            conns: JMap::default(),
            switches: JSet::default(),
            dialers: JSet::default(),
            agents: JMap::default(),
            dn_agent: JMap::default(),
            monitored: Vec::new(),
            calls: JMap::default(),
            dn_calls: JMap::default(),
            ani_calls: JMap::default(),
            records: JMap::default(),
            call_record: JMap::default(),
            agent_records: JMap::default(),
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
            now: now_ms,
            stamp: (now_ms, rfc3339(now_ms)),
            batch_start: None,
        }
    }

    /// Applies one input at time `now_ms` (milliseconds since the Unix epoch), appending what must
    /// be done to `out`.
    pub fn handle(&mut self, now_ms: u64, input: Input, out: &mut Vec<Output>) {
        // Time never goes backwards inside the engine, even if the wall clock does.
        self.now = self.now.max(now_ms);
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

    /// The DNs the telephony link must monitor, sorted.
    pub fn monitored_dns(&self) -> Vec<String> {
        debug_assert_eq!(self.monitored.len(), self.dn_agent.len());
        self.monitored.clone()
    }

    /// The record `input` names, if that record is not in memory: a final record that left
    /// memory (a live one never does), or one that never existed. The shell reads it from the
    /// store and hands it to [`Engine::admit`] just before applying the input, so that every
    /// answer is what it would have been had the record stayed.
    pub fn record_to_load<'a>(&self, input: &'a Input) -> Option<&'a str> {
        let Input::Request { request, .. } = input else {
            return None;
        };
        let id = match request {
            Request::GetRecord(r)
            | Request::ChainedRecords(r)
            | Request::RecordReject(r)
            | Request::RecordCancel(r)
            | Request::CancelRecord(r)
            | Request::RecordInfo(r) => &r.record,
            Request::UpdateRecord(c) | Request::RecordProcessed(c) => &c.record,
            Request::DoNotCall(d) => &d.record,
            Request::Reschedule(r) => &r.record,
            Request::ReleaseRecord(r) => &r.record,
            Request::AttachRecord(a) => &a.record,
            _ => return None,
        };
        (!self.records.contains_key(id.as_str())).then_some(id.as_str())
    }

    /// Retention (`final_record_retention_ms`): the store's index says `id` became final at
    /// `at_ms`, long enough ago. If that is still so, the record is deleted (from memory too),
    /// and no longer counted; requests naming it later get `no_such_record`, as for a record never
    /// attached. If the record is live again (attached anew) or became final again later, only
    /// the stale index entry goes. `stored_final_ms` is the final time of the record as stored,
    /// read by the shell, for a record not in memory. The deletions go to the store with the next
    /// [`Engine::take_writes`].
    pub fn purge_final(&mut self, at_ms: u64, id: &str, stored_final_ms: Option<u64>) {
        let same = match self.records.get(id) {
            Some(rec) => rec.final_.as_ref().and_then(|f| parse_rfc3339(&f.at)) == Some(at_ms),
            None => stored_final_ms == Some(at_ms),
        };
        if same {
            assert!(
                !self.dirty_records.contains(id),
                "a record is never purged in the batch that changed it"
            );
            if let Some(rec) = self.records.remove(id) {
                let filed = self
                    .final_queue
                    .remove(&(rec.resident_since_ms, id.to_owned()));
                assert!(filed, "a final record in memory is in the final queue");
            }
            self.finals -= 1;
        }
        self.purged.push((at_ms, id.to_owned(), same));
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

    /// Puts back in memory a final record read from the store (see [`Engine::record_to_load`]).
    /// It stays `final_record_memory_ms` from now, like one that just became final.
    pub fn admit(&mut self, id: &str, stored: &[u8]) -> Result<(), String> {
        if self.records.contains_key(id) {
            return Ok(());
        }
        let mut rec: Record = serde_json::from_slice(stored)
            .map_err(|e| format!("record {id} cannot be read back: {e}"))?;
        if rec.final_.is_none() {
            return Err(format!(
                "record {id} is live in the store but not in memory; live records never leave memory"
            ));
        }
        rec.resident_since_ms = self.now;
        self.final_queue.insert((self.now, id.to_owned()));
        self.records.insert(id.to_owned(), rec);
        Ok(())
    }

    /// The access `agent` has to `record`, if it ever held it (for a record in memory).
    pub fn access_of(&self, record: &str, agent: &str) -> Option<Access> {
        self.records.get(record)?.holders.get(agent).copied()
    }

    /// The final outcome of `record`, if it has one (for a record in memory).
    pub fn final_of(&self, record: &str) -> Option<FinalInfo> {
        self.records.get(record)?.final_.clone()
    }

    /// What changed since the last call, serialized for the store: records and agents to write
    /// (or delete) and the new audit entries. The shell commits this before sending any output.
    pub fn take_writes(&mut self) -> WriteBatch {
        let mut batch = WriteBatch::default();
        for id in std::mem::take(&mut self.dirty_records) {
            // Records are never deleted, and one with unwritten changes never leaves memory.
            let Some(rec) = self.records.get(&id) else {
                panic!("record {id} changed but is not in memory");
            };
            let value = serde_json::to_vec(rec).expect("records serialize");
            if let Some(at) = rec.final_.as_ref().and_then(|f| parse_rfc3339(&f.at)) {
                // Filed by the time it became final, for retention (written again if the record
                // is, which changes nothing).
                batch.finals_add.push((at, id.clone()));
            }
            batch.records.push((id, Some(value)));
        }
        for (at, id, with_record) in std::mem::take(&mut self.purged) {
            if with_record {
                batch.records.push((id.clone(), None));
            }
            batch.finals_remove.push((at, id));
        }
        for id in std::mem::take(&mut self.dirty_agents) {
            let value = self.agents.get(&id).map(|a| {
                let state = AgentState {
                    dn: a.dn.clone(),
                    session: a.session.clone(),
                };
                serde_json::to_vec(&state).expect("agents serialize")
            });
            batch.agents.push((id, value));
        }
        for entry in std::mem::take(&mut self.pending_audit) {
            let bytes = serde_json::to_vec(&entry).expect("audit entries serialize");
            batch.audit.push((entry.seq, bytes));
        }
        batch
    }

    /// Replaces records, agents and the audit position with what the store holds, at start
    /// (a refused batch is taken back with [`Engine::rollback`], never by reloading). Final
    /// records are only counted: they are read back when a request names one.
    /// Agents come back away (their desktops may resume within `resume_grace_ms` of `now_ms`).
    pub fn restore(&mut self, snapshot: Snapshot, now_ms: u64) -> Result<(), String> {
        self.now = self.now.max(now_ms);
        // Final records stay on disk: requests that name one read it back (`record_to_load`).
        let records = parse_records(snapshot.records)?;
        if let Some((id, _)) = records.iter().find(|(_, r)| r.final_.is_some()) {
            return Err(format!("record {id} was loaded as live but is final"));
        }
        let finals = snapshot.records_final;
        let mut agents = Vec::with_capacity(snapshot.agents.len());
        for (id, bytes) in snapshot.agents {
            let a: AgentState = serde_json::from_slice(&bytes)
                .map_err(|e| format!("agent {id} cannot be read back: {e}"))?;
            agents.push((id, a));
        }
        self.records.replace_all(records);
        self.finals = finals;
        self.final_queue.clear();
        self.call_record.replace_all(FastMap::default());
        self.agent_records.replace_all(FastMap::default());
        self.orphan_deadlines.clear();
        for (id, rec) in self.records.iter() {
            if rec.final_.is_none() {
                self.call_record.insert(rec.call.clone(), id.clone());
                if let Some(t) = rec.orphaned_since {
                    self.orphan_deadlines
                        .insert((t + self.cfg.orphan_timeout_ms, id.clone()));
                }
            }
            for (agent, access) in &rec.holders {
                if access.is_granted() {
                    self.agent_records
                        .get_or_default(agent.as_str())
                        .insert(id.clone());
                }
            }
        }
        let bound: HashMap<String, ConnId> = self
            .conns
            .iter()
            .filter_map(|(c, s)| s.agent.clone().map(|a| (a, *c)))
            .collect();
        self.agents.replace_all(FastMap::default());
        self.dn_agent.replace_all(FastMap::default());
        self.monitored.clear();
        self.grace_deadlines.clear();
        for (id, a) in agents {
            let conn = bound.get(&id).copied();
            let away_since = if conn.is_some() { None } else { Some(self.now) };
            if conn.is_none() {
                self.grace_deadlines
                    .insert((self.now + self.cfg.resume_grace_ms, id.clone()));
            }
            self.monitor_dn(&a.dn, &id);
            self.agents.insert(
                id,
                Agent {
                    dn: a.dn,
                    conn,
                    session: a.session,
                    away_since,
                    logout_pending: false,
                    lost_while_away: BTreeMap::new(),
                },
            );
        }
        let dn_agent = &self.dn_agent;
        self.dn_calls
            .retain(|dn, calls| !calls.is_empty() || dn_agent.contains_key(dn));
        let unbound: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, s)| {
                s.agent
                    .as_ref()
                    .is_some_and(|a| !self.agents.contains_key(a))
            })
            .map(|(c, _)| *c)
            .collect();
        for conn in unbound {
            if let Some(state) = self.conns.get_mut(&conn) {
                state.agent = None;
            }
        }
        self.audit_seq = snapshot.audit_last_seq;
        self.dirty_records.clear();
        self.dirty_agents.clear();
        self.pending_audit.clear();
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Batches: all or nothing
    // -----------------------------------------------------------------------------------------

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
        self.now = self.now.max(now_ms);
        match input {
            Input::Connected { conn, role } => self.on_connected(conn, role, out),
            Input::Disconnected { conn } => self.on_disconnected(conn),
            Input::Shutdown => self.on_shutdown(out),
            Input::Request { .. } | Input::Tick => {}
        }
        debug_assert!(
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
        let _ = writeln!(d, "dn_calls {:?}", sorted(&self.dn_calls));
        let _ = writeln!(d, "ani_calls {:?}", sorted(&self.ani_calls));
        let _ = writeln!(d, "records {:?}", sorted(&self.records));
        let _ = writeln!(d, "call_record {:?}", sorted(&self.call_record));
        let _ = writeln!(d, "agent_records {:?}", sorted(&self.agent_records));
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

    /// How far back a revocation may have gone unheard: a connection can be dead for up to three
    /// heartbeats before the server notices, plus a second for frames still in flight.
    fn lost_window_ms(&self) -> u64 {
        self.cfg.heartbeat_ms.saturating_mul(3) + 1000
    }

    // -----------------------------------------------------------------------------------------
    // Small helpers
    // -----------------------------------------------------------------------------------------

    fn send(out: &mut Vec<Output>, conn: ConnId, r#ref: Option<u64>, msg: ServerMsg) {
        out.push(Output::Send {
            conn,
            env: Envelope { r#ref, msg },
        });
    }

    /// Pushes `msg` to the agent's desktop if it is connected; otherwise the resume replay covers it.
    fn push_agent(&self, out: &mut Vec<Output>, agent: &str, msg: ServerMsg) {
        if let Some(conn) = self.agents.get(agent).and_then(|a| a.conn) {
            Self::send(out, conn, None, msg);
        }
    }

    fn push_dn(&self, out: &mut Vec<Output>, dn: &str, msg: ServerMsg) {
        if let Some(conn) = self.conn_on_dn(dn) {
            Self::send(out, conn, None, msg);
        }
    }

    /// The connection of the desktop logged in on `dn`, if it is connected: pushes for the DN go
    /// there, and a push nobody would receive need not be built.
    fn conn_on_dn(&self, dn: &str) -> Option<ConnId> {
        self.agents.get(self.dn_agent.get(dn)?)?.conn
    }

    fn monitor_dn(&mut self, dn: &str, agent: &str) {
        if self
            .dn_agent
            .insert(dn.to_owned(), agent.to_owned())
            .is_none()
        {
            if let Err(i) = self.monitored.binary_search_by(|d| d.as_str().cmp(dn)) {
                self.monitored.insert(i, dn.to_owned());
            }
        }
    }

    fn unmonitor_dn(&mut self, dn: &str) {
        if self.dn_agent.remove(dn).is_some() {
            if let Ok(i) = self.monitored.binary_search_by(|d| d.as_str().cmp(dn)) {
                self.monitored.remove(i);
            }
            if self.dn_calls.get(dn).is_some_and(CallSet::is_empty) {
                self.dn_calls.remove(dn);
            }
        }
    }

    fn agent_on(&self, dn: &str) -> Option<String> {
        self.dn_agent.get(dn).cloned()
    }

    fn new_session_token(&mut self) -> String {
        let mut bytes = [0u8; 16];
        self.rng.fill_bytes(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `now` as RFC 3339.
    fn stamp(&mut self) -> String {
        if self.stamp.0 != self.now {
            self.stamp = (self.now, rfc3339(self.now));
        }
        self.stamp.1.clone()
    }

    /// Marks `record` to be written by the next [`Engine::take_writes`].
    fn mark_dirty(&mut self, record: &str) {
        if !self.dirty_records.contains(record) {
            self.dirty_records.insert(record.to_owned());
        }
    }

    fn audit(
        &mut self,
        out: &mut Vec<Output>,
        kind: AuditKind,
        fill: impl FnOnce(&mut AuditEntry),
    ) {
        self.audit_seq += 1;
        let mut entry = AuditEntry {
            seq: self.audit_seq,
            ts: self.stamp(),
            kind,
            record: None,
            agent: None,
            dn: None,
            call: None,
            access: None,
            previous: None,
            request: None,
            code: None,
            cause: None,
        };
        fill(&mut entry);
        self.pending_audit.push(entry.clone());
        out.push(Output::Audit(entry));
    }

    /// Pushes `msg` to each of `conns` in order, moving it to the last rather than copying it.
    fn send_all(out: &mut Vec<Output>, conns: &BTreeSet<ConnId>, msg: ServerMsg) {
        let Some(&last) = conns.last() else {
            return;
        };
        for &conn in conns.range(..last) {
            Self::send(out, conn, None, msg.clone());
        }
        Self::send(out, last, None, msg);
    }

    fn broadcast_monitor(&self, out: &mut Vec<Output>) {
        if self.switches.is_empty() {
            return;
        }
        let dns = self.monitored_dns();
        Self::send_all(out, &self.switches, ServerMsg::Monitor { dns });
    }

    fn tell_switches(&self, out: &mut Vec<Output>, msg: ServerMsg) {
        Self::send_all(out, &self.switches, msg);
    }

    /// The record a call carries, directly or (for a consultation) through the call it consults.
    fn record_of_call(&self, call: &str) -> Option<(String, bool)> {
        self.record_ref_of_call(call)
            .map(|(r, via_consult)| (r.to_owned(), via_consult))
    }

    fn record_ref_of_call(&self, call: &str) -> Option<(&str, bool)> {
        if let Some(r) = self.call_record.get(call) {
            return Some((r, false));
        }
        let c = self.calls.get(call)?;
        let original = c.consult_of.as_ref()?;
        self.call_record.get(original).map(|r| (r.as_str(), true))
    }

    // -----------------------------------------------------------------------------------------
    // Access: the one place it changes
    // -----------------------------------------------------------------------------------------

    /// Sets `agent`'s access to `record`, pushing `AccessChanged` (with data and context on a
    /// grant), auditing the change and keeping the orphan clock. No-op when nothing changes.
    fn set_access(
        &mut self,
        out: &mut Vec<Output>,
        record: &str,
        agent: &str,
        access: Access,
        cause: AccessCause,
    ) {
        let Some(rec) = self.records.get_mut(record) else {
            return;
        };
        let previous = rec.holders.get(agent).copied();
        if previous == Some(access) || (previous.is_none() && access == Access::Revoked) {
            return;
        }
        debug_assert!(
            rec.final_.is_none() || access == Access::Revoked,
            "a final record is never granted"
        );
        match rec.holders.get_mut(agent) {
            Some(held) => *held = access,
            None => {
                rec.holders.insert(agent.to_owned(), access);
            }
        }
        let had_live = previous.is_some_and(Access::is_granted);
        let call = rec.call.clone();
        // The desktop to tell, if it is connected: a grant carries data and context, worth
        // copying only for someone who will receive them.
        let desk = self.agents.get(agent).and_then(|a| a.conn);
        let (data, context) = if access.is_granted() && desk.is_some() {
            (Some(rec.data.clone()), Some(rec.context.clone()))
        } else {
            (None, None)
        };
        let now_orphan = rec.final_.is_none() && !rec.has_live_holder();
        let previous = previous.unwrap_or(Access::Revoked);
        if access.is_granted() {
            rec.orphaned_since = None;
            match self.agent_records.get_mut(agent) {
                Some(held) => {
                    if !held.contains(record) {
                        held.insert(record.to_owned());
                    }
                }
                None => {
                    self.agent_records
                        .insert(agent.to_owned(), BTreeSet::from([record.to_owned()]));
                }
            }
        } else if let Some(set) = self.agent_records.get_mut(agent) {
            set.remove(record);
            if set.is_empty() {
                self.agent_records.remove(agent);
            }
        }
        self.mark_dirty(record);
        let now = self.now;
        let window = self.lost_window_ms();
        if let Some(a) = self.agents.get_mut(agent) {
            if access == Access::Revoked {
                a.note_lost(record, previous, &call, now, window);
            } else {
                a.lost_while_away.remove(record);
            }
        }
        if let Some(conn) = desk {
            let msg = ServerMsg::AccessChanged {
                record: record.to_owned(),
                access,
                previous,
                cause,
                call: Some(call.clone()),
                data,
                context,
            };
            Self::send(out, conn, None, msg);
        }
        let kind = if access > previous {
            AuditKind::Granted
        } else if access == Access::Revoked {
            AuditKind::Revoked
        } else {
            AuditKind::Downgraded
        };
        let dn = self.agents.get(agent).map(|a| a.dn.clone());
        self.audit(out, kind, |e| {
            e.record = Some(record.to_owned());
            e.agent = Some(agent.to_owned());
            e.dn = dn;
            e.call = Some(call.clone());
            e.access = Some(access);
            e.previous = Some(previous);
            e.cause = Some(cause.as_str().to_owned());
        });
        if had_live && now_orphan {
            self.orphan(out, record, &call);
        }
    }

    fn orphan(&mut self, out: &mut Vec<Output>, record: &str, call: &str) {
        let now = self.now;
        let Some(rec) = self.records.get_mut(record) else {
            return;
        };
        if rec.final_.is_some() || rec.has_live_holder() || rec.orphaned_since.is_some() {
            return;
        }
        rec.orphaned_since = Some(now);
        self.mark_dirty(record);
        self.orphan_deadlines
            .insert((now + self.cfg.orphan_timeout_ms, record.to_owned()));
        let call = call.to_owned();
        self.audit(out, AuditKind::Orphaned, |e| {
            e.record = Some(record.to_owned());
            e.call = Some(call);
        });
    }

    /// Makes the record final: every holder is revoked (told by `RecordFinalized`, except
    /// `requester`, who gets the ack instead), and every dialer learns the outcome.
    fn finalize(
        &mut self,
        out: &mut Vec<Output>,
        record: &str,
        outcome: Outcome,
        by: Option<String>,
        requester: Option<&str>,
        extra: FinalExtra,
    ) {
        let now = self.now;
        let at = self.stamp();
        let Some(rec) = self.records.get_mut(record) else {
            return;
        };
        assert!(rec.final_.is_none(), "one final outcome per record");
        self.finals += 1;
        rec.final_ = Some(FinalInfo {
            outcome,
            by: by.clone(),
            at: at.clone(),
        });
        rec.orphaned_since = None;
        rec.resident_since_ms = now;
        self.final_queue.insert((now, record.to_owned()));
        let call = rec.call.clone();
        // Only the dialers are told the outcome with the context; without one it is not copied.
        let context = if self.dialers.is_empty() {
            Context::default()
        } else {
            rec.context.clone()
        };
        let holders: Vec<(String, Access)> = rec
            .holders
            .iter()
            .filter(|(_, a)| a.is_granted())
            .map(|(h, a)| (h.clone(), *a))
            .collect();
        for access in rec.holders.values_mut() {
            if access.is_granted() {
                *access = Access::Revoked;
            }
        }
        self.mark_dirty(record);
        if self.call_record.get(&call).map(String::as_str) == Some(record) {
            self.call_record.remove(&call);
        }
        let by_name = by.clone().unwrap_or_else(|| "server".to_owned());
        let request = extra.request.clone();
        self.audit(out, AuditKind::Finalized, |e| {
            e.record = Some(record.to_owned());
            e.agent = by.clone();
            e.request = request;
            e.call = Some(call.clone());
            e.cause = Some(outcome.as_str().to_owned());
        });
        for (h, previous) in holders {
            if let Some(set) = self.agent_records.get_mut(&h) {
                set.remove(record);
                if set.is_empty() {
                    self.agent_records.remove(&h);
                }
            }
            let window = self.lost_window_ms();
            if let Some(a) = self.agents.get_mut(&h) {
                a.note_lost(record, previous, &call, now, window);
            }
            if requester != Some(h.as_str()) {
                self.push_agent(
                    out,
                    &h,
                    ServerMsg::RecordFinalized {
                        record: record.to_owned(),
                        by: by_name.clone(),
                        outcome,
                    },
                );
            }
            let dn = self.agents.get(&h).map(|a| a.dn.clone());
            self.audit(out, AuditKind::Revoked, |e| {
                e.record = Some(record.to_owned());
                e.agent = Some(h.clone());
                e.dn = dn;
                e.call = Some(call.clone());
                e.access = Some(Access::Revoked);
                e.previous = Some(previous);
                e.cause = Some(outcome.as_str().to_owned());
            });
        }
        let msg = ServerMsg::RecordOutcome {
            record: record.to_owned(),
            outcome,
            call_result: context.call_result,
            fields: (!context.fields.is_empty()).then_some(context.fields),
            by,
            at,
            scope: extra.scope,
            callback_at: extra.callback_at,
            callback: extra.callback,
        };
        Self::send_all(out, &self.dialers, msg);
    }

    // -----------------------------------------------------------------------------------------
    // Connections
    // -----------------------------------------------------------------------------------------

    fn on_connected(&mut self, conn: ConnId, role: Role, out: &mut Vec<Output>) {
        self.conns.insert(conn, ConnState { role, agent: None });
        match role {
            Role::Switch => {
                self.switches.insert(conn);
                Self::send(
                    out,
                    conn,
                    None,
                    ServerMsg::Monitor {
                        dns: self.monitored_dns(),
                    },
                );
            }
            Role::Dialer => {
                self.dialers.insert(conn);
            }
            Role::Desktop | Role::Admin => {}
        }
    }

    fn on_disconnected(&mut self, conn: ConnId) {
        let Some(state) = self.conns.remove(&conn) else {
            return;
        };
        self.switches.remove(&conn);
        self.dialers.remove(&conn);
        if let Some(agent) = state.agent {
            if let Some(a) = self.agents.get_mut(&agent) {
                if a.conn == Some(conn) {
                    a.conn = None;
                    a.away_since = Some(self.now);
                    self.grace_deadlines
                        .insert((self.now + self.cfg.resume_grace_ms, agent));
                }
            }
        }
    }

    fn on_tick(&mut self, out: &mut Vec<Output>) {
        let now = self.now;
        while let Some((deadline, agent)) = self.grace_deadlines.first().cloned() {
            if deadline > now {
                break;
            }
            self.grace_deadlines.pop_first();
            let expired = self.agents.get(&agent).is_some_and(|a| {
                a.conn.is_none()
                    && a.away_since.map(|t| t + self.cfg.resume_grace_ms) == Some(deadline)
            });
            if expired {
                self.end_agent(out, &agent, None, true, "grace_expired");
            }
        }
        while let Some((deadline, record)) = self.orphan_deadlines.first().cloned() {
            if deadline > now {
                break;
            }
            self.orphan_deadlines.pop_first();
            let stale = self.records.get(&record).is_some_and(|r| {
                r.final_.is_none()
                    && r.orphaned_since.map(|t| t + self.cfg.orphan_timeout_ms) == Some(deadline)
            });
            if stale {
                self.finalize(
                    out,
                    &record,
                    Outcome::Stale,
                    None,
                    None,
                    FinalExtra::default(),
                );
            }
        }
        while let Some((deadline, call)) = self.call_deadlines.first().cloned() {
            if deadline > now {
                break;
            }
            self.call_deadlines.pop_first();
            let Some(c) = self.calls.get(&call) else {
                continue;
            };
            if c.idle_deadline_ms != deadline {
                continue;
            }
            let due = c
                .last_event_ms
                .saturating_add(self.cfg.call_idle_timeout_ms);
            if due > now {
                // Events came meanwhile: look again when the call has been silent long enough.
                self.calls.get_mut(&call).expect("present").idle_deadline_ms = due;
                self.call_deadlines.insert((due, call));
            } else {
                self.drop_idle_call(out, &call);
            }
        }
    }

    /// Evicts final records from memory, oldest first, past their time or past the number kept.
    /// Only on a timer tick, never before a request: the shell may just have read back the
    /// record that request names. A record with changes not yet written stays (the write needs it).
    fn evict_finals(&mut self) {
        let now = self.now;
        while let Some((since, record)) = self.final_queue.first().cloned() {
            let over_number = self.final_queue.len() as u64 > self.cfg.max_final_records_in_memory;
            let over_age = since.saturating_add(self.cfg.final_record_memory_ms) <= now;
            if !(over_number || over_age) || self.dirty_records.contains(&record) {
                break;
            }
            self.final_queue.pop_first();
            let evicted = self.records.remove(&record);
            assert!(
                evicted.is_some_and(|r| r.final_.is_some()),
                "only final records leave memory"
            );
        }
    }

    /// The switch never ended `call` and has said nothing about it for `call_idle_timeout_ms`:
    /// forget it. A consultation is over (its read-only access ends, rule 5); the holders of a
    /// customer call's record keep their access to finish it, as when a call ends; a record
    /// nobody holds starts its orphan clock. Desktops on its DNs are told `CallCleared`.
    fn drop_idle_call(&mut self, out: &mut Vec<Output>, call: &str) {
        let Some(c) = self.calls.get(call) else {
            return;
        };
        let dns: Vec<String> = c.parties.keys().cloned().collect();
        let idle_ms = self.now.saturating_sub(c.last_event_ms);
        tracing::warn!(
            call,
            idle_ms,
            parties = ?dns,
            "dropping a call the switch never ended: no telephony event for call_idle_timeout_ms ({} ms)",
            self.cfg.call_idle_timeout_ms
        );
        for dn in &dns {
            self.push_dn(
                out,
                dn,
                ServerMsg::CallCleared {
                    call: call.to_owned(),
                    dn: dn.clone(),
                    cause: "idle_timeout".to_owned(),
                },
            );
        }
        if let Some((record, true)) = self.record_of_call(call) {
            if let Some(c) = self.calls.get_mut(call) {
                c.consult_over = true;
            }
            for dn in &dns {
                if let Some(a) = self.agent_on(dn) {
                    if self.access_of(&record, &a) == Some(Access::ReadOnly) {
                        self.set_access(out, &record, &a, Access::Revoked, AccessCause::Released);
                    }
                }
            }
        }
        self.drop_call(call);
        if let Some(record) = self.call_record.get(call).cloned() {
            if self
                .records
                .get(&record)
                .is_some_and(|r| r.final_.is_none() && !r.has_live_holder())
            {
                self.orphan(out, &record, call);
            }
        }
    }

    fn on_shutdown(&mut self, out: &mut Vec<Output>) {
        let conns: Vec<(ConnId, ConnState)> =
            self.conns.iter().map(|(c, s)| (*c, s.clone())).collect();
        for (conn, state) in conns {
            if state.agent.is_some() {
                Self::send(
                    out,
                    conn,
                    None,
                    ServerMsg::LoggedOut {
                        cause: LogoutCause::Server,
                    },
                );
            }
            out.push(Output::Close { conn });
        }
    }

    // -----------------------------------------------------------------------------------------
    // Requests
    // -----------------------------------------------------------------------------------------

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
            Request::GetRecord(_)
            | Request::UpdateRecord(_)
            | Request::RecordProcessed(_)
            | Request::ChainedRecords(_)
            | Request::RecordReject(_)
            | Request::RecordCancel(_)
            | Request::DoNotCall(_)
            | Request::Reschedule(_) => self.record_request(out, conn, r#ref, request),
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
                        uptime_s: self.now.saturating_sub(self.started_ms) / 1000,
                    },
                );
            }
            Request::RecordInfo(r) => self.record_info(out, conn, r#ref, r),
            Request::ReleaseRecord(r) => self.release_record(out, conn, r#ref, r),
        }
    }

    // ----- desktop sessions -----

    fn login(&mut self, out: &mut Vec<Output>, conn: ConnId, r#ref: Option<u64>, l: Login) {
        if l.agent.is_empty() || l.dn.is_empty() {
            let field = if l.agent.is_empty() { "agent" } else { "dn" };
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(
                    ErrorCode::BadRequest,
                    format!("Login: field `{field}` must not be empty"),
                ),
            );
            return;
        }
        if let Some(current) = self.conns.get(&conn).and_then(|c| c.agent.clone()) {
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(
                    ErrorCode::BadRequest,
                    format!(
                        "this connection is already logged in as agent {current}; Logout first"
                    ),
                ),
            );
            return;
        }
        if let Some(other) = self.dn_agent.get(&l.dn) {
            if *other != l.agent {
                let msg = format!("DN {} is in use by agent {other}", l.dn);
                Self::send(out, conn, r#ref, ServerMsg::error(ErrorCode::DnInUse, msg));
                return;
            }
        }
        if let Some(existing) = self.agents.get(&l.agent).cloned() {
            if existing.dn != l.dn {
                // The agent moves to another DN: the old session ends as replaced, then a fresh one.
                if let Some(old) = existing.conn {
                    Self::send(
                        out,
                        old,
                        None,
                        ServerMsg::LoggedOut {
                            cause: LogoutCause::Replaced,
                        },
                    );
                    if let Some(c) = self.conns.get_mut(&old) {
                        c.agent = None;
                    }
                    if let Some(a) = self.agents.get_mut(&l.agent) {
                        a.conn = None;
                    }
                }
                self.end_agent(out, &l.agent, None, true, "replaced");
            } else {
                self.take_over(out, conn, r#ref, &l, existing);
                return;
            }
        }
        self.fresh_login(out, conn, r#ref, &l);
    }

    /// The agent is already logged in on this DN (connected elsewhere, or away): this connection
    /// takes the session over, resumed if the token matches, and gets the present state.
    fn take_over(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        l: &Login,
        existing: Agent,
    ) {
        let resumed = l.resume.as_deref() == Some(existing.session.as_str());
        if let Some(old) = existing.conn {
            Self::send(
                out,
                old,
                None,
                ServerMsg::LoggedOut {
                    cause: LogoutCause::Replaced,
                },
            );
            if let Some(c) = self.conns.get_mut(&old) {
                c.agent = None;
            }
        }
        let session = self.new_session_token();
        let lost: BTreeMap<String, Lost> = if resumed {
            // What was revoked since shortly before the desktop could have stopped hearing us.
            let since = existing
                .away_since
                .unwrap_or(self.now)
                .saturating_sub(self.lost_window_ms());
            existing
                .lost_while_away
                .into_iter()
                .filter(|(_, lost)| lost.at_ms >= since)
                .collect()
        } else {
            BTreeMap::new()
        };
        if let Some(a) = self.agents.get_mut(&l.agent) {
            a.conn = Some(conn);
            a.away_since = None;
            a.session = session.clone();
            a.lost_while_away.clear();
        }
        self.dirty_agents.insert(l.agent.clone());
        if let Some(c) = self.conns.get_mut(&conn) {
            c.agent = Some(l.agent.clone());
        }
        Self::send(
            out,
            conn,
            r#ref,
            ServerMsg::LoggedIn {
                agent: l.agent.clone(),
                dn: l.dn.clone(),
                session,
                resumed,
            },
        );
        let cause = if resumed { "resume" } else { "replaced" };
        let (agent, dn) = (l.agent.clone(), l.dn.clone());
        self.audit(out, AuditKind::Login, |e| {
            e.agent = Some(agent);
            e.dn = Some(dn);
            e.cause = Some(cause.to_owned());
        });
        self.replay(out, conn, &l.agent, &l.dn, lost);
    }

    /// Pushes the agent's present state: its calls, then the records it holds, then what it lost.
    fn replay(
        &self,
        out: &mut Vec<Output>,
        conn: ConnId,
        agent: &str,
        dn: &str,
        lost: BTreeMap<String, Lost>,
    ) {
        self.push_calls_on_dn(out, conn, dn);
        if let Some(held) = self.agent_records.get(agent) {
            for record in held {
                let Some(rec) = self.records.get(record) else {
                    continue;
                };
                let Some(access) = rec.holders.get(agent).copied() else {
                    continue;
                };
                Self::send(
                    out,
                    conn,
                    None,
                    ServerMsg::AccessChanged {
                        record: record.clone(),
                        access,
                        previous: access,
                        cause: AccessCause::Resume,
                        call: Some(rec.call.clone()),
                        data: Some(rec.data.clone()),
                        context: Some(rec.context.clone()),
                    },
                );
            }
        }
        for (record, lost) in lost {
            Self::send(
                out,
                conn,
                None,
                ServerMsg::AccessChanged {
                    record,
                    access: Access::Revoked,
                    previous: lost.previous,
                    cause: AccessCause::Resume,
                    call: Some(lost.call),
                    data: None,
                    context: None,
                },
            );
        }
    }

    fn push_calls_on_dn(&self, out: &mut Vec<Output>, conn: ConnId, dn: &str) {
        let Some(calls) = self.dn_calls.get(dn) else {
            return;
        };
        let mut ordered: Vec<(&String, &Call)> = calls
            .iter()
            .filter_map(|id| self.calls.get(id).map(|c| (id, c)))
            .collect();
        ordered.sort_by_key(|(_, c)| c.order);
        for (id, call) in ordered {
            match call.parties.get(dn) {
                Some(PartyState::Alerting) => Self::send(
                    out,
                    conn,
                    None,
                    ServerMsg::CallAlerting {
                        call: id.clone(),
                        dn: dn.to_owned(),
                        record: self.record_of_call(id).map(|(r, _)| r),
                        consult_of: call.consult_of.clone(),
                    },
                ),
                Some(PartyState::Established | PartyState::Dialing) => Self::send(
                    out,
                    conn,
                    None,
                    ServerMsg::CallEstablished {
                        call: id.clone(),
                        dn: dn.to_owned(),
                    },
                ),
                None => {}
            }
        }
    }

    fn fresh_login(&mut self, out: &mut Vec<Output>, conn: ConnId, r#ref: Option<u64>, l: &Login) {
        let session = self.new_session_token();
        self.agents.insert(
            l.agent.clone(),
            Agent {
                dn: l.dn.clone(),
                conn: Some(conn),
                session: session.clone(),
                away_since: None,
                logout_pending: false,
                lost_while_away: BTreeMap::new(),
            },
        );
        self.monitor_dn(&l.dn, &l.agent);
        self.dirty_agents.insert(l.agent.clone());
        if let Some(c) = self.conns.get_mut(&conn) {
            c.agent = Some(l.agent.clone());
        }
        Self::send(
            out,
            conn,
            r#ref,
            ServerMsg::LoggedIn {
                agent: l.agent.clone(),
                dn: l.dn.clone(),
                session,
                resumed: false,
            },
        );
        let (agent, dn) = (l.agent.clone(), l.dn.clone());
        self.audit(out, AuditKind::Login, |e| {
            e.agent = Some(agent);
            e.dn = Some(dn);
            e.cause = Some("desktop".to_owned());
        });
        self.tell_switches(
            out,
            ServerMsg::AgentLogin {
                dn: l.dn.clone(),
                agent: l.agent.clone(),
            },
        );
        self.broadcast_monitor(out);
        // Calls already on the DN: show them, and take what nobody holds (rule 9).
        self.push_calls_on_dn(out, conn, &l.dn);
        let calls: Vec<String> = self
            .dn_calls
            .get(&l.dn)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for call in calls {
            let established = self.calls.get(&call).and_then(|c| c.parties.get(&l.dn))
                == Some(PartyState::Established);
            if established {
                self.grant_for_party(out, &call, &l.agent, true);
            }
        }
    }

    /// Gives `agent`, established on `call`, the access the call entitles it to: `full` on the
    /// call's own record, `read_only` on the record of the call a live consultation consults.
    /// With `only_unheld`, a direct record is taken only if nobody holds it (a login finding the call).
    fn grant_for_party(
        &mut self,
        out: &mut Vec<Output>,
        call: &str,
        agent: &str,
        only_unheld: bool,
    ) {
        let Some((record, via_consult)) = self.record_of_call(call) else {
            return;
        };
        let Some(rec) = self.records.get(&record) else {
            return;
        };
        if rec.final_.is_some() {
            return;
        }
        let current = rec.holders.get(agent).copied().unwrap_or(Access::Revoked);
        if via_consult {
            let over = self.calls.get(call).is_none_or(|c| c.consult_over);
            if !over && current == Access::Revoked {
                self.set_access(
                    out,
                    &record,
                    agent,
                    Access::ReadOnly,
                    AccessCause::Consultation,
                );
            }
        } else if current != Access::Full {
            if only_unheld && rec.holders.values().any(|a| *a == Access::Full) {
                return;
            }
            self.set_access(out, &record, agent, Access::Full, AccessCause::Established);
        }
    }

    /// Ends an agent's session: its DN is no longer monitored, its records are revoked (orphaned
    /// when nobody else holds them). `cause` goes to a connected desktop as `LoggedOut`.
    fn end_agent(
        &mut self,
        out: &mut Vec<Output>,
        agent: &str,
        cause: Option<LogoutCause>,
        tell_switch: bool,
        audit_cause: &str,
    ) {
        let Some(a) = self.agents.get(agent).cloned() else {
            return;
        };
        if let Some(cause) = cause {
            self.push_agent(out, agent, ServerMsg::LoggedOut { cause });
        }
        let held: Vec<String> = self
            .agent_records
            .get(agent)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for record in held {
            self.set_access(out, &record, agent, Access::Revoked, AccessCause::Logout);
        }
        self.agents.remove(agent);
        self.dirty_agents.insert(agent.to_owned());
        if self.dn_agent.get(&a.dn).map(String::as_str) == Some(agent) {
            self.unmonitor_dn(&a.dn);
        }
        if let Some(conn) = a.conn {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.agent = None;
            }
        }
        let (agent_s, dn) = (agent.to_owned(), a.dn.clone());
        let cause_s = audit_cause.to_owned();
        self.audit(out, AuditKind::Logout, |e| {
            e.agent = Some(agent_s);
            e.dn = Some(dn);
            e.cause = Some(cause_s);
        });
        if tell_switch {
            self.tell_switches(
                out,
                ServerMsg::AgentLogout {
                    dn: a.dn.clone(),
                    agent: agent.to_owned(),
                },
            );
        }
        self.broadcast_monitor(out);
    }

    fn full_live_records(&self, agent: &str) -> Vec<String> {
        self.agent_records
            .get(agent)
            .map(|set| {
                set.iter()
                    .filter(|r| {
                        self.records.get(*r).is_some_and(|rec| {
                            rec.final_.is_none() && rec.holders.get(agent) == Some(&Access::Full)
                        })
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn logout_request(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        l: Logout,
    ) {
        let Some(agent) = self.conns.get(&conn).and_then(|c| c.agent.clone()) else {
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(ErrorCode::NotLoggedIn, "Logout needs a logged-in agent"),
            );
            return;
        };
        let held = self.full_live_records(&agent);
        if !held.is_empty() && !l.force {
            if let Some(a) = self.agents.get_mut(&agent) {
                a.logout_pending = true;
                self.pending_logouts.insert(agent.clone());
            }
            Self::send(out, conn, r#ref, ServerMsg::LogoutPending { records: held });
            return;
        }
        for record in &held {
            self.finalize(
                out,
                record,
                Outcome::Returned,
                Some(agent.clone()),
                Some(&agent),
                FinalExtra::default(),
            );
        }
        Self::send(
            out,
            conn,
            r#ref,
            ServerMsg::LoggedOut {
                cause: LogoutCause::Desktop,
            },
        );
        let cause = if l.force { "desktop_force" } else { "desktop" };
        self.end_agent(out, &agent, None, true, cause);
    }

    /// Smart logout: an agent waiting to log out goes once its last `full` record is final.
    fn finish_pending_logouts(&mut self, out: &mut Vec<Output>) {
        if self.pending_logouts.is_empty() {
            return;
        }
        let pending: Vec<String> = self.pending_logouts.iter().cloned().collect();
        for agent in pending {
            if !self.agents.get(&agent).is_some_and(|a| a.logout_pending) {
                self.pending_logouts.remove(&agent);
                continue;
            }
            if self.full_live_records(&agent).is_empty() {
                self.pending_logouts.remove(&agent);
                self.end_agent(out, &agent, Some(LogoutCause::Desktop), true, "desktop");
            }
        }
    }

    // ----- desktop record requests -----

    fn record_request(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        request: Request,
    ) {
        let type_name = request.type_name();
        let Some(agent) = self.conns.get(&conn).and_then(|c| c.agent.clone()) else {
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(
                    ErrorCode::NotLoggedIn,
                    format!("{type_name} needs a logged-in agent; send Login first"),
                ),
            );
            return;
        };
        let (record, needs_full) = match &request {
            Request::GetRecord(r) | Request::ChainedRecords(r) => (r.record.clone(), false),
            Request::UpdateRecord(r) | Request::RecordProcessed(r) => (r.record.clone(), true),
            Request::RecordReject(r) | Request::RecordCancel(r) => (r.record.clone(), true),
            Request::DoNotCall(r) => (r.record.clone(), true),
            Request::Reschedule(r) => (r.record.clone(), true),
            _ => unreachable!("record_request only gets record requests"),
        };
        let access = match self.check_access(&record, &agent, needs_full) {
            Ok(access) => access,
            Err(error) => {
                self.deny(out, conn, r#ref, &agent, &record, type_name, error);
                return;
            }
        };
        // Request-specific validation, after the access checks so that those come in contract order.
        let mut finish: Option<(Outcome, FinalExtra)> = None;
        let reply = match request {
            Request::GetRecord(_) => {
                let rec = &self.records[&record];
                ServerMsg::Record {
                    record: record.clone(),
                    access,
                    data: rec.data.clone(),
                    context: rec.context.clone(),
                    final_: rec.final_.clone(),
                }
            }
            Request::ChainedRecords(_) => {
                let rec = &self.records[&record];
                let mut count = 0u32;
                for entry in rec.chain.iter().filter(|e| e.record != record) {
                    count += 1;
                    Self::send(
                        out,
                        conn,
                        r#ref,
                        ServerMsg::ChainedRecord {
                            record: entry.record.clone(),
                            chain_n: entry.chain_n,
                            data: entry.data.clone(),
                            access,
                        },
                    );
                }
                ServerMsg::ChainedRecordsEnd {
                    record: record.clone(),
                    count,
                }
            }
            Request::UpdateRecord(change) => {
                if let Err(error) = self.check_size(&record, &change) {
                    self.deny(out, conn, r#ref, &agent, &record, type_name, error);
                    return;
                }
                let version = self.apply_change(&record, &change);
                let others: Vec<String> = self.records[&record]
                    .holders
                    .iter()
                    .filter(|(h, a)| a.is_granted() && h.as_str() != agent)
                    .map(|(h, _)| h.clone())
                    .collect();
                for h in others {
                    self.push_agent(
                        out,
                        &h,
                        ServerMsg::RecordChanged {
                            record: record.clone(),
                            version,
                            call_result: change.call_result.clone(),
                            fields: change.fields.clone(),
                            by: agent.clone(),
                        },
                    );
                }
                ServerMsg::RecordUpdated {
                    record: record.clone(),
                    version,
                }
            }
            Request::RecordProcessed(change) => {
                if let Err(error) = self.check_size(&record, &change) {
                    self.deny(out, conn, r#ref, &agent, &record, type_name, error);
                    return;
                }
                self.apply_change(&record, &change);
                finish = Some((Outcome::Processed, FinalExtra::default()));
                ServerMsg::RecordProcessedAck {
                    record: record.clone(),
                }
            }
            Request::RecordReject(_) => {
                finish = Some((Outcome::Rejected, FinalExtra::default()));
                ServerMsg::RecordRejected {
                    record: record.clone(),
                }
            }
            Request::RecordCancel(_) => {
                finish = Some((Outcome::Cancelled, FinalExtra::default()));
                ServerMsg::RecordCancelled {
                    record: record.clone(),
                }
            }
            Request::DoNotCall(d) => {
                let extra = FinalExtra {
                    scope: Some(d.scope),
                    ..FinalExtra::default()
                };
                finish = Some((Outcome::DoNotCall, extra));
                ServerMsg::DoNotCallAck {
                    record: record.clone(),
                    scope: d.scope,
                }
            }
            Request::Reschedule(s) => {
                let when = match parse_rfc3339(&s.at) {
                    Some(ms) if ms > self.now => Ok(ms),
                    Some(_) => Err("must be in the future"),
                    None => Err("is not an RFC 3339 time"),
                };
                let when = match when {
                    Ok(ms) => ms,
                    Err(problem) => {
                        let e = ServerMsg::error(
                            ErrorCode::BadRequest,
                            format!("Reschedule: field `at` ({}) {problem}", s.at),
                        );
                        self.deny(out, conn, r#ref, &agent, &record, type_name, e);
                        return;
                    }
                };
                let at = rfc3339(when);
                let extra = FinalExtra {
                    callback_at: Some(at.clone()),
                    callback: Some(s.callback),
                    ..FinalExtra::default()
                };
                finish = Some((Outcome::Rescheduled, extra));
                ServerMsg::Rescheduled {
                    record: record.clone(),
                    at,
                    callback: s.callback,
                }
            }
            _ => unreachable!(),
        };
        self.accept(out, &agent, &record, type_name);
        // The final requests: this agent's request decides the outcome, everyone else is told.
        if let Some((outcome, extra)) = finish {
            self.finalize(
                out,
                &record,
                outcome,
                Some(agent.clone()),
                Some(&agent),
                extra,
            );
        }
        Self::send(out, conn, r#ref, reply);
    }

    /// The contract's check order: no_such_record, access_denied (never held), already_final,
    /// access_denied (revoked), read_only.
    #[allow(clippy::result_large_err)] // the error is the reply frame itself, built once
    fn check_access(
        &self,
        record: &str,
        agent: &str,
        needs_full: bool,
    ) -> Result<Access, ServerMsg> {
        let Some(rec) = self.records.get(record) else {
            return Err(ServerMsg::error(
                ErrorCode::NoSuchRecord,
                format!("no record {record}"),
            ));
        };
        let denied = |access: Access, why: String| ServerMsg::Error {
            code: ErrorCode::AccessDenied,
            message: why,
            access: Some(access),
            holders: Some(rec.live_holders()),
            outcome: None,
            by: None,
        };
        let Some(access) = rec.holders.get(agent).copied() else {
            return Err(denied(
                Access::Revoked,
                format!("agent {agent} never held record {record}"),
            ));
        };
        if let Some(f) = &rec.final_ {
            return Err(ServerMsg::Error {
                code: ErrorCode::AlreadyFinal,
                message: format!(
                    "record {record} is already final ({} by {})",
                    f.outcome.as_str(),
                    f.by.as_deref().unwrap_or("server")
                ),
                access: None,
                holders: None,
                outcome: Some(f.outcome),
                by: Some(f.by.clone().unwrap_or_else(|| "server".into())),
            });
        }
        match access {
            Access::Revoked => Err(denied(
                Access::Revoked,
                format!("agent {agent}'s access to record {record} was revoked"),
            )),
            Access::ReadOnly if needs_full => Err(ServerMsg::error(
                ErrorCode::ReadOnly,
                format!("agent {agent} holds record {record} read-only (consultation)"),
            )),
            a => Ok(a),
        }
    }

    #[allow(clippy::result_large_err)]
    fn check_size(&self, record: &str, change: &RecordChange) -> Result<(), ServerMsg> {
        let rec = &self.records[record];
        let mut context = rec.context.clone();
        merge_change(&mut context, change);
        let size = json_len(&rec.data) + json_len(&context);
        // Leave room for the envelope of an AccessChanged that carries both.
        let limit = self.cfg.max_frame_bytes.saturating_sub(1024);
        if size > limit {
            return Err(ServerMsg::error(
                ErrorCode::BadRequest,
                format!(
                    "record {record} would hold {size} bytes of data and context, over the limit of {limit}"
                ),
            ));
        }
        Ok(())
    }

    fn apply_change(&mut self, record: &str, change: &RecordChange) -> u64 {
        let rec = self.records.get_mut(record).expect("checked record");
        merge_change(&mut rec.context, change);
        rec.version += 1;
        let version = rec.version;
        self.mark_dirty(record);
        version
    }

    fn accept(&mut self, out: &mut Vec<Output>, agent: &str, record: &str, request: &str) {
        let dn = self.agents.get(agent).map(|a| a.dn.clone());
        let call = self.records.get(record).map(|r| r.call.clone());
        let access = self.access_of(record, agent);
        self.audit(out, AuditKind::Accepted, |e| {
            e.record = Some(record.to_owned());
            e.agent = Some(agent.to_owned());
            e.dn = dn;
            e.call = call;
            e.access = access;
            e.request = Some(request.to_owned());
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn deny(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        agent: &str,
        record: &str,
        request: &str,
        error: ServerMsg,
    ) {
        let code = match &error {
            ServerMsg::Error { code, .. } => *code,
            _ => ErrorCode::BadRequest,
        };
        let message = match &error {
            ServerMsg::Error { message, .. } => message.clone(),
            _ => String::new(),
        };
        let dn = self.agents.get(agent).map(|a| a.dn.clone());
        let call = self.records.get(record).map(|r| r.call.clone());
        let access = self.access_of(record, agent);
        self.audit(out, AuditKind::Denied, |e| {
            e.record = Some(record.to_owned());
            e.agent = Some(agent.to_owned());
            e.dn = dn;
            e.call = call;
            e.access = access;
            e.request = Some(request.to_owned());
            e.code = Some(code);
            e.cause = Some(message);
        });
        Self::send(out, conn, r#ref, error);
    }

    // ----- dialer -----

    fn attach(&mut self, out: &mut Vec<Output>, conn: ConnId, r#ref: Option<u64>, a: AttachRecord) {
        if a.record.is_empty() || a.call.is_empty() {
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(
                    ErrorCode::BadRequest,
                    "AttachRecord: fields `record` and `call` must not be empty",
                ),
            );
            return;
        }
        let size = json_len(&a.data);
        let limit = self.cfg.max_frame_bytes.saturating_sub(1024);
        if size > limit {
            let msg = format!(
                "AttachRecord: field `data` holds {size} bytes, over the limit of {limit} (max_frame_bytes - 1024)"
            );
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(ErrorCode::BadRequest, msg),
            );
            return;
        }
        if let Some(rec) = self.records.get(&a.record) {
            if rec.final_.is_none() {
                if rec.call == a.call {
                    Self::send(
                        out,
                        conn,
                        r#ref,
                        ServerMsg::RecordAttached {
                            record: a.record,
                            call: a.call,
                        },
                    );
                } else {
                    let msg = format!(
                        "record {} is live on call {}; it can be attached to call {} once it is final",
                        a.record, rec.call, a.call
                    );
                    Self::send(
                        out,
                        conn,
                        r#ref,
                        ServerMsg::error(ErrorCode::RecordBusy, msg),
                    );
                }
                return;
            }
        }
        if let Some(other) = self.call_record.get(&a.call) {
            let msg = format!("call {} already carries live record {other}", a.call);
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(ErrorCode::RecordBusy, msg),
            );
            return;
        }
        let chain_n = a.chain_n.unwrap_or(0);
        let cause = format!("campaign {}, chain_n {chain_n}", a.campaign);
        let record = Record {
            call: a.call.clone(),
            campaign: a.campaign,
            chain_n,
            phone: a.phone.clone(),
            data: a.data,
            chain: a.chain,
            context: Context::default(),
            version: 0,
            final_: None,
            holders: BTreeMap::new(),
            orphaned_since: None,
            resident_since_ms: 0,
        };
        if let Some(old) = self.records.insert(a.record.clone(), record) {
            if old.final_.is_some() {
                // A final record attached again is live again.
                self.finals -= 1;
                let filed = self
                    .final_queue
                    .remove(&(old.resident_since_ms, a.record.clone()));
                assert!(filed, "a final record in memory is in the final queue");
            }
        }
        self.mark_dirty(&a.record);
        self.call_record.insert(a.call.clone(), a.record.clone());
        let (rid, cid) = (a.record.clone(), a.call.clone());
        self.audit(out, AuditKind::Attached, |e| {
            e.record = Some(rid);
            e.call = Some(cid);
            e.cause = Some(cause);
        });
        Self::send(
            out,
            conn,
            r#ref,
            ServerMsg::RecordAttached {
                record: a.record,
                call: a.call.clone(),
            },
        );
        if self.calls.contains_key(&a.call) {
            if let Some(phone) = a.phone {
                self.index_ani(&a.call, &phone);
            }
            // The call may already be answered on an agent's DN: grant at once (rule 1).
            let established: Vec<String> =
                self.calls[&a.call].parties.established().cloned().collect();
            for dn in established {
                if let Some(agent) = self.agent_on(&dn) {
                    self.grant_for_party(out, &a.call, &agent, false);
                }
            }
        }
    }

    fn dialer_cancel(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        c: RecordRef,
    ) {
        let Some(rec) = self.records.get(&c.record) else {
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(ErrorCode::NoSuchRecord, format!("no record {}", c.record)),
            );
            return;
        };
        if let Some(f) = &rec.final_ {
            Self::send(out, conn, r#ref, already_final_error(&c.record, f));
            return;
        }
        self.finalize(
            out,
            &c.record,
            Outcome::Cancelled,
            Some("dialer".to_owned()),
            None,
            FinalExtra::default(),
        );
        Self::send(
            out,
            conn,
            r#ref,
            ServerMsg::RecordCancelled { record: c.record },
        );
    }

    // ----- admin -----

    fn record_info(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        r: RecordRef,
    ) {
        let Some(rec) = self.records.get(&r.record) else {
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(ErrorCode::NoSuchRecord, format!("no record {}", r.record)),
            );
            return;
        };
        let state = if rec.final_.is_some() {
            "final"
        } else if rec.has_live_holder() {
            "held"
        } else if rec.orphaned_since.is_some() {
            "orphaned"
        } else {
            "waiting"
        };
        let holders = rec
            .holders
            .iter()
            .map(|(agent, access)| Holder {
                agent: agent.clone(),
                access: *access,
            })
            .collect();
        Self::send(
            out,
            conn,
            r#ref,
            ServerMsg::RecordReport {
                record: r.record,
                state: state.to_owned(),
                holders,
                call: Some(rec.call.clone()),
                final_: rec.final_.clone(),
                version: Some(rec.version),
                context: Some(rec.context.clone()),
            },
        );
    }

    fn release_record(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        r: ReleaseRecord,
    ) {
        let Some(rec) = self.records.get(&r.record) else {
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(ErrorCode::NoSuchRecord, format!("no record {}", r.record)),
            );
            return;
        };
        if let Some(f) = &rec.final_ {
            Self::send(out, conn, r#ref, already_final_error(&r.record, f));
            return;
        }
        let extra = FinalExtra {
            request: Some(format!("ReleaseRecord: {}", r.reason)),
            ..FinalExtra::default()
        };
        self.finalize(
            out,
            &r.record,
            Outcome::Returned,
            Some("admin".to_owned()),
            None,
            extra,
        );
        Self::send(
            out,
            conn,
            r#ref,
            ServerMsg::RecordReleased { record: r.record },
        );
    }

    // -----------------------------------------------------------------------------------------
    // Telephony events
    // -----------------------------------------------------------------------------------------

    fn monitored(&self, dn: &str) -> bool {
        self.dn_agent.contains_key(dn)
    }

    /// An event is ours if it names a call we know (or one carrying a record) or a monitored DN.
    /// An applied event also tells that the call is alive (see `call_idle_timeout_ms`).
    fn relevant(&mut self, call: &str, dns: &[&str]) -> bool {
        let ours = self.calls.contains_key(call)
            || self.call_record.contains_key(call)
            || dns.iter().any(|dn| self.monitored(dn));
        if !ours {
            self.ignored_events += 1;
        } else if let Some(c) = self.calls.get_mut(call) {
            c.last_event_ms = self.now;
        }
        ours
    }

    fn call_entry(&mut self, call: &str) -> &mut Call {
        if !self.calls.contains_key(call) {
            self.call_order += 1;
            let order = self.call_order;
            let deadline = self.now.saturating_add(self.cfg.call_idle_timeout_ms);
            self.calls.insert(
                call.to_owned(),
                Call {
                    parties: Parties::default(),
                    ani: None,
                    ani_keys: Vec::new(),
                    consult_of: None,
                    caller: None,
                    consult_over: false,
                    order,
                    last_event_ms: self.now,
                    idle_deadline_ms: deadline,
                },
            );
            self.call_deadlines.insert((deadline, call.to_owned()));
            if let Some(phone) = self
                .call_record
                .get(call)
                .and_then(|r| self.records.get(r))
                .and_then(|r| r.phone.clone())
            {
                self.index_ani(call, &phone);
            }
        }
        self.calls.get_mut(call).expect("inserted above")
    }

    fn index_ani(&mut self, call: &str, ani: &str) {
        if ani.is_empty() {
            return;
        }
        let filed = self.ani_calls.get_or_default(ani).insert(call.to_owned());
        debug_assert!(
            self.calls.contains_key(call),
            "only live calls are filed by ANI"
        );
        if filed {
            if let Some(c) = self.calls.get_mut(call) {
                c.ani_keys.push(ani.to_owned());
            }
        }
    }

    fn add_party(&mut self, call: &str, dn: &str, state: PartyState) {
        self.call_entry(call).parties.add(dn, state);
        match self.dn_calls.get_mut(dn) {
            Some(set) => set.insert(call),
            None => {
                let mut set = CallSet::default();
                set.insert(call);
                self.dn_calls.insert(dn.to_owned(), set);
            }
        }
    }

    /// Takes `call` off `dn`'s calls, dropping the entry of an unmonitored DN left without any.
    fn unfile_call(&mut self, dn: &str, call: &str) {
        if let Some(set) = self.dn_calls.get_mut(dn) {
            set.remove(call);
            if set.is_empty() && !self.dn_agent.contains_key(dn) {
                self.dn_calls.remove(dn);
            }
        }
    }

    fn remove_party(&mut self, call: &str, dn: &str) -> Option<PartyState> {
        let state = self.calls.get_mut(call)?.parties.remove(dn);
        self.unfile_call(dn, call);
        state
    }

    /// Removes a call with no parties left. A record it carried that nobody ever held starts its
    /// orphan clock, so that no record waits forever.
    fn end_call_if_empty(&mut self, out: &mut Vec<Output>, call: &str) {
        if !self.calls.get(call).is_some_and(|c| c.parties.is_empty()) {
            return;
        }
        self.drop_call(call);
        if let Some(record) = self.call_record.get(call).cloned() {
            if self
                .records
                .get(&record)
                .is_some_and(|r| r.final_.is_none() && !r.has_live_holder())
            {
                self.orphan(out, &record, call);
            }
        }
    }

    fn drop_call(&mut self, call: &str) {
        let Some(c) = self.calls.remove(call) else {
            return;
        };
        self.call_deadlines
            .remove(&(c.idle_deadline_ms, call.to_owned()));
        for dn in c.parties.keys() {
            self.unfile_call(dn, call);
        }
        for ani in &c.ani_keys {
            if let Some(set) = self.ani_calls.get_mut(ani) {
                set.remove(call);
                if set.is_empty() {
                    self.ani_calls.remove(ani);
                }
            }
        }
    }

    /// The live call a consultation without `consult_of` belongs to: same customer ANI, carrying a
    /// record, not itself a consultation; one with `from_dn` as a party first, else the most recent.
    fn link_by_ani(&self, call: &str, ani: &str, from_dn: Option<&str>) -> Option<String> {
        let candidates = self.ani_calls.get(ani)?;
        let mut best: Option<(bool, u64, String)> = None;
        for id in candidates {
            if id == call {
                continue;
            }
            let Some(c) = self.calls.get(id) else {
                continue;
            };
            if c.consult_of.is_some() || !self.call_record.contains_key(id) {
                continue;
            }
            let has_from = from_dn.is_some_and(|d| c.parties.contains_key(d));
            let key = (has_from, c.order, id.clone());
            if best.as_ref().is_none_or(|b| (key.0, key.1) > (b.0, b.1)) {
                best = Some(key);
            }
        }
        best.map(|b| b.2)
    }

    fn ringing(&mut self, out: &mut Vec<Output>, e: Ringing) {
        let relevant = match &e.from_dn {
            Some(from) => self.relevant(&e.call, &[&e.dn, from]),
            None => self.relevant(&e.call, &[&e.dn]),
        };
        if !relevant {
            return;
        }
        self.add_party(&e.call, &e.dn, PartyState::Alerting);
        if let Some(ani) = &e.ani {
            if self.calls[&e.call].ani.is_none() {
                self.calls.get_mut(&e.call).expect("exists").ani = Some(ani.clone());
                self.index_ani(&e.call, ani);
            }
        }
        let unlinked =
            self.calls[&e.call].consult_of.is_none() && !self.call_record.contains_key(&e.call);
        if unlinked {
            let link = match &e.consult_of {
                Some(c1) if *c1 != e.call => Some(c1.clone()),
                Some(_) => None,
                None => e
                    .ani
                    .as_deref()
                    .and_then(|ani| self.link_by_ani(&e.call, ani, e.from_dn.as_deref())),
            };
            if let Some(c1) = link {
                self.calls.get_mut(&e.call).expect("exists").consult_of = Some(c1);
            }
        }
        // The caller is on the call from now on (CONTRACT section 5): when it hangs up, its
        // `Released` must find it, whether or not the switch ever sends `Established` for it.
        if let Some(from) = e.from_dn.as_deref().filter(|f| *f != e.dn) {
            let c = self.calls.get_mut(&e.call).expect("added above");
            if c.caller.is_none() {
                c.caller = Some(from.to_owned());
            }
            if !c.parties.contains_key(from) {
                self.add_party(&e.call, from, PartyState::Dialing);
                if let Some(conn) = self.conn_on_dn(from) {
                    let msg = ServerMsg::CallEstablished {
                        call: e.call.clone(),
                        dn: from.to_owned(),
                    };
                    Self::send(out, conn, None, msg);
                }
            }
        }
        let c = &self.calls[&e.call];
        if c.parties.get(&e.dn) == Some(PartyState::Alerting) {
            if let Some(conn) = self.conn_on_dn(&e.dn) {
                let msg = ServerMsg::CallAlerting {
                    record: self.record_of_call(&e.call).map(|(r, _)| r),
                    consult_of: c.consult_of.clone(),
                    call: e.call,
                    dn: e.dn,
                };
                Self::send(out, conn, None, msg);
            }
        }
    }

    fn established(&mut self, out: &mut Vec<Output>, e: CallDn) {
        if !self.relevant(&e.call, &[&e.dn]) {
            return;
        }
        let before = self.calls.get(&e.call).and_then(|c| c.parties.get(&e.dn));
        self.add_party(&e.call, &e.dn, PartyState::Established);
        if !PartyState::shown_established(before) {
            if let Some(conn) = self.conn_on_dn(&e.dn) {
                let msg = ServerMsg::CallEstablished {
                    call: e.call.clone(),
                    dn: e.dn.clone(),
                };
                Self::send(out, conn, None, msg);
            }
        }
        // Most calls carry no record: then there is nothing to grant, and no agent id to copy.
        if self.record_ref_of_call(&e.call).is_none() {
            return;
        }
        if let Some(agent) = self.agent_on(&e.dn) {
            self.grant_for_party(out, &e.call, &agent, false);
        }
    }

    fn released(&mut self, out: &mut Vec<Output>, e: Released) {
        if !self.relevant(&e.call, &[&e.dn]) {
            return;
        }
        let Some(call) = self.calls.get(&e.call) else {
            return;
        };
        let linked = self.record_of_call(&e.call);
        // A consultation's parties as they were before this one left (sorted, as parties are).
        let consult_dns: Vec<String> = match linked {
            Some((_, true)) => call.parties.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let Some(state) = self.remove_party(&e.call, &e.dn) else {
            return;
        };
        if let Some(conn) = self.conn_on_dn(&e.dn) {
            let msg = ServerMsg::CallCleared {
                call: e.call.clone(),
                dn: e.dn.clone(),
                cause: e.cause.unwrap_or_else(|| "hangup".to_owned()),
            };
            Self::send(out, conn, None, msg);
        }
        match linked {
            Some((record, true)) => {
                // A consultation ends when either side leaves (rule 5): read-only access it gave
                // is over. But while the DN that placed it is still on it, a consultee leaving
                // (RONA, a hang-up) ends only its own part: the switch may ring the same call
                // elsewhere (redistribution from a queue), and whoever answers is consulted.
                let caller_stays = self.calls.get(&e.call).is_some_and(|c| {
                    c.caller
                        .as_ref()
                        .is_some_and(|from| *from != e.dn && c.parties.contains_key(from))
                });
                // The agent holding the record leaving ends the consultation in any case.
                let holder_left = self
                    .agent_on(&e.dn)
                    .is_some_and(|a| self.access_of(&record, &a) == Some(Access::Full));
                let consult_dns = if caller_stays && !holder_left {
                    vec![e.dn.clone()]
                } else {
                    if let Some(c) = self.calls.get_mut(&e.call) {
                        c.consult_over = true;
                    }
                    consult_dns
                };
                for dn in consult_dns {
                    if let Some(a) = self.agent_on(&dn) {
                        if self.access_of(&record, &a) == Some(Access::ReadOnly) {
                            self.set_access(
                                out,
                                &record,
                                &a,
                                Access::Revoked,
                                AccessCause::Released,
                            );
                        }
                    }
                }
            }
            Some((record, false)) => {
                if let Some(agent) = self.agent_on(&e.dn) {
                    // Only answered parties count: someone still ringing may never join.
                    let remaining_agents = self.calls[&e.call]
                        .parties
                        .established()
                        .filter_map(|dn| self.dn_agent.get(dn))
                        .any(|a| *a != agent);
                    let held = self
                        .access_of(&record, &agent)
                        .is_some_and(Access::is_granted);
                    if held && state == PartyState::Alerting {
                        // Never answered (RONA, busy, abandoned while ringing).
                        self.set_access(
                            out,
                            &record,
                            &agent,
                            Access::Revoked,
                            AccessCause::Released,
                        );
                    } else if held && remaining_agents {
                        self.set_access(out, &record, &agent, Access::Revoked, AccessCause::Left);
                    }
                }
            }
            None => {}
        }
        self.end_call_if_empty(out, &e.call);
        self.end_call_nobody_is_on(&e.call);
    }

    /// Forgets a call that carries no record of its own once only DNs the server does not watch
    /// are left on it, still ringing (a consultation to a DN nobody is logged in on, after the
    /// caller hung up): no event about them will ever come, and nothing depends on them. A call
    /// with a record stays, for whoever logs in where it is (rule 9).
    fn end_call_nobody_is_on(&mut self, call: &str) {
        let Some(c) = self.calls.get(call) else {
            return;
        };
        let forgotten = !self.call_record.contains_key(call)
            && c.parties
                .0
                .iter()
                .all(|(dn, state)| *state == PartyState::Alerting && !self.monitored(dn));
        if forgotten {
            self.drop_call(call);
        }
    }

    /// Ends consultation `c2` because it was merged into the customer call; its parties are told.
    fn merge_consultation(&mut self, out: &mut Vec<Output>, c2: &str, cause: &str) {
        let Some(call) = self.calls.get(c2) else {
            return;
        };
        for dn in call.parties.keys() {
            self.push_dn(
                out,
                dn,
                ServerMsg::CallCleared {
                    call: c2.to_owned(),
                    dn: dn.clone(),
                    cause: cause.to_owned(),
                },
            );
        }
        self.drop_call(c2);
    }

    /// The consultation named by an event, if it really is a consultation of `call`; otherwise
    /// the live consultation of `call` that has `dn` as a party.
    fn consultation_of(&self, call: &str, named: Option<&str>, dn: &str) -> Option<String> {
        if let Some(c2) = named {
            if self
                .calls
                .get(c2)
                .is_some_and(|c| c.consult_of.as_deref() == Some(call))
            {
                return Some(c2.to_owned());
            }
        }
        self.find_consultation(call, dn)
    }

    fn find_consultation(&self, call: &str, dn: &str) -> Option<String> {
        self.dn_calls.get(dn)?.iter().find_map(|id| {
            let c = self.calls.get(id)?;
            (c.consult_of.as_deref() == Some(call) && !c.consult_over).then(|| id.clone())
        })
    }

    fn transferred(&mut self, out: &mut Vec<Output>, e: Transferred) {
        if !self.relevant(&e.call, &[&e.from_dn, &e.to_dn]) {
            return;
        }
        if e.from_dn == e.to_dn {
            return;
        }
        self.call_entry(&e.call);
        let consult = match e.kind {
            TransferKind::TwoStep => {
                self.consultation_of(&e.call, e.consult_call.as_deref(), &e.to_dn)
            }
            _ => None,
        };
        if self.remove_party(&e.call, &e.from_dn).is_some() {
            self.push_dn(
                out,
                &e.from_dn,
                ServerMsg::CallCleared {
                    call: e.call.clone(),
                    dn: e.from_dn.clone(),
                    cause: "transferred".to_owned(),
                },
            );
        }
        if let Some(c2) = &consult {
            self.merge_consultation(out, c2, "transferred");
        }
        let arriving = match e.kind {
            TransferKind::TwoStep => PartyState::Established,
            _ => PartyState::Alerting,
        };
        let before = self.calls[&e.call].parties.get(&e.to_dn);
        self.add_party(&e.call, &e.to_dn, arriving);
        let record = self.call_record.get(&e.call).cloned();
        match (before, arriving) {
            (Some(PartyState::Established | PartyState::Dialing), _) => {}
            (_, PartyState::Established | PartyState::Dialing) => self.push_dn(
                out,
                &e.to_dn,
                ServerMsg::CallEstablished {
                    call: e.call.clone(),
                    dn: e.to_dn.clone(),
                },
            ),
            (_, PartyState::Alerting) => self.push_dn(
                out,
                &e.to_dn,
                ServerMsg::CallAlerting {
                    call: e.call.clone(),
                    dn: e.to_dn.clone(),
                    record: record.clone(),
                    consult_of: None,
                },
            ),
        }
        if let Some(record) = record {
            if self
                .records
                .get(&record)
                .is_some_and(|r| r.final_.is_none())
            {
                let from = self.agent_on(&e.from_dn);
                let to = self.agent_on(&e.to_dn);
                // Grant first, so the record is never seen without a holder when there is a recipient.
                if let Some(b) = &to {
                    self.set_access(out, &record, b, Access::Full, AccessCause::Transfer);
                }
                if let Some(a) = from {
                    if Some(&a) != to.as_ref() {
                        self.set_access(out, &record, &a, Access::Revoked, AccessCause::Transfer);
                    }
                }
            }
        }
        self.end_call_if_empty(out, &e.call);
    }

    fn conferenced(&mut self, out: &mut Vec<Output>, e: Conferenced) {
        if !self.relevant(&e.call, &[&e.dn]) {
            return;
        }
        self.call_entry(&e.call);
        let consult = self.consultation_of(&e.call, e.consult_call.as_deref(), &e.dn);
        if let Some(c2) = &consult {
            self.merge_consultation(out, c2, "conferenced");
        }
        let before = self.calls[&e.call].parties.get(&e.dn);
        self.add_party(&e.call, &e.dn, PartyState::Established);
        if !PartyState::shown_established(before) {
            self.push_dn(
                out,
                &e.dn,
                ServerMsg::CallEstablished {
                    call: e.call.clone(),
                    dn: e.dn.clone(),
                },
            );
        }
        let Some(record) = self.call_record.get(&e.call).cloned() else {
            return;
        };
        if self.records.get(&record).is_none_or(|r| r.final_.is_some()) {
            return;
        }
        let dns: Vec<String> = self.calls[&e.call].parties.established().cloned().collect();
        for dn in dns {
            if let Some(agent) = self.agent_on(&dn) {
                self.set_access(out, &record, &agent, Access::Full, AccessCause::Conference);
            }
        }
    }

    /// The phone says `agent` logged in on `dn`. An echo of our own login changes nothing; a
    /// conflicting desktop session yields to the phone.
    fn phone_login(&mut self, out: &mut Vec<Output>, e: DnAgent) {
        if self.agents.get(&e.agent).is_some_and(|a| a.dn == e.dn) {
            return;
        }
        let mut changed = false;
        if let Some(other) = self.dn_agent.get(&e.dn).cloned() {
            self.end_agent(out, &other, Some(LogoutCause::Phone), false, "phone");
            changed = true;
        }
        if self.agents.contains_key(&e.agent) {
            self.end_agent(out, &e.agent, Some(LogoutCause::Phone), false, "phone");
            changed = true;
        }
        if !changed {
            // Nobody to reconcile with: a phone login alone does not make a desktop session.
            self.ignored_events += 1;
        }
    }

    fn phone_logout(&mut self, out: &mut Vec<Output>, e: DnAgent) {
        if self.agents.get(&e.agent).is_some_and(|a| a.dn == e.dn) {
            self.end_agent(out, &e.agent, Some(LogoutCause::Phone), false, "phone");
        } else {
            self.ignored_events += 1;
        }
    }
}

/// Whether a record as stored is final, read without building it (at start every stored record
/// is looked at, and most are final: their data need not be allocated).
pub fn stored_record_is_final(bytes: &[u8]) -> Result<bool, String> {
    #[derive(Deserialize)]
    struct Probe {
        final_: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(bytes)
        .map(|p| p.final_.is_some())
        .map_err(|e| e.to_string())
}

/// When a record as stored became final (milliseconds since the epoch), if it is final.
pub fn stored_record_final_ms(bytes: &[u8]) -> Result<Option<u64>, String> {
    #[derive(Deserialize)]
    struct At {
        at: String,
    }
    #[derive(Deserialize)]
    struct Probe {
        final_: Option<At>,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    Ok(probe.final_.and_then(|f| parse_rfc3339(&f.at)))
}

/// Parses stored records on every core: at start this is most of the work for a big store.
fn parse_records(stored: Vec<(String, Stored)>) -> Result<FastMap<String, Record>, String> {
    fn parse(part: &[(String, Stored)]) -> Result<Vec<Record>, String> {
        part.iter()
            .map(|(id, bytes)| {
                serde_json::from_slice(bytes)
                    .map_err(|e| format!("record {id} cannot be read back: {e}"))
            })
            .collect()
    }
    // Below this, threads cost more than they save.
    const PER_THREAD: usize = 20_000;
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(stored.len() / PER_THREAD)
        .max(1);
    let parsed: Vec<Vec<Record>> = if threads == 1 {
        vec![parse(&stored)?]
    } else {
        let chunk = stored.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let workers: Vec<_> = stored
                .chunks(chunk)
                .map(|part| scope.spawn(move || parse(part)))
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect::<Result<Vec<_>, String>>()
        })?
    };
    let mut records = FastMap::with_capacity_and_hasher(stored.len(), Default::default());
    for (rec, (id, _)) in parsed.into_iter().flatten().zip(stored) {
        records.insert(id, rec);
    }
    Ok(records)
}

/// Details of a final outcome that only some outcomes have.
#[derive(Debug, Clone, Default)]
struct FinalExtra {
    /// Noted on the `finalized` audit entry (the admin's reason for a release).
    request: Option<String>,
    scope: Option<DncScope>,
    callback_at: Option<String>,
    callback: Option<Callback>,
}

/// How many bytes `value` takes as JSON (0 if it cannot be written), counted without building it.
fn json_len<T: Serialize>(value: &T) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value).map_or(0, |()| counter.0)
}

fn merge_change(context: &mut Context, change: &RecordChange) {
    if let Some(cr) = &change.call_result {
        context.call_result = Some(cr.clone());
    }
    if let Some(fields) = &change.fields {
        for (k, v) in fields {
            context.fields.insert(k.clone(), v.clone());
        }
    }
}

fn already_final_error(record: &str, f: &FinalInfo) -> ServerMsg {
    let by = f.by.clone().unwrap_or_else(|| "server".into());
    ServerMsg::Error {
        code: ErrorCode::AlreadyFinal,
        message: format!(
            "record {record} is already final ({} by {by})",
            f.outcome.as_str()
        ),
        access: None,
        holders: None,
        outcome: Some(f.outcome),
        by: Some(by),
    }
}
