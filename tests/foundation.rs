//! Sessions, DN monitoring, call pushes, ANI linking and the first grant (rule 1), through sockets.

use baton::messages::*;
use baton_kit::*;

#[tokio::test]
async fn login_is_announced_to_the_switch_and_monitored() {
    let server = TestServer::start().await;
    let (mut switch, dns) = server.switch().await;
    assert!(dns.is_empty());
    let (_desk, session) = server.desktop("1042", "7001").await;
    assert_eq!(session.len(), 32, "session token is 128 random bits in hex");
    assert_eq!(
        switch.next_push().await.unwrap(),
        ServerMsg::AgentLogin {
            dn: "7001".into(),
            agent: "1042".into()
        }
    );
    assert_eq!(
        switch.next_push().await.unwrap(),
        ServerMsg::Monitor {
            dns: vec!["7001".into()]
        }
    );
    // A link that connects later gets the whole list at once.
    let (_desk2, _) = server.desktop("1043", "7002").await;
    let (_switch2, dns) = server.switch().await;
    assert_eq!(dns, vec!["7001".to_string(), "7002".to_string()]);
}

#[tokio::test]
async fn a_dn_holds_one_agent() {
    let server = TestServer::start().await;
    let (_a, _) = server.desktop("1042", "7001").await;
    let mut b = server.connect(Role::Desktop).await;
    let reply = b.request(login("2000", "7001", None)).await.unwrap();
    let message = expect_error(&reply, ErrorCode::DnInUse);
    assert!(message.contains("1042"), "{message}");
    // The refused desktop can still log in elsewhere.
    let reply = b.request(login("2000", "7002", None)).await.unwrap();
    assert!(matches!(reply, ServerMsg::LoggedIn { .. }));
}

#[tokio::test]
async fn a_second_login_of_the_same_agent_replaces_the_first() {
    let server = TestServer::start().await;
    let (mut old, _) = server.desktop("1042", "7001").await;
    let mut new = server.connect(Role::Desktop).await;
    let reply = new.request(login("1042", "7001", None)).await.unwrap();
    match reply {
        ServerMsg::LoggedIn { resumed, .. } => assert!(!resumed),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        old.next_push().await.unwrap(),
        ServerMsg::LoggedOut {
            cause: LogoutCause::Replaced
        }
    );
    // The old connection is no longer logged in; the new one is.
    let reply = old.request(record_req("GetRecord", "R1")).await.unwrap();
    expect_error(&reply, ErrorCode::NotLoggedIn);
    let reply = new.request(record_req("GetRecord", "R1")).await.unwrap();
    expect_error(&reply, ErrorCode::NoSuchRecord);
}

#[tokio::test]
async fn a_login_on_another_dn_replaces_and_moves_the_agent() {
    let server = TestServer::start().await;
    let (mut switch, _) = server.switch().await;
    let (mut old, _) = server.desktop("1042", "7001").await;
    let _ = switch.next_push().await.unwrap(); // AgentLogin 7001
    let _ = switch.next_push().await.unwrap(); // Monitor [7001]
    let mut new = server.connect(Role::Desktop).await;
    let reply = new.request(login("1042", "7005", None)).await.unwrap();
    assert!(matches!(reply, ServerMsg::LoggedIn { ref dn, .. } if dn == "7005"));
    assert_eq!(
        old.next_push().await.unwrap(),
        ServerMsg::LoggedOut {
            cause: LogoutCause::Replaced
        }
    );
    let mut saw = Vec::new();
    for _ in 0..4 {
        saw.push(switch.next_push().await.unwrap());
    }
    assert!(saw.contains(&ServerMsg::AgentLogout {
        dn: "7001".into(),
        agent: "1042".into()
    }));
    assert!(saw.contains(&ServerMsg::AgentLogin {
        dn: "7005".into(),
        agent: "1042".into()
    }));
    assert_eq!(
        saw.last().unwrap(),
        &ServerMsg::Monitor {
            dns: vec!["7005".into()]
        }
    );
}

