//! Rule 2 and the single-step scenario: a transfer moves `full` access to the DN that takes the call.

use super::*;

#[tokio::test]
async fn scenario_single_step_transfer() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    let reply =
        t.a.request(update("R1", json!({"note": "wants callback"})))
            .await
            .unwrap();
    assert_eq!(
        reply,
        ServerMsg::RecordUpdated {
            record: "R1".into(),
            version: 1
        }
    );
    event(
        &mut t.switch,
        transferred("C1", "7001", "7002", TransferKind::SingleStep, None),
    )
    .await;
    event(&mut t.switch, established("C1", "7002")).await;
    // A: the call leaves its DN and its access is revoked.
    expect_push(
        &mut t.a,
        ServerMsg::CallCleared {
            call: "C1".into(),
            dn: "7001".into(),
            cause: "transferred".into(),
        },
    )
    .await;
    let m = next_record_push(&mut t.a).await;
    assert_eq!(
        access_of(&m),
        ("R1".into(), Access::Revoked, AccessCause::Transfer)
    );
    // B: full, with the context A left.
    match next_record_push(&mut t.b).await {
        ServerMsg::AccessChanged {
            access,
            cause,
            context,
            data,
            previous,
            ..
        } => {
            assert_eq!(
                (access, cause, previous),
                (Access::Full, AccessCause::Transfer, Access::Revoked)
            );
            assert_eq!(context.unwrap().fields["note"], "wants callback");
            assert!(data.is_some());
        }
        other => panic!("{other:?}"),
    }
    // A may no longer finish it; B may.
    let reply = t.a.request(processed("R1", "done")).await.unwrap();
    match &reply {
        ServerMsg::Error {
            code,
            access,
            holders,
            ..
        } => {
            assert_eq!(*code, ErrorCode::AccessDenied);
            assert_eq!(*access, Some(Access::Revoked));
            assert_eq!(
                holders.as_ref().unwrap(),
                &vec![Holder {
                    agent: "B".into(),
                    access: Access::Full
                }]
            );
        }
        other => panic!("{other:?}"),
    }
    let reply = t.b.request(processed("R1", "sale")).await.unwrap();
    assert_eq!(
        reply,
        ServerMsg::RecordProcessedAck {
            record: "R1".into()
        }
    );
    let (record, outcome, by, fields) = t.outcome().await;
    assert_eq!(
        (record.as_str(), outcome, by.as_deref()),
        ("R1", Outcome::Processed, Some("B"))
    );
    assert_eq!(fields.unwrap()["note"], "wants callback");
}

#[tokio::test]
async fn mute_transfer_moves_access_like_single_step() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    event(
        &mut t.switch,
        transferred("C1", "7001", "7003", TransferKind::Mute, None),
    )
    .await;
    let m = next_record_push(&mut t.a).await;
    assert_eq!(access_of(&m).1, Access::Revoked);
    let m = next_record_push(&mut t.c).await;
    assert_eq!(
        access_of(&m),
        ("R1".into(), Access::Full, AccessCause::Transfer)
    );
    let (state, holders, _) = t.info("R1").await;
    assert_eq!(state, "held");
    assert!(holders.contains(&Holder {
        agent: "C".into(),
        access: Access::Full
    }));
}
