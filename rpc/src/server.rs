//! The server side of the handshake, and error replies.

use terrace_proto::{FrameReader, Message, PROTOCOL_VERSION, pb};
use tokio::io::AsyncRead;

use crate::writer::FrameSender;

/// Sends an error reply.
pub fn reply_error(
    sender: &FrameSender,
    request_id: u64,
    code: pb::ErrorCode,
    message: impl Into<String>,
) {
    sender.send(
        Message::error(request_id, code, message),
        bytes::Bytes::new(),
    );
}

/// Largest handshake frame a server reads: it comes before anything is known
/// of the peer, so it is not allowed the full frame size.
pub const MAX_HANDSHAKE_BYTES: usize = 4096;

/// Longest client name accepted in a handshake, in bytes.
pub const MAX_CLIENT_NAME_BYTES: usize = 256;

/// Reads the first frame, which must be a handshake with our protocol version,
/// and answers it. On failure an error frame is queued and the reason returned;
/// the caller closes the connection.
pub async fn accept_handshake<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    sender: &FrameSender,
    server_name: &str,
) -> Result<String, String> {
    let refuse = |e: &terrace_proto::FrameError| {
        let reason = format!("bad handshake frame: {e}");
        if e.is_protocol_error() {
            reply_error(sender, 0, pb::ErrorCode::Protocol, reason.clone());
        }
        reason
    };
    let prefix = match reader.read_prefix().await {
        Ok(Some(prefix)) => prefix,
        Ok(None) => return Err("closed before the handshake".into()),
        Err(e) => return Err(refuse(&e)),
    };
    if prefix.remaining() > MAX_HANDSHAKE_BYTES {
        let reason = format!(
            "handshake frame of {} bytes exceeds the maximum of {MAX_HANDSHAKE_BYTES} bytes",
            prefix.remaining()
        );
        reply_error(sender, 0, pb::ErrorCode::Protocol, reason.clone());
        return Err(reason);
    }
    let frame = match reader.read_rest(prefix).await {
        Ok(frame) => frame,
        Err(e) => return Err(refuse(&e)),
    };
    match frame.0 {
        Message::Handshake(h) if h.client_name.len() > MAX_CLIENT_NAME_BYTES => {
            let reason = format!(
                "client_name of {} bytes exceeds the maximum of {MAX_CLIENT_NAME_BYTES} bytes",
                h.client_name.len()
            );
            reply_error(
                sender,
                h.request_id,
                pb::ErrorCode::BadRequest,
                reason.clone(),
            );
            Err(reason)
        }
        Message::Handshake(h) if h.protocol_version == PROTOCOL_VERSION => {
            sender.send(
                Message::HandshakeOk(pb::HandshakeOk {
                    request_id: h.request_id,
                    protocol_version: PROTOCOL_VERSION,
                    server_name: server_name.to_string(),
                }),
                bytes::Bytes::new(),
            );
            Ok(h.client_name)
        }
        Message::Handshake(h) => {
            let reason = format!(
                "protocol version {} is not supported (this server speaks {PROTOCOL_VERSION})",
                h.protocol_version
            );
            reply_error(
                sender,
                h.request_id,
                pb::ErrorCode::VersionMismatch,
                reason.clone(),
            );
            Err(reason)
        }
        other => {
            let reason = format!("expected a handshake first, got {:?}", other.message_type());
            reply_error(sender, 0, pb::ErrorCode::Protocol, reason.clone());
            Err(reason)
        }
    }
}
