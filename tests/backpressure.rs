//! Pipelining clients are slowed down, not dropped (CONTRACT section 1), and an audit tail waits
//! for its reader instead of getting its connection dropped.
//!
//! Each test writes far more than the connection's outbound queue holds while reading its answers
//! at its own pace, and checks that every answer arrives, in order, on a connection still open.

use baton::messages::*;
use baton_kit::*;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

fn ping_frame(r#ref: u64) -> bytes::Bytes {
    request_frame(&Request::Ping, r#ref)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_pings_in_one_write_are_all_answered_in_order() {
    const PINGS: u64 = 100_000;
    let server = TestServer::start().await;
    let (mut reader, mut writer) = raw_session(&server, Role::Desktop, None).await;
    let mut wire = BytesMut::new();
    for r in 1..=PINGS {
        wire.extend_from_slice(&ping_frame(r));
    }
    // Written and read at the same time, by two tasks, as a real pipelining client does: the
    // write alone is far bigger than the queue and both socket buffers together.
    let write = tokio::spawn(async move {
        writer.write_all(&wire).await.unwrap();
        writer
    });
    let read = tokio::spawn(async move {
        for r in 1..=PINGS {
            let frame = reader
                .next()
                .await
                .unwrap_or_else(|| panic!("connection closed after {} answers", r - 1));
            assert_eq!(frame["type"], "Pong", "{frame}");
            assert_eq!(frame["ref"], r, "{frame}");
        }
        reader
    });
    let mut writer = write.await.unwrap();
    let mut reader = read.await.unwrap();

    // The connection is still up.
    writer.write_all(&ping_frame(PINGS + 1)).await.unwrap();
    let last = reader.next().await.expect("still connected");
    assert_eq!(
        (&last["type"], &last["ref"]),
        (&"Pong".into(), &(PINGS + 1).into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_pipelining_five_thousand_attaches_gets_every_acknowledgment() {
    const RECORDS: u64 = 5_000;
    // A queue much smaller than the engine's batch (512 requests): answers to one batch alone
    // would overflow it if requests were read faster than answers are taken.
    let server = TestServer::start_with(|c| c.outbound_queue_frames = 64).await;
    let (mut reader, mut writer) = raw_session(&server, Role::Dialer, None).await;
    let mut wire = BytesMut::new();
    for r in 1..=RECORDS {
        wire.extend_from_slice(&request_frame(
            &attach(&format!("C{r}"), &format!("R{r}")),
            r,
        ));
    }
    let write = tokio::spawn(async move {
        writer.write_all(&wire).await.unwrap();
        writer
    });
    let read = tokio::spawn(async move {
        for r in 1..=RECORDS {
            let frame = reader
                .next()
                .await
                .unwrap_or_else(|| panic!("connection closed after {} answers", r - 1));
            assert_eq!(frame["type"], "RecordAttached", "{frame}");
            assert_eq!(frame["ref"], r, "{frame}");
            assert_eq!(frame["record"], format!("R{r}"), "{frame}");
        }
        reader
    });
    let mut writer = write.await.unwrap();
    let mut reader = read.await.unwrap();

    writer.write_all(&ping_frame(RECORDS + 1)).await.unwrap();
    assert_eq!(
        reader.next().await.expect("still connected")["type"],
        "Pong"
    );
    match server.status().await {
        ServerMsg::StatusReport { records_live, .. } => assert_eq!(records_live, RECORDS),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_tail_waits_for_a_paused_reader_and_misses_nothing() {
    const ENTRIES: u64 = 4_000;
    const BURST: u64 = 8;
    let server = TestServer::start_with(|c| c.outbound_queue_frames = 16).await;
    // A small receive buffer: what the admin does not read stays in the server's queue.
    let (mut tail, mut admin) = raw_session(&server, Role::Admin, Some(4096)).await;
    admin
        .write_all(&request_frame(&audit_tail(Some(1), true), 1))
        .await
        .unwrap();

    // Thousands of entries are written while the admin reads nothing. Each `attached` entry names
    // the campaign, made long here so that the entries (8 MB) are far more than the server's
    // socket send buffer takes (it grows to 4 MB on loopback): the rest must wait in the queue.
    // The dialer keeps its own answers within the small queue (bursts of 8).
    let campaign = "c".repeat(2000);
    let mut dialer = server.connect(Role::Dialer).await;
    for burst in 0..ENTRIES / BURST {
        let mut refs = Vec::new();
        for k in 0..BURST {
            let i = burst * BURST + k;
            let mut request = attach(&format!("C{i}"), &format!("R{i}"));
            if let Request::AttachRecord(a) = &mut request {
                a.campaign = campaign.clone();
            }
            refs.push(dialer.send(&request).await.unwrap());
        }
        for r in refs {
            let reply = dialer.reply_to(r).await.unwrap();
            assert!(
                matches!(reply, ServerMsg::RecordAttached { .. }),
                "{reply:?}"
            );
        }
    }
    // A request on the paused connection: it must wait for room, not find the queue full.
    admin.write_all(&ping_frame(2)).await.unwrap();

    // Now the admin reads: every entry, in order, no gap, and the Pong.
    let mut next_seq = 1;
    let mut pong = false;
    while next_seq <= ENTRIES || !pong {
        let frame = tail.next().await.unwrap_or_else(|| {
            panic!("connection closed at seq {next_seq} (pong received: {pong})")
        });
        match frame["type"].as_str() {
            Some("Audit") => {
                assert_eq!(frame["ref"], 1, "{frame}");
                assert_eq!(frame["seq"], next_seq, "{frame}");
                assert_eq!(frame["kind"], "attached", "{frame}");
                next_seq += 1;
            }
            Some("Pong") => {
                assert_eq!(frame["ref"], 2, "{frame}");
                pong = true;
            }
            _ => panic!("unexpected frame {frame}"),
        }
    }
    // Never dropped: the same connection still answers.
    admin
        .write_all(&request_frame(&Request::Status, 3))
        .await
        .unwrap();
    let status = tail.next().await.expect("still connected");
    assert_eq!(status["type"], "StatusReport", "{status}");
    assert_eq!(status["audit_last_seq"], ENTRIES, "{status}");
}

#[tokio::test]
async fn audit_tails_per_connection_are_limited() {
    let server = TestServer::start().await;
    assert_eq!(server.config.max_audit_tails_per_connection, 4);
    let mut admin = server.connect(Role::Admin).await;

    // A tail that has ended holds no slot.
    let ended = admin.request_stream(audit_tail(None, false)).await.unwrap();
    assert!(
        matches!(ended.last(), Some(ServerMsg::AuditEnd { .. })),
        "{ended:?}"
    );
    let mut following = Vec::new();
    for _ in 0..4 {
        following.push(admin.send(&audit_tail(Some(1), true)).await.unwrap());
    }
    let refused = admin.request(audit_tail(Some(1), true)).await.unwrap();
    let message = expect_error(&refused, ErrorCode::Overloaded);
    assert!(
        message.contains("max_audit_tails_per_connection") && message.contains('4'),
        "{message}"
    );

    // The four run: a new entry reaches each of them, and the connection is kept.
    let mut dialer = server.connect(Role::Dialer).await;
    dialer.request(attach("C1", "R1")).await.unwrap();
    for r in following {
        match admin.reply_to(r).await.unwrap() {
            ServerMsg::Audit(entry) => {
                assert_eq!((entry.seq, entry.kind), (1, AuditKind::Attached))
            }
            other => panic!("tail {r}: {other:?}"),
        }
    }
    assert_eq!(admin.request(Request::Ping).await.unwrap(), ServerMsg::Pong);

    // The limit is per connection: another admin connection gets its own tails. The refusal would
    // be answered before the Pong of a later Ping (both come from the connection's reader).
    let mut other = server.connect(Role::Admin).await;
    let tail_ref = other.send(&audit_tail(None, true)).await.unwrap();
    assert_eq!(other.request(Request::Ping).await.unwrap(), ServerMsg::Pong);
    expect_quiet_ref(&mut other, tail_ref).await;
}

/// Nothing arrives for `r#ref` (the tail follows and nothing new was written).
async fn expect_quiet_ref(client: &mut baton::client::Client, r#ref: u64) {
    client.set_timeout(std::time::Duration::from_millis(150));
    match client.reply_to(r#ref).await {
        Err(baton::client::ClientError::Timeout(_)) => {}
        other => panic!("expected nothing for ref {ref}, got {other:?}", ref = r#ref),
    }
}

/// Answers of many frames each (`ChainedRecords` of a long chain), pipelined on a tiny queue:
/// every frame arrives, and the client that reads is never taken for one that stopped reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_of_many_frames_each_never_get_a_reading_client_dropped() {
    const REQUESTS: u64 = 300;
    const CHAIN: u32 = 30;
    let server = TestServer::start_with(|c| c.outbound_queue_frames = 8).await;
    let (mut switch, _) = server.switch().await;
    let mut dialer = server.connect(Role::Dialer).await;
    let chain = (0..CHAIN)
        .map(|n| ChainEntry {
            record: format!("R1-{n}"),
            chain_n: n,
            phone: None,
            data: serde_json::json!({"n": n}).as_object().unwrap().clone(),
        })
        .collect();
    let attach = Request::AttachRecord(AttachRecord {
        chain,
        ..attach_record("C1", "R1")
    });
    dialer.request(attach).await.unwrap();
    let (mut reader, mut writer) = raw_session(&server, Role::Desktop, None).await;
    writer
        .write_all(&request_frame(&login("A", "7001", None), 1))
        .await
        .unwrap();
    assert_eq!(reader.next().await.unwrap()["type"], "LoggedIn");
    event(&mut switch, ringing("C1", "7001")).await;
    event(&mut switch, established("C1", "7001")).await;
    // CallAlerting, CallEstablished, AccessChanged.
    for _ in 0..3 {
        reader.next().await.unwrap();
    }
    let mut wire = BytesMut::new();
    let chained = record_req("ChainedRecords", "R1");
    for r in 2..2 + REQUESTS {
        wire.extend_from_slice(&request_frame(&chained, r));
    }
    let write = tokio::spawn(async move {
        writer.write_all(&wire).await.unwrap();
        writer
    });
    let read = tokio::spawn(async move {
        for r in 2..2 + REQUESTS {
            // Every entry of the chain (none is R1 itself), then the end.
            for n in 0..=CHAIN {
                let frame = reader
                    .next()
                    .await
                    .unwrap_or_else(|| panic!("connection closed in the answer to ref {r}"));
                assert_eq!(frame["ref"], r, "{frame}");
                let want = if n < CHAIN {
                    "ChainedRecord"
                } else {
                    "ChainedRecordsEnd"
                };
                assert_eq!(frame["type"], want, "{frame}");
            }
        }
        reader
    });
    let mut writer = write.await.unwrap();
    let mut reader = read.await.unwrap();
    writer.write_all(&ping_frame(9_999)).await.unwrap();
    assert_eq!(
        reader.next().await.expect("still connected")["type"],
        "Pong"
    );
}
