//! The writing half of a connection: a task that drains a queue of frames
//! into a buffered socket, flushing whenever the queue runs empty.

use bytes::Bytes;
use terrace_proto::{Message, encode_frame};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
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

/// Starts the writer task. It ends (and shuts the socket's write side down)
/// when every sender is dropped, on a write error, or when `cancel` fires;
/// it cancels `cancel` itself on a write error so the reader stops too.
pub fn spawn_writer<W>(writer: W, cancel: CancellationToken) -> FrameSender
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<OutFrame>();
    tokio::spawn(async move {
        let mut out = BufWriter::with_capacity(128 * 1024, writer);
        loop {
            let frame = tokio::select! {
                frame = rx.recv() => frame,
                _ = cancel.cancelled() => None,
            };
            let Some(frame) = frame else { break };
            if let Err(e) = write_out_frame(&mut out, &frame).await {
                tracing::debug!(error = %e, "connection write failed");
                cancel.cancel();
                return;
            }
            if rx.is_empty() {
                if let Err(e) = out.flush().await {
                    tracing::debug!(error = %e, "connection flush failed");
                    cancel.cancel();
                    return;
                }
            }
        }
        let _ = out.flush().await;
        let _ = out.shutdown().await;
    });
    FrameSender { tx }
}

async fn write_out_frame<W: AsyncWrite + Unpin>(
    out: &mut W,
    frame: &OutFrame,
) -> std::io::Result<()> {
    let body_len: usize = frame.body.iter().map(Bytes::len).sum();
    out.write_all(&encode_frame(&frame.message, body_len))
        .await?;
    for chunk in &frame.body {
        out.write_all(chunk).await?;
    }
    Ok(())
}
