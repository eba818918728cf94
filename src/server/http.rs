//! The HTTP listener (`http_listen`): WebSocket desktops at `GET /ws`, and the pages and script
//! the server hands browsers. HTTPS and WSS when `[tls]` is configured, with the same certificate
//! as the TCP port.
//!
//! A WebSocket connection is admitted like a TCP one (the same connection ids, `max_connections`
//! slots and shutdown) and then served by the same [`serve_connection`]: one text message is one
//! frame, and everything else (handshake, limits, timers, backpressure, slow readers) is shared.
//! Never decides anything about a client beyond admitting it.

use super::accept::Admission;
use super::connection::{close, serve_connection, ConnCtx, Reader, Transport};
use super::outbox::{FrameWriter, Outbox};
use crate::codec::FrameError;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::stream::{SplitSink, StreamExt};
use futures_util::SinkExt;
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// Read and write buffer of a WebSocket connection.
const WS_BUFFER_BYTES: usize = 4096;

/// Who is on the other end of an HTTP connection, for the requests it carries.
#[derive(Clone, Copy)]
struct Peer {
    addr: SocketAddr,
    client_cert: bool,
}

/// Accepts HTTP connections until `stop`, each on a task of its own.
pub(super) async fn http_loop(
    listener: TcpListener,
    admission: Arc<Admission>,
    stop: CancellationToken,
) {
    let router = Router::new()
        .route("/ws", get(websocket))
        .route("/sdk/baton.js", get(sdk))
        .route("/desk/", get(desk_page))
        .route("/desk/desk.js", get(desk_script))
        .route("/desk/desk.css", get(desk_style))
        .route("/desk", get(|| async { Redirect::permanent("/desk/") }))
        .route("/admin/", get(admin_page))
        .route("/admin/admin.js", get(admin_script))
        .route("/admin/admin.css", get(admin_style))
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route("/", get(|| async { Redirect::temporary("/desk/") }))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/metrics", get(super::ops::metrics))
        .route("/healthz", get(super::ops::healthz))
        .route("/readyz", get(super::ops::readyz))
        .with_state(admission.clone());
    loop {
        let (socket, addr) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let router = router.clone();
        let tls = admission.shared.tls.as_ref().map(|t| t.acceptor());
        let (stop, handshake) = (stop.clone(), admission.config.handshake_timeout());
        admission.tracker.spawn(
            async move {
                let _ = socket.set_nodelay(true);
                match tls {
                    None => {
                        let peer = Peer {
                            addr,
                            client_cert: false,
                        };
                        serve_http(TokioIo::new(socket), router, peer, stop).await
                    }
                    Some(acceptor) => {
                        let stream = tokio::select! {
                            _ = stop.cancelled() => return,
                            r = tokio::time::timeout(handshake, acceptor.accept(socket)) => r,
                        };
                        match stream {
                            Ok(Ok(stream)) => {
                                let peer = Peer {
                                    addr,
                                    client_cert: stream.get_ref().1.peer_certificates().is_some(),
                                };
                                serve_http(TokioIo::new(stream), router, peer, stop).await
                            }
                            Ok(Err(e)) => debug!("HTTPS handshake failed: {e}"),
                            Err(_) => debug!("no HTTPS handshake within handshake_timeout_ms"),
                        }
                    }
                }
            }
            .instrument(tracing::info_span!("http", peer = %addr)),
        );
    }
}

