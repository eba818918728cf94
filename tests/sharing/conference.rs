//! Rule 8 and the conference race: everybody on a conference is `full`, and the first
//! acknowledged final request wins.

use super::*;

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
