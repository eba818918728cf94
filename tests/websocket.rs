//! The HTTP listener's WebSocket endpoint, `GET /ws` (PROTOCOL.md section 18): what is particular
//! to WebSocket (origins, text messages only, close codes, the shared connection limit, WSS). The
//! rules themselves are the same as on TCP, and the desktop tests check that by running again over
//! WebSocket (`BATON_TEST_DESKTOP_TRANSPORT=ws`, see `.ci/run`).

use baton::client::{Client, ClientTls};
use baton::config::TlsConfig;
use baton::messages::*;
use baton_kit::identity::Pki;
use baton_kit::*;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `/ws` with `origin` (none: not a browser), returning the socket or the HTTP status.
async fn open(http: SocketAddr, origin: Option<&str>) -> Result<Ws, u16> {
    let mut request = format!("ws://{http}/ws").into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

async fn send(ws: &mut Ws, frame: serde_json::Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

/// The next text message as JSON, or the close frame's code when the server closes.
async fn next(ws: &mut Ws) -> Result<serde_json::Value, Option<CloseCode>> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message or a close within 10 s");
        match message {
            Some(Ok(Message::Text(text))) => {
                schema::check_server_frame(None, text.as_bytes());
                return Ok(serde_json::from_str(&text).unwrap());
            }
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(None),
        }
    }
}

async fn hello_desktop(ws: &mut Ws) {
    send(
        ws,
        serde_json::json!({"type":"Hello","ref":1,"protocol":1,"role":"desktop","token":"desk-secret"}),
    )
    .await;
    assert_eq!(next(ws).await.unwrap()["type"], "Welcome");
}

#[tokio::test]
async fn a_page_of_the_servers_own_origin_or_a_listed_one_may_connect_and_others_may_not() {
    let server = TestServer::start_with(|c| {
        c.allowed_origins = vec!["https://desk.example:8443".into()];
    })
    .await;
    let http = server.http_addr.unwrap();
    // Not a browser: no Origin.
    hello_desktop(&mut open(http, None).await.unwrap()).await;
    // The server's own origin: the page it served itself.
    let own = format!("http://{http}");
    hello_desktop(&mut open(http, Some(&own)).await.unwrap()).await;
    hello_desktop(&mut open(http, Some("https://desk.example:8443")).await.unwrap()).await;
    for stranger in [
        "https://evil.example",
        "http://desk.example:8443",
        "https://desk.example:8443.evil.example",
        "null",
    ] {
        assert_eq!(
            open(http, Some(stranger)).await.err(),
            Some(403),
            "{stranger}"
        );
    }
}

#[tokio::test]
async fn only_text_messages_of_one_json_object_within_the_limit_are_taken() {
    let server = TestServer::start_with(|c| c.max_frame_bytes = 4096).await;
    let http = server.http_addr.unwrap();

    // A binary message: closed with 1003.
    let mut ws = open(http, None).await.unwrap();
    hello_desktop(&mut ws).await;
    ws.send(Message::Binary(
        b"{\"type\":\"Ping\",\"ref\":2}".to_vec().into(),
    ))
    .await
    .unwrap();
    assert_eq!(next(&mut ws).await, Err(Some(CloseCode::Unsupported)));

    // Over max_frame_bytes: closed with 1009, before or after Hello.
    let mut ws = open(http, None).await.unwrap();
    let big = serde_json::json!({"type":"Hello","ref":1,"protocol":1,"role":"desktop","token":"x".repeat(5000)});
    send(&mut ws, big).await;
    assert_eq!(next(&mut ws).await, Err(Some(CloseCode::Size)));

    // Not one JSON object: Error{bad_frame}, then closed with 1007.
    for body in ["[1,2]", "not json", "\"a string\""] {
        let mut ws = open(http, None).await.unwrap();
        hello_desktop(&mut ws).await;
        ws.send(Message::Text(body.into())).await.unwrap();
        let error = next(&mut ws).await.unwrap();
        assert_eq!(
            (error["type"].as_str(), error["code"].as_str()),
            (Some("Error"), Some("bad_frame")),
            "{body}"
        );
        assert_eq!(next(&mut ws).await, Err(Some(CloseCode::Invalid)), "{body}");
    }

    // Errors that keep a TCP connection open keep a WebSocket open too.
    let mut ws = open(http, None).await.unwrap();
    hello_desktop(&mut ws).await;
    send(&mut ws, serde_json::json!({"type":"NoSuchThing","ref":7})).await;
    let error = next(&mut ws).await.unwrap();
    assert_eq!(
        (error["code"].as_str(), error["ref"].as_u64()),
        (Some("unknown_type"), Some(7))
    );
    send(&mut ws, serde_json::json!({"type":"Ping","ref":8})).await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "Pong");
}