#[tokio::test]
async fn desktop_logout_tells_the_switch() {
    let server = TestServer::start().await;
    let (mut switch, _) = server.switch().await;
    let (mut desk, _) = server.desktop("1042", "7001").await;
    let _ = switch.next_push().await.unwrap();
    let _ = switch.next_push().await.unwrap();
    let reply = desk.request(logout(false)).await.unwrap();
    assert_eq!(
        reply,
        ServerMsg::LoggedOut {
            cause: LogoutCause::Desktop
        }
    );
    assert_eq!(
        switch.next_push().await.unwrap(),
        ServerMsg::AgentLogout {
            dn: "7001".into(),
            agent: "1042".into()
        }
    );
    assert_eq!(
        switch.next_push().await.unwrap(),
        ServerMsg::Monitor { dns: vec![] }
    );
    // The DN is free again.
    let (_other, _) = server.desktop("2000", "7001").await;
}

#[tokio::test]
async fn phone_logout_logs_the_desktop_out() {
    let server = TestServer::start().await;
    let (mut switch, _) = server.switch().await;
    let (mut desk, _) = server.desktop("1042", "7001").await;
    let _ = switch.next_push().await.unwrap();
    let _ = switch.next_push().await.unwrap();
    event(&mut switch, agent_logout("7001", "1042")).await;
    assert_eq!(
        desk.next_push().await.unwrap(),
        ServerMsg::LoggedOut {
            cause: LogoutCause::Phone
        }
    );
    // The switch is not told back what it said, but the Monitor list shrinks.
    assert_eq!(
        switch.next_push().await.unwrap(),
        ServerMsg::Monitor { dns: vec![] }
    );
    let reply = desk.request(record_req("GetRecord", "R1")).await.unwrap();
    expect_error(&reply, ErrorCode::NotLoggedIn);
}

#[tokio::test]
async fn phone_login_echo_is_a_no_op_and_a_conflict_is_won_by_the_phone() {
    let server = TestServer::start().await;
    let (mut switch, _) = server.switch().await;
    let (mut desk, _) = server.desktop("1042", "7001").await;
    let _ = switch.next_push().await.unwrap();
    let _ = switch.next_push().await.unwrap();
    // The switch echoes the login it was told about: nothing changes.
    event(&mut switch, agent_login("7001", "1042")).await;
    expect_quiet(&mut desk).await;
    let reply = desk.request(record_req("GetRecord", "R1")).await.unwrap();
    expect_error(&reply, ErrorCode::NoSuchRecord);
    // Another agent logs in on the phone of 7001: the phone wins.
    event(&mut switch, agent_login("7001", "3000")).await;
    assert_eq!(
        desk.next_push().await.unwrap(),
        ServerMsg::LoggedOut {
            cause: LogoutCause::Phone
        }
    );
}

#[tokio::test]
async fn call_events_are_pushed_to_the_desktop_on_that_dn() {
    let server = TestServer::start().await;
    let (mut switch, _) = server.switch().await;
    let (mut a, _) = server.desktop("1042", "7001").await;
    let (mut b, _) = server.desktop("2000", "7002").await;
    event(&mut switch, ringing("C1", "7001")).await;
    assert_eq!(
        a.next_push().await.unwrap(),
        ServerMsg::CallAlerting {
            call: "C1".into(),
            dn: "7001".into(),
            record: None,
            consult_of: None
        }
    );
    event(&mut switch, established("C1", "7001")).await;
    assert_eq!(
        a.next_push().await.unwrap(),
        ServerMsg::CallEstablished {
            call: "C1".into(),
            dn: "7001".into()
        }
    );
    event(&mut switch, released("C1", "7001", None)).await;
    assert_eq!(
        a.next_push().await.unwrap(),
        ServerMsg::CallCleared {
            call: "C1".into(),
            dn: "7001".into(),
            cause: "hangup".into()
        }
    );
    event(&mut switch, ringing("C2", "7001")).await;
    let _ = a.next_push().await.unwrap();
    event(&mut switch, released("C2", "7001", Some("rona"))).await;
    assert_eq!(
        a.next_push().await.unwrap(),
        ServerMsg::CallCleared {
            call: "C2".into(),
            dn: "7001".into(),
            cause: "rona".into()
        }
    );
    // B saw none of it.
    expect_quiet(&mut b).await;
}

