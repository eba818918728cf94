//! Rules 6 and 7: what agents keep when they leave a call, and when a consultation is abandoned.

use super::*;

#[tokio::test]
async fn conference_gives_everyone_full_and_leaving_revokes() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    t.consult_b("C1", "C2", "R1", true).await;
    event(&mut t.switch, conferenced("C1", "7002", Some("C2"))).await;
    expect_push(
        &mut t.a,
        ServerMsg::CallCleared {
            call: "C2".into(),
            dn: "7001".into(),
            cause: "conferenced".into(),
        },
    )
    .await;
    expect_push(
        &mut t.b,
        ServerMsg::CallCleared {
            call: "C2".into(),
            dn: "7002".into(),
            cause: "conferenced".into(),
        },
    )
    .await;
    expect_push(
        &mut t.b,
        ServerMsg::CallEstablished {
            call: "C1".into(),
            dn: "7002".into(),
        },
    )
    .await;
    let m = t.b.next_push().await.unwrap();
    assert_eq!(
        access_of(&m),
        ("R1".into(), Access::Full, AccessCause::Conference)
    );
    // C joins too (no consultation: a direct conference add).
    event(&mut t.switch, conferenced("C1", "7003", None)).await;
    let m = next_record_push(&mut t.c).await;
    assert_eq!(
        access_of(&m),
        ("R1".into(), Access::Full, AccessCause::Conference)
    );
    let (_, holders, _) = t.info("R1").await;
    assert_eq!(
        holders.iter().filter(|h| h.access == Access::Full).count(),
        3
    );

    // B leaves while others remain: revoked.
    event(&mut t.switch, released("C1", "7002", None)).await;
    let m = next_record_push(&mut t.b).await;
    assert_eq!(
        access_of(&m),
        ("R1".into(), Access::Revoked, AccessCause::Left)
    );
    // C leaves: A still there, so C is revoked too.
    event(&mut t.switch, released("C1", "7003", None)).await;
    let m = next_record_push(&mut t.c).await;
    assert_eq!(access_of(&m).2, AccessCause::Left);
    // A leaves last: keeps full for wrap-up.
    event(&mut t.switch, released("C1", "7001", None)).await;
    expect_push(
        &mut t.a,
        ServerMsg::CallCleared {
            call: "C1".into(),
            dn: "7001".into(),
            cause: "hangup".into(),
        },
    )
    .await;
    expect_quiet(&mut t.a).await;
    let reply = t.a.request(processed("R1", "done")).await.unwrap();
    assert_eq!(
        reply,
        ServerMsg::RecordProcessedAck {
            record: "R1".into()
        }
    );
}
