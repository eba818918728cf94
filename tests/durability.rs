//! CONTRACT section 9 through sockets: restart keeps everything, storage failure acknowledges
//! nothing, the audit log is gap-free and can be tailed, and the admin CLI works as a process.

use baton::client::Client;
use baton::messages::*;
use baton::store::MemoryStore;
use baton_kit::*;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn restart_keeps_records_holders_finals_context_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (session, last_seq) = {
        let server = TestServer::start_in(data.clone(), |_| {}).await;
        let (mut switch, _) = server.switch().await;
        let mut dialer = server.connect(Role::Dialer).await;
        let (mut a, session) = server.desktop("A", "7001").await;
        give(&mut switch, &mut dialer, &mut a, "C1", "R1", "7001").await;
        give(&mut switch, &mut dialer, &mut a, "C2", "R2", "7001").await;
        let reply = a
            .request(update_with_result(
                "R1",
                "callback",
                json!({"note": "call after six"}),
            ))
            .await
            .unwrap();
        assert_eq!(
            reply,
            ServerMsg::RecordUpdated {
                record: "R1".into(),
                version: 1
            }
        );
        let reply = a
            .request(record_req("RecordProcessed", "R2"))
            .await
            .unwrap();
        assert_eq!(
            reply,
            ServerMsg::RecordProcessedAck {
                record: "R2".into()
            }
        );
        let mut admin = server.connect(Role::Admin).await;
        let last_seq = whole_audit_log(&mut admin).await.last().unwrap().seq;
        server.shutdown().await;
        (session, last_seq)
    };

    let server = TestServer::start_in(data.clone(), |_| {}).await;
    let mut admin = server.connect(Role::Admin).await;
    // Records, holders, context and finals are back before anyone reconnects.
    match admin.request(record_req("RecordInfo", "R1")).await.unwrap() {
        ServerMsg::RecordReport {
            state,
            holders,
            version,
            context,
            ..
        } => {
            assert_eq!(state, "held");
            assert_eq!(
                holders,
                vec![Holder {
                    agent: "A".into(),
                    access: Access::Full
                }]
            );
            assert_eq!(version, Some(1));
            let context = context.unwrap();
            assert_eq!(context.fields["note"], "call after six");
            assert_eq!(context.call_result.as_deref(), Some("callback"));
        }
        other => panic!("{other:?}"),
    }
    match admin.request(record_req("RecordInfo", "R2")).await.unwrap() {
        ServerMsg::RecordReport { final_, .. } => {
            let f = final_.unwrap();
            assert_eq!(
                (f.outcome, f.by.as_deref()),
                (Outcome::Processed, Some("A"))
            );
        }
        other => panic!("{other:?}"),
    }
    // The switch is told to monitor the agent's DN again; the agent resumes and sees what it holds.
    let (_switch, dns) = server.switch().await;
    assert_eq!(dns, vec!["7001".to_string()]);
    let mut a = server.connect(Role::Desktop).await;
    match a.request(login("A", "7001", Some(&session))).await.unwrap() {
        ServerMsg::LoggedIn { resumed, .. } => {
            assert!(resumed, "the resume token survives a restart")
        }
        other => panic!("{other:?}"),
    }
    match a.next_push().await.unwrap() {
        ServerMsg::AccessChanged {
            record,
            access,
            cause,
            context,
            ..
        } => {
            assert_eq!(
                (record.as_str(), access, cause),
                ("R1", Access::Full, AccessCause::Resume)
            );
            assert_eq!(context.unwrap().fields["note"], "call after six");
        }
        other => panic!("{other:?}"),
    }
    // A final record stays final.
    let reply = a
        .request(record_req("RecordProcessed", "R2"))
        .await
        .unwrap();
    match reply {
        ServerMsg::Error {
            code, outcome, by, ..
        } => {
            assert_eq!(code, ErrorCode::AlreadyFinal);
            assert_eq!(
                (outcome, by.as_deref()),
                (Some(Outcome::Processed), Some("A"))
            );
        }
        other => panic!("{other:?}"),
    }
    // Audit seq continues without reuse or gaps.
    let entries = whole_audit_log(&mut admin).await;
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(
        seqs.len() as u64 > last_seq,
        "new entries after the restart"
    );
    assert_eq!(entries[last_seq as usize].kind, AuditKind::Login);
    match admin.request(Request::Status).await.unwrap() {
        ServerMsg::StatusReport {
            records_live,
            records_final,
            audit_last_seq,
            ..
        } => {
            assert_eq!((records_live, records_final), (1, 1));
            assert_eq!(audit_last_seq, *seqs.last().unwrap());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn agents_not_back_within_the_grace_after_a_restart_are_logged_out() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let server = TestServer::start_in(data.clone(), |_| {}).await;
        let (mut switch, _) = server.switch().await;
        let mut dialer = server.connect(Role::Dialer).await;
        let (mut a, _) = server.desktop("A", "7001").await;
        give(&mut switch, &mut dialer, &mut a, "C1", "R1", "7001").await;
        server.shutdown().await;
    }
    let server = TestServer::start_in(data, |c| c.resume_grace_ms = 200).await;
    let (mut switch, dns) = server.switch().await;
    assert_eq!(dns, vec!["7001".to_string()]);
    switch.set_timeout(Duration::from_secs(5));
    assert_eq!(
        switch.next_push().await.unwrap(),
        ServerMsg::AgentLogout {
            dn: "7001".into(),
            agent: "A".into()
        }
    );
    let mut admin = server.connect(Role::Admin).await;
    match admin.request(record_req("RecordInfo", "R1")).await.unwrap() {
        ServerMsg::RecordReport { state, .. } => assert_eq!(state, "orphaned"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn storage_failure_acknowledges_nothing_and_changes_nothing() {
    let store = Arc::new(MemoryStore::new());
    let server = TestServer::start_with_store(store.clone()).await;
    let (mut switch, _) = server.switch().await;
    let mut dialer = server.connect(Role::Dialer).await;
    let (mut a, _) = server.desktop("A", "7001").await;
    give(&mut switch, &mut dialer, &mut a, "C1", "R1", "7001").await;
    let mut admin = server.connect(Role::Admin).await;
    let before = whole_audit_log(&mut admin).await.len();

    store.set_failing(true);
    for req in [
        update("R1", json!({"x": 1})),
        record_req("RecordProcessed", "R1"),
        record_req("GetRecord", "R1"),
    ] {
        let reply = a.request(req).await.unwrap();
        let message = expect_error(&reply, ErrorCode::Unavailable);
        assert!(message.contains("storage"), "{message}");
    }
    let reply = dialer.request(attach("C9", "R9")).await.unwrap();
    expect_error(&reply, ErrorCode::Unavailable);
    // Reads that write nothing are still served.
    assert!(matches!(
        admin.request(Request::Status).await.unwrap(),
        ServerMsg::StatusReport { .. }
    ));
    // Nothing reached the dialer.
    assert!(dialer
        .try_next_push(Duration::from_millis(100))
        .await
        .unwrap()
        .is_none());

    store.set_failing(false);
    match a.request(record_req("GetRecord", "R1")).await.unwrap() {
        ServerMsg::Record {
            access,
            context,
            final_,
            ..
        } => {
            assert_eq!(access, Access::Full);
            assert!(
                context.fields.is_empty(),
                "the refused update changed nothing"
            );
            assert!(
                final_.is_none(),
                "the refused RecordProcessed changed nothing"
            );
        }
        other => panic!("{other:?}"),
    }
    let reply = admin.request(record_req("RecordInfo", "R9")).await.unwrap();
    expect_error(&reply, ErrorCode::NoSuchRecord);
    // The audit log has no hole where the failed batches were.
    let entries = whole_audit_log(&mut admin).await;
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        seqs.len(),
        before + 1,
        "only the GetRecord after recovery was added"
    );
    let reply = a
        .request(record_req("RecordProcessed", "R1"))
        .await
        .unwrap();
    assert_eq!(
        reply,
        ServerMsg::RecordProcessedAck {
            record: "R1".into()
        }
    );
}

/// CONTRACT 8 and 9: `unavailable` means nothing changed: not only the records and agents on
/// disk, but the call state, the desktop's session and a pending smart logout too.
#[tokio::test]
async fn a_refused_batch_leaves_calls_sessions_and_smart_logouts_as_they_were() {
    let store = Arc::new(MemoryStore::new());
    let server = TestServer::start_with_store(store.clone()).await;
    let (mut switch, _) = server.switch().await;
    let mut dialer = server.connect(Role::Dialer).await;
    let (mut a, _) = server.desktop("A", "7001").await;
    let (mut b, _) = server.desktop("B", "7002").await;
    give(&mut switch, &mut dialer, &mut a, "C1", "R1", "7001").await;
    switch.clear_pushes();

    // A asks to log out while still holding R1: the logout waits for R1 to be final.
    match a.request(logout(false)).await.unwrap() {
        ServerMsg::LogoutPending { records } => assert_eq!(records, vec!["R1".to_string()]),
        other => panic!("{other:?}"),
    }
    // A consults B; B's answer would make B read-only.
    event(
        &mut switch,
        ringing_full("C2", "7002", None, Some("7001"), Some("C1")),
    )
    .await;
    assert!(matches!(
        a.next_push().await.unwrap(),
        ServerMsg::CallEstablished { .. }
    ));
    assert!(matches!(
        b.next_push().await.unwrap(),
        ServerMsg::CallAlerting { .. }
    ));

    store.set_failing(true);
    // Finishing R1 would also have completed A's smart logout; B's answer would have granted.
    let reply = a
        .request(record_req("RecordProcessed", "R1"))
        .await
        .unwrap();
    expect_error(&reply, ErrorCode::Unavailable);
    let reply = switch.request(established("C2", "7002")).await.unwrap();
    expect_error(&reply, ErrorCode::Unavailable);
    store.set_failing(false);
    // Nothing of the refused batches reached anyone.
    expect_quiet(&mut a).await;
    expect_quiet(&mut b).await;

    // A is still logged in on its connection, still holds R1, and its logout still waits.
    match a.request(record_req("GetRecord", "R1")).await.unwrap() {
        ServerMsg::Record { access, final_, .. } => {
            assert_eq!((access, final_), (Access::Full, None))
        }
        other => panic!("{other:?}"),
    }
    // The switch sends the refused event again: B is told it answered, and gets R1 read-only,
    // as if the first attempt had never happened.
    event(&mut switch, established("C2", "7002")).await;
    assert_eq!(
        b.next_push().await.unwrap(),
        ServerMsg::CallEstablished {
            call: "C2".into(),
            dn: "7002".into()
        }
    );
    let (record, access, _, cause, _, _) = expect_access(&mut b).await;
    assert_eq!(
        (record.as_str(), access, cause),
        ("R1", Access::ReadOnly, AccessCause::Consultation)
    );
    // Finishing R1 now completes the smart logout that was pending all along.
    let reply = a
        .request(record_req("RecordProcessed", "R1"))
        .await
        .unwrap();
    assert_eq!(
        reply,
        ServerMsg::RecordProcessedAck {
            record: "R1".into()
        }
    );
    loop {
        match a.next_push().await.unwrap() {
            ServerMsg::LoggedOut { cause } => {
                assert_eq!(cause, LogoutCause::Desktop);
                break;
            }
            ServerMsg::CallEstablished { .. } | ServerMsg::CallCleared { .. } => {}
            other => panic!("unexpected push to A: {other:?}"),
        }
    }
    match server.status().await {
        ServerMsg::StatusReport { agents, calls, .. } => {
            assert_eq!(
                (agents, calls),
                (1, 2),
                "B is left, on C1's consultation C2"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn reads_answered_before_a_storage_failure_keep_their_audit_entries() {
    let store = Arc::new(MemoryStore::new());
    let server = TestServer::start_with_store(store.clone()).await;
    let (mut switch, _) = server.switch().await;
    let mut dialer = server.connect(Role::Dialer).await;
    let (mut a, _) = server.desktop("A", "7001").await;
    give(&mut switch, &mut dialer, &mut a, "C1", "R1", "7001").await;
    let mut admin = server.connect(Role::Admin).await;
    let before = whole_audit_log(&mut admin).await.len() as u64;

    // A read is answered at once; its audit entry waits to be written with later ones.
    assert!(matches!(
        a.request(record_req("GetRecord", "R1")).await.unwrap(),
        ServerMsg::Record { .. }
    ));
    // The disk fails before that entry is written: the next write fails with it.
    store.set_failing(true);
    let reply = a.request(update("R1", json!({"x": 1}))).await.unwrap();
    expect_error(&reply, ErrorCode::Unavailable);
    store.set_failing(false);
    let reply = a.request(update("R1", json!({"x": 2}))).await.unwrap();
    assert!(
        matches!(reply, ServerMsg::RecordUpdated { .. }),
        "{reply:?}"
    );

    // The read's entry survived the failure, in its place, and nothing of the refused update did.
    let entries = whole_audit_log(&mut admin).await;
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let after: Vec<(AuditKind, Option<&str>)> = entries
        .iter()
        .filter(|e| e.seq > before)
        .map(|e| (e.kind, e.request.as_deref()))
        .collect();
    assert_eq!(
        after,
        vec![
            (AuditKind::Accepted, Some("GetRecord")),
            (AuditKind::Accepted, Some("UpdateRecord")),
        ]
    );
}

#[tokio::test]
async fn audit_tail_filters_from_seq_and_follow() {
    let server = TestServer::start().await;
    let (mut switch, _) = server.switch().await;
    let mut dialer = server.connect(Role::Dialer).await;
    let (mut a, _) = server.desktop("A", "7001").await;
    let (mut b, _) = server.desktop("B", "7002").await;
    give(&mut switch, &mut dialer, &mut a, "C1", "R1", "7001").await;
    give(&mut switch, &mut dialer, &mut b, "C2", "R2", "7002").await;
    let mut admin = server.connect(Role::Admin).await;
    let all = whole_audit_log(&mut admin).await;

    let only = |record: Option<&str>, agent: Option<&str>, from: u64| {
        Request::AuditTail(AuditTail {
            from_seq: Some(from),
            follow: false,
            record: record.map(Into::into),
            agent: agent.map(Into::into),
        })
    };
    let r2 = admin
        .request_stream(only(Some("R2"), None, 1))
        .await
        .unwrap();
    assert!(r2.iter().all(|m| match m {
        ServerMsg::Audit(e) => e.record.as_deref() == Some("R2"),
        ServerMsg::AuditEnd { last_seq } => *last_seq == all.last().unwrap().seq,
        _ => false,
    }));
    assert_eq!(r2.len(), 3, "attached, granted, and the end: {r2:?}");
    let agent_b = admin
        .request_stream(only(None, Some("B"), 1))
        .await
        .unwrap();
    assert!(agent_b.iter().all(|m| match m {
        ServerMsg::Audit(e) => e.agent.as_deref() == Some("B"),
        _ => true,
    }));
    let from = all[3].seq;
    let tail = admin.request_stream(only(None, None, from)).await.unwrap();
    assert_eq!(tail.len() as u64, all.len() as u64 - from + 1 + 1);
    // Default from: only what comes next.
    let next = admin
        .request_stream(Request::AuditTail(AuditTail::default()))
        .await
        .unwrap();
    assert_eq!(next.len(), 1, "{next:?}");

    // follow: live entries for agent A arrive as they are written.
    let mut follower = server.connect(Role::Admin).await;
    let r = follower.send(&agent_feed("A")).await.unwrap();
    // Make sure the tail is registered before the change happens: a Ping round trip on it.
    assert_eq!(
        follower.request(Request::Ping).await.unwrap(),
        ServerMsg::Pong
    );
    a.request(update("R1", json!({"n": 1}))).await.unwrap();
    b.request(update("R2", json!({"n": 1}))).await.unwrap();
    match follower.reply_to(r).await.unwrap() {
        ServerMsg::Audit(e) => {
            assert_eq!(
                (e.kind, e.agent.as_deref(), e.request.as_deref()),
                (AuditKind::Accepted, Some("A"), Some("UpdateRecord"))
            );
        }
        other => panic!("{other:?}"),
    }
    follower.set_timeout(Duration::from_millis(200));
    assert!(
        matches!(
            follower.reply_to(r).await,
            Err(baton::client::ClientError::Timeout(_))
        ),
        "B's entry is filtered out"
    );
}

#[tokio::test]
async fn a_slow_tail_reader_never_slows_the_engine_and_misses_nothing() {
    let server = TestServer::start_with(|c| c.outbound_queue_frames = 16).await;
    let (mut switch, _) = server.switch().await;
    let mut dialer = server.connect(Role::Dialer).await;
    let (mut a, _) = server.desktop("A", "7001").await;
    give(&mut switch, &mut dialer, &mut a, "C1", "R1", "7001").await;
    let mut tail = server.connect(Role::Admin).await;
    let r = tail.send(&audit_tail(Some(1), true)).await.unwrap();
    // The tail reader reads nothing while 2000 audited requests run; they are all served.
    for i in 0..2000 {
        let reply = a.request(update("R1", json!({"i": i}))).await.unwrap();
        assert!(matches!(reply, ServerMsg::RecordUpdated { .. }));
    }
    let mut admin = server.connect(Role::Admin).await;
    let last = match admin.request(Request::Status).await.unwrap() {
        ServerMsg::StatusReport { audit_last_seq, .. } => audit_last_seq,
        other => panic!("{other:?}"),
    };
    // Now it reads: every entry, in order, none missing.
    let mut expected = 1;
    while expected <= last {
        match tail.reply_to(r).await.unwrap() {
            ServerMsg::Audit(e) => {
                assert_eq!(e.seq, expected);
                expected += 1;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn retention_trims_old_entries_and_tells_readers() {
    let server = TestServer::start_with(|c| c.audit_retention_entries = 50).await;
    let (mut switch, _) = server.switch().await;
    let mut dialer = server.connect(Role::Dialer).await;
    let (mut a, _) = server.desktop("A", "7001").await;
    give(&mut switch, &mut dialer, &mut a, "C1", "R1", "7001").await;
    for i in 0..200 {
        a.request(update("R1", json!({"i": i}))).await.unwrap();
    }
    let mut admin = server.connect(Role::Admin).await;
    // Trimming runs in the background; wait until it has caught up.
    let mut first = None;
    for _ in 0..100 {
        let msgs = admin
            .request_stream(audit_tail(Some(1), false))
            .await
            .unwrap();
        if let ServerMsg::AuditTrimmed { from_seq, to_seq } = msgs[0] {
            assert_eq!(from_seq, 1);
            let entries = msgs
                .iter()
                .filter(|m| matches!(m, ServerMsg::Audit(_)))
                .count() as u64;
            if entries <= 51 {
                first = Some((to_seq, entries));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (to_seq, kept) = first.expect("old entries were trimmed");
    assert!((50..=51).contains(&kept), "kept {kept}");
    assert!(to_seq >= 150);
}

#[tokio::test]
async fn the_admin_cli_works_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let config_path = config_file(dir.path(), addr, "[tokens]\nadmin = \"cli-secret\"\n");
    let exe = env!("CARGO_BIN_EXE_baton");
    let mut server =
        ServerProcess::serve(std::path::Path::new(exe), &config_path).expect("server starts");
    server
        .wait_serving(Duration::from_secs(20))
        .await
        .expect("serving");
    // Some traffic to report on.
    let mut dialer = Client::connect(addr, Role::Dialer, "dialer-secret")
        .await
        .unwrap();
    dialer.request(attach("C1", "R1")).await.unwrap();
    dialer
        .request(record_req("CancelRecord", "R1"))
        .await
        .unwrap();

    let run = |args: &[&str]| {
        let out = std::process::Command::new(exe)
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let status = run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    assert_eq!(v["type"], "StatusReport");
    assert_eq!(v["records_final"], 1);
    let human = run(&["status"]);
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("records_final") && l.ends_with('1')),
        "{human}"
    );

    let record = run(&["record", "R1"]);
    assert!(record.contains("state    final"), "{record}");
    assert!(record.contains("cancelled by dialer"), "{record}");

    let json_lines = run(&["audit", "tail", "--from", "1", "--json"]);
    let entries: Vec<serde_json::Value> = json_lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["kind"], "attached");
    assert_eq!(entries[1]["kind"], "finalized");
    assert_eq!(entries[1]["seq"], 2);
    let human = run(&["audit", "tail", "--from", "1", "--record", "R1"]);
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines.len(), 2, "{human}");
    assert!(lines[1].trim_start().starts_with("2  "), "{human}");
    assert!(
        lines[1].contains("finalized") && lines[1].contains("R1"),
        "{human}"
    );

    // A wrong token is refused with a clear error and a failing exit status.
    let out = std::process::Command::new(exe)
        .args(["status", "--token", "nope", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth_failed"));

    // SIGTERM stops the server cleanly with exit status 0.
    let status = server.stop().expect("stopped by SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}
