//! Typed messages: what a frame means.
//!
//! Incoming frames are parsed in two steps so that every failure gets the error code the contract
//! asks for: first the frame must be a JSON object (`bad_frame`), then its `type` must be known
//! (`unknown_type`, connection kept) and allowed for the connection's role (`wrong_role`), and only
//! then is the body decoded into its struct, where a missing or ill-typed field is a `bad_request`
//! whose message names the field. Outgoing messages are one serde enum tagged by `type`, wrapped in
//! an [`Envelope`] that adds the `ref` of the request they answer.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Wire protocol version spoken by this server.
pub const PROTOCOL_VERSION: u32 = 1;

/// JSON object, as used for record data and free-form fields.
pub type Object = Map<String, Value>;

/// The four kinds of client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Desktop,
    Dialer,
    Switch,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Desktop => "desktop",
            Role::Dialer => "dialer",
            Role::Switch => "switch",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "desktop" => Some(Role::Desktop),
            "dialer" => Some(Role::Dialer),
            "switch" => Some(Role::Switch),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error codes of CONTRACT section 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadFrame,
    HelloRequired,
    AuthFailed,
    ProtocolMismatch,
    UnknownType,
    BadRequest,
    WrongRole,
    NotLoggedIn,
    DnInUse,
    NoSuchRecord,
    AccessDenied,
    ReadOnly,
    AlreadyFinal,
    RecordBusy,
    Overloaded,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::ProtocolMismatch => "protocol_mismatch",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::WrongRole => "wrong_role",
            ErrorCode::NotLoggedIn => "not_logged_in",
            ErrorCode::DnInUse => "dn_in_use",
            ErrorCode::NoSuchRecord => "no_such_record",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::ReadOnly => "read_only",
            ErrorCode::AlreadyFinal => "already_final",
            ErrorCode::RecordBusy => "record_busy",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Access of one agent to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Revoked,
    ReadOnly,
    Full,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Revoked => "revoked",
            Access::ReadOnly => "read_only",
            Access::Full => "full",
        }
    }
    /// `full` or `read_only`: the agent may read the record.
    pub fn is_granted(self) -> bool {
        self != Access::Revoked
    }
}

/// Why an agent's access changed (`AccessChanged.cause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessCause {
    Established,
    Transfer,
    Consultation,
    Conference,
    Left,
    Released,
    Logout,
    Admin,
    Resume,
}

impl AccessCause {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessCause::Established => "established",
            AccessCause::Transfer => "transfer",
            AccessCause::Consultation => "consultation",
            AccessCause::Conference => "conference",
            AccessCause::Left => "left",
            AccessCause::Released => "released",
            AccessCause::Logout => "logout",
            AccessCause::Admin => "admin",
            AccessCause::Resume => "resume",
        }
    }
}

/// A record's final outcome, as the dialer learns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Processed,
    Rejected,
    Cancelled,
    DoNotCall,
    Rescheduled,
    Returned,
    Stale,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Processed => "processed",
            Outcome::Rejected => "rejected",
            Outcome::Cancelled => "cancelled",
            Outcome::DoNotCall => "do_not_call",
            Outcome::Rescheduled => "rescheduled",
            Outcome::Returned => "returned",
            Outcome::Stale => "stale",
        }
    }
}

/// Why a desktop session ended (`LoggedOut.cause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogoutCause {
    Desktop,
    Phone,
    Replaced,
    Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DncScope {
    #[default]
    Record,
    Chain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Callback {
    #[default]
    Personal,
    Campaign,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    SingleStep,
    Mute,
    TwoStep,
}

// ---------------------------------------------------------------------------------------------
// Requests (client to server)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub role: String,
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Login {
    pub agent: String,
    pub dn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
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
}

/// Who may send each request type: `None` means any role (and also before `Hello`, for `Hello`).
fn role_of(type_name: &str) -> Option<Option<Role>> {
    let role = match type_name {
        "Hello" | "Ping" | "Pong" => None,
        "Login" | "Logout" | "GetRecord" | "UpdateRecord" | "RecordProcessed"
        | "ChainedRecords" | "RecordReject" | "RecordCancel" | "DoNotCall" | "Reschedule" => {
            Some(Role::Desktop)
        }
        "AttachRecord" | "CancelRecord" => Some(Role::Dialer),
        "Ringing" | "Established" | "Released" | "Transferred" | "Conferenced" | "AgentLogin"
        | "AgentLogout" => Some(Role::Switch),
        "AuditTail" | "Status" | "RecordInfo" | "ReleaseRecord" => Some(Role::Admin),
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
        };
        let obj = v.as_object_mut().expect("request bodies are objects");
        obj.insert("type".into(), Value::String(self.type_name().into()));
        if let Some(r) = r#ref {
            obj.insert("ref".into(), Value::from(r));
        }
        v
    }
}

