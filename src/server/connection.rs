//! One connection's reader: the handshake (`Hello`, protocol, token), the read loop and its
//! backpressure, and what the reader answers itself (`Ping`, framing errors, audit tails). The
//! connection's queue and writer are in [`super::outbox`].
//!
//! Never decides access and never touches engine state: every other request goes to the engine
//! task as a message.

use super::audit_feed::{audit_tail, TailOut};
use super::engine_task::EngineMsg;
use super::metrics::transport_label;
use super::outbox::{self, FrameWriter, Outbox, RoomError};
use super::Shared;
use crate::auth::{same_secret, Authenticator};
use crate::codec::{FrameCodec, FrameError};
use crate::config::AgentAuth;
use crate::config::Config;
use crate::engine::ConnId;
use crate::messages::*;
use bytes::Bytes;
use futures_util::Stream;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncRead;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// Initial read buffer of a connection, in bytes.
const CONN_BUFFER: usize = 1024;

pub(super) struct ConnCtx {
    pub(super) conn: ConnId,
    pub(super) peer: SocketAddr,
    pub(super) config: Arc<Config>,
    pub(super) engine: mpsc::Sender<EngineMsg>,
    pub(super) cancel: CancellationToken,
    pub(super) shared: Shared,
    /// The peer presented a client certificate that `[tls] client_ca` vouches for.
    pub(super) client_cert: bool,
    pub(super) transport: Transport,
}

/// The reading side of a connection, plain TCP or TLS.
pub(super) type ConnRead = Box<dyn AsyncRead + Send + Unpin>;

/// The frames a connection receives, whatever carries them: cut from a byte stream by
/// [`FrameCodec`], or one per WebSocket text message.
pub(super) type Reader = Pin<Box<dyn Stream<Item = Result<Bytes, FrameError>> + Send>>;

/// What carries a connection's frames. The same rules apply to both; only how a connection is
/// told why it closes differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    Tcp,
    WebSocket,
}

/// WebSocket close codes (RFC 6455 section 7.4.1) for the reasons a connection ends.
pub(super) mod close {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// A standby node of a cluster: the client should go to the active node.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// The frames of a TCP (or TLS) stream. A small initial read buffer: most connections send small
/// frames, and an idle desktop should cost little memory. It grows on demand for bigger frames.
pub(super) fn stream_frames(read_half: ConnRead, max_frame_bytes: usize) -> Reader {
    Box::pin(FramedRead::with_capacity(
        read_half,
        FrameCodec::new(max_frame_bytes),
        CONN_BUFFER,
    ))
}

/// What a connection may do beyond its role's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Full,
    /// An admin session opened with the `admin_read` token: reads only.
    ReadOnly,
}

