//! The frame decoder on arbitrary bytes arriving in arbitrary pieces.
//!
//! Input: byte 0 picks the size of the pieces the stream arrives in (0: all at once, else 1 to 255
//! bytes), bytes 1-2 the frame limit (big-endian, plus one: 1 to 65536), the rest is the stream.
//! Checked: the decoder never panics; it hands out exactly the frames, and stops at exactly the
//! error, that a plain reading of the framing rules finds in the whole stream, whatever the pieces;
//! every frame has 1 to `max_frame_bytes` bytes; once it has failed it hands out nothing more; and
//! encoding the frames it handed out gives back the part of the stream it consumed.
#![no_main]

use baton::codec::{FrameCodec, FrameError};
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

/// How a stream ends, by the framing rules.
#[derive(Debug, PartialEq)]
enum End {
    /// Every byte belongs to a whole frame.
    Clean,
    Empty,
    TooLong(u64),
    Truncated,
}

/// The framing rules read plainly: the frames of `stream` and how it ends.
fn reference(stream: &[u8], max: usize) -> (Vec<&[u8]>, End) {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        if rest.is_empty() {
            return (frames, End::Clean);
        }
        let Some((head, body)) = rest.split_first_chunk::<4>() else {
            return (frames, End::Truncated);
        };
        let len = u32::from_be_bytes(*head) as usize;
        if len == 0 {
            return (frames, End::Empty);
        }
        if len > max {
            return (frames, End::TooLong(len as u64));
        }
        if body.len() < len {
            return (frames, End::Truncated);
        }
        frames.push(&body[..len]);
        rest = &body[len..];
    }
}

fuzz_target!(|data: &[u8]| {
    let [piece, max_hi, max_lo, stream @ ..] = data else {
        return;
    };
    let piece = match *piece {
        0 => stream.len().max(1),
        n => usize::from(n),
    };
    let max = usize::from(u16::from_be_bytes([*max_hi, *max_lo])) + 1;

    let mut codec = FrameCodec::new(max);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut frames: Vec<Bytes> = Vec::new();
    let mut consumed = 0; // bytes of the stream that the frames handed out so far account for
    let mut failed: Option<FrameError> = None;
    let mut take = |frame: Bytes, fed: usize, left: usize| {
        assert!(
            (1..=max).contains(&frame.len()),
            "frame of {} bytes, limit {max}",
            frame.len()
        );
        consumed += 4 + frame.len();
        assert_eq!(
            fed - left,
            consumed,
            "bytes consumed beyond the frames handed out"
        );
        frames.push(frame);
    };

    for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        fed += chunk.len();
        if failed.is_some() {
            // The connection is closed after an error; whatever else arrives, no frame comes out.
            assert!(
                !matches!(codec.decode(&mut buf), Ok(Some(_))),
                "frame after an error"
            );
            continue;
        }
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => take(frame, fed, buf.len()),
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
    }
    if failed.is_none() {
        // End of stream: what the framed reader does, decode_eof until nothing more comes.
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(frame)) => take(frame, fed, buf.len()),
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
    }
    if failed.is_some() {
        for _ in 0..2 {
            assert!(
                !matches!(codec.decode(&mut buf), Ok(Some(_))),
                "frame after an error"
            );
            assert!(
                !matches!(codec.decode_eof(&mut buf), Ok(Some(_))),
                "frame after an error"
            );
        }
    }

    let (want_frames, want_end) = reference(stream, max);
    assert_eq!(frames, want_frames, "frames differ from the framing rules");
    let end = match failed {
        None => End::Clean,
        Some(FrameError::Empty) => End::Empty,
        Some(FrameError::TooLong { len, max: m }) => {
            assert_eq!(m, max, "TooLong names the wrong limit");
            End::TooLong(len)
        }
        Some(FrameError::Truncated) => End::Truncated,
        Some(e @ FrameError::Io(_)) => panic!("i/o error from a buffer: {e}"),
        Some(FrameError::Binary) => panic!("the byte-stream codec reported a WebSocket error"),
    };
    assert_eq!(
        end, want_end,
        "stream ends differently from the framing rules"
    );
    if end == End::Clean {
        assert_eq!(consumed, stream.len());
    }

    let mut wire = BytesMut::new();
    for frame in frames {
        codec
            .encode(frame, &mut wire)
            .expect("encoding a decoded frame");
    }
    assert_eq!(
        &wire[..],
        &stream[..consumed],
        "re-encoded frames differ from the input"
    );
});