/// Serves HTTP/1.1 on one connection (upgrades included) until it ends; at `stop`, lets the
/// request in progress finish and closes. A connection upgraded to a WebSocket lives on in its
/// own task.
async fn serve_http<I>(io: I, router: Router, peer: Peer, stop: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(peer);
        let mut router = router.clone();
        async move {
            use tower_service::Service;
            router.call(request.map(axum::body::Body::new)).await
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(io, service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!("HTTP connection ended: {e}");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

/// The desktop SDK, as built from `sdk/typescript` (committed, so that building the server needs
/// nothing but Rust).
const SDK_JS: &str = include_str!("../../sdk/typescript/dist/baton.js");

/// `GET /sdk/baton.js`: the SDK as an ES module.
async fn sdk() -> Response {
    static_asset(SDK_JS, "text/javascript; charset=utf-8")
}

/// The reference agent desktop (`sdk/typescript/desk`), a page on the SDK.
const DESK_HTML: &str = include_str!("../../sdk/typescript/desk/index.html");
const DESK_JS: &str = include_str!("../../sdk/typescript/desk/desk.js");
const DESK_CSS: &str = include_str!("../../sdk/typescript/desk/desk.css");

/// The page may load only its own script, style and SDK, connect only back to this server, and
/// may not be framed by another site.
const DESK_POLICY: &str =
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

async fn desk_page() -> Response {
    let mut page = static_asset(DESK_HTML, "text/html; charset=utf-8");
    page.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(DESK_POLICY),
    );
    page
}

async fn desk_script() -> Response {
    static_asset(DESK_JS, "text/javascript; charset=utf-8")
}

async fn desk_style() -> Response {
    static_asset(DESK_CSS, "text/css; charset=utf-8")
}

/// The read-only admin console (`sdk/typescript/admin`): an admin client of `/ws`, whose token
/// the operator types in (it is never part of the page).
const ADMIN_HTML: &str = include_str!("../../sdk/typescript/admin/index.html");
const ADMIN_JS: &str = include_str!("../../sdk/typescript/admin/admin.js");
const ADMIN_CSS: &str = include_str!("../../sdk/typescript/admin/admin.css");

/// As the desktop's, and its forms may not be submitted anywhere: the token typed into the
/// login form can never travel in a URL, even if the script did not run.
const ADMIN_POLICY: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
     frame-ancestors 'none'; form-action 'none'; base-uri 'none'";

async fn admin_page() -> Response {
    let mut page = static_asset(ADMIN_HTML, "text/html; charset=utf-8");
    page.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(ADMIN_POLICY),
    );
    page
}

async fn admin_script() -> Response {
    static_asset(ADMIN_JS, "text/javascript; charset=utf-8")
}

async fn admin_style() -> Response {
    static_asset(ADMIN_CSS, "text/css; charset=utf-8")
}

/// A file compiled into the server. Browsers may keep it for a minute: a new server version is
/// picked up soon after an upgrade.
fn static_asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=60"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// Whether a page from `origin` may open a WebSocket here: it is one of `allowed`, or the
/// server's own origin (the `Host` the request was sent to, with this listener's scheme). A
/// request without `Origin` does not come from a browser page and is let through.
pub(super) fn origin_allowed(
    origin: Option<&str>,
    host: Option<&str>,
    tls: bool,
    allowed: &[String],
) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if allowed.iter().any(|a| a == origin) {
        return true;
    }
    let scheme = if tls { "https://" } else { "http://" };
    host.is_some_and(|host| origin.strip_prefix(scheme) == Some(host))
}

/// `GET /ws`: checks the origin and a connection slot, then upgrades and serves the connection.
async fn websocket(
    State(admission): State<Arc<Admission>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let header_str = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let origin = header_str(header::ORIGIN);
    let config = &admission.config;
    let tls = admission.shared.tls.is_some();
    if !origin_allowed(
        origin,
        header_str(header::HOST),
        tls,
        &config.allowed_origins,
    ) {
        info!(
            peer = %peer.addr,
            origin = origin.unwrap_or_default(),
            "refused WebSocket: origin not in allowed_origins"
        );
        return (
            StatusCode::FORBIDDEN,
            "this page's origin may not open a Baton WebSocket (allowed_origins)\n",
        )
            .into_response();
    }
    let Some(permit) = admission.slots.clone().try_acquire_owned().ok() else {
        admission.shared.metrics.connection_refused();
        warn!(
            max_connections = config.max_connections,
            "refusing WebSocket: server is at max_connections"
        );
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            format!(
                "the server is serving its limit of {} connections; try again later\n",
                config.max_connections
            ),
        )
            .into_response();
    };
    let (ctx, span) = admission.context(peer.addr, Transport::WebSocket);
    let ctx = ConnCtx {
        client_cert: peer.client_cert,
        ..ctx
    };
    // The library refuses messages far over the limit outright; those just over it get the 1009
    // close the protocol promises, from the connection's own check.
    let max = config.max_frame_bytes;
    let tracker = admission.tracker.clone();
    upgrade
        .max_message_size(max.saturating_mul(2).max(max + 1024))
        // The library's 128 KiB read and write buffers would make an idle desktop cost ten times
        // what it costs on TCP; small buffers grow for a big message and the writer flushes each
        // batch anyway.
        .read_buffer_size(WS_BUFFER_BYTES)
        .write_buffer_size(WS_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            tracker.track_future(
                async move {
                    let _permit = permit;
                    let (sink, stream) = socket.split();
                    let frames = websocket_frames(stream, max);
                    serve_connection(frames, WebSocketWriter { sink }, ctx).await
                }
                .instrument(span),
            )
        })
}