/// Why a frame could not become a request. Each maps to one error code.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub code: ErrorCode,
    pub message: String,
    /// The `ref` of the frame, when it could be read, so the error can echo it.
    pub r#ref: Option<u64>,
    /// The `type` of the frame, when it could be read.
    pub type_name: Option<String>,
}

/// A decoded request with its `ref`.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub r#ref: Option<u64>,
    pub request: Request,
}

/// The envelope fields of a frame, read without building a JSON tree.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    type_name: std::borrow::Cow<'a, str>,
    #[serde(rename = "ref", default)]
    r#ref: Option<u64>,
}

/// The common case, decoded straight from the bytes: a well-formed frame of a known type allowed
/// for `role`. Anything else returns `None` and goes through [`parse_request_slow`], which finds
/// the precise error.
fn parse_request_fast(frame: &[u8], role: Role) -> Option<Incoming> {
    fn de<'a, T: Deserialize<'a>>(frame: &'a [u8]) -> Option<T> {
        serde_json::from_slice(frame).ok()
    }
    let head: Head = serde_json::from_slice(frame).ok()?;
    let allowed = role_of(&head.type_name)?;
    if allowed.is_some_and(|r| r != role) {
        return None;
    }
    let request = match head.type_name.as_ref() {
        "Ping" => Request::Ping,
        "Pong" => Request::Pong,
        "Status" => Request::Status,
        "Login" => Request::Login(de(frame)?),
        "Logout" => Request::Logout(de(frame)?),
        "GetRecord" => Request::GetRecord(de(frame)?),
        "UpdateRecord" => Request::UpdateRecord(de(frame)?),
        "RecordProcessed" => Request::RecordProcessed(de(frame)?),
        "ChainedRecords" => Request::ChainedRecords(de(frame)?),
        "RecordReject" => Request::RecordReject(de(frame)?),
        "RecordCancel" => Request::RecordCancel(de(frame)?),
        "DoNotCall" => Request::DoNotCall(de(frame)?),
        "Reschedule" => Request::Reschedule(de(frame)?),
        "AttachRecord" => Request::AttachRecord(de(frame)?),
        "CancelRecord" => Request::CancelRecord(de(frame)?),
        "Ringing" => Request::Ringing(de(frame)?),
        "Established" => Request::Established(de(frame)?),
        "Released" => Request::Released(de(frame)?),
        "Transferred" => Request::Transferred(de(frame)?),
        "Conferenced" => Request::Conferenced(de(frame)?),
        "AgentLogin" => Request::AgentLogin(de(frame)?),
        "AgentLogout" => Request::AgentLogout(de(frame)?),
        "AuditTail" => Request::AuditTail(de(frame)?),
        "RecordInfo" => Request::RecordInfo(de(frame)?),
        "ReleaseRecord" => Request::ReleaseRecord(de(frame)?),
        _ => return None, // Hello and anything new take the careful path
    };
    Some(Incoming {
        r#ref: head.r#ref,
        request,
    })
}

/// Parses one frame body sent by a client whose role is `role` (`None` before `Hello`).
pub fn parse_request(frame: &[u8], role: Option<Role>) -> Result<Incoming, ParseError> {
    // serde_json does not check the UTF-8 of values it skips, so check the whole frame first.
    if let (Some(role), Ok(_)) = (role, std::str::from_utf8(frame)) {
        if let Some(incoming) = parse_request_fast(frame, role) {
            return Ok(incoming);
        }
    }
    parse_request_slow(frame, role)
}

