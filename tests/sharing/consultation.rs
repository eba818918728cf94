//! Rules 3, 4 and 5 and the two-step scenario: a consultee holds the record `read_only` until the
//! transfer completes, and loses it when the consultation ends, whichever side hangs up.

use super::*;

#[tokio::test]
async fn consultee_is_read_only_and_refused_every_change() {
    let mut t = Centre::new().await;
    let mut a = attach("C1", "R1");
    if let Request::AttachRecord(ref mut x) = a {
        x.chain = vec![
            ChainEntry {
                record: "R1".into(),
                chain_n: 0,
                phone: Some("5550".into()),
                data: Default::default(),
            },
            ChainEntry {
                record: "R1b".into(),
                chain_n: 1,
                phone: Some("5551".into()),
                data: json!({"alt": "mobile"}).as_object().unwrap().clone(),
            },
            ChainEntry {
                record: "R1c".into(),
                chain_n: 2,
                phone: Some("5552".into()),
                data: Default::default(),
            },
        ];
    }
    t.dialer.request(a).await.unwrap();
    event(&mut t.switch, ringing("C1", "7001")).await;
    event(&mut t.switch, established("C1", "7001")).await;
    let _ = next_record_push(&mut t.a).await;
    t.consult_b("C1", "C2", "R1", true).await;

    // Reading works, chained records come read-only.
    match t.b.request(record_req("GetRecord", "R1")).await.unwrap() {
        ServerMsg::Record { access, .. } => assert_eq!(access, Access::ReadOnly),
        other => panic!("{other:?}"),
    }
    let chained =
        t.b.request_stream(record_req("ChainedRecords", "R1"))
            .await
            .unwrap();
    assert_eq!(chained.len(), 3);
    for m in &chained[..2] {
        match m {
            ServerMsg::ChainedRecord { access, record, .. } => {
                assert_eq!(*access, Access::ReadOnly);
                assert_ne!(record, "R1", "the record asked about is not repeated");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        chained[2],
        ServerMsg::ChainedRecordsEnd {
            record: "R1".into(),
            count: 2
        }
    );
    // A (full) gets chained records with full access.
    let chained =
        t.a.request_stream(record_req("ChainedRecords", "R1"))
            .await
            .unwrap();
    assert!(matches!(
        chained[0],
        ServerMsg::ChainedRecord {
            access: Access::Full,
            ..
        }
    ));

    // Every change is refused and nothing changes.
    for kind in [
        "UpdateRecord",
        "RecordProcessed",
        "RecordReject",
        "RecordCancel",
        "DoNotCall",
        "Reschedule",
    ] {
        let reply = t.b.request(record_req(kind, "R1")).await.unwrap();
        expect_error(&reply, ErrorCode::ReadOnly);
    }
    let (state, _, final_) = t.info("R1").await;
    assert_eq!(state, "held");
    assert!(final_.is_none());
    // A's update reaches the consultee as RecordChanged.
    t.a.request(update("R1", json!({"note": "vip"})))
        .await
        .unwrap();
    match next_record_push(&mut t.b).await {
        ServerMsg::RecordChanged {
            record,
            version,
            by,
            fields,
            ..
        } => {
            assert_eq!((record.as_str(), version, by.as_str()), ("R1", 1, "A"));
            assert_eq!(fields.unwrap()["note"], "vip");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn scenario_two_step_transfer_completed() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    t.consult_b("C1", "C2", "R1", true).await;
    event(
        &mut t.switch,
        transferred("C1", "7001", "7002", TransferKind::TwoStep, Some("C2")),
    )
    .await;
    let m = next_record_push(&mut t.a).await;
    assert_eq!(
        access_of(&m),
        ("R1".into(), Access::Revoked, AccessCause::Transfer)
    );
    // B: the consultation call is over, the customer call is on its DN, and it holds the record full.
    expect_push(
        &mut t.b,
        ServerMsg::CallCleared {
            call: "C2".into(),
            dn: "7002".into(),
            cause: "transferred".into(),
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
    match t.b.next_push().await.unwrap() {
        ServerMsg::AccessChanged {
            access,
            previous,
            cause,
            ..
        } => {
            assert_eq!(
                (access, previous, cause),
                (Access::Full, Access::ReadOnly, AccessCause::Transfer)
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
}

#[tokio::test]
async fn two_step_transfer_finds_the_consultation_without_consult_call() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    t.consult_b("C1", "C2", "R1", true).await;
    event(
        &mut t.switch,
        transferred("C1", "7001", "7002", TransferKind::TwoStep, None),
    )
    .await;
    expect_push(
        &mut t.b,
        ServerMsg::CallCleared {
            call: "C2".into(),
            dn: "7002".into(),
            cause: "transferred".into(),
        },
    )
    .await;
    let m = next_record_push(&mut t.b).await;
    assert_eq!(access_of(&m).1, Access::Full);
    match t.admin.request(Request::Status).await.unwrap() {
        ServerMsg::StatusReport { calls, .. } => {
            assert_eq!(calls, 1, "the consultation call is gone")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn scenario_consultation_abandoned_by_the_consultee() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    t.consult_b("C1", "C2", "R1", true).await;
    event(&mut t.switch, released("C2", "7002", None)).await;
    expect_push(
        &mut t.b,
        ServerMsg::CallCleared {
            call: "C2".into(),
            dn: "7002".into(),
            cause: "hangup".into(),
        },
    )
    .await;
    let m = t.b.next_push().await.unwrap();
    assert_eq!(
        access_of(&m),
        ("R1".into(), Access::Revoked, AccessCause::Released)
    );
    match t.a.request(record_req("GetRecord", "R1")).await.unwrap() {
        ServerMsg::Record { access, .. } => assert_eq!(access, Access::Full),
        other => panic!("{other:?}"),
    }
    let reply = t.b.request(record_req("GetRecord", "R1")).await.unwrap();
    expect_error(&reply, ErrorCode::AccessDenied);
}

#[tokio::test]
async fn consultation_ended_by_the_initiator_revokes_the_consultee() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    t.consult_b("C1", "C2", "R1", true).await;
    event(&mut t.switch, released("C2", "7001", None)).await;
    let m = next_record_push(&mut t.b).await;
    assert_eq!(
        access_of(&m),
        ("R1".into(), Access::Revoked, AccessCause::Released)
    );
    // A keeps full: no access push for A beyond the call clearing.
    expect_push(
        &mut t.a,
        ServerMsg::CallCleared {
            call: "C2".into(),
            dn: "7001".into(),
            cause: "hangup".into(),
        },
    )
    .await;
    expect_quiet(&mut t.a).await;
}

/// A consults B; the switch sends no `Established` for A's side of the consultation (many
/// switches report only the called party). The caller named by `from_dn` is on the call all the
/// same: its desktop sees the call, and its hang-up ends the consultation (rule 5).
async fn consult_b_without_callers_established(t: &mut Centre, c2: &str, ani: Option<&str>) {
    let consult_of = if ani.is_some() { None } else { Some("C1") };
    event(
        &mut t.switch,
        ringing_full(c2, "7002", ani, Some("7001"), consult_of),
    )
    .await;
    expect_push(
        &mut t.a,
        ServerMsg::CallEstablished {
            call: c2.into(),
            dn: "7001".into(),
        },
    )
    .await;
    event(&mut t.switch, established(c2, "7002")).await;
    let m = next_record_push(&mut t.b).await;
    assert_eq!(
        access_of(&m),
        ("R1".into(), Access::ReadOnly, AccessCause::Consultation)
    );
}

#[tokio::test]
async fn the_callers_hang_up_ends_the_consultation_without_its_established() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    consult_b_without_callers_established(&mut t, "C2", None).await;
    event(&mut t.switch, released("C2", "7001", None)).await;
    expect_push(
        &mut t.a,
        ServerMsg::CallCleared {
            call: "C2".into(),
            dn: "7001".into(),
            cause: "hangup".into(),
        },
    )
    .await;
    let m = next_record_push(&mut t.b).await;
    assert_eq!(
        access_of(&m),
        ("R1".into(), Access::Revoked, AccessCause::Released)
    );
    let reply = t.b.request(record_req("GetRecord", "R1")).await.unwrap();
    expect_error(&reply, ErrorCode::AccessDenied);
    // A keeps full and is told nothing more.
    expect_quiet(&mut t.a).await;
    let (_, holders, _) = t.info("R1").await;
    assert_eq!(
        holders,
        vec![
            Holder {
                agent: "A".into(),
                access: Access::Full
            },
            Holder {
                agent: "B".into(),
                access: Access::Revoked
            }
        ]
    );
    // B is still on C2 as far as the switch has said; the call ends with B's own release.
    event(&mut t.switch, released("C2", "7002", None)).await;
    match t.admin.request(Request::Status).await.unwrap() {
        ServerMsg::StatusReport { calls, .. } => assert_eq!(calls, 1, "only C1 is left"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_callers_hang_up_ends_a_consultation_linked_by_ani() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    consult_b_without_callers_established(&mut t, "C2", Some("555R1")).await;
    event(&mut t.switch, released("C2", "7001", None)).await;
    let m = next_record_push(&mut t.b).await;
    assert_eq!(
        access_of(&m),
        ("R1".into(), Access::Revoked, AccessCause::Released)
    );
}

#[tokio::test]
async fn a_dialing_caller_is_replayed_and_a_transfer_clears_its_side() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    consult_b_without_callers_established(&mut t, "C2", None).await;
    // A's desktop is replaced by a new one: the replay shows both of its calls established.
    let mut a2 = t.server.connect(Role::Desktop).await;
    let reply = a2.request(login("A", "7001", None)).await.unwrap();
    assert!(matches!(reply, ServerMsg::LoggedIn { .. }), "{reply:?}");
    let mut calls = Vec::new();
    for _ in 0..2 {
        match a2.next_push().await.unwrap() {
            ServerMsg::CallEstablished { call, dn } => {
                assert_eq!(dn, "7001");
                calls.push(call);
            }
            other => panic!("expected CallEstablished, got {other:?}"),
        }
    }
    assert_eq!(calls, vec!["C1".to_string(), "C2".to_string()]);
    t.a = a2;
    let m = next_record_push(&mut t.a).await;
    assert_eq!(
        access_of(&m),
        ("R1".into(), Access::Full, AccessCause::Resume)
    );
    // The two-step transfer completes: the consultation's parties, A's dialing side included,
    // are told it is over.
    event(
        &mut t.switch,
        transferred("C1", "7001", "7002", TransferKind::TwoStep, Some("C2")),
    )
    .await;
    let mut cleared = Vec::new();
    for _ in 0..2 {
        match t.a.next_push().await.unwrap() {
            ServerMsg::CallCleared { call, cause, .. } => cleared.push((call, cause)),
            other => panic!("expected CallCleared, got {other:?}"),
        }
    }
    cleared.sort();
    assert_eq!(
        cleared,
        vec![
            ("C1".to_string(), "transferred".to_string()),
            ("C2".to_string(), "transferred".to_string())
        ]
    );
}

/// A consultation to a queue: it rings out on B, the switch rings the same call on C, and C
/// answers. While the consulting agent is still on the call, B's RONA ended only B's part.
#[tokio::test]
async fn a_consultation_that_rings_out_on_one_agent_goes_on_to_the_next() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    event(
        &mut t.switch,
        ringing_full("C2", "7002", None, Some("7001"), Some("C1")),
    )
    .await;
    expect_call_alerting(&mut t.b, "C2").await;
    event(&mut t.switch, released("C2", "7002", Some("rona"))).await;
    event(&mut t.switch, ringing("C2", "7003")).await;
    match t.c.next_push().await.unwrap() {
        ServerMsg::CallAlerting {
            call, consult_of, ..
        } => assert_eq!((call.as_str(), consult_of.as_deref()), ("C2", Some("C1"))),
        other => panic!("{other:?}"),
    }
    event(&mut t.switch, established("C2", "7003")).await;
    let m = next_record_push(&mut t.c).await;
    assert_eq!(
        access_of(&m),
        ("R1".into(), Access::ReadOnly, AccessCause::Consultation)
    );
    // The consulting agent hangs up: now the consultation is over.
    event(&mut t.switch, released("C2", "7001", None)).await;
    let m = next_record_push(&mut t.c).await;
    assert_eq!(
        access_of(&m),
        ("R1".into(), Access::Revoked, AccessCause::Released)
    );
}

/// A consultation to a DN nobody is logged in on: once the caller hangs up, no event can ever
/// come about the unwatched DN still ringing, and the call is forgotten.
#[tokio::test]
async fn a_consultation_left_ringing_on_an_unwatched_dn_is_forgotten() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    event(
        &mut t.switch,
        ringing_full("C2", "7099", None, Some("7001"), Some("C1")),
    )
    .await;
    event(&mut t.switch, released("C2", "7001", None)).await;
    match t.admin.request(Request::Status).await.unwrap() {
        ServerMsg::StatusReport { calls, .. } => assert_eq!(calls, 1, "only C1 is left"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn consultation_ended_by_rona_grants_nothing() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    event(
        &mut t.switch,
        ringing_full("C2", "7002", None, Some("7001"), Some("C1")),
    )
    .await;
    expect_call_alerting(&mut t.b, "C2").await;
    event(&mut t.switch, released("C2", "7002", Some("rona"))).await;
    expect_push(
        &mut t.b,
        ServerMsg::CallCleared {
            call: "C2".into(),
            dn: "7002".into(),
            cause: "rona".into(),
        },
    )
    .await;
    expect_quiet(&mut t.b).await;
    let (_, holders, _) = t.info("R1").await;
    assert_eq!(
        holders,
        vec![Holder {
            agent: "A".into(),
            access: Access::Full
        }]
    );
}

/// PROTOCOL.md section 16: a transfer the switch completes while the consultation still rings
/// (a mute transfer) is reported as `Transferred{kind:"mute"}` and then the consultation's
/// `Released` on both DNs. B gets `full` at once, A is revoked, and both desktops see the
/// consultation cleared and only the customer call left.
#[tokio::test]
async fn a_transfer_completed_while_the_consultation_rings_is_reported_as_mute() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    t.consult_b("C1", "C2", "R1", false).await;
    event(
        &mut t.switch,
        transferred("C1", "7001", "7002", TransferKind::Mute, None),
    )
    .await;
    event(&mut t.switch, released("C2", "7002", None)).await;
    event(&mut t.switch, released("C2", "7001", None)).await;
    let b = pushes_until_quiet(&mut t.b).await;
    assert_eq!(
        b.iter()
            .filter(|m| !matches!(m, ServerMsg::AccessChanged { .. }))
            .cloned()
            .collect::<Vec<_>>(),
        vec![
            ServerMsg::CallAlerting {
                call: "C1".into(),
                dn: "7002".into(),
                record: Some("R1".into()),
                consult_of: None,
            },
            ServerMsg::CallCleared {
                call: "C2".into(),
                dn: "7002".into(),
                cause: "hangup".into(),
            },
        ]
    );
    let grants: Vec<_> = b
        .iter()
        .filter(|m| matches!(m, ServerMsg::AccessChanged { .. }))
        .map(access_of)
        .collect();
    assert_eq!(
        grants,
        vec![("R1".to_owned(), Access::Full, AccessCause::Transfer)]
    );
    let a = pushes_until_quiet(&mut t.a).await;
    assert!(
        a.iter()
            .any(|m| access_of_opt(m)
                == Some(("R1".to_owned(), Access::Revoked, AccessCause::Transfer))),
        "{a:?}"
    );
    assert!(a.contains(&ServerMsg::CallCleared {
        call: "C2".into(),
        dn: "7001".into(),
        cause: "hangup".into(),
    }));
    let (_, holders, _) = t.info("R1").await;
    assert!(holders.contains(&Holder {
        agent: "B".into(),
        access: Access::Full
    }));
    match t.admin.request(Request::Status).await.unwrap() {
        ServerMsg::StatusReport { calls, .. } => assert_eq!(calls, 1, "only C1 is left"),
        other => panic!("{other:?}"),
    }
    t.b.request(processed("R1", "sale")).await.unwrap();
    assert_eq!(t.outcome().await.1, Outcome::Processed);
}

fn access_of_opt(m: &ServerMsg) -> Option<(String, Access, AccessCause)> {
    matches!(m, ServerMsg::AccessChanged { .. }).then(|| access_of(m))
}
