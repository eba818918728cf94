//! A connection's outbound side: the queue of frames waiting for its socket, the writer task that
//! drains it, and the counts the connection's reader uses to apply backpressure.
//!
//! Producers (the engine task, the reader itself, audit tails) never block here: they append and
//! wake the writer. Keeping the queue short is the reader's job: it reads the next request only
//! while the frames queued plus the requests still with the engine leave room
//! ([`Outbox::room_for_request`]), so a client that writes faster than it reads is slowed by TCP
//! flow control instead of being dropped. Answers to the connection's own requests
//! ([`Outbox::push_reply`]) are therefore always taken, however many frames one answer has.
//! Pushes nobody on this connection asked for ([`Outbox::push`]) are what a client that stopped
//! reading would pile up: they are refused, and the client dropped, once twice
//! `outbound_queue_frames` are waiting and the socket has taken nothing for the stall bound, or
//! in any case at eight times it (a memory bound). Audit tails wait for room before each frame
//! ([`Outbox::push_when_room`]) and leave half of the room to the connection's own answers.
//! The outbox never decides what is sent or to whom, only whether a frame still fits.

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Bytes the writer encodes before it hands them to the socket: big enough that a burst goes out
/// in a few system calls, small enough that a burst of big frames does not need a big buffer.
const WRITE_CHUNK: usize = 256 * 1024;
/// Write buffer kept while a connection is idle; a bigger one (grown by a burst) is given back,
/// since an idle desktop should cost little memory.
const IDLE_BUFFER_BYTES: usize = 4 * 1024;
/// Slots of the writer's batch kept while a connection is idle, for the same reason.
const IDLE_BATCH_FRAMES: usize = 64;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The queue is at its hard cap: the client has stopped reading while frames keep coming.
    NotReading,
    /// The connection is closing or closed; the frame is not needed any more.
    Closed,
}

/// Why [`Outbox::room_for_request`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoomError {
    /// Frames were waiting and the client took none of them for the whole stall bound.
    NotReading,
    Closed,
}

/// One connection's queue of outbound frames.
pub(crate) struct Outbox {
    frames: Mutex<Frames>,
    /// Frames pushed and not yet written to the socket (still queued or in the writer's hands).
    pending: AtomicUsize,
    /// Requests of this connection handed to the engine and not answered yet: their answers are
    /// on the way, so the reader counts them as if queued.
    in_flight: AtomicUsize,
    /// Bytes the socket has taken: moves whenever the client reads anything at all.
    written_bytes: AtomicU64,
    /// When the socket last took bytes (or the outbox was made), in ms since `made`.
    progress_ms: AtomicU64,
    made: std::time::Instant,
    /// No progress for this long with pushes piling up: the client has stopped reading.
    stall: Duration,
    /// Wakes the writer: the queue went from empty to not empty, or the connection is closing.
    frames_queued: Notify,
    /// Wakes the reader and the tails: frames were written, or requests were answered.
    room: Notify,
    /// The queue length the reader keeps below (`outbound_queue_frames`); tails keep below half.
    room_frames: usize,
    /// Pushes beyond this many waiting frames are refused if the client is not reading: twice
    /// `room_frames`, since pushes nobody asked for (another agent's transfer) come on top of the
    /// answers.
    stalled_frames: usize,
    /// Pushes beyond this many waiting frames are refused whatever the client does: eight times
    /// `room_frames`. Bounds the memory a client can hold, even one that reads very slowly.
    max_frames: usize,
}

/// What a frame may find in the queue before it is refused.
#[derive(Clone, Copy)]
enum Limit {
    /// An answer to a request: bounded by the reader's backpressure, never refused.
    None,
    /// A push: see [`Outbox::push`].
    Push,
    /// Below this many waiting frames, or given back.
    Below(usize),
}

struct Frames {
    queue: VecDeque<Bytes>,
    /// Write what is queued, then close.
    closing: bool,
    /// The writer has stopped: nothing will be written any more.
    closed: bool,
    /// Why the connection closes, for a transport that can say it (a WebSocket close frame).
    close_code: Option<(u16, String)>,
}

