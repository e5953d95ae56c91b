//! One client connection: handshake, then requests answered in order until
//! the peer closes, breaks the protocol, or the master shuts down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use terrace_proto::{FrameReader, pb};
use terrace_rpc::{accept_handshake, reply_error, spawn_writer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio_util::sync::CancellationToken;

use crate::cmd::Command;
use crate::server::{SERVER_NAME, Shared};

/// A peer must complete the handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// After a protocol error, how long unread input is discarded so the error
/// frame reaches the peer before the socket closes (closing with unread input
/// would send a reset that can overtake it).
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// Serves one connection to its end. Reads are dropped mid-frame on shutdown,
/// which is fine: the connection is closed then anyway.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let (mut read, write) = stream.into_split();
    // The writer is never cancelled: dropping the last sender lets it send
    // what is queued (such as a final error frame), then close the socket.
    let sender = spawn_writer(write, CancellationToken::new());
    let mut reader = FrameReader::new(&mut read, shared.max_frame);

    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return,
        result = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_handshake(&mut reader, &sender, SERVER_NAME)) => {
            result.unwrap_or_else(|_| Err(format!("no handshake within {HANDSHAKE_TIMEOUT:?}")))
        }
    };
    let client = match handshake {
        Ok(client) => client,
        Err(reason) => {
            if reason == "closed before the handshake" {
                // Port probes and health checks.
                tracing::debug!(%peer, reason, "connection closed before the handshake");
            } else {
                tracing::warn!(%peer, reason, "refused connection");
            }
            drop(sender);
            linger(&mut read).await;
            return;
        }
    };
    tracing::debug!(%peer, client, "connection open");

    let mut protocol_error = false;
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => break,
            frame = reader.read_frame() => frame,
        };
        match frame {
            Ok(Some((message, _body))) => {
                let reply = match Command::from_message(message) {
                    Ok((request_id, command)) => shared
                        .with_registry(|registry, now| command.apply(request_id, registry, now)),
                    Err(reply) => reply,
                };
                if !sender.send(reply, Bytes::new()) {
                    tracing::debug!(%peer, client, "connection lost while replying");
                    break;
                }
            }
            Ok(None) => {
                tracing::debug!(%peer, client, "connection closed by peer");
                break;
            }
            Err(e) if e.is_protocol_error() => {
                tracing::warn!(%peer, client, error = %e, "protocol error; closing the connection");
                reply_error(&sender, 0, pb::ErrorCode::Protocol, e.to_string());
                protocol_error = true;
                break;
            }
            Err(e) => {
                tracing::debug!(%peer, client, error = %e, "connection failed");
                break;
            }
        }
    }
    drop(sender);
    if protocol_error {
        linger(&mut read).await;
    }
}

/// Discards input until the peer closes, for at most [`CLOSE_LINGER`].
async fn linger(read: &mut OwnedReadHalf) {
    let mut scratch = [0u8; 4096];
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Ok(n) = read.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
