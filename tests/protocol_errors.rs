//! Every bad input of CONTRACT sections 1, 2 and 8, through real sockets. After each, another
//! client must still be served.

use baton::client::Client;
use baton::messages::*;
use baton_kit::*;
use bytes::Bytes;
use serde_json::json;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A `Hello` body as raw JSON, with any role string and protocol number.
fn hello_body(role: &str, token: &str, protocol: u32) -> Bytes {
    Bytes::from(
        json!({"type":"Hello","ref":1,"protocol":protocol,"role":role,"token":token}).to_string(),
    )
}

async fn welcomed_desktop(server: &TestServer) -> Client {
    server.connect(Role::Desktop).await
}

/// Reads the next frame, asserting it is an Error with `code`, then that the server closes.
async fn expect_error_then_close(client: &mut Client, code: ErrorCode) -> Envelope {
    let env = client.next_message().await.expect("an error frame");
    expect_error(&env.msg, code);
    assert!(client.is_closed().await, "server must close after {code:?}");
    env
}

async fn assert_still_serving(server: &TestServer) {
    match server.status().await {
        ServerMsg::StatusReport { .. } => {}
        other => panic!("expected StatusReport, got {other:?}"),
    }
}

#[tokio::test]
async fn oversized_frame_is_refused_from_its_header() {
    let server = TestServer::start().await;
    let mut c = welcomed_desktop(&server).await;
    // Announce one byte over the limit and send no body at all: the error must still come.
    let len = (server.config.max_frame_bytes as u32 + 1).to_be_bytes();
    c.stream_mut().write_all(&len).await.unwrap();
    let env = expect_error_then_close(&mut c, ErrorCode::BadFrame).await;
    assert_eq!(env.r#ref, None);
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn zero_length_frame_is_bad_frame() {
    let server = TestServer::start().await;
    let mut c = welcomed_desktop(&server).await;
    c.stream_mut().write_all(&[0, 0, 0, 0]).await.unwrap();
    expect_error_then_close(&mut c, ErrorCode::BadFrame).await;
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn truncated_frame_is_bad_frame() {
    let server = TestServer::start().await;
    let mut c = welcomed_desktop(&server).await;
    let stream = c.stream_mut();
    stream.write_all(&100u32.to_be_bytes()).await.unwrap();
    stream.write_all(b"{\"type\":\"Pi").await.unwrap();
    // Half-close: the server sees the end of the stream in the middle of the frame.
    stream.shutdown().await.unwrap();
    expect_error_then_close(&mut c, ErrorCode::BadFrame).await;
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn invalid_utf8_is_bad_frame() {
    let server = TestServer::start().await;
    let mut c = welcomed_desktop(&server).await;
    c.send_bytes(Bytes::from_static(
        b"{\"type\":\"Ping\",\"x\":\"\xff\xfe\"}",
    ))
    .await
    .unwrap();
    expect_error_then_close(&mut c, ErrorCode::BadFrame).await;
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn json_that_is_not_an_object_is_bad_frame() {
    let server = TestServer::start().await;
    for body in [&b"[1,2,3]"[..], b"\"Ping\"", b"42", b"{\"type\": \"Ping\""] {
        let mut c = welcomed_desktop(&server).await;
        c.send_bytes(Bytes::copy_from_slice(body)).await.unwrap();
        expect_error_then_close(&mut c, ErrorCode::BadFrame).await;
    }
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn bad_frame_before_hello_is_bad_frame() {
    let server = TestServer::start().await;
    let mut c = Client::connect_raw(server.addr).await.unwrap();
    c.send_bytes(Bytes::from_static(b"not json")).await.unwrap();
    expect_error_then_close(&mut c, ErrorCode::BadFrame).await;
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn first_frame_must_be_hello() {
    let server = TestServer::start().await;
    let mut c = Client::connect_raw(server.addr).await.unwrap();
    let r = c.send(&login("1042", "7001", None)).await.unwrap();
    let env = expect_error_then_close(&mut c, ErrorCode::HelloRequired).await;
    assert_eq!(env.r#ref, Some(r), "the error echoes the ref");
    // An unknown type before Hello is also refused as hello_required.
    let mut c = Client::connect_raw(server.addr).await.unwrap();
    c.send_bytes(Bytes::from_static(b"{\"type\":\"Frob\",\"ref\":4}"))
        .await
        .unwrap();
    expect_error_then_close(&mut c, ErrorCode::HelloRequired).await;
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn silence_after_connect_hits_the_handshake_timeout() {
    let server = TestServer::start_with(|c| c.handshake_timeout_ms = 200).await;
    let mut c = Client::connect_raw(server.addr).await.unwrap();
    expect_error_then_close(&mut c, ErrorCode::HelloRequired).await;
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn wrong_token_is_auth_failed() {
    let server = TestServer::start().await;
    let mut c = Client::connect_raw(server.addr).await.unwrap();
    // The dialer's secret does not open a desktop session.
    c.send_bytes(hello_body("desktop", &server.config.tokens.dialer, 1))
        .await
        .unwrap();
    let env = expect_error_then_close(&mut c, ErrorCode::AuthFailed).await;
    assert_eq!(env.r#ref, Some(1));
    assert!(Client::connect(server.addr, Role::Desktop, "guess")
        .await
        .is_err());
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn unknown_role_is_bad_request_and_close() {
    let server = TestServer::start().await;
    let mut c = Client::connect_raw(server.addr).await.unwrap();
    c.send_bytes(hello_body("supervisor", "x", 1))
        .await
        .unwrap();
    let env = expect_error_then_close(&mut c, ErrorCode::BadRequest).await;
    match env.msg {
        ServerMsg::Error { message, .. } => assert!(message.contains("role"), "{message}"),
        _ => unreachable!(),
    }
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn unsupported_protocol_is_protocol_mismatch() {
    let server = TestServer::start().await;
    let mut c = Client::connect_raw(server.addr).await.unwrap();
    c.send_bytes(hello_body("desktop", &server.config.tokens.desktop, 2))
        .await
        .unwrap();
    expect_error_then_close(&mut c, ErrorCode::ProtocolMismatch).await;
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn hello_missing_a_field_names_it() {
    let server = TestServer::start().await;
    let mut c = Client::connect_raw(server.addr).await.unwrap();
    c.send_bytes(Bytes::from(
        json!({"type":"Hello","ref":1,"protocol":1,"role":"desktop"}).to_string(),
    ))
    .await
    .unwrap();
    let env = expect_error_then_close(&mut c, ErrorCode::BadRequest).await;
    match env.msg {
        ServerMsg::Error { message, .. } => assert!(message.contains("token"), "{message}"),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn unknown_type_keeps_the_connection() {
    let server = TestServer::start().await;
    let mut c = welcomed_desktop(&server).await;
    c.send_bytes(Bytes::from_static(b"{\"type\":\"Teleport\",\"ref\":77}"))
        .await
        .unwrap();
    let env = c.next_message().await.unwrap();
    assert_eq!(env.r#ref, Some(77));
    let message = expect_error(&env.msg, ErrorCode::UnknownType);
    assert!(message.contains("Teleport"), "{message}");
    // Still usable.
    assert_eq!(c.request(Request::Ping).await.unwrap(), ServerMsg::Pong);
}

#[tokio::test]
async fn missing_field_is_bad_request_naming_it_and_connection_kept() {
    let server = TestServer::start().await;
    let mut c = welcomed_desktop(&server).await;
    c.send_bytes(Bytes::from(
        json!({"type":"Login","ref":5,"dn":"7001"}).to_string(),
    ))
    .await
    .unwrap();
    let env = c.next_message().await.unwrap();
    assert_eq!(env.r#ref, Some(5));
    let message = expect_error(&env.msg, ErrorCode::BadRequest);
    assert!(
        message.contains("agent"),
        "message must name the field: {message}"
    );
    // Ill-typed field: named as well.
    c.send_bytes(Bytes::from(
        json!({"type":"Login","ref":6,"dn":7001,"agent":"1042"}).to_string(),
    ))
    .await
    .unwrap();
    let env = c.next_message().await.unwrap();
    let message = expect_error(&env.msg, ErrorCode::BadRequest);
    assert!(message.contains("dn"), "{message}");
    // The connection still works: log in properly.
    let reply = c.request(login("1042", "7001", None)).await.unwrap();
    assert!(matches!(reply, ServerMsg::LoggedIn { .. }), "{reply:?}");
}

#[tokio::test]
async fn wrong_role_is_refused_and_connection_kept() {
    let server = TestServer::start().await;
    let mut c = welcomed_desktop(&server).await;
    let reply = c.request(attach("C1", "R1")).await.unwrap();
    expect_error(&reply, ErrorCode::WrongRole);
    let mut d = server.connect(Role::Dialer).await;
    let reply = d.request(login("1", "2", None)).await.unwrap();
    expect_error(&reply, ErrorCode::WrongRole);
    let mut s = server.connect(Role::Switch).await;
    let reply = s.request(Request::Status).await.unwrap();
    expect_error(&reply, ErrorCode::WrongRole);
    assert_eq!(c.request(Request::Ping).await.unwrap(), ServerMsg::Pong);
}

#[tokio::test]
async fn record_request_before_login_is_not_logged_in() {
    let server = TestServer::start().await;
    let mut c = welcomed_desktop(&server).await;
    for kind in [
        "GetRecord",
        "UpdateRecord",
        "RecordProcessed",
        "ChainedRecords",
    ] {
        let reply = c.request(record_req(kind, "R1")).await.unwrap();
        expect_error(&reply, ErrorCode::NotLoggedIn);
    }
    let reply = c.request(logout(false)).await.unwrap();
    expect_error(&reply, ErrorCode::NotLoggedIn);
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn ping_is_answered_with_the_same_ref() {
    let server = TestServer::start().await;
    let mut c = welcomed_desktop(&server).await;
    c.send_bytes(Bytes::from_static(b"{\"type\":\"Ping\",\"ref\":4242}"))
        .await
        .unwrap();
    let env = c.next_message().await.unwrap();
    assert_eq!(env, Envelope::reply(Some(4242), ServerMsg::Pong));
}

#[tokio::test]
async fn welcome_announces_protocol_and_heartbeat() {
    let server = TestServer::start_with(|c| c.heartbeat_ms = 1234).await;
    let mut c = Client::connect_raw(server.addr).await.unwrap();
    c.send_bytes(hello_body("admin", &server.config.tokens.admin, 1))
        .await
        .unwrap();
    let env = c.next_message().await.unwrap();
    assert_eq!(env.r#ref, Some(1));
    match env.msg {
        ServerMsg::Welcome {
            protocol,
            server,
            heartbeat_ms,
        } => {
            assert_eq!(protocol, 1);
            assert!(server.starts_with("baton/"), "{server}");
            assert_eq!(heartbeat_ms, 1234);
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
}

#[tokio::test]
async fn over_max_connections_gets_overloaded() {
    let server = TestServer::start_with(|c| c.max_connections = 2).await;
    let _a = server.connect(Role::Admin).await;
    let _b = server.connect(Role::Admin).await;
    let mut c = Client::connect_raw(server.addr).await.unwrap();
    expect_error_then_close(&mut c, ErrorCode::Overloaded).await;
    // Once one leaves, a new client is served again.
    drop(_a);
    let mut served = false;
    for _ in 0..50 {
        let token = server.config.tokens.admin.clone();
        if let Ok(mut admin) = Client::connect(server.addr, Role::Admin, &token).await {
            if let Ok(ServerMsg::StatusReport { .. }) = admin.request(Request::Status).await {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a slot must free up when a connection closes");
}

#[tokio::test]
async fn silent_connection_is_closed_after_three_heartbeats() {
    let server = TestServer::start_with(|c| c.heartbeat_ms = 100).await;
    let mut quiet = server.connect(Role::Admin).await;
    let mut chatty = server.connect(Role::Admin).await;
    // The chatty one keeps pinging; the quiet one says nothing.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(
            chatty.request(Request::Ping).await.unwrap(),
            ServerMsg::Pong
        );
    }
    quiet.set_timeout(Duration::from_secs(5));
    assert!(quiet.is_closed().await, "silent connection must be closed");
    assert_eq!(
        chatty.request(Request::Ping).await.unwrap(),
        ServerMsg::Pong
    );
}

#[tokio::test]
async fn graceful_shutdown_tells_desktops() {
    let server = TestServer::start().await;
    let (mut desk, _) = server.desktop("1042", "7001").await;
    server.shutdown().await;
    assert_eq!(
        desk.next_push().await.unwrap(),
        ServerMsg::LoggedOut {
            cause: LogoutCause::Server
        }
    );
    assert!(desk.is_closed().await);
}
