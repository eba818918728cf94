//! A small typed client: connect, `Hello`, send requests, await replies by `ref`, read pushes.
//!
//! Used by the integration tests and the command-line tools. Frames that arrive while a reply is
//! awaited (pushes, or replies to other refs) are kept in order and handed out by
//! [`Client::next_push`] / [`Client::next_message`], so nothing the server sends is lost.

use crate::codec::{FrameCodec, FrameError};
use crate::messages::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Largest frame the client accepts from a server.
const CLIENT_MAX_FRAME: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connection failed: {0}")]
    Frame(#[from] FrameError),
    #[error("server sent a frame this client cannot decode: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("server refused: {code}: {message}")]
    Refused { code: ErrorCode, message: String },
}

/// One client connection.
pub struct Client {
    framed: Framed<TcpStream, FrameCodec>,
    next_ref: u64,
    backlog: VecDeque<Envelope>,
    timeout: Duration,
    /// Drop pushes instead of keeping them (for connections that only send requests).
    discard_pushes: bool,
    /// Values from the server's `Welcome`.
    pub heartbeat_ms: u64,
    pub server: String,
}

impl Client {
    /// Opens a TCP connection without saying `Hello` (for raw protocol tests).
    pub async fn connect_raw(addr: SocketAddr) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        Ok(Client::from_stream(stream))
    }

    /// Connects from a chosen local address (a load generator spreads many connections over
    /// several loopback addresses, since one source address has only ~28,000 ephemeral ports).
    pub async fn connect_from(
        addr: SocketAddr,
        local: std::net::IpAddr,
        role: Role,
        token: &str,
    ) -> Result<Client, ClientError> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .and_then(|s| s.bind(SocketAddr::new(local, 0)).map(|_| s))
        .map_err(|source| ClientError::Connect { addr, source })?;
        let stream = socket
            .connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        Client::hello(Client::from_stream(stream), role, token).await
    }

    fn from_stream(stream: TcpStream) -> Client {
        let _ = stream.set_nodelay(true);
        Client {
            framed: Framed::new(stream, FrameCodec::new(CLIENT_MAX_FRAME)),
            next_ref: 1,
            backlog: VecDeque::new(),
            timeout: Duration::from_secs(10),
            discard_pushes: false,
            heartbeat_ms: 0,
            server: String::new(),
        }
    }

    /// Connects and completes `Hello` for `role` with `token`.
    pub async fn connect(addr: SocketAddr, role: Role, token: &str) -> Result<Client, ClientError> {
        Client::hello(Client::connect_raw(addr).await?, role, token).await
    }

    async fn hello(mut client: Client, role: Role, token: &str) -> Result<Client, ClientError> {
        let hello = Request::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            role: role.as_str().to_owned(),
            token: token.to_owned(),
        });
        match client.request(hello).await? {
            ServerMsg::Welcome {
                heartbeat_ms,
                server,
                ..
            } => {
                client.heartbeat_ms = heartbeat_ms;
                client.server = server;
                Ok(client)
            }
            ServerMsg::Error { code, message, .. } => Err(ClientError::Refused { code, message }),
            other => Err(ClientError::Refused {
                code: ErrorCode::BadRequest,
                message: format!("unexpected answer to Hello: {other:?}"),
            }),
        }
    }

    /// Drops pushes (frames without `ref`) instead of keeping them for [`Client::next_push`].
    pub fn set_discard_pushes(&mut self, discard: bool) {
        self.discard_pushes = discard;
    }

    /// Forgets the replies already received and not yet asked for (`Pong`s of pings sent with
    /// [`Client::send`], for instance).
    pub fn clear_replies(&mut self) {
        self.backlog.retain(|e| e.r#ref.is_none());
    }

    /// Forgets the pushes already received and not yet read.
    pub fn clear_pushes(&mut self) {
        self.backlog.retain(|e| e.r#ref.is_some());
    }

    /// How long [`Client::request`] and [`Client::next_message`] wait (default 10 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends a request with a fresh `ref` and returns that `ref` without waiting.
    pub async fn send(&mut self, request: &Request) -> Result<u64, ClientError> {
        let r = self.next_ref;
        self.next_ref += 1;
        let value = request.to_value(Some(r));
        self.send_bytes(Bytes::from(serde_json::to_vec(&value)?))
            .await?;
        Ok(r)
    }

    /// Sends several requests back to back, each with a fresh `ref`, without waiting for any
    /// answer (pipelining); they leave in as few writes as the socket allows. Returns the refs in
    /// the order sent.
    pub async fn send_many<'a>(
        &mut self,
        requests: impl IntoIterator<Item = &'a Request>,
    ) -> Result<Vec<u64>, ClientError> {
        let mut refs = Vec::new();
        for request in requests {
            let r = self.next_ref;
            self.next_ref += 1;
            let body = serde_json::to_vec(&request.to_value(Some(r)))?;
            self.framed.feed(Bytes::from(body)).await?;
            refs.push(r);
        }
        self.framed.flush().await?;
        Ok(refs)
    }

    /// Sends an arbitrary frame body (for tests of malformed input).
    pub async fn send_bytes(&mut self, body: Bytes) -> Result<(), ClientError> {
        self.framed.send(body).await?;
        Ok(())
    }

    /// Sends a request and waits for the reply with its `ref`; other frames are kept for later.
    pub async fn request(&mut self, request: Request) -> Result<ServerMsg, ClientError> {
        let r = self.send(&request).await?;
        self.reply_to(r).await
    }

    /// Sends a request whose answer is several frames (`ChainedRecords`, `AuditTail` without
    /// follow) and collects them up to and including the closing one (`...End` or `Error`).
    pub async fn request_stream(
        &mut self,
        request: Request,
    ) -> Result<Vec<ServerMsg>, ClientError> {
        let r = self.send(&request).await?;
        let mut all = Vec::new();
        loop {
            let msg = self.reply_to(r).await?;
            let end = matches!(
                msg,
                ServerMsg::ChainedRecordsEnd { .. }
                    | ServerMsg::AuditEnd { .. }
                    | ServerMsg::Error { .. }
            );
            all.push(msg);
            if end {
                return Ok(all);
            }
        }
    }

    /// Waits for the next frame carrying `ref`.
    pub async fn reply_to(&mut self, r: u64) -> Result<ServerMsg, ClientError> {
        if let Some(pos) = self.backlog.iter().position(|e| e.r#ref == Some(r)) {
            return Ok(self.backlog.remove(pos).expect("position is valid").msg);
        }
        loop {
            let env = self.read_frame().await?;
            if env.r#ref == Some(r) {
                return Ok(env.msg);
            }
            if env.r#ref.is_none() && self.discard_pushes {
                continue;
            }
            self.backlog.push_back(env);
        }
    }

    /// The next push (a frame without `ref`), waiting up to the client's timeout.
    pub async fn next_push(&mut self) -> Result<ServerMsg, ClientError> {
        if let Some(pos) = self.backlog.iter().position(|e| e.r#ref.is_none()) {
            return Ok(self.backlog.remove(pos).expect("position is valid").msg);
        }
        loop {
            let env = self.read_frame().await?;
            if env.r#ref.is_none() {
                return Ok(env.msg);
            }
            self.backlog.push_back(env);
        }
    }

    /// The next push if one arrives within `wait`, `None` otherwise.
    pub async fn try_next_push(
        &mut self,
        wait: Duration,
    ) -> Result<Option<ServerMsg>, ClientError> {
        let saved = self.timeout;
        self.timeout = wait;
        let r = self.next_push().await;
        self.timeout = saved;
        match r {
            Ok(m) => Ok(Some(m)),
            Err(ClientError::Timeout(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The next frame of any kind, with its `ref`.
    pub async fn next_message(&mut self) -> Result<Envelope, ClientError> {
        if let Some(env) = self.backlog.pop_front() {
            return Ok(env);
        }
        self.read_frame().await
    }

    async fn read_frame(&mut self) -> Result<Envelope, ClientError> {
        let next = tokio::time::timeout(self.timeout, self.framed.next())
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?;
        match next {
            None => Err(ClientError::Closed),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(bytes)) => Ok(serde_json::from_slice(&bytes)?),
        }
    }

    /// True once the server has closed the connection (waits up to the timeout for it).
    pub async fn is_closed(&mut self) -> bool {
        loop {
            match self.read_frame().await {
                Ok(env) => self.backlog.push_back(env),
                Err(ClientError::Timeout(_)) => return false,
                Err(_) => return true,
            }
        }
    }

    /// The underlying stream, for tests that need raw access.
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        self.framed.get_mut()
    }
}
