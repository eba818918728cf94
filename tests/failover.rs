//! Desktop failover (SCENARIOS.md, the consult-call case) and the agent lifecycle: each desktop
//! drops abruptly (no Logout), the switch moves on meanwhile, and the desktop comes back with its
//! resume token; the replay is checked push by push. Timers use short configured values.

use baton::messages::*;
use baton_kit::*;
use std::time::Duration;

fn resume_access(record: &str, access: Access) -> impl Fn(&ServerMsg) -> bool + '_ {
    move |m| {
        matches!(m, ServerMsg::AccessChanged { record: r, access: a, cause: AccessCause::Resume, data, .. }
        if r == record && *a == access && (access == Access::Revoked || data.is_some()))
    }
}

#[tokio::test]
async fn consultee_reconnects_while_the_consultation_is_up() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    t.consult_b("C1", "C2", "R1", true).await;
    hang_up(&mut t.b).await;
    t.wait_connections(5).await;
    let token = t.sessions[1].clone();
    let (mut b, resumed) = t.server.resume("B", "7002", &token).await;
    assert!(resumed);
    let pushes = pushes_until_quiet(&mut b).await;
    assert_eq!(pushes.len(), 2, "{pushes:?}");
    assert_eq!(
        pushes[0],
        ServerMsg::CallEstablished {
            call: "C2".into(),
            dn: "7002".into()
        }
    );
    assert!(
        resume_access("R1", Access::ReadOnly)(&pushes[1]),
        "{pushes:?}"
    );
}

#[tokio::test]
async fn consultee_reconnects_after_the_transfer_completed() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    t.consult_b("C1", "C2", "R1", true).await;
    hang_up(&mut t.b).await;
    t.wait_connections(5).await;
    event(
        &mut t.switch,
        transferred("C1", "7001", "7002", TransferKind::TwoStep, Some("C2")),
    )
    .await;
    let token = t.sessions[1].clone();
    let (mut b, resumed) = t.server.resume("B", "7002", &token).await;
    assert!(resumed);
    let pushes = pushes_until_quiet(&mut b).await;
    assert_eq!(pushes.len(), 2, "{pushes:?}");
    assert_eq!(
        pushes[0],
        ServerMsg::CallEstablished {
            call: "C1".into(),
            dn: "7002".into()
        }
    );
    assert!(resume_access("R1", Access::Full)(&pushes[1]), "{pushes:?}");
}

#[tokio::test]
async fn consultee_reconnects_after_the_call_dropped() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    t.consult_b("C1", "C2", "R1", true).await;
    hang_up(&mut t.b).await;
    t.wait_connections(5).await;
    event(&mut t.switch, released("C2", "7002", None)).await;
    event(&mut t.switch, released("C2", "7001", None)).await;
    let token = t.sessions[1].clone();
    let (mut b, resumed) = t.server.resume("B", "7002", &token).await;
    assert!(resumed);
    // The CallCleared was missed: no call in the replay; the read-only access is shown revoked.
    let pushes = pushes_until_quiet(&mut b).await;
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert!(
        resume_access("R1", Access::Revoked)(&pushes[0]),
        "{pushes:?}"
    );
    match &pushes[0] {
        ServerMsg::AccessChanged { previous, .. } => assert_eq!(*previous, Access::ReadOnly),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn initiator_reconnects_while_the_consultation_still_rings() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    hang_up(&mut t.a).await;
    t.wait_connections(5).await;
    event(
        &mut t.switch,
        ringing_full("C2", "7002", None, Some("7001"), Some("C1")),
    )
    .await;
    let token = t.sessions[0].clone();
    let (mut a, resumed) = t.server.resume("A", "7001", &token).await;
    assert!(resumed);
    // Its own call established, and the consultation it placed (from_dn: its DN is on that call,
    // dialing); R1 still full.
    let pushes = pushes_until_quiet(&mut a).await;
    assert_eq!(pushes.len(), 3, "{pushes:?}");
    assert_eq!(
        pushes[..2],
        [
            ServerMsg::CallEstablished {
                call: "C1".into(),
                dn: "7001".into()
            },
            ServerMsg::CallEstablished {
                call: "C2".into(),
                dn: "7001".into()
            }
        ]
    );
    assert!(resume_access("R1", Access::Full)(&pushes[2]), "{pushes:?}");
}

#[tokio::test]
async fn initiator_reconnects_after_rona_on_the_consultee() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    hang_up(&mut t.a).await;
    t.wait_connections(5).await;
    event(
        &mut t.switch,
        ringing_full("C2", "7002", None, Some("7001"), Some("C1")),
    )
    .await;
    event(&mut t.switch, released("C2", "7002", Some("rona"))).await;
    let token = t.sessions[0].clone();
    let (mut a, _) = t.server.resume("A", "7001", &token).await;
    let pushes = pushes_until_quiet(&mut a).await;
    assert!(
        resume_access("R1", Access::Full)(pushes.last().unwrap()),
        "{pushes:?}"
    );
    // B: nothing alerting any more, and no right to R1.
    let b = &mut t.b;
    let mut saw = Vec::new();
    while let Some(m) = b.try_next_push(Duration::from_millis(100)).await.unwrap() {
        saw.push(m);
    }
    assert!(
        matches!(saw.last(), Some(ServerMsg::CallCleared { cause, .. }) if cause == "rona"),
        "{saw:?}"
    );
    let reply = b.request(record_req("GetRecord", "R1")).await.unwrap();
    expect_error(&reply, ErrorCode::AccessDenied);
}

