//! Memory that only grew now has bounds (CONTRACT 9 still holds across them): final records leave
//! memory and are read back from the store with the very same answers; calls the switch never
//! ends are dropped after `call_idle_timeout_ms`.

use baton::client::Client;
use baton::messages::*;
use baton_kit::*;
use std::time::Duration;

async fn status(admin: &mut Client) -> (u64, u64, u64, u64) {
    match admin.request(Request::Status).await.unwrap() {
        ServerMsg::StatusReport {
            records_live,
            records_final,
            records_final_in_memory,
            calls,
            ..
        } => (records_live, records_final, records_final_in_memory, calls),
        other => panic!("{other:?}"),
    }
}

/// Waits (polling `Status`) until no final record is left in memory.
async fn until_finals_left_memory(admin: &mut Client) {
    for _ in 0..200 {
        if status(admin).await.2 == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("final records never left memory");
}

#[tokio::test]
async fn a_final_record_that_left_memory_is_answered_exactly_as_before() {
    let server = TestServer::start_with(|c| {
        c.final_record_memory_ms = 0;
        c.max_final_records_in_memory = 0;
    })
    .await;
    let (mut switch, _) = server.switch().await;
    let mut dialer = server.connect(Role::Dialer).await;
    let mut admin = server.connect(Role::Admin).await;
    let (mut a, _) = server.desktop("A", "7001").await;
    let (mut b, _) = server.desktop("B", "7002").await;
    let (mut c, _) = server.desktop("C", "7003").await;
    // A and B in a conference on C1 carrying R1; A finishes it.
    dialer.request(attach("C1", "R1")).await.unwrap();
    event(&mut switch, ringing("C1", "7001")).await;
    event(&mut switch, established("C1", "7001")).await;
    event(&mut switch, conferenced("C1", "7002", None)).await;
    assert!(matches!(
        next_record_push(&mut a).await,
        ServerMsg::AccessChanged { .. }
    ));
    assert!(matches!(
        next_record_push(&mut b).await,
        ServerMsg::AccessChanged { .. }
    ));
    let reply = a.request(processed("R1", "sale")).await.unwrap();
    assert!(
        matches!(reply, ServerMsg::RecordProcessedAck { .. }),
        "{reply:?}"
    );
    assert!(matches!(
        next_record_push(&mut b).await,
        ServerMsg::RecordFinalized { .. }
    ));
    assert_eq!(status(&mut admin).await.1, 1);
    until_finals_left_memory(&mut admin).await;

    // B, a former holder, is told who won and how, as it would have been a second after.
    let reply = b
        .request(record_req("RecordProcessed", "R1"))
        .await
        .unwrap();
    match reply {
        ServerMsg::Error {
            code: ErrorCode::AlreadyFinal,
            outcome,
            by,
            ..
        } => assert_eq!(
            (outcome, by.as_deref()),
            (Some(Outcome::Processed), Some("A"))
        ),
        other => panic!("{other:?}"),
    }
    until_finals_left_memory(&mut admin).await;
    // C never held it: access_denied, with no live holder.
    let reply = c.request(record_req("GetRecord", "R1")).await.unwrap();
    match reply {
        ServerMsg::Error {
            code: ErrorCode::AccessDenied,
            holders,
            ..
        } => assert_eq!(holders, Some(vec![])),
        other => panic!("{other:?}"),
    }
    until_finals_left_memory(&mut admin).await;
    // The admin sees the whole record.
    match admin.request(record_req("RecordInfo", "R1")).await.unwrap() {
        ServerMsg::RecordReport {
            state,
            holders,
            final_,
            context,
            ..
        } => {
            assert_eq!(state, "final");
            assert_eq!(
                holders,
                vec![
                    Holder {
                        agent: "A".into(),
                        access: Access::Revoked
                    },
                    Holder {
                        agent: "B".into(),
                        access: Access::Revoked
                    }
                ]
            );
            let f = final_.unwrap();
            assert_eq!(
                (f.outcome, f.by.as_deref()),
                (Outcome::Processed, Some("A"))
            );
            assert_eq!(context.unwrap().call_result.as_deref(), Some("sale"));
        }
        other => panic!("{other:?}"),
    }
    until_finals_left_memory(&mut admin).await;
    // The dialer's cancel of a final record is refused the same way.
    let reply = dialer
        .request(record_req("CancelRecord", "R1"))
        .await
        .unwrap();
    expect_error(&reply, ErrorCode::AlreadyFinal);
    until_finals_left_memory(&mut admin).await;
    // And the dialer may attach it again: it is live again, and counted once.
    let reply = dialer.request(attach("C7", "R1")).await.unwrap();
    assert!(
        matches!(reply, ServerMsg::RecordAttached { .. }),
        "{reply:?}"
    );
    let (live, finals, _, _) = status(&mut admin).await;
    assert_eq!((live, finals), (1, 0));
}

/// If a final record cannot be read back, the request naming it is refused `unavailable` (never
/// answered as if the record did not exist), and so is the rest of a batch the disk refuses.
#[tokio::test]
async fn a_record_that_cannot_be_read_back_is_refused_not_denied() {
    let store = std::sync::Arc::new(baton::store::MemoryStore::new());
    let server = TestServer::start_with_store_and(store.clone(), |c| {
        c.final_record_memory_ms = 0;
        c.max_final_records_in_memory = 0;
    })
    .await;
    let (mut switch, _) = server.switch().await;
    let mut dialer = server.connect(Role::Dialer).await;
    let mut admin = server.connect(Role::Admin).await;
    let (mut a, _) = server.desktop("A", "7001").await;
    for (call, record) in [("C1", "R1"), ("C2", "R2")] {
        give(&mut switch, &mut dialer, &mut a, call, record, "7001").await;
    }
    let reply = a
        .request(record_req("RecordProcessed", "R1"))
        .await
        .unwrap();
    assert!(
        matches!(reply, ServerMsg::RecordProcessedAck { .. }),
        "{reply:?}"
    );
    until_finals_left_memory(&mut admin).await;

    store.set_failing(true);
    // Both in one write: whichever batch each lands in, each gets exactly one answer.
    let r1 = a.send(&record_req("GetRecord", "R1")).await.unwrap();
    let r2 = a.send(&record_req("UpdateRecord", "R2")).await.unwrap();
    for r in [r1, r2] {
        let reply = a.reply_to(r).await.unwrap();
        expect_error(&reply, ErrorCode::Unavailable);
    }
    store.set_failing(false);
    let reply = a.request(record_req("GetRecord", "R1")).await.unwrap();
    expect_error(&reply, ErrorCode::AlreadyFinal);
}

#[tokio::test]
async fn a_call_the_switch_never_ends_is_dropped_after_the_idle_timeout() {
    let server = TestServer::start_with(|c| {
        c.call_idle_timeout_ms = 1000;
        c.orphan_timeout_ms = 60_000;
    })
    .await;
    let (mut switch, _) = server.switch().await;
    let mut dialer = server.connect(Role::Dialer).await;
    let mut admin = server.connect(Role::Admin).await;
    let (mut a, _) = server.desktop("A", "7001").await;
    let (mut b, _) = server.desktop("B", "7002").await;
    dialer.request(attach("C1", "R1")).await.unwrap();
    event(&mut switch, ringing("C1", "7001")).await;
    event(&mut switch, established("C1", "7001")).await;
    // A consultation to B, answered: B holds R1 read-only.
    event(
        &mut switch,
        ringing_full("C2", "7002", None, Some("7001"), Some("C1")),
    )
    .await;
    event(&mut switch, established("C2", "7002")).await;
    assert!(matches!(
        next_record_push(&mut b).await,
        ServerMsg::AccessChanged {
            access: Access::ReadOnly,
            ..
        }
    ));
    assert_eq!(status(&mut admin).await.3, 2);
    // The switch falls silent (its Released events were lost). Both calls are dropped: B's
    // consultation is over, A keeps the record to finish it, and both desktops are told.
    let mut cleared_b = Vec::new();
    loop {
        match b.next_push().await.unwrap() {
            ServerMsg::CallCleared { call, cause, .. } => cleared_b.push((call, cause)),
            ServerMsg::CallAlerting { .. } | ServerMsg::CallEstablished { .. } => {}
            ServerMsg::AccessChanged { access, cause, .. } => {
                assert_eq!((access, cause), (Access::Revoked, AccessCause::Released));
                break;
            }
            other => panic!("unexpected push to B: {other:?}"),
        }
    }
    let mut cleared_a = Vec::new();
    while cleared_a.len() < 2 {
        match a.next_push().await.unwrap() {
            ServerMsg::CallCleared { call, cause, .. } => cleared_a.push((call, cause)),
            ServerMsg::CallAlerting { .. }
            | ServerMsg::CallEstablished { .. }
            | ServerMsg::AccessChanged {
                access: Access::Full,
                ..
            } => {}
            other => panic!("unexpected push to A: {other:?}"),
        }
    }
    cleared_a.sort();
    assert_eq!(
        cleared_a,
        vec![
            ("C1".to_string(), "idle_timeout".to_string()),
            ("C2".to_string(), "idle_timeout".to_string())
        ]
    );
    assert_eq!(cleared_b, vec![("C2".into(), "idle_timeout".into())]);
    assert_eq!(status(&mut admin).await.3, 0);
    match a.request(record_req("GetRecord", "R1")).await.unwrap() {
        ServerMsg::Record { access, .. } => assert_eq!(access, Access::Full),
        other => panic!("{other:?}"),
    }
}

/// The idle clock restarts with every event of the call: only silence drops it (engine time, no
/// sockets, no sleeps).
#[test]
fn only_silence_drops_a_call() {
    use baton::engine::{Engine, EngineConfig, Input, Output};
    let config = baton::config::Config {
        call_idle_timeout_ms: 1000,
        ..baton::config::Config::default()
    };
    let t0 = 1_800_000_000_000;
    let mut engine = Engine::new(EngineConfig::from_config(&config), [1; 32], t0);
    let mut out = Vec::new();
    let (switch, desk) = (1, 2);
    engine.handle(
        t0,
        Input::Connected {
            conn: switch,
            role: Role::Switch,
        },
        &mut out,
    );
    engine.handle(
        t0,
        Input::Connected {
            conn: desk,
            role: Role::Desktop,
        },
        &mut out,
    );
    let request = |request: Request| Input::Request {
        conn: switch,
        r#ref: Some(1),
        request,
    };
    engine.handle(
        t0,
        Input::Request {
            conn: desk,
            r#ref: Some(1),
            request: login("A", "7001", None),
        },
        &mut out,
    );
    engine.handle(t0, request(ringing("C1", "7001")), &mut out);
    // An event every 600 ms keeps the call alive well past 1000 ms after it began.
    for step in 1..=5 {
        let now = t0 + step * 600;
        engine.handle(now, Input::Tick, &mut out);
        assert_eq!(engine.counts().calls, 1, "dropped at +{} ms", step * 600);
        engine.handle(now, request(established("C1", "7001")), &mut out);
    }
    let last_event = t0 + 3000;
    out.clear();
    engine.handle(last_event + 999, Input::Tick, &mut out);
    assert_eq!(engine.counts().calls, 1);
    engine.handle(last_event + 1000, Input::Tick, &mut out);
    assert_eq!(engine.counts().calls, 0);
    let cleared: Vec<&ServerMsg> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send { conn, env } if *conn == desk => Some(&env.msg),
            _ => None,
        })
        .collect();
    assert_eq!(
        cleared,
        vec![&ServerMsg::CallCleared {
            call: "C1".into(),
            dn: "7001".into(),
            cause: "idle_timeout".into()
        }]
    );
}

