//! The sharing rules of SCENARIOS.md (rules 2 to 12 and the scenarios), one test or more each,
//! through real sockets: desktops, a dialer and a switch link as separate clients.

use baton::messages::*;
use baton_kit::*;
use serde_json::json;
use std::time::Duration;

// ----- Rule 2 and the single-step scenario -----------------------------------------------------

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

// ----- Rules 3, 4, 5 and the two-step scenario -------------------------------------------------

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

// ----- Rules 6 and 7 ---------------------------------------------------------------------------

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

// ----- Rule 8 and the conference race ----------------------------------------------------------

/// Puts A, B and C in a conference on `call` holding `record` full.
async fn conference_of_three(t: &mut Centre, call: &str, record: &str) {
    t.call_on_a(call, record).await;
    event(&mut t.switch, conferenced(call, "7002", None)).await;
    event(&mut t.switch, conferenced(call, "7003", None)).await;
    let m = next_record_push(&mut t.b).await;
    assert_eq!(access_of(&m).1, Access::Full);
    let m = next_record_push(&mut t.c).await;
    assert_eq!(access_of(&m).1, Access::Full);
}

#[tokio::test]
async fn scenario_conference_race_has_exactly_one_winner_every_time() {
    let mut t = Centre::new().await;
    for round in 0..25 {
        let (call, record) = (format!("C{round}"), format!("R{round}"));
        conference_of_three(&mut t, &call, &record).await;
        // All three send before anyone reads: the requests race inside the server.
        let req = processed(&record, "sale");
        let ra = t.a.send(&req).await.unwrap();
        let rb = t.b.send(&req).await.unwrap();
        let rc = t.c.send(&req).await.unwrap();
        let replies = [
            ("A", t.a.reply_to(ra).await.unwrap()),
            ("B", t.b.reply_to(rb).await.unwrap()),
            ("C", t.c.reply_to(rc).await.unwrap()),
        ];
        let winners: Vec<&str> = replies
            .iter()
            .filter(|(_, m)| matches!(m, ServerMsg::RecordProcessedAck { .. }))
            .map(|(who, _)| *who)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {replies:?}");
        let winner = winners[0];
        for (who, m) in &replies {
            if *who == winner {
                continue;
            }
            match m {
                ServerMsg::Error {
                    code, outcome, by, ..
                } => {
                    assert_eq!(*code, ErrorCode::AlreadyFinal);
                    assert_eq!(*outcome, Some(Outcome::Processed));
                    assert_eq!(by.as_deref(), Some(winner));
                }
                other => panic!("round {round}: loser {who} got {other:?}"),
            }
        }
        // The two others were told; the winner was not.
        for (who, client) in [("A", &mut t.a), ("B", &mut t.b), ("C", &mut t.c)] {
            if who == winner {
                continue;
            }
            match next_record_push(client).await {
                ServerMsg::RecordFinalized {
                    record: r,
                    by,
                    outcome,
                } => {
                    assert_eq!(
                        (r.as_str(), by.as_str(), outcome),
                        (record.as_str(), winner, Outcome::Processed)
                    );
                }
                other => panic!("round {round}: {who} got {other:?}"),
            }
        }
        let (r, outcome, by, _) = t.outcome().await;
        assert_eq!(
            (r.as_str(), outcome, by.as_deref()),
            (record.as_str(), Outcome::Processed, Some(winner))
        );
        let finals = t
            .audit(&record)
            .await
            .into_iter()
            .filter(|e| e.kind == AuditKind::Finalized)
            .count();
        assert_eq!(finals, 1, "round {round}");
        // Clear the call so the next round starts clean.
        for dn in ["7001", "7002", "7003"] {
            event(&mut t.switch, released(&call, dn, None)).await;
        }
        for client in [&mut t.a, &mut t.b, &mut t.c] {
            while client
                .try_next_push(Duration::from_millis(20))
                .await
                .unwrap()
                .is_some()
            {}
        }
    }
    // Exactly one outcome per record reached the dialer.
    assert!(t
        .dialer
        .try_next_push(Duration::from_millis(100))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn different_final_requests_race_to_one_outcome() {
    let mut t = Centre::new().await;
    conference_of_three(&mut t, "C1", "R1").await;
    let ra = t.a.send(&record_req("RecordReject", "R1")).await.unwrap();
    let rb = t.b.send(&record_req("DoNotCall", "R1")).await.unwrap();
    let rc = t.c.send(&record_req("Reschedule", "R1")).await.unwrap();
    let replies = [
        t.a.reply_to(ra).await.unwrap(),
        t.b.reply_to(rb).await.unwrap(),
        t.c.reply_to(rc).await.unwrap(),
    ];
    let acks = replies
        .iter()
        .filter(|m| !matches!(m, ServerMsg::Error { .. }))
        .count();
    assert_eq!(acks, 1, "{replies:?}");
    let (_, outcome, ..) = t.outcome().await;
    let (_, _, final_) = t.info("R1").await;
    assert_eq!(final_.unwrap().outcome, outcome);
    assert!(t
        .dialer
        .try_next_push(Duration::from_millis(100))
        .await
        .unwrap()
        .is_none());
}

// ----- Rule 9 ----------------------------------------------------------------------------------

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

// ----- Rule 11 ---------------------------------------------------------------------------------

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
    event(
        &mut t.switch,
        Request::AgentLogout(DnAgent {
            dn: "7001".into(),
            agent: "A".into(),
        }),
    )
    .await;
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
        .request(Request::ReleaseRecord(ReleaseRecord {
            record: "R1".into(),
            reason: "agent went home".into(),
        }))
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

// ----- Desktop record requests: checks, context, outcomes --------------------------------------

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

// ----- Rule 12 ---------------------------------------------------------------------------------

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
