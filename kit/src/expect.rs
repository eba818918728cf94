//! Assertions on what a connection receives, named after what they expect.

use baton::client::Client;
use baton::messages::*;
use std::time::Duration;

/// Sends a telephony event and checks it is acknowledged.
pub async fn event(switch: &mut Client, request: Request) {
    let reply = switch.request(request.clone()).await.expect("an answer");
    assert_eq!(reply, ServerMsg::Ack, "event {request:?}");
}

/// Asserts the reply is an `Error` with `code`, returning its message.
pub fn expect_error(msg: &ServerMsg, code: ErrorCode) -> String {
    match msg {
        ServerMsg::Error {
            code: c, message, ..
        } if *c == code => message.clone(),
        other => panic!("expected Error {code:?}, got {other:?}"),
    }
}

/// Asserts no push arrives within a short while.
pub async fn expect_quiet(client: &mut Client) {
    if let Some(m) = client
        .try_next_push(Duration::from_millis(150))
        .await
        .expect("a connection")
    {
        panic!("expected no push, got {m:?}");
    }
}

/// Asserts the next push is exactly `expected`.
pub async fn expect_push(client: &mut Client, expected: ServerMsg) {
    assert_eq!(client.next_push().await.expect("a push"), expected);
}

/// Asserts the next push is a `CallAlerting` for `call`.
pub async fn expect_call_alerting(client: &mut Client, call: &str) {
    match client.next_push().await.expect("a push") {
        ServerMsg::CallAlerting { call: c, .. } => assert_eq!(c, call),
        other => panic!("expected CallAlerting, got {other:?}"),
    }
}

/// What an `AccessChanged` push says: record, access, previous access, cause, data, context.
pub type AccessPush = (
    String,
    Access,
    Access,
    AccessCause,
    Option<Object>,
    Option<Context>,
);

/// The next push, asserted to be an `AccessChanged`.
pub async fn expect_access(client: &mut Client) -> AccessPush {
    match client.next_push().await.expect("a push") {
        ServerMsg::AccessChanged {
            record,
            access,
            previous,
            cause,
            data,
            context,
            ..
        } => (record, access, previous, cause, data, context),
        other => panic!("expected AccessChanged, got {other:?}"),
    }
}

/// Record, access and cause of an `AccessChanged`.
pub fn access_of(m: &ServerMsg) -> (String, Access, AccessCause) {
    match m {
        ServerMsg::AccessChanged {
            record,
            access,
            cause,
            ..
        } => (record.clone(), *access, *cause),
        other => panic!("expected AccessChanged, got {other:?}"),
    }
}

/// Skips call pushes and returns the next push about a record (`AccessChanged`,
/// `RecordFinalized`, ...).
pub async fn next_record_push(client: &mut Client) -> ServerMsg {
    loop {
        match client.next_push().await.expect("a push") {
            ServerMsg::CallAlerting { .. }
            | ServerMsg::CallEstablished { .. }
            | ServerMsg::CallCleared { .. } => {}
            other => return other,
        }
    }
}

/// Every push until the connection has been quiet for 150 ms.
pub async fn pushes_until_quiet(client: &mut Client) -> Vec<ServerMsg> {
    let mut all = Vec::new();
    while let Some(m) = client
        .try_next_push(Duration::from_millis(150))
        .await
        .expect("a connection")
    {
        all.push(m);
    }
    all
}

/// Drops every push that arrives until the connection has been quiet for 50 ms.
pub async fn drain(client: &mut Client) {
    while client
        .try_next_push(Duration::from_millis(50))
        .await
        .expect("a connection")
        .is_some()
    {}
}

/// Ends `client`'s connection without a `Logout`, as a desktop whose browser or machine went away:
/// the server sees the connection close. The client can still read what was sent before.
pub async fn hang_up(client: &mut Client) {
    client.hang_up().await;
}

/// Puts `record` on `call` established on `dn`, where `desk` is logged in; waits for its `full`
/// access and drops the pushes before it.
pub async fn give(
    switch: &mut Client,
    dialer: &mut Client,
    desk: &mut Client,
    call: &str,
    record: &str,
    dn: &str,
) {
    dialer
        .request(crate::attach(call, record))
        .await
        .expect("AttachRecord answered");
    event(switch, crate::ringing(call, dn)).await;
    event(switch, crate::established(call, dn)).await;
    loop {
        if let ServerMsg::AccessChanged {
            record: r, access, ..
        } = desk.next_push().await.expect("a push")
        {
            assert_eq!((r.as_str(), access), (record, Access::Full));
            return;
        }
    }
}

/// The audit entries among `messages` (what an `AuditTail` answered), in order.
pub fn entries(messages: Vec<ServerMsg>) -> Vec<AuditEntry> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            ServerMsg::Audit(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// The durable audit log from `from_seq` on, as one `AuditTail` (not following) returns it.
pub async fn audit_from(admin: &mut Client, from_seq: u64) -> Vec<AuditEntry> {
    entries(
        admin
            .request_stream(crate::audit_tail(Some(from_seq), false))
            .await
            .expect("AuditTail answered"),
    )
}

/// The whole audit log, once every entry the server has assigned is durable (entries of reads
/// and refusals are written a few milliseconds after their reply).
pub async fn whole_audit_log(admin: &mut Client) -> Vec<AuditEntry> {
    let assigned = match admin.request(Request::Status).await.expect("StatusReport") {
        ServerMsg::StatusReport { audit_last_seq, .. } => audit_last_seq,
        other => panic!("expected StatusReport, got {other:?}"),
    };
    for _ in 0..400 {
        let entries = audit_from(admin, 1).await;
        if entries.last().map_or(0, |e| e.seq) >= assigned {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("audit entries up to {assigned} never became durable");
}