/// Final-record retention: a record final for longer than `final_record_retention_ms` is deleted
/// from the store (and no longer counted); one attached again meanwhile is left alone.
#[tokio::test]
async fn retention_deletes_old_final_records_and_spares_those_attached_again() {
    // Records that already left memory, and records still in memory.
    retention_case(0).await;
    retention_case(60_000).await;
}

async fn retention_case(memory_ms: u64) {
    let server = TestServer::start_with(|c| {
        c.final_record_retention_ms = 300;
        c.final_record_memory_ms = memory_ms;
        c.max_final_records_in_memory = if memory_ms == 0 { 0 } else { 1000 };
    })
    .await;
    let (mut switch, _) = server.switch().await;
    let mut dialer = server.connect(Role::Dialer).await;
    let mut admin = server.connect(Role::Admin).await;
    let (mut a, _) = server.desktop("A", "7001").await;
    for (call, record) in [("C1", "R1"), ("C2", "R2")] {
        give(&mut switch, &mut dialer, &mut a, call, record, "7001").await;
        let reply = a
            .request(record_req("RecordProcessed", record))
            .await
            .unwrap();
        assert!(
            matches!(reply, ServerMsg::RecordProcessedAck { .. }),
            "{reply:?}"
        );
    }
    // R2 is attached again at once: live, it must survive its old final's retention.
    let reply = dialer.request(attach("C3", "R2")).await.unwrap();
    assert!(
        matches!(reply, ServerMsg::RecordAttached { .. }),
        "{reply:?}"
    );
    let mut purged = false;
    for _ in 0..200 {
        if status(&mut admin).await.1 == 0 {
            purged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(purged, "R1 was never deleted");
    assert_eq!(status(&mut admin).await.0, 1, "R2 is live");
    let reply = admin.request(record_req("RecordInfo", "R1")).await.unwrap();
    expect_error(&reply, ErrorCode::NoSuchRecord);
    match admin.request(record_req("RecordInfo", "R2")).await.unwrap() {
        ServerMsg::RecordReport { state, .. } => assert_eq!(state, "waiting"),
        other => panic!("{other:?}"),
    }
    // The audit log keeps R1's history.
    let entries = admin.request_stream(record_history("R1")).await.unwrap();
    assert!(entries
        .iter()
        .any(|m| matches!(m, ServerMsg::Audit(e) if e.kind == AuditKind::Finalized)));
}
