//! Raw frames, for tests that must control exactly when a socket is written or read (pipelining,
//! a client that stops reading, malformed input), which the typed client does not allow.

use crate::server::{token, TestServer};
use baton::codec::{encode_frame, split_frame};
use baton::messages::*;
use bytes::{Bytes, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The frame (length header and body) of `request` with `ref`.
pub fn request_frame(request: &Request, r#ref: u64) -> Bytes {
    encode_frame(&serde_json::to_vec(&request.to_value(Some(r#ref))).expect("JSON"))
}

/// The read side of a connection spoken to in raw frames.
pub struct RawReader {
    half: OwnedReadHalf,
    buf: BytesMut,
    role: Role,
}

impl RawReader {
    /// The next frame as JSON, or `None` once the server has closed the connection. A frame that
    /// does not come within 10 s, or does not match the schema for the role, fails the test.
    pub async fn next(&mut self) -> Option<serde_json::Value> {
        loop {
            if let Some(body) = split_frame(&mut self.buf) {
                crate::schema::check_server_frame(Some(self.role), &body);
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
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    if let Some(bytes) = recv_buffer_bytes {
        socket.set_recv_buffer_size(bytes).expect("buffer size");
    }
    let stream = socket.connect(server.addr).await.expect("connected");
    stream.set_nodelay(true).expect("nodelay");
    let (read, mut write) = stream.into_split();
    let hello = crate::hello(role, token(&server.config.tokens, role));
    write
        .write_all(&request_frame(&hello, 0))
        .await
        .expect("Hello written");
    let mut reader = RawReader {
        half: read,
        buf: BytesMut::new(),
        role,
    };
    let welcome = reader.next().await.expect("Welcome");
    assert_eq!(welcome["type"], "Welcome", "{welcome}");
    (reader, write)
}
