//! Server messages, replies and pushes: the `ServerMsg` enum, the records and audit entries they
//! carry, and the `Envelope` that adds a request's `ref`. Never built from client input without
//! the engine deciding it.

use super::*;

/// The accumulated changes earlier holders made to a record.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_result: Option<String>,
    #[serde(default)]
    pub fields: Object,
}

/// How a record ended.
/// How long the server's last start took, by step (`StatusReport.startup`): opening the store,
/// reading what it holds, and rebuilding the state in memory from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Startup {
    pub open_ms: u64,
    pub load_ms: u64,
    pub restore_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalInfo {
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub agent: String,
    pub access: Access,
}

/// Whether a logged-in agent's desktop is connected (`logged_in`) or gone within its resume grace
/// (`away`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    LoggedIn,
    Away,
}

/// A logged-in agent, as `AgentsReport` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub agent: String,
    pub dn: String,
    pub state: Presence,
    /// While `away`: how long the session is still kept for a resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_left_ms: Option<u64>,
    /// The agent asked to log out while holding records with `full`; it leaves once they are final.
    pub logout_pending: bool,
    /// Records held now (`full` or `read_only`), sorted by record id.
    pub records: Vec<HeldRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldRecord {
    pub record: String,
    pub access: Access,
}

/// A live call, as `CallsReport` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallInfo {
    pub call: String,
    /// The DNs on the call, sorted by DN.
    pub parties: Vec<PartyInfo>,
    /// The live record attached to the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// For a consultation: the customer call it was placed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consult_of: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartyInfo {
    pub dn: String,
    /// `alerting`, `dialing` (placed the call) or `established`.
    pub state: String,
    /// The agent logged in on the DN, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// One access-audit entry (CONTRACT section 6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub ts: String,
    pub kind: AuditKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Access>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    Granted,
    Downgraded,
    Revoked,
    Accepted,
    Denied,
    Finalized,
    Attached,
    Orphaned,
    Login,
    Logout,
    LoginFailed,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Granted => "granted",
            AuditKind::Downgraded => "downgraded",
            AuditKind::Revoked => "revoked",
            AuditKind::Accepted => "accepted",
            AuditKind::Denied => "denied",
            AuditKind::Finalized => "finalized",
            AuditKind::Attached => "attached",
            AuditKind::Orphaned => "orphaned",
            AuditKind::Login => "login",
            AuditKind::Logout => "logout",
            AuditKind::LoginFailed => "login_failed",
        }
    }
}

/// Every message the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerMsg {
    Welcome {
        protocol: u32,
        server: String,
        heartbeat_ms: u64,
    },
    Ping,
    Pong,
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        access: Option<Access>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        holders: Option<Vec<Holder>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcome: Option<Outcome>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        /// `auth_failed` while logins of this agent or peer are throttled: wait this long.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
        /// `not_active`: the `host:port` of the node that is active, when one is known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        active: Option<String>,
    },
    // desktop replies
    LoggedIn {
        agent: String,
        dn: String,
        session: String,
        resumed: bool,
    },
    LoggedOut {
        cause: LogoutCause,
    },
    LogoutPending {
        records: Vec<String>,
    },
    Record {
        record: String,
        access: Access,
        data: Object,
        context: Context,
        #[serde(rename = "final")]
        final_: Option<FinalInfo>,
    },
    RecordUpdated {
        record: String,
        version: u64,
    },
    RecordProcessedAck {
        record: String,
    },
    ChainedRecord {
        record: String,
        chain_n: u32,
        data: Object,
        access: Access,
    },
    ChainedRecordsEnd {
        record: String,
        count: u32,
    },
    RecordRejected {
        record: String,
    },
    RecordCancelled {
        record: String,
    },
    DoNotCallAck {
        record: String,
        scope: DncScope,
    },
    Rescheduled {
        record: String,
        at: String,
        callback: Callback,
    },
    // desktop pushes
    AccessChanged {
        record: String,
        access: Access,
        previous: Access,
        cause: AccessCause,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Object>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context: Option<Context>,
    },
    RecordChanged {
        record: String,
        version: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_result: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fields: Option<Object>,
        by: String,
    },
    RecordFinalized {
        record: String,
        by: String,
        outcome: Outcome,
    },
    CallAlerting {
        call: String,
        dn: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        record: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consult_of: Option<String>,
    },
    CallEstablished {
        call: String,
        dn: String,
    },
    CallCleared {
        call: String,
        dn: String,
        cause: String,
    },
    // dialer
    RecordAttached {
        record: String,
        call: String,
    },
    RecordOutcome {
        record: String,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_result: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fields: Option<Object>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        at: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<DncScope>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        callback_at: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        callback: Option<Callback>,
    },
    // switch
    Monitor {
        dns: Vec<String>,
    },
    Ack,
    AgentLogin {
        dn: String,
        agent: String,
    },
    AgentLogout {
        dn: String,
        agent: String,
    },
    // admin
    Audit(AuditEntry),
    AuditEnd {
        last_seq: u64,
    },
    /// Entries `from_seq..=to_seq` were removed by retention before this reader got to them.
    AuditTrimmed {
        from_seq: u64,
        to_seq: u64,
    },
    StatusReport {
        agents: u64,
        dns: u64,
        calls: u64,
        records_live: u64,
        records_final: u64,
        /// Of the final records, those still in memory (the rest are read back when asked for).
        #[serde(default)]
        records_final_in_memory: u64,
        connections: u64,
        ignored_events: u64,
        audit_last_seq: u64,
        uptime_s: u64,
        /// How the server's last start went, in milliseconds.
        #[serde(default)]
        startup: Startup,
    },
    RecordReport {
        record: String,
        state: String,
        holders: Vec<Holder>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call: Option<String>,
        #[serde(rename = "final", default, skip_serializing_if = "Option::is_none")]
        final_: Option<FinalInfo>,
        /// Number of accepted updates so far.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
        /// What the holders wrote so far (`call_result`, `fields`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context: Option<Context>,
    },
    RecordReleased {
        record: String,
    },
    /// One page of `Agents`: logged-in agents sorted by id; `more` when a later page has some.
    AgentsReport {
        agents: Vec<AgentInfo>,
        more: bool,
    },
    /// One page of `Calls`: live calls sorted by id; `more` when a later page has some.
    CallsReport {
        calls: Vec<CallInfo>,
        more: bool,
    },
}

impl ServerMsg {
    /// A plain error with a human message and no extra fields.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerMsg {
        ServerMsg::Error {
            code,
            message: message.into(),
            access: None,
            holders: None,
            outcome: None,
            by: None,
            retry_after_ms: None,
            active: None,
        }
    }

    pub fn type_name(&self) -> String {
        match serde_json::to_value(self) {
            Ok(Value::Object(o)) => o
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            _ => String::new(),
        }
    }
}

/// A server message with the `ref` of the request it answers (`None` for pushes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<u64>,
    #[serde(flatten)]
    pub msg: ServerMsg,
}

impl Envelope {
    pub fn reply(r#ref: Option<u64>, msg: ServerMsg) -> Envelope {
        Envelope { r#ref, msg }
    }
    pub fn push(msg: ServerMsg) -> Envelope {
        Envelope { r#ref: None, msg }
    }
    pub fn to_bytes(&self) -> bytes::Bytes {
        bytes::Bytes::from(serde_json::to_vec(self).expect("server messages serialize"))
    }
}
