//! Shared test helpers: an in-process server on port 0 and typed clients for each role.
#![allow(dead_code)]

use baton::client::Client;
use baton::codec::{encode_frame, split_frame};
use baton::config::Config;
use baton::messages::*;
use baton::server::{start, ServerHandle};
use bytes::{Bytes, BytesMut};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub struct TestServer {
    pub addr: SocketAddr,
    pub config: Config,
    handle: Option<ServerHandle>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = TestServer::start_in(dir.path().join("data"), adjust).await;
        server._dir = Some(dir);
        server
    }

    /// A server on the sled store in `data_dir` (which outlives it, for restart tests).
    pub async fn start_in(
        data_dir: std::path::PathBuf,
        adjust: impl FnOnce(&mut Config),
    ) -> TestServer {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir,
            ..Config::default()
        };
        adjust(&mut config);
        let handle = start(config.clone()).await.expect("server starts");
        TestServer {
            addr: handle.local_addr(),
            config,
            handle: Some(handle),
            _dir: None,
        }
    }

    /// A server on the given store (e.g. a `MemoryStore` with its fault switch).
    pub async fn start_with_store(store: std::sync::Arc<dyn baton::store::Store>) -> TestServer {
        TestServer::start_with_store_and(store, |_| {}).await
    }

    /// A server on the given store, with its config adjusted.
    pub async fn start_with_store_and(
        store: std::sync::Arc<dyn baton::store::Store>,
        adjust: impl FnOnce(&mut Config),
    ) -> TestServer {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        adjust(&mut config);
        let handle = baton::server::start_with_store(config.clone(), store)
            .await
            .expect("server starts");
        TestServer {
            addr: handle.local_addr(),
            config,
            handle: Some(handle),
            _dir: None,
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }

    pub async fn connect(&self, role: Role) -> Client {
        let token = match role {
            Role::Desktop => &self.config.tokens.desktop,
            Role::Dialer => &self.config.tokens.dialer,
            Role::Switch => &self.config.tokens.switch,
            Role::Admin => &self.config.tokens.admin,
        };
        Client::connect(self.addr, role, token)
            .await
            .expect("Hello accepted")
    }

    /// A desktop logged in as `agent` on `dn`; returns the client and its session token.
    pub async fn desktop(&self, agent: &str, dn: &str) -> (Client, String) {
        let mut c = self.connect(Role::Desktop).await;
        let reply = c.request(login(agent, dn, None)).await.unwrap();
        match reply {
            ServerMsg::LoggedIn {
                agent: a,
                dn: d,
                session,
                resumed,
            } => {
                assert_eq!((a.as_str(), d.as_str(), resumed), (agent, dn, false));
                (c, session)
            }
            other => panic!("expected LoggedIn, got {other:?}"),
        }
    }

    /// A switch link, after its initial `Monitor`.
    pub async fn switch(&self) -> (Client, Vec<String>) {
        let mut c = self.connect(Role::Switch).await;
        match c.next_push().await.unwrap() {
            ServerMsg::Monitor { dns } => (c, dns),
            other => panic!("expected Monitor, got {other:?}"),
        }
    }

    /// Asks `Status` on a fresh admin connection: proves the server still serves.
    pub async fn status(&self) -> ServerMsg {
        let mut admin = self.connect(Role::Admin).await;
        admin.request(Request::Status).await.unwrap()
    }
}

pub fn login(agent: &str, dn: &str, resume: Option<&str>) -> Request {
    Request::Login(Login {
        agent: agent.into(),
        dn: dn.into(),
        password: None,
        resume: resume.map(str::to_owned),
    })
}

pub fn ringing(call: &str, dn: &str) -> Request {
    Request::Ringing(Ringing {
        call: call.into(),
        dn: dn.into(),
        ani: None,
        from_dn: None,
        consult_of: None,
    })
}

pub fn ringing_full(
    call: &str,
    dn: &str,
    ani: Option<&str>,
    from_dn: Option<&str>,
    consult_of: Option<&str>,
) -> Request {
    Request::Ringing(Ringing {
        call: call.into(),
        dn: dn.into(),
        ani: ani.map(Into::into),
        from_dn: from_dn.map(Into::into),
        consult_of: consult_of.map(Into::into),
    })
}

pub fn established(call: &str, dn: &str) -> Request {
    Request::Established(CallDn {
        call: call.into(),
        dn: dn.into(),
    })
}

pub fn released(call: &str, dn: &str, cause: Option<&str>) -> Request {
    Request::Released(Released {
        call: call.into(),
        dn: dn.into(),
        cause: cause.map(Into::into),
    })
}

pub fn transferred(
    call: &str,
    from: &str,
    to: &str,
    kind: TransferKind,
    consult: Option<&str>,
) -> Request {
    Request::Transferred(Transferred {
        call: call.into(),
        from_dn: from.into(),
        to_dn: to.into(),
        kind,
        consult_call: consult.map(Into::into),
    })
}

pub fn conferenced(call: &str, dn: &str, consult: Option<&str>) -> Request {
    Request::Conferenced(Conferenced {
        call: call.into(),
        dn: dn.into(),
        consult_call: consult.map(Into::into),
    })
}

pub fn attach(call: &str, record: &str) -> Request {
    let data = json!({"name": format!("Customer of {record}"), "balance": 120})
        .as_object()
        .unwrap()
        .clone();
    Request::AttachRecord(AttachRecord {
        call: call.into(),
        record: record.into(),
        campaign: "spring".into(),
        list: Some("list-1".into()),
        chain_id: Some(format!("chain-{record}")),
        chain_n: Some(0),
        phone: Some(format!("555{record}")),
        data,
        chain: vec![],
    })
}

