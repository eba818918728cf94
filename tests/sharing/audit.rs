//! Rule 12: every decision is audited, and the audit log can be followed per agent.

use super::*;

#[tokio::test]
async fn every_decision_is_audited() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    t.consult_b("C1", "C2", "R1", true).await;
    t.b.request(record_req("UpdateRecord", "R1")).await.unwrap();
    t.a.request(update("R1", json!({"k": 1}))).await.unwrap();
    t.a.request(processed("R1", "sale")).await.unwrap();
    let entries = t.audit("R1").await;
    let kinds: Vec<AuditKind> = entries.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            AuditKind::Attached,
            AuditKind::Granted,  // A full
            AuditKind::Granted,  // B read_only
            AuditKind::Denied,   // B's update
            AuditKind::Accepted, // A's update
            AuditKind::Accepted, // A's RecordProcessed
            AuditKind::Finalized,
            AuditKind::Revoked, // A
            AuditKind::Revoked, // B
        ]
    );
    let denied = &entries[3];
    assert_eq!(denied.agent.as_deref(), Some("B"));
    assert_eq!(denied.code, Some(ErrorCode::ReadOnly));
    assert_eq!(denied.request.as_deref(), Some("UpdateRecord"));
    assert_eq!(denied.access, Some(Access::ReadOnly));
    let grant = &entries[2];
    assert_eq!(
        (grant.access, grant.previous),
        (Some(Access::ReadOnly), Some(Access::Revoked))
    );
    assert_eq!(grant.cause.as_deref(), Some("consultation"));
    assert_eq!(grant.dn.as_deref(), Some("7002"));
    // Sequence numbers increase without gaps across the whole log.
    let all = t
        .admin
        .request_stream(audit_tail(Some(1), false))
        .await
        .unwrap();
    let seqs: Vec<u64> = all
        .iter()
        .filter_map(|m| match m {
            ServerMsg::Audit(e) => Some(e.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn audit_tail_follows_live_entries_for_one_agent() {
    let mut t = Centre::new().await;
    let mut tail = t.server.connect(Role::Admin).await;
    let r = tail.send(&agent_feed("B")).await.unwrap();
    t.call_on_a("C1", "R1").await;
    t.consult_b("C1", "C2", "R1", true).await;
    match tail.reply_to(r).await.unwrap() {
        ServerMsg::Audit(e) => {
            assert_eq!(
                (e.kind, e.agent.as_deref(), e.access),
                (AuditKind::Granted, Some("B"), Some(Access::ReadOnly))
            );
        }
        other => panic!("{other:?}"),
    }
}

/// The entry of a refusal is written up to 20 ms after the refusal is answered. A following tail
/// that starts in that time gets it when it is written, without waiting for a later entry.
#[tokio::test]
async fn a_tail_started_while_a_refusals_entry_waits_for_the_disk_gets_it() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    let mut tail = t.server.connect(Role::Admin).await;
    tail.set_timeout(Duration::from_secs(3));
    // B never held R1: refused, and the refusal's entry waits for the disk.
    match t.b.request(record_req("GetRecord", "R1")).await.unwrap() {
        ServerMsg::Error { code, .. } => assert_eq!(code, ErrorCode::AccessDenied),
        other => panic!("{other:?}"),
    }
    let r = tail.send(&agent_feed("B")).await.unwrap();
    match tail.reply_to(r).await {
        Ok(ServerMsg::Audit(e)) => assert_eq!(
            (e.kind, e.agent.as_deref(), e.code),
            (AuditKind::Denied, Some("B"), Some(ErrorCode::AccessDenied))
        ),
        other => panic!("the refusal's entry did not reach the tail: {other:?}"),
    }
}

/// PROTOCOL.md's recipe for a record's complete history now: `Status` names the last entry
/// decided, durable or not; tails without `follow` are repeated from where the last one ended
/// until they reach it. The refusal answered just before is in the history.
#[tokio::test]
async fn the_history_recipe_finds_the_refusal_answered_just_before() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    match t.b.request(record_req("UpdateRecord", "R1")).await.unwrap() {
        ServerMsg::Error { code, .. } => assert_eq!(code, ErrorCode::AccessDenied),
        other => panic!("{other:?}"),
    }
    let decided = match t.admin.request(Request::Status).await.unwrap() {
        ServerMsg::StatusReport { audit_last_seq, .. } => audit_last_seq,
        other => panic!("{other:?}"),
    };
    let mut history = Vec::new();
    let mut from = 1;
    for _ in 0..100 {
        let frames = t
            .admin
            .request_stream(Request::AuditTail(AuditTail {
                from_seq: Some(from),
                follow: false,
                record: Some("R1".into()),
                agent: None,
            }))
            .await
            .unwrap();
        let mut last = 0;
        for f in frames {
            match f {
                ServerMsg::Audit(e) => history.push(e),
                ServerMsg::AuditEnd { last_seq } => last = last_seq,
                other => panic!("{other:?}"),
            }
        }
        if last >= decided {
            break;
        }
        from = last + 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kinds: Vec<(AuditKind, Option<&str>)> = history
        .iter()
        .map(|e| (e.kind, e.agent.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (AuditKind::Attached, None),
            (AuditKind::Granted, Some("A")),
            (AuditKind::Denied, Some("B")),
        ]
    );
}
