//! Requests, client to server: one struct per message body, the `Request` enum, and which role
//! may send which type. Never decides anything about a request: that is the engine's job.

use super::*;

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub role: String,
    /// The role's shared secret; desktops send none when agents prove who they are at `Login`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Shows that a secret is there, never what it is: these structs reach `{:?}` in logs and panics.
fn secret(s: &Option<String>) -> Option<&'static str> {
    s.as_ref().map(|_| "(hidden)")
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("protocol", &self.protocol)
            .field("role", &self.role)
            .field("token", &secret(&self.token))
            .finish()
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Login {
    pub agent: String,
    pub dn: String,
    /// `directory` mode: the agent's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// `jwt` mode: a bearer token from the centre's identity provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
    /// What the server found of the credential before the engine takes the login; never read
    /// from or written to the wire.
    #[serde(skip)]
    pub proof: LoginProof,
}

impl Login {
    /// A login with no credential: for `open` mode, or a resume.
    pub fn new(agent: impl Into<String>, dn: impl Into<String>) -> Login {
        Login {
            agent: agent.into(),
            dn: dn.into(),
            password: None,
            jwt: None,
            resume: None,
            proof: LoginProof::Unchecked,
        }
    }
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("agent", &self.agent)
            .field("dn", &self.dn)
            .field("password", &secret(&self.password))
            .field("jwt", &secret(&self.jwt))
            .field("resume", &secret(&self.resume))
            .field("proof", &self.proof)
            .finish()
    }
}

/// What the server established about a `Login`'s credential before the engine sees the login.
/// The engine decides with it; it never checks a password or a signature itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LoginProof {
    /// Nothing was checked. In `open` mode that is all there is; otherwise the login stands only
    /// as a resume: its token must be the agent's live session on the same DN.
    #[default]
    Unchecked,
    /// The credential was checked: it names this agent, and the agent may use this DN.
    Verified,
    /// Refused before the engine; the engine audits it and answers the error.
    Refused {
        cause: LoginFailure,
        /// When throttled: how long until the window of failures has passed.
        retry_after_ms: Option<u64>,
    },
}

/// Why a login was refused: the `cause` of its `login_failed` audit entry. The desktop is told
/// `auth_failed` for the first two alike, and `dn_not_allowed` for the third.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// Wrong, missing, expired or unknown credential, unknown or disabled agent.
    BadCredential,
    /// Too many failures for this agent id or this peer address within the window.
    Throttled,
    /// The credential was right but the agent may not use this DN.
    DnNotAllowed,
}

impl LoginFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginFailure::BadCredential => "bad_credential",
            LoginFailure::Throttled => "throttled",
            LoginFailure::DnNotAllowed => "dn_not_allowed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Logout {
    #[serde(default)]
    pub force: bool,
}

/// Any request whose only field is the record handle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordRef {
    pub record: String,
}

