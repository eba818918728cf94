//! Why things happen, as closed sets: why a session began or ended, why the server cleared a
//! call from a DN, who made a record final, where a record stands. The engine passes these around; they become the
//! contract's strings only where they leave it (audit entries, pushes, reports). Never holds
//! state and never decides anything.

use super::ids::AgentId;

/// Why a desktop session began or ended, as the audit log's `cause` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionCause {
    /// The desktop logged in, or logged out on its own.
    Desktop,
    /// The desktop logged out with `force`, returning the records it held.
    DesktopForce,
    /// A desktop took its session back with the resume token.
    Resume,
    /// Another connection took the session over, or the agent moved to another DN.
    Replaced,
    /// The desktop stayed away longer than `resume_grace_ms`.
    GraceExpired,
    /// The phone reported a login or logout that ended the desktop session.
    Phone,
}

impl SessionCause {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            SessionCause::Desktop => "desktop",
            SessionCause::DesktopForce => "desktop_force",
            SessionCause::Resume => "resume",
            SessionCause::Replaced => "replaced",
            SessionCause::GraceExpired => "grace_expired",
            SessionCause::Phone => "phone",
        }
    }
}

/// Why the server tells a DN's desktop that a call left it, when no `Released` said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClearCause {
    /// The call was transferred away from the DN, or its consultation merged by a transfer.
    Transferred,
    /// The consultation was merged into the customer call by a conference.
    Conferenced,
    /// The switch said nothing about the call for `call_idle_timeout_ms`.
    IdleTimeout,
}

impl ClearCause {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            ClearCause::Transferred => "transferred",
            ClearCause::Conferenced => "conferenced",
            ClearCause::IdleTimeout => "idle_timeout",
        }
    }
}

/// Where a record stands, as `RecordReport.state` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecordState {
    Final,
    /// Someone holds it `full` or `read_only`.
    Held,
    /// Nobody holds it any more; the orphan clock runs.
    Orphaned,
    /// Attached, never held yet.
    Waiting,
}

impl RecordState {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            RecordState::Final => "final",
            RecordState::Held => "held",
            RecordState::Orphaned => "orphaned",
            RecordState::Waiting => "waiting",
        }
    }
}

/// Who made a record final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FinalBy {
    /// The agent whose request decided the outcome: it gets that request's answer instead of
    /// `RecordFinalized`.
    Agent(AgentId),
    /// An administrator's `ReleaseRecord`.
    Admin,
    /// The dialer's `CancelRecord`.
    Dialer,
    /// The server itself (the orphan timeout).
    Server,
}

impl FinalBy {
    /// As `FinalInfo.by` and the audit entry's agent say it: `None` for the server.
    pub(super) fn name(&self) -> Option<String> {
        match self {
            FinalBy::Agent(agent) => Some(agent.into()),
            FinalBy::Admin => Some("admin".to_owned()),
            FinalBy::Dialer => Some("dialer".to_owned()),
            FinalBy::Server => None,
        }
    }

    /// The agent who decided, if an agent did.
    pub(super) fn agent(&self) -> Option<&AgentId> {
        match self {
            FinalBy::Agent(agent) => Some(agent),
            _ => None,
        }
    }
}