impl Outbox {
    pub(crate) fn new(room_frames: usize, stall: Duration) -> Outbox {
        debug_assert!(
            room_frames > 0,
            "config validation keeps the queue non-empty"
        );
        Outbox {
            frames: Mutex::new(Frames {
                queue: VecDeque::new(),
                closing: false,
                closed: false,
                close_code: None,
            }),
            pending: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            written_bytes: AtomicU64::new(0),
            progress_ms: AtomicU64::new(0),
            made: std::time::Instant::now(),
            stall,
            frames_queued: Notify::new(),
            room: Notify::new(),
            room_frames,
            stalled_frames: room_frames.saturating_mul(2),
            max_frames: room_frames.saturating_mul(8),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Frames> {
        // A panic while holding this lock leaves the queue consistent (every change is one step).
        self.frames.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a push (a frame no request of this connection asked for) without waiting. Refused
    /// once closing, and when the client has stopped reading: twice `outbound_queue_frames`
    /// waiting and nothing taken for the stall bound, or eight times it whatever.
    pub(crate) fn push(&self, frame: Bytes) -> Result<(), PushError> {
        self.push_limited(frame, Limit::Push).map_err(|(_, e)| e)
    }

    /// Queues an answer to one of this connection's requests without waiting. Refused only once
    /// closing: the reader's backpressure already bounds how many answers can be owed.
    pub(crate) fn push_reply(&self, frame: Bytes) -> Result<(), PushError> {
        self.push_limited(frame, Limit::None).map_err(|(_, e)| e)
    }

    /// The socket has taken nothing for the stall bound.
    fn stalled(&self) -> bool {
        let now = self.made.elapsed().as_millis() as u64;
        now.saturating_sub(self.progress_ms.load(Ordering::Acquire))
            >= self.stall.as_millis() as u64
    }

    /// Queues `frame` unless `limit` refuses it; gives it back then.
    fn push_limited(&self, frame: Bytes, limit: Limit) -> Result<(), (Bytes, PushError)> {
        let mut f = self.lock();
        if f.closing || f.closed {
            return Err((frame, PushError::Closed));
        }
        let pending = self.pending.load(Ordering::Acquire);
        let refused = match limit {
            Limit::None => false,
            Limit::Push => {
                pending >= self.max_frames || (pending >= self.stalled_frames && self.stalled())
            }
            Limit::Below(n) => pending >= n,
        };
        if refused {
            return Err((frame, PushError::NotReading));
        }
        if pending == 0 {
            // The stall bound counts from when frames start waiting, not from the last write of
            // a connection that has been idle.
            self.progress_ms
                .store(self.made.elapsed().as_millis() as u64, Ordering::Release);
        }
        f.queue.push_back(frame);
        self.pending.fetch_add(1, Ordering::AcqRel);
        // The writer only sleeps on an empty queue, so only the first frame needs to wake it.
        let wake = f.queue.len() == 1;
        drop(f);
        if wake {
            self.frames_queued.notify_one();
        }
        Ok(())
    }

    /// Queues `frame` once fewer than half of `outbound_queue_frames` frames are pending, waiting
    /// as long as that takes. For producers that can pause (an audit tail reads from a cursor);
    /// the other half stays for the answers to the connection's requests, so a tail never holds
    /// them up.
    pub(crate) async fn push_when_room(&self, frame: Bytes) -> Result<(), PushError> {
        let limit = Limit::Below((self.room_frames / 2).max(1));
        let mut frame = match self.push_limited(frame, limit) {
            Ok(()) => return Ok(()),
            Err((_, PushError::Closed)) => return Err(PushError::Closed),
            Err((back, PushError::NotReading)) => back,
        };
        loop {
            let mut room = pin!(self.room.notified());
            // Registered before the check: a wake-up between the check and the wait is not lost.
            room.as_mut().enable();
            match self.push_limited(frame, limit) {
                Ok(()) => return Ok(()),
                Err((_, PushError::Closed)) => return Err(PushError::Closed),
                Err((back, PushError::NotReading)) => frame = back,
            }
            room.await;
        }
    }

    /// Waits until the connection has room for the answer to one more request: the frames
    /// pending plus the requests with the engine are fewer than `outbound_queue_frames`.
    ///
    /// Gives up with [`RoomError::NotReading`] when frames are waiting and the socket took not one
    /// byte of them for `stall`: the client has stopped reading. Waiting on the engine alone
    /// (nothing queued) is never a reason to give up.
    pub(crate) async fn room_for_request(&self, stall: Duration) -> Result<(), RoomError> {
        // The usual case, checked without registering as a waiter: there is room.
        if self.has_room_for_request() {
            return Ok(());
        }
        let mut seen = self.written_bytes.load(Ordering::Acquire);
        let mut deadline = tokio::time::Instant::now() + stall;
        loop {
            let mut room = pin!(self.room.notified());
            room.as_mut().enable();
            if self.is_closing() {
                return Err(RoomError::Closed);
            }
            if self.has_room_for_request() {
                return Ok(());
            }
            let pending = self.pending.load(Ordering::Acquire);
            let written = self.written_bytes.load(Ordering::Acquire);
            if written != seen || pending == 0 {
                seen = written;
                deadline = tokio::time::Instant::now() + stall;
            }
            tokio::select! {
                _ = room => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let stuck = self.written_bytes.load(Ordering::Acquire) == seen
                        && self.pending.load(Ordering::Acquire) > 0;
                    if stuck {
                        return Err(RoomError::NotReading);
                    }
                }
            }
        }
    }

    pub(super) fn has_room_for_request(&self) -> bool {
        self.pending.load(Ordering::Acquire) + self.in_flight.load(Ordering::Acquire)
            < self.room_frames
    }

    /// A request of this connection goes to the engine; its answer will need room.
    pub(crate) fn request_sent(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// The engine has pushed the outputs of `n` requests of this connection (or dropped them).
    pub(crate) fn requests_answered(&self, n: usize) {
        let before = self.in_flight.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(before >= n, "more requests answered than were sent");
        self.room.notify_waiters();
    }

    /// Frames pending (queued or being written).
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Write what is queued, then close. Later pushes are refused.
    /// Notes why the connection is about to close (the first reason given stays), for a transport
    /// that tells its peer: a WebSocket close code and reason.
    pub(crate) fn set_close_code(&self, code: u16, reason: &str) {
        let mut f = self.lock();
        if f.close_code.is_none() {
            f.close_code = Some((code, reason.to_owned()));
        }
    }

    fn close_code(&self) -> Option<(u16, String)> {
        self.lock().close_code.clone()
    }

    pub(crate) fn close(&self) {
        self.lock().closing = true;
        self.frames_queued.notify_one();
    }

    /// Closing or closed: nothing more will be queued.
    fn is_closing(&self) -> bool {
        let f = self.lock();
        f.closed || f.closing
    }

    /// Moves every queued frame into `batch` (which the writer reuses) and says whether the
    /// connection is closing.
    fn take_all(&self, batch: &mut VecDeque<Bytes>) -> bool {
        debug_assert!(batch.is_empty());
        let mut f = self.lock();
        std::mem::swap(&mut f.queue, batch);
        f.closing
    }

    /// Gives back the queue's slots grown by a burst, while nothing is queued.
    fn trim_idle(&self) {
        let mut f = self.lock();
        if f.queue.is_empty() && f.queue.capacity() > IDLE_BATCH_FRAMES {
            f.queue = VecDeque::new();
        }
    }

    /// The socket took `bytes` more.
    pub(crate) fn progress(&self, bytes: usize) {
        self.written_bytes.fetch_add(bytes as u64, Ordering::AcqRel);
        self.progress_ms
            .store(self.made.elapsed().as_millis() as u64, Ordering::Release);
    }

    /// `frames` frames are written: their room is free again.
    pub(crate) fn wrote(&self, frames: usize) {
        let before = self.pending.fetch_sub(frames, Ordering::AcqRel);
        debug_assert!(before >= frames, "more frames written than were pushed");
        self.room.notify_waiters();
    }

    /// The writer has stopped: refuse pushes and release everyone waiting for room.
    fn writer_stopped(&self) {
        let mut f = self.lock();
        f.closed = true;
        let dropped = f.queue.len();
        f.queue.clear();
        drop(f);
        self.pending.fetch_sub(dropped, Ordering::AcqRel);
        self.room.notify_waiters();
    }
}

/// How a connection's frames reach its peer: length-prefixed on a TCP (or TLS) stream, or one text
/// message each on a WebSocket. The queue, the batching and the accounting are the same for both
/// ([`write_loop`]); only the encoding and the goodbye differ.
pub(crate) trait FrameWriter: Send {
    /// Writes the frames of `batch` in order (taking them off its front), telling `outbox` how
    /// many bytes the peer has taken as they go. Returns early, with what is left in `batch`,
    /// when `cancel` fires.
    fn write_batch(
        &mut self,
        batch: &mut VecDeque<Bytes>,
        outbox: &Outbox,
        cancel: &CancellationToken,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send;

    /// The connection is closing with everything queued written: say goodbye (FIN, TLS
    /// close_notify, or a WebSocket close frame with `close`'s code).
    fn finish(
        &mut self,
        close: Option<(u16, String)>,
    ) -> impl std::future::Future<Output = ()> + Send;

    /// The idle connection should give back any memory a burst made it grow.
    fn trim(&mut self) {}
}

/// A length-prefixed stream: plain TCP or TLS.
pub(crate) struct StreamWriter<W> {
    socket: W,
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin + Send> StreamWriter<W> {
    pub(crate) fn new(socket: W) -> Self {
        StreamWriter {
            socket,
            buf: BytesMut::new(),
        }
    }
}

impl<W: AsyncWrite + Unpin + Send> FrameWriter for StreamWriter<W> {
    async fn write_batch(
        &mut self,
        batch: &mut VecDeque<Bytes>,
        outbox: &Outbox,
        cancel: &CancellationToken,
    ) -> std::io::Result<()> {
        let (socket, buf) = (&mut self.socket, &mut self.buf);
        while !batch.is_empty() {
            let mut frames = 0;
            while buf.len() < WRITE_CHUNK {
                let Some(frame) = batch.pop_front() else {
                    break;
                };
                let len = u32::try_from(frame.len()).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "frame over 4 GiB")
                })?;
                buf.reserve(4 + frame.len());
                buf.put_u32(len);
                buf.put_slice(&frame);
                frames += 1;
            }
            let mut at = 0;
            while at < buf.len() {
                let n = tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    r = socket.write(&buf[at..]) => r?,
                };
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                at += n;
                outbox.progress(n);
            }
            // A TLS stream may keep the last records it sealed until flushed (a no-op on TCP).
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = socket.flush() => r?,
            }
            buf.clear();
            outbox.wrote(frames);
        }
        Ok(())
    }

