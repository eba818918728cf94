//! Builders for every request the tests and tools send, so that a message's shape is written
//! once. Each returns a [`Request`] ready for [`baton::client::Client::request`].

use baton::messages::*;
use serde_json::json;

/// `Hello` for `role` with `token`, at the protocol version this build speaks.
pub fn hello(role: Role, token: &str) -> Request {
    Request::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        role: role.as_str().to_owned(),
        token: Some(token.to_owned()),
    })
}

/// `Login` of `agent` on `dn`, resuming the session `resume` if given.
pub fn login(agent: &str, dn: &str, resume: Option<&str>) -> Request {
    Request::Login(Login {
        resume: resume.map(str::to_owned),
        ..Login::new(agent, dn)
    })
}

/// `Login` of `agent` on `dn` with a password (`directory` mode).
pub fn login_password(agent: &str, dn: &str, password: &str) -> Request {
    Request::Login(Login {
        password: Some(password.to_owned()),
        ..Login::new(agent, dn)
    })
}

/// `Login` of `agent` on `dn` with a bearer token (`jwt` mode).
pub fn login_jwt(agent: &str, dn: &str, jwt: &str) -> Request {
    Request::Login(Login {
        jwt: Some(jwt.to_owned()),
        ..Login::new(agent, dn)
    })
}

/// A desktop's `Logout`; `force` logs out at once instead of waiting for the last record.
pub fn logout(force: bool) -> Request {
    Request::Logout(Logout { force })
}

/// The switch's `AgentLogin` of `agent` on the phone at `dn`.
pub fn agent_login(dn: &str, agent: &str) -> Request {
    Request::AgentLogin(DnAgent {
        dn: dn.into(),
        agent: agent.into(),
    })
}

/// The switch's `AgentLogout` of `agent` from the phone at `dn`.
pub fn agent_logout(dn: &str, agent: &str) -> Request {
    Request::AgentLogout(DnAgent {
        dn: dn.into(),
        agent: agent.into(),
    })
}

/// `Ringing` of `call` on `dn`, with nothing else known about it.
pub fn ringing(call: &str, dn: &str) -> Request {
    ringing_full(call, dn, None, None, None)
}

/// `Ringing` with the caller's number (`ani`), the DN that placed the call (`from_dn`) and the
/// call it consults about (`consult_of`).
pub fn ringing_full(
    call: &str,
    dn: &str,
    ani: Option<&str>,
    from_dn: Option<&str>,
    consult_of: Option<&str>,
) -> Request {
    Request::Ringing(Ringing {
        call: call.into(),
        dn: dn.into(),
        ani: ani.map(Into::into),
        from_dn: from_dn.map(Into::into),
        consult_of: consult_of.map(Into::into),
    })
}

pub fn established(call: &str, dn: &str) -> Request {
    Request::Established(CallDn {
        call: call.into(),
        dn: dn.into(),
    })
}

pub fn released(call: &str, dn: &str, cause: Option<&str>) -> Request {
    Request::Released(Released {
        call: call.into(),
        dn: dn.into(),
        cause: cause.map(Into::into),
    })
}

pub fn transferred(
    call: &str,
    from: &str,
    to: &str,
    kind: TransferKind,
    consult: Option<&str>,
) -> Request {
    Request::Transferred(Transferred {
        call: call.into(),
        from_dn: from.into(),
        to_dn: to.into(),
        kind,
        consult_call: consult.map(Into::into),
    })
}

pub fn conferenced(call: &str, dn: &str, consult: Option<&str>) -> Request {
    Request::Conferenced(Conferenced {
        call: call.into(),
        dn: dn.into(),
        consult_call: consult.map(Into::into),
    })
}

/// The customer data every builder attaches: small, and naming its record.
pub fn customer(record: &str) -> Object {
    match json!({"name": format!("Customer of {record}"), "balance": 120}) {
        serde_json::Value::Object(o) => o,
        _ => unreachable!("a JSON object literal"),
    }
}