fn error_frame(r#ref: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Bytes {
    Envelope::reply(r#ref, ServerMsg::error(code, message)).to_bytes()
}

/// What the connection's `Login` proves (see [`Authenticator::prove`]); a refusal is logged
/// here with the peer, and audited by the engine.
async fn prove(auth: &Authenticator, login: &Login, ctx: &ConnCtx) -> LoginProof {
    let proof = tokio::select! {
        _ = ctx.cancel.cancelled() => return LoginProof::Refused {
            cause: LoginFailure::BadCredential,
            retry_after_ms: None,
        },
        p = auth.prove(login, ctx.peer.ip(), super::now_ms()) => p,
    };
    if let LoginProof::Refused {
        cause,
        retry_after_ms,
    } = proof
    {
        info!(
            agent = login.agent.as_str(),
            dn = login.dn.as_str(),
            cause = cause.as_str(),
            retry_after_ms,
            "login refused"
        );
    }
    proof
}

pub(super) async fn refuse_overloaded(socket: TcpStream, ctx: &ConnCtx) {
    warn!(
        max_connections = ctx.config.max_connections,
        "refusing connection: server is at max_connections"
    );
    let mut writer = FramedWrite::new(socket, FrameCodec::new(ctx.config.max_frame_bytes));
    let frame = error_frame(
        None,
        ErrorCode::Overloaded,
        format!(
            "the server is serving its limit of {} connections; try again later",
            ctx.config.max_connections
        ),
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.send(frame)).await;
}

pub(super) async fn serve_connection<W>(mut reader: Reader, writer: W, ctx: ConnCtx)
where
    W: FrameWriter + 'static,
{
    let outbox = Arc::new(Outbox::new(
        ctx.config.outbound_queue_frames,
        ctx.config.idle_timeout(),
    ));
    let writer_task = tokio::spawn(
        outbox::write_loop(writer, outbox.clone(), ctx.cancel.clone()).in_current_span(),
    );

    let mut gauge = ctx
        .shared
        .metrics
        .connection(transport_label(ctx.transport == Transport::WebSocket));
    let registered = match handshake(&mut reader, &outbox, &ctx).await {
        Some((role, scope)) => {
            tracing::Span::current().record("role", role.as_str());
            gauge.set_role(role);
            let msg = EngineMsg::Connected {
                conn: ctx.conn,
                role,
                peer: ctx.peer,
                outbox: outbox.clone(),
                cancel: ctx.cancel.clone(),
            };
            if ctx.engine.send(msg).await.is_ok() {
                debug!("session open");
                read_loop(&mut reader, &outbox, &ctx, role, scope).await;
                true
            } else {
                false
            }
        }
        None => false,
    };
    if registered {
        let _ = ctx
            .engine
            .send(EngineMsg::Disconnected { conn: ctx.conn })
            .await;
    }
    // Let the writer send what is queued (an error, a last reply), then close.
    outbox.close();
    if tokio::time::timeout(Duration::from_secs(2), writer_task)
        .await
        .is_err()
    {
        ctx.cancel.cancel();
    }
    debug!("connection closed");
}

/// Waits for `Hello` and answers it. Returns the role and scope, or `None` after sending the
/// error.
async fn handshake(reader: &mut Reader, outbox: &Outbox, ctx: &ConnCtx) -> Option<(Role, Scope)> {
    let first = tokio::select! {
        _ = ctx.cancel.cancelled() => return None,
        r = tokio::time::timeout(ctx.config.handshake_timeout(), reader.next()) => r,
    };
    let frame = match first {
        Err(_) => {
            info!(
                "closing: no Hello within {} ms",
                ctx.config.handshake_timeout_ms
            );
            outbox.set_close_code(close::POLICY, "no Hello within handshake_timeout_ms");
            ctx.shared
                .metrics
                .request("Hello", Some(ErrorCode::HelloRequired));
            let _ = outbox.push(error_frame(
                None,
                ErrorCode::HelloRequired,
                format!(
                    "no Hello within handshake_timeout_ms ({} ms)",
                    ctx.config.handshake_timeout_ms
                ),
            ));
            return None;
        }
        Ok(None) => return None,
        Ok(Some(Err(e))) => {
            report_frame_error(outbox, &e, ctx.transport);
            return None;
        }
        Ok(Some(Ok(frame))) => frame,
    };
    let incoming = match parse_request(&frame, None) {
        Ok(i) => i,
        Err(e) => {
            // A broken Hello is a bad_request; anything that is not a Hello is hello_required.
            let is_hello = e.type_name.as_deref() == Some("Hello");
            let code = match e.code {
                ErrorCode::BadFrame => e.code,
                ErrorCode::BadRequest if is_hello => e.code,
                _ => ErrorCode::HelloRequired,
            };
            let message = if code == ErrorCode::HelloRequired && e.code != code {
                match e.type_name {
                    Some(t) => format!("the first frame must be Hello, not `{t}`"),
                    None => "the first frame must be Hello".to_owned(),
                }
            } else {
                e.message
            };
            info!(code = code.as_str(), "closing: {message}");
            ctx.shared.metrics.request("Hello", Some(code));
            let close_code = match code {
                ErrorCode::BadFrame => close::INVALID_PAYLOAD,
                _ => close::POLICY,
            };
            outbox.set_close_code(close_code, &message);
            let _ = outbox.push(error_frame(e.r#ref, code, message));
            return None;
        }
    };
    let Request::Hello(hello) = incoming.request else {
        unreachable!("parse_request without a role only accepts Hello");
    };
    let r#ref = incoming.r#ref;
    let refuse = |code: ErrorCode, message: String| {
        info!(code = code.as_str(), "closing: {message}");
        ctx.shared.metrics.request("Hello", Some(code));
        outbox.set_close_code(close::POLICY, &message);
        let _ = outbox.push(error_frame(r#ref, code, message));
        None
    };
    if hello.protocol != PROTOCOL_VERSION {
        return refuse(
            ErrorCode::ProtocolMismatch,
            format!(
                "protocol {} is not supported; this server speaks protocol {PROTOCOL_VERSION}",
                hello.protocol
            ),
        );
    }
    if let Some(view) = &ctx.shared.standby {
        let active = view.active().map(|a| match ctx.transport {
            Transport::WebSocket => a.advertise_http.unwrap_or(a.advertise),
            _ => a.advertise,
        });
        let message = match &active {
            Some(a) => format!("this node is a standby; the active node is {a}"),
            None => "this node is a standby and no node is active yet; try again shortly".into(),
        };
        info!(code = "not_active", "closing: {message}");
        ctx.shared
            .metrics
            .request("Hello", Some(ErrorCode::NotActive));
        outbox.set_close_code(close::TRY_AGAIN_LATER, &message);
        let mut refusal = ServerMsg::error(ErrorCode::NotActive, message);
        if let ServerMsg::Error { active: a, .. } = &mut refusal {
            *a = active;
        }
        let _ = outbox.push(Envelope::reply(r#ref, refusal).to_bytes());
        return None;
    }
    let Some(role) = Role::parse(&hello.role) else {
        return refuse(
            ErrorCode::BadRequest,
            format!(
                "Hello: field `role`: unknown role `{}` (expected desktop, dialer, switch or admin)",
                hello.role
            ),
        );
    };
    let scope = match admit_role(&hello, role, ctx) {
        Ok(scope) => scope,
        Err((code, message)) => return refuse(code, message),
    };
    let welcome = Envelope::reply(
        r#ref,
        ServerMsg::Welcome {
            protocol: PROTOCOL_VERSION,
            server: format!("baton/{}", env!("CARGO_PKG_VERSION")),
            heartbeat_ms: ctx.config.heartbeat_ms,
        },
    );
    ctx.shared.metrics.request("Hello", None);
    outbox
        .push(welcome.to_bytes())
        .is_ok()
        .then_some((role, scope))
}

/// Whether `Hello`'s token (and the TLS client certificate, where the role needs one) admits the
/// role, and with which scope. The error is for the log and the client alike: it names what was
/// missing, never the secret.
fn admit_role(hello: &Hello, role: Role, ctx: &ConnCtx) -> Result<Scope, (ErrorCode, String)> {
    let tls = ctx.config.tls.as_ref();
    if tls.is_some_and(|t| t.require_client_cert.iter().any(|r| r == role.as_str()))
        && !ctx.client_cert
    {
        return Err((
            ErrorCode::AuthFailed,
            format!(
                "role {role} must present a client certificate signed by the configured client_ca"
            ),
        ));
    }
    let tokens = &ctx.config.tokens;
    let expected = match role {
        // Agents prove who they are at Login; a browser could not keep a shared secret anyway.
        Role::Desktop if ctx.config.auth.agents != AgentAuth::Open => return Ok(Scope::Full),
        Role::Desktop => &tokens.desktop,
        Role::Dialer => &tokens.dialer,
        Role::Switch => &tokens.switch,
        Role::Admin => &tokens.admin,
    };
    let Some(token) = hello.token.as_deref() else {
        return Err((
            ErrorCode::BadRequest,
            format!("Hello: missing field `token` (the shared secret of role {role})"),
        ));
    };
    if same_secret(token, expected) {
        return Ok(Scope::Full);
    }
    if role == Role::Admin
        && tokens
            .admin_read
            .as_deref()
            .is_some_and(|t| same_secret(token, t))
    {
        return Ok(Scope::ReadOnly);
    }
    Err((
        ErrorCode::AuthFailed,
        format!("wrong token for role {role}"),
    ))
}

/// Ends a connection whose frames could not be read. A framing violation is answered
/// `bad_frame` on TCP; a WebSocket peer is told by the close code instead (1009 for a message
/// over the limit, 1003 for a binary one), as section 11 of the protocol says.
fn report_frame_error(outbox: &Outbox, e: &FrameError, transport: Transport) {
    if !e.is_violation() {
        debug!("read failed: {e}");
        return;
    }
    info!("closing: framing violation: {e}");
    let message = e.to_string();
    let (code, tell) = match e {
        FrameError::TooLong { .. } => (close::TOO_BIG, transport == Transport::Tcp),
        FrameError::Binary => (close::UNSUPPORTED, false),
        _ => (close::PROTOCOL, true),
    };
    outbox.set_close_code(code, &message);
    if tell {
        let _ = outbox.push(error_frame(None, ErrorCode::BadFrame, message));
    }
}

/// The request type a refused frame named, as a metrics label: one of the protocol's names, or
/// `unknown` (a label value must come from a closed set, never from what a client sent).
fn known_type(name: Option<&str>) -> &'static str {
    name.and_then(|n| REQUEST_TYPES.iter().find(|t| **t == n).copied())
        .unwrap_or("unknown")
}

/// Drops a connection whose client has stopped reading.
fn drop_not_reading(ctx: &ConnCtx, role: Role, outbox: &Outbox, why: &str) {
    ctx.shared.metrics.outbound_queue_drop();
    warn!(
        conn = ctx.conn,
        peer = %ctx.peer,
        role = %role,
        queued = outbox.pending(),
        "dropping connection: the client is not reading ({why})"
    );
    ctx.cancel.cancel();
}

/// Queues an answer the reader produces itself; false when the connection must end.
fn answer(outbox: &Outbox, frame: Bytes) -> bool {
    outbox.push_reply(frame).is_ok()
}

async fn read_loop(
    reader: &mut Reader,
    outbox: &Arc<Outbox>,
    ctx: &ConnCtx,
    role: Role,
    scope: Scope,
) {
    let idle = ctx.config.idle_timeout();
    // Created with the first AuditTail: most connections never ask for one.
    let mut tail_slots: Option<Arc<Semaphore>> = None;
    loop {
        // Backpressure: the next request is read only once its answer has room. Meanwhile the
        // socket is not read, so TCP flow control slows a client that writes faster than it
        // reads; and the idle timer does not run, since such a client is not silent.
        if !outbox.has_room_for_request() {
            ctx.shared.metrics.backpressure_pause();
        }
        let room = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            r = outbox.room_for_request(idle) => r,
        };
        match room {
            Ok(()) => {}
            Err(RoomError::Closed) => return,
            Err(RoomError::NotReading) => {
                let why = format!(
                    "it took nothing of its queued answers for {} ms, 3 heartbeats",
                    idle.as_millis()
                );
                drop_not_reading(ctx, role, outbox, &why);
                return;
            }
        }
        let next = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            r = tokio::time::timeout(idle, reader.next()) => r,
        };
        let frame = match next {
            Err(_) => {
                info!(
                    "closing: nothing received for {} ms (3 heartbeats)",
                    idle.as_millis()
                );
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                report_frame_error(outbox, &e, ctx.transport);
                return;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        match parse_request(&frame, Some(role)) {
            Ok(Incoming {
                r#ref,
                request: Request::Ping,
            }) => {
                ctx.shared.metrics.request("Ping", None);
                let pong = Envelope::reply(r#ref, ServerMsg::Pong).to_bytes();
                if !answer(outbox, pong) {
                    return;
                }
            }
            Ok(Incoming {
                request: Request::Pong,
                ..
            }) => {}
            Ok(Incoming {
                r#ref,
                request: Request::AuditTail(t),
            }) => {
                let limit = ctx.config.max_audit_tails_per_connection;
                let slots = tail_slots.get_or_insert_with(|| Arc::new(Semaphore::new(limit)));
                match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let tail = TailOut {
                            outbox: outbox.clone(),
                            r#ref,
                            cancel: ctx.cancel.clone(),
                        };
                        ctx.shared.metrics.request("AuditTail", None);
                        tokio::spawn(
                            audit_tail(ctx.shared.clone(), tail, t, slot).in_current_span(),
                        );
                    }
                    Err(_) => {
                        let metrics = &ctx.shared.metrics;
                        metrics.request("AuditTail", Some(ErrorCode::Overloaded));
                        let refusal = error_frame(
                            r#ref,
                            ErrorCode::Overloaded,
                            format!(
                                "this connection already runs {limit} audit tails, the limit \
                                 (max_audit_tails_per_connection = {limit}); use another connection"
                            ),
                        );
                        if !answer(outbox, refusal) {
                            return;
                        }
                    }
                }
            }
            Ok(Incoming {
                r#ref,
                request: Request::Hello(_),
            }) => {
                ctx.shared
                    .metrics
                    .request("Hello", Some(ErrorCode::BadRequest));
                let refusal =
                    error_frame(r#ref, ErrorCode::BadRequest, "Hello was already received");
                if !answer(outbox, refusal) {
                    return;
                }
            }
            Ok(Incoming {
                r#ref,
                request: Request::ReleaseRecord(r),
            }) if scope == Scope::ReadOnly => {
                info!(
                    record = r.record.as_str(),
                    "refused ReleaseRecord: this admin session may only read"
                );
                ctx.shared
                    .metrics
                    .request("ReleaseRecord", Some(ErrorCode::AccessDenied));
                let refusal = error_frame(
                    r#ref,
                    ErrorCode::AccessDenied,
                    "this admin session was opened with the admin_read token: it may read \
                     (Status, RecordInfo, AuditTail, Agents, Calls) and nothing else",
                );
                if !answer(outbox, refusal) {
                    return;
                }
            }
            Ok(Incoming { r#ref, mut request }) => {
                if let Request::Login(l) = &mut request {
                    tracing::Span::current().record("agent", l.agent.as_str());
                    l.proof = prove(&ctx.shared.auth, l, ctx).await;
                }
                outbox.request_sent();
                let msg = EngineMsg::Request {
                    conn: ctx.conn,
                    r#ref,
                    request,
                    outbox: outbox.clone(),
                };
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return,
                    sent = ctx.engine.send(msg) => if sent.is_err() { return },
                }
            }
            Err(e) if e.code == ErrorCode::BadFrame => {
                ctx.shared.metrics.request("unknown", Some(e.code));
                info!("closing: framing violation: {}", e.message);
                outbox.set_close_code(close::INVALID_PAYLOAD, &e.message);
                let _ = outbox.push(error_frame(e.r#ref, e.code, e.message));
                return;
            }
            Err(e) => {
                let type_name = known_type(e.type_name.as_deref());
                ctx.shared.metrics.request(type_name, Some(e.code));
                debug!(code = e.code.as_str(), "refused frame: {}", e.message);
                if !answer(outbox, error_frame(e.r#ref, e.code, e.message)) {
                    return;
                }
            }
        }
    }
}
