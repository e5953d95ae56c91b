//! The writing half of a connection: a task that drains a queue of frames
//! into the socket with vectored writes, gathering what is queued.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};
use terrace_proto::{Message, encode_frame};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A frame waiting to be written. The body may come in several chunks,
/// written back to back, so a sender never has to concatenate them.
#[derive(Debug)]
pub struct OutFrame {
    pub message: Message,
    pub body: Vec<Bytes>,
}

/// The sending side of a connection's writer. Cloneable; sending fails only
/// once the connection is gone. Memory is bounded by the senders (producers
/// hold a bytes-in-flight budget, workers send reads only against credits).
#[derive(Debug, Clone)]
pub struct FrameSender {
    tx: mpsc::UnboundedSender<OutFrame>,
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
        self.tx.send(OutFrame { message, body }).is_ok()
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
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
    let (tx, mut rx) = mpsc::unbounded_channel::<OutFrame>();
    tokio::spawn(async move {
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
            if let Err(e) = write_gathered(&mut out, &mut slices).await {
                tracing::debug!(error = %e, "connection write failed");
                cancel.cancel();
                return;
            }
        }
        let _ = out.shutdown().await;
    });
    FrameSender { tx }
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
) -> std::io::Result<()> {
    while !slices.is_empty() {
        let io: Vec<IoSlice<'_>> = slices
            .iter()
            .take(GATHER_SLICES)
            .map(|s| IoSlice::new(s))
            .collect();
        let mut written = out.write_vectored(&io).await?;
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
