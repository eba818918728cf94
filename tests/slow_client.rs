//! A client that never reads is dropped (when pushes fill its outbound queue, or when it pipelines
//! requests and takes none of the answers); nobody else waits for it.

use baton::messages::*;
use baton_kit::*;
use std::time::Duration;

#[tokio::test]
async fn a_desktop_that_never_reads_is_dropped_and_others_are_unaffected() {
    let server = TestServer::start_with(|c| c.outbound_queue_frames = 8).await;
    // The stuck desktop logs in, then never reads again.
    let (mut stuck, _) = server.desktop("1001", "7001").await;
    let (mut healthy, _) = server.desktop("1002", "7002").await;
    let (mut switch, _) = server.switch().await;

    // Each Ringing pushes a CallAlerting carrying the (large) call id to the stuck desktop. Far more
    // bytes than any socket buffer holds, so its queue must fill.
    let big = "x".repeat(60_000);
    for i in 0..200 {
        let call = format!("{big}-{i}");
        event(&mut switch, ringing(&call, "7001")).await;
    }
    // The healthy desktop is served at once, all along.
    event(&mut switch, ringing("C-ok", "7002")).await;
    loop {
        match healthy.next_push().await.unwrap() {
            ServerMsg::CallAlerting { call, .. } if call == "C-ok" => break,
            ServerMsg::CallAlerting { .. } => {}
            other => panic!("unexpected push {other:?}"),
        }
    }
    assert_eq!(
        healthy.request(Request::Ping).await.unwrap(),
        ServerMsg::Pong
    );

    // The stuck desktop was disconnected: reading what reached its socket ends in a close, having
    // received far fewer than the 200 pushes.
    stuck.set_timeout(Duration::from_secs(10));
    let mut received = 0;
    loop {
        match stuck.next_message().await {
            Ok(_) => received += 1,
            Err(baton::client::ClientError::Timeout(_)) => panic!("stuck desktop was not dropped"),
            Err(_) => break,
        }
    }
    assert!(received < 200, "received {received} frames");

    // Its agent is away (in resume grace), not gone: the DN is still monitored.
    match server.status().await {
        ServerMsg::StatusReport {
            agents,
            connections,
            ..
        } => {
            assert_eq!(agents, 2);
            // healthy, switch and the admin asking
            assert_eq!(connections, 3);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pipelines_and_never_reads_is_dropped_and_others_are_unaffected() {
    // Heartbeats of 200 ms: a client that takes nothing for 3 of them has stopped reading.
    let server = TestServer::start_with(|c| {
        c.outbound_queue_frames = 8;
        c.heartbeat_ms = 200;
    })
    .await;
    let (mut healthy, _) = server.desktop("1002", "7002").await;
    // Never reads a byte after its Welcome, and a small receive buffer holds few of its Pongs.
    let (_never_read, mut writer) = raw_session(&server, Role::Desktop, Some(4096)).await;

    // Pings until the server drops the connection: once the answers have filled the socket and
    // the queue, the server stops reading (backpressure), and after 3 heartbeats in which the
    // client took nothing, drops it; the writes that were blocked then fail.
    let pipelining = tokio::spawn(async move {
        let mut r = 1;
        loop {
            let mut chunk = bytes::BytesMut::new();
            for _ in 0..1000 {
                chunk.extend_from_slice(&request_frame(&Request::Ping, r));
                r += 1;
            }
            if tokio::io::AsyncWriteExt::write_all(&mut writer, &chunk)
                .await
                .is_err()
            {
                return r;
            }
        }
    });
    // Meanwhile everyone else is served at once (the healthy desktop keeps asking, which also
    // keeps it from counting as silent under the short heartbeat).
    let mut pipelining = pipelining;
    let mut served = 0;
    let sent = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            tokio::select! {
                sent = &mut pipelining => break sent.unwrap(),
                pong = healthy.request(Request::Ping) => {
                    assert_eq!(pong.unwrap(), ServerMsg::Pong);
                    served += 1;
                }
            }
        }
    })
    .await
    .expect("the client that never reads is dropped");
    assert!(served > 0);
    assert!(sent > 1000, "dropped after {sent} pings");
    assert_eq!(
        healthy.request(Request::Ping).await.unwrap(),
        ServerMsg::Pong
    );
    assert!(matches!(
        server.status().await,
        ServerMsg::StatusReport { .. }
    ));
}