#[tokio::test]
async fn initiator_reconnects_after_the_consultee_took_the_call() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    t.consult_b("C1", "C2", "R1", true).await;
    hang_up(&mut t.a).await;
    t.wait_connections(5).await;
    event(
        &mut t.switch,
        transferred("C1", "7001", "7002", TransferKind::TwoStep, Some("C2")),
    )
    .await;
    let token = t.sessions[0].clone();
    let (mut a, _) = t.server.resume("A", "7001", &token).await;
    let pushes = pushes_until_quiet(&mut a).await;
    assert_eq!(pushes.len(), 1, "no call left on A's DN: {pushes:?}");
    assert!(
        resume_access("R1", Access::Revoked)(&pushes[0]),
        "{pushes:?}"
    );
    let reply = t.b.request(record_req("GetRecord", "R1")).await.unwrap();
    assert!(
        matches!(
            reply,
            ServerMsg::Record {
                access: Access::Full,
                ..
            }
        ),
        "{reply:?}"
    );
}

#[tokio::test]
async fn consultee_reconnects_while_still_alerting() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    t.consult_b("C1", "C2", "R1", false).await;
    hang_up(&mut t.b).await;
    t.wait_connections(5).await;
    let token = t.sessions[1].clone();
    let (mut b, _) = t.server.resume("B", "7002", &token).await;
    let pushes = pushes_until_quiet(&mut b).await;
    assert_eq!(
        pushes,
        vec![ServerMsg::CallAlerting {
            call: "C2".into(),
            dn: "7002".into(),
            record: Some("R1".into()),
            consult_of: Some("C1".into())
        }]
    );
}

#[tokio::test]
async fn consultee_reconnects_after_rona_or_hangup_ended_the_alerting() {
    for cause in ["rona", "hangup"] {
        let mut t = Centre::new().await;
        t.call_on_a("C1", "R1").await;
        t.consult_b("C1", "C2", "R1", false).await;
        hang_up(&mut t.b).await;
        t.wait_connections(5).await;
        event(&mut t.switch, released("C2", "7002", Some(cause))).await;
        let token = t.sessions[1].clone();
        let (mut b, resumed) = t.server.resume("B", "7002", &token).await;
        assert!(resumed);
        assert_eq!(
            pushes_until_quiet(&mut b).await,
            vec![],
            "{cause}: nothing alerting, nothing held"
        );
    }
}

#[tokio::test]
async fn consultee_not_back_within_the_grace_is_logged_out() {
    let mut t = Centre::with(|c| c.resume_grace_ms = 200).await;
    // B holds R2 alone (its own customer call) and R1 read-only.
    t.dialer.request(attach("C5", "R2")).await.unwrap();
    event(&mut t.switch, ringing("C5", "7002")).await;
    event(&mut t.switch, established("C5", "7002")).await;
    drain(&mut t.b).await;
    t.call_on_a("C1", "R1").await;
    t.consult_b("C1", "C2", "R1", true).await;
    drain(&mut t.switch).await;
    hang_up(&mut t.b).await;
    t.switch.set_timeout(Duration::from_secs(5));
    assert_eq!(
        t.switch.next_push().await.unwrap(),
        ServerMsg::AgentLogout {
            dn: "7002".into(),
            agent: "B".into()
        }
    );
    assert_eq!(
        t.switch.next_push().await.unwrap(),
        ServerMsg::Monitor {
            dns: vec!["7001".into(), "7003".into()]
        }
    );
    // Rule 9: what B held full alone is orphaned; A keeps R1.
    match t
        .admin
        .request(record_req("RecordInfo", "R2"))
        .await
        .unwrap()
    {
        ServerMsg::RecordReport { state, .. } => assert_eq!(state, "orphaned"),
        other => panic!("{other:?}"),
    }
    match t
        .admin
        .request(record_req("RecordInfo", "R1"))
        .await
        .unwrap()
    {
        ServerMsg::RecordReport { state, holders, .. } => {
            assert_eq!(state, "held");
            assert!(holders.contains(&Holder {
                agent: "A".into(),
                access: Access::Full
            }));
            assert!(holders.contains(&Holder {
                agent: "B".into(),
                access: Access::Revoked
            }));
        }
        other => panic!("{other:?}"),
    }
    // The late resume is a fresh session.
    let token = t.sessions[1].clone();
    let (mut b, resumed) = t.server.resume("B", "7002", &token).await;
    assert!(!resumed);
    // Nothing is replayed as a resume; being on the DN where the calls are, B takes what nobody
    // holds (rule 9): R2 full, and R1 read-only through the consultation still up.
    let pushes = pushes_until_quiet(&mut b).await;
    assert!(
        pushes.iter().all(|m| !matches!(
            m,
            ServerMsg::AccessChanged {
                cause: AccessCause::Resume,
                ..
            }
        )),
        "{pushes:?}"
    );
    assert!(pushes.iter().any(|m| matches!(m, ServerMsg::AccessChanged { record, access: Access::Full, cause: AccessCause::Established, .. } if record == "R2")), "{pushes:?}");
}

