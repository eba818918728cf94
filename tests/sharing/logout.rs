//! Rule 11: logging out, smart and forced, from the desktop and from the phone; admin release.

use super::*;

#[tokio::test]
async fn smart_logout_waits_for_the_last_full_record() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    let reply = t.a.request(logout(false)).await.unwrap();
    assert_eq!(
        reply,
        ServerMsg::LogoutPending {
            records: vec!["R1".into()]
        }
    );
    // Still logged in and working.
    let reply = t.a.request(processed("R1", "sale")).await.unwrap();
    assert_eq!(
        reply,
        ServerMsg::RecordProcessedAck {
            record: "R1".into()
        }
    );
    expect_push(
        &mut t.a,
        ServerMsg::LoggedOut {
            cause: LogoutCause::Desktop,
        },
    )
    .await;
    expect_push(
        &mut t.switch,
        ServerMsg::AgentLogout {
            dn: "7001".into(),
            agent: "A".into(),
        },
    )
    .await;
}

#[tokio::test]
async fn forced_logout_returns_records_to_the_dialer() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    let reply = t.a.request(logout(true)).await.unwrap();
    assert_eq!(
        reply,
        ServerMsg::LoggedOut {
            cause: LogoutCause::Desktop
        }
    );
    let (record, outcome, by, _) = t.outcome().await;
    assert_eq!(
        (record.as_str(), outcome, by.as_deref()),
        ("R1", Outcome::Returned, Some("A"))
    );
}

#[tokio::test]
async fn phone_logout_orphans_what_only_that_agent_held() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    event(&mut t.switch, agent_logout("7001", "A")).await;
    expect_push(
        &mut t.a,
        ServerMsg::LoggedOut {
            cause: LogoutCause::Phone,
        },
    )
    .await;
    let (state, holders, _) = t.info("R1").await;
    assert_eq!(state, "orphaned");
    assert_eq!(
        holders,
        vec![Holder {
            agent: "A".into(),
            access: Access::Revoked
        }]
    );
}

#[tokio::test]
async fn admin_release_returns_a_stuck_record() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    let reply = t
        .admin
        .request(release("R1", "agent went home"))
        .await
        .unwrap();
    assert_eq!(
        reply,
        ServerMsg::RecordReleased {
            record: "R1".into()
        }
    );
    match next_record_push(&mut t.a).await {
        ServerMsg::RecordFinalized { outcome, by, .. } => {
            assert_eq!((outcome, by.as_str()), (Outcome::Returned, "admin"));
        }
        other => panic!("{other:?}"),
    }
    let (_, outcome, ..) = t.outcome().await;
    assert_eq!(outcome, Outcome::Returned);
    let reply = t.a.request(processed("R1", "x")).await.unwrap();
    expect_error(&reply, ErrorCode::AlreadyFinal);
}