#[tokio::test]
async fn events_for_unmonitored_dns_are_acked_and_counted() {
    let server = TestServer::start().await;
    let (mut switch, _) = server.switch().await;
    event(&mut switch, ringing("C9", "9999")).await;
    event(&mut switch, established("C9", "9999")).await;
    match server.status().await {
        ServerMsg::StatusReport {
            ignored_events,
            calls,
            ..
        } => {
            assert_eq!(ignored_events, 2);
            assert_eq!(calls, 0);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn first_grant_gives_full_with_the_data() {
    let server = TestServer::start().await;
    let (mut switch, _) = server.switch().await;
    let mut dialer = server.connect(Role::Dialer).await;
    let (mut a, _) = server.desktop("1042", "7001").await;
    let reply = dialer.request(attach("C1", "R1")).await.unwrap();
    assert_eq!(
        reply,
        ServerMsg::RecordAttached {
            record: "R1".into(),
            call: "C1".into()
        }
    );
    event(&mut switch, ringing("C1", "7001")).await;
    assert_eq!(
        a.next_push().await.unwrap(),
        ServerMsg::CallAlerting {
            call: "C1".into(),
            dn: "7001".into(),
            record: Some("R1".into()),
            consult_of: None
        }
    );
    // Alerting alone grants nothing.
    expect_quiet(&mut a).await;
    event(&mut switch, established("C1", "7001")).await;
    let _ = a.next_push().await.unwrap(); // CallEstablished
    let (record, access, previous, cause, data, context) = expect_access(&mut a).await;
    assert_eq!(record, "R1");
    assert_eq!(access, Access::Full);
    assert_eq!(previous, Access::Revoked);
    assert_eq!(cause, AccessCause::Established);
    assert_eq!(data.unwrap()["name"], "Customer of R1");
    assert_eq!(context.unwrap(), Context::default());
    // The agent can now read it.
    match a.request(record_req("GetRecord", "R1")).await.unwrap() {
        ServerMsg::Record { access, final_, .. } => {
            assert_eq!(access, Access::Full);
            assert!(final_.is_none());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn no_agent_on_the_dn_means_nobody_gets_the_record() {
    let server = TestServer::start().await;
    let (mut switch, _) = server.switch().await;
    let mut dialer = server.connect(Role::Dialer).await;
    let mut admin = server.connect(Role::Admin).await;
    dialer.request(attach("C1", "R1")).await.unwrap();
    event(&mut switch, ringing("C1", "7001")).await;
    event(&mut switch, established("C1", "7001")).await;
    match admin.request(record_req("RecordInfo", "R1")).await.unwrap() {
        ServerMsg::RecordReport {
            state,
            holders,
            call,
            ..
        } => {
            assert_eq!(state, "waiting");
            assert!(holders.is_empty());
            assert_eq!(call.as_deref(), Some("C1"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn attaching_to_an_answered_call_grants_at_once() {
    let server = TestServer::start().await;
    let (mut switch, _) = server.switch().await;
    let mut dialer = server.connect(Role::Dialer).await;
    let (mut a, _) = server.desktop("1042", "7001").await;
    event(&mut switch, ringing("C1", "7001")).await;
    event(&mut switch, established("C1", "7001")).await;
    let _ = a.next_push().await.unwrap();
    let _ = a.next_push().await.unwrap();
    dialer.request(attach("C1", "R1")).await.unwrap();
    let (record, access, _, cause, data, _) = expect_access(&mut a).await;
    assert_eq!(
        (record.as_str(), access, cause),
        ("R1", Access::Full, AccessCause::Established)
    );
    assert!(data.is_some());
}

#[tokio::test]
async fn a_record_live_on_one_call_is_busy_for_another() {
    let server = TestServer::start().await;
    let mut dialer = server.connect(Role::Dialer).await;
    dialer.request(attach("C1", "R1")).await.unwrap();
    // Same call again: idempotent.
    assert_eq!(
        dialer.request(attach("C1", "R1")).await.unwrap(),
        ServerMsg::RecordAttached {
            record: "R1".into(),
            call: "C1".into()
        }
    );
    let reply = dialer.request(attach("C2", "R1")).await.unwrap();
    let message = expect_error(&reply, ErrorCode::RecordBusy);
    assert!(message.contains("C1"), "{message}");
    // The call already carries a live record.
    let reply = dialer.request(attach("C1", "R2")).await.unwrap();
    expect_error(&reply, ErrorCode::RecordBusy);
    // Once final, the record may start a new life on another call.
    assert_eq!(
        dialer
            .request(record_req("CancelRecord", "R1"))
            .await
            .unwrap(),
        ServerMsg::RecordCancelled {
            record: "R1".into()
        }
    );
    assert_eq!(
        dialer.request(attach("C2", "R1")).await.unwrap(),
        ServerMsg::RecordAttached {
            record: "R1".into(),
            call: "C2".into()
        }
    );
}

#[tokio::test]
async fn consultation_without_consult_of_is_linked_by_ani() {
    let server = TestServer::start().await;
    let (mut switch, _) = server.switch().await;
    let mut dialer = server.connect(Role::Dialer).await;
    let (mut a, _) = server.desktop("1042", "7001").await;
    let (mut b, _) = server.desktop("2000", "7002").await;
    // An unrelated call with the same customer number but no record must not be picked.
    event(
        &mut switch,
        ringing_full("C0", "7003", Some("5551234"), None, None),
    )
    .await;
    dialer.request(attach("C1", "R1")).await.unwrap();
    event(
        &mut switch,
        ringing_full("C1", "7001", Some("5551234"), None, None),
    )
    .await;
    event(&mut switch, established("C1", "7001")).await;
    let _ = a.next_push().await.unwrap();
    let _ = a.next_push().await.unwrap();
    let (_, access, ..) = expect_access(&mut a).await;
    assert_eq!(access, Access::Full);
    // A consults B; the link reports the customer's ANI but no consult_of.
    event(
        &mut switch,
        ringing_full("C2", "7002", Some("5551234"), Some("7001"), None),
    )
    .await;
    assert_eq!(
        b.next_push().await.unwrap(),
        ServerMsg::CallAlerting {
            call: "C2".into(),
            dn: "7002".into(),
            record: Some("R1".into()),
            consult_of: Some("C1".into())
        }
    );
    event(&mut switch, established("C2", "7002")).await;
    let _ = b.next_push().await.unwrap(); // CallEstablished
    let (record, access, _, cause, data, _) = expect_access(&mut b).await;
    assert_eq!(
        (record.as_str(), access, cause),
        ("R1", Access::ReadOnly, AccessCause::Consultation)
    );
    assert!(data.is_some(), "a read-only grant carries the data too");
}

#[tokio::test]
async fn ani_linking_uses_the_record_phone_when_the_call_had_no_ani() {
    let server = TestServer::start().await;
    let (mut switch, _) = server.switch().await;
    let mut dialer = server.connect(Role::Dialer).await;
    let (_a, _) = server.desktop("1042", "7001").await;
    let (mut b, _) = server.desktop("2000", "7002").await;
    dialer.request(attach("C1", "R1")).await.unwrap(); // phone "555R1"
    event(&mut switch, ringing("C1", "7001")).await;
    event(&mut switch, established("C1", "7001")).await;
    event(
        &mut switch,
        ringing_full("C2", "7002", Some("555R1"), Some("7001"), None),
    )
    .await;
    match b.next_push().await.unwrap() {
        ServerMsg::CallAlerting {
            consult_of, record, ..
        } => {
            assert_eq!(consult_of.as_deref(), Some("C1"));
            assert_eq!(record.as_deref(), Some("R1"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn login_shows_calls_already_on_the_dn() {
    let server = TestServer::start().await;
    let (mut switch, _) = server.switch().await;
    let (_a, _) = server.desktop("1042", "7001").await;
    // The call is on 7001 while someone is there; then that agent leaves and another arrives.
    event(&mut switch, ringing("C1", "7001")).await;
    event(&mut switch, established("C1", "7001")).await;
    event(&mut switch, ringing("C3", "7001")).await;
    let mut admin = server.connect(Role::Admin).await;
    let _ = admin.request(Request::Status).await.unwrap();
    drop(_a);
    let mut late = server.connect(Role::Desktop).await;
    // Same agent takes the session over and is shown both calls.
    let reply = late.request(login("1042", "7001", None)).await.unwrap();
    assert!(matches!(reply, ServerMsg::LoggedIn { .. }));
    assert_eq!(
        late.next_push().await.unwrap(),
        ServerMsg::CallEstablished {
            call: "C1".into(),
            dn: "7001".into()
        }
    );
    assert_eq!(
        late.next_push().await.unwrap(),
        ServerMsg::CallAlerting {
            call: "C3".into(),
            dn: "7001".into(),
            record: None,
            consult_of: None
        }
    );
}

#[tokio::test]
async fn status_and_record_info_report_the_state() {
    let server = TestServer::start().await;
    let (mut switch, _) = server.switch().await;
    let mut dialer = server.connect(Role::Dialer).await;
    let (_a, _) = server.desktop("1042", "7001").await;
    dialer.request(attach("C1", "R1")).await.unwrap();
    dialer.request(attach("C2", "R2")).await.unwrap();
    dialer
        .request(record_req("CancelRecord", "R2"))
        .await
        .unwrap();
    event(&mut switch, ringing("C1", "7001")).await;
    event(&mut switch, established("C1", "7001")).await;
    let mut admin = server.connect(Role::Admin).await;
    match admin.request(Request::Status).await.unwrap() {
        ServerMsg::StatusReport {
            agents,
            dns,
            calls,
            records_live,
            records_final,
            connections,
            ignored_events,
            audit_last_seq,
            ..
        } => {
            assert_eq!((agents, dns, calls), (1, 1, 1));
            assert_eq!((records_live, records_final), (1, 1));
            assert_eq!(connections, 4);
            assert_eq!(ignored_events, 0);
            // login, 2 attached, finalized R2, granted R1
            assert_eq!(audit_last_seq, 5);
        }
        other => panic!("{other:?}"),
    }
    match admin.request(record_req("RecordInfo", "R1")).await.unwrap() {
        ServerMsg::RecordReport {
            record,
            state,
            holders,
            final_,
            ..
        } => {
            assert_eq!((record.as_str(), state.as_str()), ("R1", "held"));
            assert_eq!(
                holders,
                vec![Holder {
                    agent: "1042".into(),
                    access: Access::Full
                }]
            );
            assert!(final_.is_none());
        }
        other => panic!("{other:?}"),
    }
    match admin.request(record_req("RecordInfo", "R2")).await.unwrap() {
        ServerMsg::RecordReport { state, final_, .. } => {
            assert_eq!(state, "final");
            let f = final_.unwrap();
            assert_eq!(f.outcome, Outcome::Cancelled);
            assert_eq!(f.by.as_deref(), Some("dialer"));
        }
        other => panic!("{other:?}"),
    }
    let reply = admin
        .request(record_req("RecordInfo", "nope"))
        .await
        .unwrap();
    expect_error(&reply, ErrorCode::NoSuchRecord);
}