#[tokio::test]
async fn an_orphan_of_an_expired_session_goes_back_stale() {
    let mut t = Centre::with(|c| {
        c.resume_grace_ms = 100;
        c.orphan_timeout_ms = 100;
    })
    .await;
    t.call_on_a("C1", "R1").await;
    hang_up(&mut t.a).await;
    t.dialer.set_timeout(Duration::from_secs(5));
    match t.dialer.next_push().await.unwrap() {
        ServerMsg::RecordOutcome {
            record, outcome, ..
        } => assert_eq!((record.as_str(), outcome), ("R1", Outcome::Stale)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn another_agents_token_gives_a_fresh_session_and_none_of_its_state() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    hang_up(&mut t.a).await;
    hang_up(&mut t.b).await;
    t.wait_connections(4).await;
    // B presents A's token.
    let token = t.sessions[0].clone();
    let (mut b, resumed) = t.server.resume("B", "7002", &token).await;
    assert!(!resumed);
    assert!(pushes_until_quiet(&mut b)
        .await
        .iter()
        .all(|m| !matches!(m, ServerMsg::AccessChanged { record, .. } if record == "R1")));
    let reply = b.request(record_req("GetRecord", "R1")).await.unwrap();
    expect_error(&reply, ErrorCode::AccessDenied);
    // A wrong token for A itself: a fresh session too.
    let (_, resumed) = t
        .server
        .resume("A", "7001", "0123456789abcdef0123456789abcdef")
        .await;
    assert!(!resumed);
}

#[tokio::test]
async fn a_resumed_session_is_replaced_by_a_newer_login() {
    let mut t = Centre::new().await;
    hang_up(&mut t.a).await;
    t.wait_connections(5).await;
    let token = t.sessions[0].clone();
    let (mut resumed_a, resumed) = t.server.resume("A", "7001", &token).await;
    assert!(resumed);
    let mut newer = t.server.connect(Role::Desktop).await;
    assert!(matches!(
        newer.request(login("A", "7001", None)).await.unwrap(),
        ServerMsg::LoggedIn { resumed: false, .. }
    ));
    assert_eq!(
        resumed_a.next_push().await.unwrap(),
        ServerMsg::LoggedOut {
            cause: LogoutCause::Replaced
        }
    );
}

#[tokio::test]
async fn a_silent_desktop_is_dropped_by_heartbeat_and_can_resume() {
    let mut t = Centre::with(|c| c.heartbeat_ms = 100).await;
    t.call_on_a("C1", "R1").await;
    // A's socket stays open but sends nothing; the others keep pinging.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        t.b.request(Request::Ping).await.unwrap();
        t.switch.request(Request::Ping).await.unwrap();
        t.c.request(Request::Ping).await.unwrap();
        t.dialer.request(Request::Ping).await.unwrap();
        t.admin.request(Request::Ping).await.unwrap();
    }
    let a = &mut t.a;
    a.set_timeout(Duration::from_secs(2));
    assert!(a.is_closed().await, "silent for 3 heartbeats: closed");
    // Still in grace: the switch was not told, and A resumes with everything.
    assert!(t
        .switch
        .try_next_push(Duration::from_millis(50))
        .await
        .unwrap()
        .is_none());
    let token = t.sessions[0].clone();
    let (mut a, resumed) = t.server.resume("A", "7001", &token).await;
    assert!(resumed);
    let pushes = pushes_until_quiet(&mut a).await;
    assert!(
        pushes.iter().any(resume_access("R1", Access::Full)),
        "{pushes:?}"
    );
}

#[tokio::test]
async fn a_revocation_sent_just_before_the_drop_is_replayed() {
    // The transfer happens while the server still believes A is connected: the push goes to a
    // socket that is already dead. The resume replay must still say the record is gone.
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    event(
        &mut t.switch,
        transferred("C1", "7001", "7002", TransferKind::SingleStep, None),
    )
    .await;
    hang_up(&mut t.a).await;
    t.wait_connections(5).await;
    let token = t.sessions[0].clone();
    let (mut a, resumed) = t.server.resume("A", "7001", &token).await;
    assert!(resumed);
    let pushes = pushes_until_quiet(&mut a).await;
    assert!(
        pushes.iter().any(resume_access("R1", Access::Revoked)),
        "{pushes:?}"
    );
}