#[tokio::test]
async fn a_websocket_desktop_and_a_tcp_desktop_share_one_record() {
    let server = TestServer::start().await;
    let http = server.http_addr.unwrap();
    let token = token(&server.config.tokens, Role::Desktop).to_owned();
    let mut tcp = Client::connect(server.addr, Role::Desktop, &token)
        .await
        .unwrap();
    let mut ws = Client::connect_ws(http, None, Role::Desktop, &token)
        .await
        .unwrap();
    log_in(&mut tcp, "alice", "7001").await.unwrap();
    log_in(&mut ws, "bob", "7002").await.unwrap();
    let (mut switch, _) = server.switch().await;
    let mut dialer = server.connect(Role::Dialer).await;
    dialer.request(attach("C1", "R1")).await.unwrap();
    event(&mut switch, ringing("C1", "7001")).await;
    event(&mut switch, established("C1", "7001")).await;
    let _ = next_record_push(&mut tcp).await;
    // alice, on TCP, transfers the customer to bob, on WebSocket.
    event(
        &mut switch,
        transferred("C1", "7001", "7002", TransferKind::SingleStep, None),
    )
    .await;
    expect_call_alerting(&mut ws, "C1").await;
    let (record, access, _, cause, data, _) = expect_access(&mut ws).await;
    assert_eq!(
        (record.as_str(), access, cause),
        ("R1", Access::Full, AccessCause::Transfer)
    );
    assert!(data.is_some());
    match ws.request(processed("R1", "sale")).await.unwrap() {
        ServerMsg::RecordProcessedAck { record } => assert_eq!(record, "R1"),
        other => panic!("{other:?}"),
    }
    // alice held it once: she learns who finished it.
    match tcp.request(processed("R1", "sale")).await.unwrap() {
        ServerMsg::Error { code, by, .. } => {
            assert_eq!(
                (code, by.as_deref()),
                (ErrorCode::AlreadyFinal, Some("bob"))
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn websocket_and_tcp_connections_share_max_connections() {
    let server = TestServer::start_with(|c| c.max_connections = 2).await;
    let http = server.http_addr.unwrap();
    let _a = server.connect(Role::Dialer).await;
    let _b = Client::connect_ws(http, None, Role::Desktop, "desk-secret")
        .await
        .unwrap();
    // Both slots are taken: a WebSocket upgrade is refused with 503, a TCP connection overloaded.
    assert_eq!(open(http, None).await.err(), Some(503));
    let refused = Client::connect(server.addr, Role::Dialer, "dialer-secret").await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn with_tls_the_http_listener_speaks_only_wss() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path(), "centre");
    let cert = pki.server("server");
    let server = TestServer::start_with(|c| {
        c.tls = Some(TlsConfig {
            cert: cert.cert.clone(),
            key: cert.key.clone(),
            client_ca: None,
            require_client_cert: vec![],
        })
    })
    .await;
    let http = server.http_addr.unwrap();
    let tls = ClientTls::new(Some(&pki.ca_file), None, None).unwrap();
    let mut desk = Client::connect_ws(http, Some(&tls), Role::Desktop, "desk-secret")
        .await
        .unwrap();
    log_in(&mut desk, "alice", "7001").await.unwrap();
    assert_eq!(desk.request(Request::Ping).await.unwrap(), ServerMsg::Pong);
    // Clear-text WebSocket on the same port gets no upgrade.
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(format!("ws://{http}/ws")),
    )
    .await
    .expect("an answer or a close");
    assert!(plain.is_err());
}

#[tokio::test]
async fn an_empty_http_listen_serves_no_http() {
    let server = TestServer::start_with(|c| c.http_listen = String::new()).await;
    assert_eq!(server.http_addr, None);
    // The TCP port serves as ever.
    assert!(matches!(
        server.status().await,
        ServerMsg::StatusReport { .. }
    ));
}