pub fn record_req(kind: &str, record: &str) -> Request {
    let r = RecordRef {
        record: record.into(),
    };
    match kind {
        "GetRecord" => Request::GetRecord(r),
        "ChainedRecords" => Request::ChainedRecords(r),
        "RecordReject" => Request::RecordReject(r),
        "RecordCancel" => Request::RecordCancel(r),
        "RecordInfo" => Request::RecordInfo(r),
        "CancelRecord" => Request::CancelRecord(r),
        "UpdateRecord" => Request::UpdateRecord(RecordChange {
            record: record.into(),
            call_result: None,
            fields: None,
        }),
        "RecordProcessed" => Request::RecordProcessed(RecordChange {
            record: record.into(),
            call_result: None,
            fields: None,
        }),
        "DoNotCall" => Request::DoNotCall(DoNotCall {
            record: record.into(),
            scope: DncScope::Record,
        }),
        "Reschedule" => Request::Reschedule(Reschedule {
            record: record.into(),
            at: "2099-01-01T09:00:00Z".into(),
            callback: Callback::Personal,
        }),
        other => panic!("unknown request kind {other}"),
    }
}

/// Sends a telephony event and checks it is acknowledged.
pub async fn event(switch: &mut Client, request: Request) {
    let reply = switch.request(request.clone()).await.unwrap();
    assert_eq!(reply, ServerMsg::Ack, "event {request:?}");
}

/// Asserts the reply is an `Error` with `code`, returning its message.
pub fn expect_error(msg: &ServerMsg, code: ErrorCode) -> String {
    match msg {
        ServerMsg::Error {
            code: c, message, ..
        } if *c == code => message.clone(),
        other => panic!("expected Error {code:?}, got {other:?}"),
    }
}

/// Asserts no push arrives within a short while.
pub async fn expect_quiet(client: &mut Client) {
    if let Some(m) = client
        .try_next_push(Duration::from_millis(150))
        .await
        .unwrap()
    {
        panic!("expected no push, got {m:?}");
    }
}

/// The next push, asserted to be an `AccessChanged`; returns (record, access, previous, cause, data?).
pub async fn expect_access(
    client: &mut Client,
) -> (
    String,
    Access,
    Access,
    AccessCause,
    Option<Object>,
    Option<Context>,
) {
    match client.next_push().await.unwrap() {
        ServerMsg::AccessChanged {
            record,
            access,
            previous,
            cause,
            data,
            context,
            ..
        } => (record, access, previous, cause, data, context),
        other => panic!("expected AccessChanged, got {other:?}"),
    }
}

/// The frame (length header and body) of `request` with `ref`, for tests that write raw bytes.
pub fn request_frame(request: &Request, r#ref: u64) -> Bytes {
    encode_frame(&serde_json::to_vec(&request.to_value(Some(r#ref))).unwrap())
}

/// The read side of a connection spoken to in raw frames: tests that pipeline, or that pause
/// reading, must control exactly when the socket is read, which the typed client does not allow.
pub struct RawReader {
    half: OwnedReadHalf,
    buf: BytesMut,
}

impl RawReader {
    /// The next frame as JSON, or `None` once the server has closed the connection. A frame that
    /// does not come within 10 s fails the test instead of hanging it.
    pub async fn next(&mut self) -> Option<serde_json::Value> {
        loop {
            if let Some(body) = split_frame(&mut self.buf) {
                return Some(serde_json::from_slice(&body).expect("the server sends JSON"));
            }
            let read =
                tokio::time::timeout(Duration::from_secs(10), self.half.read_buf(&mut self.buf))
                    .await
                    .expect("a frame or a close within 10 s");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// Connects as `role` and completes `Hello` (with `ref` 0) over a raw socket. With
/// `recv_buffer_bytes` the client's receive buffer is fixed that small, so that what the server
/// sends and the client does not read piles up in the server's queue, not in the socket buffers.
pub async fn raw_session(
    server: &TestServer,
    role: Role,
    recv_buffer_bytes: Option<u32>,
) -> (RawReader, OwnedWriteHalf) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(bytes) = recv_buffer_bytes {
        socket.set_recv_buffer_size(bytes).unwrap();
    }
    let stream = socket.connect(server.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (read, mut write) = stream.into_split();
    let token = match role {
        Role::Desktop => &server.config.tokens.desktop,
        Role::Dialer => &server.config.tokens.dialer,
        Role::Switch => &server.config.tokens.switch,
        Role::Admin => &server.config.tokens.admin,
    };
    let hello = Request::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        role: role.as_str().to_owned(),
        token: token.clone(),
    });
    tokio::io::AsyncWriteExt::write_all(&mut write, &request_frame(&hello, 0))
        .await
        .unwrap();
    let mut reader = RawReader {
        half: read,
        buf: BytesMut::new(),
    };
    let welcome = reader.next().await.expect("Welcome");
    assert_eq!(welcome["type"], "Welcome", "{welcome}");
    (reader, write)
}

/// Puts `record` on `call` established on `dn`, where `desk` is logged in; drains the pushes.
pub async fn give(
    switch: &mut Client,
    dialer: &mut Client,
    desk: &mut Client,
    call: &str,
    record: &str,
    dn: &str,
) {
    dialer.request(attach(call, record)).await.unwrap();
    event(switch, ringing(call, dn)).await;
    event(switch, established(call, dn)).await;
    loop {
        if let ServerMsg::AccessChanged {
            record: r, access, ..
        } = desk.next_push().await.unwrap()
        {
            assert_eq!((r.as_str(), access), (record, Access::Full));
            return;
        }
    }
}
