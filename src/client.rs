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
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
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
    /// A standby node of a cluster answered `Hello`: `active` is where the active node is, if
    /// one is known.
    #[error("not the active node: {message}")]
    NotActive {
        active: Option<String>,
        message: String,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("WebSocket: {0}")]
    WebSocket(String),
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        use tokio_tungstenite::tungstenite::Error as E;
        match e {
            E::ConnectionClosed | E::AlreadyClosed => ClientError::Closed,
            E::Io(io) => ClientError::Frame(FrameError::Io(io)),
            other => ClientError::WebSocket(other.to_string()),
        }
    }
}

/// How a client's frames travel: length-prefixed on a TCP or TLS stream, or one text message
/// each on a WebSocket (a browser desktop's transport).
enum Wire {
    Stream(Framed<ClientStream, FrameCodec>),
    WebSocket(Box<WebSocketStream<ClientStream>>),
}

/// Which transport a desktop uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Transport {
    /// The framed TCP (or TLS) port, `listen`.
    #[default]
    Tcp,
    /// WebSocket on the HTTP port, `http_listen`, at `/ws`.
    #[value(name = "ws")]
    WebSocket,
}

impl Wire {
    async fn feed(&mut self, body: Bytes) -> Result<(), ClientError> {
        match self {
            Wire::Stream(f) => f.feed(body).await?,
            Wire::WebSocket(ws) => ws.feed(text_message(body)?).await?,
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ClientError> {
        match self {
            Wire::Stream(f) => f.flush().await?,
            Wire::WebSocket(ws) => ws.flush().await?,
        }
        Ok(())
    }

    /// The next frame's body; `None` once the server has closed the connection.
    async fn next(&mut self) -> Option<Result<Bytes, ClientError>> {
        match self {
            Wire::Stream(f) => f.next().await.map(|r| r.map_err(ClientError::from)),
            Wire::WebSocket(ws) => loop {
                match ws.next().await? {
                    Ok(WsMessage::Text(text)) => return Some(Ok(Bytes::from(text))),
                    Ok(WsMessage::Binary(b)) => return Some(Ok(b)),
                    Ok(WsMessage::Close(_)) => return None,
                    Ok(_) => continue,
                    Err(e) => return Some(Err(e.into())),
                }
            },
        }
    }

    fn stream_mut(&mut self) -> &mut ClientStream {
        match self {
            Wire::Stream(f) => f.get_mut(),
            Wire::WebSocket(ws) => ws.get_mut(),
        }
    }
}

fn text_message(body: Bytes) -> Result<WsMessage, ClientError> {
    let text = String::from_utf8(body.to_vec()).map_err(|_| {
        ClientError::WebSocket("a frame that is not UTF-8 cannot be a text message".into())
    })?;
    Ok(WsMessage::Text(text.into()))
}

/// A connection's byte stream: plain TCP, or TLS over it.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How to reach a server over TLS: whom to trust, the name its certificate must carry, and the
/// client certificate to show where the server requires one.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CA certificates of `ca` (PEM), or the system's when `None`; presents the
    /// client certificate `cert` with its `key` when given.
    pub fn new(
        ca: Option<&std::path::Path>,
        client: Option<(&std::path::Path, &std::path::Path)>,
        server_name: Option<&str>,
    ) -> Result<ClientTls, ClientError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let tls = |m: String| ClientError::Tls(m);
        let mut roots = RootCertStore::empty();
        match ca {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| tls(format!("cannot read CA file {}: {e}", path.display())))?;
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| tls(format!("CA file {}: {e}", path.display())))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        if roots.is_empty() {
            return Err(tls("no CA certificate to trust: pass --ca".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| tls(e.to_string()))?
            .with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| tls(format!("cannot read {}: {e}", cert.display())))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| tls(format!("cannot read {}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| tls(e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        let server_name = server_name
            .map(|n| {
                ServerName::try_from(n.to_owned()).map_err(|e| tls(format!("server name {n}: {e}")))
            })
            .transpose()?;
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    async fn wrap(&self, addr: SocketAddr, tcp: TcpStream) -> Result<ClientStream, ClientError> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let stream = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::Tls(format!("handshake with {addr}: {e}")))?;
        Ok(ClientStream::Tls(Box::new(stream)))
    }
}

/// The TLS options of the command-line tools (`baton status`, `baton load`, ...).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Connect over TLS (implied by --ca, --cert, or a `[tls]` section in the config file).
    #[arg(long)]
    pub tls: bool,
    /// CA certificates (PEM) that sign the server's certificate; default: the system's.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), for a server that requires one of this role.
    #[arg(long, value_name = "PEM", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Name the server's certificate must carry (default: the IP address dialled).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
}