fn parse_request_slow(frame: &[u8], role: Option<Role>) -> Result<Incoming, ParseError> {
    let err = |code, message: String, r#ref, type_name| ParseError {
        code,
        message,
        r#ref,
        type_name,
    };
    let text = std::str::from_utf8(frame).map_err(|e| {
        err(
            ErrorCode::BadFrame,
            format!("frame is not valid UTF-8: {e}"),
            None,
            None,
        )
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        err(
            ErrorCode::BadFrame,
            format!("frame is not valid JSON: {e}"),
            None,
            None,
        )
    })?;
    let Value::Object(mut obj) = value else {
        return Err(err(
            ErrorCode::BadFrame,
            "frame must hold one JSON object".into(),
            None,
            None,
        ));
    };
    let r#ref = match obj.remove("ref") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(r) => Some(r),
            None => {
                return Err(err(
                    ErrorCode::BadRequest,
                    "field `ref` must be an unsigned integer".into(),
                    None,
                    obj.get("type").and_then(Value::as_str).map(str::to_owned),
                ))
            }
        },
    };
    let type_name = match obj.remove("type") {
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(err(
                ErrorCode::BadRequest,
                "field `type` must be a string".into(),
                r#ref,
                None,
            ))
        }
        None => {
            return Err(err(
                ErrorCode::BadRequest,
                "missing field `type`".into(),
                r#ref,
                None,
            ))
        }
    };
    let Some(allowed) = role_of(&type_name) else {
        return Err(err(
            ErrorCode::UnknownType,
            format!("unknown message type `{type_name}`"),
            r#ref,
            Some(type_name),
        ));
    };
    if role.is_none() && type_name != "Hello" {
        return Err(err(
            ErrorCode::HelloRequired,
            format!("the first frame must be Hello, not `{type_name}`"),
            r#ref,
            Some(type_name),
        ));
    }
    if let (Some(allowed), Some(role)) = (allowed, role) {
        if allowed != role {
            return Err(err(
                ErrorCode::WrongRole,
                format!("`{type_name}` is for role `{allowed}`, this connection is `{role}`"),
                r#ref,
                Some(type_name),
            ));
        }
    }
    let body = Value::Object(obj);
    fn de<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, String> {
        serde_path_to_error::deserialize(body).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            if path == "." || inner.contains("missing field") {
                inner
            } else {
                format!("field `{path}`: {inner}")
            }
        })
    }
    let request = match type_name.as_str() {
        "Hello" => de(body).map(Request::Hello),
        "Ping" => Ok(Request::Ping),
        "Pong" => Ok(Request::Pong),
        "Login" => de(body).map(Request::Login),
        "Logout" => de(body).map(Request::Logout),
        "GetRecord" => de(body).map(Request::GetRecord),
        "UpdateRecord" => de(body).map(Request::UpdateRecord),
        "RecordProcessed" => de(body).map(Request::RecordProcessed),
        "ChainedRecords" => de(body).map(Request::ChainedRecords),
        "RecordReject" => de(body).map(Request::RecordReject),
        "RecordCancel" => de(body).map(Request::RecordCancel),
        "DoNotCall" => de(body).map(Request::DoNotCall),
        "Reschedule" => de(body).map(Request::Reschedule),
        "AttachRecord" => de(body).map(Request::AttachRecord),
        "CancelRecord" => de(body).map(Request::CancelRecord),
        "Ringing" => de(body).map(Request::Ringing),
        "Established" => de(body).map(Request::Established),
        "Released" => de(body).map(Request::Released),
        "Transferred" => de(body).map(Request::Transferred),
        "Conferenced" => de(body).map(Request::Conferenced),
        "AgentLogin" => de(body).map(Request::AgentLogin),
        "AgentLogout" => de(body).map(Request::AgentLogout),
        "AuditTail" => de(body).map(Request::AuditTail),
        "Status" => Ok(Request::Status),
        "RecordInfo" => de(body).map(Request::RecordInfo),
        "ReleaseRecord" => de(body).map(Request::ReleaseRecord),
        other => unreachable!("role_of knows `{other}` but the decoder does not"),
    };
    request
        .map(|request| Incoming { r#ref, request })
        .map_err(|message| {
            err(
                ErrorCode::BadRequest,
                format!("{type_name}: {message}"),
                r#ref,
                Some(type_name.clone()),
            )
        })
}

// ---------------------------------------------------------------------------------------------
// Server messages (replies and pushes)
// ---------------------------------------------------------------------------------------------

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

/// Formats a time given in milliseconds since the Unix epoch as RFC 3339 UTC (millisecond precision).
pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms as i64);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00.000Z"))
}