/// `UpdateRecord` and `RecordProcessed`: optional changes to the record's context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordChange {
    pub record: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Object>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoNotCall {
    pub record: String,
    #[serde(default)]
    pub scope: DncScope,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reschedule {
    pub record: String,
    pub at: String,
    #[serde(default)]
    pub callback: Callback,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainEntry {
    pub record: String,
    pub chain_n: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default)]
    pub data: Object,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachRecord {
    pub call: String,
    pub record: String,
    pub campaign: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    pub data: Object,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<ChainEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ringing {
    pub call: String,
    pub dn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ani: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_dn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consult_of: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallDn {
    pub call: String,
    pub dn: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Released {
    pub call: String,
    pub dn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transferred {
    pub call: String,
    pub from_dn: String,
    pub to_dn: String,
    pub kind: TransferKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consult_call: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conferenced {
    pub call: String,
    pub dn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consult_call: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnAgent {
    pub dn: String,
    pub agent: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AuditTail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_seq: Option<u64>,
    #[serde(default)]
    pub follow: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// One page of an admin listing (`Agents`, `Calls`): entries sorted by id, those after `after`,
/// at most `limit` of them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Page {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl Page {
    /// Entries a page holds when the request names no `limit`.
    pub const DEFAULT_LIMIT: u32 = 500;
    /// The largest `limit` taken: a page must fit well inside one frame.
    pub const MAX_LIMIT: u32 = 1000;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub record: String,
    pub reason: String,
}

/// Every request a client may send, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Hello(Hello),
    Ping,
    Pong,
    // desktop
    Login(Login),
    Logout(Logout),
    GetRecord(RecordRef),
    UpdateRecord(RecordChange),
    RecordProcessed(RecordChange),
    ChainedRecords(RecordRef),
    RecordReject(RecordRef),
    RecordCancel(RecordRef),
    DoNotCall(DoNotCall),
    Reschedule(Reschedule),
    // dialer
    AttachRecord(AttachRecord),
    CancelRecord(RecordRef),
    // switch
    Ringing(Ringing),
    Established(CallDn),
    Released(Released),
    Transferred(Transferred),
    Conferenced(Conferenced),
    AgentLogin(DnAgent),
    AgentLogout(DnAgent),
    // admin
    AuditTail(AuditTail),
    Status,
    RecordInfo(RecordRef),
    ReleaseRecord(ReleaseRecord),
    Agents(Page),
    Calls(Page),
}

/// Who may send each request type: `None` means any role (and also before `Hello`, for `Hello`).
pub(crate) fn role_of(type_name: &str) -> Option<Option<Role>> {
    let role = match type_name {
        "Hello" | "Ping" | "Pong" => None,
        "Login" | "Logout" | "GetRecord" | "UpdateRecord" | "RecordProcessed"
        | "ChainedRecords" | "RecordReject" | "RecordCancel" | "DoNotCall" | "Reschedule" => {
            Some(Role::Desktop)
        }
        "AttachRecord" | "CancelRecord" => Some(Role::Dialer),
        "Ringing" | "Established" | "Released" | "Transferred" | "Conferenced" | "AgentLogin"
        | "AgentLogout" => Some(Role::Switch),
        "AuditTail" | "Status" | "RecordInfo" | "ReleaseRecord" | "Agents" | "Calls" => {
            Some(Role::Admin)
        }
        _ => return None,
    };
    Some(role)
}

/// Every request type name, for documentation and tests.
pub const REQUEST_TYPES: &[&str] = &[
    "Hello",
    "Ping",
    "Pong",
    "Login",
    "Logout",
    "GetRecord",
    "UpdateRecord",
    "RecordProcessed",
    "ChainedRecords",
    "RecordReject",
    "RecordCancel",
    "DoNotCall",
    "Reschedule",
    "AttachRecord",
    "CancelRecord",
    "Ringing",
    "Established",
    "Released",
    "Transferred",
    "Conferenced",
    "AgentLogin",
    "AgentLogout",
    "AuditTail",
    "Status",
    "RecordInfo",
    "ReleaseRecord",
    "Agents",
    "Calls",
];

impl Request {
    pub fn type_name(&self) -> &'static str {
        match self {
            Request::Hello(_) => "Hello",
            Request::Ping => "Ping",
            Request::Pong => "Pong",
            Request::Login(_) => "Login",
            Request::Logout(_) => "Logout",
            Request::GetRecord(_) => "GetRecord",
            Request::UpdateRecord(_) => "UpdateRecord",
            Request::RecordProcessed(_) => "RecordProcessed",
            Request::ChainedRecords(_) => "ChainedRecords",
            Request::RecordReject(_) => "RecordReject",
            Request::RecordCancel(_) => "RecordCancel",
            Request::DoNotCall(_) => "DoNotCall",
            Request::Reschedule(_) => "Reschedule",
            Request::AttachRecord(_) => "AttachRecord",
            Request::CancelRecord(_) => "CancelRecord",
            Request::Ringing(_) => "Ringing",
            Request::Established(_) => "Established",
            Request::Released(_) => "Released",
            Request::Transferred(_) => "Transferred",
            Request::Conferenced(_) => "Conferenced",
            Request::AgentLogin(_) => "AgentLogin",
            Request::AgentLogout(_) => "AgentLogout",
            Request::AuditTail(_) => "AuditTail",
            Request::Status => "Status",
            Request::RecordInfo(_) => "RecordInfo",
            Request::ReleaseRecord(_) => "ReleaseRecord",
            Request::Agents(_) => "Agents",
            Request::Calls(_) => "Calls",
        }
    }

    /// The role allowed to send this request, `None` for any role.
    pub fn role(&self) -> Option<Role> {
        role_of(self.type_name()).flatten()
    }

    /// Serializes the request as a wire object with its `type` and optional `ref`.
    pub fn to_value(&self, r#ref: Option<u64>) -> Value {
        fn body<T: Serialize>(t: &T) -> Value {
            serde_json::to_value(t).expect("request structs serialize")
        }
        let mut v = match self {
            Request::Ping | Request::Pong | Request::Status => Value::Object(Map::new()),
            Request::Hello(x) => body(x),
            Request::Login(x) => body(x),
            Request::Logout(x) => body(x),
            Request::GetRecord(x)
            | Request::ChainedRecords(x)
            | Request::RecordReject(x)
            | Request::RecordCancel(x)
            | Request::CancelRecord(x)
            | Request::RecordInfo(x) => body(x),
            Request::UpdateRecord(x) | Request::RecordProcessed(x) => body(x),
            Request::DoNotCall(x) => body(x),
            Request::Reschedule(x) => body(x),
            Request::AttachRecord(x) => body(x),
            Request::Ringing(x) => body(x),
            Request::Established(x) => body(x),
            Request::Released(x) => body(x),
            Request::Transferred(x) => body(x),
            Request::Conferenced(x) => body(x),
            Request::AgentLogin(x) | Request::AgentLogout(x) => body(x),
            Request::AuditTail(x) => body(x),
            Request::ReleaseRecord(x) => body(x),
            Request::Agents(x) | Request::Calls(x) => body(x),
        };
        let obj = v.as_object_mut().expect("request bodies are objects");
        obj.insert("type".into(), Value::String(self.type_name().into()));
        if let Some(r) = r#ref {
            obj.insert("ref".into(), Value::from(r));
        }
        v
    }
}
