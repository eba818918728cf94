//! Typed messages: what a frame means.
//!
//! Incoming frames are parsed in two steps so that every failure gets the error code the contract
//! asks for: first the frame must be a JSON object (`bad_frame`), then its `type` must be known
//! (`unknown_type`, connection kept) and allowed for the connection's role (`wrong_role`), and only
//! then is the body decoded into its struct, where a missing or ill-typed field is a `bad_request`
//! whose message names the field. Outgoing messages are one serde enum tagged by `type`, wrapped in
//! an [`Envelope`] that adds the `ref` of the request they answer.

mod parse;
mod requests;
mod server;

pub use parse::*;
pub use requests::*;
pub use server::*;

/// The fast and the careful request parser, each on its own, for the fuzz targets in `fuzz/`
/// (which check that they agree). Not an API: use [`parse_request`].
#[doc(hidden)]
pub mod fuzzing {
    use super::{Incoming, ParseError, Role};

    pub fn parse_request_fast(frame: &[u8], role: Role) -> Option<Incoming> {
        super::parse::parse_request_fast(frame, role)
    }

    pub fn parse_request_slow(frame: &[u8], role: Option<Role>) -> Result<Incoming, ParseError> {
        super::parse::parse_request_slow(frame, role)
    }
}

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
    DnNotAllowed,
    NotActive,
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
            ErrorCode::DnNotAllowed => "dn_not_allowed",
            ErrorCode::NotActive => "not_active",
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
