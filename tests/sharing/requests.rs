//! Desktop record requests: the check order, the context they build, the outcomes they give.

use super::*;

#[tokio::test]
async fn checks_run_in_contract_order() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    let reply = t.b.request(record_req("GetRecord", "nope")).await.unwrap();
    expect_error(&reply, ErrorCode::NoSuchRecord);
    // Never held: access_denied, even once the record is final.
    let reply = t.b.request(record_req("GetRecord", "R1")).await.unwrap();
    expect_error(&reply, ErrorCode::AccessDenied);
    t.a.request(processed("R1", "sale")).await.unwrap();
    let reply = t.b.request(processed("R1", "sale")).await.unwrap();
    expect_error(&reply, ErrorCode::AccessDenied);
    // Held, now final: already_final (before the revoked check).
    let reply = t.a.request(processed("R1", "again")).await.unwrap();
    expect_error(&reply, ErrorCode::AlreadyFinal);
}

#[tokio::test]
async fn do_not_call_and_reschedule_reach_the_dialer() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    let reply =
        t.a.request(Request::DoNotCall(DoNotCall {
            record: "R1".into(),
            scope: DncScope::Chain,
        }))
        .await
        .unwrap();
    assert_eq!(
        reply,
        ServerMsg::DoNotCallAck {
            record: "R1".into(),
            scope: DncScope::Chain
        }
    );
    match t.dialer.next_push().await.unwrap() {
        ServerMsg::RecordOutcome { outcome, scope, .. } => {
            assert_eq!(
                (outcome, scope),
                (Outcome::DoNotCall, Some(DncScope::Chain))
            );
        }
        other => panic!("{other:?}"),
    }

    t.call_on_a("C2", "R2").await;
    let past = Request::Reschedule(Reschedule {
        record: "R2".into(),
        at: "2001-01-01T00:00:00Z".into(),
        callback: Callback::Campaign,
    });
    let message = expect_error(&t.a.request(past).await.unwrap(), ErrorCode::BadRequest);
    assert!(message.contains("at"), "{message}");
    let garbage = Request::Reschedule(Reschedule {
        record: "R2".into(),
        at: "tomorrow".into(),
        callback: Callback::Campaign,
    });
    expect_error(&t.a.request(garbage).await.unwrap(), ErrorCode::BadRequest);
    let ok = Request::Reschedule(Reschedule {
        record: "R2".into(),
        at: "2099-05-01T09:30:00Z".into(),
        callback: Callback::Campaign,
    });
    match t.a.request(ok).await.unwrap() {
        ServerMsg::Rescheduled { at, callback, .. } => {
            assert_eq!(callback, Callback::Campaign);
            assert_eq!(at, "2099-05-01T09:30:00.000Z");
        }
        other => panic!("{other:?}"),
    }
    match t.dialer.next_push().await.unwrap() {
        ServerMsg::RecordOutcome {
            outcome,
            callback_at,
            callback,
            ..
        } => {
            assert_eq!(outcome, Outcome::Rescheduled);
            assert_eq!(callback_at.as_deref(), Some("2099-05-01T09:30:00.000Z"));
            assert_eq!(callback, Some(Callback::Campaign));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn reject_and_cancel_are_final() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    assert_eq!(
        t.a.request(record_req("RecordReject", "R1")).await.unwrap(),
        ServerMsg::RecordRejected {
            record: "R1".into()
        }
    );
    assert_eq!(t.outcome().await.1, Outcome::Rejected);
    t.call_on_a("C2", "R2").await;
    assert_eq!(
        t.a.request(record_req("RecordCancel", "R2")).await.unwrap(),
        ServerMsg::RecordCancelled {
            record: "R2".into()
        }
    );
    assert_eq!(t.outcome().await.1, Outcome::Cancelled);
}

#[tokio::test]
async fn dialer_cancel_tells_the_holders() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    t.dialer
        .request(record_req("CancelRecord", "R1"))
        .await
        .unwrap();
    match next_record_push(&mut t.a).await {
        ServerMsg::RecordFinalized { outcome, by, .. } => {
            assert_eq!((outcome, by.as_str()), (Outcome::Cancelled, "dialer"))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_update_that_would_outgrow_a_frame_is_refused() {
    let mut t = Centre::with(|c| c.max_frame_bytes = 4096).await;
    t.call_on_a("C1", "R1").await;
    let reply =
        t.a.request(update("R1", json!({"blob": "y".repeat(3500)})))
            .await
            .unwrap();
    let message = expect_error(&reply, ErrorCode::BadRequest);
    assert!(message.contains("limit"), "{message}");
    match t.a.request(record_req("GetRecord", "R1")).await.unwrap() {
        ServerMsg::Record { context, .. } => assert!(context.fields.is_empty(), "nothing changed"),
        other => panic!("{other:?}"),
    }
}
