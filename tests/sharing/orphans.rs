//! Rule 9: records nobody holds are orphaned, taken by the next agent on the call's DN, or go back
//! to the dialer as stale.

use super::*;

#[tokio::test]
async fn transfer_to_an_empty_dn_orphans_and_a_login_there_takes_it() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    event(
        &mut t.switch,
        transferred("C1", "7001", "7009", TransferKind::SingleStep, None),
    )
    .await;
    let m = next_record_push(&mut t.a).await;
    assert_eq!(access_of(&m).1, Access::Revoked);
    event(&mut t.switch, established("C1", "7009")).await;
    let (state, _, _) = t.info("R1").await;
    assert_eq!(state, "orphaned");
    // D logs in on 7009 while the call is there: D gets the record.
    let (mut d, _) = t.server.desktop("D", "7009").await;
    expect_push(
        &mut d,
        ServerMsg::CallEstablished {
            call: "C1".into(),
            dn: "7009".into(),
        },
    )
    .await;
    let (record, access, _, cause, data, _) = expect_access(&mut d).await;
    assert_eq!(
        (record.as_str(), access, cause),
        ("R1", Access::Full, AccessCause::Established)
    );
    assert!(data.is_some());
    assert_eq!(t.info("R1").await.0, "held");
}

#[tokio::test]
async fn an_orphan_nobody_takes_goes_back_stale() {
    let mut t = Centre::with(|c| c.orphan_timeout_ms = 300).await;
    t.call_on_a("C1", "R1").await;
    event(
        &mut t.switch,
        transferred("C1", "7001", "7009", TransferKind::SingleStep, None),
    )
    .await;
    t.dialer.set_timeout(Duration::from_secs(10));
    let (record, outcome, by, _) = t.outcome().await;
    assert_eq!((record.as_str(), outcome, by), ("R1", Outcome::Stale, None));
    assert_eq!(t.info("R1").await.0, "final");
}

#[tokio::test]
async fn a_transfer_into_an_agents_dn_takes_an_orphan() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    event(
        &mut t.switch,
        transferred("C1", "7001", "7009", TransferKind::SingleStep, None),
    )
    .await;
    event(
        &mut t.switch,
        transferred("C1", "7009", "7003", TransferKind::SingleStep, None),
    )
    .await;
    let m = next_record_push(&mut t.c).await;
    assert_eq!(
        access_of(&m),
        ("R1".into(), Access::Full, AccessCause::Transfer)
    );
}