/// `AttachRecord` of `record` to `call`, on campaign `spring`, with [`customer`] data.
pub fn attach(call: &str, record: &str) -> Request {
    Request::AttachRecord(attach_record(call, record))
}

/// The `AttachRecord` body of [`attach`], for callers that adjust a field or two.
pub fn attach_record(call: &str, record: &str) -> AttachRecord {
    AttachRecord {
        call: call.into(),
        record: record.into(),
        campaign: "spring".into(),
        list: Some("list-1".into()),
        chain_id: Some(format!("chain-{record}")),
        chain_n: Some(0),
        phone: Some(format!("555{record}")),
        data: customer(record),
        chain: vec![],
    }
}

/// A request of `kind` (its wire `type`) that names only `record`; changes carry no fields.
pub fn record_req(kind: &str, record: &str) -> Request {
    let r = RecordRef {
        record: record.into(),
    };
    match kind {
        "GetRecord" => Request::GetRecord(r),
        "ChainedRecords" => Request::ChainedRecords(r),
        "RecordReject" => Request::RecordReject(r),
        "RecordCancel" => Request::RecordCancel(r),
        "RecordInfo" => Request::RecordInfo(r),
        "CancelRecord" => Request::CancelRecord(r),
        "UpdateRecord" => Request::UpdateRecord(change(record, None, None)),
        "RecordProcessed" => Request::RecordProcessed(change(record, None, None)),
        "DoNotCall" => Request::DoNotCall(DoNotCall {
            record: record.into(),
            scope: DncScope::Record,
        }),
        "Reschedule" => Request::Reschedule(Reschedule {
            record: record.into(),
            at: "2099-01-01T09:00:00Z".into(),
            callback: Callback::Personal,
        }),
        other => panic!("unknown request kind {other}"),
    }
}

fn change(record: &str, call_result: Option<&str>, fields: Option<Object>) -> RecordChange {
    RecordChange {
        record: record.into(),
        call_result: call_result.map(Into::into),
        fields,
    }
}

fn object(fields: serde_json::Value) -> Object {
    match fields {
        serde_json::Value::Object(o) => o,
        other => panic!("record fields must be a JSON object, not {other}"),
    }
}

/// `UpdateRecord` of `record` with `fields` (a JSON object).
pub fn update(record: &str, fields: serde_json::Value) -> Request {
    Request::UpdateRecord(change(record, None, Some(object(fields))))
}

/// `UpdateRecord` of `record` with a call result and `fields`.
pub fn update_with_result(record: &str, call_result: &str, fields: serde_json::Value) -> Request {
    Request::UpdateRecord(change(record, Some(call_result), Some(object(fields))))
}

/// `RecordProcessed` of `record` with a call result.
pub fn processed(record: &str, call_result: &str) -> Request {
    Request::RecordProcessed(change(record, Some(call_result), None))
}

/// `RecordProcessed` of `record` with a call result and fields.
pub fn processed_with(record: &str, call_result: &str, fields: serde_json::Value) -> Request {
    Request::RecordProcessed(change(record, Some(call_result), Some(object(fields))))
}

/// `AuditTail` from `from_seq` (the next new entry if `None`), following or not.
pub fn audit_tail(from_seq: Option<u64>, follow: bool) -> Request {
    Request::AuditTail(AuditTail {
        from_seq,
        follow,
        record: None,
        agent: None,
    })
}

/// `AuditTail` following the new entries about `agent`.
pub fn agent_feed(agent: &str) -> Request {
    Request::AuditTail(AuditTail {
        from_seq: None,
        follow: true,
        record: None,
        agent: Some(agent.into()),
    })
}

/// `AuditTail` of one record's entries from the start of the log, not following.
pub fn record_history(record: &str) -> Request {
    Request::AuditTail(AuditTail {
        from_seq: Some(1),
        follow: false,
        record: Some(record.into()),
        agent: None,
    })
}

/// An admin's `ReleaseRecord` of `record`, with the reason for the audit log.
pub fn release(record: &str, reason: &str) -> Request {
    Request::ReleaseRecord(ReleaseRecord {
        record: record.into(),
        reason: reason.into(),
    })
}
