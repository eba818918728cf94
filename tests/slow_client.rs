//! A client that never reads is dropped when its outbound queue fills; nobody else waits for it.

mod common;

use baton::messages::*;
use common::*;
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