    async fn finish(&mut self, _close: Option<(u16, String)>) {
        // Ends the sending side (FIN; over TLS a close_notify first), unless the peer is gone.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.socket.shutdown()).await;
    }

    fn trim(&mut self) {
        if self.buf.capacity() > IDLE_BUFFER_BYTES {
            self.buf = BytesMut::new();
        }
    }
}

/// Writes the outbox until it closes (after writing what is queued) or `cancel` fires (at once).
/// Takes everything queued at a time and writes it in as few calls as it can.
pub(crate) async fn write_loop<W: FrameWriter>(
    mut writer: W,
    outbox: Arc<Outbox>,
    cancel: CancellationToken,
) {
    let result = write_frames(&mut writer, &outbox, &cancel).await;
    if let Err(e) = result {
        debug!("write failed: {e}");
    }
    outbox.writer_stopped();
    if !cancel.is_cancelled() {
        writer.finish(outbox.close_code()).await;
    }
    drop(writer);
    // Make the reader and the tails stop too.
    cancel.cancel();
}

async fn write_frames<W: FrameWriter>(
    writer: &mut W,
    outbox: &Outbox,
    cancel: &CancellationToken,
) -> std::io::Result<()> {
    let mut batch: VecDeque<Bytes> = VecDeque::new();
    loop {
        let closing = outbox.take_all(&mut batch);
        if batch.is_empty() {
            if closing {
                return Ok(());
            }
            writer.trim();
            if batch.capacity() > IDLE_BATCH_FRAMES {
                batch = VecDeque::new();
            }
            outbox.trim_idle();
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = outbox.frames_queued.notified() => continue,
            }
        }
        writer.write_batch(&mut batch, outbox, cancel).await?;
        if cancel.is_cancelled() {
            return Ok(());
        }
    }
}