/// Parses an RFC 3339 time to milliseconds since the Unix epoch.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str, role: Option<Role>) -> Result<Incoming, ParseError> {
        parse_request(s.as_bytes(), role)
    }

    #[test]
    fn hello_parses_before_a_role_is_known() {
        let inc = parse(
            r#"{"type":"Hello","ref":1,"protocol":1,"role":"desktop","token":"t"}"#,
            None,
        )
        .unwrap();
        assert_eq!(inc.r#ref, Some(1));
        assert!(matches!(inc.request, Request::Hello(ref h) if h.role == "desktop"));
    }

    #[test]
    fn not_an_object_is_bad_frame() {
        for s in ["[1,2]", "\"x\"", "12", "{nope", ""] {
            assert_eq!(parse(s, None).unwrap_err().code, ErrorCode::BadFrame, "{s}");
        }
        let e = parse_request(&[0x7b, 0xff, 0x7d], None).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadFrame);
    }

    #[test]
    fn unknown_type_keeps_ref() {
        let e = parse(r#"{"type":"Frobnicate","ref":9}"#, Some(Role::Desktop)).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownType);
        assert_eq!(e.r#ref, Some(9));
    }

    #[test]
    fn missing_field_is_named() {
        let e = parse(
            r#"{"type":"Login","ref":3,"dn":"7001"}"#,
            Some(Role::Desktop),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("agent"), "{}", e.message);
        let e = parse(
            r#"{"type":"Login","ref":3,"dn":7001,"agent":"a"}"#,
            Some(Role::Desktop),
        )
        .unwrap_err();
        assert!(e.message.contains("dn"), "{}", e.message);
    }

    #[test]
    fn wrong_role_is_detected_before_the_body() {
        let e = parse(r#"{"type":"AttachRecord","ref":1}"#, Some(Role::Desktop)).unwrap_err();
        assert_eq!(e.code, ErrorCode::WrongRole);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let inc = parse(
            r#"{"type":"GetRecord","ref":2,"record":"R1","colour":"blue"}"#,
            Some(Role::Desktop),
        )
        .unwrap();
        assert_eq!(
            inc.request,
            Request::GetRecord(RecordRef {
                record: "R1".into()
            })
        );
    }

    #[test]
    fn requests_round_trip_through_to_value() {
        let req = Request::Transferred(Transferred {
            call: "C1".into(),
            from_dn: "7001".into(),
            to_dn: "7002".into(),
            kind: TransferKind::TwoStep,
            consult_call: Some("C2".into()),
        });
        let v = req.to_value(Some(5));
        let back = parse_request(v.to_string().as_bytes(), Some(Role::Switch)).unwrap();
        assert_eq!(back.request, req);
        assert_eq!(back.r#ref, Some(5));
    }

    #[test]
    fn envelope_carries_ref_and_type() {
        let e = Envelope::reply(Some(7), ServerMsg::Ack);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"type":"Ack","ref":7})
        );
        let p = Envelope::push(ServerMsg::LoggedOut {
            cause: LogoutCause::Replaced,
        });
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"type":"LoggedOut","cause":"replaced"})
        );
        let back: Envelope = serde_json::from_slice(&e.to_bytes()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn fast_and_careful_parsers_agree() {
        let frames = [
            r#"{"type":"GetRecord","ref":2,"record":"R1","extra":[1,2]}"#,
            r#"{"ref":3,"type":"UpdateRecord","record":"R1","fields":{"a":1},"call_result":"x"}"#,
            r#"{"type":"Transferred","ref":4,"call":"C","from_dn":"1","to_dn":"2","kind":"mute"}"#,
            r#"{"type":"Ping"}"#,
            r#"{"type":"Logout","ref":5}"#,
        ];
        for f in frames {
            for role in [Role::Desktop, Role::Switch] {
                let fast = parse_request_fast(f.as_bytes(), role);
                let slow = parse_request_slow(f.as_bytes(), Some(role)).ok();
                assert_eq!(fast, slow, "{f} as {role}");
            }
        }
    }

    #[test]
    fn times_round_trip() {
        let ms = 1_790_000_000_123;
        let s = rfc3339(ms);
        assert!(s.ends_with('Z'));
        assert_eq!(parse_rfc3339(&s), Some(ms));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