/// The frames of a WebSocket: one per text message. A binary message or one over
/// `max_frame_bytes` ends the connection (with close code 1003 or 1009); pings and pongs are
/// the library's business.
fn websocket_frames(
    stream: futures_util::stream::SplitStream<WebSocket>,
    max_frame_bytes: usize,
) -> Reader {
    Box::pin(stream.filter_map(move |message| async move {
        match message {
            Ok(Message::Text(text)) if text.len() > max_frame_bytes => {
                Some(Err(FrameError::TooLong {
                    len: text.len() as u64,
                    max: max_frame_bytes,
                }))
            }
            Ok(Message::Text(text)) => Some(Ok(Bytes::from(text))),
            Ok(Message::Binary(_)) => Some(Err(FrameError::Binary)),
            Ok(Message::Ping(_) | Message::Pong(_)) => None,
            Ok(Message::Close(_)) => Some(Err(FrameError::Io(
                std::io::ErrorKind::ConnectionAborted.into(),
            ))),
            Err(e) => Some(Err(FrameError::Io(std::io::Error::other(e)))),
        }
    }))
}

/// Writes frames as WebSocket text messages.
struct WebSocketWriter {
    sink: SplitSink<WebSocket, Message>,
}

impl FrameWriter for WebSocketWriter {
    async fn write_batch(
        &mut self,
        batch: &mut VecDeque<Bytes>,
        outbox: &Outbox,
        cancel: &CancellationToken,
    ) -> std::io::Result<()> {
        let (mut frames, mut bytes) = (0, 0);
        while let Some(frame) = batch.pop_front() {
            bytes += frame.len();
            frames += 1;
            // The server's frames are JSON it serialized itself: always UTF-8.
            let text = Utf8Bytes::try_from(frame)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = self.sink.feed(Message::Text(text)) => r.map_err(std::io::Error::other)?,
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = self.sink.flush() => r.map_err(std::io::Error::other)?,
        }
        outbox.progress(bytes);
        outbox.wrote(frames);
        Ok(())
    }

    async fn finish(&mut self, close: Option<(u16, String)>) {
        let (code, reason) = close.unwrap_or((close::NORMAL, String::new()));
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(truncate_reason(&reason)),
        };
        let goodbye = async {
            let _ = self.sink.send(Message::Close(Some(frame))).await;
            let _ = self.sink.close().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
    }
}

/// A close frame's reason holds at most 123 bytes.
fn truncate_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_own_origin_and_listed_origins_are_allowed() {
        let listed = vec!["https://desk.example:8443".to_owned()];
        // No Origin: not a browser page.
        assert!(origin_allowed(None, Some("127.0.0.1:7380"), false, &[]));
        // The page this server served.
        assert!(origin_allowed(
            Some("http://127.0.0.1:7380"),
            Some("127.0.0.1:7380"),
            false,
            &[]
        ));
        // Same host, other scheme or port: another origin.
        assert!(!origin_allowed(
            Some("https://127.0.0.1:7380"),
            Some("127.0.0.1:7380"),
            false,
            &[]
        ));
        assert!(!origin_allowed(
            Some("http://127.0.0.1:8080"),
            Some("127.0.0.1:7380"),
            false,
            &[]
        ));
        assert!(origin_allowed(
            Some("https://127.0.0.1:7380"),
            Some("127.0.0.1:7380"),
            true,
            &[]
        ));
        assert!(origin_allowed(
            Some("https://desk.example:8443"),
            Some("baton.example:7380"),
            true,
            &listed
        ));
        assert!(!origin_allowed(
            Some("https://evil.example"),
            Some("baton.example:7380"),
            true,
            &listed
        ));
        assert!(!origin_allowed(Some("null"), None, false, &listed));
    }

    #[test]
    fn close_reasons_are_cut_on_a_character_boundary() {
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= 123);
        assert!(long.starts_with(cut));
        assert_eq!(truncate_reason("short"), "short");
    }
}
