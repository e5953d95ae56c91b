//! The writing half of a connection: a task that drains a queue of frames
//! into the socket with vectored writes, gathering what is queued.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::clock;
use bytes::{Buf, Bytes};
use terrace_proto::{Message, encode_frame};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// A frame waiting to be written. The body may come in several chunks,
/// written back to back, so a sender never has to concatenate them.
#[derive(Debug)]
pub struct OutFrame {
    pub message: Message,
    pub body: Vec<Bytes>,
}

/// The sending side of a connection's writer. Cloneable; sending fails only
/// once the connection is gone. The queue itself is unbounded: senders bound
/// it by waiting ([`FrameSender::wait_queued_below`]) before they produce more
/// (a server stops reading requests, a read stream stops reading data, while
/// the peer does not take what is queued).
#[derive(Debug, Clone)]
pub struct FrameSender {
    tx: mpsc::UnboundedSender<OutFrame>,
    queue: Arc<Queue>,
}

/// Bytes queued and not yet written, and a wake-up when some are written.
#[derive(Debug, Default)]
struct Queue {
    bytes: AtomicUsize,
    written: Notify,
}

impl FrameSender {
    /// Queues a frame; false if the connection is closed.
    pub fn send(&self, message: Message, body: Bytes) -> bool {
        let body = if body.is_empty() {
            Vec::new()
        } else {
            vec![body]
        };
        self.send_chunks(message, body)
    }

    /// Queues a frame whose body is the concatenation of `body`.
    pub fn send_chunks(&self, message: Message, body: Vec<Bytes>) -> bool {
        let len = frame_len(&message, &body);
        self.queue.bytes.fetch_add(len, Ordering::Relaxed);
        if self.tx.send(OutFrame { message, body }).is_err() {
            self.queue.bytes.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Bytes queued and not yet written to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.queue.bytes.load(Ordering::Relaxed)
    }

    /// Waits until fewer than `limit` bytes are queued (or the connection is
    /// closed).
    pub async fn wait_queued_below(&self, limit: usize) {
        loop {
            let written = self.queue.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            if self.queued_bytes() < limit || self.is_closed() {
                return;
            }
            written.await;
        }
    }
}

/// Bytes a frame takes on the wire.
fn frame_len(message: &Message, body: &[Bytes]) -> usize {
    terrace_proto::FRAME_PREFIX_LEN
        + message.header_len()
        + body.iter().map(Bytes::len).sum::<usize>()
}

/// Most bytes gathered into one vectored write.
const GATHER_BYTES: usize = 1024 * 1024;
/// Most slices in one vectored write (Linux takes up to 1024).
const GATHER_SLICES: usize = 256;

/// Starts the writer task. It ends (and shuts the socket's write side down)
/// when every sender is dropped, on a write error, or when `cancel` fires;
/// it cancels `cancel` itself on a write error so the reader stops too.
///
/// Queued frames are gathered (up to 1 MiB) and written with vectored writes
/// straight from their header and body buffers: bodies are never copied.
pub fn spawn_writer<W>(writer: W, cancel: CancellationToken) -> FrameSender
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    spawn_writer_with_stall_limit(writer, cancel, None)
}

/// [`spawn_writer`] that also fails (and cancels `cancel`) when the peer
/// takes no bytes for `stall_limit`: a server's connection to a peer that
/// stopped reading must not hold what is queued for it forever.
pub fn spawn_writer_with_stall_limit<W>(
    writer: W,
    cancel: CancellationToken,
    stall_limit: Option<std::time::Duration>,
) -> FrameSender
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel::<OutFrame>();
    let queue = Arc::new(Queue::default());
    let written = Arc::clone(&queue);
    tokio::spawn(async move {
        // However the writer ends, the receiver is dropped (so senders see the
        // connection closed) before waiting senders are woken.
        let _wake = WakeOnDrop(Arc::clone(&written));
        let mut rx = rx;
        let mut out = writer;
        let mut slices: VecDeque<Bytes> = VecDeque::new();
        loop {
            let frame = tokio::select! {
                frame = rx.recv() => frame,
                _ = cancel.cancelled() => None,
            };
            let Some(frame) = frame else { break };
            let mut gathered = push_frame(&mut slices, frame);
            while gathered < GATHER_BYTES && slices.len() < GATHER_SLICES {
                match rx.try_recv() {
                    Ok(frame) => gathered += push_frame(&mut slices, frame),
                    Err(_) => break,
                }
            }
            let result = tokio::select! {
                result = write_gathered(&mut out, &mut slices, stall_limit) => result,
                // A peer that stopped reading must not hold the writer.
                _ = cancel.cancelled() => return,
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection write failed");
                cancel.cancel();
                return;
            }
            written.bytes.fetch_sub(gathered, Ordering::Relaxed);
            written.written.notify_waiters();
        }
        let _ = out.shutdown().await;
    });
    FrameSender { tx, queue }
}

struct WakeOnDrop(Arc<Queue>);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        self.0.written.notify_waiters();
    }
}

/// Queues a frame's header and body chunks; returns its size.
fn push_frame(slices: &mut VecDeque<Bytes>, frame: OutFrame) -> usize {
    let body_len: usize = frame.body.iter().map(Bytes::len).sum();
    let head = encode_frame(&frame.message, body_len).freeze();
    let len = head.len() + body_len;
    slices.push_back(head);
    slices.extend(frame.body.into_iter().filter(|chunk| !chunk.is_empty()));
    len
}

/// Writes every queued slice, in order, with vectored writes.
async fn write_gathered<W: AsyncWrite + Unpin>(
    out: &mut W,
    slices: &mut VecDeque<Bytes>,
    stall_limit: Option<std::time::Duration>,
) -> std::io::Result<()> {
    let stall_limit = stall_limit.unwrap_or(std::time::Duration::MAX);
    while !slices.is_empty() {
        let io: Vec<IoSlice<'_>> = slices
            .iter()
            .take(GATHER_SLICES)
            .map(|s| IoSlice::new(s))
            .collect();
        let mut written = match clock::timeout(stall_limit, out.write_vectored(&io)).await {
            Ok(written) => written?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the peer took no bytes for {stall_limit:?}"),
                ));
            }
        };
        drop(io);
        if written == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "connection accepted no bytes",
            ));
        }
        while written > 0 {
            let front = slices
                .front_mut()
                .expect("written bytes come from queued slices");
            if written >= front.len() {
                written -= front.len();
                slices.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }
    out.flush().await
}