impl TlsArgs {
    /// The TLS settings these flags ask for; `config_has_tls` turns TLS on by itself.
    pub fn client_tls(&self, config_has_tls: bool) -> Result<Option<ClientTls>, ClientError> {
        let wanted = self.tls || self.ca.is_some() || self.cert.is_some() || config_has_tls;
        if !wanted {
            return Ok(None);
        }
        let client = self.cert.as_deref().zip(self.key.as_deref());
        ClientTls::new(self.ca.as_deref(), client, self.server_name.as_deref()).map(Some)
    }
}

/// A check run on every frame a [`Client`] reads, before it is decoded, with the role the client
/// said `Hello` as (`None` before that). Baton's test suite installs one that validates each
/// frame against `protocol/schema`; nothing else installs one.
pub type FrameCheck = fn(Option<Role>, &[u8]);

static FRAME_CHECK: std::sync::OnceLock<FrameCheck> = std::sync::OnceLock::new();

/// Installs the [`FrameCheck`] of this process; the first one installed stays.
pub fn check_every_frame(check: FrameCheck) {
    let _ = FRAME_CHECK.set(check);
}

/// One client connection.
pub struct Client {
    wire: Wire,
    /// The role this connection said `Hello` as.
    role: Option<Role>,
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
        Client::connect_raw_with(addr, None).await
    }

    /// Opens a connection, over TLS when `tls` is given, without saying `Hello`.
    pub async fn connect_raw_with(
        addr: SocketAddr,
        tls: Option<&ClientTls>,
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        Client::from_tcp(addr, stream, tls).await
    }

    /// Connects, over TLS when `tls` is given, and completes `Hello` for `role` with `token`.
    pub async fn connect_with(
        addr: SocketAddr,
        tls: Option<&ClientTls>,
        role: Role,
        token: &str,
    ) -> Result<Client, ClientError> {
        Client::hello(Client::connect_raw_with(addr, tls).await?, role, token).await
    }

    async fn from_tcp(
        addr: SocketAddr,
        stream: TcpStream,
        tls: Option<&ClientTls>,
    ) -> Result<Client, ClientError> {
        let _ = stream.set_nodelay(true);
        let stream = match tls {
            Some(tls) => tls.wrap(addr, stream).await?,
            None => ClientStream::Plain(stream),
        };
        Ok(Client::with_wire(Wire::Stream(Framed::new(
            stream,
            FrameCodec::new(CLIENT_MAX_FRAME),
        ))))
    }

    /// Connects from a chosen local address (a load generator spreads many connections over
    /// several loopback addresses, since one source address has only ~28,000 ephemeral ports).
    pub async fn connect_from(
        addr: SocketAddr,
        local: std::net::IpAddr,
        tls: Option<&ClientTls>,
        role: Role,
        token: &str,
    ) -> Result<Client, ClientError> {
        let stream = Client::tcp_from(addr, local).await?;
        Client::hello(Client::from_tcp(addr, stream, tls).await?, role, token).await
    }

    /// As [`Client::connect_from`], over `transport` (`addr` is the HTTP port for WebSocket).
    pub async fn connect_over_from(
        transport: Transport,
        addr: SocketAddr,
        local: std::net::IpAddr,
        tls: Option<&ClientTls>,
        role: Role,
        token: &str,
    ) -> Result<Client, ClientError> {
        match transport {
            Transport::Tcp => Client::connect_from(addr, local, tls, role, token).await,
            Transport::WebSocket => {
                Client::hello(Client::ws_from(addr, Some(local), tls).await?, role, token).await
            }
        }
    }

    async fn tcp_from(addr: SocketAddr, local: std::net::IpAddr) -> Result<TcpStream, ClientError> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .and_then(|s| s.bind(SocketAddr::new(local, 0)).map(|_| s))
        .map_err(|source| ClientError::Connect { addr, source })?;
        socket
            .connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })
    }

    /// Opens a WebSocket to the HTTP listener at `http_addr` (`/ws`, over TLS when `tls` is
    /// given) without saying `Hello`.
    pub async fn connect_ws_raw(
        http_addr: SocketAddr,
        tls: Option<&ClientTls>,
    ) -> Result<Client, ClientError> {
        Client::ws_from(http_addr, None, tls).await
    }

    /// A WebSocket to `/ws`, from the local address `local` when given.
    async fn ws_from(
        http_addr: SocketAddr,
        local: Option<std::net::IpAddr>,
        tls: Option<&ClientTls>,
    ) -> Result<Client, ClientError> {
        let stream = match local {
            Some(local) => Client::tcp_from(http_addr, local).await?,
            None => TcpStream::connect(http_addr)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: http_addr,
                    source,
                })?,
        };
        let _ = stream.set_nodelay(true);
        let (stream, scheme) = match tls {
            Some(tls) => (tls.wrap(http_addr, stream).await?, "wss"),
            None => (ClientStream::Plain(stream), "ws"),
        };
        let url = format!("{scheme}://{http_addr}/ws");
        // Small buffers: a load run holds thousands of these.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(4096);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
        Ok(Client::with_wire(Wire::WebSocket(Box::new(ws))))
    }

    /// Connects to `/ws` on the HTTP listener at `http_addr` and completes `Hello`.
    pub async fn connect_ws(
        http_addr: SocketAddr,
        tls: Option<&ClientTls>,
        role: Role,
        token: &str,
    ) -> Result<Client, ClientError> {
        Client::hello(Client::connect_ws_raw(http_addr, tls).await?, role, token).await
    }

    /// Connects over `transport` and completes `Hello`: `addr` is the TCP port (`listen`) for
    /// [`Transport::Tcp`], the HTTP port (`http_listen`) for [`Transport::WebSocket`].
    pub async fn connect_over(
        transport: Transport,
        addr: SocketAddr,
        tls: Option<&ClientTls>,
        role: Role,
        token: &str,
    ) -> Result<Client, ClientError> {
        match transport {
            Transport::Tcp => Client::connect_with(addr, tls, role, token).await,
            Transport::WebSocket => Client::connect_ws(addr, tls, role, token).await,
        }
    }

    /// Ends the connection without a goodbye, as a desktop whose machine went away: the server
    /// sees it close. What was sent before can still be read.
    pub async fn hang_up(&mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.wire.stream_mut().shutdown().await;
    }

    fn with_wire(wire: Wire) -> Client {
        Client {
            wire,
            role: None,
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

    /// Connects to the active node of a cluster given its nodes (`host:port` each), completing
    /// `Hello`: a standby's `not_active` names the active node, which is tried next; a node that
    /// does not answer is skipped. Goes round the list until `patience` has passed (a takeover
    /// takes a few seconds), then returns the last error. Returns the client and the address of
    /// the node it reached. With one node, this is [`Client::connect_with`] with retries.
    pub async fn connect_active(
        nodes: &[String],
        tls: Option<&ClientTls>,
        role: Role,
        token: &str,
        patience: Duration,
    ) -> Result<(Client, SocketAddr), ClientError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut last = ClientError::Closed;
        loop {
            let mut candidates: std::collections::VecDeque<String> =
                nodes.iter().cloned().collect();
            let mut tried = std::collections::HashSet::new();
            while let Some(node) = candidates.pop_front() {
                if !tried.insert(node.clone()) {
                    continue;
                }
                let addr = match tokio::net::lookup_host(node.as_str()).await {
                    Ok(mut addrs) => match addrs.next() {
                        Some(a) => a,
                        None => continue,
                    },
                    Err(e) => {
                        last = ClientError::Frame(FrameError::Io(e));
                        continue;
                    }
                };
                let attempt = tokio::time::timeout(
                    Duration::from_secs(5),
                    Client::connect_with(addr, tls, role, token),
                )
                .await
                .unwrap_or(Err(ClientError::Timeout(Duration::from_secs(5))));
                match attempt {
                    Ok(client) => return Ok((client, addr)),
                    Err(ClientError::NotActive { active, message }) => {
                        if let Some(a) = &active {
                            candidates.push_front(a.clone());
                        }
                        last = ClientError::NotActive { active, message };
                    }
                    // A refusal of the credentials is the same on every node.
                    Err(e @ ClientError::Refused { .. }) => return Err(e),
                    Err(e) => last = e,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn hello(mut client: Client, role: Role, token: &str) -> Result<Client, ClientError> {
        let hello = Request::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            role: role.as_str().to_owned(),
            token: Some(token.to_owned()),
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
            ServerMsg::Error {
                code: ErrorCode::NotActive,
                message,
                active,
                ..
            } => Err(ClientError::NotActive { active, message }),
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
        if let Request::Hello(hello) = request {
            self.role = Role::parse(&hello.role);
        }
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
            self.wire.feed(Bytes::from(body)).await?;
            refs.push(r);
        }
        self.wire.flush().await?;
        Ok(refs)
    }

    /// Sends an arbitrary frame body (for tests of malformed input).
    pub async fn send_bytes(&mut self, body: Bytes) -> Result<(), ClientError> {
        self.wire.feed(body).await?;
        self.wire.flush().await
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
        let next = tokio::time::timeout(self.timeout, self.wire.next())
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?;
        match next {
            None => Err(ClientError::Closed),
            Some(Err(e)) => Err(e),
            Some(Ok(bytes)) => {
                if let Some(check) = FRAME_CHECK.get() {
                    check(self.role, &bytes);
                }
                Ok(serde_json::from_slice(&bytes)?)
            }
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
    pub fn stream_mut(&mut self) -> &mut ClientStream {
        self.wire.stream_mut()
    }
}
