//! Framing: a 4-byte big-endian length, then that many bytes of JSON.
//!
//! This module only cuts a byte stream into frames and back; it knows nothing about message meaning
//! (that is [`crate::messages`]). The length limit is checked from the header alone, before any of
//! the body is buffered, so a peer announcing a huge frame costs the server four bytes of memory.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Why a byte stream could not be cut into frames. Every variant is a `bad_frame` on the wire.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLong { len: u64, max: usize },
    #[error("frame length 0 is not allowed")]
    Empty,
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("binary WebSocket message: Baton speaks JSON in text messages")]
    Binary,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// True when the peer broke the framing rules (as opposed to the socket failing).
    pub fn is_violation(&self) -> bool {
        !matches!(self, FrameError::Io(_))
    }
}

/// Length-prefixed frame codec with a maximum body size.
///
/// Decoding enforces `1 <= len <= max_frame_bytes` from the header alone: a bad length is an error
/// before a single body byte is buffered, and the body buffer is reserved only for a valid length.
/// (tokio-util's `LengthDelimitedCodec` checks the maximum the same way but hands out empty frames
/// and reports every violation as a bare I/O error; this decoder names each violation instead.)
/// Encoding does not limit: the server's own frames are bounded by what it accepted, since records
/// are limited when they are attached or updated.
#[derive(Debug)]
pub struct FrameCodec {
    max_frame_bytes: usize,
    /// Body length of the frame being read, once its header has been consumed.
    pending: Option<usize>,
}

impl FrameCodec {
    pub fn new(max_frame_bytes: usize) -> FrameCodec {
        FrameCodec {
            max_frame_bytes,
            pending: None,
        }
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let len = match self.pending {
            Some(len) => len,
            None => {
                if src.len() < 4 {
                    return Ok(None);
                }
                let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as u64;
                if len == 0 {
                    return Err(FrameError::Empty);
                }
                if len > self.max_frame_bytes as u64 {
                    return Err(FrameError::TooLong {
                        len,
                        max: self.max_frame_bytes,
                    });
                }
                src.advance(4);
                let len = len as usize;
                src.reserve(len.saturating_sub(src.len()));
                self.pending = Some(len);
                len
            }
        };
        if src.len() < len {
            return Ok(None);
        }
        self.pending = None;
        Ok(Some(src.split_to(len).freeze()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && self.pending.is_none() => Ok(None),
            None => {
                src.clear();
                self.pending = None;
                Err(FrameError::Truncated)
            }
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, body: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLong {
            len: body.len() as u64,
            max: u32::MAX as usize,
        })?;
        dst.reserve(4 + body.len());
        dst.put_u32(len);
        dst.put(body);
        Ok(())
    }
}

/// Encodes one frame into a fresh buffer (header + body); handy for clients and tests.
pub fn encode_frame(body: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(4 + body.len());
    buf.put_u32(body.len() as u32);
    buf.put_slice(body);
    buf.freeze()
}

/// Reads the body of one complete frame from the front of `buf`, if there is one.
pub fn split_frame(buf: &mut BytesMut) -> Option<Bytes> {
    if buf.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if buf.len() < 4 + len {
        return None;
    }
    buf.advance(4);
    Some(buf.split_to(len).freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut FrameCodec, bytes: &[u8]) -> Result<Vec<Bytes>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf)? {
            out.push(f);
        }
        if let Some(f) = codec.decode_eof(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn round_trip_several_frames() {
        let mut codec = FrameCodec::new(100);
        let mut wire = BytesMut::new();
        for body in [&b"{}"[..], b"{\"a\":1}", b"x"] {
            codec
                .encode(Bytes::copy_from_slice(body), &mut wire)
                .unwrap();
        }
        let frames = decode_all(&mut codec, &wire).unwrap();
        assert_eq!(frames, vec![&b"{}"[..], b"{\"a\":1}", b"x"]);
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let mut codec = FrameCodec::new(10);
        // Only the header has arrived: the error must come before any body byte.
        let mut buf = BytesMut::from(&11u32.to_be_bytes()[..]);
        match codec.decode(&mut buf) {
            Err(FrameError::TooLong { len: 11, max: 10 }) => {}
            other => panic!("expected TooLong, got {other:?}"),
        }
    }

    #[test]
    fn exact_limit_is_accepted() {
        let mut codec = FrameCodec::new(3);
        let frames = decode_all(&mut codec, &encode_frame(b"abc")).unwrap();
        assert_eq!(frames, vec![&b"abc"[..]]);
    }

    #[test]
    fn zero_length_is_refused() {
        let mut codec = FrameCodec::new(10);
        assert!(matches!(
            decode_all(&mut codec, &[0, 0, 0, 0]),
            Err(FrameError::Empty)
        ));
    }

    #[test]
    fn truncated_body_at_eof_is_an_error() {
        let mut codec = FrameCodec::new(10);
        let wire = encode_frame(b"abcdef");
        assert!(matches!(
            decode_all(&mut codec, &wire[..7]),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            decode_all(&mut codec, &wire[..2]),
            Err(FrameError::Truncated)
        ));
    }

    #[test]
    fn frame_arriving_in_pieces_is_decoded_once_whole() {
        let mut codec = FrameCodec::new(100);
        let wire = encode_frame(b"{\"type\":\"Ping\"}");
        let mut buf = BytesMut::new();
        for (i, byte) in wire.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let got = codec.decode(&mut buf).unwrap();
            if i + 1 < wire.len() {
                assert!(got.is_none(), "frame handed out early at byte {i}");
            } else {
                assert_eq!(got.unwrap(), &b"{\"type\":\"Ping\"}"[..]);
            }
        }
    }

    #[test]
    fn split_frame_waits_for_whole_frame() {
        let wire = encode_frame(b"hello");
        let mut buf = BytesMut::from(&wire[..6]);
        assert!(split_frame(&mut buf).is_none());
        buf.extend_from_slice(&wire[6..]);
        assert_eq!(split_frame(&mut buf).unwrap(), &b"hello"[..]);
        assert!(buf.is_empty());
    }
}
